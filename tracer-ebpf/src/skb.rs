//! Reading a `struct sk_buff` (include/linux/skbuff.h) and turning it into an event.
//!
//! Offsets come from the running kernel's BTF through [`crate::config`]; reads go through
//! plain loads where the program has BTF-typed arguments and `bpf_probe_read_kernel` where it
//! has not (see [`Access`]), so the same code serves tracepoints, kprobes and fentry programs.

use aya_ebpf::helpers::{
    bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated,
};
use tracer_common::{
    config::OFFSET_UNKNOWN,
    event::{Counter, FLAG_IPVS},
    hook::Hook,
};

use core::mem::MaybeUninit;

use crate::{
    compact::{self, Base, Place},
    config::conf,
    conntrack::{Conntrack, SCRATCH, Scratch, Tuples},
    emit::{Record, Verdict, count, matches, matches_encap},
    frame::{self, Frame},
    layer::{self, Layer, Layers},
    packet::{Bytes, Headers, Parsed, parse_l3},
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

/// The first [`SCRATCH`] bytes from the L3 header, read with one helper call into the
/// program's scratch buffer: the usual headers (IPv4 with options or IPv6, and the L4 header
/// up to the TCP flags) are parsed from here, where they start within [`WINDOW_REACH`] bytes;
/// what lies beyond is read from the skb.
struct Window<'a> {
    linear: &'a Linear,
    start: u32,
    /// The window, when the read worked (it can fail near the end of the buffer).
    bytes: Option<&'a [u8; SCRATCH]>,
}

/// Headers that start this far into the window are read from it.
const WINDOW_REACH: u32 = 64;

impl<'a> Window<'a> {
    #[inline(always)]
    fn read(linear: &'a Linear, start: u32, scratch: &'a mut MaybeUninit<Scratch>) -> Self {
        // SAFETY: the helper writes `SCRATCH` bytes, the buffer's size, and zeroes them when it
        // fails; the buffer is initialized once it returns.
        let bytes = unsafe {
            let rc = generated::bpf_probe_read_kernel(
                scratch.as_mut_ptr().cast(),
                SCRATCH as u32,
                (linear.head + u64::from(start)) as *const core::ffi::c_void,
            );
            (rc == 0).then(|| &scratch.assume_init_ref().0)
        };
        Window {
            linear,
            start,
            bytes,
        }
    }
}

impl Bytes for Window<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        let end = offset.checked_add(size_of::<T>() as u32)?;
        if end > self.linear.limit {
            return None;
        }
        // An offset before the window wraps around to a large number.
        let at = offset.wrapping_sub(self.start);
        if let Some(bytes) = self.bytes
            && at < WINDOW_REACH
        {
            // The mask changes nothing at run time. It shows every verifier the bound: LLVM
            // would drop a mask of a value it knows is below 64, and older verifiers lose a
            // bound that a comparison put on a register once it is spilled and reloaded.
            let at = (core::hint::black_box(at) & (WINDOW_REACH - 1)) as usize;
            const { assert!(WINDOW_REACH as usize - 1 + size_of::<T>() <= SCRATCH) };
            // SAFETY: `at` is below 64 and the assertion above holds for `T`, so the read is
            // within the initialized window; `T` is plain bytes read unaligned.
            return Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().add(at).cast()) });
        }
        self.linear.load(offset)
    }

    #[inline(always)]
    fn copy(&self, offset: u32, dst: &mut [u8]) -> usize {
        self.linear.copy(offset, dst)
    }
}

#[inline(never)]
fn find_tunnel(window: &Window, l3: u32, outer: &Headers, layers: &mut Layers) -> bool {
    layer::tunnel(window, l3, outer, layers)
}

#[inline(never)]
fn inner_headers(linear: &Linear, scratch: &mut MaybeUninit<Scratch>, layers: &mut Layers) -> bool {
    let window = Window::read(linear, layers.inner_l3, scratch);
    layer::inner(&window, layers)
}

#[inline(never)]
fn find_quote(window: &Window, l3: u32, packet: &Headers, layers: &mut Layers) -> bool {
    layer::quote(window, l3, packet, layers)
}

/// Where a hop of `skb` is: its device and namespace, its length and mark, its socket.
#[inline(always)]
fn place<A: Access>(skb: u64, len: u32) -> Place {
    let dev: u64 = A::read(skb, conf!(offsets.skb_dev)).unwrap_or(0);
    let net: u64 = A::read(dev, conf!(offsets.dev_net)).unwrap_or(0);
    // The cookie of the packet's socket: set where tracer saw the socket created (the
    // collector knows its owner), 0 for a socket without one or a packet without a socket.
    let sk: u64 = A::read(skb, conf!(offsets.skb_sk)).unwrap_or(0);
    Place {
        ifindex: A::read(dev, conf!(offsets.dev_ifindex)).unwrap_or(0),
        netns_inode: A::read(net, conf!(offsets.net_inum)).unwrap_or(0),
        len,
        mark: A::read(skb, conf!(offsets.skb_mark)).unwrap_or(0),
        // Two words: plain loads for BTF-typed programs, one helper call for the others.
        name: A::read(dev, conf!(offsets.dev_name)).unwrap_or([0; 2]),
        sock_cookie: A::read(sk, conf!(offsets.sk_cookie)).unwrap_or(0),
    }
}

/// Whether IPVS has handled `skb` (the one-bit `skb->ipvs_property`); false on a kernel
/// without IPVS.
#[inline(always)]
fn ipvs_property<A: Access>(skb: u64) -> bool {
    let bit = conf!(offsets.skb_ipvs_property);
    if bit == OFFSET_UNKNOWN {
        return false;
    }
    A::read::<u8>(skb, bit / 8).is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
}

/// Emits an event for `skb` at `hook` if it matches the filter.
#[inline(always)]
pub fn trace<A: Access>(skb: u64, hook: Hook, at: L3At) {
    trace_with::<A>(skb, hook, at, Extra::default());
}

/// [`trace`] with what only some hooks know. Counts the run once: filtered, emitted or lost.
#[inline(always)]
pub fn trace_with<A: Access>(skb: u64, hook: Hook, at: L3At, extra: Extra) {
    let counter = match frame::take() {
        Some(mut taken) => {
            let (frame, base) = taken.parts();
            let counter = emit::<A>(skb, hook, at, extra, frame, base);
            taken.give_back();
            counter.unwrap_or(Counter::Filtered)
        }
        None => Counter::Lost,
    };
    count(hook as u8, counter);
}

/// Parses, decides and, for a packet that matches, writes its event. `None` for a packet
/// that is not IP or does not match.
#[inline(always)]
fn emit<A: Access>(
    skb: u64,
    hook: Hook,
    at: L3At,
    extra: Extra,
    frame: &mut Frame,
    base: Option<&mut Base>,
) -> Option<Counter> {
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
    let Frame {
        headers,
        layers,
        scratch,
    } = frame;
    headers.zero();
    let window = Window::read(&linear, l3, scratch);
    if parse_l3(&window, protocol, l3, headers) == Parsed::NotIp {
        return None;
    }
    // The second layer of a packet that may have one (see [`layer`]): each step a BPF
    // function of its own, called one after the other, so that their stack frames are not
    // added up; a tunnel's inner headers are parsed from a window at them.
    let layer = if !layer::candidate(headers) {
        Layer::None
    } else if find_tunnel(&window, l3, headers, layers) {
        if inner_headers(&linear, scratch, layers) {
            Layer::Tunnel
        } else {
            Layer::None
        }
    } else if find_quote(&window, l3, headers, layers) {
        Layer::Quote
    } else {
        Layer::None
    };
    let reserved = if layer == Layer::Tunnel {
        // The outer packet's conntrack entry is the tunnel's: the event has none.
        if !matches_encap(&layers.inner, headers) {
            return None;
        }
        let ct = Conntrack::of(0);
        Record::reserve(hook as u8, &layers.inner, &ct, None, Some(&layers.encap))
    } else {
        let ct = Conntrack::of(A::read(skb, conf!(offsets.skb_nfct)).unwrap_or(0));
        let quote = (layer == Layer::Quote).then_some(&layers.encap);
        let tuples = match matches(headers, quote, &ct, scratch) {
            Verdict::Miss => return None,
            Verdict::Match => None,
            // SAFETY: `matches` read the tuples into `scratch`, untouched since.
            Verdict::MatchWithTuples => Some(unsafe { Tuples::in_scratch(scratch) }),
        };
        if quote.is_none()
            && hook != Hook::KfreeSkb
            && conf!(snap_len) == 0
            && base
                .as_deref()
                .is_some_and(|base| base.covers(skb, head, headers, &ct))
        {
            let place = place::<A>(skb, len);
            return Some(
                if compact::write(skb, hook as u8, headers.ttl, &ct, &place) {
                    Counter::Emitted
                } else {
                    Counter::Lost
                },
            );
        }
        Record::reserve(hook as u8, headers, &ct, tuples.as_ref(), quote)
    };
    let Some(record) = reserved else {
        return Some(Counter::Lost);
    };
    let mut record = record;
    let event = record.event();
    let place = place::<A>(skb, len);
    // SAFETY: the reserved event, zeroed and filled by `reserve`; plain stores.
    unsafe {
        let e = &mut *event;
        e.skb = skb;
        e.skb_head = head;
        e.len = place.len;
        e.location = extra.location;
        e.drop_reason = extra.drop_reason;
        e.mark = place.mark;
        e.ifindex = place.ifindex;
        e.netns_inode = place.netns_inode;
        e.sock_cookie = place.sock_cookie;
        if ipvs_property::<A>(skb) {
            e.flags |= FLAG_IPVS;
        }
        let ifname = (&raw mut e.ifname).cast::<u64>();
        ifname.write_unaligned(place.name[0]);
        ifname.add(1).write_unaligned(place.name[1]);
    }
    // A plain event is the CPU's base from now on; after any other, the next hop is whole.
    match base {
        // SAFETY: the reserved event, with its skb and conntrack entry written.
        Some(base) if record.is_plain() => unsafe { base.set(event, head, headers) },
        Some(base) => base.clear(),
        None => {}
    }
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    record.submit(ts_ns, &linear, l3);
    Some(Counter::Emitted)
}
