//! Compact hops: a later hop of a packet whose headers did not change is written as a
//! [`CompactHop`] (64 bytes) instead of a whole [`PacketEvent`] (224), against the last event
//! its CPU wrote as a base. See [`CompactHop`] for when a hop may be compact and why the
//! collector can always rebuild it.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use tracer_common::event::{CompactHop, EventKind, HOP_CONNTRACK, PacketEvent};

use crate::{
    conntrack::Conntrack,
    emit::{EVENTS, wakeup},
    packet::Headers,
    words,
};

/// Words of [`Headers`] compared between hops: all but the last, which holds the TTL (one less
/// after every router) and padding.
const COMPARED: usize = 7;
const _: () = assert!(size_of::<Headers>() == (COMPARED + 1) * 8);

/// What a CPU's base event was: its packet's identity, conntrack entry and headers.
#[repr(C, align(8))]
pub struct Base {
    /// The skb's address; 0 when the CPU has no base.
    skb: u64,
    /// `skb->head`.
    head: u64,
    ct: u64,
    ct_state: u64,
    headers: [u64; COMPARED],
}

impl Base {
    /// Whether a hop of `skb` with these headers and entry can be written as a compact hop
    /// of this base: the same skb and data buffer, the same headers but for the TTL, and no
    /// entry or the base's, established (its tuples, NAT included, are settled).
    #[inline(always)]
    pub fn covers(&self, skb: u64, head: u64, headers: &Headers, ct: &Conntrack) -> bool {
        if self.skb != skb || self.head != head {
            return false;
        }
        if ct.ct != 0 && (ct.ct != self.ct || u64::from(ct.state) != self.ct_state || !ct.settled())
        {
            return false;
        }
        let words = core::ptr::from_ref(headers).cast::<u64>();
        for i in 0..COMPARED {
            // SAFETY: `i` is within `headers`, which is 8-byte aligned and whole words long.
            // Volatile loads: LLVM would turn the comparison into a `bcmp` call.
            if unsafe { core::ptr::read_volatile(words.add(i)) } != self.headers[i] {
                return false;
            }
        }
        true
    }

    /// Makes the event being written this CPU's base.
    ///
    /// # Safety
    /// `event` is a reserved, exclusively owned event.
    #[inline(always)]
    pub unsafe fn set(&mut self, event: *mut PacketEvent, head: u64, headers: &Headers) {
        // SAFETY: as the caller promises.
        unsafe {
            self.skb = (*event).skb;
            self.ct = (*event).ct;
            self.ct_state = u64::from((*event).ct_state);
            (*event).base = cpu() as u16 + 1;
        }
        self.head = head;
        let words = core::ptr::from_ref(headers).cast::<u64>();
        for i in 0..COMPARED {
            // SAFETY: as in `covers`.
            self.headers[i] = unsafe { core::ptr::read_volatile(words.add(i)) };
        }
    }

    /// Forgets the base: the CPU's next hop is written whole.
    #[inline(always)]
    pub fn clear(&mut self) {
        self.skb = 0;
    }
}

/// What a hop knows of its place: the device, its namespace, the mark and the socket.
pub struct Place {
    pub ifindex: u32,
    pub netns_inode: u32,
    pub len: u32,
    pub mark: u32,
    pub name: [u64; 2],
    pub sock_cookie: u64,
}

/// Writes a compact hop of `skb` at `hook`; false when the ring buffer is full.
#[inline(always)]
pub fn write(skb: u64, hook: u8, ttl: u8, ct: &Conntrack, place: &Place) -> bool {
    let Some(mut entry) = EVENTS.reserve::<CompactHop>(0) else {
        return false;
    };
    let hop = entry.as_mut_ptr();
    // SAFETY: the reserved, exclusively owned and aligned space of one `CompactHop`; every
    // field is written.
    unsafe {
        words::zero_raw(hop);
        let h = &mut *hop;
        h.kind = EventKind::CompactHop as u8;
        h.hook = hook;
        h.ttl = ttl;
        h.flags = if ct.ct != 0 { HOP_CONNTRACK } else { 0 };
        h.cpu = cpu();
        h.skb = skb;
        h.ifindex = place.ifindex;
        h.netns_inode = place.netns_inode;
        h.len = place.len;
        h.mark = place.mark;
        h.sock_cookie = place.sock_cookie;
        let ifname = (&raw mut h.ifname).cast::<u64>();
        ifname.write_unaligned(place.name[0]);
        ifname.add(1).write_unaligned(place.name[1]);
        h.ts_ns = bpf_ktime_get_ns();
    }
    entry.submit(wakeup());
    true
}

/// The CPU this run is on.
#[inline(always)]
fn cpu() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_smp_processor_id() }
}
