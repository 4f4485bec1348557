//! What the pipeline tells the outside about itself: Prometheus metrics (`qoeflow_pipeline_*`) and the
//! readiness `/readyz` reports. The runner reports every epoch it commits and every attempt that fails;
//! readiness then says **stalled** when the pipeline has failed to commit for `stall_after_ms` (a sink
//! down, a poison record still being retried) or its loop has not turned for that long, and **far
//! behind** when what it last committed trails its input by more than `max_lag_ms`.
//!
//! Each runner (one per checkpoint: `local`, `kinesis-w0`, or one per shard lineage in lease mode)
//! reports through its [`SourceMetrics`], labelled `source`, and per source partition (`partition`: a
//! shard id, or `local`). A lineage that stops here (lost to another worker) removes its gauges, so a
//! dead lineage's lag does not linger on this worker's `/metrics`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::sessionizer::{Stats, ViewRow};

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
    stalled: IntGauge,
    per_source: Families,
}

/// The labelled metric families, shared by every [`SourceMetrics`].
#[derive(Clone)]
struct Families {
    open_views: IntGaugeVec,
    lag: IntGaugeVec,
    records_read: IntCounterVec,
    bytes_read: IntCounterVec,
    events_read: IntCounterVec,
    lag_records: IntGaugeVec,
    millis_behind: IntGaugeVec,
    epoch_duration: HistogramVec,
    views_ended: IntCounterVec,
    late_events: IntCounterVec,
    duplicates: IntCounterVec,
    sink_duration: HistogramVec,
    sink_errors: IntCounterVec,
    state_bytes: IntGaugeVec,
}

/// How far one source partition is behind its input, as the source knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: String,
    /// Records not read yet (the local log: its durable end less the position).
    pub records: Option<u64>,
    /// Kinesis's `MillisBehindLatest` of the shard's last GetRecords.
    pub millis_behind: Option<i64>,
}

/// The sinks an epoch writes to, for `qoeflow_pipeline_sink_*{sink}`.
#[derive(Debug, Clone, Copy)]
pub enum Sink {
    ClickHouse,
    /// Encoding, staging and publishing the epoch's files.
    Parquet,
    /// The state store's commit (the checkpoint).
    StateStore,
    /// The lease's conditional update (lease mode).
    Lease,
}

impl Sink {
    fn label(self) -> &'static str {
        match self {
            Sink::ClickHouse => "clickhouse",
            Sink::Parquet => "parquet",
            Sink::StateStore => "state_store",
            Sink::Lease => "lease",
        }
    }
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
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let histograms = |name: &str, help: &str, labels: &[&str]| {
            // 1 ms to ~65 s: an epoch or a sink write on a healthy pipeline takes milliseconds; a
            // retried ClickHouse insert or a throttled object store, seconds.
            let buckets = prometheus::exponential_buckets(0.001, 2.0, 17).expect("valid buckets");
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric name");
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let per_source = Families {
            open_views: gauges("qoeflow_pipeline_open_views", "Views open in the sessionizer", &["source"]),
            lag: gauges("qoeflow_pipeline_lag_milliseconds", "How far the last committed epoch trailed its input", &["source"]),
            records_read: counters("qoeflow_pipeline_records_read_total", "Stream records read, by source partition", &["source", "partition"]),
            bytes_read: counters("qoeflow_pipeline_bytes_read_total", "Bytes of stream records read, by source partition", &["source", "partition"]),
            events_read: counters(
                "qoeflow_pipeline_events_read_total",
                "Beacon events in the records read (duplicates and invalid ones included), by source partition",
                &["source", "partition"],
            ),
            lag_records: gauges(
                "qoeflow_pipeline_partition_lag_records",
                "Records of the partition not read yet (the local log; Kinesis does not tell)",
                &["source", "partition"],
            ),
            millis_behind: gauges(
                "qoeflow_pipeline_millis_behind_latest",
                "Kinesis MillisBehindLatest of the shard's last GetRecords",
                &["source", "partition"],
            ),
            epoch_duration: histograms(
                "qoeflow_pipeline_epoch_duration_seconds",
                "Time from an epoch's records in hand to its commit (sessionizing and every sink)",
                &["source"],
            ),
            views_ended: counters("qoeflow_pipeline_views_ended_total", "Views ended, by end_reason", &["source", "reason"]),
            late_events: counters(
                "qoeflow_pipeline_late_events_total",
                "Events that arrived after their view had moved past them: kept (the view is corrected) or dropped (past the late horizon)",
                &["source", "outcome"],
            ),
            duplicates: counters("qoeflow_pipeline_duplicate_events_total", "Events received again (same view and seq) and ignored", &["source"]),
            sink_duration: histograms("qoeflow_pipeline_sink_write_duration_seconds", "Time to write one epoch to a sink", &["sink"]),
            sink_errors: counters("qoeflow_pipeline_sink_errors_total", "Epoch writes to a sink that failed (the epoch is retried)", &["sink"]),
            state_bytes: gauges(
                "qoeflow_pipeline_checkpoint_bytes",
                "Size on disk of the source's state store: its checkpoint and the open views' state",
                &["source"],
            ),
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
            stalled: gauge("qoeflow_pipeline_stalled", "1 while the pipeline has failed to commit for pipeline.stall_after_ms"),
            per_source,
        }
    }

    /// The metrics a runner of checkpoint `source` reports through.
    pub fn source(&self, source: &str) -> SourceMetrics {
        let f = &self.per_source;
        // Known label values start at 0 (Prometheus's advice): a rate or an alert on them has a series
        // before the first error.
        for sink in [Sink::ClickHouse, Sink::Parquet, Sink::StateStore, Sink::Lease] {
            f.sink_errors.with_label_values(&[sink.label()]);
        }
        for reason in ["viewend", "timeout", "evicted"] {
            f.views_ended.with_label_values(&[source, reason]);
        }
        SourceMetrics {
            source: source.to_owned(),
            open_views: f.open_views.with_label_values(&[source]),
            lag: f.lag.with_label_values(&[source]),
            epoch_duration: f.epoch_duration.with_label_values(&[source]),
            duplicates: f.duplicates.with_label_values(&[source]),
            late_kept: f.late_events.with_label_values(&[source, "kept"]),
            late_dropped: f.late_events.with_label_values(&[source, "dropped"]),
            state_bytes: f.state_bytes.with_label_values(&[source]),
            families: f.clone(),
            seen: Mutex::new(SeenState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An epoch was committed; `lag_ms` is how far it trailed the input (0: caught up).
    pub fn committed(&self, stats: &Stats, lag_ms: i64) {
        let mut s = self.state();
        let now = Instant::now();
        (s.last_commit, s.last_turn, s.failing, s.lag_ms) = (now, now, None, lag_ms.max(0));
        let seen = s.evicted_seen.unwrap_or(stats.evicted);
        self.evicted.inc_by(stats.evicted.saturating_sub(seen));
        s.evicted_seen = Some(stats.evicted);
        self.epochs.inc();
        self.stalled.set(0);
    }

    /// The loop turned without anything to commit: restored, read its source, caught up and idle. A
    /// failure before is over.
    pub fn idle(&self) {
        let mut s = self.state();
        let now = Instant::now();
        (s.last_turn, s.last_commit, s.failing, s.lag_ms) = (now, now, None, 0);
        self.stalled.set(0);
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

/// The views an epoch's view rows end, counted by `end_reason`. A correction rewrites a view that
/// ended before (`version` > 1): it does not end again.
pub fn ended_views(views: &[ViewRow]) -> Vec<(&'static str, u64)> {
    let mut ended: Vec<(&'static str, u64)> = Vec::new();
    for v in views.iter().filter(|v| v.version == 1) {
        match ended.iter_mut().find(|(r, _)| *r == v.end_reason) {
            Some((_, n)) => *n += 1,
            None => ended.push((v.end_reason, 1)),
        }
    }
    ended
}

/// One runner's metrics (see [`PipelineStatus::source`]).
pub struct SourceMetrics {
    source: String,
    open_views: IntGauge,
    lag: IntGauge,
    epoch_duration: Histogram,
    duplicates: IntCounter,
    late_kept: IntCounter,
    late_dropped: IntCounter,
    state_bytes: IntGauge,
    families: Families,
    seen: Mutex<SeenState>,
}

#[derive(Default)]
struct SeenState {
    /// The sessionizer's counters already exported (`None` until restored: a restart continues from
    /// the checkpoint's counts without re-adding them).
    stats: Option<Stats>,
    /// Partitions whose gauges this source set.
    partitions: std::collections::BTreeSet<String>,
}

impl SourceMetrics {
    fn seen(&self) -> std::sync::MutexGuard<'_, SeenState> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sessionizer's counters after a restore: later epochs export what they add to them.
    pub fn restored(&self, stats: &Stats) {
        self.seen().stats = Some(stats.clone());
    }

    /// Records read from `partition` (`events` beacon events, `bytes` of data).
    pub fn read(&self, partition: &str, records: u64, bytes: u64, events: u64) {
        let labels = [self.source.as_str(), partition];
        self.families.records_read.with_label_values(&labels).inc_by(records);
        self.families.bytes_read.with_label_values(&labels).inc_by(bytes);
        self.families.events_read.with_label_values(&labels).inc_by(events);
    }

    /// The source's latest view of how far behind its partitions are.
    pub fn lags(&self, lags: &[PartitionLag]) {
        let mut seen = self.seen();
        for lag in lags {
            let labels = [self.source.as_str(), lag.partition.as_str()];
            if let Some(records) = lag.records {
                self.families.lag_records.with_label_values(&labels).set(records.min(i64::MAX as u64) as i64);
            }
            if let Some(ms) = lag.millis_behind {
                self.families.millis_behind.with_label_values(&labels).set(ms.max(0));
            }
            seen.partitions.insert(lag.partition.clone());
        }
    }

    /// A write of one epoch to `sink` took `elapsed`; `ok` whether it succeeded.
    pub fn sink_write(&self, sink: Sink, elapsed: Duration, ok: bool) {
        self.families.sink_duration.with_label_values(&[sink.label()]).observe(elapsed.as_secs_f64());
        if !ok {
            self.families.sink_errors.with_label_values(&[sink.label()]).inc();
        }
    }

    /// An epoch committed after `elapsed`, ending views for the reasons `ended` counts (see
    /// [`ended_views`]), with the sessionizer's counters now at `stats`.
    pub fn committed(&self, elapsed: Duration, ended: &[(&'static str, u64)], stats: &Stats, open_views: usize, lag_ms: i64, state_bytes: u64) {
        self.epoch_duration.observe(elapsed.as_secs_f64());
        for (reason, n) in ended {
            self.families.views_ended.with_label_values(&[self.source.as_str(), reason]).inc_by(*n);
        }
        let mut seen = self.seen();
        let before = seen.stats.get_or_insert_with(|| stats.clone());
        self.duplicates.inc_by(stats.duplicates.saturating_sub(before.duplicates));
        self.late_kept.inc_by(stats.stragglers.saturating_sub(before.stragglers));
        self.late_dropped.inc_by(stats.late_dropped.saturating_sub(before.late_dropped));
        seen.stats = Some(stats.clone());
        self.idle(open_views);
        self.lag.set(lag_ms.max(0));
        self.state_bytes.set(state_bytes.min(i64::MAX as u64) as i64);
    }

    /// Nothing to commit this turn: caught up.
    pub fn idle(&self, open_views: usize) {
        self.open_views.set(open_views as i64);
        self.lag.set(0);
    }
}

impl Drop for SourceMetrics {
    /// The runner stopped (shutdown, or its lineage went to another worker): its gauges go.
    fn drop(&mut self) {
        let f = &self.families;
        let source = self.source.as_str();
        for partition in &self.seen().partitions {
            let _ = f.lag_records.remove_label_values(&[source, partition]);
            let _ = f.millis_behind.remove_label_values(&[source, partition]);
        }
        let _ = f.open_views.remove_label_values(&[source]);
        let _ = f.lag.remove_label_values(&[source]);
        let _ = f.state_bytes.remove_label_values(&[source]);
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
        status.committed(&Stats::default(), 20_000);
        assert_eq!(status.stalled.get(), 0);
        assert!(status.check().expect_err("behind").contains("far behind"));
        status.committed(&Stats::default(), 0);
        assert!(status.check().is_ok());
        // A failure followed by idle turns (nothing to commit on a quiet stream) is over.
        status.failed("GetRecords: throttled");
        std::thread::sleep(Duration::from_millis(60));
        status.idle();
        assert!(status.check().is_ok(), "{:?}", status.check());
    }

    fn exported(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out).expect("encode");
        out
    }

    #[test]
    fn source_metrics_count_reads_ended_views_and_late_events_and_a_stopped_source_drops_its_gauges() {
        let registry = Registry::new();
        let status = PipelineStatus::new(&registry, 1000, 1000);
        let metrics = status.source("kinesis-w0");
        // Restored at 5 stragglers: only what later epochs add is exported.
        metrics.restored(&Stats { stragglers: 5, ..Stats::default() });
        metrics.read("shardId-000", 3, 300, 12);
        metrics.read("shardId-000", 1, 100, 4);
        metrics.lags(&[PartitionLag { partition: "shardId-000".into(), records: None, millis_behind: Some(2500) }]);
        let stats = Stats { stragglers: 7, late_dropped: 1, duplicates: 2, ..Stats::default() };
        metrics.committed(Duration::from_millis(30), &[("viewend", 2), ("timeout", 1)], &stats, 9, 40, 4096);
        metrics.sink_write(Sink::ClickHouse, Duration::from_millis(5), false);
        let text = exported(&registry);
        for line in [
            r#"qoeflow_pipeline_records_read_total{partition="shardId-000",source="kinesis-w0"} 4"#,
            r#"qoeflow_pipeline_events_read_total{partition="shardId-000",source="kinesis-w0"} 16"#,
            r#"qoeflow_pipeline_bytes_read_total{partition="shardId-000",source="kinesis-w0"} 400"#,
            r#"qoeflow_pipeline_millis_behind_latest{partition="shardId-000",source="kinesis-w0"} 2500"#,
            r#"qoeflow_pipeline_views_ended_total{reason="viewend",source="kinesis-w0"} 2"#,
            r#"qoeflow_pipeline_late_events_total{outcome="kept",source="kinesis-w0"} 2"#,
            r#"qoeflow_pipeline_late_events_total{outcome="dropped",source="kinesis-w0"} 1"#,
            r#"qoeflow_pipeline_duplicate_events_total{source="kinesis-w0"} 2"#,
            r#"qoeflow_pipeline_open_views{source="kinesis-w0"} 9"#,
            r#"qoeflow_pipeline_checkpoint_bytes{source="kinesis-w0"} 4096"#,
            r#"qoeflow_pipeline_epoch_duration_seconds_count{source="kinesis-w0"} 1"#,
            r#"qoeflow_pipeline_sink_errors_total{sink="clickhouse"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        drop(metrics);
        let text = exported(&registry);
        assert!(!text.contains("qoeflow_pipeline_millis_behind_latest{"), "{text}");
        assert!(!text.contains("qoeflow_pipeline_open_views{"), "{text}");
        assert!(text.contains(r#"qoeflow_pipeline_records_read_total{partition="shardId-000",source="kinesis-w0"} 4"#), "{text}");
    }

    #[test]
    fn corrections_do_not_end_a_view_again() {
        let view = |reason: &'static str, version: u64| ViewRow {
            view_id: "v".into(),
            key: None,
            start_ms: 0,
            end_ms: 0,
            end_reason: reason,
            dims: Default::default(),
            client: Default::default(),
            totals: Default::default(),
            events: 1,
            duplicates: 0,
            gaps: 0,
            version,
        };
        let ended = ended_views(&[view("viewend", 1), view("timeout", 1), view("viewend", 2), view("viewend", 1)]);
        assert_eq!(ended, vec![("viewend", 2), ("timeout", 1)]);
    }
}
