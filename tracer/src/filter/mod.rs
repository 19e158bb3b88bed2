//! tcpdump-style filter expressions (pcap-filter(7) syntax), parsed here and compiled into the
//! small postfix program the kernel programs evaluate (`tracer_common::config::Filter`).
//!
//! Supported: `ip`, `ip6`, `tcp`, `udp`, `sctp`, `icmp`, `icmp6`; `host`, `net` (CIDR),
//! `port`, `portrange` with `src`, `dst`, `src or dst`, `src and dst`, and a protocol
//! qualifier (`tcp port 80`); `and`/`&&`, `or`/`||`, `not`/`!`, parentheses; and, as in
//! tcpdump, a bare value repeating the previous primitive's qualifiers (`host a or b`).
//! Anything else is refused with a message naming it.
//!
//! The expression is matched against the packet's tuple at each hop and against both
//! conntrack tuples, so a flow matches on either side of a NAT.

mod compile;
mod parse;

pub use compile::compile;
pub use parse::{Expr, Side, parse};

/// A filter expression that cannot be used, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad filter expression: {0}")]
pub struct FilterError(pub String);

#[cfg(test)]
mod tests;
