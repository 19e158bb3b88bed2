//! TC classifiers for chosen interfaces (TCX links, or clsact on older kernels).
//!
//! They see the packet as the device does, link-layer header first. They always return
//! `TC_ACT_UNSPEC`, which lets the packet and the rest of the chain go on untouched.
//!
//! A TC program cannot see the `sk_buff` or its device's namespace (`bpf_get_netns_cookie`
//! gives the socket's namespace, and forwarded packets have no socket), so its events carry
//! only the interface index; the collector knows where it attached the program.

use aya_ebpf::{
    EbpfContext as _,
    bindings::TC_ACT_UNSPEC,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_skb_load_bytes},
    },
    macros::classifier,
    programs::TcContext,
};
use tracer_common::{
    event::{Counter, FLAG_TC},
    hook::Hook,
    wire::ether,
};

use crate::{
    conntrack::{Conntrack, Tuples},
    emit::{Record, Verdict, count, matches, matches_encap},
    frame::{self, Frame},
    layer::{self, Layer, Layers},
    packet::{Bytes, Headers, Parsed, parse_l3},
};

#[classifier]
#[inline(always)] // one stack frame for the whole run
pub fn tc_ingress(ctx: TcContext) -> i32 {
    trace(&ctx, Hook::TcIngress);
    TC_ACT_UNSPEC
}

#[classifier]
#[inline(always)] // one stack frame for the whole run
pub fn tc_egress(ctx: TcContext) -> i32 {
    trace(&ctx, Hook::TcEgress);
    TC_ACT_UNSPEC
}

impl Bytes for TcContext {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        TcContext::load(self, offset as usize).ok()
    }

    #[inline(always)]
    fn copy(&self, offset: u32, dst: &mut [u8]) -> usize {
        // bpf_skb_load_bytes() refuses a zero length, so an empty copy never reaches it.
        let len = self.len().saturating_sub(offset) as usize;
        let len = len.min(dst.len());
        if len == 0 {
            return 0;
        }
        // SAFETY: `dst` is valid for `len` bytes, and the helper checks the packet's bounds.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast(),
                offset,
                dst.as_mut_ptr().cast(),
                len as u32,
            )
        };
        if rc == 0 { len } else { 0 }
    }
}

#[inline(always)]
fn trace(ctx: &TcContext, hook: Hook) {
    let counter = match frame::take() {
        Some(mut taken) => {
            let counter = emit(ctx, hook, taken.frame());
            taken.give_back();
            counter.unwrap_or(Counter::Filtered)
        }
        None => Counter::Lost,
    };
    count(hook as u8, counter);
}

/// The second layer of a packet that may have one (see [`layer`]): a tunnel's inner headers
/// are parsed too. Each step is a BPF function of its own, called one after the other.
#[inline(always)]
fn second_layer(ctx: &TcContext, l3: u32, outer: &Headers, layers: &mut Layers) -> Layer {
    if find_tunnel(ctx, l3, outer, layers) {
        if inner_headers(ctx, layers) {
            return Layer::Tunnel;
        }
        return Layer::None;
    }
    if find_quote(ctx, l3, outer, layers) {
        return Layer::Quote;
    }
    Layer::None
}

#[inline(never)]
fn find_tunnel(ctx: &TcContext, l3: u32, outer: &Headers, layers: &mut Layers) -> bool {
    layer::tunnel(ctx, l3, outer, layers)
}

#[inline(never)]
fn inner_headers(ctx: &TcContext, layers: &mut Layers) -> bool {
    layer::inner(ctx, layers)
}

#[inline(never)]
fn find_quote(ctx: &TcContext, l3: u32, packet: &Headers, layers: &mut Layers) -> bool {
    layer::quote(ctx, l3, packet, layers)
}

#[inline(always)]
fn emit(ctx: &TcContext, hook: Hook, frame: &mut Frame) -> Option<Counter> {
    let mut proto = u16::from_be(Bytes::load::<u16>(ctx, ether::TYPE_OFFSET)?);
    let mut l3 = ether::HEADER_LEN;
    if proto == ether::P_8021Q || proto == ether::P_8021AD {
        proto = u16::from_be(Bytes::load::<u16>(
            ctx,
            ether::HEADER_LEN + ether::VLAN_TYPE_OFFSET,
        )?);
        l3 += ether::VLAN_HEADER_LEN;
    }
    let Frame {
        headers,
        layers,
        scratch,
    } = frame;
    headers.zero();
    if parse_l3(ctx, proto, l3, headers) == Parsed::NotIp {
        return None;
    }
    // A TC program sees no conntrack entry.
    let ct = Conntrack::of(0);
    let layer = if layer::candidate(headers) {
        second_layer(ctx, l3, headers, layers)
    } else {
        Layer::None
    };
    let reserved = if layer == Layer::Tunnel {
        if !matches_encap(&layers.inner, headers) {
            return None;
        }
        layers.inner.flags |= FLAG_TC;
        Record::reserve(hook as u8, &layers.inner, &ct, None, Some(&layers.encap))
    } else {
        headers.flags |= FLAG_TC;
        let quote = (layer == Layer::Quote).then_some(&layers.encap);
        let tuples = match matches(headers, quote, &ct, scratch) {
            Verdict::Miss => return None,
            Verdict::Match => None,
            // SAFETY: `matches` read the tuples into `scratch`, untouched since.
            Verdict::MatchWithTuples => Some(unsafe { Tuples::in_scratch(scratch) }),
        };
        Record::reserve(hook as u8, headers, &ct, tuples.as_ref(), quote)
    };
    let Some(mut record) = reserved else {
        return Some(Counter::Lost);
    };
    let event = record.event();
    // SAFETY: the helper reads the cookie of the packet's socket (0 without one) from the
    // program's own context.
    let sock_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the context of a TC program points at its `__sk_buff`, valid while it runs;
    // `event` is the reserved event, zeroed and filled by `reserve`.
    unsafe {
        (*event).sock_cookie = sock_cookie;
        let skb = &*ctx.skb.skb;
        (*event).len = skb.len;
        (*event).mark = skb.mark;
        (*event).ifindex = skb.ifindex;
    }
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    record.submit(ts_ns, ctx, l3);
    Some(Counter::Emitted)
}
