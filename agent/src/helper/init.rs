//! The container's init: the child the monitor forks. It enters the pod's namespaces and
//! new ones of its own, mounts the overlay rootfs and the kernel filesystems, pivots into
//! the rootfs, drops to the container's user and capabilities, reports "ready", waits for
//! StartContainer on the start FIFO, and execs the entrypoint.
//!
//! It runs in a freshly forked child of the single-threaded monitor, so ordinary Rust code
//! is safe here. Failures are sent to the monitor as one line and end the process.

use std::{
    ffi::CString,
    fs::File,
    io::{Read, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    unistd::{Gid, Uid},
};
use rustix::{
    fs::{Mode, OFlags, ResolveFlags},
    mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags},
};

use crate::{
    runtime::spec::Spec,
    sys::rootdir::{Attrs, NodeKind, RootDir},
};

/// The init's ends of the pipes to the monitor.
pub struct Pipes {
    /// The monitor writes one byte once the init is in its cgroup.
    pub go: OwnedFd,
    /// "ready\n" or "error: …\n" to the monitor; after exec it closes by itself.
    pub sync: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

type Result<T> = std::result::Result<T, String>;

fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

/// Runs the init. Never returns: it execs the entrypoint or exits.
pub fn run(spec: &Spec, pipes: Pipes) -> ! {
    let Pipes {
        go,
        sync,
        stdout,
        stderr,
    } = pipes;
    let mut sync = File::from(sync);
    let error = match setup_and_exec(spec, go, stdout, stderr, &mut sync) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = writeln!(sync, "error: {}", error.replace('\n', " "));
    std::process::exit(127);
}

enum Never {}

fn setup_and_exec(
    spec: &Spec,
    go: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    sync: &mut File,
) -> Result<Never> {
    // Not dumpable until exec: nothing can ptrace or read /proc of the half-set-up init.
    crate::sys::process::set_non_dumpable().map_err(ctx(|| "prctl(PR_SET_DUMPABLE)".into()))?;
    let mut byte = [0u8; 1];
    File::from(go)
        .read_exact(&mut byte)
        .map_err(ctx(|| "waiting for the monitor".into()))?;

    // Read while the host's paths are still in reach.
    let seccomp = read_seccomp(spec)?;
    enter_namespaces(spec)?;
    isolate_mounts(spec)?;
    let root = &spec.root.path;
    mount_overlay(spec)?;
    let fifo = rustix::fs::open(
        &spec.strata.start_fifo,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(ctx(|| {
        format!("opening {}", spec.strata.start_fifo.display())
    }))?;
    mount_all(spec, root)?;
    pivot(root)?;
    mask_and_protect(spec)?;
    make_devices(spec)?;
    if spec.root.readonly {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(ctx(|| "making the rootfs read-only".into()))?;
    }
    enter_working_dir(spec, true)?;

    // Standard streams: /dev/null in, the monitor's pipes out.
    let null = File::open("/dev/null").map_err(ctx(|| "opening /dev/null".into()))?;
    nix::unistd::dup2_stdin(&null).map_err(ctx(|| "dup2 to stdin".into()))?;
    nix::unistd::dup2_stdout(&stdout).map_err(ctx(|| "dup2 to stdout".into()))?;
    nix::unistd::dup2_stderr(&stderr).map_err(ctx(|| "dup2 to stderr".into()))?;
    drop((null, stdout, stderr));

    let exe = resolve_executable(spec)?;
    let args = cstrings(&spec.process.args)?;
    let env = cstrings(&spec.process.env)?;
    sync.write_all(b"ready\n")
        .map_err(ctx(|| "reporting ready".into()))?;
    // Blocks until StartContainer opens the FIFO's other end. Still root here: the FIFO is
    // reached through this (non-dumpable, so root-owned) process's /proc entry.
    let mut start = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", fifo.as_raw_fd()))
        .map_err(ctx(|| "waiting for start".into()))?;
    start
        .write_all(b"s")
        .map_err(ctx(|| "acknowledging start".into()))?;
    drop(start);
    drop(fifo);
    set_oom_score_adj(spec, &mut *sync);
    set_rlimits(spec)?;
    let never = confine_and_exec(
        spec,
        &exe,
        &args,
        &env,
        seccomp.as_deref(),
        &[sync.as_raw_fd()],
    )?;
    match never {}
}

/// The container's seccomp program, if it has one.
pub fn read_seccomp(spec: &Spec) -> Result<Option<Vec<u8>>> {
    spec.strata
        .seccomp
        .as_ref()
        .map(|path| std::fs::read(path).map_err(ctx(|| format!("reading {}", path.display()))))
        .transpose()
}

/// The last steps before the container's process runs: its user and capabilities, the
/// seccomp filter, only the standard descriptors (and `keep`), execve. Without
/// no_new_privs loading a filter needs CAP_SYS_ADMIN, so it comes before the privileges
/// go (the filter must then allow the calls that drop them, as RuntimeDefault does);
/// with no_new_privs it comes last, so that as few calls as possible happen under it.
/// Returns only on failure.
fn confine_and_exec(
    spec: &Spec,
    exe: &CString,
    args: &[CString],
    env: &[CString],
    seccomp: Option<&[u8]>,
    keep: &[i32],
) -> Result<std::convert::Infallible> {
    let load = |program: &[u8]| {
        crate::sys::seccomp::load_filter(program)
            .map_err(ctx(|| "loading the seccomp filter".into()))
    };
    if let Some(program) = seccomp
        && !spec.process.no_new_privileges
    {
        load(program)?;
    }
    become_container_user(spec)?;
    close_other_fds(keep)?;
    if let Some(program) = seccomp
        && spec.process.no_new_privileges
    {
        load(program)?;
    }
    let err = nix::unistd::execve(exe, args, env).unwrap_err();
    Err(format!("exec {}: {err}", spec.process.args[0]))
}

/// Enters the process's working directory, resolved inside the container's root (which is
/// `/` by now) the safe way: a symlink there, however planted, cannot lead out of it. The
/// init creates a missing one, as other runtimes do; an exec does not.
pub fn enter_working_dir(spec: &Spec, create: bool) -> Result<()> {
    let cwd = if spec.process.cwd.is_empty() {
        "/"
    } else {
        spec.process.cwd.as_str()
    };
    let root = RootDir::open_crossing_mounts(Path::new("/"))
        .map_err(ctx(|| "opening the container's root".into()))?;
    if create {
        root.ensure_dir(Path::new(cwd))
            .map_err(ctx(|| format!("creating working directory {cwd}")))?;
    }
    root.enter_dir(Path::new(cwd))
        .map_err(ctx(|| format!("entering working directory {cwd}")))
}

/// Applies the OOM score adjustment. Lowering it needs CAP_SYS_RESOURCE, which some hosts'
/// root lacks: then the inherited value stays and the monitor is told; the start goes on.
pub fn set_oom_score_adj(spec: &Spec, sync: &mut impl Write) {
    let Some(adj) = spec.process.oom_score_adj else {
        return;
    };
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
        let _ = writeln!(sync, "warning: oom_score_adj {adj} not applied: {e}");
    }
}

/// The spec's resource limits, as root (raising a hard limit needs it).
pub fn set_rlimits(spec: &Spec) -> Result<()> {
    use rustix::process::{Resource, Rlimit};
    for limit in &spec.process.rlimits {
        let resource = match limit.kind.as_str() {
            "RLIMIT_AS" => Resource::As,
            "RLIMIT_CORE" => Resource::Core,
            "RLIMIT_CPU" => Resource::Cpu,
            "RLIMIT_DATA" => Resource::Data,
            "RLIMIT_FSIZE" => Resource::Fsize,
            "RLIMIT_LOCKS" => Resource::Locks,
            "RLIMIT_MEMLOCK" => Resource::Memlock,
            "RLIMIT_MSGQUEUE" => Resource::Msgqueue,
            "RLIMIT_NICE" => Resource::Nice,
            "RLIMIT_NOFILE" => Resource::Nofile,
            "RLIMIT_NPROC" => Resource::Nproc,
            "RLIMIT_RSS" => Resource::Rss,
            "RLIMIT_RTPRIO" => Resource::Rtprio,
            "RLIMIT_RTTIME" => Resource::Rttime,
            "RLIMIT_SIGPENDING" => Resource::Sigpending,
            "RLIMIT_STACK" => Resource::Stack,
            other => return Err(format!("unknown resource limit {other}")),
        };
        rustix::process::setrlimit(
            resource,
            Rlimit {
                current: Some(limit.soft),
                maximum: Some(limit.hard),
            },
        )
        .map_err(ctx(|| format!("setting {} to {}", limit.kind, limit.hard)))?;
    }
    Ok(())
}

/// The container's user, groups, capabilities and no_new_privs.
fn become_container_user(spec: &Spec) -> Result<()> {
    drop_privileges(spec)?;
    if spec.process.no_new_privileges {
        rustix::thread::set_no_new_privs(true).map_err(ctx(|| "no_new_privs".into()))?;
    }
    Ok(())
}

/// Becomes the container's user and execs `spec.process.args` with its environment (and
/// its seccomp filter), for a process joining a running container. Returns only on failure.
pub fn exec_as_container(spec: &Spec, seccomp: Option<&[u8]>) -> Result<std::convert::Infallible> {
    let exe = resolve_executable(spec)?;
    let args = cstrings(&spec.process.args)?;
    let env = cstrings(&spec.process.env)?;
    confine_and_exec(spec, &exe, &args, &env, seccomp, &[])
}

fn cstrings(items: &[String]) -> Result<Vec<CString>> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte")))
        .collect()
}

fn enter_namespaces(spec: &Spec) -> Result<()> {
    let mut fresh = CloneFlags::CLONE_NEWNS;
    for ns in &spec.linux.namespaces {
        let flag = match ns.kind.as_str() {
            "network" => CloneFlags::CLONE_NEWNET,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "uts" => CloneFlags::CLONE_NEWUTS,
            "mount" => CloneFlags::CLONE_NEWNS,
            // The monitor made the PID namespace before forking us.
            "pid" => continue,
            other => return Err(format!("unsupported namespace {other:?}")),
        };
        match &ns.path {
            Some(path) => {
                let file =
                    File::open(path).map_err(ctx(|| format!("opening {}", path.display())))?;
                setns(file.as_fd(), flag).map_err(ctx(|| {
                    format!("joining {} namespace {}", ns.kind, path.display())
                }))?;
            }
            None => fresh |= flag,
        }
    }
    unshare(fresh).map_err(ctx(|| "unshare".into()))
}

/// Cuts this mount namespace off from the host's mount events. Normally every mount
/// becomes a slave: host mounts still show through (rslave volumes), nothing flows back.
/// A bidirectional (rshared) volume needs its source to stay a peer of the host's mount,
/// so then the host's mounts stay shared and only the mount holding the rootfs is made
/// private: the rootfs and everything mounted in it are private from the start, and only
/// the volume's bind joins the host's peer group.
fn isolate_mounts(spec: &Spec) -> Result<()> {
    let bidirectional = spec
        .mounts
        .iter()
        .any(|m| m.options.iter().any(|o| o == "rshared"));
    if !bidirectional {
        return mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(ctx(|| "making / a slave mount".into()));
    }
    let parent = crate::sys::mount::mount_point_of(&spec.root.path)
        .ok_or_else(|| format!("no mount holds {}", spec.root.path.display()))?;
    mount(
        None::<&str>,
        &parent,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx(|| format!("making {} private", parent.display())))
}

/// The rootfs: an overlay of the init layer and the image's layers (read-only, top-most
/// first) under the container's read-write layer. The new mount API's `lowerdir+` takes
/// one layer per call, so there is no page-size limit on how many layers an image has.
fn mount_overlay(spec: &Spec) -> Result<()> {
    let s = &spec.strata;
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(ctx(|| "fsopen(overlay)".into()))?;
    let fail = |what: String, e: rustix::io::Errno| {
        // The kernel explains a rejected parameter on the fs descriptor.
        let mut detail = String::new();
        let mut buf = [0u8; 512];
        if let Ok(n) = rustix::io::read(&fs, &mut buf) {
            detail = format!(" ({})", String::from_utf8_lossy(&buf[..n]).trim());
        }
        format!("{what}: {e}{detail}")
    };
    for lower in &s.lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower)
            .map_err(|e| fail(format!("overlay lower layer {}", lower.display()), e))?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", &s.upper)
        .map_err(|e| fail("overlay upperdir".into(), e))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", &s.work)
        .map_err(|e| fail("overlay workdir".into(), e))?;
    rustix::mount::fsconfig_create(&fs).map_err(|e| fail("creating the overlay".into(), e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| fail("fsmount".into(), e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        &spec.root.path,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(ctx(|| {
        format!("mounting the rootfs on {}", spec.root.path.display())
    }))
}

/// Splits mount options into flags and filesystem data.
fn mount_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "rprivate" => propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "private" => propagation |= MsFlags::MS_PRIVATE,
            "rslave" => propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "slave" => propagation |= MsFlags::MS_SLAVE,
            "rshared" => propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            "shared" => propagation |= MsFlags::MS_SHARED,
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data.join(","))
}

/// Mounts everything in the spec, each at a target resolved inside the rootfs (a symlink
/// in the image cannot send a mount outside it).
fn mount_all(spec: &Spec, root: &Path) -> Result<()> {
    let rootdir = RootDir::open_crossing_mounts(root)
        .map_err(ctx(|| format!("opening rootfs {}", root.display())))?;
    for m in &spec.mounts {
        let (flags, propagation, data) = mount_options(&m.options);
        let dest = Path::new(&m.destination);
        let is_bind = flags.contains(MsFlags::MS_BIND);
        let source_is_file =
            is_bind && Path::new(&m.source).metadata().is_ok_and(|md| !md.is_dir());
        if source_is_file {
            rootdir
                .ensure_file(dest)
                .map_err(ctx(|| format!("creating mount point {}", m.destination)))?;
        } else {
            rootdir
                .ensure_dir(dest)
                .map_err(ctx(|| format!("creating mount point {}", m.destination)))?;
        }
        let target = rustix::fs::openat2(
            rootdir_fd(&rootdir),
            dest.strip_prefix("/").unwrap_or(dest),
            OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(ctx(|| format!("resolving mount point {}", m.destination)))?;
        let target_path = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
        let source = if m.source.is_empty() {
            m.kind.clone()
        } else {
            m.source.clone()
        };
        let fstype = if is_bind { None } else { Some(m.kind.as_str()) };
        let data_opt = if data.is_empty() {
            None
        } else {
            Some(data.as_str())
        };
        mount(
            Some(source.as_str()),
            &target_path,
            fstype,
            flags & !MsFlags::MS_RDONLY
                | if is_bind {
                    MsFlags::empty()
                } else {
                    flags & MsFlags::MS_RDONLY
                },
            data_opt,
        )
        .map_err(ctx(|| format!("mounting {} on {}", source, m.destination)))?;
        // `target` still names the directory under the new mount; what follows acts on the
        // mount itself, so resolve the path again.
        let mounted = rustix::fs::openat2(
            rootdir_fd(&rootdir),
            dest.strip_prefix("/").unwrap_or(dest),
            OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(ctx(|| format!("resolving mount {}", m.destination)))?;
        let target_path = PathBuf::from(format!("/proc/self/fd/{}", mounted.as_raw_fd()));
        // A bind mount takes its read-only flag (and nosuid…) only on a remount.
        if is_bind
            && flags.intersects(
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )
        {
            let remount = MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | (flags
                    & (MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC));
            mount(
                None::<&str>,
                &target_path,
                None::<&str>,
                remount,
                None::<&str>,
            )
            .map_err(ctx(|| format!("remounting {} read-only", m.destination)))?;
        }
        if !propagation.is_empty() {
            mount(
                None::<&str>,
                &target_path,
                None::<&str>,
                propagation,
                None::<&str>,
            )
            .map_err(ctx(|| format!("setting propagation of {}", m.destination)))?;
        }
        if m.destination == "/dev" && !is_bind {
            populate_dev(&target_path)?;
        }
    }
    Ok(())
}

fn rootdir_fd(rootdir: &RootDir) -> std::os::fd::BorrowedFd<'_> {
    rootdir.as_fd()
}

/// The standard device nodes and links of a container's /dev.
fn populate_dev(dev: &Path) -> Result<()> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(ctx(|| format!("mknod {}", path.display())))?;
        // mknod is subject to the umask; the mode must be exact.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(ctx(|| format!("chmod {}", path.display())))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name))
            .map_err(ctx(|| format!("symlink /dev/{name}")))?;
    }
    for dir in ["pts", "shm", "mqueue"] {
        std::fs::create_dir_all(dev.join(dir)).map_err(ctx(|| format!("mkdir /dev/{dir}")))?;
    }
    Ok(())
}

/// The device nodes the request maps, made in the container's /dev (after the pivot, so
/// resolved inside the container's root only).
fn make_devices(spec: &Spec) -> Result<()> {
    if spec.linux.devices.is_empty() {
        return Ok(());
    }
    let root = RootDir::open_crossing_mounts(Path::new("/"))
        .map_err(ctx(|| "opening the container's root".into()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for d in &spec.linux.devices {
        let kind = match d.kind.as_str() {
            "b" => NodeKind::Block,
            _ => NodeKind::Char,
        };
        let attrs = Attrs {
            uid: d.uid,
            gid: d.gid,
            mode: d.file_mode,
            mtime_secs: now,
            mtime_nanos: 0,
        };
        root.mknod(Path::new(&d.path), kind, d.major, d.minor, &attrs)
            .map_err(ctx(|| format!("making device {}", d.path)))?;
    }
    Ok(())
}

fn pivot(root: &Path) -> Result<()> {
    let old_root = File::open("/").map_err(ctx(|| "opening /".into()))?;
    std::env::set_current_dir(root).map_err(ctx(|| format!("chdir {}", root.display())))?;
    rustix::process::pivot_root(".", ".").map_err(ctx(|| "pivot_root".into()))?;
    // The old root is now stacked on the new one. Entered through a descriptor (a path
    // would name the new root, under it), it is made a slave, so that detaching it
    // cannot propagate to the host (its mounts may still be shared), then detached.
    rustix::process::fchdir(&old_root).map_err(ctx(|| "entering the old root".into()))?;
    drop(old_root);
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(ctx(|| "making the old root a slave".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ctx(|| "detaching the old root".into()))?;
    std::env::set_current_dir("/").map_err(ctx(|| "chdir /".into()))
}

fn mask_and_protect(spec: &Spec) -> Result<()> {
    for path in &spec.linux.masked_paths {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let result = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                path.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.map_err(ctx(|| format!("masking {path}")))?;
    }
    for path in &spec.linux.readonly_paths {
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(
            Some(path.as_str()),
            path.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| {
            mount(
                None::<&str>,
                path.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            )
        })
        .map_err(ctx(|| format!("making {path} read-only")))?;
    }
    Ok(())
}

/// The entrypoint as a path: as given if it has a '/', else searched in the container's PATH.
fn resolve_executable(spec: &Spec) -> Result<CString> {
    let arg0 = spec.process.args.first().ok_or("no command to run")?;
    if arg0.contains('/') {
        return CString::new(arg0.as_bytes()).map_err(|_| "command contains a NUL byte".into());
    }
    let path = spec
        .process
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
        {
            return CString::new(candidate.to_string_lossy().as_bytes())
                .map_err(|_| "bad path".into());
        }
    }
    Err(format!("exec {arg0}: executable file not found in $PATH"))
}

fn drop_privileges(spec: &Spec) -> Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let allowed = capability_set(&spec.process.capabilities.bounding)?;
    crate::sys::process::limit_bounding_set(allowed)
        .map_err(ctx(|| "dropping capabilities from the bounding set".into()))?;
    let user = &spec.process.user;
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(ctx(|| "setgroups".into()))?;
    nix::unistd::setresgid(
        Gid::from_raw(user.gid),
        Gid::from_raw(user.gid),
        Gid::from_raw(user.gid),
    )
    .map_err(ctx(|| format!("setgid {}", user.gid)))?;
    nix::unistd::setresuid(
        Uid::from_raw(user.uid),
        Uid::from_raw(user.uid),
        Uid::from_raw(user.uid),
    )
    .map_err(ctx(|| format!("setuid {}", user.uid)))?;
    // A process can only keep capabilities it has: on a host whose root lacks some (say
    // CAP_SYS_RESOURCE), "all" means all of root's.
    let held = rustix::thread::capabilities(None)
        .map_err(ctx(|| "reading capabilities".into()))?
        .permitted;
    let effective = capability_set(&spec.process.capabilities.effective)? & held;
    let permitted = capability_set(&spec.process.capabilities.permitted)? & held;
    if user.uid == 0 {
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective,
                permitted,
                inheritable: CapabilitySet::empty(),
            },
        )
        .map_err(ctx(|| "setting capabilities".into()))?;
    }
    Ok(())
}

fn capability_set(names: &[String]) -> Result<rustix::thread::CapabilitySet> {
    let mut set = rustix::thread::CapabilitySet::empty();
    for name in names {
        set |=
            crate::runtime::caps::bit(name).ok_or_else(|| format!("unknown capability {name}"))?;
    }
    Ok(set)
}

/// Borrows a raw descriptor number for one call.
#[allow(unsafe_code)]
fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for fcntl(F_SETFD), which fails harmlessly on a closed descriptor;
    // the borrow does not outlive the call.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Marks every descriptor but 0-2 and `keep` close-on-exec, so the entrypoint starts with
/// exactly its standard streams.
fn close_other_fds(keep: &[i32]) -> Result<()> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(ctx(|| "listing /proc/self/fd".into()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // Descriptors that vanished meanwhile (the directory listing's own) are fine.
            let _ = rustix::io::fcntl_setfd(unsafe_borrow(fd), rustix::io::FdFlags::CLOEXEC);
        }
    }
    Ok(())
}
