//! `qoeflow pipeline` on Kinesis (the emulator): collector → stream → pipeline → Parquet equals the batch
//! reference over what the stream holds; KPL-aggregated records; a shard split and a shard merge
//! mid-stream; kill -9 and a crash between files and checkpoint, restarted, exactly once in Parquet and
//! ClickHouse.


use std::path::Path;
use std::time::Duration;

use crate::common::kinesis::*;
use crate::common::parquet::*;
use crate::common::workload::*;
use crate::common::*;
use schemas::Record;

const STREAM: &str = "beacons";
const NO_REORDER_WAIT: (&str, &str) = ("QOEFLOW_PIPELINE__REORDER_WAIT_MS", "0");

fn pipeline(endpoint: &str, data: &Path, env: &[(&str, &str)]) -> Qoeflow {
    pipeline_worker(endpoint, data, env, &[])
}

fn pipeline_worker(endpoint: &str, data: &Path, env: &[(&str, &str)], extra: &[&str]) -> Qoeflow {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec!["pipeline", "--kinesis-stream", STREAM, "--kinesis-endpoint", endpoint, "--data-dir", data];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.extend_from_slice(&AWS_ENV);
    env.push(("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100"));
    Qoeflow::spawn_until(&args, &env, "pipeline: resuming from checkpoint")
}

async fn stream_records(emu: &Emulator) -> Vec<Record> {
    read_stream(&emu.client().await, STREAM).await.into_iter().map(|r| r.record).collect()
}

async fn post_views(url: &str, views: std::ops::Range<u64>, t0: i64) {
    let client = reqwest::Client::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    for v in views {
        for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 301) {
            assert!(post_until_ok(&client, || url.to_owned(), &b, &stop).await);
        }
    }
}

/// The beacons of 30 views, posted in two halves around a reshard by [`post_half`].
fn reshard_views() -> Vec<Vec<serde_json::Value>> {
    let t0 = now_ms() - 60_000;
    (0..30u64).map(|v| view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 307)).collect()
}

/// Posts the first (or `second`) half of every view's beacons, in order, retrying like an SDK.
async fn post_half(url: &str, views: &[Vec<serde_json::Value>], second: bool) {
    let client = reqwest::Client::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    for bs in views {
        let half = if second { &bs[bs.len() / 2..] } else { &bs[..bs.len() / 2] };
        for b in half {
            assert!(post_until_ok(&client, || url.to_owned(), b, &stop).await);
        }
    }
}

/// After a reshard: no view skipped a `seq` (read in order across it), and the dataset equals the
/// reference over the stream.
fn assert_read_in_order_across_the_reshard(data: &Path, stream: Vec<StreamRecord>) {
    assert_eq!(sum(&read_table(data, "views"), "gaps"), 0, "every view read in seq order across the reshard");
    assert_dataset_matches(data, &stream.into_iter().map(|r| r.record).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_to_kinesis_to_parquet_equals_the_reference() {
    let emu = Emulator::start();
    create_stream(&emu.client().await, STREAM, 3).await;
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    let mut p = pipeline(&emu.endpoint, dir.path(), &[]);
    post_views(&collector.beacon_url(), 0..45, now_ms() - 60_000).await;
    wait_for_views(dir.path(), 45, Duration::from_secs(60));
    p.stop();
    assert_dataset_matches(dir.path(), &stream_records(&emu).await);
    assert!(files(&dir.path().join("parquet")).iter().all(|f| f.to_string_lossy().contains("part-kinesis-w0-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregated_records_are_deaggregated() {
    let emu = Emulator::start();
    let client = emu.client().await;
    create_stream(&client, STREAM, 2).await;
    // A KPL producer: several views' records packed into each Kinesis record.
    let t0 = now_ms() - 60_000;
    let mut user_records = Vec::new();
    for v in 0..12u64 {
        let view = format!("kpl-{v}");
        for b in view_beacons(&view, v, t0 + v as i64 * 100) {
            let events = b["events"].as_array().expect("events").iter().map(|e| e.as_object().cloned().expect("object")).collect();
            let rec = schemas::record::EventsRecord {
                recv_ms: t0 + 30_000,
                sent_at: b["sent_at"].as_i64().expect("sent_at"),
                key: None,
                view_id: view.clone(),
                client: Default::default(),
                events,
            };
            user_records.push((view.clone(), bytes::Bytes::from(Record::Events(rec).encode())));
        }
    }
    // Aggregate per view group so each view's records stay in order within one Kinesis record stream.
    for group in user_records.chunk_by(|a, b| a.0 == b.0).collect::<Vec<_>>().chunks(3) {
        let flat: Vec<(String, bytes::Bytes)> = group.iter().flat_map(|g| g.iter().cloned()).collect();
        let data = crate::oracle::kpl::aggregate(&flat);
        client
            .put_record()
            .stream_name(STREAM)
            .partition_key(&flat[0].0)
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .send()
            .await
            .expect("PutRecord");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = pipeline(&emu.endpoint, dir.path(), &[]);
    wait_for_views(dir.path(), 12, Duration::from_secs(60));
    p.stop();
    let records: Vec<Record> = user_records.iter().map(|(_, d)| Record::decode(d).expect("decode")).collect();
    assert_dataset_matches(dir.path(), &records);
    assert_eq!(num_rows(&read_table(dir.path(), "rejected")), 0, "no aggregated record was taken for a poison record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_split_mid_stream_counts_every_event_once() {
    let emu = Emulator::start();
    let client = emu.client().await;
    create_stream(&client, STREAM, 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    // No reorder wait: a child read before its parent finished would show as gaps, not be hidden.
    let mut p = pipeline(&emu.endpoint, dir.path(), &[NO_REORDER_WAIT]);
    // First half of every view's beacons, then split the only shard, then the rest.
    let views = reshard_views();
    post_half(&collector.beacon_url(), &views, false).await;
    let shards = client.list_shards().stream_name(STREAM).send().await.expect("ListShards");
    let parent = shards.shards()[0].clone();
    let range = parent.hash_key_range().expect("hash range");
    let mid = (range.starting_hash_key().parse::<u128>().expect("u128") + range.ending_hash_key().parse::<u128>().expect("u128")) / 2;
    client
        .split_shard()
        .stream_name(STREAM)
        .shard_to_split(parent.shard_id())
        .new_starting_hash_key(mid.to_string())
        .send()
        .await
        .expect("SplitShard");
    for _ in 0..100 {
        let s = client.list_shards().stream_name(STREAM).send().await.expect("ListShards");
        if s.shards().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post_half(&collector.beacon_url(), &views, true).await;
    wait_for_views(dir.path(), 30, Duration::from_secs(90));
    p.stop();
    let stream = read_stream(&client, STREAM).await;
    assert!(stream.iter().any(|r| r.shard != parent.shard_id()), "records landed in the child shards after the split");
    assert_read_in_order_across_the_reshard(dir.path(), stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_crashes_are_replayed_exactly_once() {
    let emu = Emulator::start();
    create_stream(&emu.client().await, STREAM, 2).await;
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    let url = collector.beacon_url();
    let t0 = now_ms() - 60_000;
    let load = tokio::spawn(async move {
        for chunk in 0..6u64 {
            post_views(&url, chunk * 10..chunk * 10 + 10, t0).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = crate::common::clickhouse::ClickHouse::start(ch_dir.path());
    let ch_url = ch.url();
    let with_ch = ["--clickhouse-url", ch_url.as_str()];
    // Crash exactly between epoch 2's files and its checkpoint, then kill -9 a restarted pipeline.
    let mut p = pipeline_worker(&emu.endpoint, dir.path(), &[("QOEFLOW_FAILPOINT", "pipeline_after_files:2")], &with_ch);
    assert!(p.wait_exit(Duration::from_secs(60)), "the failpoint aborts the pipeline");
    assert!(ch.scalar("SELECT count() FROM qoeflow.qoe_window WHERE epoch = 2") > 0, "epoch 2 reached ClickHouse before the crash");
    let mut p = pipeline_worker(&emu.endpoint, dir.path(), &[], &with_ch);
    p.wait_for_line("removed files of an unfinished epoch", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(700)).await;
    p.kill9();
    let mut p = pipeline_worker(&emu.endpoint, dir.path(), &[], &with_ch);
    load.await.expect("load");
    wait_for_views(dir.path(), 60, Duration::from_secs(90));
    ch.wait_for_views(60, Duration::from_secs(30));
    p.stop();
    assert_dataset_matches(dir.path(), &stream_records(&emu).await);
    // ClickHouse got the replayed epochs too, and holds exactly one copy of each (read with FINAL).
    ch.assert_matches_parquet(dir.path());
}

/// The merged child holds the second half of views whose first half sits in either parent. The
/// pipeline starts after the merge, and the adjacent parent's reads are throttled for a while: reading
/// the child before that parent is finished would apply views out of order (gaps, with no reorder wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_merge_reads_the_child_only_after_both_parents() {
    let emu = Emulator::start();
    let client = emu.client().await;
    create_stream(&client, STREAM, 2).await;
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    let views = reshard_views();
    post_half(&collector.beacon_url(), &views, false).await;
    let shards = client.list_shards().stream_name(STREAM).send().await.expect("ListShards");
    let (a, b) = (shards.shards()[0].shard_id().to_owned(), shards.shards()[1].shard_id().to_owned());
    client.merge_shards().stream_name(STREAM).shard_to_merge(&a).adjacent_shard_to_merge(&b).send().await.expect("MergeShards");
    let mut merged = None;
    for _ in 0..100 {
        let s = client.list_shards().stream_name(STREAM).send().await.expect("ListShards");
        merged = s.shards().iter().find(|s| s.adjacent_parent_shard_id() == Some(b.as_str())).map(|s| s.shard_id().to_owned());
        if merged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let merged = merged.expect("the merged shard is listed, with the adjacent parent");
    post_half(&collector.beacon_url(), &views, true).await;
    let proxy = FaultProxy::start(&emu.endpoint, 11).await;
    proxy.set(Fault::ThrottleShardIterators(b.clone(), 6));
    // No reorder wait: a child read before a parent is finished shows as gaps instead of being hidden.
    let mut p = pipeline(&proxy.endpoint, dir.path(), &[NO_REORDER_WAIT]);
    wait_for_views(dir.path(), 30, Duration::from_secs(90));
    p.stop();
    let stream = read_stream(&client, STREAM).await;
    for shard in [&a, &b, &merged] {
        assert!(stream.iter().any(|r| r.shard == *shard), "records landed in {shard}");
    }
    assert_read_in_order_across_the_reshard(dir.path(), stream);
    assert_eq!(proxy.stats().get_iterators_throttled, 6, "the adjacent parent's reads were throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_the_shards_and_together_equal_the_reference() {
    let emu = Emulator::start();
    create_stream(&emu.client().await, STREAM, 6).await;
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    let w = |i: &'static str| pipeline_worker(&emu.endpoint, dir.path(), &[], &["--worker-index", i, "--worker-count", "2"]);
    let (mut w0, mut w1) = (w("0"), w("1"));
    post_views(&collector.beacon_url(), 0..40, now_ms() - 60_000).await;
    wait_for_views(dir.path(), 40, Duration::from_secs(60));
    w0.stop();
    w1.stop();
    let files = files(&dir.path().join("parquet"));
    for worker in ["part-kinesis-w0-", "part-kinesis-w1-"] {
        assert!(files.iter().any(|f| f.to_string_lossy().contains(worker)), "{worker} wrote nothing: shards were not shared");
    }
    // One dataset, no view written by both workers (view_measures panics on a duplicate), totals exact.
    assert_dataset_matches(dir.path(), &stream_records(&emu).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterators_and_read_throttling_are_survived() {
    let emu = Emulator::start();
    create_stream(&emu.client().await, STREAM, 2).await;
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    post_views(&collector.beacon_url(), 0..20, now_ms() - 60_000).await;
    // The pipeline reads through the proxy, which fails its first GetRecords calls.
    let proxy = FaultProxy::start(&emu.endpoint, 9).await;
    proxy.set(Fault::GetRecordsErrors(vec![
        "ExpiredIteratorException",
        "ProvisionedThroughputExceededException",
        "ExpiredIteratorException",
        "ProvisionedThroughputExceededException",
    ]));
    let mut p = pipeline(&proxy.endpoint, dir.path(), &[]);
    p.wait_for_line("shard iterator expired", Duration::from_secs(30));
    p.wait_for_line("throttled reads of a shard; backing off", Duration::from_secs(30));
    post_views(&collector.beacon_url(), 20..30, now_ms() - 60_000).await;
    wait_for_views(dir.path(), 30, Duration::from_secs(60));
    p.stop();
    assert_eq!(proxy.stats().get_records_failed, 4, "all injected errors were served");
    assert_dataset_matches(dir.path(), &stream_records(&emu).await);
}
