//! Upstream pools: the instances of one side, their health and load, and how
//! a request picks one.

use crate::stats::TrafficStats;
use crate::upstream::conn::ConnPool;
use crate::upstream::tls::UpstreamTls;
use bluegreen_core::config::Balance;
use bluegreen_core::health::{Health, HealthCounter};
use bluegreen_core::Side;
use http::uri::Authority;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// One upstream instance.
pub struct Upstream {
    /// `host:port` as configured.
    pub address: String,
    /// Parsed once, reused for every request URI.
    pub authority: Authority,
    /// Side this upstream belongs to.
    pub side: Side,
    /// HTTPS to it, when its side says so.
    pub tls: Option<Arc<UpstreamTls>>,
    health: AtomicU8,
    counter: Mutex<HealthCounter>,
    outstanding: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Bumped by `reset_health`; check results begun before it are dropped.
    check_epoch: AtomicU64,
    /// Idle keep-alive connections to this upstream.
    pub conns: ConnPool,
    /// Answers by status class (index = status / 100), for metrics.
    answered: [AtomicU64; 6],
    /// Requests that got no answer: connect errors, resets, timeouts.
    failures: AtomicU64,
    /// Requests in a row it took and did not answer (passive health).
    failing_run: AtomicU32,
    /// Places for requests served at once (`proxy.upstream_max_requests`):
    /// free permits; tokio's semaphore is fair, so waiters are served in
    /// the order they came. Invariant: permits + places in use - `debt`
    /// = `slot_limit` (when not 0).
    slots: tokio::sync::Semaphore,
    slot_limit: AtomicUsize,
    /// Places to give back to nobody (the limit was lowered while in use).
    debt: AtomicUsize,
    /// Requests waiting for a place now.
    queued: AtomicUsize,
    /// Requests that got 503 because the queue was full or too slow.
    queue_refused: AtomicU64,
    /// Wakes the queue when the limit is lifted (set to 0).
    limit_lifted: tokio::sync::Notify,
    /// Cancelled when a reload removes it: its health checks stop (the
    /// requests still using it finish).
    pub retired: CancellationToken,
}

impl Upstream {
    fn new(
        address: &str,
        side: Side,
        rise: u32,
        fall: u32,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Result<Arc<Upstream>, String> {
        let authority: Authority = address
            .parse()
            .map_err(|e| format!("upstream {address:?} of {side}: {e}"))?;
        Ok(Arc::new(Upstream {
            address: address.to_string(),
            authority,
            side,
            tls,
            health: AtomicU8::new(Health::Unknown.to_u8()),
            counter: Mutex::new(HealthCounter::new(rise, fall)),
            outstanding: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            check_epoch: AtomicU64::new(0),
            conns: ConnPool::default(),
            answered: Default::default(),
            failures: AtomicU64::new(0),
            failing_run: AtomicU32::new(0),
            slots: tokio::sync::Semaphore::new(0),
            slot_limit: AtomicUsize::new(0),
            debt: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            queue_refused: AtomicU64::new(0),
            limit_lifted: tokio::sync::Notify::new(),
            retired: CancellationToken::new(),
        }))
    }

    /// Sets how many requests it serves at once (0: no limit). Places in
    /// use stay; a lower limit is reached as they are given back.
    pub fn set_max_requests(&self, limit: usize) {
        let old = self.slot_limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            let mut more = limit - old;
            // Pay the debt first: those places are in use already.
            while more > 0 {
                let d = self.debt.load(Ordering::Acquire);
                if d == 0 {
                    break;
                }
                let pay = d.min(more);
                if self
                    .debt
                    .compare_exchange(d, d - pay, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    more -= pay;
                }
            }
            self.slots.add_permits(more);
        } else if limit < old {
            let fewer = old - limit;
            let forgotten = self.slots.forget_permits(fewer);
            self.debt.fetch_add(fewer - forgotten, Ordering::AcqRel);
        }
        if limit == 0 {
            // No limit now: whoever waits goes at once.
            self.limit_lifted.notify_waiters();
        }
    }

    /// A place to serve one request at once, when there is one free (or no
    /// limit): `Some(took a place)`. `None`: every place is taken, wait in
    /// the queue (`queue_for_slot`). Cheap, no lock: the request path's
    /// common case.
    pub(crate) fn try_slot(&self) -> Option<bool> {
        if self.slot_limit.load(Ordering::Relaxed) == 0 {
            return Some(false);
        }
        match self.slots.try_acquire() {
            Ok(p) => {
                p.forget();
                Some(true)
            }
            Err(_) => None,
        }
    }

    /// Waits in the queue, in arrival order, for up to `wait`, for a place
    /// (`true`) or the limit lifted (`false`), with the time it waited.
    pub(crate) async fn queue_for_slot(
        &self,
        wait: std::time::Duration,
        max_queue: usize,
    ) -> Result<(bool, std::time::Duration), QueueRefusal> {
        struct Queued<'a>(&'a AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        let _place = Queued(&self.queued);
        if before >= max_queue {
            self.queue_refused.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRefusal::Full(max_queue));
        }
        let start = std::time::Instant::now();
        let lifted = self.limit_lifted.notified();
        tokio::pin!(lifted);
        lifted.as_mut().enable();
        if self.slot_limit.load(Ordering::Acquire) == 0 {
            return Ok((false, start.elapsed()));
        }
        let got = tokio::time::timeout(wait, async {
            tokio::select! {
                p = self.slots.acquire() => p.map(|p| {
                    p.forget();
                    true
                }).map_err(|_| ()),
                _ = &mut lifted => Ok(false),
            }
        })
        .await;
        match got {
            Ok(Ok(took)) => Ok((took, start.elapsed())),
            _ => {
                self.queue_refused.fetch_add(1, Ordering::Relaxed);
                Err(QueueRefusal::TimedOut(wait))
            }
        }
    }

    /// A place, at once or after waiting in the queue.
    #[cfg(test)]
    pub(crate) async fn take_slot(
        &self,
        wait: std::time::Duration,
        max_queue: usize,
    ) -> Result<(bool, std::time::Duration), QueueRefusal> {
        match self.try_slot() {
            Some(took) => Ok((took, std::time::Duration::ZERO)),
            None => self.queue_for_slot(wait, max_queue).await,
        }
    }

    /// Gives a place back (the response ended, or became a tunnel).
    pub(crate) fn free_slot(&self) {
        let mut d = self.debt.load(Ordering::Acquire);
        while d > 0 {
            match self
                .debt
                .compare_exchange(d, d - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => d = now,
            }
        }
        self.slots.add_permits(1);
    }

    /// Requests waiting in its queue now, its limit (0: none), and the
    /// requests its queue refused so far.
    pub fn queue(&self) -> (usize, usize, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.slot_limit.load(Ordering::Relaxed),
            self.queue_refused.load(Ordering::Relaxed),
        )
    }

    /// Health as the request path sees it.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Requests (and upgraded connections) currently using this upstream.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The last check or connect error, for status.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts an answer by its status class.
    pub(crate) fn answered(&self, status: u16) {
        self.answered[(status as usize / 100).min(5)].fetch_add(1, Ordering::Relaxed);
        // Read first: the common case (no failures) writes nothing shared.
        if self.failing_run.load(Ordering::Relaxed) != 0 {
            self.failing_run.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request it took and did not answer (closed, reset, timed
    /// out). After `health.unhealthy_threshold` of them in a row it is down
    /// (passive health, as nginx's `max_fails`) until its checks pass
    /// `healthy_threshold` times. Returns the new health if it flipped.
    pub(crate) fn failed_request(&self, error: &str) -> Option<Health> {
        self.failed();
        if self.health() == Health::Unhealthy {
            // Already down: its checks decide when it returns.
            return None;
        }
        let run = self.failing_run.fetch_add(1, Ordering::Relaxed) + 1;
        let fall = self
            .counter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fall();
        if run < fall {
            return None;
        }
        self.failing_run.store(0, Ordering::Relaxed);
        self.mark_down(format!("{run} requests in a row got no answer: {error}"))
    }

    /// Counts a request this upstream did not answer.
    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers by status class (`[_, 1xx, 2xx, 3xx, 4xx, 5xx]`) and failures.
    pub fn traffic(&self) -> ([u64; 6], u64) {
        (
            std::array::from_fn(|i| self.answered[i].load(Ordering::Relaxed)),
            self.failures.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn routable(&self) -> bool {
        self.health() != Health::Unhealthy
    }

    pub(crate) fn begin(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records an active check. Returns the new health if it flipped.
    pub fn record_check(&self, result: Result<(), String>) -> Option<Health> {
        self.record_check_from(self.check_epoch(), result)
    }

    /// The epoch a health check should carry from its start.
    pub fn check_epoch(&self) -> u64 {
        self.check_epoch.load(Ordering::Acquire)
    }

    /// Records a check begun in `epoch`; a result from before the last
    /// `reset_health` describes a process that may be gone, and is dropped.
    pub fn record_check_from(&self, epoch: u64, result: Result<(), String>) -> Option<Health> {
        let mut counter = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        if epoch != self.check_epoch() {
            return None;
        }
        let ok = result.is_ok();
        if let Err(e) = result {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        let flipped = counter.record(ok);
        self.health
            .store(counter.state().to_u8(), Ordering::Relaxed);
        if flipped == Some(Health::Healthy) {
            // Healthy again: the old error no longer describes it, and a
            // new run of failed requests starts from nothing.
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.failing_run.store(0, Ordering::Relaxed);
        }
        flipped
    }

    /// Forgets what is known about this upstream (a new version was just put
    /// on it): health is unknown until the next check finishes.
    pub fn reset_health(&self, rise: u32, fall: u32) {
        let mut counter = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        self.check_epoch.fetch_add(1, Ordering::AcqRel);
        *counter = HealthCounter::new(rise, fall);
        self.health
            .store(Health::Unknown.to_u8(), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.failing_run.store(0, Ordering::Relaxed);
    }

    /// New health thresholds (a reload); what is known stays.
    pub fn set_thresholds(&self, rise: u32, fall: u32) {
        self.counter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_thresholds(rise, fall);
    }

    /// Passive marking after a failed connect. Returns the new health if it flipped.
    pub fn mark_down(&self, error: String) -> Option<Health> {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        let mut counter = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        let flipped = counter.mark_down();
        self.health
            .store(counter.state().to_u8(), Ordering::Relaxed);
        flipped
    }
}

/// Why a request got no place at an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueRefusal {
    #[error("its queue is full ({0} waiting)")]
    /// Its queue already held this many.
    Full(usize),
    /// It waited this long.
    #[error("waited {0:?} in its queue")]
    TimedOut(std::time::Duration),
}

/// The upstreams of one side.
pub struct Pool {
    pub side: Side,
    pub upstreams: Vec<Arc<Upstream>>,
    balance: Balance,
    next: AtomicUsize,
    /// Shared with the pools a reload builds from this one, like the
    /// stats: a side's counts do not start over when its list changes.
    upgraded: Arc<AtomicUsize>,
    /// Traffic from the main listener while this side was live.
    pub live_stats: Arc<TrafficStats>,
    /// Traffic from the preview listener.
    pub preview_stats: Arc<TrafficStats>,
}

/// A pool rebuilt by a reload, with the upstreams it added and removed.
pub struct Reshaped {
    pub pool: Pool,
    pub added: Vec<Arc<Upstream>>,
    pub removed: Vec<Arc<Upstream>>,
}

/// Bit set of upstream indexes already tried by one request.
pub type Tried = u64;

impl Pool {
    /// Builds a pool from validated addresses.
    pub fn new(
        side: Side,
        addresses: &[String],
        balance: Balance,
        rise: u32,
        fall: u32,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Result<Pool, String> {
        let upstreams = addresses
            .iter()
            .map(|a| Upstream::new(a, side, rise, fall, tls.clone()))
            .collect::<Result<Vec<_>, String>>()?;
        Pool::of(
            side,
            upstreams,
            balance,
            Default::default(),
            Default::default(),
            Default::default(),
        )
    }

    fn of(
        side: Side,
        upstreams: Vec<Arc<Upstream>>,
        balance: Balance,
        upgraded: Arc<AtomicUsize>,
        live_stats: Arc<TrafficStats>,
        preview_stats: Arc<TrafficStats>,
    ) -> Result<Pool, String> {
        if upstreams.len() > 64 {
            return Err(format!(
                "{side} has {} upstreams; at most 64 are supported",
                upstreams.len()
            ));
        }
        Ok(Pool {
            side,
            upstreams,
            balance,
            next: AtomicUsize::new(0),
            upgraded,
            live_stats,
            preview_stats,
        })
    }

    /// The pool a reload makes of this one: upstreams that stay keep their
    /// health, connections and counts; new ones (all of them when the
    /// side's TLS changed) count as down until their checks pass, so they
    /// get no traffic before; the stats carry on. Returns the pool, the
    /// upstreams added and the ones removed.
    pub fn reshaped(
        &self,
        addresses: &[String],
        balance: Balance,
        rise: u32,
        fall: u32,
        tls: Option<Arc<UpstreamTls>>,
        tls_changed: bool,
    ) -> Result<Reshaped, String> {
        let mut added = Vec::new();
        let upstreams = addresses
            .iter()
            .map(|a| {
                let kept = (!tls_changed)
                    .then(|| self.upstreams.iter().find(|u| &u.address == a))
                    .flatten();
                match kept {
                    Some(u) => Ok(u.clone()),
                    None => {
                        let u = Upstream::new(a, self.side, rise, fall, tls.clone())?;
                        u.mark_down(
                            "added by a reload; waiting for its first health checks".into(),
                        );
                        added.push(u.clone());
                        Ok(u)
                    }
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        let removed = self
            .upstreams
            .iter()
            .filter(|u| !upstreams.iter().any(|n| Arc::ptr_eq(n, u)))
            .cloned()
            .collect();
        let pool = Pool::of(
            self.side,
            upstreams,
            balance,
            self.upgraded.clone(),
            self.live_stats.clone(),
            self.preview_stats.clone(),
        )?;
        Ok(Reshaped {
            pool,
            added,
            removed,
        })
    }

    /// Upstreams whose last check passed.
    pub fn healthy_count(&self) -> usize {
        self.upstreams
            .iter()
            .filter(|u| u.health() == Health::Healthy)
            .count()
    }

    /// Open upgraded (WebSocket) connections on this side.
    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::Relaxed)
    }

    pub(crate) fn upgraded_counter(&self) -> &AtomicUsize {
        &self.upgraded
    }

    /// Picks an upstream not in `tried`. Unknown health counts as routable.
    /// With `panic` set and nothing routable left, falls back to any untried
    /// upstream rather than failing every request (Envoy's panic routing).
    pub fn pick(&self, tried: Tried, panic: bool) -> Option<usize> {
        let n = self.upstreams.len();
        if n == 1 {
            let ok = tried & 1 == 0 && (panic || self.upstreams[0].routable());
            return ok.then_some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| tried & (1 << i) == 0);
        let pick = match self.balance {
            Balance::RoundRobin => candidates.clone().find(|&i| self.upstreams[i].routable()),
            Balance::LeastOutstanding => candidates
                .clone()
                .filter(|&i| self.upstreams[i].routable())
                .min_by_key(|&i| self.upstreams[i].outstanding()),
        };
        match pick {
            Some(i) => Some(i),
            None if panic => candidates.min_by_key(|&i| self.upstreams[i].outstanding()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, balance: Balance) -> Pool {
        let addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
        Pool::new(Side::Blue, &addrs, balance, 1, 1, None).unwrap()
    }

    /// Places: at once under the limit, then a FIFO queue bounded in length
    /// and time; a lowered limit is reached as places come back.
    #[tokio::test]
    async fn places_queue_in_order_and_follow_the_limit() {
        use std::time::Duration;
        let p = pool(1, Balance::RoundRobin);
        let u = p.upstreams[0].clone();
        let long = Duration::from_secs(5);
        assert_eq!(
            u.take_slot(long, 10).await,
            Ok((false, Duration::ZERO)),
            "no limit"
        );
        u.set_max_requests(2);
        assert!(u.take_slot(long, 10).await.unwrap().0);
        assert!(u.take_slot(long, 10).await.unwrap().0);
        // Full: a short wait times out; a full queue refuses at once.
        let short = Duration::from_millis(20);
        assert_eq!(
            u.take_slot(short, 10).await,
            Err(QueueRefusal::TimedOut(short))
        );
        assert_eq!(u.take_slot(long, 0).await, Err(QueueRefusal::Full(0)));
        // Two waiters get the places in the order they came.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (w, o) = (u.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                w.take_slot(long, 10).await.unwrap();
                o.lock().unwrap().push(i);
            }));
            while u.queue().0 <= i {
                tokio::task::yield_now().await;
            }
        }
        u.free_slot();
        u.free_slot();
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
        assert_eq!(u.queue(), (0, 2, 2), "two refused so far");
        // Lowered to 1 with 2 in use: both must come back before one goes.
        u.set_max_requests(1);
        u.free_slot();
        assert!(u.take_slot(short, 10).await.is_err(), "still one in use");
        u.free_slot();
        assert!(u.take_slot(short, 10).await.unwrap().0);
    }

    /// Lifting the limit (a reload to 0) lets every waiter go at once.
    #[tokio::test]
    async fn lifting_the_limit_releases_the_queue() {
        use std::time::Duration;
        let p = pool(1, Balance::RoundRobin);
        let u = p.upstreams[0].clone();
        u.set_max_requests(1);
        assert!(u.take_slot(Duration::from_secs(5), 10).await.unwrap().0);
        let w = u.clone();
        let waiter = tokio::spawn(async move { w.take_slot(Duration::from_secs(30), 10).await });
        while u.queue().0 == 0 {
            tokio::task::yield_now().await;
        }
        u.set_max_requests(0);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken at once")
            .unwrap();
        assert_eq!(got.map(|(took, _)| took), Ok(false), "no place needed now");
    }

    #[test]
    fn round_robin_skips_unhealthy() {
        let p = pool(3, Balance::RoundRobin);
        p.upstreams[1].record_check(Err("down".into()));
        let picks: Vec<_> = (0..6).map(|_| p.pick(0, false).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2));
    }

    #[test]
    fn least_outstanding_prefers_idle_upstream() {
        let p = pool(3, Balance::LeastOutstanding);
        p.upstreams[0].begin();
        p.upstreams[2].begin();
        for _ in 0..5 {
            assert_eq!(p.pick(0, false), Some(1));
        }
    }

    #[test]
    fn tried_upstreams_are_excluded_and_panic_falls_back() {
        let p = pool(2, Balance::RoundRobin);
        assert_eq!(p.pick(0b01, false), Some(1));
        assert_eq!(p.pick(0b11, false), None);
        for u in &p.upstreams {
            u.record_check(Err("down".into()));
        }
        assert_eq!(p.pick(0, false), None);
        assert!(p.pick(0, true).is_some());
        assert_eq!(p.upstreams[0].last_error().as_deref(), Some("down"));
    }

    #[test]
    fn passive_mark_down_removes_upstream_from_rotation() {
        let p = pool(2, Balance::RoundRobin);
        p.upstreams[0].record_check(Ok(()));
        assert_eq!(
            p.upstreams[0].mark_down("refused".into()),
            Some(Health::Unhealthy)
        );
        for _ in 0..4 {
            assert_eq!(p.pick(0, false), Some(1));
        }
    }
}
