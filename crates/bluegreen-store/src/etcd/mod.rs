//! The etcd store: the state shared by every router node of a service,
//! under one prefix. Reads and conditional writes go straight to etcd; a
//! background session keeps this node's lease alive, mirrors the prefix
//! through a watch (reading everything again at a revision after any
//! break or compaction, then watching from the next one), and writes the
//! node's report. It runs on a runtime of its own, so the blocking
//! [`StateStore`] calls work from any thread and etcd's latency never sits
//! on the request path's workers.

pub mod client;
pub mod compact;
#[cfg(feature = "testing")]
pub mod testing;

use crate::cluster::{lock_holder, lock_key, node_key, Cluster, Link, Lock, Versioned, View};
use crate::{StateStore, StoreError};
use bluegreen_core::config::EtcdConfig;
use client::{Client, EtcdError, WatchMessage};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};

/// Longest wait for one blocking call.
const CALL_WAIT: Duration = Duration::from_secs(10);

/// State in etcd, shared by the nodes of one service.
pub struct EtcdStore {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    client: Client,
    prefix: String,
    node: String,
    converge_timeout: Duration,
    lease_ttl: Duration,
    /// How often the holder of the `compact` lock compacts (`None`: never).
    compact_every: Option<Duration>,
    keep_revisions: u64,
    /// The revision this process last compacted to.
    compacted: AtomicI64,
    /// The revision each key's next write is conditional on.
    expected: Mutex<HashMap<String, i64>>,
    view: watch::Sender<View>,
    /// This node's lease in the current session (0: none).
    lease: AtomicI64,
    /// The report to write, and a nudge to write it.
    report: Mutex<Option<Vec<u8>>>,
    reported: Notify,
    /// The store's own runtime.
    handle: tokio::runtime::Handle,
    /// Locks this process holds, by name: the token stored as their value
    /// (empty while being taken).
    held: Mutex<HashMap<String, String>>,
    /// `node#instance`: what this process writes into a lock it takes.
    token: String,
    /// Itself, for futures that outlive a borrow.
    me: std::sync::OnceLock<std::sync::Weak<Inner>>,
}

impl EtcdStore {
    /// Connects (waiting up to `patience` for etcd to answer) and starts the
    /// session. A node that cannot reach etcd at start has no state to
    /// serve, so this fails rather than start on nothing.
    pub fn open(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let client = Client::new(config).map_err(|e| StoreError::Etcd {
            endpoints: config.endpoints.join(", "),
            reason: e,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                endpoints: config.endpoints.join(", "),
                reason: format!("cannot start its runtime: {e}"),
            })?;
        let (view, _) = watch::channel(View {
            revision: 0,
            values: BTreeMap::new(),
            link: Link::Connecting,
        });
        let inner = Arc::new(Inner {
            client,
            prefix: format!("{}/", config.prefix),
            node: config.node.clone(),
            converge_timeout: config.converge_timeout,
            lease_ttl: config.lease_ttl,
            compact_every: config.compact_every,
            keep_revisions: config.keep_revisions,
            compacted: AtomicI64::new(0),
            expected: Mutex::new(HashMap::new()),
            view,
            lease: AtomicI64::new(0),
            report: Mutex::new(None),
            reported: Notify::new(),
            handle: runtime.handle().clone(),
            me: std::sync::OnceLock::new(),
            held: Mutex::new(HashMap::new()),
            token: format!("{}#{}-{}", config.node, std::process::id(), now_ms()),
        });
        let _ = inner.me.set(Arc::downgrade(&inner));
        let store = EtcdStore {
            inner: inner.clone(),
            runtime: Some(runtime),
        };
        // Reachable now, or a clear error.
        let probe = inner.clone();
        store
            .inner
            .block(async move { probe.client.range(&probe.key("state"), false).await })?;
        store.inner.handle.spawn(session_loop(inner));
        Ok(store)
    }

    /// The shared side (views, reports, locks).
    pub fn cluster(&self) -> Arc<dyn Cluster> {
        self.inner.clone()
    }

    /// `bluegreen check`: whether etcd answers, its size, and whether its
    /// history is compacted. Blocking (its own short-lived runtime).
    pub fn health(config: &EtcdConfig) -> Result<compact::Health, StoreError> {
        let failed = |reason: String| StoreError::Etcd {
            endpoints: config.endpoints.join(", "),
            reason,
        };
        let client = Client::new(config).map_err(failed)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
        runtime
            .block_on(async {
                tokio::time::timeout(CALL_WAIT, compact::health(&client, &config.prefix)).await
            })
            .map_err(|_| failed(format!("no answer within {CALL_WAIT:?}")))?
            .map_err(|e| failed(e.to_string()))
    }

    /// Forgets revisions before the current one (tests, and operators who
    /// script etcd's compaction).
    pub fn compact_now(&self) -> Result<i64, StoreError> {
        let inner = self.inner.clone();
        self.inner.block(async move {
            let (rev, _) = inner.client.range(&inner.key("state"), false).await?;
            inner.client.compact(rev).await?;
            Ok(rev)
        })
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // The lease goes at once: other nodes stop waiting for this one.
        let inner = self.inner.clone();
        let lease = inner.lease.swap(0, Ordering::SeqCst);
        if lease != 0 {
            let _ = self
                .inner
                .block(async move { inner.client.revoke(lease).await });
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl StateStore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.inner.clone();
        let full = inner.key(key);
        let (_, kvs) = self
            .inner
            .block(async move { inner.client.range(&full, false).await })?;
        let found = kvs.into_iter().next();
        self.inner
            .set_expected(key, found.as_ref().map_or(0, |kv| kv.mod_revision));
        Ok(found.map(|kv| kv.value))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if matches!(self.inner.view.borrow().link, Link::Down { .. }) {
            // Known down: say so without waiting for timeouts.
            let link = self.inner.view.borrow().link.clone();
            if let Link::Down { error, .. } = link {
                return Err(StoreError::Etcd {
                    endpoints: self.inner.client.endpoints(),
                    reason: error,
                });
            }
        }
        let expected = self.inner.revision(key);
        let inner = self.inner.clone();
        let full = inner.key(key);
        let bytes = value.to_vec();
        let written = self.inner.block(async move {
            match inner.client.put_if(&full, &bytes, expected, None).await {
                // No answer is not "not written": the transaction may have
                // landed. What is stored says which.
                Err(EtcdError::Unreachable(why)) => match inner.client.range(&full, false).await {
                    Ok((_, kvs)) => Ok(kvs
                        .into_iter()
                        .next()
                        .filter(|kv| kv.value == bytes)
                        .map(|kv| kv.mod_revision)),
                    Err(_) => Err(EtcdError::Unreachable(why)),
                },
                other => other,
            }
        })?;
        match written {
            Some(revision) => {
                self.inner.set_expected(key, revision);
                self.inner.seen(key, revision, value.to_vec());
                Ok(())
            }
            None => Err(StoreError::Conflict {
                key: self.locate(key).display().to_string(),
            }),
        }
    }

    fn locate(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("etcd:{}", self.inner.key(key)))
    }

    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        Some(self.inner.clone())
    }
}

impl Inner {
    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn set_expected(&self, key: &str, revision: i64) {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), revision);
    }

    /// A value this node wrote: in the view at once, before the watch says so.
    fn seen(&self, key: &str, revision: i64, value: Vec<u8>) {
        self.view.send_modify(|v| {
            let newer = v.values.get(key).is_none_or(|old| old.revision < revision);
            if newer {
                v.values.insert(
                    key.to_string(),
                    Versioned {
                        revision,
                        value: Arc::new(value),
                    },
                );
            }
        });
    }

    fn set_link(&self, link: Link) {
        self.view.send_if_modified(|v| {
            let changed = match (&v.link, &link) {
                (Link::Down { .. }, Link::Down { .. }) => false,
                (a, b) => a != b,
            };
            if changed {
                v.link = link;
            }
            changed
        });
    }

    /// Runs `f` on the store's runtime and waits for it. Blocks: call it
    /// from a blocking thread (as every `StateStore` call is made).
    fn block<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, EtcdError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        // The deadline is kept on the runtime: a call given up on is
        // cancelled there, not left to land later.
        self.handle.spawn(async move {
            let r = tokio::time::timeout(CALL_WAIT, f)
                .await
                .unwrap_or_else(|_| {
                    Err(EtcdError::Unreachable(format!(
                        "no answer within {CALL_WAIT:?}"
                    )))
                });
            let _ = tx.send(r);
        });
        let endpoints = self.client.endpoints();
        match rx.recv() {
            Ok(r) => r.map_err(|e| StoreError::Etcd {
                endpoints,
                reason: e.to_string(),
            }),
            Err(_) => Err(StoreError::Etcd {
                endpoints,
                reason: "the store's runtime stopped".into(),
            }),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Cluster for Inner {
    fn node(&self) -> &str {
        &self.node
    }

    fn converge_timeout(&self) -> Duration {
        self.converge_timeout
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} (prefix {})",
            self.client.endpoints(),
            self.prefix.trim_end_matches('/')
        )
    }

    fn view(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    fn adopt(&self, key: &str, revision: i64) {
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        let e = expected.entry(key.to_string()).or_default();
        *e = (*e).max(revision);
    }

    fn revision(&self, key: &str) -> i64 {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn report(&self, report: Vec<u8>) {
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        self.reported.notify_one();
    }

    fn try_lock(&self, name: &str) -> Result<Lock, StoreError> {
        let lease = self.lease.load(Ordering::SeqCst);
        if lease == 0 {
            return Err(StoreError::Etcd {
                endpoints: self.client.endpoints(),
                reason: "this node has no session with etcd now".into(),
            });
        }
        // One activity of this process at a time: a placeholder is in the
        // map while the transaction runs.
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.contains_key(name) {
                return Ok(Lock::HeldHere);
            }
            held.insert(name.to_string(), String::new());
        }
        let key = self.key(&lock_key(name));
        let token = self.token.clone();
        let me = self.self_arc();
        let result = self.block(async move {
            let free = json!({"key": b64(&key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"});
            let put = json!({"request_put": {"key": b64(&key), "value": b64(&token), "lease": lease.to_string()}});
            let taken = me.client.txn(vec![free], vec![put]).await;
            // Whatever the answer (or none), what is stored decides: a
            // transaction retried after a lost answer finds its own token.
            let (_, kvs) = match (taken, me.client.range(&key, false).await) {
                (_, Ok(r)) => r,
                (Err(e), Err(_)) | (Ok(_), Err(e)) => return Err(e),
            };
            Ok(kvs.into_iter().next().map(|kv| kv.value))
        });
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(Some(value)) if value == self.token.as_bytes() => {
                held.insert(name.to_string(), self.token.clone());
                Ok(Lock::Taken)
            }
            Ok(value) => {
                held.remove(name);
                Ok(Lock::HeldBy(match value {
                    Some(v)
                        if String::from_utf8_lossy(&v).starts_with(&format!("{}#", self.node)) =>
                    {
                        format!(
                            "{} (an earlier process of this node, until its lease ends)",
                            self.node
                        )
                    }
                    Some(v) => lock_holder(&v),
                    None => "nobody (it was freed meanwhile; try again)".into(),
                }))
            }
            Err(e) => {
                held.remove(name);
                // The transaction may still land: undo it if it does.
                let (key, token, me) = (
                    self.key(&lock_key(name)),
                    self.token.clone(),
                    self.self_arc(),
                );
                self.handle.spawn(async move {
                    let _ = me.client.delete_if(&key, token.as_bytes()).await;
                });
                Err(e)
            }
        }
    }

    fn publish_as(
        &self,
        lock: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let Some(token) = self.token_of(lock) else {
            return Ok(false);
        };
        let (full, lock_full, me) = (self.key(key), self.key(&lock_key(lock)), self.self_arc());
        let bytes = value.clone();
        let written = self.block(async move {
            let held = json!({"key": b64(&lock_full), "target": "VALUE", "value": b64(&token), "result": "EQUAL"});
            let op = match &bytes {
                Some(b) => json!({"request_put": {"key": b64(&full), "value": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)}}),
                None => json!({"request_delete_range": {"key": b64(&full)}}),
            };
            me.client.txn(vec![held], vec![op]).await
        })?;
        if let (Some(r), Some(v)) = (written, value) {
            self.seen(key, r, v);
        }
        Ok(written.is_some())
    }

    fn clear_as(&self, lock: &str, dir: &str) -> Result<bool, StoreError> {
        let Some(token) = self.token_of(lock) else {
            return Ok(false);
        };
        let (from, lock_full, me) = (
            self.key(&format!("{dir}/")),
            self.key(&lock_key(lock)),
            self.self_arc(),
        );
        let written = self.block(async move {
            let held = json!({"key": b64(&lock_full), "target": "VALUE", "value": b64(&token), "result": "EQUAL"});
            let end = client::prefix_end(&from);
            let op = json!({"request_delete_range": {"key": b64(&from), "range_end": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, end)}});
            me.client.txn(vec![held], vec![op]).await
        })?;
        Ok(written.is_some())
    }

    fn publish_own(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let lease = self.lease.load(Ordering::SeqCst);
        if lease == 0 {
            return Err(StoreError::Etcd {
                endpoints: self.client.endpoints(),
                reason: "this node has no session with etcd now".into(),
            });
        }
        let (full, me) = (self.key(key), self.self_arc());
        self.block(async move { me.client.put(&full, &value, Some(lease)).await.map(|_| ()) })
    }

    fn put_record(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let (full, me) = (self.key(key), self.self_arc());
        self.block(async move {
            match value {
                Some(v) => me.client.put(&full, &v, None).await.map(|_| ()),
                None => me.client.delete(&full).await,
            }
        })
    }

    fn create_record(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let (full, me) = (self.key(key), self.self_arc());
        self.block(async move {
            me.client
                .put_if(&full, &value, 0, None)
                .await
                .map(|r| r.is_some())
        })
    }

    fn peek(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (full, me) = (self.key(key), self.self_arc());
        let (_, kvs) = self.block(async move { me.client.range(&full, false).await })?;
        Ok(kvs.into_iter().next().map(|kv| kv.value))
    }

    fn holds(&self, name: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|t| !t.is_empty())
    }

    fn unlock(&self, name: &str) -> Result<(), StoreError> {
        let token = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(());
        };
        let key = self.key(&lock_key(name));
        let me = self.self_arc();
        self.block(async move { me.client.delete_if(&key, token.as_bytes()).await })
    }
}

impl Inner {
    /// The token this process holds `lock` with, if it does.
    fn token_of(&self, lock: &str) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(lock)
            .filter(|t| !t.is_empty())
            .cloned()
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Inner {
    /// An owning handle for futures sent to the runtime.
    fn self_arc(&self) -> Arc<Inner> {
        self.me
            .get()
            .and_then(std::sync::Weak::upgrade)
            .expect("the store is alive while called")
    }
}

/// Keeps a session with etcd for as long as the store lives: after any
/// failure the link is marked down (the node serves what it applied last)
/// and a new session starts, backing off up to two seconds.
async fn session_loop(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        let err = session(&inner).await;
        inner.lease.store(0, Ordering::SeqCst);
        // Said once when the link goes; retries while down are quiet.
        if matches!(inner.view.borrow().link, Link::Down { .. }) {
            tracing::debug!(error = %err, "etcd still unreachable");
        } else {
            tracing::warn!(error = %err, etcd = %inner.client.endpoints(), "lost the etcd session; serving the last applied state until it is back");
        }
        inner.set_link(Link::Down {
            since_ms: now_ms(),
            error: err.to_string(),
        });
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One session: a lease, the locks this process holds moved onto it, the
/// whole prefix read at a revision, then the watch from the next revision,
/// with the lease renewed and the report written beside it. Returns why it
/// ended; its tasks are stopped and its lease revoked before it returns, so
/// nothing of it lands after the next session began.
async fn session(inner: &Arc<Inner>) -> EtcdError {
    let lease = match inner.client.grant(inner.lease_ttl).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    inner.lease.store(lease, Ordering::SeqCst);
    if let Err(e) = reattach_locks(inner, lease).await {
        return end_session(inner, lease, Vec::new(), e).await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<EtcdError>(2);
    let mut tasks = vec![
        tokio::spawn(keep_alive(
            inner.clone(),
            lease,
            stop.clone(),
            failed_tx.clone(),
        )),
        tokio::spawn(write_reports(inner.clone(), lease, stop.clone(), failed_tx)),
    ];
    if let Some(every) = inner.compact_every {
        tasks.push(tokio::spawn(compact::compactor(
            inner.clone(),
            lease,
            every,
            stop.clone(),
        )));
    }
    let why = follow(inner, &mut failed).await;
    stop.cancel();
    end_session(inner, lease, tasks, why).await
}

/// Stops the session's tasks and revokes its lease (best effort: a lease
/// not revoked expires by itself).
async fn end_session(
    inner: &Arc<Inner>,
    lease: i64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    why: EtcdError,
) -> EtcdError {
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    inner.lease.store(0, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(1), inner.client.revoke(lease)).await;
    why
}

/// Moves every lock this process holds onto the new lease; a lock whose
/// old lease already expired (someone else may hold it now) is lost.
async fn reattach_locks(inner: &Arc<Inner>, lease: i64) -> Result<(), EtcdError> {
    let held: Vec<(String, String)> = inner
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    for (name, token) in held {
        let kept = inner
            .client
            .reattach(&inner.key(&lock_key(&name)), token.as_bytes(), lease)
            .await?;
        if !kept {
            tracing::error!(lock = %name, "lost the {name} lock: its lease expired before etcd was reachable again");
            inner
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
        }
    }
    Ok(())
}

/// Renews the lease at a third of its life. Every third renewal also checks
/// the watch against a fresh read: a watch that silently stopped (a member
/// cut off without its connection breaking) leaves a change etcd had at one
/// check still missing from the view at the next; the session then starts
/// anew. (A change merely in flight at a check has arrived by the next.)
async fn keep_alive(
    inner: Arc<Inner>,
    lease: i64,
    stop: tokio_util::sync::CancellationToken,
    failed: tokio::sync::mpsc::Sender<EtcdError>,
) {
    let mut tick = tokio::time::interval(inner.lease_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    // Keys etcd had newer than the view at the last check, and their revisions.
    let mut ahead: Vec<(String, i64)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let outcome = match inner.client.keep_alive(lease).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(EtcdError::Unreachable("this node's lease expired".into())),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            let _ = failed.try_send(e);
            return;
        }
        if !n.is_multiple_of(3) {
            continue;
        }
        let Ok((_, kvs)) = inner.client.range(&inner.prefix, true).await else {
            continue;
        };
        let (stuck, now_ahead) = {
            let v = inner.view.borrow();
            // A key the view lacks is behind only if the view has not
            // reached its revision (it may have been deleted since: a
            // notice's inbox entry lives a moment).
            let behind = |rel: &str, revision: i64| match v.values.get(rel) {
                Some(seen) => seen.revision < revision,
                None => v.revision < revision,
            };
            let stuck = ahead.iter().any(|(rel, revision)| behind(rel, *revision));
            let now_ahead: Vec<(String, i64)> = kvs
                .iter()
                .filter_map(|kv| {
                    let key = String::from_utf8_lossy(&kv.key);
                    let rel = key.strip_prefix(&inner.prefix)?.to_string();
                    behind(&rel, kv.mod_revision).then_some((rel, kv.mod_revision))
                })
                .collect();
            (stuck, now_ahead)
        };
        if stuck {
            let _ = failed.try_send(EtcdError::Unreachable(
                "the watch stopped delivering changes".into(),
            ));
            return;
        }
        ahead = now_ahead;
    }
}

/// Writes this node's report with the lease: once at the start of the
/// session, then on every change.
async fn write_reports(
    inner: Arc<Inner>,
    lease: i64,
    stop: tokio_util::sync::CancellationToken,
    failed: tokio::sync::mpsc::Sender<EtcdError>,
) {
    loop {
        let report = inner
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(r) = report {
            if stop.is_cancelled() {
                return;
            }
            let key = inner.key(&node_key(&inner.node));
            match inner.client.put(&key, &r, Some(lease)).await {
                Ok(_) => {}
                // Only a lost etcd ends the session; a report etcd refuses
                // (too large, say) is logged and the next one tried.
                Err(e @ EtcdError::Unreachable(_)) => {
                    let _ = failed.try_send(e);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "this node's report was refused"),
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = inner.reported.notified() => {}
        }
    }
}

/// Everything at one revision, then every change after it; again from a
/// fresh read after a compaction. Returns why it stopped.
async fn follow(
    inner: &Arc<Inner>,
    failed: &mut tokio::sync::mpsc::Receiver<EtcdError>,
) -> EtcdError {
    loop {
        let (revision, kvs) = match inner.client.range(&inner.prefix, true).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let values: BTreeMap<String, Versioned> = kvs
            .into_iter()
            .filter_map(|kv| {
                let key = String::from_utf8(kv.key).ok()?;
                let rel = key.strip_prefix(&inner.prefix)?.to_string();
                Some((
                    rel,
                    Versioned {
                        revision: kv.mod_revision,
                        value: Arc::new(kv.value),
                    },
                ))
            })
            .collect();
        inner.view.send_modify(|v| {
            // What this node wrote after the range was read stays.
            let mut values = values;
            for (k, old) in &v.values {
                if old.revision > revision {
                    values.insert(k.clone(), old.clone());
                }
            }
            v.revision = revision;
            v.values = values;
            v.link = Link::Up;
        });
        let mut watch = match inner.client.watch(&inner.prefix, revision + 1).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        loop {
            let message = tokio::select! {
                m = watch.next() => m,
                Some(e) = failed.recv() => return e,
            };
            match message {
                Err(e) => return e,
                Ok(WatchMessage::Compacted(at)) => {
                    tracing::info!(
                        compacted = at,
                        "etcd compacted past our watch; reading the prefix again"
                    );
                    break;
                }
                Ok(WatchMessage::Canceled(why)) => {
                    return EtcdError::Unreachable(format!("watch canceled: {why}"))
                }
                Ok(WatchMessage::Events { revision, events }) => apply(inner, revision, events),
            }
        }
    }
}

/// Changes seen by the watch, into the view.
fn apply(inner: &Inner, revision: i64, events: Vec<client::Event>) {
    inner.view.send_modify(|v| {
        for e in events {
            let Ok(key) = String::from_utf8(e.kv.key) else {
                continue;
            };
            let Some(rel) = key.strip_prefix(&inner.prefix) else {
                continue;
            };
            // Never backwards: this node's own write may be in the view
            // already, ahead of the watch.
            let older = v
                .values
                .get(rel)
                .is_some_and(|old| old.revision > e.kv.mod_revision);
            if e.deleted && !older {
                v.values.remove(rel);
            } else if !older {
                v.values.insert(
                    rel.to_string(),
                    Versioned {
                        revision: e.kv.mod_revision,
                        value: Arc::new(e.kv.value),
                    },
                );
            }
        }
        v.revision = v.revision.max(revision);
    });
}
