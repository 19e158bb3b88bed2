//! The output path: the filter decision, the per-hook counters and the ring buffer.
//!
//! A packet is decided on what was parsed into [`Headers`] and, only where that does not
//! decide, on its conntrack tuples and the connections matched before; only a packet that
//! matches is stamped and written, in place in the ring buffer.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use tracer_common::{
    event::{
        COUNTER_ENTRIES, Counter, Encap, EventKind, FAMILY_IPV6, FLAG_ENCAP, FLAG_L4, PacketEncap,
        PacketEncapWithHeaders, PacketEvent, PacketWithHeaders, SNAP_MAX, SocketEvent,
        counter_index, encap_kind,
    },
    flow::{FlowKey, advance_generation},
};

use crate::{
    config::conf,
    conntrack::{Conntrack, Scratch, Tuples, copy16},
    filter::{self, View},
    packet::{Bytes, Headers},
    words,
};

/// Default size; the collector sets the real one before load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-hook counters, see [`tracer_common::event::Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Connections the filter matched, by both conntrack tuples (see `tracer_common::flow`).
#[map]
static TRACKED: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(1 << 16, 0);

/// Connections found not to match, by conntrack entry (`nf_conn` address): the signatures of
/// the entry's two tuples' keys, and the [`TRACKING`] generation the verdict was made in.
#[map]
static VERDICTS: LruHashMap<u64, [u64; 3]> = LruHashMap::with_max_entries(1 << 16, 0);

/// The entry (`nf_conn` address, reply key signature) each CPU last remembered in [`TRACKED`].
#[map]
static LAST_TRACKED: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The tracking generation: 0 until anything was tracked (until then, the hash lookup for a
/// packet that matched nothing would be wasted; an array lookup is inlined by the verifier, a
/// hash lookup is not), then one more for every connection tracked. Every CPU reads and
/// advances it atomically ([`generation`], [`advance_generation`]).
#[map]
static TRACKING: Array<u64> = Array::with_max_entries(1, 0);

/// The tracking generation now.
#[inline(always)]
fn generation() -> u64 {
    TRACKING.get_ptr(0).map_or(0, |value| {
        // SAFETY: the map gave a valid pointer to its only entry, 8-byte aligned (map values
        // are). An aligned 64-bit load is one BPF instruction and never sees half an add;
        // the BPF backend has no atomic load below v4, so it is a volatile one.
        unsafe { core::ptr::read_volatile(value) }
    })
}

/// Adds one to `counter` of `hook` on this CPU: the one counter update of a program run.
#[inline(always)]
pub fn count(hook: u8, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(hook, counter)) {
        // SAFETY: the map gave a valid pointer to this CPU's slot, which nothing else writes
        // while this program runs (programs do not migrate between CPUs).
        unsafe { *slot += 1 };
    }
}

/// Whether the filter lets the packet through: by its own tuple (or the one an ICMP error
/// quotes), by its conntrack tuples
/// (read into `scratch` once the packet is known to have an entry), or as part of a
/// connection matched earlier. Remembers the connection when the packet matched and carries a
/// conntrack entry, so that its packets also match where they have none. A match carries the
/// tuples, which the event needs.
///
/// A connection found not to match is remembered by its conntrack entry in [`VERDICTS`], so
/// that its later packets are rejected without reading the tuples. The verdict is used only
/// while it must still hold: the entry is established (its tuples, NAT included, are
/// settled), the packet's own tuple is one of the two the verdict was made on (an entry freed
/// and reused by another connection is not mistaken for the old one), and no connection was
/// tracked since (one might be this connection, seen where its tuples differ).
///
/// It returns a number rather than the tuples (which live in the scratch buffer), so that it
/// could be a function of its own in the object: a BPF function must not return a stack
/// address.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied on the small BPF stack"
)]
pub fn matches(
    headers: &Headers,
    quote: Option<&Encap>,
    ct: &Conntrack,
    scratch: &mut MaybeUninit<Scratch>,
) -> Verdict {
    let sampling = conf!(sample_every) > 1;
    if filter::is_empty() && !sampling {
        return Verdict::matched(ct.read(scratch).as_ref());
    }
    let has_ports = headers.flags & FLAG_L4 != 0;
    // An empty filter (sampling alone) matches every packet; an ICMP error matches by the
    // packet it quotes too.
    let own = filter::is_empty()
        || filter::evaluate(&View::packet(headers, has_ports))
        || quote.is_some_and(|quote| filter::evaluate(&View::quoted(quote)));
    let generation = generation();
    // With sampling, a packet the filter matches may still belong to a connection that is
    // skipped: that verdict is cached as well.
    let cacheable = (!own || sampling) && ct.ct != 0 && ct.settled();
    if cacheable && let Some(verdict) = VERDICTS.get_ptr(&ct.ct) {
        let signature = packet_key(headers).signature();
        // SAFETY: the map gave a valid pointer to the entry's value.
        let [orig, reply, made_at] = unsafe { *verdict };
        if (signature == orig || signature == reply) && made_at == generation {
            return Verdict::Miss;
        }
    }
    let tuples = ct.read(scratch);
    // Plain branches, not closures: LLVM leaves closures out of line, and a BPF function
    // call adds its frame to the 512 bytes of stack a program has in all.
    let mut matched = own;
    if !matched && let Some(tuples) = &tuples {
        if let Some(orig) = tuples.view(0) {
            matched = filter::evaluate(&orig);
        }
        if !matched && let Some(reply) = tuples.view(1) {
            matched = filter::evaluate(&reply);
        }
    }
    // Sampling's verdict is final: it has looked at the tracked connections already.
    let skipped = matched && sampling && !keep_sampled(headers, tuples.as_ref(), generation);
    if matched && !skipped {
        if let Some(tuples) = &tuples {
            track(ct.ct, tuples);
        }
        return Verdict::matched(tuples.as_ref());
    }
    if !skipped && generation != 0 && TRACKED.get_ptr(&packet_key(headers)).is_some() {
        return Verdict::matched(tuples.as_ref());
    }
    if cacheable
        && let Some(tuples) = &tuples
        && let (Some(orig), Some(reply)) = (tuples.view(0), tuples.view(1))
    {
        let verdict = [
            flow_key(&orig).signature(),
            flow_key(&reply).signature(),
            generation,
        ];
        let _ = VERDICTS.insert(&ct.ct, &verdict, 0);
    }
    Verdict::Miss
}

/// Whether the filter lets an encapsulated packet through: by its inner tuple, by its outer
/// one (`udp port 8472` still matches the VXLAN datagram), or as part of a connection matched
/// earlier (by the inner tuple: the tunnel does not change it). The outer packet's conntrack
/// entry is the tunnel's, not the inner connection's, so it is not looked at.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied on the small BPF stack"
)]
pub fn matches_encap(inner: &Headers, outer: &Headers) -> bool {
    let sampling = conf!(sample_every) > 1;
    let generation = generation();
    let matched = filter::is_empty()
        || filter::evaluate(&View::packet(inner, inner.flags & FLAG_L4 != 0))
        || filter::evaluate(&View::packet(outer, outer.flags & FLAG_L4 != 0));
    if matched {
        return !sampling || keep_sampled(inner, None, generation);
    }
    generation != 0 && TRACKED.get_ptr(&packet_key(inner)).is_some()
}

/// Connections sampling skipped, by both conntrack tuples: a packet without an entry (beyond
/// the NAT, on the far side of a veth) is skipped by them rather than judged by its own tuple,
/// which the NAT changed.
#[map]
static SKIPPED: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(1 << 16, 0);

/// Whether a packet the filter matched belongs to a connection sampling keeps. With conntrack
/// tuples, the connection is judged by its original tuple, and both tuples are remembered
/// as skipped when it is not kept (kept ones are tracked by [`track`]). Without, a packet of
/// a tracked connection is kept, one of a skipped connection is not, and any other (the
/// first packets, before conntrack: a container's SYN before MASQUERADE, a client's before
/// DNAT) is judged by its own tuple, which is then the original one.
///
/// Out of line, as [`track`] is: see there.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value are copied on the small BPF stack"
)]
fn keep_sampled(headers: &Headers, tuples: Option<&Tuples>, generation: u64) -> bool {
    if let Some(tuples) = tuples
        && let (Some(orig), Some(reply)) = (tuples.view(0), tuples.view(1))
    {
        let orig = flow_key(&orig);
        if sampled(&orig) {
            return true;
        }
        let _ = SKIPPED.insert(&orig, &1, 0);
        let _ = SKIPPED.insert(&flow_key(&reply), &1, 0);
        return false;
    }
    let own = packet_key(headers);
    if generation != 0 && TRACKED.get_ptr(&own).is_some() {
        return true;
    }
    SKIPPED.get_ptr(&own).is_none() && sampled(&own)
}

/// Whether the connection with `key` is one of the one in `sample_every` kept.
#[inline(always)]
fn sampled(key: &FlowKey) -> bool {
    let every = u64::from(conf!(sample_every));
    every <= 1 || key.sample_hash().is_multiple_of(every)
}

/// What [`matches`] decided.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Miss = 0,
    /// A match; the packet has no conntrack tuples.
    Match = 1,
    /// A match, with the entry's tuples read into the scratch buffer.
    MatchWithTuples = 2,
}

impl Verdict {
    #[inline(always)]
    fn matched(tuples: Option<&Tuples>) -> Verdict {
        if tuples.is_some() {
            Verdict::MatchWithTuples
        } else {
            Verdict::Match
        }
    }
}

/// The key of the connection the packet's own tuple describes.
#[inline(always)]
fn packet_key(headers: &Headers) -> FlowKey {
    FlowKey::new(
        headers.l4_proto,
        &headers.src_addr,
        headers.src_port,
        &headers.dst_addr,
        headers.dst_port,
    )
}

/// Remembers both tuples of a connection. The reply tuple is the one that changes when NAT
/// is decided (conntrack fills it in at POSTROUTING), so it is the one checked: a packet seen
/// before the NAT must not keep the translated tuple from being stored later. The last entry
/// each CPU remembered, with its reply tuple, is kept, so that the packets of a busy
/// connection skip the hash lookup.
///
/// Out of line, with [`keep_sampled`]: their flow keys and the values they keep across map
/// calls would otherwise be spilled in the calling program's frame, which with the largest
/// step called below it (a tunnel's, 192 bytes) then went over the 512 bytes of stack a
/// program has (the kernel refused every program of `tracer monitor`, whose sampling is in
/// `keep_sampled`). A program's frame is now at most 296 bytes, each of these under 192.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value are copied on the small BPF stack"
)]
fn track(ct: u64, tuples: &Tuples) {
    let Some(reply) = tuples.view(1) else { return };
    let reply = flow_key(&reply);
    let signature = reply.signature();
    let last = LAST_TRACKED.get_ptr_mut(0);
    if let Some(last) = last
        // SAFETY: the map gave a valid pointer to this CPU's slot.
        && unsafe { (*last)[0] == ct && (*last)[1] == signature }
    {
        return;
    }
    if TRACKED.get_ptr(&reply).is_none() {
        let Some(orig) = tuples.view(0) else { return };
        let orig = flow_key(&orig);
        let _ = TRACKED.insert(&orig, &1, 0);
        let _ = TRACKED.insert(&reply, &1, 0);
        if let Some(generation) = TRACKING.get_ptr_mut(0) {
            // SAFETY: the map gave a valid pointer to its only entry, 8-byte aligned, which
            // every CPU reads and writes atomically only.
            unsafe { advance_generation(generation) };
        }
    }
    if let Some(last) = last {
        // SAFETY: the map gave a valid pointer to this CPU's slot.
        unsafe { *last = [ct, signature] };
    }
}

/// The key of the connection a conntrack tuple describes. (A function, not a closure: LLVM
/// leaves small closures out of line, and a BPF function must not return its result through a
/// stack address.)
#[inline(always)]
fn flow_key(view: &View) -> FlowKey {
    FlowKey::new(view.proto, view.src, view.src_port, view.dst, view.dst_port)
}

/// Writes a socket's event; lost (and not counted) when the ring buffer is full, which leaves
/// that socket's packets without an owner. The reader's timer finds it: no wakeup.
#[inline(always)]
pub fn socket(event: &SocketEvent) {
    let _ = EVENTS.output::<SocketEvent>(event, u64::from(BPF_RB_NO_WAKEUP));
}

/// Bytes the largest record takes in the ring buffer, with the ring's 8-byte record header.
const RECORD_MAX: u64 = (size_of::<PacketEncapWithHeaders>() + 8) as u64;

/// A reserved ring buffer record, being filled in place.
pub enum Record {
    Plain(RingBufEntry<PacketEvent>),
    WithHeaders(RingBufEntry<PacketWithHeaders>),
    Encap(RingBufEntry<PacketEncap>),
    EncapWithHeaders(RingBufEntry<PacketEncapWithHeaders>),
}

impl Record {
    /// Reserves a record of the kind the collector asked for (with the packet's first bytes
    /// for `-w`, with the outer headers of an encapsulated packet), with its event zeroed and
    /// filled from `headers` and `ct`; `None` when the ring buffer is full.
    #[inline(always)]
    pub fn reserve(
        hook: u8,
        headers: &Headers,
        ct: &Conntrack,
        tuples: Option<&Tuples>,
        encap: Option<&Encap>,
    ) -> Option<Record> {
        let snap = conf!(snap_len) != 0;
        let mut record = match (encap.is_some(), snap) {
            (false, false) => Record::Plain(EVENTS.reserve::<PacketEvent>(0)?),
            (false, true) => Record::WithHeaders(EVENTS.reserve::<PacketWithHeaders>(0)?),
            (true, false) => Record::Encap(EVENTS.reserve::<PacketEncap>(0)?),
            (true, true) => Record::EncapWithHeaders(EVENTS.reserve::<PacketEncapWithHeaders>(0)?),
        };
        if let Some(encap) = encap {
            let place = match &mut record {
                // SAFETY: place computations within the reserved records, no access.
                Record::Encap(entry) => unsafe { &raw mut (*entry.as_mut_ptr()).encap },
                // SAFETY: as above.
                Record::EncapWithHeaders(entry) => unsafe { &raw mut (*entry.as_mut_ptr()).encap },
                Record::Plain(_) | Record::WithHeaders(_) => core::ptr::null_mut(),
            };
            if !place.is_null() {
                // SAFETY: `place` is the reserved record's `Encap`, 8-byte aligned.
                unsafe { words::copy_raw(encap, place) };
            }
        }
        let event = record.event();
        // SAFETY: `event` is the reserved, exclusively owned and aligned space of one event;
        // it is zeroed before any field is written.
        unsafe {
            words::zero_raw(event);
            let e = &mut *event;
            e.kind = if encap.is_some() {
                EventKind::PacketEncap as u8
            } else {
                EventKind::Packet as u8
            };
            e.hook = hook;
            e.family = headers.family;
            e.l4_proto = headers.l4_proto;
            e.tcp_flags = headers.tcp_flags;
            e.flags = if encap.is_some() {
                headers.flags | FLAG_ENCAP
            } else {
                headers.flags
            };
            e.ttl = headers.ttl;
            e.tcp_seq = headers.tcp_seq;
            e.tcp_ack = headers.tcp_ack;
            e.ip_id = headers.ip_id;
            e.src_port = headers.src_port;
            e.dst_port = headers.dst_port;
            e.ip_len = headers.ip_len;
            // From the IP header the snapshot starts at: the outer one of an encapsulated
            // packet, so that `-w` keeps the whole outer frame; an ICMP error's quote
            // included.
            e.headers_len = match encap {
                Some(quote) if quote.kind == encap_kind::ICMP_ERROR => {
                    let quoted_headers = if quote.family == FAMILY_IPV6 { 48 } else { 28 };
                    quote.inner_offset.wrapping_add(quoted_headers)
                }
                Some(encap) => headers.headers_len.wrapping_add(encap.inner_offset),
                None => headers.headers_len,
            };
            copy16(&headers.src_addr, &raw mut e.src_addr);
            copy16(&headers.dst_addr, &raw mut e.dst_addr);
            if ct.ct != 0 {
                e.ct = ct.ct;
                e.ct_state = ct.state;
            }
            if let Some(tuples) = tuples {
                tuples.write(0, &raw mut e.ct_orig);
                tuples.write(1, &raw mut e.ct_reply);
            }
        }
        Some(record)
    }

    /// Whether the record is a plain event: one that can be a base of compact hops.
    #[inline(always)]
    pub fn is_plain(&self) -> bool {
        matches!(self, Record::Plain(_))
    }

    /// The event in the record.
    #[inline(always)]
    pub fn event(&mut self) -> *mut PacketEvent {
        match self {
            Record::Plain(entry) => entry.as_mut_ptr(),
            // SAFETY: place computations within the reserved records, no access.
            Record::WithHeaders(entry) => unsafe { &raw mut (*entry.as_mut_ptr()).event },
            // SAFETY: as above.
            Record::Encap(entry) => unsafe { &raw mut (*entry.as_mut_ptr()).event },
            // SAFETY: as above.
            Record::EncapWithHeaders(entry) => unsafe { &raw mut (*entry.as_mut_ptr()).event },
        }
    }

    /// Copies the packet's first bytes (from `l3` in `bytes`) into a record that has room for
    /// them, stamps the event with the time, and commits it. Wakes the reader only when
    /// enough is waiting for it (`Config::wakeup_bytes`); otherwise its timer finds the event.
    #[inline(always)]
    pub fn submit(mut self, ts_ns: u64, bytes: &impl Bytes, l3: u32) {
        let event = self.event();
        // SAFETY: the reserved event, filled by `reserve`.
        unsafe { (*event).ts_ns = ts_ns };
        let wakeup = wakeup();
        match self {
            Record::Plain(entry) => entry.submit(wakeup),
            Record::Encap(entry) => entry.submit(wakeup),
            Record::WithHeaders(mut entry) => {
                let record = entry.as_mut_ptr();
                // SAFETY: `record` is the reserved, exclusively owned and 8-byte aligned ring
                // buffer space of one `PacketWithHeaders`.
                unsafe {
                    snapshot(
                        Snapshot {
                            event: &raw mut (*record).event,
                            kind: EventKind::PacketWithHeaders,
                            pad: &raw mut (*record)._pad,
                            snap_len: &raw mut (*record).snap_len,
                            headers: &mut (*record).headers,
                        },
                        bytes,
                        l3,
                    );
                }
                entry.submit(wakeup);
            }
            Record::EncapWithHeaders(mut entry) => {
                let record = entry.as_mut_ptr();
                // SAFETY: `record` is the reserved, exclusively owned and 8-byte aligned ring
                // buffer space of one `PacketEncapWithHeaders`.
                unsafe {
                    snapshot(
                        Snapshot {
                            event: &raw mut (*record).event,
                            kind: EventKind::PacketEncapWithHeaders,
                            pad: &raw mut (*record)._pad,
                            snap_len: &raw mut (*record).snap_len,
                            headers: &mut (*record).headers,
                        },
                        bytes,
                        l3,
                    );
                }
                entry.submit(wakeup);
            }
        }
    }
}

/// The flags for submitting a record: unread bytes, this record included, and the record that
/// takes them past the threshold (`Config::wakeup_bytes`) wakes the reader, once; the reader's
/// timer finds the others.
#[inline(always)]
pub fn wakeup() -> u64 {
    let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let threshold = u64::from(conf!(wakeup_bytes));
    let flag = if unread >= threshold && unread < threshold + RECORD_MAX {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    u64::from(flag)
}

/// The parts of a record with the packet's first bytes.
struct Snapshot<'a> {
    event: *mut PacketEvent,
    kind: EventKind,
    pad: *mut [u8; 6],
    snap_len: *mut u16,
    headers: &'a mut [u8; SNAP_MAX],
}

/// Marks the record as one with the packet's first bytes and copies them (from `l3` in
/// `bytes`: the headers only unless `-s` asked for more).
///
/// # Safety
/// Every pointer of `parts` is into one reserved, exclusively owned ring buffer record.
#[inline(always)]
unsafe fn snapshot(parts: Snapshot, bytes: &impl Bytes, l3: u32) {
    let (snap_len, headers_only) = (conf!(snap_len) as usize, conf!(snap_headers_only));
    // SAFETY: as the caller promises; every write stays within the record.
    unsafe {
        let headers_len = usize::from((*parts.event).headers_len);
        (*parts.event).kind = parts.kind as u8;
        // Three stores: an array assignment would be a byte-by-byte `memset` call.
        let pad = parts.pad.cast::<u16>();
        for i in 0..3 {
            core::ptr::write_volatile(pad.add(i), 0);
        }
        let snap_len = if headers_only != 0 {
            snap_len.min(headers_len)
        } else {
            snap_len
        };
        let copied = match parts.headers.get_mut(..snap_len.min(SNAP_MAX)) {
            Some(dst) => bytes.copy(l3, dst),
            None => 0,
        };
        *parts.snap_len = copied as u16;
    }
}
