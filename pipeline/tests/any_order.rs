//! Exact under any arrival order (issue 16): for random views using every event kind, any permutation
//! of their beacons and any arrival delays within the late horizon give exactly the `views` rows (the
//! latest version of each) and the `qoe_window` sums and merged start-time histograms (additions less
//! retractions) of in-order arrival.
//!
//! Beacons are delivered late the way SDKs deliver them: a retried or queued beacon is sent again
//! later (`sent_at` is when it was finally sent) and received a network latency after that; each
//! record keeps its own latency, so which record places the view (the one with the lowest `seq`) matters.

mod common;

use std::collections::BTreeMap;

use common::{T0, view_json};
use hdrhistogram::Histogram;
use pipeline::window::WindowDelta;
use pipeline::{Dim, SessionConfig, Sessionizer};
use proptest::prelude::*;
use schemas::measures::window_sums;
use schemas::record::EventsRecord;
use schemas::{ClientInfo, Record};
use serde_json::{Map, Value, json};

const KINDS: [&str; 12] = [
    "playrequest", "playing", "pause", "seeking", "seeked", "stall_start", "stall_end", "quality_change", "segment",
    "error", "heartbeat", "playing",
];

/// One view: its events after the `viewstart` (kind, gap to the previous event in ms, payload knob),
/// whether it ends with a `viewend`, and how its events are cut into beacons.
#[derive(Debug, Clone)]
struct ViewSpec {
    start_ms: i64,
    events: Vec<(usize, i64, u32)>,
    viewend: bool,
    beacon_sizes: Vec<usize>,
    cdn: u32,
}

fn arb_view() -> impl Strategy<Value = ViewSpec> {
    (
        0i64..600_000,
        prop::collection::vec((0..KINDS.len(), 0i64..40_000, any::<u32>()), 1..40),
        any::<bool>(),
        prop::collection::vec(1usize..6, 1..40),
        0u32..3,
    )
        .prop_map(|(start_ms, events, viewend, beacon_sizes, cdn)| ViewSpec { start_ms, events, viewend, beacon_sizes, cdn })
}

/// How one beacon travels: latency in ms, and how much later than due it is finally sent (0 for most).
fn arb_delivery() -> impl Strategy<Value = (i64, i64)> {
    (
        0i64..3_000,
        prop_oneof![
            6 => Just(0i64),
            2 => 1i64..10_000,
            2 => 30_000i64..120_000,
            1 => 120_000i64..3 * 3_600_000,
        ],
    )
}

fn payload(kind: &str, knob: u32) -> Map<String, Value> {
    let k = knob as usize;
    let bitrate = [800.0, 1500.0, 3000.4, 6000.0][k % 4];
    let cache = ["hit", "miss", "unknown"][k / 4 % 3];
    let v = match kind {
        "quality_change" => json!({"bitrate_kbps": bitrate}),
        "segment" => json!({"bytes": 1000 + k % 5000, "cache": cache}),
        "error" => json!({"fatal": knob.is_multiple_of(4)}),
        _ => json!({}),
    };
    v.as_object().cloned().unwrap_or_default()
}

/// A view's beacons: (due time, events).
fn beacons(index: usize, v: &ViewSpec) -> Vec<(i64, Vec<Map<String, Value>>)> {
    let id = format!("v{index}");
    let mut ts = T0 + v.start_ms;
    let mut all = Vec::new();
    let mut start = payload("viewstart", 0);
    start.insert("cdn".into(), json!(format!("cdn{}", v.cdn)));
    all.push(("viewstart", ts, start));
    for (kind, gap, knob) in &v.events {
        ts += gap;
        all.push((KINDS[*kind], ts, payload(KINDS[*kind], *knob)));
    }
    if v.viewend {
        ts += 1_000;
        all.push(("viewend", ts, Map::new()));
    }
    let events: Vec<(i64, Map<String, Value>)> = all
        .into_iter()
        .enumerate()
        .map(|(seq, (kind, ts, mut m))| {
            m.insert("view_id".into(), json!(id));
            m.insert("seq".into(), json!(seq));
            m.insert("type".into(), json!(kind));
            m.insert("ts".into(), json!(ts));
            (ts, m)
        })
        .collect();
    let mut out = Vec::new();
    let mut rest = &events[..];
    let mut sizes = v.beacon_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        out.push((chunk[n - 1].0, chunk.iter().map(|(_, m)| m.clone()).collect()));
    }
    out
}

/// The records of every beacon, received in order of arrival, each with its (latency, lateness).
fn records(views: &[ViewSpec], deliveries: &[(i64, i64)], late: bool) -> Vec<Record> {
    let mut timed = Vec::new();
    let mut d = deliveries.iter().cycle();
    for (i, v) in views.iter().enumerate() {
        for (due, events) in beacons(i, v) {
            let (latency, lateness) = *d.next().unwrap_or(&(35, 0));
            let sent_at = due + if late { lateness } else { 0 };
            let client = ClientInfo { country: "DE".into(), device_type: "desktop".into(), ..ClientInfo::default() };
            let rec = EventsRecord { recv_ms: sent_at + latency, sent_at, key: None, view_id: format!("v{i}"), client, events };
            timed.push((rec.recv_ms, timed.len(), Record::Events(rec)));
        }
    }
    timed.sort_by_key(|(recv, n, _)| (*recv, *n));
    timed.into_iter().map(|(_, _, r)| r).collect()
}

/// What readers see: the latest version of each view, and per (window, dims) the summed deltas and
/// the net start-time histogram's buckets.
#[derive(Debug, PartialEq)]
struct Seen {
    views: BTreeMap<String, Value>,
    windows: BTreeMap<(i64, Vec<String>), (Vec<(String, i64)>, Vec<(u64, u64)>)>,
}

/// A histogram's distribution: (bucket value, count) of every non-empty bucket. What readers compute
/// quantiles from; unlike `Histogram`'s `==` it ignores the cached smallest non-zero value, which
/// `subtract` leaves stale when the histogram also holds zeros (found by this test: two equal
/// distributions compared unequal).
fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// `max_cached_views`: how many open views stay in memory after each flush; the others are read back
/// from the state store when needed, which must change nothing.
fn run(records: &[Record], flush_every: usize, max_cached_views: usize) -> Seen {
    let config = SessionConfig { window_ms: 10_000, dims: vec![Dim::Cdn, Dim::Country], max_cached_views, ..SessionConfig::default() };
    let mut s = Sessionizer::new(config);
    let mut views: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    let mut deltas: BTreeMap<(i64, Vec<String>), WindowDelta> = BTreeMap::new();
    let mut collect = |out: pipeline::Output| {
        for v in out.views {
            let e = views.entry(v.view_id.clone()).or_insert((0, Value::Null));
            assert!(v.version > e.0, "versions grow: {} after {}", v.version, e.0);
            *e = (v.version, view_json(&v));
        }
        for w in out.windows {
            deltas.entry((w.window_start, w.dims.to_vec())).or_default().merge(&w.delta);
        }
    };
    for chunk in records.chunks(flush_every) {
        for r in chunk {
            s.process(r.clone());
        }
        s.advance();
        collect(s.flush());
        assert!(s.sizes().cached_views <= max_cached_views, "{} views in memory, at most {max_cached_views}", s.sizes().cached_views);
    }
    s.end_all();
    collect(s.flush());
    assert_eq!(s.stats.uncorrected, 0);
    let windows = deltas
        .into_iter()
        .filter_map(|(key, d)| {
            let mut net = d.startup_hist.histogram();
            net.subtract(&d.startup_retract.histogram()).expect("a retraction never exceeds what was added");
            let sums: Vec<(String, i64)> =
                window_sums().filter(|(m, _)| d.sums[*m] != 0).map(|(m, name)| (name.to_owned(), d.sums[m])).collect();
            (!sums.is_empty() || net.len() > 0).then_some((key, (sums, buckets(&net))))
        })
        .collect();
    Seen { views: views.into_iter().map(|(k, (_, v))| (k, v)).collect(), windows }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn any_arrival_order_gives_the_in_order_result(
        views in prop::collection::vec(arb_view(), 1..6),
        deliveries in prop::collection::vec(arb_delivery(), 1..50),
        flush_every in 1usize..12,
        cached in prop_oneof![Just(1usize), Just(2), Just(100_000)],
    ) {
        // In order with every view in memory; in any order with most of them in the store only.
        let in_order = run(&records(&views, &deliveries, false), flush_every, 100_000);
        let any_order = run(&records(&views, &deliveries, true), flush_every, cached);
        prop_assert_eq!(&any_order.views, &in_order.views);
        prop_assert_eq!(&any_order.windows, &in_order.windows);
    }
}

/// The straggler that matters most (the "start time of 0 ms"): a `playrequest` overtaken by the
/// `playing` after it, for longer than the reorder wait. The correction retracts the 0 ms start.
#[test]
fn a_late_playrequest_corrects_the_start_time() {
    let view = ViewSpec { start_ms: 0, events: vec![(0, 100, 0), (1, 1_400, 0), (10, 10_000, 0)], viewend: true, beacon_sizes: vec![2, 3], cdn: 0 };
    // Beacon 0 (viewstart, playrequest) is sent 60 s late; beacon 1 (playing, heartbeat, viewend) on time.
    let in_order = run(&records(std::slice::from_ref(&view), &[(35, 0)], false), 1, 100_000);
    let late = run(&records(std::slice::from_ref(&view), &[(35, 60_000), (35, 0)], true), 1, 100_000);
    assert_eq!(in_order.views["v0"]["startup_ms"], json!(1_400));
    assert_eq!(late.views, in_order.views);
    assert_eq!(late.windows, in_order.windows);
    let (_, hist) = &late.windows.values().find(|(_, h)| !h.is_empty()).expect("a start");
    assert_eq!(hist, &vec![(1_400, 1)], "the 0 ms start was retracted");
}
