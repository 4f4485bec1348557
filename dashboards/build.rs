//! Builds the live dashboard's assets into the binary: installs the charting library (uPlot) from npm
//! with `npm ci` (exact versions from `dashboards/web/package-lock.json`) into OUT_DIR, and copies its
//! files next to the dashboard's own sources for `query/src/dashboard.rs` to embed. The served page then
//! works offline and fetches nothing from the internet.

use std::path::{Path, PathBuf};

#[path = "../build/npm.rs"]
mod npm;

const VENDOR_FILES: [&str; 2] = ["uplot/dist/uPlot.iife.min.js", "uplot/dist/uPlot.min.css"];

fn main() {
    // This script builds the `query` crate, whose manifest is one level below the repository root.
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = root.join("../dashboards/web");
    println!("cargo:rerun-if-changed={}", web.join("src").display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("web");
    npm::install(&web, &out, &VENDOR_FILES, "the dashboard");
    for f in VENDOR_FILES {
        let name = Path::new(f).file_name().expect("file name");
        std::fs::copy(out.join("node_modules").join(f), out.join(name)).expect("copy the charting library");
    }
}
