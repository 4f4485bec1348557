//! The fast parse of a beacon body: sonic-rs's SIMD parser builds the body's document, from which the
//! envelope is read and each event validated (so nothing refers to the document once the parse
//! returns); a scan of the text it accepted (so of valid JSON) slices
//! out each event's text (the `raw` column keeps the event as sent), which sonic-rs cannot give
//! ([`super::scan`]: 64-byte blocks with SSE2 on x86_64, a byte loop elsewhere).
//!
//! It answers exactly as [`super::parse_exact`] would, and leaves to that parse whatever it could not
//! answer so:
//! - a body that is not UTF-8, that sonic-rs refuses, or whose envelope is wrong, with more than
//!   [`MAX_TOP_KEYS`] keys, repeated keys (the exact parse takes the last of them, the document's lookup
//!   the first), an envelope field the document does not hold as serde_json would ([`scalar`]), nesting
//!   of [`MAX_DEPTH`] levels or more anywhere (serde_json refuses 128 levels in the envelope or below an
//!   event, sonic-rs takes 254), or a number longer than [`MAX_NUMBER_BYTES`] anywhere (sonic-rs
//!   misreads some); or an event the exact parse refuses: the whole body, which names any problem as it
//!   always did. (Keys written with escapes are read as the exact parse reads them: the scan finds
//!   `events` by its place among the body's values, which the document gives with its keys unescaped.)
//! - an event that is not an object or is longer than [`EVENT_MAX_BYTES`]: parsed exactly from its
//!   text, and a failure there sends the whole body to the exact parse;
//! - a field validation reads whose value the document does not hold as serde_json would (an object,
//!   as `custom` is; any zero written other than `0`, whose sign sonic-rs drops where serde_json keeps
//!   it, as in `-0`): the event is parsed exactly from its text, and validated later as the exact
//!   parse's events are; a failure there sends the whole body to the exact parse.
//!
//! The two parsers agree on every other value to the bit (floats of at most [`MAX_NUMBER_BYTES`] parse to
//! the nearest double in both);
//! a property test checks them against each other on generated bodies. A wrk beacon of 20 events is
//! parsed and validated this way in 5.3–5.4 µs (5.6–5.8 while events referred to the document until
//! validated, 6.7 with the byte loop's scan, 7.0 when serde_json sliced out the events for the document)
//! against 9.0–9.5 on the exact parse (BENCHMARKS.md §25–§28).
//!
//! Memory: the document takes at most about 33 bytes a byte of body (a 16-byte node for each value and
//! key, in an arena that grows by doubling) besides its copy of the text, within the charge for the
//! values the length allows; the exact trees of events left to the exact parse take at most as much
//! again, and the caller charges twice that ([`super::parse_beacon_limited`]). sonic-rs also keeps a
//! scratch buffer of nodes on each thread that parsed, reused by its next parse. The validated events
//! the parse returns (about 140 bytes each and their strings, at most [`super::MAX_EVENTS_PER_BEACON`])
//! are not charged, as the handler's typed events were not before they were validated here.

use sonic_rs::{JsonContainerTrait, JsonNumberTrait, JsonType, JsonValueTrait};

use super::scan::event_texts;
#[cfg(doc)]
use super::scan::{MAX_DEPTH, MAX_NUMBER_BYTES};
use super::{EVENTS, JsonRef, Num, Parsed, ParsedBeacon, RawEvent, Slots, check_event_count, envelope_fields, parse_event, uncounted, validate_fields};

/// The most keys of a body the fast parse takes: checking them for repeats compares each with those
/// before it. Players send three (`key`, `sent_at`, `events`).
pub(super) const MAX_TOP_KEYS: usize = 8;

/// The longest event the fast parse reads from its document: longer ones (players' are a few hundred
/// bytes) are parsed exactly from their text. It also keeps small the tree of an event's text parsed
/// again when it is asked for as a value ([`super::RawEvent::into_value`]).
pub(super) const EVENT_MAX_BYTES: usize = 4096;

/// Parses `body`, or `None` where the exact parse must decide (see the module's documentation). The
/// caller has bounded and charged the values `body` can hold.
pub(super) fn parse(body: &[u8]) -> Option<ParsedBeacon<'_>> {
    // The text's UTF-8 is checked once: sonic-rs parses a `str` without checking it again, and the
    // events' texts are slices of it.
    let text = std::str::from_utf8(body).ok()?;
    let doc = sonic_rs::from_str::<sonic_rs::Value>(text).ok()?;
    let (key, sent_at, events, events_at) = envelope_of(&doc)?;
    let texts = event_texts(text, events_at)?;
    if texts.len() != events.len() {
        return None;
    }
    uncounted(|counter| {
        let mut scratch = Vec::new();
        let mut out = Vec::with_capacity(texts.len());
        for (value, text) in events.iter().zip(texts) {
            let fields = match value.as_object() {
                Some(object) if text.len() <= EVENT_MAX_BYTES => slots(object),
                _ => None,
            };
            let parsed = match fields {
                Some(fields) => Parsed::Validated(validate_fields(&fields)),
                None => parse_event(counter, &mut scratch, text).ok()?,
            };
            out.push(RawEvent { text, parsed });
        }
        Some(ParsedBeacon { key, sent_at, events: out })
    })
}

/// The envelope of the document, checked as [`super::envelope`] checks it, its events, and
/// where `events` is among the body's values that are arrays or objects (in the text's order, for the
/// scan: its keys are unescaped here); `None` where the exact parse must decide: an error, more than
/// [`MAX_TOP_KEYS`] keys, repeated keys (the exact parse takes the last of them, sonic-rs's lookup the
/// first), or a field the document does not hold as serde_json would ([`scalar`]).
fn envelope_of(doc: &sonic_rs::Value) -> Option<(Option<String>, i64, &sonic_rs::Array, usize)> {
    let top = doc.as_object()?;
    if top.len() > MAX_TOP_KEYS {
        return None;
    }
    let keys: Vec<&str> = top.iter().map(|(k, _)| k).collect();
    if keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k)) {
        return None;
    }
    let field = |name: &str| top.get(&name).map(scalar);
    let (key, sent_at) = match (field("key"), field("sent_at")) {
        (Some(None), _) | (_, Some(None)) => return None,
        (key, sent_at) => envelope_fields(key.flatten(), sent_at.flatten()).ok()?,
    };
    let events = top.get(&EVENTS)?.as_array()?;
    check_event_count(events.len()).ok()?;
    let events_at = top.iter().take_while(|(k, _)| *k != EVENTS).filter(|(_, v)| v.is_array() || v.is_object()).count();
    Some((key, sent_at, events, events_at))
}

/// An event's fields as validation reads them, or `None` when one of them is a value the document does
/// not hold exactly as serde_json would (see [`scalar`]): the event is then parsed exactly from its text.
fn slots(object: &sonic_rs::Object) -> Option<Slots<'_>> {
    let mut slots = Slots::default();
    for (key, value) in object.iter() {
        if let Some(slot) = slots.at(key) {
            *slot = Some(scalar(value)?);
        }
    }
    Some(slots)
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
                        let beacon = parse_beacon(body.as_bytes()).map(|b| matches!(b.events[1].parsed, Parsed::Validated(_)));
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
