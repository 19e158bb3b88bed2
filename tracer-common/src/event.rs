//! Events that tracer's kernel programs push into the ring buffer.
//!
//! Every record starts with an [`EventKind`] byte so the collector can reject anything it does
//! not understand instead of reading garbage. Addresses are kept in network byte order, exactly
//! as on the wire; ports, sequence numbers and other integers are converted to host order by
//! the kernel program that fills them in.

use crate::assert_size;

/// Discriminates the records in the ring buffer. The value is the first byte of every record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`PacketEvent`].
    Packet = 1,
    /// A [`PacketWithHeaders`]: the event and the packet's first bytes, for `-w`.
    PacketWithHeaders = 2,
    /// A [`SocketEvent`]: a process created a socket.
    SocketCreated = 3,
    /// A [`SocketEvent`]: a socket was released (closed by its last user).
    SocketReleased = 4,
    /// A [`PacketEncap`]: an encapsulated packet, described by its inner headers, and its
    /// outer ones.
    PacketEncap = 5,
    /// A [`PacketEncapWithHeaders`]: a [`PacketEncap`] and the packet's first bytes, from the
    /// outer IP header on, for `-w`.
    PacketEncapWithHeaders = 6,
    /// A [`CompactHop`]: a later hop of the packet of the last [`PacketEvent`] that was its CPU's
    /// base, with only what differs between hops of one packet.
    CompactHop = 7,
}

/// Most bytes of a packet copied into a [`PacketWithHeaders`].
pub const SNAP_MAX: usize = 256;

/// `PacketEvent::flags`: the L4 header (ports, TCP flags, sequence numbers) was read.
pub const FLAG_L4: u8 = 1 << 0;
/// `PacketEvent::flags`: the packet is an IP fragment other than the first; it has no L4 header.
pub const FLAG_FRAGMENT: u8 = 1 << 1;
/// `PacketEvent::flags`: the headers were not all in the skb's linear area, so some were skipped.
pub const FLAG_NONLINEAR: u8 = 1 << 2;
/// `PacketEvent::flags`: the event came from a TC program, so `skb`, `skb_head`, `netns_inode`
/// and `ifname` are unknown; the collector fills in the namespace and name from `ifindex`.
pub const FLAG_TC: u8 = 1 << 3;

/// `PacketEvent::flags`: an [`Encap`] follows the event: the packet is encapsulated (VXLAN,
/// Geneve, IP in IP, GRE; the event's addresses, ports and IP fields are the inner packet's,
/// the `Encap` holds the outer ones), or it is an ICMP error (the event is the ICMP packet, the
/// `Encap` holds the packet it quotes).
pub const FLAG_ENCAP: u8 = 1 << 4;

/// `PacketEvent::flags`: IPVS has handled the packet (`skb->ipvs_property`): a packet IPVS
/// translated, on its way from the virtual service to a real server or back.
pub const FLAG_IPVS: u8 = 1 << 5;

/// `PacketEvent::drop_reason` of a drop seen on a kernel whose `kfree_skb` tracepoint has no
/// reason (before Linux 5.17). No `enum skb_drop_reason` value comes near it.
pub const DROP_REASON_UNREPORTED: u32 = u32::MAX - 1;

/// Address family values used in [`PacketEvent::family`] and [`CtTuple::family`].
pub const FAMILY_IPV4: u8 = 4;
/// See [`FAMILY_IPV4`].
pub const FAMILY_IPV6: u8 = 6;

/// One conntrack tuple (`struct nf_conntrack_tuple`, include/net/netfilter/nf_conntrack_tuple.h),
/// reduced to what identifies a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTuple {
    /// Source address, network byte order; IPv4 uses the first 4 bytes.
    pub src_addr: [u8; 16],
    /// Destination address, network byte order; IPv4 uses the first 4 bytes.
    pub dst_addr: [u8; 16],
    /// Source port (host byte order), or 0 for protocols without ports.
    pub src_port: u16,
    /// Destination port (host byte order), or 0 for protocols without ports.
    pub dst_port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`]; 0 when the tuple is absent.
    pub family: u8,
    /// IP protocol number (`IPPROTO_*`).
    pub protonum: u8,
    pub _pad: [u8; 2],
}
assert_size!(CtTuple, 40);

/// A packet seen at one hook. Fixed size; the collector checks the size before decoding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    /// Always [`EventKind::Packet`].
    pub kind: u8,
    /// A [`crate::hook::Hook`] value.
    pub hook: u8,
    /// [`FAMILY_IPV4`], [`FAMILY_IPV6`], or 0 when the packet is not IP.
    pub family: u8,
    /// IP protocol number of the L4 header (`IPPROTO_TCP`, ...), 0 if unknown.
    pub l4_proto: u8,
    /// TCP flags byte (FIN=0x01 ... CWR=0x80), 0 for other protocols.
    pub tcp_flags: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Conntrack state of the packet (`enum ip_conntrack_info`) as `wire::conntrack::encode_state`
    /// stores it; 0 when the packet has no conntrack entry (or conntrack could not be read).
    pub ct_state: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Kernel monotonic clock (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) when the hook ran.
    pub ts_ns: u64,
    /// Address of the `struct sk_buff`, 0 for TC events.
    pub skb: u64,
    /// `skb->head`: the data buffer, which outlives clones of the skb. 0 for TC events.
    pub skb_head: u64,
    /// Address of the packet's `struct nf_conn`, 0 without one.
    pub ct: u64,
    /// Interface index in its namespace.
    pub ifindex: u32,
    /// Inode of the device's network namespace, 0 for TC events.
    pub netns_inode: u32,
    /// `skb->len`: bytes from the current data pointer to the end of the packet.
    pub len: u32,
    /// `skb->mark`.
    pub mark: u32,
    /// TCP sequence number.
    pub tcp_seq: u32,
    /// TCP acknowledgement number.
    pub tcp_ack: u32,
    /// IPv4 identification field, or the low 16 bits of the IPv6 flow label.
    pub ip_id: u16,
    /// L4 source port (host byte order).
    pub src_port: u16,
    /// L4 destination port (host byte order).
    pub dst_port: u16,
    /// Length of the IP packet from its header (total length, or payload + 40 for IPv6).
    pub ip_len: u16,
    /// Device name, NUL padded (`IFNAMSIZ`).
    pub ifname: [u8; 16],
    /// IP source address, network byte order; IPv4 uses the first 4 bytes.
    pub src_addr: [u8; 16],
    /// IP destination address, network byte order; IPv4 uses the first 4 bytes.
    pub dst_addr: [u8; 16],
    /// Conntrack original-direction tuple (`tuplehash[IP_CT_DIR_ORIGINAL]`), if `ct != 0`.
    pub ct_orig: CtTuple,
    /// Conntrack reply-direction tuple (`tuplehash[IP_CT_DIR_REPLY]`), if `ct != 0`.
    pub ct_reply: CtTuple,
    /// For `kfree_skb`: the code address that dropped the packet.
    pub location: u64,
    /// For `kfree_skb`: `enum skb_drop_reason` (include/net/dropreason-core.h), or
    /// [`DROP_REASON_UNREPORTED`] from a kernel whose tracepoint carries none.
    pub drop_reason: u32,
    /// Length of the IP and L4 headers (where the payload starts), 0 if unknown.
    pub headers_len: u16,
    /// 1 + the CPU this event is the base of, for the [`CompactHop`]s that follow it from that
    /// CPU; 0 when it is none.
    pub base: u16,
    /// Cookie of the socket the packet belongs to (`skb->sk`), 0 without one. The socket's
    /// owner comes in a [`SocketEvent`] with the same cookie, where tracer saw it created.
    pub sock_cookie: u64,
}
assert_size!(PacketEvent, 224);

impl PacketEvent {
    /// An event with every field zero, to be filled in.
    pub const fn zeroed() -> Self {
        const TUPLE: CtTuple = CtTuple {
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: 0,
            dst_port: 0,
            family: 0,
            protonum: 0,
            _pad: [0; 2],
        };
        PacketEvent {
            kind: EventKind::Packet as u8,
            hook: 0,
            family: 0,
            l4_proto: 0,
            tcp_flags: 0,
            flags: 0,
            ct_state: 0,
            ttl: 0,
            ts_ns: 0,
            skb: 0,
            skb_head: 0,
            ct: 0,
            ifindex: 0,
            netns_inode: 0,
            len: 0,
            mark: 0,
            tcp_seq: 0,
            tcp_ack: 0,
            ip_id: 0,
            src_port: 0,
            dst_port: 0,
            ip_len: 0,
            ifname: [0; 16],
            src_addr: [0; 16],
            dst_addr: [0; 16],
            ct_orig: TUPLE,
            ct_reply: TUPLE,
            location: 0,
            drop_reason: 0,
            headers_len: 0,
            base: 0,
            sock_cookie: 0,
        }
    }
}

/// A [`PacketEvent`] with the first bytes of the packet, from its IP header on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketWithHeaders {
    /// `event.kind` is [`EventKind::PacketWithHeaders`].
    pub event: PacketEvent,
    /// Bytes of `headers` that hold packet data.
    pub snap_len: u16,
    pub _pad: [u8; 6],
    pub headers: [u8; SNAP_MAX],
}
assert_size!(PacketWithHeaders, 224 + 8 + SNAP_MAX);

/// How a packet was encapsulated ([`Encap::kind`]).
pub mod encap_kind {
    /// VXLAN (RFC 7348) over UDP, on a port a VXLAN device uses: inner Ethernet frame.
    pub const VXLAN: u8 = 1;
    /// Geneve (RFC 8926) over UDP.
    pub const GENEVE: u8 = 2;
    /// IP directly in IP: IPIP (4 in 4), SIT (6 in 4), ip6tnl (4 or 6 in 6).
    pub const IP_IN_IP: u8 = 3;
    /// GRE carrying IP.
    pub const GRE: u8 = 4;
    /// GRE carrying an Ethernet frame (`gretap`, `ip6gretap`).
    pub const GRETAP: u8 = 5;
    /// Not a tunnel: an ICMP or ICMPv6 error, and the packet it quotes.
    pub const ICMP_ERROR: u8 = 6;
}

/// `Encap::flags`: `id` holds a VNI or a GRE key.
pub const ENCAP_HAS_ID: u8 = 1 << 0;

/// The other layer of a packet's headers: the outer headers of an encapsulated packet, or the
/// packet an ICMP error quotes (`kind` [`encap_kind::ICMP_ERROR`]; then "outer" below reads
/// "quoted").
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encap {
    /// Outer IP source address, network byte order; IPv4 uses the first 4 bytes.
    pub src_addr: [u8; 16],
    /// Outer IP destination address.
    pub dst_addr: [u8; 16],
    /// VXLAN or Geneve VNI, or GRE key, when `flags` has [`ENCAP_HAS_ID`]; for an ICMP error,
    /// the last four bytes of its header (the next-hop MTU of "fragmentation needed" in the low
    /// 16 bits, ICMPv6 "packet too big"'s MTU).
    pub id: u32,
    /// Outer UDP source port (host byte order), 0 for IP in IP and GRE; a quoted packet's
    /// source port.
    pub src_port: u16,
    /// Outer UDP destination port.
    pub dst_port: u16,
    /// Outer IPv4 identification, or the low 16 bits of the outer IPv6 flow label.
    pub ip_id: u16,
    /// Length of the outer IP packet.
    pub ip_len: u16,
    /// An [`encap_kind`] value.
    pub kind: u8,
    /// Outer [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Outer TTL or hop limit.
    pub ttl: u8,
    /// `ENCAP_*` bits.
    pub flags: u8,
    /// Bytes from the outer IP header to the inner one (for an ICMP error, from its IP header
    /// to the quoted one).
    pub inner_offset: u16,
    /// The outer (or quoted) packet's IP protocol.
    pub proto: u8,
    /// For an ICMP error, its type and code.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: [u8; 3],
}
assert_size!(Encap, 56);

/// A [`PacketEvent`] of an encapsulated packet (its `flags` have [`FLAG_ENCAP`]) and the outer
/// headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEncap {
    /// `event.kind` is [`EventKind::PacketEncap`].
    pub event: PacketEvent,
    pub encap: Encap,
}
assert_size!(PacketEncap, 224 + 56);

/// A [`PacketEncap`] with the packet's first bytes, from the outer IP header on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEncapWithHeaders {
    /// `event.kind` is [`EventKind::PacketEncapWithHeaders`].
    pub event: PacketEvent,
    pub encap: Encap,
    /// Bytes of `headers` that hold packet data.
    pub snap_len: u16,
    pub _pad: [u8; 6],
    pub headers: [u8; SNAP_MAX],
}
assert_size!(PacketEncapWithHeaders, 224 + 56 + 8 + SNAP_MAX);

/// `CompactHop::flags`: the packet has its base's conntrack entry (without it, none).
pub const HOP_CONNTRACK: u8 = 1 << 0;

/// A later hop of a packet whose headers did not change since the last [`PacketEvent`] its CPU
/// wrote as a base (`PacketEvent::base`): the same skb and data buffer, the same headers but
/// for the TTL, and either no conntrack entry or the base's, established (its tuples cannot
/// change any more). Everything a `PacketEvent` of this hop would hold is either here or equal
/// to the base's, so the collector rebuilds it exactly. Never for TC programs (no skb), drops
/// (a location and reason), encapsulated packets, ICMP errors or `-w`.
///
/// A CPU's base changes only in runs that are not nested in another run on that CPU, which
/// write their records in the order they run: so a hop always follows its base in the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactHop {
    /// Always [`EventKind::CompactHop`].
    pub kind: u8,
    /// A [`crate::hook::Hook`] value.
    pub hook: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// `HOP_*` bits.
    pub flags: u8,
    /// The CPU whose base this hop follows.
    pub cpu: u32,
    /// As [`PacketEvent::ts_ns`].
    pub ts_ns: u64,
    /// Address of the `struct sk_buff`: the base's.
    pub skb: u64,
    pub ifindex: u32,
    pub netns_inode: u32,
    pub len: u32,
    pub mark: u32,
    pub ifname: [u8; 16],
    pub sock_cookie: u64,
}
assert_size!(CompactHop, 64);

/// A socket's life, seen from the `cgroup/sock_create` and `cgroup/sock_release` programs,
/// which run in the context of the process that creates (or last closes) the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    /// [`EventKind::SocketCreated`] or [`EventKind::SocketReleased`].
    pub kind: u8,
    pub _pad: [u8; 3],
    /// The process (thread group) id of the creator, in the initial PID namespace.
    pub tgid: u32,
    /// The socket's cookie (`bpf_get_socket_cookie`), unique while the kernel runs.
    pub cookie: u64,
    /// The creator's cgroup v2 id (the inode of its cgroup directory).
    pub cgroup_id: u64,
    /// The creating thread's command name, NUL padded.
    pub comm: [u8; 16],
}
assert_size!(SocketEvent, 40);

#[cfg(feature = "user")]
// SAFETY: `repr(C)` integers and arrays with explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for PacketEvent {}

#[cfg(feature = "user")]
// SAFETY: a `PacketEvent` and a byte array, `repr(C)`, size asserted: every bit pattern is
// valid.
unsafe impl aya::Pod for PacketWithHeaders {}

#[cfg(feature = "user")]
// SAFETY: `repr(C)` integers and arrays with explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for SocketEvent {}

#[cfg(feature = "user")]
// SAFETY: `repr(C)` integers and arrays, no padding (size asserted): every bit pattern is
// valid.
unsafe impl aya::Pod for CompactHop {}

#[cfg(feature = "user")]
// SAFETY: `repr(C)` events and byte arrays with explicit padding, size asserted: every bit
// pattern is valid.
unsafe impl aya::Pod for PacketEncap {}

#[cfg(feature = "user")]
// SAFETY: as for `PacketEncap`.
unsafe impl aya::Pod for PacketEncapWithHeaders {}

/// Per-hook counters the programs keep in the `COUNTERS` per-CPU array, at index
/// `hook * COUNTER_SLOTS + counter`. Each run of a program adds one to exactly one of them, so
/// the runs of a hook are their sum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The packet did not match the filter (or was not IP).
    Filtered = 0,
    /// An event was written to the ring buffer.
    Emitted = 1,
    /// The packet matched but the ring buffer was full: the event is lost.
    Lost = 2,
}

/// Slots per hook in the `COUNTERS` map.
pub const COUNTER_SLOTS: u32 = 3;
/// Entries in the `COUNTERS` map: room for hook values up to 15.
pub const COUNTER_ENTRIES: u32 = 16 * COUNTER_SLOTS;

/// Index of `counter` for `hook` in the `COUNTERS` map.
pub const fn counter_index(hook: u8, counter: Counter) -> u32 {
    (hook as u32 & 15) * COUNTER_SLOTS + counter as u32
}
