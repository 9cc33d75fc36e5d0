//! Exit codes, shared by every command (the README lists them).

/// Exit code for a refused or failed operation.
pub const EXIT_ERROR: u8 = 1;
/// Exit code for invalid configuration or usage.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of a deploy that was rolled back.
pub const EXIT_ROLLED_BACK: u8 = 3;
/// Exit code of a deploy that was aborted.
pub const EXIT_ABORTED: u8 = 4;
/// Exit code when `--timeout` ran out: what was being followed goes on.
pub const EXIT_TIMEOUT: u8 = 6;
/// Exit code of a switch that every node did not apply within
/// `state.etcd.converge_timeout` (it was made; some nodes lag).
pub const EXIT_NOT_CONVERGED: u8 = 5;

/// The exit code of an admin API error, by its code (the API's statuses are
/// chosen in one place, `bluegreen-api`'s `error.rs`; these follow them):
/// a request the API calls malformed (`bad_request`) or a config it refuses
/// (`invalid_config`) is usage, `2`; every other refusal or failure is `1`.
pub fn of_api_error(code: &str) -> u8 {
    match code {
        "bad_request" | "invalid_config" => EXIT_CONFIG,
        _ => EXIT_ERROR,
    }
}
