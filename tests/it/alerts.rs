//! QoE alerts end to end: `qoeflow loadgen` traffic in which one CDN's start failures spike for a
//! while (`--degrade`), into a `qoeflow serve` with a per-CDN rule that notifies Debian's
//! `prometheus-alertmanager` (routing to a webhook receiver) and a plain webhook. The rule fires for
//! that CDN only, Alertmanager shows the alert with its labels, each receiver gets exactly one firing and,
//! after recovery, one resolved notification, although qoeflow is restarted while the alert fires; a CDN
//! with three attempts, all failed, never fires. The history is in Parquet and ClickHouse, and the alerts
//! API of `serve` and of a `query-server` on ClickHouse shows it.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::clickhouse::ClickHouse;
use crate::common::kinesis::free_port;
use crate::common::prom::{Alertmanager, Received, webhook_receiver, webhook_receiver_failing};
use crate::common::workload::*;
use crate::common::*;
use serde_json::{Value, json};

/// The notifications received on `path`, as (status, cdn, when).
fn notices(got: &Received, path: &str, start: Instant) -> Vec<(String, String, Duration)> {
    let mut out = Vec::new();
    for (p, at, body) in got.lock().expect("lock").iter() {
        if p != path {
            continue;
        }
        if path == "/am" {
            // Alertmanager's webhook: one message per group, its alerts inside.
            for a in body["alerts"].as_array().into_iter().flatten() {
                out.push((a["status"].as_str().unwrap_or("").to_owned(), a["labels"]["cdn"].as_str().unwrap_or("").to_owned(), *at - start));
            }
        } else {
            out.push((body["status"].as_str().unwrap_or("").to_owned(), body["group"].as_str().unwrap_or("").to_owned(), *at - start));
        }
    }
    out
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn get(url: &str) -> Value {
    let r = reqwest::get(url).await.expect("get");
    assert_eq!(r.status().as_u16(), 200, "{url}");
    r.json().await.expect("json")
}

/// Three views on CDN `tiny`, each failing to start: 100 % start failures over 3 attempts.
async fn post_tiny_cdn_failures(url: &str) {
    let client = reqwest::Client::new();
    for v in 0..3 {
        let t = now_ms() - 2_000;
        let id = format!("tiny-{v}-{t}");
        let body = json!({"sent_at": t + 1_000, "events": [
            {"view_id": id, "seq": 0, "type": "viewstart", "ts": t, "cdn": "tiny"},
            {"view_id": id, "seq": 1, "type": "playrequest", "ts": t + 10},
            {"view_id": id, "seq": 2, "type": "error", "ts": t + 500, "fatal": true, "error_code": "MEDIA_ERR"},
            {"view_id": id, "seq": 3, "type": "viewend", "ts": t + 600},
        ]});
        let r = client.post(format!("{url}/v1/beacon")).json(&body).send().await.expect("post");
        assert_eq!(r.status().as_u16(), 204);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degrading_cdn_fires_once_resolves_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = ClickHouse::start(ch_dir.path());
    let (hook, got) = webhook_receiver().await;
    let am = Alertmanager::start(dir.path(), &format!("{hook}/am"));
    let config = dir.path().join("qoeflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[alerts]
interval_ms = 1000
default_rules = false
alertmanager_urls = ["{}"]
webhook_urls = ["{hook}/direct"]
resend_ms = 3000
[[alerts.rules]]
name = "CdnStartFailures"
metric = "vsf_pct"
group_by = "cdn"
range = "20s"
op = ">"
threshold = 15.0
min_volume = 20
for = "3s"
severity = "critical"
labels = {{ team = "video" }}
annotations = {{ summary = "{{{{ value }}}} % of starts fail on {{{{ group }}}}" }}
"#,
            am.url()
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data_s = data.to_str().expect("utf-8");
    let args = ["--config", config.to_str().expect("utf-8"), "serve", "--listen", &listen, "--data-dir", data_s, "--clickhouse-url", &ch.url()];
    let mut q = Qoeflow::spawn(&args, &[], None);

    // 1,200 viewers arriving over 80 s; fastly's start failures spike to 70 % from 20 s to 45 s.
    let start = Instant::now();
    let truth = dir.path().join("truth.json");
    let mut loadgen = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
        .args(["loadgen", "--target", &q.url, "--viewers", "1200", "--duration", "100s", "--ramp-up", "80s", "--seed", "5", "--quiet"])
        .args(["--degrade", "fastly:20s-45s:vsf=0.7", "--gzip-rate", "0", "--truth", truth.to_str().expect("utf-8")])
        .env("QOEFLOW_LOG_LEVEL", "warn")
        .spawn()
        .expect("loadgen");
    post_tiny_cdn_failures(&q.url).await;

    // Fires for fastly, on both paths.
    wait_until("the direct webhook's firing notification", Duration::from_secs(60), || {
        notices(&got, "/direct", start).iter().any(|(s, _, _)| s == "firing")
    });
    let fired = notices(&got, "/direct", start)[0].2;
    println!("degradation started at 20 s of the run; firing webhook received {:.1} s after it", fired.as_secs_f64() - 20.0);
    wait_until("Alertmanager's firing notification", Duration::from_secs(30), || notices(&got, "/am", start).iter().any(|(s, _, _)| s == "firing"));
    let held = am.alerts().await;
    assert_eq!(held.len(), 1, "{held:?}");
    let labels = &held[0]["labels"];
    assert_eq!(
        (labels["alertname"].as_str(), labels["cdn"].as_str(), labels["severity"].as_str(), labels["team"].as_str(), labels["metric"].as_str()),
        (Some("CdnStartFailures"), Some("fastly"), Some("critical"), Some("video"), Some("vsf_pct"))
    );
    assert!(held[0]["annotations"]["summary"].as_str().is_some_and(|s| s.ends_with("% of starts fail on fastly")), "{held:?}");
    let api = get(&format!("{}/api/v1/alerts", q.url)).await;
    let active = api["active"].as_array().expect("active");
    assert_eq!(active.len(), 1, "{api}");
    assert_eq!((active[0]["state"].as_str(), active[0]["group"].as_str()), (Some("firing"), Some("fastly")));
    assert!(active[0]["value"].as_f64() > Some(15.0) && active[0]["volume"].as_i64() >= Some(20), "{api}");

    // A restart while it fires: the alert is still firing afterwards, and nobody is told again.
    q.stop();
    let mut q = Qoeflow::spawn(&args, &[], None);
    let api = get(&format!("{}/api/v1/alerts/rules", q.url)).await;
    assert_eq!(api["rules"][0]["alerts"][0]["state"], "firing", "restored from the state file: {api}");

    // Recovery: one resolved notification each, after the spike ends (45 s) and leaves the 20 s range.
    wait_until("the direct webhook's resolved notification", Duration::from_secs(90), || {
        notices(&got, "/direct", start).iter().any(|(s, _, _)| s == "resolved")
    });
    wait_until("Alertmanager's resolved notification", Duration::from_secs(60), || notices(&got, "/am", start).iter().any(|(s, _, _)| s == "resolved"));
    let status = loadgen.wait().expect("loadgen");
    assert!(status.success(), "loadgen: every beacon delivered despite the restart");
    // Settle: a few more evaluations and deliveries, then the counts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for path in ["/direct", "/am"] {
        let n = notices(&got, path, start);
        let firing: Vec<_> = n.iter().filter(|(s, _, _)| s == "firing").collect();
        let resolved: Vec<_> = n.iter().filter(|(s, _, _)| s == "resolved").collect();
        assert_eq!((firing.len(), resolved.len()), (1, 1), "{path}: exactly one firing and one resolved: {n:?}");
        assert!(n.iter().all(|(_, cdn, _)| cdn == "fastly"), "{path}: only fastly ever fired (not akamai, cloudfront, or tiny with 3 attempts): {n:?}");
        assert!(firing[0].2 < resolved[0].2);
    }
    assert!(am.alerts().await.iter().all(|a| a["status"]["state"] != "active"), "resolved in Alertmanager");

    // The history: pending, firing, resolved for fastly, in the API, the Parquet dataset and ClickHouse.
    let history = get(&format!("{}/api/v1/alerts?from=now-1h", q.url)).await;
    let states: Vec<(&str, &str)> = history["history"]
        .as_array()
        .expect("history")
        .iter()
        .rev()
        .map(|h| (h["state"].as_str().unwrap_or(""), h["group_value"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(states, [("pending", "fastly"), ("firing", "fastly"), ("resolved", "fastly")], "{history}");
    q.stop();
    let rows = query_json(&data, "SELECT rule, state, group_value, value, threshold, labels FROM alerts ORDER BY seq");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[1]["state"], "firing");
    assert!(rows[1]["value"].as_f64() > Some(15.0) && rows[1]["threshold"] == json!(15.0));
    assert!(rows[1]["labels"].as_str().is_some_and(|l| l.contains("\"team\":\"video\"")), "{rows:?}");
    assert_eq!(ch.query("SELECT state FROM qoeflow.alerts FINAL ORDER BY seq"), "pending\nfiring\nresolved");

    // A query-server on ClickHouse (alerts off there) serves the same history.
    let qs = Qoeflow::spawn(
        &["query-server", "--listen", "127.0.0.1:0", "--backend", "clickhouse", "--clickhouse-url", &ch.url()],
        &[("QOEFLOW_ALERTS__ENABLED", "false")],
        None,
    );
    let on_ch = get(&format!("{}/api/v1/alerts?from=now-1h", qs.url)).await;
    assert_eq!(on_ch["enabled"], false);
    assert_eq!(on_ch["history"], history["history"], "the same history from ClickHouse");
    assert!(metric(&qs.url, "qoeflow_query_requests_total{endpoint=\"/api/v1/alerts\",status=\"2xx\"}").await >= 1.0);
}

/// A webhook that is down while an alert fires, and a restart of qoeflow in the middle of the outage:
/// the transition waits in the persisted outbox, is retried with backoff, and arrives exactly once
/// when the webhook is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_outage_with_a_restart_in_it_loses_nothing_and_sends_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (hook, got) = webhook_receiver_failing(failing.clone()).await;
    let config = dir.path().join("qoeflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[alerts]
interval_ms = 1000
default_rules = false
webhook_urls = ["{hook}/direct"]
[[alerts.rules]]
name = "StartFailures"
metric = "vsf_pct"
range = "2m"
op = ">"
threshold = 50.0
min_volume = 3
for = "0s"
severity = "critical"
"#
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().expect("utf-8"), "serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().expect("utf-8")];
    let failed = r#"qoeflow_alerts_deliveries_total{destination="webhook",outcome="failed"}"#;
    let outbox = r#"qoeflow_alerts_outbox{destination="webhook"}"#;
    let mut q = Qoeflow::spawn(&args, &[], None);
    let start = Instant::now();
    post_tiny_cdn_failures(&q.url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&q.url, failed).await < 2.0 {
        assert!(Instant::now() < deadline, "no failed delivery attempts");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&q.url, outbox).await, 1.0, "the firing transition waits in the outbox");
    q.stop();

    let q = Qoeflow::spawn(&args, &[], None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&q.url, failed).await < 1.0 {
        assert!(Instant::now() < deadline, "the restarted evaluator does not retry the outbox");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(got.lock().expect("lock").is_empty(), "nothing arrives while the webhook is down");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("the firing notification after the outage", Duration::from_secs(60), || !notices(&got, "/direct", start).is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firing = notices(&got, "/direct", start);
    assert_eq!(firing.iter().map(|(s, _, _)| s.as_str()).collect::<Vec<_>>(), ["firing"], "exactly one notification: {firing:?}");
    assert_eq!(metric(&q.url, outbox).await, 0.0);
    let active = get(&format!("{}/api/v1/alerts", q.url)).await;
    assert_eq!(active["active"][0]["state"], "firing", "{active}");
}

/// A rule that cannot work stops start-up with the rule and field named; the API answers bad
/// parameters with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_fail_start_up_and_bad_parameters_get_400() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[[alerts.rules]]\nname = \"x\"\nmetric = \"vsf_rate\"\nop = \">\"\nthreshold = 1.0\n").expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
        .args(["--config", config.to_str().expect("utf-8"), "serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().expect("utf-8")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("alerts rule \"x\"") && err.contains("`metric`"), "{err}");

    let q = Qoeflow::serve(dir.path(), &[], &[]);
    for bad in ["from=yesterday", "limit=0", "limit=5000", "from=now&to=now-1h"] {
        let r = reqwest::get(format!("{}/api/v1/alerts?{bad}", q.url)).await.expect("get");
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    let rules = get(&format!("{}/api/v1/alerts/rules", q.url)).await;
    let names: Vec<&str> = rules["rules"].as_array().expect("rules").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["VideoStartFailures", "Rebuffering", "PlaybackErrors", "CdnCacheHits"], "the shipped rules");
}
