//! The daemon's life: prepare its directories, take the root's lock, bind the socket,
//! serve until SIGTERM or SIGINT, then shut down gracefully and remove the socket.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::fcntl::{Flock, FlockArg};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::{StreamExt as _, wrappers::UnixListenerStream};

use crate::{
    config::Config,
    image::ImageStore,
    runtime::Runtime,
    server::{self, listener},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Dir {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "root {root} is in use by another stratad (pid {pid}); stop it or choose another --root"
    )]
    RootInUse { root: PathBuf, pid: String },
    #[error(transparent)]
    Socket(#[from] listener::Error),
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("opening the image store: {0}")]
    Images(#[from] crate::image::Error),
    #[error("opening the runtime: {0}")]
    Runtime(#[from] crate::runtime::Error),
    #[error("start-up failed: {0}")]
    Startup(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the cgroup filesystem is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long in-flight calls may run on after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the daemon until a shutdown signal. Must be called inside a tokio runtime.
pub async fn run(config: Config) -> Result<()> {
    // Before anything is made: with the systemd driver, the parent must be a slice.
    if config.cgroups.driver == crate::config::CgroupDriver::Systemd
        && let Err(e) = crate::cgroup::systemd::slice_path(&config.cgroup_parent)
    {
        return Err(Error::Startup(format!(
            "cgroup_parent {:?}: with the systemd cgroup driver, a slice: {e}",
            config.cgroup_parent
        )));
    }
    create_dir(&config.root, "cannot create root")?;
    create_dir(&config.state_dir, "cannot create state directory")?;
    let _lock = lock_root(&config.root)?;
    // Made before anything is served: helpers never run from the host's binary.
    crate::sys::selfexe::helper_binary().map_err(|e| Error::Startup(e.to_string()))?;

    let (socket, listener) = listener::Socket::bind(&config.socket, config.socket_access)?;
    // Every connection goes through the HTTP/2 front that mends the client's `:authority`.
    let incoming = UnixListenerStream::new(listener)
        .map(|conn| conn.map(server::authority::AuthorityFront::new));
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Error::Signals)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The remote API's files are read (and its port bound) before anything is served: a
    // mistake there stops the start-up, not the first client.
    let remote = match &config.remote.listen {
        Some(_) => {
            let remote = Arc::new(
                server::mtls::Remote::load(config.remote.clone())
                    .map_err(|e| Error::Startup(e.to_string()))?,
            );
            let listener = remote
                .bind()
                .await
                .map_err(|e| Error::Startup(e.to_string()))?;
            Some((remote, listener))
        }
        None => None,
    };

    let socket_path = config.socket.display().to_string();
    let images = {
        let (root, images, registries) = (
            config.root.clone(),
            config.images.clone(),
            config.registries.clone(),
        );
        tokio::task::spawn_blocking(move || ImageStore::open(&root, images, registries))
            .await
            .map_err(|e| Error::Startup(e.to_string()))??
    };
    let images = Arc::new(images);
    let mut runtime = Runtime::open(
        &config.root,
        &config.state_dir,
        Path::new(CGROUP_ROOT),
        &config.cgroup_parent,
    )?;
    if config.cgroups.driver == crate::config::CgroupDriver::Systemd {
        let systemd = Arc::new(crate::cgroup::systemd::Systemd::new(
            &config.cgroups.systemd_socket,
            runtime.cgroup_version() == 2,
        ));
        let version = systemd
            .version()
            .await
            .map_err(|e| Error::Startup(e.to_string()))?;
        tracing::info!(systemd = %version, parent = %config.cgroup_parent, "cgroup driver: systemd");
        runtime.set_systemd(systemd);
    }
    runtime.set_pids_limit(config.pids_limit);
    runtime.set_cdi_dirs(config.cdi_spec_dirs.clone());
    runtime.set_network(Arc::new(crate::cni::Cni::new(config.cni.clone())));
    runtime.set_rlimits(&config.rlimits);
    // Layers that containers use are never garbage-collected, across restarts too.
    let store = Arc::new(StoreLeases(Arc::clone(&images)));
    runtime.set_leases(store.clone()).await;
    runtime.set_images(store);
    images.collect_leftovers().await?;
    runtime.release_orphans().await;
    let runtime = Arc::new(runtime);
    let (streaming, streaming_listener) =
        server::streaming::Server::bind(&config.streaming, Arc::clone(&runtime))
            .await
            .map_err(|e| Error::Startup(e.to_string()))?;
    tokio::spawn(Arc::clone(&streaming).serve(streaming_listener));
    let ctx = Arc::new(server::Context {
        events: server::events::Events::new(config.events.queue),
        config,
        images,
        runtime,
        streaming,
    });
    // Containers that run on from before this start say STOPPED when they end.
    for c in ctx.runtime.containers(&Default::default()).await {
        if c.state == crate::runtime::container::ContainerState::Running {
            ctx.watch_exit(c.id).await;
        }
    }
    let remote = match remote {
        Some((remote, listener)) => {
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tokio::spawn(Arc::clone(&remote).accept(listener, tx));
            let router = server::router(Arc::clone(&ctx)).await;
            let mut stop = stop_rx.clone();
            let serving = router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                async move {
                    let _ = stop.changed().await;
                },
            );
            tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "the remote API stopped");
                }
            });
            tracing::info!(listen = %addr, "remote API serving (mutual TLS)");
            Some(remote)
        }
        None => None,
    };
    if let Some(listen) = &ctx.config.metrics.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Startup(format!("metrics: cannot listen on {listen}: {e}")))?;
        tracing::info!(listen = %listen, "metrics at /metrics");
        tokio::spawn(server::metrics::serve(Arc::clone(&ctx), listener));
    }
    let watchdog_ctx = Arc::clone(&ctx);
    let router = server::router(ctx).await;
    tracing::info!(socket = %socket_path, version = env!("CARGO_PKG_VERSION"), "stratad serving");
    notify_systemd("READY=1");
    // Pings only once systemd has heard READY: before it, systemd has no use for them.
    if let Some(every) = watchdog_interval() {
        tokio::spawn(watchdog(watchdog_ctx, every));
    }
    let mut stop = stop_rx.clone();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stop.changed().await;
    }));
    let name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => reload(remote.as_deref()),
        }
    };
    notify_systemd("STOPPING=1");
    tracing::info!(signal = name, "shutting down");
    let _ = stop_tx.send(true);
    // In-flight calls get a grace period; a client that keeps its connection open (or
    // never acknowledges the HTTP/2 GOAWAY) must not keep the daemon alive.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them")
        }
    }
    drop(socket);
    tracing::info!("stopped");
    Ok(())
}

fn create_dir(path: &Path, what: &'static str) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| Error::Dir {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// One daemon per root: two would corrupt each other's records. The lock dies with the
/// process, so a crash never leaves a stale lock behind.
fn lock_root(root: &Path) -> Result<Flock<File>> {
    let path = root.join("stratad.lock");
    let dir_err = |source| Error::Dir {
        what: "cannot write lock file",
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(dir_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(Error::RootInUse {
                root: root.to_path_buf(),
                pid: pid.trim().to_string(),
            });
        }
        Err((_, errno)) => return Err(dir_err(errno.into())),
    };
    lock.set_len(0).map_err(dir_err)?;
    write!(lock, "{}", std::process::id()).map_err(dir_err)?;
    Ok(lock)
}

/// SIGHUP: the remote API's certificates and CA are read again. Running containers and
/// open connections are not touched; a file that does not load keeps the old ones.
fn reload(remote: Option<&server::mtls::Remote>) {
    let Some(remote) = remote else {
        tracing::info!("SIGHUP: nothing to reload (no remote API)");
        return;
    };
    match remote.reload() {
        Ok(took) => tracing::info!(
            took_us = took.as_micros() as u64,
            "SIGHUP: remote API certificates reloaded"
        ),
        Err(e) => tracing::error!(error = %e, "SIGHUP: keeping the remote API's old certificates"),
    }
}

/// How often to tell systemd the daemon is alive: half its `WatchdogSec` (systemd passes it
/// as WATCHDOG_USEC, with WATCHDOG_PID naming the process it is for).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// WATCHDOG=1 while the daemon works: each ping follows a look at the pods and containers
/// (their locks taken, their records read) that finished in time. A daemon that hangs stops
/// pinging, and systemd restarts it; the containers stay up.
async fn watchdog(ctx: Arc<server::Context>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let look = async {
            ctx.runtime.pods(&Default::default()).await;
            ctx.runtime.containers(&Default::default()).await;
        };
        match tokio::time::timeout(every, look).await {
            Ok(()) => notify_systemd("WATCHDOG=1"),
            Err(_) => tracing::error!(
                ?every,
                "watchdog: the runtime did not answer in time; not telling systemd we are alive"
            ),
        }
    }
}

/// Tells systemd (Type=notify) `state`. Without NOTIFY_SOCKET, a no-op.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|sock| sock.send_to(state.as_bytes(), Path::new(&path)));
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The image store as the runtime is given it: its images found and read, its layers
/// leased.
struct StoreLeases(Arc<crate::image::ImageStore>);

impl crate::runtime::ImageSource for StoreLeases {
    fn image_root(
        &self,
        name: &str,
    ) -> std::result::Result<crate::runtime::container::ImageRoot, crate::image::Error> {
        let store = &self.0;
        let image = store
            .find(name)
            .ok_or_else(|| crate::image::Error::NotFound(name.to_string()))?;
        let run = store.config(&image)?.config.unwrap_or_default();
        // The name a kubelet shows as the container's imageID: repo@digest of the
        // repository asked for, else of any repository the image came from.
        let repository = crate::image::reference::Reference::parse(name)
            .ok()
            .map(|r| r.name());
        let repo_digest = image
            .digests
            .iter()
            .find(|d| repository.as_deref() == d.split_once('@').map(|(repo, _)| repo))
            .or_else(|| image.digests.iter().next())
            .cloned()
            .unwrap_or_default();
        Ok(crate::runtime::container::ImageRoot {
            id: image.id.to_string(),
            repo_digest,
            layers: image
                .layers
                .iter()
                .map(|l| store.layer_path(&l.diff_id))
                .collect(),
            diff_ids: image.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
            stop_signal: run.stop_signal.unwrap_or_default(),
        })
    }
}

impl crate::runtime::LayerLeases for StoreLeases {
    fn pin(&self, owner: &str, diff_ids: &[String]) {
        self.0.pin_layers(
            owner,
            diff_ids.iter().filter_map(|d| d.parse().ok()).collect(),
        );
    }

    fn unpin(&self, owner: &str) {
        self.0.release_layers(owner);
    }
}
