//! The process's allocators: jemalloc for Rust's allocations, glibc's malloc for C libraries' (zstd's
//! contexts, for one).
//!
//! **jemalloc** ([`Allocator`]): each binary declares it as its `#[global_allocator]` (`src/main.rs`
//! and the benchmark programs; tests keep the system allocator). A beacon's handling is many short-lived
//! allocations (the parsed values, the event texts, the record), and glibc's malloc was about 15 % of the
//! collector's CPU; with jemalloc the collector answers 1.45× the beacons and `serve` 1.27× in the
//! same runs (BENCHMARKS.md §14). Its settings are built in from `.cargo/config.toml` (freed pages
//! returned to the kernel over 100 ms instead of ten seconds, which keeps resident memory per open view
//! under 1 KB; jemalloc purges as the process allocates, so an idle process keeps what it had);
//! `_RJEM_MALLOC_CONF` overrides them at start-up, as `MALLOC_CONF` would for a stock jemalloc.
//!
//! **glibc** serves a block of 128 KiB or more with a mapping of its own and unmaps it when freed, but
//! each time such a block is freed it raises that threshold to the block's size (up to 32 MiB). A
//! process that builds large buffers each epoch soon has its threshold in the megabytes: those buffers
//! then come from the heap, and the heap keeps the pages of the largest epoch for good.
//! [`pin_mmap_threshold`] keeps the threshold where it starts (BENCHMARKS.md §13, when glibc still
//! served every allocation: RSS per open view 1,035 → 911 bytes at 100,000 open views).

/// The binaries' global allocator: `#[global_allocator] static ALLOC: Allocator = Allocator;`.
pub use tikv_jemallocator::Jemalloc as Allocator;

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
