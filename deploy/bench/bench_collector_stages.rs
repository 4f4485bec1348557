//! The collector's request path taken apart, without HTTP: microseconds per beacon (wall time on one
//! thread that does nothing else, so close to its CPU time) for each stage the handler runs on a body,
//! on two kinds of body: wrk's (`deploy/bench/beacon.lua`:
//! 20 events of a fresh view) and `qoeflow loadgen`'s (the simulated SDK's flushes). Next to the stages,
//! the floor of any JSON collector built on serde_json: checking the body is JSON without building
//! anything (`&RawValue`). With `deploy/bench/collector.sh`'s CPU per beacon of the whole process (axum's
//! and the collector's), it says where the collector's time per beacon goes and what a stage could save.
//!
//! cargo build --release -p qoeflow -p bench --bins   # both packages, as run.sh: -p bench alone rebuilds all
//! target/release/bench_collector_stages [BEACONS=20000] [ROUNDS=5]
//!
//! Stages, each timed alone; 2–4 are cumulative (each includes the ones before it), 1 is a separate floor:
//! 1. `lex`: `serde_json::from_slice::<&RawValue>` of the body (validates, builds nothing);
//! 2. `parse`: `schemas::parse_beacon` (each event's text sliced out; the fast parse's document of the
//!    body, sonic-rs's, for the fields, each event validated from it before it is dropped);
//! 3. `+ validate`: each event taken in its typed form, beside its text (a slice of the body, as the
//!    handler keeps it): validated here when the exact parse read it;
//!
//! Stages 2 and 3 again on the exact parse alone (serde_json, every value counted; what bodies the fast
//! parse does not take get): the baseline of the fast parse, measured in the same run. Compare stage 3
//! with stage 3: the exact parse validates there, the fast parse in stage 2.
//! 4. `+ encode`: the view's record (postcard, then zstd with the record dictionary);
//!    `zstd alone`: compressing those records' postcard bodies, as stage 4 does.

/// The allocator of the `qoeflow` binary, so the stages run as they do there.
#[global_allocator]
static ALLOC: service::memory::Allocator = service::memory::Allocator;

use std::time::Instant;

use schemas::{CheckedEvent, ClientInfo, Envelope};
use serde_json::value::RawValue;

/// A body like wrk's `beacon.lua`: `n` events of view `view` (the same four event shapes).
fn wrk_body(view: &str, counter: u64, n: usize) -> Vec<u8> {
    let t0 = 1_700_000_000_000i64;
    let events: Vec<String> = (0..n as i64)
        .map(|seq| {
            let ts = t0 + seq * 500;
            match (seq, seq % 5) {
                (0, _) => format!(r#"{{"view_id":"{view}","seq":0,"type":"viewstart","ts":{ts},"video_id":"v{}","cdn":"fastly","stream_type":"vod","player_name":"hls.js","player_version":"1.5.7"}}"#, counter % 1000),
                (_, 1) => format!(r#"{{"view_id":"{view}","seq":{seq},"type":"segment","ts":{ts},"playhead_ms":{},"host":"cdn.example.com","bytes":1048576,"duration_ms":120,"ttfb_ms":30,"cache":"hit"}}"#, seq * 500),
                (_, 2) => format!(r#"{{"view_id":"{view}","seq":{seq},"type":"quality_change","ts":{ts},"playhead_ms":{},"bitrate_kbps":2500,"width":1280,"height":720}}"#, seq * 500),
                _ => format!(r#"{{"view_id":"{view}","seq":{seq},"type":"heartbeat","ts":{ts},"playhead_ms":{}}}"#, seq * 500),
            }
        })
        .collect();
    format!(r#"{{"sent_at":1700000010000,"events":[{}]}}"#, events.join(",")).into_bytes()
}

/// `count` bodies of `qoeflow loadgen`'s simulated viewers: each SDK flush as the SDK posts it.
fn loadgen_bodies(count: usize) -> Vec<Vec<u8>> {
    let t0 = 1_700_000_000_000i64;
    let spec = loadgen::sim::RunSpec::new(42, 600_000, 60_000);
    let mut bodies = Vec::with_capacity(count);
    for i in 0.. {
        for flush in loadgen::Flushes::new(loadgen::sim::ViewSim::new(&spec, i, t0)) {
            let body = serde_json::json!({"sent_at": t0 + flush.at_ms, "events": flush.events});
            bodies.push(serde_json::to_vec(&body).expect("a JSON value serializes"));
            if bodies.len() == count {
                return bodies;
            }
        }
    }
    bodies
}

/// The handler's work on one body up to `stage` (1–4); returns the records' postcard bodies' sizes to
/// keep the work observable.
fn run(body: &[u8], stage: u8, client: &ClientInfo) -> usize {
    run_parsed(body, stage, client, false)
}

/// [`run`], the body parsed by the exact parse alone when `exact` says so: a limit of values below
/// what the body's length proves sends it there.
fn run_parsed(body: &[u8], stage: u8, client: &ClientInfo, exact: bool) -> usize {
    if stage == 1 {
        let raw: &RawValue = serde_json::from_slice(body).expect("the bench's bodies are JSON");
        return raw.get().len();
    }
    let max_values = if exact { body.len() / 2 } else { schemas::beacon::MAX_JSON_VALUES };
    let beacon = schemas::parse_beacon_limited(body, max_values, &mut |_| true).expect("the bench's beacons parse");
    if stage == 2 {
        return beacon.events.len();
    }
    // As the handler does: each event taken, what the fast parse validated moved out.
    let events: Vec<CheckedEvent<&str>> = beacon
        .events
        .into_iter()
        .map(|raw| CheckedEvent { raw: raw.text(), event: raw.into_validated().expect("the bench's events are valid") })
        .collect();
    if stage == 3 {
        return events.len();
    }
    // One record per view (the handler groups a beacon's events by view; these beacons are one view's).
    let view_id = events[0].event.view_id.clone();
    let envelope = Envelope { recv_ms: beacon.sent_at + 35, sent_at: beacon.sent_at, key: None, view_id: &view_id, client };
    envelope.encode(&events).len()
}

/// Median wall-time microseconds per body of `f` over `rounds` passes of all `bodies`.
fn time(bodies: &[Vec<u8>], rounds: usize, mut f: impl FnMut(&[u8]) -> usize) -> f64 {
    let mut sink = 0usize;
    let mut per_body: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for b in bodies {
                sink = sink.wrapping_add(f(b));
            }
            start.elapsed().as_secs_f64() * 1e6 / bodies.len() as f64
        })
        .collect();
    std::hint::black_box(sink);
    per_body.sort_by(f64::total_cmp);
    per_body[per_body.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let beacons: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let client = ClientInfo { device_type: "desktop".into(), os: "Windows".into(), browser: "Chrome".into(), country: "DE".into(), ip: Some("203.0.113.0".into()), ..Default::default() };

    let wrk: Vec<Vec<u8>> = (0..beacons as u64).map(|i| wrk_body(&format!("bench-{}-{i}", 1_000_000 + i * 7919 % 1_000_000_000), i, 20)).collect();
    let sdk = loadgen_bodies(beacons);
    println!("machine: {} cores; {beacons} beacons of each kind, median of {rounds} passes, one thread; µs per beacon (wall time)", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("{:<44} {:>16} {:>16}", "stage (2-4 cumulative)", "wrk beacons", "loadgen flushes");
    let size = |b: &[Vec<u8>]| b.iter().map(Vec::len).sum::<usize>() as f64 / b.len() as f64;
    let events = |b: &[Vec<u8>]| b.iter().map(|b| schemas::parse_beacon(b).map_or(0, |p| p.events.len())).sum::<usize>() as f64 / b.len() as f64;
    println!("{:<44} {:>16.0} {:>16.0}", "body bytes (mean)", size(&wrk), size(&sdk));
    println!("{:<44} {:>16.1} {:>16.1}", "events per beacon (mean)", events(&wrk), events(&sdk));
    let labels = ["1 lex: JSON checked, nothing built (floor)", "2 parse (fast parse: validates too)", "3 + validate (text borrowed)", "4 + encode: postcard + zstd (dictionary)"];
    for (stage, label) in (1u8..=4).zip(labels) {
        let a = time(&wrk, rounds, |b| run(b, stage, &client));
        let b = time(&sdk, rounds, |b| run(b, stage, &client));
        println!("{label:<44} {a:>16.2} {b:>16.2}");
    }
    for (stage, label) in [(2u8, "   2 on the exact parse alone"), (3, "   3 on the exact parse alone")] {
        let a = time(&wrk, rounds, |b| run_parsed(b, stage, &client, true));
        let b = time(&sdk, rounds, |b| run_parsed(b, stage, &client, true));
        println!("{label:<44} {a:>16.2} {b:>16.2}");
    }
    // zstd alone, on the postcard bodies stage 4 compresses (decompressed from its records).
    let postcard = |bodies: &[Vec<u8>]| -> Vec<Vec<u8>> {
        let mut d = zstd::bulk::Decompressor::with_dictionary(schemas::record::RECORD_DICTIONARY).expect("the record dictionary loads");
        bodies
            .iter()
            .map(|b| {
                let beacon = schemas::parse_beacon(b).expect("parses");
                let events: Vec<CheckedEvent<&str>> = beacon.events.iter().map(|r| CheckedEvent { event: r.validate().expect("valid"), raw: r.text() }).collect();
                let view_id = events[0].event.view_id.clone();
                let rec = Envelope { recv_ms: 0, sent_at: beacon.sent_at, key: None, view_id: &view_id, client: &client }.encode(&events);
                // Header: magic (2), version, codec; codec 2 is zstd with the dictionary, 0 plain.
                if rec[3] == 0 { rec[4..].to_vec() } else { d.decompress(&rec[4..], 1 << 24).expect("decompresses") }
            })
            .collect()
    };
    let (pw, ps) = (postcard(&wrk), postcard(&sdk));
    let mut c = zstd::bulk::Compressor::with_dictionary(1, schemas::record::RECORD_DICTIONARY).expect("the record dictionary loads");
    let mut zstd_alone = |bodies: &[Vec<u8>]| time(bodies, rounds, |b| if b.len() >= 256 { c.compress(b).map_or(0, |z| z.len()) } else { b.len() });
    let (a, b) = (zstd_alone(&pw), zstd_alone(&ps));
    println!("{:<44} {a:>16.2} {b:>16.2}", "   of which zstd alone (level 1, dictionary)");
    println!("{:<44} {:>16.0} {:>16.0}", "   postcard body bytes (mean)", size(&pw), size(&ps));
    // The record's zstd level, swept: the dictionary prepared at each level as the collector prepares
    // it; µs per record body and the mean compressed bytes (bodies under 256 bytes are stored plain).
    println!("{:<44} {:>16} {:>16}", "zstd level (prepared dictionary)", "µs / bytes", "µs / bytes");
    for level in [3, 1, -1, -3, -5, -8] {
        let dict = zstd::dict::EncoderDictionary::copy(schemas::record::RECORD_DICTIONARY, level);
        let mut c = zstd::bulk::Compressor::with_prepared_dictionary(&dict).expect("the record dictionary loads");
        let mut one = |b: &[u8]| if b.len() >= 256 { c.compress(b).map_or(0, |z| z.len()) } else { b.len() };
        let bytes = |bodies: &[Vec<u8>], one: &mut dyn FnMut(&[u8]) -> usize| bodies.iter().map(|b| one(b)).sum::<usize>() as f64 / bodies.len() as f64;
        let (bw, bs) = (bytes(&pw, &mut one), bytes(&ps, &mut one));
        let (a, b) = (time(&pw, rounds, &mut one), time(&ps, rounds, &mut one));
        println!("{:<44} {:>16} {:>16}", format!("   level {level}"), format!("{a:.2} / {bw:.0}"), format!("{b:.2} / {bs:.0}"));
    }
}
