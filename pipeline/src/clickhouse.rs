//! ClickHouse sink: the same four tables as the Parquet dataset, over HTTP with the official
//! `clickhouse` crate, rows encoded as RowBinary straight from the shared column lists.
//!
//! DDL (`schemas::tables::clickhouse_ddl`) is applied idempotently at start-up and works on ClickHouse
//! 18.16 and current releases. Tables are ReplacingMergeTree keyed on row identity (`view_id, seq` for
//! events, `view_id` for views, `source, epoch, row` for windows and dead letters). The pipeline replays
//! an unfinished epoch over exactly the same input (its intent is saved first), producing identical rows,
//! so after a crash or an outage the tables converge to one copy: read with `FINAL` (or after merges) for
//! exact totals. While the server is down the epoch fails and the pipeline retries it with backoff; the
//! collector keeps accepting into the durable log meanwhile, so nothing is dropped.

use bytes::Bytes;
use schemas::tables::{ClickHouseConfig, clickhouse_ddl, tables};

use crate::rows::{encode_rowbinary, tables_of};
use crate::sessionizer::{Dim, Output};

pub struct ClickHouseSink {
    client: clickhouse::Client,
    database: String,
    dims: Vec<Dim>,
    source: String,
}

impl ClickHouseSink {
    pub fn new(config: &ClickHouseConfig, url: &str, dims: Vec<Dim>, source: &str) -> ClickHouseSink {
        // No default database on the client: DDL creates it, and every statement names it.
        let mut client = clickhouse::Client::default().with_url(url).with_validation(false);
        if let Some(u) = &config.user {
            client = client.with_user(u);
        }
        if let Some(p) = &config.password {
            client = client.with_password(p);
        }
        ClickHouseSink { client, database: config.database.clone(), dims, source: source.to_owned() }
    }

    /// Creates the database and tables if missing.
    pub async fn ensure_schema(&self) -> crate::Result<()> {
        self.client.query(&format!("CREATE DATABASE IF NOT EXISTS {}", self.database)).execute().await?;
        for (table, _) in tables() {
            if let Some(ddl) = clickhouse_ddl(&self.database, table) {
                self.client.query(&ddl).execute().await?;
            }
        }
        Ok(())
    }

    /// Inserts one epoch's rows: per table, one INSERT per [`MAX_DAYS_PER_INSERT`] days of rows.
    pub async fn write_epoch(&self, epoch: u64, out: &Output) -> crate::Result<()> {
        for t in tables_of(out, &self.dims, &self.source, epoch) {
            let (table, columns) = (t.table, t.columns);
            let mut rows: Vec<_> = t.rows.collect();
            rows.sort_by_key(|(t, _)| t.div_euclid(DAY_MS));
            let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
            for chunk in day_chunks(&rows, MAX_DAYS_PER_INSERT) {
                let mut data = Vec::with_capacity(chunk.len() * 128);
                for (_, cells) in chunk {
                    encode_rowbinary(cells, columns, &mut data);
                }
                let sql = format!("INSERT INTO {}.{table} ({}) FORMAT RowBinary", self.database, names.join(", "));
                let mut insert = self.client.insert_formatted_with(sql);
                insert.send(Bytes::from(data)).await?;
                insert.end().await?;
            }
        }
        Ok(())
    }
}

const DAY_MS: i64 = 86_400_000;

/// Tables are partitioned by day, and ClickHouse refuses an INSERT whose rows fall in more than
/// `max_partitions_per_insert_block` partitions (100 by default): one INSERT carries at most this many
/// days (with room for `intDiv` rounding negative times the other way).
const MAX_DAYS_PER_INSERT: usize = 40;

/// Consecutive runs of `rows` (sorted by day) covering at most `max_days` days each.
fn day_chunks<T>(rows: &[(i64, T)], max_days: usize) -> Vec<&[(i64, T)]> {
    let mut chunks = Vec::new();
    let (mut start, mut days, mut last_day) = (0, 0usize, None);
    for (i, (t, _)) in rows.iter().enumerate() {
        let day = t.div_euclid(DAY_MS);
        if last_day != Some(day) {
            if days == max_days {
                chunks.push(&rows[start..i]);
                (start, days) = (i, 0);
            }
            days += 1;
            last_day = Some(day);
        }
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_cover_a_bounded_number_of_days() {
        let rows: Vec<(i64, usize)> = (0..101).flat_map(|d| [(d * DAY_MS, 0), (d * DAY_MS + 5, 1)]).collect();
        let chunks = day_chunks(&rows, 40);
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![80, 80, 42]);
        assert_eq!(chunks.concat(), rows);
        assert!(day_chunks::<()>(&[], 40).is_empty());
    }
}
