//! The web player SDK (`sdk/web`) with real players playing real media in Debian's Chromium.
//!
//! `tests/browser/sdk.mjs` makes a rendition ladder with ffmpeg, serves it from an origin that throttles,
//! fails a segment, refuses to play and marks cache hits, and plays it with each adapter (the native
//! element on Chromium's native HLS, hls.js, dash.js, Shaka Player, video.js), the SDK loaded from the
//! collector's `/sdk/v1/qoeflow.min.js` and posting through a proxy to a running `qoeflow serve`. The
//! page records what the player really did, independently of the SDK; the origin logs every segment it
//! sent. This test reads `views` and `qoe_window` with `qoeflow query` and compares them with that truth.
//! Screenshots of each page and of the dashboard go to `target/test-artifacts/`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::workload::wait_for_views;
use crate::common::*;

/// How far qoeflow's video start time (the `play` to the `playing` event, client clock) may be from the
/// page's own measurement of the same thing (`play()` called to the element's first `playing`). The first
/// frame presented (requestVideoFrameCallback) bounds it from above: on a loaded machine the compositor
/// presents it up to a second after `playing` (seen in CI with video.js: `playing` at 635 ms, the frame
/// at 1208 ms), so it cannot be the measure itself.
const STARTUP_TOLERANCE_MS: i64 = 250;

const KEY: &str = "sdk-test-key";

const ADAPTERS: [&str; 5] = ["video", "hls", "dash", "shaka", "videojs"];

#[test]
fn the_sdk_passes_its_unit_tests_type_check_and_size_budget() {
    let sdk = repo_root().join("sdk/web");
    let out = Command::new("npm").args(["test", "--silent"]).current_dir(&sdk).output().expect("npm (deploy/test.sh installs sdk/web)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "npm test in sdk/web failed:\n{text}");
    let sizes: Value = serde_json::from_str(&std::fs::read_to_string(sdk.join("dist/sizes.json")).expect("sizes.json")).expect("json");
    for adapter in ["monitorVideo", "monitorHls", "monitorDash", "monitorShaka", "monitorVideojs"] {
        let gzip = sizes["adapters"][adapter]["gzip"].as_u64().expect("gzip size");
        assert!(gzip > 1000 && gzip <= 8192, "{adapter}: {gzip} B gzipped (budget 8 KiB)");
    }
}

/// What one playback really did, from the page's and the origin's records.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    started: bool,
    vsf: bool,
    ebvs: bool,
    playback_failure: bool,
    stall_count: i64,
    /// A stall happened during a seek (the views table keeps seek stall time, not a count).
    seek_stalled: bool,
    switches_up: i64,
    switches_down: i64,
    segments_hit: i64,
    segments_miss: i64,
    bytes: i64,
    errors: i64,
    fatal_errors: i64,
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The truth of one run: the media element's events replayed by the metric contract's rules (a stall
/// is a `waiting` after the first frame while not paused; during a seek it is a seek stall), the
/// player's own switches and errors, and the origin's log of complete media segments.
fn expected(result: &Value) -> Expected {
    let truth = &result["truth"];
    let element = list(truth, "element");
    let errors = list(truth, "errors");
    let order = |e: &Value| e["i"].as_i64().expect("i");
    let first_fatal = errors.iter().filter(|e| e["fatal"] == true).map(order).min();
    let first_playing = element.iter().find(|e| e["type"] == "playing").map(order).filter(|p| first_fatal.is_none_or(|f| *p < f));
    let mut e = Expected { started: first_playing.is_some(), ..Default::default() };
    e.vsf = !e.started && first_fatal.is_some();
    e.playback_failure = e.started && first_fatal.is_some();
    e.ebvs = !e.started && !e.vsf;
    if let Some(start) = first_playing {
        let mut seeking = false;
        for ev in element.iter().filter(|ev| order(ev) > start && first_fatal.is_none_or(|f| order(ev) < f)) {
            match ev["type"].as_str() {
                Some("seeking") => seeking = true,
                Some("playing") | Some("pause") => seeking = false,
                Some("waiting") if ev["paused"] == false => {
                    e.stall_count += 1;
                    e.seek_stalled |= seeking;
                }
                _ => {}
            }
        }
    }
    let mut previous: Option<i64> = None;
    for s in list(truth, "switches") {
        let kbps = s["kbps"].as_f64().expect("kbps").round() as i64;
        if let (Some(p), Some(start)) = (previous, first_playing) {
            if order(s) > start {
                e.switches_up += i64::from(kbps > p);
                e.switches_down += i64::from(kbps < p);
            }
        }
        previous = Some(kbps);
    }
    e.errors = errors.len() as i64;
    e.fatal_errors = errors.iter().filter(|e| e["fatal"] == true).count() as i64;
    // The native element's requests are not visible to a page script: no segments for it.
    if result["adapter"] != "video" {
        for o in list(result, "origin").iter().filter(|o| o["status"] == 200 && o["complete"] == true && o["init"] == false) {
            match o["cache"].as_str() {
                Some("hit") => e.segments_hit += 1,
                _ => e.segments_miss += 1,
            }
            e.bytes += o["bytes"].as_i64().expect("bytes");
        }
    }
    e
}

fn got(view: &Value) -> Expected {
    let n = |k: &str| view[k].as_i64().or_else(|| view[k].as_str()?.parse().ok()).unwrap_or_else(|| panic!("{k} = {}", view[k]));
    let b = |k: &str| view[k].as_bool().unwrap_or_else(|| n(k) != 0);
    Expected {
        started: b("started"),
        vsf: b("vsf"),
        ebvs: b("ebvs"),
        playback_failure: b("playback_failure"),
        stall_count: n("stall_count"),
        seek_stalled: n("seek_stall_ms") > 0,
        switches_up: n("switches_up"),
        switches_down: n("switches_down"),
        segments_hit: n("segments_hit"),
        segments_miss: n("segments_miss"),
        bytes: n("bytes_hit") + n("bytes_miss"),
        errors: n("errors"),
        fatal_errors: n("fatal_errors"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_players_in_chromium_report_exactly_what_they_did() {
    let dir = tempfile::tempdir().expect("tmp");
    // With an ingest key: beacons without it are refused (401), so every view below proves the SDK sent
    // `?key=` by fetch and by sendBeacon.
    let mut q = Qoeflow::serve(dir.path(), &["--ingest-key", KEY], &[]);

    // The SDK for one script tag, from the collector.
    let script = reqwest::get(format!("{}/sdk/v1/qoeflow.min.js", q.url)).await.expect("GET the SDK");
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"].to_str().expect("ascii").starts_with("text/javascript"));
    let body = script.text().await.expect("body");
    assert!(body.contains("qoeflow") && body.len() < 64 * 1024, "{} bytes", body.len());

    let mut runs: Vec<String> = ADAPTERS.iter().flat_map(|a| ["main", "fail", "leave", "exit"].map(|s| format!("{a}:{s}"))).collect();
    runs.push("hls:down".to_owned());
    let artifacts = repo_root().join("target/test-artifacts");
    let media = repo_root().join("target/test-media");
    let browser = repo_root().join("tests/browser");
    let out = Command::new("node")
        .arg(browser.join("sdk.mjs"))
        .args([q.url.as_str(), artifacts.to_str().expect("utf-8"), media.to_str().expect("utf-8"), &runs.join(",")])
        .current_dir(&browser)
        .env("QOEFLOW_SDK_KEY", KEY)
        .output()
        .expect("node (deploy/test.sh installs playwright-core, the players, chromium and ffmpeg)");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sdk.mjs failed");
    let results: Value = serde_json::from_slice(&out.stdout).expect("sdk.mjs prints JSON");
    std::fs::write(artifacts.join("sdk-truth.json"), &out.stdout).expect("write the ground truth artifact");
    let results = list(&results, "results");
    assert_eq!(results.len(), runs.len());

    // Every playback ended with a viewend (the end of the media, or leaving the page): one view each.
    wait_for_views(dir.path(), runs.len(), Duration::from_secs(60));
    let views = query_json(
        dir.path(),
        "SELECT video_id, cdn, player_name, player_version, end_reason, gaps, events, duplicates, CAST(attempt AS INT) AS attempt, \
         CAST(started AS INT) AS started, startup_ms, CAST(vsf AS INT) AS vsf, CAST(ebvs AS INT) AS ebvs, \
         CAST(playback_failure AS INT) AS playback_failure, stall_count, seek_stall_ms, switches_up, switches_down, \
         segments_hit, segments_miss, segments_unknown, bytes_hit, bytes_miss, errors, fatal_errors FROM views",
    );
    let views: BTreeMap<String, &Value> = views.iter().map(|v| (v["video_id"].as_str().expect("video_id").to_owned(), v)).collect();
    let windows = query_json(
        dir.path(),
        "SELECT cdn, sum(attempts) AS attempts, sum(starts) AS starts, sum(vsf) AS vsf, sum(ebvs) AS ebvs, \
         sum(playback_failures) AS playback_failure, sum(stall_count) AS stall_count, sum(switches_up) AS switches_up, \
         sum(switches_down) AS switches_down, sum(segments_hit) AS segments_hit, sum(segments_miss) AS segments_miss, \
         sum(errors) AS errors, sum(fatal_errors) AS fatal_errors FROM qoe_window GROUP BY cdn",
    );
    let windows: BTreeMap<String, &Value> = windows.iter().map(|w| (w["cdn"].as_str().expect("cdn").to_owned(), w)).collect();

    let mut report = Vec::new();
    for r in results {
        let run = r["run"].as_str().expect("run");
        let (adapter, scenario) = (r["adapter"].as_str().expect("adapter"), r["scenario"].as_str().expect("scenario"));
        let truth = &r["truth"];
        assert!(truth["fatal"].is_null(), "{run}: the page failed: {}", truth["fatal"]);
        let view = views.get(run).unwrap_or_else(|| panic!("{run}: no view in qoeflow (views: {:?})", views.keys()));
        assert_eq!(view["cdn"], run, "{run}: the application's metadata");
        assert_eq!(view["end_reason"], "viewend", "{run}");
        assert_eq!(view["attempt"], 1, "{run}: the page asked to play");
        assert_eq!((view["gaps"].as_i64(), view["duplicates"].as_i64()), (Some(0), Some(0)), "{run}: every event arrived once");
        let want = expected(r);
        let mut have = got(view);
        if scenario == "leave" && have.segments_hit + have.segments_miss + 1 == want.segments_hit + want.segments_miss {
            // The page was left while the origin's last segment was on its way: the player never saw it.
            have = Expected { segments_hit: want.segments_hit, segments_miss: want.segments_miss, bytes: want.bytes, ..have };
        }
        if scenario == "fail" {
            // A start failure: the players load what segments they can before giving up; only the
            // outcome is compared.
            have = Expected { segments_hit: want.segments_hit, segments_miss: want.segments_miss, bytes: want.bytes, ..have };
        }
        assert_eq!(have, want, "{run}: qoeflow's view differs from what the player did");
        assert_eq!(view["segments_unknown"].as_i64(), Some(0), "{run}: every segment's cache status came from X-Cache");

        // The windows hold the same measures, summed.
        let w = windows.get(run).unwrap_or_else(|| panic!("{run}: no qoe_window rows"));
        let sum = |k: &str| w[k].as_i64().or_else(|| w[k].as_str()?.parse().ok()).unwrap_or_else(|| panic!("{k} = {}", w[k]));
        for k in ["attempts", "starts", "vsf", "ebvs", "playback_failure", "stall_count", "switches_up", "switches_down", "segments_hit", "segments_miss", "errors", "fatal_errors"] {
            let in_view = match k {
                "attempts" => view["attempt"].as_i64(),
                "starts" => view["started"].as_i64(),
                _ => view[k].as_i64(),
            };
            assert_eq!(Some(sum(k)), in_view, "{run}: qoe_window {k}");
        }

        let play_called = truth["playCalled"].as_i64();
        let first_playing = list(truth, "element").iter().find(|e| e["type"] == "playing").and_then(|e| e["t"].as_i64());
        let page_startup = match (first_playing, play_called) {
            (Some(f), Some(p)) if want.started => Some(f - p),
            _ => None,
        };
        let page_frame = match (truth["firstFrame"].as_i64(), play_called) {
            (Some(f), Some(p)) if want.started => Some(f - p),
            _ => None,
        };
        let startup = view["startup_ms"].as_i64();
        if let (Some(page), Some(ours)) = (page_startup, startup) {
            assert!((page - ours).abs() <= STARTUP_TOLERANCE_MS, "{run}: start-up {ours} ms, the page saw `playing` at {page} ms");
        }
        if let (Some(frame), Some(ours)) = (page_frame, startup) {
            assert!(ours <= frame + STARTUP_TOLERANCE_MS, "{run}: start-up {ours} ms, after the first frame was presented ({frame} ms)");
        }
        assert_eq!(startup.is_some(), want.started, "{run}: startup_ms");
        let line = format!(
            "{run}: start-up page {page_startup:?} ms (frame {page_frame:?}), qoeflow {startup:?} ms; stalls {} (during a seek: {}), switches +{} -{}, segments {} hit {} miss, errors {} ({} fatal)",
            want.stall_count, want.seek_stalled, want.switches_up, want.switches_down, want.segments_hit, want.segments_miss, want.errors, want.fatal_errors
        );
        eprintln!("sdk: {line}");
        report.push(line);
        match scenario {
            // The throttle made the players rebuffer or switch down, the seek had to wait.
            "main" if adapter != "video" => assert!(want.switches_down >= 1 && want.stall_count >= 1, "{run}: the scenario did not happen: {want:?}"),
            // Chromium's native HLS has no ABR to speak of; it stalls under the throttle, and may give up
            // on the failed segment (a playback failure) or retry it.
            "main" => assert!(want.stall_count >= 1, "{run}: the scenario did not happen: {want:?}"),
            "fail" => assert!(want.vsf, "{run}: a start failure: {want:?}"),
            "exit" => assert!(want.ebvs, "{run}: an exit before video start: {want:?}"),
            "leave" | "down" => assert!(want.started && !want.playback_failure, "{run}: {want:?}"),
            _ => {}
        }
        if scenario == "down" {
            // 30 s without a collector: nothing lost (no gaps above, nothing dropped), the queue bounded.
            assert_eq!(r["sender"]["dropped"], 0, "{run}");
            let max = r["max_queue"].as_u64().expect("max_queue");
            assert!(max > 5 && max <= 1000, "{run}: the SDK queued at most {max} events");
        }
    }
    eprintln!("sdk: summary\n{}", report.join("\n"));
    q.stop();
    for a in ADAPTERS {
        assert!(artifacts.join(format!("sdk-{a}-main.png")).is_file());
    }
    assert!(artifacts.join("sdk-dashboard.png").is_file());
}
