//! What the kernel's nf_tables tracing reports: one [`TraceEvent`] per chain, rule, return and
//! policy a marked packet meets, with the verdict. Decoded from netlink by
//! [`super::netlink::TraceSocket`].

use crate::{attribution::PacketKey, decode::Tuple};

/// A verdict as nf_tables reports it (`enum nft_verdicts` and `NF_DROP`/`NF_ACCEPT`,
/// include/uapi/linux/netfilter/nf_tables.h).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    Goto(String),
    Return,
    #[default]
    Continue,
    Other(i32),
}

impl Verdict {
    pub fn from_code(code: i32, chain: Option<String>) -> Verdict {
        match code {
            libc::NF_DROP => Verdict::Drop,
            libc::NF_ACCEPT => Verdict::Accept,
            libc::NFT_CONTINUE => Verdict::Continue,
            libc::NFT_JUMP => Verdict::Jump(chain.unwrap_or_default()),
            libc::NFT_GOTO => Verdict::Goto(chain.unwrap_or_default()),
            libc::NFT_RETURN => Verdict::Return,
            other => Verdict::Other(other),
        }
    }

    /// As `nft monitor trace` writes it.
    pub fn name(&self) -> String {
        match self {
            Verdict::Accept => "accept".into(),
            Verdict::Drop => "drop".into(),
            Verdict::Jump(chain) => format!("jump {chain}"),
            Verdict::Goto(chain) => format!("goto {chain}"),
            Verdict::Return => "return".into(),
            Verdict::Continue => "continue".into(),
            Verdict::Other(code) => format!("verdict {code}"),
        }
    }

    /// Whether the verdict ends the packet's walk through the base chain.
    pub fn ends_walk(&self) -> bool {
        matches!(self, Verdict::Accept | Verdict::Drop)
    }
}

/// What a trace event reports (`enum nft_trace_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceKind {
    /// A rule matched and gave a verdict.
    Rule,
    /// The chain ended and its policy applied.
    Policy,
    /// A user chain ended and returned.
    Return,
    #[default]
    Other,
}

impl TraceKind {
    /// `NFT_TRACETYPE_*`.
    pub fn from_code(code: u32) -> TraceKind {
        match code {
            1 => TraceKind::Policy,
            2 => TraceKind::Return,
            3 => TraceKind::Rule,
            _ => TraceKind::Other,
        }
    }
}

/// One event of the kernel's trace.
#[derive(Debug, Clone, Default)]
pub struct TraceEvent {
    /// `ip`, `ip6`, `inet`, ...: the table's family.
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// The rule's handle; none for a policy.
    pub handle: Option<u64>,
    pub kind: TraceKind,
    pub verdict: Verdict,
    /// The kernel's id of the packet within this trace.
    pub id: u32,
    /// Inode of the network namespace the event came from.
    pub netns: u64,
    /// The packet's family (`NFPROTO_IPV4` or `NFPROTO_IPV6`).
    pub nfproto: u8,
    /// The packet's IP header (up to 40 bytes) and transport header (up to 20) when traced.
    pub network: Vec<u8>,
    pub transport: Vec<u8>,
}

impl TraceEvent {
    /// The traced packet's identity and tuple, read from its headers: only the first event
    /// of a walk through a base chain carries them.
    pub fn packet(&self) -> Option<(PacketKey, Tuple)> {
        PacketKey::from_headers(&self.network, &self.transport)
    }

    /// Whether this event enters a base chain (it carries the packet's headers).
    pub fn enters(&self) -> bool {
        !self.network.is_empty()
    }

    /// Whether this event ends the packet's walk: a policy, an accept or a drop.
    pub fn ends_walk(&self) -> bool {
        self.kind == TraceKind::Policy || self.verdict.ends_walk()
    }
}
