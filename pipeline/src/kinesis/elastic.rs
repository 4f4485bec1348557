//! Elastic pipeline workers (`kinesis.lease_table` set): any number of `qoeflow pipeline` processes
//! share a stream's shard lineages through the lease table ([`super::lease`]), the KCL's way.
//!
//! Each worker runs a **coordinator** loop every quarter of the lease timeout:
//!
//! 1. lists the stream's shards and makes sure every lineage has a lease (a lineage is rooted at a
//!    shard without a parent: the stream's first shards; later shards join their parent's lineage);
//! 2. renews the leases it holds; one refused is lost (another worker took it): its runner is stopped;
//! 3. scans the table, judges expiry on its own clock, and takes what [`super::lease::plan`] says
//!    (expired leases up to its fair share, else one steal from the busiest worker), plus any lease the
//!    table says is its own that it is not running (its own restart);
//! 4. starts a **runner** per lease taken ([`crate::runner::run_with`] in lease mode): a
//!    [`KinesisSource::for_lineage`] over the lineage's shards, committing through the lease, its
//!    history shared under `<dataset>/_pipeline/<lineage>/`.
//!
//! A runner ends when its lineage is fenced (its commit or its intent refused, or its lease not
//! renewed in time) or at shutdown; the coordinator forgets it and, if the lease is still its own,
//! takes it back in a later round. On shutdown every runner stops at an epoch boundary and the leases
//! are released, so the other workers take them at once instead of after the timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lease::{Held, LeaseTable, Observed, plan};
use super::{KinesisSource, Worker};
use crate::error::Context;

/// A lineage being run here: its lease, and the switch that stops its runner.
struct Running {
    lease: Arc<Held>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Its task: a runner that panicked is found by it (its key went down with it).
    task: tokio::task::Id,
}

/// The row identity (and runner name) of a lineage: `kinesis-<root shard>-<lineage id>`.
fn lineage_name(root: &str, lineage: &str) -> String {
    format!("kinesis-{root}-{lineage}")
}

/// This machine's name (the pod's, in Kubernetes), for the owner id operators read in the table.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

/// Runs an elastic worker until `stop` is set.
pub async fn run(worker: Worker, stop: service::Stop) -> crate::Result<()> {
    let Worker { kinesis, data_dir, dataset, config, clickhouse, health, .. } = worker;
    let table = kinesis.lease_table.clone().context("elastic workers need kinesis.lease_table")?;
    let stream = kinesis.stream.clone().ok_or_else(|| crate::Error::Config("the pipeline needs kinesis.stream (--kinesis-stream)".into()))?;
    crate::error::ensure!(kinesis.lease_timeout_ms >= 1000, "kinesis.lease_timeout_ms must be at least 1000 (got {})", kinesis.lease_timeout_ms);
    let timeout = Duration::from_millis(kinesis.lease_timeout_ms);
    // One worker per data directory: its owner id is the directory's, so a restart resumes its leases.
    let lock_path = data_dir.join("pipeline").join("worker.lock");
    let _lock = locallog::lock_exclusive(&lock_path).with_context(|| format!("pipeline worker in {}", data_dir.display()))?;
    let owner = format!("{}-{}", hostname(), crate::runner::instance_id(&data_dir)?);
    let client = ::kinesis::client(&kinesis).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&::kinesis::sdk_config(&kinesis).await);
    let leases = LeaseTable::new(dynamo, table.clone(), owner.clone());
    leases.ensure_table().await?;
    tracing::info!(%stream, lease_table = %table, %owner, lease_timeout_ms = kinesis.lease_timeout_ms, dataset = %dataset.url(), "pipeline: elastic worker");
    let status = super::health_listener(&config, health, &stop).await?;

    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut tasks: tokio::task::JoinSet<(String, crate::Result<()>)> = tokio::task::JoinSet::new();
    let mut observed = Observed::default();
    let mut shutdown = stop.receiver();
    let mut round = tokio::time::interval(timeout / 4);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            Some(ended) = tasks.join_next() => {
                let (key, result) = ended.unwrap_or_else(|e| {
                    // Its lease is left to the next round, which starts the lineage again.
                    let key = running.iter().find(|(_, r)| r.task == e.id()).map(|(k, _)| k.clone()).unwrap_or_default();
                    (key, Err(crate::Error::msg(format!("lineage runner: {e}"))))
                });
                match result {
                    Ok(()) => tracing::info!(lease = %key, "pipeline: lineage runner stopped"),
                    Err(e) => tracing::warn!(lease = %key, error = format!("{e:#}"), "pipeline: lineage runner ended"),
                }
                running.remove(&key);
                continue;
            }
            _ = round.tick() => {}
        }
        if let Err(e) = coordinate(&leases, &client, &stream, timeout, &mut observed, &mut running, &mut tasks, &Spawn {
            data_dir: &data_dir,
            dataset: &dataset,
            config: &config,
            clickhouse: &clickhouse,
            status: &status,
            snapshot_every: Duration::from_millis(kinesis.state_snapshot_ms),
        })
        .await
        {
            // The table or the stream is unreachable: keep running what is held (each runner stops
            // writing by itself once its lease may have expired) and try again next round.
            tracing::warn!(error = format!("{e:#}"), "pipeline: lease round failed; retrying");
        }
    }
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    while tasks.join_next().await.is_some() {}
    for (key, r) in &running {
        match r.lease.release().await {
            Ok(true) => tracing::info!(lease = %key, "pipeline: lease released"),
            Ok(false) => {}
            Err(e) => tracing::warn!(lease = %key, error = format!("{e:#}"), "pipeline: releasing a lease failed; it expires instead"),
        }
    }
    Ok(())
}

/// What starting a lineage runner needs.
struct Spawn<'a> {
    data_dir: &'a std::path::Path,
    dataset: &'a objstore::Location,
    config: &'a crate::PipelineConfig,
    clickhouse: &'a schemas::tables::ClickHouseConfig,
    status: &'a Arc<crate::PipelineStatus>,
    snapshot_every: Duration,
}

/// The stream's lineage roots: shards without a parent, in id order.
async fn lineage_roots(client: &aws_sdk_kinesis::Client, stream: &str) -> crate::Result<Vec<String>> {
    let mut roots = Vec::new();
    let mut token: Option<String> = None;
    // Bounded: 1,000 pages of ListShards is far past any stream.
    for _ in 0..1000 {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = req.send().await.map_err(|e| crate::Error::msg(format!("ListShards {stream}: {}", ::kinesis::describe(&e))))?;
        roots.extend(out.shards().iter().filter(|s| s.parent_shard_id().is_none()).map(|s| s.shard_id().to_owned()));
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    roots.sort();
    Ok(roots)
}

/// One coordinator round (see the module header).
#[allow(clippy::too_many_arguments)]
async fn coordinate(
    leases: &LeaseTable,
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    timeout: Duration,
    observed: &mut Observed,
    running: &mut BTreeMap<String, Running>,
    tasks: &mut tokio::task::JoinSet<(String, crate::Result<()>)>,
    spawn: &Spawn<'_>,
) -> crate::Result<()> {
    for (key, r) in running.iter() {
        if !r.lease.renew().await? {
            tracing::warn!(lease = %key, "pipeline: lease lost to another worker; stopping its runner");
            let _ = r.stop.send(true);
        }
    }
    // Roots aged out of the stream keep their leases (a finished lineage's lease just stays idle).
    for root in lineage_roots(client, stream).await? {
        leases.ensure_lease(&root, &crate::runner::random_id(10)).await?;
    }
    let table = leases.scan().await?;
    let expired = observed.expired(&table, timeout, Instant::now());
    let me = leases.owner();
    let mut wanted: Vec<String> = table
        .iter()
        .filter(|l| l.owner.as_deref() == Some(me) && !running.contains_key(&l.key))
        .map(|l| l.key.clone())
        .collect();
    wanted.extend(plan(&table, &expired, me).into_iter().filter(|k| !running.contains_key(k)));
    wanted.dedup();
    for key in wanted {
        let Some(seen) = table.iter().find(|l| l.key == key) else { continue };
        let sent = Instant::now();
        let Some(lease) = leases.take(seen).await? else {
            continue; // another worker moved first
        };
        let Some(lineage) = lease.lineage.clone() else {
            tracing::warn!(lease = %key, "pipeline: lease without a lineage id; skipped");
            continue;
        };
        let previous = seen.owner.clone();
        tracing::info!(lease = %key, previous_owner = ?previous, epoch = lease.checkpoint, "pipeline: lease taken");
        let held = Arc::new(Held::new(leases.clone(), lease, sent, timeout));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let name = lineage_name(&key, &lineage);
        let source = KinesisSource::for_lineage(client.clone(), stream.to_owned(), key.clone(), name.clone());
        let shared = crate::runner::Shared {
            fence: held.clone(),
            history: spawn.dataset.join(&format!("_pipeline/{name}")),
            snapshot_every: spawn.snapshot_every,
        };
        let (data_dir, dataset, config, clickhouse, status) =
            (spawn.data_dir.to_owned(), spawn.dataset.clone(), spawn.config.clone(), spawn.clickhouse.clone(), spawn.status.clone());
        let task = tasks
            .spawn({
                let key = key.clone();
                async move {
                    let result = crate::runner::run_with(source, data_dir, dataset, config, clickhouse, status, stop_rx, Some(shared)).await;
                    (key, result)
                }
            })
            .id();
        running.insert(key, Running { lease: held, stop: stop_tx, task });
    }
    Ok(())
}
