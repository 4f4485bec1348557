//! The Parquet dataset's layout, which every writer and reader honours:
//!
//! ```text
//! <root>/<table>/dt=YYYY-MM-DD/hour=HH/part-<source>-e<epoch, 12 digits>.parquet          one epoch
//! <root>/<table>/dt=YYYY-MM-DD/hour=HH/part-<source>-e<first>-<last>.parquet              merged epochs
//! <root>/<table>/dt=YYYY-MM-DD/hour=HH/.part-….parquet.tmp                                never read
//! ```
//!
//! Partitions are hive-style (UTC date and hour of the row's partition time: `event_ms` for events,
//! `end_ms` for views, `window_start` for windows, `recv_ms` for dead letters), so DuckDB, Spark and
//! DataFusion prune on `dt` and `hour` with no qoeflow code. Names are deterministic per (source, epoch):
//! a replay rewrites the same names. See `docs/architecture.md` for the commit rule.

/// Held for reading by queries of the dataset in this process and for writing by a compaction's swap.
pub static DATASET_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// `part-<source>-e`: the prefix of every file of `source`.
pub fn source_prefix(source: &str) -> String {
    format!("part-{source}-e")
}

/// The file one epoch of `source` writes in a partition.
pub fn file_name(source: &str, epoch: u64) -> String {
    format!("part-{source}-e{epoch:012}.parquet")
}

/// The file a compaction of epochs `first..=last` of `source` writes.
pub fn merged_file_name(source: &str, first: u64, last: u64) -> String {
    format!("part-{source}-e{first:012}-{last:012}.parquet")
}

/// The epochs a file of this source holds: `e<N>` or a merged `e<first>-<last>`.
pub fn epochs_of(name: &str, prefix: &str) -> Option<(u64, u64)> {
    let body = name.strip_prefix(prefix)?.strip_suffix(".parquet")?;
    match body.split_once('-') {
        None => body.parse().ok().map(|e| (e, e)),
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
    }
}

/// The source and epochs of a data file's name, `part-<source>-e<epoch>.parquet` or
/// `part-<source>-e<first>-<last>.parquet`; `None` for any other name. For readers that list the
/// dataset without knowing its sources ([`superseded`]).
pub fn source_and_epochs(name: &str) -> Option<(&str, u64, u64)> {
    let body = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (head, tail) = body.rsplit_once('-')?;
    match tail.strip_prefix('e') {
        Some(epoch) => epoch.parse().ok().map(|e| (head, e, e)),
        None => {
            let (source, first) = head.rsplit_once("-e")?;
            Some((source, first.parse().ok()?, tail.parse().ok()?))
        }
    }
}

/// Which of the listed data files (keys or paths, `/`-separated; a bare name is in a directory of its
/// own) a reader must skip: those whose epochs another listed file of the same source in the same
/// directory covers. A compaction publishes its merged file before it deletes the inputs, so for an
/// instant a listing holds both, and counting both would count their rows twice; these are also the
/// files recovery deletes after a crash in between (`pipeline::parquet`, `recover`).
pub fn superseded<'a>(keys: impl IntoIterator<Item = &'a str>) -> std::collections::HashSet<&'a str> {
    // (directory, source, first, last) of each data file.
    let files: Vec<(&str, (&str, &str, u64, u64))> = keys
        .into_iter()
        .filter_map(|key| {
            let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
            let (source, first, last) = source_and_epochs(name)?;
            Some((key, (dir, source, first, last)))
        })
        .collect();
    let mut merged: std::collections::HashMap<(&str, &str), Vec<(u64, u64)>> = std::collections::HashMap::new();
    for (_, (dir, source, first, last)) in &files {
        if first != last {
            merged.entry((dir, source)).or_default().push((*first, *last));
        }
    }
    files
        .iter()
        .filter(|(_, (dir, source, first, last))| {
            merged.get(&(*dir, *source)).is_some_and(|ranges| ranges.iter().any(|&(a, b)| a <= *first && *last <= b && (a, b) != (*first, *last)))
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Start (epoch ms, UTC) of an `.../dt=YYYY-MM-DD/hour=HH` partition directory.
pub fn partition_start(dir: &std::path::Path) -> Option<i64> {
    let hour: i64 = dir.file_name()?.to_str()?.strip_prefix("hour=")?.parse().ok()?;
    let date = dir.parent()?.file_name()?.to_str()?.strip_prefix("dt=")?;
    let mut it = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400_000 + hour * PARTITION_MS)
}

/// A partition of the dataset is one hour (`dt=…/hour=…`).
pub const PARTITION_MS: i64 = 3_600_000;

/// `qoe_minute`: `qoe_window` summed per minute by compaction, one file beside each merged
/// `qoe_window` file of a closed hour, in the same partition and under the same name (its **twin**).
pub const ROLLUP_TABLE: &str = "qoe_minute";
/// The rollup's window length.
pub const ROLLUP_MS: i64 = 60_000;
/// A rollup row keeps the active views of each `qoe_window` window in its minute, in slots
/// `active_s0`… of this length (concurrent viewers are a maximum over windows, not a sum): rollups are
/// written only when the pipeline's windows are a multiple of it that divides a minute.
pub const ROLLUP_SLOT_MS: i64 = 10_000;
pub const ROLLUP_SLOTS: usize = (ROLLUP_MS / ROLLUP_SLOT_MS) as usize;

/// Whether windows of `window_ms` can be rolled up (each one a slot of a minute).
pub fn rollable_window(window_ms: i64) -> bool {
    window_ms > 0 && window_ms % ROLLUP_SLOT_MS == 0 && ROLLUP_MS % window_ms == 0
}

/// The key of a `qoe_window` file's rollup twin (`qoe_window/<partition>/<name>` →
/// `qoe_minute/<partition>/<name>`); None for a key of another table.
pub fn rollup_twin(window_key: &str) -> Option<String> {
    window_key.strip_prefix("qoe_window/").map(|rest| format!("{ROLLUP_TABLE}/{rest}"))
}

/// Whether a key (or a partition directory) is of `qoe_minute`.
pub fn is_rollup(key: &str) -> bool {
    key.strip_prefix(ROLLUP_TABLE).is_some_and(|rest| rest.starts_with('/'))
}

/// `dt=YYYY-MM-DD/hour=HH` of an epoch-ms timestamp (UTC).
pub fn partition_of(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("dt={y:04}-{m:02}-{d:02}/hour={hour:02}")
}

/// The `dt` partition value (YYYY-MM-DD, UTC) of an epoch-ms time.
pub fn partition_date(ms: i64) -> String {
    let p = partition_of(ms);
    p.split('/').next().and_then(|d| d.strip_prefix("dt=")).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn partitions_are_utc_dates_and_hours() {
        assert_eq!(partition_of(0), "dt=1970-01-01/hour=00");
        assert_eq!(partition_of(1_700_000_000_000), "dt=2023-11-14/hour=22");
        assert_eq!(partition_of(951_782_400_000 + 3_600_000 * 5), "dt=2000-02-29/hour=05");
        assert_eq!(partition_of(4_102_444_799_999), "dt=2099-12-31/hour=23");
    }

    #[test]
    fn partition_start_inverts_partition_of() {
        for ms in [0i64, 1_700_000_000_000, 951_782_400_000 + 3_600_000 * 5 + 17, 4_102_444_799_999, 1_795_000_000_123] {
            let dir = PathBuf::from("/x/events").join(partition_of(ms));
            assert_eq!(partition_start(&dir), Some(ms - ms.rem_euclid(3_600_000)), "{ms}");
        }
        assert_eq!(partition_start(Path::new("/x/events/dt=2023-11-14")), None);
    }

    #[test]
    fn file_names_read_back_as_their_source_and_epochs() {
        for source in ["local", "kinesis-shardId-000000000001-e4x9k2", "w"] {
            assert_eq!(source_and_epochs(&file_name(source, 7)), Some((source, 7, 7)));
            assert_eq!(source_and_epochs(&merged_file_name(source, 3, 90)), Some((source, 3, 90)));
            assert_eq!(epochs_of(&merged_file_name(source, 3, 90), &source_prefix(source)), Some((3, 90)));
        }
        for other in [".part-local-e000000000001.parquet.tmp", "part-local.parquet", "notes.txt", "part-local-e12x.parquet"] {
            assert_eq!(source_and_epochs(other), None, "{other}");
        }
    }

    #[test]
    fn a_listing_skips_the_files_a_merged_file_of_their_source_covers() {
        let names = [
            merged_file_name("a", 1, 16),
            file_name("a", 1),
            file_name("a", 16),
            file_name("a", 17),
            merged_file_name("a", 17, 32), // published before its inputs, epoch 17 among them, are gone
            file_name("b", 5), // another source's epochs are its own
            merged_file_name("a", 1, 32), // a merge of the two merged files, its inputs not yet deleted
            "notes.txt".to_owned(),
        ];
        let skipped = superseded(names.iter().map(String::as_str));
        let mut skipped: Vec<&str> = skipped.into_iter().collect();
        skipped.sort();
        let mut expected = vec![merged_file_name("a", 1, 16), file_name("a", 1), file_name("a", 16), file_name("a", 17), merged_file_name("a", 17, 32)];
        expected.sort();
        assert_eq!(skipped, expected);
        assert!(superseded([file_name("a", 1).as_str(), file_name("a", 2).as_str()]).is_empty(), "singles never cover each other");
        // Each file is judged within its own directory.
        let (merged, single) = (format!("h1/{}", merged_file_name("a", 1, 2)), format!("h2/{}", file_name("a", 1)));
        assert!(superseded([merged.as_str(), single.as_str()]).is_empty(), "another partition's merged file covers nothing here");
        let inside = format!("h1/{}", file_name("a", 1));
        assert_eq!(superseded([merged.as_str(), single.as_str(), inside.as_str()]), [inside.as_str()].into_iter().collect());
    }
}
