//! `bluegreen serve`: load config, restore state, listen, route, shut down
//! gracefully on SIGTERM/SIGINT.

use crate::exit::EXIT_CONFIG;
use crate::server::notify::Notifier;
use crate::server::running::Running;
use crate::server::sockets::Sockets;
use anyhow::Context;
use bluegreen_core::config::Config;
use bluegreen_pipeline::Pipeline;
use bluegreen_router::events::Event;
use bluegreen_router::tls::acme::Acme;
use bluegreen_router::tls::Reload;
use bluegreen_router::{health, listener, ListenerKind, Router};
use bluegreen_store::StateStore;
use bluegreen_store::{EtcdStore, FileStore};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What `serve` got from whoever started it.
pub struct Process {
    /// Listening sockets passed in (systemd, or the process we take over from).
    pub sockets: Sockets,
    /// Started by a running bluegreen handing over to us.
    pub handover: bool,
    /// Where the admin API sends upgrade requests.
    pub control: bluegreen_api::lifecycle::ControlSender,
}

/// How long a new process waits for the old one to hand the state over.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Entry point of `bluegreen serve`.
pub fn main(path: &Path) -> anyhow::Result<ExitCode> {
    // 0. What whoever started us passed (sockets, the notify socket, a
    //    handover), read and cleared before any thread exists, so app
    //    processes never inherit it.
    let sockets = Sockets::from_env()?;
    let notifier = Arc::new(Notifier::from_env());
    let upstream_notify = std::env::var(crate::server::notify::UPSTREAM_VAR).ok();
    std::env::remove_var(crate::server::notify::UPSTREAM_VAR);
    let handover = std::env::var_os(crate::server::upgrade::HANDOVER_VAR).is_some();
    std::env::remove_var(crate::server::upgrade::HANDOVER_VAR);
    let exe = std::env::current_exe().context("cannot find the running binary")?;
    // 1. Config: refuse to start on any problem, listing them all.
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if crate::certs::certificates(&config, path).is_err() {
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    // 2. The admin token must exist before anything listens.
    let token = match std::env::var(&config.admin.token_env) {
        Ok(t) if !t.trim().is_empty() => t,
        _ => {
            eprintln!(
                "error: the admin token is not set: export {}=<secret> (the variable named by admin.token_env in {})",
                config.admin.token_env,
                path.display()
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    // The token stays in this process only: app processes and hooks started
    // later must not inherit the admin API's secret (a handover passes it
    // to the new process explicitly).
    std::env::remove_var(&config.admin.token_env);
    // 3. Runtime sized by the config. One worker runs on a current-thread
    //    runtime: no work-stealing bookkeeping on the request path.
    let mut rt = match config.proxy.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = rt.block_on(async move {
        // Handlers go in first: a SIGHUP while starting must not meet the
        // default action (exit); a SIGTERM then stops us once started.
        let mut signals = Signals::install()?;
        let (control, mut requests) = tokio::sync::mpsc::channel(4);
        let process = Process {
            sockets,
            handover,
            control,
        };
        let running = start(config, &token, process).await?;
        let or_off =
            |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        // Whoever reads stdout may be gone: the server goes on regardless.
        let _ = writeln!(
            std::io::stdout(),
            "bluegreen ready proxy={} preview={} admin={} live={} https={} https_preview={} pid={}",
            running.proxy,
            or_off(running.preview),
            running.admin,
            running.router.live(),
            or_off(running.https),
            or_off(running.https_preview),
            std::process::id(),
        );
        let _ = std::io::stdout().flush();
        // Serving: tell whoever waits (systemd, or the process we took
        // over from, which passes systemd's socket on to us).
        notifier.send(&format!("READY=1\nMAINPID={}", std::process::id()));
        if handover {
            notifier.redirect(upstream_notify.filter(|s| !s.is_empty()));
        }
        let mut upgrade = crate::server::upgrade::Upgrades::new(
            exe,
            notifier.clone(),
            (running.router.config().admin.token_env.clone(), token.clone()),
        );
        let refuse_reload = || {
            bluegreen_api::lifecycle::ReloadError::Failed(
                "an upgrade is in progress: reload once it is done (the new process reads the file itself)".into(),
            )
        };
        let handed_over = loop {
            tokio::select! {
                sig = signals.next() => match sig {
                    // A stop during a handover cancels it (a new process
                    // not ready yet is stopped; one already serving is
                    // told to stop too): the service stops, as asked.
                    Signal::Stop => break upgrade.finish().await,
                    Signal::Upgrade => upgrade.start(&running, None, None, None).await,
                    Signal::Reload if upgrade.busy() => tracing::warn!("SIGHUP during an upgrade: not reloaded"),
                    Signal::Reload => {
                        let _ = crate::server::reload::reload(path, &running).await;
                    }
                },
                Some(req) = requests.recv() => match req {
                    bluegreen_api::lifecycle::Control::Upgrade { binary, ready_timeout, reply } => {
                        upgrade.start(&running, binary, ready_timeout, Some(reply)).await
                    }
                    bluegreen_api::lifecycle::Control::Reload { reply } if upgrade.busy() => {
                        let _ = reply.send(Err(refuse_reload()));
                    }
                    bluegreen_api::lifecycle::Control::Reload { reply } => {
                        let _ = reply.send(crate::server::reload::reload(path, &running).await);
                    }
                },
                done = upgrade.outcome() => {
                    if done {
                        break true;
                    }
                }
            }
        };
        // Requests still queued get "shutting down" (their reply senders
        // drop), so the admin API's graceful shutdown never waits on them.
        drop(requests);
        if !handed_over {
            notifier.send("STOPPING=1");
        }
        running.shutdown(handed_over).await;
        Ok(ExitCode::SUCCESS)
    });
    // Everything that matters is written by now. A blocking task still
    // running (a file read stuck on a hung file system) must not keep the
    // process alive past its stop: dropping the runtime would wait for it.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// Opens the store, restores state, binds every listener and starts serving.
pub async fn start(config: Config, token: &str, process: Process) -> anyhow::Result<Running> {
    // 1. State: a corrupt or locked store stops us here, before any socket opens.
    let state_dir = config.state.dir.clone();
    // A process taking over from another waits for it to hand the state
    // over (it releases the lock once we are running).
    let store: Arc<dyn StateStore> = if let Some(etcd) = config.state.etcd.clone() {
        // Shared by every node of the service; the process table, app logs
        // and recordings stay in the state dir of this node.
        let dir = state_dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create the state dir {}", dir.display()))
        })
        .await??;
        Arc::new(tokio::task::spawn_blocking(move || EtcdStore::open(&etcd)).await??)
    } else if process.handover {
        let dir = state_dir.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || FileStore::open_waiting(&dir, HANDOVER_WAIT))
                .await??,
        )
    } else {
        Arc::new(FileStore::open(&state_dir)?)
    };
    let proxy_addr = config.proxy.listen;
    let preview_addr = config.proxy.preview_listen;
    let admin_addr = config.admin.listen;
    let grace = config.switch.drain_timeout;
    // Certificates are loaded and checked before anything listens.
    let tls = match &config.tls {
        Some(t) => Some((
            t.clone(),
            bluegreen_router::tls::acceptor(t)
                .map_err(|e| anyhow::anyhow!("tls.certificates: {e}"))?,
        )),
        None => None,
    };
    let admin_tls = match &config.admin.tls {
        Some(pair) => Some(
            bluegreen_router::tls::admin_acceptor(pair)
                .map_err(|e| anyhow::anyhow!("admin.tls: {e}"))?,
        ),
        None => None,
    };
    let deploy = config.deploy.clone();
    let acme_store = store.clone();
    let kept_store = store.clone();
    let router = Router::new(config, store.clone())?;
    let pipeline = match deploy {
        Some(d) => Some(Pipeline::new(router.clone(), store, d, &state_dir)?),
        None => None,
    };

    // 2. Bind everything before serving anything, so a busy port fails
    //    cleanly; sockets handed to us (systemd, or the process we take
    //    over from) are used as they are.
    let mut sockets = process.sockets;
    let proxy = sockets.listen("proxy", proxy_addr, "proxy.listen").await?;
    let preview = match preview_addr {
        Some(a) => Some(sockets.listen("preview", a, "proxy.preview_listen").await?),
        None => None,
    };
    let admin = sockets.listen("admin", admin_addr, "admin.listen").await?;
    let (https, https_preview) = match &tls {
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
    let https_local = https.as_ref().map(|l| l.local_addr()).transpose()?;
    let https_preview_local = https_preview.as_ref().map(|l| l.local_addr()).transpose()?;
    if let Some(a) = https_local {
        router.set_listener("https", a);
    }
    if let Some(a) = https_preview_local {
        router.set_listener("https_preview", a);
    }
    let proxy_local = proxy.local_addr()?;
    let preview_local = preview.as_ref().map(|l| l.local_addr()).transpose()?;
    let admin_local = admin.local_addr()?;
    router.set_listener("proxy", proxy_local);
    if let Some(a) = preview_local {
        router.set_listener("preview", a);
    }
    router.set_listener("admin", admin_local);

    // 3. Health checks start before traffic so the first results come quickly.
    let stop = CancellationToken::new();
    let health = health::spawn(&router.plane, stop.clone());
    // Memory freed by a burst of clients going idle goes back to the system.
    bluegreen_router::memory::spawn_trimmer(router.plane.clone(), stop.clone());
    // With a shared store: follow what other nodes write, report ours.
    router.spawn_cluster(stop.clone());
    // One point of live traffic per second for charts and the event stream.
    bluegreen_router::control::spawn_sampler(
        router.clone(),
        std::time::Duration::from_secs(1),
        stop.clone(),
    );

    // 4. Serve.
    let acceptor = tls.map(|(t, (a, certs))| {
        // Certificate files are watched: a good new set is swapped in, a bad
        // one is kept out, and either is announced.
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
        // ACME obtains and renews its certificate in the background; until
        // the first one arrives, handshakes for its names use the files' (or fail).
        let acme = t.acme.map(|acme| {
            let acme = Arc::new(Acme::new(acme, acme_store, certs));
            router.set_acme(acme.clone());
            acme
        });
        (a, acme)
    });
    let (acceptor, acme) = match acceptor {
        Some((a, acme)) => (Some(a), acme),
        None => (None, None),
    };
    if let Some(acme) = acme {
        // The stored certificate is in use before the first handshake.
        let r = router.clone();
        let announce: bluegreen_router::tls::acme::Announce =
            Arc::new(move |ok, detail| r.events.emit(Event::Tls { ok, detail }));
        acme.restore(&announce).await;
        acme.spawn(announce, stop.clone());
    }
    let mut listeners = Vec::new();
    for (l, kind, secure) in [
        (Some(proxy), ListenerKind::Main, None),
        (preview, ListenerKind::Preview, None),
        (https, ListenerKind::Main, acceptor.clone()),
        (https_preview, ListenerKind::Preview, acceptor.clone()),
    ] {
        let Some(l) = l else { continue };
        listeners.push(tokio::spawn(listener::serve(
            router.plane.clone(),
            l,
            kind,
            secure,
            stop.clone(),
            grace,
        )));
    }
    // 5. The pipeline picks up where it was: app processes re-adopted, an
    //    interrupted deploy resumed.
    if let Some(p) = &pipeline {
        p.start_up().await?;
    }
    let app = bluegreen_api::app(
        router.clone(),
        pipeline.clone(),
        token,
        Some(process.control),
    );
    let admin_tls = admin_tls.map(|(acceptor, certs)| {
        // Watched like the edge's certificates (the watcher logs changes).
        bluegreen_router::tls::watch(certs, Arc::new(|_| {}), stop.clone());
        (acceptor, router.clone())
    });
    let admin_task = tokio::spawn(crate::server::admin::serve(
        admin,
        app,
        admin_tls,
        stop.clone(),
    ));
    tracing::info!(proxy = %proxy_local, preview = ?preview_local, admin = %admin_local, live = %router.live(), "router started");
    Ok(Running {
        router,
        pipeline,
        proxy: proxy_local,
        preview: preview_local,
        https: https_local,
        https_preview: https_preview_local,
        admin: admin_local,
        stop,
        listeners,
        admin_task,
        health,
        sockets,
        store: kept_store,
    })
}

/// The signals `serve` acts on: SIGTERM and SIGINT stop it, SIGUSR2
/// hands over to a new process (like `bluegreen upgrade`), SIGHUP reloads
/// the config (like `bluegreen reload`). Handlers are installed before
/// anything starts, so none meets its default action (which would end the
/// process and refuse every connection).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

/// What a signal asks for.
enum Signal {
    Stop,
    Upgrade,
    Reload,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
            usr2: signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?,
        })
    }

    /// The next signal that asks for something.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                Signal::Stop
            }
            _ = self.int.recv() => {
                tracing::info!("SIGINT: shutting down");
                Signal::Stop
            }
            _ = self.usr2.recv() => {
                tracing::info!("SIGUSR2: handing over to a new process");
                Signal::Upgrade
            }
            _ = self.hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                Signal::Reload
            }
        }
    }
}
