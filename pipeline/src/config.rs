//! The pipeline's configuration, in one place: `[pipeline]` ([`PipelineConfig`]), its defaults and the
//! checks start-up makes, and the part the sessionizer takes ([`SessionConfig`]).

use serde::{Deserialize, Serialize};

use schemas::dims::Dim;

/// `[pipeline]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Event-time window length.
    pub window_ms: i64,
    /// Dimensions the windows are keyed by.
    pub dims: Vec<Dim>,
    /// A view without records for this long (watermark time) ends at its last event.
    pub inactivity_timeout_ms: i64,
    /// Contributions older than this behind the watermark are dropped (counted as late_dropped).
    pub late_horizon_ms: i64,
    /// How long a view waits for a missing `seq` before proceeding past the gap.
    pub reorder_wait_ms: i64,
    /// How often an epoch is committed (window deltas become visible at this pace).
    pub flush_interval_ms: u64,
    pub max_records_per_epoch: usize,
    /// Parquet compaction: an hour partition is merged once the watermark is this far past its end
    /// (0 turns compaction off).
    pub compact_after_ms: i64,
    /// … and once it holds at least this many files of this pipeline.
    pub compact_min_files: usize,
    /// The hour still being written is compacted too, by levels: once it holds this many single-epoch
    /// files of this pipeline in a row they are merged into one, and as many merged files of one level
    /// into one of the next, so a query of the last minutes opens tens of files, not thousands. A pass
    /// starts once this many epochs were committed since the last (0 turns it off).
    pub compact_open_files: usize,
    /// Merged Parquet files roll over at about this size.
    pub compact_target_bytes: u64,
    /// … and in the hour still being written at about this size: a merge holds its inputs and its
    /// output in memory, and the open hour's merges run every few epochs beside them, so they stay
    /// small; the hour's close merges the files again into `compact_target_bytes` ones.
    pub compact_open_target_bytes: u64,
    /// Caps on the sessionizer's state (see [`SessionConfig`]).
    pub max_open_views: usize,
    pub max_ended_views: usize,
    pub max_gaps_per_view: usize,
    pub max_buffered_events: usize,
    pub max_view_history: usize,
    pub max_cached_views: usize,
    /// The state store's page cache (redb), in MiB.
    pub state_cache_mb: usize,
    /// Record bytes one epoch reads at most (besides `max_records_per_epoch`).
    pub max_epoch_bytes: usize,
    /// Attempts at a record whose processing fails before it is quarantined (dead-lettered).
    pub poison_attempts: u32,
    /// `/readyz` reports the pipeline stalled when it has failed to commit for this long.
    pub stall_after_ms: u64,
    /// … and far behind when its last epoch trailed its input by more than this.
    pub max_lag_ms: u64,
    /// `qoeflow serve` runs the pipeline (its epochs, Parquet encoding and compaction) on threads this
    /// many nice steps below the collector's, 0 to 19 (at most to nice 19): above 0, when the cores
    /// are short the collector gets them first and the pipeline catches up from the log. 0 runs it at
    /// the collector's priority. The `pipeline` command, alone in its process, ignores it.
    pub nice: i32,
    /// `qoeflow serve` runs the pipeline's threads under Linux's `SCHED_IDLE` policy instead (`nice`
    /// then no longer counts): they get only CPU time no other thread of the machine (or of its
    /// cgroup) wants, and a collector thread that wakes takes their core at once. When the cores are
    /// short the pipeline gets almost nothing until the traffic falls (so not for a host shared with
    /// other busy work); off by default. The `pipeline` command ignores it.
    pub sched_idle: bool,
}

/// How far below the collector `qoeflow serve` runs its pipeline by default (`PipelineConfig::nice`).
pub const DEFAULT_NICE: i32 = 10;

impl Default for PipelineConfig {
    fn default() -> Self {
        let s = SessionConfig::default();
        PipelineConfig {
            window_ms: s.window_ms,
            dims: s.dims,
            inactivity_timeout_ms: s.inactivity_timeout_ms,
            late_horizon_ms: s.late_horizon_ms,
            reorder_wait_ms: s.reorder_wait_ms,
            flush_interval_ms: 1000,
            max_records_per_epoch: 100_000,
            compact_after_ms: 10 * 60_000,
            compact_min_files: 8,
            compact_open_files: 16,
            compact_target_bytes: 128 << 20,
            compact_open_target_bytes: 8 << 20,
            max_open_views: s.max_open_views,
            max_ended_views: s.max_ended_views,
            max_gaps_per_view: s.max_gaps_per_view,
            max_buffered_events: s.max_buffered_events,
            max_view_history: s.max_view_history,
            max_cached_views: s.max_cached_views,
            state_cache_mb: crate::store::DEFAULT_CACHE_BYTES >> 20,
            max_epoch_bytes: 64 << 20,
            poison_attempts: 3,
            stall_after_ms: 60_000,
            max_lag_ms: 300_000,
            nice: DEFAULT_NICE,
            sched_idle: false,
        }
    }
}

impl PipelineConfig {
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            window_ms: self.window_ms,
            dims: self.dims.clone(),
            inactivity_timeout_ms: self.inactivity_timeout_ms,
            late_horizon_ms: self.late_horizon_ms,
            reorder_wait_ms: self.reorder_wait_ms,
            max_open_views: self.max_open_views,
            max_ended_views: self.max_ended_views,
            max_gaps_per_view: self.max_gaps_per_view,
            max_buffered_events: self.max_buffered_events,
            max_view_history: self.max_view_history,
            max_cached_views: self.max_cached_views,
        }
    }

    /// Refuses settings that would let one event cost unbounded work (checked at start-up).
    pub fn validate(&self) -> Result<(), String> {
        const MAX_WINDOWS_PER_SPAN: i64 = 100_000;
        if self.window_ms < 1000 {
            return Err(format!("pipeline.window_ms = {} is below 1000", self.window_ms));
        }
        if self.inactivity_timeout_ms < 1 || self.inactivity_timeout_ms / self.window_ms > MAX_WINDOWS_PER_SPAN {
            return Err(format!(
                "pipeline.inactivity_timeout_ms = {} must be positive and at most {MAX_WINDOWS_PER_SPAN} windows \
                 (pipeline.window_ms = {}): it bounds the windows one event can touch",
                self.inactivity_timeout_ms, self.window_ms
            ));
        }
        for (name, v) in [
            ("max_open_views", self.max_open_views),
            ("max_ended_views", self.max_ended_views),
            ("max_gaps_per_view", self.max_gaps_per_view),
            ("max_cached_views", self.max_cached_views),
            ("state_cache_mb", self.state_cache_mb),
            ("max_records_per_epoch", self.max_records_per_epoch),
            ("max_epoch_bytes", self.max_epoch_bytes),
            ("poison_attempts", self.poison_attempts as usize),
        ] {
            if v == 0 {
                return Err(format!("pipeline.{name} must be at least 1"));
            }
        }
        if !service::priority::NICE_RANGE.contains(&self.nice) {
            let range = service::priority::NICE_RANGE;
            return Err(format!("pipeline.nice = {} must be between {} and {}", self.nice, range.start(), range.end()));
        }
        Ok(())
    }
}

/// What the sessionizer needs of [`PipelineConfig`] (`docs/metrics.md` §4–§7, §10, §12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub window_ms: i64,
    pub dims: Vec<Dim>,
    pub inactivity_timeout_ms: i64,
    pub late_horizon_ms: i64,
    pub reorder_wait_ms: i64,
    /// Open views kept at most; past it the views idle longest are ended (`evicted`).
    pub max_open_views: usize,
    /// Ended views remembered (for stragglers) at most; past it the oldest are forgotten early.
    pub max_ended_views: usize,
    /// Skipped `seq` ranges remembered per view at most; past it the lowest are forgotten.
    pub max_gaps_per_view: usize,
    /// Events waiting for a missing `seq`, over all views, at most; past it the view being fed
    /// proceeds past its gaps at once.
    pub max_buffered_events: usize,
    /// Events kept in a view's history (what a correction re-derives it from) at most; past it the
    /// view's stragglers are kept in `events` only (`uncorrected`).
    pub max_view_history: usize,
    /// Open views kept in memory at most after each commit; the others are read back from the state
    /// store when a record or a clock decision needs them.
    pub max_cached_views: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window_ms: 10_000,
            dims: Dim::DEFAULT.to_vec(),
            inactivity_timeout_ms: 30 * 60_000,
            late_horizon_ms: 24 * 3_600_000,
            reorder_wait_ms: 5_000,
            max_open_views: 500_000,
            max_ended_views: 2_000_000,
            max_gaps_per_view: 1_000,
            max_buffered_events: 1_000_000,
            max_view_history: 50_000,
            max_cached_views: 100_000,
        }
    }
}
