//! Attaching the TC programs to interfaces in any namespace, and detaching them.
//!
//! TCX links (Linux 6.6 and later) go away with tracer's process; on older kernels the
//! programs are added as filters on a clsact qdisc through netlink.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use anyhow::anyhow;
use aya::{
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use tracer_common::hook::Hook;

use super::{
    Programs,
    hooks::{Mechanism, describe, spec},
};
use crate::{decode::IfName, netns, topology::netlink::Netlink};

/// An interface to attach the TC programs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcTarget {
    pub netns_inode: u64,
    pub ifindex: u32,
    pub ifname: String,
    /// Where to enter the interface's namespace; `None` for tracer's own.
    pub netns_path: Option<PathBuf>,
}

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

/// How TC programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcMode {
    /// TCX links where the kernel has them (6.6+), clsact qdisc filters otherwise.
    Auto,
    /// TCX links only.
    Tcx,
    /// Filters on a clsact qdisc, through netlink, even where TCX exists.
    Clsact,
}

impl TcMode {
    /// Whether to use TCX links on this kernel.
    fn tcx(self) -> bool {
        match self {
            TcMode::Auto => has_tcx(),
            TcMode::Tcx => true,
            TcMode::Clsact => false,
        }
    }
}

/// The two programs on one interface.
struct Attachment {
    interface: TcInterface,
    ids: [SchedClassifierLinkId; 2],
    /// Namespace to enter to undo them (netlink filters are addressed by ifindex within it).
    netns_path: Option<PathBuf>,
}

/// TC attachments by (namespace inode, ifindex).
pub struct Attached {
    mode: TcMode,
    links: BTreeMap<(u64, u32), Attachment>,
    /// TCX or clsact, once something was attached.
    mechanism: Option<Mechanism>,
    /// Interfaces (namespace path, ifindex) that got a clsact qdisc from tracer, removed when
    /// tracer is done with them.
    added_qdiscs: Vec<(Option<PathBuf>, u32)>,
    /// Notes about filters an earlier, killed tracer left and this one removed.
    pub cleaned: Vec<String>,
}

impl Attached {
    pub fn new(mode: TcMode) -> Self {
        Attached {
            mode,
            links: BTreeMap::new(),
            mechanism: None,
            added_qdiscs: Vec::new(),
            cleaned: Vec::new(),
        }
    }
}

impl Attached {
    pub fn interfaces(&self) -> impl Iterator<Item = &TcInterface> {
        self.links.values().map(|a| &a.interface)
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

    pub fn mechanism(&self) -> Option<Mechanism> {
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
    /// Attaches the ingress and egress programs to `target`.
    pub fn attach_tc(&mut self, target: &TcTarget) -> Result<(), AttachError> {
        if self.tc.contains(target.netns_inode, target.ifindex) {
            return Ok(());
        }
        let netns_path = target.netns_path.as_deref();
        for hook in TC_HOOKS {
            let program = self.classifier(hook)?;
            if program.fd().is_err() {
                program.load().map_err(|err| {
                    anyhow!(
                        "the {} program was refused ({}); tracing without TC hops",
                        program_name(hook),
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
        let (mechanism, ids, added_qdisc) = result?;
        if added_qdisc {
            self.tc
                .added_qdiscs
                .push((netns_path.map(Path::to_path_buf), target.ifindex));
        }
        self.tc.mechanism = Some(mechanism);
        let interface = TcInterface {
            ifindex: target.ifindex,
            netns_inode: target.netns_inode,
            ifname: IfName::new(&target.ifname),
        };
        self.tc.links.insert(
            (target.netns_inode, target.ifindex),
            Attachment {
                interface,
                ids,
                netns_path: netns_path.map(Path::to_path_buf),
            },
        );
        Ok(())
    }

    /// Detaches from an interface, which may already be gone (then there is nothing to undo).
    /// Netlink filters are removed from inside the interface's namespace, where the ifindex
    /// means that interface.
    pub fn detach_tc(&mut self, netns_inode: u64, ifindex: u32) {
        let Some(Attachment {
            ids,
            netns_path: path,
            ..
        }) = self.tc.links.remove(&(netns_inode, ifindex))
        else {
            return;
        };
        let detach = || {
            for (hook, id) in TC_HOOKS.into_iter().zip(ids) {
                if let Ok(program) = self.classifier(hook) {
                    let _ = program.detach(id);
                }
            }
        };
        match path {
            Some(path) => {
                // A namespace that is gone took the filters with it.
                let _ = netns::run_in(&path, detach);
            }
            None => detach(),
        }
    }

    /// Attaches both programs to `ifname` in the calling thread's namespace, checking that the
    /// name still belongs to `ifindex`. Returns the mechanism, the links, and whether a clsact
    /// qdisc had to be added.
    fn attach_here(
        &mut self,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(Mechanism, [SchedClassifierLinkId; 2], bool), AttachError> {
        let gone = || AttachError::Gone(ifname.to_owned());
        if nix::net::if_::if_nametoindex(ifname).map_err(|_| gone())? != ifindex {
            return Err(gone());
        }
        let tcx = self.tc.mode.tcx();
        let mut added_qdisc = false;
        if !tcx {
            // Filters a killed tracer left behind carry the program names; they would run next
            // to ours. (Filters survive their process; TCX links do not.)
            let mut removed = 0;
            for (attach_type, hook) in ATTACH_TYPES.into_iter().zip(TC_HOOKS) {
                if tc::qdisc_detach_program(ifname, attach_type, program_name(hook)).is_ok() {
                    removed += 1;
                }
            }
            if removed > 0 {
                self.tc.cleaned.push(format!(
                    "removed the TC filters an earlier tracer left on {ifname}"
                ));
            }
            // The clsact qdisc is ours if we add it, or if the tracer whose filters we just
            // removed added it.
            added_qdisc = tc::qdisc_add_clsact(ifname).is_ok() || removed > 0;
        }
        let mut ids = Vec::with_capacity(2);
        for (hook, attach_type) in TC_HOOKS.into_iter().zip(ATTACH_TYPES) {
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
        let mechanism = if tcx {
            Mechanism::Tcx
        } else {
            Mechanism::Clsact
        };
        Ok((mechanism, ids, added_qdisc))
    }

    /// Detaches every TC program and removes the clsact qdiscs tracer added.
    pub(super) fn release_tc(&mut self) {
        for (inode, ifindex) in self.tc.keys() {
            self.detach_tc(inode, ifindex);
        }
        for (path, ifindex) in std::mem::take(&mut self.tc.added_qdiscs) {
            let remove = || -> io::Result<()> { Netlink::open()?.delete_clsact(ifindex) };
            let _ = match path {
                Some(path) => netns::run_in(&path, remove).and_then(|r| r),
                None => remove(),
            };
        }
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
        let name = program_name(hook);
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        Ok(program.try_into().map_err(anyhow::Error::from)?)
    }
}

/// The TC hooks, ingress first, in the order of [`ATTACH_TYPES`].
const TC_HOOKS: [Hook; 2] = [Hook::TcIngress, Hook::TcEgress];
const ATTACH_TYPES: [TcAttachType; 2] = [TcAttachType::Ingress, TcAttachType::Egress];

/// The program of a TC hook (the same for both of its mechanisms).
fn program_name(hook: Hook) -> &'static str {
    spec(hook).rungs[0].program
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
