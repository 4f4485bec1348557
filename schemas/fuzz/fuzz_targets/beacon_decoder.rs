//! Fuzzes the beacon decoder and event validation, and the record decoder, on arbitrary bytes.
//! `cd schemas/fuzz && cargo fuzz run beacon_decoder` (cargo-fuzz needs a nightly toolchain, or
//! RUSTC_BOOTSTRAP=1 on stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(beacon) = schemas::parse_beacon(data) {
        for event in &beacon.events {
            // What the collector validates equals what the event's JSON value gives, and the text it
            // keeps is that value's text as sent.
            let value = event.clone().into_value();
            assert_eq!(event.validate(), schemas::validate_event(&value));
            assert_eq!(serde_json::from_str::<serde_json::Value>(event.text()).ok(), Some(value));
            assert!(data.as_ptr_range().contains(&event.text().as_ptr()), "a slice of the body, not a copy");
            if let Ok(e) = event.validate() {
                assert!(!e.view_id.is_empty());
                assert!(e.ts >= schemas::beacon::TS_MIN_MS && e.ts <= schemas::beacon::TS_MAX_MS);
            }
        }
    }
    if let Ok(schemas::Record::Events(r)) = schemas::Record::decode(data) {
        let _ = schemas::CheckedEvents::from(r);
    }
    // What the pipeline decodes: an event it takes is within the bounds validation sets.
    if let Ok(schemas::Checked::Events(r)) = schemas::Record::decode_checked(data) {
        for e in r.events.into_iter().flatten() {
            assert!(e.event.seq <= schemas::beacon::SEQ_MAX);
            assert!(e.event.ts >= schemas::beacon::TS_MIN_MS && e.event.ts <= schemas::beacon::TS_MAX_MS);
        }
    }
});
