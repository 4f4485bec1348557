//! `qoeflow serve` end to end on the local log: beacons → Parquet, with totals equal to the batch
//! reference computed from what the log holds; and kill -9 mid-stream, restarted, still exactly once.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::common::parquet::*;
use crate::common::workload::*;
use crate::common::*;


/// Ready line of a run a failpoint aborts: its first epoch may end the process before the collector
/// logs its address.
const RESUMING: &str = "pipeline: resuming from checkpoint";
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacons_reach_parquet_and_equal_the_reference() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let t0 = now_ms() - 60_000;
    post_views(&q, 40, t0, 777).await;
    wait_for_views(dir.path(), 40, Duration::from_secs(30));
    q.stop();
    assert_matches_reference(dir.path());
    let rejected = read_table(dir.path(), "rejected");
    assert_eq!(num_rows(&rejected), 0);

    // DuckDB reads the dataset as plain hive-partitioned Parquet, no qoeflow code involved (views: the
    // latest version of each, as README shows).
    let root = dir.path().join("parquet");
    let sql = format!(
        "select (select count(*) from (select * from read_parquet('{r}/views/*/*/*.parquet', hive_partitioning=true) \
                 qualify row_number() over (partition by view_id order by version desc) = 1)), \
                (select sum(play_ms) from read_parquet('{r}/qoe_window/*/*/*.parquet', hive_partitioning=true)), \
                (select count(distinct dt) from read_parquet('{r}/events/*/*/*.parquet', hive_partitioning=true)), \
                (select typeof(window_start) from read_parquet('{r}/qoe_window/*/*/*.parquet') limit 1)",
        r = root.display()
    );
    let out = std::process::Command::new("python3")
        // A query past 2 s draws a progress bar on stdout: off.
        .args(["-c", &format!("import duckdb; c = duckdb.connect(); c.execute('SET enable_progress_bar = false'); print('|'.join(map(str, c.sql(\"{sql}\").fetchall()[0])))")])
        .output()
        .expect("python3 (deploy/test.sh installs duckdb)");
    assert!(out.status.success(), "duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let windows = read_table(dir.path(), "qoe_window");
    assert_eq!(got, format!("40|{}|1|TIMESTAMP WITH TIME ZONE", sum(&windows, "play_ms")));

    // `qoeflow query` answers the same from the same files.
    let query = |format: &str, sql: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qoeflow"))
            .args(["query", "--data-dir", dir.path().to_str().expect("path"), "--format", format, sql])
            .output()
            .expect("run qoeflow query")
    };
    let out = query("csv", "SELECT sum(attempts) AS a, sum(play_ms) AS p, count(DISTINCT cdn) AS c FROM qoe_ratios");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = format!("a,p,c\n{},{},3\n", sum(&windows, "attempts"), sum(&windows, "play_ms"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    let out = query("json", "SELECT count(*) AS views FROM views");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"views":40}"#);
    let out = query("table", "SELEC nothing");
    assert!(!out.status.success(), "bad SQL fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SELEC"), "the error names the problem");
}

/// A player that vanishes without `viewend` on an otherwise quiet collector: the pipeline's clock still
/// moves (caught-up ticks recorded in each epoch's intent), so the view ends by the inactivity timeout
/// without any further traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_still_ends_views_by_inactivity_timeout() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100"), ("QOEFLOW_PIPELINE__INACTIVITY_TIMEOUT_MS", "2000")];
    let mut q = Qoeflow::serve(dir.path(), &[], &env);
    let first = view_beacons("vanished", 1, now_ms()).remove(0);
    let stop = AtomicBool::new(false);
    assert!(post_until_ok(&reqwest::Client::new(), || q.beacon_url(), &first, &stop).await);
    // 2 s of timeout, behind a clock that trails the wall clock by 10 s while nothing arrives.
    wait_for_views(dir.path(), 1, Duration::from_secs(40));
    q.stop();
    let views = read_table(dir.path(), "views");
    assert_eq!(strings(&views, "end_reason"), vec!["timeout".to_owned()]);
    let windows = read_table(dir.path(), "qoe_window");
    assert_eq!(sum(&windows, "ebvs"), 1, "an attempt that never started and timed out is an exit before start");
}

/// Each thread of process `pid` as (name, nice value, scheduling policy), from `/proc/<pid>/task/*/stat`.
fn threads_of(pid: u32) -> Vec<(String, i32, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        // After the name, fields from 3 (state) on: the nice value is field 19 of proc(5), the policy 41.
        let field = |n: usize| -> i32 { stat[close + 2..].split(' ').nth(n - 3).and_then(|v| v.parse().ok()).expect("a number") };
        out.push((stat[open + 1..close].to_owned(), field(19), field(41)));
    }
    out
}

/// `serve` runs its pipeline on threads of its own below the collector's priority (`pipeline.nice`, 10
/// steps by default): the pipeline's thread and its blocking threads (which encoded the epochs' Parquet
/// files) 10 below the runtime workers that answer beacons, which keep the nice value `serve` started
/// with (this test's own); `pipeline.nice = 0` keeps them level; `pipeline.sched_idle` puts them (and
/// them only) under `SCHED_IDLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_below_the_collector() {
    let own = threads_of(std::process::id()).into_iter().map(|(_, n, _)| n).min().expect("this test's threads");
    let (other, idle) = (0, 5); // SCHED_OTHER, SCHED_IDLE
    for (env, steps, policy) in [
        (vec![], 10, other),
        (vec![("QOEFLOW_PIPELINE__NICE", "0")], 0, other),
        (vec![("QOEFLOW_PIPELINE__SCHED_IDLE", "true")], 10, idle),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut q = Qoeflow::serve(dir.path(), &[], &env);
        post_views(&q, 3, now_ms() - 60_000, 777).await;
        wait_for_views(dir.path(), 3, Duration::from_secs(30));
        let threads = threads_of(q.pid());
        q.stop();
        // Thread names are cut to 15 bytes.
        let of = |prefix: &str| threads.iter().filter(|(n, ..)| n.starts_with(prefix)).map(|(_, v, p)| (*v, *p)).collect::<Vec<_>>();
        let workers = of("tokio-rt-worker");
        assert!(
            !workers.is_empty() && workers.iter().all(|w| *w == (own, other)),
            "the collector's workers at serve's nice {own}, under the default policy: {threads:?}"
        );
        let (pipeline, want) = (of("qoeflow-pipelin"), ((own + steps).min(19), policy));
        assert!(pipeline.len() >= 2, "the pipeline's thread and the blocking threads that wrote its files: {threads:?}");
        assert!(pipeline.iter().all(|p| *p == want), "every pipeline thread at (nice, policy) {want:?}: {threads:?}");
    }
}

/// The last committed epoch of the local pipeline (0 before the first), from its progress file.
fn committed_epoch(dir: &std::path::Path) -> u64 {
    std::fs::read(dir.join("pipeline/checkpoint-local.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["epoch"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_replays_to_exactly_the_ground_truth() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = common::clickhouse::ClickHouse::start(ch_dir.path());
    let ch_url = ch.url();
    let args = ["--clickhouse-url", ch_url.as_str()];
    let env = [("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100")];
    let q = Qoeflow::serve(dir.path(), &args, &env);
    let url = Arc::new(std::sync::Mutex::new(q.beacon_url()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = now_ms() - 120_000;
    let views = 480u64;
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            for v in (c..views).step_by(8) {
                for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 311) {
                    let current = || url.lock().expect("lock").clone();
                    if !post_until_ok(&client, current, &b, &stop).await {
                        return;
                    }
                    // Paced like players, so the load spans the kills below.
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        }));
    }
    // Kill -9 three times while beacons flow and epochs commit, restarting on the same data dir.
    let mut q = q;
    let mut resumed_epochs = Vec::new();
    for _ in 0..3 {
        // Kill once this process has committed at least one epoch of its own, mid-way into the next.
        let before = committed_epoch(dir.path());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while committed_epoch(dir.path()) <= before {
            assert!(std::time::Instant::now() < deadline, "no epoch committed within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        q.kill9();
        q = Qoeflow::serve(dir.path(), &args, &env);
        *url.lock().expect("lock") = q.beacon_url();
        let line = q.wait_for_line("resuming from checkpoint", Duration::from_secs(20));
        let epoch: u64 = line.split("epoch=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|e| e.parse().ok()).expect("epoch");
        resumed_epochs.push(epoch);
    }
    assert!(!clients.iter().all(|c| c.is_finished()), "the load must still be running at the last kill");
    assert!(resumed_epochs.windows(2).all(|w| w[1] > w[0]) && resumed_epochs[0] > 0, "epochs committed between kills: {resumed_epochs:?}");
    for c in clients {
        tokio::time::timeout(Duration::from_secs(120), c).await.expect("clients finish").expect("client task");
    }
    wait_for_views(dir.path(), views as usize, Duration::from_secs(60));
    q.stop();
    assert_matches_reference(dir.path());
    // ClickHouse got the replayed epochs too, and holds exactly one copy (read with FINAL).
    assert_eq!(ch.scalar("SELECT count() FROM qoeflow.views FINAL") as u64, views);
    ch.assert_matches_parquet(dir.path());
}

/// The crash lands after the epoch's ClickHouse rows and staged Parquet files, before its checkpoint (no
/// reader sees those files: they are published only after the checkpoint); the
/// restart reads one record per epoch. Only replaying the saved intent (the crashed epoch's exact range)
/// makes the replay rewrite the same rows: without it, the one-record replay (one CDN) would leave the
/// crashed attempt's rows for the other CDNs behind in ClickHouse and count them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_files_and_checkpoint_is_replayed_without_duplicates() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = common::clickhouse::ClickHouse::start(ch_dir.path());
    let ch_url = ch.url();
    let args = ["--clickhouse-url", ch_url.as_str()];
    let flush = ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100");
    // Fill the log while the pipeline idles (its first, immediate tick found nothing), so that the
    // crashed epoch 1 is a big one.
    let mut q = Qoeflow::serve(dir.path(), &args, &[("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "3600000")]);
    // Its one immediate tick comes right after it resumes; post only once that tick found nothing.
    q.wait_for_line("pipeline: resuming from checkpoint", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();
    let stop = AtomicBool::new(false);
    let t0 = now_ms() - 60_000;
    for v in 0..120u64 {
        for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 97) {
            assert!(post_until_ok(&client, || q.beacon_url(), &b, &stop).await);
        }
    }
    q.stop();
    // The next epoch will hold (nearly) everything: crash right after its files.
    let ckpt: serde_json::Value = std::fs::read(dir.path().join("pipeline/checkpoint-local.json"))
        .map(|b| serde_json::from_slice(&b).expect("checkpoint json"))
        .unwrap_or(serde_json::json!({"epoch": 0}));
    let crash_epoch = ckpt["epoch"].as_u64().expect("epoch") + 1;
    let failpoint = format!("pipeline_after_files:{crash_epoch}");
    let mut q = Qoeflow::serve_until(dir.path(), &args, &[flush, ("QOEFLOW_FAILPOINT", failpoint.as_str())], RESUMING);
    assert!(q.wait_exit(Duration::from_secs(30)), "the failpoint aborts the process after epoch {crash_epoch}'s files");
    let name = format!("e{crash_epoch:012}");
    let of_epoch = |f: &std::path::PathBuf| f.to_string_lossy().contains(&name);
    let leftovers = staged_files(&dir.path().join("parquet"))
        .iter()
        .filter(|f| of_epoch(f))
        .count();
    assert!(
        leftovers > 0,
        "epoch {crash_epoch}'s files were staged before the crash"
    );
    let visible = files(&dir.path().join("parquet"))
        .iter()
        .filter(|f| of_epoch(f))
        .count();
    assert_eq!(
        visible, 0,
        "no reader sees a file of the uncommitted epoch {crash_epoch}"
    );
    let crashed_rows = ch.scalar(&format!(
        "SELECT count() FROM qoeflow.qoe_window WHERE epoch = {crash_epoch}"
    ));
    let crashed_cdns = ch.scalar(&format!(
        "SELECT uniqExact(cdn) FROM qoeflow.qoe_window WHERE epoch = {crash_epoch}"
    ));
    assert_eq!(
        crashed_cdns, 3,
        "epoch {crash_epoch}'s rows for every CDN reached ClickHouse before the crash ({crashed_rows} rows)"
    );
    let mut q = Qoeflow::serve(
        dir.path(),
        &args,
        &[flush, ("QOEFLOW_PIPELINE__MAX_RECORDS_PER_EPOCH", "1")],
    );
    let removed = q.wait_for_line(
        "removed files of an unfinished epoch",
        Duration::from_secs(20),
    );
    assert!(
        removed.contains(&format!("removed={leftovers}")),
        "{removed}"
    );
    q.wait_for_line(
        "pipeline: resuming from checkpoint",
        Duration::from_secs(20),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    q.stop();
    let mut q = Qoeflow::serve(dir.path(), &args, &[flush]);
    wait_for_views(dir.path(), 120, Duration::from_secs(60));
    q.stop();
    assert_matches_reference(dir.path());
    ch.assert_matches_parquet(dir.path());
}

/// kill -9 (the failpoint's abort) in an epoch that corrects views. Each view's first beacon (viewstart,
/// playrequest, …) is overtaken by the rest of the view for longer than the reorder wait, so the
/// pipeline proceeds without it and the views end; then the first beacons arrive, in one epoch that
/// re-derives every view, and the process dies after that epoch's ClickHouse rows and Parquet files,
/// before its commit. The restart replays the epoch from the state store's last commit: each correction
/// counts once, and the dataset equals the in-order reference, in Parquet and in ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_correcting_views_replays_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = common::clickhouse::ClickHouse::start(ch_dir.path());
    let ch_url = ch.url();
    let args = ["--clickhouse-url", ch_url.as_str()];
    let flush = ("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100");
    let no_wait = ("QOEFLOW_PIPELINE__REORDER_WAIT_MS", "0");
    let views = 60u64;
    let t0 = now_ms() - 60_000;
    let beacons: Vec<Vec<serde_json::Value>> = (0..views).map(|v| view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 97)).collect();
    let client = reqwest::Client::new();
    let stop = AtomicBool::new(false);
    let mut q = Qoeflow::serve(dir.path(), &args, &[flush, no_wait]);
    for b in beacons.iter().flat_map(|bs| &bs[1..]) {
        assert!(post_until_ok(&client, || q.beacon_url(), b, &stop).await);
    }
    // Every view ends (each has its viewend) without its first beacon.
    wait_for_views(dir.path(), views as usize, Duration::from_secs(60));
    q.stop();
    // The first beacons reach the log while the pipeline idles.
    let mut q = Qoeflow::serve(dir.path(), &args, &[("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "3600000")]);
    q.wait_for_line("pipeline: resuming from checkpoint", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for bs in &beacons {
        assert!(post_until_ok(&client, || q.beacon_url(), &bs[0], &stop).await);
    }
    q.stop();
    let crash_epoch = committed_epoch(dir.path()) + 1;
    let failpoint = format!("pipeline_after_files:{crash_epoch}");
    let mut q = Qoeflow::serve_until(dir.path(), &args, &[flush, no_wait, ("QOEFLOW_FAILPOINT", failpoint.as_str())], RESUMING);
    assert!(q.wait_exit(Duration::from_secs(30)), "the failpoint aborts the process after epoch {crash_epoch}'s files");
    // The crashed epoch held the corrections: retracted start times and second versions of the views.
    let retracting = ch.scalar(&format!("SELECT count() FROM qoeflow.qoe_window WHERE epoch = {crash_epoch} AND startup_hist_retract != ''"));
    let corrected = ch.scalar(&format!("SELECT count() FROM qoeflow.views WHERE epoch = {crash_epoch} AND version = 2"));
    assert!(retracting > 0 && corrected == views as i64, "epoch {crash_epoch}: {retracting} retracting rows, {corrected} corrected views");
    let mut q = Qoeflow::serve(dir.path(), &args, &[flush, no_wait]);
    q.wait_for_line("removed files of an unfinished epoch", Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while committed_epoch(dir.path()) < crash_epoch {
        assert!(std::time::Instant::now() < deadline, "epoch {crash_epoch} was not replayed within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    q.stop();
    let versions = read_table(dir.path(), "views");
    assert_eq!(num_rows(&versions), 2 * views as usize, "each view once, then once corrected (the replay rewrote the same files)");
    assert_matches_reference(dir.path());
    ch.assert_matches_parquet(dir.path());
}
