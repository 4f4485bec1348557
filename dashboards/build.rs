//! Builds the live dashboard's assets into the binary: installs the charting library (uPlot) from npm
//! with `npm ci` (exact versions from `dashboards/web/package-lock.json`) into OUT_DIR, and copies its
//! files next to the dashboard's own sources for `query/src/dashboard.rs` to embed. The served page then
//! works offline and fetches nothing from the internet.

use std::path::{Path, PathBuf};
use std::process::Command;

const VENDOR_FILES: [&str; 2] = ["uplot/dist/uPlot.iife.min.js", "uplot/dist/uPlot.min.css"];

fn main() {
    // This script builds the `query` crate, whose manifest is one level below the repository root.
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = root.join("../dashboards/web");
    let web = web.as_path();
    for f in ["package.json", "package-lock.json", "src"] {
        println!("cargo:rerun-if-changed={}", web.join(f).display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("web");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/web");
    let lock = std::fs::read(web.join("package-lock.json")).expect("dashboards/web/package-lock.json");
    let installed_lock = out.join("installed-lock.json");
    let up_to_date = std::fs::read(&installed_lock).is_ok_and(|l| l == lock)
        && VENDOR_FILES.iter().all(|f| out.join("node_modules").join(f).is_file());
    if !up_to_date {
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(web.join(f), out.join(f)).expect("copy package files");
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
            .current_dir(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("`npm ci` for the dashboard failed ({s}); it needs the npm registry once"),
            Err(e) => panic!("the dashboard needs Node.js and npm to build (`npm ci`): {e}"),
        }
        std::fs::write(&installed_lock, &lock).expect("record the installed lock");
    }
    for f in VENDOR_FILES {
        let name = Path::new(f).file_name().expect("file name");
        std::fs::copy(out.join("node_modules").join(f), out.join(name)).expect("copy the charting library");
    }
}
