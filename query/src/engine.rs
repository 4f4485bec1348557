//! The DataFusion engine over the Parquet dataset: the four tables registered as hive-partitioned
//! listing tables (`views` as `views_versions`, read through the `views` helper view: the latest
//! version of each view), the `hdr_quantile` aggregate, the helper views, and read-only analyst SQL.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::SessionContext;
use schemas::dataset::{DATASET_LOCK, ROLLUP_TABLE};

use schemas::tables::{DIM_COLUMNS, arrow_schema, tables};

use crate::error::Context as _;
use crate::metrics;
use crate::sql::{SqlError, SqlRows, json_rows};
use crate::{QueryConfig, hdr};

/// The name the `views` files are registered under: every version of every view.
pub const VIEWS_VERSIONS: &str = "views_versions";

/// Helper views (created after the tables). Ratios are fractions (0..1) unless named `_pct`.
pub const HELPER_VIEWS: &str = include_str!("helper_views.sql");

pub struct Engine {
    ctx: SessionContext,
    dataset: objstore::Location,
    hours: crate::hours::HourCache,
}

/// An hour partition whose minute rollups stand for its `qoe_window` files
/// ([`Engine::rolled_up_partitions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledUpHour {
    pub dt: String,
    pub hour: String,
    /// Its first millisecond.
    pub start_ms: i64,
    /// A hash of its files' names and sizes in `qoe_window` and `qoe_minute`: another value means
    /// other rows (a late file, a compaction's swap).
    pub files: u64,
}

/// The rolled-up hours of a range, listed under the dataset's read lock, held until this is dropped:
/// queries run with [`Engine::sql_listed`] read the files the listing saw (a compaction's swap in this
/// process waits).
pub struct Listed {
    _files: tokio::sync::RwLockReadGuard<'static, ()>,
    pub hours: Vec<RolledUpHour>,
}

impl Listed {
    /// The hours as (dt, hour).
    pub fn partitions(&self) -> Vec<(String, String)> {
        self.hours.iter().map(|h| (h.dt.clone(), h.hour.clone())).collect()
    }
}

impl Engine {
    /// Registers the dataset under `data_dir/parquet` (created empty if missing) and the helpers, with
    /// the default memory limit of `[query]`.
    pub async fn open(data_dir: &Path) -> crate::Result<Engine> {
        let dataset = objstore::Location::local(data_dir.join("parquet"));
        Engine::open_with_memory_limit(&dataset, QueryConfig::default().memory_limit_bytes).await
    }

    /// [`Engine::open`] where the queries together may hold at most `memory_limit` bytes in their
    /// operators (aggregations, sorts, joins): past it a query fails with "Resources exhausted" instead
    /// of growing the process. Nothing spills to disk.
    /// The dataset is a local directory (created empty if missing) or an S3 prefix
    /// ([`objstore::Location`]).
    pub async fn open_with_memory_limit(
        dataset: &objstore::Location,
        memory_limit: usize,
    ) -> crate::Result<Engine> {
        use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
        // No list-files cache: it would hide the files the pipeline writes after the first query and
        // keep listing the files a compaction deleted. (Files are immutable, so the statistics and
        // footer caches, keyed by path and size/mtime, stay on.)
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_cache_manager(datafusion::execution::cache::cache_manager::CacheManagerConfig::default().with_list_files_cache_limit(0))
            .with_memory_limit(memory_limit, 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()?;
        // Listings leave out files a listed merged file supersedes (a compaction's swap seen from
        // another process: crate::superseded).
        let (url, store) = match dataset.object_store() {
            Some((bucket, store)) => (datafusion::execution::object_store::ObjectStoreUrl::parse(&bucket)?, store),
            None => (
                datafusion::execution::object_store::ObjectStoreUrl::local_filesystem(),
                Arc::new(object_store::local::LocalFileSystem::new()) as Arc<dyn object_store::ObjectStore>,
            ),
        };
        runtime.register_object_store(url.as_ref(), Arc::new(crate::superseded::SkipSuperseded::new(store)));
        let ctx =
            SessionContext::new_with_config_rt(datafusion::prelude::SessionConfig::new(), runtime);
        // `qoe_minute`: the minute rollups compaction writes.
        let rollup = (ROLLUP_TABLE, schemas::tables::qoe_minute());
        for (name, columns) in tables().into_iter().chain([rollup]) {
            let url = match dataset.join(name).local_dir() {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    let dir = std::fs::canonicalize(&dir)?;
                    ListingTableUrl::parse(format!("{}/", dir.display()))?
                }
                None => ListingTableUrl::parse(format!("{}/", dataset.join(name).url()))?,
            };
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(vec![("dt".into(), DataType::Utf8), ("hour".into(), DataType::Utf8)]);
            let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(arrow_schema(columns));
            let name = if name == "views" { VIEWS_VERSIONS } else { name };
            ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
        }
        ctx.register_udaf(hdr::hdr_quantile());
        ctx.register_udaf(hdr::hdr_merge());
        for statement in helper_view_statements() {
            ctx.sql(&statement).await?.collect().await?;
        }
        let hours = crate::hours::HourCache::new(QueryConfig::default().hour_cache_bytes);
        Ok(Engine { ctx, dataset: dataset.clone(), hours })
    }

    /// The closed hours' cache holds at most `bytes` (`query.hour_cache_bytes`; 0: no cache).
    pub fn with_hour_cache(mut self, bytes: usize) -> Engine {
        self.hours = crate::hours::HourCache::new(bytes);
        self
    }

    /// The closed hours' cache of the metrics API ([`crate::hours`]).
    pub fn hour_cache(&self) -> &crate::hours::HourCache {
        &self.hours
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs one SQL statement and collects its rows.
    pub async fn sql(&self, sql: &str) -> crate::Result<Vec<RecordBatch>> {
        // A compaction's file swap in this process waits for running queries, and queries for it.
        let _files = DATASET_LOCK.read().await;
        Ok(again_if_swapped(|| async { self.ctx.sql(sql).await?.collect().await }).await?)
    }

    /// Lists the rolled-up hours of [from, to) ([`Engine::rolled_up_partitions`]) and keeps the dataset's
    /// read lock until the listing is dropped, so that a compaction's swap cannot come between the
    /// listing and the queries run with it.
    pub async fn list_rolled_up(&self, from: i64, to: i64) -> crate::Result<Listed> {
        let files = DATASET_LOCK.read().await;
        let hours = self.rolled_up_hours(from, to).await?;
        Ok(Listed { _files: files, hours })
    }

    /// Runs one statement while `listed`'s read lock is held.
    pub async fn sql_listed(&self, _listed: &Listed, sql: &str) -> crate::Result<Vec<RecordBatch>> {
        let run = again_if_swapped(|| async { self.ctx.sql(sql).await?.collect().await });
        run.await.map_err(crate::Error::from).with_context(|| format!("query failed: {sql}"))
    }

    /// [`Engine::rolled_up_hours`] as (dt, hour).
    pub async fn rolled_up_partitions(&self, from: i64, to: i64) -> crate::Result<Vec<(String, String)>> {
        Ok(self.rolled_up_hours(from, to).await?.into_iter().map(|h| (h.dt, h.hour)).collect())
    }

    /// The hour partitions (dt, hour) touching [from, to) whose `qoe_window` files all have their
    /// minute rollup (`qoe_minute`, same partition and name) and no rollup stands for a file that is
    /// not there: there the rollups hold exactly the rows of `qoe_window`, summed per minute. Only hours
    /// that have ended are listed (a rollup is written once its hour closed): a range of the last
    /// minutes lists at most the hour before; a few hours are listed one by one, more by day.
    pub async fn rolled_up_hours(&self, from: i64, to: i64) -> crate::Result<Vec<RolledUpHour>> {
        use schemas::dataset::{PARTITION_MS, partition_of};
        use std::hash::{Hash, Hasher};
        use std::collections::{BTreeMap, BTreeSet};
        let now = schemas::now_ms();
        let hours: Vec<i64> = (from.div_euclid(PARTITION_MS)..)
            .map(|h| h * PARTITION_MS)
            .take_while(|start| *start < to && start + PARTITION_MS <= now)
            .collect();
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let prefixes: Vec<String> = if hours.len() <= 6 {
            hours.iter().map(|&h| format!("{}/", partition_of(h))).collect()
        } else {
            let days: BTreeSet<String> = hours.iter().map(|&h| format!("dt={}/", schemas::dataset::partition_date(h))).collect();
            days.into_iter().collect()
        };
        // Per `dt=…/hour=…`, the visible Parquet files of one table, with their sizes.
        type Names = BTreeMap<String, BTreeMap<String, u64>>;
        let files = async |table: &str| -> crate::Result<Names> {
            let mut out = Names::new();
            for prefix in &prefixes {
                for entry in self.dataset.list(&format!("{table}/{prefix}")).await? {
                    let Some((dir, name)) = entry.key.strip_prefix(&format!("{table}/")).and_then(|k| k.rsplit_once('/')) else { continue };
                    if name.ends_with(".parquet") && !name.starts_with('.') {
                        out.entry(dir.to_owned()).or_default().insert(name.to_owned(), entry.size);
                    }
                }
            }
            Ok(out)
        };
        let (raw, rollups) = (files("qoe_window").await?, files(ROLLUP_TABLE).await?);
        let wanted: BTreeMap<String, i64> = hours.iter().map(|&h| (partition_of(h), h)).collect();
        // The same names in both tables (a twin's size is its own).
        let same_names = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| a.keys().eq(b.keys());
        Ok(raw
            .iter()
            .filter_map(|(dir, names)| {
                let start_ms = *wanted.get(dir)?;
                let twins = rollups.get(dir).filter(|r| same_names(names, r))?;
                let (dt, hour) = dir.strip_prefix("dt=")?.split_once("/hour=")?;
                let mut files = std::hash::DefaultHasher::new();
                (names, twins).hash(&mut files);
                Some(RolledUpHour { dt: dt.to_owned(), hour: hour.to_owned(), start_ms, files: files.finish() })
            })
            .collect())
    }

    /// Runs an analyst's query: a read-only statement (no DDL, DML or statements such as SET; the
    /// context has no URL or file tables), at most `max_rows + 1` rows (so a caller can tell it was cut),
    /// within `timeout_ms`.
    pub async fn read_only_sql(&self, sql: &str, max_rows: usize, timeout_ms: u64) -> Result<SqlRows, SqlError> {
        use SqlError::{Invalid, Timeout};
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = self.ctx.sql_with_options(sql, options).await.map_err(|e| Invalid(e.to_string()))?;
        let df = df.limit(0, Some(max_rows + 1)).map_err(|e| Invalid(e.to_string()))?;
        let columns = df.schema().fields().iter().map(|f| f.name().clone()).collect();
        let _files = DATASET_LOCK.read().await;
        let run = again_if_swapped(|| df.clone().collect());
        let batches = match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), run).await {
            Err(_) => return Err(Timeout(timeout_ms)),
            Ok(Err(e)) if is_resources_exhausted(&e) => return Err(SqlError::ResourcesExhausted(e.to_string())),
            Ok(r) => r.map_err(|e| Invalid(e.to_string()))?,
        };
        let rows = json_rows(&batches).map_err(|e| Invalid(format!("could not encode rows: {e}")))?;
        Ok(SqlRows { columns, rows })
    }
}

/// How many times a query is planned and run when a file it listed was gone when read.
const SWAPPED_ATTEMPTS: u32 = 4;

/// Runs `query` again (at most [`SWAPPED_ATTEMPTS`] times in all, 10 ms more apart each time) while it
/// fails because a Parquet file it listed is gone: a compaction in another process (the pipeline, when
/// this is `qoeflow query` or the query server) deleted the inputs of a merged file between the query's
/// listing and its read. Each run lists the files again (no list-files cache), so it reads the merged
/// file instead. Within `qoeflow serve`, [`DATASET_LOCK`] already keeps swaps and queries apart.
async fn again_if_swapped<T, F>(mut query: impl FnMut() -> F) -> datafusion::error::Result<T>
where
    F: std::future::Future<Output = datafusion::error::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match query().await {
            Err(e) if attempt < SWAPPED_ATTEMPTS && is_file_gone(&e) => {
                tracing::debug!(attempt, error = %e, "a listed file was gone (a compaction swapped it): querying again");
                tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a query failed because a file was not found (anywhere in its chain of causes).
fn is_file_gone(e: &datafusion::error::DataFusionError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(datafusion::error::DataFusionError::ObjectStore(os)) = err.downcast_ref() {
            if matches!(**os, object_store::Error::NotFound { .. }) {
                return true;
            }
        }
        if matches!(err.downcast_ref(), Some(object_store::Error::NotFound { .. })) {
            return true;
        }
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Whether a query failed for want of memory (the engine's limit).
pub fn is_resources_exhausted(e: &datafusion::error::DataFusionError) -> bool {
    matches!(e.find_root(), datafusion::error::DataFusionError::ResourcesExhausted(_))
}

/// The helper view statements, with the dimension list filled in.
pub fn helper_view_statements() -> Vec<String> {
    let dims = DIM_COLUMNS.join(", ");
    HELPER_VIEWS
        .split(';')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && !s.lines().all(|l| l.trim_start().starts_with("--")))
        .map(|s| {
            s.replace("{dims}", &dims)
                .replace("{metrics}", &metrics::select_list())
                .replace("{views_columns}", &schemas::tables::views().iter().map(|c| c.name).collect::<Vec<_>>().join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another process's compaction replaces files while queries run (here: a file renamed by a hard
    /// link and a delete every 20 ms, a hundred times): a query that listed a file gone when it reads it
    /// lists again and answers; none fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_outlive_files_swapped_under_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let dataset = objstore::Location::local(dir.path().join("parquet"));
        let engine = Engine::open_with_memory_limit(&dataset, 64 << 20).await.expect("engine");
        let part = dir.path().join("parquet/qoe_window/dt=2026-12-04/hour=00");
        std::fs::create_dir_all(&part).expect("partition");
        let schema = arrow_schema(schemas::tables::qoe_window());
        let file = std::fs::File::create(part.join("part-0.parquet")).expect("file");
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).expect("writer");
        writer.write(&RecordBatch::new_empty(schema)).expect("write");
        writer.close().expect("close");

        let swaps = std::thread::spawn(move || {
            for k in 0..100 {
                std::fs::hard_link(part.join(format!("part-{k}.parquet")), part.join(format!("part-{}.parquet", k + 1))).expect("link");
                std::fs::remove_file(part.join(format!("part-{k}.parquet"))).expect("delete");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let mut queries = 0;
        while !swaps.is_finished() {
            let batches = engine.sql("SELECT count(*) AS n FROM qoe_window").await.unwrap_or_else(|e| panic!("query {queries} failed: {e:#}"));
            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
            queries += 1;
        }
        swaps.join().expect("swaps");
        assert!(queries >= 50, "only {queries} queries ran beside the swaps");
    }

    /// A Parquet file of `rows` rows of `qoe_window` (zeros and empty strings).
    fn window_rows(path: &Path, rows: usize) {
        use datafusion::arrow::array::{ArrayRef, Int64Array};
        use datafusion::arrow::compute::cast;
        let schema = arrow_schema(schemas::tables::qoe_window());
        let zeros = Int64Array::from(vec![0i64; rows]);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Binary => cast(&cast(&zeros, &DataType::Utf8).expect("utf8"), &DataType::Binary).expect("binary"),
                t => cast(&zeros, t).expect("cast"),
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).expect("file"), schema, None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
    }

    /// Another process's compaction between publishing its merged file and deleting the inputs: a
    /// listing holds both, and the inputs' rows must not count twice.
    #[tokio::test]
    async fn a_merged_file_and_the_inputs_it_covers_count_once() {
        use datafusion::arrow::array::AsArray;
        use schemas::dataset::{file_name, merged_file_name};
        let dir = tempfile::tempdir().expect("tmp");
        let engine = Engine::open_with_memory_limit(&objstore::Location::local(dir.path().join("parquet")), 64 << 20).await.expect("engine");
        let part = dir.path().join("parquet/qoe_window/dt=2026-12-04/hour=00");
        std::fs::create_dir_all(&part).expect("partition");
        // Epochs 1 and 2 merged (5 rows) beside their inputs; epoch 3 not merged; another source's epoch 1.
        for (name, rows) in [(file_name("w", 1), 2), (file_name("w", 2), 3), (merged_file_name("w", 1, 2), 5), (file_name("w", 3), 7), (file_name("x", 1), 11)] {
            window_rows(&part.join(name), rows);
        }
        for sql in ["SELECT count(*) AS n FROM qoe_window", "SELECT count(*) AS n FROM qoe_window WHERE dt = '2026-12-04' AND hour = '00'"] {
            let batches = engine.sql(sql).await.expect("query");
            let n = batches[0].column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0);
            assert_eq!(n, 5 + 7 + 11, "{sql}");
        }
    }
}
