//! The NAT function as a hop of its own: `nf_nat_manip_pkt(skb, ct, mtype, dir)` is where
//! netfilter rewrites a packet's addresses and ports. There is no tracepoint there, so it is
//! reached with fentry where the kernel allows it and with a kprobe otherwise; both run the
//! same body at function entry, so the hop shows the packet just before the rewrite.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use tracer_common::hook::Hook;

use crate::skb::{Direct, L3At, Probe, trace};

#[fentry(function = "nf_nat_manip_pkt")]
#[inline(always)] // one stack frame for the whole run
pub fn nf_nat_manip_pkt_fentry(ctx: FEntryContext) -> i32 {
    trace::<Direct>(ctx.arg(0), Hook::NfNatManipPkt, L3At::NetworkHeader);
    0
}

#[kprobe]
#[inline(always)] // one stack frame for the whole run
pub fn nf_nat_manip_pkt_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(skb) = ctx.arg(0) {
        trace::<Probe>(skb, Hook::NfNatManipPkt, L3At::NetworkHeader);
    }
    0
}
