//! CDI (Container Device Interface) devices: the kubelet names devices such as
//! `nvidia.com/gpu=0`, and the vendor's spec files in the CDI directories say what a
//! container needs to use them (device nodes, mounts, environment, groups). This module
//! turns the names into those edits; the caller applies them to the container.
//!
//! Spec files are read afresh on each call, from the directories in order. A later
//! directory has the higher priority: its definition of a device hides an earlier one's
//! (so a generated spec in `/var/run/cdi` overrides a static one in `/etc/cdi`). Two
//! definitions of a device in the same directory are a conflict and the device is
//! refused, as the reference implementation does.
//!
//! A spec file that cannot be read or is invalid does not stop devices of the other
//! files from resolving. It fails only the requests it could be meant for: a device it
//! names (when it parsed far enough to tell), unless a higher directory overrides it; and
//! a device found nowhere, whose error then lists the unusable files that may have
//! meant it.
//!
//! Validation follows the spec and its reference implementation (unknown fields are
//! refused, as are fields newer than the file's `cdiVersion`). On top of it, what this
//! runtime cannot do is refused for the devices that need it, never dropped: OCI hooks,
//! Intel RDT, network devices, and paths that are not absolute. Nothing on the host is
//! looked at besides the spec files: the caller takes device numbers from the host path.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};

/// The largest spec file read. Real ones are a few KiB, even for many GPUs.
pub const MAX_SPEC_SIZE: u64 = 1 << 20;

/// The most spec files read from one directory; more is refused rather than half read.
pub const MAX_SPECS_PER_DIR: usize = 1024;

/// Versions of the CDI spec, oldest first, up to the newest this module knows (1.1.0).
const VERSIONS: [&str; 10] = [
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// What went wrong resolving CDI devices, worded for whoever reads the kubelet's events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CDI device name {name:?} is not fully qualified (vendor.com/class=name): {reason}")]
    NotQualified { name: String, reason: String },
    #[error(
        "CDI device {name:?} is not defined by any spec file in {}{}",
        path_list(.dirs),
        unreadable_note(.unreadable)
    )]
    UnknownDevice {
        name: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
        /// Unusable spec files that may have meant it (`path: reason`).
        unreadable: Vec<String>,
    },
    #[error("CDI device {name:?} is defined more than once in {}: {}", .dir.display(), path_list(.files))]
    Conflict {
        name: String,
        dir: PathBuf,
        files: Vec<PathBuf>,
    },
    #[error("CDI device {name:?}: spec file {} is invalid: {reason}", .file.display())]
    InvalidSpec {
        name: String,
        file: PathBuf,
        reason: String,
    },
    #[error("CDI device {name:?} (spec file {}) needs {what}, which this runtime does not support", .file.display())]
    Unsupported {
        name: String,
        file: PathBuf,
        what: String,
    },
    #[error("cannot read CDI spec directory {}: {reason}", .dir.display())]
    Dir { dir: PathBuf, reason: String },
}

fn path_list(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// At most a few of the unusable files: enough to point at the trouble.
fn unreadable_note(files: &[String]) -> String {
    const SHOWN: usize = 5;
    match files.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" (unusable spec files: {})", files.join("; ")),
        n => format!(
            " (unusable spec files: {}; and {} more)",
            files[..SHOWN].join("; "),
            n - SHOWN
        ),
    }
}

/// What the requested devices need done to a container, in the order the specs give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// `KEY=VALUE`, appended to the container's environment.
    pub env: Vec<String>,
    /// One per container path; a later edit for the same path replaces an earlier one.
    pub device_nodes: Vec<DeviceNode>,
    /// One per container path; a later edit for the same path replaces an earlier one.
    pub mounts: Vec<MountEdit>,
    /// Groups for the container's process (0, which the spec says to ignore, left out).
    pub additional_gids: Vec<u32>,
}

/// A device node to create in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Where it goes in the container.
    pub path: PathBuf,
    /// The node on the host (the spec's `hostPath`, else `path`).
    pub host_path: PathBuf,
    /// `c`, `b`, `u` or `p`; `None` to take it from the host node.
    pub kind: Option<String>,
    /// `None` when absent or 0, which the reference reads as "take both numbers from
    /// the host node".
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub file_mode: Option<u32>,
    /// Device cgroup access: `None` when the spec gives none (the default is `rwm`);
    /// `Some("")` when it says `none`; else some of `r`, `w`, `m`.
    pub permissions: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A mount to add to the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEdit {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    /// The spec's `type` (often absent or `none` for bind mounts).
    pub kind: Option<String>,
    pub options: Vec<String>,
}

/// The CDI spec directories, lowest priority first.
#[derive(Debug, Clone)]
pub struct Registry {
    dirs: Vec<PathBuf>,
}

impl Registry {
    pub fn new(dirs: Vec<PathBuf>) -> Registry {
        Registry { dirs }
    }

    /// `/etc/cdi` (static specs), then `/var/run/cdi` (generated ones, which win).
    pub fn default_dirs() -> Vec<PathBuf> {
        vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The edits for fully-qualified device names (`vendor.com/class=name`): each spec's
    /// own `containerEdits` once, when the first of its devices is met, then each
    /// device's. A name given twice is applied once. No names, no disk access.
    pub fn resolve(&self, names: &[String]) -> Result<Edits, Error> {
        let mut wanted: Vec<Qualified> = Vec::new();
        for name in names {
            let q = Qualified::parse(name)?;
            if !wanted.iter().any(|w| w.full == q.full) {
                wanted.push(q);
            }
        }
        if wanted.is_empty() {
            return Ok(Edits::default());
        }

        let catalog = Catalog::load(&self.dirs)?;
        let mut edits = Edits::default();
        let mut specs_used = HashSet::new();
        for q in &wanted {
            let (spec, device) = catalog.find(q, &self.dirs)?;
            if specs_used.insert(spec) {
                let spec = &catalog.specs[spec];
                add_edits(
                    &mut edits,
                    &spec.raw.container_edits,
                    q,
                    &spec.path,
                    "the spec's",
                )?;
            }
            let spec = &catalog.specs[spec];
            let device = &spec.raw.devices[device].container_edits;
            add_edits(&mut edits, device, q, &spec.path, "the device's")?;
        }
        Ok(edits)
    }
}

/// A requested device name, checked.
struct Qualified {
    full: String,
    /// `vendor/class`, as a spec's `kind`.
    kind: String,
    name: String,
}

impl Qualified {
    fn parse(full: &str) -> Result<Qualified, Error> {
        let refuse = |reason: String| Error::NotQualified {
            name: full.to_string(),
            reason,
        };
        let Some((kind, name)) = full.split_once('=') else {
            return Err(refuse("no '=' before the device name".into()));
        };
        let Some((vendor, class)) = kind.split_once('/') else {
            return Err(refuse("no '/' between vendor and class".into()));
        };
        check_vendor(vendor).map_err(&refuse)?;
        check_class(class).map_err(&refuse)?;
        check_device_name(name).map_err(&refuse)?;
        Ok(Qualified {
            full: full.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        })
    }
}

/// The spec's vendor rules: a DNS-subdomain-like prefix of letters, digits, `-`, `_`
/// and `.`, starting with a letter and ending with a letter or digit.
fn check_vendor(vendor: &str) -> Result<(), String> {
    check_segment("vendor", vendor, 253)
}

/// Like a vendor, in at most 63 characters.
fn check_class(class: &str) -> Result<(), String> {
    check_segment("class", class, 63)
}

fn check_segment(what: &str, s: &str, max: usize) -> Result<(), String> {
    let bytes = s.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(format!("empty {what}"));
    };
    if s.len() > max {
        return Err(format!("{what} {s:?} is longer than {max} characters"));
    }
    if !first.is_ascii_alphabetic() {
        return Err(format!("{what} {s:?} does not start with a letter"));
    }
    if !last.is_ascii_alphanumeric() {
        return Err(format!("{what} {s:?} does not end with a letter or digit"));
    }
    match bytes
        .iter()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
    {
        Some(c) => Err(format!("{what} {s:?} has a bad character {:?}", *c as char)),
        None => Ok(()),
    }
}

/// Letters, digits, `-`, `_`, `.` and `:` (MIG devices are named like `0:1`), starting
/// and ending with a letter or digit.
fn check_device_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err("empty device name".into());
    };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(format!(
            "device name {name:?} does not start and end with a letter or digit"
        ));
    }
    match bytes
        .iter()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':')))
    {
        Some(c) => Err(format!(
            "device name {name:?} has a bad character {:?}",
            *c as char
        )),
        None => Ok(()),
    }
}

/// Every spec file of the directories: the valid ones and the rest.
struct Catalog {
    specs: Vec<Spec>,
    broken: Vec<Broken>,
}

struct Spec {
    path: PathBuf,
    /// Index of its directory: higher wins.
    priority: usize,
    raw: RawSpec,
}

/// A spec file that could not be used.
struct Broken {
    path: PathBuf,
    priority: usize,
    reason: String,
    /// The kind and device names it declares, if it parsed.
    claims: Option<(String, Vec<String>)>,
}

impl Catalog {
    fn load(dirs: &[PathBuf]) -> Result<Catalog, Error> {
        let mut catalog = Catalog {
            specs: Vec::new(),
            broken: Vec::new(),
        };
        for (priority, dir) in dirs.iter().enumerate() {
            for path in spec_files(dir)? {
                let raw = match read_spec(&path) {
                    Ok(raw) => raw,
                    Err((reason, claims)) => {
                        catalog.broken.push(Broken {
                            path,
                            priority,
                            reason,
                            claims,
                        });
                        continue;
                    }
                };
                match validate(&raw) {
                    Ok(()) => catalog.specs.push(Spec {
                        path,
                        priority,
                        raw,
                    }),
                    Err(reason) => {
                        let names = raw.devices.iter().map(|d| d.name.clone()).collect();
                        catalog.broken.push(Broken {
                            path,
                            priority,
                            reason,
                            claims: Some((raw.kind, names)),
                        });
                    }
                }
            }
        }
        Ok(catalog)
    }

    /// The spec and device defining `q`, from the highest directory that has it. An
    /// unusable file that names `q`, where it would have been used or collided, fails
    /// it; when `q` is found nowhere, the error lists the files that may have meant it.
    fn find(&self, q: &Qualified, dirs: &[PathBuf]) -> Result<(usize, usize), Error> {
        let mut found: Vec<(usize, usize)> = Vec::new();
        for (s, spec) in self.specs.iter().enumerate() {
            if spec.raw.kind == q.kind
                && let Some(d) = spec.raw.devices.iter().position(|d| d.name == q.name)
            {
                found.push((s, d));
            }
        }
        let top = found.iter().map(|&(s, _)| self.specs[s].priority).max();

        let claimant = self
            .broken
            .iter()
            .filter(|b| top.is_none_or(|top| b.priority >= top))
            .filter(|b| {
                b.claims
                    .as_ref()
                    .is_some_and(|(kind, names)| *kind == q.kind && names.contains(&q.name))
            })
            .max_by_key(|b| b.priority);
        if let Some(b) = claimant {
            return Err(Error::InvalidSpec {
                name: q.full.clone(),
                file: b.path.clone(),
                reason: b.reason.clone(),
            });
        }

        let Some(top) = top else {
            return Err(Error::UnknownDevice {
                name: q.full.clone(),
                dirs: dirs.to_vec(),
                unreadable: self
                    .broken
                    .iter()
                    .filter(|b| match &b.claims {
                        None => true,
                        // One of the kind asked for, or whose kind is bad.
                        Some((kind, _)) => {
                            *kind == q.kind
                                || kind.split_once('/').is_none_or(|(v, c)| {
                                    check_vendor(v).is_err() || check_class(c).is_err()
                                })
                        }
                    })
                    .map(|b| format!("{}: {}", b.path.display(), b.reason))
                    .collect(),
            });
        };
        found.retain(|&(s, _)| self.specs[s].priority == top);
        match found.as_slice() {
            [one] => Ok(*one),
            _ => Err(Error::Conflict {
                name: q.full.clone(),
                dir: dirs.get(top).cloned().unwrap_or_default(),
                files: found
                    .iter()
                    .map(|&(s, _)| self.specs[s].path.clone())
                    .collect(),
            }),
        }
    }
}

/// The spec files of a directory, by name: `*.json`, `*.yaml` and `*.yml` that are not
/// directories. A missing directory has none.
fn spec_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let fail = |e: io::Error| Error::Dir {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(fail)?;
        let path = entry.path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("json" | "yaml" | "yml")
        ) {
            continue;
        }
        // A symlink is followed here only to skip one to a directory; what it names is
        // read as any other spec file.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => path.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => false,
        };
        if is_dir {
            continue;
        }
        if files.len() == MAX_SPECS_PER_DIR {
            return Err(Error::Dir {
                dir: dir.to_path_buf(),
                reason: format!("more than {MAX_SPECS_PER_DIR} spec files"),
            });
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// A spec file's reason for being unusable, with what it declares if that much parsed.
type ReadError = (String, Option<(String, Vec<String>)>);

/// Reads and parses one spec file, by its extension. Only a regular file is opened (not
/// a fifo someone named `x.json`, which would block the open).
fn read_spec(path: &Path) -> Result<RawSpec, ReadError> {
    let plain = |reason: String| (reason, None);
    let too_big = || {
        plain(format!(
            "larger than the {} KiB limit",
            MAX_SPEC_SIZE / 1024
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| plain(e.to_string()))?;
    if !meta.is_file() {
        return Err(plain("not a regular file".into()));
    }
    if meta.len() > MAX_SPEC_SIZE {
        return Err(too_big());
    }
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_SPEC_SIZE + 1).read_to_end(&mut data))
        .map_err(|e| plain(e.to_string()))?;
    if data.len() as u64 > MAX_SPEC_SIZE {
        return Err(too_big());
    }
    // On failure, a lenient second parse finds out which devices the file meant to
    // define (say it uses a field from a newer spec version), so that asking for one
    // of them is told why it cannot be had.
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(&data).map_err(|e| {
            let claims = serde_json::from_slice::<Claims>(&data).ok();
            (format!("bad JSON: {e}"), claims.map(Claims::into_parts))
        })
    } else {
        let text = std::str::from_utf8(&data).map_err(|_| plain("not UTF-8 text".into()))?;
        serde_norway::from_str(text).map_err(|e| {
            let claims = serde_norway::from_str::<Claims>(text).ok();
            (format!("bad YAML: {e}"), claims.map(Claims::into_parts))
        })
    }
}

/// Just the kind and device names of a spec file, whatever else it holds.
#[derive(Deserialize)]
struct Claims {
    kind: String,
    devices: Vec<ClaimedDevice>,
}

#[derive(Deserialize)]
struct ClaimedDevice {
    name: String,
}

impl Claims {
    fn into_parts(self) -> (String, Vec<String>) {
        (
            self.kind,
            self.devices.into_iter().map(|d| d.name).collect(),
        )
    }
}

/// The spec's own rules for a file: known version, new enough for the fields it uses,
/// a good kind, at least one device, unique and well-formed device names, every device
/// with some edits, and well-formed env, device nodes and mounts. Hooks, Intel RDT and
/// network devices are not looked into: they are refused when a device needs them.
fn validate(raw: &RawSpec) -> Result<(), String> {
    let version = raw.version.strip_prefix('v').unwrap_or(&raw.version);
    let Some(have) = VERSIONS.iter().position(|v| *v == version) else {
        return Err(format!(
            "cdiVersion {:?} is not one this runtime knows ({} to {})",
            raw.version,
            VERSIONS[0],
            VERSIONS[VERSIONS.len() - 1]
        ));
    };
    let need = required_version(raw);
    if have < need {
        return Err(format!(
            "cdiVersion {} is too old for the fields the file uses, which need {}",
            version, VERSIONS[need]
        ));
    }

    let Some((vendor, class)) = raw.kind.split_once('/') else {
        return Err(format!("kind {:?} is not vendor/class", raw.kind));
    };
    check_vendor(vendor).map_err(|e| format!("kind {:?}: {e}", raw.kind))?;
    check_class(class).map_err(|e| format!("kind {:?}: {e}", raw.kind))?;

    check_edits(&raw.container_edits).map_err(|e| format!("containerEdits: {e}"))?;
    if raw.devices.is_empty() {
        return Err("no devices".into());
    }
    let mut seen = HashSet::new();
    for device in &raw.devices {
        check_device_name(&device.name)?;
        if !seen.insert(device.name.as_str()) {
            return Err(format!("device {:?} is defined twice", device.name));
        }
        let edits = &device.container_edits;
        if edits.is_empty() {
            return Err(format!("device {:?} has no containerEdits", device.name));
        }
        check_edits(edits).map_err(|e| format!("device {:?}: {e}", device.name))?;
    }
    Ok(())
}

/// Index in [`VERSIONS`] of the oldest version with every field the file uses.
fn required_version(raw: &RawSpec) -> usize {
    let at = |v: &str| VERSIONS.iter().position(|k| *k == v).unwrap_or(0);
    let all_edits = || {
        std::iter::once(&raw.container_edits).chain(raw.devices.iter().map(|d| &d.container_edits))
    };
    let class_has_dot = raw
        .kind
        .split_once('/')
        .is_some_and(|(_, class)| class.contains('.'));

    if all_edits().any(|e| {
        !e.net_devices.is_empty()
            || e.intel_rdt
                .as_ref()
                .is_some_and(|r| r.schemata.is_some() || r.enable_monitoring)
    }) {
        at("1.1.0")
    } else if all_edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
        at("0.7.0")
    } else if !raw.annotations.is_empty()
        || raw.devices.iter().any(|d| !d.annotations.is_empty())
        || class_has_dot
    {
        at("0.6.0")
    } else if raw
        .devices
        .iter()
        .any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
        || all_edits().any(|e| e.device_nodes.iter().any(|n| !n.host_path.is_empty()))
    {
        at("0.5.0")
    } else if all_edits().any(|e| e.mounts.iter().any(|m| !m.kind.is_empty())) {
        at("0.4.0")
    } else {
        at("0.3.0")
    }
}

fn check_edits(edits: &RawEdits) -> Result<(), String> {
    for env in &edits.env {
        if env.find('=').is_none_or(|at| at == 0) {
            return Err(format!("env entry {env:?} is not KEY=VALUE"));
        }
    }
    for node in &edits.device_nodes {
        if node.path.is_empty() {
            return Err("a device node has no path".into());
        }
        if !matches!(node.kind.as_str(), "" | "b" | "c" | "u" | "p") {
            return Err(format!(
                "device node {:?} has unknown type {:?}",
                node.path, node.kind
            ));
        }
        let perms = node.permissions.as_str();
        if perms != "none" && !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(format!(
                "device node {:?} has bad permissions {perms:?} (want some of rwm, or none)",
                node.path
            ));
        }
    }
    for mount in &edits.mounts {
        if mount.host_path.is_empty() || mount.container_path.is_empty() {
            return Err("a mount lacks hostPath or containerPath".into());
        }
    }
    Ok(())
}

/// Adds one `containerEdits` to `edits`, after refusing what this runtime cannot do.
/// `whose` says where it comes from, for the error.
fn add_edits(
    edits: &mut Edits,
    raw: &RawEdits,
    q: &Qualified,
    file: &Path,
    whose: &str,
) -> Result<(), Error> {
    let unsupported = |what: &str| Error::Unsupported {
        name: q.full.clone(),
        file: file.to_path_buf(),
        what: format!("{what} (in {whose} containerEdits)"),
    };
    if !raw.hooks.is_empty() {
        return Err(unsupported("OCI hooks"));
    }
    if raw.intel_rdt.is_some() {
        return Err(unsupported("Intel RDT settings (intelRdt)"));
    }
    if !raw.net_devices.is_empty() {
        return Err(unsupported("network devices (netDevices)"));
    }
    let absolute = |what: &str, p: &str| {
        if Path::new(p).is_absolute() && !p.contains('\0') {
            Ok(PathBuf::from(p))
        } else {
            Err(Error::InvalidSpec {
                name: q.full.clone(),
                file: file.to_path_buf(),
                reason: format!("{what} {p:?} in {whose} containerEdits is not an absolute path"),
            })
        }
    };

    edits.env.extend(raw.env.iter().cloned());
    for node in &raw.device_nodes {
        let path = absolute("device node path", &node.path)?;
        let host_path = match node.host_path.as_str() {
            "" => path.clone(),
            p => absolute("device node hostPath", p)?,
        };
        edits.device_nodes.retain(|n| n.path != path);
        edits.device_nodes.push(DeviceNode {
            path,
            host_path,
            kind: non_empty(&node.kind),
            major: node.major.filter(|m| *m != 0),
            minor: node.minor,
            file_mode: node.file_mode,
            permissions: match node.permissions.as_str() {
                "" => None,
                "none" => Some(String::new()),
                p => Some(p.to_string()),
            },
            uid: node.uid,
            gid: node.gid,
        });
    }
    for mount in &raw.mounts {
        let host_path = absolute("mount hostPath", &mount.host_path)?;
        let container_path = absolute("mount containerPath", &mount.container_path)?;
        edits.mounts.retain(|m| m.container_path != container_path);
        edits.mounts.push(MountEdit {
            host_path,
            container_path,
            kind: non_empty(&mount.kind),
            options: mount.options.clone(),
        });
    }
    for &gid in &raw.additional_gids {
        if gid != 0 && !edits.additional_gids.contains(&gid) {
            edits.additional_gids.push(gid);
        }
    }
    Ok(())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A field the file may give as `null` or leave out: either is the empty value.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

// The file format, field for field as the spec names them. Unknown fields are refused,
// as the reference does. Strings it treats as optional default to empty, so that a
// missing one gets a plain message from `validate` rather than from the parser.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(rename = "cdiVersion", default, deserialize_with = "nullable")]
    version: String,
    #[serde(default, deserialize_with = "nullable")]
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    devices: Vec<RawDevice>,
    #[serde(rename = "containerEdits", default, deserialize_with = "nullable")]
    container_edits: RawEdits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "containerEdits", default, deserialize_with = "nullable")]
    container_edits: RawEdits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdits {
    #[serde(default, deserialize_with = "nullable")]
    env: Vec<String>,
    #[serde(rename = "deviceNodes", default, deserialize_with = "nullable")]
    device_nodes: Vec<RawDeviceNode>,
    #[serde(rename = "netDevices", default, deserialize_with = "nullable")]
    net_devices: Vec<RawNetDevice>,
    #[serde(default, deserialize_with = "nullable")]
    hooks: Vec<RawHook>,
    #[serde(default, deserialize_with = "nullable")]
    mounts: Vec<RawMount>,
    #[serde(rename = "intelRdt", default)]
    intel_rdt: Option<RawIntelRdt>,
    #[serde(rename = "additionalGids", default, deserialize_with = "nullable")]
    additional_gids: Vec<u32>,
}

impl RawEdits {
    fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.net_devices.is_empty()
            && self.hooks.is_empty()
            && self.mounts.is_empty()
            && self.intel_rdt.is_none()
            && self.additional_gids.is_empty()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeviceNode {
    #[serde(default, deserialize_with = "nullable")]
    path: String,
    #[serde(rename = "hostPath", default, deserialize_with = "nullable")]
    host_path: String,
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    kind: String,
    #[serde(default)]
    major: Option<i64>,
    #[serde(default)]
    minor: Option<i64>,
    #[serde(rename = "fileMode", default)]
    file_mode: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    permissions: String,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    #[serde(rename = "hostPath", default, deserialize_with = "nullable")]
    host_path: String,
    #[serde(rename = "containerPath", default, deserialize_with = "nullable")]
    container_path: String,
    #[serde(default, deserialize_with = "nullable")]
    options: Vec<String>,
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    kind: String,
}

// Hooks, Intel RDT and network devices are parsed (an unknown field in them still makes
// the file invalid) but never applied.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawHook {
    #[serde(rename = "hookName", default, deserialize_with = "nullable")]
    hook_name: String,
    #[serde(default, deserialize_with = "nullable")]
    path: String,
    #[serde(default, deserialize_with = "nullable")]
    args: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    env: Vec<String>,
    #[serde(default)]
    timeout: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawIntelRdt {
    #[serde(rename = "closID", default, deserialize_with = "nullable")]
    clos_id: String,
    #[serde(rename = "l3CacheSchema", default, deserialize_with = "nullable")]
    l3_cache_schema: String,
    #[serde(rename = "memBwSchema", default, deserialize_with = "nullable")]
    mem_bw_schema: String,
    #[serde(default)]
    schemata: Option<Vec<String>>,
    #[serde(rename = "enableMonitoring", default, deserialize_with = "nullable")]
    enable_monitoring: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawNetDevice {
    #[serde(rename = "hostInterfaceName", default, deserialize_with = "nullable")]
    host_interface_name: String,
    #[serde(default, deserialize_with = "nullable")]
    name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A JSON spec of kind `vendor.com/gpu` with one device node per named device.
    fn gpu_spec(version: &str, devices: &[(&str, &str)]) -> String {
        let devices: Vec<String> = devices
            .iter()
            .map(|(name, node)| {
                format!(
                    r#"{{"name": "{name}", "containerEdits": {{"deviceNodes": [{{"path": "{node}"}}]}}}}"#
                )
            })
            .collect();
        format!(
            r#"{{"cdiVersion": "{version}", "kind": "vendor.com/gpu", "devices": [{}]}}"#,
            devices.join(", ")
        )
    }

    fn paths(edits: &Edits) -> Vec<&Path> {
        edits
            .device_nodes
            .iter()
            .map(|n| n.path.as_path())
            .collect()
    }

    #[test]
    fn json_spec_edits_merge_spec_once_then_each_device() {
        let tmp = TempDir::new().unwrap();
        write(
            tmp.path(),
            "vendor.json",
            r#"{
              "cdiVersion": "0.7.0",
              "kind": "vendor.com/gpu",
              "containerEdits": {
                "env": ["VENDOR_DRIVER=1"],
                "mounts": [{"hostPath": "/usr/lib/libvendor.so", "containerPath": "/usr/lib/libvendor.so",
                            "type": "none", "options": ["ro", "bind"]}],
                "additionalGids": [0, 44]
              },
              "devices": [
                {"name": "gpu0", "containerEdits": {
                  "env": ["GPU=0"],
                  "deviceNodes": [{"path": "/dev/gpu0", "hostPath": "/dev/vendor/gpu0", "type": "c",
                                   "major": 195, "minor": 0, "fileMode": 438, "permissions": "rw",
                                   "uid": 0, "gid": 44}]}},
                {"name": "gpu1", "containerEdits": {"env": ["GPU=1"], "deviceNodes": [{"path": "/dev/gpu1"}],
                                                    "additionalGids": [44, 45]}}
              ]
            }"#,
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let edits = reg
            .resolve(&names(&["vendor.com/gpu=gpu0", "vendor.com/gpu=gpu1"]))
            .unwrap();
        assert_eq!(edits.env, ["VENDOR_DRIVER=1", "GPU=0", "GPU=1"]);
        assert_eq!(edits.mounts.len(), 1, "spec edits applied once");
        assert_eq!(
            edits.mounts[0],
            MountEdit {
                host_path: "/usr/lib/libvendor.so".into(),
                container_path: "/usr/lib/libvendor.so".into(),
                kind: Some("none".into()),
                options: names(&["ro", "bind"]),
            }
        );
        assert_eq!(edits.additional_gids, [44, 45]);
        assert_eq!(
            edits.device_nodes[0],
            DeviceNode {
                path: "/dev/gpu0".into(),
                host_path: "/dev/vendor/gpu0".into(),
                kind: Some("c".into()),
                major: Some(195),
                minor: Some(0),
                file_mode: Some(0o666),
                permissions: Some("rw".into()),
                uid: Some(0),
                gid: Some(44),
            }
        );
        assert_eq!(
            edits.device_nodes[1],
            DeviceNode {
                path: "/dev/gpu1".into(),
                host_path: "/dev/gpu1".into(),
                kind: None,
                major: None,
                minor: None,
                file_mode: None,
                permissions: None,
                uid: None,
                gid: None,
            }
        );
    }

    #[test]
    fn yaml_specs_resolve() {
        let tmp = TempDir::new().unwrap();
        write(
            tmp.path(),
            "fpga.yaml",
            "---\ncdiVersion: v0.5.0\nkind: example.org/fpga\ncontainerEdits:\n  env: [FPGA=1]\n\
             devices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/fpga0\n      \
             permissions: none\n      major: 0\n",
        );
        write(
            tmp.path(),
            "nic.yml",
            "cdiVersion: 0.3.0\nkind: example.org/nic\ndevices:\n- name: mlx-0:1\n  containerEdits:\n    \
             mounts:\n    - {hostPath: /sys/class/infiniband, containerPath: /sys/class/infiniband}\n",
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let edits = reg
            .resolve(&names(&["example.org/fpga=0", "example.org/nic=mlx-0:1"]))
            .unwrap();
        assert_eq!(edits.env, ["FPGA=1"]);
        assert_eq!(edits.device_nodes.len(), 1);
        assert_eq!(edits.device_nodes[0].permissions.as_deref(), Some(""));
        assert_eq!(edits.device_nodes[0].major, None, "major 0 means unset");
        assert_eq!(
            edits.mounts[0].container_path,
            Path::new("/sys/class/infiniband")
        );
        assert_eq!(edits.mounts[0].kind, None);
    }

    #[test]
    fn later_dir_overrides_earlier() {
        let tmp = TempDir::new().unwrap();
        let (etc, run) = (tmp.path().join("etc"), tmp.path().join("run"));
        write(
            &etc,
            "a.json",
            &gpu_spec("0.3.0", &[("a", "/dev/static"), ("b", "/dev/b")]),
        );
        write(
            &run,
            "a.json",
            &gpu_spec("0.3.0", &[("a", "/dev/generated")]),
        );
        let reg = Registry::new(vec![etc, run]);
        let edits = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap();
        assert_eq!(paths(&edits), [Path::new("/dev/generated")]);
        // What the higher directory does not define still comes from the lower one.
        let edits = reg.resolve(&names(&["vendor.com/gpu=b"])).unwrap();
        assert_eq!(paths(&edits), [Path::new("/dev/b")]);
    }

    #[test]
    fn same_device_twice_in_one_dir_is_a_conflict() {
        let tmp = TempDir::new().unwrap();
        write(
            tmp.path(),
            "one.json",
            &gpu_spec("0.3.0", &[("a", "/dev/a1"), ("b", "/dev/b")]),
        );
        write(
            tmp.path(),
            "two.json",
            &gpu_spec("0.3.0", &[("a", "/dev/a2")]),
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
        assert!(
            matches!(&err, Error::Conflict { files, .. } if files.len() == 2),
            "{err}"
        );
        assert!(err.to_string().contains("one.json"), "{err}");
        // Other devices of those files are fine.
        reg.resolve(&names(&["vendor.com/gpu=b"])).unwrap();
    }

    #[test]
    fn a_conflict_below_an_override_does_not_matter() {
        let tmp = TempDir::new().unwrap();
        let (low, high) = (tmp.path().join("low"), tmp.path().join("high"));
        write(&low, "one.json", &gpu_spec("0.3.0", &[("a", "/dev/a1")]));
        write(&low, "two.json", &gpu_spec("0.3.0", &[("a", "/dev/a2")]));
        write(&high, "a.json", &gpu_spec("0.3.0", &[("a", "/dev/a3")]));
        let edits = Registry::new(vec![low, high])
            .resolve(&names(&["vendor.com/gpu=a"]))
            .unwrap();
        assert_eq!(paths(&edits), [Path::new("/dev/a3")]);
    }

    #[test]
    fn unknown_device_names_the_dirs_searched() {
        let tmp = TempDir::new().unwrap();
        write(tmp.path(), "a.json", &gpu_spec("0.3.0", &[("a", "/dev/a")]));
        let missing = tmp.path().join("missing");
        let reg = Registry::new(vec![tmp.path().to_path_buf(), missing.clone()]);
        let err = reg.resolve(&names(&["vendor.com/gpu=z"])).unwrap_err();
        assert!(matches!(err, Error::UnknownDevice { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("\"vendor.com/gpu=z\""), "{msg}");
        assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        // Same name, other kind.
        let err = reg.resolve(&names(&["vendor.com/nic=a"])).unwrap_err();
        assert!(matches!(err, Error::UnknownDevice { .. }), "{err}");
    }

    #[test]
    fn names_must_be_fully_qualified() {
        let reg = Registry::new(vec![PathBuf::from("/nonexistent")]);
        for bad in [
            "gpu0",
            "vendor.com/gpu",
            "gpu=0",
            "/dev/gpu0",
            "vendor.com/gpu=",
            "vendor.com/=0",
            "/gpu=0",
            "vendor.com/gpu/x=0",
            "vendor.com/gpu=0/1",
            "1vendor.com/gpu=0",
            "vendor.com/gpu=-0",
        ] {
            let err = reg.resolve(&names(&[bad])).unwrap_err();
            assert!(matches!(err, Error::NotQualified { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn no_names_is_no_edits() {
        let reg = Registry::new(vec![PathBuf::from("/nonexistent")]);
        assert_eq!(reg.resolve(&[]).unwrap(), Edits::default());
    }

    #[test]
    fn bad_cdi_version_is_refused() {
        let tmp = TempDir::new().unwrap();
        write(
            tmp.path(),
            "new.json",
            &gpu_spec("9.0.0", &[("a", "/dev/a")]),
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
        assert!(matches!(err, Error::InvalidSpec { .. }), "{err}");
        assert!(err.to_string().contains("cdiVersion \"9.0.0\""), "{err}");
        assert!(err.to_string().contains("new.json"), "{err}");
    }

    #[test]
    fn version_must_cover_the_fields_used() {
        let tmp = TempDir::new().unwrap();
        // hostPath came in 0.5.0.
        write(
            tmp.path(),
            "a.json",
            r#"{"cdiVersion": "0.4.0", "kind": "vendor.com/gpu", "devices": [
                {"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/a", "hostPath": "/dev/b"}]}}]}"#,
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
        assert!(err.to_string().contains("need 0.5.0"), "{err}");
    }

    #[test]
    fn invalid_specs_are_refused() {
        let cases = [
            // kind
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com", "devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}}]}"#,
            // device name
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [{"name": "a!", "containerEdits": {"env": ["A=1"]}}]}"#,
            // device defined twice in a file
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}},
                {"name": "a", "containerEdits": {"env": ["A=2"]}}]}"#,
            // device without edits
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [{"name": "a"}]}"#,
            // env without '='
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [{"name": "a", "containerEdits": {"env": ["A"]}}]}"#,
            // unknown field
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [{"name": "a", "containerEdits": {"env": ["A=1"], "devices": []}}]}"#,
            // bad permissions
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/a", "permissions": "rwx"}]}}]}"#,
            // bad type
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/a", "type": "block"}]}}]}"#,
        ];
        for (i, case) in cases.iter().enumerate() {
            let tmp = TempDir::new().unwrap();
            write(tmp.path(), "a.json", case);
            let reg = Registry::new(vec![tmp.path().to_path_buf()]);
            let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
            // The first two files cannot be taken to define vendor.com/gpu=a at all.
            if i < 2 {
                assert!(
                    matches!(err, Error::UnknownDevice { .. }),
                    "case {i}: {err}"
                );
            } else {
                assert!(matches!(err, Error::InvalidSpec { .. }), "case {i}: {err}");
            }
            assert!(err.to_string().contains("a.json"), "case {i}: {err}");
        }
    }

    #[test]
    fn a_broken_file_does_not_break_its_neighbours() {
        let tmp = TempDir::new().unwrap();
        write(tmp.path(), "a-broken.json", "{ not json");
        write(
            tmp.path(),
            "b-invalid.yaml",
            "cdiVersion: 0.3.0\nkind: other.com/nic\ndevices: []\n",
        );
        write(
            tmp.path(),
            "c-good.json",
            &gpu_spec("0.3.0", &[("a", "/dev/a")]),
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let edits = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap();
        assert_eq!(paths(&edits), [Path::new("/dev/a")]);
        // A device found nowhere points at the file that could not be read.
        let err = reg.resolve(&names(&["vendor.com/gpu=z"])).unwrap_err();
        assert!(err.to_string().contains("a-broken.json"), "{err}");
    }

    #[test]
    fn a_broken_file_naming_the_device_fails_it() {
        let tmp = TempDir::new().unwrap();
        let (low, high) = (tmp.path().join("low"), tmp.path().join("high"));
        write(&low, "a.json", &gpu_spec("0.3.0", &[("a", "/dev/a")]));
        // Would override the good one, but its version is unknown.
        write(&high, "a.json", &gpu_spec("0.0.1", &[("a", "/dev/a2")]));
        let reg = Registry::new(vec![low.clone(), high.clone()]);
        let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSpec { file, .. } if file.starts_with(&high)),
            "{err}"
        );
        // Below a good definition, it is hidden as a valid one would be.
        let reg = Registry::new(vec![high, low]);
        reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap();
    }

    #[test]
    fn hooks_rdt_and_net_devices_are_unsupported() {
        let tmp = TempDir::new().unwrap();
        write(
            tmp.path(),
            "a.json",
            r#"{"cdiVersion": "1.1.0", "kind": "vendor.com/gpu", "devices": [
                {"name": "hooked", "containerEdits": {"hooks": [{"hookName": "createContainer", "path": "/usr/bin/hook"}]}},
                {"name": "rdt", "containerEdits": {"intelRdt": {"closID": "x"}}},
                {"name": "net", "containerEdits": {"netDevices": [{"hostInterfaceName": "eth1", "name": "net1"}]}},
                {"name": "plain", "containerEdits": {"env": ["A=1"]}}]}"#,
        );
        write(
            tmp.path(),
            "b.json",
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/nic",
                "containerEdits": {"hooks": [{"hookName": "createRuntime", "path": "/usr/bin/hook"}]},
                "devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}}]}"#,
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        for (name, what) in [
            ("vendor.com/gpu=hooked", "OCI hooks"),
            ("vendor.com/gpu=rdt", "intelRdt"),
            ("vendor.com/gpu=net", "netDevices"),
            ("vendor.com/nic=a", "OCI hooks (in the spec's"),
        ] {
            let err = reg.resolve(&names(&[name])).unwrap_err();
            assert!(matches!(err, Error::Unsupported { .. }), "{name}: {err}");
            assert!(err.to_string().contains(what), "{name}: {err}");
        }
        reg.resolve(&names(&["vendor.com/gpu=plain"])).unwrap();
    }

    #[test]
    fn relative_paths_are_refused() {
        for edit in [
            r#"{"deviceNodes": [{"path": "dev/a"}]}"#,
            r#"{"deviceNodes": [{"path": "/dev/a", "hostPath": "dev/a"}]}"#,
            r#"{"mounts": [{"hostPath": "lib", "containerPath": "/lib"}]}"#,
            r#"{"mounts": [{"hostPath": "/lib", "containerPath": "lib"}]}"#,
        ] {
            let tmp = TempDir::new().unwrap();
            let spec = format!(
                r#"{{"cdiVersion": "0.5.0", "kind": "vendor.com/gpu", "devices": [{{"name": "a", "containerEdits": {edit}}}]}}"#
            );
            write(tmp.path(), "a.json", &spec);
            let reg = Registry::new(vec![tmp.path().to_path_buf()]);
            let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec { .. }), "{edit}: {err}");
            assert!(err.to_string().contains("not an absolute path"), "{err}");
        }
    }

    #[test]
    fn an_oversize_file_is_refused() {
        let tmp = TempDir::new().unwrap();
        let mut spec = gpu_spec("0.3.0", &[("a", "/dev/a")]);
        spec.push_str(&" ".repeat(MAX_SPEC_SIZE as usize));
        write(tmp.path(), "big.json", &spec);
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
        assert!(matches!(err, Error::UnknownDevice { .. }), "{err}");
        assert!(err.to_string().contains("big.json: larger than"), "{err}");
    }

    #[test]
    fn too_many_files_in_a_dir_is_refused() {
        let tmp = TempDir::new().unwrap();
        for i in 0..=MAX_SPECS_PER_DIR {
            write(tmp.path(), &format!("{i}.json"), "{}");
        }
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let err = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap_err();
        assert!(matches!(err, Error::Dir { .. }), "{err}");
    }

    #[test]
    fn only_spec_files_are_read() {
        let tmp = TempDir::new().unwrap();
        write(tmp.path(), "a.json", &gpu_spec("0.3.0", &[("a", "/dev/a")]));
        // Same device in a subdirectory and in a file of another extension: not read,
        // so no conflict.
        write(
            &tmp.path().join("sub.json"),
            "a.json",
            &gpu_spec("0.3.0", &[("a", "/dev/x")]),
        );
        write(
            tmp.path(),
            "a.json.bak",
            &gpu_spec("0.3.0", &[("a", "/dev/y")]),
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let edits = reg.resolve(&names(&["vendor.com/gpu=a"])).unwrap();
        assert_eq!(paths(&edits), [Path::new("/dev/a")]);
    }

    #[test]
    fn repeated_names_and_paths_apply_once() {
        let tmp = TempDir::new().unwrap();
        write(
            tmp.path(),
            "a.json",
            r#"{"cdiVersion": "0.3.0", "kind": "vendor.com/gpu", "devices": [
                {"name": "a", "containerEdits": {"env": ["A=1"], "deviceNodes": [{"path": "/dev/ctl", "permissions": "r"}]}},
                {"name": "b", "containerEdits": {"deviceNodes": [{"path": "/dev/ctl", "permissions": "rw"}]}}]}"#,
        );
        let reg = Registry::new(vec![tmp.path().to_path_buf()]);
        let edits = reg
            .resolve(&names(&[
                "vendor.com/gpu=a",
                "vendor.com/gpu=b",
                "vendor.com/gpu=a",
            ]))
            .unwrap();
        assert_eq!(edits.env, ["A=1"]);
        assert_eq!(edits.device_nodes.len(), 1);
        assert_eq!(edits.device_nodes[0].permissions.as_deref(), Some("rw"));
    }

    #[test]
    fn default_dirs_put_generated_specs_last() {
        assert_eq!(
            Registry::default_dirs(),
            [PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
        );
    }
}
