//! Ring buffer records to typed events.
//!
//! Pure code: takes bytes, returns values. Records of an unknown kind, of the wrong size or
//! with an unknown hook are rejected with a [`DecodeError`] so that the caller can count them;
//! nothing is read from a record that failed these checks.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

pub use encap::{Encap, EncapKind, IcmpError};
use tracer_common::{
    event::{
        CompactHop, CtTuple, EventKind, FAMILY_IPV4, FAMILY_IPV6, FLAG_FRAGMENT, FLAG_IPVS,
        FLAG_L4, FLAG_NONLINEAR, FLAG_TC, HOP_CONNTRACK, PacketEncap, PacketEncapWithHeaders,
        PacketEvent, PacketWithHeaders, SNAP_MAX, SocketEvent,
    },
    hook::Hook,
    wire::{conntrack, ipproto},
};

use crate::recording;

mod encap;

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("event kind {kind} has {actual} bytes, expected {expected}")]
    Size {
        kind: u8,
        actual: usize,
        expected: usize,
    },
    #[error("unknown hook {0}")]
    UnknownHook(u8),
    #[error("event kind {0} is not a packet")]
    NotPacket(u8),
    #[error("a compact hop of CPU {cpu} without its packet's event before it")]
    NoBase { cpu: u32 },
}

/// The process that created a packet's socket, as the kernel saw it at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Process id (thread group id), in the initial PID namespace.
    pub pid: u32,
    /// Command name of the creating thread (`comm`, at most 15 bytes).
    pub comm: String,
    /// The creator's cgroup v2 id, which names its container or pod.
    pub cgroup_id: u64,
}

/// An IP protocol, by number, with names for the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proto(pub u8);

impl Proto {
    pub const ICMP: Proto = Proto(ipproto::ICMP);
    pub const TCP: Proto = Proto(ipproto::TCP);
    pub const UDP: Proto = Proto(ipproto::UDP);
    pub const ICMPV6: Proto = Proto(ipproto::ICMPV6);
    pub const SCTP: Proto = Proto(ipproto::SCTP);

    /// Lower-case name (`tcp`, `udp`, ...) or the number.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            Proto::ICMP => "icmp".into(),
            Proto::TCP => "tcp".into(),
            Proto::UDP => "udp".into(),
            Proto::ICMPV6 => "icmp6".into(),
            Proto::SCTP => "sctp".into(),
            Proto(n) => n.to_string().into(),
        }
    }
}

/// A connection's addresses and ports in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub proto: Proto,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl Tuple {
    /// The same connection seen from the other end.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            src_port: self.dst_port,
            dst: self.src,
            dst_port: self.src_port,
        }
    }
}

/// The conntrack entry a packet carried at a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// Kernel address of the `nf_conn`; stable while the connection lives.
    pub id: u64,
    /// `enum ip_conntrack_info` (0 = established, 1 = related, 2 = new, 3 = established reply ...).
    pub info: u8,
    /// Tuple of the original direction, as first seen (before NAT).
    pub orig: Tuple,
    /// Tuple expected in the reply direction (after NAT, reversed).
    pub reply: Tuple,
}

/// One packet at one hook, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopEvent {
    pub ts_ns: u64,
    pub hook: Hook,
    /// Address of the `sk_buff`; 0 for TC events, which cannot see it.
    pub skb: u64,
    /// `skb->head`, which clones of the skb share; 0 for TC events.
    pub skb_head: u64,
    /// Inode of the device's network namespace; 0 until resolved for TC events.
    pub netns_inode: u64,
    /// Whether a TC program took the event.
    pub tc: bool,
    pub ifindex: u32,
    /// Device name as the kernel reported it (empty for TC events until resolved).
    pub ifname: IfName,
    pub tuple: Tuple,
    /// Whether ports and TCP fields were read (false for fragments and unknown protocols).
    pub has_l4: bool,
    pub fragment: bool,
    /// Some headers were outside the linear data and were not read.
    pub nonlinear: bool,
    /// IPVS has handled the packet (see [`tracer_common::event::FLAG_IPVS`]).
    pub ipvs: bool,
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub ip_id: u16,
    pub ttl: u8,
    /// `skb->len` at the hook.
    pub len: u32,
    /// IP total length from the header.
    pub ip_len: u16,
    /// Bytes after the L4 header (0 where the headers' length is unknown).
    pub payload_len: u16,
    pub mark: u32,
    /// Shared by the events of one connection that [`Decoder`] decodes one after another.
    pub conntrack: Option<Arc<Conntrack>>,
    /// Set at `kfree_skb`: why and where the packet was dropped.
    pub drop: Option<DropInfo>,
    /// The packet's first bytes from the IP header on, when they were asked for (`-w`).
    pub headers: Option<Box<[u8]>>,
    /// The process that created the packet's socket, where the packet has a socket here and
    /// tracer saw it created; `None` everywhere else (never guessed).
    pub process: Option<Arc<Process>>,
    /// The outer headers of an encapsulated packet (VXLAN, Geneve, IP in IP, GRE), whose
    /// inner headers the other fields describe; `None` for a packet that is not.
    pub encap: Option<Box<Encap>>,
    /// For an ICMP error (the packet the other fields describe), the packet it quotes.
    pub icmp: Option<Box<IcmpError>>,
}

impl HopEvent {
    /// Takes the record's second layer. A tunnel's inner headers start `inner_offset` bytes
    /// into those the record's header length counts.
    fn set_layer(&mut self, layer: Option<encap::Layer>, inner_offset: u16, headers_len: u16) {
        match layer {
            Some(encap::Layer::Outer(outer)) => {
                let inner = headers_len.saturating_sub(inner_offset);
                self.payload_len = if inner == 0 {
                    0
                } else {
                    self.ip_len.saturating_sub(inner)
                };
                self.encap = Some(Box::new(outer));
            }
            Some(encap::Layer::Quoted(error)) => self.icmp = Some(Box::new(error)),
            None => {}
        }
    }
}

/// A drop as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropInfo {
    /// `enum skb_drop_reason` value; names come from the running kernel's BTF.
    pub reason: u32,
    /// Code address that freed the packet.
    pub location: u64,
}

/// An interface name as the kernel stores it: up to 15 bytes, NUL padded. Copy, so decoding
/// allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IfName(pub [u8; 16]);

impl IfName {
    /// The name from a string, truncated to 15 bytes.
    pub fn new(name: &str) -> IfName {
        let mut raw = [0u8; 16];
        let len = name.len().min(15);
        raw[..len].copy_from_slice(&name.as_bytes()[..len]);
        IfName(raw)
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.as_str())
    }
}

impl std::fmt::Debug for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<HopEvent, DecodeError> {
    Decoder::default().decode(bytes)
}

/// Conntrack entries a [`Decoder`] remembers.
const RECENT_ENTRIES: usize = 256;
/// Most CPUs a kernel can have (`CONFIG_NR_CPUS` is at most 8192).
const MAX_CPUS: usize = 8192;

/// Sockets whose owners a [`Decoder`] keeps, at most: beyond, new sockets' packets have no
/// process (never a wrong one).
const MAX_OWNERS: usize = 1 << 18;

/// Released sockets whose owners are kept, for the packets sent after the release (a TCP
/// socket's FIN and retransmissions leave after `close()`).
const RELEASED_KEPT: usize = 4096;

/// What one record of a recording holds, for the commands that read recordings back
/// (`tracer replay`, `report`, `merge`).
pub enum Entry {
    /// A packet's event.
    Event(HopEvent),
    /// The recording's names.
    Names(recording::Names),
    /// A socket's record, which the decoder keeps to name the processes of later events.
    Nothing,
    /// A record neither the decoder nor the names can be read from: counted as a malformed
    /// event.
    Malformed,
}

/// Decodes records one after another, giving the events of one connection one shared
/// conntrack entry (the entry is 96 bytes and most hops carry one) while its tuples and state
/// stay the same, and giving packets the process that created their socket.
/// (`Decoder::default()` shares no conntrack entries.)
#[derive(Default)]
pub struct Decoder {
    /// Direct-mapped by entry address and state: the raw entry and what it decoded to.
    recent: Vec<Option<(RawConntrack, Arc<Conntrack>)>>,
    /// Socket owners by cookie.
    owners: HashMap<u64, Arc<Process>>,
    /// Cookies of released sockets, oldest first, whose owners are still kept.
    released: VecDeque<u64>,
    /// Each CPU's base event, by CPU: what its compact hops leave out (`skb` 0: none yet).
    bases: Vec<PacketEvent>,
}

/// A conntrack entry as the kernel program wrote it.
#[derive(Clone, PartialEq, Eq)]
struct RawConntrack {
    id: u64,
    state: u8,
    orig: CtTuple,
    reply: CtTuple,
}

impl Decoder {
    /// A decoder that shares entries.
    pub fn new() -> Decoder {
        Decoder {
            recent: vec![None; RECENT_ENTRIES],
            ..Decoder::default()
        }
    }

    /// Takes one record of a recording: a ring buffer record, or the recording's
    /// [`recording::Names`].
    pub fn entry(&mut self, record: &[u8]) -> Entry {
        match recording::read_names(record) {
            Some(Ok(names)) => Entry::Names(names),
            Some(Err(_)) => Entry::Malformed,
            None => match self.record(record) {
                Ok(Some(event)) => Entry::Event(event),
                Ok(None) => Entry::Nothing,
                Err(_) => Entry::Malformed,
            },
        }
    }

    /// Takes one ring buffer record of any kind: a packet's event, or `None` for a socket's,
    /// which is remembered for the packets of that socket.
    pub fn record(&mut self, bytes: &[u8]) -> Result<Option<HopEvent>, DecodeError> {
        let kind = *bytes.first().ok_or(DecodeError::Empty)?;
        if kind == EventKind::SocketCreated as u8 || kind == EventKind::SocketReleased as u8 {
            let raw: SocketEvent = read_record(bytes, kind)?;
            self.socket(&raw);
            return Ok(None);
        }
        self.decode(bytes).map(Some)
    }

    /// Decodes one packet record.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<HopEvent, DecodeError> {
        let kind = *bytes.first().ok_or(DecodeError::Empty)?;
        let widened;
        let bytes = match widen_unowned(kind, bytes) {
            Some(wide) => {
                widened = wide;
                &widened[..]
            }
            None => bytes,
        };
        if kind == EventKind::Packet as u8 {
            let raw: PacketEvent = read_record(bytes, kind)?;
            if raw.base != 0 {
                self.set_base(&raw);
            }
            return packet(&raw, self);
        }
        if kind == EventKind::CompactHop as u8 {
            let hop: CompactHop = read_record(bytes, kind)?;
            let raw = self.expand(&hop)?;
            return packet(&raw, self);
        }
        if kind == EventKind::PacketWithHeaders as u8 {
            let raw: PacketWithHeaders = read_record(bytes, kind)?;
            let mut event = packet(&raw.event, self)?;
            let len = usize::from(raw.snap_len).min(SNAP_MAX);
            event.headers = Some(raw.headers[..len].into());
            return Ok(event);
        }
        if kind == EventKind::PacketEncap as u8 {
            let raw: PacketEncap = read_record(bytes, kind)?;
            let mut event = packet(&raw.event, self)?;
            let layer = encap::decode(&raw.encap, raw.event.family);
            event.set_layer(layer, raw.encap.inner_offset, raw.event.headers_len);
            return Ok(event);
        }
        if kind == EventKind::PacketEncapWithHeaders as u8 {
            let raw: PacketEncapWithHeaders = read_record(bytes, kind)?;
            let mut event = packet(&raw.event, self)?;
            let layer = encap::decode(&raw.encap, raw.event.family);
            event.set_layer(layer, raw.encap.inner_offset, raw.event.headers_len);
            let len = usize::from(raw.snap_len).min(SNAP_MAX);
            event.headers = Some(raw.headers[..len].into());
            return Ok(event);
        }
        if kind == EventKind::SocketCreated as u8 || kind == EventKind::SocketReleased as u8 {
            return Err(DecodeError::NotPacket(kind));
        }
        Err(DecodeError::UnknownKind(kind))
    }

    /// Makes `raw` the base of the CPU it names (one the kernel can have: a record that names
    /// another cannot make this decoder grow without bound).
    fn set_base(&mut self, raw: &PacketEvent) {
        let cpu = usize::from(raw.base - 1);
        if cpu >= MAX_CPUS {
            return;
        }
        if self.bases.len() <= cpu {
            self.bases.resize(cpu + 1, PacketEvent::zeroed());
        }
        self.bases[cpu] = *raw;
    }

    /// The whole event of a compact hop: its CPU's base, with what the hop has of its own.
    fn expand(&self, hop: &CompactHop) -> Result<PacketEvent, DecodeError> {
        let base = self
            .bases
            .get(hop.cpu as usize)
            .filter(|base| base.skb == hop.skb && hop.skb != 0)
            .ok_or(DecodeError::NoBase { cpu: hop.cpu })?;
        let mut raw = PacketEvent {
            hook: hop.hook,
            ttl: hop.ttl,
            ts_ns: hop.ts_ns,
            ifindex: hop.ifindex,
            netns_inode: hop.netns_inode,
            len: hop.len,
            mark: hop.mark,
            ifname: hop.ifname,
            sock_cookie: hop.sock_cookie,
            location: 0,
            drop_reason: 0,
            base: 0,
            ..*base
        };
        if hop.flags & HOP_CONNTRACK == 0 {
            raw.ct = 0;
            raw.ct_state = 0;
            raw.ct_orig = CtTuple::default();
            raw.ct_reply = CtTuple::default();
        }
        Ok(raw)
    }

    /// Remembers a created socket's owner; lets a released one's go after [`RELEASED_KEPT`]
    /// more releases.
    fn socket(&mut self, raw: &SocketEvent) {
        if raw.cookie == 0 {
            return;
        }
        if raw.kind == EventKind::SocketCreated as u8 {
            if self.owners.len() < MAX_OWNERS {
                let comm = IfName(raw.comm).as_str().into_owned();
                let process = Process {
                    pid: raw.tgid,
                    comm,
                    cgroup_id: raw.cgroup_id,
                };
                self.owners.insert(raw.cookie, Arc::new(process));
            }
            return;
        }
        if self.owners.contains_key(&raw.cookie) {
            self.released.push_back(raw.cookie);
            if self.released.len() > RELEASED_KEPT
                && let Some(gone) = self.released.pop_front()
            {
                self.owners.remove(&gone);
            }
        }
    }

    /// Sockets whose owners are known, for memory tests.
    pub fn owners(&self) -> usize {
        self.owners.len()
    }

    /// The entry of `raw`, shared with earlier events that carried the same.
    fn conntrack(&mut self, raw: &PacketEvent) -> Arc<Conntrack> {
        let decoded = || {
            Arc::new(Conntrack {
                id: raw.ct,
                info: conntrack::decode_state(raw.ct_state).unwrap_or(0),
                orig: ct_tuple(&raw.ct_orig),
                reply: ct_tuple(&raw.ct_reply),
            })
        };
        if self.recent.is_empty() {
            return decoded();
        }
        let key = RawConntrack {
            id: raw.ct,
            state: raw.ct_state,
            orig: raw.ct_orig,
            reply: raw.ct_reply,
        };
        let slot = (key.id >> 6 ^ u64::from(key.state)) as usize % RECENT_ENTRIES;
        match &self.recent[slot] {
            Some((known, shared)) if *known == key => Arc::clone(shared),
            _ => {
                let shared = decoded();
                self.recent[slot] = Some((key, Arc::clone(&shared)));
                shared
            }
        }
    }
}

/// Bytes of a packet event before it carried the socket cookie (recordings made by earlier
/// versions of tracer), where the cookie now is.
const UNOWNED_EVENT: usize = size_of::<PacketEvent>() - size_of::<u64>();

/// A packet record in the layout before the socket cookie, widened to today's with a zero
/// cookie, so that older recordings replay; `None` for any other record.
fn widen_unowned(kind: u8, bytes: &[u8]) -> Option<Vec<u8>> {
    let current = if kind == EventKind::Packet as u8 {
        size_of::<PacketEvent>()
    } else if kind == EventKind::PacketWithHeaders as u8 {
        size_of::<PacketWithHeaders>()
    } else {
        return None;
    };
    if bytes.len() + size_of::<u64>() != current {
        return None;
    }
    let mut wide = Vec::with_capacity(current);
    wide.extend_from_slice(&bytes[..UNOWNED_EVENT]);
    wide.extend_from_slice(&0u64.to_ne_bytes());
    wide.extend_from_slice(&bytes[UNOWNED_EVENT..]);
    Some(wide)
}

/// Reads a whole record of type `T`, which must be exactly its size. `aya::Pod` is the
/// promise that every bit pattern is a valid `T` (the layouts in `tracer-common` make it).
fn read_record<T: aya::Pod>(bytes: &[u8], kind: u8) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() != expected {
        return Err(DecodeError::Size {
            kind,
            actual: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length was checked, `T: Pod` makes every bit pattern valid, and
    // `read_unaligned` does not need the record to be aligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

fn packet(raw: &PacketEvent, decoder: &mut Decoder) -> Result<HopEvent, DecodeError> {
    let hook = Hook::from_u8(raw.hook).ok_or(DecodeError::UnknownHook(raw.hook))?;
    let conntrack = (raw.ct != 0).then(|| decoder.conntrack(raw));
    Ok(HopEvent {
        ts_ns: raw.ts_ns,
        hook,
        skb: raw.skb,
        skb_head: raw.skb_head,
        netns_inode: u64::from(raw.netns_inode),
        tc: raw.flags & FLAG_TC != 0,
        ifindex: raw.ifindex,
        ifname: IfName(raw.ifname),
        tuple: Tuple {
            proto: Proto(raw.l4_proto),
            src: address(raw.family, &raw.src_addr),
            src_port: raw.src_port,
            dst: address(raw.family, &raw.dst_addr),
            dst_port: raw.dst_port,
        },
        has_l4: raw.flags & FLAG_L4 != 0,
        fragment: raw.flags & FLAG_FRAGMENT != 0,
        nonlinear: raw.flags & FLAG_NONLINEAR != 0,
        ipvs: raw.flags & FLAG_IPVS != 0,
        tcp_flags: raw.tcp_flags,
        tcp_seq: raw.tcp_seq,
        tcp_ack: raw.tcp_ack,
        ip_id: raw.ip_id,
        ttl: raw.ttl,
        len: raw.len,
        ip_len: raw.ip_len,
        payload_len: if raw.headers_len == 0 {
            0
        } else {
            raw.ip_len.saturating_sub(raw.headers_len)
        },
        mark: raw.mark,
        conntrack,
        drop: (hook == Hook::KfreeSkb).then_some(DropInfo {
            reason: raw.drop_reason,
            location: raw.location,
        }),
        headers: None,
        process: (raw.sock_cookie != 0)
            .then(|| decoder.owners.get(&raw.sock_cookie).cloned())
            .flatten(),
        encap: None,
        icmp: None,
    })
}

fn ct_tuple(raw: &CtTuple) -> Tuple {
    Tuple {
        proto: Proto(raw.protonum),
        src: address(raw.family, &raw.src_addr),
        src_port: raw.src_port,
        dst: address(raw.family, &raw.dst_addr),
        dst_port: raw.dst_port,
    }
}

fn address(family: u8, raw: &[u8; 16]) -> IpAddr {
    match family {
        FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(*raw)),
        FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// Bytes of a [`PacketEvent`] as the kernel writes them; for tests and replay tools.
pub fn encode(event: &PacketEvent) -> Vec<u8> {
    encode_record(event)
}

/// Bytes of any record as the kernel writes it; for tests and replay tools.
pub fn encode_record<T: aya::Pod>(record: &T) -> Vec<u8> {
    // SAFETY: `T: Pod` is plain data with explicit padding fields, readable as bytes.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

#[cfg(test)]
mod tests;
