//! Control groups, v1 and v2, written directly through cgroupfs.
//!
//! A small module of our own rather than cgroups-rs: the agent needs create, limits,
//! membership, stats and removal, and a plain filesystem interface that tests can point at
//! a fake cgroupfs tree (this machine runs v1; new fleets run v2).

pub mod devices;
pub mod systemd;

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use devices::DeviceRule;

/// v1 controllers the agent places cgroups in.
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices", "hugetlb",
];

/// systemd's hierarchies on a v1 host: `name=systemd`, and on a hybrid host the empty v2
/// tree; no controller, only membership.
const V1_TRACKING: &[&str] = &["systemd", "unified"];

/// The leaf below a container's cgroup that its processes run in. The limits are on the
/// container's cgroup, one level up: a process inside that makes a cgroup namespace (whose
/// root is then the leaf) and mounts cgroupfs can change only the leaf's files, and the
/// kernel applies the tighter limit of the two.
pub const CONTAINER_LEAF: &str = "main";
/// The leaf, in systemd's hierarchies only, that a container's monitor joins below a
/// systemd scope (see `Cgroup::track`).
pub const MONITOR_LEAF: &str = "monitor";
/// The leaf of a pod's cgroup that its PID-namespace holder runs in.
pub const POD_HOLDER_LEAF: &str = "pidns";
/// The leaf each exec runs in, beside the container's, so that everything an exec started
/// can be found and killed when it ends: `exec-` and a random suffix.
pub const EXEC_LEAF_PREFIX: &str = "exec-";
/// v2 controllers enabled for the agent's subtree (those the kernel has).
const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids", "io", "hugetlb"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {0}: processes {1:?} survived SIGKILL")]
    Survivors(String, Vec<u32>),
    #[error("no cgroup hierarchy found under {0}")]
    NoHierarchy(PathBuf),
    #[error("invalid cgroup path {0:?}: it must be relative and stay below the hierarchy's root")]
    Path(String),
    #[error("invalid resource {what} = {value}: {reason}")]
    Resource {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Limits to apply; `None` leaves a setting alone. Recorded with a container, so that its
/// status reports the limits in force after an in-place resize.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Resources {
    pub memory_limit: Option<i64>,
    pub memory_swap_limit: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids_limit: Option<i64>,
    /// Raw cgroup v2 files (`"memory.high" = "1G"`); ignored on v1.
    pub unified: BTreeMap<String, String>,
    /// Huge page limits in bytes by page size as the hugetlb controller names it (`2MB`).
    pub hugepage_limits: BTreeMap<String, u64>,
}

impl Resources {
    /// `other`'s settings over these: what an update leaves unset stays as it was.
    pub fn merged(&self, other: &Resources) -> Resources {
        let mut unified = self.unified.clone();
        unified.extend(other.unified.clone());
        let mut hugepage_limits = self.hugepage_limits.clone();
        hugepage_limits.extend(other.hugepage_limits.clone());
        Resources {
            memory_limit: other.memory_limit.or(self.memory_limit),
            memory_swap_limit: other.memory_swap_limit.or(self.memory_swap_limit),
            cpu_shares: other.cpu_shares.or(self.cpu_shares),
            cpu_quota: other.cpu_quota.or(self.cpu_quota),
            cpu_period: other.cpu_period.or(self.cpu_period),
            cpuset_cpus: other.cpuset_cpus.clone().or(self.cpuset_cpus.clone()),
            cpuset_mems: other.cpuset_mems.clone().or(self.cpuset_mems.clone()),
            pids_limit: other.pids_limit.or(self.pids_limit),
            unified,
            hugepage_limits,
        }
    }
}

/// A huge page size as the hugetlb controller's files name it: digits and KB, MB or GB.
fn is_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB")
}

impl Resources {
    /// Refuses values the kernel would reject or misread, before anything is written.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, value: String, reason| {
            Err(Error::Resource {
                what,
                value,
                reason,
            })
        };
        if let Some(m) = self.memory_limit
            && !(m == -1 || m >= 4096)
        {
            return bad("memory limit", m.to_string(), "must be at least 4096 bytes");
        }
        if let Some(s) = self.cpu_shares
            && !(2..=262_144).contains(&s)
        {
            return bad("cpu shares", s.to_string(), "must be between 2 and 262144");
        }
        if let Some(q) = self.cpu_quota
            && !(q == -1 || q >= 1000)
        {
            return bad("cpu quota", q.to_string(), "must be -1 or at least 1000 µs");
        }
        if let Some(p) = self.cpu_period
            && !(1000..=1_000_000).contains(&p)
        {
            return bad(
                "cpu period",
                p.to_string(),
                "must be between 1000 and 1000000 µs",
            );
        }
        if let Some(p) = self.pids_limit
            && !(p == -1 || p > 0)
        {
            return bad("pids limit", p.to_string(), "must be -1 or positive");
        }
        for set in [&self.cpuset_cpus, &self.cpuset_mems].into_iter().flatten() {
            if !set
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
            {
                return bad("cpuset", set.clone(), "must be a list like 0-3,5");
            }
        }
        for size in self.hugepage_limits.keys() {
            if !is_page_size(size) {
                return bad(
                    "huge page size",
                    size.clone(),
                    "must be a size like 2MB or 1GB",
                );
            }
        }
        for key in self.unified.keys() {
            if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                return bad(
                    "unified key",
                    key.clone(),
                    "must name a cgroup file like memory.high",
                );
            }
        }
        Ok(())
    }
}

/// One line of a pressure file: the share of time some (or all) tasks stalled on the
/// resource, over 10, 60 and 300 s, and the total stall in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stall {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// Pressure stall information of one resource (`cpu.pressure`…, cgroup v2).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub some: Stall,
    pub full: Stall,
}

impl Pressure {
    /// `some avg10=0.12 avg60=… avg300=… total=…` and the `full` line; `None` for a file
    /// that has neither.
    fn parse(text: &str) -> Option<Pressure> {
        let stall = |kind: &str| -> Option<Stall> {
            let line = text.lines().find_map(|l| l.strip_prefix(kind))?;
            let mut s = Stall::default();
            for pair in line.split_whitespace() {
                match pair.split_once('=') {
                    Some(("avg10", v)) => s.avg10 = v.parse().ok()?,
                    Some(("avg60", v)) => s.avg60 = v.parse().ok()?,
                    Some(("avg300", v)) => s.avg300 = v.parse().ok()?,
                    Some(("total", v)) => s.total_us = v.parse().ok()?,
                    _ => {}
                }
            }
            Some(s)
        };
        let (some, full) = (stall("some "), stall("full "));
        (some.is_some() || full.is_some()).then(|| Pressure {
            some: some.unwrap_or_default(),
            full: full.unwrap_or_default(),
        })
    }
}

/// A cgroup's usage counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    /// Usage less inactive file cache: what the kubelet evicts on.
    pub memory_working_set: u64,
    pub memory_rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
    /// The memory limit, if there is one (for the bytes still available).
    pub memory_limit: Option<u64>,
    /// Swap in use and its limit (None: unlimited), where the kernel accounts it.
    pub swap_usage: Option<u64>,
    pub swap_limit: Option<u64>,
    /// Pressure stall information (cgroup v2 only).
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

/// A limit as cgroupfs shows it: `max` (v2) or a page-rounded 2^63 (v1) is none.
fn limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|l| *l < 1 << 62)
}

/// The machine's cgroup hierarchy.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    V1 { root: PathBuf },
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// Looks at `root` (normally `/sys/fs/cgroup`): v2 if its top has
    /// `cgroup.controllers`, v1 if it has per-controller directories. A hybrid host
    /// (v1 controllers, an empty v2 tree at `unified/`) is v1.
    pub fn detect(root: &Path) -> Result<Hierarchy> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(Hierarchy::V2 {
                root: root.to_path_buf(),
            });
        }
        if root.join("memory").is_dir() || root.join("cpu").is_dir() {
            return Ok(Hierarchy::V1 {
                root: root.to_path_buf(),
            });
        }
        Err(Error::NoHierarchy(root.to_path_buf()))
    }

    pub fn version(&self) -> u8 {
        match self {
            Hierarchy::V1 { .. } => 1,
            Hierarchy::V2 { .. } => 2,
        }
    }

    fn check(path: &str) -> Result<PathBuf> {
        let rel = PathBuf::from(path.trim_start_matches('/'));
        let ok = !rel.as_os_str().is_empty()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if ok {
            Ok(rel)
        } else {
            Err(Error::Path(path.to_string()))
        }
    }

    /// The cgroup at `path` (relative to the hierarchy's root), whether or not it exists.
    pub fn cgroup(&self, path: &str) -> Result<Cgroup> {
        let rel = Self::check(path)?;
        let dirs = match self {
            Hierarchy::V1 { root } => {
                // Below a systemd unit, also systemd's own hierarchies: there it sees which
                // processes a unit has (and collects a scope that has none).
                let tracked = rel.components().any(|c| {
                    let c = c.as_os_str().to_string_lossy();
                    c.ends_with(".slice") || c.ends_with(".scope")
                });
                let tracking = if tracked { V1_TRACKING } else { &[] };
                V1_CONTROLLERS
                    .iter()
                    .chain(tracking)
                    .filter(|c| root.join(c).is_dir())
                    .map(|c| (c.to_string(), root.join(c).join(&rel)))
                    .collect()
            }
            Hierarchy::V2 { root } => vec![(String::new(), root.join(&rel))],
        };
        Ok(Cgroup {
            hierarchy: self.clone(),
            rel,
            dirs,
        })
    }

    /// Creates the cgroup at `path` and any missing parents.
    pub fn create(&self, path: &str) -> Result<Cgroup> {
        let cgroup = self.cgroup(path)?;
        match self {
            Hierarchy::V1 { root } => {
                for (controller, dir) in &cgroup.dirs {
                    create_v1(&root.join(controller), &cgroup.rel, controller == "cpuset")?;
                    debug_assert!(dir.is_dir());
                }
            }
            Hierarchy::V2 { root } => create_v2(root, &cgroup.rel)?,
        }
        Ok(cgroup)
    }
}

/// Creates each missing directory from the top down; a new cpuset cgroup starts with empty
/// `cpus` and `mems`, so it inherits its parent's. A directory that exists is seen to as
/// well: another pod's creation may have made it a moment ago and not filled it in yet
/// (until it is, no process can join anything below it).
fn create_v1(controller_root: &Path, rel: &Path, cpuset: bool) -> Result<()> {
    let mut dir = controller_root.to_path_buf();
    for component in rel.components() {
        dir.push(component);
        if !dir.is_dir() {
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_err(&dir)(e));
                }
                _ => {}
            }
        }
        if cpuset {
            inherit_cpuset(&dir)?;
        }
    }
    Ok(())
}

/// Creates each missing directory, enabling the controllers the parent offers in its
/// `cgroup.subtree_control` first (v2 needs that for the child to have them).
fn create_v2(root: &Path, rel: &Path) -> Result<()> {
    let mut dir = root.to_path_buf();
    for component in rel.components() {
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<String> = available
            .split_whitespace()
            .filter(|c| V2_CONTROLLERS.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if !wanted.is_empty() {
            let control = dir.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|w| !enabled.split_whitespace().any(|e| e == &w[1..]))
                .collect();
            if !missing.is_empty() {
                let line = missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                write(&control, &line)?;
            }
        }
        dir.push(component);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&dir)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with empty `cpus` and `mems`: it takes its parent's. One
/// that has its own keeps them.
fn inherit_cpuset(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if !own.trim().is_empty() {
            continue;
        }
        let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
        if !value.trim().is_empty() {
            write(&dir.join(file), value.trim())?;
        }
    }
    Ok(())
}

/// The cgroup paths `pid` is in, one per hierarchy (`/proc/<pid>/cgroup`); none when the
/// process is gone.
fn cgroups_of(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
        .collect()
}

/// A cgroup directory and every one below it, parents before their children (none when
/// it does not exist).
fn subtree(top: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        dirs.push(dir);
    }
    dirs
}

/// Removes a cgroup directory after the cgroups below it (cgroupfs files go with their
/// directory; only directories can be removed).
fn remove_cgroup_dir(dir: &Path) -> Result<()> {
    for dir in subtree(dir).iter().rev() {
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(dir)(e)),
            _ => {}
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(io_err(path))
}

/// One cgroup: a directory per v1 controller, or one v2 directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    rel: PathBuf,
    dirs: Vec<(String, PathBuf)>,
}

impl Cgroup {
    /// The path relative to the hierarchy's root, as `/a/b`.
    pub fn path(&self) -> String {
        format!("/{}", self.rel.display())
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        match self.hierarchy {
            Hierarchy::V2 { .. } => self.dirs.first().map(|(_, d)| d.as_path()),
            Hierarchy::V1 { .. } => self
                .dirs
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.as_path()),
        }
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|(_, d)| d.is_dir())
    }

    /// The cgroup `name` directly below this one, whether or not it exists.
    pub fn child(&self, name: &str) -> Result<Cgroup> {
        if name.contains('/') {
            return Err(Error::Path(name.to_string()));
        }
        self.hierarchy
            .cgroup(&format!("{}/{name}", self.rel.display()))
    }

    /// Creates the leaf `name` below this cgroup. On v2 no controller is enabled for it:
    /// the limits stay on this cgroup, and a leaf has no files to raise them with.
    pub fn create_leaf(&self, name: &str) -> Result<Cgroup> {
        let mut leaf = self.child(name)?;
        // A cgroup an older agent made may lack a controller (devices): the leaf does too.
        leaf.dirs
            .retain(|(_, dir)| dir.parent().is_some_and(Path::is_dir));
        let made = leaf.dirs.iter().try_for_each(|(controller, dir)| {
            match std::fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_err(dir)(e));
                }
                _ => {}
            }
            if controller == "cpuset" {
                inherit_cpuset(dir)?;
            }
            Ok(())
        });
        if let Err(e) = made {
            let _ = leaf.remove();
            return Err(e);
        }
        Ok(leaf)
    }

    /// On a v1 host below a systemd unit: puts `pid` in leaf `name` of this cgroup in
    /// systemd's hierarchies only, where it keeps the unit from being collected while it
    /// lives, and in no controller's (its resources are not the cgroup's). Elsewhere
    /// nothing.
    pub fn track(&self, name: &str, pid: u32) -> Result<()> {
        let leaf = self.child(name)?;
        for (controller, dir) in &leaf.dirs {
            if !V1_TRACKING.contains(&controller.as_str()) {
                continue;
            }
            match std::fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(dir)(e)),
                _ => {}
            }
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// True when `pid` is in exactly this cgroup (as `/proc/<pid>/cgroup` says).
    pub fn holds(&self, pid: u32) -> bool {
        let wanted = format!("/{}", self.rel.display());
        cgroups_of(pid).contains(&wanted)
    }

    /// For a container's cgroup: true when `pid` is in its process leaf (or, for a
    /// container an older agent created, in the container's cgroup itself).
    pub fn holds_container_process(&self, pid: u32) -> bool {
        self.holds(pid) || self.child(CONTAINER_LEAF).is_ok_and(|leaf| leaf.holds(pid))
    }

    /// Every process in this cgroup and the cgroups below it.
    pub fn procs(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        // Not systemd's hierarchies: a container's processes are in its controllers' too,
        // and what is there alone (its monitor, see `track`) is not the container's.
        for dir in self
            .dirs
            .iter()
            .filter(|(controller, _)| !V1_TRACKING.contains(&controller.as_str()))
            .flat_map(|(_, dir)| subtree(dir))
        {
            let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process in this cgroup and below, and waits (a few seconds at most)
    /// until none is left. Processes are frozen first where a freezer exists, so that
    /// nothing forks its way past the kill. Then, briefly, until the killed ones are
    /// reaped too: a dead process leaves its cgroup at once but stays a zombie (seen by
    /// `ps` and `pgrep` in the container) until its parent or the namespace's init waits.
    pub fn kill_all(&self) -> Result<()> {
        let mut killed = self.procs();
        if killed.is_empty() {
            // The usual case (a container whose init took everything with it): no freezer
            // round trip.
            return Ok(());
        }
        if let Hierarchy::V2 { .. } = self.hierarchy
            && let Some(dir) = self.dir("")
            && dir.join("cgroup.kill").exists()
        {
            write(&dir.join("cgroup.kill"), "1")?;
        } else {
            // Frozen or not (no freezer, or one that did not settle), kill them all; and
            // thaw in any case, or frozen processes could not die.
            let _ = self.freeze(true);
            for pid in &killed {
                self.kill_member(*pid);
            }
            // (A systemd unit has no freezer cgroup on v1: systemd makes none.)
            if self
                .dir(self.freezer_controller())
                .is_some_and(Path::is_dir)
            {
                self.freeze(false)?;
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = self.procs();
            if left.is_empty() {
                Self::wait_reaped(&killed);
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Survivors(self.path(), left));
            }
            // Killed ones can take a moment to leave; new ones (a fork that raced a
            // missing freezer) are killed again.
            for pid in left {
                self.kill_member(pid);
                killed.push(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// SIGKILLs `pid` if it is (still) in this cgroup or below: through a pidfd, so that a
    /// pid the kernel reused meanwhile is never hit.
    fn kill_member(&self, pid: u32) {
        let prefix = format!("/{}", self.rel.display());
        let below = format!("{prefix}/");
        crate::sys::process::signal_if(pid, rustix::process::Signal::KILL, || {
            cgroups_of(pid)
                .iter()
                .any(|path| *path == prefix || path.starts_with(&below))
        });
    }

    fn freezer_controller(&self) -> &'static str {
        match self.hierarchy {
            Hierarchy::V1 { .. } => "freezer",
            Hierarchy::V2 { .. } => "",
        }
    }

    /// Waits up to a second for `pids` to be dead. A zombie is dead: whoever reaps it (the
    /// node's init, for an orphan) may take its time, and a container whose PID 1 never
    /// waits for orphans keeps its zombies; neither is a reason to hold the caller up.
    fn wait_reaped(pids: &[u32]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while pids.iter().any(|pid| crate::sys::process::is_alive(*pid))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Moves process `pid` into this cgroup (in every v1 controller).
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        for (_, dir) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Applies `resources`, validated first so that nothing is half-applied for bad input.
    pub fn set(&self, resources: &Resources) -> Result<()> {
        resources.validate()?;
        let put = |controller: &str, file: &str, value: String| -> Result<()> {
            match self.dir(controller) {
                Some(dir) => write(&dir.join(file), &value),
                None => Ok(()),
            }
        };
        match self.hierarchy {
            Hierarchy::V1 { .. } => {
                if let Some(m) = resources.memory_limit {
                    put("memory", "memory.limit_in_bytes", m.to_string())?;
                }
                if let Some(s) = resources.memory_swap_limit
                    && self
                        .dir("memory")
                        .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists())
                {
                    put("memory", "memory.memsw.limit_in_bytes", s.to_string())?;
                }
                if let Some(s) = resources.cpu_shares {
                    put("cpu", "cpu.shares", s.to_string())?;
                }
                if let Some(p) = resources.cpu_period {
                    put("cpu", "cpu.cfs_period_us", p.to_string())?;
                }
                if let Some(q) = resources.cpu_quota {
                    put("cpu", "cpu.cfs_quota_us", q.to_string())?;
                }
                if let Some(c) = &resources.cpuset_cpus {
                    put("cpuset", "cpuset.cpus", c.clone())?;
                }
                if let Some(m) = &resources.cpuset_mems {
                    put("cpuset", "cpuset.mems", m.clone())?;
                }
                if let Some(p) = resources.pids_limit {
                    put(
                        "pids",
                        "pids.max",
                        if p < 0 { "max".into() } else { p.to_string() },
                    )?;
                }
            }
            Hierarchy::V2 { .. } => {
                if let Some(m) = resources.memory_limit {
                    put(
                        "memory",
                        "memory.max",
                        if m < 0 { "max".into() } else { m.to_string() },
                    )?;
                    // v1's memsw counts memory + swap; v2's swap.max counts swap alone.
                    if let Some(s) = resources.memory_swap_limit
                        && m >= 0
                    {
                        let swap = if s < 0 {
                            "max".into()
                        } else {
                            (s - m).max(0).to_string()
                        };
                        put("memory", "memory.swap.max", swap)?;
                    }
                }
                if let Some(s) = resources.cpu_shares {
                    put("cpu", "cpu.weight", shares_to_weight(s).to_string())?;
                }
                if resources.cpu_quota.is_some() || resources.cpu_period.is_some() {
                    let period = resources.cpu_period.unwrap_or(100_000);
                    let quota = match resources.cpu_quota {
                        Some(q) if q > 0 => q.to_string(),
                        _ => "max".into(),
                    };
                    put("cpu", "cpu.max", format!("{quota} {period}"))?;
                }
                if let Some(c) = &resources.cpuset_cpus {
                    put("cpuset", "cpuset.cpus", c.clone())?;
                }
                if let Some(m) = &resources.cpuset_mems {
                    put("cpuset", "cpuset.mems", m.clone())?;
                }
                if let Some(p) = resources.pids_limit {
                    put(
                        "pids",
                        "pids.max",
                        if p < 0 { "max".into() } else { p.to_string() },
                    )?;
                }
                for (file, value) in &resources.unified {
                    put("", file, value.clone())?;
                }
            }
        }
        self.set_hugepage_limits(&resources.hugepage_limits)
    }

    /// Huge page limits: `hugetlb.<size>.limit_in_bytes` on v1, `hugetlb.<size>.max` on v2.
    /// Without the controller (or the size) a limit of 0 is kept by default (no huge page
    /// can be had without one reserved for it, which the kubelet's accounting prevents);
    /// any other limit is refused rather than dropped.
    fn set_hugepage_limits(&self, limits: &BTreeMap<String, u64>) -> Result<()> {
        for (size, limit) in limits {
            let file = match self.hierarchy {
                Hierarchy::V1 { .. } => self
                    .dir("hugetlb")
                    .map(|d| d.join(format!("hugetlb.{size}.limit_in_bytes"))),
                Hierarchy::V2 { .. } => self.dir("").map(|d| d.join(format!("hugetlb.{size}.max"))),
            };
            match file {
                Some(file) if file.exists() => write(&file, &limit.to_string())?,
                _ if *limit == 0 => {}
                _ => {
                    return Err(Error::Resource {
                        what: "huge page limit",
                        value: format!("{size}={limit}"),
                        reason: "this node's cgroups have no hugetlb controller for that size",
                    });
                }
            }
        }
        Ok(())
    }

    /// Restricts the devices processes of this cgroup may make and open to `rules`: v1's
    /// `devices` controller (deny all, then allow each), or a v2 eBPF device filter.
    pub fn set_devices(&self, rules: &[DeviceRule]) -> Result<()> {
        match self.hierarchy {
            Hierarchy::V1 { .. } => {
                let Some(dir) = self.dir("devices") else {
                    return Err(Error::NoHierarchy(PathBuf::from("devices")));
                };
                write(&dir.join("devices.deny"), "a")?;
                for rule in rules {
                    write(&dir.join("devices.allow"), &rule.v1_line())?;
                }
                Ok(())
            }
            Hierarchy::V2 { .. } => {
                let Some(dir) = self.dir("") else {
                    return Err(Error::NoHierarchy(PathBuf::from("cgroup2")));
                };
                crate::sys::bpf::attach_device_filter(dir, &devices::program(rules))
                    .map_err(io_err(dir))
            }
        }
    }

    /// Freezes (or thaws) every process in the cgroup, waiting until the kernel says so.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let (dir, file, value, done) = match self.hierarchy {
            Hierarchy::V1 { .. } => (
                self.dir("freezer"),
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Hierarchy::V2 { .. } => (
                self.dir(""),
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
                if frozen { "1" } else { "0" },
            ),
        };
        let Some(dir) = dir else {
            return Err(Error::NoHierarchy(PathBuf::from("freezer")));
        };
        let path = dir.join(file);
        write(&path, value)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(&path)
            .map_err(io_err(&path))?
            .trim()
            != done
        {
            if std::time::Instant::now() > deadline {
                return Err(io_err(&path)(io::Error::other(
                    "the freezer did not settle",
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer killed in this cgroup and below. v2's
    /// `memory.events` counts the subtree already; v1's `memory.oom_control` counts where
    /// the victim was, so the cgroups below are added up.
    pub fn oom_kills(&self) -> u64 {
        let count = |path: &Path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let Some(dir) = self.dir("memory") else {
            return 0;
        };
        if let Hierarchy::V2 { .. } = self.hierarchy {
            return count(&dir.join("memory.events"));
        }
        subtree(dir)
            .iter()
            .map(|d| count(&d.join("memory.oom_control")))
            .sum()
    }

    /// Usage counters for CRI's stats.
    pub fn stats(&self) -> Stats {
        let read = |controller: &str, file: &str| -> String {
            self.dir(controller)
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default()
        };
        let number = |text: String| text.trim().parse::<u64>().unwrap_or(0);
        let field = |text: &str, key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        match self.hierarchy {
            Hierarchy::V1 { .. } => {
                let stat = read("memory", "memory.stat");
                let usage = number(read("memory", "memory.usage_in_bytes"));
                // memsw counts memory and swap together, where swap accounting is on.
                let memsw = read("memory", "memory.memsw.usage_in_bytes");
                Stats {
                    memory_limit: limit(&read("memory", "memory.limit_in_bytes")),
                    swap_usage: (!memsw.trim().is_empty())
                        .then(|| number(memsw).saturating_sub(usage)),
                    swap_limit: limit(&read("memory", "memory.memsw.limit_in_bytes")),
                    cpu_pressure: None,
                    memory_pressure: None,
                    io_pressure: None,
                    cpu_usage_ns: number(read("cpuacct", "cpuacct.usage")),
                    memory_usage: usage,
                    memory_working_set: usage.saturating_sub(field(&stat, "total_inactive_file")),
                    memory_rss: field(&stat, "total_rss"),
                    page_faults: field(&stat, "total_pgfault"),
                    major_page_faults: field(&stat, "total_pgmajfault"),
                    pids: number(read("pids", "pids.current")),
                }
            }
            Hierarchy::V2 { .. } => {
                let stat = read("memory", "memory.stat");
                let usage = number(read("memory", "memory.current"));
                let swap = read("memory", "memory.swap.current");
                Stats {
                    memory_limit: limit(&read("memory", "memory.max")),
                    swap_usage: (!swap.trim().is_empty()).then(|| number(swap)),
                    swap_limit: limit(&read("memory", "memory.swap.max")),
                    cpu_pressure: Pressure::parse(&read("cpu", "cpu.pressure")),
                    memory_pressure: Pressure::parse(&read("memory", "memory.pressure")),
                    io_pressure: Pressure::parse(&read("io", "io.pressure")),
                    cpu_usage_ns: field(&read("cpu", "cpu.stat"), "usage_usec") * 1000,
                    memory_usage: usage,
                    memory_working_set: usage.saturating_sub(field(&stat, "inactive_file")),
                    memory_rss: field(&stat, "anon"),
                    page_faults: field(&stat, "pgfault"),
                    major_page_faults: field(&stat, "pgmajfault"),
                    pids: number(read("pids", "pids.current")),
                }
            }
        }
    }

    /// Removes the cgroup's directories and the cgroups below them, deepest first. A
    /// missing cgroup is fine; one with processes left is not (the kernel says busy).
    pub fn remove(&self) -> Result<()> {
        for (_, dir) in &self.dirs {
            remove_cgroup_dir(dir)?;
        }
        Ok(())
    }
}

/// Maps v1 `cpu.shares` (2..262144, default 1024) onto v2 `cpu.weight` (1..10000, default
/// 100) the way the kernel's documentation and runc do.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// A fake v1 tree: one directory per controller, with cpuset values at the top.
    fn fake_v1() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
            std::fs::create_dir(dir.path().join(c)).unwrap();
        }
        std::fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(dir.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        dir
    }

    /// A fake v2 tree: the top offers controllers.
    fn fake_v2() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    fn limits() -> Resources {
        Resources {
            memory_limit: Some(64 << 20),
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(32),
            ..Default::default()
        }
    }

    #[test]
    fn v1_creates_in_every_controller_inherits_cpusets_and_writes_limits() {
        let tree = fake_v1();
        let h = Hierarchy::detect(tree.path()).unwrap();
        assert_eq!(h.version(), 1);
        let cg = h.create("strata/pod-1").unwrap();
        assert_eq!(cg.path(), "/strata/pod-1");
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
            assert!(tree.path().join(c).join("strata/pod-1").is_dir(), "{c}");
        }
        assert_eq!(read(&tree.path().join("cpuset/strata/cpuset.cpus")), "0-1");
        assert_eq!(
            read(&tree.path().join("cpuset/strata/pod-1/cpuset.mems")),
            "0"
        );
        cg.set(&limits()).unwrap();
        let p = |f: &str| read(&tree.path().join(f));
        assert_eq!(
            p("memory/strata/pod-1/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(p("cpu/strata/pod-1/cpu.shares"), "512");
        assert_eq!(p("cpu/strata/pod-1/cpu.cfs_quota_us"), "50000");
        assert_eq!(p("cpu/strata/pod-1/cpu.cfs_period_us"), "100000");
        assert_eq!(p("cpuset/strata/pod-1/cpuset.cpus"), "0");
        assert_eq!(p("pids/strata/pod-1/pids.max"), "32");
        cg.add_pid(42).unwrap();
        assert_eq!(p("memory/strata/pod-1/cgroup.procs"), "42");

        // A parent another creation has just made, its cpuset not filled in yet: filled in
        // now, or nothing below it could take a process.
        let racing = tree.path().join("cpuset/racing");
        std::fs::create_dir(&racing).unwrap();
        std::fs::write(racing.join("cpuset.cpus"), "").unwrap();
        h.create("racing/pod-2").unwrap();
        assert_eq!(read(&racing.join("cpuset.cpus")), "0-1");
        assert_eq!(read(&racing.join("pod-2/cpuset.cpus")), "0-1");
        // One with a set of its own keeps it.
        h.create("strata/pod-1/inner").unwrap();
        assert_eq!(p("cpuset/strata/pod-1/cpuset.cpus"), "0");
        assert_eq!(p("cpuset/strata/pod-1/inner/cpuset.cpus"), "0");
    }

    #[test]
    fn v1_units_are_also_in_systemds_hierarchy_where_only_their_monitor_is_tracked() {
        let tree = fake_v1();
        std::fs::create_dir(tree.path().join("systemd")).unwrap();
        let h = Hierarchy::detect(tree.path()).unwrap();
        // A plain cgroup is not systemd's business.
        h.create("strata/pod-1").unwrap();
        assert!(!tree.path().join("systemd/strata").exists());
        let scope = "k.slice/k-p.slice/strata-c.scope";
        let cg = h.create(scope).unwrap();
        assert!(tree.path().join("systemd").join(scope).is_dir());
        cg.track(MONITOR_LEAF, 4242).unwrap();
        let monitor = tree.path().join("systemd").join(scope).join(MONITOR_LEAF);
        assert_eq!(read(&monitor.join("cgroup.procs")), "4242");
        assert!(
            !tree
                .path()
                .join("memory")
                .join(scope)
                .join(MONITOR_LEAF)
                .exists()
        );
        // The monitor is not one of the container's processes (kill_all leaves it).
        std::fs::write(
            tree.path().join("memory").join(scope).join("cgroup.procs"),
            "7\n",
        )
        .unwrap();
        assert_eq!(cg.procs(), vec![7]);
    }

    #[test]
    fn v2_enables_controllers_and_translates_limits() {
        let tree = fake_v2();
        let h = Hierarchy::detect(tree.path()).unwrap();
        assert_eq!(h.version(), 2);
        // A fake tree has no kernel to fill in the child's files: give it its own.
        let cg = h.create("strata/pod-2").unwrap();
        let subtree = read(&tree.path().join("cgroup.subtree_control"));
        for c in ["+cpu", "+cpuset", "+memory", "+pids", "+io", "+hugetlb"] {
            assert!(subtree.contains(c), "{subtree}");
        }
        assert!(!subtree.contains("rdma"));
        let mut r = limits();
        r.unified.insert("memory.high".into(), "48M".into());
        r.memory_swap_limit = Some(96 << 20);
        cg.set(&r).unwrap();
        let p = |f: &str| read(&tree.path().join("strata/pod-2").join(f));
        assert_eq!(p("memory.max"), (64u64 << 20).to_string());
        assert_eq!(p("memory.swap.max"), (32u64 << 20).to_string());
        assert_eq!(p("cpu.weight"), shares_to_weight(512).to_string());
        assert_eq!(p("cpu.max"), "50000 100000");
        assert_eq!(p("pids.max"), "32");
        assert_eq!(p("memory.high"), "48M");
    }

    #[test]
    fn huge_page_limits_go_to_hugetlb_and_are_refused_without_it() {
        // v1 with the controller: one file per page size.
        let tree = fake_v1();
        std::fs::create_dir(tree.path().join("hugetlb")).unwrap();
        let h = Hierarchy::detect(tree.path()).unwrap();
        let cg = h.create("c").unwrap();
        let v1_file = tree.path().join("hugetlb/c/hugetlb.2MB.limit_in_bytes");
        std::fs::write(&v1_file, "").unwrap();
        let mut r = Resources::default();
        r.hugepage_limits.insert("2MB".into(), 4 << 21);
        cg.set(&r).unwrap();
        assert_eq!(read(&v1_file), (4u64 << 21).to_string());
        // A size the kernel does not have: 0 asks for nothing, more is refused.
        r.hugepage_limits.insert("1GB".into(), 0);
        cg.set(&r).unwrap();
        r.hugepage_limits.insert("1GB".into(), 1 << 30);
        let refused = cg.set(&r).unwrap_err().to_string();
        assert!(
            refused.contains("1GB") && refused.contains("hugetlb"),
            "{refused}"
        );

        // v1 without the controller (this machine's kind): the same rule.
        let bare = fake_v1();
        let cg = Hierarchy::detect(bare.path()).unwrap().create("c").unwrap();
        let mut zero = Resources::default();
        zero.hugepage_limits.insert("2MB".into(), 0);
        cg.set(&zero).unwrap();
        zero.hugepage_limits.insert("2MB".into(), 2 << 20);
        assert!(cg.set(&zero).is_err());

        // v2: hugetlb.<size>.max.
        let tree = fake_v2();
        let cg = Hierarchy::detect(tree.path()).unwrap().create("c").unwrap();
        let v2_file = tree.path().join("c/hugetlb.2MB.max");
        std::fs::write(&v2_file, "max\n").unwrap();
        let mut r = Resources::default();
        r.hugepage_limits.insert("2MB".into(), 0);
        cg.set(&r).unwrap();
        assert_eq!(read(&v2_file), "0");

        // Sizes are checked before anything is written.
        for bad in ["2M", "MB", "2mb", "../2MB", "2MBB"] {
            let mut r = Resources::default();
            r.hugepage_limits.insert(bad.into(), 0);
            assert!(r.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_update_changes_only_what_it_sets() {
        let mut update = Resources {
            memory_limit: Some(128 << 20),
            ..Default::default()
        };
        update.unified.insert("memory.high".into(), "100M".into());
        let merged = limits().merged(&update);
        assert_eq!(merged.memory_limit, Some(128 << 20));
        assert_eq!(merged.cpu_quota, Some(50_000));
        assert_eq!(merged.pids_limit, Some(32));
        assert_eq!(merged.unified["memory.high"], "100M");
        // Recorded with the container as JSON, and read back the same.
        let json = serde_json::to_string(&merged).unwrap();
        assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), merged);
        assert_eq!(
            serde_json::from_str::<Resources>("{}").unwrap(),
            Resources::default()
        );
    }

    #[test]
    fn stats_from_v1_and_v2_files() {
        let tree = fake_v1();
        let cg = Hierarchy::detect(tree.path()).unwrap().create("s").unwrap();
        let w = |f: &str, v: &str| std::fs::write(tree.path().join(f), v).unwrap();
        w("cpuacct/s/cpuacct.usage", "5000\n");
        w("memory/s/memory.usage_in_bytes", "1000\n");
        w(
            "memory/s/memory.stat",
            "cache 1\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\ntotal_pgmajfault 2\n",
        );
        w("pids/s/pids.current", "3\n");
        let st = cg.stats();
        assert_eq!(
            (
                st.cpu_usage_ns,
                st.memory_usage,
                st.memory_working_set,
                st.memory_rss,
                st.pids
            ),
            (5000, 1000, 700, 600, 3)
        );
        assert_eq!((st.page_faults, st.major_page_faults), (7, 2));

        let tree = fake_v2();
        let cg = Hierarchy::detect(tree.path()).unwrap().create("s").unwrap();
        let w = |f: &str, v: &str| std::fs::write(tree.path().join("s").join(f), v).unwrap();
        w("cpu.stat", "usage_usec 42\nuser_usec 40\n");
        w("memory.current", "2000\n");
        w(
            "memory.stat",
            "anon 900\ninactive_file 500\npgfault 11\npgmajfault 1\n",
        );
        w("pids.current", "4\n");
        let st = cg.stats();
        assert_eq!(
            (
                st.cpu_usage_ns,
                st.memory_working_set,
                st.memory_rss,
                st.pids
            ),
            (42_000, 1500, 900, 4)
        );
        // No limits, no swap file, no pressure files: nothing made up.
        assert_eq!(
            (st.memory_limit, st.swap_usage, st.swap_limit),
            (None, None, None)
        );
        assert!(st.cpu_pressure.is_none() && st.io_pressure.is_none());

        // Limits, swap and pressure as a v2 kernel writes them.
        w("memory.max", "4096000\n");
        w("memory.swap.current", "8192\n");
        w("memory.swap.max", "max\n");
        w(
            "cpu.pressure",
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        );
        w(
            "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        w(
            "io.pressure",
            "some avg10=12.00 avg60=6.00 avg300=2.00 total=99\nfull avg10=10.00 avg60=5.00 avg300=1.00 total=90\n",
        );
        let st = cg.stats();
        assert_eq!(st.memory_limit, Some(4_096_000));
        assert_eq!((st.swap_usage, st.swap_limit), (Some(8192), None));
        let cpu = st.cpu_pressure.unwrap();
        assert_eq!(
            (
                cpu.some.avg10,
                cpu.some.avg60,
                cpu.some.total_us,
                cpu.full.total_us
            ),
            (1.5, 0.25, 123_456, 7)
        );
        let io = st.io_pressure.unwrap();
        assert_eq!(
            (io.full.avg10, io.full.avg300, io.some.total_us),
            (10.0, 1.0, 99)
        );
        assert_eq!(st.memory_pressure.unwrap().some.total_us, 0);

        // v1: memsw is memory and swap together; an unlimited v1 limit is a huge number.
        let tree = fake_v1();
        let cg = Hierarchy::detect(tree.path()).unwrap().create("s").unwrap();
        let w = |f: &str, v: &str| std::fs::write(tree.path().join(f), v).unwrap();
        w("memory/s/memory.usage_in_bytes", "1000\n");
        w("memory/s/memory.memsw.usage_in_bytes", "1500\n");
        w("memory/s/memory.limit_in_bytes", "9223372036854771712\n");
        let st = cg.stats();
        assert_eq!((st.swap_usage, st.memory_limit), (Some(500), None));
        assert!(st.cpu_pressure.is_none());
        assert!(Pressure::parse("garbage").is_none());
    }

    #[test]
    fn weights_and_validation() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        for bad in [
            Resources {
                memory_limit: Some(10),
                ..Default::default()
            },
            Resources {
                cpu_shares: Some(1),
                ..Default::default()
            },
            Resources {
                cpu_quota: Some(5),
                ..Default::default()
            },
            Resources {
                cpu_period: Some(5),
                ..Default::default()
            },
            Resources {
                pids_limit: Some(0),
                ..Default::default()
            },
            Resources {
                cpuset_cpus: Some("0;rm".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let tree = fake_v1();
        let h = Hierarchy::detect(tree.path()).unwrap();
        assert!(h.cgroup("../escape").is_err());
        assert!(h.cgroup("/").is_err());
    }
}
