//! The record format written to Kinesis and to the embedded local log (versions 1 and 2; documented in
//! `schemas/README.md`).
//!
//! One record per (beacon, view): the events one beacon carried for one `view_id`, with the collector's
//! enrichment of that request, so the partition key (`view_id`) keeps a view's records on one shard and in
//! order. Invalid events travel as `rejected` records to the dead-letter table.
//!
//! Layout: `b"QF"` magic, a version byte, a codec byte (0 = none, 1 = zstd), then the body. Version 1:
//! the record as JSON (events keep their original JSON objects, so unknown fields survive). Version 2
//! (events records, from this build's collector on): the envelope and each event both typed, as the
//! collector validated it, and as its JSON text, in postcard — so the pipeline neither parses events
//! into JSON maps nor validates them again (it checks their bounds, [`crate::beacon::check_event`]),
//! and the `events` table's `raw` column is the text it already holds. Bodies of a few hundred bytes and
//! up are zstd-compressed. Readers read both versions and reject others with a clear error instead of
//! guessing; decompression is bounded so a poison record cannot exhaust memory.
//! See `schemas/README.md` for the field list.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::beacon::EventRejection;
use crate::event::{ClientInfo, Event, EventKind, Payload};

pub const MAGIC: [u8; 2] = *b"QF";
/// The version events records are written in: typed events beside their JSON text, in postcard.
pub const VERSION: u8 = 2;
/// The JSON version: still read; written for dead letters and for events that do not validate (a test's
/// deliberately broken record).
pub const VERSION_JSON: u8 = 1;
const CODEC_NONE: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// zstd with [`RECORD_DICTIONARY`] (version 2 events records). The frame names the dictionary's id and
/// zstd refuses to decode it with another.
const CODEC_ZSTD_DICT: u8 = 2;
/// The dictionary of codec 2: trained on version 2 bodies of simulated SDK traffic
/// (`deploy/bench/train_dict.rs`). Every event's text repeats the protocol's keys and a record's typed
/// part repeats its layout, which a record of a few events cannot amortise on its own: with the
/// dictionary a record is about half the bytes and compresses in about half the time. Never changed in
/// place — a new dictionary would be a new codec, this one kept for reading what was written with it.
pub static RECORD_DICTIONARY: &[u8] = include_bytes!("records.dict");
/// Bodies shorter than this are stored uncompressed (zstd would only add its frame header).
const COMPRESS_FROM: usize = 256;
const ZSTD_LEVEL: i32 = 1;
/// Upper bound on a decoded body: well above anything the collector writes (10 MiB decompressed beacons).
pub const MAX_DECODED_BYTES: usize = 16 << 20;
/// A thread keeps its decompression buffer between records up to this size (a bigger one is freed).
const KEEP_BUFFER_BYTES: usize = 1 << 20;
/// How much of a rejected payload is kept.
pub const REJECTED_PAYLOAD_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a qoeflow record (bad magic)")]
    BadMagic,
    #[error("unsupported record version {0} (this build reads versions {VERSION_JSON} and {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown record codec {0}")]
    UnknownCodec(u8),
    #[error("record body does not decompress: {0}")]
    Decompress(std::io::Error),
    #[error("record body is not a valid record: {0}")]
    Body(serde_json::Error),
    #[error("record body is not a valid version 2 record: {0}")]
    Typed(postcard::Error),
    #[error("record body has {0} bytes past its version 2 record")]
    Trailing(usize),
    #[error("a single event encodes to {size} bytes, over the {limit}-byte record limit")]
    EventTooLarge { size: usize, limit: usize },
}

/// Events of one view from one beacon, as accepted and enriched by the collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsRecord {
    /// Collector receive time, epoch ms.
    pub recv_ms: i64,
    /// The beacon's `sent_at` (client clock), epoch ms.
    pub sent_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub view_id: String,
    pub client: ClientInfo,
    /// The events as received, in beacon order.
    pub events: Vec<Map<String, Value>>,
}

impl EventsRecord {
    /// `recv_ms - sent_at`: the clock offset this beacon measured (`docs/metrics.md` §3).
    pub fn offset_ms(&self) -> i64 {
        self.recv_ms - self.sent_at
    }

    /// Encodes into one or more records of at most `limit` bytes each, splitting the events (in order)
    /// when a beacon carried more for one view than fits one record. Borrows: no event is copied.
    pub fn encode_chunks(&self, limit: usize) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = Vec::new();
        split_encode(&self.events, limit, &|events| self.encode_with(events), &mut out)?;
        Ok(out)
    }

    /// Encodes the envelope with `events` (a slice of this record's events, or any others): version 2
    /// when every event validates, else version 1 (JSON) as they are.
    pub fn encode_with(&self, events: &[Map<String, Value>]) -> Vec<u8> {
        let typed: Option<Vec<CheckedEvent>> = events.iter().map(|m| CheckedEvent::validate(m).ok()).collect();
        if let Some(typed) = typed {
            return self.envelope().encode(&typed);
        }
        let body = EventsOut {
            kind: "events",
            recv_ms: self.recv_ms,
            sent_at: self.sent_at,
            key: self.key.as_deref(),
            view_id: &self.view_id,
            client: &self.client,
            events,
        };
        frame(VERSION_JSON, &serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The record's envelope, for writing typed events.
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope { recv_ms: self.recv_ms, sent_at: self.sent_at, key: self.key.as_deref(), view_id: &self.view_id, client: &self.client }
    }
}

/// Encodes `events` into records of at most `limit` bytes, halving the slice until each part fits.
fn split_encode<T>(events: &[T], limit: usize, encode: &impl Fn(&[T]) -> Vec<u8>, out: &mut Vec<Vec<u8>>) -> Result<(), RecordError> {
    let encoded = encode(events);
    if encoded.len() <= limit {
        out.push(encoded);
        return Ok(());
    }
    if events.len() <= 1 {
        return Err(RecordError::EventTooLarge { size: encoded.len(), limit });
    }
    let (left, right) = events.split_at(events.len() / 2);
    split_encode(left, limit, encode, out)?;
    split_encode(right, limit, encode, out)
}

/// An event's JSON text re-serialized from its map: compact, keys sorted (as serde_json writes a map).
/// The text of the events of version 1 records (the collector keeps the text it received instead).
/// Written straight from the map into a buffer sized for a typical event.
pub fn event_json(event: &Map<String, Value>) -> String {
    let mut out = Vec::with_capacity(256);
    match serde_json::to_writer(&mut out, event) {
        // serde_json writes valid UTF-8 (maps have string keys; writing to a Vec cannot fail).
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The envelope of an events record, for writing events already validated (the collector's) as a
/// version 2 record without copying them.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub recv_ms: i64,
    pub sent_at: i64,
    pub key: Option<&'a str>,
    pub view_id: &'a str,
    pub client: &'a ClientInfo,
}

impl Envelope<'_> {
    /// One version 2 record of `events` (each validated, with its JSON text).
    pub fn encode<R: AsRef<str>>(&self, events: &[CheckedEvent<R>]) -> Vec<u8> {
        let c = self.client;
        let body = TypedOut {
            recv_ms: self.recv_ms,
            sent_at: self.sent_at,
            key: self.key,
            view_id: self.view_id,
            client: ClientOut {
                ip: c.ip.as_deref(),
                device_type: &c.device_type,
                os: &c.os,
                os_version: &c.os_version,
                browser: &c.browser,
                browser_version: &c.browser_version,
                country: &c.country,
                bot: c.bot,
            },
            events: TypedEventsOut { view_id: self.view_id, events },
        };
        let estimate = 64 + events.iter().map(|e| e.raw.as_ref().len() + 48).sum::<usize>();
        // Serializing plain data structures into a Vec cannot fail.
        frame(VERSION, &postcard::to_extend(&body, Vec::with_capacity(estimate)).unwrap_or_default())
    }

    /// [`Envelope::encode`] compressed without the record dictionary (codec 1), as collectors before it
    /// wrote: for tests that readers still take such records.
    #[doc(hidden)]
    pub fn encode_without_dictionary<R: AsRef<str>>(&self, events: &[CheckedEvent<R>]) -> Vec<u8> {
        let record = self.encode(events);
        match body(&record) {
            Ok((version, body)) => frame_with(version, &body, false),
            Err(_) => record,
        }
    }

    /// [`Envelope::encode`] split into records of at most `limit` bytes, in order.
    pub fn encode_chunks<R: AsRef<str>>(&self, events: &[CheckedEvent<R>], limit: usize) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = Vec::new();
        split_encode(events, limit, &|events| self.encode(events), &mut out)?;
        Ok(out)
    }
}

/// A version 2 body as written. Field order is the format (postcard is not self-describing): change it
/// only with a new version.
#[derive(Serialize)]
#[serde(bound(serialize = "R: AsRef<str>"))]
struct TypedOut<'a, R: AsRef<str>> {
    recv_ms: i64,
    sent_at: i64,
    key: Option<&'a str>,
    view_id: &'a str,
    client: ClientOut<'a>,
    events: TypedEventsOut<'a, R>,
}

/// The events of a version 2 body: each as [`EventOut`].
struct TypedEventsOut<'a, R> {
    view_id: &'a str,
    events: &'a [CheckedEvent<R>],
}

impl<R: AsRef<str>> Serialize for TypedEventsOut<'_, R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.events.len()))?;
        for CheckedEvent { event: e, raw } in self.events {
            seq.serialize_element(&EventOut {
                // A record holds one view's events: its id is written once, in the envelope.
                view_id: (e.view_id != self.view_id).then_some(e.view_id.as_str()),
                seq: e.seq,
                kind: e.kind,
                ts: e.ts,
                playhead_ms: e.playhead_ms,
                payload: &e.payload,
                raw: raw.as_ref(),
            })?;
        }
        seq.end()
    }
}

/// One event of a version 2 body: typed (its `view_id` only when it is not the record's) and its text.
#[derive(Serialize)]
struct EventOut<'a> {
    view_id: Option<&'a str>,
    seq: u64,
    kind: EventKind,
    ts: i64,
    playhead_ms: Option<f64>,
    payload: &'a Payload,
    raw: &'a str,
}

#[derive(Deserialize)]
struct EventIn {
    view_id: Option<String>,
    seq: u64,
    kind: EventKind,
    ts: i64,
    playhead_ms: Option<f64>,
    payload: Payload,
    raw: String,
}

/// [`ClientInfo`] with every field present ([`ClientInfo`]'s JSON form skips an absent `ip`, which a
/// format without field names cannot do).
#[derive(Serialize)]
struct ClientOut<'a> {
    ip: Option<&'a str>,
    device_type: &'a str,
    os: &'a str,
    os_version: &'a str,
    browser: &'a str,
    browser_version: &'a str,
    country: &'a str,
    bot: bool,
}

/// A version 2 body as read (the same layout as [`TypedOut`]).
#[derive(Deserialize)]
struct TypedIn {
    recv_ms: i64,
    sent_at: i64,
    key: Option<String>,
    view_id: String,
    client: ClientIn,
    events: Vec<EventIn>,
}

#[derive(Deserialize)]
struct ClientIn {
    ip: Option<String>,
    device_type: String,
    os: String,
    os_version: String,
    browser: String,
    browser_version: String,
    country: String,
    bot: bool,
}

impl From<ClientIn> for ClientInfo {
    fn from(c: ClientIn) -> ClientInfo {
        let ClientIn { ip, device_type, os, os_version, browser, browser_version, country, bot } = c;
        ClientInfo { ip, device_type, os, os_version, browser, browser_version, country, bot }
    }
}

impl TypedIn {
    /// The record with its events as JSON maps (parsed from their text), as version 1 holds them.
    fn into_record(self) -> Result<EventsRecord, RecordError> {
        let events = self
            .events
            .iter()
            .map(|e| serde_json::from_str::<Map<String, Value>>(&e.raw))
            .collect::<Result<_, _>>()
            .map_err(RecordError::Body)?;
        Ok(EventsRecord { recv_ms: self.recv_ms, sent_at: self.sent_at, key: self.key, view_id: self.view_id, client: self.client.into(), events })
    }

    /// The events checked ([`crate::beacon::check_event`]), not parsed or validated again.
    fn into_checked(self) -> CheckedEvents {
        let view_id = &self.view_id;
        let events = self
            .events
            .into_iter()
            .map(|e| {
                let EventIn { view_id: own, seq, kind, ts, playhead_ms, payload, raw } = e;
                let event = Event { view_id: own.unwrap_or_else(|| view_id.clone()), seq, kind, ts, playhead_ms, payload };
                match crate::beacon::check_event(&event) {
                    Ok(()) => Ok(CheckedEvent { event, raw }),
                    Err(r) => Err((r, raw)),
                }
            })
            .collect();
        CheckedEvents { recv_ms: self.recv_ms, sent_at: self.sent_at, key: self.key, view_id: self.view_id, client: self.client.into(), events }
    }
}

/// An event as the collector validated it (or, from a version 2 record, as the pipeline checked it) and
/// its JSON text (the `events` table's `raw` column): owned, or (`CheckedEvent<&str>`, the collector's)
/// a slice of the beacon's body, which a record is written from without a copy of each event's text.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedEvent<R = String> {
    pub event: Event,
    pub raw: R,
}

impl CheckedEvent {
    /// Validates an event's JSON object; refused, the reason and its text.
    pub fn validate(event: &Map<String, Value>) -> Result<CheckedEvent, (EventRejection, String)> {
        match crate::beacon::validate_event_map(event) {
            Ok(checked) => Ok(CheckedEvent { event: checked, raw: event_json(event) }),
            Err(e) => Err((e, event_json(event))),
        }
    }
}

/// An events record as the pipeline takes it: each event checked, or refused with why and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedEvents {
    pub recv_ms: i64,
    pub sent_at: i64,
    pub key: Option<String>,
    pub view_id: String,
    pub client: ClientInfo,
    pub events: Vec<Result<CheckedEvent, (EventRejection, String)>>,
}

impl CheckedEvents {
    /// `recv_ms - sent_at`: the clock offset this beacon measured (`docs/metrics.md` §3).
    pub fn offset_ms(&self) -> i64 {
        self.recv_ms - self.sent_at
    }
}

impl From<EventsRecord> for CheckedEvents {
    /// Validates each event of a version 1 record (or one built in memory).
    fn from(r: EventsRecord) -> CheckedEvents {
        let events = r.events.iter().map(CheckedEvent::validate).collect();
        CheckedEvents { recv_ms: r.recv_ms, sent_at: r.sent_at, key: r.key, view_id: r.view_id, client: r.client, events }
    }
}

/// A record as the pipeline takes it ([`Record::decode_checked`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Events(CheckedEvents),
    Rejected(RejectedRecord),
}

impl From<Record> for Checked {
    fn from(r: Record) -> Checked {
        match r {
            Record::Events(e) => Checked::Events(e.into()),
            Record::Rejected(r) => Checked::Rejected(r),
        }
    }
}

/// Borrowed form of `Record::Events` for encoding (same JSON as the owned enum).
#[derive(Serialize)]
struct EventsOut<'a> {
    kind: &'static str,
    recv_ms: i64,
    sent_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    view_id: &'a str,
    client: &'a ClientInfo,
    events: &'a [Map<String, Value>],
}

/// A dead-letter entry: an event (or a whole body) the collector refused, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedRecord {
    pub recv_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Index of the event in its beacon; absent when the whole body was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Stable tag, e.g. `missing_field` (a metric label).
    pub tag: String,
    /// Human-readable reason naming the field.
    pub reason: String,
    /// The offending JSON (or body), truncated to [`REJECTED_PAYLOAD_MAX`] bytes.
    pub payload: String,
}

impl RejectedRecord {
    /// Truncates `payload` to at most [`REJECTED_PAYLOAD_MAX`] bytes on a character boundary.
    pub fn truncate_payload(payload: &str) -> String {
        if payload.len() <= REJECTED_PAYLOAD_MAX {
            return payload.to_owned();
        }
        let mut end = REJECTED_PAYLOAD_MAX;
        while !payload.is_char_boundary(end) {
            end -= 1;
        }
        payload[..end].to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Events(EventsRecord),
    Rejected(RejectedRecord),
}

impl Record {
    /// Events records are written in version 2 when their events validate; dead letters in version 1.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Events(e) => e.encode_with(&e.events),
            // Serializing plain data structures into a Vec cannot fail.
            Record::Rejected(_) => frame(VERSION_JSON, &serde_json::to_vec(self).unwrap_or_default()),
        }
    }

    /// Decodes a record of either version, events as JSON maps (tools, tests, dead letters).
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        with_body(bytes, |version, body| match version {
            VERSION_JSON => decode_body(body),
            _ => decode_typed(body)?.into_record().map(Record::Events),
        })
    }

    /// Decodes a record of either version as the pipeline takes it: version 2's typed events checked,
    /// version 1's validated.
    pub fn decode_checked(bytes: &[u8]) -> Result<Checked, RecordError> {
        with_body(bytes, |version, body| match version {
            VERSION_JSON => decode_body(body).map(Checked::from),
            _ => Ok(Checked::Events(decode_typed(body)?.into_checked())),
        })
    }
}

fn decode_typed(body: &[u8]) -> Result<TypedIn, RecordError> {
    match postcard::take_from_bytes::<TypedIn>(body) {
        Ok((typed, [])) => Ok(typed),
        Ok((_, rest)) => Err(RecordError::Trailing(rest.len())),
        Err(e) => Err(RecordError::Typed(e)),
    }
}

/// A record's version and decompressed body (what the record dictionary is trained on).
pub fn body(bytes: &[u8]) -> Result<(u8, Vec<u8>), RecordError> {
    with_body(bytes, |version, body| Ok((version, body.to_vec())))
}

/// Checks the header and hands `f` the version and the decompressed body.
fn with_body<T>(bytes: &[u8], f: impl FnOnce(u8, &[u8]) -> Result<T, RecordError>) -> Result<T, RecordError> {
    if bytes.len() < 4 {
        return Err(RecordError::TooShort(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = bytes[2];
    if version != VERSION && version != VERSION_JSON {
        return Err(RecordError::UnsupportedVersion(version));
    }
    let body = &bytes[4..];
    match bytes[3] {
        CODEC_NONE => f(version, body),
        codec @ (CODEC_ZSTD | CODEC_ZSTD_DICT) => DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (d, buf) = &mut *cell;
            let dictionary = codec == CODEC_ZSTD_DICT;
            let d = &mut d[usize::from(dictionary)];
            if d.is_none() {
                let made = if dictionary {
                    zstd::bulk::Decompressor::with_prepared_dictionary(decoder_dictionary())
                } else {
                    zstd::bulk::Decompressor::new()
                };
                *d = Some(made.map_err(RecordError::Decompress)?);
            }
            let Some(d) = d.as_mut() else { unreachable!("set above") };
            // The frame says how big its content is (our writers always record it): reserve exactly
            // that, in a buffer this thread reuses. Asking zstd for a fresh `MAX_DECODED_BYTES` buffer
            // per record made the allocator map and fault in fresh pages for every record (the
            // kernel's page zeroing was the largest single item of the pipeline's profile).
            let size = match zstd::zstd_safe::get_frame_content_size(body) {
                Ok(Some(n)) if n <= MAX_DECODED_BYTES as u64 => n as usize,
                Ok(Some(n)) => {
                    return Err(RecordError::Decompress(std::io::Error::other(format!(
                        "the body says it decompresses to {n} bytes, over the {MAX_DECODED_BYTES}-byte limit"
                    ))));
                }
                // Unknown size (another writer): the bound itself, as before.
                Ok(None) | Err(_) => MAX_DECODED_BYTES,
            };
            buf.clear();
            buf.reserve(size);
            let decoded = d.decompress_to_buffer(body, buf).map_err(RecordError::Decompress).and_then(|_| f(version, buf));
            if buf.capacity() > KEEP_BUFFER_BYTES {
                *buf = Vec::new();
            }
            decoded
        }),
        other => Err(RecordError::UnknownCodec(other)),
    }
}

/// Decodes a record body. Writers put `"kind"` first, so the common case decodes straight into the
/// struct (serde's internally tagged enums buffer the whole record into an intermediate tree first,
/// a measurable share of pipeline CPU); anything else takes the generic path.
fn decode_body(json: &[u8]) -> Result<Record, RecordError> {
    if json.starts_with(br#"{"kind":"events","#) {
        return serde_json::from_slice::<EventsRecord>(json).map(Record::Events).map_err(RecordError::Body);
    }
    if json.starts_with(br#"{"kind":"rejected","#) {
        return serde_json::from_slice::<RejectedRecord>(json).map(Record::Rejected).map_err(RecordError::Body);
    }
    serde_json::from_slice(json).map_err(RecordError::Body)
}

thread_local! {
    // zstd contexts are costly to create (a fresh one per record was ~7% of collector CPU): one per
    // thread, without and with the record dictionary.
    static COMPRESSOR: RefCell<[Option<zstd::bulk::Compressor<'static>>; 2]> = const { RefCell::new([None, None]) };
    static DECOMPRESSOR: RefCell<([Option<zstd::bulk::Decompressor<'static>>; 2], Vec<u8>)> = const { RefCell::new(([None, None], Vec::new())) };
}

/// The record dictionary prepared once for compressing (its tables built at [`ZSTD_LEVEL`]).
fn encoder_dictionary() -> &'static zstd::dict::EncoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::EncoderDictionary<'static>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::EncoderDictionary::copy(RECORD_DICTIONARY, ZSTD_LEVEL))
}

fn decoder_dictionary() -> &'static zstd::dict::DecoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::DecoderDictionary<'static>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::DecoderDictionary::copy(RECORD_DICTIONARY))
}

/// Header + body, zstd-compressed when that is smaller: version 2 bodies with the record dictionary.
fn frame(version: u8, json: &[u8]) -> Vec<u8> {
    frame_with(version, json, version == VERSION)
}

fn frame_with(version: u8, json: &[u8], dictionary: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() / 3 + 8);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    if json.len() >= COMPRESS_FROM {
        let compressed = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            let c = &mut c[usize::from(dictionary)];
            if c.is_none() {
                *c = if dictionary {
                    zstd::bulk::Compressor::with_prepared_dictionary(encoder_dictionary()).ok()
                } else {
                    zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()
                };
            }
            c.as_mut().and_then(|c| c.compress(json).ok())
        });
        if let Some(compressed) = compressed.filter(|c| c.len() < json.len()) {
            out.push(if dictionary { CODEC_ZSTD_DICT } else { CODEC_ZSTD });
            out.extend_from_slice(&compressed);
            return out;
        }
    }
    out.push(CODEC_NONE);
    out.extend_from_slice(json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(n: usize) -> EventsRecord {
        let events = (0..n)
            .map(|i| {
                let Value::Object(m) = json!({"view_id": "v", "seq": i, "type": "heartbeat",
                    "ts": 1_700_000_000_000i64 + i as i64, "note": format!("{:x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))})
                else {
                    unreachable!()
                };
                m
            })
            .collect();
        EventsRecord {
            recv_ms: 1_700_000_000_500,
            sent_at: 1_700_000_000_000,
            key: Some("k".into()),
            view_id: "v".into(),
            client: ClientInfo { device_type: "desktop".into(), ..Default::default() },
            events,
        }
    }

    #[test]
    fn roundtrip_compressed_and_plain() {
        for n in [0, 1, 40] {
            let rec = Record::Events(sample(n));
            let bytes = rec.encode();
            assert_eq!(&bytes[..3], b"QF\x02", "valid events are written in version 2");
            assert_eq!(Record::decode(&bytes).unwrap(), rec);
            // The borrowed encoding is the same record.
            let Record::Events(events) = &rec else { unreachable!() };
            assert_eq!(Record::decode(&events.encode_with(&events.events)).unwrap(), rec);
        }
        let big = Record::Events(sample(40)).encode();
        assert_eq!(big[3], CODEC_ZSTD_DICT, "large bodies are compressed, with the record dictionary");
    }

    #[test]
    fn version_2_records_use_the_dictionary_and_records_without_it_still_read() {
        // A beacon's worth of a player's events, as the SDK sends them.
        let events: Vec<Map<String, Value>> = (0..20i64)
            .map(|i| {
                let (ts, playhead) = (1_700_000_000_000 + i * 500, i * 500);
                let v = match i % 4 {
                    0 => json!({"view_id": "5b1f0c2e-9d7a", "seq": i, "type": "segment", "ts": ts, "playhead_ms": playhead,
                        "host": "video.akamaized.net", "bytes": 1_048_576 + i, "duration_ms": 120, "ttfb_ms": 30, "cache": "hit"}),
                    1 => json!({"view_id": "5b1f0c2e-9d7a", "seq": i, "type": "quality_change", "ts": ts, "playhead_ms": playhead,
                        "bitrate_kbps": 2500, "width": 1280, "height": 720}),
                    _ => json!({"view_id": "5b1f0c2e-9d7a", "seq": i, "type": "heartbeat", "ts": ts, "playhead_ms": playhead}),
                };
                v.as_object().cloned().expect("object")
            })
            .collect();
        let rec = EventsRecord { events, ..sample(0) };
        let checked: Vec<CheckedEvent> = rec.events.iter().map(|m| CheckedEvent::validate(m).expect("valid")).collect();
        let with = rec.envelope().encode(&checked);
        let without = rec.envelope().encode_without_dictionary(&checked);
        assert_eq!((with[3], without[3]), (CODEC_ZSTD_DICT, CODEC_ZSTD));
        assert_eq!(Record::decode(&with).unwrap(), Record::Events(rec.clone()));
        assert_eq!(Record::decode(&without).unwrap(), Record::Events(rec.clone()), "records of earlier collectors");
        assert!(
            with.len() < without.len(),
            "the dictionary holds what every record repeats: {} bytes with it, {} without",
            with.len(),
            without.len()
        );
        // A frame made with another dictionary (the same tables under another id) is refused, not misread.
        let mut other = RECORD_DICTIONARY.to_vec();
        other[4] ^= 0x55;
        let (_, plain) = body(&with).unwrap();
        let foreign = zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, &other).unwrap().compress(&plain).unwrap();
        let mut forged = with[..4].to_vec();
        forged.extend_from_slice(&foreign);
        assert!(matches!(Record::decode(&forged), Err(RecordError::Decompress(_))), "{:?}", Record::decode(&forged));
    }

    #[test]
    fn fast_and_generic_decoding_agree() {
        let rec = Record::Events(sample(3));
        let json = serde_json::to_vec(&rec).unwrap();
        assert!(json.starts_with(br#"{"kind":"events","#), "writers put the tag first");
        assert_eq!(decode_body(&json).unwrap(), rec);
        // Tag elsewhere (another writer): the generic path.
        let mut v = serde_json::to_value(&rec).unwrap();
        let kind = v.as_object_mut().unwrap().remove("kind").unwrap();
        v.as_object_mut().unwrap().insert("zkind".into(), kind.clone());
        let mut moved = serde_json::to_string(&v).unwrap().replace("\"zkind\"", "\"kind\"");
        moved.push(' ');
        assert_eq!(decode_body(moved.as_bytes()).unwrap(), rec);
        let rej = Record::Rejected(RejectedRecord {
            recv_ms: 1, key: None, index: Some(2), tag: "t".into(), reason: "r".into(), payload: "p".into(),
        });
        assert_eq!(decode_body(&serde_json::to_vec(&rej).unwrap()).unwrap(), rej);
    }

    #[test]
    fn decode_rejects_garbage_clearly() {
        assert!(matches!(Record::decode(b"QF"), Err(RecordError::TooShort(2))));
        assert!(matches!(Record::decode(b"XX\x01\x00{}"), Err(RecordError::BadMagic)));
        assert!(matches!(Record::decode(b"QF\x09\x00{}"), Err(RecordError::UnsupportedVersion(9))));
        assert!(matches!(Record::decode(b"QF\x01\x07{}"), Err(RecordError::UnknownCodec(7))));
        assert!(matches!(Record::decode(b"QF\x01\x01garbage"), Err(RecordError::Decompress(_))));
        assert!(matches!(Record::decode(b"QF\x01\x00{}"), Err(RecordError::Body(_))));
    }

    #[test]
    fn chunks_respect_the_limit_and_keep_order() {
        let rec = sample(400);
        let chunks = rec.encode_chunks(1500).unwrap();
        assert!(chunks.len() > 1);
        let mut seqs = Vec::new();
        for c in &chunks {
            assert!(c.len() <= 1500);
            let Record::Events(r) = Record::decode(c).unwrap() else { panic!("kind") };
            seqs.extend(r.events.iter().map(|e| e["seq"].as_u64().unwrap()));
        }
        assert_eq!(seqs, (0..400).collect::<Vec<_>>());
        assert!(matches!(sample(1).encode_chunks(10), Err(RecordError::EventTooLarge { .. })));
    }

    /// A version 1 record of `rec` (what earlier collectors wrote).
    fn json_v1(rec: &Record) -> Vec<u8> {
        frame(VERSION_JSON, &serde_json::to_vec(rec).unwrap())
    }

    #[test]
    fn versions_1_and_2_decode_to_the_same_record_and_the_same_checked_events() {
        let mut rec = sample(40);
        rec.client.ip = None;
        let Value::Object(start) = json!({"view_id": "v", "seq": 40, "type": "viewstart", "ts": 1_700_000_000_100i64,
            "video_id": "a\"b", "custom": {"tier": 3, "ab": true}, "unknown": [1, {"x": null}]}) else { unreachable!() };
        rec.events.push(start);
        // An event of another view (the pipeline counts it a duplicate) keeps its own id.
        let Value::Object(other) = json!({"view_id": "w", "seq": 41, "type": "heartbeat", "ts": 1_700_000_000_200i64}) else { unreachable!() };
        rec.events.push(other);
        let rec = Record::Events(rec);
        let (v1, v2) = (json_v1(&rec), rec.encode());
        assert_eq!((v1[2], v2[2]), (VERSION_JSON, VERSION));
        assert_eq!(Record::decode(&v1).unwrap(), rec);
        assert_eq!(Record::decode(&v2).unwrap(), rec, "version 2 keeps every event's text: unknown fields survive");
        let checked = Record::decode_checked(&v2).unwrap();
        assert_eq!(Record::decode_checked(&v1).unwrap(), checked);
        assert_eq!(Checked::from(rec.clone()), checked);
        let Checked::Events(c) = checked else { panic!("kind") };
        assert!(c.events[40].as_ref().unwrap().raw.contains(r#""unknown":[1,{"x":null}]"#));
        // Dead letters stay in version 1.
        let dead = Record::Rejected(RejectedRecord { recv_ms: 1, key: None, index: None, tag: "t".into(), reason: "r".into(), payload: "p".into() });
        assert_eq!(dead.encode()[2], VERSION_JSON);
        assert_eq!(Record::decode_checked(&dead.encode()).unwrap(), Checked::Rejected(match dead { Record::Rejected(r) => r, _ => unreachable!() }));
    }

    #[test]
    fn a_record_with_an_invalid_event_is_written_in_version_1_and_refuses_that_event() {
        let mut rec = sample(3);
        rec.events[1].insert("seq".into(), json!(-1));
        let bytes = Record::Events(rec.clone()).encode();
        assert_eq!(bytes[2], VERSION_JSON);
        let Checked::Events(c) = Record::decode_checked(&bytes).unwrap() else { panic!("kind") };
        let (rejection, raw) = c.events[1].as_ref().unwrap_err();
        assert_eq!(rejection.field, "seq");
        assert!(raw.contains(r#""seq":-1"#));
        assert!(c.events[0].is_ok() && c.events[2].is_ok());
    }

    #[test]
    fn typed_events_out_of_bounds_are_refused_naming_the_field() {
        let Record::Events(rec) = Record::decode(&Record::Events(sample(1)).encode()).unwrap() else { panic!("kind") };
        let valid = crate::beacon::validate_event_map(&rec.events[0]).unwrap();
        let refused = |f: &dyn Fn(&mut Event)| {
            let mut e = valid.clone();
            f(&mut e);
            let bytes = rec.envelope().encode(&[CheckedEvent { event: e, raw: "{}".to_owned() }]);
            let Checked::Events(c) = Record::decode_checked(&bytes).unwrap() else { panic!("kind") };
            c.events[0].as_ref().map(|_| ()).map_err(|(r, _)| r.field.clone())
        };
        assert_eq!(refused(&|_| {}), Ok(()));
        assert_eq!(refused(&|e| e.seq = u64::MAX), Err("seq".into()));
        assert_eq!(refused(&|e| e.ts = i64::MIN), Err("ts".into()));
        assert_eq!(refused(&|e| e.view_id = "x".repeat(200)), Err("view_id".into()));
        assert_eq!(refused(&|e| e.playhead_ms = Some(-1.0)), Err("playhead_ms".into()));
        assert_eq!(refused(&|e| e.payload = crate::Payload::QualityChange { bitrate_kbps: 0.0, width: None, height: None, codec: None }), Err("bitrate_kbps".into()));
        assert_eq!(refused(&|e| e.kind = crate::EventKind::Segment), Err("type".into()), "a type without its fields");
    }

    #[test]
    fn damaged_version_2_bodies_are_errors_not_panics() {
        let bytes = Record::Events(sample(5)).encode();
        let Record::Events(rec) = Record::decode(&bytes).unwrap() else { panic!("kind") };
        let typed: Vec<CheckedEvent> = rec.events.iter().map(|m| CheckedEvent::validate(m).unwrap()).collect();
        let body = postcard::to_allocvec(&TypedOut {
            recv_ms: 1, sent_at: 1, key: None, view_id: "v",
            client: ClientOut { ip: None, device_type: "", os: "", os_version: "", browser: "", browser_version: "", country: "", bot: false },
            events: TypedEventsOut { view_id: "v", events: &typed },
        }).unwrap();
        for cut in 0..body.len() {
            let mut b = vec![b'Q', b'F', VERSION, CODEC_NONE];
            b.extend_from_slice(&body[..cut]);
            assert!(Record::decode_checked(&b).is_err(), "cut at {cut}");
        }
        let mut trailing = vec![b'Q', b'F', VERSION, CODEC_NONE];
        trailing.extend_from_slice(&body);
        trailing.push(0);
        assert!(matches!(Record::decode_checked(&trailing), Err(RecordError::Trailing(1))));
    }

    #[test]
    fn truncation_is_on_a_char_boundary() {
        let s = "é".repeat(REJECTED_PAYLOAD_MAX);
        let t = RejectedRecord::truncate_payload(&s);
        assert!(t.len() <= REJECTED_PAYLOAD_MAX && t.len() >= REJECTED_PAYLOAD_MAX - 1);
    }
}
