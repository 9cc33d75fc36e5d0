//! `GET /metrics`: Prometheus text format. Values are read on each scrape
//! from the counters the router keeps anyway (the request path does no extra
//! work for metrics); latency uses the router's fixed buckets, so histograms
//! from several routers add up.

use bluegreen_core::health::Health;
use bluegreen_core::latency::{bounds_us, export_bounds_us, Histogram};
use bluegreen_core::Side;
use bluegreen_pipeline::Pipeline;
use bluegreen_router::snapshot::Snapshot;
use bluegreen_router::stats::TrafficStats;
use bluegreen_router::status::SideStatus;
use bluegreen_router::status::Status;
use bluegreen_router::ListenerKind;
use bluegreen_router::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    Counter(u64),
    CounterF(f64),
    Gauge(i64),
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// Every value of one scrape, gathered first (some need async locks), then
/// encoded by prometheus-client.
#[derive(Debug, Default)]
struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn family(&mut self, name: &'static str, help: &'static str, kind: MetricType) -> &mut Family {
        self.families.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        });
        self.families.last_mut().expect("just pushed")
    }
}

impl Family {
    fn add(&mut self, labels: Labels, v: Value) -> &mut Self {
        // prometheus-client writes label values as they are; a `"` or `\` in
        // a request path must not break the whole page.
        let labels = labels.into_iter().map(|(k, v)| (k, escape(&v))).collect();
        self.samples.push((labels, v));
        self
    }
}

/// Escapes a label value for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            // One sample without labels is written as `name value`, not `name{} value`.
            if let [(labels, v)] = f.samples.as_slice() {
                if labels.is_empty() {
                    encode_value(v, metric)?;
                    continue;
                }
            }
            for (labels, v) in &f.samples {
                encode_value(v, metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

fn encode_value(v: &Value, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
    match v {
        Value::Counter(n) => ConstCounter::new(*n).encode(e),
        Value::CounterF(n) => ConstCounter::new(*n).encode(e),
        Value::Gauge(n) => ConstGauge::new(*n).encode(e),
        Value::Histogram {
            sum,
            count,
            buckets,
        } => e.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
    }
}

const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

fn side_label(s: Side) -> (&'static str, String) {
    ("side", s.as_str().to_string())
}

/// The metrics page: one family after another, each read on the spot from
/// what the request path counts anyway.
pub async fn render(router: &Arc<Router>, pipeline: Option<&Arc<Pipeline>>) -> String {
    let mut s = Scrape::default();
    let status = router.status().await;
    let snap = router.snapshot();
    switching(&mut s, router, &status);
    traffic(&mut s, &snap);
    side_gauges(&mut s, &status);
    clients(&mut s, router);
    tls_handshakes(&mut s, router);
    notify(&mut s, router);
    upstreams(&mut s, &snap);
    if let Some(p) = pipeline {
        deploys(&mut s, p).await;
        app_resources(&mut s, p);
    }
    shadowing(&mut s, router);
    certificates(&mut s, &status);
    holds(&mut s, &status);
    cluster(&mut s, &status);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(s));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// Which side is live, and the switches.
fn switching(s: &mut Scrape, router: &Router, status: &Status) {
    let f = s.family(
        "bluegreen_live",
        "1 for the side that receives live traffic",
        MetricType::Gauge,
    );
    for side in Side::ALL {
        f.add(
            vec![side_label(side)],
            Value::Gauge((status.live == side) as i64),
        );
    }
    s.family(
        "bluegreen_event_subscribers",
        "Event streams open now (dashboards, status --watch, deploy --follow)",
        MetricType::Gauge,
    )
    .add(vec![], Value::Gauge(router.events.subscribers() as i64));
    s.family(
        "bluegreen_switch_generation",
        "Switches recorded in the state, ever",
        MetricType::Gauge,
    )
    .add(vec![], Value::Gauge(status.generation as i64));
    let f = s.family(
        "bluegreen_switches",
        "Switches by this process, by kind (switch or rollback)",
        MetricType::Counter,
    );
    let counts = router.switch_counts();
    for kind in ["switch", "rollback"] {
        f.add(
            vec![("kind", kind.into())],
            Value::Counter(counts.get(kind).copied().unwrap_or(0)),
        );
    }
}

/// Per side and listener: answers by class, and latency.
fn traffic(s: &mut Scrape, snap: &Snapshot) {
    let stats = |side: Side, listener: &'static str| -> &TrafficStats {
        let pool = &snap.pools[side];
        if listener == "live" {
            &pool.live_stats
        } else {
            &pool.preview_stats
        }
    };
    let f = s.family(
        "bluegreen_requests",
        "Answered requests by side, listener and status class",
        MetricType::Counter,
    );
    for side in Side::ALL {
        for listener in ["live", "preview"] {
            for (i, n) in stats(side, listener).classes().iter().enumerate().skip(1) {
                f.add(
                    vec![
                        side_label(side),
                        ("listener", listener.into()),
                        ("class", CLASSES[i].into()),
                    ],
                    Value::Counter(*n),
                );
            }
        }
    }
    let f = s.family(
        "bluegreen_request_duration_seconds",
        "Time to the response head, by side and listener (fixed buckets)",
        MetricType::Histogram,
    );
    for side in Side::ALL {
        for listener in ["live", "preview"] {
            let st = stats(side, listener);
            let w = st.window();
            let buckets = export_buckets(&w.latency);
            f.add(
                vec![side_label(side), ("listener", listener.into())],
                Value::Histogram {
                    sum: st.sum_us() as f64 / 1e6,
                    count: w.latency.total(),
                    buckets,
                },
            );
        }
    }
}

/// Per side: what is in flight, upgraded and draining now.
fn side_gauges(s: &mut Scrape, status: &Status) {
    let sides = &status.sides;
    for (name, help, of) in [
        (
            "bluegreen_in_flight_requests",
            "Requests in flight per side (live and preview)",
            &(|s: &SideStatus| s.in_flight) as &dyn Fn(&SideStatus) -> usize,
        ),
        (
            "bluegreen_upgraded_connections",
            "Open upgraded (WebSocket) connections per side",
            &|s: &SideStatus| s.upgraded,
        ),
        (
            "bluegreen_draining",
            "Live requests and connections still draining on a side after a switch away",
            &|s: &SideStatus| s.draining.as_ref().map_or(0, |d| d.remaining),
        ),
    ] {
        let f = s.family(name, help, MetricType::Gauge);
        for side in Side::ALL {
            f.add(
                vec![side_label(side)],
                Value::Gauge(of(&sides[side]) as i64),
            );
        }
    }
}

/// The supervised apps' resources per side (and version), as the bake
/// judges them.
fn app_resources(s: &mut Scrape, p: &Pipeline) {
    let Some(r) = p.resources() else { return };
    let now = r.now();
    type Get = dyn Fn(&bluegreen_pipeline::resources::SideResources) -> Value;
    let families: [(&'static str, &'static str, MetricType, &Get); 5] = [
        (
            "bluegreen_app_cpu_seconds",
            "CPU seconds (user + system) used by a side's app processes, read from /proc",
            MetricType::Counter,
            &|x| Value::CounterF(x.cpu_seconds),
        ),
        (
            "bluegreen_app_resident_memory_bytes",
            "Resident memory of a side's app processes",
            MetricType::Gauge,
            &|x| Value::Gauge(x.rss_bytes as i64),
        ),
        (
            "bluegreen_app_open_fds",
            "Open file descriptors of a side's app processes",
            MetricType::Gauge,
            &|x| Value::Gauge(x.fds as i64),
        ),
        (
            "bluegreen_app_restarts",
            "Restarts of a side's app processes by the supervisor",
            MetricType::Counter,
            &|x| Value::Counter(x.restarts),
        ),
        (
            "bluegreen_app_processes",
            "Processes (with their children) running a side's app",
            MetricType::Gauge,
            &|x| Value::Gauge(x.processes as i64),
        ),
    ];
    for (name, help, kind, get) in families {
        let f = s.family(name, help, kind);
        for side in Side::ALL {
            if let Some(x) = &now[side] {
                f.add(
                    vec![side_label(side), ("version", x.version.clone())],
                    get(x),
                );
            }
        }
    }
}

/// Client connections per listener, busy or idle.
fn clients(s: &mut Scrape, router: &Router) {
    let f = s.family(
        "bluegreen_client_connections",
        "Open client connections per listener: busy (a request or a TLS handshake in progress), or idle keep-alive",
        MetricType::Gauge,
    );
    for (kind, listener) in [
        (ListenerKind::Main, "live"),
        (ListenerKind::Preview, "preview"),
    ] {
        let c = router.client_connections(kind);
        for (state, n) in [("busy", c.open - c.idle.min(c.open)), ("idle", c.idle)] {
            f.add(
                vec![("listener", listener.into()), ("state", state.into())],
                Value::Gauge(n as i64),
            );
        }
    }
}

/// `[[notify]]` hooks: notices delivered, attempts failed (retried),
/// notices given up, and what waits now.
fn notify(s: &mut Scrape, router: &Router) {
    let Some(n) = router.notifier() else {
        return;
    };
    let counts = n.counts();
    if counts.is_empty() {
        return;
    }
    type Pick = fn(&bluegreen_router::notify::HookCounts) -> u64;
    // (name, help, a gauge, the count)
    let families: [(&'static str, &'static str, bool, Pick); 4] = [
        (
            "bluegreen_notify_delivered",
            "Notices a hook accepted (2xx)",
            false,
            |c| c.delivered,
        ),
        (
            "bluegreen_notify_failed_attempts",
            "Delivery attempts that failed (each is retried until retry_for)",
            false,
            |c| c.failed,
        ),
        (
            "bluegreen_notify_lost",
            "Notices given up after retry_for",
            false,
            |c| c.lost,
        ),
        (
            "bluegreen_notify_pending",
            "Notices waiting in the outbox for a hook",
            true,
            |c| c.pending,
        ),
    ];
    for (name, help, gauge, pick) in families {
        let kind = if gauge {
            MetricType::Gauge
        } else {
            MetricType::Counter
        };
        let f = s.family(name, help, kind);
        for (hook, c) in &counts {
            let v = pick(c);
            f.add(
                vec![("hook", hook.clone())],
                if gauge {
                    Value::Gauge(v as i64)
                } else {
                    Value::Counter(v)
                },
            );
        }
    }
}

/// Client TLS handshakes that failed, by a few fixed reasons (edge and
/// admin listeners): counted here, logged only at debug.
fn tls_handshakes(s: &mut Scrape, router: &Router) {
    use bluegreen_router::tls::HandshakeFailure;
    let f = s.family(
        "bluegreen_tls_handshake_failures",
        "Client TLS handshakes that failed, by reason: not_tls, incompatible, client_alert, closed, timeout, other",
        MetricType::Counter,
    );
    for why in HandshakeFailure::ALL {
        f.add(
            vec![("reason", why.as_str().into())],
            Value::Counter(router.tls_handshake_failures.get(why)),
        );
    }
}

/// Per upstream: answers, failures, load and health.
fn upstreams(s: &mut Scrape, snap: &Snapshot) {
    let f = s.family(
        "bluegreen_upstream_responses",
        "Answers by upstream and status class",
        MetricType::Counter,
    );
    for side in Side::ALL {
        for u in &snap.pools[side].upstreams {
            let (classes, _) = u.traffic();
            for (i, n) in classes.iter().enumerate().skip(1) {
                f.add(
                    vec![
                        side_label(side),
                        ("upstream", u.address.clone()),
                        ("class", CLASSES[i].into()),
                    ],
                    Value::Counter(*n),
                );
            }
        }
    }
    let f = s.family(
        "bluegreen_upstream_errors",
        "Requests an upstream did not answer (connect errors, resets, timeouts)",
        MetricType::Counter,
    );
    for side in Side::ALL {
        for u in &snap.pools[side].upstreams {
            f.add(
                vec![side_label(side), ("upstream", u.address.clone())],
                Value::Counter(u.traffic().1),
            );
        }
    }
    let f = s.family(
        "bluegreen_upstream_in_flight",
        "Requests and connections using an upstream",
        MetricType::Gauge,
    );
    for side in Side::ALL {
        for u in &snap.pools[side].upstreams {
            f.add(
                vec![side_label(side), ("upstream", u.address.clone())],
                Value::Gauge(u.outstanding() as i64),
            );
        }
    }
    let f = s.family(
        "bluegreen_upstream_queue",
        "Requests waiting for a place at an upstream (proxy.upstream_max_requests)",
        MetricType::Gauge,
    );
    for side in Side::ALL {
        for u in &snap.pools[side].upstreams {
            f.add(
                vec![side_label(side), ("upstream", u.address.clone())],
                Value::Gauge(u.queue().0 as i64),
            );
        }
    }
    let f = s.family(
        "bluegreen_upstream_queue_refused",
        "Requests answered 503 because an upstream's queue was full or too slow",
        MetricType::Counter,
    );
    for side in Side::ALL {
        for u in &snap.pools[side].upstreams {
            f.add(
                vec![side_label(side), ("upstream", u.address.clone())],
                Value::Counter(u.queue().2),
            );
        }
    }
    let f = s.family(
        "bluegreen_upstream_health",
        "1 for the upstream's current health state",
        MetricType::Gauge,
    );
    for side in Side::ALL {
        for u in &snap.pools[side].upstreams {
            let now = u.health();
            for (state, h) in [
                ("healthy", Health::Healthy),
                ("unhealthy", Health::Unhealthy),
                ("unknown", Health::Unknown),
            ] {
                f.add(
                    vec![
                        side_label(side),
                        ("upstream", u.address.clone()),
                        ("state", state.into()),
                    ],
                    Value::Gauge((now == h) as i64),
                );
            }
        }
    }
}

/// The pipeline: the running deploy's steps and finished deploys.
async fn deploys(s: &mut Scrape, p: &Pipeline) {
    let current = p.current().await.filter(|d| !d.is_finished());
    s.family(
        "bluegreen_deploy_running",
        "1 while a deploy runs",
        MetricType::Gauge,
    )
    .add(vec![], Value::Gauge(current.is_some() as i64));
    let f = s.family(
        "bluegreen_deploy_step",
        "Steps of the running deploy: 1 for each step's current state",
        MetricType::Gauge,
    );
    if let Some(d) = &current {
        for st in &d.steps {
            let state = serde_json::to_value(st.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            f.add(
                vec![
                    ("deploy", d.id.to_string()),
                    ("version", d.version.clone()),
                    ("step", st.step.as_str().into()),
                    ("state", state),
                ],
                Value::Gauge(1),
            );
        }
    }
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for d in p.history().await.iter().filter(|d| d.is_finished()) {
        let o = serde_json::to_value(d.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *outcomes.entry(o).or_default() += 1;
    }
    let f = s.family(
        "bluegreen_deploys",
        "Finished deploys in the history, by outcome",
        MetricType::Counter,
    );
    for o in ["succeeded", "failed", "rolled_back", "aborted"] {
        f.add(
            vec![("outcome", o.into())],
            Value::Counter(outcomes.get(o).copied().unwrap_or(0)),
        );
    }
}

/// With a shared store: the link, and how many nodes lag.
fn cluster(s: &mut Scrape, status: &Status) {
    let Some(c) = &status.cluster else { return };
    s.family(
        "bluegreen_cluster_connected",
        "1 while this node reaches the shared state store; 0 while it fails static",
        MetricType::Gauge,
    )
    .add(vec![], Value::Gauge(c.connected as i64));
    s.family(
        "bluegreen_cluster_revision",
        "Store revision of the desired state this node knows",
        MetricType::Gauge,
    )
    .add(vec![], Value::Gauge(c.revision));
    let f = s.family(
        "bluegreen_cluster_nodes",
        "Router nodes sharing the state, by whether they applied the desired state",
        MetricType::Gauge,
    );
    for (label, synced) in [("synced", true), ("stale", false)] {
        let n = c.nodes.iter().filter(|n| n.synced == synced).count();
        f.add(vec![("state", label.into())], Value::Gauge(n as i64));
    }
    f.add(
        vec![("state", "lost".into())],
        Value::Gauge(c.lost.len() as i64),
    );
}

/// Pause and maintenance of live traffic.
fn holds(s: &mut Scrape, status: &Status) {
    s.family(
        "bluegreen_paused",
        "1 while live traffic is paused (bluegreen pause)",
        MetricType::Gauge,
    )
    .add(vec![], Value::Gauge(status.paused.is_some() as i64));
    s.family(
        "bluegreen_held_requests",
        "Live requests waiting for a resume now",
        MetricType::Gauge,
    )
    .add(
        vec![],
        Value::Gauge(status.paused.as_ref().map_or(0, |p| p.waiting as i64)),
    );
    s.family(
        "bluegreen_maintenance",
        "1 while the live listener answers with the maintenance page",
        MetricType::Gauge,
    )
    .add(vec![], Value::Gauge(status.maintenance.is_some() as i64));
    if let Some(sessions) = &status.sessions {
        let f = s.family(
            "bluegreen_pinned_requests",
            "Live requests kept on the old side by their session after a switch",
            MetricType::Counter,
        );
        for side in bluegreen_core::Side::ALL {
            f.add(
                vec![("side", side.to_string())],
                Value::Counter(sessions.pinned_requests[side]),
            );
        }
    }
    let f = s.family(
        "bluegreen_weight_basis_points",
        "Share of live clients sent to each side, in basis points (10000 = all)",
        MetricType::Gauge,
    );
    for side in bluegreen_core::Side::ALL {
        let bp = match status.split {
            Some(sp) if sp.side == side => sp.basis_points as i64,
            Some(sp) => 10_000 - sp.basis_points as i64,
            None if status.live == side => 10_000,
            None => 0,
        };
        f.add(vec![("side", side.to_string())], Value::Gauge(bp));
    }
}

/// Each TLS certificate in use: when it expires (alert well before).
fn certificates(s: &mut Scrape, status: &Status) {
    if status.certificates.is_empty() {
        return;
    }
    let f = s.family(
        "bluegreen_tls_certificate_expiry_seconds",
        "When each TLS certificate in use expires, in Unix seconds",
        MetricType::Gauge,
    );
    for c in &status.certificates {
        f.add(
            vec![
                ("file", c.file.clone()),
                ("names", c.names.join(",")),
                ("issuer", c.issuer.clone()),
            ],
            Value::Gauge(c.not_after),
        );
    }
    if let Some(acme) = &status.acme {
        s.family(
            "bluegreen_acme_failures",
            "Failed ACME attempts since the last certificate was obtained (0 when all is well)",
            MetricType::Gauge,
        )
        .add(
            vec![("domains", acme.domains.join(","))],
            Value::Gauge(acme.failures as i64),
        );
    }
}

/// The running or last shadow run.
fn shadowing(s: &mut Scrape, router: &Router) {
    let report = router.shadow().map(|s| s.report());
    s.family(
        "bluegreen_shadow_running",
        "1 while live traffic is mirrored to the idle side",
        MetricType::Gauge,
    )
    .add(
        vec![],
        Value::Gauge(report.as_ref().is_some_and(|r| r.running) as i64),
    );
    let r = report.as_ref();
    for (name, help, v) in [
        (
            "bluegreen_shadow_mirrored",
            "Copies sent to the idle side (this run)",
            r.map_or(0, |r| r.mirrored),
        ),
        (
            "bluegreen_shadow_pairs",
            "Pairs compared (this run)",
            r.map_or(0, |r| r.totals.compared),
        ),
        (
            "bluegreen_shadow_differing",
            "Pairs with a real difference (this run)",
            r.map_or(0, |r| r.totals.differing),
        ),
        (
            "bluegreen_shadow_dropped",
            "Copies dropped because the queue was full (this run)",
            r.map_or(0, |r| r.dropped),
        ),
        (
            "bluegreen_shadow_errors",
            "Copies the idle side did not answer (this run)",
            r.map_or(0, |r| r.totals.errors),
        ),
    ] {
        s.family(name, help, MetricType::Counter)
            .add(vec![], Value::Counter(v));
    }
    let f = s.family(
        "bluegreen_shadow_endpoint_differing",
        "Differing pairs per endpoint (this run; at most 200 endpoints)",
        MetricType::Counter,
    );
    for e in r.map(|r| r.endpoints.as_slice()).unwrap_or_default() {
        f.add(
            vec![("endpoint", e.endpoint.clone())],
            Value::Counter(e.differing),
        );
    }
}

/// The fine buckets summed into the exported ones: `(le seconds, count in
/// that bucket)`, then `+Inf`. Exported bounds are fine-bucket edges, so
/// nothing is split.
fn export_buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let bounds = export_bounds_us();
    let mut out: Vec<(f64, u64)> = bounds.iter().map(|&b| (b as f64 / 1e6, 0)).collect();
    out.push((f64::MAX, 0));
    for (i, &c) in h.counts.iter().enumerate() {
        let upper = bounds_us(i).1;
        let slot = bounds.partition_point(|&b| b < upper);
        out[slot].1 += c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = Scrape::default();
        s.family("x_differing", "help", MetricType::Counter).add(
            vec![("endpoint", "GET /a\"b\\c\nd".into())],
            Value::Counter(1),
        );
        s.family("x_up", "help", MetricType::Gauge)
            .add(vec![], Value::Gauge(1));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(s));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"x_differing_total{endpoint="GET /a\"b\\c\nd"} 1"#),
            "{out}"
        );
        assert!(out.contains("\nx_up 1\n"), "{out}");
    }

    #[test]
    fn fine_latency_buckets_add_up_exactly_into_the_exported_ones() {
        use bluegreen_core::latency::bucket;
        use std::time::Duration;
        let mut h = Histogram::default();
        for us in [5, 100, 127, 128, 129, 4_200, 15_000, 90_000_000] {
            h.counts[bucket(Duration::from_micros(us))] += 1;
        }
        let b = export_buckets(&h);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 8);
        let at = |le: f64| b.iter().find(|(x, _)| (x - le).abs() < 1e-12).unwrap().1;
        assert_eq!(at(0.000064), 1, "5 µs");
        // Buckets are [lo, hi): a value exactly on a bound counts in the next.
        assert_eq!(at(0.000128), 2, "100 and 127 µs");
        assert_eq!(at(0.000192), 2, "128 and 129 µs");
        assert_eq!(
            b.last().unwrap(),
            &(f64::MAX, 1),
            "90 s is beyond the last bound"
        );
    }
}
