//! The fast parse of a beacon body: sonic-rs's SIMD parser builds the body's document, and validation
//! reads each event's fields from it. serde_json still reads the envelope and slices out each event's
//! text (the `raw` column keeps the event as sent), which sonic-rs cannot give.
//!
//! It answers exactly as [`super::parse_exact`] would, and leaves to that parse whatever it could not
//! answer so:
//! - a body serde_json refuses or whose envelope is wrong, or an event the exact parse refuses: the
//!   whole body, which names any problem as it always did;
//! - a body of one event (building the document costs more than it saves for one), one sonic-rs
//!   refuses, or with more than [`MAX_TOP_KEYS`] keys (repeated ones included) or repeated `events`:
//!   every event is parsed exactly from its text;
//! - an event that is not an object, is longer than [`EVENT_MAX_BYTES`], or may nest deeper than
//!   serde_json allows (its slicing of events checks no depth; sonic-rs allows 254 levels): parsed
//!   exactly from its text, and a failure there sends the whole body to the exact parse;
//! - a field validation reads whose value the document does not hold as serde_json would (an object,
//!   as `custom` is; any zero written other than `0`, whose sign sonic-rs drops where serde_json keeps
//!   it, as in `-0`): the event is parsed exactly from its text when it is validated.
//!
//! The two parsers agree on every other value to the bit (floats parse to the nearest double in both);
//! a property test checks them against each other on generated bodies. A wrk beacon of 20 events is
//! parsed and validated this way in 7.0 µs against 9.8 (BENCHMARKS.md §25).
//!
//! Memory: the document takes at most about 33 bytes a byte of body (a 16-byte node for each value and
//! key, in an arena that grows by doubling) besides its copy of the text, within the charge for the
//! values the length allows; the exact trees of events left to the exact parse take at most as much
//! again, and the caller charges twice that ([`super::parse_beacon_limited`]). sonic-rs also keeps a
//! scratch buffer of nodes on each thread that parsed, reused by its next parse.

use std::sync::Arc;

use sonic_rs::{JsonContainerTrait, JsonNumberTrait, JsonType, JsonValueTrait};

use super::{EVENTS, JsonRef, Num, Parsed, ParsedBeacon, RawEvent, Read, Slots, envelope, parse_event, read_body, uncounted};

/// The most keys of a body the fast parse takes: finding `events` in the document is a search of them,
/// made for each event validated. Players send three (`key`, `sent_at`, `events`).
pub(super) const MAX_TOP_KEYS: usize = 8;

/// The longest event the fast parse reads: longer ones (players' are a few hundred bytes) are parsed
/// exactly, as are the rare events validated from their text again, whose tree this keeps small.
pub(super) const EVENT_MAX_BYTES: usize = 4096;

/// The fewest events the document is built for: for one, building it costs more than it saves
/// (BENCHMARKS.md §25); its text is parsed exactly.
const MIN_EVENTS: usize = 2;

/// serde_json's nesting limit: an event with at least this many `[` and `{` may nest too deep for it.
const MAX_OPENINGS: usize = 128;

/// Parses `body`, or `None` where the exact parse must decide (see the module's documentation). The
/// caller has bounded and charged the values `body` can hold.
pub(super) fn parse(body: &[u8]) -> Option<ParsedBeacon<'_>> {
    uncounted(|counter| {
        // serde_json's read first: its syntax is the contract's, and it limits the envelope's nesting.
        let (obj, events) = read_body(body, counter, Read::Texts).ok()?;
        let (key, sent_at, events) = envelope(obj, events).ok()?;
        let doc = if events.texts.len() >= MIN_EVENTS { document(body, events.texts.len()) } else { None };
        let array = doc.as_ref().and_then(|doc| doc.get(EVENTS)).and_then(|events| events.as_array());
        let mut scratch = Vec::new();
        let mut out = Vec::with_capacity(events.texts.len());
        for (index, text) in events.texts.into_iter().enumerate() {
            let value = array.and_then(|array| array.get(index));
            let parsed = match (&doc, value) {
                (Some(doc), Some(value)) if value.is_object() && text.len() <= EVENT_MAX_BYTES && shallow(text) => {
                    Parsed::Dom(DomEvent { doc: Arc::clone(doc), index })
                }
                _ => parse_event(counter, &mut scratch, text).ok()?,
            };
            out.push(RawEvent { text, parsed });
        }
        Some(ParsedBeacon { key, sent_at, events: out })
    })
}

/// sonic-rs's document of `body` when validation may read its `events` from it: one `events` array of
/// `events` values (the events serde_json sliced out), among at most [`MAX_TOP_KEYS`] keys. Without
/// it, every event is parsed exactly from its text.
fn document(body: &[u8], events: usize) -> Option<Arc<sonic_rs::Value>> {
    let doc = sonic_rs::from_slice::<sonic_rs::Value>(body).ok()?;
    let top = doc.as_object()?;
    let one = top.len() <= MAX_TOP_KEYS && top.iter().filter(|(k, _)| *k == EVENTS).count() == 1;
    let fits = top.get(&EVENTS).and_then(|e| e.as_array()).is_some_and(|array| array.len() == events);
    (one && fits).then(|| Arc::new(doc))
}

/// Whether `text` nests within serde_json's limit for certain: a text of fewer than twice
/// [`MAX_OPENINGS`] bytes cannot hold that many levels (each opens and closes), a longer one is counted.
fn shallow(text: &str) -> bool {
    text.len() < 2 * MAX_OPENINGS || text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() < MAX_OPENINGS
}

/// An event the fast parse read: the body's document and the event's index in its `events`.
#[derive(Clone)]
pub(super) struct DomEvent {
    doc: Arc<sonic_rs::Value>,
    index: usize,
}

impl DomEvent {
    /// The event's object in the document.
    fn object(&self) -> Option<&sonic_rs::Object> {
        self.doc.get(EVENTS).and_then(|events| events.get(self.index)).and_then(|e| e.as_object())
    }

    /// The event's fields as validation reads them, or `None` when one of them is a value the document
    /// does not hold exactly as serde_json would (see [`scalar`]).
    pub(super) fn slots(&self) -> Option<Slots<'_>> {
        let mut slots = Slots::default();
        for (key, value) in self.object()?.iter() {
            if let Some(slot) = slots.at(key) {
                *slot = Some(scalar(value)?);
            }
        }
        Some(slots)
    }
}

/// The event, not its whole document.
impl std::fmt::Debug for DomEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomEvent").field("index", &self.index).field("object", &self.object()).finish()
    }
}

/// Events are equal when their objects are.
impl PartialEq for DomEvent {
    fn eq(&self, other: &Self) -> bool {
        self.object() == other.object()
    }
}

/// A value of the document as validation reads it, when the document holds it exactly as serde_json
/// would: not an array or object (only `custom` is one, and validation reads it as serde_json's map),
/// nor a zero written other than `0` (sonic-rs reads `-0`, `0.0`, `-0.0`, `0e5`, `-1e-400` all as
/// +0.0; serde_json keeps the sign of those that have one).
fn scalar(v: &sonic_rs::Value) -> Option<JsonRef<'_>> {
    Some(match v.get_type() {
        JsonType::String => JsonRef::String(v.as_str()?),
        JsonType::Number => {
            let n = v.as_number()?;
            JsonRef::Number(match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Num::PosInt(u),
                (None, Some(i), _) => Num::NegInt(i),
                (None, None, Some(f)) if f != 0.0 => Num::Float(f),
                _ => return None,
            })
        }
        JsonType::Boolean => JsonRef::Bool(v.is_true()),
        JsonType::Null => JsonRef::Null,
        JsonType::Array | JsonType::Object => return None,
    })
}

#[cfg(test)]
mod tests {
    use crate::beacon::{Parsed, parse_beacon};

    /// The deepest bodies sonic-rs parses (254 levels: the body, `events`, an event and 251 more) and
    /// those just past serde_json's limit, parsed on a thread of a quarter of a tokio worker's stack.
    #[test]
    fn the_deepest_bodies_parse_on_a_small_stack() {
        let parsed = std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(|| {
                [120, 126, 127, 200, 251, 252]
                    .map(|depth| {
                        let x = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                        let body = format!(r#"{{"sent_at":1700000000000,"events":[{{"x":{x}}},{{"y":1}}]}}"#);
                        let sonic = sonic_rs::from_slice::<sonic_rs::Value>(body.as_bytes()).is_ok();
                        let beacon = parse_beacon(body.as_bytes()).map(|b| matches!(b.events[1].parsed, Parsed::Dom(_)));
                        (depth, sonic, beacon.is_ok())
                    })
                    .to_vec()
            })
            .expect("spawns")
            .join()
            .expect("no overflow");
        let expected = [(120, true, true), (126, true, true), (127, true, false), (200, true, false), (251, true, false), (252, false, false)];
        assert_eq!(parsed, expected, "(levels below the event, sonic-rs parsed the body, the beacon parsed)");
    }
}
