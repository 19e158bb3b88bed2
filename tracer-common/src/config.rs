//! Read-only configuration handed to the kernel programs before they are loaded.
//!
//! The collector fills a [`Config`] and sets it as the programs' `CONFIG` global
//! (`EbpfLoader::override_global`); the verifier then sees its fields as constants and prunes
//! what the configuration turns off.

use crate::assert_size;

/// Name of the global that holds the [`Config`] in the eBPF object.
pub const CONFIG_SYMBOL: &str = "CONFIG";

/// Marks an offset the running kernel does not have; programs skip what depends on it.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Byte offsets of the kernel structure members the programs read, taken from the running
/// kernel's BTF at start-up. Rust eBPF has no CO-RE relocations, so these are never compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sk_buff`
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    pub skb_data_len: u32,
    pub skb_protocol: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    pub skb_mark: u32,
    /// `skb->_nfct`: conntrack pointer with `enum ip_conntrack_info` in its low 3 bits.
    pub skb_nfct: u32,
    /// `struct net_device`
    pub dev_ifindex: u32,
    pub dev_name: u32,
    /// `dev->nd_net.net`
    pub dev_net: u32,
    /// `net->ns.inum`
    pub net_inum: u32,
    /// `struct nf_conn`: offset of `tuplehash[0].tuple`
    pub ct_tuple_orig: u32,
    /// `struct nf_conn`: offset of `tuplehash[1].tuple`
    pub ct_tuple_reply: u32,
    /// `struct nf_conntrack_tuple`
    pub tuple_src_addr: u32,
    pub tuple_src_port: u32,
    pub tuple_l3num: u32,
    pub tuple_dst_addr: u32,
    pub tuple_dst_port: u32,
    pub tuple_protonum: u32,
    /// `skb->sk`
    pub skb_sk: u32,
    /// `sk->__sk_common.skc_cookie`
    pub sk_cookie: u32,
    /// `skb->ipvs_property`, a one-bit field: its offset in bits.
    pub skb_ipvs_property: u32,
}
assert_size!(KernelOffsets, 96);

impl KernelOffsets {
    /// Every offset unknown.
    pub const fn unknown() -> Self {
        const U: u32 = OFFSET_UNKNOWN;
        KernelOffsets {
            skb_head: U,
            skb_data: U,
            skb_len: U,
            skb_data_len: U,
            skb_protocol: U,
            skb_network_header: U,
            skb_dev: U,
            skb_mark: U,
            skb_nfct: U,
            dev_ifindex: U,
            dev_name: U,
            dev_net: U,
            net_inum: U,
            ct_tuple_orig: U,
            ct_tuple_reply: U,
            tuple_src_addr: U,
            tuple_src_port: U,
            tuple_l3num: U,
            tuple_dst_addr: U,
            tuple_dst_port: U,
            tuple_protonum: U,
            skb_sk: U,
            sk_cookie: U,
            skb_ipvs_property: U,
        }
    }
}

/// Most instructions in a [`Filter`].
pub const FILTER_MAX: usize = 32;

/// `FilterInsn::op`: push true.
pub const OP_TRUE: u8 = 1;
/// `FilterInsn::op`: push whether the address family is `family`.
pub const OP_FAMILY: u8 = 2;
/// `FilterInsn::op`: push whether the IP protocol is `proto`.
pub const OP_PROTO: u8 = 3;
/// `FilterInsn::op`: push whether the address on `side`, masked with `mask`, equals `addr`
/// (and the family is `family`).
pub const OP_HOST: u8 = 4;
/// `FilterInsn::op`: push whether the TCP/UDP/SCTP port on `side` is in `port_lo..=port_hi`.
pub const OP_PORT: u8 = 5;
/// `FilterInsn::op`: pop two, push their conjunction.
pub const OP_AND: u8 = 6;
/// `FilterInsn::op`: pop two, push their disjunction.
pub const OP_OR: u8 = 7;
/// `FilterInsn::op`: pop one, push its negation.
pub const OP_NOT: u8 = 8;

/// `FilterInsn::side`: source or destination.
pub const SIDE_EITHER: u8 = 0;
/// `FilterInsn::side`: source.
pub const SIDE_SRC: u8 = 1;
/// `FilterInsn::side`: destination.
pub const SIDE_DST: u8 = 2;

/// One step of a filter program in postfix order, evaluated on a stack of booleans.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterInsn {
    /// `OP_*`.
    pub op: u8,
    /// `SIDE_*`, for `OP_HOST` and `OP_PORT`.
    pub side: u8,
    /// `event::FAMILY_IPV4` or `event::FAMILY_IPV6`, for `OP_FAMILY` and `OP_HOST`.
    pub family: u8,
    /// IP protocol number, for `OP_PROTO`.
    pub proto: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    /// Network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    pub mask: [u8; 16],
}
assert_size!(FilterInsn, 40);

impl FilterInsn {
    pub const fn new(op: u8) -> Self {
        FilterInsn {
            op,
            side: SIDE_EITHER,
            family: 0,
            proto: 0,
            port_lo: 0,
            port_hi: 0,
            addr: [0; 16],
            mask: [0; 16],
        }
    }
}

/// What the programs match before they emit anything: a compiled tcpdump-style expression.
/// A packet matches when the program is true for the packet's own tuple, for either tuple of
/// its conntrack entry (the other side of a NAT), or when it belongs to a connection that
/// matched before. An empty program matches every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Instructions in use.
    pub len: u32,
    pub _pad: u32,
    pub insns: [FilterInsn; FILTER_MAX],
}
assert_size!(Filter, 8 + 40 * FILTER_MAX);

/// Everything the programs are told before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub filter: Filter,
    pub offsets: KernelOffsets,
    /// Bytes of each packet to copy into the event, from the IP header on (0 for none; at
    /// most `event::SNAP_MAX`).
    pub snap_len: u32,
    /// When not 0, copy no more than the headers: the payload is never captured.
    pub snap_headers_only: u32,
    /// `SKB_DROP_REASON_QUEUE_PURGE` in the running kernel: a socket freeing its queues as it
    /// closes, which is not a packet dying on its path, so `kfree_skb` skips it.
    pub drop_reason_queue_purge: u32,
    /// Unread bytes in the ring buffer from which an event wakes the reader up; below it, the
    /// reader finds events on its own short timer, so that a burst costs one wake-up rather
    /// than one per event.
    pub wakeup_bytes: u32,
    /// Keep one connection in this many (0 and 1 keep every one): a connection the filter
    /// matches is kept when the hash of its key (`FlowKey::sample_hash` of the conntrack
    /// original tuple, or of the packet's own tuple without an entry) is a multiple of it, so
    /// that its packets are kept or skipped together on both sides of a NAT.
    pub sample_every: u32,
    /// The UDP port Geneve uses (0: Geneve is not looked into).
    pub geneve_port: u16,
    /// When not 0, encapsulated packets are looked into (VXLAN on [`Config::vxlan_ports`],
    /// Geneve, IP in IP, GRE): the filter matches their inner packet too, and their events
    /// describe it.
    pub encap: u16,
    /// The UDP ports VXLAN devices use (0: an unused slot).
    pub vxlan_ports: [u16; MAX_VXLAN_PORTS],
}
assert_size!(Config, 8 + 40 * FILTER_MAX + 96 + 24 + 16);

/// Most UDP ports the programs treat as VXLAN.
pub const MAX_VXLAN_PORTS: usize = 8;

impl Config {
    /// A configuration that matches everything and knows no offsets: programs emit nothing useful
    /// until the collector replaces it.
    pub const fn new() -> Self {
        Config {
            filter: Filter {
                len: 0,
                _pad: 0,
                insns: [FilterInsn::new(0); FILTER_MAX],
            },
            offsets: KernelOffsets::unknown(),
            snap_len: 0,
            snap_headers_only: 1,
            sample_every: 0,
            geneve_port: 0,
            encap: 0,
            vxlan_ports: [0; MAX_VXLAN_PORTS],
            drop_reason_queue_purge: u32::MAX,
            wakeup_bytes: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)` integers and arrays with explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for Config {}
