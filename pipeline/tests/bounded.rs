//! The pipeline fuzz target: arbitrary *valid* beacons, reaching for the extremes the protocol allows
//! (timestamps at both ends of 2000–2100, clocks skewed by decades, huge gaps between events, `seq`
//! gaps up to 2^53, duplicates, bursts of fresh views), fed to the sessionizer and the windows with small
//! caps. Nothing may panic, and the work and memory per event stay bounded — asserted as counts: window
//! rows per event, view and event rows, open, cached and remembered views, gaps and waiting events per view.

use pipeline::{Dim, SessionConfig, Sessionizer};
use proptest::prelude::*;
use schemas::beacon::{SEQ_MAX, TS_MAX_MS, TS_MIN_MS};
use schemas::record::EventsRecord;
use schemas::{ClientInfo, Record};
use serde_json::{Map, Value, json};

const KINDS: [&str; 14] = [
    "viewstart", "playrequest", "playing", "pause", "seeking", "seeked", "stall_start", "stall_end", "quality_change",
    "segment", "error", "heartbeat", "viewend", "playing",
];

const WINDOW_MS: i64 = 10_000;
const TIMEOUT_MS: i64 = 1_800_000;
const MAX_OPEN: usize = 40;
const MAX_ENDED: usize = 60;
const MAX_GAPS: usize = 8;
const MAX_BUFFERED: usize = 300;
const MAX_CACHED: usize = 5;

/// How the next event's time relates to the previous one of its view.
#[derive(Debug, Clone)]
enum Step {
    Small(i64),
    Huge(i64),
    Min,
    Max,
    Back(i64),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0i64..5_000).prop_map(Step::Small),
        2 => (TIMEOUT_MS - 5..TIMEOUT_MS * 100_000).prop_map(Step::Huge),
        1 => Just(Step::Min),
        1 => Just(Step::Max),
        1 => (0i64..1_000_000_000).prop_map(Step::Back),
    ]
}

/// How the next `seq` relates to the previous one of its view.
#[derive(Debug, Clone)]
enum SeqStep {
    Next,
    Skip(u64),
    Same,
    Far,
}

fn arb_seq() -> impl Strategy<Value = SeqStep> {
    prop_oneof![
        6 => Just(SeqStep::Next),
        2 => (2u64..5).prop_map(SeqStep::Skip),
        1 => Just(SeqStep::Same),
        1 => Just(SeqStep::Far),
    ]
}

/// One beacon: for view `view` (an index; fresh views get new indexes), its events, and its `sent_at`.
#[derive(Debug, Clone)]
struct Beacon {
    view: u32,
    fresh_views: u16,
    events: Vec<(usize, Step, SeqStep, u32)>,
    sent_at: i64,
    recv_step: i64,
}

fn arb_beacon() -> impl Strategy<Value = Beacon> {
    (
        0u32..60,
        prop_oneof![8 => Just(0u16), 1 => 1u16..400],
        prop::collection::vec((0..KINDS.len(), arb_step(), arb_seq(), any::<u32>()), 1..40),
        prop_oneof![Just(TS_MIN_MS), Just(TS_MAX_MS), TS_MIN_MS..=TS_MAX_MS],
        0i64..100_000,
    )
        .prop_map(|(view, fresh_views, events, sent_at, recv_step)| Beacon { view, fresh_views, events, sent_at, recv_step })
}

fn payload(kind: &str, knob: u32) -> Value {
    let k = knob as usize;
    let bitrate = [1.0, 500.0, 2500.4, 1_000_000.0][k % 4];
    let (bytes, cache) = ([0u64, 1, SEQ_MAX][k % 3], ["hit", "miss", "unknown"][k / 3 % 3]);
    match kind {
        "quality_change" => json!({"bitrate_kbps": bitrate}),
        "segment" => json!({"bytes": bytes, "cache": cache}),
        "error" => json!({"fatal": knob.is_multiple_of(3)}),
        "viewstart" => json!({"cdn": format!("cdn{}", knob % 3), "stream_type": "live"}),
        _ => json!({}),
    }
}

/// Turns the beacons into records, keeping per-view clocks and `seq`s as the steps say. Returns the
/// records and the number of distinct views.
fn records(beacons: &[Beacon]) -> (Vec<Record>, usize) {
    let mut last: std::collections::HashMap<String, (i64, u64)> = std::collections::HashMap::new();
    let mut recv = 1_700_000_000_000i64;
    let mut fresh = 0u64;
    let mut out = Vec::new();
    for b in beacons {
        recv += b.recv_step;
        let mut ids = vec![format!("v{}", b.view)];
        ids.extend((0..b.fresh_views).map(|_| {
            fresh += 1;
            format!("fresh{fresh}")
        }));
        for id in ids {
            let mut events: Vec<Map<String, Value>> = Vec::new();
            for (kind, step, seq_step, knob) in &b.events {
                let (ts, seq) = last.get(&id).copied().unwrap_or((b.sent_at, u64::MAX));
                let ts = match step {
                    Step::Small(d) => ts.saturating_add(*d),
                    Step::Huge(d) => ts.saturating_add(*d),
                    Step::Min => TS_MIN_MS,
                    Step::Max => TS_MAX_MS,
                    Step::Back(d) => ts.saturating_sub(*d),
                }
                .clamp(TS_MIN_MS, TS_MAX_MS);
                let seq = match (seq, seq_step) {
                    (u64::MAX, _) => 0,
                    (s, SeqStep::Next) => s + 1,
                    (s, SeqStep::Skip(k)) => s + k,
                    (s, SeqStep::Same) => s,
                    (_, SeqStep::Far) => SEQ_MAX - u64::from(*knob % 1000),
                }
                .min(SEQ_MAX);
                last.insert(id.clone(), (ts, seq));
                let mut e = payload(KINDS[*kind], *knob);
                let m = e.as_object_mut().expect("object");
                m.insert("view_id".into(), json!(id));
                m.insert("seq".into(), json!(seq));
                m.insert("type".into(), json!(KINDS[*kind]));
                m.insert("ts".into(), json!(ts));
                let event = Value::Object(m.clone());
                assert!(schemas::validate_event(&event).is_ok(), "the strategy makes valid events only: {event}");
                events.push(m.clone());
            }
            out.push(Record::Events(EventsRecord {
                recv_ms: recv,
                sent_at: b.sent_at,
                key: None,
                view_id: id,
                client: ClientInfo::default(),
                events,
            }));
        }
    }
    (out, last.len())
}

/// Inspects the state's sizes (after a flush: committed to the store).
fn assert_state_bounded(s: &Sessionizer) -> Result<(), TestCaseError> {
    let sizes = s.sizes();
    prop_assert!(sizes.open_views <= MAX_OPEN, "{} open views", sizes.open_views);
    prop_assert!(sizes.cached_views <= MAX_CACHED, "{} open views in memory", sizes.cached_views);
    prop_assert!(sizes.ended_views <= MAX_ENDED as u64, "{} ended views kept", sizes.ended_views);
    prop_assert!(sizes.max_skipped_ranges <= MAX_GAPS, "a view keeps {} gap ranges", sizes.max_skipped_ranges);
    // The cap is checked after each record: one record's events may wait beyond it.
    prop_assert!(sizes.buffered_events <= MAX_BUFFERED + 40, "{} events waiting", sizes.buffered_events);
    Ok(())
}

fn run(beacons: &[Beacon], flush_every: usize) -> Result<(), TestCaseError> {
    let (records, distinct_views) = records(beacons);
    let input_events: u64 = records.iter().map(|r| if let Record::Events(e) = r { e.events.len() as u64 } else { 0 }).sum();
    let config = SessionConfig {
        window_ms: WINDOW_MS,
        dims: vec![Dim::Cdn, Dim::StreamType],
        inactivity_timeout_ms: TIMEOUT_MS,
        reorder_wait_ms: 5_000,
        max_open_views: MAX_OPEN,
        max_ended_views: MAX_ENDED,
        max_gaps_per_view: MAX_GAPS,
        max_buffered_events: MAX_BUFFERED,
        max_cached_views: MAX_CACHED,
        ..SessionConfig::default()
    };
    let mut s = Sessionizer::new(config);
    // A span never crosses an inactivity gap, so it touches at most this many windows; every event
    // and every view's end contributes at most one span and one point.
    let per_event = (TIMEOUT_MS / WINDOW_MS + 2) as u64 + 1;
    let (mut event_rows, mut view_rows) = (0u64, 0u64);
    // A correction re-derives its view: its work is the events it replays.
    let mut flush = |s: &mut Sessionizer, before: (u64, u64, u64, u64)| -> Result<(), TestCaseError> {
        let out = s.flush();
        let (events, ended) = (s.stats.events - before.0, s.stats.views_ended - before.1);
        let (corrections, rederived) = (s.stats.corrections - before.2, s.stats.rederived_events - before.3);
        let bound = (events + ended + rederived) * per_event;
        prop_assert!(
            out.windows.len() as u64 <= bound,
            "{} window rows for {events} events, {ended} ended views and {rederived} re-derived events",
            out.windows.len()
        );
        event_rows += out.events.len() as u64;
        view_rows += out.views.len() as u64;
        // A view's end, and a correction of an ended view, each give a row (one per view and flush).
        prop_assert!(out.views.len() as u64 >= ended.min(1) && out.views.len() as u64 <= ended + corrections);
        assert_state_bounded(s)
    };
    let stamp = |s: &Sessionizer| (s.stats.events, s.stats.views_ended, s.stats.corrections, s.stats.rederived_events);
    for chunk in records.chunks(flush_every.max(1)) {
        let before = stamp(&s);
        for r in chunk {
            s.process(r.clone());
        }
        s.advance();
        flush(&mut s, before)?;
    }
    let before = stamp(&s);
    s.end_all();
    flush(&mut s, before)?;
    prop_assert!(event_rows <= input_events, "{event_rows} event rows from {input_events} events");
    // Every view ends once; one forgotten early may come back as a new view, at most once per record;
    // a record may correct an ended view once more.
    prop_assert!((distinct_views as u64..=2 * records.len() as u64).contains(&view_rows), "{view_rows} view rows, {distinct_views} views");
    prop_assert_eq!(s.open_views(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_valid_beacons_cost_bounded_work_and_memory(
        beacons in prop::collection::vec(arb_beacon(), 1..60),
        flush_every in 1usize..20,
    ) {
        run(&beacons, flush_every)?;
    }
}

/// A record of `events` for `view_id`, received and sent at `at`.
fn one_record(view_id: &str, at: i64, events: &[Value]) -> Record {
    Record::Events(EventsRecord {
        recv_ms: at,
        sent_at: at,
        key: None,
        view_id: view_id.into(),
        client: ClientInfo::default(),
        events: events.iter().map(|e| e.as_object().cloned().expect("object")).collect(),
    })
}

/// The beacon, as the pipeline would see it if a collector let it through: one `playing` now
/// and a `pause` at the end of 2099 cost a handful of windows, not a walk to 2100.
#[test]
fn a_pause_in_2099_after_playing_now_costs_a_handful_of_windows() {
    let now = 1_795_000_000_000i64;
    let events = [json!({"view_id": "b", "seq": 0, "type": "playing", "ts": now}), json!({"view_id": "b", "seq": 1, "type": "pause", "ts": TS_MAX_MS - 1})];
    let mut s = Sessionizer::new(SessionConfig::default());
    s.process(one_record("b", now, &events));
    s.advance();
    let out = s.flush();
    assert!(out.windows.len() <= 2, "{} windows", out.windows.len());
    assert_eq!(out.views.len(), 1, "the view ended at `playing`");
    assert_eq!((out.views[0].end_reason, out.views[0].totals[schemas::measures::Measure::PlayMs]), ("timeout", 0));
    assert_eq!(out.events.len(), 2, "both events are kept in `events`");
}

/// Ending every view of a finished input proceeds past the gaps each still waits at, with the real
/// inactivity rule: an event a second after its predecessor does not end the view.
#[test]
fn end_all_proceeds_past_gaps_and_keeps_the_inactivity_rule() {
    let t = 1_795_000_000_000i64;
    let events = [
        json!({"view_id": "w", "seq": 0, "type": "playing", "ts": t}),
        json!({"view_id": "w", "seq": 2, "type": "pause", "ts": t + 1_000}),
    ];
    let mut s = Sessionizer::new(SessionConfig::default());
    s.process(one_record("w", t, &events));
    s.advance();
    assert!(s.flush().views.is_empty(), "seq 2 waits for seq 1");
    s.end_all();
    let out = s.flush();
    assert_eq!(out.views.len(), 1);
    assert_eq!((out.views[0].end_reason, out.views[0].totals[schemas::measures::Measure::PlayMs], out.views[0].gaps), ("timeout", 1_000, 1));
}

/// `seq` gaps of up to 2^53 each, in 3,000 views: the `gaps` counter (a sum over views) passes
/// 2^64. Found by the fuzz target above in CI: `attempt to add with overflow` in `drain_view`. The
/// counter stops at its maximum, and each view's own `gaps` is exact.
#[test]
fn gaps_of_two_to_the_53_in_thousands_of_views_saturate_the_counter() {
    let t = 1_795_000_000_000i64;
    let mut s = Sessionizer::new(SessionConfig::default());
    let views = 3_000u64;
    for i in 0..views {
        let id = format!("g{i}");
        let events = [json!({"view_id": id, "seq": 0, "type": "playing", "ts": t}), json!({"view_id": id, "seq": SEQ_MAX, "type": "pause", "ts": t + 1_000})];
        s.process(one_record(&id, t, &events));
    }
    s.end_all();
    let out = s.flush();
    assert_eq!(out.views.len() as u64, views);
    assert!(out.views.iter().all(|v| v.gaps == SEQ_MAX - 1), "each view skipped seqs 1..2^53-1");
    assert_eq!(s.stats.gaps, u64::MAX, "{} × {} skipped seqs do not fit", views, SEQ_MAX - 1);
}

/// Segments of 2^53 − 1 bytes each (the protocol's largest), 1,100 of them in one view and one window:
/// the sums pass 2^63. A view's totals and a window's sums stop at `i64::MAX` rather than wrapping
/// to a negative number of bytes (or panicking in a debug build).
#[test]
fn byte_sums_past_i64_saturate_in_views_and_windows() {
    use schemas::measures::Measure::{BytesHit, BytesTotal, SegmentsHit};
    let t = 1_795_000_000_000i64;
    let mut s = Sessionizer::new(SessionConfig::default());
    let mut seq = 0u64;
    for _ in 0..2 {
        let events: Vec<Value> = (0..550)
            .map(|_| {
                seq += 1;
                json!({"view_id": "big", "seq": seq - 1, "type": "segment", "ts": t, "bytes": SEQ_MAX, "cache": "hit"})
            })
            .collect();
        s.process(one_record("big", t, &events));
    }
    s.end_all();
    let out = s.flush();
    assert_eq!(out.views.len(), 1);
    let totals = &out.views[0].totals;
    assert_eq!((totals[SegmentsHit], totals[BytesHit]), (1_100, i64::MAX));
    let cell: Vec<_> = out.windows.iter().filter(|w| w.delta.sums[SegmentsHit] != 0).collect();
    assert_eq!(cell.len(), 1, "one window, one cell");
    assert_eq!((cell[0].delta.sums[SegmentsHit], cell[0].delta.sums[BytesHit], cell[0].delta.sums[BytesTotal]), (1_100, i64::MAX, i64::MAX));
}

/// A view closed from outside (evicted at `max_open_views`) whose events go on past a gap: the view's
/// `gaps` and the `gaps` counter both count the `seq`s it skipped.
#[test]
fn gaps_of_a_view_closed_from_outside_are_counted() {
    let t = 1_795_000_000_000i64;
    let mut s = Sessionizer::new(SessionConfig { max_open_views: 1, ..SessionConfig::default() });
    s.process(one_record("a", t, &[json!({"view_id": "a", "seq": 0, "type": "playing", "ts": t})]));
    s.process(one_record("b", t, &[json!({"view_id": "b", "seq": 0, "type": "playing", "ts": t})]));
    assert_eq!(s.stats.evicted, 1, "b's arrival evicts a");
    s.process(one_record("a", t + 1_000, &[json!({"view_id": "a", "seq": 5, "type": "pause", "ts": t + 1_000})]));
    let out = s.flush();
    let a = out.views.iter().rfind(|v| v.view_id == "a").expect("a's row");
    assert_eq!((a.gaps, s.stats.gaps), (4, 4), "seqs 1..5 skipped");
}
