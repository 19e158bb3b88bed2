//! The hook ladder: every hook lists the mechanisms that can implement it, best first, and
//! tracer uses the first one the running kernel accepts (loads and attaches).
//!
//! Hooks that are kernel tracepoints use the BTF tracepoint (typed, cheap, a stable
//! interface) and fall back to the raw tracepoint. The NAT function has no tracepoint: it is
//! reached with fentry, or a kprobe where fentry is refused, and is left out when neither
//! works; NAT is then still found from conntrack and by comparing hops. TC programs have their
//! own ladder (TCX links, then clsact; see [`super::tc`]).

use std::{fmt, path::Path};

use aya::programs::{BtfTracePoint, FEntry, KProbe, ProgramError, RawTracePoint};
use tracer_common::hook::Hook;

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
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Fentry => "fentry",
            Mechanism::Kprobe => "kprobe",
            Mechanism::TpBtf => "tp_btf",
            Mechanism::RawTp => "raw_tp",
        }
    }
}

/// One rung: a mechanism and the program in the object that uses it.
#[derive(Debug, Clone, Copy)]
pub struct Rung {
    pub mechanism: Mechanism,
    pub program: &'static str,
}

/// The ladder of one hook.
#[derive(Debug, Clone, Copy)]
pub struct Ladder {
    pub hook: Hook,
    /// Tracepoint or kernel function the rungs attach to.
    pub target: &'static str,
    pub rungs: &'static [Rung],
    /// Whether tracing cannot go on without this hook.
    pub required: bool,
}

const fn rung(mechanism: Mechanism, program: &'static str) -> Rung {
    Rung { mechanism, program }
}

/// Every global hook, in path order.
pub const LADDERS: [Ladder; 6] = [
    Ladder {
        hook: Hook::NetDevQueue,
        target: "net_dev_queue",
        rungs: &[
            rung(Mechanism::TpBtf, "net_dev_queue"),
            rung(Mechanism::RawTp, "net_dev_queue_raw"),
        ],
        required: true,
    },
    Ladder {
        hook: Hook::NetDevStartXmit,
        target: "net_dev_start_xmit",
        rungs: &[
            rung(Mechanism::TpBtf, "net_dev_start_xmit"),
            rung(Mechanism::RawTp, "net_dev_start_xmit_raw"),
        ],
        required: true,
    },
    Ladder {
        hook: Hook::NetifRx,
        target: "netif_rx",
        rungs: &[
            rung(Mechanism::TpBtf, "netif_rx"),
            rung(Mechanism::RawTp, "netif_rx_raw"),
        ],
        required: true,
    },
    Ladder {
        hook: Hook::NetifReceiveSkb,
        target: "netif_receive_skb",
        rungs: &[
            rung(Mechanism::TpBtf, "netif_receive_skb"),
            rung(Mechanism::RawTp, "netif_receive_skb_raw"),
        ],
        required: true,
    },
    Ladder {
        hook: Hook::KfreeSkb,
        target: "kfree_skb",
        rungs: &[
            rung(Mechanism::TpBtf, "kfree_skb"),
            rung(Mechanism::RawTp, "kfree_skb_raw"),
        ],
        required: false,
    },
    Ladder {
        hook: Hook::NfNatManipPkt,
        target: "nf_nat_manip_pkt",
        rungs: &[
            rung(Mechanism::Fentry, "nf_nat_manip_pkt_fentry"),
            rung(Mechanism::Kprobe, "nf_nat_manip_pkt_kprobe"),
        ],
        required: false,
    },
];

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

/// What happened on one ladder.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ladder: Ladder,
    /// Every rung tried, in order, with its result.
    pub tried: Vec<(Mechanism, Result<(), Refusal>)>,
}

impl Outcome {
    pub fn chosen(&self) -> Option<Mechanism> {
        self.tried
            .iter()
            .find(|(_, result)| result.is_ok())
            .map(|(mechanism, _)| *mechanism)
    }
}

impl Programs {
    /// Climbs every ladder: attaches each hook with the first rung that works. With `all`,
    /// tries every rung even after one worked (for `tracer doctor`), keeping only the first.
    pub fn climb(&mut self, all: bool) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for ladder in LADDERS {
            let mut outcome = Outcome {
                ladder,
                tried: Vec::new(),
            };
            for rung in ladder.rungs {
                let chosen = outcome.chosen().is_some();
                if chosen && !all {
                    break;
                }
                let result = self.try_rung(ladder.target, *rung, !chosen);
                if result.is_ok() && !chosen {
                    self.attachments.push((ladder.hook, rung.mechanism));
                }
                outcome.tried.push((rung.mechanism, result));
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Loads and attaches one rung; unless `keep`, detaches and unloads it again.
    fn try_rung(&mut self, target: &str, rung: Rung, keep: bool) -> Result<(), Refusal> {
        let missing = || Refusal::Load(format!("program {} missing from the object", rung.program));
        let btf = &self.btf;
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
        ProgramError::LoadError { io_error, .. } => io_error.to_string(),
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
