//! The encoding of a view's event history in the state store (`docs/architecture.md` §7): one chunk
//! per view and epoch, what a correction re-derives the view from.
//!
//! A chunk is a format byte, then the events in [postcard], without their `view_id` (the chunk's key
//! names the view). Chunks written as JSON arrays of events by earlier versions (first byte `[`) are
//! still read, so a state store carries over an upgrade. The binary form is a third of the JSON's size
//! and much cheaper to write: history is written for every accepted event, and was, as JSON, the
//! largest cost of a state commit.

use schemas::{Event, EventKind, Payload};
use serde::{Deserialize, Serialize};

/// The first byte of a postcard chunk (never `[`, which starts a JSON chunk).
const POSTCARD_V1: u8 = 1;

/// What a view's chunk reserves at its first event.
const INITIAL_CHUNK_BYTES: usize = 256;

/// An event of a history chunk, borrowed for writing.
#[derive(Serialize)]
struct Out<'a> {
    seq: u64,
    kind: EventKind,
    ts: i64,
    playhead_ms: Option<f64>,
    payload: &'a Payload,
}

/// An event of a history chunk, read back.
#[derive(Deserialize)]
struct In {
    seq: u64,
    kind: EventKind,
    ts: i64,
    playhead_ms: Option<f64>,
    payload: Payload,
}

/// The events joining one view's history since the last commit, encoded as they join: the chunk the
/// commit writes. Held as events until the commit instead, each view's growing vector of them was
/// copied as it grew, and their memory, fresh every epoch, faulted in: together 7.6 % of the
/// pipeline's CPU (BENCHMARKS.md §30). Encoded at once, an event's memory is free as soon as its view
/// has taken it, for the next record's events.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    events: usize,
    lowest: u64,
    /// The events' encodings, one after another (what follows the chunk's length).
    bytes: Vec<u8>,
    /// Why an event could not be encoded: the commit fails with it.
    error: Option<String>,
}

impl Chunk {
    /// Appends an event (of the chunk's view).
    pub(crate) fn push(&mut self, e: &Event) {
        let out = Out { seq: e.seq, kind: e.kind, ts: e.ts, playhead_ms: e.playhead_ms, payload: &e.payload };
        if self.bytes.capacity() == 0 {
            // Room for several events (an event is 10-40 bytes): growing from postcard's first byte
            // reallocated a view's chunk eight times an epoch.
            self.bytes.reserve(INITIAL_CHUNK_BYTES);
        }
        match postcard::to_extend(&out, std::mem::take(&mut self.bytes)) {
            Ok(bytes) => self.bytes = bytes,
            Err(err) => {
                self.error.get_or_insert_with(|| format!("encoding history: {err}"));
            }
        }
        self.lowest = if self.events == 0 { e.seq } else { self.lowest.min(e.seq) };
        self.events += 1;
    }

    /// The events appended.
    pub(crate) fn len(&self) -> usize {
        self.events
    }

    /// The lowest `seq` of its events; None without events.
    pub(crate) fn lowest(&self) -> Option<u64> {
        (self.events > 0).then_some(self.lowest)
    }

    /// The chunk as the store keeps it: the format byte, then postcard's sequence of the events (its
    /// length, then each event), exactly as `encode` (the whole list at once) gives for the same events.
    pub(crate) fn to_bytes(&self) -> crate::Result<Vec<u8>> {
        if let Some(e) = &self.error {
            return Err(crate::Error::msg(e.clone()));
        }
        let mut buf = Vec::with_capacity(1 + 10 + self.bytes.len());
        buf.push(POSTCARD_V1);
        let mut buf = postcard::to_extend(&(self.events as u64), buf).map_err(|e| crate::Error::msg(format!("encoding history: {e}")))?;
        buf.extend_from_slice(&self.bytes);
        Ok(buf)
    }
}

/// Encodes the events of one view (all of the same `view_id`).
#[cfg(test)]
pub(crate) fn encode(events: &[Event]) -> crate::Result<Vec<u8>> {
    let mut chunk = Chunk::default();
    events.iter().for_each(|e| chunk.push(e));
    chunk.to_bytes()
}

/// Decodes a chunk of `view_id`'s history (either format).
pub(crate) fn decode(view_id: &str, chunk: &[u8]) -> crate::Result<Vec<Event>> {
    match chunk.first() {
        Some(&POSTCARD_V1) => {
            let events: Vec<In> =
                postcard::from_bytes(&chunk[1..]).map_err(|e| crate::Error::msg(format!("history chunk: {e}")))?;
            Ok(events
                .into_iter()
                .map(|e| Event { view_id: view_id.to_owned(), seq: e.seq, kind: e.kind, ts: e.ts, playhead_ms: e.playhead_ms, payload: e.payload })
                .collect())
        }
        Some(b'[') => Ok(serde_json::from_slice(chunk)?),
        Some(other) => Err(crate::Error::msg(format!("history chunk: unknown format byte {other}"))),
        None => Err(crate::Error::msg("history chunk: empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::event::{CacheStatus, ViewDims};

    fn events() -> Vec<Event> {
        let e = |seq, kind, payload| Event { view_id: "v-1".into(), seq, kind, ts: 1_700_000_000_000 + seq as i64, playhead_ms: Some(1.5), payload };
        vec![
            e(0, EventKind::Viewstart, Payload::Viewstart(Box::new(ViewDims { video_id: Some("vid".into()), custom: vec![("k".into(), "é".into())], ..ViewDims::default() }))),
            e(1, EventKind::QualityChange, Payload::QualityChange { bitrate_kbps: 2500.25, width: Some(1280), height: None, codec: Some("avc1".into()) }),
            e(2, EventKind::Segment, Payload::Segment { host: None, bytes: 1 << 40, duration_ms: Some(0.1), ttfb_ms: None, cache: CacheStatus::Hit }),
            e(3, EventKind::Error, Payload::Error { code: None, message: Some("x".into()), fatal: true }),
            Event { playhead_ms: None, ..e(4, EventKind::Heartbeat, Payload::None) },
        ]
    }

    #[test]
    fn chunks_roundtrip_and_are_smaller_than_json() {
        let chunk = encode(&events()).expect("encode");
        assert_eq!(decode("v-1", &chunk).expect("decode"), events());
        let json = serde_json::to_vec(&events()).expect("json");
        assert!(chunk.len() * 2 < json.len(), "{} bytes vs {} as JSON", chunk.len(), json.len());
    }

    /// A chunk built an event at a time is postcard's encoding of the whole list (what the store holds
    /// from earlier versions), with lengths of one varint byte and of more.
    #[test]
    fn chunks_built_event_by_event_are_the_whole_list_encoded() {
        for n in [0, 1, 5, 127, 128, 300] {
            let events: Vec<Event> = events().into_iter().cycle().take(n).enumerate().map(|(i, e)| Event { seq: 1_000 - i as u64, ..e }).collect();
            let whole: Vec<Out<'_>> =
                events.iter().map(|e| Out { seq: e.seq, kind: e.kind, ts: e.ts, playhead_ms: e.playhead_ms, payload: &e.payload }).collect();
            let mut expected = vec![POSTCARD_V1];
            expected.extend(postcard::to_allocvec(&whole).expect("postcard"));
            let mut chunk = Chunk::default();
            events.iter().for_each(|e| chunk.push(e));
            assert_eq!(chunk.to_bytes().expect("encode"), expected, "{n} events");
            assert_eq!(chunk.len(), n);
            assert_eq!(chunk.lowest(), events.iter().map(|e| e.seq).min());
            assert_eq!(decode("v-1", &expected).expect("decode"), events);
        }
    }

    #[test]
    fn chunks_written_as_json_by_earlier_versions_still_read() {
        let json = serde_json::to_vec(&events()).expect("json");
        assert_eq!(decode("v-1", &json).expect("decode"), events());
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let chunk = encode(&events()).expect("encode");
        for cut in 0..chunk.len() {
            assert!(decode("v-1", &chunk[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode("v-1", &[7, 0]).is_err());
    }
}
