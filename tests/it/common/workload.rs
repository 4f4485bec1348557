//! A realistic workload with a known answer: view traces exercising every rule, a client that retries
//! like an SDK, and the comparison of the dataset with the batch reference computed from the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pipeline::{Dim, reference};
use serde_json::{Value, json};

use super::parquet::*;
use super::{event_ids, read_local_log};

pub const MEASURES: [&str; 20] = [
    "attempt", "started", "startup_ms", "vsf", "ebvs", "playback_failure", "play_ms", "stall_count", "stall_ms",
    "seek_stall_ms", "bitrate_ms", "switches_up", "switches_down", "segments_hit", "segments_miss",
    "segments_unknown", "bytes_hit", "bytes_miss", "errors", "fatal_errors",
];

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A view's events as a few beacons: varied by `v` so every rule is exercised across views.
pub fn view_beacons(view: &str, v: u64, t0: i64) -> Vec<Value> {
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

/// Posts `n` views (`view-0` …, the traces of [`view_beacons`], view `v` starting at
/// `t0 + v × spacing_ms`) to `q`, retrying each beacon like an SDK.
pub async fn post_views(q: &super::Qoeflow, n: u64, t0: i64, spacing_ms: i64) {
    let client = reqwest::Client::new();
    let stop = AtomicBool::new(false);
    for v in 0..n {
        for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * spacing_ms) {
            assert!(post_until_ok(&client, || q.beacon_url(), &b, &stop).await);
        }
    }
}

/// Posts until 2xx, like an SDK retrying through a restart (asking `url` for the current address each
/// try). Returns false if `stop` was raised first.
pub async fn post_until_ok(client: &reqwest::Client, url: impl Fn() -> String, body: &Value, stop: &AtomicBool) -> bool {
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
pub fn wait_for_views(dir: &Path, n: usize, within: Duration) {
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
pub fn assert_matches_reference(dir: &Path) {
    assert_dataset_matches(dir, &read_local_log(dir));
}

/// The dataset under `dir` equals the batch reference computed from `records` (all that was delivered).
pub fn assert_dataset_matches(dir: &Path, records: &[schemas::Record]) {
    let records = records.to_vec();
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

