//! TC classifiers for chosen interfaces (TCX links, or clsact on older kernels).
//!
//! They see the packet as the device does, link-layer header first. They always return
//! `TC_ACT_UNSPEC`, which lets the packet and the rest of the chain go on untouched.
//!
//! A TC program cannot see the `sk_buff` or its device's namespace (`bpf_get_netns_cookie`
//! gives the socket's namespace, and forwarded packets have no socket), so its events carry
//! only the interface index; the collector knows where it attached the program.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use tracer_common::{
    event::{Counter, FLAG_TC},
    hook::Hook,
};

use crate::{
    emit::{count, matches, submit},
    packet::{Bytes, ETH_P_8021AD, ETH_P_8021Q, Parsed, parse_l3},
    words,
};

/// Ethernet header length.
const ETH_HLEN: u32 = 14;
/// 802.1Q tag length.
const VLAN_HLEN: u32 = 4;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    trace(&ctx, Hook::TcIngress);
    TC_ACT_UNSPEC
}

#[classifier]
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
    count(hook as u8, Counter::Seen);
    if emit(ctx, hook).is_none() {
        count(hook as u8, Counter::Filtered);
    }
}

#[inline(always)]
fn emit(ctx: &TcContext, hook: Hook) -> Option<()> {
    let mut slot = MaybeUninit::uninit();
    let event = words::new_event(&mut slot);
    event.hook = hook as u8;
    event.flags = FLAG_TC;
    event.ts_ns = unsafe { bpf_ktime_get_ns() };

    let mut proto = u16::from_be(Bytes::load::<u16>(ctx, 12)?);
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = u16::from_be(Bytes::load::<u16>(ctx, ETH_HLEN + 2)?);
        l3 += VLAN_HLEN;
    }
    if parse_l3(ctx, proto, l3, event) == Parsed::NotIp {
        return None;
    }
    if !matches(event) {
        return None;
    }
    let skb = unsafe { &*ctx.skb.skb };
    event.len = skb.len;
    event.mark = skb.mark;
    event.ifindex = skb.ifindex;
    submit(event, ctx, l3);
    Some(())
}
