//! How the process's allocator hands memory back (glibc's malloc; a no-op elsewhere).
//!
//! glibc serves a block of 128 KiB or more with a mapping of its own and unmaps it when freed, but each
//! time such a block is freed it raises that threshold to the block's size (up to 32 MiB). A process that
//! builds large buffers each epoch (Parquet pages, record batches, state-store encodings) soon has its
//! threshold in the megabytes: those buffers then come from the heap, and the heap keeps the pages of
//! the largest epoch for good. [`pin_mmap_threshold`] keeps the threshold where it starts (BENCHMARKS.md
//! §13: RSS per open view 1,035 → 911 bytes at 100,000 open views; the pipeline no slower, 1.15× in
//! that run).

/// glibc's initial `M_MMAP_THRESHOLD`: blocks this large or larger are mapped on their own.
pub const MMAP_THRESHOLD: usize = 128 << 10;

/// Keeps glibc's mmap threshold at [`MMAP_THRESHOLD`] for the life of the process (setting it turns
/// off its dynamic growth), unless the environment sets the threshold itself (`MALLOC_MMAP_THRESHOLD_`,
/// or `mmap_threshold` in `GLIBC_TUNABLES`): then the operator's value stands. Call it at start-up,
/// before the work that allocates (the setting is process-wide, whichever thread calls it).
pub fn pin_mmap_threshold() {
    let env = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let tuned = env("MALLOC_MMAP_THRESHOLD_").is_some() || env("GLIBC_TUNABLES").is_some_and(|t| t.contains("mmap_threshold"));
    if !tuned {
        set_mmap_threshold(MMAP_THRESHOLD);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_mmap_threshold(bytes: usize) {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets a parameter of the allocator (glibc accepts any threshold up to 32 MiB).
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: usize) {}
