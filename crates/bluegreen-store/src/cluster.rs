//! What a store shared by several router nodes adds to [`crate::StateStore`]:
//! a live view of every key (so each node applies what another wrote), the
//! report each node writes about itself, and named locks that die with
//! their node. The etcd store implements it; the file store has no cluster.

use crate::StoreError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One stored value and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub revision: i64,
    pub value: Arc<Vec<u8>>,
}

/// Whether this node reaches the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet since this process started.
    Connecting,
    Up,
    /// Lost: the node serves the last state it applied (fail static).
    Down {
        since_ms: u64,
        error: String,
    },
}

/// Everything under the service's prefix, as the watch last saw it.
#[derive(Debug, Clone)]
pub struct View {
    /// The store's revision this view is at.
    pub revision: i64,
    /// Keys relative to the prefix (`state`, `nodes/router-a`, ...).
    pub values: BTreeMap<String, Versioned>,
    pub link: Link,
}

impl View {
    /// Values whose key starts with `dir/`, by the rest of the key.
    pub fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a Versioned)> {
        let start = format!("{dir}/");
        self.values
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .map(move |(k, v)| (&k[dir.len() + 1..], v))
    }
}

/// Key of a node's report, relative to the prefix.
pub fn node_key(node: &str) -> String {
    format!("nodes/{node}")
}

/// Key of a named lock, relative to the prefix.
pub fn lock_key(name: &str) -> String {
    format!("locks/{name}")
}

/// The shared side of a store.
pub trait Cluster: Send + Sync + 'static {
    /// This node's name.
    fn node(&self) -> &str;
    /// How long a switch waits for every node.
    fn converge_timeout(&self) -> Duration;
    /// The endpoints, for messages.
    fn describe(&self) -> String;
    /// Every change the watch sees, and the link's state.
    fn view(&self) -> tokio::sync::watch::Receiver<View>;
    /// After this node applied the value of `key` stored at `revision`,
    /// its next write of `key` is conditional on that revision (a write
    /// planned from an older value is refused, never merged).
    fn adopt(&self, key: &str, revision: i64);
    /// The revision this node's last read, write or adoption of `key` saw.
    fn revision(&self, key: &str) -> i64;
    /// What this node says about itself (JSON), kept under `nodes/<node>`
    /// for as long as the node renews its lease.
    fn report(&self, report: Vec<u8>);
    /// Writes (or with `None` removes) `key` as the holder of `lock`: only
    /// while this process holds it (`Ok(false)` otherwise, nothing
    /// written), so a node that lost the lock cannot overwrite what the new
    /// holder wrote. Blocking.
    fn publish_as(&self, lock: &str, key: &str, value: Option<Vec<u8>>)
        -> Result<bool, StoreError>;
    /// Removes every key under `dir/` as the holder of `lock`. Blocking.
    fn clear_as(&self, lock: &str, dir: &str) -> Result<bool, StoreError>;
    /// Writes a key of this node's own, with its lease (it goes when the
    /// node does). Blocking.
    fn publish_own(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError>;
    /// Writes (or with `None` removes) a key with no lease and no lock: a
    /// record that outlives its writer (cluster membership). Blocking.
    fn put_record(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError>;
    /// Writes a record only if `key` does not exist (true: written): the
    /// first of several nodes saying the same thing keeps its revision,
    /// which orders it among others. Blocking.
    fn create_record(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError>;
    /// Reads a key without making it the base of this node's next
    /// conditional write of it. Blocking.
    fn peek(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Takes the lock `name` for this process, for as long as its lease
    /// lives (moved to the next lease when a session is renewed).
    fn try_lock(&self, name: &str) -> Result<Lock, StoreError>;
    /// True while this process holds `name` (false once it was lost: its
    /// lease expired before a new session could carry it over).
    fn holds(&self, name: &str) -> bool;
    /// Gives the lock back (only if this process holds it).
    fn unlock(&self, name: &str) -> Result<(), StoreError>;
}

/// What [`Cluster::try_lock`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    /// Taken now, by this call.
    Taken,
    /// This process holds it already (another activity of this node).
    HeldHere,
    /// Another node (or an earlier process of this node, until its lease
    /// ends) holds it.
    HeldBy(String),
}

/// The node a lock's value names (`node#instance`).
pub fn lock_holder(value: &[u8]) -> String {
    let v = String::from_utf8_lossy(value);
    v.split('#').next().unwrap_or_default().to_string()
}
