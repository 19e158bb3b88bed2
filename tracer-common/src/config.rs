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
    pub _pad: u32,
}
assert_size!(KernelOffsets, 88);

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
            _pad: 0,
        }
    }
}

/// What the programs match before they emit anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Emit only packets with this L4 port as source or destination, on the packet itself or
    /// on either side of its NAT (conntrack tuples). 0 matches every packet.
    pub port: u16,
    pub _pad: [u8; 6],
}
assert_size!(Filter, 8);

/// Everything the programs are told before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub filter: Filter,
    pub offsets: KernelOffsets,
}
assert_size!(Config, 96);

impl Config {
    /// A configuration that matches everything and knows no offsets: programs emit nothing useful
    /// until the collector replaces it.
    pub const fn new() -> Self {
        Config {
            filter: Filter {
                port: 0,
                _pad: [0; 6],
            },
            offsets: KernelOffsets::unknown(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
