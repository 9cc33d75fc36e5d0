//! One hook run for a side (deploy and decommission hooks, command smoke
//! tests, the warm step's replay): argv without a shell, the environment
//! bluegreen gives it, its output into the deploy log line by line, a time
//! limit, and the process group killed on timeout or abort.

use super::*;
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// What a hook is run with.
pub(super) struct HookCall<'a> {
    pub argv: Vec<String>,
    pub side: Side,
    pub version: &'a str,
    /// `--env` values of the deploy.
    pub env: &'a BTreeMap<String, String>,
    pub limit: Duration,
}

impl<'a> HookCall<'a> {
    /// A run for `side` with `version`, limited by `hook_timeout`.
    pub fn new(
        p: &Pipeline,
        argv: Vec<String>,
        side: Side,
        version: &'a str,
        env: &'a BTreeMap<String, String>,
    ) -> HookCall<'a> {
        HookCall {
            argv,
            side,
            version,
            env,
            limit: p.config().hook_timeout,
        }
    }

    /// The same with another time limit.
    pub fn limit(self, limit: Duration) -> HookCall<'a> {
        HookCall { limit, ..self }
    }

    /// Runs it to the end, or until `cancel`; the error says why it failed.
    pub async fn run(
        self,
        p: &Arc<Pipeline>,
        cancel: &CancellationToken,
    ) -> Result<(), command::CommandError> {
        let upstreams = p.router.config().environments[self.side]
            .upstreams
            .join(",");
        let mut env: Vec<(String, String)> = vec![
            ("BLUEGREEN_ENV".into(), self.side.as_str().into()),
            ("BLUEGREEN_VERSION".into(), self.version.into()),
            ("BLUEGREEN_UPSTREAMS".into(), upstreams),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let lines = LineLog::start(p, "| ");
        let result = command::run(
            &self.argv,
            &p.config().workdir,
            &env,
            self.limit,
            cancel,
            lines.sink(),
        )
        .await;
        lines.finish().await;
        result
    }
}
