//! `qoeflow loadgen`: simulated viewers posting real beacons over HTTP, with the ground truth of what
//! they did.
//!
//! Each viewer is a task: it waits for its arrival, draws its view from [`sim::ViewSim`] and sends the
//! events like a player SDK would — queued and flushed every 10 s and at once after key events (play
//! request, first frame, error, end), JSON or gzip, the final beacon as `text/plain` with the key in the
//! query string (what `navigator.sendBeacon` sends), retried on 429/503/5xx and connection errors with
//! exponential backoff, jitter and `Retry-After`. Knobs inject what real networks do to beacons:
//! duplicates (a beacon sent twice), out-of-order `seq` (events shuffled in a beacon, a beacon overtaken
//! by the next), client clock skew, and late delivery (a view's beacons held back, as by an offline
//! player). None of the knobs changes what the viewers do: they draw from their own random streams, so
//! a seed gives the same truth with or without them.
//!
//! The truth is the simulation's own accounting ([`sim::ViewTruth`]), summed into [`Totals`].

pub mod sim;

use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use schemas::measures::{Measure, Values};
use sim::{RunSpec, ViewSim, ViewTruth, view_seed};

/// Why a run could not be made or its truth not written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option that cannot work, named as its flag.
    #[error("{0}")]
    Options(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), Error> {
    if ok { Ok(()) } else { Err(Error::Options(message())) }
}

/// The SDK's periodic flush (sim time).
pub const FLUSH_MS: i64 = 10_000;
const MAX_ATTEMPTS: u32 = 20;
/// Longest wait honoured from a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the network does to beacons.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Share of beacons sent twice.
    pub duplicate_rate: f64,
    /// Share of beacons whose events are shuffled, and (independently) of beacons overtaken by the next.
    pub reorder_rate: f64,
    /// Each client's clock is off by a uniform draw in ±this.
    pub skew_ms: i64,
    /// Share of views whose beacons, from a random one on, are delivered `late_ms` late.
    pub late_rate: f64,
    pub late_ms: i64,
    /// Share of (non-final) beacons sent gzip-compressed.
    pub gzip_rate: f64,
    /// An overtaken beacon is sent a uniform draw in `overtake_ms / 4..=overtake_ms` (sim time) after
    /// the one that overtook it (a failed flush retried while the next one got through). The pipeline corrects its
    /// views however late it comes within the late horizon, so the truth holds for any value.
    pub overtake_ms: i64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            skew_ms: 0,
            late_rate: 0.0,
            late_ms: 0,
            gzip_rate: 0.0,
            overtake_ms: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Collector base URL (`http://host:port`); beacons go to `<target>/v1/beacon`.
    pub target: String,
    pub viewers: u64,
    pub duration: Duration,
    /// Views arrive uniformly over this first part of the run.
    pub ramp: Duration,
    pub seed: u64,
    pub key: Option<String>,
    /// Ground-truth totals (JSON); the per-view truth goes beside it as `<stem>.views.jsonl`.
    pub truth: Option<PathBuf>,
    /// Events per second, over all viewers.
    pub rate_limit: Option<u32>,
    /// Simulated time runs this many times faster than the wall clock.
    pub speed: f64,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    pub knobs: Knobs,
    /// CDNs that degrade for a while (sim time): start failures or stalls spike.
    pub degrade: Vec<sim::Degrade>,
    /// Live progress line on stderr (when it is a terminal; else a line every 10 s).
    pub progress: bool,
}

/// The keys of the `--truth` JSON object, exactly (the contract of README "Load generator"): `views`, the
/// measures `schemas::measures` marks for the truth (by their `qoe_window` names), and the start-time
/// quantiles.
pub fn truth_keys() -> Vec<&'static str> {
    let mut keys = vec!["views"];
    keys.extend(schemas::measures::truth_keys());
    keys.extend(TRUTH_QUANTILES.iter().map(|(k, _)| *k));
    keys
}

/// The truth's start-time quantiles: (key, q).
const TRUTH_QUANTILES: [(&str, f64); 2] = [("startup_ms_p50", 0.5), ("startup_ms_p95", 0.95)];

/// Ground-truth totals over a run, the contract of `--truth` (serialized with exactly [`truth_keys`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub views: u64,
    /// Per measure, the sum over the views (a flag sums to the number of views with it).
    pub sums: Values,
    /// Nearest-rank percentiles (rank ⌈q·n⌉, as HdrHistogram ranks) of the exact start-up times; null
    /// when no view started.
    pub startup_ms_p50: Option<i64>,
    pub startup_ms_p95: Option<i64>,
}

impl Totals {
    pub fn of(views: &[ViewTruth]) -> Totals {
        let mut t = Totals { views: views.len() as u64, ..Totals::default() };
        let mut startups = Vec::new();
        for v in views {
            t.sums.merge(&v.measures.0);
            if v.measures.0.flag(Measure::Started) {
                startups.push(v.measures.0[Measure::StartupMs]);
            }
        }
        startups.sort_unstable();
        t.startup_ms_p50 = nearest_rank(&startups, TRUTH_QUANTILES[0].1);
        t.startup_ms_p95 = nearest_rank(&startups, TRUTH_QUANTILES[1].1);
        t
    }

    /// The truth's value under `key` (one of [`truth_keys`] but the quantiles).
    pub fn get(&self, key: &str) -> Option<i64> {
        if key == "views" {
            return Some(self.views as i64);
        }
        schemas::measures::MEASURES.iter().find(|d| d.truth && d.window.is_some_and(|w| w.0 == key)).map(|d| self.sums[d.measure])
    }
}

impl Serialize for Totals {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("views", &self.views)?;
        for key in schemas::measures::truth_keys() {
            map.serialize_entry(key, &self.get(key))?;
        }
        map.serialize_entry(TRUTH_QUANTILES[0].0, &self.startup_ms_p50)?;
        map.serialize_entry(TRUTH_QUANTILES[1].0, &self.startup_ms_p95)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Totals {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Totals, D::Error> {
        use serde::de::Error;
        let mut m = Map::<String, Value>::deserialize(d)?;
        let mut take = |key: &str| m.remove(key).ok_or_else(|| D::Error::custom(format!("missing truth key {key:?}")));
        let int = |key: &str, v: Value| v.as_i64().ok_or_else(|| D::Error::custom(format!("truth key {key:?} is not an integer")));
        let mut t = Totals { views: int("views", take("views")?)? as u64, ..Totals::default() };
        for def in schemas::measures::MEASURES.iter().filter(|d| d.truth) {
            let key = def.window.map_or("", |w| w.0);
            t.sums[def.measure] = int(key, take(key)?)?;
        }
        t.startup_ms_p50 = take(TRUTH_QUANTILES[0].0)?.as_i64();
        t.startup_ms_p95 = take(TRUTH_QUANTILES[1].0)?.as_i64();
        match m.keys().next() {
            Some(k) => Err(D::Error::custom(format!("unknown truth key {k:?}"))),
            None => Ok(t),
        }
    }
}

/// The value of rank ⌈q·n⌉ (at least 1) of `sorted`, computed in f64 exactly as HdrHistogram does.
pub fn nearest_rank(sorted: &[i64], q: f64) -> Option<i64> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank - 1).copied()
}

/// Where the per-view truth goes for a totals file `truth`: `<stem>.views.jsonl` beside it.
pub fn views_path(truth: &Path) -> PathBuf {
    let stem = truth.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "truth".into());
    truth.with_file_name(format!("{stem}.views.jsonl"))
}

/// Counters shared by the viewers (and read by the progress display).
#[derive(Default)]
struct Stats {
    views_started: AtomicU64,
    views_done: AtomicU64,
    beacons_ok: AtomicU64,
    events_ok: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    failed_beacons: AtomicU64,
    /// Beacons overtaken by the next one of their view.
    overtaken: AtomicU64,
    rejected_events: AtomicU64,
    latency_us: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Stats {
    fn record_latency(&self, d: Duration) {
        if let Ok(mut h) = self.latency_us.lock() {
            let h = h.get_or_insert_with(|| hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
            h.saturating_record(d.as_micros() as u64);
        }
    }

    fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.lock().ok().and_then(|h| h.as_ref().map(|h| h.value_at_quantile(q) as f64 / 1000.0)).unwrap_or(0.0)
    }
}

/// The outcome of a run.
pub struct Report {
    pub totals: Totals,
    pub views: Vec<ViewTruth>,
    pub elapsed: Duration,
    pub beacons: u64,
    pub events: u64,
    pub duplicates: u64,
    pub retries: u64,
    pub throttled: u64,
    pub failed_beacons: u64,
    pub rejected_events: u64,
    /// Beacons overtaken by the next one of their view (sent up to `overtake_ms` after it).
    pub overtaken: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl Report {
    /// Everything the simulation sent was acknowledged and accepted: the truth describes what the
    /// collector holds.
    pub fn complete(&self) -> bool {
        self.failed_beacons == 0 && self.rejected_events == 0
    }

    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let t = &self.totals;
        writeln!(out, "loadgen: {} views in {:.1} s", t.views, secs)?;
        writeln!(
            out,
            "  beacons  {} acknowledged ({:.0}/s), {} duplicates, {} retries ({} throttled), {} failed",
            self.beacons,
            self.beacons as f64 / secs,
            self.duplicates,
            self.retries,
            self.throttled,
            self.failed_beacons
        )?;
        writeln!(
            out,
            "  events   {} sent once each ({:.0}/s), {} rejected; {} beacons overtaken by the next",
            self.events,
            self.events as f64 / secs,
            self.rejected_events,
            self.overtaken
        )?;
        writeln!(out, "  latency  p50 {:.2} ms, p99 {:.2} ms", self.latency_p50_ms, self.latency_p99_ms)?;
        let pct = |a: i64, b: i64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        use Measure::*;
        let v = &t.sums;
        writeln!(
            out,
            "  truth    {} attempts, {} starts (p50 {} ms, p95 {} ms), VSF {:.2}%, EBVS {:.2}%, playback failures {}, rebuffer {:.2}%, cache hit {:.1}%",
            v[Attempt],
            v[Started],
            t.startup_ms_p50.unwrap_or(0),
            t.startup_ms_p95.unwrap_or(0),
            pct(v[Vsf], v[Attempt]),
            pct(v[Ebvs], v[Attempt]),
            v[PlaybackFailure],
            pct(v[StallMs], v[PlayMs] + v[StallMs]),
            pct(v[SegmentsHit], v[SegmentsHit] + v[SegmentsMiss]),
        )
    }
}

struct Shared {
    client: reqwest::Client,
    url: String,
    key: Option<String>,
    knobs: Knobs,
    spec: RunSpec,
    stats: Stats,
    in_flight: tokio::sync::Semaphore,
    limiter: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    start: Instant,
    /// Wall clock (epoch ms) at the start: sim time 0.
    epoch0: i64,
    speed: f64,
}

impl Shared {
    /// Sleeps until sim time `at_ms`.
    async fn sleep_until(&self, at_ms: i64) {
        let wall = Duration::from_secs_f64(at_ms.max(0) as f64 / 1000.0 / self.speed);
        tokio::time::sleep_until((self.start + wall).into()).await;
    }

    /// Sim time now.
    fn now_ms(&self) -> i64 {
        (self.start.elapsed().as_secs_f64() * 1000.0 * self.speed) as i64
    }

    async fn rate_limit(&self, events: usize) {
        let Some((limiter, burst)) = &self.limiter else { return };
        let mut left = events as u32;
        while left > 0 {
            let n = left.min(burst.get());
            let _ = limiter.until_n_ready(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)).await;
            left -= n;
        }
    }
}

/// Runs the load: every viewer to its end. Writes the truth files when asked.
pub async fn run(opts: Options) -> Result<Report, Error> {
    ensure(opts.viewers > 0, || format!("--viewers must be at least 1"))?;
    ensure(opts.speed > 0.0 && opts.speed.is_finite(), || format!("--speed must be a positive number"))?;
    ensure(!opts.duration.is_zero(), || format!("--duration must be positive"))?;
    ensure(opts.ramp <= opts.duration, || format!("--ramp-up must not exceed --duration"))?;
    for (name, rate) in [
        ("--duplicate-rate", opts.knobs.duplicate_rate),
        ("--reorder-rate", opts.knobs.reorder_rate),
        ("--late-rate", opts.knobs.late_rate),
        ("--gzip-rate", opts.knobs.gzip_rate),
    ] {
        ensure((0.0..=1.0).contains(&rate), || format!("{name} must be between 0 and 1, got {rate}"))?;
    }
    let target = opts.target.trim_end_matches('/');
    ensure(target.starts_with("http://") || target.starts_with("https://"), || format!("--target must be an http(s) URL, got {target:?}"))?;
    let limiter = match opts.rate_limit {
        Some(0) => return Err(Error::Options("--rate-limit must be at least 1 event/s".into())),
        Some(n) => {
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            Some((RateLimiter::direct(Quota::per_second(n)), n))
        }
        None => None,
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.max_in_flight)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Options(format!("HTTP client: {e}")))?;
    let spec = RunSpec {
        seed: opts.seed,
        duration_ms: opts.duration.as_millis() as i64,
        ramp_ms: opts.ramp.as_millis() as i64,
        degrade: opts.degrade.clone(),
    };
    let shared = Arc::new(Shared {
        client,
        url: format!("{target}/v1/beacon"),
        key: opts.key.clone(),
        knobs: opts.knobs.clone(),
        spec,
        stats: Stats::default(),
        in_flight: tokio::sync::Semaphore::new(opts.max_in_flight.max(1)),
        limiter,
        start: Instant::now(),
        epoch0: schemas::now_ms(),
        speed: opts.speed,
    });
    let progress = opts.progress.then(|| tokio::spawn(progress(Arc::clone(&shared), opts.viewers)));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..opts.viewers {
        tasks.spawn(viewer(Arc::clone(&shared), index));
    }
    let mut views = Vec::with_capacity(opts.viewers as usize);
    while let Some(v) = tasks.join_next().await {
        views.push(v.map_err(|e| Error::Options(format!("viewer task: {e}")))?);
    }
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    views.sort_by(|a, b| a.view_id.cmp(&b.view_id));
    let s = &shared.stats;
    let report = Report {
        totals: Totals::of(&views),
        views,
        elapsed: shared.start.elapsed(),
        beacons: s.beacons_ok.load(Ordering::Relaxed),
        events: s.events_ok.load(Ordering::Relaxed),
        duplicates: s.duplicates.load(Ordering::Relaxed),
        retries: s.retries.load(Ordering::Relaxed),
        throttled: s.throttled.load(Ordering::Relaxed),
        failed_beacons: s.failed_beacons.load(Ordering::Relaxed),
        rejected_events: s.rejected_events.load(Ordering::Relaxed),
        overtaken: s.overtaken.load(Ordering::Relaxed),
        latency_p50_ms: s.latency_ms(0.5),
        latency_p99_ms: s.latency_ms(0.99),
    };
    if let Some(path) = &opts.truth {
        write_truth(path, &report)?;
    }
    Ok(report)
}

fn write_truth(path: &Path, report: &Report) -> Result<(), Error> {
    let write = |path: &Path, f: &mut dyn FnMut(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>| {
        let file = std::fs::File::create(path)?;
        let mut out = std::io::BufWriter::new(file);
        f(&mut out)?;
        out.flush()
    };
    write(path, &mut |out| {
        serde_json::to_writer_pretty(&mut *out, &report.totals)?;
        out.write_all(b"\n")
    })
    .map_err(|source| Error::Write { path: path.to_owned(), source })?;
    let views = views_path(path);
    write(&views, &mut |out| {
        for v in &report.views {
            serde_json::to_writer(&mut *out, v)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(|source| Error::Write { path: views.clone(), source })
}

/// One viewer: its view's events, queued and flushed like an SDK.
async fn viewer(shared: Arc<Shared>, index: u64) -> ViewTruth {
    let mut rng = SmallRng::seed_from_u64(view_seed(shared.spec.seed, index, 1));
    let knobs = &shared.knobs;
    let skew = if knobs.skew_ms > 0 { rng.random_range(-knobs.skew_ms..=knobs.skew_ms) } else { 0 };
    let sim = ViewSim::new(&shared.spec, index, shared.epoch0 + skew);
    let late_from = (knobs.late_rate > 0.0 && rng.random_bool(knobs.late_rate)).then(|| rng.random_range(1..=3usize));
    let arrival = sim.arrival_ms();
    shared.sleep_until(arrival).await;
    shared.stats.views_started.fetch_add(1, Ordering::Relaxed);
    let mut sender = ViewSender {
        shared: Arc::clone(&shared),
        rng,
        skew,
        user_agent: sim.user_agent(),
        lag_ms: 0,
        late_from,
        beacons: 0,
        held: None,
        delivered: true,
        overtaken: Vec::new(),
    };
    let mut flushes = Flushes::new(sim);
    for f in flushes.by_ref() {
        sender.send(f.events, f.at_ms, f.last).await;
    }
    shared.stats.views_done.fetch_add(1, Ordering::Relaxed);
    let mut truth = flushes.into_truth();
    // Overtaken beacons still on their way count for the view's delivery.
    for h in std::mem::take(&mut sender.overtaken) {
        sender.delivered &= h.await.unwrap_or(false);
    }
    truth.delivered = sender.delivered;
    truth
}

/// One flush of the SDK's queue: due at `at_ms` (sim time), the last one of the view if `last`.
pub struct Flush {
    pub at_ms: i64,
    pub events: Vec<Map<String, Value>>,
    pub last: bool,
}

impl Flush {
    /// The record the collector would write for this flush of `view_id`'s events: sent at its due time
    /// on the client clock `clock0` (sim time 0), received 35 ms later, enriched as `client`.
    pub fn record(self, view_id: &str, client: &schemas::ClientInfo, clock0: i64) -> schemas::EventsRecord {
        let sent_at = clock0 + self.at_ms;
        schemas::EventsRecord {
            recv_ms: sent_at + 35,
            sent_at,
            key: None,
            view_id: view_id.to_owned(),
            client: client.clone(),
            events: self.events,
        }
    }
}

/// A view's events as the SDK flushes them: every [`FLUSH_MS`] (when the queue is not empty) and at
/// once after key events. The queue is empty at the end: the view's last event, `viewend`, is a key event.
pub struct Flushes {
    sim: ViewSim,
    queue: Vec<Map<String, Value>>,
    next_flush: i64,
    /// An event taken from the simulation that belongs after the flush just returned.
    carry: Option<sim::SimEvent>,
}

impl Flushes {
    pub fn new(sim: ViewSim) -> Flushes {
        let next_flush = sim.arrival_ms() + FLUSH_MS;
        Flushes { sim, queue: Vec::new(), next_flush, carry: None }
    }

    pub fn into_truth(self) -> ViewTruth {
        self.sim.into_truth()
    }
}

impl Iterator for Flushes {
    type Item = Flush;

    fn next(&mut self) -> Option<Flush> {
        loop {
            let e = self.carry.take().or_else(|| self.sim.next())?;
            if e.at_ms >= self.next_flush {
                let at_ms = self.next_flush;
                self.next_flush += FLUSH_MS;
                self.carry = Some(e);
                if !self.queue.is_empty() {
                    return Some(Flush { at_ms, events: std::mem::take(&mut self.queue), last: false });
                }
                continue;
            }
            self.queue.push(e.json);
            if e.flush {
                self.next_flush = e.at_ms + FLUSH_MS;
                return Some(Flush { at_ms: e.at_ms, events: std::mem::take(&mut self.queue), last: e.last });
            }
        }
    }
}

/// The traffic of viewers `0..views` as the records the collector would write for it, without HTTP (for
/// benchmarks that feed the pipeline directly): each flush is one record, received 35 ms after it was
/// sent, enriched by the collector's own enricher from the viewer's user agent, with a country as a
/// GeoIP database would give; records in arrival order. Returns the records, the number of events and
/// the truth. `enrich` is the collector's enrichment of a client address and user agent.
pub fn collector_records(
    spec: &RunSpec,
    views: u64,
    clock0: i64,
    enrich: impl Fn(std::net::IpAddr, &str) -> schemas::ClientInfo,
) -> (Vec<bytes::Bytes>, u64, Totals) {
    const COUNTRIES: [&str; 8] = ["US", "DE", "BR", "IN", "JP", "NL", "FR", "GB"];
    let mut timed = Vec::new();
    let mut truths = Vec::with_capacity(views as usize);
    let mut events = 0;
    for i in 0..views {
        let sim = ViewSim::new(spec, i, clock0);
        let ip = std::net::IpAddr::from([203, 0, 113, (i % 251) as u8]);
        let mut client = enrich(ip, sim.user_agent());
        client.country = COUNTRIES[(view_seed(spec.seed, i, 2) % COUNTRIES.len() as u64) as usize].into();
        let view_id = sim.view_id().to_owned();
        let mut flushes = Flushes::new(sim);
        for f in flushes.by_ref() {
            events += f.events.len() as u64;
            let r = f.record(&view_id, &client, clock0);
            timed.push((r.sent_at, bytes::Bytes::from(schemas::Record::Events(r).encode())));
        }
        truths.push(flushes.into_truth());
    }
    timed.sort_by_key(|(at, _)| *at);
    (timed.into_iter().map(|(_, r)| r).collect(), events, Totals::of(&truths))
}

struct Beacon {
    events: Vec<Map<String, Value>>,
    last: bool,
}

struct ViewSender {
    shared: Arc<Shared>,
    /// The sender's own random stream (never the simulation's).
    rng: SmallRng,
    skew: i64,
    user_agent: &'static str,
    /// Delay added to every send from beacon `late_from` on.
    lag_ms: i64,
    late_from: Option<usize>,
    beacons: usize,
    /// A beacon overtaken by the next one.
    held: Option<Beacon>,
    delivered: bool,
    /// Overtaken beacons sent later, by their own tasks: whether each was delivered.
    overtaken: Vec<tokio::task::JoinHandle<bool>>,
}

impl ViewSender {
    /// Sends a flush of `events` due at sim time `at_ms`.
    async fn send(&mut self, events: Vec<Map<String, Value>>, at_ms: i64, last: bool) {
        if self.late_from == Some(self.beacons) {
            self.lag_ms = self.shared.knobs.late_ms;
        }
        self.beacons += 1;
        self.shared.sleep_until(at_ms + self.lag_ms).await;
        let beacon = Beacon { events, last };
        let reorder = self.shared.knobs.reorder_rate;
        if !last && self.held.is_none() && reorder > 0.0 && self.rng.random_bool(reorder) {
            self.held = Some(beacon);
            return;
        }
        self.post(beacon).await;
        if let Some(held) = self.held.take() {
            self.shared.stats.overtaken.fetch_add(1, Ordering::Relaxed);
            let overtake_ms = self.shared.knobs.overtake_ms;
            if overtake_ms <= 0 {
                self.post(held).await;
                return;
            }
            // Sent later by its own task (as a retried flush is), while the view goes on.
            let delay = self.rng.random_range(overtake_ms / 4..=overtake_ms);
            let mut late = ViewSender {
                shared: Arc::clone(&self.shared),
                rng: SmallRng::seed_from_u64(self.rng.random()),
                skew: self.skew,
                user_agent: self.user_agent,
                lag_ms: 0,
                late_from: None,
                beacons: 0,
                held: None,
                delivered: true,
                overtaken: Vec::new(),
            };
            self.overtaken.push(tokio::spawn(async move {
                let at = late.shared.now_ms() + delay;
                late.shared.sleep_until(at).await;
                late.post(held).await;
                late.delivered
            }));
        }
    }

    async fn post(&mut self, mut beacon: Beacon) {
        let knobs = &self.shared.knobs;
        if beacon.events.len() > 1 && knobs.reorder_rate > 0.0 && self.rng.random_bool(knobs.reorder_rate) {
            beacon.events.shuffle(&mut self.rng);
        }
        let n = beacon.events.len();
        let sent_at = self.shared.epoch0 + self.shared.now_ms() + self.skew;
        let mut body = Map::new();
        body.insert("sent_at".into(), sent_at.into());
        body.insert("events".into(), Value::Array(beacon.events.into_iter().map(Value::Object).collect()));
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let gzip = !beacon.last && knobs.gzip_rate > 0.0 && self.rng.random_bool(knobs.gzip_rate);
        let request = Request { body: if gzip { gzip_bytes(&json) } else { json }, gzip, text_plain: beacon.last };
        let copies = if knobs.duplicate_rate > 0.0 && self.rng.random_bool(knobs.duplicate_rate) { 2 } else { 1 };
        for copy in 0..copies {
            if !self.deliver(&request, n, copy == 0).await {
                self.delivered = false;
                return;
            }
            if copy > 0 {
                self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Posts until acknowledged, retrying what an SDK retries; counts the events as sent if `first`
    /// (not a duplicate copy). Returns whether every event was accepted.
    async fn deliver(&mut self, req: &Request, events: usize, first: bool) -> bool {
        let shared = &self.shared;
        let stats = &shared.stats;
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=MAX_ATTEMPTS {
            let mut builder = shared.client.post(&shared.url).header("user-agent", self.user_agent);
            if req.text_plain {
                // sendBeacon: no custom headers, so the key rides in the query string.
                builder = builder.header("content-type", "text/plain;charset=UTF-8");
                if let Some(key) = &shared.key {
                    builder = builder.query(&[("key", key)]);
                }
            } else {
                builder = builder.header("content-type", "application/json");
                if let Some(key) = &shared.key {
                    builder = builder.header("x-qoeflow-key", key);
                }
            }
            if req.gzip {
                builder = builder.header("content-encoding", "gzip");
            }
            // Every request counts against `--rate-limit`: retries and duplicate copies too.
            shared.rate_limit(events).await;
            let permit = shared.in_flight.acquire().await;
            let started = Instant::now();
            let result = {
                match builder.body(req.body.clone()).send().await {
                    Ok(r) => {
                        let status = r.status();
                        let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        let text = r.text().await.unwrap_or_default();
                        Ok((status, retry_after, text))
                    }
                    Err(e) => Err(e),
                }
            };
            let latency = started.elapsed();
            drop(permit);
            let retry_after = match result {
                Ok((status, _, text)) if status.is_success() => {
                    stats.record_latency(latency);
                    stats.beacons_ok.fetch_add(1, Ordering::Relaxed);
                    let rejected = if status.as_u16() == 200 { rejected_count(&text) } else { 0 };
                    if first {
                        stats.events_ok.fetch_add((events - rejected.min(events)) as u64, Ordering::Relaxed);
                    }
                    if rejected > 0 {
                        stats.rejected_events.fetch_add(rejected as u64, Ordering::Relaxed);
                        tracing::warn!(rejected, body = %text, "collector rejected events");
                        return false;
                    }
                    return true;
                }
                Ok((status, retry_after, _)) if status.as_u16() == 429 || status.is_server_error() => {
                    if matches!(status.as_u16(), 429 | 503) {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    retry_after.map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
                }
                Ok((status, _, text)) => {
                    // 400, 401, 413, 415: a real SDK drops the beacon; so do we, loudly.
                    stats.failed_beacons.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%status, body = %text, "beacon refused");
                    return false;
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "beacon not delivered, retrying");
                    None
                }
            };
            if attempt == MAX_ATTEMPTS {
                break;
            }
            stats.retries.fetch_add(1, Ordering::Relaxed);
            // Exponential backoff with jitter, never sooner than the server's Retry-After: a crowd of
            // clients told "1 s" would otherwise come back together, attempt after attempt.
            let jitter = self.rng.random_range(0.5..1.5);
            let wait = backoff.mul_f64(jitter).max(retry_after.unwrap_or_default());
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        stats.failed_beacons.fetch_add(1, Ordering::Relaxed);
        tracing::error!(attempts = MAX_ATTEMPTS, "beacon not delivered; giving up");
        false
    }
}

struct Request {
    body: Vec<u8>,
    gzip: bool,
    text_plain: bool,
}

fn rejected_count(text: &str) -> usize {
    serde_json::from_str::<Value>(text).ok().and_then(|v| v.get("rejected")?.as_array().map(Vec::len)).unwrap_or(0)
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// The progress display: rate, views active, errors.
async fn progress(shared: Arc<Shared>, viewers: u64) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_secs(1) } else { Duration::from_secs(10) };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let s = &shared.stats;
    let (mut last_events, mut last_beacons) = (0, 0);
    loop {
        tick.tick().await;
        let events = s.events_ok.load(Ordering::Relaxed);
        let beacons = s.beacons_ok.load(Ordering::Relaxed);
        let started = s.views_started.load(Ordering::Relaxed);
        let done = s.views_done.load(Ordering::Relaxed);
        let secs = every.as_secs_f64();
        let line = format!(
            "[{:>6.1}s] views {started}/{viewers} active {} done {done} | {:.0} ev/s {:.0} beacons/s | retries {} failed {} rejected {}",
            shared.start.elapsed().as_secs_f64(),
            started.saturating_sub(done),
            (events - last_events) as f64 / secs,
            (beacons - last_beacons) as f64 / secs,
            s.retries.load(Ordering::Relaxed),
            s.failed_beacons.load(Ordering::Relaxed),
            s.rejected_events.load(Ordering::Relaxed),
        );
        (last_events, last_beacons) = (events, beacons);
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn nearest_rank_matches_hdrhistogram_ranks() {
        let values: Vec<i64> = (1..=1000).map(|v| v * 3).collect();
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram");
        for v in &values {
            h.record(*v as u64).expect("record");
        }
        for q in [0.5, 0.9, 0.95, 0.99] {
            let exact = nearest_rank(&values, q).expect("non-empty");
            assert_eq!(h.value_at_quantile(q), h.highest_equivalent(exact as u64), "q={q}");
        }
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[7], 0.95), Some(7));
    }

    #[test]
    fn flushes_carry_every_event_once_in_order_like_an_sdk() {
        let spec = RunSpec::new(3, 600_000, 60_000);
        for i in 0..300 {
            let events: Vec<_> = ViewSim::new(&spec, i, 0).collect();
            let flushes: Vec<Flush> = Flushes::new(ViewSim::new(&spec, i, 0)).collect();
            let sent: Vec<&Map<String, Value>> = flushes.iter().flat_map(|f| &f.events).collect();
            let want: Vec<&Map<String, Value>> = events.iter().map(|e| &e.json).collect();
            assert_eq!(sent, want, "view {i}: every event once, in seq order");
            let at: HashMap<u64, i64> = events.iter().map(|e| (e.json["seq"].as_u64().unwrap_or(0), e.at_ms)).collect();
            let mut last_due = i64::MIN;
            for (n, f) in flushes.iter().enumerate() {
                assert!(!f.events.is_empty() && f.at_ms >= last_due, "view {i}: flushes non-empty and in time order");
                last_due = f.at_ms;
                assert_eq!(f.last, n == flushes.len() - 1, "view {i}: only the final flush is the last");
                for e in &f.events {
                    let happened = at[&e["seq"].as_u64().unwrap_or(0)];
                    assert!(happened <= f.at_ms && f.at_ms - happened <= FLUSH_MS, "view {i}: an event waits at most one flush period");
                }
            }
        }
    }

    #[test]
    fn totals_have_exactly_the_contract_keys() {
        let mut t = Totals { views: 3, startup_ms_p50: Some(7), ..Totals::default() };
        t.sums[Measure::BytesTotal] = 11;
        let json = serde_json::to_value(&t).expect("json");
        assert_eq!(serde_json::from_value::<Totals>(json.clone()).expect("read back"), t);
        let mut keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        let mut want = truth_keys();
        want.sort_unstable();
        keys.sort_unstable();
        assert_eq!(keys, want);
    }
}
