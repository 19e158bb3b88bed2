//! The output path: the filter decision, the per-hook counters and the ring buffer.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::event::{COUNTER_ENTRIES, Counter, CtTuple, PacketEvent, counter_index};

use crate::config::conf;

/// Default size; the collector sets the real one before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-hook counters, see [`tracer_common::event::Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Adds one to `counter` of `hook` on this CPU.
#[inline(always)]
pub fn count(hook: u8, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(hook, counter)) {
        unsafe { *slot += 1 };
    }
}

/// Whether the configured port filter lets a packet with these ports through.
#[inline(always)]
pub fn ports_match(src_port: u16, dst_port: u16) -> bool {
    let port = conf!(filter.port);
    port == 0 || src_port == port || dst_port == port
}

/// Whether either conntrack tuple carries the configured port: this is how a packet seen on
/// one side of a NAT matches a port that only appears on the other side.
#[inline(always)]
pub fn tuples_match(orig: &CtTuple, reply: &CtTuple) -> bool {
    ports_match(orig.src_port, orig.dst_port) || ports_match(reply.src_port, reply.dst_port)
}

/// Writes `event` to the ring buffer, counting it as emitted or lost.
#[inline(always)]
pub fn submit(event: &PacketEvent) {
    let hook = event.hook;
    match EVENTS.output::<PacketEvent>(event, 0) {
        Ok(()) => count(hook, Counter::Emitted),
        Err(_) => count(hook, Counter::Lost),
    }
}
