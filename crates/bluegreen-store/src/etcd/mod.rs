//! The etcd store: the state shared by every router node of a service,
//! under one prefix. Reads and conditional writes go straight to etcd; a
//! background session keeps this node's lease alive, mirrors the prefix
//! through a watch (reading everything again at a revision after any
//! break or compaction, then watching from the next one), and writes the
//! node's report. It runs on a runtime of its own, so the blocking
//! [`StateStore`] calls work from any thread and etcd's latency never sits
//! on the request path's workers.

pub mod client;
#[cfg(feature = "testing")]
pub mod testing;

use crate::cluster::{lock_key, node_key, Cluster, Link, Versioned, View};
use crate::{StateStore, StoreError};
use bluegreen_core::config::EtcdConfig;
use client::{Client, EtcdError, WatchMessage};
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
            expected: Mutex::new(HashMap::new()),
            view,
            lease: AtomicI64::new(0),
            report: Mutex::new(None),
            reported: Notify::new(),
            handle: runtime.handle().clone(),
            me: std::sync::OnceLock::new(),
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
        let written = self
            .inner
            .block(async move { inner.client.put_if(&full, &bytes, expected, None).await })?;
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
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        let endpoints = self.client.endpoints();
        match rx.recv_timeout(CALL_WAIT) {
            Ok(r) => r.map_err(|e| StoreError::Etcd {
                endpoints,
                reason: e.to_string(),
            }),
            Err(_) => Err(StoreError::Etcd {
                endpoints,
                reason: format!("no answer within {CALL_WAIT:?}"),
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
        self.set_expected(key, revision);
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

    fn try_lock(&self, name: &str) -> Result<Option<String>, StoreError> {
        let lease = self.lease.load(Ordering::SeqCst);
        let key = self.key(&lock_key(name));
        let node = self.node.clone();
        let endpoints = self.client.endpoints();
        if lease == 0 {
            return Err(StoreError::Etcd {
                endpoints,
                reason: "this node has no session with etcd yet".into(),
            });
        }
        let me = self.self_arc();
        self.block(async move {
            use base64::Engine;
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            // Ours already, or free: take it with our lease.
            let mine = serde_json::json!({"key": b64(&key), "target": "VALUE", "value": b64(&node), "result": "EQUAL"});
            if me.client.txn(vec![mine], vec![]).await?.is_some() {
                return Ok(None);
            }
            let free = serde_json::json!({"key": b64(&key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"});
            let put = serde_json::json!({"request_put": {"key": b64(&key), "value": b64(&node), "lease": lease.to_string()}});
            if me.client.txn(vec![free], vec![put]).await?.is_some() {
                return Ok(None);
            }
            let (_, kvs) = me.client.range(&key, false).await?;
            Ok(Some(
                kvs.into_iter()
                    .next()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                    .unwrap_or_else(|| "another node".into()),
            ))
        })
    }

    fn unlock(&self, name: &str) -> Result<(), StoreError> {
        let key = self.key(&lock_key(name));
        let node = self.node.clone();
        let me = self.self_arc();
        self.block(async move {
            use base64::Engine;
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let mine = serde_json::json!({"key": b64(&key), "target": "VALUE", "value": b64(&node), "result": "EQUAL"});
            let delete = serde_json::json!({"request_delete_range": {"key": b64(&key)}});
            me.client.txn(vec![mine], vec![delete]).await.map(|_| ())
        })
    }
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

/// One session: a lease, the whole prefix read at a revision, then the
/// watch from the next revision, with the lease renewed and the report
/// written beside it. Returns why it ended.
async fn session(inner: &Arc<Inner>) -> EtcdError {
    let lease = match inner.client.grant(inner.lease_ttl).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    inner.lease.store(lease, Ordering::SeqCst);
    let stop = tokio_util::sync::CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<EtcdError>(1);
    // The lease renewed at a third of its life; the report rewritten on
    // each change (and once now, with the new lease).
    {
        let inner = inner.clone();
        let stop = stop.clone();
        let failed_tx = failed_tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(inner.lease_ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match inner.client.keep_alive(lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = failed_tx
                            .try_send(EtcdError::Unreachable("this node's lease expired".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = failed_tx.try_send(e);
                        return;
                    }
                }
            }
        });
    }
    {
        let inner = inner.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let report = inner
                    .report
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(r) = report {
                    let key = inner.key(&node_key(&inner.node));
                    if let Err(e) = inner.client.put(&key, &r, Some(lease)).await {
                        let _ = failed_tx.try_send(e);
                        return;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = inner.reported.notified() => {}
                }
            }
        });
    }
    loop {
        // Everything at one revision, then every change after it.
        let (revision, kvs) = match inner.client.range(&inner.prefix, true).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let values = kvs
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
            v.revision = revision;
            v.values = values;
            v.link = Link::Up;
        });
        let mut watch = match inner.client.watch(&inner.prefix, revision + 1).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        let resync = loop {
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
                    break true;
                }
                Ok(WatchMessage::Canceled(why)) => {
                    return EtcdError::Unreachable(format!("watch canceled: {why}"))
                }
                Ok(WatchMessage::Events { revision, events }) => apply(inner, revision, events),
            }
        };
        debug_assert!(resync);
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
            if e.deleted {
                v.values.remove(rel);
            } else {
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
