//! Containers: what the CRI asks for, turned into a runtime spec and a container directory
//! (init layer, read-write layer, rootfs mount point, config.json, start FIFO), and the
//! record of where each container is in its life. The runtime's container operations are
//! the files beside: the store (records, locks, refresh) and one file per operation.

mod create;
mod exec;
mod log;
mod remove;
mod start;
mod stats;
mod stop;
mod store;
mod update;

pub use exec::{ExecOutput, ExecProcess};
pub use stats::Frozen;
pub use store::ContainerFilter;
pub(in crate::runtime) use store::NameReservation;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::sandbox::{NamespaceMode, Sandbox};
use crate::{
    cgroup,
    image::UserPart,
    oci::{
        caps,
        spec::{self, Capabilities, Linux, Mount, Namespace, Process, Root, Spec, Strata, User},
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// A host device the request maps into the container (CRI `Device`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub container_path: String,
    pub host_path: String,
    /// `r`, `w`, `m` as CRI gives them.
    pub permissions: String,
}

/// An image mounted as a read-only volume (CRI `Mount.image`, KEP-4639): its layers from
/// the shared store, stacked as an overlay with no upper layer, never copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountImage {
    /// The image as the request named it.
    pub image: String,
    pub id: String,
    /// `registry/repository@sha256:…`, which ContainerStatus.mounts reports (the digest a
    /// kubelet shows for the volume); empty for an image from no registry.
    pub image_ref: String,
    /// A directory of the image mounted in place of its root (relative; empty: the root).
    pub sub_path: String,
    /// Unpacked layers, bottom first: for the create only (the store's paths of
    /// `diff_ids`, not recorded).
    #[serde(skip)]
    pub layers: Vec<PathBuf>,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub container_path: String,
    /// Empty for an image volume.
    pub host_path: String,
    /// The image this volume is, in place of a host path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MountImage>,
    pub readonly: bool,
    /// Every mount below the volume read-only too (CRI `recursive_read_only`).
    #[serde(default)]
    pub recursive_read_only: bool,
    pub propagation: Propagation,
}

/// Everything the agent keeps of a container's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub attempt: u32,
    /// The image as the request named it.
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// CDI devices by fully-qualified name (`vendor.com/class=name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi_devices: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: String,
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub supplemental_groups: Vec<i64>,
    /// The signal that stops the container (`SIGUSR1`), in place of the image's; empty:
    /// the image's, or SIGTERM.
    #[serde(default)]
    pub stop_signal: String,
    /// SupplementalGroupsPolicy Strict: only `supplemental_groups`, none of the groups the
    /// image's /etc/group gives the user (Merge, the default, adds those).
    #[serde(default)]
    pub supplemental_groups_strict: bool,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
    pub pid: NamespaceMode,
    /// The container whose PID namespace a TARGET-mode container joins.
    #[serde(default)]
    pub target_id: String,
    /// CRI's oom_score_adj (0 means "not set").
    #[serde(default)]
    pub oom_score_adj: i64,
    /// The seccomp profile asked for (none for a privileged container, whatever it asks).
    #[serde(default)]
    pub seccomp: crate::seccomp::Choice,
    /// The limits in force: those of the create, with every update applied since.
    #[serde(default)]
    pub resources: cgroup::Resources,
    /// The AppArmor profile it runs under (None: unconfined, or a host without AppArmor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor: Option<String>,
    /// The container's stdin is a pipe its monitor holds (for Attach), not /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// The pipe closes when the first attached client closes its input.
    #[serde(default)]
    pub stdin_once: bool,
    /// The container runs on a terminal (its output is logged as stdout).
    #[serde(default)]
    pub tty: bool,
}

/// The image as a container needs it.
#[derive(Debug, Clone)]
pub struct ImageRoot {
    pub id: String,
    /// `registry/repository@sha256:…` of the image's manifest, if it came from a registry.
    pub repo_digest: String,
    /// Unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
    pub diff_ids: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

/// A container as recorded in `containers/<id>/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub spec: ContainerSpec,
    pub image_id: String,
    /// The image by repo@digest when it has one (ContainerStatus.image_ref).
    #[serde(default)]
    pub image_ref: String,
    pub diff_ids: Vec<String>,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The init's pid on the host, while it runs.
    pub pid: Option<u32>,
    /// The monitor's pid and start time (`/proc/<pid>/stat`), to tell whether it still
    /// watches the container.
    #[serde(default)]
    pub monitor: Option<(u32, u64)>,
    pub log_path: PathBuf,
    pub cgroup: String,
    pub stop_signal: String,
    pub user: User,
}

/// What the host says of a container when its record is brought up to date: the exit its
/// monitor recorded, when its init was released (the `started` marker), whether its
/// monitor still runs. Gathered by the store, applied by [`Container::refresh`].
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub exit: Option<crate::oci::Exit>,
    /// Nanoseconds since the epoch.
    pub started_at: Option<i64>,
    pub monitor_alive: bool,
}

/// What [`Container::refresh`] changed in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refreshed {
    Unchanged,
    /// To be saved.
    Changed,
    /// Its monitor died: what is left of it to be killed, then it is marked exited and
    /// saved.
    Orphaned,
}

/// The state changes of a record, each in one place, and the guards of the operations
/// that depend on its state.
impl Container {
    /// Brings the record up to date with what the host says, in memory only.
    pub fn refresh(&mut self, seen: &Observed) -> Refreshed {
        if self.state == ContainerState::Exited {
            return Refreshed::Unchanged;
        }
        if let Some(exit) = &seen.exit {
            self.exited(exit);
            return Refreshed::Changed;
        }
        let mut changed = Refreshed::Unchanged;
        if self.state == ContainerState::Created
            && let Some(at) = seen.started_at
        {
            // Started while no StartContainer call saw it through (the daemon was down).
            self.state = ContainerState::Running;
            if self.started_at == 0 {
                self.started_at = at;
            }
            changed = Refreshed::Changed;
        }
        if self.monitor.is_some() && !seen.monitor_alive {
            return Refreshed::Orphaned;
        }
        changed
    }

    /// Released by StartContainer at `at` (nanoseconds since the epoch).
    pub fn started(&mut self, at: i64) {
        self.started_at = at;
        self.state = ContainerState::Running;
    }

    /// Its monitor recorded `exit`.
    pub fn exited(&mut self, exit: &crate::oci::Exit) {
        self.state = ContainerState::Exited;
        self.finished_at = exit.finished_at;
        self.exit_code = exit.exit_code;
        self.pid = None;
        (self.reason, self.message) = match (&exit.exec_error, exit.oom_killed, exit.exit_code) {
            (Some(e), _, _) => ("StartError".into(), e.clone()),
            (None, true, _) => ("OOMKilled".into(), String::new()),
            (None, false, 0) => ("Completed".into(), String::new()),
            (None, false, _) => ("Error".into(), String::new()),
        };
    }

    /// Its monitor died (at `at`) and what was left of it was killed: nobody recorded
    /// its exit.
    pub fn orphaned(&mut self, at: i64) {
        self.state = ContainerState::Exited;
        self.finished_at = at;
        self.exit_code = 255;
        self.pid = None;
        self.reason = "Error".into();
        self.message = "the container's monitor died; its exit status is unknown".into();
    }

    /// StartContainer: only a created container.
    pub fn can_start(&self) -> Result<(), String> {
        match self.state {
            ContainerState::Created => Ok(()),
            other => Err(format!("container {} is {other:?}, not created", self.id).to_lowercase()),
        }
    }

    /// Exec, Attach, ReopenContainerLog: only a running one.
    pub fn can_join(&self) -> Result<u32, String> {
        match (self.state, self.pid) {
            (ContainerState::Running, Some(pid)) => Ok(pid),
            _ => Err(format!("container {} is not running", self.id)),
        }
    }

    /// UpdateContainerResources: anything that has not exited.
    pub fn can_update(&self) -> Result<(), String> {
        match self.state {
            ContainerState::Exited => Err(format!("container {} has exited", self.id)),
            _ => Ok(()),
        }
    }

    /// Every layer the container is made of or mounts: its image's and its image volumes'.
    pub fn layers_in_use(&self) -> Vec<String> {
        let mut layers = self.diff_ids.clone();
        for image in self.spec.mounts.iter().filter_map(|m| m.image.as_ref()) {
            layers.extend(image.diff_ids.iter().cloned());
        }
        layers
    }
}

/// `Entrypoint`/`Cmd` merged with the request the way Kubernetes does it: a command
/// replaces both; args alone replace Cmd.
pub fn command_line(spec: &ContainerSpec, image: &ImageRoot) -> Vec<String> {
    match (spec.command.is_empty(), spec.args.is_empty()) {
        (false, _) => spec.command.iter().chain(&spec.args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(&spec.args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The image's environment with the request's variables on top (same key: the request wins).
pub fn environment(spec: &ContainerSpec, image: &ImageRoot) -> Vec<String> {
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect();
    for (k, v) in &spec.envs {
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// One line of /etc/passwd or /etc/group.
fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
}

/// Resolves the user the container runs as: the request's uid or name, else the image's
/// `User` (`name`, `uid`, `name:group`, `uid:gid`), looked up in the image's passwd and
/// group files. Unknown names are an error; unknown numbers are used as they are.
pub fn resolve_user(
    spec: &ContainerSpec,
    image_user: &str,
    passwd: &str,
    group: &str,
) -> Result<User, String> {
    if spec.run_as_group.is_some() && spec.run_as_user.is_none() && spec.run_as_username.is_empty()
    {
        return Err("run_as_group is set without run_as_user or run_as_username".into());
    }
    let (image_user, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let requested = spec.run_as_user.is_some() || !spec.run_as_username.is_empty();
    let part = match spec.run_as_user {
        Some(uid) => UserPart::Id(UserPart::from_cri(uid).map_err(|e| format!("run_as_user {e}"))?),
        None if !spec.run_as_username.is_empty() => UserPart::parse(&spec.run_as_username),
        None => UserPart::parse(image_user),
    };
    let by_uid = |uid: u32| {
        let uid_text = uid.to_string();
        let entry = entries(passwd).find(|e| e.len() >= 4 && e[2] == uid_text);
        let gid = entry.as_ref().and_then(|e| e[3].parse().ok()).unwrap_or(0);
        (uid, gid, entry.map(|e| e[0].to_string()))
    };
    let (uid, mut gid, name) = match part {
        UserPart::Empty => by_uid(0),
        UserPart::Id(uid) => by_uid(uid),
        UserPart::OutOfRange(text) => {
            return Err(format!("user {text:?} is out of range (0 to 4294967294)"));
        }
        UserPart::Name(user) => {
            let entry = entries(passwd)
                .find(|e| e.len() >= 4 && e[0] == user)
                .ok_or_else(|| format!("user {user:?} is not in the image's /etc/passwd"))?;
            let id = |field: &str| match UserPart::parse(field) {
                UserPart::Id(id) => Ok(id),
                _ => Err(format!(
                    "bad id {field:?} for {user:?} in the image's /etc/passwd"
                )),
            };
            (id(entry[2])?, id(entry[3])?, Some(user.to_string()))
        }
    };
    if !requested && let Some(g) = image_group {
        gid = match UserPart::parse(g) {
            UserPart::Empty => gid,
            UserPart::Id(gid) => gid,
            UserPart::OutOfRange(text) => {
                return Err(format!("group {text:?} is out of range (0 to 4294967294)"));
            }
            UserPart::Name(g) => entries(group)
                .find(|e| e.len() >= 3 && e[0] == g)
                .and_then(|e| match UserPart::parse(e[2]) {
                    UserPart::Id(id) => Some(id),
                    _ => None,
                })
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        };
    }
    if let Some(g) = spec.run_as_group {
        gid = UserPart::from_cri(g).map_err(|e| format!("run_as_group {e}"))?;
    }
    // The primary group is one of the process's groups too (as containerd and CRI-O set
    // them, and as ContainerStatus.user reports them).
    let mut additional: Vec<u32> = vec![gid];
    if let Some(name) = &name
        && !spec.supplemental_groups_strict
    {
        for e in entries(group) {
            if e.len() >= 4
                && e[3].split(',').any(|m| m == name)
                && let Ok(g) = e[2].parse::<u32>()
            {
                additional.push(g);
            }
        }
    }
    for g in &spec.supplemental_groups {
        additional.push(UserPart::from_cri(*g).map_err(|e| format!("supplemental group {e}"))?);
    }
    additional.sort_unstable();
    additional.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// The capabilities: a default set, or all when privileged; then "ALL" in drop empties it
/// and "ALL" in add fills it, and the named additions and drops apply last (so the usual
/// `drop: [ALL], add: [NET_BIND_SERVICE]` leaves exactly that one).
pub fn capabilities(spec: &ContainerSpec) -> Result<Vec<String>, String> {
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL") || c.eq_ignore_ascii_case("CAP_ALL");
    let mut set: Vec<String> = if spec.privileged {
        caps::all()
    } else {
        spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    if spec.drop_capabilities.iter().any(is_all) {
        set.clear();
    }
    if spec.add_capabilities.iter().any(is_all) {
        set = caps::all();
    }
    for add in spec.add_capabilities.iter().filter(|c| !is_all(c)) {
        let name = caps::canonical(add).ok_or_else(|| format!("unknown capability {add:?}"))?;
        if !set.contains(&name) {
            set.push(name);
        }
    }
    for drop in spec.drop_capabilities.iter().filter(|c| !is_all(c)) {
        let name = caps::canonical(drop).ok_or_else(|| format!("unknown capability {drop:?}"))?;
        set.retain(|c| *c != name);
    }
    Ok(set)
}

/// Paths inside a container directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn init(&self) -> PathBuf {
        self.dir.join("init")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn fifo(&self) -> PathBuf {
        self.dir.join("start")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn started(&self) -> PathBuf {
        self.dir.join("started")
    }
    /// The monitor's control FIFO ("r": reopen the log).
    pub fn control(&self) -> PathBuf {
        self.dir.join("control")
    }
    /// Where the init mounts the `n`th image volume before it binds it in place (in the
    /// container's mount namespace only).
    pub fn image_volume(&self, n: usize) -> PathBuf {
        self.dir.join("image-volumes").join(n.to_string())
    }
    /// An empty directory under every image volume's layers: an overlay with no upper layer
    /// needs two lower ones, and an image may have one.
    pub fn image_volume_floor(&self) -> PathBuf {
        self.dir.join("image-volumes").join("floor")
    }
}

/// /dev: a tmpfs with the standard nodes; a privileged container sees the host's devices.
fn dev_mount(privileged: bool) -> Mount {
    if privileged {
        return Mount {
            destination: "/dev".into(),
            kind: "bind".into(),
            source: "/dev".into(),
            options: vec!["rbind".into(), "nosuid".into(), "rslave".into()],
        };
    }
    Mount {
        destination: "/dev".into(),
        kind: "tmpfs".into(),
        source: "tmpfs".into(),
        options: vec![
            "nosuid".into(),
            "strictatime".into(),
            "mode=755".into(),
            "size=65536k".into(),
        ],
    }
}

/// /dev/shm: the pod's shared tmpfs, or the node's for a pod in the node's IPC namespace.
fn shm_mount(sandbox: &Sandbox) -> Mount {
    let source = sandbox
        .shm
        .as_ref()
        .map_or_else(|| "/dev/shm".to_string(), |p| p.display().to_string());
    Mount {
        destination: "/dev/shm".into(),
        kind: "bind".into(),
        source,
        options: vec![
            "rbind".into(),
            "nosuid".into(),
            "nodev".into(),
            "noexec".into(),
            "rprivate".into(),
        ],
    }
}

/// Builds the runtime spec for a container of `sandbox`.
#[allow(clippy::too_many_arguments)]
pub fn runtime_spec(
    container: &Container,
    sandbox: &Sandbox,
    image: &ImageRoot,
    layout: &Layout,
    cgroup_root: &Path,
    cgroup_version: u8,
    pid_target: Option<u32>,
) -> Result<Spec, String> {
    let spec = &container.spec;
    let args = command_line(spec, image);
    if args.is_empty() {
        return Err("no command: neither the request nor the image names one".into());
    }
    let capabilities = capabilities(spec)?;
    let mut namespaces = vec![Namespace {
        kind: "mount".into(),
        path: None,
    }];
    for (kind, pinned) in [("network", "net"), ("ipc", "ipc"), ("uts", "uts")] {
        if let Some(path) = sandbox.namespaces.get(pinned) {
            namespaces.push(Namespace {
                kind: kind.into(),
                path: Some(path.clone()),
            });
        }
    }
    // POD joins the pod's shared PID namespace (held by `stratad __pidns`) when the pod
    // has one, CONTAINER gets its own, NODE shares the host's, TARGET joins another
    // container's (resolved by the runtime into `pid_target`).
    match (spec.pid, pid_target) {
        (NamespaceMode::Node, _) => {}
        (NamespaceMode::Target, Some(pid)) => namespaces.push(Namespace {
            kind: "pid".into(),
            path: Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
        }),
        (NamespaceMode::Target, None) => {
            return Err("PID namespace TARGET without a running target".into());
        }
        (NamespaceMode::Pod, _) if sandbox.pid_holder.is_some() => namespaces.push(Namespace {
            kind: "pid".into(),
            path: sandbox
                .pid_holder
                .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/pid"))),
        }),
        _ => namespaces.push(Namespace {
            kind: "pid".into(),
            path: None,
        }),
    }
    let sys_options = if spec.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        Mount {
            destination: "/proc".into(),
            kind: "proc".into(),
            source: "proc".into(),
            options: vec!["nosuid".into(), "noexec".into(), "nodev".into()],
        },
        dev_mount(spec.privileged),
        Mount {
            destination: "/dev/pts".into(),
            kind: "devpts".into(),
            source: "devpts".into(),
            options: vec![
                "nosuid".into(),
                "noexec".into(),
                "newinstance".into(),
                "ptmxmode=0666".into(),
                "mode=0620".into(),
                "gid=5".into(),
            ],
        },
        shm_mount(sandbox),
        Mount {
            destination: "/dev/mqueue".into(),
            kind: "mqueue".into(),
            source: "mqueue".into(),
            options: vec!["nosuid".into(), "noexec".into(), "nodev".into()],
        },
        Mount {
            destination: "/sys".into(),
            kind: "sysfs".into(),
            source: "sysfs".into(),
            options: vec![
                "nosuid".into(),
                "noexec".into(),
                "nodev".into(),
                sys_options.into(),
            ],
        },
    ];
    let mut image_volumes = Vec::new();
    for m in &spec.mounts {
        if let Some(image) = &m.image {
            let mut layers: Vec<PathBuf> = image.layers.iter().rev().cloned().collect();
            layers.push(layout.image_volume_floor());
            image_volumes.push(spec::ImageVolume {
                destination: m.container_path.clone(),
                layers,
                sub_path: image.sub_path.clone(),
                staging: layout.image_volume(image_volumes.len()),
            });
            mounts.push(Mount {
                destination: m.container_path.clone(),
                kind: "overlay".into(),
                source: image.image.clone(),
                options: ["ro", "nosuid", "nodev", "rprivate"]
                    .map(String::from)
                    .to_vec(),
            });
            continue;
        }
        let mut options = vec!["rbind".to_string()];
        if m.readonly {
            options.push("ro".into());
        }
        if m.recursive_read_only {
            options.push("rro".into());
        }
        options.push(match m.propagation {
            Propagation::Private => "rprivate".into(),
            Propagation::HostToContainer => "rslave".into(),
            Propagation::Bidirectional => "rshared".into(),
        });
        mounts.push(Mount {
            destination: m.container_path.clone(),
            kind: "bind".into(),
            source: m.host_path.clone(),
            options,
        });
    }
    let (masked, readonly) = if spec.privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            spec.masked_paths
                .clone()
                .unwrap_or_else(|| spec::MASKED_PATHS.iter().map(|s| s.to_string()).collect()),
            spec.readonly_paths
                .clone()
                .unwrap_or_else(|| spec::READONLY_PATHS.iter().map(|s| s.to_string()).collect()),
        )
    };
    let mut lowers = vec![layout.init()];
    lowers.extend(image.layers.iter().rev().cloned());
    Ok(Spec {
        oci_version: "1.2.0".into(),
        process: Process {
            args,
            env: environment(spec, image),
            cwd: if !spec.working_dir.is_empty() {
                spec.working_dir.clone()
            } else if !image.working_dir.is_empty() {
                image.working_dir.clone()
            } else {
                "/".into()
            },
            user: container.user.clone(),
            capabilities: Capabilities {
                bounding: capabilities.clone(),
                effective: capabilities.clone(),
                permitted: capabilities,
            },
            no_new_privileges: spec.no_new_privs,
            rlimits: Vec::new(),
            oom_score_adj: (spec.oom_score_adj != 0).then_some(spec.oom_score_adj),
            terminal: spec.tty,
            apparmor_profile: spec.apparmor.clone(),
        },
        root: Root {
            path: layout.rootfs(),
            readonly: spec.readonly_rootfs,
        },
        mounts,
        linux: Linux {
            namespaces,
            cgroups_path: container.cgroup.clone(),
            masked_paths: masked,
            readonly_paths: readonly,
            devices: Vec::new(),
        },
        strata: Strata {
            lowers,
            upper: layout.upper(),
            work: layout.work(),
            start_fifo: layout.fifo(),
            log_path: container.log_path.clone(),
            exit_file: layout.exit_file(),
            cgroup_root: cgroup_root.to_path_buf(),
            cgroup_version,
            seccomp: None,
            stdin: container.spec.stdin,
            stdin_once: container.spec.stdin_once,
            image_volumes,
        },
    })
}

/// The kernel's real-time signals (glibc keeps 32 and 33 for itself).
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// The number of a signal named as an image's STOPSIGNAL or the CRI names it: `SIGUSR1`,
/// `USR1`, `10`, `SIGRTMIN+3`, `SIGRTMINPLUS3`, `SIGRTMAXMINUS2`. `None` for anything else.
pub fn signal_number(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let (rtmin, rtmax) = (SIGRTMIN, SIGRTMAX);
    let offset = |rest: &str| rest.parse::<i32>().ok().filter(|n| (0..=30).contains(n));
    let n = if bare == "RTMIN" {
        rtmin
    } else if bare == "RTMAX" {
        rtmax
    } else if let Some(rest) = bare
        .strip_prefix("RTMIN+")
        .or_else(|| bare.strip_prefix("RTMINPLUS"))
    {
        rtmin + offset(rest)?
    } else if let Some(rest) = bare
        .strip_prefix("RTMAX-")
        .or_else(|| bare.strip_prefix("RTMAXMINUS"))
    {
        rtmax - offset(rest)?
    } else {
        let full = format!("SIG{bare}");
        let full = match full.as_str() {
            "SIGCLD" => "SIGCHLD",
            "SIGPOLL" => "SIGIO",
            other => other,
        };
        full.parse::<nix::sys::signal::Signal>().ok()? as i32
    };
    Some(n)
}

/// The CRI's name of the signal a name stands for (`10` → `SIGUSR1`, `SIGRTMIN+3` →
/// `SIGRTMINPLUS3`), or `None` if it is no signal.
pub fn signal_name(name: &str) -> Option<String> {
    let n = signal_number(name)?;
    Some(match n {
        SIGRTMIN => "SIGRTMIN".to_string(),
        SIGRTMAX => "SIGRTMAX".to_string(),
        n if n > SIGRTMIN && n < SIGRTMIN + 16 => format!("SIGRTMINPLUS{}", n - SIGRTMIN),
        n if n > SIGRTMIN && n < SIGRTMAX => format!("SIGRTMAXMINUS{}", SIGRTMAX - n),
        n => nix::sys::signal::Signal::try_from(n)
            .ok()?
            .as_str()
            .to_string(),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn signals_are_named_every_way_images_and_the_cri_name_them() {
        for (name, n) in [
            ("SIGUSR1", 10),
            ("usr1", 10),
            ("10", 10),
            ("SIGTERM", 15),
            ("SIGCLD", 17),
            ("SIGPOLL", 29),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+3", 37),
            ("SIGRTMINPLUS3", 37),
            ("SIGRTMAXMINUS2", 62),
            ("SIGRTMAX", 64),
        ] {
            assert_eq!(signal_number(name), Some(n), "{name}");
        }
        for bad in ["", "SIGNOPE", "0", "65", "SIGRTMIN+31", "-9"] {
            assert_eq!(signal_number(bad), None, "{bad}");
        }
    }
    use super::*;

    fn image() -> ImageRoot {
        ImageRoot {
            id: "sha256:x".into(),
            repo_digest: String::new(),
            layers: vec![],
            diff_ids: vec![],
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: String::new(),
            user: String::new(),
            stop_signal: String::new(),
        }
    }

    #[test]
    fn commands_merge_the_kubernetes_way() {
        let i = image();
        let mut s = ContainerSpec::default();
        assert_eq!(command_line(&s, &i), ["/entry", "default"]);
        s.args = vec!["x".into()];
        assert_eq!(command_line(&s, &i), ["/entry", "x"]);
        s.command = vec!["/bin/sh".into()];
        assert_eq!(command_line(&s, &i), ["/bin/sh", "x"]);
        s.envs = vec![("A".into(), "2".into()), ("B".into(), "3".into())];
        assert_eq!(environment(&s, &i), ["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn users_resolve_in_the_image() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\napp:x:1001:\nextra:x:2000:app\n";
        let mut s = ContainerSpec::default();
        let u = resolve_user(&s, "", passwd, group).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        let u = resolve_user(&s, "app", passwd, group).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1001, vec![1001, 2000])
        );
        let u = resolve_user(&s, "1000:extra", passwd, group).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        s.run_as_user = Some(4242);
        s.run_as_group = Some(7);
        s.supplemental_groups = vec![9];
        let u = resolve_user(&s, "app", passwd, group).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (4242, 7, vec![7, 9]));
        // Merge (the default) adds the image's groups of the user; Strict does not.
        s.run_as_user = Some(1000);
        s.run_as_group = None;
        s.supplemental_groups = vec![1234];
        let merged = resolve_user(&s, "", passwd, group).unwrap();
        assert_eq!(merged.additional_gids, [1001, 1234, 2000]);
        s.supplemental_groups_strict = true;
        let strict = resolve_user(&s, "", passwd, group).unwrap();
        assert_eq!(strict.additional_gids, [1001, 1234]);
        let s = ContainerSpec {
            run_as_username: "nobody".into(),
            ..Default::default()
        };
        assert!(
            resolve_user(&s, "", passwd, group)
                .unwrap_err()
                .contains("nobody")
        );
    }

    #[test]
    fn numeric_users_are_ids_and_never_names() {
        // A passwd that maps the "names" 4294967296 and 4294967295 to root: numbers must
        // never be looked up as names, or an image reported as non-root runs as root.
        let passwd = "root:x:0:0::/:/bin/sh\n4294967296:x:0:0::/:/bin/sh\n\
                      4294967295:x:0:0::/:/bin/sh\n0x10:x:0:0::/:/bin/sh\n";
        let mut s = ContainerSpec::default();
        for user in [
            "4294967296",
            "4294967295",
            "99999999999999999999",
            "1:4294967296",
        ] {
            let err = resolve_user(&s, user, passwd, "").unwrap_err();
            assert!(err.contains("out of range"), "{user}: {err}");
        }
        // Unknown ids are used as they are; "0x10" is a name.
        assert_eq!(
            resolve_user(&s, "4294967294", passwd, "").unwrap().uid,
            4294967294
        );
        assert_eq!(resolve_user(&s, "0x10", passwd, "").unwrap().uid, 0);
        for (uid, ok) in [
            (-1, false),
            (1 << 32, false),
            (u32::MAX as i64, false),
            (5, true),
        ] {
            s.run_as_user = Some(uid);
            assert_eq!(
                resolve_user(&s, "", passwd, "").is_ok(),
                ok,
                "run_as_user {uid}"
            );
        }
        let s = ContainerSpec {
            run_as_username: "4294967296".into(),
            ..Default::default()
        };
        assert!(resolve_user(&s, "", passwd, "").is_err());
        let s = ContainerSpec {
            run_as_group: Some(7),
            ..Default::default()
        };
        let err = resolve_user(&s, "", passwd, "").unwrap_err();
        assert!(err.contains("without run_as_user"), "{err}");
    }

    #[test]
    fn capability_sets() {
        let mut s = ContainerSpec::default();
        assert!(capabilities(&s).unwrap().contains(&"CAP_CHOWN".to_string()));
        s.add_capabilities = vec!["net_admin".into()];
        s.drop_capabilities = vec!["CAP_CHOWN".into()];
        let c = capabilities(&s).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()) && !c.contains(&"CAP_CHOWN".to_string()));
        s.drop_capabilities = vec!["ALL".into()];
        s.add_capabilities = vec![];
        assert!(capabilities(&s).unwrap().is_empty());
        s.add_capabilities = vec!["NET_BIND_SERVICE".into()];
        assert_eq!(capabilities(&s).unwrap(), ["CAP_NET_BIND_SERVICE"]);
        s.add_capabilities = vec![];
        s.add_capabilities = vec!["CAP_BOGUS".into()];
        assert!(capabilities(&s).is_err());
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use crate::oci::Exit;

    fn record(state: ContainerState) -> Container {
        Container {
            id: "c1".into(),
            pod_id: "p1".into(),
            spec: ContainerSpec::default(),
            image_id: "sha256:i".into(),
            image_ref: String::new(),
            diff_ids: vec![],
            state,
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: Some(42),
            monitor: Some((41, 7)),
            log_path: PathBuf::from("/log"),
            cgroup: "strata/p1/c1".into(),
            stop_signal: String::new(),
            user: User::default(),
        }
    }

    fn exit(code: i32, oom: bool, exec_error: Option<&str>) -> Exit {
        Exit {
            exit_code: code,
            signal: None,
            oom_killed: oom,
            exec_error: exec_error.map(String::from),
            finished_at: 99,
        }
    }

    fn alive() -> Observed {
        Observed {
            monitor_alive: true,
            ..Default::default()
        }
    }

    #[test]
    fn an_exit_the_monitor_recorded_ends_the_container_with_its_reason() {
        for (exit, reason, message) in [
            (exit(0, false, None), "Completed", ""),
            (exit(3, false, None), "Error", ""),
            (exit(137, true, None), "OOMKilled", ""),
            (
                exit(127, false, Some("no /bin/x")),
                "StartError",
                "no /bin/x",
            ),
        ] {
            let mut c = record(ContainerState::Running);
            let seen = Observed {
                exit: Some(exit.clone()),
                ..Default::default()
            };
            assert_eq!(c.refresh(&seen), Refreshed::Changed);
            assert_eq!(c.state, ContainerState::Exited);
            assert_eq!((c.exit_code, c.finished_at), (exit.exit_code, 99));
            assert_eq!((c.reason.as_str(), c.message.as_str()), (reason, message));
            assert_eq!(c.pid, None);
            // Once exited, nothing the host says changes it.
            assert_eq!(c.refresh(&alive()), Refreshed::Unchanged);
        }
    }

    #[test]
    fn a_start_nobody_saw_through_and_a_dead_monitor() {
        // Released while the daemon was down: running, from the marker's time.
        let mut c = record(ContainerState::Created);
        let seen = Observed {
            started_at: Some(500),
            monitor_alive: true,
            ..Default::default()
        };
        assert_eq!(c.refresh(&seen), Refreshed::Changed);
        assert_eq!((c.state, c.started_at), (ContainerState::Running, 500));
        // A time already recorded is kept.
        let mut c = record(ContainerState::Created);
        c.started_at = 400;
        c.refresh(&seen);
        assert_eq!(c.started_at, 400);
        // Nothing new: unchanged.
        let mut c = record(ContainerState::Running);
        assert_eq!(c.refresh(&alive()), Refreshed::Unchanged);
        // The monitor died without recording an exit: orphaned, to be settled.
        let mut c = record(ContainerState::Running);
        assert_eq!(c.refresh(&Observed::default()), Refreshed::Orphaned);
        assert_eq!(c.state, ContainerState::Running, "marked only once settled");
        c.orphaned(77);
        assert_eq!(
            (c.state, c.exit_code, c.finished_at),
            (ContainerState::Exited, 255, 77)
        );
        assert!(c.message.contains("monitor died"));
        // A record of an older agent knows no monitor: never judged orphaned.
        let mut c = record(ContainerState::Running);
        c.monitor = None;
        assert_eq!(c.refresh(&Observed::default()), Refreshed::Unchanged);
    }

    #[test]
    fn operations_are_guarded_by_the_state() {
        let created = record(ContainerState::Created);
        let mut running = record(ContainerState::Running);
        let exited = record(ContainerState::Exited);
        assert!(created.can_start().is_ok());
        assert_eq!(
            running.can_start().unwrap_err(),
            "container c1 is running, not created"
        );
        assert!(exited.can_start().is_err());
        assert_eq!(running.can_join(), Ok(42));
        assert!(created.can_join().is_err() && exited.can_join().is_err());
        running.pid = None;
        assert!(running.can_join().is_err(), "no process to join");
        assert!(created.can_update().is_ok() && running.can_update().is_ok());
        assert_eq!(exited.can_update().unwrap_err(), "container c1 has exited");
        let mut c = created.clone();
        c.started(10);
        assert_eq!((c.state, c.started_at), (ContainerState::Running, 10));
    }
}
