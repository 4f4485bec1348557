//! moto's server mode (PyPI `moto[server]`, installed by `deploy/test.sh`): S3 and DynamoDB in one
//! process on a free loopback port, started and stopped by the test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = super::kinesis::free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (deploy/test.sh installs moto[server] from PyPI)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS environment pointing a qoeflow process (or DuckDB's s3fs) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    /// An `objstore::Location` on this server (what a qoeflow process with [`Moto::env`] opens).
    pub fn location(&self, url: &str) -> objstore::Location {
        let endpoint = self.endpoint();
        let options = [
            ("endpoint", endpoint.as_str()),
            ("allow_http", "true"),
            ("region", "us-east-1"),
            ("access_key_id", "test"),
            ("secret_access_key", "test"),
        ];
        objstore::Location::parse_with(url, &options).expect("S3 location")
    }

    /// `qoeflow query --dataset DATASET --format json SQL` with this server's AWS environment: its rows.
    pub fn query(&self, dataset: &str, sql: &str) -> Vec<serde_json::Value> {
        self.try_query(dataset, sql).unwrap_or_else(|e| panic!("qoeflow query failed: {e}"))
    }

    /// [`Moto::query`], or its error: a reader in another process may list a file that a compaction
    /// deletes before the reader opens it (docs/architecture.md, "Compaction"); the query fails, and a
    /// retry sees the merged file.
    pub fn try_query(&self, dataset: &str, sql: &str) -> Result<Vec<serde_json::Value>, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
            .args(["query", "--dataset", dataset, "--format", "json", sql])
            .envs(self.env())
            .env("QOEFLOW_LOG_LEVEL", "warn")
            .output()
            .expect("run qoeflow query");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json row")).collect())
    }

    /// The multipart uploads begun and never completed under `prefix` of `bucket` (what staged files
    /// that were never published leave behind), as their keys.
    pub fn incomplete_uploads(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let url = format!("{}/{bucket}?uploads&prefix={prefix}", self.endpoint());
        let body = super::clickhouse::http::blocking_get(&url).unwrap_or_else(|e| panic!("ListMultipartUploads: {e}"));
        body.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).map(str::to_owned).collect()
    }

    /// The lease table `table` on this server, read as `owner` (who owns what, checkpoints).
    pub fn lease_table(&self, table: &str) -> pipeline::kinesis::lease::LeaseTable {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(self.endpoint())
            .build();
        pipeline::kinesis::lease::LeaseTable::new(aws_sdk_dynamodb::Client::from_conf(config), table, "test-observer")
    }

    /// Creates a bucket (moto does not check signatures: a plain PUT).
    pub fn create_bucket(&self, bucket: &str) {
        if let Err(e) =
            super::clickhouse::http::blocking_put(&format!("{}/{bucket}", self.endpoint()))
        {
            panic!("creating bucket {bucket}: {e}");
        }
    }

    /// Copies every object under `location` into `dir` (same relative paths): the S3 dataset as a
    /// local directory the Parquet helpers read.
    pub async fn mirror(location: &objstore::Location, dir: &Path) {
        for entry in location.list("").await.expect("list") {
            let bytes = location
                .get(&entry.key)
                .await
                .expect("get")
                .expect("listed object");
            let path = dir.join(&entry.key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
