//! Property tests of the beacon decoder, event validation and the record format.

use proptest::prelude::*;
use schemas::beacon::{SEQ_MAX, TS_MAX_MS, TS_MIN_MS};
use schemas::{Checked, ClientInfo, EventKind, EventsRecord, Payload, Record, parse_beacon, validate_event};
use serde_json::{Map, Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "[a-z_]{0,12}".prop_map(Value::String),
        prop::sample::select(EventKind::ALL.map(|k| k.as_str()).to_vec()).prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("view_id".to_string()), Just("seq".to_string()), Just("type".to_string()),
                    Just("ts".to_string()), Just("bytes".to_string()), Just("bitrate_kbps".to_string()),
                    Just("cache".to_string()), Just("fatal".to_string()), Just("custom".to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_valid_event() -> impl Strategy<Value = Value> {
    (
        "[A-Za-z0-9-]{1,64}",
        0..=SEQ_MAX,
        prop::sample::select(EventKind::ALL.to_vec()),
        TS_MIN_MS..=TS_MAX_MS,
        prop::option::of(0.0..1e9f64),
        1u64..1_000_000,
        prop::sample::select(vec!["hit", "miss", "unknown"]),
        any::<bool>(),
    )
        .prop_map(|(view_id, seq, kind, ts, playhead, n, cache, fatal)| {
            let mut e = json!({"view_id": view_id, "seq": seq, "type": kind.as_str(), "ts": ts});
            let m = e.as_object_mut().expect("object");
            if let Some(p) = playhead {
                m.insert("playhead_ms".into(), json!(p));
            }
            match kind {
                EventKind::QualityChange => {
                    m.insert("bitrate_kbps".into(), json!(n as f64 / 10.0));
                }
                EventKind::Segment => {
                    m.insert("bytes".into(), json!(n));
                    m.insert("cache".into(), json!(cache));
                }
                EventKind::Error => {
                    m.insert("fatal".into(), json!(fatal));
                    m.insert("code".into(), json!(n));
                }
                EventKind::Viewstart => {
                    m.insert("cdn".into(), json!(format!("cdn{n}")));
                    m.insert("custom".into(), json!({"n": n, "b": fatal}));
                }
                _ => {}
            }
            e
        })
}

/// An event object's text the way a client might write it: any keys (validation's among them), repeated
/// or not, some written with escapes, with any values.
fn arb_event_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "view_id", "seq", "type", "ts", "playhead_ms", "bytes", "bitrate_kbps", "cache", "fatal", "custom",
            "cdn", "code", "video_id", "stream_type", "é", "a\"b",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    let value = prop_oneof![arb_json(), arb_valid_event()];
    let field = (key, any::<bool>(), value).prop_map(|(k, escape, v)| {
        let key = if escape && k.is_ascii() && !k.is_empty() {
            // The first character as a \u escape: the same key to JSON, not to the bytes.
            let mut chars = k.chars();
            let first = chars.next().unwrap_or('a');
            let rest = serde_json::to_string(chars.as_str()).expect("json");
            format!("\"\\u{:04x}{}\"", first as u32, &rest[1..rest.len() - 1])
        } else {
            serde_json::to_string(&k).expect("json")
        };
        let v = match v.as_str() {
            // A string value's first character as a \u escape too: parsed into an owned string, not
            // borrowed from the body.
            Some(s) if escape && s.is_ascii() && !s.is_empty() => {
                let rest = serde_json::to_string(&s[1..]).expect("json");
                format!("\"\\u{:04x}{}\"", s.as_bytes()[0], &rest[1..rest.len() - 1])
            }
            _ => v.to_string(),
        };
        format!("{key}:{v}")
    });
    // A valid event's fields, with others written before or after them (repeating its keys or not).
    let valid = arb_valid_event().prop_map(|v| {
        v.as_object().expect("object").iter().map(|(k, v)| format!("{}:{v}", json!(k))).collect::<Vec<_>>()
    });
    (valid, prop::collection::vec(field, 0..8), any::<bool>()).prop_map(|(valid, others, before)| {
        let fields = if before { [others, valid].concat() } else { [valid, others].concat() };
        format!("{{{}}}", fields.join(","))
    })
}

proptest! {
    /// The collector's parse (an event's fields as a list, keys and strings borrowed) validates every
    /// event exactly as the event's `serde_json::Value` does — repeated keys (the last counts), escaped
    /// keys and strings, nested values, events that are not objects — and keeps each event's text
    /// exactly as the body carried it.
    #[test]
    fn parsed_events_validate_as_their_json_values_and_keep_their_text(
        texts in prop::collection::vec(prop_oneof![3 => arb_event_text(), 1 => arb_json().prop_map(|v| v.to_string())], 0..6),
    ) {
        let body = format!(r#"{{"sent_at":{TS_MIN_MS},"events":[{}]}}"#, texts.join(","));
        let parsed = parse_beacon(body.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
        let values: Value = serde_json::from_str(&body).expect("json");
        let values = values["events"].as_array().expect("array");
        prop_assert_eq!(parsed.events.len(), values.len());
        for ((event, value), text) in parsed.events.iter().zip(values).zip(&texts) {
            prop_assert_eq!(event.validate(), validate_event(value), "{}", body);
            prop_assert_eq!(event.text(), text.as_str());
            prop_assert_eq!(&event.clone().into_value(), value);
        }
    }

    #[test]
    fn decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_beacon(&bytes);
        let _ = Record::decode(&bytes);
        let _ = Record::decode_checked(&bytes);
        // A version 2 header on the same bytes: postcard decoding of arbitrary input.
        let mut typed = vec![b'Q', b'F', schemas::record::VERSION, 0];
        typed.extend_from_slice(&bytes);
        let _ = Record::decode_checked(&typed);
        // … and under each compressed codec (1: zstd, 2: zstd with the record dictionary).
        for codec in [1, 2] {
            typed[3] = codec;
            let _ = Record::decode_checked(&typed);
        }
    }

    #[test]
    fn validation_never_panics_and_reasons_name_a_field(v in arb_json()) {
        if let Err(r) = validate_event(&v) {
            prop_assert!(!r.field.is_empty());
            prop_assert!(r.to_string().starts_with(&r.field));
        }
        let body = serde_json::to_vec(&json!({"sent_at": TS_MIN_MS, "events": [v]})).expect("json");
        prop_assert!(parse_beacon(&body).is_ok());
    }

    #[test]
    fn valid_events_validate_with_their_values(v in arb_valid_event()) {
        let e = validate_event(&v).map_err(|r| TestCaseError::fail(r.to_string()))?;
        prop_assert_eq!(e.view_id.as_str(), v["view_id"].as_str().expect("str"));
        prop_assert_eq!(e.seq, v["seq"].as_u64().expect("u64"));
        prop_assert_eq!(e.ts, v["ts"].as_i64().expect("i64"));
        prop_assert_eq!(e.kind.as_str(), v["type"].as_str().expect("str"));
        if let Payload::Segment { bytes, .. } = e.payload {
            prop_assert_eq!(bytes, v["bytes"].as_u64().expect("u64"));
        }
    }

    #[test]
    fn breaking_a_required_field_rejects_naming_it(
        v in arb_valid_event(),
        field in prop::sample::select(vec!["view_id", "seq", "type", "ts"]),
        bad in prop_oneof![Just(json!(null)), Just(json!(-1)), Just(json!({})), Just(json!(""))],
    ) {
        let mut v = v;
        v.as_object_mut().expect("object").insert(field.to_string(), bad);
        let r = validate_event(&v);
        prop_assert!(r.is_err(), "accepted with {} broken", field);
        prop_assert_eq!(r.err().map(|r| r.field), Some(field.to_string()));
    }

    #[test]
    fn records_roundtrip(events in prop::collection::vec(arb_valid_event(), 0..30), recv in TS_MIN_MS..TS_MAX_MS) {
        let events: Vec<Map<String, Value>> =
            events.into_iter().map(|v| v.as_object().cloned().expect("object")).collect();
        let rec = EventsRecord {
            recv_ms: recv, sent_at: recv - 5, key: None, view_id: "v".into(),
            client: ClientInfo::default(), events,
        };
        let chunks = rec.encode_chunks(4096).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut back = Vec::new();
        for c in chunks {
            prop_assert!(c.len() <= 4096);
            prop_assert_eq!(c[2], schemas::record::VERSION, "valid events are written typed");
            let decoded = Record::decode(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // What the pipeline takes from the typed record is what validating the JSON gives.
            let checked = Record::decode_checked(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&checked, &Checked::from(decoded.clone()));
            match decoded {
                Record::Events(r) => back.extend(r.events),
                Record::Rejected(_) => prop_assert!(false, "wrong kind"),
            }
        }
        prop_assert_eq!(back, rec.events);
    }
}

/// A zstd JSON record body framed by hand: magic, version 1, codec 1 (zstd), then `body`.
fn zstd_record(body: Vec<u8>) -> Vec<u8> {
    let mut out = b"QF".to_vec();
    out.extend([schemas::record::VERSION_JSON, 1]);
    out.extend(body);
    out
}

#[test]
fn a_record_that_says_it_decompresses_past_the_limit_is_refused_before_decompressing() {
    let huge = vec![b' '; schemas::record::MAX_DECODED_BYTES + 1];
    let body = zstd::bulk::compress(&huge, 1).expect("compress");
    let err = Record::decode(&zstd_record(body)).expect_err("over the limit");
    let msg = err.to_string();
    assert!(msg.contains("over the") && msg.contains(&schemas::record::MAX_DECODED_BYTES.to_string()), "{msg}");
}

#[test]
fn a_zstd_body_without_its_content_size_still_decodes_within_the_limit() {
    let rec = Record::Rejected(schemas::RejectedRecord {
        recv_ms: 1, key: None, index: None, tag: "t".into(), reason: "r".into(), payload: "x".repeat(3000),
    });
    let json = serde_json::to_vec(&rec).expect("json");
    // The streaming encoder does not know the size up front, so its frame does not record it.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).expect("encoder");
    std::io::Write::write_all(&mut enc, &json).expect("write");
    let body = enc.finish().expect("finish");
    assert_eq!(zstd::zstd_safe::get_frame_content_size(&body).ok().flatten(), None, "the test's frame must lack a size");
    assert_eq!(Record::decode(&zstd_record(body)).expect("decodes"), rec);
    // And a body without a size that inflates past the limit is still refused, by zstd's bound.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).expect("encoder");
    std::io::Write::write_all(&mut enc, &vec![b' '; schemas::record::MAX_DECODED_BYTES + 1]).expect("write");
    assert!(Record::decode(&zstd_record(enc.finish().expect("finish"))).is_err());
}
