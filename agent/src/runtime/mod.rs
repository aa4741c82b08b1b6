//! Pods and containers: their records, their namespaces and cgroups. Nothing here knows
//! about gRPC; the server converts CRI messages to and from these types.

pub mod container;
mod leases;
pub mod sandbox;
mod usage;

pub use leases::LayerLeases;
pub use usage::Usage;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use container::Container;
pub use container::ContainerFilter;
use sandbox::{NamespaceMode, PodSpec, Sandbox, SandboxState};

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
    #[error("{0}")]
    Precondition(String),
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
                sandbox.state = SandboxState::NotReady;
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

    pub fn pod_cgroup_exists(&self, sandbox: &Sandbox) -> bool {
        self.cgroups
            .cgroup(&sandbox.cgroup)
            .is_ok_and(|c| c.exists())
    }

    pub fn cgroup_version(&self) -> u8 {
        self.cgroups.version()
    }

    fn save(&self, sandbox: &Sandbox) -> Result<()> {
        write_record(&self.records.join(&sandbox.id).join("state.json"), sandbox)
    }

    /// Records a pod's new pod-level resources and overhead (UpdatePodSandboxResources,
    /// after an in-place resize). Like those of RunPodSandbox they are not enforced here:
    /// the kubelet enforces them on the pod's parent cgroup.
    pub async fn update_pod_resources(
        &self,
        id: &str,
        overhead: Option<cgroup::Resources>,
        resources: Option<cgroup::Resources>,
    ) -> Result<Sandbox> {
        for r in overhead.iter().chain(&resources) {
            r.validate()?;
        }
        let id = self.pod(id).await?.id;
        let _op = self.op_lock(&format!("pod/{id}")).await;
        let mut sandboxes = self.sandboxes.lock().await;
        let sandbox = sandboxes
            .get_mut(&id)
            .ok_or_else(|| Error::SandboxNotFound(id.clone()))?;
        if let Some(o) = overhead {
            sandbox.spec.overhead = o;
        }
        if let Some(r) = resources {
            sandbox.spec.resources = r;
        }
        self.save(sandbox)?;
        Ok(sandbox.clone())
    }

    /// The directory with the pod's hostname, hosts and resolv.conf.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.records.join(id)
    }

    pub async fn run_pod(&self, spec: PodSpec) -> Result<Sandbox> {
        validate(&spec)?;
        // A pod of its own network needs one to join: refused before anything is built,
        // as containerd and CRI-O refuse it while the node's network is not ready.
        if spec.network != NamespaceMode::Node {
            self.network.status().await?;
        }
        // The name is reserved under the lock; the pod is built without it (namespaces
        // pinned, the PID holder spawned), so that no other call waits for it.
        let _reserved = {
            let sandboxes = self.sandboxes.lock().await;
            if let Some(existing) = sandboxes
                .values()
                .find(|s| s.spec.full_name() == spec.full_name())
            {
                return Err(Error::SandboxExists {
                    name: spec.full_name(),
                    id: existing.id.clone(),
                });
            }
            container::NameReservation::take(&self.creating_pods, spec.full_name()).ok_or(
                Error::SandboxExists {
                    name: spec.full_name(),
                    id: "(being created)".into(),
                },
            )?
        };
        let id = new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?;
        let parent = if spec.cgroup_parent.is_empty() {
            self.cgroup_parent.clone()
        } else {
            spec.cgroup_parent.trim_matches('/').to_string()
        };
        let cgroup = match &self.systemd {
            // A slice of its own inside the parent slice.
            Some(_) => {
                // The parent must be a slice, as the kubelet names them with this driver.
                cgroup::systemd::slice_path(&parent)?;
                cgroup::systemd::slice_path(&cgroup::systemd::pod_slice(&parent, &id))?
            }
            None => format!("{parent}/pod-{id}"),
        };
        let sandbox = Sandbox {
            cgroup,
            id: id.clone(),
            state: SandboxState::Ready,
            created_at: crate::clock::now_nanos(),
            namespaces: BTreeMap::new(),
            shm: None,
            pid_holder: None,
            pid_holder_started: None,
            ips: Vec::new(),
            spec,
        };
        match self.create(sandbox).await {
            Ok(sandbox) => {
                self.sandboxes.lock().await.insert(id, sandbox.clone());
                Ok(sandbox)
            }
            Err((e, partial)) => {
                // Undo whatever was made; the pod never existed.
                self.destroy(&partial).await;
                Err(e)
            }
        }
    }

    /// Builds the pod on the machine. On failure, returns what was built so far.
    async fn create(&self, mut sandbox: Sandbox) -> std::result::Result<Sandbox, (Error, Sandbox)> {
        macro_rules! attempt {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((e.into(), sandbox)),
                }
            };
        }
        let dir = self.sandbox_dir(&sandbox.id);
        attempt!(std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir)));
        // What a crash during the build leaves is found through this (its cgroup, with the
        // PID holder in it), and undone at the next start.
        attempt!(write_record(&dir.join(CREATING), &sandbox));
        // CRI leaves the hostname optional; without one a pod takes the node's, as on
        // containerd and CRI-O.
        let hostname = if sandbox.spec.hostname.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            sandbox.spec.hostname.clone()
        };
        let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for (name, content) in [
            ("hostname", format!("{hostname}\n")),
            ("hosts", sandbox::hosts_file(&hostname)),
            (
                "resolv.conf",
                sandbox::resolv_conf(sandbox.spec.dns.as_ref(), &node_resolv),
            ),
        ] {
            let path = dir.join(name);
            attempt!(
                state::write_atomic(&path, content.as_bytes())
                    .map_err(io_err("cannot write", &path))
            );
        }
        // The pod's resources are recorded, not enforced: the kubelet fills them from the
        // containers that declare limits and enforces pod limits itself, on the pod cgroup
        // it gives as the parent. Capping this cgroup too would cap an unlimited container
        // at its neighbours' sum (containerd and CRI-O pass them on, and enforce nothing).
        let unenforced = cgroup::Resources::default();
        if let (Some(systemd), Some(unit)) =
            (&self.systemd, cgroup::systemd::unit_of(&sandbox.cgroup))
        {
            attempt!(systemd.start_slice(unit, &unenforced).await);
        }
        // Also with systemd: the controllers it leaves alone (cpuset, freezer on v1).
        let cgroup = attempt!(self.cgroups.create(&sandbox.cgroup));
        attempt!(cgroup.set(&unenforced));

        // A host-network pod shares the node's network and UTS namespaces.
        let mut kinds = Vec::new();
        if sandbox.spec.network != NamespaceMode::Node {
            kinds.extend(["net", "uts"]);
        }
        if sandbox.spec.ipc != NamespaceMode::Node {
            kinds.push("ipc");
        }
        if !kinds.is_empty() {
            let ns_dir = self.pins.join(&sandbox.id).join("ns");
            sandbox.namespaces = kinds
                .iter()
                .map(|k| (k.to_string(), ns_dir.join(k)))
                .collect();
            attempt!(pin_namespaces(&ns_dir, &hostname, &kinds, &sandbox.spec.sysctls).await);
            crate::failpoint::hit("pod.pinned");
        }
        if sandbox.spec.network != NamespaceMode::Node {
            let netns = self.pins.join(&sandbox.id).join("ns").join("net");
            attempt!(self.join_networks(&mut sandbox, netns, &dir).await);
            crate::failpoint::hit("pod.networked");
        }
        if sandbox.spec.pid == NamespaceMode::Pod {
            let dir = self.pins.join(&sandbox.id);
            attempt!(std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir)));
            let pid = attempt!(spawn_pid_holder().await);
            sandbox.pid_holder = Some(pid);
            sandbox.pid_holder_started = crate::sys::process::start_time(pid);
            match (&self.systemd, cgroup::systemd::unit_of(&sandbox.cgroup)) {
                // A scope of its own in the pod's slice (a slice holds no processes).
                (Some(systemd), Some(slice)) => attempt!(
                    systemd
                        .start_scope(&holder_scope(&sandbox.id), slice, pid, &Default::default())
                        .await
                ),
                // In the pod's cgroup (a leaf of its own, as v2 keeps processes in leaves).
                _ => attempt!(
                    cgroup
                        .create_leaf(crate::cgroup::POD_HOLDER_LEAF)
                        .and_then(|leaf| leaf.add_pid(pid))
                        .map_err(Error::from)
                ),
            }
        }
        if sandbox.spec.ipc != NamespaceMode::Node {
            let shm = self.pins.join(&sandbox.id).join("shm");
            sandbox.shm = Some(shm.clone());
            attempt!(mount_shm(&shm));
        }
        attempt!(self.save(&sandbox));
        let _ = std::fs::remove_file(dir.join(CREATING));
        Ok(sandbox)
    }

    /// Runs `ADD` of every network into the pod's netns. What the plugins are given is
    /// saved before they run (a crash mid-`ADD` can still be undone), and again with
    /// their results.
    async fn join_networks(&self, sandbox: &mut Sandbox, netns: PathBuf, dir: &Path) -> Result<()> {
        let spec = &sandbox.spec;
        let (ingress_rate, egress_rate) = cni::bandwidth(&spec.annotations);
        let pod = cni::PodNetwork {
            id: sandbox.id.clone(),
            netns,
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            uid: spec.uid.clone(),
            port_mappings: spec.port_mappings.clone(),
            ingress_rate,
            egress_rate,
            dns: spec.dns.clone(),
            cgroup_path: format!("/{}", sandbox.cgroup),
        };
        let mut attachments = self.network.plan(&pod)?;
        write_attachments(dir, &attachments)?;
        for attachment in attachments.iter_mut() {
            // On failure, the ones joined before are left by `destroy`, through the plan.
            self.network.add(attachment).await?;
        }
        write_attachments(dir, &attachments)?;
        sandbox.ips = attachments.iter().flat_map(|a| a.addresses().ips).collect();
        // A pod without DNS settings of its own takes the ones its network gives.
        if let (None, Some(first)) = (&sandbox.spec.dns, attachments.first()) {
            let given = first.addresses();
            if !given.nameservers.is_empty() {
                let dns = sandbox::Dns {
                    servers: given.nameservers,
                    searches: given.search,
                    options: given.options,
                };
                let path = dir.join("resolv.conf");
                let text = sandbox::resolv_conf(Some(&dns), "");
                state::write_atomic(&path, text.as_bytes())
                    .map_err(io_err("cannot write", &path))?;
            }
        }
        Ok(())
    }

    /// `DEL` of every network the pod joined (retried: a plugin may fail on a busy node),
    /// then the cache goes. Without a cache there is nothing to release.
    async fn leave_networks(&self, id: &str) -> Result<()> {
        let dir = self.sandbox_dir(id);
        let Some(attachments) = read_attachments(&dir)? else {
            return Ok(());
        };
        for attachment in attachments.iter().rev() {
            let mut tries = 0;
            loop {
                tries += 1;
                match self.network.del(attachment).await {
                    Ok(()) => break,
                    Err(e) if tries < 3 => {
                        tracing::warn!(sandbox = %id, error = %e, "CNI DEL failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let path = cni::cache_path(&dir);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("cannot remove", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// `CHECK` of each network a ready pod joined: (network, interface, what was wrong).
    pub async fn check_networks(
        &self,
        sandbox: &Sandbox,
    ) -> Result<Vec<(String, String, Option<String>)>> {
        let attachments = read_attachments(&self.sandbox_dir(&sandbox.id))?.unwrap_or_default();
        let mut out = Vec::new();
        for a in attachments.iter().filter(|a| a.result.is_some()) {
            let problem = if sandbox.state == SandboxState::Ready {
                self.network.check(a).await.err().map(|e| e.to_string())
            } else {
                Some("the pod is not ready".into())
            };
            out.push((a.network.clone(), a.ifname.clone(), problem));
        }
        Ok(out)
    }

    /// Leases the layers of containers from `leases` from now on, beginning with those of
    /// the containers that exist (so that a restart collects none of them).
    pub async fn set_leases(&mut self, leases: std::sync::Arc<dyn LayerLeases>) {
        for c in self.containers.lock().await.values() {
            leases.pin(&c.id, &c.layers_in_use());
        }
        self.leases = Some(leases);
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
            .map_err(|e| Error::Precondition(format!("removing a cgroup: {e}")))??;
        Ok(())
    }

    /// The cgroup of a pod's PID-namespace holder.
    fn holder_cgroup(&self, sandbox: &Sandbox) -> Result<cgroup::Cgroup> {
        let pod = self.cgroups.cgroup(&sandbox.cgroup)?;
        Ok(match cgroup::systemd::unit_of(&sandbox.cgroup) {
            Some(_) => pod.child(&holder_scope(&sandbox.id))?,
            None => pod.child(crate::cgroup::POD_HOLDER_LEAF)?,
        })
    }

    /// Removes everything a pod has on the machine; best effort, for failed creations.
    async fn destroy(&self, sandbox: &Sandbox) {
        if let Err(e) = self.leave_networks(&sandbox.id).await {
            tracing::warn!(sandbox = %sandbox.id, error = %e, "cannot release a failed pod's network");
        }
        stop_pid_holder(sandbox, &self.pins.join(&sandbox.id));
        release_pins(&self.pins.join(&sandbox.id));
        if let Ok(cg) = self.cgroups.cgroup(&sandbox.cgroup)
            && let Err(e) = cg.kill_all()
        {
            tracing::warn!(error = %e, "cannot kill a pod's processes");
        }
        if let Err(e) = self.remove_cgroup(&sandbox.cgroup).await {
            tracing::warn!(error = %e, "cannot remove a pod cgroup");
        }
        let _ = std::fs::remove_dir_all(self.sandbox_dir(&sandbox.id));
    }

    /// Stops a pod: its containers are killed and its namespaces released. Idempotent.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let pod_id = self.pod(id).await?.id;
        let _op = self.op_lock(&format!("pod/{pod_id}")).await;
        for c in self.pod_containers(&pod_id).await {
            self.stop_container(&c, std::time::Duration::ZERO).await?;
        }
        // The pod's record is changed under the lock; the killing and unmounting, which can
        // take seconds, happen without it.
        let sandbox = self.mark_not_ready(&pod_id).await?;
        stop_pid_holder(&sandbox, &self.pins.join(&sandbox.id));
        // Until the holder (and with it the pod's PID namespace) is really gone.
        kill_cgroup(&self.holder_cgroup(&sandbox)?).await?;
        // Before the netns goes: plugins find the pod's interfaces in it.
        self.leave_networks(&sandbox.id).await?;
        release_pins(&self.pins.join(&sandbox.id));
        // Saved every time: a stop that failed half-way and is retried records it then.
        self.save(&sandbox)
    }

    /// Removes a pod (stopping it first). Removing a missing pod is not an error.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let pod_id = match self.pod(id).await {
            Ok(p) => p.id,
            Err(Error::SandboxNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = self.op_lock(&format!("pod/{pod_id}")).await;
        for c in self.pod_containers(&pod_id).await {
            self.remove_container(&c).await?;
        }
        let sandbox = match self.mark_not_ready(&pod_id).await {
            Ok(sandbox) => sandbox,
            Err(Error::SandboxNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        stop_pid_holder(&sandbox, &self.pins.join(&sandbox.id));
        self.leave_networks(&sandbox.id).await?;
        release_pins(&self.pins.join(&sandbox.id));
        let cgroup = self.cgroups.cgroup(&sandbox.cgroup)?;
        kill_cgroup(&cgroup).await?;
        self.remove_cgroup(&sandbox.cgroup).await?;
        let dir = self.sandbox_dir(&sandbox.id);
        state::remove_record_dir(&dir).map_err(io_err("cannot remove", &dir))?;
        let _ = std::fs::remove_dir_all(self.pins.join(&sandbox.id));
        self.sandboxes.lock().await.remove(&sandbox.id);
        Ok(())
    }

    /// Marks a pod NotReady in memory (so that no new container joins it) and returns it.
    async fn mark_not_ready(&self, pod_id: &str) -> Result<Sandbox> {
        let mut sandboxes = self.sandboxes.lock().await;
        let sandbox = find_mut(&mut sandboxes, pod_id)?;
        sandbox.state = SandboxState::NotReady;
        Ok(sandbox.clone())
    }

    /// The network namespace of a ready pod (`None`: it uses the node's), for a port-forward.
    pub async fn pod_network(&self, id: &str) -> Result<Option<PathBuf>> {
        let sandbox = self.pod(id).await?;
        if sandbox.state != SandboxState::Ready {
            return Err(Error::Precondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        Ok(sandbox.namespaces.get("net").cloned())
    }

    pub async fn pod(&self, id: &str) -> Result<Sandbox> {
        let mut sandboxes = self.sandboxes.lock().await;
        let sandbox = find_mut(&mut sandboxes, id)?;
        let changed = check_holder(sandbox).then(|| sandbox.clone());
        let sandbox = sandbox.clone();
        drop(sandboxes);
        self.persist_pods(changed.into_iter().collect()).await;
        Ok(sandbox)
    }

    pub async fn pods(&self, filter: &SandboxFilter) -> Vec<Sandbox> {
        let mut sandboxes = self.sandboxes.lock().await;
        let changed: Vec<Sandbox> = sandboxes
            .values_mut()
            .filter_map(|s| check_holder(s).then(|| s.clone()))
            .collect();
        let out = sandboxes
            .values()
            .filter(|s| {
                filter
                    .id
                    .as_ref()
                    .is_none_or(|id| s.id.starts_with(id.as_str()))
            })
            .filter(|s| filter.state.is_none_or(|st| s.state == st))
            .filter(|s| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| s.spec.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        drop(sandboxes);
        self.persist_pods(changed).await;
        out
    }

    /// Saves pod records changed by a read, outside the lock and off the async threads.
    async fn persist_pods(&self, changed: Vec<Sandbox>) {
        if changed.is_empty() {
            return;
        }
        let records = self.records.clone();
        let saved = tokio::task::spawn_blocking(move || {
            for sandbox in changed {
                let path = records.join(&sandbox.id).join("state.json");
                if let Err(e) = write_record(&path, &sandbox) {
                    tracing::warn!(sandbox = %sandbox.id, error = %e, "cannot record a pod's state");
                }
            }
        })
        .await;
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot record pod states");
        }
    }
}

/// A Ready pod whose PID namespace holder is gone (killed, OOM-killed) has lost the PID
/// namespace its containers share: it is NotReady, as a pod whose pause container died is
/// on other runtimes. True if this changed the pod.
fn check_holder(sandbox: &mut Sandbox) -> bool {
    let gone = match (sandbox.pid_holder, sandbox.pid_holder_started) {
        (Some(pid), Some(started)) => crate::sys::process::start_time(pid) != Some(started),
        _ => false,
    };
    if gone && sandbox.state == SandboxState::Ready {
        tracing::warn!(sandbox = %sandbox.id, "the pod's PID namespace holder died; marking it NotReady");
        sandbox.state = SandboxState::NotReady;
        return true;
    }
    false
}

/// Finds a pod by its id or a unique prefix of it.
fn find_mut<'a>(sandboxes: &'a mut BTreeMap<String, Sandbox>, id: &str) -> Result<&'a mut Sandbox> {
    if id.is_empty() {
        return Err(Error::Invalid {
            what: "pod sandbox id".into(),
            reason: "empty".into(),
        });
    }
    let mut matches = sandboxes
        .iter()
        .filter(|(k, _)| k.starts_with(id))
        .map(|(k, _)| k.clone());
    match (matches.next(), matches.next()) {
        (Some(key), None) => sandboxes
            .get_mut(&key)
            .ok_or_else(|| Error::SandboxNotFound(id.to_string())),
        (Some(_), Some(_)) => Err(Error::Invalid {
            what: format!("pod sandbox id {id:?}"),
            reason: "matches more than one pod".into(),
        }),
        (None, _) => Err(Error::SandboxNotFound(id.to_string())),
    }
}

fn validate(spec: &PodSpec) -> Result<()> {
    let invalid = |what: &str, reason: &str| {
        Err(Error::Invalid {
            what: what.to_string(),
            reason: reason.to_string(),
        })
    };
    if spec.name.is_empty() || spec.namespace.is_empty() || spec.uid.is_empty() {
        return invalid("pod metadata", "name, namespace and uid are required");
    }
    if !spec.runtime_handler.is_empty() {
        return invalid(
            &format!("runtime handler {:?}", spec.runtime_handler),
            "unknown (strata has only the default handler)",
        );
    }
    if !spec.log_directory.is_empty() {
        check_path("log_directory", &spec.log_directory, PathKind::Absolute)?;
    }
    for (name, value) in &spec.sysctls {
        let owned = match sandbox::sysctl_namespace(name) {
            Some("net") => spec.network != NamespaceMode::Node,
            Some("ipc") => spec.ipc != NamespaceMode::Node,
            Some(_) => spec.network != NamespaceMode::Node,
            None => {
                return invalid(
                    &format!("sysctl {name:?}"),
                    "not a namespaced sysctl: it would change the whole node",
                );
            }
        };
        let path = sandbox::sysctl_path(name);
        if !owned {
            return invalid(
                &format!("sysctl {name:?}"),
                "the pod shares that namespace with the node",
            );
        }
        if path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
            || value.contains(['\n', '\0'])
        {
            return invalid(&format!("sysctl {name:?}"), "malformed name or value");
        }
    }
    if !spec.hostname.is_empty() && !sandbox::valid_hostname(&spec.hostname) {
        return invalid(
            &format!("hostname {:?}", spec.hostname),
            "must be 1-64 letters, digits, '-' or '.'",
        );
    }
    for (what, mode) in [("network", spec.network), ("ipc", spec.ipc)] {
        if matches!(mode, NamespaceMode::Container | NamespaceMode::Target) {
            return invalid(
                &format!("{what} namespace mode"),
                "a pod's must be POD or NODE",
            );
        }
    }
    spec.resources.validate()?;
    if !spec.cgroup_parent.is_empty() {
        // Checked by the hierarchy's path rules.
        let rel = spec.cgroup_parent.trim_matches('/');
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return invalid(
                &format!("cgroup parent {:?}", spec.cgroup_parent),
                "must be a plain path",
            );
        }
    }
    Ok(())
}

/// Kills every process of a cgroup (freezing it meanwhile), off the async threads.
pub(super) async fn kill_cgroup(cgroup: &crate::cgroup::Cgroup) -> Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    let cgroup = cgroup.clone();
    tokio::task::spawn_blocking(move || cgroup.kill_all())
        .await
        .map_err(|e| Error::Precondition(format!("killing a cgroup's processes: {e}")))?
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

/// Runs the pinning helper (`stratad __pinns`) for `kinds`, which sets `sysctls` in them.
async fn pin_namespaces(
    dir: &Path,
    hostname: &str,
    kinds: &[&str],
    sysctls: &BTreeMap<String, String>,
) -> Result<()> {
    let output = oci::helper_command(Helper::Pinns)
        .map_err(|e| Error::Namespaces(format!("finding our own binary: {e}")))?
        .arg(dir)
        .arg(hostname)
        .args(kinds)
        .arg("--")
        .args(
            sysctls
                .iter()
                .map(|(name, value)| format!("{}={value}", sandbox::sysctl_path(name))),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Namespaces(format!("running the helper: {e}")))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(Error::Namespaces(if text.is_empty() {
            output.status.to_string()
        } else {
            text
        }));
    }
    Ok(())
}

/// The scope of a pod's PID-namespace holder, with the systemd driver.
fn holder_scope(pod: &str) -> String {
    cgroup::systemd::scope(&format!("pod-{pod}"))
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

/// Ends a pod's shared PID namespace (and whatever is left in it) by killing its holder,
/// after checking through a pidfd that the pid is still that holder: the process that
/// started when the holder did (a holder of an older agent: whose command line names the
/// pod's directory).
fn stop_pid_holder(sandbox: &Sandbox, dir: &Path) {
    let Some(pid) = sandbox.pid_holder else {
        return;
    };
    crate::sys::process::signal_if(pid, rustix::process::Signal::KILL, || {
        match sandbox.pid_holder_started {
            Some(started) => crate::sys::process::start_time(pid) == Some(started),
            None => {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
            }
        }
    });
}

/// The pod's /dev/shm: a tmpfs of 64 MiB, like the default of other runtimes.
fn mount_shm(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_err("cannot create", path))?;
    crate::sys::mount::tmpfs(path, "mode=1777,size=65536k")
        .map_err(|e| io_err("cannot mount a tmpfs on", path)(e))
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

/// The networks a pod joined (or was joining), from its cache; `None` without one.
fn read_attachments(dir: &Path) -> Result<Option<Vec<cni::Attachment>>> {
    let path = cni::cache_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

fn write_attachments(dir: &Path, attachments: &[cni::Attachment]) -> Result<()> {
    write_record(&cni::cache_path(dir), &attachments)
}
