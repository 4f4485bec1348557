//! `qoeflow serve` end to end on the local log: beacons → Parquet, with totals equal to the batch
//! reference computed from what the log holds; and kill -9 mid-stream, restarted, still exactly once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::parquet::*;
use common::*;
use pipeline::{Dim, reference};
use serde_json::{Value, json};

const MEASURES: [&str; 20] = [
    "attempt", "started", "startup_ms", "vsf", "ebvs", "playback_failure", "play_ms", "stall_count", "stall_ms",
    "seek_stall_ms", "bitrate_ms", "switches_up", "switches_down", "segments_hit", "segments_miss",
    "segments_unknown", "bytes_hit", "bytes_miss", "errors", "fatal_errors",
];

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A view's events as a few beacons: varied by `v` so every rule is exercised across views.
fn view_beacons(view: &str, v: u64, t0: i64) -> Vec<Value> {
    let mut events = Vec::new();
    let mut ts = t0;
    let mut push = |kind: &str, dt: i64, extra: Value| {
        ts += dt;
        let mut e = json!({"view_id": view, "seq": events.len(), "type": kind, "ts": ts, "playhead_ms": 0});
        if let (Some(m), Value::Object(x)) = (e.as_object_mut(), extra) {
            m.extend(x);
        }
        events.push(e);
    };
    let cdn = ["fastly", "akamai", "cloudfront"][v as usize % 3];
    let cache = ["hit", "miss", "unknown"][v as usize % 3];
    push("viewstart", 0, json!({"cdn": cdn, "stream_type": "vod", "player_name": "hls.js"}));
    push("playrequest", 10, json!({}));
    push("quality_change", 5, json!({"bitrate_kbps": 800 + 400 * (v % 4)}));
    push("segment", 100, json!({"bytes": 100_000 + v, "cache": cache}));
    match v % 5 {
        0 => push("error", 300 + 37 * (v as i64 % 7), json!({"fatal": true, "code": "E"})), // VSF
        1 => push("viewend", 400, json!({})),                                             // EBVS
        _ => {
            push("playing", 200 + 53 * (v as i64 % 11), json!({}));
            push("heartbeat", 2_000, json!({}));
            push("stall_start", 500, json!({}));
            push("stall_end", 300 + (v as i64 % 5) * 100, json!({}));
            push("quality_change", 1_000, json!({"bitrate_kbps": 2500}));
            push("seeking", 700, json!({}));
            push("stall_start", 50, json!({}));
            push("playing", 400, json!({}));
            push("segment", 100, json!({"bytes": 50_000, "cache": "hit"}));
            if v % 5 == 4 {
                push("error", 900, json!({"fatal": true}));
            } else {
                push("pause", 900, json!({}));
            }
        }
    }
    if v % 5 != 1 {
        push("viewend", 300, json!({}));
    }
    events
        .chunks(4)
        .map(|c| json!({"sent_at": ts + 50, "events": c}))
        .collect()
}

/// Posts until 2xx, like an SDK retrying through a restart (asking `url` for the current address each
/// try). Returns false if `stop` was raised first.
async fn post_until_ok(client: &reqwest::Client, url: impl Fn() -> String, body: &Value, stop: &AtomicBool) -> bool {
    loop {
        if let Ok(r) = client.post(url()).json(body).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the `views` table holds `n` rows (the pipeline caught up).
fn wait_for_views(dir: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = num_rows(&read_table(dir, "views"));
        if got >= n {
            assert_eq!(got, n, "more view rows than views");
            return;
        }
        assert!(Instant::now() < deadline, "only {got} of {n} views in Parquet after {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The dataset equals the batch reference computed from the log's records.
fn assert_matches_reference(dir: &Path) {
    let records = read_local_log(dir);
    let dims = Dim::DEFAULT.to_vec();
    let truth = reference::compute(&records, 10_000, &dims);
    let views = read_table(dir, "views");
    let got = view_measures(&views, &MEASURES);
    assert_eq!(got.len(), truth.views.len(), "one row per view");
    for (id, t) in &truth.views {
        let g = &got[id];
        let want: BTreeMap<&str, i64> = [
            ("attempt", t.attempt as i64), ("started", t.started as i64), ("startup_ms", t.startup_ms.unwrap_or(-1)),
            ("vsf", t.vsf as i64), ("ebvs", t.ebvs as i64), ("playback_failure", t.playback_failure as i64),
            ("play_ms", t.play_ms), ("stall_count", t.stall_count as i64), ("stall_ms", t.stall_ms),
            ("seek_stall_ms", t.seek_stall_ms), ("bitrate_ms", t.bitrate_ms), ("switches_up", t.switches_up as i64),
            ("switches_down", t.switches_down as i64), ("segments_hit", t.segments_hit as i64),
            ("segments_miss", t.segments_miss as i64), ("segments_unknown", t.segments_unknown as i64),
            ("bytes_hit", t.bytes_hit as i64), ("bytes_miss", t.bytes_miss as i64), ("errors", t.errors as i64),
            ("fatal_errors", t.fatal_errors as i64),
        ]
        .into_iter()
        .collect();
        let g: BTreeMap<&str, i64> = g.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(g, want, "view {id}");
    }
    let windows = read_table(dir, "qoe_window");
    let total = |f: fn(&pipeline::window::WindowDelta) -> i64| truth.windows.values().map(f).sum::<i64>();
    for (col, want) in [
        ("attempts", total(|d| d.attempts as i64)),
        ("starts", total(|d| d.starts as i64)),
        ("startup_ms_sum", total(|d| d.startup_ms_sum)),
        ("vsf", total(|d| d.vsf as i64)),
        ("ebvs", total(|d| d.ebvs as i64)),
        ("playback_failures", total(|d| d.playback_failures as i64)),
        ("play_ms", total(|d| d.play_ms)),
        ("stall_count", total(|d| d.stall_count as i64)),
        ("stall_ms", total(|d| d.stall_ms)),
        ("seek_stall_ms", total(|d| d.seek_stall_ms)),
        ("bitrate_ms", total(|d| d.bitrate_ms)),
        ("switches_up", total(|d| d.switches_up as i64)),
        ("switches_down", total(|d| d.switches_down as i64)),
        ("segments_hit", total(|d| d.segments_hit as i64)),
        ("segments_miss", total(|d| d.segments_miss as i64)),
        ("bytes_hit", total(|d| d.bytes_hit as i64)),
        ("bytes_total", total(|d| d.bytes_total as i64)),
        ("errors", total(|d| d.errors as i64)),
        ("fatal_errors", total(|d| d.fatal_errors as i64)),
        ("active_views", total(|d| d.active_views as i64)),
    ] {
        assert_eq!(sum(&windows, col), want, "qoe_window.{col}");
    }
    assert!(sum(&windows, "play_ms") > 0 && sum(&windows, "stall_ms") > 0, "the traffic exercised play and stalls");
    // Every accepted event appears once in `events`.
    let distinct: std::collections::HashSet<(String, u64)> = event_ids(&records).into_iter().collect();
    assert_eq!(num_rows(&read_table(dir, "events")), distinct.len(), "events table: each (view_id, seq) once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacons_reach_parquet_and_equal_the_reference() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let client = reqwest::Client::new();
    let stop = AtomicBool::new(false);
    let t0 = now_ms() - 60_000;
    for v in 0..40u64 {
        for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 777) {
            assert!(post_until_ok(&client, || q.beacon_url(), &b, &stop).await);
        }
    }
    wait_for_views(dir.path(), 40, Duration::from_secs(30));
    q.stop();
    assert_matches_reference(dir.path());
    let rejected = read_table(dir.path(), "rejected");
    assert_eq!(num_rows(&rejected), 0);

    // DuckDB reads the dataset as plain hive-partitioned Parquet, no qoeflow code involved.
    let root = dir.path().join("parquet");
    let sql = format!(
        "select (select count(*) from read_parquet('{r}/views/*/*/*.parquet', hive_partitioning=true)), \
                (select sum(play_ms) from read_parquet('{r}/qoe_window/*/*/*.parquet', hive_partitioning=true)), \
                (select count(distinct dt) from read_parquet('{r}/events/*/*/*.parquet', hive_partitioning=true)), \
                (select typeof(window_start) from read_parquet('{r}/qoe_window/*/*/*.parquet') limit 1)",
        r = root.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &format!("import duckdb; print('|'.join(map(str, duckdb.sql(\"{sql}\").fetchall()[0])))")])
        .output()
        .expect("python3 (deploy/test.sh installs duckdb)");
    assert!(out.status.success(), "duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let windows = read_table(dir.path(), "qoe_window");
    assert_eq!(got, format!("40|{}|1|TIMESTAMP WITH TIME ZONE", sum(&windows, "play_ms")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_replays_to_exactly_the_ground_truth() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100")];
    let q = Qoeflow::serve(dir.path(), &[], &env);
    let url = Arc::new(std::sync::Mutex::new(q.beacon_url()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = now_ms() - 120_000;
    let views = 480u64;
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            for v in (c..views).step_by(8) {
                for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 311) {
                    let current = || url.lock().expect("lock").clone();
                    if !post_until_ok(&client, current, &b, &stop).await {
                        return;
                    }
                    // Paced like players, so the load spans the kills below.
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        }));
    }
    // Kill -9 three times while beacons flow and epochs commit, restarting on the same data dir.
    let mut q = q;
    let mut resumed_epochs = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        q.kill9();
        q = Qoeflow::serve(dir.path(), &[], &env);
        *url.lock().expect("lock") = q.beacon_url();
        let line = q.wait_for_line("resuming from checkpoint", Duration::from_secs(20));
        let epoch: u64 = line.split("epoch=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|e| e.parse().ok()).expect("epoch");
        resumed_epochs.push(epoch);
    }
    assert!(!clients.iter().all(|c| c.is_finished()), "the load must still be running at the last kill");
    assert!(resumed_epochs.windows(2).all(|w| w[1] > w[0]) && resumed_epochs[0] > 0, "epochs committed between kills: {resumed_epochs:?}");
    for c in clients {
        tokio::time::timeout(Duration::from_secs(120), c).await.expect("clients finish").expect("client task");
    }
    wait_for_views(dir.path(), views as usize, Duration::from_secs(60));
    q.stop();
    assert_matches_reference(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_files_and_checkpoint_is_replayed_without_duplicates() {
    let dir = tempfile::tempdir().expect("tmp");
    let flush = ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100");
    let mut q = Qoeflow::serve(dir.path(), &[], &[flush, ("QOEFLOW_FAILPOINT", "pipeline_after_files:3")]);
    let url = Arc::new(std::sync::Mutex::new(q.beacon_url()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = now_ms() - 60_000;
    let (url2, stop2) = (url.clone(), stop.clone());
    let client_task = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        for v in 0..120u64 {
            for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 97) {
                let current = || url2.lock().expect("lock").clone();
                assert!(post_until_ok(&client, current, &b, &stop2).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    assert!(q.wait_exit(Duration::from_secs(30)), "the failpoint aborts the process after epoch 3's files");
    let leftovers = files(&dir.path().join("parquet")).iter().filter(|f| f.to_string_lossy().contains("e000000000003")).count();
    assert!(leftovers > 0, "epoch 3's files were written before the crash");
    let mut q = Qoeflow::serve(dir.path(), &[], &[flush]);
    *url.lock().expect("lock") = q.beacon_url();
    let removed = q.wait_for_line("removed files of an unfinished epoch", Duration::from_secs(20));
    assert!(removed.contains(&format!("removed={leftovers}")), "{removed}");
    tokio::time::timeout(Duration::from_secs(120), client_task).await.expect("clients finish").expect("client task");
    wait_for_views(dir.path(), 120, Duration::from_secs(60));
    q.stop();
    assert_matches_reference(dir.path());
}
