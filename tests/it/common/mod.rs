//! Test harness: runs the real `qoeflow` binary, the Kinesis emulator (via `deploy/local/kinesis.sh`) and
//! a fault-injecting Kinesis proxy, all on free loopback ports. Nothing here skips: if a service cannot
//! start, the test fails with the reason.
#![allow(dead_code)]

pub mod clickhouse;
pub mod kinesis;
pub mod moto;
pub mod parquet;
pub mod prom;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use locallog::LogReader;
use schemas::Record;

pub const T0: i64 = 1_700_000_000_000;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running `qoeflow` process; killed when dropped.
pub struct Qoeflow {
    child: Child,
    pub addr: String,
    pub url: String,
    pub stderr: mpsc::Receiver<String>,
    /// Log lines printed before the server listened (start-up, recovery).
    pub startup_lines: Vec<String>,
}

impl Qoeflow {
    pub fn serve(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Qoeflow {
        Self::serve_until(data_dir, args, env, "listening on http://")
    }

    /// [`Qoeflow::serve`], ready at the first log line containing `ready` (for a run a failpoint may
    /// abort before the collector logs its address, wait for `pipeline: resuming from checkpoint`).
    pub fn serve_until(data_dir: &Path, args: &[&str], env: &[(&str, &str)], ready: &str) -> Qoeflow {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        Self::spawn_inner(&all, env, None, ready)
    }

    pub fn ingest(stream: &str, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Qoeflow {
        let mut all = vec!["ingest", "--listen", "127.0.0.1:0", "--kinesis-stream", stream, "--kinesis-endpoint", endpoint];
        all.extend_from_slice(args);
        let mut env = env.to_vec();
        env.extend_from_slice(&kinesis::AWS_ENV);
        Self::spawn(&all, &env, None)
    }

    /// Spawns `qoeflow ARGS` and waits for a log line containing `ready` (for commands without an HTTP
    /// listener, like `qoeflow pipeline`).
    pub fn spawn_until(args: &[&str], env: &[(&str, &str)], ready: &str) -> Qoeflow {
        Self::spawn_inner(args, env, None, ready)
    }

    /// Spawns `qoeflow ARGS`, optionally through `bash -c PRELUDE; exec qoeflow ...` (for ulimits).
    pub fn spawn(args: &[&str], env: &[(&str, &str)], shell_prelude: Option<&str>) -> Qoeflow {
        Self::spawn_inner(args, env, shell_prelude, "listening on http://")
    }

    fn spawn_inner(args: &[&str], env: &[(&str, &str)], shell_prelude: Option<&str>, ready: &str) -> Qoeflow {
        let bin = env!("CARGO_BIN_EXE_qoeflow");
        let mut cmd = match shell_prelude {
            None => {
                let mut c = Command::new(bin);
                c.args(args);
                c
            }
            Some(prelude) => {
                let mut c = Command::new("bash");
                c.arg("-c").arg(format!("{prelude}; exec \"$0\" \"$@\"")).arg(bin).args(args);
                c
            }
        };
        cmd.env("QOEFLOW_LOG_LEVEL", "info").stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn qoeflow");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[qoeflow] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut startup_lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains(ready) {
                        let addr = line.split("listening on http://").nth(1).and_then(|r| r.split_whitespace().next());
                        let addr = addr.unwrap_or_default().to_owned();
                        startup_lines.push(line);
                        return Qoeflow { child, url: format!("http://{addr}"), addr, stderr: rx, startup_lines };
                    }
                    startup_lines.push(line);
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    panic!("qoeflow {args:?} did not log {ready:?} (exit status: {status:?})");
                }
            }
        }
    }

    /// The first log line containing `pattern` (start-up lines included), waiting up to `within`.
    pub fn wait_for_line(&mut self, pattern: &str, within: Duration) -> String {
        if let Some(l) = self.startup_lines.iter().find(|l| l.contains(pattern)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) if l.contains(pattern) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {pattern:?} within {within:?}"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn beacon_url(&self) -> String {
        format!("{}/v1/beacon", self.url)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; returns whether it did within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "qoeflow exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("qoeflow did not stop within 20 s of SIGTERM");
    }

    /// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
    pub fn mem_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.trim_start_matches(':').split_whitespace().next()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for Qoeflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qoeflow query --data-dir DATA --format json SQL`: its rows (one JSON object per line).
pub fn query_json(data: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
        .args(["query", "--data-dir", data.to_str().expect("utf-8 path"), "--format", "json", sql])
        .env("QOEFLOW_LOG_LEVEL", "warn")
        .output()
        .expect("run qoeflow query");
    assert!(out.status.success(), "qoeflow query failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Every record in the local log under `data_dir`, decoded (panics on corruption).
pub fn read_local_log(data_dir: &Path) -> Vec<Record> {
    let mut reader = LogReader::open(&data_dir.join("log"), 0).expect("open log reader");
    let entries = reader.read_batch(usize::MAX, u64::MAX).expect("log reads without corruption");
    entries.iter().map(|e| Record::decode(&e.data).expect("every record decodes")).collect()
}

/// (view_id, seq) of every event in `records`.
pub fn event_ids(records: &[Record]) -> Vec<(String, u64)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Events(e) => Some(e),
            Record::Rejected(_) => None,
        })
        .flat_map(|r| r.events.iter().map(|e| (r.view_id.clone(), e["seq"].as_u64().expect("seq"))))
        .collect()
}

/// A beacon body with `n` events for `view_id` starting at `seq0`.
pub fn beacon(view_id: &str, seq0: u64, n: u64) -> serde_json::Value {
    let events: Vec<_> = (seq0..seq0 + n)
        .map(|seq| {
            serde_json::json!({
                "view_id": view_id, "seq": seq, "ts": T0 + seq as i64 * 100,
                "type": if seq == 0 { "viewstart" } else { "heartbeat" }, "playhead_ms": seq * 100,
            })
        })
        .collect();
    serde_json::json!({"sent_at": T0 + 60_000, "events": events})
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
