//! `bluegreen shadow start|stop|report`: mirror live traffic to the idle side
//! and read what differs, per endpoint.

use crate::args::AdminArgs;
use bluegreen_router::shadow::ShadowReport;
use serde_json::json;
use std::process::ExitCode;

/// What `bluegreen shadow` was asked to do.
#[derive(Debug, clap::Subcommand)]
pub enum ShadowAction {
    /// Start mirroring a share of live requests to the idle side.
    Start {
        /// Share of live requests mirrored, in percent (default: `[shadow] percent`).
        #[arg(long)]
        percent: Option<f64>,
        /// Stop by itself after this long, e.g. `10m`.
        #[arg(long = "for")]
        duration: Option<String>,
        /// Stop after this many mirrored requests.
        #[arg(long)]
        requests: Option<u64>,
    },
    /// Stop mirroring; the report stays readable.
    Stop {
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept a difference as intended (a JSON pointer such as
    /// `/items/*/currency`, or `status`, `header:NAME`, `body`): the running
    /// shadow run (and the deploy's gate) stop counting it, what was already
    /// counted included, without a restart; recorded in the running
    /// deploy's log. Lasts for the router process: add it to
    /// `[shadow] ignore_paths` to keep it.
    Accept {
        field: String,
        /// Why, recorded in the deploy's log.
        #[arg(long)]
        reason: Option<String>,
        /// Print the answer as one JSON document (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// What differs so far, per endpoint.
    Report {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of `bluegreen shadow`.
pub async fn main(args: &AdminArgs, action: ShadowAction) -> anyhow::Result<ExitCode> {
    let c = crate::client::client(args);
    let (result, json) = match action {
        ShadowAction::Start {
            percent,
            duration,
            requests,
        } => (
            c.post(
                "/api/v1/shadow/start",
                bluegreen_api::types::ShadowBody {
                    percent,
                    duration,
                    requests,
                },
            )
            .await,
            false,
        ),
        ShadowAction::Stop { json } => (c.post("/api/v1/shadow/stop", json!({})).await, json),
        ShadowAction::Report { json } => (c.get("/api/v1/shadow").await, json),
        ShadowAction::Accept {
            field,
            reason,
            json,
        } => {
            let body = bluegreen_api::types::AcceptBody {
                field,
                reason,
                actor: None,
            };
            let answer: Result<serde_json::Value, _> = c.post("/api/v1/shadow/accept", body).await;
            return match answer {
                Ok(v) if json => {
                    outln!("{v}")?;
                    Ok(ExitCode::SUCCESS)
                }
                Ok(v) => {
                    outln!("{}", v["message"].as_str().unwrap_or_default())?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => super::fail(e),
            };
        }
    };
    let v: serde_json::Value = match result {
        Ok(v) => v,
        Err(e) => return super::fail(e),
    };
    if json {
        outln!("{}", v["shadow"])?;
        return Ok(ExitCode::SUCCESS);
    }
    match serde_json::from_value::<Option<ShadowReport>>(v["shadow"].clone())? {
        None => outln!("no shadow run yet: start one with `bluegreen shadow start`")?,
        Some(r) => out!("{}", render(&r))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// The report for humans: totals, then one block per endpoint, most differing first.
pub fn render(r: &ShadowReport) -> String {
    let mut out = String::new();
    let state = if r.running { "running" } else { "stopped" };
    out.push_str(&format!(
        "shadow {state}: {} live -> {} idle, {}% of {}\n",
        r.live_side,
        r.idle_side,
        r.options.percent,
        r.options.methods.join("/")
    ));
    let t = &r.totals;
    let rate = if t.compared == 0 {
        0.0
    } else {
        t.differing as f64 / t.compared as f64 * 100.0
    };
    out.push_str(&format!(
        "compared {}, differing {} ({rate:.2}%), idle errors {}, dropped {}, skipped {}, in flight {}\n",
        t.compared, t.differing, t.errors, r.dropped, r.skipped, r.in_flight
    ));
    out.push_str(&format!(
        "latency p50/p99 ms: live {}/{}, idle {}/{}\n",
        ms(t.live.p50_ms),
        ms(t.live.p99_ms),
        ms(t.idle.p50_ms),
        ms(t.idle.p99_ms)
    ));
    if !r.accepted.is_empty() {
        out.push_str(&format!(
            "accepted as intended (not counted): {}\n",
            r.accepted.join(", ")
        ));
    }
    if r.endpoints.is_empty() {
        out.push_str("no pairs compared yet\n");
        return out;
    }
    out.push_str(&format!(
        "\n{:<40} {:>8} {:>8} {:>7} {:>15} {:>15}\n",
        "ENDPOINT", "PAIRS", "DIFFER", "RATE", "LIVE p50/p99", "IDLE p50/p99"
    ));
    for e in &r.endpoints {
        out.push_str(&format!(
            "{:<40} {:>8} {:>8} {:>6.1}% {:>15} {:>15}\n",
            e.endpoint,
            e.requests,
            e.differing,
            e.diff_rate * 100.0,
            format!("{}/{}", ms(e.live.p50_ms), ms(e.live.p99_ms)),
            format!("{}/{}", ms(e.idle.p50_ms), ms(e.idle.p99_ms)),
        ));
        for f in &e.fields {
            out.push_str(&format!("    {} ×{}\n", f.field, f.count));
            if let Some(x) = f.examples.first() {
                if x.live.contains('\n') || x.idle.contains('\n') {
                    // A text body: its short diff, line by line.
                    out.push_str(&format!("      e.g. {}:\n", x.request));
                    let added = x.idle.lines().filter(|l| l.starts_with('+'));
                    for line in x.live.lines().chain(added) {
                        out.push_str(&format!("        {line}\n"));
                    }
                } else {
                    out.push_str(&format!(
                        "      e.g. {}: live {} | idle {}\n",
                        x.request, x.live, x.idle
                    ));
                }
            }
        }
        if !e.noise.is_empty() {
            out.push_str(&format!("    noise (ignored): {}\n", e.noise.join(", ")));
        }
        if e.fields.is_empty() && !e.compared.is_empty() {
            out.push_str(&format!(
                "    identical so far, e.g. {}\n",
                e.compared.join(", ")
            ));
        }
    }
    out
}
