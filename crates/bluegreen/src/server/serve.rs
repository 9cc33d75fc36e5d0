//! `bluegreen serve`: load config, restore state, listen, route, shut down
//! gracefully on SIGTERM/SIGINT.

use crate::exit::EXIT_CONFIG;
use crate::server::notify::Notifier;
use crate::server::running::Running;
use crate::server::sockets::Sockets;
use crate::server::startup;
use anyhow::Context;
use bluegreen_core::config::Config;
use std::io::Write;
use std::net::SocketAddr;
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
    // 1. State: a corrupt or locked store stops us here, before any socket
    //    opens; certificates are loaded and checked too.
    let store = startup::open_store(&config, process.handover).await?;
    let tls = startup::load_tls(&config)?;
    let (router, pipeline) = startup::router_and_pipeline(config, store.clone())?;
    // 2. Bind everything before serving anything.
    let (bound, sockets) = startup::bind(process.sockets, &router, tls.edge.as_ref()).await?;
    // 3. Background work before traffic: health, memory, cluster, series.
    let stop = CancellationToken::new();
    let health = startup::spawn_background(&router, &stop);
    // 4. Serve: certificates watched, ACME restored, the listeners.
    let acceptor = startup::edge_tls(&router, tls.edge, store.clone(), &stop).await;
    let mut bound = bound;
    let listeners = startup::spawn_listeners(&router, &mut bound, acceptor, &stop);
    // 5. The pipeline picks up where it was: app processes re-adopted, an
    //    interrupted deploy resumed; then the admin API.
    if let Some(p) = &pipeline {
        p.start_up().await?;
    }
    let local = bound.local;
    let admin_task = startup::spawn_admin(
        &router,
        pipeline.clone(),
        token,
        process.control,
        bound.admin,
        tls.admin,
        &stop,
    );
    tracing::info!(proxy = %local.proxy, preview = ?local.preview, admin = %local.admin, live = %router.live(), "router started");
    Ok(Running {
        router,
        pipeline,
        proxy: local.proxy,
        preview: local.preview,
        https: local.https,
        https_preview: local.https_preview,
        admin: local.admin,
        stop,
        listeners,
        admin_task,
        health,
        sockets,
        store,
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
