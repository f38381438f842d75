//! deploy/systemd/slim-router.service passes `systemd-analyze verify` (skipped, and says so,
//! where systemd-analyze is not installed). The unit's /usr/local/bin/slim-router is pointed at
//! the binary just built, since verify checks that the executables exist. (Here, in the lab's
//! tests, so that `make test` runs it; it needs no lab.)

mod common;

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let Ok(which) = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        return;
    };
    if !which.status.success() {
        eprintln!("systemd-analyze not installed: the unit is not verified here");
        return;
    }
    let unit = include_str!("../../deploy/systemd/slim-router.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/slim-router --config /etc/slim/router.toml"));
    assert!(unit.contains("--check-config"));
    let dir = std::env::temp_dir().join(format!("slim-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("slim-router.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/slim-router",
            &common::bin("slim-router").display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // verify also reports unknown directives and bad values as warnings, with exit status 0.
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("slim-router.service"))
        .collect();
    assert!(own.is_empty(), "systemd-analyze verify complains:\n{text}");
}
