//! Where accepted records go: the embedded local log (default) or a Kinesis stream. Both resolve
//! `append` only once the records are durable, which is what lets the collector answer 2xx.

#[cfg(feature = "kinesis")]
pub mod kinesis;

use bytes::Bytes;

use locallog::{LocalLog, LogError};
#[cfg(feature = "kinesis")]
pub use kinesis::KinesisSink;

/// Largest record Kinesis accepts (data plus partition key); the local log uses the same bound so one
/// record format serves both.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    /// Kinesis partition key: the `view_id`, so one view's records stay in order on one shard.
    pub partition_key: String,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("kinesis: {0}")]
    Kinesis(String),
    /// Refused before batching: one such entry would fail its whole PutRecords call, and with it the
    /// records of every other request batched into that call.
    #[error("record of {0} bytes (data plus partition key) is over the {MAX_RECORD_BYTES}-byte Kinesis record limit")]
    RecordTooLarge(usize),
    #[error("sink has shut down")]
    Closed,
}

#[derive(Clone)]
pub enum Sink {
    Local(LocalLog),
    #[cfg(feature = "kinesis")]
    Kinesis(KinesisSink),
}

impl Sink {
    /// Makes `records` durable; an error means some may not be, and the request must not be acknowledged.
    pub async fn append(&self, records: Vec<SinkRecord>) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Local(log) => {
                log.append(records.into_iter().map(|r| r.data).collect()).await?;
                Ok(())
            }
            #[cfg(feature = "kinesis")]
            Sink::Kinesis(k) => k.append(records).await,
        }
    }

    /// Whether the sink can accept writes now (for `/readyz`).
    pub async fn ready(&self) -> Result<(), String> {
        match self {
            Sink::Local(log) if log.is_healthy() => Ok(()),
            Sink::Local(_) => Err("local log has a failed write that is not yet repaired".into()),
            #[cfg(feature = "kinesis")]
            Sink::Kinesis(k) => k.ready().await,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Sink::Local(_) => "local_log",
            #[cfg(feature = "kinesis")]
            Sink::Kinesis(_) => "kinesis",
        }
    }
}
