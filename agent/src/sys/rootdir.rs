//! A directory that every path is confined to.
//!
//! Paths are resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`: `..` and symlinks
//! (absolute ones too) resolve as if the directory were `/`, so nothing a path names can
//! lie outside it. Only the parent of an entry is resolved that way; the entry itself is
//! then created or changed with `*at` calls on its name that never follow a symlink. This
//! is what makes unpacking an untrusted image layer safe: no entry can create, write,
//! chmod or link anything outside the layer, whatever the entries before it planted.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};

/// The kinds of node an entry can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// Owner, mode and modification time to give a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

/// A directory opened as a confinement root.
pub struct RootDir {
    fd: OwnedFd,
    /// Whether lookups may cross into other mounts below the root.
    cross_mounts: bool,
}

/// Turns any path into components relative to the root: leading `/` dropped, `.` skipped,
/// `..` clamped at the root. `None` for the root itself.
pub fn confine(path: &Path) -> Option<(PathBuf, &OsStr)> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => parts.push(name),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let name = parts.pop()?;
    Some((parts.iter().collect(), name))
}

impl AsFd for RootDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl RootDir {
    pub fn open(path: &Path) -> io::Result<RootDir> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        Ok(RootDir {
            fd,
            cross_mounts: false,
        })
    }

    /// Like [`RootDir::open`], but lookups may cross mount points below the root (a
    /// container's rootfs, with /dev and /proc mounted in it).
    pub fn open_crossing_mounts(path: &Path) -> io::Result<RootDir> {
        let mut root = Self::open(path)?;
        root.cross_mounts = true;
        Ok(root)
    }

    fn resolve_flags(&self) -> ResolveFlags {
        let flags = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        if self.cross_mounts {
            flags
        } else {
            flags | ResolveFlags::NO_XDEV
        }
    }

    /// Opens directory `rel` inside the root, creating missing directories (mode 0755,
    /// owned by root) on the way, as tar archives may leave implied parents out. Every
    /// lookup starts again from the root, so a symlink met on the way stays confined.
    fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        match self.open_dir(rel) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let mut prefix = PathBuf::new();
        let mut current = self.fd.try_clone()?;
        for component in rel.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            prefix.push(name);
            current = match self.open_dir(&prefix) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.open_dir(&prefix)?
                }
                other => other?,
            };
        }
        Ok(current)
    }

    fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.fd.try_clone();
        }
        Ok(rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            self.resolve_flags(),
        )?)
    }

    /// The parent directory of `path` (created if missing) and the entry's own name.
    /// `None` when `path` names the root itself.
    fn parent(&self, path: &Path) -> io::Result<Option<(OwnedFd, PathBuf)>> {
        match confine(path) {
            None => Ok(None),
            Some((parent, name)) => Ok(Some((self.dir(&parent)?, PathBuf::from(name)))),
        }
    }

    /// Removes whatever is at `name` in `dir` so a new entry can take its place; a
    /// directory is kept when `keep_dir` is set (tar archives re-list directories).
    fn clear(dir: &OwnedFd, name: &Path, keep_dir: bool) -> io::Result<bool> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                remove_tree(dir, name)?;
                Ok(false)
            }
            Ok(_) => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
                Ok(false)
            }
        }
    }

    /// Creates (or keeps) directory `path` and gives it `attrs` except its mtime, which
    /// the caller sets last (entries written into it later would change it).
    pub fn mkdir(&self, path: &Path, attrs: &Attrs) -> io::Result<()> {
        let Some((dir, name)) = self.parent(path)? else {
            let fd = self.fd.try_clone()?;
            return apply_owner_mode(&fd, attrs);
        };
        if !Self::clear(&dir, &name, true)? {
            rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o700))?;
        }
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        apply_owner_mode(&fd, attrs)
    }

    /// Creates regular file `path` (replacing what was there), returns it open for writing.
    /// Owner, mode and times are applied with [`finish_file`] once the content is written.
    pub fn create_file(&self, path: &Path) -> io::Result<File> {
        let (dir, name) = self.parent(path)?.ok_or_else(|| is_root_error(path))?;
        Self::clear(&dir, &name, false)?;
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    pub fn symlink(&self, path: &Path, target: &Path, attrs: &Attrs) -> io::Result<()> {
        let (dir, name) = self.parent(path)?.ok_or_else(|| is_root_error(path))?;
        Self::clear(&dir, &name, false)?;
        rustix::fs::symlinkat(target, &dir, &name)?;
        rustix::fs::chownat(
            &dir,
            &name,
            Some(uid(attrs.uid)?),
            Some(gid(attrs.gid)?),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        set_times(&dir, &name, attrs)
    }

    /// Hard-links `path` to the existing entry `target`, both inside the root. A symlink
    /// as target is linked itself, never followed.
    pub fn hardlink(&self, path: &Path, target: &Path) -> io::Result<()> {
        let (target_dir, target_name) = match confine(target) {
            Some((parent, name)) => (self.open_dir(&parent)?, PathBuf::from(name)),
            None => return Err(is_root_error(target)),
        };
        let (dir, name) = self.parent(path)?.ok_or_else(|| is_root_error(path))?;
        // Linking a name to itself: nothing to do (and clearing first would lose it).
        if let (Ok(a), Ok(b)) = (
            rustix::fs::statat(&target_dir, &target_name, AtFlags::SYMLINK_NOFOLLOW),
            rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW),
        ) && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        {
            return Ok(());
        }
        Self::clear(&dir, &name, false)?;
        rustix::fs::linkat(&target_dir, &target_name, &dir, &name, AtFlags::empty())?;
        Ok(())
    }

    pub fn mknod(
        &self,
        path: &Path,
        kind: NodeKind,
        major: u32,
        minor: u32,
        attrs: &Attrs,
    ) -> io::Result<()> {
        let (dir, name) = self.parent(path)?.ok_or_else(|| is_root_error(path))?;
        Self::clear(&dir, &name, false)?;
        let file_type = match kind {
            NodeKind::Char => FileType::CharacterDevice,
            NodeKind::Block => FileType::BlockDevice,
            NodeKind::Fifo => FileType::Fifo,
        };
        rustix::fs::mknodat(
            &dir,
            &name,
            file_type,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )?;
        let fd = rustix::fs::openat(
            &dir,
            &name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        apply_owner_mode(&fd, attrs)?;
        set_times(&dir, &name, attrs)
    }

    /// Sets an extended attribute on `path` itself (not on a symlink's target). The path
    /// goes through the parent's descriptor in /proc, so only the last name is looked up.
    pub fn set_xattr(&self, path: &Path, key: &OsStr, value: &[u8]) -> io::Result<()> {
        let parent = self.parent(path)?;
        let target = match &parent {
            Some((dir, name)) => {
                PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
            }
            None => PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())),
        };
        Ok(rustix::fs::lsetxattr(
            &target,
            key,
            value,
            XattrFlags::empty(),
        )?)
    }

    /// Reads a regular file inside the root (at most 1 MiB), following symlinks only
    /// within the root.
    pub fn read_to_string(&self, path: &Path) -> io::Result<String> {
        use std::io::Read;
        let rel = path.strip_prefix("/").unwrap_or(path);
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            self.resolve_flags(),
        )?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut text = String::new();
        file.take(1 << 20).read_to_string(&mut text)?;
        Ok(text)
    }

    /// Makes sure a file exists at `path` (an empty one is created, its parents too), for
    /// a file bind mount to land on. An existing entry is left as it is.
    pub fn ensure_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?.ok_or_else(|| is_root_error(path))?;
        match rustix::fs::openat(
            &dir,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(_) | Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::LOOP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes sure directory `path` exists (missing ones are created 0755, owned by root).
    pub fn ensure_dir(&self, path: &Path) -> io::Result<()> {
        let rel = match confine(path) {
            None => return Ok(()),
            Some((parent, name)) => parent.join(name),
        };
        self.dir(&rel).map(drop)
    }

    /// Makes directory `path` inside the root the process's working directory. The lookup
    /// stays in the root and follows no magic link, so a symlink a container planted
    /// (`/w -> /proc/1/root`) cannot send a process running as root out of it.
    pub fn enter_dir(&self, path: &Path) -> io::Result<()> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        if rel.as_os_str().is_empty() {
            return Ok(rustix::process::fchdir(&self.fd)?);
        }
        let dir = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            self.resolve_flags(),
        )?;
        Ok(rustix::process::fchdir(&dir)?)
    }

    /// Sets the modification (and access) time of `path` without following a symlink.
    pub fn set_mtime(&self, path: &Path, attrs: &Attrs) -> io::Result<()> {
        match self.parent(path)? {
            Some((dir, name)) => set_times(&dir, &name, attrs),
            None => Ok(rustix::fs::futimens(&self.fd, &timestamps(attrs))?),
        }
    }
}

/// Gives a freshly written file its owner, mode and times.
pub fn finish_file(file: &File, attrs: &Attrs) -> io::Result<()> {
    // Owner first: chown clears setuid and setgid bits, so the mode must come after it.
    rustix::fs::fchown(file, Some(uid(attrs.uid)?), Some(gid(attrs.gid)?))?;
    rustix::fs::fchmod(file, Mode::from_raw_mode(attrs.mode & 0o7777))?;
    rustix::fs::futimens(file, &timestamps(attrs))?;
    Ok(())
}

/// Owner then mode, on an `O_PATH` descriptor of a non-symlink (fchmod does not take
/// `O_PATH` descriptors, so the mode goes through the descriptor's /proc entry, which
/// names exactly this inode).
fn apply_owner_mode(fd: &OwnedFd, attrs: &Attrs) -> io::Result<()> {
    rustix::fs::chownat(
        fd,
        "",
        Some(uid(attrs.uid)?),
        Some(gid(attrs.gid)?),
        AtFlags::EMPTY_PATH,
    )?;
    let proc = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(attrs.mode & 0o7777))?;
    Ok(())
}

fn timestamps(attrs: &Attrs) -> Timestamps {
    let t = Timespec {
        tv_sec: attrs.mtime_secs,
        tv_nsec: attrs.mtime_nanos.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_times(dir: &OwnedFd, name: &Path, attrs: &Attrs) -> io::Result<()> {
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &timestamps(attrs),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

fn uid(raw: u32) -> io::Result<Uid> {
    if raw == u32::MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "uid -1"));
    }
    Ok(Uid::from_raw(raw))
}

fn gid(raw: u32) -> io::Result<Gid> {
    if raw == u32::MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "gid -1"));
    }
    Ok(Gid::from_raw(raw))
}

fn is_root_error(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} names the root directory itself", path.display()),
    )
}

/// Removes directory `name` in `dir` and everything below it, without following symlinks.
fn remove_tree(dir: &OwnedFd, name: &Path) -> io::Result<()> {
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name == b"." || entry_name == b".." {
            continue;
        }
        entries.push((
            PathBuf::from(OsStr::from_bytes(entry_name)),
            entry.file_type() == FileType::Directory,
        ));
    }
    for (entry, is_dir) in entries {
        if is_dir {
            remove_tree(&sub, &entry)?;
        } else {
            rustix::fs::unlinkat(&sub, &entry, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_clamps_every_path_inside() {
        let c = |p: &str| confine(Path::new(p)).map(|(d, n)| (d, n.to_os_string()));
        assert_eq!(c("a/b/c"), Some((PathBuf::from("a/b"), "c".into())));
        assert_eq!(
            c("/etc/passwd"),
            Some((PathBuf::from("etc"), "passwd".into()))
        );
        assert_eq!(
            c("../../etc/passwd"),
            Some((PathBuf::from("etc"), "passwd".into()))
        );
        assert_eq!(c("a/../../b"), Some((PathBuf::new(), "b".into())));
        assert_eq!(c("./x/./y/"), Some((PathBuf::from("x"), "y".into())));
        assert_eq!(c("/"), None);
        assert_eq!(c(".."), None);
        assert_eq!(c(""), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let root = RootDir::open(root_dir.path()).unwrap();
        let attrs = Attrs {
            uid: 0,
            gid: 0,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
        };
        // A link to an absolute path outside, then a file written through it: while the
        // target does not exist inside the root, the write fails…
        root.symlink(Path::new("out"), outside.path(), &attrs)
            .unwrap();
        assert!(root.create_file(&Path::new("out").join("escaped")).is_err());
        assert!(!outside.path().join("escaped").exists());
        // …and once it does, the write lands there, inside the root.
        root.ensure_dir(outside.path()).unwrap();
        let file = root.create_file(&Path::new("out").join("escaped")).unwrap();
        finish_file(&file, &attrs).unwrap();
        assert!(!outside.path().join("escaped").exists());
        let inside = root_dir
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("escaped");
        assert!(inside.is_file(), "{}", inside.display());
    }
}
