//! The pipeline's Kinesis source (`qoeflow pipeline --kinesis-stream`).
//!
//! - **Shards.** Listed with ListShards at start and re-listed every `relist_interval`; one position per
//!   shard: the last sequence number processed and whether the shard is finished (closed and read to its
//!   end). A child shard (after a split or merge) is read only once its parent is finished, so a view's
//!   events stay in order across a reshard.
//! - **Scale-out.** `--worker-index i --worker-count n`: a worker owns the shards whose lineage root
//!   (following `parent_shard_id` up) hashes to `i` (stable FNV-1a), so children stay with their parent's
//!   worker and a view never moves between workers on a split. After a merge of shards owned by two
//!   workers, the child follows its first parent; views of the other parent that continue in it are split.
//! - **Reads.** One GetRecords per readable shard per epoch, records in shard-id order, then record order:
//!   deterministic, so an epoch's intent (positions per shard) can be replayed exactly. Expired iterators
//!   are re-created from the position; throttling backs the shard off until the next epoch.
//! - **KPL.** Aggregated records are deaggregated (magic, protobuf, MD5); plain records pass through.
//!   An aggregated record is processed whole within one epoch, so positions need no sub-sequence.

pub mod kpl;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use bytes::Bytes;
use ingest::sink::kinesis::describe;
use serde::{Deserialize, Serialize};

use crate::runner::Source;

/// Where a shard has been read to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPosition {
    /// Sequence number of the last record processed (None: from the start of the shard).
    pub sequence: Option<String>,
    /// The shard is closed and was read to its end.
    pub finished: bool,
}

pub type Positions = BTreeMap<String, ShardPosition>;

pub struct KinesisSource {
    client: Client,
    stream: String,
    worker_index: u32,
    worker_count: u32,
    shards: Vec<Shard>,
    listed_at: Option<Instant>,
    relist_interval: Duration,
    positions: Positions,
    /// Iterators continuing from `positions` (dropped whenever a position is reset).
    iterators: HashMap<String, String>,
    records_per_call: i32,
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl KinesisSource {
    pub fn new(client: Client, stream: String, worker_index: u32, worker_count: u32) -> KinesisSource {
        KinesisSource {
            client,
            stream,
            worker_index,
            worker_count: worker_count.max(1),
            shards: Vec::new(),
            listed_at: None,
            relist_interval: Duration::from_secs(10),
            positions: Positions::new(),
            iterators: HashMap::new(),
            records_per_call: 10_000,
        }
    }

    async fn list_shards(&mut self) -> anyhow::Result<()> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(&self.stream),
            };
            let out = req.send().await.map_err(|e| anyhow::anyhow!("ListShards {}: {}", self.stream, describe(&e)))?;
            shards.extend(out.shards().iter().cloned());
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        shards.sort_by(|a, b| a.shard_id().cmp(b.shard_id()));
        self.shards = shards;
        self.listed_at = Some(Instant::now());
        Ok(())
    }

    /// Owned shards that can be read now: not finished, parent finished (or gone), in shard-id order.
    /// A shard is owned when its lineage root (following `parent_shard_id` among the listed shards)
    /// hashes to this worker.
    fn readable(&self) -> Vec<String> {
        let listed: HashMap<&str, &Shard> = self.shards.iter().map(|s| (s.shard_id(), s)).collect();
        fn root<'a>(listed: &HashMap<&'a str, &'a Shard>, mut shard: &'a Shard) -> &'a str {
            for _ in 0..1000 {
                match shard.parent_shard_id().and_then(|p| listed.get(p)) {
                    Some(parent) => shard = parent,
                    None => break,
                }
            }
            shard.shard_id()
        }
        let owned = |s: &Shard| fnv1a(root(&listed, s)) % u64::from(self.worker_count) == u64::from(self.worker_index);
        let finished = |id: &str| self.positions.get(id).is_some_and(|p| p.finished);
        self.shards
            .iter()
            .filter(|s| owned(s) && !finished(s.shard_id()))
            .filter(|s| match s.parent_shard_id() {
                Some(p) if listed.contains_key(p) => finished(p),
                _ => true,
            })
            .map(|s| s.shard_id().to_owned())
            .collect()
    }

    async fn iterator(&mut self, shard: &str) -> anyhow::Result<String> {
        if let Some(it) = self.iterators.get(shard) {
            return Ok(it.clone());
        }
        let pos = self.positions.get(shard).cloned().unwrap_or_default();
        let mut req = self.client.get_shard_iterator().stream_name(&self.stream).shard_id(shard);
        req = match &pos.sequence {
            Some(seq) => req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req.send().await.map_err(|e| anyhow::anyhow!("GetShardIterator {shard}: {}", describe(&e)))?;
        let it = out.shard_iterator().context("GetShardIterator returned no iterator")?.to_owned();
        self.iterators.insert(shard.to_owned(), it.clone());
        Ok(it)
    }

    /// One GetRecords on `shard`, up to `stop_at` (inclusive) if given. Updates the shard's position.
    /// Returns the user records; throttling returns none (the shard is tried again next epoch).
    async fn read_shard(&mut self, shard: &str, stop_at: Option<&ShardPosition>) -> anyhow::Result<Vec<(String, Bytes)>> {
        let mut out = Vec::new();
        for attempt in 0..3 {
            let it = self.iterator(shard).await?;
            let resp = self.client.get_records().shard_iterator(&it).limit(self.records_per_call).send().await;
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
                        tracing::warn!(shard, "GetRecords throttled; retrying next epoch");
                        return Ok(out);
                    }
                    return Err(anyhow::anyhow!("GetRecords {shard}: {}", describe(&e)));
                }
            };
            let pos = self.positions.entry(shard.to_owned()).or_default();
            let mut reached_stop = false;
            for r in resp.records() {
                let seq = r.sequence_number().to_owned();
                for u in kpl::deaggregate(&Bytes::copy_from_slice(r.data().as_ref()), r.partition_key()) {
                    out.push((format!("shard {shard} seq {seq}/{}", u.sub_sequence), u.data));
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
                return Ok(out);
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
            return Ok(out);
        }
        Ok(out)
    }
}

impl Source for KinesisSource {
    type Position = Positions;

    fn name(&self) -> String {
        format!("kinesis-w{}", self.worker_index)
    }

    async fn seek(&mut self, from: &Positions) -> anyhow::Result<()> {
        self.positions = from.clone();
        self.iterators.clear();
        self.list_shards().await
    }

    async fn next(&mut self, _max: usize) -> anyhow::Result<(Vec<(String, Bytes)>, Positions)> {
        if self.listed_at.is_none_or(|t| t.elapsed() >= self.relist_interval) {
            self.list_shards().await?;
        }
        let mut records = Vec::new();
        for shard in self.readable() {
            records.extend(self.read_shard(&shard, None).await?);
        }
        Ok((records, self.positions.clone()))
    }

    async fn next_until(&mut self, to: &Positions) -> anyhow::Result<Vec<(String, Bytes)>> {
        let mut records = Vec::new();
        // Same order as `next`: shard-id order, each shard up to its recorded position.
        for (shard, stop) in to {
            let mut guard = 0;
            while self.positions.get(shard).cloned().unwrap_or_default() != *stop {
                let before = self.positions.get(shard).cloned();
                records.extend(self.read_shard(shard, Some(stop)).await?);
                if self.positions.get(shard) == before.as_ref() {
                    guard += 1;
                    anyhow::ensure!(guard < 50, "cannot re-read shard {shard} up to its recorded position {stop:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(records)
    }

    async fn committed(&mut self, _position: &Positions) {}
}
