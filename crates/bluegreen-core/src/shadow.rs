//! Shadow traffic aggregation: pairs of (live answer, idle answer) folded per
//! endpoint into counts, top differing fields with examples, and latency of
//! both sides; plus the go/no-go judgement the pipeline's shadow step makes.
//! Pure data, so the report and the gate are unit-tested without a network.

use crate::diff::{generalize, FieldDiff, Noise};
use crate::latency::{bucket, Histogram};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Endpoints tracked one by one; later ones share one `(other)` row, so a
/// client walking random paths cannot grow the report without bound.
pub const MAX_ENDPOINTS: usize = 200;
/// Distinct differing fields kept per endpoint.
const MAX_FIELDS: usize = 64;
/// Distinct sets of differing fields kept per endpoint.
const MAX_SIGNATURES: usize = 256;
/// Example pairs kept per field.
const MAX_EXAMPLES: usize = 3;
/// Fields shown per endpoint in a report.
const TOP_FIELDS: usize = 5;
/// The endpoint row that collects everything past [`MAX_ENDPOINTS`].
pub const OTHER: &str = "(other)";

/// One example of a differing field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// `METHOD /path?query` of the request.
    pub request: String,
    pub live: String,
    pub idle: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct FieldAgg {
    count: u64,
    examples: Vec<Example>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct EndpointAgg {
    requests: u64,
    /// The idle side did not answer (connect error, timeout, reset).
    errors: u64,
    live: Histogram,
    idle: Histogram,
    /// Sorted generalised field names of one pair -> pairs with exactly that set.
    #[serde(with = "pairs")]
    signatures: BTreeMap<Vec<String>, u64>,
    /// Differing pairs whose set did not fit in `signatures` (always counted as differing).
    unsorted: u64,
    /// The last requests compared (whatever the outcome), so a report
    /// shows what was compared even when nothing differs.
    #[serde(default)]
    recent: Vec<String>,
    fields: BTreeMap<String, FieldAgg>,
}

/// Everything shadowing has seen so far. Differences are kept with their
/// field names, so noise learned later is still taken out of the report.
/// Serialisable and mergeable: each router node of a cluster shadows its own
/// share of live traffic, and the deploy judges their sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    endpoints: BTreeMap<String, EndpointAgg>,
    pub noise: Noise,
    /// Differences an operator said are intended (`bluegreen shadow
    /// accept`): generalised field names left out of the report and the
    /// gate on every endpoint, the pairs already counted included.
    #[serde(default)]
    pub accepted: std::collections::BTreeSet<String>,
}

/// Latency of one side, for reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Latency {
    fn of(h: &Histogram) -> Latency {
        let ms = |d: Duration| (d.as_micros() as f64 / 1000.0 * 100.0).round() / 100.0;
        Latency {
            p50_ms: h.quantile(0.5).map(ms),
            p99_ms: h.quantile(0.99).map(ms),
        }
    }
}

/// One differing field of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldReport {
    pub field: String,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// One endpoint's comparison so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    pub endpoint: String,
    /// Pairs compared (idle failures included).
    pub requests: u64,
    /// Pairs with at least one real difference (idle failures included).
    pub differing: u64,
    /// `differing / requests`.
    pub diff_rate: f64,
    /// Requests the idle side did not answer.
    pub errors: u64,
    pub live: Latency,
    pub idle: Latency,
    /// Most frequent differing fields, most frequent first.
    pub fields: Vec<FieldReport>,
    /// Fields learned as noise (they differ between two live answers).
    pub noise: Vec<String>,
    /// Requests compared last, differing or not.
    #[serde(default)]
    pub compared: Vec<String>,
}

/// Totals over all endpoints, and the p99 of each side over all pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub compared: u64,
    pub differing: u64,
    pub errors: u64,
    pub live: Latency,
    pub idle: Latency,
}

impl Aggregate {
    fn row(&mut self, endpoint: &str) -> &mut EndpointAgg {
        let key = if self.endpoints.contains_key(endpoint) || self.endpoints.len() < MAX_ENDPOINTS {
            endpoint
        } else {
            OTHER
        };
        self.endpoints.entry(key.to_string()).or_default()
    }

    /// Pairs compared so far for `endpoint` (or for the row it falls in).
    pub fn requests(&self, endpoint: &str) -> u64 {
        match self.endpoints.get(endpoint) {
            Some(e) => e.requests,
            None if self.endpoints.len() >= MAX_ENDPOINTS => {
                self.endpoints.get(OTHER).map_or(0, |e| e.requests)
            }
            None => 0,
        }
    }

    /// Learns noise from the differences between two live answers. A status
    /// is never noise: a differing status is always a real difference.
    pub fn learn(&mut self, endpoint: &str, between_live: &[FieldDiff]) {
        let fields: Vec<String> = between_live
            .iter()
            .filter(|d| d.field != "status")
            .map(|d| generalize(&d.field))
            .collect();
        if fields.is_empty() {
            return;
        }
        let key = if self.noise.fields.contains_key(endpoint)
            || self.noise.fields.len() < MAX_ENDPOINTS
        {
            endpoint
        } else {
            OTHER
        };
        self.noise
            .fields
            .entry(key.to_string())
            .or_default()
            .extend(fields);
    }

    /// Adds another node's aggregate: counts and latencies add up (the
    /// same fixed buckets), examples fill up to the same caps, noise
    /// learned anywhere is noise everywhere.
    pub fn merge(&mut self, other: &Aggregate) {
        for (name, o) in &other.endpoints {
            let row = self.row(name);
            row.requests += o.requests;
            row.errors += o.errors;
            row.live = row.live.plus(&o.live);
            row.idle = row.idle.plus(&o.idle);
            row.unsorted += o.unsorted;
            for r in &o.recent {
                if row.recent.len() < MAX_EXAMPLES {
                    row.recent.push(r.clone());
                }
            }
            for (sig, n) in &o.signatures {
                if row.signatures.len() < MAX_SIGNATURES || row.signatures.contains_key(sig) {
                    *row.signatures.entry(sig.clone()).or_default() += n;
                } else {
                    row.unsorted += n;
                }
            }
            for (field, f) in &o.fields {
                if !row.fields.contains_key(field) && row.fields.len() >= MAX_FIELDS {
                    continue;
                }
                let mine = row.fields.entry(field.clone()).or_default();
                mine.count += f.count;
                let room = MAX_EXAMPLES.saturating_sub(mine.examples.len());
                mine.examples.extend(f.examples.iter().take(room).cloned());
            }
        }
        self.accepted.extend(other.accepted.iter().cloned());
        for (endpoint, fields) in &other.noise.fields {
            // Folded like the rows: noise of an endpoint that fell into
            // the `(other)` row here is that row's noise.
            let key = if self.endpoints.contains_key(endpoint)
                || self.noise.fields.contains_key(endpoint)
                || self.endpoints.len() < MAX_ENDPOINTS
            {
                endpoint.clone()
            } else {
                OTHER.to_string()
            };
            self.noise
                .fields
                .entry(key)
                .or_default()
                .extend(fields.iter().cloned());
        }
    }

    /// An intended difference: `field` (a JSON pointer, array indexes as
    /// numbers or `*`, or `status`, `header:NAME`, `body`) no longer counts.
    pub fn accept(&mut self, field: &str) {
        self.accepted.insert(generalize(field));
    }

    /// Leaves out detail to make the aggregate smaller to send: at most
    /// `examples` examples per field, and with 0 no field detail at all.
    /// Counts, signatures and latencies stay, so the judgement does not
    /// change; only the report shows less.
    pub fn trim(&mut self, examples: usize) {
        for e in self.endpoints.values_mut() {
            if examples == 0 {
                e.fields.clear();
            } else {
                for f in e.fields.values_mut() {
                    f.examples.truncate(examples);
                }
            }
        }
    }

    /// Adds one compared pair: its real differences and both latencies.
    pub fn add(
        &mut self,
        endpoint: &str,
        request: &str,
        diffs: Vec<FieldDiff>,
        live: Duration,
        idle: Duration,
    ) {
        let row = self.row(endpoint);
        row.requests += 1;
        if row.recent.len() >= MAX_EXAMPLES {
            row.recent.remove(0);
        }
        row.recent.push(request.to_string());
        row.live.counts[bucket(live)] += 1;
        row.idle.counts[bucket(idle)] += 1;
        if diffs.is_empty() {
            return;
        }
        let mut signature: Vec<String> = diffs.iter().map(|d| generalize(&d.field)).collect();
        signature.sort();
        signature.dedup();
        if row.signatures.len() < MAX_SIGNATURES || row.signatures.contains_key(&signature) {
            *row.signatures.entry(signature).or_default() += 1;
        } else {
            row.unsorted += 1;
        }
        for d in diffs {
            let key = generalize(&d.field);
            if !row.fields.contains_key(&key) && row.fields.len() >= MAX_FIELDS {
                continue;
            }
            let f = row.fields.entry(key).or_default();
            f.count += 1;
            if f.examples.len() < MAX_EXAMPLES {
                f.examples.push(Example {
                    request: request.to_string(),
                    live: d.live,
                    idle: d.idle,
                });
            }
        }
    }

    /// Adds a request the idle side failed to answer: a difference, named
    /// `error`, so a broken new version can never pass as "no differences".
    pub fn add_error(&mut self, endpoint: &str, request: &str, live: Duration, reason: String) {
        self.add(
            endpoint,
            request,
            vec![FieldDiff {
                field: "error".into(),
                live: "answered".into(),
                idle: reason,
            }],
            live,
            Duration::ZERO,
        );
        let row = self.row(endpoint);
        row.errors += 1;
        // The idle side's latency of a failure is not a latency.
        row.idle.counts[0] -= 1;
    }

    /// The report: per endpoint, most differing first, noise taken out.
    pub fn report(&self) -> (Totals, Vec<EndpointReport>) {
        let mut totals = Totals::default();
        let (mut all_live, mut all_idle) = (Histogram::default(), Histogram::default());
        let mut rows: Vec<EndpointReport> = self
            .endpoints
            .iter()
            .map(|(name, e)| {
                let noise = self.noise.fields.get(name);
                let is_noise =
                    |f: &str| noise.is_some_and(|n| n.contains(f)) || self.accepted.contains(f);
                let differing = e.unsorted
                    + e.signatures
                        .iter()
                        .filter(|(sig, _)| sig.iter().any(|f| !is_noise(f)))
                        .map(|(_, n)| n)
                        .sum::<u64>();
                let mut fields: Vec<FieldReport> = e
                    .fields
                    .iter()
                    .filter(|(f, _)| !is_noise(f))
                    .map(|(f, a)| FieldReport {
                        field: f.clone(),
                        count: a.count,
                        examples: a.examples.clone(),
                    })
                    .collect();
                fields.sort_by(|a, b| b.count.cmp(&a.count).then(a.field.cmp(&b.field)));
                fields.truncate(TOP_FIELDS);
                totals.compared += e.requests;
                totals.differing += differing;
                totals.errors += e.errors;
                for (a, b) in all_live.counts.iter_mut().zip(&e.live.counts) {
                    *a += b;
                }
                for (a, b) in all_idle.counts.iter_mut().zip(&e.idle.counts) {
                    *a += b;
                }
                EndpointReport {
                    endpoint: name.clone(),
                    requests: e.requests,
                    differing,
                    diff_rate: rate(differing, e.requests),
                    errors: e.errors,
                    live: Latency::of(&e.live),
                    idle: Latency::of(&e.idle),
                    fields,
                    noise: noise
                        .map(|n| n.iter().cloned().collect())
                        .unwrap_or_default(),
                    compared: e.recent.clone(),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            b.diff_rate
                .total_cmp(&a.diff_rate)
                .then(b.requests.cmp(&a.requests))
                .then(a.endpoint.cmp(&b.endpoint))
        });
        totals.live = Latency::of(&all_live);
        totals.idle = Latency::of(&all_idle);
        (totals, rows)
    }
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The pipeline's go/no-go limits for shadow traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Fewer compared pairs than this fails the step (0 lets quiet services through).
    pub min_requests: u64,
    /// Highest diff rate any one endpoint may have (0..=1).
    pub max_diff_rate: f64,
    /// The idle side's p99 over all pairs may be at most this times the live side's.
    pub max_p99_ratio: Option<f64>,
}

/// Why the shadow gate failed, for humans.
pub fn judge(gate: &Gate, totals: &Totals, rows: &[EndpointReport]) -> Result<String, String> {
    if totals.compared < gate.min_requests {
        return Err(format!(
            "not enough shadow traffic to judge: {} of {} pairs compared (lower deploy.shadow.min_requests to let a quiet service through)",
            totals.compared, gate.min_requests
        ));
    }
    let worst: Vec<String> = rows
        .iter()
        .filter(|r| r.diff_rate > gate.max_diff_rate)
        .take(3)
        .map(|r| {
            let field = r
                .fields
                .first()
                .map(|f| {
                    let ex = f.examples.first();
                    format!(
                        ", e.g. {} (live {}, idle {})",
                        f.field,
                        ex.map_or("?", |e| e.live.as_str()),
                        ex.map_or("?", |e| e.idle.as_str())
                    )
                })
                .unwrap_or_default();
            format!(
                "{}: {} of {} differ ({:.1}%){field}",
                r.endpoint,
                r.differing,
                r.requests,
                r.diff_rate * 100.0
            )
        })
        .collect();
    if !worst.is_empty() {
        return Err(format!(
            "shadow diff rate above {:.1}%: {}",
            gate.max_diff_rate * 100.0,
            worst.join("; ")
        ));
    }
    if let (Some(ratio), Some(live), Some(idle)) =
        (gate.max_p99_ratio, totals.live.p99_ms, totals.idle.p99_ms)
    {
        if idle > live * ratio {
            return Err(format!(
                "idle side p99 {idle:.2} ms is more than {ratio}× the live side's {live:.2} ms"
            ));
        }
    }
    Ok(format!(
        "{} pairs compared, {} differing ({:.2}%); p99 live {} / idle {}",
        totals.compared,
        totals.differing,
        rate(totals.differing, totals.compared) * 100.0,
        fmt_ms(totals.live.p99_ms),
        fmt_ms(totals.idle.p99_ms)
    ))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} ms"))
}

/// A map with list keys, as JSON: a list of `[key, count]` pairs.
mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Vec<String>, u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Vec<String>, u64>, D::Error> {
        Ok(Vec::<(Vec<String>, u64)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(field: &str, live: &str, idle: &str) -> FieldDiff {
        FieldDiff {
            field: field.into(),
            live: live.into(),
            idle: idle.into(),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn aggregates_of_several_nodes_merge_into_what_one_would_have_seen() {
        let pairs: Vec<(u64, Vec<FieldDiff>)> = (0..40)
            .map(|i| {
                (
                    i,
                    if i % 4 == 0 {
                        vec![d("/price", "10", "12")]
                    } else {
                        vec![]
                    },
                )
            })
            .collect();
        let mut whole = Aggregate::default();
        let (mut a, mut b) = (Aggregate::default(), Aggregate::default());
        for (i, diffs) in &pairs {
            let endpoint = if i % 2 == 0 { "GET /p/{id}" } else { "GET /" };
            let req = format!("GET /p/{i}");
            whole.add(endpoint, &req, diffs.clone(), MS * (*i as u32 + 1), MS);
            let half = if *i < 20 { &mut a } else { &mut b };
            half.add(endpoint, &req, diffs.clone(), MS * (*i as u32 + 1), MS);
        }
        b.noise
            .fields
            .entry("GET /".into())
            .or_default()
            .insert("/ts".into());
        whole.noise = b.noise.clone();
        // What travels between nodes is JSON.
        let b: Aggregate = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&b);
        let (merged, whole) = (a.report(), whole.report());
        assert_eq!(merged.0, whole.0);
        assert_eq!(merged.1.len(), whole.1.len());
        for (m, w) in merged.1.iter().zip(&whole.1) {
            assert_eq!(
                (m.requests, m.differing, &m.live, &m.idle),
                (w.requests, w.differing, &w.live, &w.idle)
            );
            assert_eq!(m.noise, w.noise);
        }
        assert_eq!(merged.0.differing, 10);
    }

    #[test]
    fn differences_are_counted_per_endpoint_with_examples() {
        let mut a = Aggregate::default();
        for i in 0..10 {
            let diffs = if i < 3 {
                vec![d("/price", "10", "12")]
            } else {
                vec![]
            };
            a.add("GET /p/{id}", &format!("GET /p/{i}"), diffs, MS, MS * 2);
        }
        a.add("GET /", "GET /", vec![], MS, MS);
        let (t, rows) = a.report();
        assert_eq!((t.compared, t.differing), (11, 3));
        assert_eq!(rows[0].endpoint, "GET /p/{id}");
        assert_eq!((rows[0].requests, rows[0].differing), (10, 3));
        assert!((rows[0].diff_rate - 0.3).abs() < 1e-9);
        assert_eq!(rows[0].fields[0].field, "/price");
        assert_eq!(rows[0].fields[0].examples.len(), 3);
        assert_eq!(rows[0].fields[0].examples[0].request, "GET /p/0");
        assert!(rows[0].idle.p50_ms.unwrap() > rows[0].live.p50_ms.unwrap());
    }

    #[test]
    fn noise_learned_later_is_taken_out_of_the_report() {
        let mut a = Aggregate::default();
        a.add("GET /t", "GET /t", vec![d("/ts", "1", "2")], MS, MS);
        a.add(
            "GET /t",
            "GET /t",
            vec![d("/ts", "1", "2"), d("/v", "a", "b")],
            MS,
            MS,
        );
        assert_eq!(a.report().0.differing, 2);
        a.learn("GET /t", &[d("/ts", "5", "6")]);
        let (t, rows) = a.report();
        assert_eq!(t.differing, 1);
        assert_eq!(rows[0].fields.len(), 1);
        assert_eq!(rows[0].fields[0].field, "/v");
        assert_eq!(rows[0].noise, vec!["/ts".to_string()]);
    }

    #[test]
    fn idle_failures_count_as_differences() {
        let mut a = Aggregate::default();
        a.add_error("GET /", "GET /", MS, "connection refused".into());
        let (t, rows) = a.report();
        assert_eq!((t.compared, t.differing, t.errors), (1, 1, 1));
        assert_eq!(rows[0].fields[0].field, "error");
        assert_eq!(rows[0].idle.p99_ms, None);
    }

    #[test]
    fn endpoints_are_bounded() {
        let mut a = Aggregate::default();
        for i in 0..(MAX_ENDPOINTS + 50) {
            a.add(&format!("GET /x{i}"), "GET /", vec![], MS, MS);
        }
        let (t, rows) = a.report();
        assert_eq!(rows.len(), MAX_ENDPOINTS + 1);
        assert_eq!(t.compared, (MAX_ENDPOINTS + 50) as u64);
        assert_eq!(
            rows.iter().find(|r| r.endpoint == OTHER).unwrap().requests,
            50
        );
    }

    #[test]
    fn the_gate_names_the_endpoint_and_the_field() {
        let mut a = Aggregate::default();
        for i in 0..20 {
            let diffs = if i % 2 == 0 {
                vec![d("status", "200", "500")]
            } else {
                vec![]
            };
            a.add("GET /a", "GET /a", diffs, MS, MS);
        }
        let (t, rows) = a.report();
        let gate = Gate {
            min_requests: 10,
            max_diff_rate: 0.05,
            max_p99_ratio: None,
        };
        let err = judge(&gate, &t, &rows).unwrap_err();
        assert!(err.contains("GET /a: 10 of 20 differ (50.0%)"), "{err}");
        assert!(err.contains("status (live 200, idle 500)"), "{err}");
        let lax = Gate {
            max_diff_rate: 0.6,
            ..gate.clone()
        };
        assert!(judge(&lax, &t, &rows).is_ok());
        let strict = Gate {
            min_requests: 100,
            ..lax
        };
        assert!(judge(&strict, &t, &rows)
            .unwrap_err()
            .contains("20 of 100 pairs"));
    }

    #[test]
    fn the_gate_compares_p99() {
        let mut a = Aggregate::default();
        for _ in 0..50 {
            a.add("GET /", "GET /", vec![], MS, MS * 40);
        }
        let (t, rows) = a.report();
        let gate = Gate {
            min_requests: 1,
            max_diff_rate: 0.0,
            max_p99_ratio: Some(2.0),
        };
        let err = judge(&gate, &t, &rows).unwrap_err();
        assert!(err.contains("idle side p99"), "{err}");
    }
}
