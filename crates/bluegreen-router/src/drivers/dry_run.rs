//! Routers bluegreen cannot reach here (a Kubernetes API server, AWS), in
//! dry run: at each switch the exact HTTP requests the driver would send
//! are printed to the log (secrets redacted) and nothing is sent;
//! bluegreen's own proxy switches as without a driver. The requests are
//! built from the config alone, so they can be read and tested before a
//! version that sends them.

use super::{Driver, DriverError, Fut};
use crate::plane::Plane;
use bluegreen_core::config::Config;
use bluegreen_core::Side;
use std::fmt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One HTTP request, as it would go on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    /// `https://HOST[:PORT]/PATH?QUERY`.
    pub url: String,
    /// Besides `Host`; secrets already redacted.
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
    /// What the request is for, and what its answer decides.
    pub why: String,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let (host, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        writeln!(f, "# {}", self.why)?;
        writeln!(f, "{} {path} HTTP/1.1", self.method)?;
        writeln!(f, "Host: {host}")?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {v}")?;
        }
        if let Some(body) = &self.body {
            writeln!(f, "Content-Length: {}", body.len())?;
            writeln!(f)?;
            write!(f, "{body}")?;
        }
        Ok(())
    }
}

/// What a driver in dry run would send.
pub trait Plan: Send + Sync {
    /// `kubernetes`, `alb`.
    fn name(&self) -> &'static str;
    /// The requests a switch to `live` sends, in order.
    fn requests(&self, live: Side) -> Vec<Request>;
}

/// A driver that prints its plan and sends nothing.
pub struct DryRun<P>(pub P);

impl<P: Plan> DryRun<P> {
    /// The whole plan for `live`, as printed.
    pub fn text(&self, live: Side) -> String {
        self.0
            .requests(live)
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- request {} of a switch to {live}\n{r}\n", i + 1))
            .collect()
    }
}

impl<P: Plan> Driver for DryRun<P> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn apply<'a>(&'a self, _: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>> {
        Box::pin(async move {
            tracing::info!(
                router = self.0.name(),
                "dry run: nothing was sent; without dry_run this switch would send:\n{}",
                self.text(live)
            );
            Ok(format!(
                "{} (dry run): nothing sent; the requests are in bluegreen's log",
                self.0.name()
            ))
        })
    }

    fn start<'a>(&'a self, _: &'a Config, live: Side) -> Fut<'a, Result<String, DriverError>> {
        Box::pin(async move {
            Ok(format!(
                "{} in dry run: switches print their requests and send nothing; {live} is live in bluegreen's own proxy",
                self.0.name()
            ))
        })
    }

    /// Nothing to follow: the traffic judged is bluegreen's own proxy's.
    fn follow(&self, _: Arc<Plane>, _: CancellationToken) {}
}
