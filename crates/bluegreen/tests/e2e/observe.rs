//! Observability end to end: `/metrics` parsed with a Prometheus text
//! parser after known traffic, the event stream read as a real SSE client,
//! the access log, and the dashboard's files.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::time::Duration;

/// Every sample of a scrape: (name, labels) -> value.
pub async fn scrape(router: &RouterProc) -> Vec<(String, HashMap<String, String>, f64)> {
    let auth = format!("authorization: Bearer {TOKEN}");
    let (code, text) = curl(&[
        "-s",
        "-H",
        &auth,
        "-w",
        "\n%{http_code}",
        &format!("{}/metrics", router.admin_url()),
    ]);
    assert_eq!(code, 0);
    let (body, status) = text.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    parsed
        .samples
        .into_iter()
        .flat_map(|s| {
            let labels: HashMap<String, String> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            use prometheus_parse::Value::*;
            match s.value {
                Counter(v) | Gauge(v) | Untyped(v) => vec![(s.metric, labels, v)],
                Histogram(buckets) => buckets
                    .into_iter()
                    .map(|b| {
                        let mut l = labels.clone();
                        l.insert("le".into(), b.less_than.to_string());
                        (format!("{}_bucket", s.metric), l, b.count)
                    })
                    .collect(),
                Summary(_) => vec![],
            }
        })
        .collect()
}

fn value(
    samples: &[(String, HashMap<String, String>, f64)],
    name: &str,
    want: &[(&str, &str)],
) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name} {want:?}: {found:?} in {:?}",
        samples
            .iter()
            .map(|s| &s.0)
            .collect::<std::collections::BTreeSet<_>>()
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_known_traffic_per_side_and_upstream() {
    let (b1, b2, g) = (
        Backend::start("blue-1").await,
        Backend::start("blue-2").await,
        Backend::start("green").await,
    );
    let router = RouterBuilder::new(&[&b1, &b2], &[&g]).start();
    router.wait_all_healthy().await;
    let c = h1_client();
    for _ in 0..20 {
        assert_eq!(get(&c, &router.url("/")).await.unwrap().0, 200);
    }
    for _ in 0..3 {
        // The idle side's version answers this with a 500.
        assert_eq!(
            get(&c, &router.preview_url("/shadow/status"))
                .await
                .unwrap()
                .0,
            500
        );
    }
    let m = scrape(&router).await;
    assert_eq!(value(&m, "bluegreen_live", &[("side", "blue")]), 1.0);
    assert_eq!(value(&m, "bluegreen_live", &[("side", "green")]), 0.0);
    let req = "bluegreen_requests_total";
    assert_eq!(
        value(
            &m,
            req,
            &[("side", "blue"), ("listener", "live"), ("class", "2xx")]
        ),
        20.0
    );
    assert_eq!(
        value(
            &m,
            req,
            &[("side", "blue"), ("listener", "live"), ("class", "5xx")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            req,
            &[("side", "green"), ("listener", "preview"), ("class", "5xx")]
        ),
        3.0
    );
    // Latency: every request in the +Inf bucket; the count adds up.
    let count = value(
        &m,
        "bluegreen_request_duration_seconds_count",
        &[("side", "blue"), ("listener", "live")],
    );
    assert_eq!(count, 20.0);
    let inf = value(
        &m,
        "bluegreen_request_duration_seconds_bucket",
        &[("side", "blue"), ("listener", "live"), ("le", "inf")],
    );
    assert_eq!(inf, 20.0);
    // Per upstream: the two blue upstreams shared the 20 answers.
    let per_up: f64 = [b1.addr, b2.addr]
        .iter()
        .map(|a| {
            value(
                &m,
                "bluegreen_upstream_responses_total",
                &[("upstream", &a.to_string()), ("class", "2xx")],
            )
        })
        .sum();
    assert_eq!(per_up, 20.0);
    for a in [b1.addr, b2.addr, g.addr] {
        let up = a.to_string();
        assert_eq!(
            value(
                &m,
                "bluegreen_upstream_health",
                &[("upstream", &up), ("state", "healthy")]
            ),
            1.0
        );
    }
    assert_eq!(
        value(&m, "bluegreen_switches_total", &[("kind", "switch")]),
        0.0
    );

    // A switch and an upstream failure show up.
    router.switch_to("green").await;
    g.kill();
    let _ = get(&c, &router.url("/")).await;
    let m = scrape(&router).await;
    assert_eq!(
        value(&m, "bluegreen_switches_total", &[("kind", "switch")]),
        1.0
    );
    assert_eq!(value(&m, "bluegreen_live", &[("side", "green")]), 1.0);
    assert!(
        value(
            &m,
            "bluegreen_upstream_errors_total",
            &[("upstream", &g.addr.to_string())]
        ) >= 1.0
    );
    assert_eq!(value(&m, "bluegreen_switch_generation", &[]), 1.0);
}

/// Reads SSE events (name, JSON data) from the admin API with a token.
struct EventStream {
    body: hyper::body::Incoming,
    buf: String,
}

impl EventStream {
    async fn open(router: &RouterProc, token: Option<&str>) -> Result<EventStream, u16> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut req = http::Request::get(format!("{}/api/v1/events", router.admin_url()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        if resp.status() != 200 {
            return Err(resp.status().as_u16());
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(EventStream {
            body: resp.into_body(),
            buf: String::new(),
        })
    }

    async fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                        name = n.trim().to_string();
                    } else if let Some(d) =
                        line.strip_prefix("data: ").or(line.strip_prefix("data:"))
                    {
                        data.push_str(d);
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")
                .expect("stream open")
                .unwrap();
            if let Some(d) = frame.data_ref() {
                self.buf.push_str(&String::from_utf8_lossy(d));
            }
        }
    }

    /// The next event named `name`, skipping others (ticks, statuses).
    async fn next_named(&mut self, name: &str) -> serde_json::Value {
        for _ in 0..200 {
            let (n, v) = self.next().await;
            if n == name {
                return v;
            }
        }
        panic!("no {name} event among the next 200");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_reports_switches_health_flips_and_ticks() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .health("interval = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1")
        .start();
    router.wait_all_healthy().await;
    assert_eq!(EventStream::open(&router, None).await.err(), Some(401));
    let mut events = EventStream::open(&router, Some(TOKEN)).await.unwrap();
    let (name, first) = events.next().await;
    assert_eq!(name, "status");
    assert_eq!(first["live"], "blue");

    router.switch_to("green").await;
    let sw = events.next_named("switch").await;
    assert_eq!(
        (sw["from"].as_str(), sw["to"].as_str()),
        (Some("blue"), Some("green"))
    );
    let st = events.next_named("status").await;
    assert_eq!(st["live"], "green", "a fresh status follows the switch");

    b.set_healthy(false);
    let h = events.next_named("health").await;
    assert_eq!(
        (h["side"].as_str(), h["health"].as_str()),
        (Some("blue"), Some("unhealthy"))
    );
    assert!(h["reason"].as_str().unwrap().contains("503"), "{h}");

    // Ticks carry each second's live traffic.
    let c = h1_client();
    for _ in 0..10 {
        get(&c, &router.url("/")).await.unwrap();
    }
    let mut seen = 0.0;
    for _ in 0..3 {
        let t = events.next_named("tick").await;
        assert_eq!(t["live"], "green");
        seen += t["sides"]["green"]["rps"].as_f64().unwrap();
    }
    assert!(seen > 0.0, "ticks counted the traffic");
    let (status, series) = router.api("GET", "/api/v1/series", None, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(!series["points"].as_array().unwrap().is_empty());
    assert_eq!(series["switches"][0]["to"], "green");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_has_one_json_line_per_request() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .proxy("access_log = true")
        .env("BLUEGREEN_LOG_FORMAT", "json")
        .start();
    router.wait_all_healthy().await;
    let c = h1_client();
    for i in 0..3 {
        get(&c, &router.url(&format!("/logged?n={i}")))
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(5), "three access lines", || async {
        router
            .stderr()
            .lines()
            .filter(|l| l.contains("/logged?n="))
            .count()
            == 3
    })
    .await;
    let line = router
        .stderr()
        .lines()
        .find(|l| l.contains("/logged?n=2"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["method"], "GET", "{v}");
    assert_eq!(f["target"], "/logged?n=2", "{v}");
    assert_eq!(f["status"], 200, "{v}");
    assert_eq!(f["side"], "blue", "{v}");
    assert!(f["duration_ms"].as_f64().is_some(), "{v}");

    // Off by default.
    let quiet = RouterBuilder::new(&[&b], &[&g]).start();
    quiet.wait_all_healthy().await;
    get(&c, &quiet.url("/unlogged")).await.unwrap();
    let _ = quiet.status().await;
    assert!(!quiet.stderr().contains("/unlogged"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_from_the_binary_without_a_token() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g]).start();
    let (code, head) = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{}/", router.admin_url()),
    ]);
    assert_eq!(code, 0);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    let (_, html) = curl(&["-s", &format!("{}/", router.admin_url())]);
    assert!(
        html.contains("/assets/app.js") && !html.contains("http://") && !html.contains("https://"),
        "no CDN: {html}"
    );
    let (_, js) = curl(&[
        "-s",
        "-D",
        "-",
        &format!("{}/assets/app.js", router.admin_url()),
    ]);
    assert!(
        js.to_ascii_lowercase()
            .contains("content-type: text/javascript"),
        "{}",
        &js[..200]
    );
    assert!(js.contains("/api/v1/events"));
    // The data is not public.
    for path in ["/api/v1/status", "/metrics"] {
        let (_, out) = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{}{path}", router.admin_url()),
        ]);
        assert_eq!(out, "401", "{path}");
    }
}

/// `proxy.side_header`: every answer from the app names the side that
/// served it, whatever the method, path or body; the request itself is
/// untouched; a switch changes the name, a reload turns it off, and it is
/// off by default.
#[tokio::test(flavor = "multi_thread")]
async fn the_side_header_names_the_side_that_served_and_a_reload_turns_it_off() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .proxy("side_header = true")
        .start();
    router.wait_all_healthy().await;
    let side_of = |args: &[&str]| -> Option<String> {
        let mut all = vec!["-s", "-D", "-", "-o", "/dev/null"];
        all.extend_from_slice(args);
        let (code, head) = curl(&all);
        assert_eq!(code, 0, "{head}");
        let mut found = head
            .lines()
            .filter_map(|l| {
                l.strip_prefix("x-bluegreen-side: ")
                    .or(l.strip_prefix("X-Bluegreen-Side: "))
            })
            .map(|v| v.trim().to_string());
        let first = found.next();
        assert!(found.next().is_none(), "one header: {head}");
        first
    };
    let url = |p: &str| router.url(p);
    assert_eq!(side_of(&[&url("/a/b?x=1&y=%20z")]).as_deref(), Some("blue"));
    assert_eq!(
        side_of(&[
            "-X",
            "POST",
            "-H",
            "X-Trace: 7",
            "--data-binary",
            "body=1&2",
            &url("/headers?order=1")
        ])
        .as_deref(),
        Some("blue")
    );
    // What the app received is the client's request, and no side header.
    let seen = b.state.last_headers.lock().unwrap().clone();
    assert_eq!(
        seen.get("x-trace").map(String::as_str),
        Some("7"),
        "{seen:?}"
    );
    assert!(!seen.contains_key("x-bluegreen-side"), "{seen:?}");
    assert_eq!(side_of(&["-I", &url("/head")]).as_deref(), Some("blue"));

    router.switch_to("green").await;
    assert_eq!(
        side_of(&["-X", "DELETE", &url("/items/9")]).as_deref(),
        Some("green")
    );

    let text = std::fs::read_to_string(&router.config).unwrap();
    assert!(text.contains("side_header = true"));
    std::fs::write(
        &router.config,
        text.replacen("side_header = true", "side_header = false", 1),
    )
    .unwrap();
    let (code, out, err) = router.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(side_of(&[&url("/after-reload")]), None);

    let plain = RouterBuilder::new(&[&b], &[&g]).start();
    plain.wait_all_healthy().await;
    assert_eq!(side_of(&[&plain.url("/default")]), None, "off by default");
}
