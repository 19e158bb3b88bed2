//! nf_tables over netlink: tracer's own table, and the trace events the kernel sends.
//!
//! The table is created with the owner flag (`NFT_TABLE_F_OWNER`, Linux 5.12+): it belongs to
//! the netlink socket that made it and the kernel deletes it when that socket closes, however
//! the process ends. Its chains only set `meta nftrace` on packets the filter can match; the
//! kernel then reports every chain and rule such a packet traverses to the `NFNLGRP_NFTRACE`
//! group.
//!
//! No maintained crate decodes trace events, and the crates that build rules either open a
//! socket per batch (which would take an owned table with it) or need libclang to build; the
//! few messages here are written with a small attribute writer and read with
//! `netlink-packet-core`'s attribute parser.

use std::{io, net::IpAddr};

use netlink_packet_core::{NlaBuffer, NlasIterator};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::{Match, TraceEvent, TraceKind, Verdict};

/// What the names of tracer's tables (in the `inet` family) start with.
pub const TABLE_PREFIX: &str = "tracer-";

/// The name of this process's table, `tracer-PID`: tracers running at once each have their
/// own.
pub fn table_name() -> String {
    format!("{TABLE_PREFIX}{}", std::process::id())
}

/// Whether a table is a tracer's (this one's or another's running at the same time).
pub fn is_tracers(family: &str, table: &str) -> bool {
    family == "inet" && table.starts_with(TABLE_PREFIX)
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNLGRP_NFTRACE: u32 = 9;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_TRACE: u16 = 17;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFT_TABLE_F_OWNER: u32 = 2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
/// Before raw (-300) and conntrack (-200): the flag is set before anything else looks.
const PRIORITY: i32 = -350;
/// Right after conntrack (-200), before mangle (-150) and DNAT (-100).
const CT_PRIORITY: i32 = -190;
const NF_ACCEPT: u32 = 1;

const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFT_CT_PROTOCOL: u32 = 10;
const NFT_CT_PROTO_SRC: u32 = 11;
const NFT_CT_PROTO_DST: u32 = 12;
const NFT_CT_SRC_IP: u32 = 19;
const NFT_CT_DST_IP: u32 = 20;
const NFT_CT_SRC_IP6: u32 = 21;
const NFT_CT_DST_IP6: u32 = 22;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;

const NFT_REG_1: u32 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_NFTRACE: u32 = 12;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_NFPROTO: u16 = 15;
/// A policy event's verdict: the chain's policy, instead of `NFTA_TRACE_VERDICT`.
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// A netlink message under construction, attributes appended in order.
struct Message {
    bytes: Vec<u8>,
    /// Where each open nested attribute starts.
    open: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Message {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg
        bytes.extend_from_slice(&[family, 0]);
        bytes.extend_from_slice(&res_id.to_be_bytes());
        Message {
            bytes,
            open: Vec::new(),
        }
    }

    /// An nf_tables message (`NFT_MSG_*`).
    fn nft(msg: u16, flags: u16, seq: u32) -> Message {
        Message::new(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
        )
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + value.len()).expect("attribute shorter than 64 KiB");
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
        self
    }

    fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_be_bytes())
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.open.push(self.bytes.len());
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let start = self.open.pop().expect("a nested attribute is open");
        let len = u16::try_from(self.bytes.len() - start).expect("attribute shorter than 64 KiB");
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// `NFTA_DATA_VALUE` nested in `kind`.
    fn data(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.begin(kind).attr(NFTA_DATA_VALUE, value).end()
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        debug_assert!(self.open.is_empty());
        let len = u32::try_from(self.bytes.len()).expect("message shorter than 4 GiB");
        self.bytes[..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

/// One expression of a rule: its name, then its attributes.
fn expr(msg: &mut Message, name: &str, body: impl FnOnce(&mut Message)) {
    msg.begin(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, name);
    msg.begin(NFTA_EXPR_DATA);
    body(msg);
    msg.end().end();
}

fn load_meta(msg: &mut Message, key: u32) {
    expr(msg, "meta", |m| {
        m.be32(NFTA_META_KEY, key).be32(NFTA_META_DREG, NFT_REG_1);
    });
}

fn load_payload(msg: &mut Message, base: u32, offset: u32, len: u32) {
    expr(msg, "payload", |m| {
        m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .be32(NFTA_PAYLOAD_BASE, base)
            .be32(NFTA_PAYLOAD_OFFSET, offset)
            .be32(NFTA_PAYLOAD_LEN, len);
    });
}

fn compare(msg: &mut Message, op: u32, value: &[u8]) {
    expr(msg, "cmp", |m| {
        m.be32(NFTA_CMP_SREG, NFT_REG_1)
            .be32(NFTA_CMP_OP, op)
            .data(NFTA_CMP_DATA, value);
    });
}

/// Register 1 &= mask.
fn mask(msg: &mut Message, mask: &[u8]) {
    let len = u32::try_from(mask.len()).expect("short mask");
    expr(msg, "bitwise", |m| {
        m.be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .be32(NFTA_BITWISE_LEN, len)
            .data(NFTA_BITWISE_MASK, mask)
            .data(NFTA_BITWISE_XOR, &vec![0; mask.len()]);
    });
}

/// Loads a conntrack key of one direction of the packet's connection into register 1; a
/// packet without conntrack ends the rule there.
fn load_ct(msg: &mut Message, key: u32, direction: u8) {
    expr(msg, "ct", |m| {
        m.be32(NFTA_CT_DREG, NFT_REG_1)
            .be32(NFTA_CT_KEY, key)
            .attr(NFTA_CT_DIRECTION, &[direction]);
    });
}

/// What a rule's tests read: the packet's headers, or a tuple of its conntrack entry
/// (`IP_CT_DIR_ORIGINAL` 0, `IP_CT_DIR_REPLY` 1).
#[derive(Debug, Clone, Copy)]
enum Source {
    Headers,
    Conntrack(u8),
}

/// The expressions of one match: `Match`'s tests in order on `source`, then
/// `meta nftrace set 1`.
fn rule_expressions(msg: &mut Message, m: &Match, source: Source) {
    msg.begin(NFTA_RULE_EXPRESSIONS);
    if let Some(family) = m.family {
        load_meta(msg, NFT_META_NFPROTO);
        compare(msg, NFT_CMP_EQ, &[family]);
    }
    if let Some(proto) = m.proto {
        match source {
            Source::Headers => load_meta(msg, NFT_META_L4PROTO),
            Source::Conntrack(dir) => load_ct(msg, NFT_CT_PROTOCOL, dir),
        }
        compare(msg, NFT_CMP_EQ, &[proto]);
    }
    for (dst, addr, prefix) in m.nets.iter().map(|n| (n.dst, n.addr, n.prefix)) {
        let (offset, ct_key, bytes) = match (addr, dst) {
            (IpAddr::V4(a), false) => (12, NFT_CT_SRC_IP, a.octets().to_vec()),
            (IpAddr::V4(a), true) => (16, NFT_CT_DST_IP, a.octets().to_vec()),
            (IpAddr::V6(a), false) => (8, NFT_CT_SRC_IP6, a.octets().to_vec()),
            (IpAddr::V6(a), true) => (24, NFT_CT_DST_IP6, a.octets().to_vec()),
        };
        let len = u32::try_from(bytes.len()).expect("address length");
        match source {
            Source::Headers => load_payload(msg, NFT_PAYLOAD_NETWORK_HEADER, offset, len),
            Source::Conntrack(dir) => load_ct(msg, ct_key, dir),
        }
        let bits = usize::from(prefix);
        if bits < bytes.len() * 8 {
            let netmask: Vec<u8> = (0..bytes.len())
                .map(|i| {
                    let ones = bits.saturating_sub(i * 8).min(8);
                    (0xff_u16 << (8 - ones)) as u8
                })
                .collect();
            mask(msg, &netmask);
            let network: Vec<u8> = bytes.iter().zip(&netmask).map(|(b, m)| b & m).collect();
            compare(msg, NFT_CMP_EQ, &network);
        } else {
            compare(msg, NFT_CMP_EQ, &bytes);
        }
    }
    for port in &m.ports {
        match source {
            Source::Headers => load_payload(
                msg,
                NFT_PAYLOAD_TRANSPORT_HEADER,
                if port.dst { 2 } else { 0 },
                2,
            ),
            Source::Conntrack(dir) => load_ct(
                msg,
                if port.dst {
                    NFT_CT_PROTO_DST
                } else {
                    NFT_CT_PROTO_SRC
                },
                dir,
            ),
        }
        if port.lo == port.hi {
            compare(msg, NFT_CMP_EQ, &port.lo.to_be_bytes());
        } else {
            compare(msg, NFT_CMP_GTE, &port.lo.to_be_bytes());
            compare(msg, NFT_CMP_LTE, &port.hi.to_be_bytes());
        }
    }
    expr(msg, "immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_1)
            .data(NFTA_IMMEDIATE_DATA, &[1]);
    });
    expr(msg, "meta", |m| {
        m.be32(NFTA_META_KEY, NFT_META_NFTRACE)
            .be32(NFTA_META_SREG, NFT_REG_1);
    });
    // `accept` ends tracer's chain (and only it: every other chain still sees the packet).
    // From the marking on, the kernel reports every rule, chain end and policy the packet
    // meets; ending here leaves one report from tracer's own chain instead of three.
    expr(msg, "immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        m.begin(NFTA_IMMEDIATE_DATA).begin(NFTA_DATA_VERDICT);
        m.be32(NFTA_VERDICT_CODE, NF_ACCEPT).end().end();
    });
    msg.end();
}

/// tracer's chains: name, hook, priority and what their rules test. Before raw and conntrack,
/// the packet's own headers; just after conntrack (-200), both tuples of its connection, so
/// that the packets of a matching connection are traced on both sides of a NAT (a reply to a
/// published port carries the container's port, not the one the filter names). Every packet
/// is marked in the first chains already when the filter matches everything.
fn chains(matches: &[Match]) -> Vec<(&'static str, u32, i32, &'static [Source])> {
    const HEADERS: &[Source] = &[Source::Headers];
    const CONNTRACK: &[Source] = &[Source::Conntrack(0), Source::Conntrack(1)];
    let mut chains = vec![
        ("prerouting", NF_INET_PRE_ROUTING, PRIORITY, HEADERS),
        ("output", NF_INET_LOCAL_OUT, PRIORITY, HEADERS),
    ];
    if !matches.is_empty() && !matches.contains(&Match::default()) {
        chains.extend([
            ("prerouting-ct", NF_INET_PRE_ROUTING, CT_PRIORITY, CONNTRACK),
            ("output-ct", NF_INET_LOCAL_OUT, CT_PRIORITY, CONNTRACK),
        ]);
    }
    chains
}

/// The batch that creates the owned table, its chains and their rules.
fn batch(matches: &[Match]) -> Vec<u8> {
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut bytes = Message::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        next(),
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish();
    let mut table = Message::nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, next());
    let name = table_name();
    table
        .str(NFTA_TABLE_NAME, &name)
        .be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
    bytes.extend(table.finish());
    for (chain, hook, priority, sources) in chains(matches) {
        let mut msg = Message::nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, next());
        msg.str(NFTA_CHAIN_TABLE, &name).str(NFTA_CHAIN_NAME, chain);
        msg.begin(NFTA_CHAIN_HOOK)
            .be32(NFTA_HOOK_HOOKNUM, hook)
            .attr(NFTA_HOOK_PRIORITY, &priority.to_be_bytes())
            .end();
        msg.be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .str(NFTA_CHAIN_TYPE, "filter");
        bytes.extend(msg.finish());
        for &source in sources {
            for m in matches {
                let mut rule = Message::nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, next());
                rule.str(NFTA_RULE_TABLE, &name).str(NFTA_RULE_CHAIN, chain);
                rule_expressions(&mut rule, m, source);
                bytes.extend(rule.finish());
            }
        }
    }
    bytes.extend(
        Message::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            next(),
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    bytes
}

/// tracer's table in the current network namespace, there while this value lives: dropping
/// it closes the socket, and the kernel deletes the table.
pub struct OwnedTable {
    _socket: Socket,
}

impl OwnedTable {
    /// Creates the table with a chain at prerouting and one at output, each marking the
    /// packets of `matches` (every packet when it holds one empty match).
    pub fn create(matches: &[Match]) -> io::Result<OwnedTable> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.send(&batch(matches), 0)?;
        // An acknowledgement (error 0) or an error for every message of the batch but its two
        // ends; the first error is the answer.
        let expected = 1 + chains(matches)
            .iter()
            .map(|(_, _, _, sources)| 1 + sources.len() * matches.len())
            .sum::<usize>();
        let mut acked = 0;
        let mut buf = vec![0u8; 1 << 16];
        while acked < expected {
            let n = socket.recv(&mut &mut buf[..], 0)?;
            for message in messages(&buf[..n]) {
                if message.kind != NLMSG_ERROR {
                    continue;
                }
                let code = message.error_code();
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                acked += 1;
            }
        }
        Ok(OwnedTable { _socket: socket })
    }
}

/// Whether the current network namespace has nf_tables tables (tracer's own aside): a dump of
/// the tables, by netlink.
pub fn has_tables() -> io::Result<bool> {
    const NFT_MSG_GETTABLE: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_DONE: u16 = 3;
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let request = Message::new(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        0,
        0,
    );
    socket.send(&request.finish(), 0)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut found = false;
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        if n == 0 {
            return Ok(found);
        }
        for message in messages(&buf[..n]) {
            match message.kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let code = message.error_code();
                    return if code == 0 {
                        Ok(found)
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                _ => {
                    let name = NlasIterator::new(message.payload)
                        .filter_map(Result::ok)
                        .find(|nla| nla.kind() == NFTA_TABLE_NAME)
                        .and_then(|nla| c_string(nla.value()));
                    let tracers =
                        name.is_some_and(|name| is_tracers(family_name(message.family), &name));
                    found |= !tracers;
                }
            }
        }
    }
}

/// A socket that receives the kernel's trace events for the current network namespace.
pub struct TraceSocket {
    socket: Socket,
    buf: Vec<u8>,
}

impl TraceSocket {
    pub fn open() -> io::Result<TraceSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.add_membership(NFNLGRP_NFTRACE)?;
        // Bursts of traced packets come faster than they are read at times; a larger buffer
        // loses fewer (a lost event only leaves a rule unnamed).
        socket.set_rx_buf_sz(4 << 20)?;
        Ok(TraceSocket {
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    /// The trace events of the next datagram if one is waiting. `ENOBUFS` (events were
    /// lost) is an error the caller may count and go on from.
    pub fn try_recv(&mut self) -> io::Result<Option<Vec<TraceEvent>>> {
        let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(err),
        };
        Ok(Some(
            messages(&self.buf[..n])
                .filter(|m| m.kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE)
                .filter_map(|m| trace_event(m.family, m.payload))
                .collect(),
        ))
    }
}

/// A netlink message: type, nfgenmsg family, attributes after the nfgenmsg header.
struct Received<'a> {
    kind: u16,
    family: u8,
    payload: &'a [u8],
}

impl Received<'_> {
    /// The code of an `NLMSG_ERROR` message (0: an acknowledgement; else a negated errno).
    fn error_code(&self) -> i32 {
        self.payload
            .get(..4)
            .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }
}

/// The messages in a datagram; a truncated one ends the list.
fn messages(mut bytes: &[u8]) -> impl Iterator<Item = Received<'_>> {
    std::iter::from_fn(move || {
        let header = bytes.get(..16)?;
        let len = u32::from_ne_bytes(header[..4].try_into().ok()?) as usize;
        if len < 16 || len > bytes.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(header[4..6].try_into().ok()?);
        let body = &bytes[16..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some(match kind {
            // struct nlmsgerr: the code, then the request's header.
            NLMSG_ERROR => Received {
                kind,
                family: 0,
                payload: body,
            },
            _ => Received {
                kind,
                family: *body.first()?,
                payload: body.get(4..)?,
            },
        })
    })
}

/// Decodes the attributes of an `NFT_MSG_TRACE` message; `None` when one it needs is missing
/// or malformed.
pub(super) fn trace_event(family: u8, attrs: &[u8]) -> Option<TraceEvent> {
    let mut event = TraceEvent {
        family: family_name(family),
        ..TraceEvent::default()
    };
    for nla in NlasIterator::new(attrs) {
        let nla = nla.ok()?;
        let value = nla.value();
        match nla.kind() & !NLA_F_NESTED {
            NFTA_TRACE_TABLE => event.table = c_string(value)?,
            NFTA_TRACE_CHAIN => event.chain = c_string(value)?,
            NFTA_TRACE_RULE_HANDLE => {
                event.handle = Some(u64::from_be_bytes(value.try_into().ok()?));
            }
            NFTA_TRACE_TYPE => {
                event.kind = match u32::from_be_bytes(value.try_into().ok()?) {
                    1 => TraceKind::Policy,
                    2 => TraceKind::Return,
                    3 => TraceKind::Rule,
                    _ => TraceKind::Other,
                };
            }
            NFTA_TRACE_VERDICT => event.verdict = verdict(value)?,
            NFTA_TRACE_ID => event.id = u32::from_be_bytes(value.try_into().ok()?),
            NFTA_TRACE_NETWORK_HEADER => event.network = value.to_vec(),
            NFTA_TRACE_TRANSPORT_HEADER => event.transport = value.to_vec(),
            NFTA_TRACE_POLICY => {
                let code = i32::from_be_bytes(value.try_into().ok()?);
                event.verdict = Verdict::from_code(code, None);
            }
            NFTA_TRACE_NFPROTO => {
                event.nfproto = u8::try_from(u32::from_be_bytes(value.try_into().ok()?)).ok()?;
            }
            _ => {}
        }
    }
    (!event.table.is_empty() && !event.chain.is_empty()).then_some(event)
}

fn verdict(nested: &[u8]) -> Option<Verdict> {
    let mut code = None;
    let mut chain = None;
    for nla in NlasIterator::new(nested) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        match nla.kind() & !NLA_F_NESTED {
            NFTA_VERDICT_CODE => code = Some(i32::from_be_bytes(nla.value().try_into().ok()?)),
            NFTA_VERDICT_CHAIN => chain = c_string(nla.value()),
            _ => {}
        }
    }
    Some(Verdict::from_code(code?, chain))
}

fn c_string(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).ok().map(str::to_owned)
}

/// The family as `nft` names it.
pub fn family_name(family: u8) -> &'static str {
    match family {
        NFPROTO_INET => "inet",
        NFPROTO_IPV4 => "ip",
        NFPROTO_IPV6 => "ip6",
        0 => "unspec",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_measured() {
        let mut msg = Message::nft(NFT_MSG_NEWRULE, 0, 7);
        msg.str(NFTA_RULE_TABLE, "t");
        msg.begin(NFTA_RULE_EXPRESSIONS).be32(9, 0x0102_0304).end();
        let bytes = msg.finish();
        assert_eq!(bytes.len(), 16 + 4 + 8 + 4 + 8);
        assert_eq!(
            u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        // "t\0" padded to 4, after the 4-byte header.
        assert_eq!(&bytes[20..28], &[6, 0, 1, 0, b't', 0, 0, 0]);
        // The nest covers its own header and the 8-byte attribute inside.
        assert_eq!(u16::from_ne_bytes(bytes[28..30].try_into().unwrap()), 12);
        assert_eq!(
            u16::from_ne_bytes(bytes[30..32].try_into().unwrap()),
            NFTA_RULE_EXPRESSIONS | NLA_F_NESTED
        );
        assert_eq!(&bytes[36..40], &[1, 2, 3, 4]);
    }

    #[test]
    fn a_trace_message_decodes() {
        let mut msg = Message::new(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE,
            0,
            0,
            NFPROTO_IPV4,
            0,
        );
        msg.str(NFTA_TRACE_TABLE, "nat")
            .str(NFTA_TRACE_CHAIN, "POSTROUTING")
            .attr(NFTA_TRACE_RULE_HANDLE, &12u64.to_be_bytes())
            .be32(NFTA_TRACE_TYPE, 3)
            .be32(NFTA_TRACE_ID, 0xabcd);
        msg.begin(NFTA_TRACE_VERDICT)
            .attr(NFTA_VERDICT_CODE, &1i32.to_be_bytes())
            .end();
        msg.attr(NFTA_TRACE_NETWORK_HEADER, &[0x45; 20]);
        let bytes = msg.finish();
        let received: Vec<_> = messages(&bytes).collect();
        assert_eq!(received.len(), 1);
        let event = trace_event(received[0].family, received[0].payload).unwrap();
        assert_eq!(
            (event.family, event.table.as_str(), event.chain.as_str()),
            ("ip", "nat", "POSTROUTING")
        );
        assert_eq!(
            (event.handle, event.kind, event.id),
            (Some(12), TraceKind::Rule, 0xabcd)
        );
        assert_eq!(event.verdict, Verdict::Accept);
        assert_eq!(event.network.len(), 20);
    }

    #[test]
    fn truncated_messages_end_the_list() {
        let mut bytes = Message::nft(NFT_MSG_NEWTABLE, 0, 1).finish();
        bytes.truncate(bytes.len() - 1);
        assert_eq!(messages(&bytes).count(), 0);
        assert!(trace_event(NFPROTO_IPV4, &[8, 0, 1, 0, b'x']).is_none());
    }
}
