//! The simulated player: one view's events, generated lazily in time order, and — from the same
//! decisions, never by replaying the events through qoeflow's code — the view's ground truth.
//!
//! A view is drawn from a profile (CDN × device × network × stream type). The CDN and device set the
//! start-up time and the cache-hit probability; the network sets the stall rate and length, the
//! highest rung of the bitrate ladder it sustains, and the failure rates. The player then goes through
//! start-up (segments, maybe a stall that is part of start-up, maybe a start failure or an exit before
//! the start) and plays segment by segment, with stalls (some cut short by a seek), seeks (some with a
//! seek stall), pauses, ABR switches up and down, non-fatal errors and playback failures, a heartbeat
//! every 10 s, and a `viewend` when the viewer leaves or the run ends.
//!
//! The truth is accounted as each decision is taken: the simulator knows how long it decided to play or
//! stall, so it adds exactly that. The definitions it follows are `docs/metrics.md`'s; the simulator only
//! produces sequences whose meaning under those rules is unambiguous (no stall while paused; after a
//! fatal error only heartbeats and `viewend`; a `stall_end` before the first frame only after a
//! `stall_start` that start-up ignores, as the state machine does). Heartbeats go out every 10 s
//! whatever the state, as SDKs that keep a view alive do.

use std::collections::VecDeque;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use schemas::measures::Measure::*;
use schemas::measures::{HISTOGRAM_MEASURE, MEASURES, Values};
use schemas::tables::ColType;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value, json};

/// Heartbeat period of the simulated SDK (sim time).
pub const HEARTBEAT_MS: i64 = 10_000;

/// The bitrate ladder (kbps, height).
const LADDER: [(u32, u32); 6] = [(400, 240), (800, 360), (1_600, 480), (3_000, 720), (4_500, 1080), (6_500, 1080)];

struct Cdn {
    name: &'static str,
    host: &'static str,
    weight: f64,
    hit_prob: f64,
    /// Share of segments without a cache header (cache unknown).
    unknown_prob: f64,
    /// Median start-up time on a desktop on fiber.
    startup_ms: f64,
}

const CDNS: [Cdn; 3] = [
    Cdn { name: "akamai", host: "vod.akamaized.net", weight: 0.45, hit_prob: 0.96, unknown_prob: 0.01, startup_ms: 850.0 },
    Cdn { name: "fastly", host: "media.fastly.net", weight: 0.35, hit_prob: 0.92, unknown_prob: 0.02, startup_ms: 800.0 },
    Cdn { name: "cloudfront", host: "d1.cloudfront.net", weight: 0.20, hit_prob: 0.84, unknown_prob: 0.05, startup_ms: 1_050.0 },
];

struct Device {
    name: &'static str,
    weight: f64,
    user_agent: &'static str,
    player_name: &'static str,
    player_version: &'static str,
    startup_factor: f64,
    /// Highest ladder rung the screen asks for.
    top_rung: usize,
}

const DEVICES: [Device; 4] = [
    Device {
        name: "desktop",
        weight: 0.40,
        user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        player_name: "hls.js",
        player_version: "1.5.17",
        startup_factor: 1.0,
        top_rung: 5,
    },
    Device {
        name: "mobile",
        weight: 0.38,
        user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        player_name: "avplayer",
        player_version: "17.5",
        startup_factor: 1.35,
        top_rung: 3,
    },
    Device {
        name: "tablet",
        weight: 0.10,
        user_agent: "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        player_name: "avplayer",
        player_version: "17.5",
        startup_factor: 1.2,
        top_rung: 4,
    },
    Device {
        name: "tv",
        weight: 0.12,
        user_agent: "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.5) AppleWebKit/537.36 (KHTML, like Gecko) 85.0.4183.93/6.5 TV Safari/537.36",
        player_name: "shaka-player",
        player_version: "4.11.2",
        startup_factor: 1.6,
        top_rung: 5,
    },
];

struct Network {
    name: &'static str,
    weight: f64,
    startup_factor: f64,
    /// Stalls per minute of play.
    stalls_per_min: f64,
    /// Median stall length.
    stall_ms: f64,
    /// Highest rung the bandwidth sustains.
    top_rung: usize,
    /// Probability that an attempt fails to start.
    vsf_prob: f64,
    /// Playback failures per minute of play.
    failures_per_min: f64,
}

const NETWORKS: [Network; 4] = [
    Network { name: "fiber", weight: 0.30, startup_factor: 0.8, stalls_per_min: 0.03, stall_ms: 600.0, top_rung: 5, vsf_prob: 0.006, failures_per_min: 0.005 },
    Network { name: "cable", weight: 0.35, startup_factor: 1.0, stalls_per_min: 0.08, stall_ms: 900.0, top_rung: 4, vsf_prob: 0.01, failures_per_min: 0.01 },
    Network { name: "4g", weight: 0.25, startup_factor: 1.4, stalls_per_min: 0.25, stall_ms: 1_500.0, top_rung: 3, vsf_prob: 0.02, failures_per_min: 0.02 },
    Network { name: "3g", weight: 0.10, startup_factor: 2.6, stalls_per_min: 0.9, stall_ms: 2_800.0, top_rung: 1, vsf_prob: 0.05, failures_per_min: 0.05 },
];

/// What every view of a run shares.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub seed: u64,
    /// The run lasts this long (sim time); every view ends by then.
    pub duration_ms: i64,
    /// Views arrive uniformly over this first part of the run.
    pub ramp_ms: i64,
    /// CDNs that degrade for a while.
    pub degrade: Vec<Degrade>,
}

impl RunSpec {
    pub fn new(seed: u64, duration_ms: i64, ramp_ms: i64) -> RunSpec {
        RunSpec { seed, duration_ms, ramp_ms, degrade: Vec::new() }
    }
}

/// A CDN that degrades for a while (`qoeflow loadgen --degrade`), for testing alerts: a view on `cdn`
/// whose play request falls in `[from_ms, to_ms)` (sim time since the run's start) fails to start with
/// probability `vsf` instead of its network's, and its stalls while playing in that period are
/// `stall_factor` times as likely. The truth counts what the degraded viewers did, as always.
///
/// Written `CDN:FROM-TO:vsf=P[,stalls=F]`, e.g. `fastly:30s-90s:vsf=0.5` or `akamai:1m-3m:stalls=20`.
#[derive(Clone, Debug, PartialEq)]
pub struct Degrade {
    pub cdn: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub vsf: Option<f64>,
    pub stall_factor: Option<f64>,
}

impl Degrade {
    fn covers(&self, t: i64) -> bool {
        (self.from_ms..self.to_ms).contains(&t)
    }
}

impl std::str::FromStr for Degrade {
    type Err = String;

    fn from_str(s: &str) -> Result<Degrade, String> {
        let usage = "expected CDN:FROM-TO:vsf=P[,stalls=F] (e.g. fastly:30s-90s:vsf=0.5)";
        let mut parts = s.splitn(3, ':');
        let (Some(cdn), Some(period), Some(effects)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{s:?}: {usage}"));
        };
        if !CDNS.iter().any(|c| c.name == cdn) {
            let names: Vec<&str> = CDNS.iter().map(|c| c.name).collect();
            return Err(format!("{s:?}: unknown CDN {cdn:?} (the simulation's CDNs are {})", names.join(", ")));
        }
        let ms = |d: &str| -> Result<i64, String> {
            humantime::parse_duration(d).map(|d| d.as_millis() as i64).map_err(|e| format!("{s:?}: time {d:?}: {e}"))
        };
        let (from, to) = period.split_once('-').ok_or_else(|| format!("{s:?}: period {period:?} is not FROM-TO"))?;
        let mut d = Degrade { cdn: cdn.to_owned(), from_ms: ms(from)?, to_ms: ms(to)?, vsf: None, stall_factor: None };
        if d.from_ms >= d.to_ms {
            return Err(format!("{s:?}: the period must end after it starts"));
        }
        for effect in effects.split(',') {
            let (k, v) = effect.split_once('=').ok_or_else(|| format!("{s:?}: {effect:?} is not KIND=VALUE; {usage}"))?;
            let v: f64 = v.parse().map_err(|_| format!("{s:?}: {k}={v:?} is not a number"))?;
            match k {
                "vsf" if (0.0..=1.0).contains(&v) => d.vsf = Some(v),
                "vsf" => return Err(format!("{s:?}: vsf is a probability, 0 to 1")),
                "stalls" if (0.0..=1000.0).contains(&v) => d.stall_factor = Some(v),
                "stalls" => return Err(format!("{s:?}: stalls is a factor, 0 to 1000")),
                _ => return Err(format!("{s:?}: unknown effect {k:?} (vsf or stalls)")),
            }
        }
        Ok(d)
    }
}

/// One view's ground truth: its profile and every per-view measure of `docs/metrics.md`, as the simulation
/// decided them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ViewTruth {
    pub view_id: String,
    pub arrival_ms: i64,
    pub cdn: &'static str,
    pub device: &'static str,
    pub network: &'static str,
    pub stream_type: &'static str,
    pub video_id: String,
    /// Every per-view measure of `schemas::measures` (and the window-only byte total).
    #[serde(flatten)]
    pub measures: ViewMeasures,
    /// Events the view generated (each sent once by the simulation; duplicates are the sender's).
    pub events: u64,
    /// Every beacon of the view was acknowledged (set by the sender).
    pub delivered: bool,
}

/// A view's measures, serialized by their `views` column names (flags as booleans, the start time
/// null when the view did not start), as the `views` table holds them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewMeasures(pub Values);

impl Serialize for ViewMeasures {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for def in &MEASURES {
            let Some((name, ty)) = def.view else { continue };
            let v = self.0[def.measure];
            if def.measure == HISTOGRAM_MEASURE {
                map.serialize_entry(name, &self.0.flag(Started).then_some(v))?;
            } else if ty == ColType::Bool {
                map.serialize_entry(name, &(v != 0))?;
            } else {
                map.serialize_entry(name, &v)?;
            }
        }
        map.end()
    }
}

/// One generated event: when it happens (sim ms since the run start), its JSON, and whether the SDK
/// flushes its queue right after it.
#[derive(Clone, Debug)]
pub struct SimEvent {
    pub at_ms: i64,
    pub json: Map<String, Value>,
    pub flush: bool,
    pub last: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Arrive,
    Playing,
    Done,
}

/// A view being simulated. Iterate it for its events in `seq` order; once exhausted, [`ViewSim::truth`]
/// holds its ground truth.
pub struct ViewSim {
    rng: SmallRng,
    phase: Phase,
    /// Sim time of the last generated event.
    t: i64,
    /// The viewer leaves at this time (or the run ends).
    end: i64,
    seq: u64,
    next_heartbeat: i64,
    /// Client clock at sim time 0 (epoch ms, skew included).
    clock0: i64,
    rung: usize,
    top_rung: usize,
    playhead_ms: i64,
    segment_ms: i64,
    cdn: &'static Cdn,
    device: &'static Device,
    network: &'static Network,
    /// The periods its CDN degrades.
    degrade: Vec<Degrade>,
    out: VecDeque<SimEvent>,
    truth: ViewTruth,
}

fn pick<T>(rng: &mut SmallRng, items: &'static [T], weight: impl Fn(&T) -> f64) -> &'static T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut x = rng.random::<f64>() * total;
    for item in items {
        x -= weight(item);
        if x < 0.0 {
            return item;
        }
    }
    &items[items.len() - 1]
}

/// A log-normal draw with the given median and shape, clamped to `[lo, hi]`, in whole ms.
fn lognormal(rng: &mut SmallRng, median: f64, sigma: f64, lo: i64, hi: i64) -> i64 {
    // Parameters are finite and sigma > 0 at every call site.
    let d = LogNormal::new(median.ln(), sigma).expect("valid log-normal parameters");
    (d.sample(rng).round() as i64).clamp(lo, hi)
}

/// The deterministic seed of view `index` of a run seeded `seed` (also used by the sender, with a
/// different `stream`, so its knobs never change what the viewers do).
pub fn view_seed(seed: u64, index: u64, stream: u64) -> u64 {
    // SplitMix64 finalizer over the three inputs: nearby indices get unrelated streams.
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ViewSim {
    /// View `index` of the run. `clock0` is the client's clock at sim time 0 (the run's start epoch plus
    /// this client's skew).
    pub fn new(spec: &RunSpec, index: u64, clock0: i64) -> ViewSim {
        let mut rng = SmallRng::seed_from_u64(view_seed(spec.seed, index, 0));
        let arrival = rng.random_range(0..spec.ramp_ms.max(1));
        let cdn = pick(&mut rng, &CDNS, |c| c.weight);
        let device = pick(&mut rng, &DEVICES, |d| d.weight);
        let network = pick(&mut rng, &NETWORKS, |n| n.weight);
        let live = rng.random_bool(0.2);
        let watch = if live { lognormal(&mut rng, 600_000.0, 1.0, 5_000, 4 * 3_600_000) } else { lognormal(&mut rng, 180_000.0, 1.0, 5_000, 3 * 3_600_000) };
        let video = if live { rng.random_range(0..8) } else { rng.random_range(0..400) };
        let truth = ViewTruth {
            view_id: format!("lg-{:x}-{index:08}", spec.seed),
            arrival_ms: arrival,
            cdn: cdn.name,
            device: device.name,
            network: network.name,
            stream_type: if live { "live" } else { "vod" },
            video_id: if live { format!("live-{video}") } else { format!("vod-{video:04}") },
            ..ViewTruth::default()
        };
        ViewSim {
            rng,
            phase: Phase::Arrive,
            t: arrival,
            end: (arrival + watch).min(spec.duration_ms).max(arrival),
            seq: 0,
            next_heartbeat: arrival + HEARTBEAT_MS,
            clock0,
            rung: 0,
            top_rung: device.top_rung.min(network.top_rung),
            playhead_ms: 0,
            segment_ms: if live { 2_000 } else { 4_000 },
            cdn,
            device,
            network,
            degrade: spec.degrade.iter().filter(|d| d.cdn == cdn.name).cloned().collect(),
            out: VecDeque::new(),
            truth,
        }
    }

    pub fn view_id(&self) -> &str {
        &self.truth.view_id
    }

    /// The degradation of this view's CDN at sim time `t`, if any.
    fn degraded(&self, t: i64) -> Option<&Degrade> {
        self.degrade.iter().find(|d| d.covers(t))
    }

    pub fn arrival_ms(&self) -> i64 {
        self.truth.arrival_ms
    }

    pub fn user_agent(&self) -> &'static str {
        self.device.user_agent
    }

    /// The ground truth (complete once the iterator is exhausted).
    pub fn truth(&self) -> &ViewTruth {
        &self.truth
    }

    pub fn into_truth(self) -> ViewTruth {
        self.truth
    }

    /// Emits an event at `at` (never before the previous one), heartbeats due before it first.
    fn emit(&mut self, at: i64, kind: &str, extra: Value) {
        let at = at.max(self.t);
        while self.next_heartbeat <= at && kind != "viewstart" {
            let hb = self.next_heartbeat;
            self.next_heartbeat += HEARTBEAT_MS;
            self.push(hb, "heartbeat", Value::Null);
        }
        self.push(at, kind, extra);
    }

    fn push(&mut self, at: i64, kind: &str, extra: Value) {
        self.t = at;
        let mut m = Map::new();
        m.insert("view_id".into(), Value::String(self.truth.view_id.clone()));
        m.insert("seq".into(), self.seq.into());
        m.insert("type".into(), kind.into());
        m.insert("ts".into(), (self.clock0 + at).into());
        m.insert("playhead_ms".into(), self.playhead_ms.into());
        if let Value::Object(x) = extra {
            m.extend(x);
        }
        self.seq += 1;
        self.truth.events += 1;
        // Like an SDK: the queue goes out at once after the play request, the first frame, an error and
        // the end of the view; everything else waits for the periodic flush.
        let flush = match kind {
            "playrequest" | "error" | "viewend" => true,
            "playing" => self.phase == Phase::Arrive,
            _ => false,
        };
        self.out.push_back(SimEvent { at_ms: at, json: m, flush, last: kind == "viewend" });
    }

    fn segment(&mut self, at: i64) {
        let (kbps, _) = LADDER[self.rung];
        let bytes = kbps as u64 * self.segment_ms as u64 / 8;
        let x = self.rng.random::<f64>();
        let cache = if x < self.cdn.unknown_prob {
            self.truth.measures.0[SegmentsUnknown] += 1;
            self.truth.measures.0[BytesUnknown] += bytes as i64;
            Value::Null
        } else if x < self.cdn.unknown_prob + (1.0 - self.cdn.unknown_prob) * self.cdn.hit_prob {
            self.truth.measures.0[SegmentsHit] += 1;
            self.truth.measures.0[BytesHit] += bytes as i64;
            self.truth.measures.0[BytesTotal] += bytes as i64;
            "hit".into()
        } else {
            self.truth.measures.0[SegmentsMiss] += 1;
            self.truth.measures.0[BytesMiss] += bytes as i64;
            self.truth.measures.0[BytesTotal] += bytes as i64;
            "miss".into()
        };
        let ttfb = lognormal(&mut self.rng, 40.0, 0.6, 5, 5_000);
        let mut extra = json!({"bytes": bytes, "host": self.cdn.host, "duration_ms": ttfb + self.rng.random_range(50..600), "ttfb_ms": ttfb});
        if !cache.is_null() {
            extra["cache"] = cache;
        }
        self.emit(at, "segment", extra);
    }

    fn quality(&mut self, at: i64, rung: usize) {
        let (kbps, height) = LADDER[rung];
        if self.truth.measures.0.flag(Started) {
            let (prev, _) = LADDER[self.rung];
            if kbps > prev {
                self.truth.measures.0[SwitchesUp] += 1;
            } else if kbps < prev {
                self.truth.measures.0[SwitchesDown] += 1;
            }
        }
        self.rung = rung;
        self.emit(at, "quality_change", json!({"bitrate_kbps": kbps, "width": height * 16 / 9, "height": height, "codec": "avc1.64001f"}));
    }

    fn error(&mut self, at: i64, fatal: bool) {
        self.truth.measures.0[Errors] += 1;
        let (code, message) = if fatal { ("MEDIA_ERR_NETWORK", "fragment load failed after retries") } else { ("FRAG_LOAD_TIMEOUT", "fragment load timed out, retrying") };
        if fatal {
            self.truth.measures.0[FatalErrors] += 1;
        }
        self.emit(at, "error", json!({"code": code, "message": message, "fatal": fatal}));
    }

    /// Plays from the current time for `d` ms (or until the viewer leaves); returns false if the view
    /// ended.
    fn play(&mut self, d: i64) -> bool {
        let until = (self.t + d).min(self.end);
        let d = until - self.t;
        self.truth.measures.0[PlayMs] += d;
        self.truth.measures.0[BitrateMs] += LADDER[self.rung].0 as i64 * d;
        // The initial rendition is chosen before the first frame: every played ms has a bitrate.
        self.truth.measures.0[BitrateKnownMs] += d;
        self.playhead_ms += d;
        self.t = until;
        if until >= self.end {
            self.viewend(until);
            return false;
        }
        true
    }

    /// A stall from now lasting `d` (cut at the viewer's departure); `seek` marks a seek stall. Returns
    /// the time it ends, or `None` if the view ended during it.
    fn stall(&mut self, d: i64, seek: bool) -> Option<i64> {
        let start = self.t;
        self.truth.measures.0[StallCount] += 1;
        self.emit(start, "stall_start", Value::Null);
        let until = (start + d).min(self.end);
        self.truth.measures.0[StallMs] += until - start;
        if seek {
            self.truth.measures.0[SeekStallMs] += until - start;
        }
        if until >= self.end {
            self.viewend(until);
            return None;
        }
        Some(until)
    }

    fn viewend(&mut self, at: i64) {
        if self.truth.measures.0.flag(Attempt) && !self.truth.measures.0.flag(Started) && !self.truth.measures.0.flag(Vsf) {
            self.truth.measures.0.set_flag(Ebvs, true);
        }
        self.emit(at, "viewend", Value::Null);
        self.phase = Phase::Done;
    }

    /// Arrival, play request and start-up, up to the first frame or the end of the view.
    fn arrive(&mut self) {
        let t0 = self.t;
        self.emit(
            t0,
            "viewstart",
            json!({
                "video_id": self.truth.video_id, "video_title": format!("Title {}", self.truth.video_id),
                "stream_type": self.truth.stream_type, "player_name": self.device.player_name,
                "player_version": self.device.player_version, "cdn": self.cdn.name,
                "page_url": format!("https://watch.example.com/{}", self.truth.video_id),
                "custom": {"network": self.network.name},
            }),
        );
        // Some visitors never press play.
        if self.rng.random_bool(0.03) {
            let leave = (t0 + self.rng.random_range(2_000..20_000)).min(self.end);
            return self.viewend(leave);
        }
        let request = t0 + self.rng.random_range(300..2_500);
        if request >= self.end {
            return self.viewend(self.end);
        }
        self.truth.measures.0.set_flag(Attempt, true);
        self.emit(request, "playrequest", Value::Null);
        let median = self.cdn.startup_ms * self.device.startup_factor * self.network.startup_factor;
        let startup = lognormal(&mut self.rng, median, 0.45, 120, 60_000);
        let first_frame = request + startup;
        // How start-up ends: a start failure, the viewer giving up, or the first frame. The longer the
        // start, the likelier the viewer leaves.
        let give_up = 0.01 + (startup as f64 / 40_000.0).min(0.4);
        let vsf_prob = self.degraded(request).and_then(|d| d.vsf).unwrap_or(self.network.vsf_prob);
        let (stop_at, stop) = if self.rng.random_bool(vsf_prob) {
            (request + (startup as f64 * self.rng.random_range(0.2..0.95)) as i64, "vsf")
        } else if self.rng.random_bool(give_up) {
            (request + (startup as f64 * self.rng.random_range(0.3..0.98)) as i64, "ebvs")
        } else {
            (first_frame, "start")
        };
        let (stop_at, stop) = if stop_at >= self.end { (self.end, "ebvs") } else { (stop_at, stop) };
        // Start-up activity before `stop_at`, in time order.
        self.rung = if self.top_rung >= 2 { 2 } else { self.top_rung };
        let initial = self.rung;
        let rendition_at = request + self.rng.random_range(5..60).min(startup / 4);
        let mut plan: Vec<(i64, u8)> = vec![(rendition_at, 0)];
        for k in 1..=self.rng.random_range(1..=3i64) {
            plan.push((request + startup * k / 4, 1));
        }
        if self.rng.random_bool(0.12) {
            // A stall before the first frame: part of start-up, not a rebuffer.
            plan.push((request + startup * 2 / 5, 2));
            plan.push((request + startup * 7 / 10, 3));
        }
        if self.rng.random_bool(0.02) {
            plan.push((request + startup / 3, 4));
        }
        plan.sort_by_key(|&(at, what)| (at, what));
        for (at, what) in plan {
            if at >= stop_at {
                break;
            }
            match what {
                // The initial rendition: before the start, so not a switch.
                0 => self.quality(at, initial),
                1 => self.segment(at),
                2 => self.emit(at, "stall_start", Value::Null),
                3 => self.emit(at, "stall_end", Value::Null),
                _ => self.error(at, false),
            }
        }
        match stop {
            "vsf" => {
                self.truth.measures.0.set_flag(Vsf, true);
                self.error(stop_at, true);
                let leave = (stop_at + self.rng.random_range(300..3_000)).min(self.end.max(stop_at));
                self.viewend(leave);
            }
            "ebvs" => self.viewend(stop_at),
            _ => {
                self.truth.measures.0.set_flag(Started, true);
                self.truth.measures.0[StartupMs] = startup;
                self.emit(first_frame, "playing", Value::Null);
                self.phase = Phase::Playing;
            }
        }
    }

    /// One segment's worth of playback and what happens at its end.
    fn playing_step(&mut self) {
        let seg = self.segment_ms;
        self.segment(self.t);
        // A playback failure somewhere in this segment.
        if self.rng.random_bool((self.network.failures_per_min * seg as f64 / 60_000.0).min(1.0)) {
            let d = self.rng.random_range(0..seg);
            if !self.play(d) {
                return;
            }
            self.truth.measures.0.set_flag(PlaybackFailure, true);
            self.error(self.t, true);
            let leave = (self.t + self.rng.random_range(300..2_000)).min(self.end.max(self.t));
            return self.viewend(leave);
        }
        if !self.play(seg) {
            return;
        }
        let factor = self.degraded(self.t).and_then(|d| d.stall_factor).unwrap_or(1.0);
        let stall_p = factor * self.network.stalls_per_min * seg as f64 / 60_000.0 * (1.0 + 0.6 * self.rung.saturating_sub(1) as f64 / 4.0);
        let x = self.rng.random::<f64>();
        if x < stall_p.min(0.5) {
            let d = lognormal(&mut self.rng, self.network.stall_ms, 0.8, 80, 30_000);
            if self.rng.random_bool(0.1) {
                // The viewer seeks out of the stall: the stall ends at the seek (a normal stall).
                let cut = (d as f64 * self.rng.random_range(0.3..0.9)) as i64;
                let Some(at) = self.stall(cut, false) else { return };
                return self.seek(at);
            }
            let Some(at) = self.stall(d, false) else { return };
            let resume = if self.rng.random_bool(0.2) { "playing" } else { "stall_end" };
            self.emit(at, resume, Value::Null);
            if self.rung > 0 && self.rng.random_bool(0.6) {
                self.quality(at, self.rung - 1);
            }
        } else if x < stall_p.min(0.5) + 0.03 {
            self.seek(self.t);
        } else if x < stall_p.min(0.5) + 0.04 {
            let at = self.t;
            self.emit(at, "pause", Value::Null);
            let resume = at + lognormal(&mut self.rng, 8_000.0, 1.0, 500, 120_000);
            if resume >= self.end {
                return self.viewend(self.end);
            }
            self.emit(resume, "playing", Value::Null);
        } else if x < stall_p.min(0.5) + 0.14 {
            // ABR: up when the network and screen allow (a band of its own, so a viewer at the top
            // rung does not switch down or fail more often).
            if self.rung < self.top_rung {
                self.quality(self.t, self.rung + 1);
            }
        } else if x < stall_p.min(0.5) + 0.16 {
            if self.rung > 0 {
                self.quality(self.t, self.rung - 1);
            }
        } else if x < stall_p.min(0.5) + 0.165 {
            self.error(self.t, false);
        }
    }

    /// A seek from `at`: `seeking`, `seeked`, maybe a seek stall, then `playing`.
    fn seek(&mut self, at: i64) {
        self.emit(at, "seeking", Value::Null);
        let seeked = at + self.rng.random_range(30..400);
        if seeked >= self.end {
            return self.viewend(self.end);
        }
        self.playhead_ms = self.rng.random_range(0..3_600_000);
        self.emit(seeked, "seeked", Value::Null);
        if self.rng.random_bool(0.5) {
            let stall_at = seeked + self.rng.random_range(0..30);
            if stall_at >= self.end {
                return self.viewend(self.end);
            }
            self.t = stall_at;
            let d = lognormal(&mut self.rng, 500.0, 0.7, 40, 10_000);
            let Some(resume) = self.stall(d, true) else { return };
            self.emit(resume, "playing", Value::Null);
        } else {
            let resume = seeked + self.rng.random_range(20..200);
            if resume >= self.end {
                return self.viewend(self.end);
            }
            self.emit(resume, "playing", Value::Null);
        }
    }
}

impl Iterator for ViewSim {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        while self.out.is_empty() {
            match self.phase {
                Phase::Arrive => self.arrive(),
                Phase::Playing => self.playing_step(),
                Phase::Done => return None,
            }
        }
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::view::{Discard, ViewMachine};

    fn spec() -> RunSpec {
        RunSpec::new(42, 600_000, 300_000)
    }

    #[test]
    fn a_view_is_deterministic_in_its_seed() {
        let a: Vec<_> = ViewSim::new(&spec(), 7, 0).map(|e| e.json).collect();
        let b: Vec<_> = ViewSim::new(&spec(), 7, 0).map(|e| e.json).collect();
        assert_eq!(a, b);
        let c: Vec<_> = ViewSim::new(&spec(), 8, 0).map(|e| e.json).collect();
        assert_ne!(a, c);
    }

    /// The simulation's own accounting equals qoeflow's state machine over the events it produced, on
    /// thousands of views (a cross-check of two independent implementations of §4).
    #[test]
    fn truth_equals_the_state_machine_over_the_generated_events() {
        let mut outcomes = [0u64; 5];
        for i in 0..3_000 {
            let mut sim = ViewSim::new(&spec(), i, 1_700_000_000_000);
            let mut machine = ViewMachine::new();
            let mut seqs = Vec::new();
            let mut last_at = i64::MIN;
            for e in sim.by_ref() {
                assert!(e.at_ms >= last_at, "events in time order");
                last_at = e.at_ms;
                seqs.push(e.json["seq"].as_u64().expect("seq"));
                let event = schemas::validate_event_map(&e.json).expect("valid event");
                machine.apply(&event, &mut Discard);
            }
            assert!(machine.is_ended(), "view {i} ended");
            assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
            let t = sim.truth();
            // Every measure (the byte total and the bitrate's known time included).
            assert_eq!(machine.totals, t.measures.0, "view {i}");
            let m = &t.measures.0;
            outcomes[0] += u64::from(m.flag(Started));
            outcomes[1] += u64::from(m.flag(Vsf));
            outcomes[2] += u64::from(m.flag(Ebvs));
            outcomes[3] += u64::from(m.flag(PlaybackFailure));
            outcomes[4] += u64::from(!m.flag(Attempt));
        }
        // Every outcome occurs: the traffic exercises every rule.
        assert!(outcomes.iter().all(|&n| n > 0), "outcomes (started, vsf, ebvs, playback failure, no attempt): {outcomes:?}");
    }

    /// `--degrade fastly:…:vsf=0.6`: fastly's views whose play request falls in the period fail to start
    /// about 60 % of the time, the others and the rest of fastly's as usual; the state machine still
    /// agrees with the truth.
    #[test]
    fn a_degraded_cdn_fails_to_start_in_its_period_only() {
        let mut spec = spec();
        spec.degrade = vec!["fastly:100s-200s:vsf=0.6".parse().expect("valid")];
        let (mut inside, mut outside) = ([0u64; 2], [0u64; 2]);
        for i in 0..4_000 {
            let mut sim = ViewSim::new(&spec, i, 1_700_000_000_000);
            let mut request = None;
            let mut machine = ViewMachine::new();
            for e in sim.by_ref() {
                if e.json["type"] == "playrequest" {
                    request = Some(e.at_ms);
                }
                machine.apply(&schemas::validate_event_map(&e.json).expect("valid event"), &mut Discard);
            }
            let t = sim.truth();
            assert_eq!(machine.totals, t.measures.0, "view {i}");
            let Some(at) = request else { continue };
            let bucket = if t.cdn == "fastly" && (100_000..200_000).contains(&at) { &mut inside } else { &mut outside };
            bucket[0] += 1;
            bucket[1] += u64::from(t.measures.0.flag(Vsf));
        }
        let rate = |b: [u64; 2]| b[1] as f64 / b[0] as f64;
        assert!(inside[0] > 200 && (0.5..0.7).contains(&rate(inside)), "degraded: {inside:?}");
        assert!(rate(outside) < 0.05, "elsewhere: {outside:?}");
    }

    #[test]
    fn degrade_specs_are_checked() {
        let d: Degrade = "akamai:1m-3m:stalls=20,vsf=0.1".parse().expect("valid");
        assert_eq!(d, Degrade { cdn: "akamai".into(), from_ms: 60_000, to_ms: 180_000, vsf: Some(0.1), stall_factor: Some(20.0) });
        for (bad, says) in [
            ("nope:1s-2s:vsf=0.5", "unknown CDN"),
            ("fastly:2s-1s:vsf=0.5", "end after"),
            ("fastly:1s-2s:vsf=1.5", "probability"),
            ("fastly:1s-2s:speed=2", "unknown effect"),
            ("fastly:1s", "expected CDN"),
        ] {
            let err = bad.parse::<Degrade>().expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
