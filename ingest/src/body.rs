//! Reading a beacon body with every limit enforced while it streams in: the wire limit on received bytes,
//! the decoded limit on what gzip expands to, a shared memory budget across all requests, and a read
//! timeout. Every byte a request keeps (plain, or produced by gzip inflation) is covered by the shared
//! budget *before* it is stored, so all bodies together hold at most `max_buffered_bytes` (plus a fixed
//! ~64 KiB of decoder state per request): an exhausted budget answers 503 + `Retry-After` at once, and a
//! request over `max_decoded_bytes` answers 413. A gzip bomb therefore stops at whichever bound it meets
//! first; nothing is buffered unbounded.
//!
//! Gzip is used when declared (`Content-Encoding: gzip`) or detected by its magic bytes (`1f 8b`), since
//! `navigator.sendBeacon` cannot set headers. Concatenated gzip members are accepted.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use service::ApiError;

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
    /// Budget held for `bytes` (released on drop); what is parsed from them may reserve more.
    pub budget: Budget,
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

    /// Makes sure `bytes` are covered by the budget. On refusal nothing more is held than before.
    pub fn reserve(&mut self, bytes: usize) -> Result<(), ApiError> {
        let need = bytes.div_ceil(BUDGET_UNIT);
        if need <= self.units {
            return Ok(());
        }
        let refused = || {
            ApiError::unavailable("overloaded", "the collector is at its memory bound, retry later", self.retry_after_secs)
        };
        let extra = u32::try_from(need - self.units).map_err(|_| refused())?;
        let permit = self.pool.clone().try_acquire_many_owned(extra).map_err(|_| refused())?;
        match &mut self.permits {
            Some(p) => p.merge(permit),
            None => self.permits = Some(permit),
        }
        self.units = need;
        Ok(())
    }
}

/// Where decoded bytes go: it refuses to grow past `limit` and covers its whole allocation by the
/// request's budget before growing, so inflation is charged as it happens, not after the fact.
struct Bounded {
    buf: Vec<u8>,
    /// `max_decoded` once gzip is known; unbounded before (plain bodies are bounded by the wire limit).
    limit: usize,
    budget: Budget,
    /// Why the last write was refused: flate2 turns it into an `io::Error`, this keeps the real answer.
    refused: Option<ApiError>,
}

impl Bounded {
    fn new(budget: Budget) -> Bounded {
        Bounded { buf: Vec::new(), limit: usize::MAX, budget, refused: None }
    }

    fn append(&mut self, data: &[u8]) -> Result<(), ApiError> {
        let len = self.buf.len().saturating_add(data.len());
        if len > self.limit {
            return Err(ApiError::too_large(format!("decompressed body is over the {}-byte limit", self.limit)));
        }
        if len > self.buf.capacity() {
            // Grow by doubling like `Vec` (appends stay amortised O(1)), but with the whole new allocation
            // covered by the budget; when the doubled size does not fit, grow only to what is needed.
            let doubled = self.buf.capacity().saturating_mul(2).max(len).min(self.limit);
            let capacity = match self.budget.reserve(doubled) {
                Ok(()) => doubled,
                Err(_) => {
                    self.budget.reserve(len)?;
                    len
                }
            };
            self.buf.reserve_exact(capacity - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.append(data) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                self.refused = Some(e);
                Err(std::io::Error::other("decoded body refused"))
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    /// Fewer than two bytes seen and no declared encoding: cannot tell yet (they wait in the sink).
    Sniff(Bounded),
    Plain(Bounded),
    Gzip(Box<flate2::write::MultiGzDecoder<Bounded>>),
}

impl Decoder {
    fn new(declared_gzip: bool, limits: &BodyLimits, budget: Budget) -> Decoder {
        let sink = Bounded::new(budget);
        if declared_gzip { Decoder::gzip(sink, limits) } else { Decoder::Sniff(sink) }
    }

    fn gzip(mut sink: Bounded, limits: &BodyLimits) -> Decoder {
        sink.limit = limits.max_decoded;
        Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink)))
    }

    /// Feeds one chunk. Takes `self` so that sniffing can hand the sink to the decoder it picks.
    fn push(self, chunk: &[u8], limits: &BodyLimits) -> Result<Decoder, ApiError> {
        match self {
            Decoder::Sniff(mut sink) => {
                let take = (GZIP_MAGIC.len() - sink.buf.len()).min(chunk.len());
                sink.append(&chunk[..take])?;
                if sink.buf.len() < GZIP_MAGIC.len() {
                    return Ok(Decoder::Sniff(sink));
                }
                let seen = std::mem::take(&mut sink.buf);
                let next = if seen[..] == GZIP_MAGIC { Decoder::gzip(sink, limits) } else { Decoder::Plain(sink) };
                next.push(&seen, limits)?.push(&chunk[take..], limits)
            }
            Decoder::Plain(mut sink) => {
                sink.append(chunk)?;
                Ok(Decoder::Plain(sink))
            }
            Decoder::Gzip(mut d) => {
                d.write_all(chunk).map_err(|e| gzip_error(d.get_mut(), e))?;
                Ok(Decoder::Gzip(d))
            }
        }
    }

    fn finish(self) -> Result<Bounded, ApiError> {
        match self {
            Decoder::Sniff(sink) | Decoder::Plain(sink) => Ok(sink),
            Decoder::Gzip(mut d) => {
                d.try_finish().map_err(|e| gzip_error(d.get_mut(), e))?;
                d.finish().map_err(|e| ApiError::bad_request("invalid_gzip", format!("invalid gzip body: {e}")))
            }
        }
    }
}

/// The answer for a failed gzip write: the sink's refusal (413/503) if it refused, else bad gzip.
fn gzip_error(sink: &mut Bounded, e: std::io::Error) -> ApiError {
    sink.refused.take().unwrap_or_else(|| ApiError::bad_request("invalid_gzip", format!("invalid gzip body: {e}")))
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

async fn read_inner(mut body: Body, declared_gzip: bool, limits: &BodyLimits, budget: Budget) -> Result<DecodedBody, ApiError> {
    let mut decoder = Decoder::new(declared_gzip, limits, budget);
    let mut wire_len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request("body_read", format!("could not read the body: {e}")))?;
        let Ok(chunk) = frame.into_data() else { continue };
        wire_len += chunk.len();
        if wire_len > limits.max_wire {
            return Err(ApiError::too_large(format!("body is over the {}-byte limit", limits.max_wire)));
        }
        // The sink reserves budget for every byte it keeps, so a refusal comes before the memory is used.
        decoder = decoder.push(&chunk, limits)?;
    }
    let sink = decoder.finish()?;
    Ok(DecodedBody { bytes: sink.buf, wire_len, budget: sink.budget })
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

    async fn read_with(data: &[u8], declared: bool, pool: &Arc<Semaphore>) -> Result<DecodedBody, ApiError> {
        read_body(Body::from(data.to_vec()), declared, None, &limits(), Budget::new(pool.clone(), 3)).await
    }

    #[tokio::test]
    async fn gzip_inflation_is_charged_to_the_shared_budget_as_it_is_produced() {
        let pool = Arc::new(Semaphore::new(4)); // 256 KiB shared by every request
        // 2 MiB decoded: over the shared budget, well under the 10 MiB per-request limit.
        let body = gz(&vec![b'x'; 2 << 20]);
        for declared in [true, false] {
            let err = read_with(&body, declared, &pool).await.err().expect("refused");
            assert_eq!((err.status.as_u16(), err.tag, err.retry_after), (503, "overloaded", Some(3)), "{}", err.message);
            assert_eq!(pool.available_permits(), 4, "a refused request gives its whole budget back");
        }
        // A bomb that would pass the per-request limit only after 10 MiB of inflation is stopped by the
        // budget first: inflation never gets past what the budget covers.
        let bomb = gz(&vec![0u8; 20 << 20]);
        let err = read_with(&bomb, false, &pool).await.err().expect("refused");
        assert_eq!((err.status.as_u16(), err.retry_after), (503, Some(3)), "{}", err.message);
        assert_eq!(pool.available_permits(), 4);

        // With budget to spare, the same bomb meets the per-request decoded limit instead.
        let roomy = Arc::new(Semaphore::new((16 << 20) / BUDGET_UNIT));
        let err = read_with(&bomb, true, &roomy).await.err().expect("refused");
        assert_eq!((err.status.as_u16(), err.retry_after), (413, None), "{}", err.message);
        assert_eq!(roomy.available_permits(), (16 << 20) / BUDGET_UNIT);
        // An accepted body holds budget for its decoded bytes until it is dropped.
        let ok = read_with(&gz(&vec![b'x'; 1 << 20]), false, &roomy).await.expect("accepted");
        assert_eq!(ok.bytes.len(), 1 << 20);
        let held = (16 << 20) / BUDGET_UNIT - roomy.available_permits();
        assert!(((1 << 20) / BUDGET_UNIT..=(2 << 20) / BUDGET_UNIT).contains(&held), "{held} units held for 1 MiB");
        drop(ok);
        assert_eq!(roomy.available_permits(), (16 << 20) / BUDGET_UNIT);
    }

    #[test]
    fn bodies_split_anywhere_decode_the_same() {
        let data = b"{\"events\":[1,2,3]}".repeat(100);
        for body in [data.clone(), gz(&data)] {
            for split in [1, 2, 3, 17] {
                let mut decoder = Decoder::new(false, &limits(), Budget::new(pool(), 1));
                for chunk in body.chunks(split) {
                    decoder = decoder.push(chunk, &limits()).expect("push");
                }
                assert_eq!(decoder.finish().expect("finish").buf, data, "split every {split} bytes");
            }
        }
    }
}
