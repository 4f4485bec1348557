//! Sessionization: turns the record stream into per-view state machines and window deltas
//! (`docs/metrics.md` §3–§7: clock, order and duplicates, view end, bounded state, dimensions).
//!
//! - **Dedupe and reorder.** Each view expects `seq` 0, 1, 2, …; an event with a `seq` already applied or
//!   already waiting is a duplicate and dropped. Events ahead of a missing `seq` wait in the view's
//!   buffer; once the event after a gap has waited `reorder_wait_ms` (of its partition's clock) the view
//!   proceeds past that gap (counted in `gaps`); each gap waits on its own. A straggler for a skipped
//!   `seq` still goes to the `events` table (counted in `stragglers`) but no longer changes the view.
//! - **Clock.** A view's events are placed at `ts + offset`, `offset = recv_ms - sent_at` of the first
//!   record seen for the view, kept for its life.
//! - **Clocks.** Each source partition (a Kinesis shard, the local log) has its own clock: the largest
//!   collector receive time seen in its records. A view's time-based decisions (reorder wait, inactivity
//!   timeout, late horizon) use the clock of the partition its records come from, so a shard that lags
//!   while catching up a backlog never times out its views early because another shard ran ahead. A
//!   partition the source reports as caught up (nothing more to read) is moved to the epoch's clock
//!   ([`Sessionizer::tick`]), so views still end while a stream is quiet. Every input to these decisions
//!   is part of an epoch's recorded input, never read from the wall clock here, so replaying the same
//!   input from the same state produces the same output: what makes sink writes idempotent on replay.
//! - **Views end** at `viewend`, or when no record arrived for `inactivity_timeout_ms` of watermark time
//!   (ended at the last event's time), or when the next event in `seq` order comes more than
//!   `inactivity_timeout_ms` of the client's clock after the previous one (ended at the previous one:
//!   no interval stretches across the gap, so no event costs more than `inactivity_timeout_ms /
//!   window_ms + 1` windows). Ended view ids are remembered (for the late horizon) so a straggler
//!   cannot resurrect them; events sent after a view ended (a `seq` past its last) still go to the
//!   `events` table, while resent ones are dropped as duplicates.
//! - **Bounded state.** At `max_open_views` the views idle longest are ended (`evicted`, counted); at
//!   `max_ended_views` the oldest ended views are forgotten; a view remembers at most
//!   `max_gaps_per_view` skipped ranges (in a map, so a lookup is logarithmic); past
//!   `max_buffered_events` waiting for missing `seq`s, the view being fed stops waiting. Every cap acts
//!   on the input and the state alone, so a replay makes the same decisions.
//! - **Dimensions** of a view are fixed at its first window contribution (normally its `viewstart`, `seq`
//!   0) from the viewstart fields and the enrichment of the view's first record, so one view never
//!   splits across dimension values.
//! - **Late data.** Contributions placed before `watermark - late_horizon_ms` are dropped and counted in
//!   `late_dropped`; everything else, however late, becomes another delta row for its old window.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use schemas::event::ViewDims;
use schemas::record::{EventsRecord, RejectedRecord};
use schemas::{ClientInfo, Event, EventKind, Payload, Record, validate_event_map};
use serde::{Deserialize, Serialize};

use schemas::measures::Measure;

use crate::view::{Emit, Span, Totals, ViewMachine};
use crate::window::{DimValues, WindowRow, Windows};

pub use schemas::dims::{Dim, stream_type_str};

pub use crate::config::SessionConfig;

/// A finished view (the `views` table).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewRow {
    pub view_id: String,
    pub key: Option<String>,
    /// Event time of the first and last event.
    pub start_ms: i64,
    pub end_ms: i64,
    /// `viewend` or `timeout`.
    pub end_reason: &'static str,
    pub dims: ViewDims,
    pub client: ClientInfo,
    pub totals: Totals,
    pub events: u64,
    pub duplicates: u64,
    pub gaps: u64,
}

/// An accepted event (the `events` table): first occurrence of each `(view_id, seq)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event: Event,
    /// `ts + offset` of the view.
    pub event_ms: i64,
    pub recv_ms: i64,
    pub sent_at: i64,
    pub key: Option<String>,
    pub client: Arc<ClientInfo>,
    /// The event's JSON exactly as received (unknown fields included).
    pub raw: String,
}

impl EventRow {
    /// The row of `event` (`raw` as received) from `rec`, for a view placed at `offset_ms`.
    fn new(event: Event, raw: &serde_json::Map<String, serde_json::Value>, rec: &EventsRecord, offset_ms: i64, client: Arc<ClientInfo>) -> EventRow {
        EventRow {
            event_ms: event.ts + offset_ms,
            recv_ms: rec.recv_ms,
            sent_at: rec.sent_at,
            key: rec.key.clone(),
            client,
            raw: serde_json::Value::Object(raw.clone()).to_string(),
            event,
        }
    }
}

/// What one flush hands to the sinks.
#[derive(Debug, Default)]
pub struct Output {
    pub events: Vec<EventRow>,
    pub views: Vec<ViewRow>,
    pub windows: Vec<WindowRow>,
    pub rejected: Vec<RejectedRecord>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.views.is_empty() && self.windows.is_empty() && self.rejected.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub records: u64,
    pub events: u64,
    pub duplicates: u64,
    /// `seq` numbers skipped after the reorder wait.
    pub gaps: u64,
    /// Events whose window contributions were older than the late horizon.
    pub late_dropped: u64,
    /// Events for views that had already ended (kept in `events` when new, dropped when resent).
    pub after_end: u64,
    /// Events for a `seq` the view had already proceeded past (kept in `events` only).
    pub stragglers: u64,
    /// Events in records that no longer validate (from a newer or broken writer).
    pub invalid: u64,
    pub views_ended: u64,
    /// Views ended early because `max_open_views` was reached (`end_reason` `evicted`).
    pub evicted: u64,
    /// Ended views forgotten before the late horizon because `max_ended_views` was reached.
    pub ended_forgotten: u64,
    /// Skipped `seq` ranges forgotten because a view had `max_gaps_per_view` of them (a straggler for
    /// one of them counts as a duplicate).
    pub gaps_forgotten: u64,
    /// Records after which their view proceeded past its gaps at once because `max_buffered_events`
    /// was reached.
    pub buffer_overflows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Buffered {
    event: Event,
    raw_recv_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ViewSlot {
    machine: ViewMachine,
    next_seq: u64,
    buffer: BTreeMap<u64, Buffered>,
    offset_ms: i64,
    key: Option<String>,
    client: Arc<ClientInfo>,
    view_dims: Option<ViewDims>,
    dims: Option<DimValues>,
    last_recv_ms: i64,
    last_active: Option<i64>,
    events: u64,
    duplicates: u64,
    gaps: u64,
    /// Index of the partition (in [`Clocks`]) the view's latest record came from.
    partition: u32,
    /// `seq` ranges (half-open) the view proceeded past and has not received since.
    #[serde(default, skip_serializing_if = "SeqRanges::is_empty")]
    skipped: SeqRanges,
}

/// An ended view, remembered for the late horizon so a straggler cannot resurrect it: when it ended
/// (watermark), and what it still accepts for the `events` table: `seq`s at or past `next_seq`, or
/// inside `skipped` (each once), placed with the view's own offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct EndedView {
    at: i64,
    next_seq: u64,
    #[serde(default, skip_serializing_if = "SeqRanges::is_empty")]
    skipped: SeqRanges,
    offset_ms: i64,
}

impl EndedView {
    /// Whether `seq` is new for the view (`None`: seen before); if so it is marked seen, and at most
    /// `cap` ranges of unseen `seq`s are remembered: how many were forgotten for that.
    fn accept(&mut self, seq: u64, cap: usize) -> Option<u64> {
        if seq >= self.next_seq {
            let forgotten = if seq > self.next_seq { self.skipped.push(self.next_seq, seq, cap) } else { 0 };
            self.next_seq = seq + 1;
            return Some(forgotten);
        }
        self.skipped.take(seq, cap)
    }
}

/// Disjoint half-open `seq` ranges, keyed by their start: membership is O(log n), so a view that skips
/// every other `seq` costs no more per event than any other. At most `cap` ranges are kept; past it
/// the lowest are forgotten (a straggler for one of them then counts as a duplicate).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(u64, u64)>", into = "Vec<(u64, u64)>")]
struct SeqRanges(BTreeMap<u64, u64>);

impl From<Vec<(u64, u64)>> for SeqRanges {
    fn from(v: Vec<(u64, u64)>) -> SeqRanges {
        SeqRanges(v.into_iter().filter(|(a, b)| a < b).collect())
    }
}

impl From<SeqRanges> for Vec<(u64, u64)> {
    fn from(r: SeqRanges) -> Vec<(u64, u64)> {
        r.0.into_iter().collect()
    }
}

impl SeqRanges {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `[a, b)` (disjoint from the others); returns how many ranges were forgotten for `cap`.
    fn push(&mut self, a: u64, b: u64, cap: usize) -> u64 {
        self.0.insert(a, b);
        self.trim(cap)
    }

    fn trim(&mut self, cap: usize) -> u64 {
        let mut forgotten = 0;
        while self.0.len() > cap.max(1) {
            self.0.pop_first();
            forgotten += 1;
        }
        forgotten
    }

    fn contains(&self, seq: u64) -> bool {
        self.0.range(..=seq).next_back().is_some_and(|(_, &b)| seq < b)
    }

    /// Removes `seq` from the range holding it (`None` if none does); returns how many ranges were
    /// forgotten for `cap` (splitting a range adds one).
    fn take(&mut self, seq: u64, cap: usize) -> Option<u64> {
        let (&a, &b) = self.0.range(..=seq).next_back()?;
        if seq >= b {
            return None;
        }
        self.0.remove(&a);
        if a < seq {
            self.0.insert(a, seq);
        }
        if seq + 1 < b {
            self.0.insert(seq + 1, b);
        }
        Some(self.trim(cap))
    }
}

/// Per-partition clocks: the largest receive time seen in each source partition's records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Clocks {
    names: Vec<String>,
    times: Vec<i64>,
    #[serde(skip)]
    last: u32,
}

impl Clocks {
    fn index(&mut self, partition: &str) -> u32 {
        // Records come in runs from one partition: check the last one first.
        if self.names.get(self.last as usize).is_some_and(|n| n == partition) {
            return self.last;
        }
        self.last = self.find_or_add(partition);
        self.last
    }

    fn find_or_add(&mut self, partition: &str) -> u32 {
        match self.names.iter().position(|n| n == partition) {
            Some(i) => i as u32,
            None => {
                self.names.push(partition.to_owned());
                self.times.push(i64::MIN);
                (self.names.len() - 1) as u32
            }
        }
    }

    fn get(&self, i: u32) -> i64 {
        self.times.get(i as usize).copied().unwrap_or(i64::MIN)
    }

    fn raise(&mut self, i: u32, to: i64) {
        if let Some(t) = self.times.get_mut(i as usize) {
            *t = (*t).max(to);
        }
    }
}

impl ViewSlot {
    /// The view's state machine, and an emitter routing its contributions to `windows`.
    fn split<'a>(&'a mut self, windows: &'a mut Windows, dim_set: &'a [Dim], cutoff: i64) -> (&'a mut ViewMachine, WindowEmit<'a>) {
        let emit = WindowEmit {
            windows,
            dims: &mut self.dims,
            view_dims: &self.view_dims,
            client: &self.client,
            dim_set,
            offset: self.offset_ms,
            cutoff,
            last_active: &mut self.last_active,
        };
        (&mut self.machine, emit)
    }
}

/// Routes one view's contributions to the windows, placing client time at event time.
struct WindowEmit<'a> {
    windows: &'a mut Windows,
    dims: &'a mut Option<DimValues>,
    view_dims: &'a Option<ViewDims>,
    client: &'a ClientInfo,
    dim_set: &'a [Dim],
    offset: i64,
    cutoff: i64,
    last_active: &'a mut Option<i64>,
}

impl WindowEmit<'_> {
    fn dims(&mut self) -> DimValues {
        let (view_dims, client, set) = (self.view_dims, self.client, self.dim_set);
        self.dims
            .get_or_insert_with(|| {
                let empty = ViewDims::default();
                let v = view_dims.as_ref().unwrap_or(&empty);
                set.iter().map(|d| d.value(v, client)).collect::<Vec<_>>().into()
            })
            .clone()
    }
}

impl Emit for WindowEmit<'_> {
    fn add(&mut self, at: i64, adds: &[(Measure, i64)]) {
        let at = at + self.offset;
        if at >= self.cutoff {
            let dims = self.dims();
            self.windows.add(at, &dims, adds);
        }
    }
    fn span(&mut self, from: i64, to: i64, span: Span) {
        let (from, to) = ((from + self.offset).max(self.cutoff), to + self.offset);
        if from < to {
            let dims = self.dims();
            self.windows.span(from, to, &dims, span, self.last_active);
        }
    }
}

/// The part of a sessionizer that must survive a restart (saved in checkpoints after a flush, when no
/// window delta or output is pending).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionState {
    views: HashMap<String, ViewSlot>,
    ended: HashMap<u64, EndedView>,
    watermark: i64,
    clocks: Clocks,
    stats: Stats,
}

pub struct Sessionizer {
    config: SessionConfig,
    views: HashMap<String, ViewSlot>,
    /// Hash of ended view ids → when they ended and what they still accept.
    ended: HashMap<u64, EndedView>,
    windows: Windows,
    /// The largest receive time over all partitions.
    watermark: i64,
    clocks: Clocks,
    out: Output,
    pub stats: Stats,
    /// Events waiting in the views' buffers, over all views (bounded by `max_buffered_events`).
    buffered: usize,
}

/// The key of an ended view. Persisted in checkpoints, so the hash must not change between builds or
/// Rust releases (std's `DefaultHasher` may): XXH3-64, a specified algorithm, with seed 0.
fn id_hash(view_id: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(view_id.as_bytes())
}

impl Sessionizer {
    pub fn new(config: SessionConfig) -> Sessionizer {
        Sessionizer {
            windows: Windows::new(config.window_ms),
            config,
            views: HashMap::new(),
            ended: HashMap::new(),
            watermark: i64::MIN,
            clocks: Clocks::default(),
            out: Output::default(),
            stats: Stats::default(),
            buffered: 0,
        }
    }

    /// Restores a sessionizer from a checkpointed state.
    pub fn restore(config: SessionConfig, state: SessionState) -> Sessionizer {
        let mut s = Sessionizer::new(config);
        s.views = state.views;
        s.ended = state.ended;
        s.watermark = state.watermark;
        s.clocks = state.clocks;
        s.stats = state.stats;
        s.buffered = s.views.values().map(|v| v.buffer.len()).sum();
        s
    }

    /// The state to checkpoint. Call right after [`Sessionizer::flush`] (nothing pending).
    pub fn snapshot(&self) -> SessionState {
        debug_assert!(self.windows.is_empty() && self.out.is_empty(), "snapshot with unflushed output");
        SessionState {
            views: self.views.clone(),
            ended: self.ended.clone(),
            watermark: self.watermark,
            clocks: self.clocks.clone(),
            stats: self.stats.clone(),
        }
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn open_views(&self) -> usize {
        self.views.len()
    }

    /// Processes a record of the single, unnamed partition (tests and batch computations).
    pub fn process(&mut self, record: Record) {
        self.process_from("", record);
    }

    /// Processes a record read from source partition `partition`.
    pub fn process_from(&mut self, partition: &str, record: Record) {
        self.stats.records += 1;
        let p = self.clocks.index(partition);
        match record {
            Record::Events(r) => self.process_events(p, r),
            Record::Rejected(r) => {
                self.clocks.raise(p, r.recv_ms);
                self.watermark = self.watermark.max(r.recv_ms);
                self.out.rejected.push(r);
            }
        }
    }

    /// Moves the clocks of the partitions the source reported caught up (nothing more to read) to
    /// `clock`, the epoch's time: what ends views and proceeds past gaps while a partition is quiet.
    pub fn tick(&mut self, caught_up: &[String], clock: i64) {
        for name in caught_up {
            let p = self.clocks.index(name);
            self.clocks.raise(p, clock);
        }
        self.watermark = self.watermark.max(clock);
    }

    fn process_events(&mut self, p: u32, rec: EventsRecord) {
        self.clocks.raise(p, rec.recv_ms);
        self.watermark = self.watermark.max(rec.recv_ms);
        let n = rec.events.len() as u64;
        self.stats.events += n;
        let hash = id_hash(&rec.view_id);
        if self.ended.contains_key(&hash) {
            self.stats.after_end += n;
            self.events_after_end(hash, &rec);
            return;
        }
        if self.views.len() >= self.config.max_open_views && !self.views.contains_key(&rec.view_id) {
            self.evict_idle();
        }
        let offset = rec.offset_ms();
        let slot = self.views.entry(rec.view_id.clone()).or_insert_with(|| ViewSlot {
            machine: ViewMachine::new(),
            next_seq: 0,
            buffer: BTreeMap::new(),
            offset_ms: offset,
            key: rec.key.clone(),
            client: Arc::new(rec.client.clone()),
            view_dims: None,
            dims: None,
            last_recv_ms: rec.recv_ms,
            last_active: None,
            events: 0,
            duplicates: 0,
            gaps: 0,
            partition: p,
            skipped: SeqRanges::default(),
        });
        slot.last_recv_ms = slot.last_recv_ms.max(rec.recv_ms);
        slot.partition = p;
        for raw in &rec.events {
            let event = match validate_event_map(raw) {
                Ok(e) => e,
                Err(r) => {
                    self.stats.invalid += 1;
                    self.out.rejected.push(RejectedRecord {
                        recv_ms: rec.recv_ms,
                        key: rec.key.clone(),
                        index: None,
                        tag: r.tag.to_owned(),
                        reason: r.to_string(),
                        payload: RejectedRecord::truncate_payload(&serde_json::Value::Object(raw.clone()).to_string()),
                    });
                    continue;
                }
            };
            let straggler = event.view_id == rec.view_id && slot.skipped.contains(event.seq);
            if !straggler
                && (event.view_id != rec.view_id || event.seq < slot.next_seq || slot.buffer.contains_key(&event.seq))
            {
                slot.duplicates += 1;
                self.stats.duplicates += 1;
                continue;
            }
            slot.events += 1;
            self.out.events.push(EventRow::new(event.clone(), raw, &rec, slot.offset_ms, slot.client.clone()));
            if straggler {
                // Too late for the view, which proceeded past it; kept for the raw table, once.
                self.stats.gaps_forgotten += slot.skipped.take(event.seq, self.config.max_gaps_per_view).unwrap_or(0);
                self.stats.stragglers += 1;
                continue;
            }
            slot.buffer.insert(event.seq, Buffered { event, raw_recv_ms: rec.recv_ms });
            self.buffered += 1;
        }
        // Too much is waiting for missing `seq`s overall: this view stops waiting for its own.
        let skip_received_by = if self.buffered > self.config.max_buffered_events {
            self.stats.buffer_overflows += 1;
            i64::MAX
        } else {
            i64::MIN
        };
        self.drain_view(&rec.view_id, skip_received_by);
    }

    /// Ends the views idle longest (least recent record first; ties by id), a sixteenth of
    /// `max_open_views` at a time so the scan is amortised over many new views.
    fn evict_idle(&mut self) {
        let n = (self.config.max_open_views / 16).clamp(1, self.views.len().max(1));
        let mut order: Vec<(i64, &String)> = self.views.iter().map(|(id, v)| (v.last_recv_ms, id)).collect();
        if order.is_empty() {
            return;
        }
        order.select_nth_unstable(n - 1);
        let mut ids: Vec<String> = order[..n].iter().map(|(_, id)| (*id).clone()).collect();
        ids.sort();
        for id in ids {
            if self.close_view(&id, "evicted") {
                self.stats.evicted += 1;
            }
        }
    }

    /// Ends a view now, at its last event: proceeds past its gaps, closes what is open (an exit before
    /// start if it never started) and finalizes it with `reason` (unless a buffered `viewend` or an
    /// inactivity gap ended it first). Returns whether it was ended with `reason`.
    fn close_view(&mut self, id: &str, reason: &'static str) -> bool {
        self.drain_view(id, i64::MAX);
        let Some(slot) = self.views.get_mut(id) else { return false };
        let cutoff = self.clocks.get(slot.partition).saturating_sub(self.config.late_horizon_ms);
        let last = slot.machine.last_ts.unwrap_or_default();
        let (machine, mut emit) = slot.split(&mut self.windows, &self.config.dims, cutoff);
        machine.end(last, &mut emit);
        self.finalize(id, reason);
        true
    }

    /// Events for a view that already ended: new ones (a `seq` it never saw) go to the `events` table
    /// only, once; resent ones are duplicates.
    fn events_after_end(&mut self, hash: u64, rec: &EventsRecord) {
        let Some(ended) = self.ended.get_mut(&hash) else { return };
        for raw in &rec.events {
            let Ok(event) = validate_event_map(raw) else { continue };
            if event.view_id != rec.view_id {
                continue;
            }
            let Some(forgotten) = ended.accept(event.seq, self.config.max_gaps_per_view) else { continue };
            self.stats.gaps_forgotten += forgotten;
            self.out.events.push(EventRow::new(event, raw, rec, ended.offset_ms, Arc::new(rec.client.clone())));
        }
    }

    /// Applies the view's buffered events that are next in `seq` order. A gap is skipped only when the
    /// event after it was received at or before `skip_received_by` (`i64::MIN`: wait at every gap;
    /// `i64::MAX`: skip them all). Finalizes the view if it ended.
    fn drain_view(&mut self, view_id: &str, skip_received_by: i64) {
        let Some(slot) = self.views.get_mut(view_id) else { return };
        let cutoff = self.clocks.get(slot.partition).saturating_sub(self.config.late_horizon_ms);
        let mut reason = "viewend";
        while let Some(entry) = slot.buffer.first_entry() {
            let seq = *entry.key();
            if seq != slot.next_seq {
                if entry.get().raw_recv_ms > skip_received_by {
                    break;
                }
                slot.gaps += seq - slot.next_seq;
                self.stats.gaps += seq - slot.next_seq;
                self.stats.gaps_forgotten += slot.skipped.push(slot.next_seq, seq, self.config.max_gaps_per_view);
            }
            let b = entry.remove();
            self.buffered = self.buffered.saturating_sub(1);
            slot.next_seq = seq + 1;
            if let Some(last) = slot.machine.last_ts
                && b.event.ts.saturating_sub(last) > self.config.inactivity_timeout_ms
            {
                // docs/metrics.md §5: the view had ended at its previous event; this one (already in `events`)
                // changes no measure, and no interval stretches across the gap.
                let (machine, mut emit) = slot.split(&mut self.windows, &self.config.dims, cutoff);
                machine.end(last, &mut emit);
                self.stats.after_end += 1;
                reason = "timeout";
                break;
            }
            if b.event.ts + slot.offset_ms < cutoff {
                self.stats.late_dropped += 1;
            }
            if b.event.kind == EventKind::Viewstart && slot.view_dims.is_none() {
                if let Payload::Viewstart(d) = &b.event.payload {
                    slot.view_dims = Some((**d).clone());
                }
            }
            let (machine, mut emit) = slot.split(&mut self.windows, &self.config.dims, cutoff);
            machine.apply(&b.event, &mut emit);
            if slot.machine.is_ended() {
                break;
            }
        }
        if slot.machine.is_ended() {
            self.finalize(view_id, reason);
        }
    }

    fn finalize(&mut self, view_id: &str, reason: &'static str) {
        let Some(slot) = self.views.remove(view_id) else { return };
        self.stats.views_ended += 1;
        self.buffered = self.buffered.saturating_sub(slot.buffer.len());
        let hash = id_hash(view_id);
        // Seqs it never saw stay acceptable for the events table: the skipped ones, and any missing
        // between what it applied and what it still held buffered.
        let mut ended =
            EndedView { at: self.watermark, next_seq: slot.next_seq, skipped: slot.skipped.clone(), offset_ms: slot.offset_ms };
        for &seq in slot.buffer.keys() {
            self.stats.gaps_forgotten += ended.accept(seq, self.config.max_gaps_per_view).unwrap_or(0);
        }
        self.ended.insert(hash, ended);
        if self.ended.len() > self.config.max_ended_views {
            self.forget_oldest_ended();
        }
        let first = slot.machine.first_ts.unwrap_or_default();
        let last = slot.machine.last_ts.unwrap_or(first);
        self.out.views.push(ViewRow {
            view_id: view_id.to_owned(),
            key: slot.key,
            start_ms: first + slot.offset_ms,
            end_ms: last + slot.offset_ms,
            end_reason: reason,
            dims: slot.view_dims.unwrap_or_default(),
            client: (*slot.client).clone(),
            totals: slot.machine.totals,
            events: slot.events,
            duplicates: slot.duplicates,
            gaps: slot.gaps,
        });
    }

    /// Time-based decisions at the end of a batch, each on the clock of the view's partition: proceed
    /// past gaps that waited long enough, end inactive views, forget ended views older than the late
    /// horizon.
    pub fn advance(&mut self) {
        let mut waited: Vec<(String, i64)> = Vec::new();
        let mut inactive: Vec<String> = Vec::new();
        for (id, slot) in &self.views {
            let now = self.clocks.get(slot.partition);
            if now.saturating_sub(slot.last_recv_ms) >= self.config.inactivity_timeout_ms {
                inactive.push(id.clone());
            } else if let Some((_, first)) = slot.buffer.first_key_value()
                && now.saturating_sub(first.raw_recv_ms) >= self.config.reorder_wait_ms
            {
                waited.push((id.clone(), now.saturating_sub(self.config.reorder_wait_ms)));
            }
        }
        waited.sort();
        inactive.sort();
        for (id, received_by) in waited {
            self.drain_view(&id, received_by);
        }
        for id in inactive {
            self.close_view(&id, "timeout");
        }
        let (wm, horizon) = (self.watermark, self.config.late_horizon_ms);
        self.ended.retain(|_, e| wm.saturating_sub(e.at) < horizon);
    }

    /// Forgets the ended views that ended first (ties by id hash), a sixteenth of `max_ended_views` at
    /// a time: a straggler for one of them would start a new view.
    fn forget_oldest_ended(&mut self) {
        let n = (self.config.max_ended_views / 16).clamp(1, self.ended.len());
        let mut order: Vec<(i64, u64)> = self.ended.iter().map(|(h, e)| (e.at, *h)).collect();
        order.select_nth_unstable(n - 1);
        for (_, hash) in &order[..n] {
            self.ended.remove(hash);
        }
        self.stats.ended_forgotten += n as u64;
    }

    /// Ends every open view now (at its last event): for batch computations over a finished input.
    pub fn end_all(&mut self) {
        let mut ids: Vec<String> = self.views.keys().cloned().collect();
        ids.sort();
        for id in &ids {
            self.close_view(id, "timeout");
        }
    }

    /// Everything produced since the last flush: window deltas, finished views, events, dead letters.
    pub fn flush(&mut self) -> Output {
        let mut out = std::mem::take(&mut self.out);
        out.windows = self.windows.drain();
        out.views.sort_by(|a, b| a.view_id.cmp(&b.view_id));
        out
    }
}
