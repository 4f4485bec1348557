//! Elastic pipeline workers (`qoeflow pipeline --lease-table`): leases in DynamoDB and the dataset and
//! the lineages' history on S3 (both moto's server), Kinesis (the emulator), ClickHouse. Workers come
//! and go — one killed with `kill -9`, one added, a shard split under them — and the totals still
//! equal the loadgen's truth exactly; a worker paused past its lease has its commit refused.

use std::path::Path;
use std::time::{Duration, Instant};

use pipeline::kinesis::lease::Lease;

use crate::common::clickhouse::ClickHouse;
use crate::common::kinesis::*;
use crate::common::moto::Moto;
use crate::common::workload::{assert_dataset_matches, now_ms, post_until_ok, view_beacons};
use crate::common::*;
use crate::loadgen::{KEY, assert_clickhouse_equals_truth, assert_dataset_equals_truth, loadgen};

const TABLE: &str = "qoeflow-leases";
const LEASE_TIMEOUT: Duration = Duration::from_secs(4);

/// An elastic worker on its own data directory, writing the dataset `dataset` on `moto`.
fn worker(emu: &Emulator, moto: &Moto, stream: &str, dataset: &str, data: &Path, clickhouse: Option<&str>, extra: &[(&str, &str)]) -> Qoeflow {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec!["pipeline", "--kinesis-stream", stream, "--kinesis-endpoint", &emu.endpoint, "--data-dir", data, "--dataset", dataset, "--lease-table", TABLE];
    if let Some(url) = clickhouse {
        args.extend(["--clickhouse-url", url]);
    }
    let timeout = LEASE_TIMEOUT.as_millis().to_string();
    let aws = moto.env();
    let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([
        ("QOEFLOW_KINESIS__LEASE_TIMEOUT_MS", timeout.as_str()),
        ("QOEFLOW_KINESIS__STATE_SNAPSHOT_MS", "5000"),
        ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "500"),
    ]);
    env.extend_from_slice(extra);
    Qoeflow::spawn_until(&args, &env, "pipeline: elastic worker")
}

/// The owner id a worker logged at start-up.
fn owner(w: &mut Qoeflow) -> String {
    let line = w.wait_for_line("pipeline: elastic worker", Duration::from_secs(1));
    line.split("owner=").nth(1).and_then(|r| r.split_whitespace().next()).expect("owner= in the start-up line").to_owned()
}

async fn leases(moto: &Moto) -> Vec<Lease> {
    moto.lease_table(TABLE).scan().await.expect("scan the lease table")
}

fn owned_by<'a>(leases: &'a [Lease], owner: &str) -> Vec<&'a Lease> {
    leases.iter().filter(|l| l.owner.as_deref() == Some(owner)).collect()
}

/// Polls the lease table until `done` holds; returns how long it took.
async fn until_leases(moto: &Moto, what: &str, within: Duration, done: impl Fn(&[Lease]) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let table = leases(moto).await;
        if done(&table) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what} within {within:?}; the lease table: {table:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn split_first_shard(emu: &Emulator, stream: &str) -> String {
    let client = emu.client().await;
    let shards = client.list_shards().stream_name(stream).send().await.expect("ListShards");
    let parent = shards.shards()[0].clone();
    let range = parent.hash_key_range().expect("hash range");
    let mid = (range.starting_hash_key().parse::<u128>().expect("u128") + range.ending_hash_key().parse::<u128>().expect("u128")) / 2;
    client.split_shard().stream_name(stream).shard_to_split(parent.shard_id()).new_starting_hash_key(mid.to_string()).send().await.expect("SplitShard");
    parent.shard_id().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_die_join_and_reshard_and_the_totals_stay_exact() {
    const STREAM: &str = "elastic";
    const DATASET: &str = "s3://qoe/elastic";
    let moto = Moto::start();
    moto.create_bucket("qoe");
    let emu = Emulator::start();
    create_stream(&emu.client().await, STREAM, 4).await;
    let dir = tempfile::tempdir().expect("tmp");
    let ch = ClickHouse::start(&dir.path().join("clickhouse"));
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &["--ingest-key", KEY], &[]);
    let spawn = |i: usize| worker(&emu, &moto, STREAM, DATASET, &dir.path().join(format!("w{i}")), Some(&ch.url()), &[]);
    let mut workers: Vec<Qoeflow> = (0..3).map(spawn).collect();
    let owners: Vec<String> = workers.iter_mut().map(owner).collect();
    until_leases(&moto, "four leases spread over the three workers", Duration::from_secs(40), |t| {
        t.len() == 4 && owners.iter().all(|o| !owned_by(t, o).is_empty()) && t.iter().all(|l| l.owner.is_some())
    })
    .await;

    let target = collector.url.clone();
    let truth_path = dir.path().join("truth.json");
    let traffic = tokio::task::spawn_blocking(move || loadgen(&target, "13", &truth_path));
    let started = Instant::now();

    // Mid-stream, the busiest worker dies without a word.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let table = leases(&moto).await;
    let victim = (0..3).max_by_key(|&i| owned_by(&table, &owners[i]).len()).expect("a worker");
    let lost: Vec<String> = owned_by(&table, &owners[victim]).iter().map(|l| l.key.clone()).collect();
    workers[victim].kill9();
    let takeover = until_leases(&moto, "the dead worker's leases taken over", LEASE_TIMEOUT * 3, |t| {
        lost.iter().all(|k| t.iter().any(|l| &l.key == k && l.owner.is_some() && l.owner.as_deref() != Some(owners[victim].as_str())))
    })
    .await;
    eprintln!("elastic: {} lease(s) of the killed worker taken over {takeover:?} after kill -9 (lease timeout {LEASE_TIMEOUT:?})", lost.len());
    assert!(takeover >= LEASE_TIMEOUT / 2, "taken over after the timeout, not before: {takeover:?}");
    assert!(takeover <= LEASE_TIMEOUT * 2, "taken over within the timeout and a renewal round: {takeover:?}");

    // A fourth worker joins; then a shard splits under the running workers.
    tokio::time::sleep_until((started + Duration::from_secs(20)).into()).await;
    workers.push(spawn(3));
    let newcomer = owner(&mut workers[3]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let parent = split_first_shard(&emu, STREAM).await;

    let truth = traffic.await.expect("loadgen");
    until_leases(&moto, "the new worker holding a lease", Duration::from_secs(30), |t| !owned_by(t, &newcomer).is_empty()).await;
    assert_dataset_equals_truth(|sql| moto.query(DATASET, sql).into_iter().next().unwrap_or_default(), &truth);
    assert_clickhouse_equals_truth(&ch, &truth);
    let stream = read_stream(&emu.client().await, STREAM).await;
    assert!(stream.iter().any(|r| r.shard != parent && !["shardId-000000000001", "shardId-000000000002", "shardId-000000000003"].contains(&r.shard.as_str())),
        "records landed in the children of {parent}");
    let table = leases(&moto).await;
    assert_eq!(table.len(), 4, "one lease per lineage: the split's children joined their parent's: {table:?}");
    for (i, w) in workers.iter_mut().enumerate() {
        if i != victim {
            w.stop();
        }
    }
}

/// Posts views `range` (one trace each, like an SDK), in order.
async fn post_views(url: &str, range: std::ops::Range<u64>) {
    let client = reqwest::Client::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let t0 = now_ms() - 60_000;
    for v in range {
        for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 211) {
            assert!(post_until_ok(&client, || url.to_owned(), &b, &stop).await);
        }
    }
}

/// The state letter of a process (`T`: stopped).
fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().and_then(|r| r.trim_start().chars().next()).unwrap_or('?')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_has_its_commit_refused_and_nothing_it_wrote_is_read() {
    const STREAM: &str = "fence";
    const DATASET: &str = "s3://qoe/fence";
    let moto = Moto::start();
    moto.create_bucket("qoe");
    let emu = Emulator::start();
    create_stream(&emu.client().await, STREAM, 2).await;
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    // Worker a stops itself (SIGSTOP) at its first lineage's commit of epoch 3: after its lease was
    // judged valid, before the lease's conditional update. A GC pause or a frozen VM at the worst time.
    let mut a = worker(&emu, &moto, STREAM, DATASET, &dir.path().join("a"), None, &[("QOEFLOW_FAILPOINT", "pipeline_stop_before_lease_commit:3")]);
    let owner_a = owner(&mut a);
    until_leases(&moto, "a holding both leases", Duration::from_secs(30), |t| t.len() == 2 && owned_by(t, &owner_a).len() == 2).await;
    let url = collector.beacon_url();
    let feeder = tokio::spawn({
        let url = url.clone();
        async move {
            for chunk in 0..8u64 {
                post_views(&url, chunk * 5..chunk * 5 + 5).await;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
    });
    a.wait_for_line("failpoint pipeline_stop_before_lease_commit: stopping", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_state(a.pid()) != 'T' {
        assert!(Instant::now() < deadline, "worker a did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // b takes both leases once a's stand still past the timeout, and commits past epoch 3.
    let mut b = worker(&emu, &moto, STREAM, DATASET, &dir.path().join("b"), None, &[]);
    let owner_b = owner(&mut b);
    let took = until_leases(&moto, "b taking a's leases", LEASE_TIMEOUT * 4, |t| owned_by(t, &owner_b).len() == 2).await;
    eprintln!("fencing: b took the paused worker's leases {took:?} after it started");
    feeder.await.expect("feeder");
    until_leases(&moto, "b committing past epoch 3 on both lineages", Duration::from_secs(60), |t| t.iter().all(|l| l.checkpoint > 3)).await;

    // The runner that stopped went no further while paused: it logs that it resumed only after the
    // SIGCONT below. (A stop signalled to the process rather than to the stopping thread let that
    // thread run on until another thread took the signal: 2 ms to 14 ms under load, long enough to
    // commit the epoch before the pause.)
    let early: Vec<String> = a.stderr.try_iter().filter(|l| l.contains("failpoint pipeline_stop_before_lease_commit: resumed")).collect();
    assert!(early.is_empty(), "worker a's runner ran on past its stop: {early:?}");
    // a resumes: its commit of epoch 3 is refused, and it publishes nothing.
    let _ = std::process::Command::new("kill").args(["-CONT", &a.pid().to_string()]).status();
    a.wait_for_line("the lease refused the commit of epoch 3", Duration::from_secs(30));
    post_views(&url, 40..50).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while moto.query(DATASET, "SELECT count(*) AS n FROM views")[0]["n"] != 50 {
        assert!(Instant::now() < deadline, "the 50 views did not all land");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    a.stop();
    b.stop();
    // What a staged for epoch 3 stayed a multipart upload never completed: invisible to every reader.
    let unpublished = moto.incomplete_uploads("qoe", "fence/");
    assert!(
        unpublished.iter().any(|k| k.ends_with("-e000000000003.parquet")),
        "the fenced epoch's staged files were never published: {unpublished:?}"
    );
    // Every view once, every event once: nothing of a's fenced epoch counted twice.
    let mirror = tempfile::tempdir().expect("tmp");
    Moto::mirror(&moto.location(DATASET), &mirror.path().join("parquet")).await;
    let records: Vec<schemas::Record> = read_stream(&emu.client().await, STREAM).await.into_iter().map(|r| r.record).collect();
    assert_dataset_matches(mirror.path(), &records);
}
