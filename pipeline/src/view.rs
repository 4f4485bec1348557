//! The per-view state machine: `docs/metrics.md` §8–§9, nothing else.
//!
//! Events are fed in `seq` order (reordering and duplicate removal happen before, in the sessionizer).
//! Each event updates the view's totals and reports what it contributes, at which client time, to an
//! [`Emit`] target (the event-time windows): point measures at their defining event, and play/stall
//! spans when they close. Spans are also closed and reopened at every later event while they run, so
//! windows see durations as soon as an event proves them, not only at the end of a long play.
//!
//! Time is the client's `ts`, made non-decreasing within the view (a `ts` earlier than the previous
//! event's counts as the previous event's time), so a jumping client clock can never produce negative
//! durations. States: idle, playing, paused, seeking, stalled, failed, ended.

use schemas::measures::Measure::{self, *};
use schemas::measures::Values;
use schemas::{CacheStatus, Event, EventKind, Payload};
use serde::{Deserialize, Serialize};

/// A closed span of client time `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    /// Playing, at this bitrate (kbps, rounded) if known.
    Play { bitrate_kbps: Option<i64> },
    /// Stalled; `seek` when the stall happened while seeking.
    Stall { seek: bool },
}

impl Span {
    /// What `ms` of this span adds to the measures (unused slots add 0).
    #[inline]
    pub fn adds(self, ms: i64) -> [(Measure, i64); 3] {
        match self {
            Span::Play { bitrate_kbps: Some(b) } => [(PlayMs, ms), (BitrateMs, b * ms), (BitrateKnownMs, ms)],
            Span::Play { bitrate_kbps: None } => [(PlayMs, ms), (BitrateMs, 0), (BitrateKnownMs, 0)],
            Span::Stall { seek } => [(StallMs, ms), (SeekStallMs, if seek { ms } else { 0 }), (StallCount, 0)],
        }
    }
}

/// Where a view's contributions go (the event-time windows), besides its own totals.
pub trait Emit {
    /// Point measures at client time `at`: amounts of measures defined by one event (counts, bytes,
    /// the start time).
    fn add(&mut self, at: i64, adds: &[(Measure, i64)]);
    /// A closed span of play or stall time, split by the windows.
    fn span(&mut self, from: i64, to: i64, span: Span);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Idle,
    Playing,
    Paused,
    Seeking,
    /// Stalled; `seek` when the stall began while seeking.
    Stalled { seek: bool },
    Failed,
    Ended,
}

/// Per-view totals: one value per measure of `schemas::measures` (flags are 0 or 1); the `views`
/// table's measure columns.
pub type Totals = Values;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewMachine {
    pub state: State,
    pub totals: Totals,
    attempt_at: Option<i64>,
    /// Start of the open play or stall span.
    span_from: i64,
    bitrate_kbps: Option<i64>,
    /// Client time of the last event (the clamp for non-decreasing time).
    pub last_ts: Option<i64>,
    pub first_ts: Option<i64>,
}

impl Default for ViewMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl ViewMachine {
    pub fn new() -> ViewMachine {
        ViewMachine {
            state: State::Idle,
            totals: Totals::default(),
            attempt_at: None,
            span_from: 0,
            bitrate_kbps: None,
            last_ts: None,
            first_ts: None,
        }
    }

    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Applies one event (the next in `seq` order). Events after the end are ignored.
    pub fn apply(&mut self, event: &Event, out: &mut impl Emit) {
        if self.state == State::Ended {
            return;
        }
        let t = self.last_ts.map_or(event.ts, |last| event.ts.max(last));
        self.last_ts = Some(t);
        self.first_ts.get_or_insert(t);
        match event.kind {
            EventKind::Viewstart | EventKind::Seeked => {}
            EventKind::Heartbeat => self.checkpoint_span(t, out),
            EventKind::Playrequest => self.attempt(t, out),
            EventKind::Playing => {
                if self.state == State::Failed {
                    return;
                }
                if !self.totals.flag(Started) {
                    if !self.totals.flag(Attempt) {
                        self.attempt(t, out);
                    }
                    let startup_ms = t - self.attempt_at.unwrap_or(t);
                    self.count(t, &[(Started, 1), (StartupMs, startup_ms)], out);
                }
                self.close_span(t, out);
                self.enter(State::Playing, t);
            }
            EventKind::Pause | EventKind::Seeking => {
                if self.state == State::Failed {
                    return;
                }
                self.close_span(t, out);
                let next = if event.kind == EventKind::Pause { State::Paused } else { State::Seeking };
                self.enter(next, t);
            }
            EventKind::StallStart => {
                let seek = match self.state {
                    _ if !self.totals.flag(Started) => return,
                    State::Playing => false,
                    State::Seeking => true,
                    _ => return, // paused, already stalled, failed
                };
                self.close_span(t, out);
                self.count(t, &[(StallCount, 1)], out);
                self.enter(State::Stalled { seek }, t);
            }
            EventKind::StallEnd => {
                if matches!(self.state, State::Stalled { .. }) {
                    self.close_span(t, out);
                    self.enter(State::Playing, t);
                }
            }
            EventKind::QualityChange => {
                let Payload::QualityChange { bitrate_kbps, .. } = event.payload else { return };
                let bitrate_kbps = bitrate_kbps.round() as i64;
                // The old bitrate applies up to now, the new one from now on.
                self.checkpoint_span(t, out);
                if self.totals.flag(Started) {
                    match self.bitrate_kbps {
                        Some(prev) if bitrate_kbps > prev => self.count(t, &[(SwitchesUp, 1)], out),
                        Some(prev) if bitrate_kbps < prev => self.count(t, &[(SwitchesDown, 1)], out),
                        _ => {}
                    }
                }
                self.bitrate_kbps = Some(bitrate_kbps);
            }
            EventKind::Segment => {
                let Payload::Segment { cache, bytes, .. } = event.payload else { return };
                let bytes = bytes as i64;
                let adds = match cache {
                    CacheStatus::Hit => [(SegmentsHit, 1), (BytesHit, bytes), (BytesTotal, bytes)],
                    CacheStatus::Miss => [(SegmentsMiss, 1), (BytesMiss, bytes), (BytesTotal, bytes)],
                    CacheStatus::Unknown => [(SegmentsUnknown, 1), (BytesUnknown, bytes), (BytesTotal, 0)],
                };
                self.count(t, &adds, out);
            }
            EventKind::Error => {
                let Payload::Error { fatal, .. } = event.payload else { return };
                self.count(t, &[(Errors, 1), (FatalErrors, i64::from(fatal))], out);
                if fatal && self.state != State::Failed {
                    if self.totals.flag(Started) {
                        self.count(t, &[(PlaybackFailure, 1)], out);
                    } else if self.totals.flag(Attempt) {
                        self.count(t, &[(Vsf, 1)], out);
                    }
                    self.close_span(t, out);
                    self.enter(State::Failed, t);
                }
            }
            EventKind::Viewend => self.end(t, out),
        }
    }

    /// Ends the view at `t` (a `viewend`, or the inactivity timeout at the last event's time).
    pub fn end(&mut self, t: i64, out: &mut impl Emit) {
        if self.state == State::Ended {
            return;
        }
        let t = self.last_ts.map_or(t, |last| t.max(last));
        self.close_span(t, out);
        let t_ = &self.totals;
        if t_.flag(Attempt) && !t_.flag(Started) && !t_.flag(Vsf) && self.state != State::Failed {
            self.count(t, &[(Ebvs, 1)], out);
        }
        self.enter(State::Ended, t);
    }

    fn attempt(&mut self, t: i64, out: &mut impl Emit) {
        if !self.totals.flag(Attempt) {
            self.attempt_at = Some(t);
            self.count(t, &[(Attempt, 1)], out);
        }
    }

    /// Adds point measures to the totals and emits them at `t`.
    fn count(&mut self, t: i64, adds: &[(Measure, i64)], out: &mut impl Emit) {
        for &(m, amount) in adds {
            self.totals.add(m, amount);
        }
        out.add(t, adds);
    }

    fn enter(&mut self, state: State, t: i64) {
        self.state = state;
        self.span_from = t;
    }

    /// Accounts the open span up to `t` and keeps it open from `t` (same totals, fresher windows).
    fn checkpoint_span(&mut self, t: i64, out: &mut impl Emit) {
        if matches!(self.state, State::Playing | State::Stalled { .. }) {
            let state = self.state;
            self.close_span(t, out);
            self.enter(state, t);
        }
    }

    /// Closes the open play or stall span at `t`, if any.
    fn close_span(&mut self, t: i64, out: &mut impl Emit) {
        let from = self.span_from;
        let d = t - from;
        let span = match self.state {
            State::Playing => Some(Span::Play { bitrate_kbps: self.bitrate_kbps }),
            State::Stalled { seek } => Some(Span::Stall { seek }),
            _ => None,
        };
        if let Some(span) = span {
            for (m, amount) in span.adds(d) {
                self.totals.add(m, amount);
            }
            if d > 0 {
                out.span(from, t, span);
            }
        }
        self.span_from = t;
    }
}

/// An [`Emit`] that discards everything (when only totals matter).
pub struct Discard;

impl Emit for Discard {
    fn add(&mut self, _: i64, _: &[(Measure, i64)]) {}
    fn span(&mut self, _: i64, _: i64, _: Span) {}
}
