//! Kinesis sink: batches records of concurrent requests into PutRecords calls and retries only what failed.
//!
//! A batcher task gathers records for up to `linger_ms` (or until a call is full: 500 records, 5 MiB),
//! then hands each call to a worker (at most `max_concurrent_puts` at once). A worker retries the entries a
//! call did not accept — throttled (`ProvisionedThroughputExceededException`), `InternalFailure`, or the
//! whole call failing or timing out — with exponential backoff and full jitter, up to `max_attempts` per
//! record. A request is acknowledged when every one of its records was accepted; as soon as one of them
//! runs out of attempts the request gets an error (503), even if its other records landed: the client
//! retries, and the pipeline drops the duplicates by `(view_id, seq)`. The SDK's own retries are off so
//! this policy is the only one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{SinkError, SinkRecord};
use crate::config::KinesisConfig;
use crate::metrics::Metrics;

const MAX_RECORDS_PER_CALL: usize = 500;
const MAX_BYTES_PER_CALL: usize = 5 << 20;

/// A one-line description of an SDK error: the service's code and message, or the transport failure.
pub fn describe<E, R>(err: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(e) => format!("{}: {}", e.code().unwrap_or("unknown error"), e.message().unwrap_or("")),
        None => {
            let mut msg = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        }
    }
}

/// Builds a Kinesis client from the config and the standard AWS environment (credentials, profile,
/// region). The SDK's retries are disabled: callers own their retry policy.
pub async fn client(config: &KinesisConfig) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_kinesis::config::Builder::from(&shared).retry_config(RetryConfig::disabled());
    if shared.region().is_none() {
        builder = builder.region(aws_config::Region::new("us-east-1"));
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

#[derive(Clone)]
pub struct KinesisSink {
    tx: mpsc::Sender<Pending>,
    client: Client,
    stream: String,
    ready: Arc<Mutex<Option<(Instant, Result<(), String>)>>>,
}

struct Pending {
    records: Vec<SinkRecord>,
    reply: oneshot::Sender<Result<(), SinkError>>,
}

/// Completion of one request spread over many entries.
struct RequestState {
    remaining: AtomicUsize,
    reply: Mutex<Option<oneshot::Sender<Result<(), SinkError>>>>,
}

impl RequestState {
    fn accepted_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.reply.lock().ok().and_then(|mut g| g.take()) {
                let _ = tx.send(Ok(()));
            }
        }
    }
    /// Returns true when this call answered the request (its first failure).
    fn failed(&self, why: &str) -> bool {
        match self.reply.lock().ok().and_then(|mut g| g.take()) {
            Some(tx) => {
                let _ = tx.send(Err(SinkError::Kinesis(why.to_owned())));
                true
            }
            None => false,
        }
    }
}

struct Entry {
    record: SinkRecord,
    request: Arc<RequestState>,
}

impl Entry {
    fn size(&self) -> usize {
        self.record.data.len() + self.record.partition_key.len()
    }
}

#[derive(Clone)]
struct Worker {
    client: Client,
    stream: String,
    config: KinesisConfig,
    metrics: Metrics,
}

impl KinesisSink {
    pub fn new(client: Client, config: KinesisConfig, metrics: Metrics) -> Result<KinesisSink, String> {
        let stream = config.stream.clone().ok_or("kinesis stream name is not set (--kinesis-stream)")?;
        let (tx, rx) = mpsc::channel(4096);
        let worker = Worker { client: client.clone(), stream: stream.clone(), config, metrics };
        tokio::spawn(batcher(rx, worker));
        Ok(KinesisSink { tx, client, stream, ready: Arc::new(Mutex::new(None)) })
    }

    pub async fn append(&self, records: Vec<SinkRecord>) -> Result<(), SinkError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Pending { records, reply }).await.map_err(|_| SinkError::Closed)?;
        rx.await.map_err(|_| SinkError::Closed)?
    }

    /// The stream answers DescribeStreamSummary (cached for 2 s).
    pub async fn ready(&self) -> Result<(), String> {
        if let Some((at, result)) = self.ready.lock().ok().and_then(|g| g.clone()) {
            if at.elapsed() < Duration::from_secs(2) {
                return result;
            }
        }
        let call = self.client.describe_stream_summary().stream_name(&self.stream).send();
        let result = match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("stream {} not reachable: {}", self.stream, describe(&e))),
            Err(_) => Err(format!("stream {} did not answer within 2 s", self.stream)),
        };
        if let Ok(mut g) = self.ready.lock() {
            *g = Some((Instant::now(), result.clone()));
        }
        result
    }
}

async fn batcher(mut rx: mpsc::Receiver<Pending>, worker: Worker) {
    let slots = Arc::new(Semaphore::new(worker.config.max_concurrent_puts.max(1)));
    let linger = Duration::from_millis(worker.config.linger_ms);
    while let Some(first) = rx.recv().await {
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let add = |p: Pending, entries: &mut Vec<Entry>, bytes: &mut usize| {
            let request = Arc::new(RequestState { remaining: AtomicUsize::new(p.records.len()), reply: Mutex::new(Some(p.reply)) });
            for record in p.records {
                let e = Entry { record, request: request.clone() };
                *bytes += e.size();
                entries.push(e);
            }
        };
        add(first, &mut entries, &mut bytes);
        let deadline = tokio::time::Instant::now() + linger;
        while entries.len() < MAX_RECORDS_PER_CALL && bytes < MAX_BYTES_PER_CALL {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => add(p, &mut entries, &mut bytes),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        for call in split_calls(entries) {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let worker = worker.clone();
            tokio::spawn(async move {
                worker.put_with_retries(call).await;
                drop(permit);
            });
        }
    }
}

/// Splits entries into PutRecords calls within the count and size limits, keeping order.
fn split_calls(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut calls = Vec::new();
    let mut current: Vec<Entry> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        if !current.is_empty() && (current.len() == MAX_RECORDS_PER_CALL || bytes + e.size() > MAX_BYTES_PER_CALL) {
            calls.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += e.size();
        current.push(e);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

impl Worker {
    async fn put_with_retries(&self, mut pending: Vec<Entry>) {
        let mut attempt = 0u32;
        let mut last_error = String::new();
        while !pending.is_empty() {
            attempt += 1;
            self.metrics.kinesis_put_calls.inc();
            let request = pending
                .iter()
                .map(|e| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(e.record.data.to_vec()))
                        .partition_key(&e.record.partition_key)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>();
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    // Cannot happen: both required fields are always set. Fail loudly rather than ack.
                    self.fail_all(pending, &format!("invalid PutRecords entry: {e}"));
                    return;
                }
            };
            let call = self.client.put_records().stream_name(&self.stream).set_records(Some(request)).send();
            match tokio::time::timeout(Duration::from_millis(self.config.call_timeout_ms), call).await {
                Ok(Ok(out)) => {
                    let results = out.records();
                    let mut failed = Vec::new();
                    for (i, entry) in pending.into_iter().enumerate() {
                        match results.get(i).and_then(|r| r.error_code()) {
                            None if i < results.len() => entry.request.accepted_one(),
                            code => {
                                if code == Some("ProvisionedThroughputExceededException") {
                                    self.metrics.kinesis_throttles.inc();
                                }
                                last_error = code.unwrap_or("missing result entry").to_owned();
                                failed.push(entry);
                            }
                        }
                    }
                    pending = failed;
                }
                Ok(Err(e)) => {
                    let throttled = e.as_service_error().is_some_and(|s| s.is_provisioned_throughput_exceeded_exception());
                    if throttled {
                        self.metrics.kinesis_throttles.inc_by(pending.len() as u64);
                    }
                    last_error = describe(&e);
                    tracing::warn!(attempt, records = pending.len(), error = %last_error, "PutRecords call failed");
                }
                Err(_) => {
                    last_error = format!("PutRecords timed out after {} ms", self.config.call_timeout_ms);
                    tracing::warn!(attempt, records = pending.len(), "{last_error}");
                }
            }
            if pending.is_empty() {
                return;
            }
            if attempt >= self.config.max_attempts {
                self.fail_all(pending, &last_error);
                return;
            }
            self.metrics.kinesis_retries.inc_by(pending.len() as u64);
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    fn fail_all(&self, entries: Vec<Entry>, why: &str) {
        let mut answered = 0;
        for e in entries {
            if e.request.failed(why) {
                answered += 1;
            }
        }
        self.metrics.kinesis_exhausted.inc_by(answered);
        tracing::error!(requests = answered, error = why, "records ran out of attempts; their requests get 503");
    }

    /// Full jitter: uniform in [0, min(max, base * 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.config.retry_base_ms.saturating_mul(1u64 << attempt.min(20).saturating_sub(1)).min(self.config.retry_max_ms);
        Duration::from_millis(rand::rng().random_range(0..=cap.max(1)))
    }
}
