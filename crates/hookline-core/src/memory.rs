//! Memory of the C side of a process (librdkafka allocates with the system `malloc`;
//! Rust code uses mimalloc).

/// Allocations at least this large get their own mapping, returned to the system as
/// soon as they are freed.
const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Keeps the system allocator from holding on to freed fetch and produce buffers.
///
/// glibc's `malloc` serves large blocks with their own mapping only until the first
/// one is freed, then raises that threshold (up to 32 MiB) and serves them from its
/// arenas, which keep the pages: librdkafka's fetch answers (up to several MiB each)
/// then leave tens of MiB resident per arena after a burst. Fixing the threshold keeps
/// large buffers out of the arenas. Call it first thing in `main`, before any thread
/// starts (before the async runtime); elsewhere than glibc it does nothing.
pub fn release_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; called before any other
    // thread exists, it races with no allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}
