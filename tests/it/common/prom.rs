//! Prometheus' side of the test topology, as Debian packages them (`prometheus`,
//! `prometheus-alertmanager`, installed by `deploy/test.sh`): each started on free loopback ports with
//! a configuration written by the test, killed when dropped; and a webhook receiver that records what
//! it is sent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::kinesis::free_port;

/// Waits until `GET /-/ready` answers 200 (Prometheus and Alertmanager listen before they are ready).
fn wait_ready(port: u16, what: &str) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut c| {
            c.write_all(b"GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
            let mut head = [0u8; 12];
            c.read_exact(&mut head).ok()?;
            Some(head.ends_with(b"200"))
        });
        if ready == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} on port {port} not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server process of the topology on a loopback port, killed when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    /// Starts `bin` (its stderr to `log`) and waits until it is ready on `port`.
    fn start(bin: &str, args: &[String], log: &Path, port: u16) -> Daemon {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (deploy/test.sh installs Debian's prometheus and prometheus-alertmanager)"));
        let daemon = Daemon { child, port };
        wait_ready(port, bin);
        daemon
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus Alertmanager.
pub struct Alertmanager(Daemon);

impl Alertmanager {
    /// Routes every alert to `webhook` at once (group wait 1 s), sends resolutions, and repeats a
    /// notification only after an hour: one firing and one resolved message per alert.
    pub fn start(dir: &Path, webhook: &str) -> Alertmanager {
        let port = free_port();
        let config = format!(
            "route:\n  receiver: hook\n  group_by: ['alertname', 'cdn']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n"
        );
        std::fs::write(dir.join("alertmanager.yml"), config).expect("write config");
        let args = vec![
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".to_owned(),
            "--log.level=warn".to_owned(),
        ];
        Alertmanager(Daemon::start("prometheus-alertmanager", &args, &dir.join("alertmanager.log"), port))
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds now.
    pub async fn alerts(&self) -> Vec<Value> {
        let v: Value = reqwest::get(format!("{}/api/v2/alerts", self.url())).await.expect("alertmanager").json().await.expect("json");
        v.as_array().cloned().unwrap_or_default()
    }
}

/// A Prometheus server scraping `targets` (host:port) every second.
pub struct Prometheus(Daemon);

impl Prometheus {
    pub fn start(dir: &Path, jobs: &[(&str, &str)], rules: Option<&Path>) -> Prometheus {
        let port = free_port();
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        if let Some(rules) = rules {
            config.push_str(&format!("rule_files:\n  - '{}'\n", rules.display()));
        }
        config.push_str("scrape_configs:\n");
        for (job, target) in jobs {
            config.push_str(&format!("  - job_name: '{job}'\n    static_configs:\n      - targets: ['{target}']\n"));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
        let args = vec![
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_owned(),
        ];
        Prometheus(Daemon::start("prometheus", &args, &dir.join("prometheus.log"), port))
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// `GET /api/v1/query?query=…`: the result vector (or matrix) of an instant query.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("prometheus")
            .json()
            .await
            .expect("json");
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The first sample of an instant query's result as a number, or None when the result is empty.
    pub async fn scalar(&self, promql: &str) -> Option<f64> {
        self.query(promql).await.first().and_then(|s| s["value"][1].as_str()?.parse().ok())
    }

    /// `GET /api/v1/rules`: the rule groups Prometheus loaded.
    pub async fn rules(&self) -> Value {
        reqwest::get(format!("{}/api/v1/rules", self.url())).await.expect("prometheus").json().await.expect("json")
    }
}

/// What a webhook receiver got: (path, when, body).
pub type Received = Arc<Mutex<Vec<(String, Instant, Value)>>>;

/// An HTTP server on a free port that answers 200 to every JSON POST and records it.
pub async fn webhook_receiver() -> (String, Received) {
    webhook_receiver_failing(Arc::default()).await
}

/// [`webhook_receiver`] that answers 503 (and records nothing) while `failing` is set: a notifier outage.
pub async fn webhook_receiver_failing(failing: Arc<std::sync::atomic::AtomicBool>) -> (String, Received) {
    let got: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let store = got.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let (store, failing) = (store.clone(), failing.clone());
        async move {
            if failing.load(std::sync::atomic::Ordering::SeqCst) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down");
            }
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            store.lock().expect("lock").push((uri.path().to_owned(), Instant::now(), json));
            (axum::http::StatusCode::OK, "ok")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}
