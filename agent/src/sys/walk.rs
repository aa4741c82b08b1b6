//! Walking a tree that someone else may be changing while we read it: a container's
//! read-write layer, which its processes write at will (commit, disk usage).
//!
//! Nothing is looked up by a path the kernel would resolve through a symlink. Each
//! directory is opened from the walk's root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, so a directory swapped for a symlink between
//! its listing and its reading is refused by the kernel instead of followed out of the
//! tree (to the host's `/etc`, say); entries are examined with `fstatat(AT_SYMLINK_NOFOLLOW)`
//! and opened with `O_NOFOLLOW` relative to their directory's descriptor. Only one
//! directory descriptor is open at a time, however deep the tree.

use std::{
    ffi::{CStr, CString, OsStr},
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};

/// How to walk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Walk {
    /// Visit each directory's entries in byte order of their names (a reproducible
    /// order, for layers), rather than in the order the directory lists them.
    pub sorted: bool,
    /// Skip what vanishes or changes under the walk instead of failing on it (for
    /// counting, where an approximate answer beats none).
    pub tolerant: bool,
}

/// One entry met by a walk: a name in a directory the walk holds open.
pub struct Entry<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
    /// The entry's path relative to the walk's root.
    pub path: &'a Path,
    /// The entry itself (a symlink is not followed).
    pub stat: &'a Stat,
}

impl Entry<'_> {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    /// Opens a regular file for reading, without following a symlink and only if it is
    /// still the file the walk saw (not swapped for another kind of node since).
    pub fn open(&self) -> io::Result<File> {
        let fd = rustix::fs::openat(
            self.dir,
            self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let now = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
            || now.st_ino != self.stat.st_ino
            || now.st_dev != self.stat.st_dev
        {
            return Err(changed(self.path));
        }
        Ok(File::from(fd))
    }

    /// A symlink's target, as stored (never resolved).
    pub fn read_link(&self) -> io::Result<PathBuf> {
        let target = rustix::fs::readlinkat(self.dir, self.name, Vec::new())?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// The path that names this entry through its directory's descriptor, for calls that
    /// take a path and do not follow a final symlink (`lgetxattr`): the directory is the
    /// one the walk opened, and a name read from it has no `/`.
    fn fd_path(&self) -> PathBuf {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        path.push(OsStr::from_bytes(self.name.to_bytes()));
        path
    }

    /// The entry's extended attributes, by name (unreadable ones left out).
    pub fn xattrs(&self) -> Vec<(String, Vec<u8>)> {
        super::xattrs(&self.fd_path())
    }

    /// One extended attribute of the entry, if it has it.
    pub fn xattr(&self, name: &str) -> Option<Vec<u8>> {
        super::xattr(&self.fd_path(), name)
    }
}

fn changed(path: &Path) -> io::Error {
    io::Error::other(format!("{} changed while it was read", path.display()))
}

/// Walks the tree below `root` (not `root` itself), calling `visit` for every entry. A
/// directory's entries are all visited before any of its subdirectories is entered, and a
/// subdirectory is entered only if `visit` returned `true` for it. A directory replaced by
/// a symlink (or a mount) after it was listed is never entered: that fails the walk, or is
/// skipped when the walk is tolerant.
pub fn walk(
    root: &Path,
    how: Walk,
    mut visit: impl FnMut(&Entry<'_>) -> io::Result<bool>,
) -> io::Result<()> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Directories still to enter, depth first in the order they were met.
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = match open_beneath(&root_fd, &rel) {
            Ok(dir) => dir,
            Err(e) if how.tolerant => {
                tracing::debug!(path = %rel.display(), error = %e, "skipped while walking");
                continue;
            }
            // A symlink on the way is ELOOP; one in the directory's own place, ENOTDIR.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(io::Error::other(format!(
                    "{} was replaced by a symlink or another file while it was read",
                    rel.display()
                )));
            }
            Err(e) => return Err(e),
        };
        let mut names = list(&dir, how.tolerant)?;
        if how.sorted {
            names.sort_unstable();
        }
        let mut subdirs = Vec::new();
        for name in names {
            let path = rel.join(OsStr::from_bytes(name.to_bytes()));
            let stat = match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(_) if how.tolerant => continue,
                Err(e) => return Err(e.into()),
            };
            let entry = Entry {
                dir: dir.as_fd(),
                name: &name,
                path: &path,
                stat: &stat,
            };
            let descend = match visit(&entry) {
                Ok(descend) => descend,
                Err(_) if how.tolerant => false,
                Err(e) => return Err(e),
            };
            if descend && entry.file_type() == FileType::Directory {
                subdirs.push(path);
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Opens directory `rel` below `root`; the kernel refuses a symlink or a mount anywhere on
/// the way (and `..` out of the root).
fn open_beneath(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    Ok(rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )?)
}

/// The names in a directory, without `.` and `..`.
fn list(dir: &OwnedFd, tolerant: bool) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(_) if tolerant => break,
            Err(e) => return Err(e.into()),
        };
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Allocated bytes and inodes below `dir` (not counting `dir`), hardlinked files once.
/// Never follows a symlink; what changes under the walk is skipped.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut seen = std::collections::HashSet::new();
    let counted = walk(
        dir,
        Walk {
            sorted: false,
            tolerant: true,
        },
        |entry| {
            let stat = entry.stat;
            let is_dir = entry.file_type() == FileType::Directory;
            if stat.st_nlink > 1 && !is_dir && !seen.insert((stat.st_dev, stat.st_ino)) {
                return Ok(false);
            }
            inodes += 1;
            bytes += (stat.st_blocks as u64).saturating_mul(512);
            Ok(is_dir)
        },
    );
    if let Err(e) = counted {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot count disk use");
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/inner")).unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("b/inner/file"), b"hello").unwrap();
        std::fs::write(root.join("a/x"), vec![7u8; 10_000]).unwrap();
        std::fs::hard_link(root.join("a/x"), root.join("a/y")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("c")).unwrap();
        dir
    }

    #[test]
    fn sorted_walks_visit_each_directory_before_its_subdirectories() {
        let dir = tree();
        let mut seen = Vec::new();
        walk(
            dir.path(),
            Walk {
                sorted: true,
                tolerant: false,
            },
            |e| {
                seen.push(e.path.display().to_string());
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            ["a", "b", "c", "a/x", "a/y", "b/inner", "b/inner/file"]
        );
    }

    #[test]
    fn symlinks_are_read_never_followed() {
        let dir = tree();
        let mut links = Vec::new();
        walk(dir.path(), Walk::default(), |e| {
            if e.file_type() == FileType::Symlink {
                links.push(e.read_link().unwrap());
                assert!(e.open().is_err(), "a symlink must not open");
            }
            Ok(true)
        })
        .unwrap();
        assert_eq!(links, [PathBuf::from("/etc")]);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_entered() {
        let dir = tree();
        let root = dir.path().to_path_buf();
        // The swap happens between the listing of the root and the entering of `b`.
        let sorted = Walk {
            sorted: true,
            tolerant: false,
        };
        let result = walk(&root, sorted, |e| {
            if e.path == Path::new("c") {
                std::fs::rename(root.join("b"), root.join("b.real")).unwrap();
                std::os::unix::fs::symlink("/etc", root.join("b")).unwrap();
            }
            let inside_b = e.path.starts_with("b") && e.path != Path::new("b");
            assert!(!inside_b, "walked into {:?}", e.path);
            Ok(true)
        });
        let error = result.unwrap_err().to_string();
        assert!(error.contains("replaced by a symlink"), "{error}");

        // A tolerant walk skips it and goes on.
        let (bytes, inodes) = disk_usage(&root);
        assert!(inodes >= 4 && bytes > 0, "{bytes} {inodes}");
    }

    #[test]
    fn disk_usage_counts_hardlinks_once() {
        let dir = tree();
        let (bytes, inodes) = disk_usage(dir.path());
        // a, b, c, a/x (a/y is the same inode), b/inner, b/inner/file
        assert_eq!(inodes, 6);
        assert!(bytes >= 10_000, "{bytes}");
    }
}
