//! Attaching the TC programs to interfaces in any namespace, and detaching them.
//!
//! TCX links (Linux 6.6 and later) go away with tracer's process; on older kernels the
//! programs are added as filters on a clsact qdisc through netlink.

use std::{collections::BTreeMap, io, path::Path};

use anyhow::anyhow;
use aya::{
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use tracer_common::hook::Hook;

use super::{Programs, ladder::describe};
use crate::{decode::IfName, netns, select::Target};

/// An interface with TC programs attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcInterface {
    pub ifindex: u32,
    pub netns_inode: u64,
    pub ifname: IfName,
}

/// Why an attach did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The interface or its namespace no longer exists: nothing to do.
    #[error("{0} is gone")]
    Gone(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// TC attachments by (namespace inode, ifindex).
#[derive(Default)]
pub struct Attached {
    links: BTreeMap<(u64, u32), (TcInterface, [SchedClassifierLinkId; 2])>,
    /// `tcx` or `clsact`, once something was attached.
    mechanism: Option<&'static str>,
}

impl Attached {
    pub fn interfaces(&self) -> impl Iterator<Item = &TcInterface> {
        self.links.values().map(|(interface, _)| interface)
    }

    pub fn contains(&self, netns_inode: u64, ifindex: u32) -> bool {
        self.links.contains_key(&(netns_inode, ifindex))
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    pub fn mechanism(&self) -> Option<&'static str> {
        self.mechanism
    }

    pub fn keys(&self) -> Vec<(u64, u32)> {
        self.links.keys().copied().collect()
    }
}

/// Whether this kernel has TCX links.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

impl Programs {
    /// Attaches the ingress and egress programs to `target`, whose namespace is at `netns_path`
    /// (`None` for tracer's own).
    pub fn attach_tc(
        &mut self,
        target: &Target,
        netns_path: Option<&Path>,
    ) -> Result<(), AttachError> {
        if self.tc.contains(target.netns_inode, target.ifindex) {
            return Ok(());
        }
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let program = self.classifier(hook)?;
            if program.fd().is_err() {
                program.load().map_err(|err| {
                    anyhow!(
                        "the {} program was refused ({}); tracing without TC hops",
                        hook.name(),
                        describe(&err)
                    )
                })?;
            }
        }
        let mut attach = || self.attach_here(&target.ifname, target.ifindex);
        let result = match netns_path {
            Some(path) => netns::run_in(path, attach)
                .map_err(|_| AttachError::Gone(format!("namespace of {}", target.ifname)))?,
            None => attach(),
        };
        let (mechanism, ids) = result?;
        self.tc.mechanism = Some(mechanism);
        let interface = TcInterface {
            ifindex: target.ifindex,
            netns_inode: target.netns_inode,
            ifname: IfName::new(&target.ifname),
        };
        self.tc
            .links
            .insert((target.netns_inode, target.ifindex), (interface, ids));
        Ok(())
    }

    /// Detaches from an interface, which may already be gone (then there is nothing to undo).
    pub fn detach_tc(&mut self, netns_inode: u64, ifindex: u32) {
        let Some((_, ids)) = self.tc.links.remove(&(netns_inode, ifindex)) else {
            return;
        };
        for (hook, id) in [Hook::TcIngress, Hook::TcEgress].into_iter().zip(ids) {
            if let Ok(program) = self.classifier(hook) {
                let _ = program.detach(id);
            }
        }
    }

    /// Attaches both programs to `ifname` in the calling thread's namespace, checking that the
    /// name still belongs to `ifindex`.
    fn attach_here(
        &mut self,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(&'static str, [SchedClassifierLinkId; 2]), AttachError> {
        let gone = || AttachError::Gone(ifname.to_owned());
        if nix::net::if_::if_nametoindex(ifname).map_err(|_| gone())? != ifindex {
            return Err(gone());
        }
        let tcx = has_tcx();
        if !tcx {
            // Fails harmlessly when the qdisc is already there.
            let _ = tc::qdisc_add_clsact(ifname);
        }
        let mut ids = Vec::with_capacity(2);
        for (hook, attach_type) in [
            (Hook::TcIngress, TcAttachType::Ingress),
            (Hook::TcEgress, TcAttachType::Egress),
        ] {
            let options = if tcx {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            };
            let attached = self
                .classifier(hook)?
                .attach_with_options(ifname, attach_type, options);
            match attached {
                Ok(id) => ids.push(id),
                Err(err) => {
                    // Undo the half-done attachment before reporting.
                    if let Some(first) = ids.pop() {
                        let _ = self.classifier(Hook::TcIngress)?.detach(first);
                    }
                    return Err(if is_gone(&err) {
                        gone()
                    } else {
                        AttachError::Failed(anyhow!(
                            "failed to attach TC programs to {ifname}: {}",
                            describe(&err)
                        ))
                    });
                }
            }
        }
        let ids: [SchedClassifierLinkId; 2] = ids.try_into().map_err(|_| gone())?;
        Ok((if tcx { "tcx" } else { "clsact" }, ids))
    }

    /// Runs a TC program once on `packet` (an Ethernet frame) with `BPF_PROG_TEST_RUN`, without
    /// any interface, and returns its verdict. For self-tests of the parser on crafted packets.
    pub fn test_run_tc(&mut self, hook: Hook, packet: &[u8]) -> anyhow::Result<i32> {
        let program = self.classifier(hook)?;
        if program.fd().is_err() {
            program.load()?;
        }
        let result = program.test_run(TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::default()
        })?;
        Ok(result.return_value as i32)
    }

    fn classifier(&mut self, hook: Hook) -> Result<&mut SchedClassifier, AttachError> {
        let program = self
            .ebpf
            .program_mut(hook.name())
            .ok_or_else(|| anyhow!("program {} missing from the object", hook.name()))?;
        Ok(program.try_into().map_err(anyhow::Error::from)?)
    }
}

/// Whether an attach failed because the interface disappeared.
fn is_gone(err: &ProgramError) -> bool {
    let io = match err {
        ProgramError::TcError(tc::TcError::IoError(io)) => Some(io.kind()),
        ProgramError::SyscallError(syscall) => Some(syscall.io_error.kind()),
        _ => None,
    };
    matches!(io, Some(io::ErrorKind::NotFound))
        || matches!(err, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENODEV))
}
