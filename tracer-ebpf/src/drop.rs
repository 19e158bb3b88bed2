//! Where packets die: the `kfree_skb` tracepoint, with the kernel's drop reason and the code
//! address that dropped the packet. Normal frees go through `consume_skb` instead and are not
//! drops.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{event::DROP_REASON_UNREPORTED, hook::Hook};

use crate::{
    config::conf,
    skb::{Access, Direct, Extra, L3At, Probe, trace_with},
};

// kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)

#[btf_tracepoint(function = "kfree_skb")]
#[inline(always)] // one stack frame for the whole run
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    dropped::<Direct>(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
#[inline(always)] // one stack frame for the whole run
pub fn kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    dropped::<Probe>(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

// Before Linux 5.17: kfree_skb(struct sk_buff *skb, void *location). The verifier refuses the
// programs above there (they read a third argument), so the ladder comes down to these.

#[btf_tracepoint(function = "kfree_skb")]
#[inline(always)] // one stack frame for the whole run
pub fn kfree_skb_bare(ctx: BtfTracePointContext) -> i32 {
    unreported::<Direct>(ctx.arg(0), ctx.arg(1));
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
#[inline(always)] // one stack frame for the whole run
pub fn kfree_skb_bare_raw(ctx: RawTracePointContext) -> i32 {
    unreported::<Probe>(ctx.arg(0), ctx.arg(1));
    0
}

/// A drop without the kernel's reason: every one is shown (a queue purge cannot be told
/// apart from a real drop there).
#[inline(always)]
fn unreported<A: Access>(skb: u64, location: u64) {
    let extra = Extra {
        location,
        drop_reason: DROP_REASON_UNREPORTED,
    };
    trace_with::<A>(skb, Hook::KfreeSkb, L3At::Either, extra);
}

#[inline(always)]
fn dropped<A: Access>(skb: u64, location: u64, drop_reason: u32) {
    if drop_reason == conf!(drop_reason_queue_purge) {
        return;
    }
    let extra = Extra {
        location,
        drop_reason,
    };
    trace_with::<A>(skb, Hook::KfreeSkb, L3At::Either, extra);
}
