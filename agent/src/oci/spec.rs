//! The container's runtime spec, written to `containers/<id>/config.json` by the daemon and
//! read by the monitor and the init. Its shape follows the OCI runtime spec (process, root,
//! mounts, linux.namespaces, cgroupsPath, masked and read-only paths); what the OCI spec
//! has no field for (the overlay's layers, the log, the start FIFO) is under `strata`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub oci_version: String,
    pub process: Process,
    pub root: Root,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    pub linux: Linux,
    pub strata: Strata,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub capabilities: Capabilities,
    pub no_new_privileges: bool,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Written to /proc/self/oom_score_adj before exec, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    /// On a terminal: a pty of the container's devpts, its master held by the monitor.
    #[serde(default)]
    pub terminal: bool,
    /// The AppArmor profile the process runs confined to (none: unconfined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor_profile: Option<String>,
}

/// A resource limit, as the OCI spec writes it (`RLIMIT_NOFILE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Capability names as the OCI spec writes them (`CAP_CHOWN`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub path: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub namespaces: Vec<Namespace>,
    pub cgroups_path: String,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// Device nodes the init makes in the container's /dev.
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// A device node in the container (OCI `linux.devices`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub path: String,
    /// `c` or `b`.
    #[serde(rename = "type")]
    pub kind: String,
    pub major: u32,
    pub minor: u32,
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A namespace the container gets: a new one, or (with a path) an existing one to join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strata {
    /// Overlay lower layers, top-most first: the init layer, then the image's layers.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The init waits on this FIFO; StartContainer opens it.
    pub start_fifo: PathBuf,
    pub log_path: PathBuf,
    /// Where the monitor records the exit.
    pub exit_file: PathBuf,
    /// The cgroup filesystem's root and version, to join and to read OOM kills from.
    pub cgroup_root: PathBuf,
    pub cgroup_version: u8,
    /// The compiled seccomp program the init and every exec load, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<PathBuf>,
    /// The container's stdin: a pipe the monitor holds (false: /dev/null), closed after the
    /// first attached client's input ends when `stdin_once`.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// Images mounted as volumes; each has its entry (type "overlay") among the mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_volumes: Vec<ImageVolume>,
}

/// An image volume as the init mounts it: an overlay of `layers` (top-most first) with no
/// upper layer on `staging`, then `sub_path` of it (or all of it) bound at `destination`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageVolume {
    pub destination: String,
    pub layers: Vec<PathBuf>,
    #[serde(default)]
    pub sub_path: String,
    pub staging: PathBuf,
}

/// Capabilities a container has by default (the set Docker, containerd and CRI-O give).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths of /proc and /sys a container must not see, unless privileged.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Paths of /proc a container may read but not write, unless privileged.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
