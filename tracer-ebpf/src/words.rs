//! Zeroing and copying records eight bytes at a time.
//!
//! LLVM turns a large zero-fill or struct copy into a call to `memset` or `memcpy`, which for
//! BPF are subprograms that move one byte per loop iteration: zeroing a 224-byte event that
//! way cost more than all the rest of a stack program together (measured with `perf record`
//! during the datapath benchmark). Volatile word stores are never merged back into such a
//! call, and the verifier sees every one of them.

/// A record that is plain integers and arrays, 8-byte aligned and a whole number of words:
/// all zeroes is a valid value, and it can be written word by word.
///
/// # Safety
/// Implementors must be `repr(C)` plain data of that shape.
pub unsafe trait Words: Sized {
    const WORDS: usize = {
        assert!(size_of::<Self>().is_multiple_of(8) && align_of::<Self>() == 8);
        size_of::<Self>() / 8
    };
}

// SAFETY: repr(C) integers and arrays, 224 bytes, 8-byte aligned (asserted by `WORDS`).
unsafe impl Words for tracer_common::event::PacketEvent {}
// SAFETY: repr(C, align(8)) integers and arrays, 64 bytes (asserted by `WORDS`).
unsafe impl Words for crate::packet::Headers {}
// SAFETY: repr(C) integers and arrays, 64 bytes, 8-byte aligned (asserted by `WORDS`).
unsafe impl Words for tracer_common::event::CompactHop {}
// SAFETY: repr(C, align(8)) integers and arrays, 56 bytes (asserted by `WORDS`).
unsafe impl Words for tracer_common::event::Encap {}

/// Zeroes the `T` at `dst`.
///
/// # Safety
/// `dst` must be valid for writing one `T`.
#[inline(always)]
pub unsafe fn zero_raw<T: Words>(dst: *mut T) {
    let words = dst.cast::<u64>();
    for i in 0..T::WORDS {
        // SAFETY: `i` is within the record, which is 8-byte aligned and whole words long.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Copies the `T` at `src` to `dst`, a word at a time.
///
/// # Safety
/// `src` must be valid for reading one `T` and `dst` for writing one.
#[inline(always)]
pub unsafe fn copy_raw<T: Words>(src: *const T, dst: *mut T) {
    let (from, to) = (src.cast::<u64>(), dst.cast::<u64>());
    for i in 0..T::WORDS {
        // SAFETY: `i` is within both records, 8-byte aligned and whole words long.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
    }
}
