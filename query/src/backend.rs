//! Two backends behind the metrics API: the Parquet dataset through DataFusion (the embedded default)
//! and ClickHouse (production). Both answer the same questions: sums of `qoe_window` columns and
//! merged start-time quantiles, over a time range with dimension filters, optionally per time bucket
//! and per dimension value. Ratios are derived from the sums by [`crate::metrics::derive`] for both.
//! On Parquet, sums and histograms over whole minutes of rolled-up hours come from the minute rollups
//! (`qoe_minute`, written by compaction: `docs/architecture.md` "Rollups"), everything else from
//! `qoe_window`. Ad-hoc SQL's types are in [`crate::sql`].

use std::sync::Arc;

use serde_json::{Map, Value};

use schemas::dataset::{ROLLUP_MS, ROLLUP_SLOT_MS, ROLLUP_TABLE};
use schemas::tables::ROLLUP_SLOT_COLUMNS;
use schemas::tables::ClickHouseConfig;

use crate::clickhouse::ClickHouseReader;
use crate::engine::Engine;
use crate::error::Context as _;
use crate::metrics::{QUANTILES, sum_count, sums};
use crate::sql::{SqlError, SqlRows, json_rows};

/// One aggregation over `qoe_window`. Dimension names in `filters`/`group_by` are validated by the caller.
#[derive(Debug, Clone, Default)]
pub struct AggQuery {
    /// Window start range [from, to), epoch ms.
    pub from: i64,
    pub to: i64,
    /// `dimension = value`, all of them.
    pub filters: Vec<(String, String)>,
    /// One row per time bucket of this length (aligned to multiples of it).
    pub bucket_ms: Option<i64>,
    /// One row per value of this dimension.
    pub group_by: Option<String>,
    /// Keep the `n` groups with the most attempts (ties by value).
    pub top: Option<u32>,
}

/// One group's sums (in [`crate::metrics::sums`] order) and quantiles (in [`QUANTILES`] order).
#[derive(Debug, Clone, PartialEq)]
pub struct AggRow {
    pub bucket: Option<i64>,
    pub group: Option<String>,
    pub sums: Vec<i64>,
    pub quantiles: Vec<Option<f64>>,
    /// The first and last window start of the bucket's rows (aggregations of `qoe_window` alone, by
    /// buckets of up to [`ONE_QUERY_STEP_MS`]; `None` otherwise): when they are equal, the bucket is
    /// one window.
    pub windows: Option<(i64, i64)>,
}

impl AggRow {
    /// Every metric of this group: the sums, the quantiles and the ratios derived from the sums.
    pub fn metrics(&self) -> Map<String, Value> {
        crate::metrics::derive(&self.sums, &self.quantiles)
    }
}

pub use crate::config::BackendKind;

#[derive(Clone)]
pub enum Backend {
    DataFusion(Arc<Engine>),
    ClickHouse(Arc<ClickHouseReader>),
}

/// How the two SQL dialects spell the pieces of an aggregation.
struct Dialect {
    from: String,
    time_ge: fn(i64) -> String,
    time_lt: fn(i64) -> String,
    bucket: fn(i64) -> String,
    quote: fn(&str) -> String,
    quantiles: fn() -> String,
    /// `window_start` as epoch ms.
    window_start_ms: &'static str,
}

impl Backend {
    /// Opens the configured backend: the Parquet dataset, or ClickHouse.
    pub async fn open(
        config: &crate::QueryConfig,
        dataset: &objstore::Location,
        clickhouse: &ClickHouseConfig,
    ) -> crate::Result<Backend> {
        Ok(match config.backend {
            BackendKind::Parquet => {
                let engine = Engine::open_with_memory_limit(dataset, config.memory_limit_bytes)
                    .await
                    .context("opening the Parquet dataset")?;
                Backend::DataFusion(Arc::new(engine))
            }
            BackendKind::ClickHouse => Backend::ClickHouse(Arc::new(ClickHouseReader::new(clickhouse)?)),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::DataFusion(_) => "parquet",
            Backend::ClickHouse(_) => "clickhouse",
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Backend::DataFusion(_) => Dialect {
                from: "qoe_window".into(),
                time_ge: |ms| format!("window_start >= to_timestamp_millis({ms})"),
                time_lt: |ms| format!("window_start < to_timestamp_millis({ms})"),
                bucket: |step| format!("(CAST(window_start AS BIGINT) / {step}) * {step}"),
                quote: |v| format!("'{}'", v.replace('\'', "''")),
                quantiles: || {
                    QUANTILES.iter().map(|(n, q)| format!("hdr_quantile(startup_hist, startup_hist_retract, {q:?}) AS q_{n}")).collect::<Vec<_>>().join(", ")
                },
                window_start_ms: "CAST(window_start AS BIGINT)",
            },
            Backend::ClickHouse(ch) => Dialect {
                // FINAL: replays may have written a row twice until ReplacingMergeTree merges them.
                from: format!("{}.qoe_window FINAL", ch.database()),
                time_ge: |ms| format!("window_start >= {ms}"),
                time_lt: |ms| format!("window_start < {ms}"),
                bucket: |step| format!("intDiv(window_start, {step}) * {step}"),
                quote: crate::clickhouse::quote,
                // ClickHouse cannot merge HdrHistograms: fetch them and merge here.
                // Rows that add or retract a start: the histograms, and the corrections' retractions.
                quantiles: || {
                    "groupArrayIf(hex(startup_hist), starts != 0 OR startup_hist_retract != '') AS hists, \
                     groupArrayIf(hex(startup_hist_retract), startup_hist_retract != '') AS retracts"
                        .into()
                },
                window_start_ms: "window_start",
            },
        }
    }

    /// The aggregation's SQL; `active_only` sums only `active_views` (and keeps groups with some).
    /// `rolled_up` (Parquet only): hour partitions whose minute rollups stand for their `qoe_window`
    /// files ([`Engine::rolled_up_partitions`]); whole minutes of the range in them are read from
    /// `qoe_minute`, everything else from `qoe_window`.
    fn aggregate_sql(&self, q: &AggQuery, active_only: bool, rolled_up: &[(String, String)]) -> String {
        let d = self.dialect();
        let mut select = Vec::new();
        let mut keys = Vec::new();
        if let Some(step) = q.bucket_ms {
            select.push(format!("{} AS t", (d.bucket)(step)));
            keys.push("t");
        }
        if let Some(g) = &q.group_by {
            select.push(format!("{g} AS grp"));
            keys.push("grp");
        }
        if active_only {
            select.push("sum(active_views) AS s_active_views".into());
        } else {
            select.extend(sums().map(|c| format!("sum({c}) AS s_{c}")));
            select.push((d.quantiles)());
            if q.bucket_ms.is_some_and(|step| step <= ONE_QUERY_STEP_MS) && rolled_up.is_empty() {
                // Which windows each bucket holds (a rollup row would stand for six: not here).
                select.push(format!("min({w}) AS w_first, max({w}) AS w_last", w = d.window_start_ms));
            }
        }
        let filters = filter_clauses(q, &d);
        let mut sql = if rolled_up.is_empty() {
            let mut clauses = vec![(d.time_ge)(q.from), (d.time_lt)(q.to)];
            if matches!(self, Backend::DataFusion(_)) {
                // Prune hive partitions (dt is a day; the range's last millisecond is to - 1).
                clauses.push(format!("dt >= '{}' AND dt <= '{}'", schemas::dataset::partition_date(q.from), schemas::dataset::partition_date(q.to - 1)));
            }
            clauses.extend(filters);
            format!("SELECT {}\nFROM {}\nWHERE {}", select.join(",\n    "), d.from, clauses.join(" AND "))
        } else {
            // The columns the outer query reads, from either table.
            let mut columns: Vec<&str> = vec!["window_start"];
            columns.extend(q.group_by.as_deref());
            if active_only {
                columns.push("active_views");
            } else {
                for c in sums().chain(["startup_hist", schemas::tables::HISTOGRAM_RETRACT_COLUMN]) {
                    columns.push(c);
                }
            }
            format!("SELECT {}\nFROM ({}) AS w", select.join(",\n    "), rolled_up_union(q, &d, rolled_up, &filters, &columns, !active_only))
        };
        if !keys.is_empty() {
            sql.push_str(&format!("\nGROUP BY {}", keys.join(", ")));
            if active_only {
                sql.push_str("\nHAVING sum(active_views) > 0");
            }
        }
        if let Some(n) = q.top {
            sql.push_str(&format!("\nORDER BY s_attempts DESC, grp\nLIMIT {n}"));
        }
        sql
    }

    /// The active views per window of the whole minutes of rolled-up hours, from the rollups' slots:
    /// one row per (minute, group) with `a0`…, the sums of `active_s0`….
    fn slots_sql(&self, q: &AggQuery, rolled_up: &[(String, String)]) -> String {
        let d = self.dialect();
        let mut select = vec!["CAST(window_start AS BIGINT) AS t".to_owned()];
        let mut keys = vec!["t"];
        if let Some(g) = &q.group_by {
            select.push(format!("{g} AS grp"));
            keys.push("grp");
        }
        select.extend(ROLLUP_SLOT_COLUMNS.iter().enumerate().map(|(i, c)| format!("sum({c}) AS a{i}")));
        let clauses = rollup_clauses(q, &d, rolled_up, &filter_clauses(q, &d));
        format!("SELECT {}\nFROM {ROLLUP_TABLE}\nWHERE {}\nGROUP BY {}", select.join(", "), clauses.join(" AND "), keys.join(", "))
    }

    /// Runs an aggregation. Rows come sorted: by attempts (descending) then value with `top`, otherwise
    /// by bucket then value. A query with no keys over no rows gives one row of zeros.
    pub async fn aggregate(&self, q: &AggQuery) -> crate::Result<Vec<AggRow>> {
        self.run_aggregate(q, false).await
    }

    async fn run_aggregate(&self, q: &AggQuery, active_only: bool) -> crate::Result<Vec<AggRow>> {
        let mut from_slots = Vec::new();
        let raw = match self {
            // Rollups serve sums and histograms over whole minutes, in buckets of whole minutes, and
            // the active views of each window (their slots, read by a second query).
            Backend::DataFusion(engine) if active_only || q.bucket_ms.is_none_or(|b| b % ROLLUP_MS == 0) => {
                let mut results = engine
                    .sqls_over_rollups(q.from, q.to, |rolled_up| {
                        let mut sqls = vec![self.aggregate_sql(q, active_only, rolled_up)];
                        if active_only && !rolled_up.is_empty() {
                            sqls.push(self.slots_sql(q, rolled_up));
                        }
                        sqls
                    })
                    .await?
                    .into_iter();
                let raw = json_rows(&results.next().unwrap_or_default())?;
                if let Some(slots) = results.next() {
                    from_slots = active_of_slots(&json_rows(&slots)?)?;
                }
                raw
            }
            Backend::DataFusion(engine) => {
                let sql = self.aggregate_sql(q, active_only, &[]);
                json_rows(&engine.sql(&sql).await.with_context(|| format!("query failed: {sql}"))?)?
            }
            Backend::ClickHouse(ch) => {
                let sql = self.aggregate_sql(q, active_only, &[]);
                ch.query_rows(&sql).await.with_context(|| format!("query failed: {sql}"))?
            }
        };
        let mut rows = raw.iter().map(agg_row).collect::<crate::Result<Vec<_>>>()?;
        rows.extend(from_slots);
        match q.top {
            Some(_) => rows.sort_by(|a, b| b.sums[0].cmp(&a.sums[0]).then_with(|| a.group.cmp(&b.group))),
            None => rows.sort_by(|a, b| (a.bucket, &a.group).cmp(&(b.bucket, &b.group))),
        }
        Ok(rows)
    }

    /// The aggregation `q` (by buckets) and the active views per window of its range, as
    /// [`Backend::aggregate`] and [`Backend::active_per_window`] answer them. With steps up to
    /// [`ONE_QUERY_STEP_MS`] (a live dashboard's last minutes) one query answers both when every bucket
    /// turns out to hold one window (its rows' active views are that window's); otherwise (windows
    /// shorter than the step) the active views are queried per window after it. With longer steps the
    /// two queries run side by side.
    pub async fn aggregate_with_active(&self, q: &AggQuery) -> crate::Result<(Vec<AggRow>, Vec<(i64, Option<String>, i64)>)> {
        // `top` would cut the rows the active views are taken from.
        if q.bucket_ms.is_some_and(|step| step <= ONE_QUERY_STEP_MS) && q.top.is_none() {
            let rows = self.aggregate(q).await?;
            if let Some(active) = active_of_one_window_buckets(&rows) {
                return Ok((rows, active));
            }
            let active = self.active_per_window(q).await?;
            return Ok((rows, active));
        }
        tokio::try_join!(self.aggregate(q), self.active_per_window(q))
    }

    /// Active views per window (and per `group_by` value), for the windows of the range with any,
    /// ascending by window start: concurrent viewers at window resolution.
    pub async fn active_per_window(&self, q: &AggQuery) -> crate::Result<Vec<(i64, Option<String>, i64)>> {
        // A bucket of 1 ms is the window start itself.
        let per_window = AggQuery { bucket_ms: Some(1), top: None, ..q.clone() };
        let rows = self.run_aggregate(&per_window, true).await?;
        let active = sums().position(|c| c == "active_views").unwrap_or_default();
        Ok(rows.into_iter().map(|r| (r.bucket.unwrap_or_default(), r.group, r.sums[active])).collect())
    }

    /// The alert history (the `alerts` table) with `ts` in [from, to), newest first, at most `limit`
    /// rows; `labels` is parsed back into an object.
    pub async fn alert_history(&self, from: i64, to: i64, limit: u32) -> crate::Result<Vec<Map<String, Value>>> {
        const COLUMNS: &str = "rule, state, severity, metric, group_by, group_value, value, op, threshold, volume, labels, source, seq";
        let rows = match self {
            Backend::DataFusion(engine) => {
                let sql = format!(
                    "SELECT CAST(ts AS BIGINT) AS ts, {COLUMNS}, CAST(active_since AS BIGINT) AS active_since FROM alerts \
                     WHERE ts >= to_timestamp_millis({from}) AND ts < to_timestamp_millis({to}) AND dt >= '{}' AND dt <= '{}' \
                     ORDER BY ts DESC, seq DESC LIMIT {limit}",
                    schemas::dataset::partition_date(from),
                    schemas::dataset::partition_date(to - 1)
                );
                json_rows(&engine.sql(&sql).await.with_context(|| format!("query failed: {sql}"))?)?
            }
            Backend::ClickHouse(ch) => {
                let sql = format!(
                    "SELECT ts, {COLUMNS}, active_since FROM {}.alerts FINAL WHERE ts >= {from} AND ts < {to} ORDER BY ts DESC, seq DESC LIMIT {limit}",
                    ch.database()
                );
                ch.query_rows(&sql).await.with_context(|| format!("query failed: {sql}"))?
            }
        };
        Ok(rows
            .into_iter()
            .map(|mut row| {
                if let Some(Value::String(labels)) = row.get("labels") {
                    let parsed = serde_json::from_str::<Value>(labels).unwrap_or(Value::Null);
                    row.insert("labels".into(), parsed);
                }
                // Floats as floats whichever backend wrote them (one prints 15, the other 15.0).
                for key in ["value", "threshold"] {
                    if let Some(v) = row.get(key).and_then(Value::as_f64) {
                        row.insert(key.into(), Value::from(v));
                    }
                }
                row
            })
            .collect())
    }

    /// Ad-hoc read-only SQL with a row limit and a time limit.
    pub async fn sql(&self, sql: &str, max_rows: usize, timeout_ms: u64) -> Result<SqlRows, SqlError> {
        match self {
            Backend::DataFusion(engine) => engine.read_only_sql(sql, max_rows, timeout_ms).await,
            Backend::ClickHouse(ch) => ch.read_only_sql(sql, max_rows, timeout_ms).await,
        }
    }
}

/// Steps up to this try one query for a bucket's sums and its concurrent viewers: the default window
/// (`pipeline.window_ms`, 10 s), and the step the metrics endpoint picks for ranges up to 40 minutes.
pub const ONE_QUERY_STEP_MS: i64 = 10_000;

/// The active views per window of `rows`, when each row is one window (its first and last window start
/// are the same), ascending by window start like [`Backend::active_per_window`]; `None` otherwise.
fn active_of_one_window_buckets(rows: &[AggRow]) -> Option<Vec<(i64, Option<String>, i64)>> {
    let active = sums().position(|c| c == "active_views")?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (first, last) = r.windows?;
        if first != last {
            return None;
        }
        if r.sums[active] > 0 {
            out.push((first, r.group.clone(), r.sums[active]));
        }
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Some(out)
}

/// `dimension = 'value'` for each filter of `q`.
fn filter_clauses(q: &AggQuery, d: &Dialect) -> Vec<String> {
    q.filters.iter().map(|(dim, value)| format!("{dim} = {}", (d.quote)(value))).collect()
}

/// `(dt = … AND hour = …) OR …` of some partitions ("false" for none).
fn partitions_sql<'a>(set: impl Iterator<Item = &'a (String, String)>) -> String {
    let any: Vec<String> = set.map(|(dt, hour)| format!("(dt = '{dt}' AND hour = '{hour}')")).collect();
    if any.is_empty() { "false".to_owned() } else { format!("({})", any.join(" OR ")) }
}

/// The first and the end (exclusive) of the whole minutes of `q`'s range.
fn whole_minutes(q: &AggQuery) -> (i64, i64) {
    ((q.from + ROLLUP_MS - 1).div_euclid(ROLLUP_MS) * ROLLUP_MS, q.to.div_euclid(ROLLUP_MS) * ROLLUP_MS)
}

/// The days of `q`'s range, for hive partition pruning (the range's last millisecond is to - 1).
fn days_sql(q: &AggQuery) -> String {
    format!("dt >= '{}' AND dt <= '{}'", schemas::dataset::partition_date(q.from), schemas::dataset::partition_date(q.to - 1))
}

/// The `qoe_minute` rows standing for `q`'s range: whole minutes of `rolled_up` partitions.
fn rollup_clauses(q: &AggQuery, d: &Dialect, rolled_up: &[(String, String)], filters: &[String]) -> Vec<String> {
    let (first_minute, end_minute) = whole_minutes(q);
    let mut clauses = vec![(d.time_ge)(first_minute), (d.time_lt)(end_minute), days_sql(q), partitions_sql(rolled_up.iter())];
    clauses.extend(filters.iter().cloned());
    clauses
}

/// The rows of `q`'s range from `qoe_minute` where `rolled_up` partitions have whole minutes of it, and
/// from `qoe_window` elsewhere, as one `UNION ALL` (same columns; each branch prunes its partitions):
/// - minutes of rolled-up hours that lie wholly in the range, from the rollups (unless `!with_rollups`:
///   the caller reads them otherwise);
/// - windows of other hours, from `qoe_window`;
/// - windows of rolled-up hours outside those whole minutes (the range's ragged ends), from `qoe_window`.
///
/// `columns` are read from both tables.
fn rolled_up_union(q: &AggQuery, d: &Dialect, rolled_up: &[(String, String)], filters: &[String], columns: &[&str], with_rollups: bool) -> String {
    let (first_minute, end_minute) = whole_minutes(q);
    let rolled = partitions_sql(rolled_up.iter());
    let select = |table: &str, clauses: Vec<String>| format!("SELECT {} FROM {table} WHERE {}", columns.join(", "), clauses.join(" AND "));
    let windows = |mut clauses: Vec<String>| {
        clauses.splice(0..0, [(d.time_ge)(q.from), (d.time_lt)(q.to), days_sql(q)]);
        clauses.extend(filters.iter().cloned());
        select("qoe_window", clauses)
    };
    let mut branches = Vec::new();
    if with_rollups {
        branches.push(select(ROLLUP_TABLE, rollup_clauses(q, d, rolled_up, filters)));
    }
    branches.push(windows(vec![format!("NOT {rolled}")]));
    // The ragged ends can only be in the partitions of `from` and `to - 1`.
    let edges: Vec<(String, String)> = [q.from, q.to - 1]
        .iter()
        .filter_map(|&t| {
            let p = schemas::dataset::partition_of(t);
            let (dt, hour) = p.strip_prefix("dt=")?.split_once("/hour=")?;
            Some((dt.to_owned(), hour.to_owned()))
        })
        .filter(|p| rolled_up.contains(p))
        .collect();
    if !edges.is_empty() && (first_minute != q.from || end_minute != q.to) {
        let ragged = format!("({} OR {})", (d.time_lt)(first_minute), (d.time_ge)(end_minute));
        branches.push(windows(vec![partitions_sql(edges.iter()), ragged]));
    }
    branches.join("\nUNION ALL\n")
}

/// Rows of [`Backend::slots_sql`] as per-window rows of active views (the windows with any).
fn active_of_slots(rows: &[Map<String, Value>]) -> crate::Result<Vec<AggRow>> {
    let active = sums().position(|c| c == "active_views").context("active_views is a window sum")?;
    let mut out = Vec::new();
    for m in rows {
        let minute = m.get("t").and_then(Value::as_i64).context("a rollup minute is not an integer")?;
        let group = m.get("grp").and_then(Value::as_str).map(str::to_owned);
        for i in 0..ROLLUP_SLOT_COLUMNS.len() {
            let n = m.get(&format!("a{i}")).and_then(Value::as_i64).unwrap_or(0);
            if n > 0 {
                let mut sums = vec![0; sum_count()];
                sums[active] = n;
                out.push(AggRow { bucket: Some(minute + i as i64 * ROLLUP_SLOT_MS), group: group.clone(), sums, quantiles: Vec::new(), windows: None });
            }
        }
    }
    Ok(out)
}

fn agg_row(m: &Map<String, Value>) -> crate::Result<AggRow> {
    let int = |v: &Value| -> Option<i64> { v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) };
    let sums = sums()
        .map(|c| m.get(&format!("s_{c}")).map_or(Some(0), |v| if v.is_null() { Some(0) } else { int(v) }))
        .collect::<Option<Vec<_>>>()
        .context("a sum is not an integer")?;
    let quantiles = match m.get("hists") {
        Some(hists) => crate::clickhouse::quantiles_of_hex(hists, m.get("retracts"))?,
        None => QUANTILES.iter().map(|(n, _)| m.get(&format!("q_{n}")).and_then(Value::as_f64)).collect(),
    };
    let windows = m.get("w_first").and_then(int).zip(m.get("w_last").and_then(int));
    Ok(AggRow {
        bucket: m.get("t").and_then(int),
        group: m.get("grp").and_then(Value::as_str).map(str::to_owned),
        sums,
        quantiles,
        windows,
    })
}
