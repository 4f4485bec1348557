//! The Kinesis emulator (started through `deploy/local/kinesis.sh run`) and a fault-injecting proxy in
//! front of it. The emulator does not enforce shard throughput, so the proxy plays Kinesis under load:
//! it forwards only the PutRecords entries it lets through and answers the others with
//! `ProvisionedThroughputExceededException` / `InternalFailure` entries in a 200 response; it can also
//! fail whole calls or stall them.

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::{Rng, SeedableRng};
use schemas::Record;
use serde_json::{Value, json};

pub const AWS_ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "qoeflowtest"), ("AWS_SECRET_ACCESS_KEY", "qoeflowtest"), ("AWS_REGION", "us-east-1")];

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running emulator; killed when dropped.
pub struct Emulator {
    child: Child,
    pub endpoint: String,
}

impl Emulator {
    pub fn start() -> Emulator {
        let (port, tls) = (free_port(), free_port());
        let script = super::repo_root().join("deploy/local/kinesis.sh");
        let child = Command::new("bash")
            .arg(script)
            .args(["run", &port.to_string(), &tls.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start deploy/local/kinesis.sh (needs node + npm)");
        let mut emu = Emulator { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = emu.child.try_wait() {
                panic!("Kinesis emulator exited early: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "Kinesis emulator did not open port {port} in 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        emu
    }

    pub async fn client(&self) -> Client {
        client_for(&self.endpoint).await
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn client_for(endpoint: &str) -> Client {
    let creds = aws_sdk_kinesis::config::Credentials::new("qoeflowtest", "qoeflowtest", None, None, "test");
    let conf = aws_sdk_kinesis::config::Builder::new()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(conf)
}

pub async fn create_stream(client: &Client, name: &str, shards: i32) {
    client.create_stream().stream_name(name).shard_count(shards).send().await.expect("CreateStream");
    for _ in 0..200 {
        let d = client.describe_stream_summary().stream_name(name).send().await.expect("DescribeStreamSummary");
        if d.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} did not become ACTIVE");
}

/// One record read back from the stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub shard: String,
    pub partition_key: String,
    pub record: Record,
}

/// Every record of every shard, in shard order.
pub async fn read_stream(client: &Client, name: &str) -> Vec<StreamRecord> {
    let shards = client.list_shards().stream_name(name).send().await.expect("ListShards");
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(name)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator
            .expect("iterator");
        let mut empty = 0;
        while empty < 2 {
            let got = client.get_records().shard_iterator(&iterator).limit(10_000).send().await.expect("GetRecords");
            if got.records().is_empty() {
                empty += 1;
            }
            for r in got.records() {
                let data = axum::body::Bytes::copy_from_slice(r.data().as_ref());
                // KPL-aggregated records hold several user records; plain ones pass through.
                for u in pipeline::kinesis::kpl::deaggregate(&data, r.partition_key()) {
                    out.push(StreamRecord {
                        shard: shard.shard_id().to_owned(),
                        partition_key: u.partition_key.unwrap_or_default(),
                        record: Record::decode(&u.data).expect("stream record decodes"),
                    });
                }
            }
            match got.next_shard_iterator {
                Some(next) => iterator = next,
                None => break,
            }
        }
    }
    out
}

/// What the proxy does to calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Fail each PutRecords entry with this probability (entry-level errors in a 200 response).
    FailEntries(f64),
    /// Fail the next N PutRecords calls whole (alternating throttling 400 and 500 InternalFailure).
    FailCalls(u32),
    /// Hold PutRecords calls this long before forwarding.
    Stall(Duration),
    /// Answer the next GetRecords calls with these errors, one per call, in order (then forward).
    GetRecordsErrors(Vec<&'static str>),
    /// Throttle this many GetShardIterator calls for this shard (then forward).
    ThrottleShardIterators(String, u32),
}

#[derive(Default, Debug, Clone)]
pub struct ProxyStats {
    pub get_records_failed: u64,
    pub get_iterators_throttled: u64,
    pub put_calls: u64,
    pub entries_forwarded: u64,
    pub entries_failed: u64,
    pub calls_failed: u64,
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    fault: Mutex<Fault>,
    stats: Mutex<ProxyStats>,
    rng: Mutex<rand::rngs::StdRng>,
}

pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, seed: u64) -> FaultProxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            fault: Mutex::new(Fault::Pass),
            stats: Mutex::new(ProxyStats::default()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new().fallback(proxy).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { endpoint, state, task }
    }

    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().expect("lock") = fault;
    }

    pub fn stats(&self) -> ProxyStats {
        self.state.stats.lock().expect("lock").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(state: &ProxyState, headers: &HeaderMap, body: Vec<u8>) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let mut req = state.http.post(&state.upstream).body(body);
    for (name, value) in headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(resp.status().as_u16()).map_err(|e| e.to_string())?;
    let mut out_headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            out_headers.insert(name.clone(), value.clone());
        }
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, out_headers, bytes))
}

fn error_response(status: StatusCode, kind: &str) -> Response {
    (status, [("content-type", "application/x-amz-json-1.1")], json!({"__type": kind, "message": "injected by the test proxy"}).to_string())
        .into_response()
}

async fn proxy(State(state): State<Arc<ProxyState>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_get_iterator = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).is_some_and(|t| t.ends_with(".GetShardIterator"));
    if is_get_iterator {
        let shard = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["ShardId"].as_str().map(str::to_owned));
        let mut fault = state.fault.lock().expect("lock");
        if let Fault::ThrottleShardIterators(target, n) = &mut *fault
            && *n > 0
            && shard.as_deref() == Some(target.as_str())
        {
            *n -= 1;
            state.stats.lock().expect("lock").get_iterators_throttled += 1;
            return error_response(StatusCode::BAD_REQUEST, "ProvisionedThroughputExceededException");
        }
    }
    let is_get_records = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).is_some_and(|t| t.ends_with(".GetRecords"));
    if is_get_records {
        let injected = {
            let mut fault = state.fault.lock().expect("lock");
            match &mut *fault {
                Fault::GetRecordsErrors(errors) if !errors.is_empty() => Some(errors.remove(0)),
                _ => None,
            }
        };
        if let Some(kind) = injected {
            state.stats.lock().expect("lock").get_records_failed += 1;
            return error_response(StatusCode::BAD_REQUEST, kind);
        }
    }
    let is_put_records = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).is_some_and(|t| t.ends_with(".PutRecords"));
    if !is_put_records {
        return match forward(&state, &headers, body.to_vec()).await {
            Ok((s, h, b)) => (s, h, b).into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, e).into_response(),
        };
    }
    let fault = state.fault.lock().expect("lock").clone();
    state.stats.lock().expect("lock").put_calls += 1;
    match fault {
        Fault::Pass => {}
        Fault::Stall(d) => tokio::time::sleep(d).await,
        Fault::FailCalls(n) if n > 0 => {
            *state.fault.lock().expect("lock") = Fault::FailCalls(n - 1);
            state.stats.lock().expect("lock").calls_failed += 1;
            return if n % 2 == 0 {
                error_response(StatusCode::BAD_REQUEST, "ProvisionedThroughputExceededException")
            } else {
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure")
            };
        }
        Fault::FailCalls(_) | Fault::FailEntries(_) | Fault::GetRecordsErrors(_) | Fault::ThrottleShardIterators(..) => {}
    }
    let p_fail = if let Fault::FailEntries(p) = fault { p } else { 0.0 };
    let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "proxy: PutRecords body is not JSON").into_response();
    };
    let entries = request["Records"].as_array().cloned().unwrap_or_default();
    // Decide per entry: Some(error code) = fail it here, None = forward.
    let decisions: Vec<Option<&str>> = {
        let mut rng = state.rng.lock().expect("lock");
        entries
            .iter()
            .map(|_| {
                (rng.random::<f64>() < p_fail).then(|| {
                    if rng.random::<bool>() { "ProvisionedThroughputExceededException" } else { "InternalFailure" }
                })
            })
            .collect()
    };
    let forwarded: Vec<Value> = entries.iter().zip(&decisions).filter(|(_, d)| d.is_none()).map(|(e, _)| e.clone()).collect();
    let mut upstream_results: Vec<Value> = Vec::new();
    if !forwarded.is_empty() {
        request["Records"] = Value::Array(forwarded.clone());
        let Ok(body) = serde_json::to_vec(&request) else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "proxy: encode").into_response();
        };
        match forward(&state, &headers, body).await {
            Ok((status, h, b)) if !status.is_success() => return (status, h, b).into_response(),
            Ok((_, _, b)) => {
                let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                upstream_results = v["Records"].as_array().cloned().unwrap_or_default();
            }
            Err(e) => return (StatusCode::BAD_GATEWAY, e).into_response(),
        }
    }
    let mut upstream = upstream_results.into_iter();
    let mut failed = 0u64;
    let results: Vec<Value> = decisions
        .iter()
        .map(|d| match d {
            Some(code) => {
                failed += 1;
                json!({"ErrorCode": code, "ErrorMessage": "Rate exceeded for shard (injected)"})
            }
            None => {
                let r = upstream.next().unwrap_or(json!({"ErrorCode": "InternalFailure", "ErrorMessage": "missing"}));
                if r.get("ErrorCode").is_some() {
                    failed += 1;
                }
                r
            }
        })
        .collect();
    {
        let mut stats = state.stats.lock().expect("lock");
        stats.entries_forwarded += forwarded.len() as u64;
        stats.entries_failed += decisions.iter().filter(|d| d.is_some()).count() as u64;
    }
    let body = json!({"FailedRecordCount": failed, "Records": results, "EncryptionType": "NONE"});
    (StatusCode::OK, [("content-type", "application/x-amz-json-1.1")], body.to_string()).into_response()
}

/// Events per view in stream order, checking each view's records all sit on one shard.
pub fn events_by_view(records: &[StreamRecord]) -> BTreeMap<String, (String, Vec<u64>)> {
    let mut out: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for r in records {
        if let Record::Events(e) = &r.record {
            assert_eq!(r.partition_key, e.view_id, "partition key is the view_id");
            let entry = out.entry(e.view_id.clone()).or_insert_with(|| (r.shard.clone(), Vec::new()));
            assert_eq!(entry.0, r.shard, "view {} spans shards", e.view_id);
            entry.1.extend(e.events.iter().map(|ev| ev["seq"].as_u64().expect("seq")));
        }
    }
    out
}
