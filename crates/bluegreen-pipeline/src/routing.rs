//! What the pipeline needs from the router, and nothing else: the live
//! side and each side's traffic and health, weights, switches, drains,
//! shadow runs and events. The router implements it (`Arc<Router>`, since
//! a shadow run and a switch start tasks that hold it); a step's tests
//! implement it with a fake, so a step runs in process against the traffic
//! the test scripts.

use bluegreen_core::bake::Window;
use bluegreen_core::config::Config;
use bluegreen_core::state::{Split, SwitchRecord, SwitchRequest};
use bluegreen_core::Side;
use bluegreen_router::events::Event;
use bluegreen_router::shadow::{Shadow, ShadowOptions, ShadowShare};
use bluegreen_router::{ControlError, Router, SwitchError, SwitchOutcome};
use bluegreen_store::Cluster;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A future a `Routing` call returns (boxed: the trait is used as `dyn`).
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The router as the pipeline uses it.
pub trait Routing: Send + Sync + 'static {
    /// The validated config the router runs with.
    fn config(&self) -> Arc<Config>;
    /// The side that is live now.
    fn live(&self) -> Side;
    /// A side's live traffic, the whole cluster's with several nodes.
    fn live_window(&self, side: Side) -> Window;
    /// A side's live traffic on this node alone.
    fn local_window(&self, side: Side) -> Window;
    /// Healthy and total upstreams of a side, and what the unhealthy say.
    fn side_health(&self, side: Side) -> (usize, usize, String);
    /// Forgets a side's health (a new version was just put there).
    fn reset_health(&self, side: Side);
    /// Whether the live side has a usable upstream.
    fn ready(&self) -> bool;
    /// The weighted split in effect.
    fn split(&self) -> Option<Split>;
    /// The shared store, with several nodes.
    fn cluster(&self) -> Option<Arc<dyn Cluster>>;
    /// Where a bound listener ended up (`proxy`, `preview`).
    fn listener_addr(&self, name: &str) -> Option<SocketAddr>;
    /// The sessions pin in effect: (side, until Unix ms).
    fn pin(&self) -> Option<(Side, u64)>;
    /// The other nodes' parts of a cluster-wide shadow run.
    fn shadow_shares(&self, run: u64) -> Vec<(String, ShadowShare)>;
    /// Waits until every node's part of the run is in, up to `limit`.
    fn shadow_settled(&self, run: u64, limit: Duration) -> Fut<'_, ()>;
    /// Switches on this node alone (the watchdog, with the lock gone).
    fn switch_here(&self, req: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>>;
    /// Sends an event to the stream.
    fn emit(&self, event: Event);
    /// Whether anyone follows the stream (events are built only then).
    fn listening(&self) -> bool;
    /// Sends `basis_points` of 10,000 clients to `side`.
    fn set_weight(
        &self,
        side: Side,
        basis_points: u16,
        forced: bool,
    ) -> Fut<'_, Result<Option<Split>, ControlError>>;
    /// Ends the sessions pin to `side`.
    fn clear_pin(&self, side: Side) -> Fut<'_, ()>;
    /// Waits until `side` drained, up to `limit`; true when it did.
    fn wait_drained(&self, side: Side, limit: Duration) -> Fut<'_, bool>;
    /// Switches live traffic.
    fn switch(&self, req: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>>;
    /// Where a rollback goes.
    fn rollback_target(&self) -> Fut<'_, Result<Side, SwitchError>>;
    /// The switch history, oldest first.
    fn history(&self) -> Fut<'_, Vec<SwitchRecord>>;
    /// Starts a shadow run.
    fn start_shadow(&self, options: ShadowOptions) -> Fut<'_, Result<Arc<Shadow>, ControlError>>;
    /// Stops the shadow run, whichever it is.
    fn stop_shadow(&self) -> Fut<'_, Result<Arc<Shadow>, ControlError>>;
    /// Stops this shadow run.
    fn stop_shadow_run<'a>(&'a self, run: &'a Arc<Shadow>) -> Fut<'a, ()>;
    /// Publishes this node's part of a cluster-wide shadow run.
    fn share_shadow<'a>(
        &'a self,
        run: u64,
        shadow: &'a Arc<Shadow>,
        active: bool,
        until_ms: u64,
    ) -> Fut<'a, ()>;
    /// Ends the cluster-wide shadow run.
    fn end_shared_shadow(&self) -> Fut<'_, ()>;
}

impl Routing for Arc<Router> {
    fn config(&self) -> Arc<Config> {
        self.plane.config()
    }
    fn live(&self) -> Side {
        self.plane.live()
    }
    fn live_window(&self, side: Side) -> Window {
        Router::live_window(self, side)
    }
    fn local_window(&self, side: Side) -> Window {
        Router::local_window(self, side)
    }
    fn side_health(&self, side: Side) -> (usize, usize, String) {
        Router::side_health(self, side)
    }
    fn reset_health(&self, side: Side) {
        Router::reset_health(self, side)
    }
    fn ready(&self) -> bool {
        Router::ready(self)
    }
    fn split(&self) -> Option<Split> {
        Router::split(self)
    }
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        Router::cluster(self).cloned()
    }
    fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.plane.listener_addr(name)
    }
    fn pin(&self) -> Option<(Side, u64)> {
        Router::pin(self)
    }
    fn shadow_shares(&self, run: u64) -> Vec<(String, ShadowShare)> {
        Router::shadow_shares(self, run)
    }
    fn shadow_settled(&self, run: u64, limit: Duration) -> Fut<'_, ()> {
        Box::pin(Router::shadow_settled(self, run, limit))
    }
    fn switch_here(&self, req: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>> {
        Box::pin(Router::switch_here(self, req))
    }
    fn emit(&self, event: Event) {
        self.events.emit(event)
    }
    fn listening(&self) -> bool {
        self.events.listening()
    }
    fn set_weight(
        &self,
        side: Side,
        basis_points: u16,
        forced: bool,
    ) -> Fut<'_, Result<Option<Split>, ControlError>> {
        Box::pin(Router::set_weight(self, side, basis_points, forced))
    }
    fn clear_pin(&self, side: Side) -> Fut<'_, ()> {
        Box::pin(Router::clear_pin(self, side))
    }
    fn wait_drained(&self, side: Side, limit: Duration) -> Fut<'_, bool> {
        Box::pin(Router::wait_drained(self, side, limit))
    }
    fn switch(&self, req: SwitchRequest) -> Fut<'_, Result<SwitchOutcome, SwitchError>> {
        Box::pin(Router::switch(self, req))
    }
    fn rollback_target(&self) -> Fut<'_, Result<Side, SwitchError>> {
        Box::pin(Router::rollback_target(self))
    }
    fn history(&self) -> Fut<'_, Vec<SwitchRecord>> {
        Box::pin(Router::history(self))
    }
    fn start_shadow(&self, options: ShadowOptions) -> Fut<'_, Result<Arc<Shadow>, ControlError>> {
        Box::pin(Router::start_shadow(self, options))
    }
    fn stop_shadow(&self) -> Fut<'_, Result<Arc<Shadow>, ControlError>> {
        Box::pin(Router::stop_shadow(self))
    }
    fn stop_shadow_run<'a>(&'a self, run: &'a Arc<Shadow>) -> Fut<'a, ()> {
        Box::pin(Router::stop_shadow_run(self, run))
    }
    fn share_shadow<'a>(
        &'a self,
        run: u64,
        shadow: &'a Arc<Shadow>,
        active: bool,
        until_ms: u64,
    ) -> Fut<'a, ()> {
        Box::pin(Router::share_shadow(self, run, shadow, active, until_ms))
    }
    fn end_shared_shadow(&self) -> Fut<'_, ()> {
        Box::pin(Router::end_shared_shadow(self))
    }
}
