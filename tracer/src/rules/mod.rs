//! Which netfilter rule acted on a packet: the NAT rule behind a translation, the rule (or
//! chain policy) behind a drop.
//!
//! One job per module:
//! - [`matches`]: the filter compiled to what nf_tables can test;
//! - [`netlink`]: tracer's own table, which the kernel deletes when tracer's socket closes,
//!   and the socket the kernel reports each marked packet's walk to;
//! - [`trace`]: those reports as data;
//! - [`follow`]: a table and socket in every namespace with nf_tables tables ([`Rules`]);
//! - [`join`]: the reports joined to traced packets ([`RuleBook`], [`annotate`]), with
//!   [`listing`] giving each rule's text as `nft` prints it;
//! - [`doctor`]: whether all this works here.
//!
//! The values the pure stages carry (the rule, the packet key) are in
//! [`crate::attribution`].

pub mod doctor;
pub mod follow;
pub mod join;
pub mod listing;
pub mod matches;
pub mod netlink;
pub mod trace;

pub use follow::{Namespace, Rules};
pub use join::{RuleBook, Translation, annotate};
pub use matches::TunnelPorts;

/// How much of what nf_tables reports is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The rules that translated or dropped a packet.
    Acting,
    /// Also each packet's walk through the chains: every rule it matched, with its verdict.
    Walk,
}
