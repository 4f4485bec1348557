//! The open views: the hot ones in memory, the others only in the state store's `open` table, with
//! in memory just what the clock's decisions need of them ([`Cold`]: when their last record came,
//! from which partition, since when an event waits for a missing `seq`). `docs/architecture.md` §7.
//!
//! At most `max_cached_views` views are hot after each commit: the commit writes every view an epoch
//! changed, so every view is clean right after it, and the ones received least recently go cold by
//! being dropped from memory. A cold view is read back from the store when a record or a clock
//! decision needs it. Whether a view is hot or cold changes no output: its state in the store is its
//! state in memory (serde round trip, floats exactly: `serde_json`'s `float_roundtrip`).

use crate::FastMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StateStore;

/// What the sessionizer keeps of a view that is not in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cold {
    pub(crate) last_recv_ms: i64,
    /// Receive time of the first event waiting for a missing `seq` (`None`: nothing waits).
    pub(crate) waiting_since: Option<i64>,
    /// Index of the partition the view's latest record came from.
    pub(crate) partition: u32,
    /// Events waiting for a missing `seq`.
    pub(crate) buffered: u32,
    /// Skipped `seq` ranges the view remembers.
    pub(crate) skipped: u32,
}

/// A view's state, as the open views keep it.
pub(crate) trait Slot: Serialize + DeserializeOwned {
    /// What stays in memory when the view goes cold.
    fn cold(&self) -> Cold;
}

/// Every open view, hot or cold.
#[derive(Debug)]
pub(crate) struct OpenViews<S> {
    /// The views in memory (every view an epoch touched stays here until its commit). Boxed: a view's
    /// state is hundreds of bytes, and a map of them inline kept that much in every empty bucket too
    /// (a fifth of the pipeline's memory with a tenth of 100,000 views in memory, `BENCHMARKS.md` §10).
    pub(crate) hot: FastMap<String, Box<S>>,
    cold: FastMap<String, Cold>,
    /// Hot views kept at most after a commit.
    cap: usize,
}

impl<S: Slot> OpenViews<S> {
    pub(crate) fn new(cap: usize) -> OpenViews<S> {
        OpenViews { hot: FastMap::default(), cold: FastMap::default(), cap: cap.max(1) }
    }

    pub(crate) fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }

    pub(crate) fn hot_len(&self) -> usize {
        self.hot.len()
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.hot.contains_key(id) || self.cold.contains_key(id)
    }

    /// A view loaded from the store at start-up: hot while there is room, cold past it.
    pub(crate) fn insert_loaded(&mut self, id: String, slot: S) {
        if self.hot.len() < self.cap {
            self.hot.insert(id, Box::new(slot));
        } else {
            self.cold.insert(id, slot.cold());
        }
    }

    /// Brings a cold view back into memory from the store; Ok(true) if it was cold (false: hot, or
    /// not open).
    pub(crate) fn make_hot(&mut self, id: &str, store: &StateStore) -> crate::Result<bool> {
        if !self.cold.contains_key(id) {
            return Ok(false);
        }
        let bytes = store.open_view(id)?.ok_or_else(|| crate::Error::msg(format!("state store: open view {id:?} is missing")))?;
        let slot: Box<S> = serde_json::from_slice(&bytes).map_err(|e| crate::Error::msg(format!("state store: open view {id:?}: {e}")))?;
        self.cold.remove(id);
        self.hot.insert(id.to_owned(), slot);
        Ok(true)
    }

    /// What the clock needs of every open view, hot or cold (in no particular order).
    pub(crate) fn summaries(&self) -> impl Iterator<Item = (&String, Cold)> {
        self.hot.iter().map(|(id, s)| (id, s.cold())).chain(self.cold.iter().map(|(id, c)| (id, *c)))
    }

    /// Lets the views received least recently go cold, down to the cap. Only right after a commit:
    /// then every view's state in the store is its state in memory.
    pub(crate) fn shed(&mut self) {
        if self.hot.len() <= self.cap {
            return;
        }
        // Down to 7/8 of the cap, so that the selection is amortised over many epochs.
        let keep = self.cap - self.cap / 8;
        let mut order: Vec<(i64, &String)> = self.hot.iter().map(|(id, s)| (s.cold().last_recv_ms, id)).collect();
        let n = order.len() - keep;
        order.select_nth_unstable(n - 1);
        let ids: Vec<String> = order[..n].iter().map(|(_, id)| (*id).clone()).collect();
        for id in ids {
            if let Some(slot) = self.hot.remove(&id) {
                self.cold.insert(id, slot.cold());
            }
        }
    }
}
