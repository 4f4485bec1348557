//! The per-view state machine: DESIGN.md §4 "Metric definitions" and "State rules", nothing else.
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

use schemas::{CacheStatus, Event, EventKind, Payload};
use serde::{Deserialize, Serialize};

/// A point measure, counted in the window of its defining event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    Attempt,
    Start { startup_ms: i64 },
    Vsf,
    Ebvs,
    PlaybackFailure,
    Stall,
    SwitchUp,
    SwitchDown,
    Segment { cache: CacheStatus, bytes: u64 },
    Error { fatal: bool },
}

/// A closed span of client time `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    /// Playing, at this bitrate (kbps, rounded) if known.
    Play { bitrate_kbps: Option<i64> },
    /// Stalled; `seek` when the stall happened while seeking.
    Stall { seek: bool },
}

pub trait Emit {
    fn point(&mut self, at: i64, point: Point);
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

/// Per-view totals (the `views` table's measures).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub attempt: bool,
    pub started: bool,
    pub startup_ms: Option<i64>,
    pub vsf: bool,
    pub ebvs: bool,
    pub playback_failure: bool,
    pub play_ms: i64,
    pub stall_count: u64,
    pub stall_ms: i64,
    pub seek_stall_ms: i64,
    /// Σ bitrate (kbps, rounded to an integer) × play time (ms) at that bitrate. Integer so sums are
    /// exact and merge in any order.
    pub bitrate_ms: i64,
    /// Play time at a known bitrate (the denominator of the view's own average bitrate).
    pub bitrate_known_ms: i64,
    pub switches_up: u64,
    pub switches_down: u64,
    pub segments_hit: u64,
    pub segments_miss: u64,
    pub segments_unknown: u64,
    pub bytes_hit: u64,
    pub bytes_miss: u64,
    pub bytes_unknown: u64,
    pub errors: u64,
    pub fatal_errors: u64,
}

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
                if !self.totals.started {
                    if !self.totals.attempt {
                        self.attempt(t, out);
                    }
                    let startup_ms = t - self.attempt_at.unwrap_or(t);
                    self.totals.started = true;
                    self.totals.startup_ms = Some(startup_ms);
                    out.point(t, Point::Start { startup_ms });
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
                    _ if !self.totals.started => return,
                    State::Playing => false,
                    State::Seeking => true,
                    _ => return, // paused, already stalled, failed
                };
                self.close_span(t, out);
                self.totals.stall_count += 1;
                out.point(t, Point::Stall);
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
                if self.totals.started {
                    match self.bitrate_kbps {
                        Some(prev) if bitrate_kbps > prev => {
                            self.totals.switches_up += 1;
                            out.point(t, Point::SwitchUp);
                        }
                        Some(prev) if bitrate_kbps < prev => {
                            self.totals.switches_down += 1;
                            out.point(t, Point::SwitchDown);
                        }
                        _ => {}
                    }
                }
                self.bitrate_kbps = Some(bitrate_kbps);
            }
            EventKind::Segment => {
                let Payload::Segment { cache, bytes, .. } = event.payload else { return };
                let t_ = &mut self.totals;
                match cache {
                    CacheStatus::Hit => (t_.segments_hit += 1, t_.bytes_hit += bytes),
                    CacheStatus::Miss => (t_.segments_miss += 1, t_.bytes_miss += bytes),
                    CacheStatus::Unknown => (t_.segments_unknown += 1, t_.bytes_unknown += bytes),
                };
                out.point(t, Point::Segment { cache, bytes });
            }
            EventKind::Error => {
                let Payload::Error { fatal, .. } = event.payload else { return };
                self.totals.errors += 1;
                if fatal {
                    self.totals.fatal_errors += 1;
                }
                out.point(t, Point::Error { fatal });
                if fatal && self.state != State::Failed {
                    if self.totals.started {
                        self.totals.playback_failure = true;
                        out.point(t, Point::PlaybackFailure);
                    } else if self.totals.attempt {
                        self.totals.vsf = true;
                        out.point(t, Point::Vsf);
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
        if t_.attempt && !t_.started && !t_.vsf && self.state != State::Failed {
            self.totals.ebvs = true;
            out.point(t, Point::Ebvs);
        }
        self.enter(State::Ended, t);
    }

    fn attempt(&mut self, t: i64, out: &mut impl Emit) {
        if !self.totals.attempt {
            self.totals.attempt = true;
            self.attempt_at = Some(t);
            out.point(t, Point::Attempt);
        }
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
        match self.state {
            State::Playing => {
                self.totals.play_ms += d;
                if let Some(b) = self.bitrate_kbps {
                    self.totals.bitrate_ms += b * d;
                    self.totals.bitrate_known_ms += d;
                }
                if d > 0 {
                    out.span(from, t, Span::Play { bitrate_kbps: self.bitrate_kbps });
                }
            }
            State::Stalled { seek } => {
                self.totals.stall_ms += d;
                if seek {
                    self.totals.seek_stall_ms += d;
                }
                if d > 0 {
                    out.span(from, t, Span::Stall { seek });
                }
            }
            _ => {}
        }
        self.span_from = t;
    }
}

/// An [`Emit`] that discards everything (when only totals matter).
pub struct Discard;

impl Emit for Discard {
    fn point(&mut self, _: i64, _: Point) {}
    fn span(&mut self, _: i64, _: i64, _: Span) {}
}
