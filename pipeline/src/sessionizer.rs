//! Sessionization: turns the record stream into per-view state machines and window deltas
//! (`docs/metrics.md` §3–§7: clock, order and duplicates, view end, bounded state, dimensions).
//!
//! - **Dedupe and reorder.** Each view expects `seq` 0, 1, 2, …; an event with a `seq` already applied or
//!   already waiting is a duplicate and dropped. Events ahead of a missing `seq` wait in the view's
//!   buffer; once the event after a gap has waited `reorder_wait_ms` (of its partition's clock) the view
//!   proceeds past that gap (counted in `gaps`); each gap waits on its own. The wait only saves work:
//! - **Corrections.** A straggler for a skipped `seq` (counted in `stragglers`), for an open view or for
//!   one that ended within the late horizon, joins the view's history, and the view is **re-derived**
//!   from its complete, ordered history: the difference between the new and the old derivation goes out
//!   as window deltas (negative and positive; a start time that moved is retracted from its old
//!   window's histogram and added to its new one), and an ended view's `views` row is emitted again
//!   with the next `version`. So any arrival order gives the measures of in-order arrival.
//! - **Clock.** A view's events are placed at `ts + offset`, `offset = recv_ms - sent_at` of the record
//!   that carried the view's lowest `seq` (in order: its first record); should a record with a lower
//!   `seq` arrive later, its offset and client replace them and the view is re-derived.
//! - **History and state** live in the [`StateStore`]: open views in memory and in the store, their
//!   events and the ended views on disk only; an epoch's changes are committed with its checkpoint.
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
//!   window_ms + 1` windows). Ended views are kept (for the late horizon) so a straggler
//!   corrects them instead of starting a new view; events sent after a view ended (a `seq` past its last) still go to the
//!   `events` table, while resent ones are dropped as duplicates.
//! - **Bounded state.** At `max_open_views` the views idle longest are ended (`evicted`, counted); at
//!   `max_ended_views` the oldest ended views are forgotten; a view's history holds at most
//!   `max_view_history` events (past it the view can no longer be corrected: `uncorrected`); a view
//!   remembers at most
//!   `max_gaps_per_view` skipped ranges (in a map, so a lookup is logarithmic); past
//!   `max_buffered_events` waiting for missing `seq`s, the view being fed stops waiting. Every cap acts
//!   on the input and the state alone, so a replay makes the same decisions.
//! - **Dimensions** of a view are fixed at its first window contribution (normally its `viewstart`, `seq`
//!   0) from the viewstart fields and the enrichment of the view's first record, so one view never
//!   splits across dimension values.
//! - **Late data.** Contributions placed before `watermark - late_horizon_ms` are dropped and counted in
//!   `late_dropped`; everything else, however late, becomes another delta row for its old window. An
//!   ended view is kept (with its history) until `late_horizon_ms` after it ended.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemas::event::ViewDims;
use schemas::record::{Checked, CheckedEvent, CheckedEvents, RejectedRecord};
use schemas::{ClientInfo, Event, EventKind, Payload, Record};
use serde::{Deserialize, Serialize};

use crate::history;
use crate::intern::Interner;
use crate::open::{Cold, OpenViews, Slot};
use crate::replay::{Place, ViewCore, derive};
use crate::store::{Commit, Forgotten, StateStore};
use crate::view::Totals;
use crate::window::{WindowRow, Windows};
use crate::{FastMap, FastSet};

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
    /// `seq`s skipped and never received.
    pub gaps: u64,
    /// 1 for the first row of a view, then one more for each correction: read the highest.
    pub version: u64,
}

/// An accepted event (the `events` table): first occurrence of each `(view_id, seq)`.
///
/// What the rows of one record's events share is written once, in their [`Received`], and the row
/// holds the event's columns, not a copy of the event: 152 bytes and no copy of the view id or key,
/// only of the payload's strings (a segment's host), instead of 216 bytes and a copy of each
/// (BENCHMARKS.md §30).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: u64,
    pub kind: EventKind,
    /// Client epoch milliseconds.
    pub ts: i64,
    pub playhead_ms: Option<f64>,
    /// The event's type-specific columns: its payload, except that a `viewstart`'s dimensions, not
    /// columns of the table, are left out ([`Payload::None`]; `raw` holds them).
    pub payload: Payload,
    /// `ts + offset` of the view.
    pub event_ms: i64,
    /// The event's JSON exactly as received (unknown fields included).
    pub raw: String,
    pub received: Arc<Received>,
}

/// What the `events` rows of one record share.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The record's view (every event accepted from it is of this view).
    pub view_id: String,
    pub recv_ms: i64,
    pub sent_at: i64,
    pub key: Option<String>,
    /// The view's client enrichment when the record came.
    pub client: Arc<ClientInfo>,
}

impl Received {
    fn new(rec: &CheckedEvents, client: Arc<ClientInfo>) -> Arc<Received> {
        Arc::new(Received { view_id: rec.view_id.clone(), recv_ms: rec.recv_ms, sent_at: rec.sent_at, key: rec.key.clone(), client })
    }
}

impl EventRow {
    /// The row of `event` (`raw`: its text as received), received as `received` says, for a view
    /// placed at `offset_ms`.
    fn new(event: &Event, raw: String, received: &Arc<Received>, offset_ms: i64) -> EventRow {
        let payload = match &event.payload {
            Payload::Viewstart(_) => Payload::None,
            other => other.clone(),
        };
        EventRow {
            seq: event.seq,
            kind: event.kind,
            ts: event.ts,
            playhead_ms: event.playhead_ms,
            payload,
            event_ms: event.ts + offset_ms,
            raw,
            received: received.clone(),
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
    /// Events for a `seq` the view had already proceeded past (each corrects its view).
    pub stragglers: u64,
    /// Views re-derived from their history (for stragglers, or a lower `seq` arriving last).
    pub corrections: u64,
    /// Events replayed by those re-derivations (old and new derivation): the cost of corrections.
    pub rederived_events: u64,
    /// Stragglers of views whose history was full (`max_view_history`): kept in `events` only.
    pub uncorrected: u64,
    /// Events in records that no longer validate (from a newer or broken writer).
    pub invalid: u64,
    pub views_ended: u64,
    /// Views ended early because `max_open_views` was reached (`end_reason` `evicted`).
    pub evicted: u64,
    /// Ended views forgotten before the late horizon because `max_ended_views` was reached.
    pub ended_forgotten: u64,
    /// Open views read back from the state store because they were not in memory
    /// (`max_cached_views`).
    pub cold_loads: u64,
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
    core: ViewCore,
    next_seq: u64,
    buffer: BTreeMap<u64, Buffered>,
    offset_ms: i64,
    /// The lowest `seq` of the record that set `offset_ms` and `client`.
    offset_seq: u64,
    key: Option<String>,
    client: Arc<ClientInfo>,
    last_recv_ms: i64,
    events: u64,
    duplicates: u64,
    gaps: u64,
    /// Index of the partition (in [`Clocks`]) the view's latest record came from.
    partition: u32,
    /// `seq` ranges (half-open) the view proceeded past and has not received since.
    #[serde(default, skip_serializing_if = "SeqRanges::is_empty")]
    skipped: SeqRanges,
    /// Events in the view's history (in the store or pending).
    history_len: u64,
    /// The history reached `max_view_history`: no longer recorded, so the view cannot be corrected.
    history_full: bool,
    /// `views` rows emitted so far.
    version: u64,
}

/// Makes a view loaded from the store hold the shared copies of its client and dimension values.
fn share(slot: &mut ViewSlot, clients: &mut Interner<ClientInfo>, windows: &mut Windows) {
    clients.share(&mut slot.client);
    slot.core.share_dims(windows);
}

impl Slot for ViewSlot {
    fn cold(&self) -> Cold {
        Cold {
            last_recv_ms: self.last_recv_ms,
            waiting_since: self.buffer.first_key_value().map(|(_, b)| b.raw_recv_ms),
            partition: self.partition,
            buffered: self.buffer.len() as u32,
            skipped: self.skipped.0.len() as u32,
        }
    }
}

/// An ended view, kept for the late horizon: its state (a straggler re-derives it), when it ended
/// (watermark), why, and what it still accepts for the `events` table past its end: `seq`s at or past
/// `after.next_seq`, or inside `after.skipped` (each once).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EndedSlot {
    slot: ViewSlot,
    at: i64,
    reason: String,
    /// The view's `next_seq` when it ended: stragglers are below it.
    frontier: u64,
    /// Closed from outside (no record for the inactivity timeout, evicted, or a batch's end) rather
    /// than by its own events (`viewend`, an inactivity gap in its clock): events past its end still
    /// belong to it, as they would have in order, and correct it.
    #[serde(default)]
    external: bool,
    after: EndedView,
}

/// The `seq`s past an ended view's end it has seen (for the `events` table only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct EndedView {
    next_seq: u64,
    #[serde(default, skip_serializing_if = "SeqRanges::is_empty")]
    skipped: SeqRanges,
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

/// The reason an ended view was stored with, as the static string rows carry.
fn end_reason(reason: &str) -> &'static str {
    match reason {
        "viewend" => "viewend",
        "evicted" => "evicted",
        _ => "timeout",
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

/// Sizes of a sessionizer's state ([`Sessionizer::sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSizes {
    pub open_views: usize,
    /// Open views in memory (the others are in the store only).
    pub cached_views: usize,
    /// Events waiting for a missing `seq`.
    pub buffered_events: usize,
    /// The most skipped `seq` ranges one open view remembers.
    pub max_skipped_ranges: usize,
    /// Ended views kept for the late horizon (committed, and ended since).
    pub ended_views: u64,
    /// Events added to histories since the last commit.
    pub pending_history_events: usize,
}

/// The sessionizer's own part of the store's `meta`: clocks and counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SessionMeta {
    watermark: i64,
    clocks: Clocks,
    stats: Stats,
}

/// What an epoch changed in the state, not yet committed to the store.
#[derive(Debug, Default)]
struct Pending {
    /// Open views written or ended (deleted from `open`) since the last commit.
    dirty: FastSet<String>,
    /// Ended views written since the last commit, and whether each is new to the store.
    ended: FastMap<String, (EndedSlot, bool)>,
    /// Events that joined views' histories since the last commit, encoded.
    history: FastMap<String, history::Chunk>,
}

impl Pending {
    /// Marks an open view written (or ended) this epoch; its id is copied only the first time.
    fn mark_dirty(&mut self, view_id: &str) {
        self.dirty.get_or_insert_with(view_id, str::to_owned);
    }
}

/// At most this many event rows are reserved ahead for an epoch ([`Sessionizer::flush`]).
const MAX_PRESIZED_EVENTS: usize = 1 << 19;

pub struct Sessionizer {
    config: SessionConfig,
    views: OpenViews<ViewSlot>,
    windows: Windows,
    /// The largest receive time over all partitions.
    watermark: i64,
    clocks: Clocks,
    out: Output,
    pub stats: Stats,
    /// Events waiting in the views' buffers, over all views (bounded by `max_buffered_events`).
    buffered: usize,
    store: StateStore,
    pending: Pending,
    /// The open views' client enrichments, one shared copy per distinct client (`crate::intern`).
    clients: Interner<ClientInfo>,
    /// Commit to the store at every flush (a sessionizer without a runner: tests, batch).
    autocommit: bool,
    /// The first store error since the last commit: the epoch cannot be committed.
    store_error: Option<String>,
}

impl Sessionizer {
    /// A sessionizer on a store in memory, committing at every flush (tests, batch computations).
    pub fn new(config: SessionConfig) -> Sessionizer {
        let mut s = Sessionizer::with_store(config, StateStore::in_memory());
        s.autocommit = true;
        s
    }

    fn with_store(config: SessionConfig, store: StateStore) -> Sessionizer {
        Sessionizer {
            windows: Windows::new(config.window_ms),
            views: OpenViews::new(config.max_cached_views),
            config,
            watermark: i64::MIN,
            clocks: Clocks::default(),
            out: Output::default(),
            stats: Stats::default(),
            buffered: 0,
            store,
            pending: Pending::default(),
            clients: Interner::default(),
            autocommit: false,
            store_error: None,
        }
    }

    /// Opens the sessionizer on the committed state of `store`; also returns the runner's checkpoint
    /// saved with it ([`Sessionizer::take_commit`]).
    pub fn open(config: SessionConfig, store: StateStore) -> crate::Result<(Sessionizer, Option<Vec<u8>>)> {
        use crate::error::Context;
        let mut s = Sessionizer::with_store(config, store.clone());
        let loaded = store.load(|id, v| {
            let mut slot: ViewSlot = serde_json::from_slice(v).with_context(|| format!("state store: open view {id:?}"))?;
            share(&mut slot, &mut s.clients, &mut s.windows);
            s.buffered += slot.buffer.len();
            s.views.insert_loaded(id.to_owned(), slot);
            Ok(())
        })?;
        if let Some(meta) = loaded.session {
            let meta: SessionMeta = serde_json::from_slice(&meta).context("state store: the sessionizer's meta")?;
            (s.watermark, s.clocks, s.stats) = (meta.watermark, meta.clocks, meta.stats);
        }
        Ok((s, loaded.checkpoint))
    }

    /// What the last epoch changed, with the runner's `checkpoint`, to write in one transaction
    /// ([`StateStore::commit`]). Call right after [`Sessionizer::flush`]. Fails if the store failed
    /// during the epoch.
    pub fn take_commit(&mut self, checkpoint: Option<Vec<u8>>) -> crate::Result<Commit> {
        debug_assert!(self.windows.is_empty() && self.out.is_empty(), "commit with unflushed output");
        if let Some(e) = self.store_error.take() {
            return Err(crate::Error::msg(e));
        }
        let pending = std::mem::take(&mut self.pending);
        let mut c = Commit { checkpoint, max_ended: self.config.max_ended_views, ..Commit::default() };
        c.expire_before = self.watermark.saturating_sub(self.config.late_horizon_ms);
        for id in pending.dirty {
            match self.views.hot.get(&id) {
                Some(slot) => c.open_put.push((id.clone(), serde_json::to_vec(slot)?)),
                // (A dirty view is hot until its commit; a cold one is unchanged in the store.)
                None if !self.views.contains(&id) => c.open_delete.push(id),
                None => {}
            }
        }
        for (id, (e, new)) in pending.ended {
            c.ended_put.push((id, e.at, new, serde_json::to_vec(&e)?));
        }
        for (id, chunk) in pending.history {
            if let Some(lowest) = chunk.lowest() {
                c.history_put.push((id, lowest, chunk.to_bytes()?));
            }
        }
        // In key order: the B-tree pages a commit touches are then visited once each, in order, rather
        // than in the order of a hash map (which made redb evict and re-read pages of its cache).
        c.open_put.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        c.ended_put.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        c.history_put.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let meta = SessionMeta { watermark: self.watermark, clocks: self.clocks.clone(), stats: self.stats.clone() };
        c.session = serde_json::to_vec(&meta)?;
        Ok(c)
    }

    /// After a commit: counts what it forgot, and lets the views received least recently leave memory
    /// (their state is in the store now) down to `max_cached_views`.
    pub fn committed(&mut self, forgotten: Forgotten) {
        self.stats.ended_forgotten += forgotten.over_cap;
        self.views.shed();
        self.clients.prune();
        self.windows.prune_dims();
    }

    /// How big the state is (for bounds checks and benchmarks).
    pub fn sizes(&self) -> StateSizes {
        StateSizes {
            open_views: self.views.len(),
            cached_views: self.views.hot_len(),
            buffered_events: self.views.summaries().map(|(_, c)| c.buffered as usize).sum(),
            max_skipped_ranges: self.views.summaries().map(|(_, c)| c.skipped as usize).max().unwrap_or(0),
            ended_views: self.store.ended_count().unwrap_or(0) + self.pending.ended.values().filter(|(_, new)| *new).count() as u64,
            pending_history_events: self.pending.history.values().map(history::Chunk::len).sum(),
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
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

    /// Processes a record read from source partition `partition` (its events validated here).
    pub fn process_from(&mut self, partition: &str, record: Record) {
        self.process_checked(partition, record.into());
    }

    /// Processes a record as [`Record::decode_checked`] gives it, read from source partition `partition`.
    pub fn process_checked(&mut self, partition: &str, record: Checked) {
        self.stats.records += 1;
        let p = self.clocks.index(partition);
        match record {
            Checked::Events(r) => self.process_events(p, r),
            Checked::Rejected(r) => {
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

    /// Records a store failure: the epoch will not commit (the runner retries it from the checkpoint).
    fn store_failed(&mut self, e: impl std::fmt::Display) {
        if self.store_error.is_none() {
            self.store_error = Some(format!("{e}"));
        }
    }

    /// Brings an open view that is not in memory back from the store (a failure fails the epoch).
    fn load_view(&mut self, view_id: &str) {
        match self.views.make_hot(view_id, &self.store) {
            Ok(false) => {}
            Ok(true) => {
                self.stats.cold_loads += 1;
                if let Some(slot) = self.views.hot.get_mut(view_id) {
                    share(slot, &mut self.clients, &mut self.windows);
                }
            }
            Err(e) => self.store_failed(e),
        }
    }

    /// An ended view (pending or committed) and whether it is new to the store; taken out of pending.
    fn take_ended(&mut self, view_id: &str) -> Option<(EndedSlot, bool)> {
        if let Some(e) = self.pending.ended.remove(view_id) {
            return Some(e);
        }
        match self.store.ended(view_id) {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(e) => Some((e, false)),
                Err(e) => {
                    self.store_failed(format!("state store: ended view {view_id:?}: {e}"));
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.store_failed(e);
                None
            }
        }
    }

    /// A view's complete history (committed and pending), in `seq` order.
    fn history_of(&mut self, view_id: &str) -> Vec<Event> {
        let mut events = Vec::new();
        match self.store.history(view_id) {
            Ok(chunks) => {
                for chunk in chunks {
                    match history::decode(view_id, &chunk) {
                        Ok(v) => events.extend(v),
                        Err(e) => self.store_failed(format!("state store: history of {view_id:?}: {e}")),
                    }
                }
            }
            Err(e) => self.store_failed(e),
        }
        let pending = self.pending.history.get(view_id).map(|p| p.to_bytes().and_then(|chunk| history::decode(view_id, &chunk)));
        match pending {
            Some(Ok(v)) => events.extend(v),
            Some(Err(e)) => self.store_failed(format!("state store: pending history of {view_id:?}: {e}")),
            None => {}
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        events
    }

    /// Adds events to a view's history (unless it is full). Returns whether they were recorded.
    fn record_history(pending: &mut Pending, config: &SessionConfig, view_id: &str, slot: &mut ViewSlot, events: &[Event]) -> bool {
        if events.is_empty() {
            return true;
        }
        if slot.history_full || slot.history_len + events.len() as u64 > config.max_view_history as u64 {
            slot.history_full = true;
            return false;
        }
        slot.history_len += events.len() as u64;
        let chunk = pending.history.entry_ref(view_id).or_default();
        events.iter().for_each(|e| chunk.push(e));
        true
    }

    fn process_events(&mut self, p: u32, mut rec: CheckedEvents) {
        self.clocks.raise(p, rec.recv_ms);
        self.watermark = self.watermark.max(rec.recv_ms);
        let n = rec.events.len() as u64;
        self.stats.events += n;
        self.load_view(&rec.view_id);
        if !self.views.contains(&rec.view_id) {
            if let Some((ended, new)) = self.take_ended(&rec.view_id) {
                self.events_for_ended(ended, new, rec);
                return;
            }
            if self.views.len() >= self.config.max_open_views {
                self.evict_idle();
            }
        }
        let offset = rec.offset_ms();
        let clients = &mut self.clients;
        // `entry_ref`: the id is copied only for a new view, not for each record.
        let slot = self.views.hot.entry_ref(rec.view_id.as_str()).or_insert_with(|| Box::new(ViewSlot {
            core: ViewCore::default(),
            next_seq: 0,
            buffer: BTreeMap::new(),
            offset_ms: offset,
            offset_seq: u64::MAX,
            key: rec.key.clone(),
            client: clients.shared(&rec.client),
            last_recv_ms: rec.recv_ms,
            events: 0,
            duplicates: 0,
            gaps: 0,
            partition: p,
            skipped: SeqRanges::default(),
            history_len: 0,
            history_full: false,
            version: 0,
        }));
        self.pending.mark_dirty(&rec.view_id);
        slot.last_recv_ms = slot.last_recv_ms.max(rec.recv_ms);
        slot.partition = p;
        let mut late = Vec::new();
        let mut lowest = u64::MAX;
        let mut received = None;
        for checked in std::mem::take(&mut rec.events) {
            let CheckedEvent { event, raw } = match checked {
                Ok(c) => c,
                Err((r, raw)) => {
                    self.stats.invalid += 1;
                    self.out.rejected.push(RejectedRecord {
                        recv_ms: rec.recv_ms,
                        key: rec.key.clone(),
                        index: None,
                        tag: r.tag.to_owned(),
                        reason: r.to_string(),
                        payload: RejectedRecord::truncate_payload(&raw),
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
            lowest = lowest.min(event.seq);
            let received = received.get_or_insert_with(|| Received::new(&rec, slot.client.clone()));
            self.out.events.push(EventRow::new(&event, raw, received, slot.offset_ms));
            if straggler {
                self.stats.gaps_forgotten += slot.skipped.take(event.seq, self.config.max_gaps_per_view).unwrap_or(0);
                self.stats.stragglers += 1;
                slot.gaps = slot.gaps.saturating_sub(1);
                late.push(event);
                continue;
            }
            slot.buffer.insert(event.seq, Buffered { event, raw_recv_ms: rec.recv_ms });
            self.buffered += 1;
        }
        // The record with the view's lowest `seq` places the view (in order: its first record).
        let mut replace = None;
        if lowest < slot.offset_seq {
            slot.offset_seq = lowest;
            if offset != slot.offset_ms || *slot.client != rec.client {
                replace = Some((offset, rec.client.clone()));
            }
        }
        if !late.is_empty() || replace.is_some() {
            self.correct_open(&rec.view_id, late, replace);
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

    /// Re-derives the open view `view_id` with `late` events added to its history and, if given, a new
    /// offset and client; emits the difference to the windows. Finalizes the view if the new
    /// derivation ends it.
    fn correct_open(&mut self, view_id: &str, late: Vec<Event>, replace: Option<(i64, ClientInfo)>) {
        let added = late.len();
        let full = self.views.hot.get(view_id).is_none_or(|slot| slot.history_full || slot.history_len + added as u64 > self.config.max_view_history as u64);
        if full {
            // Not re-derivable: the view stays where it was placed, without these events.
            self.stats.uncorrected += added as u64;
            if let Some(slot) = self.views.hot.get_mut(view_id) {
                slot.history_full = true;
            }
            return;
        }
        let mut history = self.history_of(view_id);
        let Some(slot) = self.views.hot.get_mut(view_id) else { return };
        let old = derive(&self.config, &history, slot.offset_ms, &slot.client, None);
        if let Some((offset, client)) = replace {
            (slot.offset_ms, slot.client) = (offset, self.clients.shared(&client));
        }
        Self::record_history(&mut self.pending, &self.config, view_id, slot, &late);
        history.extend(late);
        history.sort_by_key(|e| e.seq);
        let new = derive(&self.config, &history, slot.offset_ms, &slot.client, None);
        let cutoff = self.clocks.get(slot.partition).saturating_sub(self.config.late_horizon_ms);
        self.stats.late_dropped += self.windows.add_difference(old.windows, new.windows, cutoff);
        self.stats.corrections += 1;
        self.stats.rederived_events += (2 * history.len() - added) as u64;
        slot.core = new.core;
        if let Some(reason) = new.ended {
            self.finalize(view_id, reason);
        }
    }

    /// Events for a view that already ended: a straggler for a `seq` it skipped corrects it (a new
    /// `views` row version); a `seq` past its end goes to the `events` table only, once; resent ones
    /// are duplicates.
    fn events_for_ended(&mut self, mut e: EndedSlot, new: bool, mut rec: CheckedEvents) {
        let rec_events = std::mem::take(&mut rec.events);
        let rec = &rec;
        let mut late: Vec<Event> = Vec::new();
        let cap = self.config.max_gaps_per_view;
        let received = Received::new(rec, e.slot.client.clone());
        for checked in rec_events {
            let Ok(CheckedEvent { event, raw }) = checked else { continue };
            if event.view_id != rec.view_id {
                continue;
            }
            if event.seq < e.frontier {
                match e.slot.skipped.take(event.seq, cap) {
                    Some(forgotten) => {
                        self.stats.gaps_forgotten += forgotten;
                        self.stats.stragglers += 1;
                        e.slot.gaps = e.slot.gaps.saturating_sub(1);
                        e.slot.events += 1;
                        self.out.events.push(EventRow::new(&event, raw, &received, e.slot.offset_ms));
                        late.push(event);
                    }
                    None => {
                        e.slot.duplicates += 1;
                        self.stats.duplicates += 1;
                    }
                }
                continue;
            }
            if e.external {
                // Closed only for want of records: what it missed joins its history.
                if event.seq > e.frontier {
                    let skipped = event.seq - e.frontier;
                    e.slot.gaps = e.slot.gaps.saturating_add(skipped);
                    self.stats.gaps = self.stats.gaps.saturating_add(skipped);
                    self.stats.gaps_forgotten += e.slot.skipped.push(e.frontier, event.seq, cap);
                }
                e.frontier = event.seq + 1;
                e.slot.next_seq = e.frontier;
                self.stats.stragglers += 1;
                e.slot.events += 1;
                self.out.events.push(EventRow::new(&event, raw, &received, e.slot.offset_ms));
                late.push(event);
                continue;
            }
            match e.after.accept(event.seq, cap) {
                Some(forgotten) => {
                    self.stats.gaps_forgotten += forgotten;
                    self.stats.after_end += 1;
                    self.out.events.push(EventRow::new(&event, raw, &received, e.slot.offset_ms));
                }
                None => {
                    e.slot.duplicates += 1;
                    self.stats.duplicates += 1;
                }
            }
        }
        // As for an open view, the record with the lowest `seq` places the view.
        let mut replace = None;
        if let Some(lowest) = late.iter().map(|e| e.seq).min()
            && lowest < e.slot.offset_seq
        {
            e.slot.offset_seq = lowest;
            if rec.offset_ms() != e.slot.offset_ms || *e.slot.client != rec.client {
                replace = Some((rec.offset_ms(), rec.client.clone()));
            }
        }
        if !late.is_empty() {
            self.correct_ended(&rec.view_id, &mut e, late, replace);
        }
        self.pending.ended.insert(rec.view_id.clone(), (e, new));
    }

    /// Re-derives an ended view with `late` events added to its history: window differences, and its
    /// `views` row again with the next version.
    fn correct_ended(&mut self, view_id: &str, e: &mut EndedSlot, late: Vec<Event>, replace: Option<(i64, ClientInfo)>) {
        let added = late.len();
        if e.slot.history_full || e.slot.history_len + added as u64 > self.config.max_view_history as u64 {
            e.slot.history_full = true;
            self.stats.uncorrected += added as u64;
            return;
        }
        let mut history = self.history_of(view_id);
        let close = Some(end_reason(&e.reason));
        let old = derive(&self.config, &history, e.slot.offset_ms, &e.slot.client, close);
        if let Some((offset, client)) = replace {
            (e.slot.offset_ms, e.slot.client) = (offset, self.clients.shared(&client));
        }
        Self::record_history(&mut self.pending, &self.config, view_id, &mut e.slot, &late);
        history.extend(late);
        history.sort_by_key(|e| e.seq);
        let new = derive(&self.config, &history, e.slot.offset_ms, &e.slot.client, close);
        let cutoff = self.clocks.get(e.slot.partition).saturating_sub(self.config.late_horizon_ms);
        self.stats.late_dropped += self.windows.add_difference(old.windows, new.windows, cutoff);
        self.stats.corrections += 1;
        self.stats.rederived_events += (2 * history.len() - added) as u64;
        e.slot.core = new.core;
        let reason = new.ended.unwrap_or("timeout");
        // Ended by its own events now (a late `viewend`), or still closed from outside.
        e.external = new.closed;
        e.reason = reason.to_owned();
        e.slot.version += 1;
        self.out.views.push(view_row(view_id, &e.slot, reason));
    }

    /// Ends the views idle longest (least recent record first; ties by id), a sixteenth of
    /// `max_open_views` at a time so the scan is amortised over many new views.
    fn evict_idle(&mut self) {
        let n = (self.config.max_open_views / 16).clamp(1, self.views.len().max(1));
        let mut order: Vec<(i64, &String)> = self.views.summaries().map(|(id, c)| (c.last_recv_ms, id)).collect();
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
        let Some(slot) = self.views.hot.get_mut(id) else { return false };
        let cutoff = self.clocks.get(slot.partition).saturating_sub(self.config.late_horizon_ms);
        let place = Place::new(&self.config, slot.offset_ms, &slot.client, cutoff);
        slot.core.end(&place, &mut self.windows);
        self.finalize_as(id, reason, true);
        true
    }

    /// Applies the view's buffered events that are next in `seq` order. A gap is skipped only when the
    /// event after it was received at or before `skip_received_by` (`i64::MIN`: wait at every gap;
    /// `i64::MAX`: skip them all). Finalizes the view if it ended.
    fn drain_view(&mut self, view_id: &str, skip_received_by: i64) {
        self.load_view(view_id);
        let Some(slot) = self.views.hot.get_mut(view_id) else { return };
        let cutoff = self.clocks.get(slot.partition).saturating_sub(self.config.late_horizon_ms);
        let mut reason = "viewend";
        let mut applied = Vec::new();
        while let Some(entry) = slot.buffer.first_entry() {
            let seq = *entry.key();
            if seq != slot.next_seq {
                if entry.get().raw_recv_ms > skip_received_by {
                    break;
                }
                // Sums of gaps of up to 2^53 each: the counter, over all views, can pass 2^64.
                let skipped = seq - slot.next_seq;
                slot.gaps = slot.gaps.saturating_add(skipped);
                self.stats.gaps = self.stats.gaps.saturating_add(skipped);
                self.stats.gaps_forgotten += slot.skipped.push(slot.next_seq, seq, self.config.max_gaps_per_view);
            }
            let b = entry.remove();
            self.buffered = self.buffered.saturating_sub(1);
            slot.next_seq = seq + 1;
            let place = Place::new(&self.config, slot.offset_ms, &slot.client, cutoff);
            let placed = b.event.ts + slot.offset_ms;
            if !slot.core.step(&b.event, &place, &mut self.windows) {
                // The view had ended at its previous event; this one (already in `events`) changes no
                // measure, and no interval stretches across the gap.
                self.stats.after_end += 1;
                reason = "timeout";
                break;
            }
            if placed < cutoff {
                self.stats.late_dropped += 1;
            }
            applied.push(b.event);
            if slot.core.machine.is_ended() {
                break;
            }
        }
        if slot.buffer.is_empty() {
            // An emptied B-tree keeps its root node: eleven events' room, 1.7 KB, held by every view
            // whose events passed through its buffer (all of them, in order too) until it goes cold.
            // Found by heaptrack on `bench_pipeline memory`: the largest single item of an open view.
            slot.buffer = BTreeMap::new();
        }
        if !applied.is_empty() {
            self.pending.mark_dirty(view_id);
            // A full history only means the view can no longer be corrected.
            let _ = Self::record_history(&mut self.pending, &self.config, view_id, slot, &applied);
        }
        if slot.core.machine.is_ended() {
            self.finalize(view_id, reason);
        }
    }

    fn finalize(&mut self, view_id: &str, reason: &'static str) {
        self.finalize_as(view_id, reason, false);
    }

    /// Finalizes an open view; `external`: closed from outside, not by its own events.
    fn finalize_as(&mut self, view_id: &str, reason: &'static str, external: bool) {
        let Some(mut slot) = self.views.hot.remove(view_id) else { return };
        self.stats.views_ended += 1;
        self.buffered = self.buffered.saturating_sub(slot.buffer.len());
        self.pending.mark_dirty(view_id);
        // Seqs past the end it never saw stay acceptable for the events table; the ones it held
        // buffered were seen.
        let mut after = EndedView { next_seq: slot.next_seq, skipped: SeqRanges::default() };
        for &seq in slot.buffer.keys() {
            self.stats.gaps_forgotten += after.accept(seq, self.config.max_gaps_per_view).unwrap_or(0);
        }
        slot.buffer.clear();
        slot.version += 1;
        self.out.views.push(view_row(view_id, &slot, reason));
        let ended = EndedSlot { frontier: slot.next_seq, slot: *slot, at: self.watermark, reason: reason.to_owned(), external, after };
        self.pending.ended.insert(view_id.to_owned(), (ended, true));
    }

    /// Time-based decisions at the end of a batch, each on the clock of the view's partition: proceed
    /// past gaps that waited long enough, end inactive views. (Ended views older than the late horizon
    /// are forgotten by the commit.)
    pub fn advance(&mut self) {
        let mut waited: Vec<(String, i64)> = Vec::new();
        let mut inactive: Vec<String> = Vec::new();
        for (id, view) in self.views.summaries() {
            let now = self.clocks.get(view.partition);
            if now.saturating_sub(view.last_recv_ms) >= self.config.inactivity_timeout_ms {
                inactive.push(id.clone());
            } else if let Some(first) = view.waiting_since
                && now.saturating_sub(first) >= self.config.reorder_wait_ms
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
    }

    /// Ends every open view now (at its last event): for batch computations over a finished input.
    pub fn end_all(&mut self) {
        let mut ids: Vec<String> = self.views.summaries().map(|(id, _)| id.clone()).collect();
        ids.sort();
        for id in &ids {
            self.close_view(id, "timeout");
        }
    }

    /// Everything produced since the last flush: window deltas, finished views (the latest version of
    /// each), events, dead letters. A sessionizer made by [`Sessionizer::new`] also commits its state.
    pub fn flush(&mut self) -> Output {
        let mut out = std::mem::take(&mut self.out);
        // The next epoch's event rows, sized from this one's (an eighth more; bounded): grown from
        // empty by doubling, the vector was copied at every step (2.3 % of the pipeline's CPU), its
        // new memory faulted in each time (BENCHMARKS.md §30). Capacity costs no memory until used.
        let expect = out.events.len().saturating_add(out.events.len() / 8).min(MAX_PRESIZED_EVENTS);
        self.out.events = Vec::with_capacity(expect);
        out.windows = self.windows.drain();
        out.views.sort_by(|a, b| (&a.view_id, a.version).cmp(&(&b.view_id, b.version)));
        // Of several versions in one flush, the last supersedes the others.
        let mut views: Vec<ViewRow> = Vec::with_capacity(out.views.len());
        for v in out.views {
            match views.last_mut() {
                Some(last) if last.view_id == v.view_id => *last = v,
                _ => views.push(v),
            }
        }
        out.views = views;
        if self.autocommit {
            let committed = self.take_commit(None).and_then(|c| self.store.commit(c));
            match committed {
                Ok(f) => self.committed(f),
                Err(e) => self.store_failed(e),
            }
        }
        out
    }
}

/// The `views` row of a view (finished with `reason`).
fn view_row(view_id: &str, slot: &ViewSlot, reason: &'static str) -> ViewRow {
    let machine = &slot.core.machine;
    let first = machine.first_ts.unwrap_or_default();
    let last = machine.last_ts.unwrap_or(first);
    ViewRow {
        view_id: view_id.to_owned(),
        key: slot.key.clone(),
        start_ms: first + slot.offset_ms,
        end_ms: last + slot.offset_ms,
        end_reason: reason,
        dims: slot.core.view_dims.clone().unwrap_or_default(),
        client: (*slot.client).clone(),
        totals: machine.totals,
        events: slot.events,
        duplicates: slot.duplicates,
        gaps: slot.gaps,
        version: slot.version,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use schemas::record::EventsRecord;
    use serde_json::{Value, json};

    fn record(view_id: &str, ip: &str, seq0: u64, types: &[&str]) -> Record {
        let t0 = 1_700_000_000_000i64;
        let events = types
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                let mut e = json!({"view_id": view_id, "seq": seq0 + i as u64, "type": ty, "ts": t0 + 1000 * (seq0 + i as u64) as i64});
                if *ty == "viewstart" {
                    e["video_id"] = json!("v1");
                    e["cdn"] = json!("cdn-a");
                }
                let Value::Object(m) = e else { unreachable!() };
                m
            })
            .collect();
        Record::Events(EventsRecord {
            recv_ms: t0 + 1000 * seq0 as i64,
            sent_at: t0 + 1000 * seq0 as i64,
            key: None,
            view_id: view_id.to_owned(),
            client: ClientInfo { ip: Some(ip.to_owned()), device_type: "mobile".into(), ..Default::default() },
            events,
        })
    }

    /// Views with the same client and dimension values hold one copy of each, also when read back
    /// from the store; once no view holds a value, the commit forgets it.
    #[test]
    fn equal_clients_and_dimensions_are_shared_and_forgotten_with_their_views() {
        let config = SessionConfig { max_cached_views: 1, ..SessionConfig::default() };
        let (mut s, _) = Sessionizer::open(config, StateStore::in_memory()).unwrap();
        let commit = |s: &mut Sessionizer| {
            s.advance();
            drop(s.flush());
            let c = s.take_commit(None).unwrap();
            let forgotten = s.store.commit(c).unwrap();
            s.committed(forgotten);
        };
        for id in ["a", "b"] {
            s.process(record(id, "203.0.113.0", 0, &["viewstart", "playrequest", "playing"]));
        }
        s.process(record("c", "198.51.100.0", 0, &["viewstart", "playrequest", "playing"]));
        let (a, b, c) = (&s.views.hot["a"], &s.views.hot["b"], &s.views.hot["c"]);
        assert!(Arc::ptr_eq(&a.client, &b.client), "same client, one copy");
        assert!(!Arc::ptr_eq(&a.client, &c.client));
        let dims = |v: &ViewSlot| serde_json::to_value(&v.core).unwrap()["dims"].clone();
        assert_eq!(dims(a), dims(b));
        assert_eq!(s.clients.len(), 2);
        commit(&mut s);
        assert_eq!(s.views.hot_len(), 1, "the others went cold");
        // Read back from the store, a view takes the shared copies again.
        for id in ["a", "b", "c"] {
            s.process(record(id, if id == "c" { "198.51.100.0" } else { "203.0.113.0" }, 3, &["heartbeat"]));
        }
        let (a, b) = (&s.views.hot["a"], &s.views.hot["b"]);
        assert!(Arc::ptr_eq(&a.client, &b.client), "loaded views share their client again");
        assert!(Arc::ptr_eq(a.core.dims().unwrap(), b.core.dims().unwrap()), "and their dimension values");
        assert_eq!(s.clients.len(), 2);
        for id in ["a", "b", "c"] {
            s.process(record(id, if id == "c" { "198.51.100.0" } else { "203.0.113.0" }, 4, &["viewend"]));
        }
        commit(&mut s);
        assert_eq!(s.views.len(), 0);
        assert_eq!(s.clients.len(), 0, "no view holds a client: forgotten");
        assert_eq!(s.windows.dims_len(), 0, "nor dimension values");
    }
}
