//! Confining a helper that containers can see: the pod's PID-namespace holder is PID 1 of
//! every container sharing the pod's processes, so `/proc/1/{root,cwd,fd,exe}` must lead
//! nowhere. Like a pause container, it gets namespaces of its own, an empty read-only
//! root, no open files, no capabilities and no user of consequence.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, unshare},
    unistd::{Gid, Uid},
};

/// The unprivileged user the holder runs as: the pause image's 65535, which no container
/// is expected to share (65534, "nobody", is common in images).
const NOBODY: u32 = 65535;

/// Confines the calling process for good; `keep` is the one descriptor it keeps open (to
/// report on). Must run single-threaded, as root.
pub fn confine_holder(keep: BorrowedFd<'_>) -> io::Result<()> {
    // Listed while /proc is still there: whatever the daemon's start left open goes too.
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&fd| fd != keep.as_raw_fd())
        .collect();
    // Fresh namespaces: nothing of the host's (or the pod's) mounts, network, IPC or name.
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    // An empty tmpfs becomes the root; any directory serves as the mount point, since
    // the old root is detached right after.
    let new_root = Path::new("/dev");
    mount(
        Some("none"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=4k,nr_inodes=1,mode=0555"),
    )?;
    std::env::set_current_dir(new_root)?;
    rustix::process::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    std::env::set_current_dir("/")?;
    // No descriptor to anything outside: not even the host's /dev/null. (The listing's
    // own descriptor is among them, closed already: that close fails harmlessly.)
    for fd in open {
        let _ = nix::unistd::close(fd);
    }
    // Nobody, with no groups and so no capabilities; never to gain any back.
    super::process::limit_bounding_set(rustix::thread::CapabilitySet::empty())?;
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(
        Gid::from_raw(NOBODY),
        Gid::from_raw(NOBODY),
        Gid::from_raw(NOBODY),
    )?;
    nix::unistd::setresuid(
        Uid::from_raw(NOBODY),
        Uid::from_raw(NOBODY),
        Uid::from_raw(NOBODY),
    )?;
    rustix::thread::set_no_new_privs(true)?;
    // After the uid change, which resets it: /proc/1 of the pod is root's, unreadable.
    super::process::set_non_dumpable()
}
