//! The contract between tracer's kernel programs and its collector.
//!
//! This crate is the only place where the layouts that cross the kernel/user boundary are
//! defined: the events the programs push into the ring buffer ([`event`]), the hooks they run
//! on ([`hook`]), and the read-only configuration the collector hands them before they are
//! loaded ([`config`]), and the numbers of the packet formats and the kernel both sides read
//! ([`wire`]). Every type is `#[repr(C)]` with explicit padding and a compile-time size
//! check, so that both sides agree byte for byte.
#![no_std]
// The one atomic add the kernel programs make (`flow::advance_generation`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "BPF offers an atomic add but not `fetch_add`"
    )
)]

pub mod config;
pub mod event;
pub mod flow;
pub mod hook;
pub mod wire;

/// Fails the build when `$ty` is not exactly `$size` bytes.
#[macro_export]
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(::core::mem::size_of::<$ty>() == $size);
    };
}
