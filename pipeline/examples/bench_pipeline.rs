//! Pipeline benchmark: events/s (wall and per CPU core) from the local log through sessionization and
//! windows to Parquet, using the real runner (`pipeline::local::run`), next to a baseline measured in the
//! same run: reading and decoding the same log only (the floor for any consumer). Then memory per open
//! view: RSS growth and checkpoint size with N concurrent views.
//!
//! cargo run --release -p pipeline --example bench_pipeline -- [VIEWS=20000] [ROUNDS=3] [OPEN_VIEWS=100000]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ingest::log::{LocalLog, LogConfig, LogReader};
use pipeline::{PipelineConfig, Sessionizer};
use schemas::record::EventsRecord;
use schemas::{ClientInfo, Record};
use serde_json::{Map, Value, json};

const T0: i64 = 1_700_000_000_000;

fn ev(view: &str, seq: u64, kind: &str, ts: i64, extra: Value) -> Map<String, Value> {
    let mut m = json!({"view_id": view, "seq": seq, "type": kind, "ts": ts, "playhead_ms": 0}).as_object().cloned().unwrap_or_default();
    if let Value::Object(x) = extra {
        m.extend(x);
    }
    m
}

/// One view: 16 events in 4 beacons (records), a realistic mix.
fn view_records(v: u64) -> Vec<Bytes> {
    let id = format!("view-{v:08}");
    let t = T0 + (v as i64 % 600) * 1000;
    let cdn = ["fastly", "akamai", "cloudfront"][v as usize % 3];
    let kinds: [(&str, i64, Value); 16] = [
        ("viewstart", 0, json!({"cdn": cdn, "stream_type": "vod", "player_name": "hls.js"})),
        ("playrequest", 10, json!({})),
        ("quality_change", 5, json!({"bitrate_kbps": 1800})),
        ("segment", 100, json!({"bytes": 1_000_000, "cache": "hit"})),
        ("playing", 600, json!({})),
        ("segment", 2000, json!({"bytes": 1_000_000, "cache": "miss"})),
        ("heartbeat", 8000, json!({})),
        ("stall_start", 500, json!({})),
        ("stall_end", 700, json!({})),
        ("quality_change", 3000, json!({"bitrate_kbps": 3500})),
        ("segment", 1000, json!({"bytes": 1_500_000, "cache": "hit"})),
        ("heartbeat", 10000, json!({})),
        ("seeking", 2000, json!({})),
        ("playing", 400, json!({})),
        ("heartbeat", 10000, json!({})),
        ("viewend", 3000, json!({})),
    ];
    let mut ts = t;
    let events: Vec<_> = kinds.into_iter().enumerate().map(|(i, (k, dt, x))| {
        ts += dt;
        ev(&id, i as u64, k, ts, x)
    }).collect();
    events
        .chunks(4)
        .enumerate()
        .map(|(b, chunk)| {
            let recv = t + 12_000 * (b as i64 + 1);
            let client = ClientInfo { device_type: "desktop".into(), os: "Windows 10".into(), browser: "Chrome".into(), country: "NL".into(), ..Default::default() };
            let r = EventsRecord { recv_ms: recv, sent_at: recv - 40, key: None, view_id: id.clone(), client, events: chunk.to_vec() };
            Bytes::from(Record::Events(r).encode())
        })
        .collect()
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn committed_offset(data: &Path) -> u64 {
    // The checkpoint starts with {"epoch":N,"offset":M,...}: read just that prefix.
    let Ok(bytes) = std::fs::read(data.join("pipeline/checkpoint-local.json")) else { return 0 };
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).to_string();
    head.split("\"position\":").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let views = *args.first().unwrap_or(&20_000);
    let rounds = *args.get(1).unwrap_or(&3);
    let open_views = *args.get(2).unwrap_or(&100_000);
    let events = views * 16;

    let (mut base_rate, mut base_core, mut pipe_rate, mut pipe_core) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let dir = tempfile::tempdir()?;
        let log = LocalLog::open(LogConfig::new(dir.path().join("log")))?;
        let mut records = Vec::new();
        for v in 0..views {
            records.extend(view_records(v));
        }
        let total = records.len() as u64;
        for chunk in records.chunks(10_000) {
            log.append(chunk.to_vec()).await?;
        }

        // Baseline: read and decode every record.
        let (t, c) = (Instant::now(), cpu_seconds());
        let mut reader = LogReader::open(&dir.path().join("log"), 0)?;
        let mut n = 0u64;
        loop {
            let batch = reader.read_batch(100_000, u64::MAX)?;
            if batch.is_empty() {
                break;
            }
            for e in batch {
                if let Record::Events(r) = Record::decode(&e.data)? {
                    n += r.events.len() as u64;
                }
            }
        }
        assert_eq!(n, events);
        base_rate.push(events as f64 / t.elapsed().as_secs_f64());
        base_core.push(events as f64 / (cpu_seconds() - c).max(0.01));

        // qoeflow pipeline: the real runner until its checkpoint covers the whole log.
        let config = PipelineConfig { flush_interval_ms: 10, ..PipelineConfig::default() };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (t, c) = (Instant::now(), cpu_seconds());
        let data = dir.path().to_path_buf();
        let task = tokio::spawn(pipeline::local::run(log.clone(), data.clone(), config, Default::default(), stop_rx));
        while committed_offset(&data) < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c;
        let _ = stop_tx.send(true);
        task.await??;
        pipe_rate.push(events as f64 / wall);
        pipe_core.push(events as f64 / cpu.max(0.01));
    }

    // Memory per open view: views that started playing and have not ended.
    let before = rss_bytes();
    let mut s = Sessionizer::new(PipelineConfig::default().session());
    for v in 0..open_views {
        let id = format!("open-{v:08}");
        let evs = vec![
            ev(&id, 0, "viewstart", T0, json!({"cdn": "fastly", "stream_type": "live", "player_name": "hls.js"})),
            ev(&id, 1, "playrequest", T0 + 10, json!({})),
            ev(&id, 2, "quality_change", T0 + 20, json!({"bitrate_kbps": 2500})),
            ev(&id, 3, "playing", T0 + 500, json!({})),
        ];
        let client = ClientInfo { device_type: "mobile".into(), os: "iOS".into(), browser: "Safari".into(), country: "DE".into(), ip: Some("203.0.113.0".into()), ..Default::default() };
        s.process(Record::Events(EventsRecord { recv_ms: T0 + 600, sent_at: T0 + 550, key: None, view_id: id, client, events: evs }));
    }
    s.advance();
    drop(s.flush());
    let grown = rss_bytes().saturating_sub(before);
    let snapshot = serde_json::to_vec(&s.snapshot())?.len();
    assert_eq!(s.open_views() as u64, open_views);

    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim().to_owned();
    println!("machine: {} cores, {model}; {views} views x 16 events = {events} events, median of {rounds} rounds", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("{:<52} {:>12} {:>16}", "stage", "events/s", "events/s/core");
    println!("{:<52} {:>12.0} {:>16.0}", "baseline: read + decode the local log", median(base_rate.clone()), median(base_core.clone()));
    println!("{:<52} {:>12.0} {:>16.0}", "qoeflow pipeline: log -> sessionize -> Parquet", median(pipe_rate.clone()), median(pipe_core.clone()));
    println!("ratio pipeline / baseline (per core): {:.2}", median(pipe_core) / median(base_core));
    println!("open views: {open_views}; RSS growth {:.0} bytes/view; checkpoint state {:.0} bytes/view", grown as f64 / open_views as f64, snapshot as f64 / open_views as f64);
    Ok(())
}
