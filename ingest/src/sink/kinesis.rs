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
//!
//! A record over Kinesis' per-record limit (`MAX_RECORD_BYTES`, data plus partition key) is refused by
//! `append` before it is batched: in a call it would fail the whole call (`ValidationException`), and so
//! the other requests' records batched with it. The collector never builds such a record (it rejects an
//! oversized event on its own, `event_too_large`); the check keeps that a local failure if it ever did.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{MAX_RECORD_BYTES, SinkError, SinkRecord};
use ::kinesis::{KinesisConfig, describe};
use crate::metrics::Metrics;

const MAX_RECORDS_PER_CALL: usize = 500;
const MAX_BYTES_PER_CALL: usize = 5 << 20;

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
        record_size(&self.record)
    }
}

/// What counts against Kinesis' record and call size limits: the data and the partition key.
fn record_size(record: &SinkRecord) -> usize {
    record.data.len() + record.partition_key.len()
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
        if let Some(size) = records.iter().map(record_size).find(|&size| size > MAX_RECORD_BYTES) {
            return Err(SinkError::RecordTooLarge(size));
        }
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

    fn backoff(&self, attempt: u32) -> Duration {
        backoff(attempt, self.config.retry_base_ms, self.config.retry_max_ms)
    }
}

/// Full jitter: uniform in [0, min(max_ms, base_ms * 2^(attempt-1))] milliseconds (`attempt` from 1; the
/// exponent stops growing at 2^19, far past any useful cap).
fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let cap = base_ms.saturating_mul(1u64 << (attempt.clamp(1, 20) - 1)).min(max_ms);
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// Backing store for record data, so large test records cost no allocation.
    static ZEROS: [u8; MAX_RECORD_BYTES] = [0; MAX_RECORD_BYTES];
    const KEY_LEN: usize = 8;

    /// Entry number `i` of `size` bytes in all (its partition key is `i`, so order can be read back).
    fn entry(i: usize, size: usize) -> Entry {
        let (reply, _) = oneshot::channel();
        let request = Arc::new(RequestState { remaining: AtomicUsize::new(1), reply: Mutex::new(Some(reply)) });
        let record = SinkRecord { partition_key: format!("{i:0KEY_LEN$}"), data: Bytes::from_static(&ZEROS[..size - KEY_LEN]) };
        let e = Entry { record, request };
        assert_eq!(e.size(), size);
        e
    }

    fn entries(sizes: &[usize]) -> Vec<Entry> {
        sizes.iter().enumerate().map(|(i, &size)| entry(i, size)).collect()
    }

    /// Checks the limits, the order and that no call was closed early; returns the calls' lengths.
    fn check_split(sizes: &[usize]) -> Vec<usize> {
        let calls = split_calls(entries(sizes));
        let mut next = 0usize;
        for (c, call) in calls.iter().enumerate() {
            let bytes: usize = call.iter().map(Entry::size).sum();
            assert!(!call.is_empty(), "call {c} is empty");
            assert!(call.len() <= MAX_RECORDS_PER_CALL, "call {c} has {} records", call.len());
            assert!(bytes <= MAX_BYTES_PER_CALL, "call {c} has {bytes} bytes");
            for e in call {
                assert_eq!(e.record.partition_key, format!("{next:0KEY_LEN$}"), "order kept");
                next += 1;
            }
            if let Some(&following) = sizes.get(next) {
                assert!(
                    call.len() == MAX_RECORDS_PER_CALL || bytes + following > MAX_BYTES_PER_CALL,
                    "call {c} was closed while the next record still fit"
                );
            }
        }
        assert_eq!(next, sizes.len(), "every entry is in exactly one call");
        calls.iter().map(Vec::len).collect()
    }

    #[test]
    fn a_call_holds_at_most_500_records() {
        assert_eq!(check_split(&[100; 501]), [500, 1]);
        assert_eq!(check_split(&[100; 1000]), [500, 500]);
        assert_eq!(check_split(&[100; 499]), [499]);
        assert!(check_split(&[]).is_empty());
    }

    #[test]
    fn a_call_holds_at_most_5_mib() {
        // Records at the per-record limit: exactly five fit a call.
        assert_eq!(check_split(&[MAX_RECORD_BYTES; 11]), [5, 5, 1]);
        // Slightly under it: still five (six would be over 5 MiB).
        assert_eq!(check_split(&[MAX_RECORD_BYTES - 1000; 7]), [5, 2]);
        // Exactly 5 MiB is one call; one byte more pushes the last record into the next call.
        let mut sizes = vec![MAX_RECORD_BYTES; 4];
        sizes.extend([MAX_RECORD_BYTES - 10, 10]);
        assert_eq!(check_split(&sizes), [6]);
        sizes[4] += 1;
        assert_eq!(check_split(&sizes), [5, 1]);
    }

    #[test]
    fn a_mix_respects_both_limits_in_order() {
        // 300 small, 6 large (the byte limit closes a call), then 600 small (the count limit does).
        let mut sizes = vec![1000; 300];
        sizes.extend([900 << 10; 6]);
        sizes.extend(vec![1000; 600]);
        let lens = check_split(&sizes);
        assert_eq!(lens.iter().sum::<usize>(), 906);
        assert!(lens.len() >= 3, "{lens:?}");
    }

    proptest! {
        #[test]
        fn any_mix_respects_both_limits_in_order(
            sizes in prop::collection::vec(prop_oneof![4 => KEY_LEN..4096usize, 1 => (256usize << 10)..=MAX_RECORD_BYTES], 0..1200)
        ) {
            check_split(&sizes);
        }
    }

    fn sink() -> (KinesisSink, Metrics) {
        // No credentials and nothing on the discard port: a call, if one were made, could only fail.
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        let config = KinesisConfig { stream: Some("beacons".into()), max_attempts: 1, ..KinesisConfig::default() };
        let metrics = Metrics::new();
        (KinesisSink::new(Client::from_conf(conf), config, metrics.clone()).expect("sink"), metrics)
    }

    #[tokio::test]
    async fn a_record_over_the_record_limit_is_refused_before_any_call() {
        let (sink, metrics) = sink();
        let small = SinkRecord { partition_key: "view".into(), data: Bytes::from_static(b"{}") };
        // Data plus partition key one byte over the limit.
        let big = SinkRecord { partition_key: "view".into(), data: Bytes::from_static(&ZEROS[..MAX_RECORD_BYTES - 3]) };
        let err = sink.append(vec![small, big]).await.expect_err("refused");
        assert!(matches!(err, SinkError::RecordTooLarge(n) if n == MAX_RECORD_BYTES + 1), "{err}");
        assert!(err.to_string().contains("record limit"), "{err}");
        assert_eq!(metrics.kinesis_put_calls.get(), 0, "no PutRecords call was made for the request");
    }

    #[test]
    fn backoff_is_full_jitter_under_the_exponential_cap() {
        let (base, max) = (25u64, 1000u64);
        for attempt in 1..=40u32 {
            let cap = base.saturating_mul(1u64.checked_shl(attempt - 1).unwrap_or(u64::MAX)).min(max);
            let delays: Vec<u64> = (0..300).map(|_| backoff(attempt, base, max).as_millis() as u64).collect();
            assert!(delays.iter().all(|&d| d <= cap), "attempt {attempt}: a delay over {cap} ms in {delays:?}");
            // Full jitter spreads over the whole range (300 uniform draws all in one half: p < 2^-299).
            assert!(delays.iter().any(|&d| d < cap / 2) && delays.iter().any(|&d| d > cap / 2), "attempt {attempt}");
        }
        assert!((0..300).all(|_| backoff(3, base, 60) <= Duration::from_millis(60)), "capped by max");
        // No backoff configured means none: not even a millisecond.
        assert!((0..300).all(|_| backoff(1, 0, max).is_zero() && backoff(5, base, 0).is_zero()));
        // Huge settings saturate instead of overflowing.
        assert!(backoff(u32::MAX, u64::MAX, u64::MAX) <= Duration::from_millis(u64::MAX));
    }
}
