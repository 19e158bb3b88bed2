//! The hook table: every hook tracer has, the programs that implement it, the ladder of
//! mechanisms that can attach them (best first), and what hop it shows. tracer uses the first
//! rung the running kernel accepts (loads and attaches).
//!
//! Hooks that are kernel tracepoints use the BTF tracepoint (typed, cheap, a stable
//! interface) and fall back to the raw tracepoint. The NAT function has no tracepoint: it is
//! reached with fentry, or a kprobe where fentry is refused, and is left out when neither
//! works; NAT is then still found from conntrack and by comparing hops. TC programs are
//! attached per interface, with TCX links where the kernel has them and to a clsact qdisc
//! otherwise (see [`super::tc`]).
//!
//! Adding a hook: a program in tracer-ebpf, its name in `tracer_common::hook::program`, a
//! [`Hook`] value, and one entry in [`HOOKS`].

use std::{fmt, path::Path};

use aya::programs::{BtfTracePoint, FEntry, KProbe, ProgramError, RawTracePoint};
use tracer_common::hook::{Hook, program};

use super::Programs;

/// Present when the kernel can create kprobes through perf events.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// A way of attaching a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Fentry,
    Kprobe,
    TpBtf,
    RawTp,
    /// A TCX link on an interface (Linux 6.6+).
    Tcx,
    /// A filter on an interface's clsact qdisc.
    Clsact,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Fentry => "fentry",
            Mechanism::Kprobe => "kprobe",
            Mechanism::TpBtf => "tp_btf",
            Mechanism::RawTp => "raw_tp",
            Mechanism::Tcx => "tcx",
            Mechanism::Clsact => "clsact",
        }
    }
}

/// One rung: a mechanism and the program in the object that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    pub mechanism: Mechanism,
    pub program: &'static str,
    /// What the hop lacks when this rung is the one used, for a kernel that allows no better.
    pub lacks: Option<&'static str>,
}

/// Where a hook's programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once, for the whole kernel (tracepoints, kernel functions).
    Global,
    /// On each traced interface (TC).
    Interface,
}

/// One hook: what runs where, how it is attached, and what it shows.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    pub hook: Hook,
    /// What `--hooks` calls it (the TC hooks share one name).
    pub name: &'static str,
    /// Whether a trace uses it unless told otherwise.
    pub default: bool,
    /// Tracepoint or kernel function the rungs attach to (for TC, the direction).
    pub target: &'static str,
    pub scope: Scope,
    /// Mechanisms, best first.
    pub rungs: &'static [Rung],
    /// Whether tracing cannot go on without this hook.
    pub required: bool,
    /// The hop it shows, for `tracer doctor` and the documentation.
    pub shows: &'static str,
}

const fn rung(mechanism: Mechanism, program: &'static str) -> Rung {
    Rung {
        mechanism,
        program,
        lacks: None,
    }
}

/// A rung for kernels without the kfree_skb tracepoint's reason argument (Linux 5.17).
const fn reasonless(mechanism: Mechanism, program: &'static str) -> Rung {
    Rung {
        lacks: Some(
            "without the kernel's drop reason (the rung for kernels whose kfree_skb \
             tracepoint has none: before Linux 5.17)",
        ),
        ..rung(mechanism, program)
    }
}

/// Every hook, in path order.
pub const HOOKS: [HookSpec; 8] = [
    HookSpec {
        hook: Hook::NetDevQueue,
        name: "queue",
        default: true,
        target: "net_dev_queue",
        scope: Scope::Global,
        rungs: &[
            rung(Mechanism::TpBtf, program::NET_DEV_QUEUE),
            rung(Mechanism::RawTp, program::NET_DEV_QUEUE_RAW),
        ],
        required: true,
        shows: "a packet handed to a device for transmission",
    },
    HookSpec {
        hook: Hook::NetDevStartXmit,
        name: "xmit",
        default: false,
        target: "net_dev_start_xmit",
        scope: Scope::Global,
        rungs: &[
            rung(Mechanism::TpBtf, program::NET_DEV_START_XMIT),
            rung(Mechanism::RawTp, program::NET_DEV_START_XMIT_RAW),
        ],
        required: false,
        shows: "the driver about to transmit the packet",
    },
    HookSpec {
        hook: Hook::NetifRx,
        name: "rx",
        default: false,
        target: "netif_rx",
        scope: Scope::Global,
        rungs: &[
            rung(Mechanism::TpBtf, program::NETIF_RX),
            rung(Mechanism::RawTp, program::NETIF_RX_RAW),
        ],
        required: false,
        shows: "a packet queued to a CPU's backlog (a veth delivering to its peer)",
    },
    HookSpec {
        hook: Hook::NetifReceiveSkb,
        name: "receive",
        default: true,
        target: "netif_receive_skb",
        scope: Scope::Global,
        rungs: &[
            rung(Mechanism::TpBtf, program::NETIF_RECEIVE_SKB),
            rung(Mechanism::RawTp, program::NETIF_RECEIVE_SKB_RAW),
        ],
        required: true,
        shows: "a packet entering a device's receive path (a bridge too)",
    },
    HookSpec {
        hook: Hook::KfreeSkb,
        name: "drop",
        default: true,
        target: "kfree_skb",
        scope: Scope::Global,
        rungs: &[
            rung(Mechanism::TpBtf, program::KFREE_SKB),
            rung(Mechanism::RawTp, program::KFREE_SKB_RAW),
            // Kernels before 5.17: the same place, without the kernel's reason.
            reasonless(Mechanism::TpBtf, program::KFREE_SKB_BARE),
            reasonless(Mechanism::RawTp, program::KFREE_SKB_BARE_RAW),
        ],
        required: false,
        shows: "a packet dropped, with the kernel's reason and the dropping function",
    },
    HookSpec {
        hook: Hook::NfNatManipPkt,
        name: "nat",
        default: true,
        target: "nf_nat_manip_pkt",
        scope: Scope::Global,
        rungs: &[
            rung(Mechanism::Fentry, program::NF_NAT_MANIP_PKT_FENTRY),
            rung(Mechanism::Kprobe, program::NF_NAT_MANIP_PKT_KPROBE),
        ],
        required: false,
        shows: "netfilter about to rewrite the packet (NAT)",
    },
    HookSpec {
        hook: Hook::TcIngress,
        name: "tc",
        default: false,
        target: "tc ingress",
        scope: Scope::Interface,
        rungs: &[
            rung(Mechanism::Tcx, program::TC_INGRESS),
            rung(Mechanism::Clsact, program::TC_INGRESS),
        ],
        required: false,
        shows: "the packet as the device received it, before the stack",
    },
    HookSpec {
        hook: Hook::TcEgress,
        name: "tc",
        default: false,
        target: "tc egress",
        scope: Scope::Interface,
        rungs: &[
            rung(Mechanism::Tcx, program::TC_EGRESS),
            rung(Mechanism::Clsact, program::TC_EGRESS),
        ],
        required: false,
        shows: "the packet as the device sends it, after queueing decisions",
    },
];

/// The table entry of `hook`.
pub fn spec(hook: Hook) -> &'static HookSpec {
    HOOKS
        .iter()
        .find(|spec| spec.hook == hook)
        .expect("every hook has an entry in HOOKS")
}

/// A set of hooks to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSet(u16);

impl HookSet {
    /// Every hook in the table.
    pub fn all() -> HookSet {
        HookSet::of(|_| true)
    }

    /// The hooks a trace uses unless told otherwise: one egress and one ingress point per
    /// device, drops, and the NAT function.
    pub fn default_set() -> HookSet {
        HookSet::of(|spec| spec.default)
    }

    /// The hooks a trace uses only when asked to.
    pub fn opt_in() -> HookSet {
        HookSet::of(|spec| !spec.default)
    }

    /// Every hook attached once for the whole kernel: no per-interface (TC) programs.
    pub fn global() -> HookSet {
        HookSet::of(|spec| spec.scope == Scope::Global)
    }

    fn of(keep: impl Fn(&HookSpec) -> bool) -> HookSet {
        HOOKS
            .iter()
            .filter(|spec| keep(spec))
            .fold(HookSet(0), |set, spec| set.with(spec.hook))
    }

    /// The hooks named `name` in `--hooks` (both TC hooks for `tc`).
    fn named(name: &str) -> Option<HookSet> {
        let set = HookSet::of(|spec| spec.name == name);
        (set.0 != 0).then_some(set)
    }

    /// Parses `--hooks`: comma-separated items applied in order to the default set. `all`,
    /// `default`, `stack` (every hook but TC) and a bare hook name start over from that set
    /// (`queue,receive` is exactly those two); `+name` adds a hook and `-name` removes one.
    pub fn parse(spec: &str) -> Result<HookSet, String> {
        let mut set = HookSet::default_set();
        for (index, item) in spec.split(',').map(str::trim).enumerate() {
            let (op, name) = match item.split_at_checked(1) {
                Some(("+", name)) => ('+', name),
                Some(("-", name)) => ('-', name),
                _ => ('=', item),
            };
            let named = match name {
                "all" => HookSet::all(),
                "default" => HookSet::default_set(),
                "stack" => HookSet::global(),
                name => HookSet::named(name).ok_or_else(|| {
                    format!(
                        "unknown hook '{name}' in --hooks (hooks: {}; sets: all, default, stack)",
                        hook_names().join(", ")
                    )
                })?,
            };
            set = match op {
                '+' => HookSet(set.0 | named.0),
                '-' => HookSet(set.0 & !named.0),
                _ if index == 0 => named,
                _ => HookSet(set.0 | named.0),
            };
        }
        if set.0 == 0 {
            return Err("--hooks leaves no hook to attach".to_owned());
        }
        Ok(set)
    }

    /// The names of the hooks in the set, in table order.
    pub fn names(self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for spec in HOOKS.iter().filter(|spec| self.contains(spec.hook)) {
            if !names.contains(&spec.name) {
                names.push(spec.name);
            }
        }
        names
    }

    pub fn with(self, hook: Hook) -> HookSet {
        HookSet(self.0 | (1 << hook as u8))
    }

    pub fn contains(self, hook: Hook) -> bool {
        self.0 & (1 << hook as u8) != 0
    }

    /// Whether any hook of the set is attached per interface.
    pub fn has_interface_hooks(self) -> bool {
        HOOKS
            .iter()
            .any(|spec| spec.scope == Scope::Interface && self.contains(spec.hook))
    }
}

/// Every hook name `--hooks` takes, in table order.
pub fn hook_names() -> Vec<&'static str> {
    HookSet::all().names()
}

/// Why a rung was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The kernel refused to load the program (the verifier, or a policy such as EPERM).
    Load(String),
    /// The program loaded (it passed the verifier) but could not be attached.
    Attach(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Load(why) => write!(f, "the kernel refused to load it: {why}"),
            Refusal::Attach(why) => {
                write!(f, "it passed the verifier, but attaching failed: {why}")
            }
        }
    }
}

/// What happened on one hook's ladder.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub spec: HookSpec,
    /// Every rung tried, in order, with its result.
    pub tried: Vec<(Rung, Result<(), Refusal>)>,
}

impl Outcome {
    /// The rung used: the first that worked.
    pub fn chosen_rung(&self) -> Option<Rung> {
        self.tried
            .iter()
            .find(|(_, result)| result.is_ok())
            .map(|(rung, _)| *rung)
    }

    pub fn chosen(&self) -> Option<Mechanism> {
        self.chosen_rung().map(|rung| rung.mechanism)
    }
}

impl Programs {
    /// Climbs the ladder of every global hook in the loaded set: attaches each with the first
    /// rung that works. With `all`, tries every rung even after one worked (for `tracer
    /// doctor`), keeping only the first. Releases the kernel's BTF when done: nothing loaded
    /// later needs it (TC programs are not BTF-typed).
    pub fn climb(&mut self, all: bool) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for spec in HOOKS {
            if spec.scope != Scope::Global || !self.hooks.contains(spec.hook) {
                continue;
            }
            let mut outcome = Outcome {
                spec,
                tried: Vec::new(),
            };
            for rung in spec.rungs {
                let chosen = outcome.chosen().is_some();
                if chosen && !all {
                    break;
                }
                let result = self.try_rung(spec.target, *rung, !chosen);
                if result.is_ok() && !chosen {
                    self.attachments.push((spec.hook, rung.mechanism));
                    if let Some(lacks) = rung.lacks {
                        self.notes
                            .push(format!("the {} hop is {lacks}", spec.target));
                    }
                }
                outcome.tried.push((*rung, result));
            }
            outcomes.push(outcome);
        }
        self.btf = None;
        outcomes
    }

    /// Loads and attaches one rung; unless `keep`, detaches and unloads it again.
    fn try_rung(&mut self, target: &str, rung: Rung, keep: bool) -> Result<(), Refusal> {
        let missing = || Refusal::Load(format!("program {} missing from the object", rung.program));
        let btf = self
            .btf
            .as_ref()
            .ok_or_else(|| Refusal::Load("the kernel's BTF was already released".to_owned()))?;
        let program = self.ebpf.program_mut(rung.program).ok_or_else(missing)?;
        match rung.mechanism {
            Mechanism::TpBtf => {
                let p: &mut BtfTracePoint = program.try_into().map_err(load)?;
                p.load(target, btf).map_err(load)?;
                let result = p.attach().map(drop).map_err(attach);
                settle(result, keep, || p.unload())
            }
            Mechanism::RawTp => {
                let p: &mut RawTracePoint = program.try_into().map_err(load)?;
                p.load().map_err(load)?;
                let result = p.attach(target).map(drop).map_err(attach);
                settle(result, keep, || p.unload())
            }
            Mechanism::Fentry => {
                let p: &mut FEntry = program.try_into().map_err(load)?;
                p.load(target, btf).map_err(|err| match err {
                    // The function is not in vmlinux: it lives in a module.
                    ProgramError::Btf(_) => Refusal::Load(format!(
                        "{target} is not in the kernel image's BTF (it is in a module; fentry \
                         on module functions is not supported by aya 0.14)"
                    )),
                    other => load(other),
                })?;
                let result = p.attach().map(drop).map_err(attach);
                settle(result, keep, || p.unload())
            }
            Mechanism::Tcx | Mechanism::Clsact => Err(Refusal::Load(format!(
                "{} is attached per interface, not globally",
                rung.program
            ))),
            Mechanism::Kprobe => {
                let p: &mut KProbe = program.try_into().map_err(load)?;
                p.load().map_err(load)?;
                let result = p.attach(target, 0).map(drop).map_err(|err| {
                    Refusal::Attach(if Path::new(KPROBE_PMU).exists() {
                        describe(&err)
                    } else {
                        "this kernel has no kprobe support (CONFIG_KPROBES is off)".to_owned()
                    })
                });
                settle(result, keep, || p.unload())
            }
        }
    }
}

/// Unloads (which also detaches) a program that loaded but is not kept.
fn settle(
    result: Result<(), Refusal>,
    keep: bool,
    unload: impl FnOnce() -> Result<(), ProgramError>,
) -> Result<(), Refusal> {
    if result.is_err() || !keep {
        let _ = unload();
    }
    result
}

fn load(err: ProgramError) -> Refusal {
    Refusal::Load(describe(&err))
}

fn attach(err: ProgramError) -> Refusal {
    Refusal::Attach(describe(&err))
}

/// The root cause of an aya error in one line, without the verifier log.
pub(crate) fn describe(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The whole log is long; `RUST_LOG=debug` shows it for a bug report.
            log::debug!("verifier log:\n{verifier_log}");
            io_error.to_string()
        }
        ProgramError::SyscallError(syscall) => {
            format!("{} failed: {}", syscall.call, syscall.io_error)
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_has_one_egress_and_one_ingress_point_drops_and_nat() {
        assert_eq!(
            HookSet::default_set().names(),
            ["queue", "receive", "drop", "nat"]
        );
    }

    #[test]
    fn hooks_are_added_removed_and_replaced() {
        let parse = |spec: &str| HookSet::parse(spec).map(HookSet::names);
        assert_eq!(
            parse("+tc,+xmit").unwrap(),
            ["queue", "xmit", "receive", "drop", "nat", "tc"]
        );
        assert_eq!(parse("all").unwrap(), hook_names());
        assert_eq!(parse("all,-tc").unwrap(), HookSet::global().names());
        assert_eq!(parse("stack").unwrap(), HookSet::global().names());
        assert_eq!(parse("queue,receive").unwrap(), ["queue", "receive"]);
        assert_eq!(parse("-drop").unwrap(), ["queue", "receive", "nat"]);
        assert!(
            parse("+bogus")
                .unwrap_err()
                .contains("unknown hook 'bogus'")
        );
        assert!(parse("queue,-queue").unwrap_err().contains("no hook"));
    }
}
