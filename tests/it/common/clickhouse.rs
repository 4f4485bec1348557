//! A real ClickHouse server for tests (Debian `clickhouse-server`, started through
//! `deploy/local/clickhouse.sh run` on free ports in its own directory); killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::kinesis::free_port;

pub struct ClickHouse {
    child: Option<Child>,
    pub http_port: u16,
    tcp_port: u16,
    dir: PathBuf,
}

impl ClickHouse {
    /// Starts a server on free ports. A port is free when picked but another test's server may take it
    /// before this one binds it (the suite runs tests in parallel): a server that exits while starting
    /// is started again on other ports, twice at most.
    pub fn start(dir: &Path) -> ClickHouse {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut ch = ClickHouse { child: None, http_port: free_port(), tcp_port: free_port(), dir: dir.to_owned() };
            match ch.try_restart() {
                Ok(()) => return ch,
                Err(e) => failures.push(e),
            }
        }
        panic!("clickhouse-server did not start three times: {}", failures.join("; "));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// (Re)starts the server on the same ports and data, waiting until it answers.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    fn try_restart(&mut self) -> Result<(), String> {
        let script = super::repo_root().join("deploy/local/clickhouse.sh");
        let child = Command::new("bash")
            .arg(script)
            .args(["run", &self.http_port.to_string(), &self.tcp_port.to_string()])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()) // its own logs are under `dir/log`
            .spawn()
            .expect("start deploy/local/clickhouse.sh (installs clickhouse-server as root)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(body) = http::blocking_get(&format!("{}/ping", self.url())) {
                if body.trim() == "Ok." {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let err = std::fs::read_to_string(self.dir.join("log/clickhouse-server.err.log")).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                return Err(format!(
                    "clickhouse-server exited on ports {}/{}: {status}; {}",
                    self.http_port,
                    self.tcp_port,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            assert!(std::time::Instant::now() < deadline, "ClickHouse did not answer within 90 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL), as an outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a query, returning the trimmed TabSeparated result; panics on a server error.
    pub fn query(&self, sql: &str) -> String {
        match http::blocking_post(&self.url(), sql) {
            Ok(body) => body.trim().to_owned(),
            Err(e) => panic!("ClickHouse query failed: {e}\n{sql}"),
        }
    }

    /// Waits until `qoeflow.views` (read with FINAL) holds `n` views.
    pub fn wait_for_views(&self, n: i64, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.scalar("SELECT count() FROM qoeflow.views FINAL") < n {
            assert!(std::time::Instant::now() < deadline, "ClickHouse did not receive {n} views within {within:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn scalar(&self, sql: &str) -> i64 {
        let out = self.query(sql);
        out.parse().unwrap_or_else(|_| panic!("{sql} returned {out:?}"))
    }

    /// ClickHouse (read with FINAL: one copy of each replayed row) holds the same totals as the Parquet
    /// dataset under `data_dir`: window sums, `views` and `events` counts.
    pub fn assert_matches_parquet(&self, data_dir: &std::path::Path) {
        use super::parquet::{num_rows, read_table, sum, view_measures};
        let windows = read_table(data_dir, "qoe_window");
        for col in ["attempts", "starts", "play_ms", "stall_ms", "active_views", "bytes_total"] {
            assert_eq!(self.scalar(&format!("SELECT sum({col}) FROM qoeflow.qoe_window FINAL")), sum(&windows, col), "ClickHouse qoe_window.{col}");
        }
        // Views: the latest version of each on both sides (FINAL keeps the highest `version`).
        let views = view_measures(&read_table(data_dir, "views"), &["play_ms", "stall_ms", "attempt", "started"]);
        assert_eq!(self.scalar("SELECT count() FROM qoeflow.views FINAL"), views.len() as i64, "ClickHouse views rows");
        for col in ["play_ms", "stall_ms", "attempt", "started"] {
            let parquet: i64 = views.values().map(|m| m[col]).sum();
            assert_eq!(self.scalar(&format!("SELECT sum(toInt64({col})) FROM qoeflow.views FINAL")), parquet, "ClickHouse views.{col}");
        }
        let parquet = num_rows(&read_table(data_dir, "events")) as i64;
        assert_eq!(self.scalar("SELECT count() FROM qoeflow.events FINAL"), parquet, "ClickHouse events rows");
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal blocking HTTP client for the harness (the tests' reqwest client is async).
pub mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn request(url: &str, method: &str, body: &str) -> Result<String, String> {
        let rest = url.strip_prefix("http://").ok_or("http only")?;
        let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let mut s = TcpStream::connect(host).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(60))).map_err(|e| e.to_string())?;
        write!(s, "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or("bad response")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("{}: {body}", head.lines().next().unwrap_or_default()));
        }
        Ok(body.to_owned())
    }

    pub fn blocking_get(url: &str) -> Result<String, String> {
        request(url, "GET", "")
    }

    pub fn blocking_post(url: &str, body: &str) -> Result<String, String> {
        request(&format!("{url}/"), "POST", body)
    }

    pub fn blocking_put(url: &str) -> Result<String, String> {
        request(url, "PUT", "")
    }
}
