//! BTF tracepoints on the networking core: the hops every packet makes through devices.
//!
//! Transmit: `net_dev_queue` (entering `dev_queue_xmit`) and `net_dev_start_xmit` (handed to
//! the driver). Receive: `netif_rx` (queued to a CPU backlog, which is how a veth delivers to
//! its peer) and `netif_receive_skb` (entering the stack of a device, including a bridge).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::hook::Hook;

use crate::skb::{L3At, trace};

#[btf_tracepoint(function = "net_dev_queue")]
pub fn net_dev_queue(ctx: BtfTracePointContext) -> i32 {
    trace(ctx.arg(0), Hook::NetDevQueue, L3At::NetworkHeader);
    0
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn net_dev_start_xmit(ctx: BtfTracePointContext) -> i32 {
    trace(ctx.arg(0), Hook::NetDevStartXmit, L3At::NetworkHeader);
    0
}

#[btf_tracepoint(function = "netif_rx")]
pub fn netif_rx(ctx: BtfTracePointContext) -> i32 {
    trace(ctx.arg(0), Hook::NetifRx, L3At::Data);
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    trace(ctx.arg(0), Hook::NetifReceiveSkb, L3At::Data);
    0
}
