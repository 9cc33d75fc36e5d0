//! The steps of `serve`'s startup, one function each, in the order
//! `serve::start` calls them: the store, the certificates, the router and
//! the pipeline, the sockets, the background work, the edge's TLS, the
//! listeners, the admin API. Each step that can fail does before anything
//! listens, so a bad certificate or a busy port starts nothing.

use super::sockets::Sockets;
use anyhow::Context;
use bluegreen_core::config::{Config, TlsConfig};
use bluegreen_pipeline::Pipeline;
use bluegreen_router::events::Event;
use bluegreen_router::tls::acme::Acme;
use bluegreen_router::tls::{CertStore, Reload};
use bluegreen_router::{health, listener, ListenerKind, Router};
use bluegreen_store::{EtcdStore, FileStore, StateStore};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a new process waits for the old one to hand the state over.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The state store: etcd with `[state.etcd]` (the state dir still holds
/// this node's process table, app logs and recordings), else the file
/// store, waited for when a process hands it over to us.
pub async fn open_store(config: &Config, handover: bool) -> anyhow::Result<Arc<dyn StateStore>> {
    let dir = config.state.dir.clone();
    Ok(if let Some(etcd) = config.state.etcd.clone() {
        tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create the state dir {}", dir.display()))
        })
        .await??;
        Arc::new(tokio::task::spawn_blocking(move || EtcdStore::open(&etcd)).await??)
    } else if handover {
        Arc::new(
            tokio::task::spawn_blocking(move || FileStore::open_waiting(&dir, HANDOVER_WAIT))
                .await??,
        )
    } else {
        Arc::new(FileStore::open(&dir)?)
    })
}

/// The certificates of the edge and of the admin API, loaded and checked.
pub struct Tls {
    pub edge: Option<(TlsConfig, (TlsAcceptor, Arc<CertStore>))>,
    pub admin: Option<(TlsAcceptor, Arc<CertStore>)>,
}

/// Loads and checks every certificate before anything listens.
pub fn load_tls(config: &Config) -> anyhow::Result<Tls> {
    let edge = match &config.tls {
        Some(t) => Some((
            t.clone(),
            bluegreen_router::tls::acceptor(t)
                .map_err(|e| anyhow::anyhow!("tls.certificates: {e}"))?,
        )),
        None => None,
    };
    let admin = match &config.admin.tls {
        Some(pair) => Some(
            bluegreen_router::tls::admin_acceptor(pair)
                .map_err(|e| anyhow::anyhow!("admin.tls: {e}"))?,
        ),
        None => None,
    };
    Ok(Tls { edge, admin })
}

/// The router (its state loaded, its first snapshot built) and, with a
/// `[deploy]` table, the pipeline over it.
pub fn router_and_pipeline(
    config: Config,
    store: Arc<dyn StateStore>,
) -> anyhow::Result<(Arc<Router>, Option<Arc<Pipeline>>)> {
    let state_dir = config.state.dir.clone();
    let deploy = config.deploy.clone();
    let router = Router::new(config, store.clone())?;
    let pipeline = match deploy {
        Some(d) => Some(Pipeline::new(router.clone(), store, d, &state_dir)?),
        None => None,
    };
    Ok((router, pipeline))
}

/// Where each listener ended up (port 0 becomes a real port).
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub proxy: SocketAddr,
    pub preview: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub https: Option<SocketAddr>,
    pub https_preview: Option<SocketAddr>,
}

/// The bound sockets, not serving yet.
pub struct Bound {
    edge: [(Option<TcpListener>, ListenerKind, bool); 4],
    pub admin: TcpListener,
    pub local: Local,
}

/// Binds everything before serving anything, so a busy port fails
/// cleanly; sockets handed to us (systemd, or the process we take over
/// from) are used as they are. Each address is recorded on the router
/// (status, redirects to HTTPS).
pub async fn bind(
    mut sockets: Sockets,
    router: &Router,
    tls: Option<&(TlsConfig, (TlsAcceptor, Arc<CertStore>))>,
) -> anyhow::Result<(Bound, Sockets)> {
    let config = router.config();
    let proxy = sockets
        .listen("proxy", config.proxy.listen, "proxy.listen")
        .await?;
    let preview = match config.proxy.preview_listen {
        Some(a) => Some(sockets.listen("preview", a, "proxy.preview_listen").await?),
        None => None,
    };
    let admin = sockets
        .listen("admin", config.admin.listen, "admin.listen")
        .await?;
    let (https, https_preview) = match tls {
        Some((t, _)) => (
            Some(sockets.listen("https", t.listen, "tls.listen").await?),
            match t.preview_listen {
                Some(a) => Some(
                    sockets
                        .listen("https_preview", a, "tls.preview_listen")
                        .await?,
                ),
                None => None,
            },
        ),
        None => (None, None),
    };
    let unused = sockets.close_unused();
    if !unused.is_empty() {
        tracing::warn!(sockets = ?unused, "inherited sockets no listener of this config uses; closed them");
    }
    let addr = |l: &Option<TcpListener>| l.as_ref().map(|l| l.local_addr()).transpose();
    let local = Local {
        proxy: proxy.local_addr()?,
        preview: addr(&preview)?,
        admin: admin.local_addr()?,
        https: addr(&https)?,
        https_preview: addr(&https_preview)?,
    };
    for (name, a) in [
        ("proxy", Some(local.proxy)),
        ("preview", local.preview),
        ("https", local.https),
        ("https_preview", local.https_preview),
        ("admin", Some(local.admin)),
    ] {
        if let Some(a) = a {
            router.set_listener(name, a);
        }
    }
    let bound = Bound {
        edge: [
            (Some(proxy), ListenerKind::Main, false),
            (preview, ListenerKind::Preview, false),
            (https, ListenerKind::Main, true),
            (https_preview, ListenerKind::Preview, true),
        ],
        admin,
        local,
    };
    Ok((bound, sockets))
}

/// What runs before traffic: health checks (so the first results come
/// quickly), the memory trimmer, following a shared store, and one point
/// of live traffic per second for charts and the event stream.
pub fn spawn_background(router: &Arc<Router>, stop: &CancellationToken) -> TaskTracker {
    let health = health::spawn(&router.plane, stop.clone());
    bluegreen_router::memory::spawn_trimmer(router.plane.clone(), stop.clone());
    router.spawn_cluster(stop.clone());
    router.spawn_driver_log(stop.clone());
    // `[[notify]]`: what waits in the outbox is delivered first; the
    // event stream is listened to from now, before any traffic or switch.
    let (r, s) = (router.clone(), stop.clone());
    let rx = (!router.config().notify.is_empty()).then(|| router.plane.events.subscribe());
    tokio::spawn(async move {
        if let Err(e) = r.start_notifier(s, rx).await {
            tracing::error!(error = %e, "notices are not delivered");
        }
    });
    bluegreen_router::control::spawn_sampler(
        router.clone(),
        std::time::Duration::from_secs(1),
        stop.clone(),
    );
    // The router the user runs (nginx) is given the live side of the state;
    // a switch waits for it, the start does not.
    let r = router.clone();
    tokio::spawn(async move {
        match r.start_driver().await {
            Some(Ok(done)) => tracing::info!("{done}"),
            Some(Err(e)) => {
                tracing::error!(error = %e, "the driven router was not given the live side; the next switch writes its file again")
            }
            None => {}
        }
    });
    health
}

/// The edge's TLS: certificate files watched (a good new set swapped in, a
/// bad one kept out, either announced), and ACME's stored certificate in
/// use before the first handshake, then renewed in the background.
pub async fn edge_tls(
    router: &Arc<Router>,
    tls: Option<(TlsConfig, (TlsAcceptor, Arc<CertStore>))>,
    store: Arc<dyn StateStore>,
    stop: &CancellationToken,
) -> Option<TlsAcceptor> {
    let (t, (acceptor, certs)) = tls?;
    router.set_certificates(certs.clone());
    let r = router.clone();
    let announce = Arc::new(move |result| {
        let (ok, detail) = match result {
            Reload::Loaded(names) => (true, format!("reloaded: {}", names.join(", "))),
            Reload::Kept(why) => (false, format!("kept the previous certificates: {why}")),
            Reload::Unchanged => return,
        };
        r.events.emit(Event::Tls { ok, detail });
    });
    bluegreen_router::tls::watch(certs.clone(), announce, stop.clone());
    if let Some(config) = t.acme {
        let acme = Arc::new(Acme::new(config, store, certs));
        router.set_acme(acme.clone());
        let r = router.clone();
        let announce: bluegreen_router::tls::acme::Announce =
            Arc::new(move |ok, detail| r.events.emit(Event::Tls { ok, detail }));
        acme.restore(&announce).await;
        acme.spawn(announce, stop.clone());
    }
    Some(acceptor)
}

/// One accept loop per bound edge listener (HTTPS ones with the acceptor).
pub fn spawn_listeners(
    router: &Router,
    bound: &mut Bound,
    acceptor: Option<TlsAcceptor>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let grace = router.config().switch.drain_timeout;
    let mut listeners = Vec::new();
    for (l, kind, secure) in bound.edge.iter_mut() {
        let Some(l) = l.take() else { continue };
        let tls = if *secure { acceptor.clone() } else { None };
        listeners.push(tokio::spawn(listener::serve(
            router.plane.clone(),
            l,
            *kind,
            tls,
            stop.clone(),
            grace,
        )));
    }
    listeners
}

/// The admin API on its socket (HTTPS with `admin.tls`, its certificate
/// watched like the edge's).
pub fn spawn_admin(
    router: &Arc<Router>,
    pipeline: Option<Arc<Pipeline>>,
    token: &str,
    control: bluegreen_api::lifecycle::ControlSender,
    admin: TcpListener,
    tls: Option<(TlsAcceptor, Arc<CertStore>)>,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let app = bluegreen_api::app(router.clone(), pipeline, token, Some(control));
    let tls = tls.map(|(acceptor, certs)| {
        bluegreen_router::tls::watch(certs, Arc::new(|_| {}), stop.clone());
        (acceptor, router.clone())
    });
    tokio::spawn(super::admin::serve(admin, app, tls, stop.clone()))
}
