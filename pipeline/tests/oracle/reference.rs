//! The test oracle: a plain batch computation of the metric definitions (`docs/metrics.md`), written independently of the streaming code
//! (timeline first, then totals and windows from it) so the differential tests compare two
//! implementations: all records in, every view ended at its `viewend` or last event, every window summed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use schemas::{CacheStatus, ClientInfo, Event, EventKind, Payload, Record, validate_event_map};
use schemas::event::ViewDims;

use pipeline::sessionizer::Dim;
use pipeline::view::Totals;
use pipeline::window::WindowDelta;
use schemas::measures::Measure::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Play(Option<i64>),
    Stall(bool),
}

/// The batch result: totals per view and summed window measures per (window start, dims).
#[derive(Debug, Default)]
pub struct BatchResult {
    pub views: BTreeMap<String, Totals>,
    pub windows: BTreeMap<(i64, Vec<String>), WindowDelta>,
}

struct ViewInput {
    offset: i64,
    client: ClientInfo,
    /// The lowest `seq` of the record that set `offset` and `client`.
    offset_seq: u64,
    events: BTreeMap<u64, Event>,
}

pub fn compute(records: &[Record], window_ms: i64, dims: &[Dim]) -> BatchResult {
    compute_with_timeout(records, window_ms, dims, pipeline::SessionConfig::default().inactivity_timeout_ms)
}

/// [`compute`] where a view ends at an event followed by more than `inactivity_timeout_ms` of the
/// client's clock without another (`docs/metrics.md` §5).
pub fn compute_with_timeout(records: &[Record], window_ms: i64, dims: &[Dim], inactivity_timeout_ms: i64) -> BatchResult {
    let mut views: HashMap<String, ViewInput> = HashMap::new();
    for r in records {
        let Record::Events(r) = r else { continue };
        let v = views.entry(r.view_id.clone()).or_insert_with(|| ViewInput {
            offset: r.offset_ms(),
            client: r.client.clone(),
            offset_seq: u64::MAX,
            events: BTreeMap::new(),
        });
        let mut lowest = u64::MAX;
        for raw in &r.events {
            if let Ok(e) = validate_event_map(raw)
                && e.view_id == r.view_id
                && !v.events.contains_key(&e.seq)
            {
                lowest = lowest.min(e.seq);
                v.events.insert(e.seq, e);
            }
        }
        // The record that brought the view's lowest `seq` places it (docs/metrics.md §4).
        if lowest < v.offset_seq {
            (v.offset_seq, v.offset, v.client) = (lowest, r.offset_ms(), r.client.clone());
        }
    }
    let mut result = BatchResult::default();
    for (id, v) in views {
        let (totals, spans, points, vd) = timeline(&v.events, inactivity_timeout_ms);
        let vd = vd.unwrap_or_default();
        let key: Vec<String> = dims.iter().map(|d| d.value(&vd, &v.client)).collect();
        let win = |t: i64| (t + v.offset).div_euclid(window_ms) * window_ms;
        let mut active: BTreeSet<i64> = BTreeSet::new();
        for (from, to, kind) in spans {
            let (from, to) = (from + v.offset, to + v.offset);
            let mut w = from.div_euclid(window_ms) * window_ms;
            while w < to {
                let overlap = to.min(w + window_ms) - from.max(w);
                if overlap > 0 {
                    active.insert(w);
                    let d = result.windows.entry((w, key.clone())).or_default();
                    match kind {
                        Kind::Play(b) => {
                            d.sums[PlayMs] += overlap;
                            if let Some(b) = b {
                                d.sums[BitrateMs] += b * overlap;
                                d.sums[BitrateKnownMs] += overlap;
                            }
                        }
                        Kind::Stall(seek) => {
                            d.sums[StallMs] += overlap;
                            if seek {
                                d.sums[SeekStallMs] += overlap;
                            }
                        }
                    }
                }
                w += window_ms;
            }
        }
        for w in active {
            result.windows.entry((w, key.clone())).or_default().sums[ActiveViews] += 1;
        }
        for (t, name, value) in points {
            let d = result.windows.entry((win(t), key.clone())).or_default();
            match name {
                "attempt" => d.sums[Attempt] += 1,
                "start" => {
                    d.sums[Started] += 1;
                    d.sums[StartupMs] += value;
                    d.startup_hist.record(value);  // startup_hist
                }
                "vsf" => d.sums[Vsf] += 1,
                "ebvs" => d.sums[Ebvs] += 1,
                "pbf" => d.sums[PlaybackFailure] += 1,
                "stall" => d.sums[StallCount] += 1,
                "up" => d.sums[SwitchesUp] += 1,
                "down" => d.sums[SwitchesDown] += 1,
                "hit" => (d.sums[SegmentsHit] += 1, d.sums[BytesHit] += value, d.sums[BytesTotal] += value).0,
                "miss" => (d.sums[SegmentsMiss] += 1, d.sums[BytesTotal] += value).0,
                "unknown" => d.sums[SegmentsUnknown] += 1,
                "error" => d.sums[Errors] += 1,
                "fatal" => (d.sums[Errors] += 1, d.sums[FatalErrors] += 1).0,
                _ => unreachable!("point names are the ones above"),
            }
        }
        result.views.insert(id, totals);
    }
    result.windows.retain(|_, d| *d != WindowDelta::default());
    result
}

type Timeline = (Totals, Vec<(i64, i64, Kind)>, Vec<(i64, &'static str, i64)>, Option<ViewDims>);

/// Walks a view's events in seq order into spans (playing / stalled) and point measures.
fn timeline(events: &BTreeMap<u64, Event>, inactivity_timeout_ms: i64) -> Timeline {
    let mut spans = Vec::new();
    let mut points = Vec::new();
    let mut dims = None;
    let (mut attempt_at, mut started_at): (Option<i64>, Option<i64>) = (None, None);
    let (mut failed, mut vsf, mut pbf) = (false, false, false);
    // Current "mode": what the time since `since` is: playing / stalled(seek) / other.
    let mut mode: Option<Kind> = None;
    let mut seeking = false;
    let mut paused = false;
    let mut since = 0i64;
    let mut bitrate: Option<i64> = None;
    let mut now = i64::MIN;
    let mut t_end = None;
    let mut totals = Totals::default();
    for e in events.values() {
        if now != i64::MIN && e.ts.saturating_sub(now) > inactivity_timeout_ms {
            // Nothing for longer than the timeout: the view ended at its previous event.
            t_end = Some(now);
            break;
        }
        now = now.max(e.ts);
        let t = now;
        let close = |mode: &mut Option<Kind>, since: &mut i64, spans: &mut Vec<(i64, i64, Kind)>| {
            if let Some(k) = mode.take() {
                if t > *since {
                    spans.push((*since, t, k));
                }
            }
            *since = t;
        };
        match (&e.kind, &e.payload) {
            (EventKind::Viewstart, Payload::Viewstart(d)) => {
                dims.get_or_insert_with(|| (**d).clone());
            }
            (EventKind::Playrequest, _) => {
                if attempt_at.is_none() {
                    attempt_at = Some(t);
                    points.push((t, "attempt", 0));
                }
            }
            (EventKind::Playing, _) if !failed => {
                if started_at.is_none() {
                    if attempt_at.is_none() {
                        attempt_at = Some(t);
                        points.push((t, "attempt", 0));
                    }
                    started_at = Some(t);
                    points.push((t, "start", t - attempt_at.unwrap_or(t)));
                }
                close(&mut mode, &mut since, &mut spans);
                mode = Some(Kind::Play(bitrate));
                seeking = false;
                paused = false;
            }
            (EventKind::Pause | EventKind::Seeking, _) if !failed => {
                close(&mut mode, &mut since, &mut spans);
                seeking = e.kind == EventKind::Seeking;
                paused = e.kind == EventKind::Pause;
            }
            (EventKind::StallStart, _) => {
                let playing = matches!(mode, Some(Kind::Play(_)));
                if started_at.is_some() && !failed && !paused && (playing || (seeking && mode.is_none())) {
                    close(&mut mode, &mut since, &mut spans);
                    mode = Some(Kind::Stall(seeking));
                    points.push((t, "stall", 0));
                }
            }
            (EventKind::StallEnd, _) => {
                if matches!(mode, Some(Kind::Stall(_))) {
                    close(&mut mode, &mut since, &mut spans);
                    mode = Some(Kind::Play(bitrate));
                    seeking = false;
                }
            }
            (EventKind::QualityChange, Payload::QualityChange { bitrate_kbps, .. }) => {
                let b = bitrate_kbps.round() as i64;
                if matches!(mode, Some(Kind::Play(_))) {
                    close(&mut mode, &mut since, &mut spans);
                    mode = Some(Kind::Play(Some(b)));
                }
                if started_at.is_some() {
                    if let Some(prev) = bitrate {
                        if b > prev {
                            points.push((t, "up", 0));
                        } else if b < prev {
                            points.push((t, "down", 0));
                        }
                    }
                }
                bitrate = Some(b);
            }
            (EventKind::Segment, Payload::Segment { cache, bytes, .. }) => {
                let name = match cache {
                    CacheStatus::Hit => "hit",
                    CacheStatus::Miss => "miss",
                    CacheStatus::Unknown => "unknown",
                };
                points.push((t, name, *bytes as i64));
                match cache {
                    CacheStatus::Hit => (totals[SegmentsHit] += 1, totals[BytesHit] += *bytes as i64, totals[BytesTotal] += *bytes as i64).0,
                    CacheStatus::Miss => (totals[SegmentsMiss] += 1, totals[BytesMiss] += *bytes as i64, totals[BytesTotal] += *bytes as i64).0,
                    CacheStatus::Unknown => (totals[SegmentsUnknown] += 1, totals[BytesUnknown] += *bytes as i64).0,
                }
            }
            (EventKind::Error, Payload::Error { fatal, .. }) => {
                points.push((t, if *fatal { "fatal" } else { "error" }, 0));
                totals[Errors] += 1;
                if *fatal {
                    totals[FatalErrors] += 1;
                    if !failed {
                        if started_at.is_some() {
                            pbf = true;
                            points.push((t, "pbf", 0));
                        } else if attempt_at.is_some() {
                            vsf = true;
                            points.push((t, "vsf", 0));
                        }
                        close(&mut mode, &mut since, &mut spans);
                        failed = true;
                    }
                }
            }
            (EventKind::Viewend, _) => {
                close(&mut mode, &mut since, &mut spans);
                t_end = Some(t);
                break;
            }
            _ => {}
        }
    }
    let end = t_end.unwrap_or(now);
    if let Some(k) = mode.take() {
        if end > since {
            spans.push((since, end, k));
        }
    }
    if attempt_at.is_some() && started_at.is_none() && !failed {
        points.push((end, "ebvs", 0));
        totals.set_flag(Ebvs, true);
    }
    totals.set_flag(Attempt, attempt_at.is_some());
    totals.set_flag(Started, started_at.is_some());
    totals[StartupMs] = started_at.zip(attempt_at).map_or(0, |(s, a)| s - a);
    totals.set_flag(Vsf, vsf);
    totals.set_flag(PlaybackFailure, pbf);
    for (from, to, k) in &spans {
        let d = to - from;
        match k {
            Kind::Play(b) => {
                totals[PlayMs] += d;
                if let Some(b) = b {
                    totals[BitrateMs] += b * d;
                    totals[BitrateKnownMs] += d;
                }
            }
            Kind::Stall(seek) => {
                totals[StallMs] += d;
                if *seek {
                    totals[SeekStallMs] += d;
                }
            }
        }
    }
    totals[StallCount] = points.iter().filter(|p| p.1 == "stall").count() as i64;
    totals[SwitchesUp] = points.iter().filter(|p| p.1 == "up").count() as i64;
    totals[SwitchesDown] = points.iter().filter(|p| p.1 == "down").count() as i64;
    (totals, spans, points, dims)
}
