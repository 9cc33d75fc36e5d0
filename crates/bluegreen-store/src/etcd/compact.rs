//! etcd keeps every revision until it is compacted, and each node's
//! reports and beats add revisions for as long as the cluster runs. One
//! node (the holder of the `compact` lock, held with its lease) compacts
//! the history behind the current revision every `compact_every`, keeping
//! `keep_revisions`. A compaction covers all of etcd's keyspace, not only
//! this service's prefix: with an etcd shared and compacted by its own
//! `--auto-compaction`, it is turned off (`compact_every = "off"`).
//! A watch that falls behind a compaction reads the prefix again.

use super::client::{EtcdError, MemberStatus};
use super::{b64, Inner};
use crate::cluster::lock_key;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The lock whose holder compacts.
const COMPACT_LOCK: &str = "compact";

/// Compacts every `every` while this session lasts and holds the lock.
pub(super) async fn compactor(
    inner: Arc<Inner>,
    lease: i64,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match compact_once(&inner, lease).await {
            Ok(Some(at)) => tracing::debug!(revision = at, "compacted etcd's history"),
            Ok(None) => {}
            // The next tick tries again; a lost etcd ends the session anyway.
            Err(e) => tracing::warn!(error = %e, "could not compact etcd's history"),
        }
    }
}

/// Takes the lock if it is free, and when this session holds it, compacts
/// to `keep_revisions` behind the current revision. The revision compacted
/// to, or `None` when another node compacts or nothing is due.
async fn compact_once(inner: &Arc<Inner>, lease: i64) -> Result<Option<i64>, EtcdError> {
    let key = inner.key(&lock_key(COMPACT_LOCK));
    let mine = format!("{}/{lease}", inner.token);
    let free =
        json!({"key": b64(&key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"});
    let put =
        json!({"request_put": {"key": b64(&key), "value": b64(&mine), "lease": lease.to_string()}});
    inner.client.txn(vec![free], vec![put]).await?;
    let (revision, kvs) = inner.client.range(&key, false).await?;
    if kvs.first().is_none_or(|kv| kv.value != mine.as_bytes()) {
        return Ok(None);
    }
    let to = revision - inner.keep_revisions as i64;
    if to <= inner.compacted.load(Ordering::SeqCst) {
        return Ok(None);
    }
    match inner.client.compact(to).await {
        Ok(()) => {}
        // etcd (its own auto-compaction, an operator) went further already.
        Err(EtcdError::Refused { message, .. }) if message.contains("compacted") => {}
        Err(e) => return Err(e),
    }
    inner.compacted.fetch_max(to, Ordering::SeqCst);
    Ok(Some(to))
}

/// What `bluegreen check` says of etcd: reachable, its size, and whether
/// its history is compacted (by us, or by something else).
#[derive(Debug, Clone)]
pub struct Health {
    pub status: MemberStatus,
    /// The first revision's history is gone: something compacted it.
    pub compacted: bool,
}

/// Asks etcd for its status and probes whether old history is kept.
pub async fn health(client: &super::client::Client, prefix: &str) -> Result<Health, EtcdError> {
    let status = client.status().await?;
    // Not compacted at all yet: revision 1 still reads. Compacted by a
    // period or a count, the first revisions are the first to go.
    let compacted =
        status.revision > 1 && client.compacted_at(&format!("{prefix}/state"), 1).await?;
    Ok(Health { status, compacted })
}
