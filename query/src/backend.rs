//! Two backends behind the metrics API: the Parquet dataset through DataFusion (the embedded default)
//! and ClickHouse (production). Both answer the same questions: sums of `qoe_window` columns and
//! merged start-time quantiles, over a time range with dimension filters, optionally per time bucket
//! and per dimension value. Ratios are derived from the sums by [`crate::metrics::derive`] for both.
//! On Parquet, sums and histograms over whole minutes of rolled-up hours come from the minute rollups
//! (`qoe_minute`, written by compaction: `docs/architecture.md` "Rollups"), everything else from
//! `qoe_window`. Ad-hoc SQL's types are in [`crate::sql`].

use std::sync::Arc;

use serde_json::{Map, Value};

use schemas::dataset::{PARTITION_MS, ROLLUP_MS, ROLLUP_SLOT_MS, ROLLUP_TABLE};
use schemas::tables::ROLLUP_SLOT_COLUMNS;
use schemas::tables::ClickHouseConfig;

use crate::clickhouse::ClickHouseReader;
use crate::engine::{Engine, Listed, RolledUpHour};
use crate::hours::Partial;
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

pub use crate::metrics::AggRow;

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
                    .context("opening the Parquet dataset")?
                    .with_hour_cache(config.hour_cache_bytes);
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

    /// The select list and group keys of an aggregation: the keys (`t`, `grp`), then the sums
    /// (`s_<name>`), then the quantiles (`q_<name>`) or, for [`Output::Partial`], the merged
    /// histograms (`hist`, `retract`: [`crate::hours::Partial`]).
    /// `windows`: with the quantiles, each bucket's first and last window start too, for steps up to
    /// [`ONE_QUERY_STEP_MS`] (not over rollups: a rollup row stands for six windows).
    fn select_list(&self, q: &AggQuery, active_only: bool, output: Output, windows: bool) -> (Vec<String>, Vec<&'static str>) {
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
            match output {
                Output::Partial => select.push(format!("hdr_merge(startup_hist) AS hist, hdr_merge({}) AS retract", schemas::tables::HISTOGRAM_RETRACT_COLUMN)),
                Output::Final => {
                    select.push((d.quantiles)());
                    if windows && q.bucket_ms.is_some_and(|step| step <= ONE_QUERY_STEP_MS) {
                        // Which windows each bucket holds (a rollup row would stand for six: not here).
                        select.push(format!("min({w}) AS w_first, max({w}) AS w_last", w = d.window_start_ms));
                    }
                }
            }
        }
        (select, keys)
    }

    /// The aggregation's SQL; `active_only` sums only `active_views` (and keeps groups with some).
    /// `rolled_up` (Parquet only): hour partitions whose minute rollups stand for their `qoe_window`
    /// files ([`Engine::rolled_up_partitions`]), never read from `qoe_window` but for the range's
    /// ragged ends; whole minutes of the range in `from_rollups` (some of them: the rest are answered
    /// otherwise, by the closed hours' cache) are read from `qoe_minute`, everything else from
    /// `qoe_window`. [`Output::Partial`] selects histograms and leaves `top` to the caller.
    fn aggregate_sql(&self, q: &AggQuery, active_only: bool, rolled_up: &[(String, String)], from_rollups: &[(String, String)], output: Output) -> String {
        let d = self.dialect();
        let (select, keys) = self.select_list(q, active_only, output, rolled_up.is_empty());
        let filters = filter_clauses(q, &d);
        let mut sql = if rolled_up.is_empty() {
            let mut clauses = vec![(d.time_ge)(q.from), (d.time_lt)(q.to)];
            if matches!(self, Backend::DataFusion(_)) {
                // Prune hive partitions (dt is a day; the range's last millisecond is to - 1).
                clauses.push(days_sql(q));
                if let Some(hours) = range_hours(q) {
                    // Listing only the range's hours is cheaper than pruning a day's.
                    clauses.push(partitions_sql(hours.iter()));
                }
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
            let union = rolled_up_union(q, &d, rolled_up, if active_only { &[] } else { from_rollups }, &filters, &columns);
            format!("SELECT {}\nFROM ({union}) AS w", select.join(",\n    "))
        };
        if !keys.is_empty() {
            sql.push_str(&format!("\nGROUP BY {}", keys.join(", ")));
            if active_only {
                sql.push_str("\nHAVING sum(active_views) > 0");
            }
        }
        if let (Some(n), Output::Final) = (q.top, output) {
            sql.push_str(&format!("\nORDER BY s_attempts DESC, grp\nLIMIT {n}"));
        }
        sql
    }

    /// The partial aggregate of one whole rolled-up hour, from its rollups alone: sums and histograms
    /// ([`Output::Partial`]) or, `active_only`, the slots ([`Backend::slots_sql`]).
    /// Every row of the hour's partition counts, as in a range that holds the whole hour.
    fn hour_sql(&self, q: &AggQuery, active_only: bool, hour: &RolledUpHour) -> String {
        let d = self.dialect();
        let mut clauses = vec![partitions_sql([(hour.dt.clone(), hour.hour.clone())].iter())];
        clauses.extend(filter_clauses(q, &d));
        if active_only {
            return self.slots_sql_where(q, clauses);
        }
        let (select, keys) = self.select_list(q, false, Output::Partial, false);
        let mut sql = format!("SELECT {}\nFROM {ROLLUP_TABLE}\nWHERE {}", select.join(",\n    "), clauses.join(" AND "));
        if !keys.is_empty() {
            sql.push_str(&format!("\nGROUP BY {}", keys.join(", ")));
        }
        sql
    }

    /// The active views per window of the whole minutes of rolled-up hours, from the rollups' slots:
    /// one row per (minute, group) with `a0`…, the sums of `active_s0`….
    fn slots_sql(&self, q: &AggQuery, rolled_up: &[(String, String)]) -> String {
        let d = self.dialect();
        self.slots_sql_where(q, rollup_clauses(q, &d, rolled_up, &filter_clauses(q, &d)))
    }

    /// [`Backend::slots_sql`] of the `qoe_minute` rows that meet `clauses`.
    fn slots_sql_where(&self, q: &AggQuery, clauses: Vec<String>) -> String {
        let mut select = vec!["CAST(window_start AS BIGINT) AS t".to_owned()];
        let mut keys = vec!["t"];
        if let Some(g) = &q.group_by {
            select.push(format!("{g} AS grp"));
            keys.push("grp");
        }
        select.extend(ROLLUP_SLOT_COLUMNS.iter().enumerate().map(|(i, c)| format!("sum({c}) AS a{i}")));
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
                let listed = engine.list_rolled_up(q.from, q.to).await?;
                let rolled = listed.partitions();
                // Whole hours of the range come from the closed hours' cache (computed on a miss).
                let whole: Vec<&RolledUpHour> = match engine.hour_cache().enabled() {
                    true => listed.hours.iter().filter(|h| h.start_ms >= q.from && h.start_ms + PARTITION_MS <= q.to).collect(),
                    false => Vec::new(),
                };
                if !whole.is_empty() {
                    if let Some(rows) = self.aggregate_by_hours(engine, &listed, &whole, q, active_only).await? {
                        return Ok(rows);
                    }
                }
                let sql = self.aggregate_sql(q, active_only, &rolled, &rolled, Output::Final);
                let raw = json_rows(&engine.sql_listed(&listed, &sql).await?)?;
                if active_only && !rolled.is_empty() {
                    from_slots = active_of_slots(&json_rows(&engine.sql_listed(&listed, &self.slots_sql(q, &rolled)).await?)?)?;
                }
                raw
            }
            Backend::DataFusion(engine) => {
                let sql = self.aggregate_sql(q, active_only, &[], &[], Output::Final);
                json_rows(&engine.sql(&sql).await.with_context(|| format!("query failed: {sql}"))?)?
            }
            Backend::ClickHouse(ch) => {
                let sql = self.aggregate_sql(q, active_only, &[], &[], Output::Final);
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

    /// [`Backend::run_aggregate`] over rolled-up hours of which `whole` lie wholly in the range: their
    /// partial aggregates come from the closed hours' cache (each missing one is queried from its
    /// rollups alone and kept), the rest of the range (other hours, ragged ends) is queried as partials
    /// too, and all are merged ([`crate::hours::merge`]), cut to `top`, then given their quantiles.
    /// None when the shape's hours are too large to keep ([`crate::hours::HourCache::insert`]): the
    /// caller answers with one query.
    async fn aggregate_by_hours(&self, engine: &Engine, listed: &Listed, whole: &[&RolledUpHour], q: &AggQuery, active_only: bool) -> crate::Result<Option<Vec<AggRow>>> {
        let rolled = listed.partitions();
        let in_whole = |p: &(String, String)| whole.iter().any(|h| h.dt == p.0 && h.hour == p.1);
        let partly: Vec<(String, String)> = rolled.iter().filter(|p| !in_whole(p)).cloned().collect();
        // The query's shape: what an hour's partial depends on besides its files.
        let shape = format!("active={active_only} bucket={:?} group={:?} filters={:?}", q.bucket_ms, q.group_by, q.filters);
        if engine.hour_cache().too_large(&shape) {
            return Ok(None);
        }
        let mut hours = Vec::new();
        for h in whole {
            let key = crate::hours::Key { dt: h.dt.clone(), hour: h.hour.clone(), files: h.files, shape: shape.clone() };
            let parts = match engine.hour_cache().get(&key) {
                Some(parts) => parts,
                None => {
                    let rows = json_rows(&engine.sql_listed(listed, &self.hour_sql(q, active_only, h)).await?)?;
                    let parts = Arc::new(match active_only {
                        true => active_of_slots(&rows)?.into_iter().map(Partial::of_row).collect::<Vec<_>>(),
                        false => rows.iter().map(partial_row).collect::<crate::Result<_>>()?,
                    });
                    if !engine.hour_cache().insert(key, parts.clone(), whole.len()) {
                        return Ok(None);
                    }
                    parts
                }
            };
            hours.push(parts);
        }
        // The rest of the range; no key and no row gives one row of zeros, like one query over all.
        let rest = json_rows(&engine.sql_listed(listed, &self.aggregate_sql(q, active_only, &rolled, &partly, Output::Partial)).await?)?;
        let mut rest = rest.iter().map(partial_row).collect::<crate::Result<Vec<_>>>()?;
        if active_only && !partly.is_empty() {
            let slots = json_rows(&engine.sql_listed(listed, &self.slots_sql(q, &partly)).await?)?;
            rest.extend(active_of_slots(&slots)?.into_iter().map(Partial::of_row));
        }
        if active_only {
            // Groups with some active views, like the query's HAVING.
            let active = sums().position(|c| c == "active_views").context("active_views is a window sum")?;
            rest.retain(|p| p.sums[active] > 0);
        }
        crate::hours::merge(rest.iter().chain(hours.iter().flat_map(|h| h.iter())), q.top, !active_only).map(Some)
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

/// What an aggregation's SQL selects besides keys and sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// The quantiles.
    Final,
    /// The merged histograms, to merge further ([`crate::hours`]); no `top` cut.
    Partial,
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

/// Ranges over at most this many hours name their hour partitions (positively: cheaper to prune than
/// a day's partitions less some, ~10 ms of a query over a day's files) instead of only their days.
const NAMED_HOURS: i64 = 48;

/// The hour partitions (dt, hour) of `q`'s range, when there are at most [`NAMED_HOURS`].
fn range_hours(q: &AggQuery) -> Option<Vec<(String, String)>> {
    use schemas::dataset::partition_of;
    let (first, last) = (q.from.div_euclid(PARTITION_MS), (q.to - 1).div_euclid(PARTITION_MS));
    if last - first >= NAMED_HOURS {
        return None;
    }
    (first..=last)
        .map(|h| {
            let p = partition_of(h * PARTITION_MS);
            let (dt, hour) = p.strip_prefix("dt=")?.split_once("/hour=")?;
            Some((dt.to_owned(), hour.to_owned()))
        })
        .collect()
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

/// The rows of `q`'s range from `qoe_minute` where `from_rollups` partitions have whole minutes of it,
/// and from `qoe_window` elsewhere, as one `UNION ALL` (same columns; each branch prunes its partitions):
/// - minutes of `from_rollups` hours that lie wholly in the range, from the rollups;
/// - windows of hours not `rolled_up`, from `qoe_window`;
/// - windows of rolled-up hours outside those whole minutes (the range's ragged ends), from `qoe_window`.
///
/// Whole minutes of rolled-up hours not in `from_rollups` are not read: the caller answers them
/// otherwise (the slots of the rollups; the closed hours' cache). `columns` are read from both tables.
fn rolled_up_union(q: &AggQuery, d: &Dialect, rolled_up: &[(String, String)], from_rollups: &[(String, String)], filters: &[String], columns: &[&str]) -> String {
    let (first_minute, end_minute) = whole_minutes(q);
    let rolled = partitions_sql(rolled_up.iter());
    let select = |table: &str, clauses: Vec<String>| format!("SELECT {} FROM {table} WHERE {}", columns.join(", "), clauses.join(" AND "));
    let windows = |mut clauses: Vec<String>| {
        clauses.splice(0..0, [(d.time_ge)(q.from), (d.time_lt)(q.to), days_sql(q)]);
        clauses.extend(filters.iter().cloned());
        select("qoe_window", clauses)
    };
    let mut branches = Vec::new();
    if !from_rollups.is_empty() {
        branches.push(select(ROLLUP_TABLE, rollup_clauses(q, d, from_rollups, filters)));
    }
    // Hours not rolled up: named when the range's hours are few enough, else all but the rolled-up.
    let others = match range_hours(q) {
        Some(hours) => partitions_sql(hours.iter().filter(|p| !rolled_up.contains(p))),
        None => format!("NOT {rolled}"),
    };
    branches.push(windows(vec![others]));
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

/// A row of a partial aggregate ([`Output::Partial`]): [`agg_row`]'s keys and sums, and the merged
/// start-time histograms (`hist`, `retract`: `hdr_merge`, hex in JSON; none when absent).
fn partial_row(m: &Map<String, Value>) -> crate::Result<Partial> {
    let bytes = |key: &str| -> crate::Result<Vec<u8>> {
        match m.get(key).and_then(Value::as_str) {
            None => Ok(Vec::new()),
            Some(h) => crate::clickhouse::hex_decode(h).with_context(|| format!("{key} is not hex")),
        }
    };
    Ok(Partial { hist: bytes("hist")?, retract: bytes("retract")?, ..Partial::of_row(agg_row(m)?) })
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
