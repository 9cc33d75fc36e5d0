//! Telling people and systems (`[[notify]]`): the notices the event stream
//! makes (`notice`), kept in a durable outbox in the state store
//! (`outbox`) and delivered to each hook in order, off the request path and
//! off the pipeline's, retried with backoff until the hook's `retry_for`
//! (`send`). At-least-once: a receiver de-duplicates by the notice's id.
//! With several nodes on etcd every node puts what it saw in a shared inbox
//! and one node, the holder of a lock, keeps the outbox and delivers
//! (`shared`).

pub mod notice;
pub mod outbox;
pub mod send;
mod shared;

use crate::events::Event;
use crate::plane::Plane;
use bluegreen_core::config::notify::Hook;
use bluegreen_store::cluster::Cluster;
use bluegreen_store::StateStore;
use notice::{Notice, Said};
use outbox::{backoff, Outbox, Pending, KEY as OUTBOX_KEY};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// One attempt: the hook as configured then and what it answered (`None`:
/// the hook is no longer configured).
type Tried = Option<(Hook, Result<send::Answer, String>)>;

/// Notices one hook may have waiting; past it the oldest are given up.
const MAX_PENDING: usize = 10_000;

/// One hook's counts, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookCounts {
    pub delivered: u64,
    /// Attempts that failed (each is retried).
    pub failed: u64,
    /// Notices given up after `retry_for`.
    pub lost: u64,
    pub pending: u64,
}

/// A hook whose oldest waiting notice failed at least once: what `status`
/// shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookTrouble {
    pub hook: String,
    /// Notices waiting for it.
    pub pending: u64,
    /// Attempts made at the oldest.
    pub attempts: u32,
    /// When the oldest happened (Unix ms): it waits since then.
    pub oldest_ms: u64,
    pub last_error: String,
}

/// The notifier: its outbox, its counts, and what wakes its sender.
pub struct Notifier {
    plane: Arc<Plane>,
    store: Arc<dyn StateStore>,
    /// With several nodes: the shared store, where one node delivers.
    cluster: Option<Arc<dyn Cluster>>,
    node: String,
    /// What a notice's stable id starts with: this node, or with etcd the
    /// service's prefix (every node names one event alike).
    origin: String,
    outbox: tokio::sync::Mutex<Outbox>,
    counts: Mutex<BTreeMap<String, HookCounts>>,
    troubles: Mutex<Vec<HookTrouble>>,
    wake: tokio::sync::Notify,
    client: send::HookClient,
    /// This process delivers: always alone; with etcd while it holds the
    /// lock and has read the shared outbox; never while an upgrade hands
    /// the state to a new process (which delivers what waits).
    delivering: AtomicBool,
    paused: AtomicBool,
    /// The outbox in memory differs from the stored one (a write failed, or
    /// deliveries were written off since): written again at most once a
    /// second, and before new notices are sent.
    dirty: AtomicBool,
    /// An upgrade's handover failed: the new process may have written the
    /// outbox, which is read again before delivering on.
    reload: AtomicBool,
    /// Numbers notices without a stable key that this process makes.
    seq: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Notifier {
    /// Reads the outbox the store holds (what a previous run left).
    pub async fn open(
        plane: Arc<Plane>,
        store: Arc<dyn StateStore>,
        node: String,
    ) -> Result<Arc<Notifier>, String> {
        let s = store.clone();
        let cluster = store.cluster();
        // With etcd the outbox is read by the node that takes the lock.
        let alone = cluster.is_none();
        let outbox = tokio::task::spawn_blocking(move || {
            let outbox = if alone {
                bluegreen_store::load_json::<Outbox>(&*s, OUTBOX_KEY)
            } else {
                Ok(None)
            };
            // The system's CA roots are files: read here, off the async threads.
            (outbox, send::client())
        })
        .await
        .map_err(|e| e.to_string())?;
        let (outbox, client) = outbox;
        let outbox = outbox
            .map_err(|e| format!("the notify outbox in the state store: {e}"))?
            .unwrap_or_default();
        let origin = match &plane.config().state.etcd {
            Some(e) => e.prefix.trim_matches('/').replace('/', "-"),
            None => node.clone(),
        };
        let n = Arc::new(Notifier {
            plane,
            store,
            cluster,
            node,
            origin,
            outbox: tokio::sync::Mutex::new(outbox),
            counts: Mutex::new(BTreeMap::new()),
            troubles: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            client,
            delivering: AtomicBool::new(alone),
            paused: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            reload: AtomicBool::new(false),
            seq: AtomicU64::new(0),
        });
        n.recount(&*n.outbox.lock().await);
        Ok(n)
    }

    /// Each hook's counts now.
    pub fn counts(&self) -> BTreeMap<String, HookCounts> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn bump(&self, hook: &str, f: impl FnOnce(&mut HookCounts)) {
        if let Ok(mut c) = self.counts.lock() {
            f(c.entry(hook.to_string()).or_default());
        }
    }

    /// Hooks whose oldest notice failed (what `status` lists).
    pub fn troubles(&self) -> Vec<HookTrouble> {
        self.troubles.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Stops (`true`) or resumes delivery and outbox writes: an upgrade
    /// hands the outbox to the new process.
    pub fn pause(&self, on: bool) {
        if !on && self.paused.load(Ordering::SeqCst) && self.cluster.is_none() {
            self.reload.store(true, Ordering::SeqCst);
        }
        self.paused.store(on, Ordering::SeqCst);
        if !on {
            self.wake.notify_one();
        }
    }

    /// This node no longer delivers: what it counted as waiting is another
    /// node's now.
    fn stand_down(&self) {
        self.delivering.store(false, Ordering::SeqCst);
        if let Ok(mut c) = self.counts.lock() {
            for v in c.values_mut() {
                v.pending = 0;
            }
        }
        if let Ok(mut t) = self.troubles.lock() {
            t.clear();
        }
    }

    /// True while this process delivers (see `delivering`).
    pub fn delivers(&self) -> bool {
        self.delivering.load(Ordering::SeqCst) && !self.paused.load(Ordering::SeqCst)
    }

    /// The `pending` count of every hook, from the outbox.
    fn recount(&self, outbox: &Outbox) {
        let hooks: Vec<String> = self
            .plane
            .config()
            .notify
            .iter()
            .map(|h| h.name.clone())
            .collect();
        if let Ok(mut c) = self.counts.lock() {
            for h in hooks.iter().chain(outbox.pending.iter().map(|p| &p.hook)) {
                c.entry(h.clone()).or_default().pending = outbox.waiting(h) as u64;
            }
        }
        let troubles = outbox
            .heads()
            .into_iter()
            .map(|i| &outbox.pending[i])
            .filter(|p| p.attempts > 0)
            .map(|p| HookTrouble {
                hook: p.hook.clone(),
                pending: outbox.waiting(&p.hook) as u64,
                attempts: p.attempts,
                oldest_ms: p.notice.at_unix_ms,
                last_error: p.last_error.clone().unwrap_or_default(),
            })
            .collect();
        if let Ok(mut t) = self.troubles.lock() {
            *t = troubles;
        }
    }

    /// Writes the outbox (off the async threads); a failed write is logged
    /// and tried again at the next change. With etcd only the lock's holder
    /// writes it (false: the lock was lost, this node stops delivering),
    /// and it stays under `shared::MAX_BYTES` (the oldest go first).
    async fn persist(&self, outbox: &mut Outbox) -> bool {
        if self.paused.load(Ordering::SeqCst) {
            self.dirty.store(true, Ordering::SeqCst);
            return false;
        }
        let written = match &self.cluster {
            None => {
                let (store, copy) = (self.store.clone(), outbox.clone());
                tokio::task::spawn_blocking(move || {
                    bluegreen_store::save_json(&*store, OUTBOX_KEY, &copy).map(|()| true)
                })
                .await
            }
            Some(c) => {
                let bytes = shared::fit(outbox, |hook| self.bump(hook, |c| c.lost += 1));
                let c = c.clone();
                tokio::task::spawn_blocking(move || {
                    c.publish_as(shared::LOCK, OUTBOX_KEY, Some(bytes))
                })
                .await
            }
        };
        self.recount(outbox);
        let ok = match written {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                tracing::warn!(
                    "this node lost the notify lock: another node delivers the cluster's notices"
                );
                self.stand_down();
                false
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the notify outbox could not be written: a crash now would lose what waits");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "the notify outbox could not be written");
                false
            }
        };
        self.dirty.store(!ok, Ordering::SeqCst);
        ok
    }

    /// Writes the outbox if it changed since it was last written.
    async fn flush(&self) {
        if self.dirty.load(Ordering::SeqCst) && self.delivers() {
            let mut outbox = self.outbox.lock().await;
            self.persist(&mut outbox).await;
        }
    }

    /// Reads the outbox again after a failed handover (alone only).
    async fn reread(&self) {
        if !self.reload.swap(false, Ordering::SeqCst) {
            return;
        }
        let s = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            bluegreen_store::load_json::<Outbox>(&*s, OUTBOX_KEY)
        })
        .await;
        match read {
            Ok(Ok(stored)) => {
                // What the new process wrote, and what this one queued
                // meanwhile that the stored outbox never took in.
                let mut outbox = self.outbox.lock().await;
                let mine = std::mem::replace(&mut *outbox, stored.unwrap_or_default());
                let mut extra: Vec<Notice> = Vec::new();
                for p in mine.pending {
                    if !outbox.seen.contains(&p.notice.id)
                        && !extra.iter().any(|n| n.id == p.notice.id)
                    {
                        extra.push(p.notice);
                    }
                }
                self.take_in(&mut outbox, extra);
                self.persist(&mut outbox).await;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the notify outbox could not be read again after the handover: delivering from memory")
            }
            Err(e) => tracing::error!(error = %e, "the notify outbox could not be read again"),
        }
    }

    /// A notice for `d`, with its id: from its stable key when it has one,
    /// else from this node, the time and a number.
    fn notice(&self, d: notice::Draft, at: u64) -> Notice {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Notice {
            // A stable key (a deploy's start or end, a switch's
            // generation) gives the same id when a restarted process, or
            // another node, says it again.
            id: match &d.key {
                Some(k) => format!("{}-{k}", self.origin),
                None => format!("{}-{at}-{seq}", self.node),
            },
            kind: d.kind.to_string(),
            // The event's own time when it has one (the same on every
            // node: a cluster's notices are put in that order).
            at_unix_ms: d.at.unwrap_or(at),
            subject: d.subject,
            summary: d.summary,
            data: d.data,
        }
    }

    /// Puts `notices` in `outbox` for every hook that asks for their kind,
    /// except those it already took (by id). A hook holds at most
    /// `MAX_PENDING`: past that its oldest are given up (counted as lost).
    fn take_in(&self, outbox: &mut Outbox, notices: Vec<Notice>) -> usize {
        let hooks = self.plane.config().notify.clone();
        let mut taken = 0;
        for notice in notices {
            if !outbox.remember(&notice.id) {
                tracing::debug!(id = %notice.id, "a notice said again was not queued twice");
                continue;
            }
            taken += 1;
            for h in hooks.iter().filter(|h| h.events.contains(&notice.kind)) {
                outbox.pending.push(Pending {
                    hook: h.name.clone(),
                    notice: notice.clone(),
                    attempts: 0,
                    next_at_ms: 0,
                    last_error: None,
                });
                if outbox.waiting(&h.name) > MAX_PENDING {
                    if let Some(i) = outbox.pending.iter().position(|p| p.hook == h.name) {
                        let old = outbox.pending.remove(i);
                        tracing::error!(hook = %h.name, id = %old.notice.id, "more than {MAX_PENDING} notices wait for this hook: the oldest was given up");
                        self.bump(&h.name, |c| c.lost += 1);
                    }
                }
            }
        }
        taken
    }

    /// Queues `drafts` for every hook that asks for their kind: alone,
    /// written to the outbox before any is sent; with etcd, written to the
    /// shared inbox, for the delivering node to take in.
    async fn enqueue(&self, stop: &CancellationToken, drafts: Vec<notice::Draft>) {
        let hooks = self.plane.config().notify.clone();
        let wanted = |kind: &str| hooks.iter().any(|h| h.events.iter().any(|e| e == kind));
        let at = now_ms();
        let notices: Vec<Notice> = drafts
            .into_iter()
            .filter(|d| wanted(d.kind))
            .map(|d| self.notice(d, at))
            .collect();
        if notices.is_empty() {
            return;
        }
        if let Some(c) = &self.cluster {
            shared::post(c, stop, notices).await;
        } else {
            let mut outbox = self.outbox.lock().await;
            if self.take_in(&mut outbox, notices) > 0 {
                self.persist(&mut outbox).await;
            }
        }
        self.wake.notify_one();
    }

    /// Listens to the event stream (only while hooks are configured: a
    /// listener makes every event be built) and delivers, until `stop`.
    /// `rx`: a listener taken before the router started (so the first
    /// events are not missed while the outbox is read).
    pub fn spawn(
        self: &Arc<Self>,
        stop: CancellationToken,
        rx: Option<tokio::sync::broadcast::Receiver<Event>>,
    ) {
        // The listener only picks notices out (no I/O): it keeps up with
        // the event stream; the writer puts them in the outbox.
        let (tx, drafts) = tokio::sync::mpsc::unbounded_channel();
        let (me, s) = (self.clone(), stop.clone());
        tokio::spawn(async move { me.listen(s, rx, tx).await });
        let (me, s) = (self.clone(), stop.clone());
        tokio::spawn(async move { me.write(s, drafts).await });
        let me = self.clone();
        tokio::spawn(async move { me.deliver(stop).await });
    }

    async fn listen(
        &self,
        stop: CancellationToken,
        mut rx: Option<tokio::sync::broadcast::Receiver<Event>>,
        tx: tokio::sync::mpsc::UnboundedSender<Vec<notice::Draft>>,
    ) {
        let mut said = Said::default();
        loop {
            if self.plane.config().notify.is_empty() {
                rx = None;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            let r = rx.get_or_insert_with(|| self.plane.events.subscribe());
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = r.recv() => e,
                // Looks at the config again now and then.
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
            };
            match event {
                Ok(e) => {
                    let drafts = said.drafts(&e);
                    if !drafts.is_empty() && tx.send(drafts).is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::error!(
                        missed = n,
                        "the notifier fell behind the event stream: {n} events were not looked at"
                    )
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Puts what the listener picked in the outbox, in batches.
    async fn write(
        &self,
        stop: CancellationToken,
        mut drafts: tokio::sync::mpsc::UnboundedReceiver<Vec<notice::Draft>>,
    ) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                d = drafts.recv() => match d { Some(d) => d, None => return },
            };
            let mut batch = first;
            while let Ok(more) = drafts.try_recv() {
                batch.extend(more);
            }
            self.enqueue(&stop, batch).await;
        }
    }

    /// Sends each hook's first waiting notice when it is due, each hook on
    /// its own (one that stalls holds up only its own notices).
    async fn deliver(&self, stop: CancellationToken) {
        let mut flying = tokio::task::JoinSet::new();
        let mut busy = std::collections::BTreeSet::new();
        let mut lead = shared::Lead::default();
        let mut flushed = std::time::Instant::now();
        loop {
            if self.cluster.is_some() {
                self.lead(&mut lead).await;
            } else {
                self.reread().await;
            }
            // Deliveries are written off at most once a second (a backlog
            // drained is not the whole outbox written per notice): a
            // `kill -9` meanwhile sends those again, with their ids.
            if flushed.elapsed() >= Duration::from_secs(1) {
                self.flush().await;
                flushed = std::time::Instant::now();
            }
            if self.delivers() {
                self.start_due(&mut flying, &mut busy).await;
            }
            // Nothing waits (alone): no reason to look five times a second;
            // a new notice wakes the loop.
            let idle = self.cluster.is_none()
                && flying.is_empty()
                && !self.dirty.load(Ordering::SeqCst)
                && self.outbox.lock().await.pending.is_empty();
            let tick = Duration::from_millis(if idle { 5_000 } else { 200 });
            tokio::select! {
                _ = stop.cancelled() => {
                    self.flush().await;
                    self.step_down().await;
                    return;
                }
                Some(done) = flying.join_next(), if !flying.is_empty() => {
                    if let Ok((p, tried)) = done {
                        busy.remove(&p.hook);
                        self.settle(p, tried).await;
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Starts an attempt for every hook with a due head and none in flight.
    async fn start_due(
        &self,
        flying: &mut tokio::task::JoinSet<(Pending, Tried)>,
        busy: &mut std::collections::BTreeSet<String>,
    ) {
        let config = self.plane.config();
        let due: Vec<Pending> = {
            let outbox = self.outbox.lock().await;
            let now = now_ms();
            outbox
                .heads()
                .into_iter()
                .map(|i| &outbox.pending[i])
                .filter(|p| p.next_at_ms <= now && !busy.contains(&p.hook))
                .cloned()
                .collect()
        };
        for p in due {
            busy.insert(p.hook.clone());
            let Some(hook) = config.notify.iter().find(|h| h.name == p.hook).cloned() else {
                // A hook removed from the config: what waits for it goes.
                flying.spawn(async move { (p, None) });
                continue;
            };
            let (client, node) = (self.client.clone(), self.node.clone());
            flying.spawn(async move {
                let r = send::attempt(&client, &hook, &p.notice, &node).await;
                (p, Some((hook, r)))
            });
        }
    }

    /// Writes one attempt's result into the outbox: delivered, retried
    /// later, or given up (past `retry_for`, or refused for good: a 4xx
    /// other than 408, 425 and 429, or a redirect).
    async fn settle(&self, p: Pending, tried: Tried) {
        // Stood down (the lock lost) or handing over: the answer is
        // another process's to write; the notice is sent again (same id).
        if !self.delivers() {
            return;
        }
        let mut outbox = self.outbox.lock().await;
        let Some(i) = outbox
            .pending
            .iter()
            .position(|q| q.hook == p.hook && q.notice.id == p.notice.id)
        else {
            return;
        };
        match tried {
            None => {
                tracing::warn!(hook = %p.hook, id = %p.notice.id, "a notice for a hook no longer configured was dropped");
                outbox.pending.remove(i);
                self.bump(&p.hook, |c| c.lost += 1);
            }
            Some((_, Ok(a))) if (200..300).contains(&a.status) => {
                outbox.pending.remove(i);
                self.bump(&p.hook, |c| c.delivered += 1);
            }
            Some((hook, r)) => {
                let permanent = matches!(&r, Ok(a) if (300..500).contains(&a.status) && ![408, 425, 429].contains(&a.status));
                let why = match r {
                    Ok(a) => format!("answered {}: {}", a.status, a.body.trim()),
                    Err(e) => e,
                };
                self.bump(&p.hook, |c| c.failed += 1);
                let now = now_ms();
                let window = hook.retry_for.as_millis() as u64;
                if permanent || now.saturating_sub(p.notice.at_unix_ms) >= window {
                    let reason = if permanent {
                        "refused for good (a redirect or a 4xx other than 408, 425, 429)"
                            .to_string()
                    } else {
                        format!(
                            "given up after notify.retry_for ({})",
                            humantime::format_duration(hook.retry_for)
                        )
                    };
                    tracing::error!(hook = %p.hook, id = %p.notice.id, kind = %p.notice.kind, attempts = p.attempts + 1, "a notice was {reason}: {why}");
                    outbox.pending.remove(i);
                    self.bump(&p.hook, |c| c.lost += 1);
                    // Those behind it that are past the window too go
                    // without an attempt each.
                    let before = outbox.pending.len();
                    outbox.pending.retain(|q| {
                        q.hook != p.hook || now.saturating_sub(q.notice.at_unix_ms) < window
                    });
                    let expired = (before - outbox.pending.len()) as u64;
                    if expired > 0 {
                        tracing::error!(hook = %p.hook, "{expired} more notices were past notify.retry_for and given up");
                        self.bump(&p.hook, |c| c.lost += expired);
                    }
                } else {
                    let q = &mut outbox.pending[i];
                    q.attempts += 1;
                    q.next_at_ms = now + backoff(q.attempts, jitter()).as_millis() as u64;
                    if q.attempts == 1 || q.attempts % 10 == 0 {
                        tracing::warn!(hook = %p.hook, id = %p.notice.id, attempts = q.attempts, "a notice could not be delivered yet (retried): {why}");
                    }
                    q.last_error = Some(why);
                }
            }
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.recount(&outbox);
        drop(outbox);
        self.wake.notify_one();
    }

    /// Sends a sample notice to `hook` now (not through the outbox): what
    /// `bluegreen notify test` prints.
    pub async fn test(&self, hook: &str) -> Result<send::Answer, String> {
        let config = self.plane.config();
        let Some(h) = config.notify.iter().find(|h| h.name == hook) else {
            let names: Vec<&str> = config.notify.iter().map(|h| h.name.as_str()).collect();
            return Err(format!(
                "no [[notify]] hook named {hook:?} (the hooks: {names:?})"
            ));
        };
        let at = now_ms();
        let notice = Notice {
            id: format!("{}-{at}-test", self.node),
            kind: "test".into(),
            at_unix_ms: at,
            subject: None,
            summary: format!(
                "a test notice from bluegreen on {} (bluegreen notify test {hook})",
                self.node
            ),
            data: serde_json::json!({ "test": true }),
        };
        send::attempt(&self.client, h, &notice, &self.node).await
    }
}

/// A number in [0, 1) from the system's randomness.
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b) as f64 / (u32::MAX as f64 + 1.0)
}
