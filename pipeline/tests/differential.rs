//! Differential: on randomized traces, the streaming results — delta emission at random flush points,
//! shuffled arrival across and within views, duplicated beacons, clock-skewed clients — equal the plain
//! batch computation (`pipeline/tests/oracle/reference.rs`) of the same definitions: per-view totals and every window
//! measure, start-time histograms included.

mod common;
#[path = "oracle/reference.rs"]
mod reference;

use common::*;
use pipeline::{Dim, SessionConfig, Sessionizer};
use proptest::prelude::*;
use schemas::{ClientInfo, Record};
use serde_json::{Value, json};

const KINDS: [&str; 12] = [
    "playrequest", "playing", "playing", "pause", "seeking", "seeked", "stall_start", "stall_end",
    "quality_change", "segment", "error", "heartbeat",
];

fn arb_view() -> impl Strategy<Value = (bool, Vec<(usize, i64, u32)>, bool, i64)> {
    (
        prop::bool::weighted(0.9),                                         // starts with viewstart
        prop::collection::vec((0..KINDS.len(), -500i64..4000, any::<u32>()), 1..30), // kind, dt, knob
        prop::bool::weighted(0.7),                                         // ends with viewend
        -5000i64..5000,                                                    // client clock skew
    )
}

fn view_events(idx: usize, (viewstart, body, viewend, _): &(bool, Vec<(usize, i64, u32)>, bool, i64)) -> Vec<Value> {
    let mut events = Vec::new();
    let mut ts = 1000 + idx as i64 * 700;
    let mut push = |kind: &str, ts: i64, extra: Value| {
        let mut e = json!({"seq": events.len(), "type": kind, "ts": ts});
        if let (Some(m), Value::Object(x)) = (e.as_object_mut(), extra) {
            m.extend(x);
        }
        events.push(e);
    };
    if *viewstart {
        push("viewstart", ts, json!({"cdn": if idx % 2 == 0 { "a" } else { "b" }}));
    }
    for (k, dt, knob) in body {
        ts += dt;
        let extra = match KINDS[*k] {
            "quality_change" => {
                let rates = [500.0, 1200.0, 2500.0, 2500.4, 6000.0];
                json!({"bitrate_kbps": rates[*knob as usize % 5]})
            }
            "segment" => {
                let cache = ["hit", "miss", "unknown"][*knob as usize % 3];
                json!({"bytes": knob % 100_000, "cache": cache})
            }
            "error" => json!({"fatal": knob % 4 == 0}),
            _ => json!({}),
        };
        push(KINDS[*k], ts, extra);
    }
    if *viewend {
        push("viewend", ts + 500, json!({}));
    }
    events
}

fn run(
    views: &[(bool, Vec<(usize, i64, u32)>, bool, i64)],
    chunk_sizes: &[usize],
    order_keys: &[u32],
    dup_every: usize,
    batch_sizes: &[usize],
    window_ms: i64,
) -> Result<(), TestCaseError> {
    // Beacons: each view's events in chunks, then all beacons shuffled and some duplicated.
    let mut beacons: Vec<(String, i64, Vec<Value>)> = Vec::new();
    let mut c = 0;
    for (i, v) in views.iter().enumerate() {
        let events = view_events(i, v);
        let mut rest = &events[..];
        while !rest.is_empty() {
            let n = chunk_sizes[c % chunk_sizes.len()].clamp(1, rest.len());
            c += 1;
            beacons.push((format!("view-{i}"), v.3, rest[..n].to_vec()));
            rest = &rest[n..];
        }
    }
    let mut keyed: Vec<(u32, usize)> = (0..beacons.len()).map(|i| (order_keys[i % order_keys.len()].wrapping_mul(i as u32 + 1), i)).collect();
    keyed.sort();
    let mut order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
    if dup_every > 0 {
        let dups: Vec<usize> = order.iter().step_by(dup_every).copied().collect();
        order.extend(dups);
    }
    let records: Vec<Record> = order
        .iter()
        .enumerate()
        .map(|(arrival, &b)| {
            let (view, skew, events) = &beacons[b];
            let recv = 50_000 + arrival as i64 * 10;
            let client = ClientInfo { country: "NL".into(), ..Default::default() };
            record(view, recv, recv - skew, client, events)
        })
        .collect();

    let dims = vec![Dim::Cdn, Dim::Country];
    let config = SessionConfig {
        window_ms,
        dims: dims.clone(),
        inactivity_timeout_ms: i64::MAX / 4,
        late_horizon_ms: i64::MAX / 4,
        reorder_wait_ms: i64::MAX / 4,
        ..SessionConfig::default()
    };
    let mut s = Sessionizer::new(config);
    let mut got = Collected::default();
    let mut i = 0;
    let mut b = 0;
    while i < records.len() {
        let n = batch_sizes[b % batch_sizes.len()].max(1);
        b += 1;
        for r in records.iter().skip(i).take(n) {
            s.process(r.clone());
        }
        i += n;
        s.advance();
        got.add(s.flush());
    }
    s.end_all();
    got.add(s.flush());

    let want = reference::compute(&records, window_ms, &dims);
    let streamed: std::collections::BTreeMap<String, _> =
        got.views.iter().map(|v| (v.view_id.clone(), v.totals.clone())).collect();
    prop_assert_eq!(streamed, want.views);
    prop_assert_eq!(&got.windows, &want.windows);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn streaming_equals_batch(
        views in prop::collection::vec(arb_view(), 1..7),
        chunk_sizes in prop::collection::vec(1usize..7, 1..5),
        order_keys in prop::collection::vec(any::<u32>(), 1..9),
        dup_every in 0usize..5,
        batch_sizes in prop::collection::vec(1usize..6, 1..5),
        window_ms in prop::sample::select(vec![1000i64, 2500, 10_000]),
    ) {
        run(&views, &chunk_sizes, &order_keys, dup_every, &batch_sizes, window_ms)?;
    }
}
