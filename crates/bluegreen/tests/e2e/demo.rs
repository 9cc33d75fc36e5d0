//! The README's main command works: the demo switches and rolls back under
//! load with zero failed requests.

use crate::support::*;

#[test]
fn demo_switches_and_rolls_back_with_zero_failed_requests() {
    let out = std::process::Command::new(bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--preview-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--step",
            "0.5",
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
