//! A realistic workload with a known answer: view traces exercising every rule, a client that retries
//! like an SDK, and the comparison of the dataset with the batch reference computed from the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pipeline::Dim;
use schemas::measures::Measure::*;

use crate::oracle::reference;
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

/// Waits until the `views` table holds `n` views (the pipeline caught up; a view's corrections are
/// more versions of it).
pub fn wait_for_views(dir: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = view_measures(&read_table(dir, "views"), &[]).len();
        if got >= n {
            assert_eq!(got, n, "more views than were posted");
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
            ("attempt", t[Attempt]), ("started", t[Started]), ("startup_ms", if t.flag(Started) { t[StartupMs] } else { -1 }),
            ("vsf", t[Vsf]), ("ebvs", t[Ebvs]), ("playback_failure", t[PlaybackFailure]),
            ("play_ms", t[PlayMs]), ("stall_count", t[StallCount]), ("stall_ms", t[StallMs]),
            ("seek_stall_ms", t[SeekStallMs]), ("bitrate_ms", t[BitrateMs]), ("switches_up", t[SwitchesUp]),
            ("switches_down", t[SwitchesDown]), ("segments_hit", t[SegmentsHit]),
            ("segments_miss", t[SegmentsMiss]), ("segments_unknown", t[SegmentsUnknown]),
            ("bytes_hit", t[BytesHit]), ("bytes_miss", t[BytesMiss]), ("errors", t[Errors]),
            ("fatal_errors", t[FatalErrors]),
        ]
        .into_iter()
        .collect();
        let g: BTreeMap<&str, i64> = g.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(g, want, "view {id}");
    }
    let windows = read_table(dir, "qoe_window");
    let total = |f: fn(&pipeline::window::WindowDelta) -> i64| truth.windows.values().map(f).sum::<i64>();
    for (col, want) in [
        ("attempts", total(|d| d.sums[Attempt])),
        ("starts", total(|d| d.sums[Started])),
        ("startup_ms_sum", total(|d| d.sums[StartupMs])),
        ("vsf", total(|d| d.sums[Vsf])),
        ("ebvs", total(|d| d.sums[Ebvs])),
        ("playback_failures", total(|d| d.sums[PlaybackFailure])),
        ("play_ms", total(|d| d.sums[PlayMs])),
        ("stall_count", total(|d| d.sums[StallCount])),
        ("stall_ms", total(|d| d.sums[StallMs])),
        ("seek_stall_ms", total(|d| d.sums[SeekStallMs])),
        ("bitrate_ms", total(|d| d.sums[BitrateMs])),
        ("switches_up", total(|d| d.sums[SwitchesUp])),
        ("switches_down", total(|d| d.sums[SwitchesDown])),
        ("segments_hit", total(|d| d.sums[SegmentsHit])),
        ("segments_miss", total(|d| d.sums[SegmentsMiss])),
        ("bytes_hit", total(|d| d.sums[BytesHit])),
        ("bytes_total", total(|d| d.sums[BytesTotal])),
        ("errors", total(|d| d.sums[Errors])),
        ("fatal_errors", total(|d| d.sums[FatalErrors])),
        ("active_views", total(|d| d.sums[ActiveViews])),
    ] {
        assert_eq!(sum(&windows, col), want, "qoe_window.{col}");
    }
    assert!(sum(&windows, "play_ms") > 0 && sum(&windows, "stall_ms") > 0, "the traffic exercised play and stalls");
    // Every accepted event appears once in `events`.
    let distinct: std::collections::HashSet<(String, u64)> = event_ids(&records).into_iter().collect();
    assert_eq!(num_rows(&read_table(dir, "events")), distinct.len(), "events table: each (view_id, seq) once");
}

