//! Privileged and path-sensitive system calls, behind small safe types.

pub mod bpf;
pub mod confine;
pub mod mount;
pub mod net;
pub mod process;
pub mod rootdir;
pub mod seccomp;
pub mod selfexe;
pub mod syscall;
pub mod walk;
pub mod watch;

use std::path::Path;

/// Gives `path` to group `gid` (its owner stays).
pub fn set_group(path: &Path, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// The extended attributes of `path` itself (a symlink is not followed), by name.
/// Unreadable ones are left out.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    names[..n]
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .filter_map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let value = xattr(path, &name)?;
            Some((name, value))
        })
        .collect()
}

/// One extended attribute of `path` itself, if it has it.
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut value = vec![0u8; 65536];
    let len = rustix::fs::lgetxattr(path, name, &mut value).ok()?;
    value.truncate(len);
    Some(value)
}

pub use walk::disk_usage;

/// Whether the kernel has AppArmor enabled (`/sys/module/apparmor/parameters/enabled`).
pub fn apparmor_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.trim() == "Y")
    })
}
