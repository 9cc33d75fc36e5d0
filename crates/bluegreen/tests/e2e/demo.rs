//! The README's main command works: the demo deploys v1 and v2 under load
//! with zero failed requests, and rolls a broken v3 back by itself.

use crate::support::*;

#[test]
fn demo_releases_v1_v2_and_rolls_back_a_broken_v3() {
    let out = std::process::Command::new(bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--preview-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--broken",
            "--bake",
            "1",
            "--clients",
            "4",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("==> switch: green is now live"), "{stdout}");
    assert!(
        stdout.contains("==> rollback: blue is now live"),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    assert!(stdout.contains("zero failed requests"), "{stdout}");
}
