//! The sessionizer's state store: open views, ended views kept for the late horizon, and every view's
//! event history, in an embedded, crash-safe database ([redb]) on disk (`docs/architecture.md` §7).
//!
//! One redb file per pipeline source (`pipeline/<source>.state.redb`). Tables:
//!
//! - `open`: view id → the open view's state (without its history);
//! - `ended`: view id → an ended view's state, kept until the late horizon so a late event corrects it;
//! - `ended_at`: (when it ended, view id), the order in which ended views expire;
//! - `history`: (view id, lowest `seq` of the chunk) → a chunk of the view's events ([`crate::history`]), one chunk
//!   per view and epoch: what a correction re-derives the view from;
//! - `meta`: the sessionizer's clocks and counters, and the runner's checkpoint (epoch, position).
//!
//! The sessionizer reads from the last committed state and keeps what an epoch changes in memory
//! ([`Commit`]); the runner writes it in **one transaction** together with the checkpoint, after the
//! epoch's sink writes. A crash before the commit leaves the previous epoch's state, which the replay
//! of the epoch starts from: effectively-once as before, and a checkpoint writes only what changed.
//! Expiry (past the late horizon, or past `max_ended_views`) happens inside the commit, so it is part
//! of the recorded epoch and a replay makes the same decisions.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::Context;

const OPEN: TableDefinition<&str, &[u8]> = TableDefinition::new("open");
const ENDED: TableDefinition<&str, &[u8]> = TableDefinition::new("ended");
const ENDED_AT: TableDefinition<(i64, &str), ()> = TableDefinition::new("ended_at");
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Key of the sessionizer's own state in `meta`.
const META_SESSION: &str = "session";
/// Key of the runner's checkpoint (epoch, position) in `meta`.
const META_CHECKPOINT: &str = "checkpoint";

fn db_err(what: &str) -> impl FnOnce(redb::Error) -> crate::Error + '_ {
    move |e| crate::Error::msg(format!("state store: {what}: {e}"))
}

/// The store: cheap to clone (one database).
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
    path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.path).finish()
    }
}

/// What a store holds at open, besides the open views ([`StateStore::load`] hands those to a callback).
#[derive(Debug, Default)]
pub struct Loaded {
    pub session: Option<Vec<u8>>,
    pub checkpoint: Option<Vec<u8>>,
}

/// redb's page cache, unless told otherwise: redb's own default is 1 GiB, a ceiling it fills with every
/// page an epoch touches and keeps (the first benchmark of the store measured 11 KB of RSS per open
/// view, most of it this cache).
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// What one epoch changed, written in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    pub open_put: Vec<(String, Vec<u8>)>,
    pub open_delete: Vec<String>,
    /// (view id, when it ended, whether it is new to `ended`, state).
    pub ended_put: Vec<(String, i64, bool, Vec<u8>)>,
    /// (view id, lowest seq, events as encoded by [`crate::history`]).
    pub history_put: Vec<(String, u64, Vec<u8>)>,
    pub session: Vec<u8>,
    pub checkpoint: Option<Vec<u8>>,
    /// Ended views that ended before this are forgotten with their history (the late horizon).
    pub expire_before: i64,
    /// At most this many ended views are kept; past it the oldest are forgotten.
    pub max_ended: usize,
}

/// What a commit forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Ended views past the late horizon.
    pub expired: u64,
    /// Ended views forgotten early for `max_ended_views`.
    pub over_cap: u64,
}

impl StateStore {
    /// Opens (or creates) the store at `path`, with redb's page cache bounded to `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> crate::Result<StateStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path).map_err(|e| db_err("opening")(e.into())).with_context(|| format!("{}", path.display()))?;
        let store = StateStore { db: Arc::new(db), path: Some(path.to_owned()) };
        store.create_tables()?;
        Ok(store)
    }

    /// A store in memory (tests, benchmarks, batch computations).
    pub fn in_memory() -> StateStore {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap_or_else(|e| panic!("an in-memory redb database cannot fail to open: {e}"));
        let store = StateStore { db: Arc::new(db), path: None };
        if let Err(e) = store.create_tables() {
            panic!("an in-memory redb database cannot fail to create its tables: {e}");
        }
        store
    }

    fn create_tables(&self) -> crate::Result<()> {
        let tx = self.db.begin_write().map_err(|e| db_err("begin")(e.into()))?;
        {
            tx.open_table(OPEN).map_err(|e| db_err("open table")(e.into()))?;
            tx.open_table(ENDED).map_err(|e| db_err("open table")(e.into()))?;
            tx.open_table(ENDED_AT).map_err(|e| db_err("open table")(e.into()))?;
            tx.open_table(HISTORY).map_err(|e| db_err("open table")(e.into()))?;
            tx.open_table(META).map_err(|e| db_err("open table")(e.into()))?;
        }
        tx.commit().map_err(|e| db_err("commit")(e.into()))
    }

    /// The file's size on disk (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        self.path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len())
    }

    /// The committed state: the sessionizer's meta and the runner's checkpoint; every open view is handed
    /// to `each_open` (id, state) as it is read, so loading holds one view's bytes at a time.
    pub fn load(&self, mut each_open: impl FnMut(&str, &[u8]) -> crate::Result<()>) -> crate::Result<Loaded> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read")(e.into()))?;
        let meta = tx.open_table(META).map_err(|e| db_err("meta")(e.into()))?;
        let get = |k: &str| -> crate::Result<Option<Vec<u8>>> {
            Ok(meta.get(k).map_err(|e| db_err("meta")(e.into()))?.map(|v| v.value().to_vec()))
        };
        let (session, checkpoint) = (get(META_SESSION)?, get(META_CHECKPOINT)?);
        let open_table = tx.open_table(OPEN).map_err(|e| db_err("open views")(e.into()))?;
        for entry in open_table.iter().map_err(|e| db_err("open views")(e.into()))? {
            let (k, v) = entry.map_err(|e| db_err("open views")(e.into()))?;
            each_open(k.value(), v.value())?;
        }
        Ok(Loaded { session, checkpoint })
    }

    /// The runner's checkpoint as committed, without loading the open views.
    pub fn checkpoint(&self) -> crate::Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read")(e.into()))?;
        let meta = tx.open_table(META).map_err(|e| db_err("meta")(e.into()))?;
        Ok(meta.get(META_CHECKPOINT).map_err(|e| db_err("meta")(e.into()))?.map(|v| v.value().to_vec()))
    }

    /// The store's file as committed last (a snapshot to ship elsewhere). Call it between commits: every
    /// commit is durable when it returns and nothing else writes, so the file then holds exactly the
    /// last committed state; redb repairs its allocator when a copy is opened.
    pub fn file_bytes(&self) -> crate::Result<Vec<u8>> {
        let path = self.path.as_ref().ok_or_else(|| crate::Error::msg("an in-memory state store has no file"))?;
        Ok(std::fs::read(path)?)
    }

    /// An open view's committed state (a view the sessionizer no longer keeps in memory).
    pub fn open_view(&self, view_id: &str) -> crate::Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read")(e.into()))?;
        let t = tx.open_table(OPEN).map_err(|e| db_err("open views")(e.into()))?;
        Ok(t.get(view_id).map_err(|e| db_err("open views")(e.into()))?.map(|v| v.value().to_vec()))
    }

    /// An ended view's committed state.
    pub fn ended(&self, view_id: &str) -> crate::Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read")(e.into()))?;
        let t = tx.open_table(ENDED).map_err(|e| db_err("ended views")(e.into()))?;
        Ok(t.get(view_id).map_err(|e| db_err("ended views")(e.into()))?.map(|v| v.value().to_vec()))
    }

    /// A view's committed history chunks, by lowest seq.
    pub fn history(&self, view_id: &str) -> crate::Result<Vec<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read")(e.into()))?;
        let t = tx.open_table(HISTORY).map_err(|e| db_err("history")(e.into()))?;
        let mut chunks = Vec::new();
        for entry in t.range((view_id, 0)..=(view_id, u64::MAX)).map_err(|e| db_err("history")(e.into()))? {
            chunks.push(entry.map_err(|e| db_err("history")(e.into()))?.1.value().to_vec());
        }
        Ok(chunks)
    }

    /// How many ended views are kept (committed).
    pub fn ended_count(&self) -> crate::Result<u64> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read")(e.into()))?;
        let t = tx.open_table(ENDED).map_err(|e| db_err("ended views")(e.into()))?;
        t.len().map_err(|e| db_err("ended views")(e.into()))
    }

    /// Writes one epoch's changes and the checkpoint durably, in one transaction; then forgets what
    /// expired.
    pub fn commit(&self, c: Commit) -> crate::Result<Forgotten> {
        let err = |what: &'static str| db_err(what);
        let mut tx = self.db.begin_write().map_err(|e| err("begin")(e.into()))?;
        // Durable when commit returns (the default, said explicitly: effectively-once depends on it).
        tx.set_durability(redb::Durability::Immediate).map_err(|e| crate::Error::msg(format!("state store: durability: {e}")))?;
        let mut forgotten = Forgotten::default();
        {
            let mut open = tx.open_table(OPEN).map_err(|e| err("open views")(e.into()))?;
            for id in &c.open_delete {
                open.remove(id.as_str()).map_err(|e| err("open views")(e.into()))?;
            }
            for (id, v) in &c.open_put {
                open.insert(id.as_str(), v.as_slice()).map_err(|e| err("open views")(e.into()))?;
            }
            let mut ended = tx.open_table(ENDED).map_err(|e| err("ended views")(e.into()))?;
            let mut ended_at = tx.open_table(ENDED_AT).map_err(|e| err("ended views")(e.into()))?;
            let mut history = tx.open_table(HISTORY).map_err(|e| err("history")(e.into()))?;
            for (id, at, new, v) in &c.ended_put {
                ended.insert(id.as_str(), v.as_slice()).map_err(|e| err("ended views")(e.into()))?;
                if *new {
                    ended_at.insert((*at, id.as_str()), ()).map_err(|e| err("ended views")(e.into()))?;
                }
            }
            for (id, seq, v) in &c.history_put {
                history.insert((id.as_str(), *seq), v.as_slice()).map_err(|e| err("history")(e.into()))?;
            }
            // The late horizon, then the cap: oldest first.
            let len = ended.len().map_err(|e| err("ended views")(e.into()))?;
            let over = len.saturating_sub(c.max_ended as u64);
            let mut doomed: Vec<(i64, String, bool)> = Vec::new();
            for entry in ended_at.iter().map_err(|e| err("ended views")(e.into()))? {
                let (k, _) = entry.map_err(|e| err("ended views")(e.into()))?;
                let (at, id) = k.value();
                let expired = at < c.expire_before;
                if !expired && (doomed.len() as u64) >= over {
                    break;
                }
                doomed.push((at, id.to_owned(), expired));
            }
            for (at, id, expired) in doomed {
                ended_at.remove((at, id.as_str())).map_err(|e| err("ended views")(e.into()))?;
                ended.remove(id.as_str()).map_err(|e| err("ended views")(e.into()))?;
                // One pass of a cursor over the view's chunks, not a lookup from the root per chunk
                // (BENCHMARKS.md §31).
                history.retain_in((id.as_str(), 0)..=(id.as_str(), u64::MAX), |_, _| false).map_err(|e| err("history")(e.into()))?;
                if expired { forgotten.expired += 1 } else { forgotten.over_cap += 1 }
            }
            let mut meta = tx.open_table(META).map_err(|e| err("meta")(e.into()))?;
            meta.insert(META_SESSION, c.session.as_slice()).map_err(|e| err("meta")(e.into()))?;
            if let Some(ckpt) = &c.checkpoint {
                meta.insert(META_CHECKPOINT, ckpt.as_slice()).map_err(|e| err("meta")(e.into()))?;
            }
        }
        tx.commit().map_err(|e| err("commit")(e.into()))?;
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(id: &str, at: i64) -> (String, i64, bool, Vec<u8>) {
        (id.to_owned(), at, true, b"{}".to_vec())
    }

    /// Expiry removes exactly the expired views' history chunks: every chunk of each, and none of a
    /// view whose id starts with an expired one's, or sorts just before or after it.
    #[test]
    fn expiry_forgets_every_history_chunk_of_the_expired_views_and_no_other() {
        let ids = ["0", "a", "ab", "abc", "b"];
        let store = StateStore::in_memory();
        let mut first = Commit { max_ended: 100, expire_before: i64::MIN, ..Commit::default() };
        first.ended_put = vec![ended("0", 50), ended("a", 10), ended("ab", 60), ended("abc", 30), ended("b", 40)];
        for id in ids {
            for seq in [0, 7, 300, u64::MAX] {
                first.history_put.push((id.to_owned(), seq, vec![seq as u8]));
            }
        }
        assert_eq!(store.commit(first).unwrap(), Forgotten::default());
        let all = vec![vec![0], vec![7], vec![300u64 as u8], vec![u8::MAX]];
        // "a", "abc" and "b" ended before 45: they expire; "0" and "ab" stay.
        let second = Commit { max_ended: 100, expire_before: 45, ..Commit::default() };
        assert_eq!(store.commit(second).unwrap(), Forgotten { expired: 3, over_cap: 0 });
        for id in ["a", "abc", "b"] {
            assert!(store.history(id).unwrap().is_empty(), "history of {id} kept");
            assert_eq!(store.ended(id).unwrap(), None);
        }
        for id in ["0", "ab"] {
            assert_eq!(store.history(id).unwrap(), all, "history of {id}");
        }
        assert_eq!(store.ended_count().unwrap(), 2);
        // Past the cap, the oldest ("0", ended at 50) goes with its history the same way.
        let third = Commit { max_ended: 1, expire_before: 45, ..Commit::default() };
        assert_eq!(store.commit(third).unwrap(), Forgotten { expired: 0, over_cap: 1 });
        assert!(store.history("0").unwrap().is_empty());
        assert_eq!(store.history("ab").unwrap(), all);
    }
}
