//! CreateContainer: the request checked, the image's layers leased, the container's
//! directory, init layer and runtime spec written, its cgroup made, and its monitor and init
//! spawned up to the point where the init waits for StartContainer.

use std::{path::Path, path::PathBuf, time::Duration, time::Instant};

use tokio::io::AsyncBufReadExt;

use super::store::*;
use crate::{
    cgroup::devices::Access, cgroup::devices::DEFAULT_RULES, cgroup::devices::DeviceKind,
    cgroup::devices::DeviceRule, oci, oci::Helper, oci::Message, oci::spec::Device, rootfs,
    runtime::Error, runtime::PathKind, runtime::Result, runtime::Runtime, runtime::container,
    runtime::container::Container, runtime::container::ContainerSpec,
    runtime::container::ContainerState, runtime::container::ImageRoot, runtime::container::Layout,
    runtime::io_err, state, sys::rootdir::RootDir,
};

/// How long a container's init may take to set up before CreateContainer gives up.
pub(in crate::runtime) const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a file of the image (the top-most layer that has it), for /etc/passwd and
/// /etc/group. Missing: empty.
pub(in crate::runtime) fn read_image_file(layers: &[PathBuf], rel: &str) -> String {
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
pub(in crate::runtime) async fn spawn_monitor(dir: &Path) -> Result<(u32, u32)> {
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
        .ok_or_else(|| Error::Internal("the monitor has no stdout".into()))?;
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

/// Compiles the container's seccomp profile for its capabilities into `seccomp.bpf` in
/// its directory; `None` for an unconfined or privileged container. A Localhost profile
/// that is missing or invalid fails the create.
pub(in crate::runtime) fn write_seccomp(
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
pub(in crate::runtime) fn apply_cdi(
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
pub(in crate::runtime) fn cdi_device(
    node: &crate::cdi::DeviceNode,
) -> Result<(Device, Option<DeviceRule>)> {
    let invalid = |reason: String| Error::Invalid {
        what: format!("CDI device node {}", node.path.display()),
        reason,
    };
    if node.kind.as_deref() == Some("p") {
        return Err(invalid("FIFO device nodes are not supported".into()));
    }
    // Unset: rwm; `none` (empty): the node is made, the cgroup grants it nothing.
    let permissions = node.permissions.as_deref().unwrap_or("rwm");
    let access = match permissions {
        "" => None,
        p => Some(Access::parse(p).ok_or_else(|| invalid(format!("permissions {p:?}")))?),
    };
    let from_host = resolve_device(&container::DeviceSpec {
        container_path: node.path.display().to_string(),
        host_path: node.host_path.display().to_string(),
        permissions: String::new(),
    });
    let (mut device, rule) = match (from_host, node.kind.as_deref(), node.major, node.minor) {
        (Ok(found), ..) => found,
        // Not on the host: the spec must say what it is.
        (Err(_), Some(kind @ ("c" | "u" | "b")), Some(major), Some(minor)) => {
            let number = |n: i64| u32::try_from(n).map_err(|_| invalid(format!("bad number {n}")));
            let kind = if kind == "b" {
                DeviceKind::Block
            } else {
                DeviceKind::Char
            };
            device_and_rule(
                node.path.display().to_string(),
                kind,
                (number(major)?, number(minor)?),
                (0o666, 0, 0),
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
    Ok((device, access.map(|access| DeviceRule { access, ..rule })))
}

pub(in crate::runtime) fn resolve_device(
    d: &container::DeviceSpec,
) -> Result<(Device, DeviceRule)> {
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
    let (device, rule) = device_and_rule(
        d.container_path.clone(),
        kind,
        (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        ),
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
    );
    Ok((device, DeviceRule { access, ..rule }))
}

/// A device node at `path` of `kind` and numbers, with its (mode, uid, gid), and the
/// cgroup rule that lets it be used in every way (narrowed by the caller).
fn device_and_rule(
    path: String,
    kind: DeviceKind,
    (major, minor): (u32, u32),
    (file_mode, uid, gid): (u32, u32, u32),
) -> (Device, DeviceRule) {
    let device = Device {
        path,
        kind: if kind == DeviceKind::Char { "c" } else { "b" }.into(),
        major,
        minor,
        file_mode,
        uid,
        gid,
    };
    let rule = DeviceRule {
        kind,
        major: Some(major),
        minor: Some(minor),
        access: Access::ALL,
    };
    (device, rule)
}

impl Runtime {
    /// Finds each image volume's image: its layers, id and repo@digest.
    pub(in crate::runtime) fn resolve_image_volumes(&self, spec: &mut ContainerSpec) -> Result<()> {
        for m in &mut spec.mounts {
            let Some(volume) = m.image.as_mut() else {
                continue;
            };
            let root = self.image_root(&volume.image)?;
            volume.id = root.id;
            volume.image_ref = root.repo_digest;
            volume.layers = root.layers;
            volume.diff_ids = root.diff_ids;
        }
        Ok(())
    }

    /// Creates a container of `spec` in the pod `pod_id`: its image and its image volumes'
    /// images are found in the image store the runtime was given.
    pub async fn create_container(
        &self,
        pod_id: &str,
        mut spec: ContainerSpec,
    ) -> Result<Container> {
        let image = self.image_root(&spec.image)?;
        self.resolve_image_volumes(&mut spec)?;
        let sandbox = self.pod(pod_id).await?;
        sandbox.can_host().map_err(Error::Precondition)?;
        spec.resources.validate()?;
        if !spec.log_path.is_empty() {
            crate::runtime::check_path("log_path", &spec.log_path, PathKind::Below)?;
        }
        for m in &spec.mounts {
            match &m.image {
                Some(image) if !image.sub_path.is_empty() => {
                    crate::runtime::check_path("image_sub_path", &image.sub_path, PathKind::Below)?;
                }
                Some(_) => {}
                None => {
                    crate::runtime::check_path(
                        "mount host_path",
                        &m.host_path,
                        PathKind::Absolute,
                    )?;
                }
            }
            crate::runtime::check_path(
                "mount container_path",
                &m.container_path,
                PathKind::Absolute,
            )?;
        }
        for d in &spec.devices {
            crate::runtime::check_path("device host_path", &d.host_path, PathKind::Absolute)?;
            crate::runtime::check_path(
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
            crate::runtime::new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?
        );
        let mut layers = image.diff_ids.clone();
        for volume in spec.mounts.iter().filter_map(|m| m.image.as_ref()) {
            layers.extend(volume.diff_ids.iter().cloned());
        }
        let _claim = crate::runtime::leases::Claim::take(&self.leases, claim, &layers);
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
        let id =
            crate::runtime::new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?;
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
                    .is_ok_and(|p| p.can_host().is_ok()) =>
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

    pub(in crate::runtime) async fn build_container(
        &self,
        mut c: Container,
        sandbox: &crate::runtime::Sandbox,
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
        crate::runtime::write_record(&layout.dir.join(crate::runtime::CREATING), &c)?;
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
        crate::runtime::write_record(&layout.dir.join("config.json"), &spec)?;
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
        let _ = std::fs::remove_file(layout.dir.join(crate::runtime::CREATING));
        Ok(c)
    }

    /// With the systemd driver, starts the container's scope and returns its placeholder
    /// process (pid, start time).
    pub(in crate::runtime) async fn start_scope(
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
        let pid = crate::runtime::spawn_pid_holder().await?;
        let started = crate::sys::process::start_time(pid);
        if let Err(e) = systemd.start_scope(scope, slice, pid, resources).await {
            kill_placeholder(pid, started);
            return Err(e.into());
        }
        Ok(Some((pid, started)))
    }

    /// Removes a container's directory and cgroup; best effort.
    pub(in crate::runtime) async fn destroy_container(&self, id: &str, cgroup: &str) {
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

    /// For a TARGET-mode container: the pid of its target's init, which must be a running
    /// container of the same pod.
    pub(in crate::runtime) async fn pid_target(
        &self,
        spec: &ContainerSpec,
        pod_id: &str,
    ) -> Result<Option<u32>> {
        if spec.pid != crate::runtime::sandbox::NamespaceMode::Target {
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
}
