//! End to end: `qoeflow loadgen` (seeded, 1,200 views, with duplicates, reordering, clock skew and late
//! delivery) against the collector, then what qoeflow computed equals the simulation's own truth exactly:
//! through `qoeflow serve` (local log, Parquet, read back with `qoeflow query`), and through Kinesis (the
//! emulator) and `qoeflow pipeline` into Parquet and ClickHouse.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use loadgen::Totals;
use serde_json::Value;

use crate::common::clickhouse::ClickHouse;
use crate::common::kinesis::*;
use crate::common::*;

const VIEWERS: &str = "1200";
pub(crate) const KEY: &str = "loadgen-key";

/// Runs `qoeflow loadgen --target TARGET --truth TRUTH --key KEY --quiet ARGS` to its end; returns the
/// truth and the summary it printed.
pub(crate) fn run_loadgen(target: &str, truth: &Path, args: &[&str]) -> (Totals, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
        .args(["loadgen", "--target", target, "--key", KEY, "--truth", truth.to_str().expect("utf-8 path"), "--quiet"])
        .args(args)
        .env("QOEFLOW_LOG_LEVEL", "warn")
        .output()
        .expect("run qoeflow loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "loadgen failed: {}", out.status);
    assert!(
        stdout.contains(" 0 failed") && stdout.contains(" 0 rejected"),
        "every beacon acknowledged: {stdout}"
    );
    let text = std::fs::read_to_string(truth).expect("truth file");
    let keys: std::collections::BTreeSet<String> =
        serde_json::from_str::<serde_json::Map<String, Value>>(&text).expect("truth JSON object").keys().cloned().collect();
    let contract = loadgen::truth_keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, contract, "the truth has exactly the contract's keys");
    let totals: Totals = serde_json::from_str(&text).expect("truth JSON");
    let per_view = std::fs::read_to_string(loadgen::views_path(truth)).expect("per-view truth");
    assert_eq!(per_view.lines().count() as u64, totals.views, "one truth line per view");
    (totals, stdout)
}

/// Runs `qoeflow loadgen` to its end against `target` with every network knob on; returns the truth.
/// Overtaken beacons come 30–120 s after the beacon that overtook them and late views minutes late, far
/// beyond the pipeline's reorder wait (the default 5 s): the pipeline corrects its views.

pub(crate) fn loadgen(target: &str, seed: &str, truth: &Path) -> Totals {
    let (totals, _) = run_loadgen(target, truth, &[
        "--viewers", VIEWERS, "--duration", "30s", "--ramp-up", "15s", "--seed", seed,
        "--duplicate-rate", "0.05", "--reorder-rate", "0.05", "--skew", "3m", "--late-rate", "0.05", "--late-by", "2m",
        "--overtake-by", "120s",
    ]);
    assert!(totals.views >= 1000);
    // The traffic exercised every outcome and measure.
    for (what, n) in [
        ("vsf", get(&totals, "vsf")),
        ("ebvs", get(&totals, "ebvs")),
        ("playback failures", get(&totals, "playback_failures")),
        ("stalls", get(&totals, "stall_count")),
        ("seek stalls", get(&totals, "seek_stall_ms")),
        ("switches up", get(&totals, "switches_up")),
        ("switches down", get(&totals, "switches_down")),
        ("cache misses", get(&totals, "segments_miss")),
        ("non-fatal errors", get(&totals, "errors") - get(&totals, "fatal_errors")),
    ] {
        assert!(n > 0, "the simulation produced no {what}: {totals:?}");
    }
    totals
}

/// The truth's value under `key`.
pub(crate) fn get(t: &Totals, key: &str) -> i64 {
    t.get(key).unwrap_or_else(|| panic!("{key} is a truth key"))
}

/// The truth's keys as (name, value) for the counts and durations.
pub(crate) fn truth_sums(t: &Totals) -> BTreeMap<String, i64> {
    let mut m: BTreeMap<String, i64> = serde_json::from_value(serde_json::to_value(t).expect("json"))
        .map(|m: BTreeMap<String, Value>| m.into_iter().filter_map(|(k, v)| Some((k, v.as_i64()?))).collect())
        .expect("map");
    m.remove("startup_ms_p50");
    m.remove("startup_ms_p95");
    m
}

/// SQL summing `views` into the truth's keys; `b` casts a boolean column to an integer.
pub(crate) fn views_sql(table: &str, b: fn(&str) -> String) -> String {
    format!(
        "SELECT count(*) AS t_views, sum({}) AS t_attempts, sum({}) AS t_starts, sum({}) AS t_vsf, sum({}) AS t_ebvs, \
         sum({}) AS t_playback_failures, sum(play_ms) AS t_play_ms, sum(stall_count) AS t_stall_count, \
         sum(stall_ms) AS t_stall_ms, sum(seek_stall_ms) AS t_seek_stall_ms, sum(switches_up) AS t_switches_up, \
         sum(switches_down) AS t_switches_down, sum(segments_hit) AS t_segments_hit, sum(segments_miss) AS t_segments_miss, \
         sum(bytes_hit) AS t_bytes_hit, sum(bytes_hit + bytes_miss) AS t_bytes_total, sum(errors) AS t_errors, \
         sum(fatal_errors) AS t_fatal_errors FROM {table}",
        b("attempt"), b("started"), b("vsf"), b("ebvs"), b("playback_failure"),
    )
}

/// SQL summing `qoe_window` into the truth's keys (every view ended, so the windows hold all of it).
pub(crate) fn windows_sql(table: &str) -> String {
    format!(
        "SELECT sum(attempts) AS t_attempts, sum(starts) AS t_starts, sum(vsf) AS t_vsf, sum(ebvs) AS t_ebvs, \
         sum(playback_failures) AS t_playback_failures, sum(play_ms) AS t_play_ms, sum(stall_count) AS t_stall_count, \
         sum(stall_ms) AS t_stall_ms, sum(seek_stall_ms) AS t_seek_stall_ms, sum(switches_up) AS t_switches_up, \
         sum(switches_down) AS t_switches_down, sum(segments_hit) AS t_segments_hit, sum(segments_miss) AS t_segments_miss, \
         sum(bytes_hit) AS t_bytes_hit, sum(bytes_total) AS t_bytes_total, sum(errors) AS t_errors, \
         sum(fatal_errors) AS t_fatal_errors FROM {table}"
    )
}

/// The SQL of the exact start-up time of nearest rank ⌈q·starts⌉ in `views`.
pub(crate) fn views_quantile_sql(table: &str, starts: u64, q: f64) -> String {
    let rank = ((q * starts as f64).ceil() as u64).max(1);
    format!("SELECT startup_ms FROM {table} WHERE startup_ms IS NOT NULL ORDER BY startup_ms LIMIT 1 OFFSET {}", rank - 1)
}

pub(crate) fn as_i64_map(row: &Value) -> BTreeMap<String, i64> {
    row.as_object()
        .expect("row object")
        .iter()
        .map(|(k, v)| {
            // ClickHouse quotes 64-bit integers in JSON; DataFusion does not.
            let n = v.as_i64().or_else(|| v.as_str()?.parse().ok()).or_else(|| v.as_f64().map(|f| f as i64));
            // Aliases are `t_<key>`: ClickHouse would resolve an alias equal to a column inside other
            // aggregates.
            (k.strip_prefix("t_").unwrap_or(k).to_owned(), n.unwrap_or_else(|| panic!("{k} = {v} is not a number")))
        })
        .collect()
}

/// `qoeflow query --format json SQL` over `data`: the first row.
fn qoeflow_query(data: &Path, sql: &str) -> Value {
    query_json(data, sql).into_iter().next().unwrap_or_else(|| serde_json::json!({}))
}

/// Polls `read` until it equals `want` (the pipeline catching up), then asserts it does.
pub(crate) fn eventually_equal(what: &str, want: &BTreeMap<String, i64>, within: Duration, mut read: impl FnMut() -> BTreeMap<String, i64>) {
    let deadline = Instant::now() + within;
    loop {
        let got = read();
        let got: BTreeMap<String, i64> = got.into_iter().filter(|(k, _)| want.contains_key(k)).collect();
        if &got == want || Instant::now() > deadline {
            let diff: HashMap<&String, (i64, Option<&i64>)> =
                want.iter().filter(|(k, v)| got.get(*k) != Some(v)).map(|(k, v)| (k, (*v, got.get(k)))).collect();
            assert_eq!(&got, want, "{what} differs from the truth (truth, got): {diff:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The Parquet dataset under `data`, read with `qoeflow query`, equals the truth: counts and durations
/// exactly over `views` and over `qoe_window`; start-up percentiles exactly over `views`, and within the
/// histogram's precision (the bucket holding the true value) over `qoe_window`.
pub(crate) fn assert_parquet_equals_truth(data: &Path, truth: &Totals) {
    assert_dataset_equals_truth(|sql| qoeflow_query(data, sql), truth);
}

/// [`assert_parquet_equals_truth`] over any dataset `query` reads (the first row of its answer).
pub(crate) fn assert_dataset_equals_truth(query: impl Fn(&str) -> Value, truth: &Totals) {
    let mut want = truth_sums(truth);
    eventually_equal("views (Parquet)", &want, Duration::from_secs(90), || {
        as_i64_map(&query(&views_sql("views", |c| format!("CAST({c} AS BIGINT)"))))
    });
    want.remove("views");
    eventually_equal("qoe_window (Parquet)", &want, Duration::from_secs(30), || as_i64_map(&query(&windows_sql("qoe_window"))));
    let hist = schemas::hist::new_histogram();
    for (q, exact) in [(0.5, truth.startup_ms_p50), (0.95, truth.startup_ms_p95)] {
        let exact = exact.expect("views started");
        let row = query(&views_quantile_sql("views", get(truth, "starts") as u64, q));
        assert_eq!(row["startup_ms"].as_i64(), Some(exact), "views: start-up p{}", q * 100.0);
        let row = query(&format!("SELECT hdr_quantile(startup_hist, startup_hist_retract, {q}) AS v FROM qoe_window"));
        let got = row["v"].as_f64().expect("quantile") as u64;
        assert_eq!(got, hist.highest_equivalent(exact as u64), "qoe_window: start-up p{} (exact {exact})", q * 100.0);
    }
}

/// ClickHouse (read with FINAL) holds the truth's totals: counts, durations and start-up percentiles.
pub(crate) fn assert_clickhouse_equals_truth(ch: &ClickHouse, truth: &Totals) {
    ch.wait_for_views(truth.views as i64, Duration::from_secs(60));
    let ch_row = |sql: String| -> Value {
        let out = ch.query(&format!("{sql} FORMAT JSONEachRow"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let mut want = truth_sums(truth);
    eventually_equal("views (ClickHouse)", &want, Duration::from_secs(30), || {
        as_i64_map(&ch_row(views_sql("qoeflow.views FINAL", |c| format!("toInt64({c})"))))
    });
    want.remove("views");
    eventually_equal("qoe_window (ClickHouse)", &want, Duration::from_secs(30), || as_i64_map(&ch_row(windows_sql("qoeflow.qoe_window FINAL"))));
    for (q, exact) in [(0.5, truth.startup_ms_p50), (0.95, truth.startup_ms_p95)] {
        let row = ch_row(views_quantile_sql("qoeflow.views FINAL", get(truth, "starts") as u64, q));
        assert_eq!(as_i64_map(&row)["startup_ms"], exact.expect("views started"), "ClickHouse views: start-up p{}", q * 100.0);
    }
}

/// What the collector's log shows the knobs did: duplicate beacons, events out of `seq` order, skewed
/// clocks, beacons delivered late, beacons overtaken for longer than the pipeline's reorder wait.
fn assert_knobs_took_effect(records: &[schemas::Record]) {
    let mut seen = std::collections::HashSet::new();
    let (mut duplicates, mut shuffled, mut skewed, mut late, mut overtaken) = (0, 0, 0, 0, 0);
    let mut offsets: HashMap<&str, i64> = HashMap::new();
    // Per view: (receive time, highest seq) of the records so far.
    let mut received: HashMap<&str, Vec<(i64, u64)>> = HashMap::new();
    for r in records {
        let schemas::Record::Events(r) = r else { continue };
        let seqs: Vec<u64> = r.events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
        let lowest = seqs.iter().copied().min().unwrap_or(0);
        let before = received.entry(&r.view_id).or_default();
        // Overtaken by a record received at least 30 s earlier.
        overtaken += usize::from(before.iter().any(|&(recv, high)| high > lowest && r.recv_ms - recv >= 30_000));
        before.push((r.recv_ms, seqs.iter().copied().max().unwrap_or(0)));
        shuffled += usize::from(seqs.windows(2).any(|w| w[0] > w[1]));
        duplicates += seqs.iter().filter(|&&s| !seen.insert((r.view_id.clone(), s))).count();
        let offset = *offsets.entry(&r.view_id).or_insert(r.recv_ms - r.sent_at);
        skewed += usize::from((r.recv_ms - r.sent_at).abs() > 10_000);
        // How long after its newest event (placed by the view's offset) the record arrived: the SDK's
        // flush period is 10 s, an overtaken beacon comes 30-120 s after the next flush; the late knob
        // adds 2 min.
        let newest = r.events.iter().filter_map(|e| e["ts"].as_i64()).max().unwrap_or(0) + offset;
        late += usize::from(r.recv_ms - newest > 31_000);
    }
    assert!(
        duplicates > 0 && shuffled > 0 && skewed > 0 && late > 0 && overtaken > 0,
        "duplicates {duplicates}, shuffled {shuffled}, skewed {skewed}, late {late}, overtaken by 30 s or more {overtaken}"
    );
}

#[test]
fn loadgen_through_serve_equals_the_truth() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &["--ingest-key", KEY], &[]);
    let truth_path = dir.path().join("truth.json");
    let truth = loadgen(&q.url, "11", &truth_path);
    assert_parquet_equals_truth(dir.path(), &truth);
    assert_knobs_took_effect(&read_local_log(dir.path()));
}

/// A collector that rate-limits the loadgen's address: the loadgen retries the 429s with backoff (and
/// paces itself with `--rate-limit`) until every beacon is acknowledged, and the views still equal the
/// truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_retries_429_until_everything_is_delivered() {
    let dir = tempfile::tempdir().expect("tmp");
    let limits = [("QOEFLOW_INGEST__PER_IP_RPS", "40"), ("QOEFLOW_INGEST__PER_IP_BURST", "10")];
    let q = Qoeflow::serve(dir.path(), &["--ingest-key", KEY], &limits);
    let (truth, stdout) = run_loadgen(&q.url, &dir.path().join("truth.json"), &[
        "--viewers", "300", "--duration", "12s", "--ramp-up", "3s", "--seed", "5", "--rate-limit", "3000",
    ]);
    let throttled: u64 = stdout
        .split(" throttled)")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throttled count in {stdout}"));
    assert!(throttled > 0, "the collector's rate limit answered 429: {stdout}");
    let answered_429 = metric(&q.url, "qoeflow_ingest_requests_total{status=\"429\"}").await;
    assert!(answered_429 > 0.0, "the collector counted its 429s");
    let want = truth_sums(&truth);
    eventually_equal("views after 429 retries (Parquet)", &want, Duration::from_secs(60), || {
        as_i64_map(&qoeflow_query(dir.path(), &views_sql("views", |c| format!("CAST({c} AS BIGINT)"))))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_through_kinesis_into_parquet_and_clickhouse_equals_the_truth() {
    const STREAM: &str = "loadgen";
    let dir = tempfile::tempdir().expect("tmp");
    let emu = Emulator::start();
    create_stream(&emu.client().await, STREAM, 2).await;
    let ch = ClickHouse::start(&dir.path().join("clickhouse"));
    let data = dir.path().join("data");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &["--ingest-key", KEY], &[]);
    let mut env = AWS_ENV.to_vec();
    env.push(("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "500"));
    // Far fewer views in memory than the loadgen opens: the others live in the state store only and
    // are read back when their next beacon comes, which must change nothing.
    env.push(("QOEFLOW_PIPELINE__MAX_CACHED_VIEWS", "100"));
    let data_arg = data.to_str().expect("utf-8 path");
    let mut pipeline = Qoeflow::spawn_until(
        &["pipeline", "--kinesis-stream", STREAM, "--kinesis-endpoint", &emu.endpoint, "--data-dir", data_arg, "--clickhouse-url", &ch.url()],
        &env,
        "pipeline: resuming from checkpoint",
    );
    let truth_path = dir.path().join("truth.json");
    let target = collector.url.clone();
    let truth = tokio::task::spawn_blocking(move || loadgen(&target, "12", &truth_path)).await.expect("loadgen");
    let (data2, truth2) = (data.clone(), truth.clone());
    tokio::task::spawn_blocking(move || assert_parquet_equals_truth(&data2, &truth2)).await.expect("parquet");

    // ClickHouse (read with FINAL): the same totals.
    assert_clickhouse_equals_truth(&ch, &truth);
    pipeline.stop();
    assert!(cold_loads(&data) > 0, "open views were read back from the state store");
    let records: Vec<schemas::Record> = read_stream(&emu.client().await, STREAM).await.into_iter().map(|r| r.record).collect();
    assert_knobs_took_effect(&records);
}

/// Open views the pipeline read back from its state stores (the progress files' `cold_loads`).
fn cold_loads(data: &Path) -> u64 {
    let dir = std::fs::read_dir(data.join("pipeline")).expect("the pipeline's state directory");
    let mut loads = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") && name.ends_with(".json") {
            let progress: Value = serde_json::from_slice(&std::fs::read(entry.path()).expect("progress file")).expect("progress JSON");
            loads += progress["stats"]["cold_loads"].as_u64().unwrap_or_else(|| panic!("no stats.cold_loads in {name}: {progress}"));
        }
    }
    loads
}
