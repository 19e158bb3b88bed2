//! Reading a `struct sk_buff` (include/linux/skbuff.h) and turning it into an event.
//!
//! Offsets come from the running kernel's BTF through [`crate::config`]; reads go through
//! plain loads where the program has BTF-typed arguments and `bpf_probe_read_kernel` where it
//! has not (see [`Access`]), so the same code serves tracepoints, kprobes and fentry programs.

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use tracer_common::{
    config::OFFSET_UNKNOWN,
    event::{Counter, CtTuple, FAMILY_IPV4, FAMILY_IPV6},
    hook::Hook,
    wire::conntrack::{self, AF_INET, AF_INET6, TUPLE_SIZE},
};

use core::mem::MaybeUninit;

use crate::{
    config::conf,
    emit::{count, matches, submit},
    packet::{Bytes, Parsed, parse_l3},
    words,
};

/// Where the L3 header of the skb starts at a given hook.
#[derive(Clone, Copy)]
pub enum L3At {
    /// `skb->head + skb->network_header`: set by the stack on the transmit path.
    NetworkHeader,
    /// `skb->data`: on the receive path the link-layer header has already been pulled.
    Data,
    /// Wherever the packet is freed: the network header if it parses as IP, else `data`.
    Either,
}

/// What only some hooks know about a packet.
#[derive(Clone, Copy, Default)]
pub struct Extra {
    pub location: u64,
    pub drop_reason: u32,
}

/// How a program reads kernel structures (`sk_buff`, `net_device`, `net`).
pub trait Access {
    /// One `T` at `base + offset`, or `None` when the offset is unknown or `base` is NULL.
    fn read<T: Copy>(base: u64, offset: u32) -> Option<T>;
}

/// BTF-typed programs (tp_btf, fentry): plain loads. The verifier checks each against the
/// kernel's BTF and makes it fault-safe, and it costs a load instead of a helper call.
pub struct Direct;

/// Programs whose arguments are plain numbers (raw tracepoints, kprobes):
/// `bpf_probe_read_kernel`.
pub struct Probe;

impl Access for Direct {
    #[inline(always)]
    fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
        if offset == OFFSET_UNKNOWN || base == 0 {
            return None;
        }
        // SAFETY: BTF-typed programs may load from kernel pointers: the verifier checks the
        // access against the kernel's BTF and turns a fault into a zero read.
        Some(unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const T) })
    }
}

impl Access for Probe {
    #[inline(always)]
    fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
        read(base, offset)
    }
}

/// Reads one `T` at `base + offset` in kernel memory with `bpf_probe_read_kernel`.
#[inline(always)]
fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if offset == OFFSET_UNKNOWN || base == 0 {
        return None;
    }
    // SAFETY: the helper copies from kernel memory and fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The linear data of an skb: `head` up to `limit` bytes past it.
struct Linear {
    head: u64,
    limit: u32,
}

impl Bytes for Linear {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        if offset.checked_add(size_of::<T>() as u32)? > self.limit {
            return None;
        }
        read(self.head, offset)
    }

    #[inline(always)]
    fn copy(&self, offset: u32, dst: &mut [u8]) -> usize {
        let available = self.limit.saturating_sub(offset) as usize;
        let len = dst.len().min(available);
        let Some(dst) = dst.get_mut(..len) else {
            return 0;
        };
        let src = (self.head + u64::from(offset)) as *const u8;
        // SAFETY: the helper copies from kernel memory and fails cleanly on a bad address;
        // `dst` is a valid buffer of the length passed.
        match unsafe { bpf_probe_read_kernel_buf(src, dst) } {
            Ok(()) => len,
            Err(_) => 0,
        }
    }
}

/// Emits an event for `skb` at `hook` if it matches the filter.
#[inline(always)]
pub fn trace<A: Access>(skb: u64, hook: Hook, at: L3At) {
    trace_with::<A>(skb, hook, at, Extra::default());
}

/// [`trace`] with what only some hooks know.
#[inline(always)]
pub fn trace_with<A: Access>(skb: u64, hook: Hook, at: L3At, extra: Extra) {
    count(hook as u8, Counter::Seen);
    if emit::<A>(skb, hook, at, extra).is_none() {
        count(hook as u8, Counter::Filtered);
    }
}

#[inline(always)]
fn emit<A: Access>(skb: u64, hook: Hook, at: L3At, extra: Extra) -> Option<()> {
    let mut slot = MaybeUninit::uninit();
    let event = words::new_event(&mut slot);
    event.hook = hook as u8;
    event.location = extra.location;
    event.drop_reason = extra.drop_reason;
    // SAFETY: a helper without arguments.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.skb = skb;

    let head: u64 = A::read(skb, conf!(offsets.skb_head))?;
    let data: u64 = A::read(skb, conf!(offsets.skb_data))?;
    let len: u32 = A::read(skb, conf!(offsets.skb_len))?;
    let data_len: u32 = A::read(skb, conf!(offsets.skb_data_len))?;
    let protocol: u16 = A::read(skb, conf!(offsets.skb_protocol))?;
    let data_off = data.checked_sub(head)? as u32;
    let network_header = || A::read::<u16>(skb, conf!(offsets.skb_network_header)).map(u32::from);
    let linear = Linear {
        head,
        limit: data_off + len.saturating_sub(data_len),
    };
    let protocol = u16::from_be(protocol);
    let l3 = match at {
        L3At::NetworkHeader => network_header()?,
        L3At::Data => data_off,
        L3At::Either => {
            // The network header when an IP version nibble is there, else the data.
            let nh = network_header()?;
            let version = linear.load::<u8>(nh).map_or(0, |b| b >> 4);
            if version == 4 || version == 6 {
                nh
            } else {
                data_off
            }
        }
    };
    if parse_l3(&linear, protocol, l3, event) == Parsed::NotIp {
        return None;
    }
    event.skb_head = head;
    event.len = len;

    let nfct: u64 = A::read(skb, conf!(offsets.skb_nfct)).unwrap_or(0);
    let ct = nfct & !conntrack::INFO_MASK;
    let info = nfct & conntrack::INFO_MASK;
    if ct != 0 && info != conntrack::UNTRACKED {
        event.ct = ct;
        event.ct_state = conntrack::encode_state(info as u8);
        read_tuple(ct, conf!(offsets.ct_tuple_orig), &mut event.ct_orig);
        read_tuple(ct, conf!(offsets.ct_tuple_reply), &mut event.ct_reply);
    }
    if !matches(event) {
        return None;
    }

    event.mark = A::read(skb, conf!(offsets.skb_mark)).unwrap_or(0);
    let dev: u64 = A::read(skb, conf!(offsets.skb_dev)).unwrap_or(0);
    event.ifindex = A::read(dev, conf!(offsets.dev_ifindex)).unwrap_or(0);
    if let Some(name) = read::<[u8; 16]>(dev, conf!(offsets.dev_name)) {
        event.ifname = name;
    }
    let net: u64 = A::read(dev, conf!(offsets.dev_net)).unwrap_or(0);
    event.netns_inode = A::read(net, conf!(offsets.net_inum)).unwrap_or(0);

    submit(event, &linear, l3);
    Some(())
}

/// Copies the conntrack tuple at `ct + offset` into `tuple`, leaving it zero on failure.
#[inline(always)]
fn read_tuple(ct: u64, offset: u32, tuple: &mut CtTuple) {
    // Read into uninitialized stack: a zeroed buffer would cost a byte-by-byte `memset` call.
    let Some(raw) = read::<[u8; TUPLE_SIZE]>(ct, offset) else {
        return;
    };
    let field = |offset: u32, len: usize| raw.get(offset as usize..offset as usize + len);
    let (Some(src), Some(sport), Some(l3num), Some(dst), Some(dport), Some(proto)) = (
        field(conf!(offsets.tuple_src_addr), 16),
        field(conf!(offsets.tuple_src_port), 2),
        field(conf!(offsets.tuple_l3num), 2),
        field(conf!(offsets.tuple_dst_addr), 16),
        field(conf!(offsets.tuple_dst_port), 2),
        field(conf!(offsets.tuple_protonum), 1),
    ) else {
        return;
    };
    tuple.family = match u16::from_ne_bytes([l3num[0], l3num[1]]) {
        AF_INET => FAMILY_IPV4,
        AF_INET6 => FAMILY_IPV6,
        _ => return,
    };
    tuple.src_addr.copy_from_slice(src);
    tuple.dst_addr.copy_from_slice(dst);
    tuple.src_port = u16::from_be_bytes([sport[0], sport[1]]);
    tuple.dst_port = u16::from_be_bytes([dport[0], dport[1]]);
    tuple.protonum = proto[0];
}
