//! How the process holds its memory. Its peak (VmHWM, start-up included) is what a
//! container's memory limit must allow, so start-up is arranged around it (bench/limits.md).

/// Has every allocation of 128 KiB or more mapped from the system, and unmapped when freed.
///
/// glibc starts there, but raises the threshold to the size of each mapped block freed, up to
/// 32 MiB. Once the kernel's BTF parsed at start-up is freed, the tables that follow (the types
/// the programs are loaded against, the collector's flow and packet tables) would come from the
/// heap instead: copied when they grow, and kept resident after they are freed. Measured on a
/// small trace: 9 MiB more resident once loaded, and a higher peak.
pub fn map_large_allocations() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes the allocator's tuning; no pointer is affected.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
}

/// Gives the heap's free memory back to the system (after a parse at start-up).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases free heap memory; no pointer is affected.
    unsafe { libc::malloc_trim(0) };
}
