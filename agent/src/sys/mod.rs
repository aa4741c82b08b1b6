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
pub mod watch;

use std::{collections::HashSet, os::unix::fs::MetadataExt, path::Path};

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

/// Allocated bytes and inodes below `dir` (not counting `dir`), hardlinked files once.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0, 0);
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            inodes += 1;
            bytes += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}
