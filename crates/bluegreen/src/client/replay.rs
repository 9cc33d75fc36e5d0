//! `bluegreen replay FILE`: sends recorded requests again, to one side or any
//! URL, keeping their relative timing (scaled by `--speed`) or as fast as
//! `--concurrency` allows. For warming a new side's caches and for load tests.

use crate::args::AdminArgs;
use crate::exit::{EXIT_CONFIG, EXIT_ERROR};
use anyhow::Context;
use bluegreen_core::latency::{bucket, Histogram};
use bluegreen_core::record::{Recorded, REDACTED};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Flags of `bluegreen replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// A record file (`bluegreen record`): one JSON request per line.
    pub file: PathBuf,
    /// `blue`, `green` (that side's upstreams, from the admin API), or base
    /// URLs (`http://HOST:PORT`, several separated by commas: taken in turn).
    #[arg(long)]
    pub target: String,
    /// `1x` keeps the recorded timing, `2x` twice as fast, `max` as fast as allowed.
    #[arg(long, default_value = "1x")]
    pub speed: String,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Replay the file again and again until this much time has passed (e.g. `5m`).
    #[arg(long = "loop-for")]
    pub loop_for: Option<String>,
    /// Replay only these methods, comma-separated (e.g. `GET,HEAD`); others
    /// in the file are skipped and counted.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram,
}

/// Entry point of `bluegreen replay`.
pub async fn main(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    // 1. The whole file and every flag are checked before anything is sent.
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let plan = match Plan::of(&args, &text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    // 2. Where to send.
    let bases = match targets(&args).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    // 3. Send, keeping the recorded rhythm (scaled), never more than `concurrency` at once.
    let started = Instant::now();
    let (sent, tally) = send_all(&args, &plan, &bases).await?;
    // 4. The summary.
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    summarize(&args, &t, sent, started.elapsed().as_secs_f64(), &bases)?;
    Ok(if t.errors > 0 {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

/// What to replay and how fast, from the file and the flags.
struct Plan {
    records: Vec<Recorded>,
    /// `None`: as fast as allowed.
    speed: Option<f64>,
    loop_for: Option<Duration>,
}

impl Plan {
    /// Checks the whole file's `text`; drops methods not asked for. The
    /// error names the file and line, or the flag.
    fn of(args: &ReplayArgs, text: &str) -> Result<Plan, String> {
        let mut records =
            Recorded::parse_all(text).map_err(|e| format!("{}: {e}", args.file.display()))?;
        if !args.methods.is_empty() {
            let before = records.len();
            records.retain(|r| {
                args.methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(&r.method))
            });
            if records.len() < before {
                // A notice: a closed stdout shows at the summary.
                let _ = outln!(
                    "skipping {} recorded request(s) whose method is not in --methods {}",
                    before - records.len(),
                    args.methods.join(",")
                );
            }
        }
        let speed = match args.speed.as_str() {
            "max" => None,
            s => match s.trim_end_matches('x').parse::<f64>() {
                Ok(v) if v > 0.0 => Some(v),
                _ => {
                    return Err(format!(
                        "--speed {:?}: use a factor like 1x, 2.5x or max",
                        args.speed
                    ))
                }
            },
        };
        let loop_for = args
            .loop_for
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
            .map_err(|e| format!("--loop-for: {e}"))?;
        if records.is_empty() {
            return Err(format!("{} holds no requests", args.file.display()));
        }
        Ok(Plan {
            records,
            speed,
            loop_for,
        })
    }
}

/// Sends every record (again and again while `loop_for` lasts); returns
/// how many were sent and the tally of their answers.
async fn send_all(
    args: &ReplayArgs,
    plan: &Plan,
    bases: &[String],
) -> anyhow::Result<(u64, Arc<Mutex<Tally>>)> {
    let Plan {
        records,
        speed,
        loop_for,
    } = plan;
    let (speed, loop_for) = (*speed, *loop_for);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let bar = progress(records.len(), args.json);
    let started = Instant::now();
    let first_at = records[0].at_ms;
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    'outer: for round in 0u64.. {
        let round_start = Instant::now();
        for r in records {
            if let Some(f) = speed {
                let due =
                    Duration::from_secs_f64(r.at_ms.saturating_sub(first_at) as f64 / 1000.0 / f);
                tokio::time::sleep_until((round_start + due).into()).await;
            }
            if loop_for.is_some_and(|d| started.elapsed() >= d) {
                break 'outer;
            }
            let permit = limit.clone().acquire_owned().await.expect("semaphore open");
            let base = &bases[(sent as usize) % bases.len()];
            let req = build(base, r)?;
            let (client, tally, bar) = (client.clone(), tally.clone(), bar.clone());
            tasks.spawn(async move {
                let t = Instant::now();
                let outcome = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        resp.into_body()
                            .collect()
                            .await
                            .map(|_| status)
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(bluegreen_core::error_chain(&e)),
                };
                let mut t2 = tally.lock().unwrap_or_else(|p| p.into_inner());
                t2.latency.counts[bucket(t.elapsed())] += 1;
                match outcome {
                    Ok(s) => *t2.statuses.entry(s).or_default() += 1,
                    Err(e) => {
                        t2.errors += 1;
                        t2.first_error.get_or_insert(e);
                    }
                }
                bar.inc(1);
                drop(permit);
            });
            sent += 1;
        }
        if loop_for.is_none() || round > 1_000_000 {
            break;
        }
        bar.inc_length(records.len() as u64);
    }
    while tasks.join_next().await.is_some() {}
    bar.finish_and_clear();

    Ok((sent, tally))
}

/// Prints the summary: sent, statuses, errors, latency (or one JSON object).
fn summarize(
    args: &ReplayArgs,
    t: &Tally,
    sent: u64,
    secs: f64,
    bases: &[String],
) -> std::io::Result<()> {
    let q = |x: f64| {
        t.latency
            .quantile(x)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    if args.json {
        outln!(
            "{}",
            serde_json::json!({"sent": sent, "seconds": secs, "statuses": t.statuses, "errors": t.errors,
                "first_error": t.first_error, "p50_ms": q(0.5), "p99_ms": q(0.99), "targets": bases})
        )?;
    } else {
        outln!(
            "replayed {sent} requests to {} in {secs:.2}s (speed {}, concurrency {})",
            bases.join(", "),
            args.speed,
            args.concurrency
        )?;
        let statuses: Vec<String> = t
            .statuses
            .iter()
            .map(|(s, n)| format!("{s} ×{n}"))
            .collect();
        outln!(
            "status: {}; errors: {}",
            if statuses.is_empty() {
                "-".into()
            } else {
                statuses.join(", ")
            },
            t.errors
        )?;
        if let Some(e) = &t.first_error {
            outln!("first error: {e}")?;
        }
        outln!("latency: p50 {:.1} ms, p99 {:.1} ms", q(0.5), q(0.99))?;
    }
    Ok(())
}

/// Base URLs to send to: a side's upstreams, or the URL given.
async fn targets(args: &ReplayArgs) -> anyhow::Result<Vec<String>> {
    match args.target.as_str() {
        side @ ("blue" | "green") => {
            let client = bluegreen_api::AdminClient::new(
                &args.admin.admin,
                args.admin.token.clone(),
                "cli:replay".into(),
            );
            let status: serde_json::Value = client.get("/api/v1/status").await?;
            let ups: Vec<String> = status["sides"][side]["upstreams"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u["address"].as_str())
                        .map(|a| format!("http://{a}"))
                        .collect()
                })
                .unwrap_or_default();
            anyhow::ensure!(!ups.is_empty(), "the {side} side has no upstreams");
            Ok(ups)
        }
        urls => urls
            .split(',')
            .map(|url| {
                let u: http::Uri = url
                    .parse()
                    .with_context(|| format!("--target {url:?} is not blue, green or a URL"))?;
                anyhow::ensure!(
                    u.scheme_str() == Some("http") && u.authority().is_some(),
                    "--target {url:?}: expected blue, green or http://HOST:PORT"
                );
                Ok(url.trim_end_matches('/').to_string())
            })
            .collect(),
    }
}

/// A recorded request made anew. What it carries is the recorded head less
/// what was the client's connection or identity, never the app's business:
/// redacted secrets, hop-by-hop and framing headers (and what `Connection`
/// named), forwarding headers (a replay is not from that client), and our
/// own marks, of which it sets `X-Bluegreen-Replay: 1` itself.
fn build(base: &str, r: &Recorded) -> anyhow::Result<http::Request<Full<Bytes>>> {
    use bluegreen_router::headers;
    let mut req = http::Request::builder()
        .method(r.method.as_str())
        .uri(format!("{base}{}", r.path))
        .body(Full::new(Bytes::from(r.body_bytes())))?;
    let h = req.headers_mut();
    for (k, v) in &r.headers {
        if v == REDACTED {
            continue;
        }
        let name = http::header::HeaderName::from_bytes(k.as_bytes())
            .with_context(|| format!("recorded header name {k:?}"))?;
        let value = http::header::HeaderValue::from_str(v)
            .with_context(|| format!("recorded value of {k}"))?;
        h.append(name, value);
    }
    headers::strip_hop_by_hop(h, false);
    headers::strip_own(h);
    headers::strip_forwarding(h);
    for framing in [http::header::HOST, http::header::CONTENT_LENGTH] {
        h.remove(framing);
    }
    h.insert(
        "x-bluegreen-replay",
        http::header::HeaderValue::from_static("1"),
    );
    Ok(req)
}

fn progress(total: usize, quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} requests {elapsed} {wide_bar}",
        )
        .expect("template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_carries_the_recorded_head_less_connection_identity_and_our_marks() {
        let pairs = [
            ("accept", "application/json"),
            ("x-tag", "one"),
            ("x-tag", "two"),
            ("authorization", "Bearer secret"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("http2-settings", "AAA"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-bluegreen-shadow", "1"),
            ("host", "shop.example"),
            ("content-length", "5"),
        ];
        let headers = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = Recorded::new(
            1,
            "POST",
            "/o?x=1",
            headers,
            b"hello",
            &["authorization".into()],
        );
        let req = build("http://127.0.0.1:9", &r).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:9/o?x=1");
        let h = req.headers();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "x-tag", "x-bluegreen-replay"], "{h:?}");
        assert_eq!(h.get_all("x-tag").iter().count(), 2);
        assert_eq!(h["x-bluegreen-replay"], "1");
    }
}
