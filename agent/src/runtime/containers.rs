//! Container operations of the runtime: create, start, stop, remove, status, list.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::io::AsyncBufReadExt;

use super::{
    Error, PathKind, Result, Runtime,
    container::{self, Container, ContainerSpec, ContainerState, ImageRoot, Layout},
    io_err, kill_cgroup,
    sandbox::SandboxState,
};
use crate::{
    cgroup::devices::{Access, DEFAULT_RULES, DeviceKind, DeviceRule},
    oci::{self, Exit, Helper, Message, spec::Device},
    rootfs, state,
    sys::{rootdir::RootDir, watch::Watched},
};

/// How long a container's init may take to set up before CreateContainer gives up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long StartContainer waits for the exec to happen (or fail).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGKILLed container may take to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a monitor may take to reopen a container's log.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which containers a list asks for; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub pod_id: Option<String>,
    pub state: Option<ContainerState>,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Runtime {
    /// A container's directory (its config, records and its monitor's attach socket).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    pub(super) fn container_layout(&self, id: &str) -> Layout {
        Layout {
            dir: self.containers_dir.join(id),
        }
    }

    /// The uid, gid and groups a running container's first process has (read from the
    /// kernel, as ContainerStatus.user reports them); those its init was to apply otherwise.
    pub fn process_user(&self, c: &Container) -> crate::oci::spec::User {
        let running = c.state == ContainerState::Running;
        match c.pid.filter(|_| running).and_then(crate::sys::process::ids) {
            Some((uid, gid, additional_gids)) => crate::oci::spec::User {
                uid,
                gid,
                additional_gids,
            },
            None => c.user.clone(),
        }
    }

    fn save_container(&self, c: &Container) -> Result<()> {
        super::write_record(&self.containers_dir.join(&c.id).join("state.json"), c)
    }

    /// Brings a record up to date with what the monitor recorded, in memory only (the
    /// caller may hold the containers lock): what it returns is to be [`settle`]d once the
    /// lock is released.
    ///
    /// [`settle`]: Runtime::settle
    fn refresh(&self, c: &mut Container) -> Refreshed {
        if c.state == ContainerState::Exited {
            return Refreshed::Unchanged;
        }
        let layout = self.container_layout(&c.id);
        let Ok(bytes) = std::fs::read(layout.exit_file()) else {
            let mut changed = Refreshed::Unchanged;
            if c.state == ContainerState::Created
                && let Ok(marker) = std::fs::metadata(layout.started())
            {
                // Started while no StartContainer call saw it through (the daemon was down).
                c.state = ContainerState::Running;
                if c.started_at == 0 {
                    c.started_at = marker
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
                }
                changed = Refreshed::Changed;
            }
            if self.monitor_is_gone(c, &layout) {
                return Refreshed::Orphaned;
            }
            return changed;
        };
        let Ok(exit) = serde_json::from_slice::<Exit>(&bytes) else {
            return Refreshed::Unchanged;
        };
        c.state = ContainerState::Exited;
        c.finished_at = exit.finished_at;
        c.exit_code = exit.exit_code;
        c.pid = None;
        (c.reason, c.message) = match (&exit.exec_error, exit.oom_killed, exit.exit_code) {
            (Some(e), _, _) => ("StartError".into(), e.clone()),
            (None, true, _) => ("OOMKilled".into(), String::new()),
            (None, false, 0) => ("Completed".into(), String::new()),
            (None, false, _) => ("Error".into(), String::new()),
        };
        Refreshed::Changed
    }

    /// A container whose monitor died (killed, OOM-killed, a reboot) has no one to record
    /// its exit or write its log: what is left of it is killed, then it is reported exited,
    /// its status unknown, so that it can be stopped and removed like any other
    /// ([`settle_orphan`](Runtime::settle_orphan)).
    fn monitor_is_gone(&self, c: &Container, layout: &Layout) -> bool {
        let Some((pid, started)) = c.monitor else {
            return false;
        };
        if crate::sys::process::start_time(pid) == Some(started) {
            return false;
        }
        // It may have recorded the exit just before it went.
        !layout.exit_file().exists()
    }

    /// Records that `c`'s monitor died: once what was left of it is killed, so that nobody
    /// is told it exited while its processes still run.
    fn mark_orphaned(c: &mut Container) {
        tracing::warn!(container_id = %c.id, "the container's monitor died");
        c.state = ContainerState::Exited;
        c.finished_at = crate::clock::now_nanos();
        c.exit_code = 255;
        c.pid = None;
        c.reason = "Error".into();
        c.message = "the container's monitor died; its exit status is unknown".into();
    }

    /// Kills what is left of a container whose monitor died, then records it exited.
    async fn settle_orphan(&self, id: &str, cgroup: &str) -> Result<Container> {
        if let Ok(cgroup) = self.cgroups.cgroup(cgroup) {
            let killed = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
            if let Ok(Err(e)) = killed {
                tracing::warn!(container_id = %id, error = %e, "cannot kill an unmonitored container");
            }
        }
        let mut containers = self.containers.lock().await;
        let c = containers
            .get_mut(id)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        if c.state != ContainerState::Exited && self.monitor_is_gone(c, &self.container_layout(id))
        {
            Self::mark_orphaned(c);
        }
        let c = c.clone();
        drop(containers);
        self.settle(vec![(c.clone(), Refreshed::Changed)]).await;
        Ok(c)
    }

    /// Persists what [`refresh`](Runtime::refresh) found, outside every lock and off the
    /// async threads: fsynced records, and the processes of orphaned containers killed.
    async fn settle(&self, changed: Vec<(Container, Refreshed)>) {
        if changed.is_empty() {
            return;
        }
        // What is written is the record as it is now, not as the caller saw it: another call
        // may have moved it on meanwhile. A record removed meanwhile is not written again.
        let work: Vec<_> = {
            let containers = self.containers.lock().await;
            changed
                .into_iter()
                .filter(|(_, r)| *r != Refreshed::Unchanged)
                .filter_map(|(c, _)| {
                    let current = containers.get(&c.id)?.clone();
                    let path = self.containers_dir.join(&current.id).join("state.json");
                    Some((path, current))
                })
                .collect()
        };
        let done = tokio::task::spawn_blocking(move || {
            for (path, c) in work {
                if let Err(e) = super::write_record(&path, &c) {
                    tracing::warn!(container = %c.id, error = %e, "cannot record the exit");
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot record container states");
        }
    }

    /// At start-up: every container brought up to date with the machine before the first
    /// call (exits recorded while the daemon was down; containers whose monitor is gone are
    /// exited and what is left of them killed).
    pub(super) fn reconcile_containers(&self) {
        // Nothing else can hold the lock before the runtime is handed out.
        let Ok(mut containers) = self.containers.try_lock() else {
            return;
        };
        for c in containers.values_mut() {
            let refreshed = self.refresh(c);
            if refreshed == Refreshed::Orphaned {
                if let Ok(cgroup) = self.cgroups.cgroup(&c.cgroup)
                    && let Err(e) = cgroup.kill_all()
                {
                    tracing::warn!(container = %c.id, error = %e, "cannot kill an unmonitored container");
                }
                Self::mark_orphaned(c);
            }
            if refreshed != Refreshed::Unchanged
                && let Err(e) = self.save_container(c)
            {
                tracing::warn!(container = %c.id, error = %e, "cannot record a container's state");
            }
        }
    }

    /// The lock of one container's (or, keyed `pod/<id>`, one pod's) operations: start,
    /// stop, remove. Two of them on the same one wait for each other, on different ones
    /// never.
    pub(super) async fn op_lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.op_locks.lock().unwrap_or_else(|p| p.into_inner());
            // Locks of removed containers go when nothing holds them.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(locks.entry(id.to_string()).or_default())
        };
        lock.lock_owned().await
    }

    pub async fn create_container(
        &self,
        pod_id: &str,
        spec: ContainerSpec,
        image: ImageRoot,
    ) -> Result<Container> {
        let sandbox = self.pod(pod_id).await?;
        if sandbox.state != SandboxState::Ready {
            return Err(Error::Precondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        spec.resources.validate()?;
        if !spec.log_path.is_empty() {
            super::check_path("log_path", &spec.log_path, PathKind::Below)?;
        }
        for m in &spec.mounts {
            match &m.image {
                Some(image) if !image.sub_path.is_empty() => {
                    super::check_path("image_sub_path", &image.sub_path, PathKind::Below)?;
                }
                Some(_) => {}
                None => {
                    super::check_path("mount host_path", &m.host_path, PathKind::Absolute)?;
                }
            }
            super::check_path(
                "mount container_path",
                &m.container_path,
                PathKind::Absolute,
            )?;
        }
        for d in &spec.devices {
            super::check_path("device host_path", &d.host_path, PathKind::Absolute)?;
            super::check_path(
                "device container_path",
                &d.container_path,
                PathKind::Absolute,
            )?;
        }
        let pid_target = self.pid_target(&spec, &sandbox.id).await?;
        // Only on a host with AppArmor (elsewhere the request was refused or asked none).
        if let Some(profile) = &spec.apparmor {
            let dir = self.pins.parent().unwrap_or(&self.pins).join("apparmor");
            crate::apparmor::ensure(profile, &dir).await?;
        }
        // The image's layers are kept from before the container exists, so that removing
        // the image cannot race its creation.
        let claim = format!(
            "creating-{}",
            super::new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?
        );
        let mut layers = image.diff_ids.clone();
        for volume in spec.mounts.iter().filter_map(|m| m.image.as_ref()) {
            layers.extend(volume.diff_ids.iter().cloned());
        }
        let _claim = super::leases::Claim::take(&self.leases, claim, &layers);
        // The name is reserved under the lock; the container is built without it (up to the
        // init's start-up timeout), so that no other call waits for a slow create.
        let _reserved = {
            let containers = self.containers.lock().await;
            let name = format!("{}_{}", spec.name, spec.attempt);
            if let Some(other) = containers.values().find(|c| {
                c.pod_id == sandbox.id && c.spec.name == spec.name && c.spec.attempt == spec.attempt
            }) {
                return Err(Error::ContainerExists {
                    name,
                    id: other.id.clone(),
                });
            }
            NameReservation::take(&self.creating, format!("{}/{name}", sandbox.id)).ok_or(
                Error::ContainerExists {
                    name,
                    id: "(being created)".into(),
                },
            )?
        };
        let id = super::new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?;
        let layout = self.container_layout(&id);
        let log_path = if !sandbox.spec.log_directory.is_empty() && !spec.log_path.is_empty() {
            Path::new(&sandbox.spec.log_directory).join(&spec.log_path)
        } else {
            layout.dir.join("container.log")
        };
        let user = {
            let passwd = read_image_file(&image.layers, "etc/passwd");
            let group = read_image_file(&image.layers, "etc/group");
            container::resolve_user(&spec, &image.user, &passwd, &group).map_err(|reason| {
                Error::Invalid {
                    what: "container user".into(),
                    reason,
                }
            })?
        };
        let container = Container {
            cgroup: container_cgroup(&sandbox.cgroup, &id),
            id: id.clone(),
            pod_id: sandbox.id.clone(),
            image_id: image.id.clone(),
            image_ref: image.repo_digest.clone(),
            diff_ids: image.diff_ids.clone(),
            state: ContainerState::Created,
            created_at: crate::clock::now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: None,
            monitor: None,
            log_path,
            stop_signal: if spec.stop_signal.is_empty() {
                image.stop_signal.clone()
            } else {
                spec.stop_signal.clone()
            },
            user,
            spec,
        };
        match self
            .build_container(container, &sandbox, &image, &layout, pid_target)
            .await
        {
            // The pod may have been stopped or removed meanwhile: then the container goes.
            Ok(c)
                if !self
                    .pod(&c.pod_id)
                    .await
                    .is_ok_and(|p| p.state == SandboxState::Ready) =>
            {
                self.destroy_container(&id, &c.cgroup).await;
                Err(Error::Precondition(format!(
                    "pod sandbox {} was stopped while the container was created",
                    c.pod_id
                )))
            }
            Ok(c) => {
                if let Some(leases) = &self.leases {
                    leases.pin(&id, &c.layers_in_use());
                }
                self.containers.lock().await.insert(id, c.clone());
                Ok(c)
            }
            Err(e) => {
                self.destroy_container(&id, &container_cgroup(&sandbox.cgroup, &id))
                    .await;
                Err(e)
            }
        }
    }

    async fn build_container(
        &self,
        mut c: Container,
        sandbox: &super::Sandbox,
        image: &ImageRoot,
        layout: &Layout,
        pid_target: Option<u32>,
    ) -> Result<Container> {
        for m in c.spec.mounts.iter().filter(|m| m.image.is_none()) {
            if !Path::new(&m.host_path).exists() {
                return Err(Error::Invalid {
                    what: format!("mount of {}", m.host_path),
                    reason: "the host path does not exist".into(),
                });
            }
        }
        let mut spec = container::runtime_spec(
            &c,
            sandbox,
            image,
            layout,
            &self.cgroup_root,
            self.cgroups.version(),
            pid_target,
        )
        .map_err(|reason| Error::Invalid {
            what: "container config".into(),
            reason,
        })?;
        spec.process.rlimits = self.rlimits.clone();
        // The devices it may use: the standard ones and those the request maps; a
        // privileged container has the host's /dev and every device.
        let mut device_rules = DEFAULT_RULES.to_vec();
        if !c.spec.privileged {
            for d in &c.spec.devices {
                let (device, rule) = resolve_device(d)?;
                spec.linux.devices.push(device);
                device_rules.push(rule);
            }
        }
        if !c.spec.cdi_devices.is_empty() {
            let edits = self.cdi.resolve(&c.spec.cdi_devices)?;
            apply_cdi(&mut spec, &mut device_rules, edits, c.spec.privileged)?;
        }
        let volumes = c.spec.mounts.iter().filter(|m| m.image.is_some()).count();
        let staging = (0..volumes)
            .map(|n| layout.image_volume(n))
            .chain((volumes > 0).then(|| layout.image_volume_floor()));
        for dir in [
            layout.init(),
            layout.upper(),
            layout.work(),
            layout.rootfs(),
        ]
        .into_iter()
        .chain(staging)
        {
            std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        }
        // A crash from here on is undone at the next start through this record.
        super::write_record(&layout.dir.join(super::CREATING), &c)?;
        let init = layout.init();
        rootfs::write_init_layer(&init, &self.sandbox_dir(&sandbox.id), &spec)
            .map_err(io_err("cannot write the init layer", &init))?;
        spec.strata.seccomp = write_seccomp(&self.seccomp, &c, &spec, layout)?;
        let mut resources = c.spec.resources.clone();
        if resources.pids_limit.is_none()
            && self.pids_limit > 0
            && !resources.unified.contains_key("pids.max")
        {
            resources.pids_limit = Some(self.pids_limit);
        }
        resources.validate()?;
        // With systemd, the scope is made with a placeholder as its first process (a
        // scope cannot start empty); it goes once the container's init is in.
        let placeholder = self.start_scope(&c, &sandbox.cgroup, &resources).await?;
        // Also with systemd: the controllers it leaves alone (cpuset, freezer on v1).
        let cgroup = self.cgroups.create(&c.cgroup)?;
        cgroup.set(&resources)?;
        if !c.spec.privileged {
            // Before the leaf exists, so that it starts from the restricted list.
            cgroup.set_devices(&device_rules)?;
        }
        cgroup.create_leaf(crate::cgroup::CONTAINER_LEAF)?;
        crate::failpoint::hit("container.prepared");
        super::write_record(&layout.dir.join("config.json"), &spec)?;
        for fifo in [layout.fifo(), layout.control()] {
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| io_err("cannot create", &fifo)(e.into()))?;
        }
        let (init, monitor) = spawn_monitor(&layout.dir).await?;
        if let Some((pid, started)) = placeholder {
            kill_placeholder(pid, started);
        }
        crate::failpoint::hit("container.creating");
        c.pid = Some(init);
        c.monitor = crate::sys::process::start_time(monitor).map(|started| (monitor, started));
        self.save_container(&c)?;
        let _ = std::fs::remove_file(layout.dir.join(super::CREATING));
        Ok(c)
    }

    /// With the systemd driver, starts the container's scope and returns its placeholder
    /// process (pid, start time).
    async fn start_scope(
        &self,
        c: &Container,
        pod_cgroup: &str,
        resources: &crate::cgroup::Resources,
    ) -> Result<Option<(u32, Option<u64>)>> {
        let (Some(systemd), Some(scope), Some(slice)) = (
            &self.systemd,
            crate::cgroup::systemd::unit_of(&c.cgroup),
            crate::cgroup::systemd::unit_of(pod_cgroup),
        ) else {
            return Ok(None);
        };
        let pid = super::spawn_pid_holder().await?;
        let started = crate::sys::process::start_time(pid);
        if let Err(e) = systemd.start_scope(scope, slice, pid, resources).await {
            kill_placeholder(pid, started);
            return Err(e.into());
        }
        Ok(Some((pid, started)))
    }

    /// Removes a container's directory and cgroup; best effort.
    async fn destroy_container(&self, id: &str, cgroup: &str) {
        if let Ok(cg) = self.cgroups.cgroup(cgroup)
            && let Err(e) = cg.kill_all()
        {
            tracing::warn!(container = %id, error = %e, "cannot kill a container's processes");
        }
        if let Err(e) = self.remove_cgroup(cgroup).await {
            tracing::warn!(container = %id, error = %e, "cannot remove a container cgroup");
        }
        let dir = self.containers_dir.join(id);
        // Its monitor may still be writing the exit of the init just killed.
        if dir.exists()
            && let Err(e) = state::remove_record_dir(&dir)
        {
            tracing::warn!(container = %id, error = %e, "cannot remove a container directory");
        }
    }

    pub async fn start_container(&self, id: &str) -> Result<Container> {
        let id = self.container(id).await?.id;
        let _op = self.op_lock(&id).await;
        let mut c = self.container(&id).await?;
        if c.state != ContainerState::Created {
            return Err(Error::Precondition(
                format!("container {} is {:?}, not created", c.id, c.state).to_lowercase(),
            ));
        }
        let layout = self.container_layout(&c.id);
        // Opening the FIFO releases the init; it says "started" and execs (the FIFO closes
        // then), or says why it could not.
        let fifo = layout.fifo();
        crate::failpoint::hit("container.releasing");
        let released = tokio::select! {
            r = tokio::time::timeout(START_TIMEOUT, release_init(&fifo)) => r.unwrap_or_else(|_| {
                Release::NotWaiting(format!(
                    "the container's init did not start within {START_TIMEOUT:?}"
                ))
            }),
            () = monitor_exit(c.monitor, &layout) => {
                Release::NotWaiting("the container's init has exited".into())
            }
        };
        let failure = match released {
            Release::Started => None,
            // Released, but the exec failed: the monitor records why.
            Release::ExecFailed(e) => {
                wait_exit(&layout, c.monitor, KILL_TIMEOUT).await;
                Some(e)
            }
            // Never released: the container stays what it was (or what the monitor
            // recorded, if the init died).
            Release::NotWaiting(e) => {
                let refreshed = self.refresh(&mut c);
                self.containers.lock().await.insert(c.id.clone(), c.clone());
                self.settle(vec![(c.clone(), refreshed)]).await;
                return Err(Error::Precondition(format!(
                    "container {} cannot start: {e}",
                    c.id
                )));
            }
        };
        crate::failpoint::hit("container.starting");
        c.started_at = crate::clock::now_nanos();
        c.state = ContainerState::Running;
        let refreshed = self.refresh(&mut c);
        self.containers.lock().await.insert(c.id.clone(), c.clone());
        self.settle(vec![(c.clone(), Refreshed::Changed.max(refreshed))])
            .await;
        if c.reason == "StartError" {
            return Err(Error::Precondition(format!(
                "container {} failed to start: {}",
                c.id, c.message
            )));
        }
        if let Some(e) = failure {
            return Err(Error::Precondition(format!(
                "container {} failed to start: {e}",
                c.id
            )));
        }
        Ok(c)
    }

    /// A future that resolves when the container `id` has exited (at once if it has). Its
    /// monitor's pidfd is open when this returns, so the watch costs one descriptor from
    /// then on, until the exit.
    pub async fn exit_watch(
        &self,
        id: &str,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
        let c = self.container(id).await?;
        let layout = self.container_layout(&c.id);
        let watched = match c.state {
            ContainerState::Exited => None,
            _ => Some(watch_monitor(c.monitor)),
        };
        Ok(async move {
            match watched {
                None => {}
                Some(Some(watched)) => {
                    let _ = watched.readable().await;
                }
                // No pidfd (a record of an older agent, or a monitor already gone): until
                // the exit is recorded, the monitor is seen gone, or the container removed.
                Some(None) => {
                    let monitor = c.monitor;
                    while layout.dir.exists()
                        && !layout.exit_file().exists()
                        && monitor.is_none_or(|(pid, started)| {
                            crate::sys::process::start_time(pid) == Some(started)
                        })
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout`. Idempotent.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<Container> {
        let id = self.container(id).await?.id;
        let _op = self.op_lock(&id).await;
        self.stop_locked(&id, timeout).await
    }

    /// [`stop_container`](Runtime::stop_container), under the container's operation lock.
    async fn stop_locked(&self, id: &str, timeout: Duration) -> Result<Container> {
        let mut c = self.container(id).await?;
        let cgroup = self.cgroups.cgroup(&c.cgroup)?;
        if c.state == ContainerState::Exited {
            // An init that exited by itself may have left children running.
            kill_cgroup(&cgroup).await?;
            return Ok(c);
        }
        let layout = self.container_layout(&c.id);
        if let Some(pid) = c.pid {
            if !timeout.is_zero() && c.state == ContainerState::Running {
                let signal = stop_signal(&c.stop_signal);
                signal_init(pid, &cgroup, signal, &layout);
                wait_exit(&layout, c.monitor, timeout).await;
            }
            if !layout.exit_file().exists() {
                // A container that owns its PID namespace dies with its init; one that does
                // not (POD, NODE) would leave children behind: everything in its cgroup.
                if c.spec.pid == super::sandbox::NamespaceMode::Container {
                    signal_init(pid, &cgroup, rustix::process::Signal::KILL, &layout);
                    crate::failpoint::hit("container.killed");
                } else {
                    kill_cgroup(&cgroup).await?;
                }
                if !wait_exit(&layout, c.monitor, KILL_TIMEOUT).await {
                    return Err(Error::Precondition(format!(
                        "container {} did not die after SIGKILL",
                        c.id
                    )));
                }
            }
        }
        crate::failpoint::hit("container.stopping");
        kill_cgroup(&cgroup).await?;
        let refreshed = self.refresh(&mut c);
        self.containers.lock().await.insert(c.id.clone(), c.clone());
        self.settle(vec![(c.clone(), refreshed)]).await;
        Ok(c)
    }

    /// Removes a container, stopping it first. Removing a missing container is not an error.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let c = match self.container(id).await {
            Ok(c) => c,
            Err(Error::ContainerNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = self.op_lock(&c.id).await;
        let c = match self.stop_locked(&c.id, Duration::ZERO).await {
            Ok(c) => c,
            // Removed meanwhile by another call.
            Err(Error::ContainerNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        crate::failpoint::hit("container.stopped-for-removal");
        // The monitor records the exit and then winds down (its streams, the attach
        // socket); its directory goes once it is gone.
        if let Some(watch) = watch_monitor(c.monitor) {
            let _ = tokio::time::timeout(KILL_TIMEOUT, watch.readable()).await;
        }
        self.remove_cgroup(&c.cgroup).await?;
        crate::failpoint::hit("container.removing");
        let dir = self.containers_dir.join(&c.id);
        state::remove_record_dir(&dir).map_err(io_err("cannot remove", &dir))?;
        self.usage.forget(&self.container_layout(&c.id).upper());
        self.containers.lock().await.remove(&c.id);
        if let Some(leases) = &self.leases {
            leases.unpin(&c.id);
        }
        Ok(())
    }

    /// A container by id or unique id prefix, up to date.
    pub async fn container(&self, id: &str) -> Result<Container> {
        let mut containers = self.containers.lock().await;
        if id.is_empty() {
            return Err(Error::Invalid {
                what: "container id".into(),
                reason: "empty".into(),
            });
        }
        let keys: Vec<String> = containers
            .keys()
            .filter(|k| k.starts_with(id))
            .cloned()
            .collect();
        let key = match keys.as_slice() {
            [one] => one.clone(),
            [] => return Err(Error::ContainerNotFound(id.to_string())),
            _ => {
                return Err(Error::Invalid {
                    what: format!("container id {id:?}"),
                    reason: "matches more than one container".into(),
                });
            }
        };
        let c = containers
            .get_mut(&key)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        let refreshed = self.refresh(c);
        if refreshed == Refreshed::Orphaned {
            let cgroup = c.cgroup.clone();
            drop(containers);
            return self.settle_orphan(&key, &cgroup).await;
        }
        let c = c.clone();
        drop(containers);
        self.settle(vec![(c.clone(), refreshed)]).await;
        Ok(c)
    }

    pub async fn containers(&self, filter: &ContainerFilter) -> Vec<Container> {
        let mut containers = self.containers.lock().await;
        let mut out = Vec::new();
        let mut changed = Vec::new();
        let mut orphans = Vec::new();
        for c in containers.values_mut() {
            let refreshed = self.refresh(c);
            if refreshed == Refreshed::Orphaned {
                orphans.push((c.id.clone(), c.cgroup.clone()));
            } else if refreshed != Refreshed::Unchanged {
                changed.push((c.clone(), refreshed));
            }
            let keep = filter
                .id
                .as_ref()
                .is_none_or(|id| c.id.starts_with(id.as_str()))
                && filter
                    .pod_id
                    .as_ref()
                    .is_none_or(|p| c.pod_id.starts_with(p.as_str()))
                && filter.state.is_none_or(|s| c.state == s)
                && filter
                    .labels
                    .iter()
                    .all(|(k, v)| c.spec.labels.get(k) == Some(v));
            if keep {
                out.push(c.clone());
            }
        }
        drop(containers);
        self.settle(changed).await;
        if orphans.is_empty() {
            return out;
        }
        // Listed again once they are settled: they are exited now, and may not pass the
        // filter any more.
        for (id, cgroup) in orphans {
            let _ = self.settle_orphan(&id, &cgroup).await;
        }
        Box::pin(self.containers(filter)).await
    }

    /// Ids of the containers of a pod.
    pub(super) async fn pod_containers(&self, pod_id: &str) -> Vec<String> {
        let containers = self.containers.lock().await;
        containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| c.id.clone())
            .collect()
    }
}

/// Reads a file of the image (the top-most layer that has it), for /etc/passwd and
/// /etc/group. Missing: empty.
fn read_image_file(layers: &[PathBuf], rel: &str) -> String {
    for layer in layers.iter().rev() {
        let root = match RootDir::open(layer) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if let Ok(text) = root.read_to_string(Path::new(rel)) {
            return text;
        }
    }
    String::new()
}

/// Starts the container's monitor and waits for its `ready` (with the init's pid) or its
/// failure; returns the init's pid and the monitor's.
async fn spawn_monitor(dir: &Path) -> Result<(u32, u32)> {
    let mut child = oci::helper_command(Helper::Monitor)
        .map_err(io_err("cannot find", Path::new("/proc/self/exe")))?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(io_err("cannot start the monitor for", dir))?;
    let monitor = child.id().unwrap_or_default();
    oci::send_dir(child.stdin.take(), dir)
        .await
        .map_err(io_err("cannot start a helper for", dir))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Precondition("monitor has no stdout".into()))?;
    let mut line = String::new();
    let read = tokio::time::timeout(
        CREATE_TIMEOUT,
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    // The monitor lives on after the daemon; reap it whenever it ends.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    match read {
        Err(_) => Err(Error::Precondition(format!(
            "the container's init did not get ready within {CREATE_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(io_err("cannot read from the monitor of", dir)(e)),
        Ok(Ok(0)) => Err(Error::CreateFailed {
            stage: None,
            message: "the container's monitor exited without a word".into(),
        }),
        Ok(Ok(_)) => match oci::parse(&line) {
            Ok(Message::Ready { pid: Some(pid) }) => Ok((pid, monitor)),
            Ok(Message::Failure { stage, message }) => {
                tracing::info!(?stage, %message, "the container's init failed");
                Err(Error::CreateFailed {
                    stage: Some(stage),
                    message,
                })
            }
            Ok(other) => Err(Error::CreateFailed {
                stage: None,
                message: format!("unexpected {other:?} from the container's monitor"),
            }),
            Err(e) => Err(Error::CreateFailed {
                stage: None,
                message: e.to_string(),
            }),
        },
    }
}

/// What the init said on the start FIFO.
#[derive(Debug)]
enum Release {
    /// Released: it said `started`, and the FIFO closed at its exec.
    Started,
    /// Released, but the exec failed.
    ExecFailed(String),
    /// It was never released: not waiting (it died, or never got there), or the FIFO failed.
    NotWaiting(String),
}

/// Opens the start FIFO (the init is blocked opening its other end, which releases it)
/// and reads what the init says until end of file: `started`, then the end at its exec;
/// or a failure. Event-driven: a FIFO no writer has opened yet is not readable.
async fn release_init(fifo: &Path) -> Release {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .and_then(|file| Watched::new(file.into()));
    let watched = match opened {
        Ok(watched) => watched,
        Err(e) => return Release::NotWaiting(format!("opening {}: {e}", fifo.display())),
    };
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    let mut broken = None;
    loop {
        match watched.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(e) => {
                broken = Some(format!("reading {}: {e}", fifo.display()));
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&said);
    let mut started = false;
    for line in text.lines() {
        match oci::parse(line) {
            Ok(Message::Started) => started = true,
            Ok(Message::Failure { message, .. }) if started => {
                return Release::ExecFailed(message);
            }
            Ok(Message::Failure { message, .. }) => return Release::NotWaiting(message),
            Ok(other) => broken = Some(format!("unexpected {other:?} from the container's init")),
            Err(e) => broken = Some(e.to_string()),
        }
    }
    match (started, broken) {
        (true, None) => Release::Started,
        (true, Some(e)) => Release::ExecFailed(e),
        (false, e) => {
            Release::NotWaiting(e.unwrap_or_else(|| "the container's init has exited".into()))
        }
    }
}

/// Resolves when the monitor `(pid, start time)` has exited (its pidfd turns readable). A
/// monitor that is unknown (a record of an older agent) or already gone: when the exit is
/// recorded, checked every few milliseconds.
async fn monitor_exit(monitor: Option<(u32, u64)>, layout: &Layout) {
    match watch_monitor(monitor) {
        Some(watched) => {
            let _ = watched.readable().await;
        }
        None => {
            while !layout.exit_file().exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

fn watch_monitor(monitor: Option<(u32, u64)>) -> Option<Watched> {
    let (pid, started) = monitor?;
    Watched::new(crate::sys::process::pidfd_of(pid, started)?).ok()
}

use std::os::unix::fs::OpenOptionsExt as _;

fn stop_signal(name: &str) -> rustix::process::Signal {
    container::signal_number(name)
        .and_then(rustix::process::Signal::from_named_raw)
        .unwrap_or(rustix::process::Signal::TERM)
}

/// Signals the container's init through a pidfd, so a recycled pid is never hit: the
/// exit file is checked after the pidfd is opened.
fn signal_init(
    pid: u32,
    cgroup: &crate::cgroup::Cgroup,
    signal: rustix::process::Signal,
    layout: &Layout,
) {
    // A process outside the container's cgroup is not the init: it is gone and the pid
    // belongs to someone else.
    crate::sys::process::signal_if(pid, signal, || {
        cgroup.holds_container_process(pid) && !layout.exit_file().exists()
    });
}

/// Waits up to `timeout` for the container's exit to be recorded: the monitor records it,
/// then exits, so its pidfd says when. A container whose monitor is unknown (a record of
/// an older agent) is checked every few milliseconds.
async fn wait_exit(layout: &Layout, monitor: Option<(u32, u64)>, timeout: Duration) -> bool {
    if layout.exit_file().exists() {
        return true;
    }
    match watch_monitor(monitor) {
        Some(watch) => {
            let _ = tokio::time::timeout(timeout, watch.readable()).await;
        }
        None => {
            let deadline = Instant::now() + timeout;
            while !layout.exit_file().exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    layout.exit_file().exists()
}

/// What an ExecSync produced.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Each stream of an ExecSync is cut at this size; the rest is read and dropped.
pub const EXEC_OUTPUT_CAP: usize = 16 << 20;

async fn read_capped(
    reader: Option<impl tokio::io::AsyncRead + Unpin>,
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut reader) = reader else {
        return;
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                let room = EXEC_OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

impl Runtime {
    /// Runs `cmd` in a running container and collects its output (see [`EXEC_OUTPUT_CAP`]).
    /// A zero timeout waits for ever.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let (c, dir, pid, leaf_name, leaf) = self.prepare_exec(id, &cmd).await?;
        // The exec runs to its end in a task of its own, cleanup included, even if this
        // call is dropped (the client went away): that cancels it like a timeout.
        let (cancel_on_drop, cancelled) = tokio::sync::oneshot::channel::<()>();
        let job = tokio::spawn(async move {
            let result = run_exec(&dir, pid, &leaf_name, &cmd, timeout, cancelled).await;
            remove_exec_leaf(leaf, &c.id).await;
            result
        });
        let result = job
            .await
            .map_err(|e| Error::Precondition(format!("the exec failed: {e}")))?;
        drop(cancel_on_drop);
        result
    }
}

impl Runtime {
    /// What every exec needs: a running container, a command, and a leaf of its own below
    /// the container's cgroup, so that whatever the command starts is killed with it.
    async fn prepare_exec(
        &self,
        id: &str,
        cmd: &[String],
    ) -> Result<(Container, PathBuf, u32, String, crate::cgroup::Cgroup)> {
        let c = self.container(id).await?;
        if cmd.is_empty() {
            return Err(Error::Invalid {
                what: "exec".into(),
                reason: "no command".into(),
            });
        }
        let (ContainerState::Running, Some(pid)) = (c.state, c.pid) else {
            return Err(Error::Precondition(format!(
                "container {} is not running",
                c.id
            )));
        };
        let dir = self.containers_dir.join(&c.id);
        let suffix = super::new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?;
        let leaf_name = format!("{}{}", crate::cgroup::EXEC_LEAF_PREFIX, &suffix[..12]);
        let leaf = self.cgroups.cgroup(&c.cgroup)?.create_leaf(&leaf_name)?;
        Ok((c, dir, pid, leaf_name, leaf))
    }

    /// Starts `cmd` in a running container with its stdin, stdout and stderr piped to the
    /// caller, for a streaming exec; with `tty`, on a terminal of its own, its input then
    /// `oci::TtyInput` frames. [`ExecProcess::finish`] ends it.
    pub async fn start_exec(&self, id: &str, cmd: Vec<String>, tty: bool) -> Result<ExecProcess> {
        let (c, dir, pid, leaf_name, leaf) = self.prepare_exec(id, &cmd).await?;
        let spawned = oci::helper_command(Helper::Exec)
            .map_err(io_err("cannot find", Path::new("/proc/self/exe")))
            .and_then(|mut command| {
                command.arg(pid.to_string()).arg(&leaf_name);
                if tty {
                    command.arg("--tty");
                }
                command
                    .arg("--")
                    .args(&cmd)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(io_err("cannot exec in", &dir))
            });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || leaf.remove()).await;
                return Err(e);
            }
        };
        // Its directory first; what comes after on stdin is the command's.
        if let Some(stdin) = child.stdin.as_mut() {
            oci::write_dir(stdin, &dir)
                .await
                .map_err(io_err("cannot start a helper for", &dir))?;
        }
        Ok(ExecProcess {
            child,
            leaf,
            container: c.id,
        })
    }
}

/// A command running in a container for a streaming exec.
pub struct ExecProcess {
    /// The exec helper: its stdin, stdout and stderr are the command's.
    pub child: tokio::process::Child,
    leaf: crate::cgroup::Cgroup,
    container: String,
}

/// Kills whatever an exec left in its leaf and removes the leaf (off the async threads).
async fn remove_exec_leaf(leaf: crate::cgroup::Cgroup, container: &str) {
    let path = leaf.path();
    let cleaned = tokio::task::spawn_blocking(move || leaf.kill_all().and_then(|()| leaf.remove()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = cleaned {
        tracing::warn!(container, cgroup = %path, error = %e, "cannot clean up after an exec");
    }
}

impl ExecProcess {
    /// Waits for the command's exit code (ending it, if `cancelled` resolves first: the
    /// helper kills and reaps it), then kills and removes whatever is left of it.
    pub async fn finish(mut self, cancelled: impl std::future::Future<Output = ()>) -> i32 {
        let status = tokio::select! {
            status = self.child.wait() => status,
            () = cancelled => {
                if let Some(pid) = self.child.id() {
                    crate::sys::process::signal_if(pid, rustix::process::Signal::TERM, || true);
                }
                match tokio::time::timeout(EXEC_KILL_GRACE, self.child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = self.child.kill().await;
                        self.child.wait().await
                    }
                }
            }
        };
        let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
        remove_exec_leaf(self.leaf, &self.container).await;
        code
    }
}

/// A container name being created, held until the create ends either way.
pub(super) struct NameReservation<'a> {
    names: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    name: String,
}

impl<'a> NameReservation<'a> {
    /// `None` when another create holds the name.
    pub(super) fn take(
        names: &'a std::sync::Mutex<std::collections::HashSet<String>>,
        name: String,
    ) -> Option<NameReservation<'a>> {
        let fresh = names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        fresh.then_some(NameReservation { names, name })
    }
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// Compiles the container's seccomp profile for its capabilities into `seccomp.bpf` in
/// its directory; `None` for an unconfined or privileged container. A Localhost profile
/// that is missing or invalid fails the create.
fn write_seccomp(
    cache: &crate::seccomp::Cache,
    c: &Container,
    spec: &oci::spec::Spec,
    layout: &Layout,
) -> Result<Option<PathBuf>> {
    use crate::seccomp::{Choice, Profile, runtime_default};
    let profile = match &c.spec.seccomp {
        _ if c.spec.privileged => return Ok(None),
        Choice::Unconfined => return Ok(None),
        Choice::RuntimeDefault => runtime_default(),
        Choice::Localhost(path) => Profile::load(path)?,
    };
    let started = Instant::now();
    let program = cache.program(&profile, &spec.process.capabilities.bounding)?;
    tracing::debug!(
        container = %c.id,
        micros = started.elapsed().as_micros() as u64,
        instructions = program.len() / 8,
        "seccomp program ready"
    );
    let path = layout.dir.join("seccomp.bpf");
    state::write_atomic(&path, &program).map_err(io_err("cannot write", &path))?;
    Ok(Some(path))
}

/// A device of the request: the host's node (symlinks followed, as other runtimes do) as
/// a node for the container's /dev, and the rule that lets the container use it.
/// CDI devices' edits on the container's spec: device nodes (the host node's type and
/// numbers unless the spec gives them) with their cgroup rules, mounts, environment (a CDI
/// variable replaces one of the same name) and groups. A privileged container has the
/// host's /dev and every device already: it takes all but the nodes.
fn apply_cdi(
    spec: &mut crate::oci::spec::Spec,
    rules: &mut Vec<DeviceRule>,
    edits: crate::cdi::Edits,
    privileged: bool,
) -> Result<()> {
    for node in edits.device_nodes.into_iter().filter(|_| !privileged) {
        let (device, rule) = cdi_device(&node)?;
        spec.linux.devices.retain(|d| d.path != device.path);
        spec.linux.devices.push(device);
        rules.extend(rule);
    }
    for m in edits.mounts {
        let kind = match m.kind.as_deref() {
            None | Some("" | "none" | "bind") => "bind".to_string(),
            Some(other) => other.to_string(),
        };
        let mut options = m.options;
        if kind == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.insert(0, "rbind".into());
        }
        let destination = m.container_path.display().to_string();
        spec.mounts
            .retain(|existing| existing.destination != destination);
        spec.mounts.push(crate::oci::spec::Mount {
            destination,
            kind,
            source: m.host_path.display().to_string(),
            options,
        });
    }
    for var in edits.env {
        let key = var.split_once('=').map_or(var.as_str(), |(k, _)| k);
        match spec
            .process
            .env
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
        {
            Some(existing) => *existing = var,
            None => spec.process.env.push(var),
        }
    }
    let gids = &mut spec.process.user.additional_gids;
    for gid in edits.additional_gids {
        if !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    Ok(())
}

/// One CDI device node: what the spec gives, the rest from the host node.
fn cdi_device(node: &crate::cdi::DeviceNode) -> Result<(Device, Option<DeviceRule>)> {
    let invalid = |reason: String| Error::Invalid {
        what: format!("CDI device node {}", node.path.display()),
        reason,
    };
    if node.kind.as_deref() == Some("p") {
        return Err(invalid("FIFO device nodes are not supported".into()));
    }
    let permissions = node.permissions.clone().unwrap_or_else(|| "rwm".into());
    let from_host = resolve_device(&container::DeviceSpec {
        container_path: node.path.display().to_string(),
        host_path: node.host_path.display().to_string(),
        permissions: if permissions.is_empty() {
            "rwm".into()
        } else {
            permissions.clone()
        },
    });
    let (mut device, mut rule) = match (from_host, node.kind.as_deref(), node.major, node.minor) {
        (Ok(found), ..) => found,
        // Not on the host: the spec must say what it is.
        (Err(_), Some(kind @ ("c" | "u" | "b")), Some(major), Some(minor)) => {
            let number = |n: i64| u32::try_from(n).map_err(|_| invalid(format!("bad number {n}")));
            let (major, minor) = (number(major)?, number(minor)?);
            let block = kind == "b";
            let access = Access::parse(if permissions.is_empty() {
                "rwm"
            } else {
                &permissions
            })
            .ok_or_else(|| invalid(format!("permissions {permissions:?}")))?;
            (
                Device {
                    path: node.path.display().to_string(),
                    kind: if block { "b" } else { "c" }.into(),
                    major,
                    minor,
                    file_mode: 0o666,
                    uid: 0,
                    gid: 0,
                },
                DeviceRule {
                    kind: if block {
                        DeviceKind::Block
                    } else {
                        DeviceKind::Char
                    },
                    major: Some(major),
                    minor: Some(minor),
                    access,
                },
            )
        }
        (Err(e), ..) => return Err(e),
    };
    if let Some(mode) = node.file_mode {
        device.file_mode = mode & 0o7777;
    }
    if let Some(uid) = node.uid {
        device.uid = uid;
    }
    if let Some(gid) = node.gid {
        device.gid = gid;
    }
    // `none`: the node is made, the cgroup grants it nothing.
    if permissions.is_empty() {
        return Ok((device, None));
    }
    rule.access = Access::parse(&permissions)
        .ok_or_else(|| invalid(format!("permissions {permissions:?}")))?;
    Ok((device, Some(rule)))
}

fn resolve_device(d: &container::DeviceSpec) -> Result<(Device, DeviceRule)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let invalid = |reason: String| Error::Invalid {
        what: format!("device {}", d.host_path),
        reason,
    };
    let access = Access::parse(if d.permissions.is_empty() {
        "rwm"
    } else {
        &d.permissions
    })
    .ok_or_else(|| {
        invalid(format!(
            "permissions {:?} are not of r, w, m",
            d.permissions
        ))
    })?;
    let meta = std::fs::metadata(&d.host_path).map_err(|e| invalid(e.to_string()))?;
    let kind = if meta.file_type().is_char_device() {
        DeviceKind::Char
    } else if meta.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return Err(invalid("not a character or block device".into()));
    };
    let (major, minor) = (
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev()),
    );
    let device = Device {
        path: d.container_path.clone(),
        kind: if kind == DeviceKind::Char { "c" } else { "b" }.into(),
        major,
        minor,
        file_mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    };
    let rule = DeviceRule {
        kind,
        major: Some(major),
        minor: Some(minor),
        access,
    };
    Ok((device, rule))
}

/// How long an exec's output may go on after the command exited (a background child
/// holding its stdout): then what is left of the exec is killed.
const EXEC_DRAIN: Duration = Duration::from_millis(250);
/// How long a timed-out exec's helper may take to kill and reap the command.
const EXEC_KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs `stratad __exec` for one ExecSync and collects its output. Whatever is left in the
/// exec's leaf is the caller's to kill.
async fn run_exec(
    dir: &Path,
    pid: u32,
    leaf: &str,
    cmd: &[String],
    timeout: Duration,
    cancelled: tokio::sync::oneshot::Receiver<()>,
) -> Result<ExecOutput> {
    let mut child = oci::helper_command(Helper::Exec)
        .map_err(io_err("cannot find", Path::new("/proc/self/exe")))?
        .arg(pid.to_string())
        .arg(leaf)
        .arg("--")
        .args(cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err("cannot exec in", dir))?;
    oci::send_dir(child.stdin.take(), dir)
        .await
        .map_err(io_err("cannot start a helper for", dir))?;
    // Output goes into buffers the call keeps, so that a reader given up on (a background
    // child still holding the pipe) still leaves what it read.
    let (out, err) = (Arc::default(), Arc::default());
    let mut readers = [
        tokio::spawn(read_capped(child.stdout.take(), Arc::clone(&out))),
        tokio::spawn(read_capped(child.stderr.take(), Arc::clone(&err))),
    ];
    let deadline = async {
        if timeout.is_zero() {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(timeout).await
        }
    };
    let exited = tokio::select! {
        status = child.wait() => Some(status),
        () = deadline => None,
        _ = cancelled => None,
    };
    let deadline = tokio::time::Instant::now() + EXEC_DRAIN;
    for reader in &mut readers {
        if exited.is_none()
            || tokio::time::timeout_at(deadline, &mut *reader)
                .await
                .is_err()
        {
            reader.abort();
        }
    }
    let Some(status) = exited else {
        // The helper kills the command and reaps it (a SIGKILL of the helper would leave
        // the command to the host's init); whatever else is left, the caller kills.
        if let Some(pid) = child.id() {
            crate::sys::process::signal_if(pid, rustix::process::Signal::TERM, || true);
        }
        let _ = tokio::time::timeout(EXEC_KILL_GRACE, child.wait()).await;
        return Err(Error::Timeout(format!(
            "command {cmd:?} timed out after {timeout:?}"
        )));
    };
    let status = status.map_err(io_err("cannot wait for exec in", dir))?;
    let take = |buf: Arc<std::sync::Mutex<Vec<u8>>>| {
        std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let (stdout, stderr) = (take(out), take(err));
    Ok(ExecOutput {
        stdout,
        stderr,
        exit_code: status.code().unwrap_or(137),
    })
}

impl Runtime {
    /// A container's cgroup counters.
    pub fn container_stats(&self, c: &Container) -> crate::cgroup::Stats {
        self.cgroups
            .cgroup(&c.cgroup)
            .map(|cg| cg.stats())
            .unwrap_or_default()
    }

    /// What a container's writable layer holds (as last counted; see `usage`), and where
    /// it is.
    pub async fn writable_layer_usage(&self, id: &str) -> (super::Usage, PathBuf) {
        let upper = self.container_layout(id).upper();
        (self.usage.usage(&upper).await, upper)
    }

    /// What a commit needs of a container: its read-write layer and its image. With
    /// `pause`, a running container is frozen until the returned guard is dropped.
    pub async fn commit_source(
        &self,
        id: &str,
        pause: bool,
    ) -> Result<(Container, PathBuf, Option<Frozen>)> {
        let c = self.container(id).await?;
        let upper = self.container_layout(&c.id).upper();
        let frozen = if pause && c.state == ContainerState::Running {
            let cgroup = self.cgroups.cgroup(&c.cgroup)?;
            cgroup.freeze(true)?;
            Some(Frozen(cgroup))
        } else {
            None
        };
        Ok((c, upper, frozen))
    }

    /// How many containers there are, and the bytes their read-write layers hold.
    pub async fn containers_disk_usage(&self) -> (usize, u64) {
        let ids: Vec<String> = self.containers.lock().await.keys().cloned().collect();
        let mut bytes = 0;
        for id in &ids {
            bytes += self.writable_layer_usage(id).await.0.bytes;
        }
        (ids.len(), bytes)
    }

    /// A pod's cgroup counters (its containers' together).
    pub fn pod_stats(&self, sandbox: &super::Sandbox) -> crate::cgroup::Stats {
        self.cgroups
            .cgroup(&sandbox.cgroup)
            .map(|cg| cg.stats())
            .unwrap_or_default()
    }

    /// For a TARGET-mode container: the pid of its target's init, which must be a running
    /// container of the same pod.
    async fn pid_target(&self, spec: &ContainerSpec, pod_id: &str) -> Result<Option<u32>> {
        if spec.pid != super::sandbox::NamespaceMode::Target {
            return Ok(None);
        }
        let target = self
            .container(&spec.target_id)
            .await
            .map_err(|_| Error::Invalid {
                what: "PID namespace target".into(),
                reason: format!("no container {:?}", spec.target_id),
            })?;
        match (target.pod_id == pod_id, target.state, target.pid) {
            (true, ContainerState::Running, Some(pid)) => Ok(Some(pid)),
            _ => Err(Error::Precondition(format!(
                "PID namespace target {} must be a running container of the same pod",
                target.id
            ))),
        }
    }

    /// Asks the container's monitor to reopen the log file (after the kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let c = self.container(id).await?;
        if c.state != ContainerState::Running {
            return Err(Error::Precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let control = self.container_layout(&c.id).control();
        let sent = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&control)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"r"));
        sent.map_err(|e| {
            Error::Precondition(format!("container {}'s monitor is gone: {e}", c.id))
        })?;
        // The call returns once the new file is there, as the kubelet expects: it moved the
        // old one away, and writes there next.
        let deadline = Instant::now() + REOPEN_TIMEOUT;
        while !c.log_path.exists() {
            if Instant::now() > deadline {
                return Err(Error::Precondition(format!(
                    "container {}'s monitor did not reopen {}",
                    c.id,
                    c.log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Applies new limits to a container's cgroup.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: &crate::cgroup::Resources,
    ) -> Result<()> {
        let c = self.container(id).await?;
        let _op = self.op_lock(&c.id).await;
        if c.state == ContainerState::Exited {
            return Err(Error::Precondition(format!(
                "container {} has exited",
                c.id
            )));
        }
        self.cgroups.cgroup(&c.cgroup)?.set(resources)?;
        // And on the unit, or systemd would put the old limits back at its next reload.
        if let (Some(systemd), Some(scope)) =
            (&self.systemd, crate::cgroup::systemd::unit_of(&c.cgroup))
        {
            systemd.set_properties(scope, resources).await?;
        }
        // What is in force now, for ContainerStatus (the kubelet reads a resize back).
        let mut containers = self.containers.lock().await;
        if let Some(c) = containers.get_mut(&c.id) {
            c.spec.resources = c.spec.resources.merged(resources);
            self.save_container(c)?;
        }
        Ok(())
    }
}

/// A frozen container's cgroup, thawed when dropped.
pub struct Frozen(crate::cgroup::Cgroup);

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.0.freeze(false) {
            tracing::error!(error = %e, "cannot thaw a container after a commit");
        }
    }
}

/// What [`Runtime::refresh`] changed in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refreshed {
    Unchanged,
    /// To be saved.
    Changed,
    /// Its monitor died: what is left of it to be killed, then it is marked exited and
    /// saved.
    Orphaned,
}

/// Kills a scope's placeholder process, if it is still the one started then.
fn kill_placeholder(pid: u32, started: Option<u64>) {
    crate::sys::process::signal_if(pid, rustix::process::Signal::KILL, || {
        crate::sys::process::start_time(pid) == started
    });
}

/// A container's cgroup inside its pod's: a scope with the systemd driver (the pod's cgroup
/// is then a slice), a directory named by its id with cgroupfs.
fn container_cgroup(pod_cgroup: &str, id: &str) -> String {
    match crate::cgroup::systemd::unit_of(pod_cgroup) {
        Some(_) => format!("{pod_cgroup}/{}", crate::cgroup::systemd::scope(id)),
        None => format!("{pod_cgroup}/{id}"),
    }
}
