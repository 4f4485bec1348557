//! `POST /v1/beacon` through real HTTP against `qoeflow serve` (local log sink): every answer of
//! `schemas/README.md`, and what ends up durable in the log.


use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use schemas::Record;
use serde_json::json;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn accepted_beacons_answer_204_and_are_durable_and_enriched() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    // Three views, interleaved: a a a b b a c b a.
    let mut body = beacon("view-a", 0, 3);
    for (view, seq0, n) in [("view-b", 0, 2), ("view-a", 3, 1), ("view-c", 0, 1), ("view-b", 2, 1), ("view-a", 4, 1)] {
        body["events"].as_array_mut().expect("array").extend(beacon(view, seq0, n)["events"].as_array().expect("array").clone());
    }
    body["events"][1]["x_unknown"] = json!({"kept": true});
    let resp = http()
        .post(q.beacon_url())
        .header("content-type", "application/json")
        .header("user-agent", IPHONE)
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(metric(&q.url, "qoeflow_ingest_events_accepted_total").await, 9.0);
    q.stop();

    let records = read_local_log(dir.path());
    assert_eq!(records.len(), 3, "one record per view per beacon");
    let Record::Events(a) = &records[0] else { panic!("events record") };
    assert_eq!(a.view_id, "view-a");
    let seqs = |events: &[serde_json::Map<String, serde_json::Value>]| events.iter().map(|e| e["seq"].as_u64()).collect::<Vec<_>>();
    assert_eq!(seqs(&a.events), [Some(0), Some(1), Some(2), Some(3), Some(4)], "a view's events in beacon order");
    let others: Vec<_> = records[1..]
        .iter()
        .map(|r| match r {
            Record::Events(e) => (e.view_id.as_str(), seqs(&e.events)),
            other => panic!("events record: {other:?}"),
        })
        .collect();
    assert_eq!(others, [("view-b", vec![Some(0), Some(1), Some(2)]), ("view-c", vec![Some(0)])]);
    assert_eq!(a.events[1]["x_unknown"], json!({"kept": true}), "unknown fields are kept");
    assert_eq!(a.sent_at, T0 + 60_000);
    assert!(a.recv_ms > T0, "receive time stamped");
    assert_eq!(a.client.ip.as_deref(), Some("127.0.0.0"), "IP anonymised before storage");
    assert_eq!((a.client.device_type.as_str(), a.client.os.as_str(), a.client.browser.as_str()), ("mobile", "iPhone", "Safari"));
    assert_eq!(event_ids(&records).len(), 9);
}

/// The `events` table's `raw` column and a dead letter's `payload` hold each event's text exactly as
/// the player sent it (its key order, spacing and escapes), not a re-serialization.
#[tokio::test]
async fn events_are_stored_as_the_text_the_player_sent() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let kept = format!(r#"{{ "type": "playrequest", "ts": {T0}, "x_note": "caf\u00e9 \"ok\"", "view_id": "v", "seq": 0 }}"#);
    let refused = format!(r#"{{"seq": 1,  "view_id": "v", "type": "quality_change", "ts": {T0}}}"#);
    let body = format!("{{\"sent_at\": {T0},\n \"events\": [ {kept} ,\n {refused}\n]}}");
    let resp = http().post(q.beacon_url()).header("content-type", "application/json").body(body).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    q.stop();

    let mut reader = locallog::LogReader::open(&dir.path().join("log"), 0).expect("open log reader");
    let entries = reader.read_batch(usize::MAX, u64::MAX).expect("log reads");
    let decoded: Vec<_> = entries.iter().map(|e| Record::decode_checked(&e.data).expect("decodes")).collect();
    let [schemas::Checked::Events(events), schemas::Checked::Rejected(dead)] = &decoded[..] else {
        panic!("one events record and one dead letter: {decoded:?}")
    };
    let event = events.events[0].as_ref().expect("valid event");
    assert_eq!(event.raw, kept, "the text as sent");
    assert_eq!(event.event.seq, 0);
    assert_eq!(dead.payload, refused, "the refused event's text as sent");
}

#[tokio::test]
async fn partially_invalid_beacons_answer_200_and_dead_letter_the_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    let body = json!({"sent_at": T0, "events": [
        {"view_id": "v", "seq": 0, "type": "playrequest", "ts": T0},
        {"view_id": "v", "seq": 1, "type": "quality_change", "ts": T0},
        {"view_id": "v", "seq": 2, "type": "playing", "ts": T0 + 500},
        "garbage",
    ]});
    let resp = http().post(q.beacon_url()).json(&body).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"][0], json!({"index": 1, "reason": "bitrate_kbps: required field is missing"}));
    assert_eq!(answer["rejected"][1], json!({"index": 3, "reason": "event: must be a JSON object"}));
    assert_eq!(metric(&q.url, "qoeflow_ingest_events_rejected_total{reason=\"missing_field\"}").await, 1.0);
    q.stop();
    let records = read_local_log(dir.path());
    assert_eq!(event_ids(&records), vec![("v".to_string(), 0), ("v".to_string(), 2)]);
    let dead: Vec<_> = records
        .iter()
        .filter_map(|r| if let Record::Rejected(d) = r { Some(d) } else { None })
        .collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].index, Some(1));
    assert_eq!(dead[0].reason, "bitrate_kbps: required field is missing");
    assert!(dead[0].payload.contains("quality_change"));
    assert_eq!(dead[1].payload, "\"garbage\"");
}

#[tokio::test]
async fn unparsable_bodies_answer_400_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    let cases = [
        ("{\"sent_at\": 1700000000000, \"events\": [", "body is not valid JSON"),
        ("[1,2]", "body must be a JSON object"),
        ("{\"events\": []}", "field `sent_at`: required field is missing"),
        ("{\"sent_at\": 1700000000000, \"events\": 5}", "field `events`: must be an array"),
    ];
    for (body, expected) in cases {
        let resp = http().post(q.beacon_url()).header("content-type", "application/json").body(body).send().await.expect("post");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(answer["error"], "invalid_body");
        assert!(answer["message"].as_str().expect("message").starts_with(expected), "{answer}");
    }
    // Declared gzip that is not gzip.
    let resp = http().post(q.beacon_url()).header("content-encoding", "gzip").body("{}").send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn keys_are_checked_from_header_query_and_body() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &["--ingest-key", "good-key"], &[]);
    let body = beacon("v", 0, 1);
    let mut with_key = body.clone();
    with_key["key"] = json!("good-key");
    let mut bad_key = body.clone();
    bad_key["key"] = json!("bad-key");

    let post = |url: String, b: serde_json::Value| async move { http().post(url).json(&b).send().await.expect("post") };
    assert_eq!(post(q.beacon_url(), body.clone()).await.status(), StatusCode::UNAUTHORIZED, "missing key");
    assert_eq!(post(q.beacon_url(), bad_key).await.status(), StatusCode::UNAUTHORIZED, "unknown body key");
    assert_eq!(post(format!("{}?key=nope", q.beacon_url()), body.clone()).await.status(), StatusCode::UNAUTHORIZED);
    let resp = post(q.beacon_url(), with_key).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "body key");
    assert_eq!(post(format!("{}?key=good-key", q.beacon_url()), body.clone()).await.status(), StatusCode::NO_CONTENT);
    let resp = http().post(q.beacon_url()).header("x-qoeflow-key", "good-key").json(&body).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "header key");
    let resp = http().post(q.beacon_url()).header("x-qoeflow-key", "wrong").json(&body).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let answer: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(answer["message"], "unknown ingest key");
}

#[tokio::test]
async fn bodies_over_the_wire_limit_answer_413_declared_or_streamed() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    let big = vec![b' '; (1 << 20) + 10];
    let resp = http().post(q.beacon_url()).body(big.clone()).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked, no Content-Length: the limit is enforced while streaming.
    let mut s = TcpStream::connect(&q.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "POST /v1/beacon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").expect("w");
    let chunk = vec![b' '; 64 << 10];
    let mut status_line = String::new();
    for _ in 0..40 {
        if write!(s, "{:x}\r\n", chunk.len()).and_then(|_| s.write_all(&chunk)).and_then(|_| s.write_all(b"\r\n")).is_err() {
            break; // the server answered and closed
        }
    }
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    status_line.push_str(&String::from_utf8_lossy(&buf[..n]));
    assert!(status_line.starts_with("HTTP/1.1 413"), "got {status_line:?}");
}

#[tokio::test]
async fn a_gzip_bomb_answers_413_with_bounded_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    // Warm up, then take the baseline peak.
    let ok = http().post(q.beacon_url()).json(&beacon("warm", 0, 2)).send().await.expect("post");
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let baseline = q.mem_kib("VmHWM");
    let bomb = gzip(&vec![0u8; 100 << 20]);
    assert!(bomb.len() < 1 << 20, "the bomb fits under the wire limit ({} bytes)", bomb.len());
    for declared in [true, false] {
        let mut req = http().post(q.beacon_url()).header("content-type", "text/plain").body(bomb.clone());
        if declared {
            req = req.header("content-encoding", "gzip");
        }
        let resp = req.send().await.expect("post");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let answer: serde_json::Value = resp.json().await.expect("json");
        assert!(answer["message"].as_str().expect("msg").contains("decompressed body is over"), "{answer}");
    }
    let peak = q.mem_kib("VmHWM");
    assert!(
        peak < baseline + 48 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB decoding a 100 MB bomb (limit is 10 MiB decoded)"
    );
    let ok = http().post(q.beacon_url()).json(&beacon("after", 0, 2)).send().await.expect("post");
    assert_eq!(ok.status(), StatusCode::NO_CONTENT, "still serving");
}

#[tokio::test]
async fn gzip_inflation_is_bounded_by_the_shared_memory_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    // 256 KiB for all bodies together, 10 MiB (the default) per decoded body.
    let env = [("QOEFLOW_INGEST__MAX_BUFFERED_BYTES", "262144"), ("QOEFLOW_INGEST__RETRY_AFTER_SECS", "2")];
    let q = Qoeflow::serve(dir.path(), &[], &env);
    // Both inflate past the budget: 2 MiB (under the decoded limit) and a bomb (over it). The budget is
    // charged as gzip inflates, so both stop at it with 503 before the 10 MiB limit could answer 413 (the
    // ordering itself is pinned by `body.rs`'s unit test, where one frame holds the whole bomb).
    for decoded in [2 << 20, 100 << 20] {
        let resp = http()
            .post(q.beacon_url())
            .header("content-type", "text/plain")
            .header("content-encoding", "gzip")
            .body(gzip(&vec![b' '; decoded]))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{decoded} bytes decoded");
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(retry_after.as_deref(), Some("2"), "503 at the memory bound carries Retry-After");
        let answer: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(answer["error"], "overloaded");
    }
    // The refused requests gave their budget back.
    let ok = http().post(q.beacon_url()).json(&beacon("after", 0, 2)).send().await.expect("post");
    assert_eq!(ok.status(), StatusCode::NO_CONTENT, "still serving");
}

/// Parsing may copy up to the whole text again (the nesting stack of the pass that slices out each
/// event, an escaped string's decoded copy), so a body is charged twice its size once parsing starts:
/// a 6 MiB event nested `[[[…` fits a 10 MiB budget as it inflates but not as it is parsed.
#[tokio::test]
async fn parsing_is_charged_for_what_it_may_copy_of_the_body() {
    let dir = tempfile::tempdir().expect("tmp");
    let budget = (10 << 20).to_string();
    let env = [("QOEFLOW_INGEST__MAX_BUFFERED_BYTES", budget.as_str()), ("QOEFLOW_INGEST__RETRY_AFTER_SECS", "2")];
    let q = Qoeflow::serve(dir.path(), &[], &env);
    let nested = |mib: usize| gzip(format!(r#"{{"sent_at":{T0},"events":[{}"#, "[".repeat(mib << 20)).as_bytes());
    let post = |body: Vec<u8>| {
        http().post(q.beacon_url()).header("content-type", "application/json").header("content-encoding", "gzip").body(body).send()
    };
    let resp = post(nested(6)).await.expect("post");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "12 MiB of parse charge over a 10 MiB budget");
    assert_eq!(resp.json::<serde_json::Value>().await.expect("json")["error"], "overloaded");
    // Half of it is charged 6 MiB and parsed: refused as the JSON it is not.
    let resp = post(nested(3)).await.expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<serde_json::Value>().await.expect("json")["error"], "invalid_body");
}

#[tokio::test]
async fn unsupported_types_and_encodings_answer_415() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    let body = beacon("v", 0, 1).to_string();
    let resp = http().post(q.beacon_url()).header("content-type", "application/xml").body(body.clone()).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = http().post(q.beacon_url()).header("content-encoding", "br").body(body.clone()).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer: serde_json::Value = resp.json().await.expect("json");
    assert!(answer["message"].as_str().expect("msg").contains("\"br\""));
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_INGEST__PER_IP_RPS", "1"), ("QOEFLOW_INGEST__PER_IP_BURST", "3")];
    let q = Qoeflow::serve(dir.path(), &[], &env);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let resp = http().post(q.beacon_url()).json(&beacon(&format!("v{i}"), 0, 1)).send().await.expect("post");
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(resp.headers().get("retry-after").is_some(), "429 carries Retry-After");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[204, 204, 204], "the burst passes");
    assert!(statuses[3..].contains(&429), "{statuses:?}");

    let dir2 = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_INGEST__PER_KEY_RPS", "1"), ("QOEFLOW_INGEST__PER_KEY_BURST", "1")];
    let q = Qoeflow::serve(dir2.path(), &["--ingest-key", "k"], &env);
    let url = format!("{}?key=k", q.beacon_url());
    assert_eq!(http().post(&url).json(&beacon("a", 0, 1)).send().await.expect("post").status(), StatusCode::NO_CONTENT);
    let resp = http().post(&url).json(&beacon("b", 0, 1)).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(retry_after.as_deref(), Some("1"), "the per-key 429 carries Retry-After (default 1 s)");
    let answer: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(answer["error"], "rate_limited_key");
}

#[tokio::test]
async fn a_failing_local_log_answers_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().expect("path")];
    // A file-size limit makes the log's writes fail like a full disk (SIGXFSZ ignored, so write gets EFBIG).
    let mut q = Qoeflow::spawn(&args, &[], Some("trap '' XFSZ; ulimit -f 64"));
    let mut acked = Vec::new();
    let mut saw_503 = false;
    for i in 0..400u64 {
        let resp = http().post(q.beacon_url()).json(&beacon(&format!("view-{i}"), 0, 5)).send().await.expect("post");
        match resp.status() {
            StatusCode::NO_CONTENT => acked.push(i),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(resp.headers().get("retry-after").is_some(), "503 carries Retry-After");
                let answer: serde_json::Value = resp.json().await.expect("json");
                assert_eq!(answer["error"], "sink_unavailable");
                let ready = http().get(format!("{}/readyz", q.url)).send().await.expect("readyz");
                assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "/readyz reports the failing sink");
                saw_503 = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(saw_503, "the 64 KiB file limit was never hit");
    assert!(!acked.is_empty());
    q.kill9();
    let records = read_local_log(dir.path());
    let ids = event_ids(&records);
    for i in acked {
        for seq in 0..5 {
            assert!(ids.contains(&(format!("view-{i}"), seq)), "acknowledged view-{i}/{seq} lost");
        }
    }
}

#[tokio::test]
async fn cors_preflight_and_origin_allow_list_per_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("qoeflow.toml");
    std::fs::write(
        &config,
        "[[ingest.keys]]\nkey = \"web\"\nallowed_origins = [\"https://player.example\"]\n\n[[ingest.keys]]\nkey = \"any\"\n",
    )
    .expect("write config");
    let q = Qoeflow::serve(dir.path(), &["--config", config.to_str().expect("path")], &[]);
    let preflight = |origin: &'static str, key: &'static str| {
        let url = format!("{}?key={key}", q.beacon_url());
        async move {
            http()
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send()
                .await
                .expect("preflight")
        }
    };
    let ok = preflight("https://player.example", "web").await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://player.example");
    assert!(ok.headers()["access-control-allow-methods"].to_str().expect("str").contains("POST"));
    assert!(ok.headers()["access-control-allow-headers"].to_str().expect("str").contains("content-type"));
    assert_eq!(ok.headers()["vary"], "Origin");
    let refused = preflight("https://evil.example", "web").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    let any = preflight("https://evil.example", "any").await;
    assert_eq!(any.headers()["access-control-allow-origin"], "https://evil.example", "a key without a list allows any origin");

    let post = |origin: &'static str| {
        let url = format!("{}?key=web", q.beacon_url());
        async move { http().post(url).header("origin", origin).json(&beacon("v", 0, 1)).send().await.expect("post") }
    };
    let resp = post("https://player.example").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://player.example");
    let resp = post("https://evil.example").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn send_beacon_style_text_plain_with_query_key_and_sniffed_gzip() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &["--ingest-key", "k1"], &[]);
    let url = format!("{}?key=k1", q.beacon_url());
    let resp = http()
        .post(&url)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(beacon("sb-plain", 0, 3).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // A gzip body without Content-Encoding (sendBeacon cannot set it): detected by its magic bytes.
    let resp = http()
        .post(&url)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(gzip(beacon("sb-gzip", 0, 4).to_string().as_bytes()))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    q.stop();
    let ids = event_ids(&read_local_log(dir.path()));
    assert_eq!(ids.iter().filter(|(v, _)| v == "sb-plain").count(), 3);
    assert_eq!(ids.iter().filter(|(v, _)| v == "sb-gzip").count(), 4);
}

#[tokio::test]
async fn slow_bodies_time_out_with_408() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[("QOEFLOW_INGEST__BODY_TIMEOUT_MS", "300")]);
    let mut s = TcpStream::connect(&q.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "POST /v1/beacon HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"sent_at\"").expect("w");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).expect("read answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    assert_eq!(reqwest::get(format!("{}/healthz", q.url)).await.expect("get").status(), StatusCode::OK);
    assert_eq!(reqwest::get(format!("{}/readyz", q.url)).await.expect("get").status(), StatusCode::OK);
    let _ = http().post(q.beacon_url()).json(&beacon("m", 0, 20)).send().await.expect("post");
    let _ = http().post(q.beacon_url()).body("nope").send().await.expect("post");
    let text = reqwest::get(format!("{}/metrics", q.url)).await.expect("get").text().await.expect("text");
    for name in [
        "qoeflow_ingest_requests_total{status=\"204\"} 1",
        "qoeflow_ingest_requests_total{status=\"400\"} 1",
        "qoeflow_ingest_events_accepted_total 20",
        "qoeflow_ingest_events_rejected_total{reason=\"body_invalid\"} 1",
        "qoeflow_ingest_sink_latency_seconds_count 1",
        "qoeflow_ingest_received_bytes_total",
        "qoeflow_ingest_kinesis_retried_records_total 0",
    ] {
        assert!(text.contains(name), "metrics lack {name:?}:\n{text}");
    }
}

#[test]
fn an_unknown_config_key_fails_start_up_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[ingest]\nmax_body_bytez = 5\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qoeflow"))
        .args(["serve", "--config", config.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_body_bytez"), "{stderr}");
}
