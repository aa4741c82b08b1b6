//! Mounts the daemon makes on the host: a pod's /dev/shm, and releasing pinned namespaces.

use std::{io, path::Path};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Mounts a tmpfs (nosuid, nodev, noexec) on `path` with the given options.
pub fn tmpfs(path: &Path, options: &str) -> io::Result<()> {
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
    .map_err(io::Error::from)
}

/// Detaches the mount at `path` (lazily: it goes once nothing uses it).
pub fn detach(path: &Path) -> io::Result<()> {
    umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// True if `path` is a mount point (a pinned namespace is an nsfs mount on a file).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount_point| unescape_mount_path(mount_point) == target)
}

/// The mount point of the mount that holds `path` (the longest mount point above it).
pub fn mount_point_of(path: &Path) -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| std::path::PathBuf::from(unescape_mount_path(p)))
        .filter(|mount_point| path.starts_with(mount_point))
        .max_by_key(|mount_point| mount_point.components().count())
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
