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
    for expected in [
        "deploy #1 of v1 to green succeeded",
        "deploy #2 of v2 to blue succeeded",
        "deploy #3 of v3 to green was ROLLED BACK",
        "failed requests (errors, resets, 502/503): 0",
        "with zero failed requests",
    ] {
        assert!(
            stdout.contains(expected),
            "expected {expected:?} in:\n{stdout}"
        );
    }
}
