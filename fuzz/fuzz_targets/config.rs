//! Config parsing and validation never panic, and whatever validates keeps
//! the limits the request path relies on.
#![no_main]
use bluegreen_core::config::{Config, MAX_DURATION, MAX_UPSTREAMS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text, "fuzz.toml", std::path::Path::new("/etc/bg")) else {
        return;
    };
    for d in [
        cfg.proxy.connect_timeout,
        cfg.proxy.upstream_timeout,
        cfg.proxy.idle_timeout,
        cfg.proxy.client_body_timeout,
        cfg.health.interval,
        cfg.health.timeout,
        cfg.switch.drain_timeout,
    ] {
        assert!(!d.is_zero() && d <= MAX_DURATION, "{d:?}");
    }
    for side in [&cfg.environments.blue, &cfg.environments.green] {
        assert!(!side.upstreams.is_empty() && side.upstreams.len() <= MAX_UPSTREAMS);
    }
});
