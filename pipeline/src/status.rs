//! What the pipeline tells the outside about itself: Prometheus metrics (`qoeflow_pipeline_*`) and the
//! readiness `/readyz` reports. The runner reports every epoch it commits and every attempt that fails;
//! readiness then says **stalled** when the pipeline has failed to commit for `stall_after_ms` (a sink
//! down, a poison record still being retried) or its loop has not turned for that long, and **far
//! behind** when what it last committed trails its input by more than `max_lag_ms`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};

use crate::sessionizer::Stats;

/// Shared between the runner (which reports) and the HTTP server (which asks).
pub struct PipelineStatus {
    stall_after: Duration,
    max_lag_ms: i64,
    state: Mutex<State>,
    quarantined: IntCounter,
    evicted: IntCounter,
    epochs: IntCounter,
    failures: IntCounter,
    fenced: IntCounter,
    open_views: IntGauge,
    stalled: IntGauge,
    lag: IntGauge,
}

struct State {
    /// Last committed epoch, or start-up.
    last_commit: Instant,
    /// Last turn of the runner's loop (idle ones included).
    last_turn: Instant,
    /// The error of the latest failed attempt, while failing.
    failing: Option<String>,
    /// How far the last committed epoch trailed the input (0 when the source was caught up).
    lag_ms: i64,
    /// `Stats::evicted` already counted in the metric.
    evicted_seen: Option<u64>,
}

impl PipelineStatus {
    /// Registers the metrics in `registry` (the process's `/metrics`).
    /// The status of a pipeline run with `config` (its `stall_after_ms` and `max_lag_ms`).
    pub fn of(config: &crate::PipelineConfig, registry: &Registry) -> PipelineStatus {
        PipelineStatus::new(registry, config.stall_after_ms, config.max_lag_ms)
    }

    pub fn new(registry: &Registry, stall_after_ms: u64, max_lag_ms: u64) -> PipelineStatus {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric name");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric name");
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let now = Instant::now();
        PipelineStatus {
            stall_after: Duration::from_millis(stall_after_ms),
            max_lag_ms: max_lag_ms.min(i64::MAX as u64) as i64,
            state: Mutex::new(State { last_commit: now, last_turn: now, failing: None, lag_ms: 0, evicted_seen: None }),
            quarantined: counter(
                "qoeflow_pipeline_quarantined_records_total",
                "Records whose processing failed every attempt, dead-lettered as `quarantined`",
            ),
            evicted: counter("qoeflow_pipeline_views_evicted_total", "Views ended early at pipeline.max_open_views"),
            epochs: counter("qoeflow_pipeline_epochs_committed_total", "Epochs committed to every sink"),
            failures: counter("qoeflow_pipeline_epoch_failures_total", "Epoch attempts that failed and were retried"),
            fenced: counter(
                "qoeflow_pipeline_fenced_commits_total",
                "Epoch commits the lineage's lease refused (another worker took it): never published",
            ),
            open_views: gauge("qoeflow_pipeline_open_views", "Views open in the sessionizer"),
            stalled: gauge("qoeflow_pipeline_stalled", "1 while the pipeline has failed to commit for pipeline.stall_after_ms"),
            lag: gauge("qoeflow_pipeline_lag_milliseconds", "How far the last committed epoch trailed its input"),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An epoch was committed; `lag_ms` is how far it trailed the input (0: caught up).
    pub fn committed(&self, stats: &Stats, open_views: usize, lag_ms: i64) {
        let mut s = self.state();
        let now = Instant::now();
        (s.last_commit, s.last_turn, s.failing, s.lag_ms) = (now, now, None, lag_ms.max(0));
        let seen = s.evicted_seen.unwrap_or(stats.evicted);
        self.evicted.inc_by(stats.evicted.saturating_sub(seen));
        s.evicted_seen = Some(stats.evicted);
        self.epochs.inc();
        self.open_views.set(open_views as i64);
        self.lag.set(s.lag_ms);
        self.stalled.set(0);
    }

    /// The loop turned without anything to commit: restored, read its source, caught up and idle. A
    /// failure before is over.
    pub fn idle(&self, open_views: usize) {
        let mut s = self.state();
        let now = Instant::now();
        (s.last_turn, s.last_commit, s.failing, s.lag_ms) = (now, now, None, 0);
        self.lag.set(0);
        self.stalled.set(0);
        self.open_views.set(open_views as i64);
    }

    /// The sessionizer state was restored (start-up or after a failure): counters continue from it.
    pub fn restored(&self, stats: &Stats) {
        self.state().evicted_seen.get_or_insert(stats.evicted);
    }

    /// An attempt failed (it will be retried).
    pub fn failed(&self, error: &str) {
        let mut s = self.state();
        s.last_turn = Instant::now();
        s.failing = Some(error.to_owned());
        self.failures.inc();
        self.stalled.set(i64::from(s.last_commit.elapsed() >= self.stall_after));
    }

    /// The lease refused a commit (lease mode): the epoch stays unpublished and the lineage stops here.
    pub fn fenced(&self) {
        self.fenced.inc();
    }

    /// A record was quarantined.
    pub fn quarantined(&self) {
        self.quarantined.inc();
    }

    /// `Ok` while the pipeline keeps up; otherwise why not (for `/readyz`).
    pub fn check(&self) -> Result<(), String> {
        let s = self.state();
        if let Some(error) = &s.failing
            && s.last_commit.elapsed() >= self.stall_after
        {
            self.stalled.set(1);
            return Err(format!(
                "pipeline stalled: nothing committed for {} s; last error: {error}",
                s.last_commit.elapsed().as_secs()
            ));
        }
        if s.last_turn.elapsed() >= self.stall_after {
            self.stalled.set(1);
            return Err(format!("pipeline stalled: its loop has not run for {} s", s.last_turn.elapsed().as_secs()));
        }
        if s.lag_ms > self.max_lag_ms {
            return Err(format!("pipeline far behind: its last epoch trailed the input by {} s", s.lag_ms / 1000));
        }
        Ok(())
    }
}

impl service::Readiness for PipelineStatus {
    fn check(&self) -> Result<(), String> {
        PipelineStatus::check(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_after_failing_for_long_enough_and_behind_past_the_lag_bound() {
        let status = PipelineStatus::new(&Registry::new(), 50, 10_000);
        assert!(status.check().is_ok());
        status.failed("ClickHouse insert: connection refused");
        std::thread::sleep(Duration::from_millis(60));
        status.failed("ClickHouse insert: connection refused");
        let err = status.check().expect_err("stalled");
        assert!(err.contains("stalled") && err.contains("connection refused"), "{err}");
        assert_eq!(status.stalled.get(), 1);
        status.committed(&Stats::default(), 3, 20_000);
        assert_eq!(status.stalled.get(), 0);
        assert!(status.check().expect_err("behind").contains("far behind"));
        status.committed(&Stats::default(), 3, 0);
        assert!(status.check().is_ok());
        // A failure followed by idle turns (nothing to commit on a quiet stream) is over.
        status.failed("GetRecords: throttled");
        std::thread::sleep(Duration::from_millis(60));
        status.idle(0);
        assert!(status.check().is_ok(), "{:?}", status.check());
    }
}
