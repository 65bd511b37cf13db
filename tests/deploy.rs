//! The deployment files the docs point to are valid as shipped.

use std::process::Command;

/// `docs/ringecho.service` passes `systemd-analyze verify`, pointed at the
/// binary this build made (verify checks that ExecStart is executable).
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/ringecho.service"
    ))
    .expect("docs/ringecho.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ringecho "),
        "{unit}"
    );
    let unit = unit.replace("/usr/local/bin/ringecho", env!("CARGO_BIN_EXE_ringecho"));
    let dir = std::env::temp_dir().join(format!("ringecho-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringecho.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is not installed: run the README's test command (.ci/test.sh), which installs it");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's own units (verify loads their dependencies
    // too) are not this unit's business; anything naming it is.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("ringecho")).collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}
