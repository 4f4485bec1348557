//! The record format written to Kinesis and to the embedded local log (version 1; documented in
//! `schemas/README.md`).
//!
//! One record per (beacon, view): the events one beacon carried for one `view_id`, with the collector's
//! enrichment of that request, so the partition key (`view_id`) keeps a view's records on one shard and in
//! order. Invalid events travel as `rejected` records to the dead-letter table.
//!
//! Layout: `b"QF"` magic, a version byte (1), a codec byte (0 = none, 1 = zstd), then the body: the
//! record as JSON (events keep their original JSON objects, so unknown fields survive). Bodies of a few
//! hundred bytes and up are zstd-compressed. Readers reject other versions with a clear error instead of
//! guessing; decompression is bounded so a poison record cannot exhaust memory.
//! See `schemas/README.md` for the field list.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{ClientInfo, Event};

pub const MAGIC: [u8; 2] = *b"QF";
pub const VERSION: u8 = 1;
const CODEC_NONE: u8 = 0;
const CODEC_ZSTD: u8 = 1;
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
    #[error("unsupported record version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown record codec {0}")]
    UnknownCodec(u8),
    #[error("record body does not decompress: {0}")]
    Decompress(std::io::Error),
    #[error("record body is not a valid record: {0}")]
    Body(serde_json::Error),
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

    /// The events, validated again (they were valid when written; a record from a newer or broken
    /// writer yields per-event errors instead of a panic).
    pub fn validated_events(
        &self,
    ) -> impl Iterator<Item = Result<Event, crate::beacon::EventRejection>> + '_ {
        self.events.iter().map(crate::beacon::validate_event_map)
    }

    /// Encodes into one or more records of at most `limit` bytes each, splitting the events (in order)
    /// when a beacon carried more for one view than fits one record. Borrows: no event is copied.
    pub fn encode_chunks(&self, limit: usize) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = Vec::new();
        self.encode_slice_into(&self.events, limit, &mut out)?;
        Ok(out)
    }

    /// Encodes the envelope with `events` (a slice of this record's events, or any others).
    pub fn encode_with(&self, events: &[Map<String, Value>]) -> Vec<u8> {
        let body = EventsOut {
            kind: "events",
            recv_ms: self.recv_ms,
            sent_at: self.sent_at,
            key: self.key.as_deref(),
            view_id: &self.view_id,
            client: &self.client,
            events,
        };
        frame(&serde_json::to_vec(&body).unwrap_or_default())
    }

    fn encode_slice_into(
        &self,
        events: &[Map<String, Value>],
        limit: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), RecordError> {
        let encoded = self.encode_with(events);
        if encoded.len() <= limit {
            out.push(encoded);
            return Ok(());
        }
        if events.len() <= 1 {
            return Err(RecordError::EventTooLarge { size: encoded.len(), limit });
        }
        let (left, right) = events.split_at(events.len() / 2);
        self.encode_slice_into(left, limit, out)?;
        self.encode_slice_into(right, limit, out)
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
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data structures into a Vec cannot fail.
        frame(&serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() < 4 {
            return Err(RecordError::TooShort(bytes.len()));
        }
        if bytes[..2] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        if bytes[2] != VERSION {
            return Err(RecordError::UnsupportedVersion(bytes[2]));
        }
        let body = &bytes[4..];
        match bytes[3] {
            CODEC_NONE => decode_body(body),
            CODEC_ZSTD => DECOMPRESSOR.with(|cell| {
                let mut cell = cell.borrow_mut();
                let (d, buf) = &mut *cell;
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new().map_err(RecordError::Decompress)?);
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
                let decoded = d
                    .decompress_to_buffer(body, buf)
                    .map_err(RecordError::Decompress)
                    .and_then(|_| decode_body(buf));
                if buf.capacity() > KEEP_BUFFER_BYTES {
                    *buf = Vec::new();
                }
                decoded
            }),
            other => Err(RecordError::UnknownCodec(other)),
        }
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
    // zstd contexts are costly to create (a fresh one per record was ~7% of collector CPU): one per thread.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<(Option<zstd::bulk::Decompressor<'static>>, Vec<u8>)> = const { RefCell::new((None, Vec::new())) };
}

/// Header + body, zstd-compressed when that is smaller.
fn frame(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() / 3 + 8);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    if json.len() >= COMPRESS_FROM {
        let compressed = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
            }
            c.as_mut().and_then(|c| c.compress(json).ok())
        });
        if let Some(compressed) = compressed.filter(|c| c.len() < json.len()) {
            out.push(CODEC_ZSTD);
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
            assert_eq!(&bytes[..3], b"QF\x01");
            assert_eq!(Record::decode(&bytes).unwrap(), rec);
            // The borrowed encoding is the same record.
            let Record::Events(events) = &rec else { unreachable!() };
            assert_eq!(Record::decode(&events.encode_with(&events.events)).unwrap(), rec);
        }
        let big = Record::Events(sample(40)).encode();
        assert_eq!(big[3], CODEC_ZSTD, "large bodies are compressed");
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

    #[test]
    fn truncation_is_on_a_char_boundary() {
        let s = "é".repeat(REJECTED_PAYLOAD_MAX);
        let t = RejectedRecord::truncate_payload(&s);
        assert!(t.len() <= REJECTED_PAYLOAD_MAX && t.len() >= REJECTED_PAYLOAD_MAX - 1);
    }
}
