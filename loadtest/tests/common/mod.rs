//! What the loadtest integration suites share.

use std::path::PathBuf;
use std::process::Command;

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");

/// ringecho from `RINGECHO_BIN`, else next to this package's binary (the
/// workspace shares one target directory, and `cargo test --workspace`
/// builds it there), else built on demand into a target directory of its
/// own, so the build does not wait on the lock this test run holds.
pub fn ringecho_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RINGECHO_BIN") {
        return PathBuf::from(p);
    }
    let dir = PathBuf::from(LOADTEST)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let beside = dir.join("ringecho");
    if beside.exists() {
        return beside;
    }
    let release = dir.ends_with("release");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target").join("loadtest-ringecho");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args([
            "build",
            "-p",
            "ringecho",
            "--bin",
            "ringecho",
            "--target-dir",
        ])
        .arg(&target);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo to build ringecho");
    assert!(status.success(), "building ringecho failed");
    target
        .join(if release { "release" } else { "debug" })
        .join("ringecho")
}
