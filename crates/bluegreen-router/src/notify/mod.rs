//! Telling people and systems (`[[notify]]`): the notices the event stream
//! makes (`notice`), kept in a durable outbox in the state store
//! (`outbox`) and delivered to each hook in order, off the request path and
//! off the pipeline's, retried with backoff until the hook's `retry_for`
//! (`send`). At-least-once: a receiver de-duplicates by the notice's id.

pub mod notice;
pub mod outbox;
pub mod send;

use crate::events::Event;
use crate::plane::Plane;
use bluegreen_core::config::notify::Hook;
use bluegreen_store::StateStore;
use notice::{Notice, Said};
use outbox::{backoff, Outbox, Pending, KEY as OUTBOX_KEY};
use std::collections::BTreeMap;
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

/// The notifier: its outbox, its counts, and what wakes its sender.
pub struct Notifier {
    plane: Arc<Plane>,
    store: Arc<dyn StateStore>,
    node: String,
    outbox: tokio::sync::Mutex<Outbox>,
    counts: Mutex<BTreeMap<String, HookCounts>>,
    wake: tokio::sync::Notify,
    client: send::HookClient,
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
        let outbox = tokio::task::spawn_blocking(move || {
            let outbox = bluegreen_store::load_json::<Outbox>(&*s, OUTBOX_KEY);
            // The system's CA roots are files: read here, off the async threads.
            (outbox, send::client())
        })
        .await
        .map_err(|e| e.to_string())?;
        let (outbox, client) = outbox;
        let outbox = outbox
            .map_err(|e| format!("the notify outbox in the state store: {e}"))?
            .unwrap_or_default();
        let n = Arc::new(Notifier {
            plane,
            store,
            node,
            outbox: tokio::sync::Mutex::new(outbox),
            counts: Mutex::new(BTreeMap::new()),
            wake: tokio::sync::Notify::new(),
            client,
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
    }

    /// Writes the outbox (off the async threads); a failed write is logged
    /// and tried again at the next change.
    async fn persist(&self, outbox: &Outbox) {
        let (store, copy) = (self.store.clone(), outbox.clone());
        let written = tokio::task::spawn_blocking(move || {
            bluegreen_store::save_json(&*store, OUTBOX_KEY, &copy)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the notify outbox could not be written: a crash now would lose what waits")
            }
            Err(e) => tracing::error!(error = %e, "the notify outbox could not be written"),
        }
        self.recount(outbox);
    }

    /// Queues `drafts` for every hook that asks for their kind, written to
    /// the store before any is sent. A hook holds at most `MAX_PENDING`:
    /// past that its oldest are given up (counted as lost).
    async fn enqueue(&self, drafts: Vec<notice::Draft>) {
        let hooks = self.plane.config().notify.clone();
        let wanted = |kind: &str| hooks.iter().any(|h| h.events.iter().any(|e| e == kind));
        if !drafts.iter().any(|d| wanted(d.kind)) {
            return;
        }
        let mut outbox = self.outbox.lock().await;
        let at = now_ms();
        for d in drafts {
            let seq = outbox.next_seq;
            outbox.next_seq += 1;
            let notice = Notice {
                // A stable key (a deploy's start or end) gives the same id
                // when a restarted process says it again.
                id: match &d.key {
                    Some(k) => format!("{}-{k}", self.node),
                    None => format!("{}-{at}-{seq}", self.node),
                },
                kind: d.kind.to_string(),
                at_unix_ms: at,
                subject: d.subject,
                summary: d.summary,
                data: d.data,
            };
            for h in hooks
                .iter()
                .filter(|h| h.events.iter().any(|e| e == d.kind))
            {
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
        self.persist(&outbox).await;
        drop(outbox);
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
            self.enqueue(batch).await;
        }
    }

    /// Sends each hook's first waiting notice when it is due, each hook on
    /// its own (one that stalls holds up only its own notices).
    async fn deliver(&self, stop: CancellationToken) {
        let mut flying = tokio::task::JoinSet::new();
        let mut busy = std::collections::BTreeSet::new();
        loop {
            self.start_due(&mut flying, &mut busy).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(done) = flying.join_next(), if !flying.is_empty() => {
                    if let Ok((p, tried)) = done {
                        busy.remove(&p.hook);
                        self.settle(p, tried).await;
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
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
        self.persist(&outbox).await;
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
