//! Zeroing and copying events eight bytes at a time.
//!
//! LLVM turns a large zero-fill or struct copy into a call to `memset` or `memcpy`, which for
//! BPF are subprograms that move one byte per loop iteration: zeroing a 216-byte event that
//! way cost more than all the rest of a stack program together (measured with `perf record`
//! during the datapath benchmark). Volatile word stores are never merged back into such a
//! call, and the verifier sees every one of them.

use core::mem::MaybeUninit;

use tracer_common::event::{EventKind, PacketEvent};

const WORDS: usize = size_of::<PacketEvent>() / 8;
const _: () = assert!(size_of::<PacketEvent>().is_multiple_of(8) && align_of::<PacketEvent>() == 8);

/// Fills `slot` in place with what [`PacketEvent::zeroed`] gives, and returns it.
#[inline(always)]
pub fn new_event(slot: &mut MaybeUninit<PacketEvent>) -> &mut PacketEvent {
    let words = slot.as_mut_ptr().cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: `i` is within the event, which is 8-byte aligned and a whole number of words.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte was just written, and all zeroes is a valid event.
    let event = unsafe { slot.assume_init_mut() };
    event.kind = EventKind::Packet as u8;
    event
}

/// Copies `src` to `dst`.
///
/// # Safety
/// `dst` must be valid for writing one 8-byte aligned event.
#[inline(always)]
pub unsafe fn copy(src: &PacketEvent, dst: *mut PacketEvent) {
    let (from, to) = (core::ptr::from_ref(src).cast::<u64>(), dst.cast::<u64>());
    for i in 0..WORDS {
        // SAFETY: both are whole, aligned events, and `i` is within them.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
    }
}
