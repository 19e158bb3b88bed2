//! How the process holds its memory. Its peak (VmHWM, start-up included) is what a
//! container's memory limit must allow, so start-up is arranged around it (bench/limits.md).

/// Gives the heap's free memory back to the system (after a parse at start-up).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases free heap memory; no pointer is affected.
    unsafe { libc::malloc_trim(0) };
}
