//! HTTPS side by side: keep-alive throughput, full TLS handshakes (one
//! request per connection, no resumption: wrk never offers a session), and
//! HTTP/2 over TLS (h2load), each with the proxy's CPU time so the results
//! compare per CPU-second. Every proxy serves the same ECDSA P-256
//! certificate (nginx and HAProxy on OpenSSL, bluegreen on rustls/ring).

use crate::procs::{Env, Proxy};
use crate::report::Row;
use crate::{wrk_url, Wrk};
use anyhow::Result;
use std::fmt::Write;

/// What one proxy did over HTTPS.
pub struct Measured {
    pub keepalive: Wrk,
    /// Proxy CPU seconds over the keep-alive run.
    pub keepalive_cpu: f64,
    pub handshakes: Wrk,
    pub handshake_cpu: f64,
    /// HTTP/2 over TLS: (req/s, failed), and the proxy's CPU seconds.
    pub h2: Option<(f64, u64)>,
    pub h2_cpu: f64,
    pub secs: u64,
}

/// Writes `tls.crt`, `tls.key` and `tls.pem` (both, for HAProxy) in the
/// bench dir: one self-signed certificate for `localhost` and `127.0.0.1`
/// (wrk sends the IP address as SNI, and Caddy picks certificates by SNI).
pub fn certificate(env: &Env) -> Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
            .self_signed(&key)?;
    let (c, k) = (cert.pem(), key.serialize_pem());
    std::fs::write(env.dir.join("tls.crt"), &c)?;
    std::fs::write(env.dir.join("tls.key"), &k)?;
    std::fs::write(env.dir.join("tls.pem"), format!("{c}{k}"))?;
    Ok(())
}

/// Proxy CPU seconds spent while `f` runs.
fn charged<T>(proxy: &Proxy, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let (u0, s0) = proxy.cpu_ticks_split();
    let out = f()?;
    let (u1, s1) = proxy.cpu_ticks_split();
    Ok((out, (u1 + s1 - u0 - s0) as f64 / 100.0))
}

pub fn measure(env: &Env, proxy: &Proxy, secs: u64, conns: usize) -> Result<Measured> {
    let url = format!("https://127.0.0.1:{}/", proxy.tls_port);
    wrk_url(env, &url, 1, conns, &[])?; // warm-up
    let (keepalive, keepalive_cpu) = charged(proxy, || wrk_url(env, &url, secs, conns, &[]))?;
    // Every request on a new connection: a full handshake each.
    let (handshakes, handshake_cpu) = charged(proxy, || {
        wrk_url(env, &url, secs, conns, &["-H", "Connection: close"])
    })?;
    // 10 streams per connection.
    let h2 = || crate::h2::h2load(env, &url, secs, conns, 10, None);
    let (h2, h2_cpu) = match charged(proxy, h2) {
        Ok((r, cpu)) => (Some(r), cpu),
        Err(e) => {
            eprintln!("h2load: {e:#}");
            (None, 0.0)
        }
    };
    Ok(Measured {
        keepalive,
        keepalive_cpu,
        handshakes,
        handshake_cpu,
        h2,
        h2_cpu,
        secs,
    })
}

/// Requests per CPU-second of a run of `secs` at `rps` that cost `cpu` seconds.
pub(crate) fn per_cpu(rps: f64, secs: u64, cpu: f64) -> f64 {
    if cpu <= 0.0 {
        0.0
    } else {
        rps * secs as f64 / cpu
    }
}

/// The HTTPS table and its targets.
pub fn render(o: &mut String, rows: &[Row]) {
    let measured: Vec<(&str, &Measured)> = rows
        .iter()
        .filter_map(|r| Some((r.name, r.tls.as_ref()?)))
        .collect();
    if measured.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## HTTPS (TLS 1.3, ECDSA P-256, the same certificate for all)\n"
    );
    let _ = writeln!(
        o,
        "| proxy | keep-alive req/s | p99 ms | req per CPU-s | handshakes/s | handshakes per CPU-s | HTTP/2 req/s | HTTP/2 req per CPU-s |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, m) in &measured {
        let (h2, h2_cpu) = match m.h2 {
            Some((rps, _)) => (
                format!("{rps:.0}"),
                format!("{:.0}", per_cpu(rps, m.secs, m.h2_cpu)),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            o,
            "| {name} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {h2} | {h2_cpu} |",
            m.keepalive.rps,
            m.keepalive.p99_us as f64 / 1000.0,
            per_cpu(m.keepalive.rps, m.secs, m.keepalive_cpu),
            m.handshakes.rps,
            per_cpu(m.handshakes.rps, m.secs, m.handshake_cpu),
        );
    }
    let get = |n: &str| {
        measured
            .iter()
            .find(|(name, _)| *name == n)
            .map(|(_, m)| *m)
    };
    let Some(bg) = get("bluegreen") else { return };
    let best = |f: &dyn Fn(&Measured) -> f64| {
        ["nginx", "haproxy", "caddy"]
            .iter()
            .filter_map(|n| get(n).map(f))
            .fold(0.0, f64::max)
    };
    let hs = |m: &Measured| per_cpu(m.handshakes.rps, m.secs, m.handshake_cpu);
    let ka = |m: &Measured| per_cpu(m.keepalive.rps, m.secs, m.keepalive_cpu);
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(
        o,
        "\n- Handshakes per CPU-second ≥ 1.2 × the better peer ({:.0}): {:.2}× — {}",
        best(&hs),
        hs(bg) / best(&hs).max(1.0),
        check(hs(bg) >= 1.2 * best(&hs))
    );
    let _ = writeln!(
        o,
        "- Keep-alive HTTPS requests per CPU-second ≥ the better peer ({:.0}): {:.2}× — {}",
        best(&ka),
        ka(bg) / best(&ka).max(1.0),
        check(ka(bg) >= best(&ka))
    );
    let _ = writeln!(
        o,
        "- Commands: `{}`; handshakes add `-H \"Connection: close\"` (a new connection, and a full handshake, per request: wrk offers no session to resume); HTTP/2: `h2load -c N -m 10 -D SECS URL`.",
        bg.keepalive.command
    );
}
