//! Minute rollups (`qoe_minute`) change how fast the metrics API answers, never what it answers: a few
//! hours of loadgen traffic go through the sessionizer into the Parquet dataset, the API is asked a set
//! of questions (ragged and minute-aligned ranges, buckets of whole minutes and of 10 s, groups,
//! filters, breakdowns), then compaction writes the rollups of the closed hours and the answers must be
//! the same JSON; again after late rows land in a rolled-up hour (which is then read from `qoe_window`
//! until compaction rolls it up again). Likewise the one query that answers a live dashboard's short
//! steps: the same as the two it stands for.

use std::path::Path;

use pipeline::parquet::ParquetSink;
use pipeline::rollup::ROLLUP_TABLE;
use pipeline::sessionizer::{Dim, SessionConfig, Sessionizer};
use query::backend::Backend;
use serde_json::Value;

const HOUR: i64 = 3_600_000;

struct Api {
    url: String,
    engine: std::sync::Arc<query::engine::Engine>,
    registry: prometheus::Registry,
}

/// The API over the dataset at `root`, its closed hours' cache holding at most `hour_cache` bytes.
async fn open_api(root: &Path, hour_cache: usize) -> Api {
    let dataset = objstore::Location::local(root);
    let engine = query::engine::Engine::open_with_memory_limit(&dataset, 1 << 30).await.expect("engine").with_hour_cache(hour_cache);
    let engine = std::sync::Arc::new(engine);
    let backend = Backend::DataFusion(engine.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let registry = prometheus::Registry::new();
    let metrics = query::api::RequestMetrics::new(&registry);
    let router = query::api::router(backend, Default::default(), &Default::default(), axum::Router::new(), metrics);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Api { url, engine, registry }
}

impl Api {
    async fn answers(&self, questions: &[String]) -> Vec<Value> {
        let mut out = Vec::new();
        for q in questions {
            let r = reqwest::get(format!("{}/api/v1/{q}", self.url)).await.expect("get");
            assert_eq!(r.status().as_u16(), 200, "{q}");
            out.push(r.json().await.expect("json"));
        }
        out
    }

    /// The answers with the rollups moved away: what `qoe_window` alone says.
    async fn answers_from_windows(&self, root: &Path, questions: &[String]) -> Vec<Value> {
        let (dir, aside) = (root.join(ROLLUP_TABLE), root.join("qoe_minute.aside"));
        let moved = dir.exists();
        if moved {
            std::fs::rename(&dir, &aside).expect("move the rollups away");
        }
        let out = self.answers(questions).await;
        if moved {
            std::fs::rename(&aside, &dir).expect("move the rollups back");
        }
        out
    }
}

fn assert_same(a: &[Value], b: &[Value], questions: &[String], what: &str) {
    for ((a, b), q) in a.iter().zip(b).zip(questions) {
        assert_eq!(a, b, "{q}: {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_answer_exactly_what_the_windows_answer() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("parquet");
    // Four hours of viewers, in the past (only hours that have ended are rolled up).
    let t0 = (1_790_000_000_000 / HOUR) * HOUR;
    let spec = loadgen::sim::RunSpec::new(7, 4 * HOUR, 3 * HOUR);
    let (records, _, truth) = loadgen::collector_records(&spec, 400, t0, |_, _| schemas::ClientInfo::default());
    let sink = ParquetSink::new(objstore::Location::local(&root), "local", Dim::DEFAULT.to_vec());
    let mut session = Sessionizer::new(SessionConfig::default());
    let mut epoch = 0;
    for chunk in records.chunks(records.len() / 60 + 1) {
        for r in chunk {
            session.process(schemas::Record::decode(r).expect("record"));
        }
        session.advance();
        epoch += 1;
        sink.write_epoch(epoch, &session.flush()).await.expect("epoch");
    }
    // A view two hours after the traffic: the watermark passes every view, and they end.
    session.process(schemas::Record::Events(late_view("closer", t0 + 6 * HOUR)));
    session.advance();
    epoch += 1;
    sink.write_epoch(epoch, &session.flush()).await.expect("epoch");

    let api = open_api(&root, 64 << 20).await;
    // The same API without the closed hours' cache: every question reads every hour.
    let uncached = open_api(&root, 0).await;
    let (from, to) = (t0 + 17_345, t0 + 4 * HOUR + 1_234_567);
    let mut questions = Vec::new();
    // The second range holds everything, the closer included: its summary is question 9.
    let everything = 9;
    for range in [format!("from={from}&to={to}"), format!("from={t0}&to={}", t0 + 8 * HOUR), format!("from={}&to={}", t0 + HOUR + 60_000, t0 + 2 * HOUR - 60_000)] {
        questions.extend([
            format!("summary?{range}"),
            format!("summary?{range}&filter=stream_type:vod"),
            format!("metrics?{range}&step=1m"),
            format!("metrics?{range}&step=6m&group_by=cdn"),
            format!("metrics?{range}&step=1h&filter=cdn:akamai"),
            format!("metrics?{range}&step=10s"),
            format!("metrics?{range}&step=90s"),
            format!("breakdown?dimension=player_name&{range}"),
            format!("breakdown?dimension=cdn&{range}&limit=2"),
        ]);
    }
    let before = api.answers(&questions).await;
    let attempts = truth.sums[schemas::measures::Measure::Attempt] + 1;
    assert_eq!(before[everything]["metrics"]["attempts"].as_i64(), Some(attempts), "{}", before[everything]);
    assert!(api.engine.rolled_up_partitions(t0, t0 + 5 * HOUR).await.expect("list").is_empty(), "nothing rolled up before compaction");

    // Every hour is closed: compaction merges them and writes their rollups.
    let done = sink.compact(epoch, t0 + 31 * HOUR, 2, u64::MAX).await.expect("compact");
    assert!(done.partitions >= 4, "{done:?}");
    let rolled = api.engine.rolled_up_partitions(t0, t0 + 5 * HOUR).await.expect("list");
    assert!(rolled.len() >= 4, "the four hours of traffic are rolled up: {rolled:?}");
    let hits = api.engine.hour_cache().stats().hits;
    assert_same(&api.answers(&questions).await, &before, &questions, "from the rollups");
    assert_same(&uncached.answers(&questions).await, &before, &questions, "from the rollups, without the hours' cache");
    // Asked again, the whole hours of the ranges come from the cache, with the same answers.
    let filled = api.engine.hour_cache().stats();
    assert!(filled.entries > 0 && filled.hits > hits, "the hours' cache is filled and used: {filled:?}");
    assert_same(&api.answers(&questions).await, &before, &questions, "from the hours' cache");
    let again = api.engine.hour_cache().stats();
    assert_eq!(again.misses, filled.misses, "asked again, every whole hour is a hit: {again:?}");
    assert!(again.hits > filled.hits);
    // A cache too small for a day's hours of any shape answers each question with one query, the same.
    let tiny = open_api(&root, 4 << 10).await;
    assert_same(&tiny.answers(&questions).await, &before, &questions, "shapes too large for the hours' cache");
    assert!(tiny.engine.hour_cache().stats().bytes <= 4 << 10);
    // Operators see the same counts.
    let exported = |name: &str| api.registry.gather().iter().find(|f| f.get_name() == name).map(|f| f.get_metric()[0].get_counter().get_value() as u64);
    assert_eq!((exported("qoeflow_query_hour_cache_hits_total"), exported("qoeflow_query_hour_cache_misses_total")), (Some(again.hits), Some(again.misses)));

    // A late view in the second hour: its new file has no rollup yet, so that hour is read from
    // qoe_window while the others still come from their rollups.
    session.process(schemas::Record::Events(late_view("late", t0 + HOUR + 600_000)));
    session.advance();
    epoch += 1;
    sink.write_epoch(epoch, &session.flush()).await.expect("late epoch");
    let rolled_now = api.engine.rolled_up_partitions(t0, t0 + 5 * HOUR).await.expect("list");
    assert_eq!(rolled_now.len(), rolled.len() - 1, "the late hour is not rolled up: {rolled_now:?}");
    let with_late = api.answers_from_windows(&root, &questions).await;
    assert_eq!(with_late[everything]["metrics"]["attempts"].as_i64(), Some(attempts + 1), "the late view counts");
    assert_same(&api.answers(&questions).await, &with_late, &questions, "with a late file beside the rollups");
    assert_same(&uncached.answers(&questions).await, &with_late, &questions, "with a late file, without the hours' cache");
    // Compacted again, it is rolled up again, with the same answers.
    sink.compact(epoch, t0 + 31 * HOUR, 2, u64::MAX).await.expect("compact");
    assert_eq!(api.engine.rolled_up_partitions(t0, t0 + 5 * HOUR).await.expect("list"), rolled);
    let misses = api.engine.hour_cache().stats().misses;
    assert_same(&api.answers(&questions).await, &with_late, &questions, "rolled up again");
    assert!(api.engine.hour_cache().stats().misses > misses, "the hour compacted again is another entry");

    // The answers do come from the rollups: with the second hour's rollup replaced by the third's
    // (same file name), every summary changes, and so do the concurrent viewers of the range inside
    // that hour, while the sums in buckets of 10 s and 90 s (not whole minutes, read from
    // qoe_window) do not.
    let twin = |hour: i64| {
        let dir = root.join(ROLLUP_TABLE).join(schemas::dataset::partition_of(t0 + hour * HOUR));
        let mut files: Vec<_> = std::fs::read_dir(&dir).expect("rollups").map(|e| e.expect("entry").path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.remove(0)
    };
    std::fs::copy(twin(2), twin(1)).expect("swap a rollup");
    let tampered = api.answers(&questions).await;
    assert_same(&uncached.answers(&questions).await, &tampered, &questions, "tampered: with the hours' cache as without it");
    for ((q, a), b) in questions.iter().zip(&tampered).zip(&with_late) {
        if q.contains("step=10s") || q.contains("step=90s") {
            assert_eq!(without_concurrency(a), without_concurrency(b), "{q}: sums read from qoe_window");
        } else if q.starts_with("summary") && !q.contains("filter") {
            assert_ne!(a["metrics"], b["metrics"], "{q}: read from the rollups");
        }
        if q.starts_with(&format!("metrics?from={}", t0 + HOUR + 60_000)) && q.contains("step=1m") {
            assert_ne!(concurrency(a), concurrency(b), "{q}: concurrent viewers read from the rollups");
        }
    }
}

/// Buckets of up to a window (a live dashboard's last minutes) are answered by one query when each is
/// one window, and the answer is what the two queries answer (the sums by bucket; the active views per
/// window); with windows shorter than the step a bucket holds two, and the answer is still theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_for_short_steps_answers_what_two_answer() {
    use query::backend::AggQuery;
    let t0 = (1_790_000_000_000 / HOUR) * HOUR;
    let spec = loadgen::sim::RunSpec::new(11, HOUR, HOUR / 2);
    let (records, _, _) = loadgen::collector_records(&spec, 200, t0, |_, _| schemas::ClientInfo::default());
    for window_ms in [10_000, 5_000] {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("parquet");
        let sink = ParquetSink::new(objstore::Location::local(&root), "local", Dim::DEFAULT.to_vec());
        let mut session = Sessionizer::new(SessionConfig { window_ms, ..SessionConfig::default() });
        for (epoch, chunk) in records.chunks(records.len() / 20 + 1).enumerate() {
            for r in chunk {
                session.process(schemas::Record::decode(r).expect("record"));
            }
            session.advance();
            sink.write_epoch(epoch as u64 + 1, &session.flush()).await.expect("epoch");
        }
        let api = open_api(&root, 64 << 20).await;
        let backend = Backend::DataFusion(api.engine.clone());
        for (step, group_by) in [(10_000, None), (10_000, Some("cdn")), (5_000, None), (10_000, Some("player_name"))] {
            let q = AggQuery { from: t0, to: t0 + 2 * HOUR, bucket_ms: Some(step), group_by: group_by.map(str::to_owned), ..Default::default() };
            let (rows, active) = backend.aggregate_with_active(&q).await.expect("one query");
            let two_active = backend.active_per_window(&q).await.expect("active views per window");
            assert!(active.len() > 100, "{window_ms} ms windows, step {step}: {} windows with views", active.len());
            assert_eq!(active, two_active, "{window_ms} ms windows, step {step}, by {group_by:?}");
            let one_window = rows.iter().all(|r| r.windows.is_some_and(|(first, last)| first == last));
            assert_eq!(one_window, step <= window_ms, "{window_ms} ms windows, step {step}: one window per bucket");
        }
    }
}

fn concurrency(answer: &Value) -> Vec<Value> {
    answer["series"].as_array().expect("series").iter().flat_map(|s| s["points"].as_array().expect("points")).map(|p| p["concurrent_viewers"].clone()).collect()
}

fn without_concurrency(answer: &Value) -> Value {
    let mut a = answer.clone();
    for series in a["series"].as_array_mut().expect("series") {
        for point in series["points"].as_array_mut().expect("points") {
            point.as_object_mut().expect("point").remove("concurrent_viewers");
        }
    }
    a
}

/// A view that starts at `t`, plays 40 s and ends, in one record.
fn late_view(id: &str, t: i64) -> schemas::record::EventsRecord {
    let events = [("playrequest", 0), ("playing", 700), ("viewend", 40_000)]
        .iter()
        .enumerate()
        .map(|(seq, (kind, dt))| serde_json::json!({"view_id": id, "seq": seq, "type": kind, "ts": t + dt, "cdn": "akamai"}).as_object().cloned().expect("object"))
        .collect();
    schemas::record::EventsRecord { recv_ms: t + 41_000, sent_at: t + 41_000, key: None, view_id: id.to_owned(), client: Default::default(), events }
}
