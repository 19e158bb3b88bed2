//! Tracepoints on the networking core: the hops every packet makes through devices.
//!
//! Transmit: `net_dev_queue` (entering `dev_queue_xmit`) and `net_dev_start_xmit` (handed to
//! the driver). Receive: `netif_rx` (queued to a CPU backlog, which is how a veth delivers to
//! its peer) and `netif_receive_skb` (entering the stack of a device, including a bridge).
//! Each has a BTF tracepoint program and a raw tracepoint program with the same body; the
//! collector loads the first one the kernel accepts.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::hook::Hook;

use crate::skb::{Direct, L3At, Probe, trace};

/// Defines the `tp_btf` and `raw_tp` programs of one tracepoint whose first argument is the skb.
/// Each body is forced inline into the program the macro makes: one stack frame for the whole
/// run (a program has 512 bytes of stack for all its frames, and Linux 6.1 rounds each up).
macro_rules! stack_hook {
    ($name:ident, $raw:ident, $tracepoint:literal, $hook:expr, $at:expr) => {
        #[btf_tracepoint(function = $tracepoint)]
        #[inline(always)]
        pub fn $name(ctx: BtfTracePointContext) -> i32 {
            trace::<Direct>(ctx.arg(0), $hook, $at);
            0
        }

        #[raw_tracepoint(tracepoint = $tracepoint)]
        #[inline(always)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            trace::<Probe>(ctx.arg(0), $hook, $at);
            0
        }
    };
}

stack_hook!(
    net_dev_queue,
    net_dev_queue_raw,
    "net_dev_queue",
    Hook::NetDevQueue,
    L3At::NetworkHeader
);
stack_hook!(
    net_dev_start_xmit,
    net_dev_start_xmit_raw,
    "net_dev_start_xmit",
    Hook::NetDevStartXmit,
    L3At::NetworkHeader
);
stack_hook!(
    netif_rx,
    netif_rx_raw,
    "netif_rx",
    Hook::NetifRx,
    L3At::Data
);
stack_hook!(
    netif_receive_skb,
    netif_receive_skb_raw,
    "netif_receive_skb",
    Hook::NetifReceiveSkb,
    L3At::Data
);
