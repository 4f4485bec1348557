use super::*;

fn rec(i: u64) -> Bytes {
    Bytes::from(format!("record-{i}-{}", "x".repeat((i % 50) as usize)))
}

/// The length of a segment's valid records (zeros written ahead of them and anything torn excluded).
fn records_len(path: &Path, base: u64) -> u64 {
    writer::scan_valid_prefix(&std::fs::File::open(path).expect("open segment"), base).expect("scan").1
}

/// A frame for `offset` promising 100 bytes of payload with checksum `crc`, and only half of them: what a
/// crash mid-write leaves.
fn torn_frame(offset: u64, crc: u32) -> Vec<u8> {
    let mut torn = Vec::new();
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&crc.to_le_bytes());
    torn.extend_from_slice(&offset.to_le_bytes());
    torn.extend_from_slice(&[7u8; 50]);
    torn
}

/// Writes `bytes` into a segment at `at`, over whatever is there.
fn write_at(path: &Path, bytes: &[u8], at: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open segment");
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, at).expect("write");
}

fn read_all(dir: &Path, from: u64) -> Vec<LogEntry> {
    LogReader::open(dir, from).expect("reader").read_batch(usize::MAX, u64::MAX).expect("read")
}

/// A log in `dir` rolling at `segment_bytes`, holding `rec(0..records)`, each appended alone.
async fn log_of(dir: &Path, segment_bytes: u64, records: u64) -> LocalLog {
    let log = LocalLog::open(LogConfig { segment_bytes, ..LogConfig::new(dir) }).expect("open");
    for i in 0..records {
        log.append(vec![rec(i)]).await.expect("append");
    }
    log
}

#[tokio::test]
async fn appends_are_numbered_and_read_back_across_segments() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = LocalLog::open(LogConfig { segment_bytes: 500, ..LogConfig::new(tmp.path()) }).expect("open");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            for i in 0..25u64 {
                let recs = vec![rec(t * 1000 + i), rec(t * 1000 + i + 500)];
                ranges.push((log.append(recs.clone()).await.expect("append"), recs));
            }
            ranges
        }));
    }
    let mut expected = std::collections::BTreeMap::new();
    for t in tasks {
        for (range, recs) in t.await.expect("task") {
            assert_eq!(range.end - range.start, 2);
            for (o, r) in range.zip(recs) {
                assert!(expected.insert(o, r).is_none(), "offset {o} handed out twice");
            }
        }
    }
    assert_eq!(log.durable_end(), 400);
    assert!(list_segments(tmp.path()).expect("list").len() > 5, "small segments roll");
    let all = read_all(tmp.path(), 0);
    assert_eq!(all.len(), 400);
    for e in &all {
        assert_eq!(Some(&e.data), expected.get(&e.offset));
    }
    // Reading from the middle, and bounded by `upto`.
    let mut r = log.reader(123).expect("reader");
    let part = r.read_batch(1000, 130).expect("read");
    assert_eq!(part.iter().map(|e| e.offset).collect::<Vec<_>>(), (123..130).collect::<Vec<_>>());
    assert!(matches!(LogReader::open(tmp.path(), 401), Err(LogError::OffsetBeyondEnd { .. })));
}

#[tokio::test]
async fn retention_deletes_only_whole_segments_before_the_offset() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = log_of(tmp.path(), 200, 60).await;
    let before = list_segments(tmp.path()).expect("list");
    let deleted = log.retain_from(30).await.expect("retain");
    assert!(deleted > 0);
    let after = list_segments(tmp.path()).expect("list");
    assert_eq!(after.len(), before.len() - deleted);
    let first = after[0].0;
    assert!(first <= 30, "the segment holding offset 30 is kept");
    assert_eq!(read_all(tmp.path(), 30).len(), 30);
    assert!(matches!(LogReader::open(tmp.path(), 0), Err(LogError::OffsetRetained { .. })));
    // Retaining everything never deletes the active segment.
    log.retain_from(u64::MAX).await.expect("retain");
    assert!(!list_segments(tmp.path()).expect("list").is_empty());
    assert_eq!(log.append(vec![rec(60)]).await.expect("append"), 60..61);
}

#[tokio::test]
async fn recovery_truncates_a_torn_tail_and_continues_numbering() {
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let log = LocalLog::open(LogConfig::new(tmp.path())).expect("open");
        for i in 0..10 {
            log.append(vec![rec(i)]).await.expect("append");
        }
    }
    let (base, path) = list_segments(tmp.path()).expect("list").pop().expect("segment");
    let good_len = records_len(&path, base);
    // A crash mid-write: a header promising 100 bytes and half of them, after the last record.
    write_at(&path, &torn_frame(10, 0), good_len);
    let log = LocalLog::open(LogConfig::new(tmp.path())).expect("reopen");
    assert_eq!(log.durable_end(), 10);
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), good_len);
    assert_eq!(log.append(vec![rec(10)]).await.expect("append"), 10..11);
    let all = read_all(tmp.path(), 0);
    assert_eq!(all.len(), 11);
    assert_eq!(all[10].data, rec(10));
}

#[tokio::test]
async fn recovery_drops_a_tail_frame_with_a_bad_checksum() {
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let log = LocalLog::open(LogConfig::new(tmp.path())).expect("open");
        log.append(vec![rec(0), rec(1), rec(2)]).await.expect("append");
    }
    let (base, path) = list_segments(tmp.path()).expect("list").pop().expect("segment");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = records_len(&path, base) as usize - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let log = LocalLog::open(LogConfig::new(tmp.path())).expect("reopen");
    assert_eq!(log.durable_end(), 2);
    assert_eq!(read_all(tmp.path(), 0).len(), 2);
}

#[tokio::test]
async fn reader_reports_corruption_in_a_sealed_segment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _log = log_of(tmp.path(), 100, 20).await;
    let (_, first) = list_segments(tmp.path()).expect("list").remove(0);
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[HEADER_LEN + 2] ^= 0x01;
    std::fs::write(&first, &bytes).expect("write");
    let err = LogReader::open(tmp.path(), 0).expect("open").read_batch(100, u64::MAX).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { problem: "checksum mismatch", .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_by_group_commit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = LocalLog::open(LogConfig::new(tmp.path())).expect("open");
    assert_eq!((log.fsyncs(), log.appends()), (0, 0));
    // Every task queues its append at once; while the writer fsyncs one group the others pile up behind
    // it and go out together in the next.
    const TASKS: u64 = 200;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS as usize));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (log, start) = (log.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            log.append(vec![rec(t)]).await.expect("append")
        }));
    }
    let mut offsets = std::collections::BTreeSet::new();
    for t in tasks {
        let range = t.await.expect("task");
        assert!(offsets.insert(range.start), "offset {} handed out twice", range.start);
    }
    assert_eq!(log.durable_end(), TASKS);
    assert_eq!(log.appends(), TASKS);
    let fsyncs = log.fsyncs();
    assert!(fsyncs >= 1, "acknowledged appends were fsynced");
    assert!(fsyncs < TASKS, "{TASKS} concurrent appends took {fsyncs} fsyncs: no group commit");
    // One append alone is one fsync of its own.
    log.append(vec![rec(TASKS)]).await.expect("append");
    assert_eq!(log.fsyncs(), fsyncs + 1);
    assert_eq!(read_all(tmp.path(), 0).len(), TASKS as usize + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_wait_to_share_fsyncs_and_a_lone_one_never_waits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let wait = Duration::from_secs(1);
    let log = LocalLog::open(LogConfig { group_commit_wait: wait, ..LogConfig::new(tmp.path()) }).expect("open");
    // Alone, every group holds one append: the writer never waits (three waits would take 3 s).
    let alone = std::time::Instant::now();
    for i in 0..3 {
        log.append(vec![rec(i)]).await.expect("append");
    }
    assert_eq!(log.fsyncs(), 3);
    assert!(alone.elapsed() < wait + wait / 2, "a lone appender waited: {:?}", alone.elapsed());

    // Twenty appenders out of step (each pauses its own number of milliseconds between appends): without
    // the wait their appends trickle in a few per fsync; with it, once a group is shared, each wait
    // gathers every appender's next append.
    const TASKS: u64 = 20;
    const ROUNDS: u64 = 3;
    let before = log.fsyncs();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                log.append(vec![rec(100 + t * ROUNDS + r)]).await.expect("append");
                tokio::time::sleep(Duration::from_millis(t + 1)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let fsyncs = log.fsyncs() - before;
    assert_eq!(log.appends(), 3 + TASKS * ROUNDS);
    assert!(fsyncs <= 12, "{} appends out of step took {fsyncs} fsyncs: the writer did not wait for them", TASKS * ROUNDS);
    assert_eq!(read_all(tmp.path(), 0).len(), (3 + TASKS * ROUNDS) as usize);
}

#[tokio::test]
async fn a_writer_with_nothing_to_write_stops_yielding_and_sleeps() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = LocalLog::open(LogConfig::new(tmp.path())).expect("open");
    // However long the writer yields on an empty queue before it sleeps, it does sleep: an idle log takes
    // no CPU. First the sleep after opening; then, as each append is answered before the writer looks
    // for the next, each further sleep is the one after that append.
    async fn slept(log: &LocalLog, n: u64, after: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.stats.sleeps.load(Ordering::Relaxed) < n {
            assert!(std::time::Instant::now() < deadline, "the writer never went to sleep {after}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    slept(&log, 1, "after opening").await;
    for i in 0..3 {
        log.append(vec![rec(i)]).await.expect("append");
        slept(&log, i + 2, &format!("after append {i}")).await;
    }
    assert_eq!(read_all(tmp.path(), 0).len(), 3);
}

#[tokio::test]
async fn zeros_written_ahead_are_never_records_and_no_segment_keeps_them_once_sealed() {
    // An all-zero header cannot be a frame: the only frame at offset 0 with an empty payload has a
    // checksum that is not zero.
    assert_ne!(checksum(0, &[]), 0);
    let tmp = tempfile::tempdir().expect("tmp");
    let log = LocalLog::open(LogConfig::new(tmp.path())).expect("open");
    log.append(vec![rec(0), rec(1), rec(2)]).await.expect("append");
    let (base, path) = list_segments(tmp.path()).expect("list").pop().expect("segment");
    let records = records_len(&path, base);
    // The group's fsync found the file already long enough for the next groups.
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), records + writer::ZERO_AHEAD);
    // Readers stop where the records end, whether bounded by the durable end or reading all that is whole.
    assert_eq!(read_all(tmp.path(), 0).len(), 3);
    assert_eq!(log.reader(0).expect("reader").read_batch(100, log.durable_end()).expect("read").len(), 3);
    assert_eq!(read_all(tmp.path(), 3).len(), 0);
    assert!(matches!(LogReader::open(tmp.path(), 4), Err(LogError::OffsetBeyondEnd { requested: 4, end: 3 })));
    // A reader waiting at the end gets the next records written over the zeros it may have read ahead.
    let mut tail = log.reader(3).expect("reader");
    assert!(tail.read_batch(100, u64::MAX).expect("read").is_empty());
    log.append(vec![rec(3)]).await.expect("append");
    assert_eq!(tail.read_batch(100, log.durable_end()).expect("read")[0].data, rec(3));
    drop((log, tail));

    // Reopened: the zeros are cut off as no loss and the numbering goes on.
    let log = LocalLog::open(LogConfig { segment_bytes: 400, ..LogConfig::new(tmp.path()) }).expect("reopen");
    assert_eq!(log.durable_end(), 4);
    for i in 4..40 {
        log.append(vec![rec(i)]).await.expect("append");
    }
    let segments = list_segments(tmp.path()).expect("list");
    assert!(segments.len() > 3, "small segments roll");
    // Every sealed segment ends with its last record.
    for (base, path) in &segments[..segments.len() - 1] {
        assert_eq!(std::fs::metadata(path).expect("meta").len(), records_len(path, *base), "{} keeps zeros", path.display());
    }
    let all = read_all(tmp.path(), 0);
    assert_eq!(all.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), (0..40).map(rec).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_frame_cut_short_over_the_zeros_ends_what_is_whole_and_zeros_in_a_sealed_segment_are_corruption() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _log = log_of(tmp.path(), 300, 30).await;
    let segments = list_segments(tmp.path()).expect("list");
    assert!(segments.len() >= 3, "small segments roll");
    let (last_base, last) = segments.last().expect("segment").clone();
    let whole = read_all(tmp.path(), 0).len() as u64;
    assert_eq!(whole, 30);

    // A frame being written (or torn by a crash) after the last record: its header and half its payload,
    // then the zeros written ahead. A reader of all that is whole stops before it, as recovery would.
    write_at(&last, &torn_frame(30, checksum(30, &[7u8; 100])), records_len(&last, last_base));
    assert_eq!(read_all(tmp.path(), 0).len() as u64, whole, "a frame cut short was read as corruption or as a record");

    // Zeros where a sealed segment's last frame was (a lost sector): records are missing before the next
    // segment, and that is corruption, not the end of the log.
    let (first_base, first) = &segments[0];
    let bytes = std::fs::read(first).expect("read");
    let records = records_len(first, *first_base) as usize;
    let mut at = 0usize;
    let mut last_frame = 0usize;
    while at < records {
        last_frame = at;
        at += HEADER_LEN + u32::from_le_bytes(bytes[at..at + 4].try_into().expect("len")) as usize;
    }
    write_at(first, &[0u8; HEADER_LEN], last_frame as u64);
    let err = LogReader::open(tmp.path(), 0).expect("reader").read_batch(usize::MAX, u64::MAX).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { problem: "records are missing before a later segment", .. }), "{err}");
}

#[tokio::test]
async fn a_roll_that_failed_after_creating_the_next_segment_does_not_fail_again_on_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = LocalLog::open(LogConfig { segment_bytes: 100, ..LogConfig::new(tmp.path()) }).expect("open");
    log.append(vec![rec(0), rec(1), rec(2)]).await.expect("append");
    // What a roll leaves when it fails after creating the next segment (its fsync, or the directory's):
    // an empty file named for the next offset.
    std::fs::File::create(tmp.path().join(segment_name(log.durable_end()))).expect("leftover");
    assert_eq!(log.append(vec![rec(3)]).await.expect("the roll reuses the file"), 3..4);
    log.append(vec![rec(4)]).await.expect("append");
    let all = read_all(tmp.path(), 0);
    assert_eq!(all.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), (0..5).map(rec).collect::<Vec<_>>());
}
