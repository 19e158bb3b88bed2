//! The batch that creates tracer's table: an owned `inet` table whose chains mark the packets
//! of the filter's [`Match`]es with `meta nftrace set 1`, written as nf_tables expressions.
//!
//! Attribute numbers are from include/uapi/linux/netfilter/nf_tables.h (`libc` has the message
//! types, registers and expression keys, not the attributes).

use std::net::IpAddr;

use tracer_common::wire::{ipv4, ipv6, l4};

use super::message::Message;
use crate::rules::matches::Match;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// `NFT_TABLE_F_OWNER` (Linux 5.12): the table belongs to the socket that made it.
const NFT_TABLE_F_OWNER: u32 = 2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
/// Before raw (-300) and conntrack (-200): the flag is set before anything else looks.
const PRIORITY: i32 = -350;
/// Right after conntrack (-200), before mangle (-150) and DNAT (-100).
const CT_PRIORITY: i32 = -190;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

/// What a rule's tests read: the packet's headers, or a tuple of its conntrack entry
/// (`IP_CT_DIR_ORIGINAL` 0, `IP_CT_DIR_REPLY` 1).
#[derive(Debug, Clone, Copy)]
enum Source {
    Headers,
    Conntrack(u8),
}

/// One of tracer's chains: its name, hook, priority and what its rules test.
pub struct Chain {
    name: &'static str,
    hook: i32,
    priority: i32,
    sources: &'static [Source],
}

/// The requests of one batch, by sequence number: what each one was, to say which the kernel
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Table,
    Chain(&'static str),
    Rule(&'static str),
}

/// tracer's chains. Before raw and conntrack, the packet's own headers; just after conntrack
/// (-200), both tuples of its connection, so that the packets of a matching connection are
/// traced on both sides of a NAT (a reply to a published port carries the container's port,
/// not the one the filter names). Every packet is marked in the first chains already when the
/// filter matches everything.
fn chains(matches: &[Match]) -> Vec<Chain> {
    const HEADERS: &[Source] = &[Source::Headers];
    const CONNTRACK: &[Source] = &[Source::Conntrack(0), Source::Conntrack(1)];
    let chain = |name, hook, priority, sources| Chain {
        name,
        hook,
        priority,
        sources,
    };
    let mut chains = vec![
        chain("prerouting", libc::NF_INET_PRE_ROUTING, PRIORITY, HEADERS),
        chain("output", libc::NF_INET_LOCAL_OUT, PRIORITY, HEADERS),
    ];
    if !matches.is_empty() && !matches.contains(&Match::default()) {
        chains.extend([
            chain(
                "prerouting-ct",
                libc::NF_INET_PRE_ROUTING,
                CT_PRIORITY,
                CONNTRACK,
            ),
            chain("output-ct", libc::NF_INET_LOCAL_OUT, CT_PRIORITY, CONNTRACK),
        ]);
    }
    chains
}

/// The batch that creates the owned table `name`, its chains and their rules, and what each of
/// its requests is, by sequence number (the batch's two ends are not acknowledged).
pub fn batch(name: &str, matches: &[Match]) -> (Vec<u8>, Vec<(u32, Request)>) {
    build(name, chains(matches), matches)
}

/// The batch that creates the owned table `name` alone: whether the kernel takes the owner
/// flag.
pub fn bare_table(name: &str) -> (Vec<u8>, Vec<(u32, Request)>) {
    build(name, Vec::new(), &[])
}

fn build(name: &str, chains: Vec<Chain>, matches: &[Match]) -> (Vec<u8>, Vec<(u32, Request)>) {
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut requests = Vec::new();
    let subsys = libc::NFNL_SUBSYS_NFTABLES as u16;
    let request = libc::NLM_F_REQUEST as u16;
    let mut bytes = Message::new(
        libc::NFNL_MSG_BATCH_BEGIN as u16,
        request,
        next(),
        0,
        subsys,
    )
    .finish();
    let table_seq = next();
    let mut table = Message::nft(
        libc::NFT_MSG_NEWTABLE,
        libc::NLM_F_CREATE | libc::NLM_F_EXCL,
        table_seq,
    );
    table
        .str(NFTA_TABLE_NAME, name)
        .be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
    bytes.extend(table.finish());
    requests.push((table_seq, Request::Table));
    for chain in chains {
        let chain_seq = next();
        let mut msg = Message::nft(
            libc::NFT_MSG_NEWCHAIN,
            libc::NLM_F_CREATE | libc::NLM_F_EXCL,
            chain_seq,
        );
        msg.str(NFTA_CHAIN_TABLE, name)
            .str(NFTA_CHAIN_NAME, chain.name);
        msg.begin(NFTA_CHAIN_HOOK)
            .be32(NFTA_HOOK_HOOKNUM, chain.hook)
            .attr(NFTA_HOOK_PRIORITY, &chain.priority.to_be_bytes())
            .end();
        msg.be32(NFTA_CHAIN_POLICY, libc::NF_ACCEPT)
            .str(NFTA_CHAIN_TYPE, "filter");
        bytes.extend(msg.finish());
        requests.push((chain_seq, Request::Chain(chain.name)));
        for &source in chain.sources {
            for m in matches {
                let rule_seq = next();
                let mut rule = Message::nft(
                    libc::NFT_MSG_NEWRULE,
                    libc::NLM_F_CREATE | libc::NLM_F_APPEND,
                    rule_seq,
                );
                rule.str(NFTA_RULE_TABLE, name)
                    .str(NFTA_RULE_CHAIN, chain.name);
                rule_expressions(&mut rule, m, source);
                bytes.extend(rule.finish());
                requests.push((rule_seq, Request::Rule(chain.name)));
            }
        }
    }
    bytes
        .extend(Message::new(libc::NFNL_MSG_BATCH_END as u16, request, next(), 0, subsys).finish());
    (bytes, requests)
}

/// One expression of a rule: its name, then its attributes.
fn expr(msg: &mut Message, name: &str, body: impl FnOnce(&mut Message)) {
    msg.begin(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, name);
    msg.begin(NFTA_EXPR_DATA);
    body(msg);
    msg.end().end();
}

/// `NFTA_DATA_VALUE` nested in `kind`.
fn data(msg: &mut Message, kind: u16, value: &[u8]) {
    msg.begin(kind).attr(NFTA_DATA_VALUE, value).end();
}

fn load_meta(msg: &mut Message, key: i32) {
    expr(msg, "meta", |m| {
        m.be32(NFTA_META_KEY, key)
            .be32(NFTA_META_DREG, libc::NFT_REG_1);
    });
}

fn load_payload(msg: &mut Message, base: i32, offset: usize, len: usize) {
    expr(msg, "payload", |m| {
        m.be32(NFTA_PAYLOAD_DREG, libc::NFT_REG_1)
            .be32(NFTA_PAYLOAD_BASE, base)
            .be32(NFTA_PAYLOAD_OFFSET, offset as u32)
            .be32(NFTA_PAYLOAD_LEN, len as u32);
    });
}

fn compare(msg: &mut Message, op: i32, value: &[u8]) {
    expr(msg, "cmp", |m| {
        m.be32(NFTA_CMP_SREG, libc::NFT_REG_1).be32(NFTA_CMP_OP, op);
        data(m, NFTA_CMP_DATA, value);
    });
}

/// Register 1 &= mask.
fn mask(msg: &mut Message, mask: &[u8]) {
    expr(msg, "bitwise", |m| {
        m.be32(NFTA_BITWISE_SREG, libc::NFT_REG_1)
            .be32(NFTA_BITWISE_DREG, libc::NFT_REG_1)
            .be32(NFTA_BITWISE_LEN, mask.len() as u32);
        data(m, NFTA_BITWISE_MASK, mask);
        data(m, NFTA_BITWISE_XOR, &vec![0; mask.len()]);
    });
}

/// Loads a conntrack key of one direction of the packet's connection into register 1; a
/// packet without conntrack ends the rule there.
fn load_ct(msg: &mut Message, key: i32, direction: u8) {
    expr(msg, "ct", |m| {
        m.be32(NFTA_CT_DREG, libc::NFT_REG_1)
            .be32(NFTA_CT_KEY, key)
            .attr(NFTA_CT_DIRECTION, &[direction]);
    });
}

/// The expressions of one match: `Match`'s tests in order on `source`, then
/// `meta nftrace set 1`, then `accept`.
fn rule_expressions(msg: &mut Message, m: &Match, source: Source) {
    msg.begin(NFTA_RULE_EXPRESSIONS);
    if let Some(family) = m.family {
        load_meta(msg, libc::NFT_META_NFPROTO);
        compare(msg, libc::NFT_CMP_EQ, &[family]);
    }
    if let Some(proto) = m.proto {
        match source {
            Source::Headers => load_meta(msg, libc::NFT_META_L4PROTO),
            Source::Conntrack(dir) => load_ct(msg, libc::NFT_CT_PROTOCOL, dir),
        }
        compare(msg, libc::NFT_CMP_EQ, &[proto]);
    }
    for net in &m.nets {
        let (offset, ct_key, bytes) = match (net.addr, net.dst) {
            (IpAddr::V4(a), false) => (ipv4::SRC, libc::NFT_CT_SRC_IP, a.octets().to_vec()),
            (IpAddr::V4(a), true) => (ipv4::DST, libc::NFT_CT_DST_IP, a.octets().to_vec()),
            (IpAddr::V6(a), false) => (ipv6::SRC, libc::NFT_CT_SRC_IP6, a.octets().to_vec()),
            (IpAddr::V6(a), true) => (ipv6::DST, libc::NFT_CT_DST_IP6, a.octets().to_vec()),
        };
        match source {
            Source::Headers => {
                load_payload(msg, libc::NFT_PAYLOAD_NETWORK_HEADER, offset, bytes.len());
            }
            Source::Conntrack(dir) => load_ct(msg, ct_key, dir),
        }
        let bits = usize::from(net.prefix);
        if bits < bytes.len() * 8 {
            let netmask: Vec<u8> = (0..bytes.len())
                .map(|i| {
                    let ones = bits.saturating_sub(i * 8).min(8);
                    (0xff_u16 << (8 - ones)) as u8
                })
                .collect();
            mask(msg, &netmask);
            let network: Vec<u8> = bytes.iter().zip(&netmask).map(|(b, m)| b & m).collect();
            compare(msg, libc::NFT_CMP_EQ, &network);
        } else {
            compare(msg, libc::NFT_CMP_EQ, &bytes);
        }
    }
    for port in &m.ports {
        match source {
            Source::Headers => load_payload(
                msg,
                libc::NFT_PAYLOAD_TRANSPORT_HEADER,
                if port.dst { l4::DST_PORT } else { l4::SRC_PORT },
                2,
            ),
            Source::Conntrack(dir) => load_ct(
                msg,
                if port.dst {
                    libc::NFT_CT_PROTO_DST
                } else {
                    libc::NFT_CT_PROTO_SRC
                },
                dir,
            ),
        }
        if port.lo == port.hi {
            compare(msg, libc::NFT_CMP_EQ, &port.lo.to_be_bytes());
        } else {
            compare(msg, libc::NFT_CMP_GTE, &port.lo.to_be_bytes());
            compare(msg, libc::NFT_CMP_LTE, &port.hi.to_be_bytes());
        }
    }
    expr(msg, "immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, libc::NFT_REG_1);
        data(m, NFTA_IMMEDIATE_DATA, &[1]);
    });
    expr(msg, "meta", |m| {
        m.be32(NFTA_META_KEY, libc::NFT_META_NFTRACE)
            .be32(NFTA_META_SREG, libc::NFT_REG_1);
    });
    // `accept` ends tracer's chain (and only it: every other chain still sees the packet).
    // From the marking on, the kernel reports every rule, chain end and policy the packet
    // meets; ending here leaves one report from tracer's own chain instead of three.
    expr(msg, "immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, libc::NFT_REG_VERDICT);
        m.begin(NFTA_IMMEDIATE_DATA).begin(NFTA_DATA_VERDICT);
        m.be32(NFTA_VERDICT_CODE, libc::NF_ACCEPT).end().end();
    });
    msg.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::matches::PortMatch;

    #[test]
    fn every_request_of_the_batch_is_numbered_with_what_it_makes() {
        let port = Match {
            proto: Some(6),
            ports: vec![PortMatch {
                dst: true,
                lo: 80,
                hi: 80,
            }],
            ..Match::default()
        };
        let (bytes, requests) = batch("tracer-1", &[port]);
        // The table, four chains, one rule in each header chain and two (one per conntrack
        // direction) in each conntrack chain.
        assert_eq!(requests.len(), 1 + 4 + 2 + 4);
        assert_eq!(requests[0], (2, Request::Table));
        assert_eq!(requests[1], (3, Request::Chain("prerouting")));
        assert_eq!(requests[2], (4, Request::Rule("prerouting")));
        let seqs: Vec<u32> = super::super::message::messages(&bytes)
            .map(|m| m.kind)
            .zip(1..)
            .map(|(_, seq)| seq)
            .collect();
        // The batch's ends around the requests.
        assert_eq!(seqs.len(), requests.len() + 2);
    }

    #[test]
    fn a_filter_that_matches_everything_needs_no_conntrack_chains() {
        let names: Vec<&str> = chains(&[Match::default()]).iter().map(|c| c.name).collect();
        assert_eq!(names, ["prerouting", "output"]);
    }

    #[test]
    fn the_owner_check_makes_the_table_alone() {
        let (bytes, requests) = bare_table("tracer-1-check");
        assert_eq!(requests, [(2, Request::Table)]);
        assert_eq!(super::super::message::messages(&bytes).count(), 3);
    }
}
