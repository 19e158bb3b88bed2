//! Loading tracer's programs into the kernel and attaching them.
//!
//! The object built from `tracer-ebpf` is embedded in the binary. Before load, the programs'
//! `CONFIG` global receives the filter and the kernel offsets from BTF ([`crate::btf`]). Stack
//! hooks attach as BTF tracepoints; TC programs attach with TCX links where the kernel has them
//! and to a clsact qdisc otherwise. Everything is detached when [`Programs`] is dropped.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};
use tracer_common::{
    config::{CONFIG_SYMBOL, Config, Filter},
    event::{COUNTER_SLOTS, Counter, counter_index},
    hook::Hook,
};

use crate::{btf, decode::IfName, netns};

/// The compiled programs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Name of the ring buffer map.
const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counters map.
const COUNTERS_MAP: &str = "COUNTERS";

/// The tracepoint hooks, in path order.
pub const STACK_HOOKS: [Hook; 4] = [
    Hook::NetDevQueue,
    Hook::NetDevStartXmit,
    Hook::NetifRx,
    Hook::NetifReceiveSkb,
];

/// What to load.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port filter, 0 for none.
    pub port: u16,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
}

/// An interface to attach the TC programs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcTarget {
    /// Named namespace the interface is in; `None` for tracer's own.
    pub netns: Option<String>,
    pub ifname: String,
}

/// How a program was attached, for `tracer doctor` and the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub hook: Hook,
    /// `tp_btf`, `tcx` or `clsact`.
    pub mechanism: &'static str,
    /// Interface (and namespace) for TC attachments, empty for global hooks.
    pub target: String,
}

/// Loaded programs and their attachments.
pub struct Programs {
    ebpf: Ebpf,
    btf: aya::Btf,
    attachments: Vec<Attachment>,
    /// Interfaces the TC programs are attached to.
    tc_interfaces: Vec<TcInterface>,
    /// Notes for the user about reduced functionality.
    notes: Vec<String>,
}

impl Programs {
    /// Loads the object with `settings` and the running kernel's offsets. Nothing is attached.
    pub fn load(settings: &Settings) -> anyhow::Result<Programs> {
        let resolved = btf::resolve_running_kernel().context(
            "failed to read kernel structure layouts from BTF; tracer needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF",
        )?;
        let mut notes = Vec::new();
        if let Some(why) = &resolved.conntrack_unavailable {
            notes.push(format!("conntrack tuples unavailable: {why}"));
        }
        let mut config = Config::new();
        config.filter = Filter {
            port: settings.port,
            _pad: [0; 6],
        };
        config.offsets = resolved.offsets;
        let ebpf = EbpfLoader::new()
            .override_global(CONFIG_SYMBOL, &config, true)
            .map_max_entries(EVENTS_MAP, settings.ring_bytes)
            .load(OBJECT)
            .context("failed to load the eBPF object")?;
        let btf = aya::Btf::from_sys_fs().context("failed to read kernel BTF")?;
        Ok(Programs {
            ebpf,
            btf,
            attachments: Vec::new(),
            tc_interfaces: Vec::new(),
            notes,
        })
    }

    /// Loads and attaches the tracepoint program for each of `hooks`.
    pub fn attach_stack(&mut self, hooks: &[Hook]) -> anyhow::Result<()> {
        for &hook in hooks {
            let name = hook.name();
            let program: &mut BtfTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            program
                .load(name, &self.btf)
                .with_context(|| format!("failed to load the {name} program"))?;
            program
                .attach()
                .with_context(|| format!("failed to attach to tracepoint {name}"))?;
            self.attachments.push(Attachment {
                hook,
                mechanism: "tp_btf",
                target: String::new(),
            });
        }
        Ok(())
    }

    /// Attaches both TC programs (ingress and egress) to `target`.
    pub fn attach_tc(&mut self, target: &TcTarget) -> anyhow::Result<()> {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(hook.name())
                .ok_or_else(|| anyhow!("program {} missing from the object", hook.name()))?
                .try_into()?;
            if program.fd().is_err() {
                program
                    .load()
                    .with_context(|| format!("failed to load the {} program", hook.name()))?;
            }
        }
        let label = match &target.netns {
            Some(ns) => format!("{}@{ns}", target.ifname),
            None => target.ifname.clone(),
        };
        let mut attach = || -> anyhow::Result<(&'static str, TcInterface)> {
            let ifindex = nix::net::if_::if_nametoindex(target.ifname.as_str())
                .map_err(|_| anyhow!("no interface named {}", target.ifname))?;
            let mechanism = self.attach_tc_here(&target.ifname)?;
            let interface = TcInterface {
                ifindex,
                netns_inode: netns::current_inode()?,
                ifname: IfName::new(&target.ifname),
            };
            Ok((mechanism, interface))
        };
        let attached = match &target.netns {
            Some(ns) => netns::run_in(&netns::named_path(ns), attach)
                .with_context(|| format!("no network namespace named {ns}"))?,
            None => attach(),
        };
        let (mechanism, interface) =
            attached.with_context(|| format!("failed to attach TC programs to {label}"))?;
        self.tc_interfaces.push(interface);
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            self.attachments.push(Attachment {
                hook,
                mechanism,
                target: label.clone(),
            });
        }
        Ok(())
    }

    /// Attaches both TC programs to `ifname` in the calling thread's namespace.
    fn attach_tc_here(&mut self, ifname: &str) -> anyhow::Result<&'static str> {
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx {
            // Fails harmlessly when the qdisc is already there.
            let _ = tc::qdisc_add_clsact(ifname);
        }
        for (hook, attach_type) in [
            (Hook::TcIngress, TcAttachType::Ingress),
            (Hook::TcEgress, TcAttachType::Egress),
        ] {
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(hook.name())
                .ok_or_else(|| anyhow!("program {} missing", hook.name()))?
                .try_into()?;
            let options = if tcx {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            };
            program
                .attach_with_options(ifname, attach_type, options)
                .map_err(|err| match err {
                    aya::programs::ProgramError::TcError(tc::TcError::IoError(io))
                        if io.kind() == std::io::ErrorKind::NotFound =>
                    {
                        anyhow!("no interface named {ifname}")
                    }
                    other => anyhow::Error::from(other),
                })?;
        }
        Ok(if tcx { "tcx" } else { "clsact" })
    }

    /// The ring buffer, for the reader. Can be taken once.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or_else(|| anyhow!("ring buffer already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Sums of the per-CPU counters, per hook.
    pub fn counters(&self) -> anyhow::Result<HashMap<Hook, HookCounters>> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or_else(|| anyhow!("counters map missing"))?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut result = HashMap::new();
        for hook in Hook::ALL {
            let read = |counter: Counter| -> anyhow::Result<u64> {
                let values = array.get(&counter_index(hook as u8, counter), 0)?;
                Ok(values.iter().sum())
            };
            let counters = HookCounters {
                seen: read(Counter::Seen)?,
                filtered: read(Counter::Filtered)?,
                emitted: read(Counter::Emitted)?,
                lost: read(Counter::Lost)?,
            };
            if counters.seen > 0 {
                result.insert(hook, counters);
            }
        }
        const _: () = assert!(COUNTER_SLOTS == 4);
        Ok(result)
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Interfaces the TC programs are attached to, for naming TC events.
    pub fn tc_interfaces(&self) -> &[TcInterface] {
        &self.tc_interfaces
    }
}

/// An interface with TC programs attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcInterface {
    pub ifindex: u32,
    pub netns_inode: u64,
    pub ifname: IfName,
}

/// Counter totals for one hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookCounters {
    pub seen: u64,
    pub filtered: u64,
    pub emitted: u64,
    pub lost: u64,
}

/// Rejects a ring size the kernel would refuse, with a message that says what to use.
pub fn check_ring_bytes(bytes: u32) -> anyhow::Result<()> {
    let page = 4096;
    if bytes < page || !bytes.is_power_of_two() {
        bail!("ring buffer size must be a power of two of at least {page} bytes, got {bytes}");
    }
    Ok(())
}
