//! The Parquet dataset on S3 (`--dataset s3://…`), against moto's S3 server: a crash between an epoch's
//! staged files and its checkpoint leaves nothing visible, compaction merges on S3, and the dataset is
//! exact and reads the same in `qoeflow query` and in DuckDB (through s3fs, as the README shows).

use std::time::{Duration, Instant};

use crate::common::moto::Moto;
use crate::common::workload::{assert_dataset_matches, now_ms, post_until_ok, view_beacons};
use crate::common::{Qoeflow, read_local_log};

const DATASET: &str = "s3://qoe/prod";

fn query_s3(moto: &Moto, sql: &str) -> Vec<serde_json::Value> {
    moto.query(DATASET, sql)
}

/// Posts views `range` (traces of `view_beacons` from `t0` on, delivered now, like an SDK's offline
/// queue when `t0` is hours ago: their hour partitions are then closed once newer views move the
/// watermark on, so compaction may merge them).
async fn post_views_from(q: &Qoeflow, range: std::ops::Range<u64>, t0: i64) {
    let client = reqwest::Client::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    for v in range {
        for mut b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 97) {
            b["sent_at"] = serde_json::json!(now_ms());
            assert!(post_until_ok(&client, || q.beacon_url(), &b, &stop).await);
        }
    }
}

/// `…-e<first>-<last>.parquet`: a compaction's output.
fn is_merged(key: &str) -> bool {
    let Some(body) = key.strip_suffix(".parquet") else {
        return false;
    };
    let tail = body.as_bytes();
    tail.len() > 27
        && tail[tail.len() - 27..tail.len() - 25] == *b"-e"
        && tail[tail.len() - 13] == b'-'
        && tail[tail.len() - 25..]
            .iter()
            .enumerate()
            .all(|(i, c)| i == 12 || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_on_s3_is_exact_through_a_crash_compacts_and_reads_the_same_in_duckdb() {
    let moto = Moto::start();
    moto.create_bucket("qoe");
    let dataset = moto.location(DATASET);
    let dir = tempfile::tempdir().expect("tmp");
    let aws: Vec<(&str, String)> = moto.env();
    let env = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, String)> {
        let mut env = aws.clone();
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    };
    let spawn = |env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Qoeflow::serve(dir.path(), &["--dataset", DATASET], &env)
    };
    let t0 = now_ms() - 3 * 3_600_000;

    // Beacons reach the log while the pipeline idles; then one epoch takes them all and the process
    // dies after staging that epoch's files, before its checkpoint.
    let mut q = spawn(env(&[("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "3600000")]));
    q.wait_for_line(
        "pipeline: resuming from checkpoint",
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    post_views_from(&q, 0..40, t0).await;
    q.stop();
    // (Ready once the pipeline resumes: its first epoch may abort the process before the collector
    // has logged its address.)
    let failing = env(&[
        ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100"),
        ("QOEFLOW_FAILPOINT", "pipeline_after_files:1"),
    ]);
    let failing: Vec<(&str, &str)> = failing.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let mut q = Qoeflow::spawn_until(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--dataset", DATASET],
        &failing,
        "pipeline: resuming from checkpoint",
    );
    assert!(
        q.wait_exit(Duration::from_secs(30)),
        "the failpoint aborts the process after epoch 1's staged files"
    );
    let visible = dataset.list("").await.expect("list");
    assert!(
        visible.is_empty(),
        "nothing of the uncommitted epoch is visible on S3: {visible:?}"
    );

    // The restart replays the epoch; more views follow, old and new (the new ones move the watermark
    // past the old hours); compaction merges the closed hours on S3.
    let compaction = [
        ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100"),
        ("QOEFLOW_PIPELINE__COMPACT_AFTER_MS", "1000"),
        ("QOEFLOW_PIPELINE__COMPACT_MIN_FILES", "2"),
    ];
    let mut q = spawn(env(&compaction));
    post_views_from(&q, 40..60, t0).await;
    post_views_from(&q, 60..80, now_ms() - 60_000).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = query_s3(&moto, "SELECT count(*) AS n FROM views");
        if rows[0]["n"] == 80 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "views on S3 after 60 s: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Compaction looks every 30 s after a committed epoch: a trickle of new views keeps epochs coming.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut next = 80;
    while !dataset
        .list("qoe_window")
        .await
        .expect("list")
        .iter()
        .any(|e| is_merged(&e.key))
    {
        assert!(
            Instant::now() < deadline,
            "no compacted qoe_window file on S3 after 90 s: {:?}",
            dataset.list("qoe_window").await.expect("list")
        );
        post_views_from(&q, next..next + 1, now_ms() - 10_000).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A compaction pass runs between epochs, so views posted during it wait for the next epoch; a stop
    // leaves them in the log for the next start. Wait for every view before stopping (a query that met
    // a file the compaction deleted under it is retried).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = moto.try_query(DATASET, "SELECT count(*) AS n FROM views");
        if rows.as_ref().is_ok_and(|rows| rows[0]["n"] == next) {
            break;
        }
        assert!(Instant::now() < deadline, "views on S3 after 60 s: {rows:?}, {next} posted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    q.stop();

    // Exact: the S3 dataset equals the batch reference of everything the log acknowledged.
    let mirror = tempfile::tempdir().expect("tmp");
    Moto::mirror(&dataset, &mirror.path().join("parquet")).await;
    assert_dataset_matches(mirror.path(), &read_local_log(dir.path()));

    // The same answers from qoeflow and from DuckDB reading s3:// through s3fs.
    let sql = "SELECT v.n AS views, w.p AS play_ms, e.c AS events FROM (SELECT count(*) AS n FROM views) v, \
               (SELECT sum(play_ms) AS p FROM qoe_window) w, (SELECT count(*) AS c FROM events) e";
    let ours = &query_s3(&moto, sql)[0];
    let ours = format!("{}|{}|{}", ours["views"], ours["play_ms"], ours["events"]);
    let duck = r#"
import os, sys, duckdb, s3fs
fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=sys.argv[1])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")  # a query past 2 s draws a progress bar on stdout
con.register_filesystem(fs)
r = sys.argv[2]
row = con.sql(f"""
  SELECT (SELECT count(*) FROM (SELECT * FROM read_parquet('{r}/views/*/*/*.parquet', hive_partitioning=true)
            QUALIFY row_number() OVER (PARTITION BY view_id ORDER BY version DESC) = 1)),
         (SELECT sum(play_ms) FROM read_parquet('{r}/qoe_window/*/*/*.parquet', hive_partitioning=true)),
         (SELECT count(*) FROM read_parquet('{r}/events/*/*/*.parquet', hive_partitioning=true))""").fetchall()[0]
print("|".join(map(str, row)), flush=True)
con.close()
# DuckDB's fsspec bridge may abort the interpreter's teardown ("terminate called without an active
# exception", seen once in CI): the answer is out, skip the teardown.
os._exit(0)
"#;
    // Up to three runs when DuckDB dies without an answer (the crash above, in the bridge, not in the
    // files); any answer it gives is compared below.
    let run = || std::process::Command::new("python3").args(["-c", duck, &moto.endpoint(), DATASET]).output().expect("python3");
    let mut out = run();
    for _ in 1..3 {
        if out.status.success() || !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        out = run();
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "DuckDB over s3fs failed three times: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        ours,
        "DuckDB and qoeflow query agree on the S3 dataset"
    );
    assert!(
        ours.starts_with(&format!("{next}|")),
        "{ours}: all {next} views"
    );
}
