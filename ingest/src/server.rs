//! The collector's HTTP surface: `POST /v1/beacon` (+ CORS preflight), `/healthz`, `/readyz`, `/metrics`.
//!
//! Order of checks for a beacon, cheapest first so refusals cost little: in-flight bound (503), per-IP
//! rate limit (429), content type and encoding (415), key from header or query (401/403), declared length
//! (413), then the body is streamed in under the wire, decoded and memory limits (413/503/408), parsed
//! with its JSON values counted and charged to the memory budget as the tree grows (413/503, else 400),
//! the body key is checked (401/403), the per-key rate limit (429), events are validated (an event
//! dated implausibly far after its receive time is rejected as `future_ts`; the fast parse validates
//! each event as it reads it, before the body key and its rate limit are checked, so a body refused
//! for its key has cost that too: about 2 µs a 20-event beacon, BENCHMARKS.md §28) and enriched, and
//! the records are handed to the sink. Only when the sink says they are durable does the client get 204
//! (all accepted) or 200 with the rejected indexes; a sink failure is 503 + Retry-After.
//!
//! **Client IP.** The socket address, unless it is one of `trusted_proxies`: then `X-Forwarded-For` is
//! walked from the right and the first hop that is not a trusted proxy is the client (what a client
//! writes into the header itself is never believed). Addresses that embed an IPv4 address (mapped,
//! NAT64, IPv4-compatible) count as that IPv4 address; IPv6 clients are rate limited per /64, since one
//! subscriber usually has a whole /64.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use schemas::record::{CheckedEvent, Envelope, Record, RejectedRecord};
use schemas::beacon::JSON_VALUE_COST;
use schemas::{BeaconError, ClientInfo, parse_beacon_limited};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::body::{BUDGET_UNIT, BodyLimits, Budget, read_body};
use crate::config::IngestConfig;
use crate::enrich::{Enricher, canonical};
use service::{ApiError, Readiness};
use crate::metrics::Metrics;
use crate::sink::{MAX_RECORD_BYTES, Sink, SinkRecord};

/// Everything the handlers share.
pub struct AppState {
    config: IngestConfig,
    /// key → allowed origins (empty: any origin).
    keys: HashMap<String, Vec<String>>,
    sink: Sink,
    metrics: Metrics,
    enricher: Enricher,
    in_flight: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    ip_limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    key_limiter: Option<DefaultKeyedRateLimiter<String>>,
    limits: BodyLimits,
    trusted_proxies: Vec<ipnet::IpNet>,
    readiness: Vec<Arc<dyn Readiness>>,
}

impl AppState {
    /// The collector's state; `/readyz` also asks every one of `readiness`.
    pub fn new(config: IngestConfig, sink: Sink, metrics: Metrics, readiness: Vec<Arc<dyn Readiness>>) -> crate::Result<Arc<AppState>> {
        let enricher = Enricher::new(config.anonymize_ip, config.geoip_db.as_deref())?;
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| crate::Error::Config(format!("ingest.trusted_proxies: {p:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)")))
            })
            .collect::<crate::Result<Vec<_>>>()?;
        if config.keys.is_empty() {
            tracing::warn!("no ingest keys configured: the collector accepts beacons from anyone (set --ingest-key)");
        }
        let keys = config.keys.iter().map(|k| (k.key.clone(), k.allowed_origins.clone())).collect();
        fn limiter<K: std::hash::Hash + Eq + Clone>(rps: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
            NonZeroU32::new(rps).map(|rps| {
                RateLimiter::keyed(Quota::per_second(rps).allow_burst(NonZeroU32::new(burst).unwrap_or(rps)))
            })
        }
        let limits = BodyLimits {
            max_wire: config.max_body_bytes,
            max_decoded: config.max_decoded_bytes,
            timeout: Duration::from_millis(config.body_timeout_ms),
            retry_after_secs: config.retry_after_secs,
        };
        Ok(Arc::new(AppState {
            ip_limiter: limiter(config.per_ip_rps, config.per_ip_burst),
            key_limiter: limiter(config.per_key_rps, config.per_key_burst),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            memory: Arc::new(Semaphore::new((config.max_buffered_bytes / BUDGET_UNIT).max(1))),
            keys,
            sink,
            metrics,
            enricher,
            limits,
            trusted_proxies,
            readiness,
            config,
        }))
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Drops rate-limiter state of clients not seen lately (call periodically).
    pub fn prune_rate_limiters(&self) {
        if let Some(l) = &self.ip_limiter {
            l.retain_recent();
        }
        if let Some(l) = &self.key_limiter {
            l.retain_recent();
        }
    }

    fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Is `origin` allowed to use `key` (or, when no key is known yet, some key)?
    fn origin_allowed(&self, key: Option<&str>, origin: &str) -> bool {
        let allowed = |list: &Vec<String>| list.is_empty() || list.iter().any(|o| o == origin || o == "*");
        match key {
            _ if self.is_open() => true,
            Some(k) => self.keys.get(k).is_some_and(allowed),
            None => self.keys.values().any(allowed),
        }
    }

    fn authorize(&self, key: Option<&str>, origin: Option<&str>) -> Result<(), ApiError> {
        if self.is_open() {
            return Ok(());
        }
        let Some(key) = key else {
            return Err(ApiError::unauthorized("missing ingest key (body `key`, ?key= or X-Qoeflow-Key)"));
        };
        if !self.keys.contains_key(key) {
            return Err(ApiError::unauthorized("unknown ingest key"));
        }
        if let Some(origin) = origin {
            if !self.origin_allowed(Some(key), origin) {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", format!("origin {origin} is not allowed for this ingest key")));
            }
        }
        Ok(())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/beacon", post(beacon).options(preflight))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(SDK_PATH, get(sdk_script))
        .with_state(state)
}

/// Where the collector serves the web player SDK (`sdk/web`), built into the binary by `build.rs`.
pub const SDK_PATH: &str = "/sdk/v1/qoeflow.min.js";
const SDK_SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sdk/dist/qoeflow.min.js"));

/// The SDK for a `<script src>` on any page: cacheable for an hour (the path names the major version,
/// so a compatible update reaches pages within that hour).
async fn sdk_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        SDK_SCRIPT,
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Err(why) = state.sink.ready().await {
        tracing::warn!(sink = state.sink.name(), %why, "not ready");
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{} sink not ready", state.sink.name())).into_response();
    }
    for r in &state.readiness {
        if let Err(why) = r.check() {
            tracing::warn!(%why, "not ready");
            return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
        }
    }
    (StatusCode::OK, "ready").into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: impl header::AsHeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty())
}

fn cors_headers(resp: &mut Response, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
    // The SDK backs off for as long as a 429/503 asks; a cross-origin page can read only exposed headers.
    resp.headers_mut().insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Retry-After"));
}

async fn preflight(State(state): State<Arc<AppState>>, Query(q): Query<KeyQuery>, headers: HeaderMap) -> Response {
    let Some(origin) = header_str(&headers, header::ORIGIN) else {
        return (StatusCode::NO_CONTENT, [(header::ALLOW, "POST, OPTIONS")]).into_response();
    };
    if !state.origin_allowed(q.key.as_deref(), origin) {
        tracing::warn!(origin, "CORS preflight refused");
        return (StatusCode::FORBIDDEN, [(header::VARY, "Origin")]).into_response();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    cors_headers(&mut resp, origin);
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, content-encoding, x-qoeflow-key"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}

async fn beacon(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    state.metrics.in_flight.inc();
    let origin = header_str(&headers, header::ORIGIN).map(str::to_owned);
    let header_key = header_str(&headers, "x-qoeflow-key").map(str::to_owned).or(q.key);
    let mut resolved_key = header_key.clone();
    let mut resp = match handle(&state, peer, &headers, header_key, &mut resolved_key, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    if let Some(origin) = origin {
        if state.origin_allowed(resolved_key.as_deref(), &origin) {
            cors_headers(&mut resp, &origin);
        }
    }
    state.metrics.in_flight.dec();
    state.metrics.requests.with_label_values(&[resp.status().as_str()]).inc();
    state.metrics.request_duration.observe(started.elapsed().as_secs_f64());
    resp
}

/// The client's address (see the module header): the right-most `X-Forwarded-For` hop that is not a
/// trusted proxy, when the socket peer is one.
fn client_ip(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    let mut client = canonical(peer.ip());
    if !state.trusted(client) {
        return client;
    }
    // Several headers are one list, in order. Split as bytes: garbage (even non-ASCII) a client wrote
    // left of the proxy's own hop must not cost that hop.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|h| std::str::from_utf8(h).map_or("\u{fffd}", str::trim))
        .filter(|h| !h.is_empty())
        .collect();
    for hop in hops.iter().rev().take(64) {
        let Some(ip) = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip())) else {
            // Garbage written by whoever is left of the last trusted hop: that hop saw the client.
            return client;
        };
        client = canonical(ip);
        if !state.trusted(client) {
            return client;
        }
    }
    client
}

/// What a client is rate limited by: its IPv4 address, or its IPv6 /64.
fn rate_limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::from(seg)
        }
    }
}

async fn handle(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    header_key: Option<String>,
    resolved_key: &mut Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let retry = state.config.retry_after_secs;
    let _permit = state.in_flight.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable("overloaded", "too many requests in flight, retry later", retry)
    })?;
    let ip = client_ip(state, headers, peer);
    if let Some(limiter) = &state.ip_limiter {
        limiter.check_key(&rate_limit_key(ip)).map_err(|_| ApiError::rate_limited("rate_limited_ip", retry))?;
    }
    let declared_gzip = match header_str(headers, header::CONTENT_ENCODING).map(str::to_ascii_lowercase).as_deref() {
        None | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => return Err(ApiError::unsupported(format!("Content-Encoding {other:?} is not supported (use gzip or none)"))),
    };
    if let Some(ct) = header_str(headers, header::CONTENT_TYPE) {
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if mime != "application/json" && mime != "text/plain" {
            return Err(ApiError::unsupported(format!(
                "Content-Type {mime:?} is not supported (use application/json or text/plain)"
            )));
        }
    }
    let origin = header_str(headers, header::ORIGIN);
    if header_key.is_some() {
        state.authorize(header_key.as_deref(), origin)?;
    }
    let declared_len = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let mut body = read_body(body, declared_gzip, declared_len, &state.limits, Budget::new(state.memory.clone(), retry)).await?;
    state.metrics.received_bytes.inc_by(body.wire_len as u64);
    state.metrics.decoded_bytes.inc_by(body.bytes.len() as u64);
    let recv_ms = schemas::now_ms();

    // The parsed tree is charged to the request's memory budget as it grows, beside the body itself.
    let text_len = body.bytes.len();
    let budget = &mut body.budget;
    // The text is charged twice: parsing may copy up to all of it again (an escaped string's decoded
    // copy, or the one-byte-per-level nesting stack of the pass that slices out each event, which has
    // no depth limit). Every value takes at least a byte of text, so a small body is never charged for
    // more values than it holds.
    let mut charge = |values: usize| budget.reserve(2 * text_len + values.min(text_len + 1) * JSON_VALUE_COST).is_ok();
    let beacon = match parse_beacon_limited(&body.bytes, state.config.max_json_values, &mut charge) {
        Ok(b) => b,
        Err(e @ BeaconError::TooManyValues(_)) => {
            state.metrics.events_rejected.with_label_values(&["too_many_values"]).inc();
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_values", format!("{e} (ingest.max_json_values)")));
        }
        Err(BeaconError::OverBudget) => {
            return Err(ApiError::unavailable("overloaded", "the collector is at its memory bound, retry later", retry));
        }
        Err(e) => {
            state.metrics.events_rejected.with_label_values(&["body_invalid"]).inc();
            return Err(ApiError::bad_request("invalid_body", e.to_string()));
        }
    };
    if header_key.is_none() {
        *resolved_key = beacon.key.clone();
        state.authorize(beacon.key.as_deref(), origin)?;
    }
    let key = header_key.or(beacon.key);
    if let (Some(limiter), Some(k)) = (&state.key_limiter, &key) {
        limiter.check_key(k).map_err(|_| ApiError::rate_limited("rate_limited_key", retry))?;
    }

    let client = state.enricher.client_info(ip, header_str(headers, header::USER_AGENT));
    let mut views: Vec<ViewEvents> = Vec::new();
    // Each view's place in `views`, kept once a beacon carries a second view, and only looked up when an
    // event's view is not the previous event's (most beacons carry one view, or runs of one: a hash of
    // every event's view id was 1.5 % of the collector).
    let mut view_index: HashMap<String, usize> = HashMap::new();
    let mut last = 0;
    let mut rejected: Vec<(usize, &'static str, String, String)> = Vec::new();
    let max_future = state.config.max_event_future_ms;
    let count = beacon.events.len();
    for (i, raw) in beacon.events.into_iter().enumerate() {
        let text = raw.text();
        match raw.into_validated() {
            Ok(ev) if ev.ts.saturating_sub(beacon.sent_at) > max_future => {
                // Skew-corrected, `ts + (recv_ms - sent_at)` is this far after the receive time.
                let reason = format!(
                    "ts: {} ms in the future of the receive time once corrected for the client's clock (`sent_at`); at most {max_future} ms",
                    ev.ts.saturating_sub(beacon.sent_at)
                );
                rejected.push((i, "future_ts", reason, text.to_owned()));
            }
            Ok(ev) => {
                let slot = match views.get(last) {
                    Some(previous) if previous.view_id == ev.view_id => last,
                    _ => match view_index.get(&ev.view_id) {
                        Some(slot) => *slot,
                        None => {
                            if let [first] = views.as_slice() {
                                view_index.insert(first.view_id.clone(), 0);
                            }
                            if !views.is_empty() {
                                view_index.insert(ev.view_id.clone(), views.len());
                            }
                            views.push(ViewEvents::new(ev.view_id.clone(), if views.is_empty() { count - i } else { 0 }));
                            views.len() - 1
                        }
                    },
                };
                // The event typed as validated, and its text as sent: a version 2 record holds both.
                views[slot].push(i, CheckedEvent { event: ev, raw: text });
                last = slot;
            }
            Err(r) => rejected.push((i, r.tag, r.to_string(), text.to_owned())),
        }
    }

    let mut records = Vec::with_capacity(views.len() + rejected.len());
    let mut accepted = 0usize;
    for view in views {
        accepted += encode_view(view, recv_ms, beacon.sent_at, &key, &client, &mut records, &mut rejected);
    }
    rejected.sort_by_key(|r| r.0);
    for (index, tag, reason, payload) in &rejected {
        state.metrics.events_rejected.with_label_values(&[tag]).inc();
        let rec = Record::Rejected(RejectedRecord {
            recv_ms,
            key: key.clone(),
            index: Some(*index as u32),
            tag: (*tag).to_owned(),
            reason: reason.clone(),
            payload: RejectedRecord::truncate_payload(payload),
        });
        records.push(SinkRecord { partition_key: format!("rejected-{recv_ms}-{index}"), data: Bytes::from(rec.encode()) });
    }

    let sink_started = Instant::now();
    if let Err(e) = state.sink.append(records).await {
        tracing::error!(sink = state.sink.name(), error = %e, "sink could not make the beacon durable");
        return Err(ApiError::unavailable("sink_unavailable", "events could not be stored durably, retry later", retry));
    }
    state.metrics.sink_latency.observe(sink_started.elapsed().as_secs_f64());
    state.metrics.events_accepted.inc_by(accepted as u64);

    if rejected.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let rejected: Vec<Value> = rejected.iter().map(|(i, _, reason, _)| json!({"index": i, "reason": reason})).collect();
    Ok((StatusCode::OK, axum::Json(json!({"accepted": accepted, "rejected": rejected}))).into_response())
}

/// One view's events of a beacon, in beacon order, each with its index in the beacon and its text (a
/// slice of the body, not a copy of its own: BENCHMARKS.md §27).
struct ViewEvents<'a> {
    view_id: String,
    indexes: Vec<usize>,
    events: Vec<CheckedEvent<&'a str>>,
}

impl<'a> ViewEvents<'a> {
    /// A view's list with room for `room` events. Most beacons are one view's: its list takes the rest
    /// of the beacon without regrowing (moving events was 3 % of the collector). Later views grow as they
    /// go, so the lists never have room for more than a few times the beacon's events.
    fn new(view_id: String, room: usize) -> ViewEvents<'a> {
        ViewEvents { view_id, indexes: Vec::with_capacity(room), events: Vec::with_capacity(room) }
    }

    fn push(&mut self, index: usize, event: CheckedEvent<&'a str>) {
        self.indexes.push(index);
        self.events.push(event);
    }
}

/// Encodes one view's events (moved in, never copied) into records within the record limit; an event that
/// cannot fit a record even alone is rejected. Returns how many events were encoded.
fn encode_view(
    view: ViewEvents<'_>,
    recv_ms: i64,
    sent_at: i64,
    key: &Option<String>,
    client: &ClientInfo,
    records: &mut Vec<SinkRecord>,
    rejected: &mut Vec<(usize, &'static str, String, String)>,
) -> usize {
    let ViewEvents { view_id, indexes, events } = view;
    let limit = MAX_RECORD_BYTES - view_id.len();
    let envelope = Envelope { recv_ms, sent_at, key: key.as_deref(), view_id: &view_id, client };
    let push = |data: Vec<u8>, records: &mut Vec<SinkRecord>| {
        records.push(SinkRecord { partition_key: view_id.clone(), data: Bytes::from(data) });
    };
    if let Ok(chunks) = envelope.encode_chunks(&events, limit) {
        for chunk in chunks {
            push(chunk, records);
        }
        return indexes.len();
    }
    // Some event is too large for a record on its own: keep the others, reject it.
    let mut accepted = 0;
    for (i, event) in indexes.into_iter().zip(&events) {
        let data = envelope.encode(std::slice::from_ref(event));
        if data.len() <= limit {
            push(data, records);
            accepted += 1;
        } else {
            let reason = format!("event: encodes to {} bytes, over the {limit}-byte record limit", data.len());
            rejected.push((i, "event_too_large", reason, event.raw.to_owned()));
        }
    }
    accepted
}
