//! Mounts: those the daemon makes on the host (a pod's /dev/shm, pinned namespaces) and
//! the operations of a container's rootfs plan, which the init carries out.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

pub use nix::mount::MsFlags as Flags;

use super::rootdir::{Attrs, RootDir};

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

/// True if `path` is a namespace (a pin of one, or `/proc/<pid>/ns/*`): a file of nsfs.
pub fn is_namespace(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    rustix::fs::statfs(path).is_ok_and(|fs| fs.f_type == NSFS_MAGIC)
}

/// The mount point of the mount that holds `path` (the longest mount point above it).
pub fn mount_point_of(path: &Path) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
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

/// One mount operation of a container's rootfs, as data: `rootfs::plan` lists them and
/// [`apply`] (the shim's, through `sys::Syscall`) carries them out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// Every mount of the new mount namespace becomes a slave of the host's: host mounts
    /// still show through, nothing flows back.
    SlaveAll,
    /// Only the mount holding `path` (the rootfs) is made private, so that a bidirectional
    /// volume can stay a peer of the host's mount.
    PrivateHolderOf(PathBuf),
    /// The rootfs: an overlay of `lowers` (top-most first) under `upper`, on `target`.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
    },
    /// A filesystem or bind mount at `destination`, resolved inside `root` (a symlink in
    /// the image cannot send it outside).
    InRoot {
        root: PathBuf,
        destination: PathBuf,
        /// The filesystem type; for a bind mount, "bind".
        fstype: String,
        /// For a filesystem, its name (or the type when empty); for a bind, the host path.
        source: String,
        flags: MsFlags,
        propagation: MsFlags,
        data: String,
    },
    /// The standard device nodes and links of a container's /dev, on the tmpfs at `dev`
    /// (inside `root`).
    PopulateDev { root: PathBuf, dev: PathBuf },
    /// pivot_root into `root`; the old root is detached without propagating to the host.
    Pivot(PathBuf),
    /// After the pivot: `path` hidden (an empty read-only tmpfs on a directory, /dev/null
    /// on a file). A path the kernel does not have is skipped.
    Mask(PathBuf),
    /// After the pivot: `path` bound read-only onto itself. Missing: skipped.
    ReadOnly(PathBuf),
    /// After the pivot: a device node made in the container's root.
    Device {
        path: PathBuf,
        kind: super::rootdir::NodeKind,
        major: u32,
        minor: u32,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// After the pivot: the rootfs remounted read-only.
    RootReadOnly,
    /// The mount at `destination` (inside `root`) and every mount below it made read-only
    /// (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`): a recursive read-only volume.
    RecursiveReadOnly { root: PathBuf, destination: PathBuf },
    /// An image volume: an overlay of `layers` (top-most first, no upper layer: read-only)
    /// on `staging`, then its directory `sub_path` (resolved inside the image: its symlinks
    /// cannot lead out) bound at `destination` inside `root`, read-only, nosuid, nodev.
    ImageVolume {
        root: PathBuf,
        destination: PathBuf,
        layers: Vec<PathBuf>,
        sub_path: PathBuf,
        staging: PathBuf,
    },
}

impl Mount {
    /// A short name of the operation, for errors.
    pub fn describe(&self) -> String {
        match self {
            Mount::SlaveAll => "making / a slave mount".into(),
            Mount::PrivateHolderOf(p) => {
                format!("making the mount holding {} private", p.display())
            }
            Mount::Overlay { target, .. } => format!("mounting the rootfs on {}", target.display()),
            Mount::InRoot {
                source,
                destination,
                ..
            } => format!("mounting {source} on {}", destination.display()),
            Mount::PopulateDev { .. } => "populating /dev".into(),
            Mount::Pivot(root) => format!("pivot_root into {}", root.display()),
            Mount::Mask(p) => format!("masking {}", p.display()),
            Mount::ReadOnly(p) => format!("making {} read-only", p.display()),
            Mount::Device { path, .. } => format!("making device {}", path.display()),
            Mount::RootReadOnly => "making the rootfs read-only".into(),
            Mount::RecursiveReadOnly { destination, .. } => {
                format!("making {} recursively read-only", destination.display())
            }
            Mount::ImageVolume { destination, .. } => {
                format!("mounting an image volume on {}", destination.display())
            }
        }
    }
}

/// Carries out one operation of a rootfs plan.
pub fn apply(m: &Mount) -> io::Result<()> {
    match m {
        Mount::RecursiveReadOnly { root, destination } => {
            let rootdir = RootDir::open_crossing_mounts(root)?;
            let mounted = resolve(&rootdir, destination)?;
            set_read_only_recursively(&mounted)
        }
        Mount::ImageVolume {
            root,
            destination,
            layers,
            sub_path,
            staging,
        } => image_volume(root, destination, layers, sub_path, staging),
        Mount::SlaveAll => mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(io::Error::from),
        Mount::PrivateHolderOf(path) => {
            let parent = mount_point_of(path)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no mount holds it"))?;
            mount(
                None::<&str>,
                &parent,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(io::Error::from)
        }
        Mount::Overlay {
            lowers,
            upper,
            work,
            target,
        } => overlay(lowers, upper, work, target),
        Mount::InRoot {
            root,
            destination,
            fstype,
            source,
            flags,
            propagation,
            data,
        } => in_root(
            root,
            destination,
            fstype,
            source,
            *flags,
            *propagation,
            data,
        ),
        Mount::PopulateDev { root, dev } => {
            let rootdir = RootDir::open_crossing_mounts(root)?;
            let dev = resolve(&rootdir, dev)?;
            populate_dev(&fd_path(&dev))
        }
        Mount::Pivot(root) => pivot(root),
        Mount::Mask(path) => mask(path),
        Mount::ReadOnly(path) => read_only(path),
        Mount::Device {
            path,
            kind,
            major,
            minor,
            mode,
            uid,
            gid,
        } => {
            let root = RootDir::open_crossing_mounts(Path::new("/"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let attrs = Attrs {
                uid: *uid,
                gid: *gid,
                mode: *mode,
                mtime_secs: now,
                mtime_nanos: 0,
            };
            root.mknod(path, *kind, *major, *minor, &attrs)
        }
        Mount::RootReadOnly => mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(io::Error::from),
    }
}

/// The new mount API's `lowerdir+` takes one layer per call, so there is no page-size
/// limit on how many layers an image has.
fn overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    let fail = |what: String, e: rustix::io::Errno| {
        // The kernel explains a rejected parameter on the fs descriptor.
        let mut detail = String::new();
        let mut buf = [0u8; 512];
        if let Ok(n) = rustix::io::read(&fs, &mut buf) {
            detail = format!(" ({})", String::from_utf8_lossy(&buf[..n]).trim());
        }
        io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}{detail}"))
    };
    for lower in lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower)
            .map_err(|e| fail(format!("lower layer {}", lower.display()), e))?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper)
        .map_err(|e| fail("upperdir".into(), e))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work)
        .map_err(|e| fail("workdir".into(), e))?;
    rustix::mount::fsconfig_create(&fs).map_err(|e| fail("creating the overlay".into(), e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| fail("fsmount".into(), e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

fn image_volume(
    root: &Path,
    destination: &Path,
    layers: &[PathBuf],
    sub_path: &Path,
    staging: &Path,
) -> io::Result<()> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags};
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for lower in layers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("image layer {}: {e}", lower.display()),
            )
        })?;
    }
    rustix::mount::fsconfig_create(&fs)?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        staging,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    let image = RootDir::open_crossing_mounts(staging)?;
    // (The image's root itself is ".": an empty path names nothing to openat2.)
    let wanted = if sub_path.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        Path::new("/").join(sub_path)
    };
    // Symlinks are followed as the image sees them: inside it, never out of it.
    let dir = rustix::fs::openat2(
        image.as_fd(),
        wanted.strip_prefix("/").unwrap_or(&wanted),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        let what = match e {
            rustix::io::Errno::NOENT => "does not exist in the image".to_string(),
            rustix::io::Errno::NOTDIR => "is not a directory of the image".to_string(),
            e => e.to_string(),
        };
        io::Error::new(
            io::Error::from(e).kind(),
            format!("image_sub_path {} {what}", sub_path.display()),
        )
    })?;
    // A copy of that directory's mount (read-only, nosuid, nodev as the overlay's), moved
    // onto the mount point.
    let tree = rustix::mount::open_tree(
        &dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    let rootdir = RootDir::open_crossing_mounts(root)?;
    rootdir
        .ensure_dir(destination)
        .map_err(|e| io::Error::new(e.kind(), format!("creating the mount point: {e}")))?;
    let target = resolve(&rootdir, destination)?;
    rustix::mount::move_mount(
        &tree,
        "",
        &target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// `path` (absolute, of the container) resolved inside `root`, as an O_PATH descriptor.
fn resolve(root: &RootDir, path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    Ok(rustix::fs::openat2(
        root.as_fd(),
        path.strip_prefix("/").unwrap_or(path),
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn in_root(
    root: &Path,
    destination: &Path,
    fstype: &str,
    source: &str,
    flags: MsFlags,
    propagation: MsFlags,
    data: &str,
) -> io::Result<()> {
    let rootdir = RootDir::open_crossing_mounts(root)?;
    let is_bind = flags.contains(MsFlags::MS_BIND);
    let context =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    if is_bind && Path::new(source).metadata().is_ok_and(|md| !md.is_dir()) {
        rootdir.ensure_file(destination)
    } else {
        rootdir.ensure_dir(destination)
    }
    .map_err(context("creating the mount point"))?;
    let target = resolve(&rootdir, destination).map_err(context("resolving the mount point"))?;
    let source = if source.is_empty() { fstype } else { source };
    let data = (!data.is_empty()).then_some(data);
    // A bind mount takes its read-only flag (and nosuid…) only on a remount.
    let first = if is_bind {
        flags & !MsFlags::MS_RDONLY
    } else {
        flags
    };
    mount(
        Some(source),
        &fd_path(&target),
        (!is_bind).then_some(fstype),
        first,
        data,
    )?;
    // `target` still names the directory under the new mount; what follows acts on the
    // mount itself, so resolve the path again.
    let mounted_fd = resolve(&rootdir, destination)?;
    let mounted = fd_path(&mounted_fd);
    let restricting =
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if is_bind && flags.intersects(restricting) {
        mount(
            None::<&str>,
            &mounted,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | (flags & restricting),
            None::<&str>,
        )
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("remounting: {e}")))?;
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            &mounted,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("setting propagation: {e}"),
            )
        })?;
    }
    Ok(())
}

/// The standard device nodes and links of a container's /dev.
fn populate_dev(dev: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        let made = nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(io::Error::from)
        // mknod is subject to the umask; the mode must be exact.
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)));
        made.map_err(|e| io::Error::new(e.kind(), format!("/dev/{name}: {e}")))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name))
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/{name}: {e}")))?;
    }
    for dir in ["pts", "shm", "mqueue"] {
        std::fs::create_dir_all(dev.join(dir))?;
    }
    Ok(())
}

fn pivot(root: &Path) -> io::Result<()> {
    let old_root = std::fs::File::open("/")?;
    std::env::set_current_dir(root)?;
    rustix::process::pivot_root(".", ".")?;
    // The old root is now stacked on the new one. Entered through a descriptor (a path
    // would name the new root, under it), it is made a slave, so that detaching it
    // cannot propagate to the host (its mounts may still be shared), then detached.
    rustix::process::fchdir(&old_root)?;
    drop(old_root);
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )?;
    umount2(".", MntFlags::MNT_DETACH)?;
    std::env::set_current_dir("/")
}

fn mask(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
    }
    Ok(())
}

fn read_only(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )?;
    Ok(())
}

/// Bind-mounts `source` (a namespace file of /proc) onto `target`, pinning it.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Makes the mount `fd` names, and every mount below it, read-only.
#[allow(unsafe_code)] // mount_setattr(2), which neither nix nor rustix wraps
fn set_read_only_recursively(fd: &OwnedFd) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the descriptor is open, the path is a NUL-terminated empty string, and
    // `attr` is a valid mount_attr whose size is passed with it; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this kernel has mount_setattr(2) (5.12 and later), which recursive read-only
/// mounts need.
pub fn recursive_read_only_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(probe_mount_setattr)
}

#[allow(unsafe_code)] // mount_setattr(2), probed with a descriptor that is never valid
fn probe_mount_setattr() -> bool {
    // SAFETY: an invalid descriptor and null arguments: the kernel fails the call (EBADF or
    // EINVAL where it has it, ENOSYS where not) without touching memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<libc::mount_attr>(),
            0usize,
        )
    };
    rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}
