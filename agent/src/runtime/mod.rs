//! Pods and containers: their records, their namespaces and cgroups. Nothing here knows
//! about gRPC; the server converts CRI messages to and from these types.
//!
//! This file holds the runtime itself (what it owns, how it opens its records after a
//! restart) and the helpers every operation shares; the operations are one a file in
//! `pod/` and `container/`, the types in `sandbox.rs` and `container/mod.rs`.

pub mod container;
mod leases;
mod pod;
pub mod sandbox;
mod usage;

pub use leases::{ImageSource, LayerLeases};
pub use usage::Usage;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use container::Container;
pub use container::ContainerFilter;
use pod::read_attachments;
use sandbox::{Sandbox, SandboxState};

use crate::{
    cgroup, cni,
    oci::{self, Helper, spec},
    state,
    sys::mount::is_mount_point,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod sandbox {0:?} not found")]
    SandboxNotFound(String),
    #[error("a pod sandbox named {name:?} already exists ({id})")]
    SandboxExists { name: String, id: String },
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    #[error("a container named {name:?} already exists in the pod ({id})")]
    ContainerExists { name: String, id: String },
    /// The request cannot be carried out in the state things are in (a container not
    /// running, a pod not ready).
    #[error("{0}")]
    Precondition(String),
    /// The node failed the runtime (a worker thread lost, a process that outlives
    /// SIGKILL): nothing the caller can change.
    #[error("{0}")]
    Internal(String),
    /// The container's init (or its monitor) failed while it was set up, at `stage` when
    /// it said where: what the request asked may be the cause (a mount, the working
    /// directory, the user, a profile) or not (the host).
    #[error("creating the container failed: {message}")]
    CreateFailed {
        stage: Option<crate::oci::Stage>,
        message: String,
    },
    #[error("{0}")]
    Timeout(String),
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Systemd(#[from] cgroup::systemd::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    #[error(transparent)]
    Network(#[from] crate::cni::Error),
    #[error(transparent)]
    Cdi(#[from] crate::cdi::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    AppArmor(#[from] crate::apparmor::Error),
    #[error("pinning the pod's namespaces: {0}")]
    Namespaces(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod sandbox record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Which pods a list asks for; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct SandboxFilter {
    pub id: Option<String>,
    pub state: Option<SandboxState>,
    pub labels: BTreeMap<String, String>,
}

pub struct Runtime {
    /// Records: `<root>/sandboxes/<id>/`.
    records: PathBuf,
    /// Pinned namespaces: `<state_dir>/sandboxes/<id>/ns/` (they do not outlive a reboot).
    pins: PathBuf,
    cgroups: cgroup::Hierarchy,
    cgroup_root: PathBuf,
    cgroup_parent: String,
    sandboxes: tokio::sync::Mutex<BTreeMap<String, Sandbox>>,
    /// Container directories: `<root>/containers/<id>/`.
    containers_dir: PathBuf,
    containers: tokio::sync::Mutex<BTreeMap<String, Container>>,
    /// Applied to every container that brings no pids limit of its own (0: none).
    pids_limit: i64,
    /// Resource limits every container starts with.
    rlimits: Vec<spec::Rlimit>,
    /// Where CDI devices are defined.
    cdi: crate::cdi::Registry,
    /// Compiled seccomp programs.
    seccomp: crate::seccomp::Cache,
    /// Names (`<pod>/<name>_<attempt>`) of containers being created.
    creating: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Full names of pods being created.
    creating_pods: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per-container operation locks (see `op_lock`).
    op_locks:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Pod networks (CNI).
    network: std::sync::Arc<cni::Cni>,
    /// Networks of pods whose creation a crash interrupted: released by `release_orphans`.
    orphan_networks: std::sync::Mutex<Vec<cni::Attachment>>,
    /// The systemd cgroup driver, when it is the one in use.
    systemd: Option<std::sync::Arc<cgroup::systemd::Systemd>>,
    /// systemd units of pods and containers whose creation a crash interrupted: stopped by
    /// `release_orphans`.
    orphan_units: std::sync::Mutex<Vec<String>>,
    /// Disk use of read-write layers, counted off the async workers and cached.
    usage: usage::UsageCache,
    /// The image store's leases on the layers containers are made of.
    leases: Option<std::sync::Arc<dyn LayerLeases>>,
    /// Where the images of containers and image volumes are found.
    images: Option<std::sync::Arc<dyn ImageSource>>,
}

impl Runtime {
    /// Loads the records and reconciles them with the machine: a pod whose pinned
    /// namespaces are gone (after a reboot) is NotReady; a half-created pod is removed.
    pub fn open(
        root: &Path,
        state_dir: &Path,
        cgroup_root: &Path,
        cgroup_parent: &str,
    ) -> Result<Runtime> {
        let records = root.join("sandboxes");
        let pins = state_dir.join("sandboxes");
        for dir in [&records, &pins] {
            std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        }
        let cgroups = cgroup::Hierarchy::detect(cgroup_root)?;
        let mut sandboxes = BTreeMap::new();
        let mut orphans = Vec::new();
        let mut orphan_units = Vec::new();
        for entry in std::fs::read_dir(&records).map_err(io_err("cannot read", &records))? {
            let entry = entry.map_err(io_err("cannot read", &records))?;
            let record = entry.path().join("state.json");
            let id = entry.file_name().to_string_lossy().into_owned();
            let bytes = match std::fs::read(&record) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::info!(sandbox = %id, "removing a half-created pod sandbox");
                    orphan_units.extend(remove_half_built::<Sandbox>(
                        &cgroups,
                        &entry.path(),
                        |s| &s.cgroup,
                    ));
                    orphans.extend(
                        read_attachments(&entry.path())
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                    );
                    release_pins(&pins.join(&id));
                    let _ = std::fs::remove_dir_all(entry.path());
                    continue;
                }
                Err(e) => return Err(io_err("cannot read", &record)(e)),
            };
            let mut sandbox: Sandbox =
                serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
                    path: record.clone(),
                    source,
                })?;
            if sandbox.state == SandboxState::Ready
                && !sandbox.namespaces.values().all(|p| is_mount_point(p))
            {
                tracing::info!(sandbox = %id, "its namespaces are gone; marking it NotReady");
                sandbox.not_ready();
            }
            sandboxes.insert(id, sandbox);
        }
        let containers_dir = root.join("containers");
        std::fs::create_dir_all(&containers_dir)
            .map_err(io_err("cannot create", &containers_dir))?;
        let mut containers = BTreeMap::new();
        for entry in
            std::fs::read_dir(&containers_dir).map_err(io_err("cannot read", &containers_dir))?
        {
            let entry = entry.map_err(io_err("cannot read", &containers_dir))?;
            let record = entry.path().join("state.json");
            match std::fs::read(&record) {
                Ok(bytes) => {
                    let c: Container =
                        serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
                            path: record.clone(),
                            source,
                        })?;
                    containers.insert(c.id.clone(), c);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::info!(path = %entry.path().display(), "removing a half-created container");
                    orphan_units.extend(remove_half_built::<Container>(
                        &cgroups,
                        &entry.path(),
                        |c| &c.cgroup,
                    ));
                    // Its monitor, if it got one, may still be writing the exit of the init
                    // just killed.
                    if let Err(e) = state::remove_record_dir(&entry.path()) {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a half-created container");
                    }
                }
                Err(e) => return Err(io_err("cannot read", &record)(e)),
            }
        }
        let runtime = Runtime {
            records,
            pins,
            cgroups,
            cgroup_root: cgroup_root.to_path_buf(),
            cgroup_parent: cgroup_parent.trim_matches('/').to_string(),
            sandboxes: tokio::sync::Mutex::new(sandboxes),
            containers_dir,
            containers: tokio::sync::Mutex::new(containers),
            pids_limit: 0,
            rlimits: Vec::new(),
            cdi: crate::cdi::Registry::new(crate::cdi::Registry::default_dirs()),
            seccomp: crate::seccomp::Cache::default(),
            creating: Default::default(),
            creating_pods: Default::default(),
            op_locks: Default::default(),
            network: std::sync::Arc::new(cni::Cni::new(cni::Settings::default())),
            orphan_networks: std::sync::Mutex::new(orphans),
            systemd: None,
            orphan_units: std::sync::Mutex::new(orphan_units),
            usage: usage::UsageCache::default(),
            leases: None,
            images: None,
        };
        runtime.reconcile_containers();
        Ok(runtime)
    }

    pub fn set_network(&mut self, network: std::sync::Arc<cni::Cni>) {
        self.network = network;
    }

    pub fn network(&self) -> &cni::Cni {
        &self.network
    }

    /// Releases (`DEL`) the networks of pods a crash left half-created, then has plugins
    /// that can (`GC`, CNI 1.1.0) release whatever no known pod holds.
    pub async fn release_orphans(&self) {
        let units =
            std::mem::take(&mut *self.orphan_units.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(systemd) = &self.systemd {
            for unit in units {
                if let Err(e) = systemd.stop(&unit).await {
                    tracing::warn!(unit, error = %e, "cannot stop the unit of a half-created pod or container");
                }
            }
        }
        let orphans = std::mem::take(
            &mut *self
                .orphan_networks
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for attachment in orphans {
            if let Err(e) = self.network.del(&attachment).await {
                tracing::warn!(sandbox = %attachment.container_id, error = %e, "cannot release the network of a half-created pod");
            }
        }
        let ids: Vec<String> = self.sandboxes.lock().await.keys().cloned().collect();
        let mut valid = Vec::new();
        for id in ids {
            match read_attachments(&self.sandbox_dir(&id)) {
                Ok(attachments) => valid.extend(
                    attachments
                        .into_iter()
                        .flatten()
                        .map(|a| (a.network, a.container_id, a.ifname)),
                ),
                // A pod whose attachments cannot be read might hold anything: no GC.
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "no CNI GC: a pod's networks are unreadable");
                    return;
                }
            }
        }
        self.network.gc(&valid).await;
    }

    /// The CDI spec directories, lowest priority first.
    pub fn set_cdi_dirs(&mut self, dirs: Vec<PathBuf>) {
        self.cdi = crate::cdi::Registry::new(dirs);
    }

    pub fn set_pids_limit(&mut self, limit: i64) {
        self.pids_limit = limit;
    }

    /// Limits by lowercase name (`nofile`), soft = hard.
    pub fn set_rlimits(&mut self, limits: &BTreeMap<String, u64>) {
        self.rlimits = limits
            .iter()
            .map(|(name, value)| spec::Rlimit {
                kind: format!("RLIMIT_{}", name.to_ascii_uppercase()),
                hard: *value,
                soft: *value,
            })
            .collect();
    }

    pub fn cgroup_version(&self) -> u8 {
        self.cgroups.version()
    }

    /// Leases the layers of containers from `leases` from now on, beginning with those of
    /// the containers that exist (so that a restart collects none of them).
    pub async fn set_leases(&mut self, leases: std::sync::Arc<dyn LayerLeases>) {
        for c in self.containers.lock().await.values() {
            leases.pin(&c.id, &c.layers_in_use());
        }
        self.leases = Some(leases);
    }

    /// Finds the images of containers in `images` from now on.
    pub fn set_images(&mut self, images: std::sync::Arc<dyn ImageSource>) {
        self.images = Some(images);
    }

    /// The image `name` names, as a container needs it.
    pub(crate) fn image_root(&self, name: &str) -> Result<container::ImageRoot> {
        let images = self
            .images
            .as_ref()
            .ok_or_else(|| Error::Internal("the runtime has no image store".into()))?;
        Ok(images.image_root(name)?)
    }

    /// Uses the systemd cgroup driver from now on (before anything is created).
    pub fn set_systemd(&mut self, systemd: std::sync::Arc<cgroup::systemd::Systemd>) {
        self.systemd = Some(systemd);
    }

    /// Removes the cgroup at `path` (its processes killed already): a systemd unit is
    /// stopped first, then whatever systemd left (the controllers it does not manage).
    pub(super) async fn remove_cgroup(&self, path: &str) -> Result<()> {
        if let Some(unit) = cgroup::systemd::unit_of(path) {
            match &self.systemd {
                Some(systemd) => systemd.stop(unit).await?,
                None => tracing::warn!(
                    unit,
                    "a systemd unit is left, the systemd cgroup driver being off"
                ),
            }
        }
        let cgroup = self.cgroups.cgroup(path)?;
        tokio::task::spawn_blocking(move || cgroup.remove())
            .await
            .map_err(|e| Error::Internal(format!("removing a cgroup: {e}")))??;
        Ok(())
    }
}

/// Kills every process of a cgroup (freezing it meanwhile), off the async threads.
pub(super) async fn kill_cgroup(cgroup: &crate::cgroup::Cgroup) -> Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    let cgroup = cgroup.clone();
    tokio::task::spawn_blocking(move || cgroup.kill_all())
        .await
        .map_err(|e| Error::Internal(format!("killing a cgroup's processes: {e}")))?
        .map_err(Error::from)
}

/// What a path from a request must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    /// A host or container path: never resolved against the daemon's working directory.
    Absolute,
    /// A name below a directory the request gave (a log path below the log directory).
    Below,
}

/// Refuses a path from a request that is not of `kind`, or that climbs with `..`.
pub(crate) fn check_path(what: &str, path: &str, kind: PathKind) -> Result<()> {
    let p = Path::new(path);
    let reason = if path.contains('\0') {
        Some("contains a NUL byte")
    } else if kind == PathKind::Absolute && !p.is_absolute() {
        Some("must be an absolute path")
    } else if kind == PathKind::Below && (p.is_absolute() || path.is_empty()) {
        Some("must be a relative path below its directory")
    } else if p.components().any(|c| c == std::path::Component::ParentDir) {
        Some("must not contain '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Invalid {
            what: format!("{what} {path:?}"),
            reason: reason.into(),
        }),
        None => Ok(()),
    }
}

/// Starts `stratad __pidns` and returns the holder's pid. Its command line names no host
/// path: every container of the pod can read it as `/proc/1/cmdline`.
pub(super) async fn spawn_pid_holder() -> Result<u32> {
    let output = oci::helper_command(Helper::Pidns)
        .map_err(|e| Error::Namespaces(format!("finding our own binary: {e}")))?
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Namespaces(format!("running the PID namespace holder: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|_| {
        Error::Namespaces(format!(
            "the PID namespace holder failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })
}

/// The record of a pod or container being built, beside where its `state.json` will be.
pub(crate) const CREATING: &str = "creating.json";

/// Writes a record (a pod's or container's state, a spec, a network cache) atomically.
pub(crate) fn write_record(path: &Path, record: &impl serde::Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| Error::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    state::write_atomic(path, &bytes).map_err(io_err("cannot write", path))
}

/// Kills whatever runs in a half-built pod's or container's cgroup and removes it, as its
/// `creating.json` names it. Best effort: for start-up.
/// Returns the systemd unit the cgroup is, if it is one, for `release_orphans` to stop.
fn remove_half_built<T: serde::de::DeserializeOwned>(
    cgroups: &cgroup::Hierarchy,
    dir: &Path,
    cgroup_of: impl Fn(&T) -> &str,
) -> Option<String> {
    let record = std::fs::read(dir.join(CREATING))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<T>(&bytes).ok())?;
    let path = cgroup_of(&record);
    if let Ok(cg) = cgroups.cgroup(path)
        && let Err(e) = cg.kill_all().and_then(|()| cg.remove())
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a half-built cgroup");
    }
    cgroup::systemd::unit_of(path).map(str::to_string)
}

/// Unmounts and removes a pod's pinned namespaces and /dev/shm; missing ones are fine.
fn release_pins(pod_pins: &Path) {
    let shm = pod_pins.join("shm");
    if is_mount_point(&shm)
        && let Err(e) = crate::sys::mount::detach(&shm)
    {
        tracing::warn!(path = %shm.display(), error = %e, "cannot release the pod's /dev/shm");
    }
    let _ = std::fs::remove_dir(&shm);
    let ns_dir = pod_pins.join("ns");
    for kind in ["net", "ipc", "uts"] {
        let file = ns_dir.join(kind);
        if is_mount_point(&file)
            && let Err(e) = crate::sys::mount::detach(&file)
        {
            tracing::warn!(path = %file.display(), error = %e, "cannot release a namespace");
        }
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir(&ns_dir);
    let _ = std::fs::remove_dir(pod_pins);
}

/// 64 random hex digits, like the ids other runtimes give.
pub(crate) fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
