//! Golden traces: `tests/golden/*.json` hold records in (batches of input) and the expected `views` and
//! `qoe_window` rows out, computed by hand from `docs/metrics.md`. Every measure is compared: a field absent
//! from an expected row must be zero/false. Times in the files are relative to T0.
//!
//! File format: `{"config": {SessionConfig fields}, "batches": [[record, …], …], "end_all": bool,
//! "expect": {"views": [...], "windows": [...], "stats": {...}}}` with records
//! `{"view": id, "recv": ms, "sent_at": ms, "client": {...}, "events": [{"seq", "type", "ts", …}]}`
//! (`sent_at` defaults to `recv`). `advance()` runs after each batch and a flush collects the deltas.

mod common;

use std::path::Path;

use common::*;
use pipeline::{SessionConfig, Sessionizer};
use schemas::ClientInfo;
use serde_json::Value;

fn run_golden(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read golden");
    let spec: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config: SessionConfig = serde_json::from_value(spec["config"].clone()).expect("config");
    let mut s = Sessionizer::new(config);
    let mut got = Collected::default();
    for batch in spec["batches"].as_array().expect("batches") {
        for r in batch.as_array().expect("batch") {
            let client: ClientInfo = serde_json::from_value(r.get("client").cloned().unwrap_or(Value::Null)).unwrap_or_default();
            let recv = r["recv"].as_i64().expect("recv");
            let sent_at = r.get("sent_at").and_then(Value::as_i64).unwrap_or(recv);
            s.process(record(r["view"].as_str().expect("view"), recv, sent_at, client, r["events"].as_array().expect("events")));
        }
        s.advance();
        got.add(s.flush());
    }
    if spec["end_all"].as_bool().unwrap_or(false) {
        s.end_all();
        got.add(s.flush());
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert_eq!(
        Value::Array(got.views_json()),
        spec["expect"]["views"],
        "{name}: views\n got: {}",
        serde_json::to_string_pretty(&got.views_json()).unwrap_or_default()
    );
    assert_eq!(
        Value::Array(got.windows_json()),
        spec["expect"]["windows"],
        "{name}: windows\n got: {}",
        serde_json::to_string_pretty(&got.windows_json()).unwrap_or_default()
    );
    if let Some(stats) = spec["expect"].get("stats").and_then(Value::as_object) {
        let actual = serde_json::to_value(&s.stats).expect("stats");
        for (k, v) in stats {
            assert_eq!(&actual[k], v, "{name}: stats.{k}");
        }
    }
}

#[test]
fn golden_traces() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("golden dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() >= 8, "golden traces missing");
    for f in files {
        run_golden(&f);
    }
}
