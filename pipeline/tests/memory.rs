//! What an open view costs in memory, measured as the process's resident memory (nextest runs each test in
//! a process of its own). The bound is loose (the allocator's rounding, a debug build); it fails when a
//! view carries something it should not, as it did with the emptied reorder buffer's B-tree node (1.7 KB
//! per view, about 3.5 KB a view in all) and the hot map's inline slots.

use pipeline::store::StateStore;
use pipeline::{SessionConfig, Sessionizer};
use schemas::record::EventsRecord;
use schemas::{ClientInfo, Record};
use serde_json::{Value, json};

const T0: i64 = 1_700_000_000_000;
const VIEWS: u64 = 20_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// A view's first beacon: it started, asked to play, and plays (in order).
fn first_beacon(i: u64) -> Record {
    let view_id = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
    let events = [("viewstart", 0), ("playrequest", 10), ("playing", 900)]
        .iter()
        .enumerate()
        .map(|(seq, (kind, at))| {
            let mut e = json!({"view_id": view_id, "seq": seq, "type": kind, "ts": T0 + at});
            if *kind == "viewstart" {
                e["video_id"] = json!(format!("vod-{}", i % 500));
                e["video_title"] = json!(format!("Title vod-{}", i % 500));
                e["page_url"] = json!(format!("https://watch.example.com/vod-{}", i % 500));
                e["player_name"] = json!("hls.js");
                e["player_version"] = json!("1.5.17");
                e["cdn"] = json!(["akamai", "fastly", "cloudfront"][(i % 3) as usize]);
            }
            let Value::Object(m) = e else { unreachable!() };
            m
        })
        .collect();
    Record::Events(EventsRecord {
        recv_ms: T0 + 1_000,
        sent_at: T0 + 1_000,
        key: None,
        view_id,
        client: ClientInfo {
            ip: Some(format!("203.0.{}.0", i % 200)),
            device_type: "mobile".into(),
            os: "iPhone".into(),
            browser: "Safari".into(),
            country: "DE".into(),
            ..Default::default()
        },
        events,
    })
}

#[test]
fn an_open_view_in_memory_costs_a_few_kilobytes_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(&dir.path().join("state.redb"), 1 << 20).unwrap();
    let (mut s, _) = Sessionizer::open(SessionConfig::default(), store.clone()).unwrap();
    let before = rss_bytes();
    for i in 0..VIEWS {
        s.process(first_beacon(i));
        if (i + 1) % 2_000 == 0 {
            s.advance();
            drop(s.flush());
            let c = s.take_commit(None).unwrap();
            let forgotten = store.commit(c).unwrap();
            s.committed(forgotten);
        }
    }
    let sizes = s.sizes();
    assert_eq!((sizes.open_views, sizes.cached_views), (VIEWS as usize, VIEWS as usize), "every view open and in memory");
    let per_view = rss_bytes().saturating_sub(before) / VIEWS;
    eprintln!("resident memory per open view: {per_view} bytes");
    assert!(per_view < 2_200, "an open view in memory costs {per_view} bytes of resident memory");
}
