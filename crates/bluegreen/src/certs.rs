//! The config's certificate, key and CA files loaded as `serve` will, for
//! `check`, `serve` and `reload` alike (below both the server and the
//! client commands).

use bluegreen_core::config::Config;
use std::path::Path;

/// Loads `[tls]` certificates as `serve` will (chain, key, names, expiry);
/// a problem is printed as a config problem naming the file.
pub fn certificates(cfg: &Config, path: &Path) -> Result<(), ()> {
    let problems = certificate_problems(cfg);
    if problems.is_empty() {
        return Ok(());
    }
    eprintln!("error: {}", describe_problems(path, &problems));
    Err(())
}

/// Every certificate, key and CA file of `cfg` loaded as `serve` will
/// (blocking file reads); each problem names its key and file.
pub fn certificate_problems(cfg: &Config) -> Vec<String> {
    let edge = cfg.tls.as_ref().map(|tls| {
        bluegreen_router::tls::acceptor(tls)
            .map(|_| ())
            .map_err(|e| format!("tls.certificates: {e}"))
    });
    let admin = cfg.admin.tls.as_ref().map(|pair| {
        bluegreen_router::tls::admin_acceptor(pair)
            .map(|_| ())
            .map_err(|e| format!("admin.tls: {e}"))
    });
    let upstreams = bluegreen_core::Side::ALL.into_iter().map(|side| {
        cfg.environments[side].tls.as_ref().map(|t| {
            bluegreen_router::upstream::tls::UpstreamTls::new(t)
                .map(|_| ())
                .map_err(|e| format!("environments.{side}.tls: {e}"))
        })
    });
    [edge, admin]
        .into_iter()
        .chain(upstreams)
        .flatten()
        .filter_map(Result::err)
        .collect()
}

/// "invalid config FILE: N problems" with one line each.
pub fn describe_problems(path: &Path, problems: &[String]) -> String {
    format!(
        "invalid config {}: {} problem{}\n  - {}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.join("\n  - ")
    )
}
