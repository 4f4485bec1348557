//! The JSON Schema (`schemas/beacon.v1.schema.json`) and the Rust validation must agree: every example in
//! `examples/valid/` is accepted whole by both, every example in `examples/invalid/` is refused (whole, or
//! at least one of its events) by both.

use std::path::{Path, PathBuf};

use schemas::parse_beacon;
use serde_json::Value;

fn examples(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(kind);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("dir entry").path();
            let bytes = std::fs::read(&path).expect("read example");
            (path, bytes)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "expected example files in {}", dir.display());
    out
}

fn rust_accepts_all(bytes: &[u8]) -> bool {
    match parse_beacon(bytes) {
        Err(_) => false,
        Ok(b) => b.events.iter().all(|e| e.validate().is_ok()),
    }
}

fn schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("beacon.v1.schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).expect("schema file")).expect("schema json");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn valid_examples_pass_both() {
    let validator = schema();
    for (path, bytes) in examples("valid") {
        let instance: Value = serde_json::from_slice(&bytes).expect("example is JSON");
        let schema_errors: Vec<String> = validator.iter_errors(&instance).map(|e| e.to_string()).collect();
        assert!(schema_errors.is_empty(), "{}: JSON Schema refuses: {schema_errors:?}", path.display());
        assert!(rust_accepts_all(&bytes), "{}: Rust validation refuses", path.display());
    }
}

#[test]
fn invalid_examples_fail_both() {
    let validator = schema();
    for (path, bytes) in examples("invalid") {
        let instance: Value = serde_json::from_slice(&bytes).expect("example is JSON");
        assert!(!validator.is_valid(&instance), "{}: JSON Schema accepts it", path.display());
        assert!(!rust_accepts_all(&bytes), "{}: Rust validation accepts it", path.display());
    }
}
