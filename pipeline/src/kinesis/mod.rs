//! The pipeline's Kinesis source (`qoeflow pipeline --kinesis-stream`).
//!
//! - **Shards.** Listed with ListShards at start and re-listed every `relist_interval`; one position per
//!   shard: the last sequence number processed and whether the shard is finished (closed and read to its
//!   end). A child shard is read only once its parents are finished: its parent after a split, both
//!   its parents (`parent_shard_id` and `adjacent_parent_shard_id`) after a merge, so a view's events
//!   stay in order across a reshard.
//! - **Elastic workers** (`kinesis.lease_table` set, [`elastic`]): workers share the stream's lineages
//!   through leases in DynamoDB, one runner per lineage, each reading the shards of its lineage
//!   ([`KinesisSource::for_lineage`]); see `docs/architecture.md` §9.
//! - **Static scale-out** (no lease table). `--worker-index i --worker-count n`: a worker owns the shards whose lineage root
//!   (following `parent_shard_id` up) hashes to `i` (stable FNV-1a), so children stay with their parent's
//!   worker and a view never moves between workers on a split. The root of every shard ever listed is
//!   kept in the checkpoint, so ownership does not move when an ancestor ages out of ListShards after
//!   the stream's retention. After a merge of shards owned by two workers, the child follows its first
//!   parent; views of the other parent that continue in it are split (a warning is logged). Changing
//!   `--worker-count` moves shards between workers: stop all workers and start the new set from fresh
//!   checkpoint directories only at a point where that is acceptable.
//! - **Reads.** One GetRecords per readable shard per epoch, records in shard-id order, then record order:
//!   deterministic, so an epoch's intent (positions per shard) can be replayed exactly. Expired iterators
//!   are re-created from the position. A throttled shard (GetRecords or GetShardIterator) backs off
//!   exponentially with jitter, up to 10 s, while the other shards go on; a failed re-listing keeps the
//!   previous shard list and is retried at the next interval.
//! - **Clocks.** A shard whose GetRecords came back empty at the tip (`MillisBehindLatest` 0) is reported
//!   caught up, so the views on it keep ending while it is quiet; a finished shard only once all its
//!   owned children are caught up (its views continue in them).
//! - **KPL.** Aggregated records are deaggregated (magic, protobuf, MD5); plain records pass through.
//!   An aggregated record is processed whole within one epoch, so positions need no sub-sequence.

pub mod elastic;
pub mod kpl;
pub mod lease;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Context;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use bytes::Bytes;
use ::kinesis::describe;
use serde::{Deserialize, Serialize};

use crate::runner::{Batch, Source, SourceRecord};

/// Where a shard has been read to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPosition {
    /// Sequence number of the last record processed (None: from the start of the shard).
    pub sequence: Option<String>,
    /// The shard is closed and was read to its end.
    pub finished: bool,
}

/// A worker's position in the stream (what its checkpoints and intents store).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// Per owned shard read so far.
    pub shards: BTreeMap<String, ShardPosition>,
    /// Lineage root of every shard ever listed, so ownership is stable after ancestors expire.
    pub roots: BTreeMap<String, String>,
}

/// Throttling backoff of one shard.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Which shards a source reads: a static share of the lineages, or one lineage.
#[derive(Debug, Clone)]
enum Ownership {
    /// The lineages whose root hashes to `index` among `count` workers.
    Static { index: u32, count: u32 },
    /// One lineage (lease mode): its root shard, and the runner's name.
    Lineage { root: String, name: String },
}

pub struct KinesisSource {
    client: Client,
    stream: String,
    ownership: Ownership,
    shards: Vec<Shard>,
    listed_at: Option<Instant>,
    relist_interval: Duration,
    positions: Positions,
    /// Iterators continuing from `positions` (dropped whenever a position is reset).
    iterators: HashMap<String, String>,
    /// Shards throttled recently, and until when they are left alone.
    throttled: HashMap<String, Backoff>,
}

/// The service's largest GetRecords `Limit`: what a replay asks for; [`Source::next`] asks for less so
/// one epoch reads about `max_records_per_epoch` records across its shards.
const MAX_RECORDS_PER_CALL: i32 = 10_000;

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl KinesisSource {
    pub fn new(client: Client, stream: String, worker_index: u32, worker_count: u32) -> KinesisSource {
        KinesisSource::with(client, stream, Ownership::Static { index: worker_index, count: worker_count.max(1) })
    }

    /// The source of one lineage (the shards descending from `root`), named `name` (its row identity).
    pub fn for_lineage(client: Client, stream: String, root: String, name: String) -> KinesisSource {
        KinesisSource::with(client, stream, Ownership::Lineage { root, name })
    }

    fn with(client: Client, stream: String, ownership: Ownership) -> KinesisSource {
        KinesisSource {
            client,
            stream,
            ownership,
            shards: Vec::new(),
            listed_at: None,
            relist_interval: Duration::from_secs(10),
            positions: Positions::default(),
            iterators: HashMap::new(),
            throttled: HashMap::new(),
        }
    }

    async fn list_shards(&mut self) -> crate::Result<()> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(&self.stream),
            };
            let out = req.send().await.map_err(|e| crate::Error::msg(format!("ListShards {}: {}", self.stream, describe(&e))))?;
            shards.extend(out.shards().iter().cloned());
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        shards.sort_by(|a, b| a.shard_id().cmp(b.shard_id()));
        self.shards = shards;
        self.listed_at = Some(Instant::now());
        self.record_roots();
        Ok(())
    }

    /// Records the lineage root of every listed shard: its parent's root when the parent is listed or
    /// was recorded earlier, otherwise itself.
    fn record_roots(&mut self) {
        // Shard ids grow with creation, so parents come before their children in id order.
        for s in &self.shards {
            if self.positions.roots.contains_key(s.shard_id()) {
                continue;
            }
            let root = s
                .parent_shard_id()
                .and_then(|p| self.positions.roots.get(p).cloned())
                .unwrap_or_else(|| s.shard_id().to_owned());
            if let (Some(adjacent), Some(parent)) = (s.adjacent_parent_shard_id(), s.parent_shard_id()) {
                let adjacent_root = self.positions.roots.get(adjacent).map_or(adjacent, String::as_str);
                if self.owns_root(adjacent_root) != self.owns_root(&root) {
                    tracing::warn!(
                        shard = s.shard_id(),
                        parent,
                        adjacent,
                        "merged shard joins two lineages owned apart; views of the adjacent parent that continue in it are split"
                    );
                }
            }
            self.positions.roots.insert(s.shard_id().to_owned(), root);
        }
    }

    fn owns_root(&self, root: &str) -> bool {
        match &self.ownership {
            Ownership::Static { index, count } => (fnv1a(root) % u64::from(*count)) as u32 == *index,
            Ownership::Lineage { root: mine, .. } => root == mine,
        }
    }

    fn finished(&self, id: &str) -> bool {
        self.positions.shards.get(id).is_some_and(|p| p.finished)
    }

    fn owned(&self, s: &Shard) -> bool {
        let root = self.positions.roots.get(s.shard_id()).map_or(s.shard_id(), String::as_str);
        self.owns_root(root)
    }

    /// Owned shards that can be read now: not finished, every listed parent finished (both parents of
    /// a merge), not backing off from throttling; in shard-id order.
    fn readable(&self) -> Vec<String> {
        let listed: HashMap<&str, &Shard> = self.shards.iter().map(|s| (s.shard_id(), s)).collect();
        // A parent owned by another worker (one side of a merge across two workers' lineages) cannot
        // be waited for without coordination: only parents owned here are.
        let parent_done = |p: Option<&str>| {
            p.is_none_or(|p| listed.get(p).is_none_or(|parent| !self.owned(parent) || self.finished(p)))
        };
        let now = Instant::now();
        self.shards
            .iter()
            .filter(|s| self.owned(s) && !self.finished(s.shard_id()))
            .filter(|s| parent_done(s.parent_shard_id()) && parent_done(s.adjacent_parent_shard_id()))
            .filter(|s| self.throttled.get(s.shard_id()).is_none_or(|b| b.until <= now))
            .map(|s| s.shard_id().to_owned())
            .collect()
    }

    /// Owned, finished shards (read to their end) whose owned children are all caught up (`at_tip`, or
    /// finished and caught up themselves). A finished parent's views continue in its children, so its
    /// clock must not run ahead of a child still catching up.
    fn finished_caught_up(&self, at_tip: &[String]) -> Vec<String> {
        fn caught_up(src: &KinesisSource, id: &str, at_tip: &[String], depth: u32) -> bool {
            if at_tip.iter().any(|s| s == id) {
                return true;
            }
            if !src.finished(id) || depth > 64 {
                return false;
            }
            src.shards
                .iter()
                .filter(|c| c.parent_shard_id() == Some(id) || c.adjacent_parent_shard_id() == Some(id))
                .filter(|c| src.owned(c))
                .all(|c| caught_up(src, c.shard_id(), at_tip, depth + 1))
        }
        self.positions
            .shards
            .iter()
            .filter(|(id, p)| p.finished && caught_up(self, id, at_tip, 0))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn throttle(&mut self, shard: &str) {
        let delay = self.throttled.get(shard).map_or(BACKOFF_FIRST, |b| (b.delay * 2).min(BACKOFF_MAX));
        let jittered = delay.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tracing::warn!(shard, backoff_ms = jittered.as_millis() as u64, "Kinesis throttled reads of a shard; backing off");
        self.throttled.insert(shard.to_owned(), Backoff { until: Instant::now() + jittered, delay });
    }

    async fn iterator(&mut self, shard: &str) -> Result<String, ReadError> {
        if let Some(it) = self.iterators.get(shard) {
            return Ok(it.clone());
        }
        let pos = self.positions.shards.get(shard).cloned().unwrap_or_default();
        let mut req = self.client.get_shard_iterator().stream_name(&self.stream).shard_id(shard);
        req = match &pos.sequence {
            Some(seq) => req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_provisioned_throughput_exceeded_exception()) => {
                return Err(ReadError::Throttled);
            }
            Err(e) => return Err(ReadError::Other(crate::Error::msg(format!("GetShardIterator {shard}: {}", describe(&e))))),
        };
        let it = out.shard_iterator().context("GetShardIterator returned no iterator")?.to_owned();
        self.iterators.insert(shard.to_owned(), it.clone());
        Ok(it)
    }

    /// One GetRecords on `shard`, up to `stop_at` (inclusive) if given. Updates the shard's position.
    /// Returns the user records, whether the shard is caught up (empty read at the tip), and how far it
    /// is behind (`MillisBehindLatest`).
    async fn read_shard(&mut self, shard: &str, stop_at: Option<&ShardPosition>, limit: i32) -> Result<(Vec<SourceRecord>, bool, i64), ReadError> {
        let mut out = Vec::new();
        let partition: Arc<str> = Arc::from(shard);
        for attempt in 0..3 {
            let it = self.iterator(shard).await?;
            let resp = self.client.get_records().shard_iterator(&it).limit(limit).send().await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    let service = e.as_service_error();
                    if service.is_some_and(|s| s.is_expired_iterator_exception()) && attempt < 2 {
                        tracing::info!(shard, "shard iterator expired; re-creating it from the position");
                        self.iterators.remove(shard);
                        continue;
                    }
                    if service.is_some_and(|s| s.is_provisioned_throughput_exceeded_exception()) {
                        return Err(ReadError::Throttled);
                    }
                    return Err(ReadError::Other(crate::Error::msg(format!("GetRecords {shard}: {}", describe(&e)))));
                }
            };
            let behind = resp.millis_behind_latest().unwrap_or(0).max(0);
            let caught_up = resp.records().is_empty() && behind == 0;
            let pos = self.positions.shards.entry(shard.to_owned()).or_default();
            let mut reached_stop = false;
            for r in resp.records() {
                let seq = r.sequence_number().to_owned();
                for u in kpl::deaggregate(&Bytes::copy_from_slice(r.data().as_ref()), r.partition_key()) {
                    out.push(SourceRecord {
                        partition: partition.clone(),
                        label: format!("shard {shard} seq {seq}/{}", u.sub_sequence),
                        data: u.data,
                    });
                }
                let stop_here = stop_at.and_then(|s| s.sequence.as_ref()).is_some_and(|s| *s == seq);
                pos.sequence = Some(seq);
                if stop_here {
                    reached_stop = true;
                    break;
                }
            }
            if reached_stop {
                // The iterator ran ahead of the stop point: continue from the position next time.
                self.iterators.remove(shard);
                if stop_at.is_some_and(|s| s.finished) {
                    pos.finished = true;
                }
                return Ok((out, false, behind));
            }
            match resp.next_shard_iterator() {
                Some(next) => {
                    self.iterators.insert(shard.to_owned(), next.to_owned());
                }
                None => {
                    pos.finished = true;
                    self.iterators.remove(shard);
                }
            }
            return Ok((out, caught_up, behind));
        }
        Ok((out, false, 0))
    }
}

/// Why a shard read returned nothing.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("throttled")]
    Throttled,
    #[error(transparent)]
    Other(#[from] crate::Error),
}

impl Source for KinesisSource {
    type Position = Positions;

    fn name(&self) -> String {
        match &self.ownership {
            Ownership::Static { index, .. } => format!("kinesis-w{index}"),
            Ownership::Lineage { name, .. } => name.clone(),
        }
    }

    async fn seek(&mut self, from: &Positions) -> crate::Result<()> {
        self.positions = from.clone();
        self.iterators.clear();
        self.list_shards().await
    }

    /// One GetRecords per readable shard (at most 10 MB each, the service's own bound on a call, and
    /// `max` records shared among the shards).
    async fn next(&mut self, max: usize, _max_bytes: usize) -> crate::Result<Batch<Positions>> {
        if self.listed_at.is_none_or(|t| t.elapsed() >= self.relist_interval)
            && let Err(e) = self.list_shards().await
        {
            // Keep reading the shards already known; a new listing is tried at the next interval.
            tracing::warn!(error = format!("{e:#}"), "re-listing shards failed; keeping the previous list");
            self.listed_at = Some(Instant::now());
        }
        let readable = self.readable();
        let limit = (max / readable.len().max(1)).clamp(1, MAX_RECORDS_PER_CALL as usize) as i32;
        let mut records = Vec::new();
        let mut at_tip: Vec<String> = Vec::new();
        let mut lags = Vec::new();
        let (mut behind, mut behind_ms) = (false, 0i64);
        for shard in readable {
            match self.read_shard(&shard, None, limit).await {
                Ok((read, tip, shard_behind_ms)) => {
                    self.throttled.remove(&shard);
                    lags.push(crate::runner::PartitionLag { partition: shard.clone(), records: None, millis_behind: Some(shard_behind_ms) });
                    records.extend(read);
                    behind |= shard_behind_ms > 0;
                    behind_ms = behind_ms.max(shard_behind_ms);
                    if tip {
                        at_tip.push(shard);
                    }
                }
                Err(ReadError::Throttled) => {
                    behind = true;
                    self.throttle(&shard);
                }
                Err(ReadError::Other(e)) => return Err(e),
            }
        }
        let mut caught_up = self.finished_caught_up(&at_tip);
        caught_up.extend(at_tip);
        caught_up.sort();
        caught_up.dedup();
        // A throttled shard's lag is unknown: the largest a shard reported stands for it.
        Ok(Batch { records, to: self.positions.clone(), caught_up, behind, behind_ms: Some(behind_ms), lags })
    }

    async fn next_until(&mut self, to: &Positions) -> crate::Result<Vec<SourceRecord>> {
        let mut records = Vec::new();
        // Same order as `next`: shard-id order, each shard up to its recorded position.
        for (shard, stop) in &to.shards {
            let mut guard = 0;
            while self.positions.shards.get(shard).cloned().unwrap_or_default() != *stop {
                let before = self.positions.shards.get(shard).cloned();
                match self.read_shard(shard, Some(stop), MAX_RECORDS_PER_CALL).await {
                    Ok((read, _, _)) => records.extend(read),
                    Err(ReadError::Throttled) => {}
                    Err(ReadError::Other(e)) => return Err(e),
                }
                if self.positions.shards.get(shard) == before.as_ref() {
                    guard += 1;
                    crate::error::ensure!(guard < 50, "cannot re-read shard {shard} up to its recorded position {stop:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        for (shard, root) in &to.roots {
            self.positions.roots.entry(shard.clone()).or_insert_with(|| root.clone());
        }
        Ok(records)
    }

    async fn committed(&mut self, _position: &Positions) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_roundtrip() {
        let current = Positions {
            shards: BTreeMap::from([("shardId-1".into(), ShardPosition { sequence: Some("42".into()), finished: true })]),
            roots: BTreeMap::from([("shardId-1".into(), "shardId-0".into())]),
        };
        let json = serde_json::to_string(&current).unwrap();
        assert_eq!(serde_json::from_str::<Positions>(&json).unwrap(), current);
        let empty = serde_json::to_string(&Positions::default()).unwrap();
        assert_eq!(serde_json::from_str::<Positions>(&empty).unwrap(), Positions::default());
    }
}

/// The worker's status, served on `/healthz`, `/readyz` and `/metrics` if `health` is given.
async fn health_listener(
    config: &crate::PipelineConfig,
    health: Option<(std::net::SocketAddr, service::ConnLimits)>,
    stop: &service::Stop,
) -> crate::Result<std::sync::Arc<crate::PipelineStatus>> {
    let registry = prometheus::Registry::new();
    let status = std::sync::Arc::new(crate::PipelineStatus::of(config, &registry));
    if let Some((addr, limits)) = health {
        let listener = service::bind(addr).await?;
        tracing::info!("pipeline health listening on http://{}", listener.local_addr()?);
        let app = service::health_router(vec![status.clone()], registry);
        tokio::spawn(service::serve(listener, app, limits, None, stop.stopped()));
    }
    Ok(status)
}

/// One `qoeflow pipeline` worker: its share of the stream's shards, where it writes, and an optional
/// health listener (`/healthz`, `/readyz`, `/metrics`).
pub struct Worker {
    pub kinesis: ::kinesis::KinesisConfig,
    /// This worker's index among `worker_count` (each owns a disjoint, stable set of shards).
    pub worker_index: u32,
    pub worker_count: u32,
    pub data_dir: std::path::PathBuf,
    /// The Parquet dataset.
    pub dataset: objstore::Location,
    pub config: crate::PipelineConfig,
    pub clickhouse: schemas::tables::ClickHouseConfig,
    pub health: Option<(std::net::SocketAddr, service::ConnLimits)>,
}

/// Runs a worker on its Kinesis shards until `stop` is set (see [`crate::runner::run`]): with
/// `kinesis.lease_table`, an elastic worker ([`elastic::run`]); otherwise its static share.
pub async fn run_worker(worker: Worker, stop: service::Stop) -> crate::Result<()> {
    if worker.kinesis.lease_table.is_some() {
        return elastic::run(worker, stop).await;
    }
    let Worker {
        kinesis,
        worker_index,
        worker_count,
        data_dir,
        dataset,
        config,
        clickhouse,
        health,
    } = worker;
    crate::error::ensure!(
        worker_index < worker_count,
        "--worker-index {worker_index} must be below --worker-count {worker_count}"
    );
    let stream = kinesis.stream.clone().ok_or_else(|| crate::Error::Config("the pipeline needs kinesis.stream (--kinesis-stream)".into()))?;
    let client = ::kinesis::client(&kinesis).await;
    tracing::info!(%stream, worker_index, worker_count, data_dir = %data_dir.display(), dataset = %dataset.url(), "pipeline reading Kinesis");
    let source = KinesisSource::new(client, stream, worker_index, worker_count);
    let status = health_listener(&config, health, &stop).await?;
    crate::runner::run(
        source,
        data_dir,
        dataset,
        config,
        clickhouse,
        status,
        stop.receiver(),
    )
    .await
}
