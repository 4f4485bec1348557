//! Ad-hoc SQL (`POST /api/v1/sql`, `qoeflow query`): its rows, its errors, and record batches as JSON.

use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

/// The rows and columns of an ad-hoc SQL query.
#[derive(Debug, Default)]
pub struct SqlRows {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}

/// Where ad-hoc SQL failed: the analyst's query, or its time limit.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Invalid(String),
    #[error("the query ran longer than the {0} ms limit")]
    Timeout(u64),
    /// Over the engine's memory limit (`query.memory_limit_bytes`).
    #[error("the query needs more memory than query.memory_limit_bytes allows: {0}")]
    ResourcesExhausted(String),
}

/// Record batches as JSON objects, one per row.
pub fn json_rows(batches: &[RecordBatch]) -> crate::Result<Vec<Map<String, Value>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::ArrayWriter::new(&mut buf);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(&buf)?)
}
