//! Trains the record dictionary (`schemas/src/records.dict`, record codec 2) on the version 2 bodies of
//! simulated SDK traffic: `qoeflow loadgen`'s viewers (seed 7, not the benchmarks' seeds), enriched by
//! the collector's enricher, as the collector writes them.
//!
//!   cargo run --release -p bench --bin train_dict -- schemas/src/records.dict [VIEWS=1000]
//!
//! The dictionary is part of the record format: codec 2 means this dictionary, so the file is trained
//! once and committed. Training another one means a new codec (`schemas/src/record.rs`), with readers
//! keeping this one.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use loadgen::collector_records;
use loadgen::sim::RunSpec;

/// Big enough for the protocol's keys, values and the typed layout; small enough to stay in cache.
const DICTIONARY_BYTES: usize = 16 << 10;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or_else(|| anyhow::anyhow!("usage: train_dict OUT_FILE [VIEWS]"))?;
    let views = args.next().map(|v| v.parse()).transpose()?.unwrap_or(1000);
    let spec = RunSpec::new(7, 3_600_000, 3_000_000);
    let (records, _, _) = collector_records(&spec, views, 1_700_000_000_000, common::enrich());
    let mut samples = Vec::with_capacity(records.len());
    for record in &records {
        let (version, body) = schemas::record::body(record)?;
        if version == schemas::record::VERSION {
            samples.push(body);
        }
    }
    let bytes: usize = samples.iter().map(Vec::len).sum();
    let dictionary = zstd::dict::from_samples(&samples, DICTIONARY_BYTES)?;
    std::fs::write(&out, &dictionary)?;
    println!("{} bytes of dictionary from {} records ({bytes} bytes of bodies) -> {out}", dictionary.len(), samples.len());
    Ok(())
}
