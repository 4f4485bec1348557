//! The abuse suite (RELIABILITY.md): each test tries one way a broken, hostile or absurd client, a crash
//! or a second process could take `qoeflow` down, stall it, exhaust it or make it lose what it
//! acknowledged, and checks the bound that stops it. Grouped as the hardening issue lists them:
//! unbounded work, poison records, unbounded state, connections, one owner per directory, row identity,
//! the query API, the client IP, and recovery after a write error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::clickhouse::ClickHouse;
use crate::common::parquet::*;
use crate::common::workload::*;
use crate::common::*;

const DAY: i64 = 86_400_000;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(q: &Qoeflow, body: &Value) -> (u16, Value) {
    let r = http().post(q.beacon_url()).json(body).send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Posts `n` ordinary views (the workload's traces) and waits until the pipeline has written them: the
/// proof that whatever came before did not stall it.
async fn still_processes(q: &Qoeflow, dir: &std::path::Path, views_before: usize, n: u64) {
    post_views(q, n, now_ms() - 60_000, 500).await;
    wait_for_views(dir, views_before + n as usize, Duration::from_secs(60));
}

fn view_rows(dir: &std::path::Path) -> Vec<(String, String, i64)> {
    let views = read_table(dir, "views");
    let ids = strings(&views, "view_id");
    let reasons = strings(&views, "end_reason");
    let measures = view_measures(&views, &["play_ms"]);
    ids.into_iter().zip(reasons).map(|(id, r)| (id.clone(), r, measures[&id]["play_ms"])).collect()
}

// ---------------------------------------------------------------------------------------------------
// Unbounded work per event
// ---------------------------------------------------------------------------------------------------

/// The issue's example: a `pause` dated 2099 after a `playing` now. The collector refuses the event whose
/// skew-corrected time is far in the future (200 naming `ts`, dead-lettered), keeps the other, and the
/// pipeline goes on in bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_work_an_event_dated_2099_is_rejected_and_serve_stays_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let n = now_ms();
    let body = json!({"sent_at": n, "events": [
        {"view_id": "b", "seq": 0, "type": "playing", "ts": n},
        {"view_id": "b", "seq": 1, "type": "pause", "ts": 4_102_444_799_999i64},
    ]});
    let (status, answer) = post(&q, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    let reason = answer["rejected"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("ts:") && reason.contains("future"), "the reason names the field: {reason}");
    still_processes(&q, dir.path(), 0, 3).await;
    assert!(q.mem_kib("VmHWM") < 400 * 1024, "serve peaked at {} KiB", q.mem_kib("VmHWM"));
    q.stop();
    let rejected = read_table(dir.path(), "rejected");
    assert!(strings(&rejected, "tag").contains(&"future_ts".to_owned()), "dead-lettered with its tag");
}

/// A view whose next event comes more than the inactivity timeout later (in the client's own clock, so
/// the collector cannot tell) ended at its previous event: the gap adds no play time and no windows, the
/// late event is kept in `events` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_work_a_gap_longer_than_the_inactivity_timeout_ends_the_view() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let a = now_ms() - 3 * 3_600_000;
    let later = a + 2 * 3_600_000;
    let body = json!({"sent_at": now_ms(), "events": [
        {"view_id": "gap", "seq": 0, "type": "viewstart", "ts": a, "cdn": "x"},
        {"view_id": "gap", "seq": 1, "type": "playrequest", "ts": a + 10},
        {"view_id": "gap", "seq": 2, "type": "playing", "ts": a + 500},
        {"view_id": "gap", "seq": 3, "type": "heartbeat", "ts": later},
        {"view_id": "gap", "seq": 4, "type": "viewend", "ts": later + 10},
    ]});
    assert_eq!(post(&q, &body).await.0, 204);
    wait_for_views(dir.path(), 1, Duration::from_secs(30));
    q.stop();
    assert_eq!(view_rows(dir.path()), vec![("gap".to_owned(), "timeout".to_owned(), 0)], "ended at `playing`, nothing across the gap");
    let windows = read_table(dir.path(), "qoe_window");
    assert_eq!(sum(&windows, "play_ms"), 0);
    assert!(num_rows(&windows) <= 2, "{} window rows for one view", num_rows(&windows));
    assert_eq!(num_rows(&read_table(dir.path(), "events")), 5, "every event is kept in `events`");
}

/// One beacon with events on 101 different days: one `events` file per day at most, and ClickHouse takes
/// it (an INSERT touching more than 100 partitions is refused by the server, which would stall the
/// pipeline for good); the pipeline goes on with the next views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_work_a_beacon_over_101_days_is_bounded_in_files_and_clickhouse_accepts_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = ClickHouse::start(ch_dir.path());
    let mut q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &ch.url()], &[]);
    let n = now_ms();
    let events: Vec<Value> = (0..101i64)
        .map(|k| json!({"view_id": "days", "seq": k, "type": if k == 0 { "playing" } else { "heartbeat" }, "ts": n - (100 - k) * DAY}))
        .collect();
    assert_eq!(post(&q, &json!({"sent_at": n, "events": events})).await.0, 204);
    still_processes(&q, dir.path(), 1, 3).await;
    ch.wait_for_views(4, Duration::from_secs(60));
    q.stop();
    assert_eq!(ch.scalar("SELECT count() FROM qoeflow.events FINAL WHERE view_id = 'days'"), 101);
    let files = files(&dir.path().join("parquet"));
    assert!(files.len() <= 101 + 20, "{} Parquet files", files.len());
    ch.assert_matches_parquet(dir.path());
}

// ---------------------------------------------------------------------------------------------------
// Poison records
// ---------------------------------------------------------------------------------------------------

/// A record whose processing fails every time (a panic, injected for the view `poison`) is retried a
/// bounded number of times, then quarantined: dead-lettered with the error, counted, and the pipeline
/// moves on to everything after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_a_record_that_fails_every_attempt_is_quarantined_and_the_pipeline_moves_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_FAILPOINT", "pipeline_panic_view:poison"), ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100")];
    let mut q = Qoeflow::serve(dir.path(), &[], &env);
    let n = now_ms();
    let poison = json!({"sent_at": n, "events": [{"view_id": "poison", "seq": 0, "type": "playrequest", "ts": n}]});
    assert_eq!(post(&q, &poison).await.0, 204);
    still_processes(&q, dir.path(), 0, 3).await;
    q.wait_for_line("quarantined", Duration::from_secs(10));
    assert_eq!(metric(&q.url, "qoeflow_pipeline_quarantined_records_total").await, 1.0);
    q.stop();
    let rejected = read_table(dir.path(), "rejected");
    assert_eq!(strings(&rejected, "tag"), vec!["quarantined".to_owned()]);
    let reason = &strings(&rejected, "reason")[0];
    assert!(reason.contains("log offset 0") && reason.contains("pipeline_panic_view"), "{reason}");
    assert!(strings(&rejected, "payload")[0].contains("poison"), "the record itself is kept");
    assert!(!view_rows(dir.path()).iter().any(|(id, _, _)| id == "poison"));
}

/// A pipeline that cannot commit (its ClickHouse is gone) makes `/readyz` answer 503 saying so, while the
/// collector still accepts beacons into the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_readyz_reports_a_stalled_pipeline() {
    let dir = tempfile::tempdir().expect("tmp");
    let dead = format!("http://127.0.0.1:{}", kinesis_free_port());
    let env = [("QOEFLOW_PIPELINE__STALL_AFTER_MS", "1000")];
    let q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &dead], &env);
    assert_eq!(post(&q, &beacon("stalled", 0, 3)).await.0, 204, "the collector still accepts");
    let why = not_ready(&q.url).await;
    assert!(why.contains("pipeline stalled") && why.contains("ClickHouse"), "{why}");
    assert_eq!(metric(&q.url, "qoeflow_pipeline_stalled").await, 1.0);
}

/// Polls `/readyz` until it answers 503 (within 30 s); returns why.
async fn not_ready(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http().get(format!("{url}/readyz")).send().await.expect("readyz");
        let (status, text) = (r.status().as_u16(), r.text().await.unwrap_or_default());
        if status == 503 {
            return text;
        }
        assert!(Instant::now() < deadline, "/readyz still says {status} {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `qoeflow pipeline --listen` serves the same readiness for a Kinesis worker: a worker that cannot
/// read its stream says it is stalled, and its metrics say so too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_readyz_of_a_kinesis_worker_reports_it_stalled() {
    let dir = tempfile::tempdir().expect("tmp");
    let dead = format!("http://127.0.0.1:{}", kinesis_free_port());
    let mut env = crate::common::kinesis::AWS_ENV.to_vec();
    env.push(("QOEFLOW_PIPELINE__STALL_AFTER_MS", "1000"));
    let path = dir.path().to_str().expect("path");
    let args = ["pipeline", "--kinesis-stream", "s", "--kinesis-endpoint", &dead, "--data-dir", path, "--listen", "127.0.0.1:0"];
    let worker = Qoeflow::spawn(&args, &env, None);
    assert_eq!(http().get(format!("{}/healthz", worker.url)).send().await.expect("healthz").status().as_u16(), 200);
    let why = not_ready(&worker.url).await;
    assert!(why.contains("pipeline stalled") && why.contains("ListShards"), "{why}");
    assert_eq!(metric(&worker.url, "qoeflow_pipeline_stalled").await, 1.0);
    assert!(metric(&worker.url, "qoeflow_pipeline_epoch_failures_total").await >= 2.0);
}

fn kinesis_free_port() -> u16 {
    crate::common::kinesis::free_port()
}

// ---------------------------------------------------------------------------------------------------
// Unbounded state
// ---------------------------------------------------------------------------------------------------

/// At `max_open_views` the views idle longest are ended (`evicted`), counted, and keep their measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_state_open_views_are_capped_and_the_oldest_idle_evicted() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_PIPELINE__MAX_OPEN_VIEWS", "50"), ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100")];
    let mut q = Qoeflow::serve(dir.path(), &[], &env);
    let n = now_ms() - 60_000;
    for v in 0..200i64 {
        // No viewend: without the cap every one of them would stay open for 30 minutes.
        let body = json!({"sent_at": n + v, "events": [
            {"view_id": format!("open-{v:03}"), "seq": 0, "type": "playrequest", "ts": n + v},
            {"view_id": format!("open-{v:03}"), "seq": 1, "type": "playing", "ts": n + v + 100},
        ]});
        assert_eq!(post(&q, &body).await.0, 204);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while num_rows(&read_table(dir.path(), "views")) < 150 {
        assert!(Instant::now() < deadline, "views were not evicted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&q.url, "qoeflow_pipeline_views_evicted_total").await >= 150.0);
    q.stop();
    let rows = view_rows(dir.path());
    assert!(rows.iter().all(|(_, reason, _)| reason == "evicted"), "{rows:?}");
    let mut evicted: Vec<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    evicted.sort();
    assert_eq!(evicted[0], "open-000", "the oldest went first");
    assert!(!evicted.contains(&"open-199"), "the newest stays open");
}

/// The binary allocates with jemalloc, built with the settings that keep memory per open view under
/// 1 KB (`.cargo/config.toml`, `service::memory`: freed pages handed back over 100 ms, not ten seconds),
/// and the flood below measures what they keep. An operator's `_RJEM_MALLOC_CONF` still wins.
/// (`stats_print` makes jemalloc print its settings when the process exits; a binary on another
/// allocator prints nothing, one built without the settings prints jemalloc's defaults.)
#[test]
fn unbounded_state_the_binary_allocates_with_jemalloc_built_to_return_pages_over_100_ms_unless_overridden() {
    let settings = |conf: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qoeflow"))
            .arg("--version")
            .env("_RJEM_MALLOC_CONF", conf)
            .output()
            .expect("run qoeflow --version");
        assert!(out.status.success(), "qoeflow --version: {}", String::from_utf8_lossy(&out.stderr));
        let stats = String::from_utf8_lossy(&out.stderr).into_owned();
        let value = |prefix: &str| stats.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned));
        let decay = value("opt.dirty_decay_ms: ").map(|v| v.split(' ').next().unwrap_or("").to_owned());
        (value("config.malloc_conf: "), decay)
    };
    let built_in = Some(r#""dirty_decay_ms:100,muzzy_decay_ms:0""#.to_owned());
    assert_eq!(settings("stats_print:true"), (built_in.clone(), Some("100".into())), "jemalloc, with the settings built in");
    assert_eq!(settings("stats_print:true,dirty_decay_ms:5000"), (built_in, Some("5000".into())), "the operator's setting wins");
}

/// A flood of beacons, each with 1000 fresh `view_id`s: memory stays bounded by the caps. Measured as
/// growth: after 30,000 fresh views and after 90,000 more, the peak is the same (without the caps each
/// view stays open for 30 minutes and the peak grows with every beacon). Every cap is set low enough to
/// be reached within the first 30,000 views, the bounded buffers too: the state store's page cache
/// (4 MiB) and the open hour's compaction merges (2 MiB of input; with the defaults, 32 MiB and 8 MiB,
/// they were still filling after 30,000 views, and the peak grew 58 MB on a loaded machine, 86 MB once
/// in the suite, against 15 MB with these). The QoE alert evaluator is off:
/// its queries' memory has bounds of its own (the query pool, DataFusion's 50 MiB footer cache, which
/// fills as the flood's files multiply), and this test is about the pipeline's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_state_memory_stays_bounded_under_a_flood_of_fresh_view_ids() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [
        ("QOEFLOW_PIPELINE__MAX_OPEN_VIEWS", "5000"),
        ("QOEFLOW_PIPELINE__MAX_ENDED_VIEWS", "5000"),
        ("QOEFLOW_PIPELINE__MAX_RECORDS_PER_EPOCH", "5000"),
        ("QOEFLOW_PIPELINE__STATE_CACHE_MB", "4"),
        ("QOEFLOW_PIPELINE__COMPACT_OPEN_TARGET_BYTES", "2097152"),
        ("QOEFLOW_ALERTS__ENABLED", "false"),
    ];
    let q = Qoeflow::serve(dir.path(), &[], &env);
    let n = now_ms() - 60_000;
    let client = http();
    let flood = async |beacons: std::ops::Range<i64>| {
        for b in beacons.clone() {
            let events: Vec<Value> = (0..1000)
                .map(|i| json!({"view_id": format!("flood-{b}-{i}"), "seq": 0, "type": "playrequest", "ts": n + b}))
                .collect();
            let body = gzip(json!({"sent_at": n + b, "events": events}).to_string().as_bytes());
            let r = client.post(q.beacon_url()).header("content-encoding", "gzip").body(body).send().await.expect("post");
            assert_eq!(r.status().as_u16(), 204);
        }
        // Wait for the pipeline to have read everything (all but the 5,000 open views ended), for as
        // long as it makes progress: a debug build on a loaded machine takes minutes, a stall fails.
        let want = (beacons.end * 1000 - 5000) as f64;
        let (mut seen, mut progressed) = (0.0, Instant::now());
        loop {
            let evicted = metric(&q.url, "qoeflow_pipeline_views_evicted_total").await;
            if evicted >= want {
                break;
            }
            if evicted > seen {
                (seen, progressed) = (evicted, Instant::now());
            }
            assert!(progressed.elapsed() < Duration::from_secs(60), "the pipeline stalled in the flood at {evicted} of {want} views ended");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        q.mem_kib("VmHWM")
    };
    let first = flood(0..30).await;
    let second = flood(30..120).await;
    eprintln!("serve peaked at {first} KiB after 30,000 fresh views and at {second} KiB after 120,000");
    assert!(second < first + 64 * 1024, "the peak grew from {first} to {second} KiB with 90,000 more views");
    assert!(metric(&q.url, "qoeflow_pipeline_open_views").await <= 5000.0);
}

/// A view that skips every other `seq` keeps a bounded list of gaps (the oldest are forgotten, counted),
/// so its state and the work per event stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_state_a_view_skipping_every_other_seq_keeps_bounded_gaps() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_PIPELINE__REORDER_WAIT_MS", "0"), ("QOEFLOW_PIPELINE__MAX_GAPS_PER_VIEW", "100")];
    let mut q = Qoeflow::serve(dir.path(), &[], &env);
    let n = now_ms() - 60_000;
    for b in 0..20i64 {
        let events: Vec<Value> = (0..1000i64)
            .map(|i| {
                let seq = 2 * (b * 1000 + i);
                json!({"view_id": "skipper", "seq": seq, "type": if seq == 0 { "playing" } else { "heartbeat" }, "ts": n + seq})
            })
            .collect();
        assert_eq!(post(&q, &json!({"sent_at": n + 50_000, "events": events})).await.0, 204);
    }
    still_processes(&q, dir.path(), 0, 2).await;
    q.stop();
    let checkpoint = std::fs::read_to_string(dir.path().join("pipeline/checkpoint-local.json")).expect("checkpoint");
    let state: Value = serde_json::from_str(&checkpoint).expect("json");
    // The one open view ("skipper") keeps the most gap ranges.
    let skipped = state["max_skipped_ranges"].as_u64().expect("max_skipped_ranges");
    assert!((1..=100).contains(&skipped), "{skipped} gap ranges kept for one view");
}

// ---------------------------------------------------------------------------------------------------
// Connections and request bodies
// ---------------------------------------------------------------------------------------------------

fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Idle and slow connections are closed after their timeouts, and connections beyond the cap are
/// answered 503 at once, so a few thousand idle sockets cannot exhaust the file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_or_slow_ones_closed() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [
        ("QOEFLOW_INGEST__MAX_CONNECTIONS", "40"),
        ("QOEFLOW_INGEST__HEADER_READ_TIMEOUT_MS", "2000"),
        ("QOEFLOW_INGEST__IDLE_TIMEOUT_MS", "3000"),
    ];
    // 256 file descriptors: without the cap, 300 idle sockets would leave none for real clients.
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().expect("path")];
    let q = Qoeflow::spawn(&args, &env, Some("ulimit -n 256"));
    let open = |n: usize| (0..n).map(|_| TcpStream::connect(&q.addr).expect("connect")).collect::<Vec<_>>();

    // A slow client that never finishes its headers is cut off after the header timeout.
    let mut slow = TcpStream::connect(&q.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(slow, "POST /v1/beacon HTTP/1.1\r\nHost: x\r\n").expect("write");
    let started = Instant::now();
    let _ = read_all(&mut slow);
    let held = started.elapsed();
    assert!(held < Duration::from_millis(4000), "a half-sent head held the connection {held:?}");

    // A kept-alive connection that goes quiet is closed after the idle timeout (not the header timeout).
    let mut kept = TcpStream::connect(&q.addr).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let _ = read_all(&mut kept);
    let idle = started.elapsed();
    assert!(idle >= Duration::from_millis(2500) && idle < Duration::from_secs(8), "idle connection closed after {idle:?}");

    // Hundreds of idle sockets: those past the cap get 503 and are closed; real clients are served again
    // once the idle ones time out.
    let mut idle = open(300);
    let mut refused = 0;
    for s in idle.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        if read_all(s).starts_with("HTTP/1.1 503") {
            refused += 1;
        }
    }
    assert!(refused >= 250, "{refused} of 260 connections over the cap were answered 503");
    std::thread::sleep(Duration::from_millis(2500));
    let r = http().get(format!("{}/healthz", q.url)).send().await.expect("served after the flood");
    assert_eq!(r.status().as_u16(), 200);
    drop(idle);
    assert!(metric(&q.url, "qoeflow_ingest_connections_refused_total").await >= 250.0);
}

/// A request whose body never comes cannot hold a connection: the SQL endpoint checks its token before
/// reading the body (401 at once without it), and reads a body only within its time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_request_body_that_never_comes_cannot_hold_a_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &["--admin-token", "t"], &[]);
    let ask = |auth: &str| {
        let mut s = TcpStream::connect(&q.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        write!(s, "POST /api/v1/sql HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100000\r\n\r\n{{\"sql\"").expect("write");
        let started = Instant::now();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed())
    };
    let (answer, waited) = ask("");
    assert!(answer.starts_with("HTTP/1.1 401") && waited < Duration::from_secs(2), "{waited:?}: {answer}");
    let (answer, waited) = ask("Authorization: Bearer t\r\n");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(waited < Duration::from_secs(15), "the body's time limit held the connection {waited:?}");
}

/// 10 MiB of `[0,0,0,…]` is a few KiB of gzip: it is refused by counting JSON values while parsing, with
/// a clear 413, and concurrent copies leave the collector's memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_body_of_millions_of_json_values_is_refused_before_a_tree_is_built() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    let mut zeros = String::from(r#"{"sent_at":1700000000000,"events":[{"view_id":"z","seq":0,"type":"heartbeat","ts":1700000000000,"junk":["#);
    while zeros.len() < (10 << 20) - 64 {
        zeros.push_str("0,");
    }
    zeros.push_str("0]}]}");
    let body = gzip(zeros.as_bytes());
    assert!(body.len() < 200 << 10, "{} bytes of gzip", body.len());
    let before = q.mem_kib("VmRSS");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (url, body) = (q.beacon_url(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = http().post(url).header("content-encoding", "gzip").body(body).send().await.expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    for t in tasks {
        let (status, answer) = t.await.expect("task");
        if status == 503 {
            continue; // the shared memory budget refused it first: also bounded
        }
        assert_eq!(status, 413, "{answer}");
        assert_eq!(answer["error"], "too_many_values", "{answer}");
        assert!(answer["message"].as_str().unwrap_or_default().contains("JSON values"), "{answer}");
    }
    let grown = q.mem_kib("VmHWM").saturating_sub(before);
    assert!(grown < 600 * 1024, "16 bodies of 5 million values grew the collector by {grown} KiB");
    assert_eq!(post(&q, &beacon("after", 0, 2)).await.0, 204);
}

// ---------------------------------------------------------------------------------------------------
// One owner per data directory
// ---------------------------------------------------------------------------------------------------

fn second_instance(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qoeflow"));
    cmd.args(args).env("QOEFLOW_LOG_LEVEL", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
            assert!(!status.success(), "the second instance exited successfully: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second instance on the same directory kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A second `serve` on the same data directory, or a second worker on the same checkpoint, refuses to
/// start with a message naming the directory, instead of writing over acknowledged records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_a_second_process_on_the_same_directory_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().to_str().expect("path");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    assert_eq!(post(&q, &beacon("first", 0, 3)).await.0, 204);
    let err = second_instance(&["serve", "--listen", "127.0.0.1:0", "--data-dir", path], &[]);
    assert!(err.contains("in use by another process") && err.contains(path), "{err}");
    q.stop();
    assert_eq!(event_ids(&read_local_log(dir.path())).len(), 3, "the first instance's records are intact");

    // Two pipeline workers with the same index on one directory: the second refuses. (The Kinesis
    // endpoint is dead: the first never resumes, but the lock comes before any call to it.)
    let dead = format!("http://127.0.0.1:{}", kinesis_free_port());
    let mut env = crate::common::kinesis::AWS_ENV.to_vec();
    env.push(("QOEFLOW_LOG_LEVEL", "info"));
    let args = ["pipeline", "--kinesis-stream", "s", "--kinesis-endpoint", &dead, "--data-dir", path];
    let _first = Qoeflow::spawn_until(&args, &env, "pipeline: checkpoint locked");
    let err = second_instance(&args, &env);
    assert!(err.contains("in use by another process"), "{err}");
    // Another worker index on the same directory is a different checkpoint: it may run beside it.
    let mut other = args.to_vec();
    other.extend(["--worker-index", "1", "--worker-count", "2"]);
    let _second = Qoeflow::spawn_until(&other, &env, "pipeline: checkpoint locked");
}

// ---------------------------------------------------------------------------------------------------
// Row identity
// ---------------------------------------------------------------------------------------------------

/// Two instances (or one restarted on a new data directory) writing the same ClickHouse never share a
/// row identity (`source`, `epoch`, `row`), so `FINAL` keeps the rows of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_identity_two_instances_never_share_clickhouse_rows() {
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = ClickHouse::start(ch_dir.path());
    let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    for (dir, prefix) in [(&a, "a"), (&b, "b")] {
        let mut q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &ch.url()], &[]);
        // The same traffic shape, so both produce epoch 1, rows 0.. of the same tables.
        let client = http();
        let stop = AtomicBool::new(false);
        for v in 0..5u64 {
            for body in view_beacons(&format!("{prefix}-{v}"), v, now_ms() - 60_000) {
                assert!(post_until_ok(&client, || q.beacon_url(), &body, &stop).await);
            }
        }
        wait_for_views(dir.path(), 5, Duration::from_secs(30));
        q.stop();
    }
    ch.wait_for_views(10, Duration::from_secs(30));
    let sources = ch.query("SELECT DISTINCT source FROM qoeflow.qoe_window ORDER BY source");
    assert_eq!(sources.lines().count(), 2, "two instances, two identities: {sources}");
    let parquet_windows = num_rows(&read_table(a.path(), "qoe_window")) + num_rows(&read_table(b.path(), "qoe_window"));
    assert_eq!(ch.scalar("SELECT count() FROM qoeflow.qoe_window FINAL") as usize, parquet_windows, "FINAL dropped real rows");
    // The identity survives a restart on the same directory (replays must rewrite the same rows).
    let id = std::fs::read_to_string(a.path().join("instance-id")).expect("persisted instance id");
    let q = Qoeflow::serve(a.path(), &[], &[]);
    drop(q);
    assert_eq!(std::fs::read_to_string(a.path().join("instance-id")).expect("id"), id);
}

// ---------------------------------------------------------------------------------------------------
// The query API
// ---------------------------------------------------------------------------------------------------

/// Out-of-range times and steps answer 400 naming the parameter, never an overflow or a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_out_of_range_parameters_answer_400() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    for (path, param) in [
        ("/api/v1/metrics?from=-9000000000000000000", "from"),
        ("/api/v1/summary?from=-9223372036854775808&to=9223372036854775807", "from"),
        ("/api/v1/metrics?from=0&to=9223372036854775807", "to"),
        ("/api/v1/metrics?from=now-99999999999999d", "from"),
        ("/api/v1/metrics?from=now-1h&step=9999999999999999d", "step"),
        ("/api/v1/breakdown?dimension=cdn&from=-1&to=5", "from"),
    ] {
        let r = http().get(format!("{}{path}", q.url)).send().await.expect("get");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["message"].as_str().unwrap_or_default().contains(&format!("`{param}`")), "{path}: {body}");
    }
    assert_eq!(http().get(format!("{}/healthz", q.url)).send().await.expect("get").status().as_u16(), 200);
}

/// Queries run under a memory limit: one that needs more fails cleanly and the process stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_a_query_over_the_memory_limit_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_QUERY__MEMORY_LIMIT_BYTES", "16777216")];
    let q = Qoeflow::serve(dir.path(), &["--admin-token", "t"], &env);
    let r = http()
        .post(format!("{}/api/v1/sql", q.url))
        .bearer_auth("t")
        .json(&json!({"sql": "SELECT value % 20000000 AS k, count(*) FROM generate_series(1, 20000000) GROUP BY k"}))
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!((status, body["error"].as_str()), (400, Some("query_resources_exhausted")), "{body}");
    assert!(q.mem_kib("VmHWM") < 500 * 1024, "the query grew serve to {} KiB", q.mem_kib("VmHWM"));
    assert_eq!(http().get(format!("{}/api/v1/summary", q.url)).send().await.expect("get").status().as_u16(), 200);
}

/// `--api-listen` serves the metrics API and the dashboard on their own listener, and `--api-token`
/// protects them; the beacon listener no longer exposes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_on_its_own_listener_with_a_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &["--api-listen", "127.0.0.1:0", "--api-token", "tok"], &[]);
    let api = q.wait_for_line("metrics API listening on http://", Duration::from_secs(10));
    let api = format!("http://{}", api.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).expect("address"));
    assert_ne!(api, q.url);
    assert_eq!(post(&q, &beacon("v", 0, 2)).await.0, 204, "beacons on the public listener");
    let status = |url: String, token: Option<&'static str>| async move {
        let mut req = http().get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("get").status().as_u16()
    };
    assert_eq!(status(format!("{}/api/v1/summary", q.url), Some("tok")).await, 404, "no API on the beacon listener");
    assert_eq!(status(format!("{}/", q.url), None).await, 404, "no dashboard on the beacon listener");
    assert_eq!(status(format!("{api}/api/v1/summary"), None).await, 401);
    assert_eq!(status(format!("{api}/api/v1/summary"), Some("wrong")).await, 401);
    assert_eq!(status(format!("{api}/api/v1/summary"), Some("tok")).await, 200);
    assert_eq!(status(format!("{api}/"), None).await, 200, "the dashboard page itself loads; its API calls carry the token");
    assert_eq!(status(format!("{api}/healthz"), None).await, 200);
}

// ---------------------------------------------------------------------------------------------------
// Client IP
// ---------------------------------------------------------------------------------------------------

/// `X-Forwarded-For` counts only from a configured proxy, right-most untrusted hop first; IPv6 clients
/// are rate limited per /64; a 6to4 address does not carry its IPv4 past anonymisation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_forwarded_for_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("q.toml");
    std::fs::write(&config, "[ingest]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\nper_ip_rps = 1\nper_ip_burst = 1\n").expect("write");
    let mut q = Qoeflow::serve(dir.path(), &["--config", config.to_str().expect("path")], &[]);
    let send = |xff: &'static str, view: &'static str| {
        let url = q.beacon_url();
        async move {
            let r = http().post(url).header("x-forwarded-for", xff).json(&beacon(view, 0, 1)).send().await.expect("post");
            r.status().as_u16()
        }
    };
    // The client claims 6.6.6.6; our proxy 10.1.2.3 saw 198.51.100.7.
    assert_eq!(send("6.6.6.6, 198.51.100.7, 10.1.2.3", "spoofed").await, 204);
    // Two addresses of one /64 share a limit; another /64 has its own.
    assert_eq!(send("2001:db8:1:2::1", "v6-a").await, 204);
    assert_eq!(send("2001:db8:1:2::ffff", "v6-b").await, 429, "same /64, same bucket");
    assert_eq!(send("2001:db8:1:3::1", "v6-c").await, 204);
    // 6to4: 2002:cb00:7101::/48 embeds 203.0.113.1.
    assert_eq!(send("2002:cb00:7101:7:8::9", "6to4").await, 204);
    // Bytes that are not text in the client's part of the header do not cost the proxy's hop.
    let garbage = reqwest::header::HeaderValue::from_bytes(b"\x80\xff, 198.51.100.9").expect("header");
    let r = http().post(q.beacon_url()).header("x-forwarded-for", garbage).json(&beacon("binary", 0, 1)).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 204);
    q.stop();
    let ips: std::collections::BTreeMap<String, String> = read_local_log(dir.path())
        .into_iter()
        .filter_map(|r| match r {
            schemas::Record::Events(e) => Some((e.view_id, e.client.ip.unwrap_or_default())),
            schemas::Record::Rejected(_) => None,
        })
        .collect();
    assert_eq!(ips["spoofed"], "198.51.100.0", "the right-most untrusted hop, anonymised");
    assert_eq!(ips["v6-a"], "2001:db8:1::");
    let six_to_four = &ips["6to4"];
    assert!(!six_to_four.contains("7101") && six_to_four.starts_with("2002:cb00:71"), "{six_to_four}");
    assert_eq!(ips["binary"], "198.51.100.0", "the proxy's hop survives garbage left of it");

    // Without trusted proxies the header is ignored: the socket address counts.
    let dir2 = tempfile::tempdir().expect("tmp");
    let mut q2 = Qoeflow::serve(dir2.path(), &[], &[]);
    let r = http().post(q2.beacon_url()).header("x-forwarded-for", "6.6.6.6").json(&beacon("direct", 0, 1)).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 204);
    q2.stop();
    let Some(schemas::Record::Events(e)) = read_local_log(dir2.path()).into_iter().next() else { panic!("one record") };
    assert_eq!(e.client.ip.as_deref(), Some("127.0.0.0"));
}

// ---------------------------------------------------------------------------------------------------
// Recovery after a write error
// ---------------------------------------------------------------------------------------------------

/// After a failed group commit the writer truncates the bytes it could not make durable and writes the
/// next records where they were. A reader that had already buffered those rolled-back bytes (valid
/// frames, with the same offsets) must return the records acknowledged later, never the rolled-back ones.
#[tokio::test]
async fn recovery_a_reader_never_returns_rolled_back_bytes_after_a_write_error() {
    use locallog::{LocalLog, LogConfig};
    let dir = tempfile::tempdir().expect("tmp");
    let log = LocalLog::open(LogConfig::new(dir.path())).expect("open");
    log.append(vec![bytes::Bytes::from_static(b"acked-0"), bytes::Bytes::from_static(b"acked-1")]).await.expect("append");
    let mut reader = log.reader(0).expect("reader");
    // What a group commit that failed at its fsync leaves behind: a whole, checksummed frame for
    // offset 2 past the durable end (the writer cuts it off before its next write).
    let segment = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("segment");
    let payload = b"rolled-back";
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&2u64.to_le_bytes());
    crc.update(payload);
    frame.extend_from_slice(&crc.finalize().to_le_bytes());
    frame.extend_from_slice(&2u64.to_le_bytes());
    frame.extend_from_slice(payload);
    // Right after the two durable frames (16-byte headers), over whatever the writer left there.
    let durable_len = 2 * (16 + b"acked-0".len()) as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&segment).expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &frame, durable_len).expect("write");
    let first = reader.read_batch(100, log.durable_end()).expect("read");
    assert_eq!(first.len(), 2);
    // A reader opened now, skipping to the durable end, has read the rolled-back frame ahead too.
    let mut opened = log.reader(2).expect("reader at the durable end");
    // The writer writes the next acknowledged record at the durable length, over the rolled-back frame.
    assert_eq!(log.append(vec![bytes::Bytes::from_static(b"acked-2")]).await.expect("append"), 2..3);
    for r in [&mut reader, &mut opened] {
        let next = r.read_batch(100, log.durable_end()).expect("read");
        assert_eq!(next.iter().map(|e| e.data.as_ref()).collect::<Vec<_>>(), vec![b"acked-2".as_ref()]);
    }
}
