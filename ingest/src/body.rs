//! Reading a beacon body with every limit enforced while it streams in: the wire limit on received bytes,
//! the decoded limit on what gzip expands to, a shared memory budget across all requests, and a read
//! timeout. A gzip bomb therefore costs at most `max_decoded_bytes` (and its share of the budget) before
//! it is refused with 413; nothing is buffered unbounded.
//!
//! Gzip is used when declared (`Content-Encoding: gzip`) or detected by its magic bytes (`1f 8b`), since
//! `navigator.sendBeacon` cannot set headers. Concatenated gzip members are accepted.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Granularity of the shared memory budget.
pub const BUDGET_UNIT: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub max_wire: usize,
    pub max_decoded: usize,
    pub timeout: Duration,
    pub retry_after_secs: u32,
}

/// What a request's body decoded to.
pub struct DecodedBody {
    pub bytes: Vec<u8>,
    pub wire_len: usize,
    /// Budget held for `bytes` (released on drop).
    pub _budget: Budget,
}

/// A request's share of the memory budget.
pub struct Budget {
    pool: Arc<Semaphore>,
    permits: Option<OwnedSemaphorePermit>,
    units: usize,
    retry_after_secs: u32,
}

impl Budget {
    pub fn new(pool: Arc<Semaphore>, retry_after_secs: u32) -> Budget {
        Budget { pool, permits: None, units: 0, retry_after_secs }
    }

    /// Makes sure `bytes` are covered by the budget.
    fn reserve(&mut self, bytes: usize) -> Result<(), ApiError> {
        let need = bytes.div_ceil(BUDGET_UNIT);
        if need <= self.units {
            return Ok(());
        }
        let extra = (need - self.units) as u32;
        let permit = self.pool.clone().try_acquire_many_owned(extra).map_err(|_| {
            ApiError::unavailable("overloaded", "the collector is at its memory bound, retry later", self.retry_after_secs)
        })?;
        match &mut self.permits {
            Some(p) => p.merge(permit),
            None => self.permits = Some(permit),
        }
        self.units = need;
        Ok(())
    }
}

/// A `Write` sink that refuses to grow past a limit (the decoded side of gzip).
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("decoded size limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    /// Fewer than two bytes seen and no declared encoding: cannot tell yet.
    Sniff(Vec<u8>),
    Plain(Vec<u8>),
    Gzip(Box<flate2::write::MultiGzDecoder<Bounded>>),
}

impl Decoder {
    fn gzip(limit: usize) -> Decoder {
        Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Bounded { buf: Vec::new(), limit, exceeded: false })))
    }

    fn decoded_len(&self) -> usize {
        match self {
            Decoder::Sniff(b) | Decoder::Plain(b) => b.len(),
            Decoder::Gzip(d) => d.get_ref().buf.len(),
        }
    }

    fn push(&mut self, chunk: &[u8], limits: &BodyLimits) -> Result<(), ApiError> {
        if let Decoder::Sniff(seen) = self {
            seen.extend_from_slice(chunk);
            if seen.len() < 2 {
                return Ok(());
            }
            let seen = std::mem::take(seen);
            *self = if seen[..2] == GZIP_MAGIC { Decoder::gzip(limits.max_decoded) } else { Decoder::Plain(Vec::new()) };
            return self.push(&seen, limits);
        }
        match self {
            Decoder::Sniff(_) => Ok(()),
            Decoder::Plain(buf) => {
                buf.extend_from_slice(chunk);
                Ok(())
            }
            Decoder::Gzip(d) => d.write_all(chunk).map_err(|e| gzip_error(d.get_ref(), e, limits)),
        }
    }

    fn finish(self, limits: &BodyLimits) -> Result<Vec<u8>, ApiError> {
        match self {
            Decoder::Sniff(b) | Decoder::Plain(b) => Ok(b),
            Decoder::Gzip(mut d) => {
                d.try_finish().map_err(|e| gzip_error(d.get_ref(), e, limits))?;
                let out = d.finish().map_err(|e| ApiError::bad_request("invalid_gzip", format!("invalid gzip body: {e}")))?;
                Ok(out.buf)
            }
        }
    }
}

fn gzip_error(sink: &Bounded, e: std::io::Error, limits: &BodyLimits) -> ApiError {
    if sink.exceeded {
        ApiError::too_large(format!("decompressed body is over the {}-byte limit", limits.max_decoded))
    } else {
        ApiError::bad_request("invalid_gzip", format!("invalid gzip body: {e}"))
    }
}

/// Reads and decodes a body within `limits`.
pub async fn read_body(
    body: Body,
    declared_gzip: bool,
    declared_len: Option<u64>,
    limits: &BodyLimits,
    budget: Budget,
) -> Result<DecodedBody, ApiError> {
    if declared_len.is_some_and(|n| n > limits.max_wire as u64) {
        return Err(ApiError::too_large(format!("body is over the {}-byte limit", limits.max_wire)));
    }
    match tokio::time::timeout(limits.timeout, read_inner(body, declared_gzip, limits, budget)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("body not received within {} ms", limits.timeout.as_millis()),
        )),
    }
}

async fn read_inner(mut body: Body, declared_gzip: bool, limits: &BodyLimits, mut budget: Budget) -> Result<DecodedBody, ApiError> {
    let mut decoder = if declared_gzip { Decoder::gzip(limits.max_decoded) } else { Decoder::Sniff(Vec::new()) };
    let mut wire_len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request("body_read", format!("could not read the body: {e}")))?;
        let Ok(chunk) = frame.into_data() else { continue };
        wire_len += chunk.len();
        if wire_len > limits.max_wire {
            return Err(ApiError::too_large(format!("body is over the {}-byte limit", limits.max_wire)));
        }
        // Reserve for the worst case of this chunk before decoding it: plain grows by the chunk, gzip by
        // at most what the limit allows.
        let before = decoder.decoded_len();
        budget.reserve(wire_len.max(before + chunk.len()))?;
        decoder.push(&chunk, limits)?;
        budget.reserve(decoder.decoded_len().max(wire_len))?;
    }
    let bytes = decoder.finish(limits)?;
    budget.reserve(bytes.len())?;
    Ok(DecodedBody { bytes, wire_len, _budget: budget })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn limits() -> BodyLimits {
        BodyLimits { max_wire: 1 << 20, max_decoded: 10 << 20, timeout: Duration::from_secs(5), retry_after_secs: 1 }
    }

    fn pool() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(1024))
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn read(data: Vec<u8>, declared: bool) -> Result<Vec<u8>, ApiError> {
        read_body(Body::from(data), declared, None, &limits(), Budget::new(pool(), 1)).await.map(|b| b.bytes)
    }

    #[tokio::test]
    async fn plain_declared_and_sniffed_gzip() {
        assert_eq!(read(b"{}".to_vec(), false).await.unwrap(), b"{}");
        assert_eq!(read(gz(b"{\"a\":1}"), true).await.unwrap(), b"{\"a\":1}");
        assert_eq!(read(gz(b"{\"a\":1}"), false).await.unwrap(), b"{\"a\":1}");
        let mut two = gz(b"[1,");
        two.extend(gz(b"2]"));
        assert_eq!(read(two, false).await.unwrap(), b"[1,2]");
    }

    #[tokio::test]
    async fn limits_and_bad_gzip() {
        let err = read(vec![b' '; (1 << 20) + 1], false).await.unwrap_err();
        assert_eq!((err.status.as_u16(), err.tag), (413, "payload_too_large"));
        let bomb = gz(&vec![0u8; 20 << 20]);
        assert!(bomb.len() < 1 << 20);
        let err = read(bomb, false).await.unwrap_err();
        assert_eq!(err.status.as_u16(), 413);
        assert!(err.message.contains("decompressed"));
        let err = read(b"{}".to_vec(), true).await.unwrap_err();
        assert_eq!(err.tag, "invalid_gzip");
        let mut truncated = gz(b"{\"hello\":\"world\"}");
        truncated.truncate(truncated.len() - 6);
        assert!(read(truncated, false).await.is_err());
    }

    #[tokio::test]
    async fn the_shared_budget_refuses_with_503() {
        let tiny = Arc::new(Semaphore::new(2)); // 128 KiB in all
        let err = read_body(Body::from(vec![b' '; 200 << 10]), false, None, &limits(), Budget::new(tiny.clone(), 3))
            .await
            .err()
            .unwrap();
        assert_eq!((err.status.as_u16(), err.retry_after), (503, Some(3)));
        assert_eq!(tiny.available_permits(), 2, "a refused request gives its budget back");
    }
}
