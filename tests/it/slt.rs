//! Golden SQL in sqllogictest format (`tests/slt/*.slt`) over a fixed dataset that the pipeline itself
//! writes (four views with known measures: two starts, a stall, a VSF, an EBVS, segments, a dead letter).

use std::path::Path;

use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use pipeline::parquet::ParquetSink;
use pipeline::{Dim, SessionConfig, Sessionizer};
use query::Engine;
use schemas::record::{EventsRecord, RejectedRecord};
use schemas::{ClientInfo, Record};
use serde_json::{Value, json};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

const T0: i64 = 1_700_000_000_000;

fn record(view: &str, cdn: &str, events: &[(&str, i64, Value)]) -> Record {
    let mut all = vec![("viewstart", 0, json!({"cdn": cdn}))];
    all.extend(events.iter().cloned());
    let events = all
        .into_iter()
        .enumerate()
        .map(|(seq, (kind, ts, extra))| {
            let mut m = json!({"view_id": view, "seq": seq, "type": kind, "ts": T0 + ts}).as_object().cloned().unwrap_or_default();
            if let Value::Object(x) = extra {
                m.extend(x);
            }
            m
        })
        .collect();
    let client = ClientInfo { country: "NL".into(), device_type: "desktop".into(), ..Default::default() };
    Record::Events(EventsRecord { recv_ms: T0 + 20_000, sent_at: T0 + 20_000, key: None, view_id: view.into(), client, events })
}

/// Writes the fixed dataset with the pipeline's own sessionizer and Parquet sink.
async fn write_dataset(dir: &Path) {
    let e = |k: &'static str, ts: i64| (k, ts, json!({}));
    let records = vec![
        record("a", "fastly", &[
            ("quality_change", 0, json!({"bitrate_kbps": 2000})),
            e("playrequest", 0), e("playing", 800),
            ("segment", 900, json!({"bytes": 1000, "cache": "hit"})),
            ("segment", 950, json!({"bytes": 3000, "cache": "miss"})),
            e("stall_start", 3000), e("stall_end", 4000), e("viewend", 10000),
        ]),
        record("b", "fastly", &[e("playrequest", 0), e("playing", 2000), ("segment", 2100, json!({"bytes": 2000, "cache": "hit"})), e("viewend", 9000)]),
        record("c", "akamai", &[e("playrequest", 0), ("error", 1500, json!({"fatal": true, "code": "E1"})), e("viewend", 2000)]),
        record("d", "akamai", &[e("playrequest", 0), e("viewend", 1000)]),
        Record::Rejected(RejectedRecord {
            recv_ms: T0 + 20_000, key: Some("k".into()), index: Some(3), tag: "unknown_type".into(),
            reason: "type: unknown event type \"x\"".into(), payload: "{}".into(),
        }),
    ];
    let dims = vec![Dim::Cdn, Dim::Country, Dim::DeviceType];
    let mut s = Sessionizer::new(SessionConfig { dims: dims.clone(), ..SessionConfig::default() });
    for r in records {
        s.process(r);
    }
    s.advance();
    let out = s.flush();
    let sink = ParquetSink::new(
        objstore::Location::local(dir.join("parquet")),
        "golden",
        dims,
    );
    sink.write_epoch(1, &out).await.expect("write dataset");
}

struct Db {
    engine: Engine,
}

#[derive(Debug)]
struct DbError(String);
impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DbError {}

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let batches = self.engine.sql(sql).await.map_err(|e| DbError(format!("{e:#}")))?;
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        let mut width = 0;
        for b in &batches {
            width = b.num_columns();
            let formatters: Vec<_> = b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>().map_err(|e| DbError(e.to_string()))?;
            for i in 0..b.num_rows() {
                rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
            }
        }
        if batches.is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; width], rows })
    }

    async fn shutdown(&mut self) {}
}

#[tokio::test]
async fn golden_sql() {
    let dir = tempfile::tempdir().expect("tmp");
    write_dataset(dir.path()).await;
    let files: Vec<_> = {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
        let mut v: Vec<_> = std::fs::read_dir(&d).expect("slt dir").map(|e| e.expect("entry").path()).collect();
        v.sort();
        v
    };
    assert!(!files.is_empty());
    for f in files {
        let data = dir.path().to_path_buf();
        let mut runner = sqllogictest::Runner::new(move || {
            let data = data.clone();
            async move { Ok::<_, DbError>(Db { engine: Engine::open(&data).await.map_err(|e| DbError(e.to_string()))? }) }
        });
        runner.run_file_async(&f).await.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}
