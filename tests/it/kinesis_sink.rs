//! `qoeflow ingest` against the real Kinesis API (the emulator), through a fault-injecting proxy that
//! plays Kinesis under load. Under injected partial failures, every event that got a 2xx must be in the
//! stream, and requests whose retries ran out must get 503.


use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::kinesis::*;
use crate::common::*;
use reqwest::StatusCode;

struct Setup {
    _emulator: Emulator,
    client: aws_sdk_kinesis::Client,
    proxy: FaultProxy,
    stream: &'static str,
}

async fn setup(shards: i32, seed: u64) -> Setup {
    let emulator = Emulator::start();
    let client = emulator.client().await;
    let stream = "beacons";
    create_stream(&client, stream, shards).await;
    let proxy = FaultProxy::start(&emulator.endpoint, seed).await;
    Setup { _emulator: emulator, client, proxy, stream }
}

/// Posts `n` 20-event beacons for distinct views, `concurrency` at a time; returns (acked ids, statuses).
async fn post_many(url: &str, prefix: &str, n: usize, concurrency: usize) -> (Vec<(String, u64)>, Vec<u16>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let mut acked = Vec::new();
    let mut statuses = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (client, url, view) = (client.clone(), url.to_owned(), format!("{prefix}-{i}"));
            tasks.push(tokio::spawn(async move {
                let resp = client.post(&url).json(&beacon(&view, 0, 20)).send().await.expect("post");
                if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                    assert!(resp.headers().get("retry-after").is_some(), "503 carries Retry-After");
                }
                (view, resp.status().as_u16())
            }));
        }
        for t in tasks {
            let (view, status) = t.await.expect("task");
            if status == 204 {
                acked.extend((0..20).map(|s| (view.clone(), s)));
            }
            statuses.push(status);
        }
    }
    (acked, statuses)
}

fn stream_ids(records: &[StreamRecord]) -> HashSet<(String, u64)> {
    let recs: Vec<schemas::Record> = records.iter().map(|r| r.record.clone()).collect();
    event_ids(&recs).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_partitioned_by_view_id_in_order() {
    let s = setup(4, 1).await;
    let q = Qoeflow::ingest(s.stream, &s.proxy.endpoint, &[], &[]);
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for v in 0..24 {
        let (http, url) = (http.clone(), q.beacon_url());
        tasks.push(tokio::spawn(async move {
            let view = format!("view-{v}");
            // Three beacons of one view, one after the other, as an SDK sends them.
            for b in 0..3 {
                let resp = http.post(&url).json(&beacon(&view, b * 5, 5)).send().await.expect("post");
                assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let records = read_stream(&s.client, s.stream).await;
    let by_view = events_by_view(&records);
    assert_eq!(by_view.len(), 24);
    for (view, (_, seqs)) in &by_view {
        assert_eq!(seqs, &(0..15).collect::<Vec<u64>>(), "{view}: all events, in order, on one shard");
    }
    let shards: HashSet<_> = by_view.values().map(|(shard, _)| shard.clone()).collect();
    assert!(shards.len() > 1, "views spread over shards by partition key");
    assert!(metric(&q.url, "qoeflow_ingest_kinesis_put_records_calls_total").await >= 1.0);
    assert_eq!(reqwest::get(format!("{}/readyz", q.url)).await.expect("readyz").status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_put_records_failures_are_retried_and_every_acked_event_lands() {
    let s = setup(2, 7).await;
    s.proxy.set(Fault::FailEntries(0.3));
    let env = [("QOEFLOW_KINESIS__RETRY_BASE_MS", "5"), ("QOEFLOW_KINESIS__RETRY_MAX_MS", "50")];
    let q = Qoeflow::ingest(s.stream, &s.proxy.endpoint, &[], &env);
    let (acked, statuses) = post_many(&q.beacon_url(), "pf", 150, 30).await;
    assert!(statuses.iter().all(|&st| st == 204 || st == 503), "{statuses:?}");
    assert!(acked.len() >= 20 * 140, "with 8 attempts at 30% failure nearly all succeed ({} acked)", acked.len());
    let stats = s.proxy.stats();
    assert!(stats.entries_failed > 50, "faults were injected: {stats:?}");
    assert!(metric(&q.url, "qoeflow_ingest_kinesis_throttled_records_total").await > 0.0);
    // Only failed entries are sent again. Each beacon is one record, so every entry the proxy failed was
    // either retried or was its record's last attempt (and its request got 503).
    let retried = metric(&q.url, "qoeflow_ingest_kinesis_retried_records_total").await as u64;
    let exhausted = statuses.iter().filter(|&&st| st == 503).count() as u64;
    assert_eq!(retried + exhausted, stats.entries_failed, "retries are exactly the failed entries: {stats:?}");
    let records = read_stream(&s.client, s.stream).await;
    assert_eq!(stats.entries_forwarded, records.len() as u64, "the proxy forwarded each record once: {stats:?}");
    let ids = event_ids(&records.iter().map(|r| r.record.clone()).collect::<Vec<_>>());
    let stored: HashSet<(String, u64)> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), stored.len(), "an event landed twice: an accepted entry was sent again");
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged events missing from the stream: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_answer_503_and_only_acked_requests_claim_success() {
    let s = setup(2, 11).await;
    let env = [
        ("QOEFLOW_KINESIS__MAX_ATTEMPTS", "2"),
        ("QOEFLOW_KINESIS__RETRY_BASE_MS", "5"),
        ("QOEFLOW_KINESIS__RETRY_MAX_MS", "20"),
    ];
    let q = Qoeflow::ingest(s.stream, &s.proxy.endpoint, &[], &env);
    // Everything fails: every request is refused, none acknowledged.
    s.proxy.set(Fault::FailEntries(1.0));
    let (acked, statuses) = post_many(&q.beacon_url(), "all-fail", 20, 10).await;
    assert!(acked.is_empty());
    assert!(statuses.iter().all(|&st| st == 503), "{statuses:?}");
    assert_eq!(metric(&q.url, "qoeflow_ingest_kinesis_exhausted_requests_total").await, 20.0);
    // Heavy failure: a mix of 204 and 503; every 204 is fully in the stream.
    s.proxy.set(Fault::FailEntries(0.5));
    let (acked, statuses) = post_many(&q.beacon_url(), "mixed", 60, 20).await;
    assert!(statuses.contains(&503) && statuses.contains(&204), "{statuses:?}");
    let stored = stream_ids(&read_stream(&s.client, s.stream).await);
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged events missing: {missing:?}");
    assert!(!stored.iter().any(|(v, _)| v.starts_with("all-fail")), "the proxy forwarded nothing of the refused ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_call_failures_and_throttling_are_retried() {
    let s = setup(1, 3).await;
    let env = [("QOEFLOW_KINESIS__RETRY_BASE_MS", "5"), ("QOEFLOW_KINESIS__RETRY_MAX_MS", "20")];
    let q = Qoeflow::ingest(s.stream, &s.proxy.endpoint, &[], &env);
    s.proxy.set(Fault::FailCalls(4));
    let resp = reqwest::Client::new().post(q.beacon_url()).json(&beacon("calls", 0, 10)).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.proxy.stats().calls_failed, 4);
    // One view's 10 events are one record; two of the four failed calls were throttling.
    assert_eq!(metric(&q.url, "qoeflow_ingest_kinesis_throttled_records_total").await, 2.0, "throttled calls counted");
    assert_eq!(metric(&q.url, "qoeflow_ingest_kinesis_retried_records_total").await, 4.0);
    let records = read_stream(&s.client, s.stream).await;
    assert_eq!(events_by_view(&records)["calls"].1, (0..10).collect::<Vec<u64>>(), "landed exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_kinesis_times_out_to_503_and_in_flight_work_is_bounded() {
    let s = setup(1, 5).await;
    s.proxy.set(Fault::Stall(Duration::from_secs(3)));
    let env = [
        ("QOEFLOW_KINESIS__CALL_TIMEOUT_MS", "300"),
        ("QOEFLOW_KINESIS__MAX_ATTEMPTS", "2"),
        ("QOEFLOW_KINESIS__RETRY_BASE_MS", "5"),
        ("QOEFLOW_INGEST__MAX_IN_FLIGHT", "2"),
    ];
    let q = Qoeflow::ingest(s.stream, &s.proxy.endpoint, &[], &env);
    let http = reqwest::Client::new();
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let (http, url) = (http.clone(), q.beacon_url());
            tokio::spawn(async move {
                let started = Instant::now();
                let resp = http.post(url).json(&beacon(&format!("stall-{i}"), 0, 2)).send().await.expect("post");
                (resp.status(), started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let over = http.post(q.beacon_url()).json(&beacon("over", 0, 1)).send().await.expect("post");
    assert_eq!(over.status(), StatusCode::SERVICE_UNAVAILABLE, "third request over the in-flight bound");
    let retry_after = over.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(retry_after.as_deref(), Some("1"), "503 at the in-flight bound carries Retry-After (default 1 s)");
    let answer: serde_json::Value = over.json().await.expect("json");
    assert_eq!(answer["error"], "overloaded");
    for t in slow {
        let (status, took) = t.await.expect("task");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "stalled calls time out and are not acknowledged");
        assert!(took < Duration::from_secs(3), "answered by the call timeout, not the stall ({took:?})");
    }
}

#[tokio::test]
async fn unreachable_kinesis_answers_503_and_readyz_says_so() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = [("QOEFLOW_KINESIS__MAX_ATTEMPTS", "2"), ("QOEFLOW_KINESIS__RETRY_BASE_MS", "5")];
    let q = Qoeflow::ingest("beacons", &dead, &[], &env);
    let ready = reqwest::get(format!("{}/readyz", q.url)).await.expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = reqwest::Client::new().post(q.beacon_url()).json(&beacon("x", 0, 1)).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("retry-after").is_some());
    let answer: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(answer["message"], "events could not be stored durably, retry later", "no internals in a 5xx body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_record_limit_is_rejected_alone_and_its_neighbours_land() {
    let s = setup(1, 13).await;
    // Records are zstd-compressed, so only incompressible data makes one event over 1 MiB (Kinesis'
    // per-record limit); the wire limit is raised to let such a body in.
    let q = Qoeflow::ingest(s.stream, &s.proxy.endpoint, &[], &[("QOEFLOW_INGEST__MAX_BODY_BYTES", "4194304")]);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(13);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let blob: String = (0..(5 << 19)).map(|_| alphabet[rand::Rng::random_range(&mut rng, 0..64)] as char).collect();
    let mut body = beacon("big", 0, 3);
    body["events"][1]["x_blob"] = serde_json::json!(blob);
    let resp = reqwest::Client::new()
        .post(q.beacon_url())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::OK, "a per-event rejection, not a failed request");
    let answer: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["rejected"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    assert!(answer["rejected"][0]["reason"].as_str().expect("reason").contains("record limit"), "{answer}");
    // No PutRecords call carried it: none failed, nothing was retried.
    let stats = s.proxy.stats();
    assert_eq!((stats.calls_failed, stats.entries_failed), (0, 0), "{stats:?}");
    assert_eq!(metric(&q.url, "qoeflow_ingest_kinesis_retried_records_total").await, 0.0);
    let records = read_stream(&s.client, s.stream).await;
    assert_eq!(events_by_view(&records)["big"].1, vec![0, 2], "the other events of the beacon landed");
    let dead: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.record {
            schemas::Record::Rejected(rj) => Some(rj),
            schemas::Record::Events(_) => None,
        })
        .collect();
    assert_eq!(dead.len(), 1, "the oversized event is dead-lettered");
    assert_eq!((dead[0].tag.as_str(), dead[0].index), ("event_too_large", Some(1)));
    assert!(dead[0].payload.len() < 1 << 20, "its payload is truncated to fit a record");
}
