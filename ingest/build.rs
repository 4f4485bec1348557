//! Builds the web player SDK (`sdk/web`, TypeScript) into the binary, for the collector to serve at
//! `/sdk/v1/qoeflow.min.js`: installs its build tools from npm with `npm ci` (exact versions from
//! `sdk/web/package-lock.json`) into OUT_DIR, copies the sources there and runs its `build.mjs`
//! (esbuild), which also measures its size. The SDK itself has no runtime dependencies.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../build/npm.rs"]
mod npm;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read sdk/web/src") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy an SDK source");
    }
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let sdk = root.join("../sdk/web");
    for f in ["src", "build.mjs"] {
        println!("cargo:rerun-if-changed={}", sdk.join(f).display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("sdk");
    npm::install(&sdk, &out, &["esbuild"], "the player SDK");
    copy_dir(&sdk.join("src"), &out.join("src"));
    std::fs::copy(sdk.join("build.mjs"), out.join("build.mjs")).expect("copy build.mjs");
    let built = Command::new("node").arg(out.join("build.mjs")).arg(out.join("dist")).current_dir(&out).output();
    match built {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("building the player SDK failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("the player SDK needs Node.js to build: {e}"),
    }
}
