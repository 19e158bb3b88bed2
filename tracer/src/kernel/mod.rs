//! Loading tracer's programs into the kernel and attaching them.
//!
//! The object built from `tracer-ebpf` is embedded in the binary. Before load, the programs'
//! `CONFIG` global receives the filter and the kernel offsets from BTF ([`crate::btf`]). Stack
//! hooks attach as [`hooks::HOOKS`] says (the first rung of each ladder the kernel accepts); TC
//! programs attach with TCX links where the kernel has them and to a clsact qdisc otherwise.
//! Everything is detached when [`Programs`] is dropped.
//!
//! This layer knows nothing of the command line or of what the user selected: it takes plain
//! options ([`LoadOptions`], [`tc::TcTarget`]) and reports plain results.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSock},
};
use tracer_common::{
    config::{CONFIG_SYMBOL, Config, Filter},
    event::{COUNTER_SLOTS, Counter, counter_index},
    hook::{Hook, map, program},
    wire::tunnel,
};

use crate::btf;

pub mod hooks;
pub mod tc;

use hooks::{HookSet, Mechanism};

/// The compiled programs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// An event wakes the reader once this fraction of the ring holds unread events; below it the
/// reader drains on its timer (`reader::IDLE_DRAIN`), which bounds the delay.
const WAKEUP_FRACTION: u32 = 16;

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The hooks to attach.
    pub hooks: HookSet,
    /// The compiled filter expression.
    pub filter: Filter,
    /// Bytes of each packet to copy into events (0 for none).
    pub snap_len: u32,
    /// Whether to stop at the end of the headers (no payload).
    pub snap_headers_only: bool,
    /// Kernel BTF to read instead of `/sys/kernel/btf/vmlinux`.
    pub kernel_btf: Option<std::path::PathBuf>,
    /// How TC programs are attached.
    pub tc_mode: tc::TcMode,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Keep one connection in this many (1: every one).
    pub sample_every: u32,
    /// The tunnels the programs look into.
    pub tunnels: Tunnels,
}

/// The encapsulations the programs look into: VXLAN on these UDP ports, Geneve on its port,
/// and IP in IP and GRE (which need no port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnels {
    /// Nothing is looked into when false: an encapsulated packet is its outer headers.
    pub enabled: bool,
    /// At most [`tracer_common::config::MAX_VXLAN_PORTS`]; more are left out.
    pub vxlan_ports: Vec<u16>,
    pub geneve_port: Option<u16>,
}

impl Default for Tunnels {
    /// VXLAN on IANA's port and Linux's (flannel's), Geneve on its port.
    fn default() -> Tunnels {
        Tunnels {
            enabled: true,
            vxlan_ports: vec![tunnel::VXLAN_PORT, tunnel::VXLAN_LINUX_PORT],
            geneve_port: Some(tunnel::GENEVE_PORT),
        }
    }
}

impl Tunnels {
    /// Writes the tunnels into the programs' configuration.
    fn configure(&self, config: &mut Config) {
        config.encap = u16::from(self.enabled);
        config.geneve_port = self.geneve_port.unwrap_or(0);
        let mut ports = self.vxlan_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        ports.retain(|&port| port != 0);
        for (slot, port) in config.vxlan_ports.iter_mut().zip(ports) {
            *slot = port;
        }
    }
}

/// The loader [`prepare_loader`] made, until [`Programs::load`] takes it.
static LOADER: Mutex<Option<EbpfLoader<'static>>> = Mutex::new(None);

/// Makes the eBPF loader now, while the process is at its smallest.
///
/// aya's `EbpfLoader::new` parses the running kernel's whole BTF, for CO-RE relocations that
/// tracer's object does not have (a unit test checks that it has none), and lets it go only
/// when told to: about 19 MiB on Linux 6.18, held for a moment. Made first thing, before the
/// runtime, the topology and the offsets, that moment is small and the rest of start-up stays
/// below it; made later, it was the peak a container's memory limit must allow
/// (bench/limits.md). `main` calls this first for the commands that load programs
/// ([`crate::cli::may_load_programs`]).
pub fn prepare_loader() {
    let loader = new_loader();
    *LOADER.lock().unwrap_or_else(PoisonError::into_inner) = Some(loader);
    crate::memory::release_free_memory();
}

/// The prepared loader, or a new one.
fn take_loader() -> EbpfLoader<'static> {
    LOADER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_else(new_loader)
}

fn new_loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

/// The types the hook table's BTF-typed rungs are loaded against.
fn attach_targets() -> Vec<btf::Attach> {
    hooks::HOOKS
        .iter()
        .flat_map(|spec| {
            spec.rungs.iter().filter_map(|rung| match rung.mechanism {
                Mechanism::TpBtf => Some(btf::Attach::Tracepoint(spec.target)),
                Mechanism::Fentry => Some(btf::Attach::Function(spec.target)),
                _ => None,
            })
        })
        .collect()
}

/// Loaded programs and their attachments.
pub struct Programs {
    ebpf: Ebpf,
    /// The kernel's ids of the BTF-typed programs' targets ([`btf::attach_btf`]), for loading
    /// them; released by [`Programs::climb`] once they are loaded.
    btf: Option<aya::Btf>,
    hooks: HookSet,
    /// Global hooks attached, with the mechanism the ladder chose.
    attachments: Vec<(Hook, Mechanism)>,
    /// Interfaces the TC programs are attached to.
    tc: tc::Attached,
    /// Notes for the user about reduced functionality.
    notes: Vec<String>,
    /// `enum skb_drop_reason` names from the running kernel.
    drop_reasons: HashMap<u32, String>,
}

impl Programs {
    /// Loads the object with `options` and the running kernel's offsets. Nothing is attached.
    pub fn load(options: &LoadOptions) -> anyhow::Result<Programs> {
        let (resolved, btf) = btf::resolve_kernel(options.kernel_btf.as_deref(), &attach_targets())
            .context(
                "tracer needs the kernel's BTF (a kernel built with CONFIG_DEBUG_INFO_BTF, or \
             --kernel-btf FILE)",
            )?;
        let mut notes = Vec::new();
        if let Some(why) = &resolved.conntrack_unavailable {
            notes.push(format!("conntrack tuples unavailable: {why}"));
        }
        let mut config = Config::new();
        config.filter = options.filter;
        config.snap_len = options.snap_len;
        config.snap_headers_only = u32::from(options.snap_headers_only);
        if let Some((&value, _)) = resolved
            .drop_reasons
            .iter()
            .find(|(_, name)| name.as_str() == "QUEUE_PURGE")
        {
            config.drop_reason_queue_purge = value;
        }
        config.offsets = resolved.offsets;
        config.wakeup_bytes = options.ring_bytes / WAKEUP_FRACTION;
        config.sample_every = options.sample_every;
        options.tunnels.configure(&mut config);
        let ebpf = take_loader()
            .override_global(CONFIG_SYMBOL, &config, true)
            .map_max_entries(map::EVENTS, options.ring_bytes)
            .load(OBJECT)
            .context("failed to load the eBPF object")?;
        Ok(Programs {
            ebpf,
            btf: Some(btf),
            hooks: options.hooks,
            attachments: Vec::new(),
            tc: tc::Attached::new(options.tc_mode),
            notes,
            drop_reasons: resolved.drop_reasons,
        })
    }

    /// The ring buffer, for the reader. Can be taken once.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(map::EVENTS)
            .ok_or_else(|| anyhow!("ring buffer already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Sums of the per-CPU counters, per hook.
    pub fn counters(&self) -> anyhow::Result<HashMap<Hook, HookCounters>> {
        let map = self
            .ebpf
            .map(map::COUNTERS)
            .ok_or_else(|| anyhow!("counters map missing"))?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut result = HashMap::new();
        for hook in Hook::ALL {
            let read = |counter: Counter| -> anyhow::Result<u64> {
                let values = array.get(&counter_index(hook as u8, counter), 0)?;
                Ok(values.iter().sum())
            };
            let (filtered, emitted, lost) = (
                read(Counter::Filtered)?,
                read(Counter::Emitted)?,
                read(Counter::Lost)?,
            );
            let counters = HookCounters {
                seen: filtered + emitted + lost,
                filtered,
                emitted,
                lost,
            };
            if counters.seen > 0 {
                result.insert(hook, counters);
            }
        }
        const _: () = assert!(COUNTER_SLOTS == 3);
        Ok(result)
    }

    /// Global hooks attached, with the mechanism each uses.
    pub fn attachments(&self) -> &[(Hook, Mechanism)] {
        &self.attachments
    }

    /// The hooks this load was asked for.
    pub fn hooks(&self) -> HookSet {
        self.hooks
    }

    /// Drop reason names of the running kernel, by value.
    pub fn drop_reasons(&self) -> &HashMap<u32, String> {
        &self.drop_reasons
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Attaches the socket programs to the root of the cgroup v2 hierarchy, so that every inet
    /// socket created from now on, in any container, reports its creator and its release.
    /// Packets of sockets created before stay without a process. Returns the hierarchy's mount.
    pub fn watch_sockets(&mut self) -> anyhow::Result<std::path::PathBuf> {
        let root = crate::cgroup::mount().context("no cgroup v2 hierarchy is mounted")?;
        let dir = std::fs::File::open(&root)
            .with_context(|| format!("cannot open {}", root.display()))?;
        for name in [program::SOCK_CREATE, program::SOCK_RELEASE] {
            let program: &mut CgroupSock = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .map_err(|err| anyhow!("loading {name}: {}", hooks::describe(&err)))?;
            // As a link (Linux 5.7+, and sock_release needs 5.9), which the kernel always
            // attaches alongside other programs, and which takes no attach flags.
            program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|err| anyhow!("attaching {name}: {}", hooks::describe(&err)))?;
        }
        Ok(root)
    }

    /// Interfaces the TC programs are attached to, for naming TC events.
    pub fn tc_interfaces(&self) -> impl Iterator<Item = &tc::TcInterface> {
        self.tc.interfaces()
    }

    /// Whether TC programs are attached to the interface.
    pub fn tc_attached(&self, netns_inode: u64, ifindex: u32) -> bool {
        self.tc.contains(netns_inode, ifindex)
    }

    /// (namespace inode, ifindex) of every TC attachment.
    pub fn tc_keys(&self) -> Vec<(u64, u32)> {
        self.tc.keys()
    }

    /// What was cleaned up from earlier runs while attaching.
    pub fn tc_cleaned(&mut self) -> Vec<String> {
        std::mem::take(&mut self.tc.cleaned)
    }

    /// How many interfaces have TC programs, and by which mechanism.
    pub fn tc_summary(&self) -> (usize, Option<Mechanism>) {
        (self.tc.len(), self.tc.mechanism())
    }
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

impl Drop for Programs {
    /// Detaches explicitly, so that clsact qdiscs tracer added can be removed after their
    /// filters; tracepoint links go with the object.
    fn drop(&mut self) {
        self.release_tc();
    }
}

#[cfg(test)]
mod tests {
    use super::{OBJECT, hooks::HOOKS};
    use tracer_common::hook::{map, program};

    /// Every program the hook table names, and every map the collector opens, is in the object
    /// that was built: a renamed program fails here rather than at run time.
    #[test]
    fn the_object_has_every_program_and_map_the_collector_names() {
        let object = aya_obj::Object::parse(OBJECT).expect("the built object parses");
        for spec in HOOKS {
            for rung in spec.rungs {
                assert!(
                    object.programs.contains_key(rung.program),
                    "program {} of hook {} is not in the object (it has {:?})",
                    rung.program,
                    spec.target,
                    object.programs.keys().collect::<Vec<_>>()
                );
            }
        }
        for name in [program::SOCK_CREATE, program::SOCK_RELEASE] {
            assert!(
                object.programs.contains_key(name),
                "socket program {name} is not in the object"
            );
        }
        for name in [map::EVENTS, map::COUNTERS, map::TRACKED] {
            assert!(
                object.maps.contains_key(name),
                "map {name} is not in the object"
            );
        }
    }

    /// The build script took the DWARF out of the object and left the BTF the loader reads.
    #[test]
    fn the_embedded_object_keeps_its_btf_and_not_its_dwarf() {
        use object::{Object as _, ObjectSection as _};

        let file = object::File::parse(OBJECT).expect("the built object parses as ELF");
        let names: Vec<&str> = file
            .sections()
            .map(|section| section.name().expect("section names are strings"))
            .collect();
        let dwarf: Vec<&&str> = names
            .iter()
            .filter(|name| name.contains(".debug_"))
            .collect();
        assert!(dwarf.is_empty(), "DWARF left in the object: {dwarf:?}");
        for wanted in [".BTF", ".BTF.ext", ".symtab"] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        let parsed = aya_obj::Object::parse(OBJECT).expect("the built object parses");
        assert!(parsed.btf.is_some(), "aya found no BTF in the object");
        assert!(
            parsed.btf_ext.is_some(),
            "aya found no BTF.ext in the object"
        );
    }

    /// The object is loaded without the kernel's BTF (`prepare_loader`), which only CO-RE
    /// relocations would need: it must have none.
    #[test]
    fn the_object_has_no_core_relocations() {
        let parsed = aya_obj::Object::parse(OBJECT).expect("the built object parses");
        assert!(
            !parsed.has_btf_relocations(),
            "the object has CO-RE relocations: load it with the kernel's BTF"
        );
    }
}
