//! Shared by the build scripts that put web assets into the binary (`dashboards/build.rs` for the live
//! dashboard, `ingest/build.rs` for the player SDK): `npm ci` of a package into a directory under OUT_DIR,
//! with the exact versions of its committed `package-lock.json`, skipped when that lock is already
//! installed there.

use std::path::Path;
use std::process::Command;

/// Copies `package.json` and `package-lock.json` from `package` into `into` and runs `npm ci` there,
/// unless the same lock is installed and `expect` (paths under `node_modules`) are all present.
pub fn install(package: &Path, into: &Path, expect: &[&str], what: &str) {
    for f in ["package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed={}", package.join(f).display());
    }
    std::fs::create_dir_all(into).expect("create the npm directory under OUT_DIR");
    let lock = std::fs::read(package.join("package-lock.json")).unwrap_or_else(|e| panic!("{}/package-lock.json: {e}", package.display()));
    let installed_lock = into.join("installed-lock.json");
    let up_to_date =
        std::fs::read(&installed_lock).is_ok_and(|l| l == lock) && expect.iter().all(|f| into.join("node_modules").join(f).exists());
    if up_to_date {
        return;
    }
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(package.join(f), into.join(f)).expect("copy package files");
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
        .current_dir(into)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`npm ci` for {what} failed ({s}); it needs the npm registry once"),
        Err(e) => panic!("{what} needs Node.js and npm to build (`npm ci`): {e}"),
    }
    std::fs::write(&installed_lock, &lock).expect("record the installed lock");
}
