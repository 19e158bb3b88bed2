//! Per-CPU room for what a run keeps that is too large for the BPF stack: the parsed headers
//! (an encapsulated packet's inner ones too, and its outer ones as the event carries them)
//! and the scratch buffer (header window, then conntrack tuples). A program has 512 bytes of
//! stack for all its frames, and older kernels round each frame up when they add them.
//!
//! A run can be interrupted by another of tracer's programs on the same CPU (a `kfree_skb` in
//! process context, by the softirq that runs on the way out of an interrupt), so each CPU has
//! a few frames, used as a stack: the nested run takes the next one and gives it back before
//! the run it interrupted goes on.

use core::mem::MaybeUninit;

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::{compact::Base, conntrack::Scratch, layer::Layers, packet::Headers};

/// Runs that can be nested on one CPU; a deeper one is not traced (and counted as lost).
const NEST: u64 = 4;

/// What one run keeps off the stack.
#[repr(C, align(8))]
pub struct Frame {
    /// The packet's headers: the outer ones of an encapsulated packet.
    pub headers: Headers,
    /// A tunnel's inner headers and its outer ones as the event carries them, or the packet
    /// an ICMP error quotes.
    pub layers: Layers,
    pub scratch: MaybeUninit<Scratch>,
}

/// A CPU's frames and how many are in use, and its base for compact hops.
#[repr(C, align(8))]
pub struct Frames {
    depth: u64,
    base: Base,
    frames: [Frame; NEST as usize],
}

#[map]
static FRAMES: PerCpuArray<Frames> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's next frame, taken until [`Taken::give_back`]; `None` when runs are nested
/// deeper than [`NEST`].
#[inline(always)]
pub fn take() -> Option<Taken> {
    let frames = FRAMES.get_ptr_mut(0)?;
    // SAFETY: the map gave a valid pointer to this CPU's value; only runs on this CPU use it,
    // and a run that interrupts this one gives its frame back before this one goes on.
    let depth = unsafe { (*frames).depth };
    if depth >= NEST {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*frames).depth = depth + 1 };
    Some(Taken { frames, depth })
}

/// A frame taken from this CPU's frames.
pub struct Taken {
    frames: *mut Frames,
    depth: u64,
}

impl Taken {
    /// The frame. (The mask changes nothing at run time; it shows every verifier the bound.)
    #[inline(always)]
    pub fn frame(&mut self) -> &mut Frame {
        let index = (core::hint::black_box(self.depth) & (NEST - 1)) as usize;
        // SAFETY: `frames` is this CPU's map value and `index` is within its frames; the frame
        // is this run's until it is given back.
        unsafe { &mut (*self.frames).frames[index] }
    }

    /// The frame, and the CPU's base for compact hops when this run is not nested in another
    /// (nested runs neither use nor change it: see [`tracer_common::event::CompactHop`]).
    #[inline(always)]
    pub fn parts(&mut self) -> (&mut Frame, Option<&mut Base>) {
        let outermost = self.depth == 0;
        let frames = self.frames;
        let frame = self.frame();
        // SAFETY: `frames` is this CPU's map value; the base is a field apart from the frames,
        // used only by the outermost run.
        let base = outermost.then(|| unsafe { &mut (*frames).base });
        (frame, base)
    }

    /// Gives the frame back.
    #[inline(always)]
    pub fn give_back(self) {
        // SAFETY: this CPU's map value, as in `take`.
        unsafe { (*self.frames).depth = self.depth };
    }
}
