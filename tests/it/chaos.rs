//! The chaos runs of `deploy/chaos/chaos.py` with 10 kills each (RELIABILITY.md records 100-kill runs):
//! `qoeflow serve`, and the production shape (`qoeflow ingest` and `qoeflow pipeline` on the Kinesis
//! emulator), killed with SIGKILL at random moments under `qoeflow loadgen` traffic and restarted; in the
//! end every total equals the loadgen's truth.

use std::process::Command;

use crate::common::repo_root;

fn chaos(mode: &str) {
    let script = repo_root().join("deploy/chaos/chaos.py");
    let work = tempfile::tempdir().expect("tmp");
    let out = Command::new("python3")
        .arg(script)
        .args([mode, "--bin", env!("CARGO_BIN_EXE_qoeflow"), "--kills", "10", "--viewers", "300", "--duration", "20", "--seed", "7"])
        .arg("--work")
        .arg(work.path())
        .output()
        .expect("python3 runs deploy/chaos/chaos.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        for log in ["serve.log", "ingest.log", "pipeline.log", "loadgen.log"] {
            if let Ok(text) = std::fs::read_to_string(work.path().join(log)) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {log}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        panic!("the chaos run failed ({})", out.status);
    }
    assert!(stdout.contains("10 kills") && stdout.contains("OK: every total"), "{stdout}");
}

#[test]
fn serve_killed_10_times_under_load_equals_the_truth() {
    chaos("serve");
}

#[test]
fn ingest_and_pipeline_on_kinesis_killed_10_times_under_load_equal_the_truth() {
    chaos("kinesis");
}
