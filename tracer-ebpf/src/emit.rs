//! The output path: the filter decision, the per-hook counters and the ring buffer.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    event::{
        COUNTER_ENTRIES, Counter, CtTuple, EventKind, FLAG_L4, PacketEvent, PacketWithHeaders,
        SNAP_MAX, counter_index,
    },
    flow::FlowKey,
};

use crate::{
    config::conf,
    filter::{self, View},
    packet::Bytes,
    words,
};

/// Default size; the collector sets the real one before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-hook counters, see [`tracer_common::event::Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Connections the filter matched, by both conntrack tuples (see `tracer_common::flow`).
#[map]
static TRACKED: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(1 << 16, 0);

/// Set once anything was tracked: until then, the hash lookup for a packet that matched
/// nothing would be wasted (an array lookup is inlined by the verifier, a hash lookup is not).
#[map]
static TRACKING: Array<u32> = Array::with_max_entries(1, 0);

/// Adds one to `counter` of `hook` on this CPU.
#[inline(always)]
pub fn count(hook: u8, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(hook, counter)) {
        // SAFETY: the map gave a valid pointer to this CPU's slot, which nothing else writes
        // while this program runs (programs do not migrate between CPUs).
        unsafe { *slot += 1 };
    }
}

/// Whether the filter lets `event` through: by its own tuple, by its conntrack tuples, or as
/// part of a connection matched earlier. Remembers the connection when the packet matched and
/// carries a conntrack entry, so that its packets also match where they have none.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied on the small BPF stack"
)]
pub fn matches(event: &PacketEvent) -> bool {
    if filter::is_empty() {
        return true;
    }
    let has_ports = event.flags & FLAG_L4 != 0;
    let has_ct = event.ct != 0;
    let matched = filter::evaluate(&View::packet(event, has_ports))
        || (has_ct
            && (filter::evaluate(&View::tuple(&event.ct_orig))
                || filter::evaluate(&View::tuple(&event.ct_reply))));
    if matched {
        if has_ct {
            track(&event.ct_orig, &event.ct_reply);
        }
        return true;
    }
    if TRACKING.get(0).is_none_or(|&on| on == 0) {
        return false;
    }
    let key = FlowKey::new(
        event.l4_proto,
        &event.src_addr,
        event.src_port,
        &event.dst_addr,
        event.dst_port,
    );
    TRACKED.get_ptr(&key).is_some()
}

/// Remembers both tuples of a connection. The reply tuple is the one that changes when NAT
/// is decided (conntrack fills it in at POSTROUTING), so it is the one checked: a packet seen
/// before the NAT must not keep the translated tuple from being stored later.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value are copied on the small BPF stack"
)]
fn track(orig: &CtTuple, reply: &CtTuple) {
    let reply = FlowKey::new(
        reply.protonum,
        &reply.src_addr,
        reply.src_port,
        &reply.dst_addr,
        reply.dst_port,
    );
    if TRACKED.get_ptr(&reply).is_some() {
        return;
    }
    let orig = FlowKey::new(
        orig.protonum,
        &orig.src_addr,
        orig.src_port,
        &orig.dst_addr,
        orig.dst_port,
    );
    let _ = TRACKED.insert(&orig, &1, 0);
    let _ = TRACKED.insert(&reply, &1, 0);
    if let Some(on) = TRACKING.get_ptr_mut(0) {
        // SAFETY: the map gave a valid pointer to its only entry; a racing store writes the
        // same value.
        unsafe { *on = 1 };
    }
}

/// Writes `event` to the ring buffer, with the packet's first bytes (from `l3` in `bytes`)
/// when the collector asked for them, counting it as emitted or lost.
#[inline(always)]
pub fn submit(event: &PacketEvent, bytes: &impl Bytes, l3: u32) {
    let hook = event.hook;
    let mut snap_len = conf!(snap_len) as usize;
    if conf!(snap_headers_only) != 0 {
        snap_len = snap_len.min(usize::from(event.headers_len));
    }
    let written = if conf!(snap_len) == 0 {
        EVENTS.output::<PacketEvent>(event, 0).is_ok()
    } else {
        submit_with_headers(event, bytes, l3, snap_len.min(SNAP_MAX))
    };
    count(
        hook,
        if written {
            Counter::Emitted
        } else {
            Counter::Lost
        },
    );
}

/// Fills a [`PacketWithHeaders`] in place in the ring buffer: the packet bytes are copied
/// straight into it, never onto the small BPF stack.
#[inline(always)]
fn submit_with_headers(event: &PacketEvent, bytes: &impl Bytes, l3: u32, snap_len: usize) -> bool {
    let Some(mut entry) = EVENTS.reserve::<PacketWithHeaders>(0) else {
        return false;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved, exclusively owned and 8-byte aligned ring buffer space
    // of one `PacketWithHeaders`; every write stays within it.
    unsafe {
        words::copy(event, &raw mut (*record).event);
        (*record).event.kind = EventKind::PacketWithHeaders as u8;
        // Three stores: an array assignment would be a byte-by-byte `memset` call.
        let pad = (&raw mut (*record)._pad).cast::<u16>();
        for i in 0..3 {
            core::ptr::write_volatile(pad.add(i), 0);
        }
        let headers = &mut (*record).headers;
        let copied = match headers.get_mut(..snap_len) {
            Some(dst) => bytes.copy(l3, dst),
            None => 0,
        };
        (*record).snap_len = copied as u16;
    }
    entry.submit(0);
    true
}
