//! Per-partition clocks, caught-up ticks, gaps that each wait on their own, and the `events` table
//! keeping what arrives too late for its view.

mod common;

use common::*;
use pipeline::{SessionConfig, Sessionizer};
use schemas::ClientInfo;
use serde_json::{Value, json};

fn config() -> SessionConfig {
    SessionConfig {
        inactivity_timeout_ms: 60_000,
        reorder_wait_ms: 5_000,
        dims: vec![pipeline::Dim::Cdn],
        ..SessionConfig::default()
    }
}

fn ev(seq: u64, kind: &str, ts: i64) -> Value {
    json!({"seq": seq, "type": kind, "ts": ts})
}

fn viewstart(ts: i64) -> Value {
    json!({"seq": 0, "type": "viewstart", "ts": ts, "cdn": "c"})
}

fn ended(s: &mut Sessionizer) -> Vec<(String, &'static str)> {
    s.flush().views.into_iter().map(|v| (v.view_id, v.end_reason)).collect()
}

#[test]
fn a_lagging_partition_keeps_its_views_while_another_runs_ahead() {
    let mut s = Sessionizer::new(config());
    // Shard A is being caught up from a backlog: its view's last record is at 10 s.
    s.process_from("shard-a", record("slow", 10_000, 10_000, ClientInfo::default(), &[viewstart(0), ev(1, "playrequest", 100)]));
    // Shard B has already reached records two minutes later.
    s.process_from("shard-b", record("fast", 130_000, 130_000, ClientInfo::default(), &[viewstart(120_000)]));
    s.advance();
    assert!(ended(&mut s).is_empty(), "a view on the lagging shard timed out on the other shard's clock");
    // Shard A's own clock passing the timeout ends it.
    s.process_from("shard-a", record("other", 71_000, 71_000, ClientInfo::default(), &[viewstart(70_000)]));
    s.advance();
    assert_eq!(ended(&mut s), vec![("slow".to_owned(), "timeout")]);
}

#[test]
fn a_caught_up_partition_moves_to_the_epoch_clock_so_quiet_views_end() {
    let mut s = Sessionizer::new(config());
    s.process_from("local", record("quiet", 1_000, 1_000, ClientInfo::default(), &[viewstart(0), ev(1, "playrequest", 10)]));
    s.advance();
    assert!(ended(&mut s).is_empty());
    // No more records; the source reports the partition caught up at a later wall clock.
    s.tick(&["other".to_owned()], T0 + 120_000);
    s.advance();
    assert!(ended(&mut s).is_empty(), "a tick of another partition must not move this one");
    s.tick(&["local".to_owned()], T0 + 120_000);
    s.advance();
    assert_eq!(ended(&mut s), vec![("quiet".to_owned(), "timeout")]);
}

#[test]
fn each_gap_waits_on_its_own_and_stragglers_reach_the_events_table() {
    let mut s = Sessionizer::new(config());
    let c = ClientInfo::default;
    s.process(record("v", 0, 0, c(), &[viewstart(0), ev(1, "playrequest", 10)]));
    // seq 2 is missing; 3 arrives at 1 s.
    s.process(record("v", 1_000, 1_000, c(), &[ev(3, "playing", 500)]));
    // seq 5 is missing too; 6 arrives at 5.5 s, while 4 is still missing as well.
    s.process(record("v", 5_500, 5_500, c(), &[ev(4, "heartbeat", 600), ev(6, "heartbeat", 700)]));
    s.process(record("w", 6_500, 6_500, c(), &[viewstart(0)]));
    s.advance();
    // At 6.5 s the event after the first gap (seq 3, received at 1 s) has waited: skip seq 2 only.
    assert_eq!(s.stats.gaps, 1, "the second gap (seq 5, after 5.5 s) has not waited 5 s yet");
    s.process(record("w", 11_000, 11_000, c(), &[ev(1, "heartbeat", 1)]));
    s.advance();
    assert_eq!(s.stats.gaps, 2);
    let events_before = s.flush().events.len();
    assert_eq!(events_before, 7, "every distinct event is in the events table");
    // Stragglers for the skipped seqs: the events table gets them once, the view does not.
    s.process(record("v", 12_000, 12_000, c(), &[ev(2, "heartbeat", 450), ev(5, "heartbeat", 650), ev(5, "heartbeat", 650)]));
    let out = s.flush();
    let seqs: Vec<u64> = out.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![2, 5]);
    assert_eq!(s.stats.stragglers, 2);
    assert_eq!(s.stats.duplicates, 1, "the second seq 5 is a duplicate");
}

#[test]
fn events_sent_after_viewend_are_kept_once_and_do_not_reopen_the_view() {
    let mut s = Sessionizer::new(config());
    let c = ClientInfo::default;
    s.process(record("v", 0, 0, c(), &[viewstart(0), ev(1, "playrequest", 10), ev(2, "viewend", 20)]));
    s.advance();
    let first = s.flush();
    assert_eq!(first.views.len(), 1);
    assert_eq!(first.events.len(), 3);
    // The final beacon resent (SDK retry), then a genuinely new event after viewend.
    s.process(record("v", 1_000, 1_000, c(), &[ev(1, "playrequest", 10), ev(2, "viewend", 20)]));
    s.process(record("v", 2_000, 2_000, c(), &[ev(3, "heartbeat", 30)]));
    s.advance();
    let out = s.flush();
    assert!(out.views.is_empty(), "an ended view must not come back");
    let seqs: Vec<u64> = out.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3]);
    assert_eq!((s.stats.after_end, s.stats.duplicates), (1, 2), "seq 3 is past the end; 1 and 2 are resent");
    // Out of order after the end: 5 before 4, each kept once, at the view's own offset.
    s.process(record("v", 3_000, 2_000, c(), &[ev(5, "heartbeat", 50)]));
    s.process(record("v", 4_000, 3_000, c(), &[ev(4, "heartbeat", 40), ev(5, "heartbeat", 50), ev(4, "heartbeat", 40)]));
    let out = s.flush();
    let got: Vec<(u64, i64)> = out.events.iter().map(|e| (e.seq, e.event_ms - T0)).collect();
    assert_eq!(got, vec![(5, 50), (4, 40)], "the view's offset (0), not the late beacons' (1 s)");
}

#[test]
fn seqs_missing_behind_viewend_are_still_accepted_once_after_the_end() {
    let mut s = Sessionizer::new(config());
    let c = ClientInfo::default;
    // seq 3 (viewend) applies once 2 arrives; 5 waits behind the missing 4 when the view ends.
    s.process(record("v", 0, 0, c(), &[viewstart(0), ev(1, "playrequest", 10), ev(3, "viewend", 30), ev(5, "heartbeat", 50)]));
    s.process(record("v", 100, 100, c(), &[ev(2, "playing", 20)]));
    s.advance();
    assert_eq!(s.flush().views.len(), 1);
    s.process(record("v", 200, 200, c(), &[ev(4, "heartbeat", 40), ev(5, "heartbeat", 50), ev(6, "heartbeat", 60)]));
    let seqs: Vec<u64> = s.flush().events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![4, 6], "4 was never seen, 5 was (buffered), 6 is new");
}

#[test]
fn an_ended_view_stays_ended_across_a_checkpoint() {
    let mut s = Sessionizer::new(config());
    let c = ClientInfo::default;
    s.process(record("v", 0, 0, c(), &[viewstart(0), ev(1, "viewend", 10)]));
    s.advance();
    s.flush();
    // Reopened on the committed state (what a restart does).
    let store = s.store().clone();
    drop(s);
    let (mut s, _) = Sessionizer::open(config(), store).expect("the state loads");
    s.process(record("v", 1_000, 1_000, c(), &[ev(1, "viewend", 10), ev(2, "heartbeat", 20)]));
    s.advance();
    let out = s.flush();
    assert!(out.views.is_empty(), "the ended view stays ended");
    assert_eq!(out.events.len(), 1, "seq 2 is new for the events table; seq 1 is a resend");
    assert_eq!((s.stats.after_end, s.stats.duplicates), (1, 1));
}
