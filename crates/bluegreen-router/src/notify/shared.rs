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
use std::collections::{BTreeMap, BTreeSet};
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
            // Only the first node to say it writes it: its revision is the
            // order the holder takes notices in.
            match tokio::task::spawn_blocking(move || c.create_record(&k, v)).await {
                Ok(Ok(_)) => break,
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
    /// Inbox entries (key, revision) taken in and removed, until the view
    /// drops them.
    gone: BTreeSet<(String, i64)>,
    /// Nodes without a report, since when this node noticed.
    missing: BTreeMap<String, Instant>,
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
            self.stand_down();
        }
        if !self.delivering.load(Ordering::SeqCst) && !self.take_lock(&c, lead).await {
            return;
        }
        // The values are shared (`Arc`): copied out, parsed after the view
        // is let go (its writer waits on it).
        let (entries, lost, reporting) = {
            let view = c.view();
            let v = view.borrow();
            let entries: Vec<(String, i64, Arc<Vec<u8>>)> = v
                .under(INBOX)
                .map(|(k, val)| (k.to_string(), val.revision, val.value.clone()))
                .collect();
            let reporting: BTreeSet<String> =
                v.under("nodes").map(|(n, _)| n.to_string()).collect();
            (
                entries,
                crate::control::lost_members(&v, c.node()),
                reporting,
            )
        };
        lead.gone
            .retain(|(k, r)| entries.iter().any(|(i, ir, _)| i == k && ir == r));
        let inbox: Vec<(String, i64, Option<Notice>)> = entries
            .into_iter()
            .filter(|(k, r, _)| !lead.gone.contains(&(k.clone(), *r)))
            .map(|(k, r, v)| (k, r, serde_json::from_slice(&v).ok()))
            .collect();
        // A node is told lost once it stayed away longer than a lease (a
        // session being renewed drops its report a moment), and once per
        // absence (the outbox remembers it until it reports again).
        let grace = self
            .plane
            .config()
            .state
            .etcd
            .as_ref()
            .map(|e| e.lease_ttl)
            .unwrap_or(Duration::from_secs(5));
        lead.missing
            .retain(|n, _| lost.iter().any(|l| l.node == *n));
        let now = super::now_ms();
        let mut outbox = self.outbox.lock().await;
        // Back (reporting again) or forgotten (`cluster-forget`): a later
        // absence is told again.
        let back: Vec<String> = outbox
            .told_lost
            .iter()
            .filter(|n| reporting.contains(*n) || !lost.iter().any(|l| l.node == **n))
            .cloned()
            .collect();
        let mut changed = !back.is_empty();
        for n in back {
            tracing::info!(node = %n, "a node told lost reports again (or was forgotten)");
            outbox.told_lost.remove(&n);
        }
        // In the order they were first written to etcd (its revisions are
        // one order for every node; their clocks are not).
        let mut ordered: Vec<&(String, i64, Option<Notice>)> = inbox.iter().collect();
        ordered.sort_by_key(|(_, r, _)| *r);
        let mut notices: Vec<Notice> = ordered.iter().filter_map(|(_, _, n)| n.clone()).collect();
        for l in &lost {
            if outbox.told_lost.contains(&l.node) {
                continue;
            }
            let since = *lead
                .missing
                .entry(l.node.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                let away = since.elapsed();
                notices
                    .push(self.notice(notice::node_lost(&l.node, l.last_seen_ms, away, now), now));
                outbox.told_lost.insert(l.node.clone());
                changed = true;
            }
        }
        // Write-offs alone wait for `flush` (once a second).
        if inbox.is_empty() && !changed {
            return;
        }
        let taken = self.take_in(&mut outbox, notices);
        // Written before the inbox entries go: a failed write keeps them
        // (and they are taken in again at the next turn). `dirty`: an
        // earlier write failed, so what `seen` remembers may not be stored.
        if (taken > 0 || changed || self.dirty.load(Ordering::SeqCst))
            && !self.persist(&mut outbox).await
        {
            return;
        }
        drop(outbox);
        let keys: Vec<(String, i64)> = inbox.into_iter().map(|(k, r, _)| (k, r)).collect();
        if keys.is_empty() {
            return;
        }
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            for (k, r) in keys {
                match c.publish_as(LOCK, &format!("{INBOX}/{k}"), None) {
                    Ok(true) => removed.push((k, r)),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, key = %k, "a taken-in notice could not be removed from the shared inbox yet (it is not queued twice)")
                    }
                }
            }
            removed
        })
        .await;
        if let Ok(removed) = removed {
            lead.gone.extend(removed);
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
                Some(b) => match serde_json::from_slice(&b) {
                    Ok(o) => Ok(Some(o)),
                    // Unreadable (a newer release wrote it?): set aside for
                    // a look, and delivery goes on from an empty outbox
                    // rather than stop for the whole cluster.
                    Err(e) => {
                        let aside = format!(
                            "notify-unreadable-{}",
                            super::now_ms()
                        );
                        if !c.publish_as(LOCK, &aside, Some(b)).unwrap_or(false) {
                            let _ = c.unlock(LOCK);
                            return Err(format!("the shared notify outbox cannot be read ({e}) nor set aside: not delivering"));
                        }
                        tracing::error!(error = %e, "the shared notify outbox cannot be read: it is kept as {aside} and the notices in it are not sent");
                        Ok(Some(Outbox::default()))
                    }
                },
            }
        })
        .await;
        match got {
            Ok(Ok(Some(outbox))) => {
                let mut mine = self.outbox.lock().await;
                *mine = outbox;
                self.recount(&mine);
                self.delivering.store(true, Ordering::SeqCst);
                self.dirty.store(false, Ordering::SeqCst);
                lead.gone.clear();
                lead.missing.clear();
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
