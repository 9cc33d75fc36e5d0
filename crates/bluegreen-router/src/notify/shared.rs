//! Notices with several nodes on etcd. Every node writes what it saw to a
//! shared inbox (`notify-inbox/<id>`, without a lease, so it outlives its
//! writer); the node that holds the `notify` lock takes the inbox into the
//! outbox (key `notify`, which only the holder may write), delivers, and
//! tells of nodes lost. An event every node sees (a switch, a deploy,
//! maintenance) gets the same id on each, so it is queued once. When the
//! holder dies its lease ends, the next node takes the lock, reads the
//! outbox and goes on; what the dead node had in flight is sent again
//! (same id).

use super::notice::{self, Notice};
use super::outbox::{Outbox, KEY as OUTBOX_KEY};
use super::Notifier;
use bluegreen_store::cluster::{Cluster, Lock};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The lock whose holder delivers the cluster's notices.
pub const LOCK: &str = "notify";
/// Where each node puts the notices it made.
pub const INBOX: &str = "notify-inbox";
/// etcd refuses a request over 1.5 MiB by default: the shared outbox stays
/// under 1 MiB, the oldest notices given up (and counted) first.
pub const MAX_BYTES: usize = 1 << 20;

/// The outbox as the holder writes it, with the oldest waiting notices
/// given up until it fits in `MAX_BYTES`.
pub(super) fn fit(outbox: &mut Outbox, mut lost: impl FnMut(&str)) -> Vec<u8> {
    loop {
        let bytes = serde_json::to_vec(outbox).expect("the outbox serialises");
        if bytes.len() <= MAX_BYTES || outbox.pending.is_empty() {
            return bytes;
        }
        // Enough at once that a large excess does not serialise over and
        // over.
        let over = bytes.len() - MAX_BYTES;
        let each = (bytes.len() / outbox.pending.len()).max(1);
        let n = over.div_ceil(each).clamp(1, outbox.pending.len());
        for old in outbox.pending.drain(..n) {
            tracing::error!(hook = %old.hook, id = %old.notice.id, "the shared notify outbox is over 1 MiB (etcd takes at most 1.5 MiB): the oldest notice was given up");
            lost(&old.hook);
        }
    }
}

/// Writes `notices` to the shared inbox, in order, each until it is
/// written (or `stop`): etcd being away delays a notice, it does not drop
/// it.
pub(super) async fn post(c: &Arc<dyn Cluster>, stop: &CancellationToken, notices: Vec<Notice>) {
    for n in notices {
        let key = format!("{INBOX}/{}", n.id);
        let value = serde_json::to_vec(&n).expect("a notice serialises");
        let mut said = false;
        loop {
            let (c, k, v) = (c.clone(), key.clone(), value.clone());
            match tokio::task::spawn_blocking(move || c.put_record(&k, Some(v))).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) if !said => {
                    said = true;
                    tracing::error!(error = %e, id = %n.id, "a notice could not be written to the shared inbox yet (tried again every second)");
                }
                _ => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// What the delivering loop remembers between its turns.
#[derive(Default)]
pub(super) struct Lead {
    last_try: Option<Instant>,
    /// Inbox keys taken in and being removed (until the view drops them).
    gone: BTreeSet<String>,
    /// Lost nodes already told of by this holder.
    lost: BTreeSet<String>,
}

impl Notifier {
    /// One turn: takes the lock when nobody holds it (at most once a
    /// second), notices losing it, and as the holder takes in the inbox and
    /// the nodes lost.
    pub(super) async fn lead(&self, lead: &mut Lead) {
        let Some(c) = self.cluster.clone() else {
            return;
        };
        if self.paused.load(Ordering::SeqCst) {
            return;
        }
        if self.delivering.load(Ordering::SeqCst) && !c.holds(LOCK) {
            tracing::warn!(
                "this node lost the notify lock: another node delivers the cluster's notices"
            );
            self.delivering.store(false, Ordering::SeqCst);
        }
        if !self.delivering.load(Ordering::SeqCst) && !self.take_lock(&c, lead).await {
            return;
        }
        let (inbox, lost) = {
            let view = c.view();
            let v = view.borrow();
            let inbox: Vec<(String, Option<Notice>)> = v
                .under(INBOX)
                .map(|(k, val)| (k.to_string(), serde_json::from_slice(&val.value).ok()))
                .collect();
            (inbox, crate::control::lost_members(&v, c.node()))
        };
        lead.gone.retain(|k| inbox.iter().any(|(i, _)| i == k));
        let inbox: Vec<(String, Option<Notice>)> = inbox
            .into_iter()
            .filter(|(k, _)| !lead.gone.contains(k))
            .collect();
        let now = super::now_ms();
        let lost: Vec<Notice> = lost
            .into_iter()
            .filter(|l| lead.lost.insert(format!("{}-{}", l.node, l.last_seen_ms)))
            .map(|l| self.notice(notice::node_lost(&l.node, l.last_seen_ms, now), now))
            .collect();
        if inbox.is_empty() && lost.is_empty() {
            return;
        }
        let mut notices: Vec<Notice> = inbox.iter().filter_map(|(_, n)| n.clone()).collect();
        notices.extend(lost);
        notices.sort_by_key(|n| n.at_unix_ms);
        let mut outbox = self.outbox.lock().await;
        if self.take_in(&mut outbox, notices) > 0 && !self.persist(&mut outbox).await {
            return;
        }
        drop(outbox);
        // Written to the outbox: the inbox entries (and any that could
        // not be read) can go.
        let keys: Vec<String> = inbox.into_iter().map(|(k, _)| k).collect();
        lead.gone.extend(keys.iter().cloned());
        let removed = tokio::task::spawn_blocking(move || {
            for k in keys {
                c.publish_as(LOCK, &format!("{INBOX}/{k}"), None)?;
            }
            Ok::<_, bluegreen_store::StoreError>(())
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(error = %e, "taken-in notices could not be removed from the shared inbox (they are not queued twice)");
        }
        self.wake.notify_one();
    }

    /// Takes the lock and reads the shared outbox; true when this node
    /// delivers now.
    async fn take_lock(&self, c: &Arc<dyn Cluster>, lead: &mut Lead) -> bool {
        if lead
            .last_try
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            || self.plane.config().notify.is_empty()
        {
            return false;
        }
        lead.last_try = Some(Instant::now());
        let c = c.clone();
        let got = tokio::task::spawn_blocking(move || -> Result<Option<Outbox>, String> {
            match c.try_lock(LOCK).map_err(|e| e.to_string())? {
                Lock::Taken | Lock::HeldHere => {}
                Lock::HeldBy(_) => return Ok(None),
            }
            match c.peek(OUTBOX_KEY).map_err(|e| e.to_string())? {
                None => Ok(Some(Outbox::default())),
                Some(b) => serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|e| format!("the shared notify outbox: {e}")),
            }
        })
        .await;
        match got {
            Ok(Ok(Some(outbox))) => {
                let mut mine = self.outbox.lock().await;
                *mine = outbox;
                self.recount(&mine);
                self.delivering.store(true, Ordering::SeqCst);
                lead.lost.clear();
                tracing::info!(
                    waiting = mine.pending.len(),
                    "this node delivers the cluster's notices (it holds the notify lock)"
                );
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not take the notify lock");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take the notify lock");
                false
            }
        }
    }

    /// Gives the lock back at a graceful stop, so another node delivers at
    /// once instead of after this lease.
    pub(super) async fn step_down(&self) {
        let Some(c) = self.cluster.clone() else {
            return;
        };
        if self.delivering.swap(false, Ordering::SeqCst) {
            let _ = tokio::task::spawn_blocking(move || c.unlock(LOCK)).await;
        }
    }
}
