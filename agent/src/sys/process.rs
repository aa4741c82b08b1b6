//! Signalling a process by pid without ever hitting a recycled one.

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// Sends `signal` to `pid` if `is_ours` says the process is the one meant. The check runs
/// after a pidfd pins the process, so the pid cannot be recycled between the check and the
/// signal. A process that is gone is not an error: there is nothing left to signal.
pub fn signal_if(pid: u32, signal: Signal, is_ours: impl FnOnce() -> bool) {
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let Ok(pidfd) = pidfd_open(raw, PidfdFlags::empty()) else {
        return;
    };
    if is_ours() {
        let _ = pidfd_send_signal(&pidfd, signal);
    }
}

/// Ends this process at once, as a crash would: SIGKILL to itself (no unwinding, no
/// destructors, no flushing), for the tests' crash points.
#[cfg(debug_assertions)]
pub fn crash() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
    std::process::abort()
}

/// Kills every process of the group `pgid`, one the caller's child leads. A group's id is
/// not given to another process while any member of the group lives.
pub fn kill_group(pgid: u32) {
    if let Some(pgid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    }
}

/// The effective uid and gid and the supplementary groups a process has now
/// (`/proc/<pid>/status`).
pub fn ids(pid: u32) -> Option<(u32, u32, Vec<u32>)> {
    parse_ids(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_ids(status: &str) -> Option<(u32, u32, Vec<u32>)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    let effective = |name: &str| field(name)?.get(1)?.parse().ok();
    let groups = field("Groups:")?
        .iter()
        .map(|g| g.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    Some((effective("Uid:")?, effective("Gid:")?, groups))
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat`, field 22): with the
/// pid, it names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_after_name(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` is alive: there, and neither a zombie nor dead (a zombie's exit status only
/// waits for its parent, or for the node's init, to collect it).
pub fn is_alive(pid: u32) -> bool {
    stat_after_name(pid)
        .and_then(|fields| fields.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// This process's resident memory (bytes) and open file descriptors.
pub fn own_usage() -> (u64, usize) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024);
    // One of them is the directory being read.
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0);
    (rss, fds)
}

/// One interface's counters, from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
}

/// The interfaces of the network namespace `pid` is in, with their counters.
pub fn net_dev(pid: u32) -> Vec<Interface> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .map(|text| parse_net_dev(&text))
        .unwrap_or_default()
}

fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            (n.len() >= 11).then(|| Interface {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
            })
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` from the third (the state) on. The command name
/// (field 2) may hold spaces and parentheses: fields are counted from its end.
fn stat_after_name(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Drops every capability not in `keep` from the bounding set, for good (needs
/// CAP_SETPCAP). Bits the kernel does not have are skipped.
pub fn limit_bounding_set(keep: rustix::thread::CapabilitySet) -> std::io::Result<()> {
    use rustix::thread::{
        CapabilitySet, capability_is_in_bounding_set, remove_capability_from_bounding_set,
    };
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1u64 << bit);
        if !keep.contains(cap) && capability_is_in_bounding_set(cap).unwrap_or(false) {
            remove_capability_from_bounding_set(cap)?;
        }
    }
    Ok(())
}

/// Makes this process non-dumpable: its /proc entries become root's and unreadable to
/// the rest, and nothing can ptrace it without CAP_SYS_PTRACE. An exec resets it.
pub fn set_non_dumpable() -> std::io::Result<()> {
    Ok(rustix::process::set_dumpable_behavior(
        rustix::process::DumpableBehavior::NotDumpable,
    )?)
}

/// Borrows a raw descriptor number for one call.
#[allow(unsafe_code)]
fn borrow_raw(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for fcntl(F_SETFD), which fails harmlessly on a closed descriptor;
    // the borrow does not outlive the call.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Marks every descriptor but 0-2 and `keep` close-on-exec, so that what runs next starts
/// with exactly its standard streams.
pub fn close_other_fds(keep: &[i32]) -> std::io::Result<()> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // Descriptors that vanished meanwhile (the directory listing's own) are fine.
            let _ = rustix::io::fcntl_setfd(borrow_raw(fd), rustix::io::FdFlags::CLOEXEC);
        }
    }
    Ok(())
}

/// Which side of a [`fork`] this is.
pub enum Forked {
    Child,
    Parent(nix::unistd::Pid),
}

/// Proof that the process was single-threaded when it was checked: helpers take it at
/// their start (while /proc is still the host's) and never start threads. Not `Send`.
pub struct SingleThreaded(std::marker::PhantomData<*const ()>);

/// Checks that this process has one thread.
pub fn single_threaded() -> std::io::Result<SingleThreaded> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Err(std::io::Error::other(
            "the process is not single-threaded: it may not fork",
        ));
    }
    Ok(SingleThreaded(std::marker::PhantomData))
}

/// Forks this (single-threaded) process: only then may the child run arbitrary code, as
/// no other thread can hold a lock the child would need.
pub fn fork(_: &SingleThreaded) -> std::io::Result<Forked> {
    #[allow(unsafe_code)]
    // SAFETY: the process has one thread (the token says so), so the child may run any code.
    let forked = unsafe { nix::unistd::fork() }?;
    Ok(match forked {
        nix::unistd::ForkResult::Child => Forked::Child,
        nix::unistd::ForkResult::Parent { child } => Forked::Parent(child),
    })
}

/// The calling process dies with SIGKILL when its parent does.
pub fn die_with_parent() -> std::io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        Signal::KILL,
    ))?)
}

/// Sets the hostname of the calling process's UTS namespace.
pub fn set_hostname(name: &str) -> std::io::Result<()> {
    Ok(nix::unistd::sethostname(name)?)
}

/// A pidfd of the process `pid` if it is the one that started at `started` (checked after
/// the pidfd pins it): it turns readable when the process exits.
pub fn pidfd_of(pid: u32, started: u64) -> Option<std::os::fd::OwnedFd> {
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw)?;
    let pidfd = pidfd_open(raw, PidfdFlags::empty()).ok()?;
    (start_time(pid) == Some(started)).then_some(pidfd)
}

/// Gives every signal its default action back. An ignored signal stays ignored across
/// execve, and the agent's processes ignore some: the Rust runtime ignores SIGPIPE, the C
/// library's own signals (32, 33) come through ignored, and a daemon started from a shell's
/// background or under nohup inherits SIGQUIT or SIGHUP ignored. A container's processes
/// must start with none of that (`yes | head` would never end; SIGQUIT would not make a JVM
/// dump its threads).
pub fn reset_signal_dispositions() -> std::io::Result<()> {
    /// The kernel's `struct sigaction` for rt_sigaction(2) (not the C library's, whose
    /// wrapper refuses the signals it keeps for itself).
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        #[allow(unsafe_code)]
        // SAFETY: rt_sigaction reads a valid struct of the kernel's layout and writes
        // nothing (no old action asked for); the default action runs no code of ours.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signo,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets a terminal's window size (TIOCSWINSZ); its foreground process gets SIGWINCH.
pub fn set_window_size(
    terminal: std::os::fd::BorrowedFd<'_>,
    cols: u16,
    rows: u16,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: TIOCSWINSZ reads one winsize, which lives for the call.
    let ret = unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `fd` over the unix socket `socket` (`SCM_RIGHTS`), with one byte beside it.
pub fn send_fd(
    socket: std::os::fd::BorrowedFd<'_>,
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let fds = [fd.as_raw_fd()];
    let payload = [std::io::IoSlice::new(b"f")];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &payload,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives one descriptor [`send_fd`] sent on `socket` (close-on-exec here).
pub fn recv_fd(socket: std::os::fd::BorrowedFd<'_>) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut payload = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut payload,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                #[allow(unsafe_code)]
                // SAFETY: the kernel installed `fd` in this process for this message; it is
                // owned by nobody else.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(owned);
            }
        }
    }
    received.ok_or_else(|| std::io::Error::other("no descriptor came with the message"))
}

#[cfg(test)]
mod fd_passing_tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_crosses_a_socket_and_still_works() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        super::send_fd(a.as_fd(), w.as_fd()).unwrap();
        drop(w);
        let got = super::recv_fd(b.as_fd()).unwrap();
        std::fs::File::from(got).write_all(b"through").unwrap();
        let mut text = String::new();
        std::fs::File::from(r).read_to_string(&mut text).unwrap();
        assert_eq!(text, "through");
        // A message without a descriptor is an error, not a panic.
        (&a).write_all(b"x").unwrap();
        assert!(super::recv_fd(b.as_fd()).is_err());
    }
}

#[cfg(test)]
mod net_dev_tests {
    #[test]
    fn net_dev_is_parsed() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo:    100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
                    eth0: 5000      40    1    0    0     0          0         0     3000      30    2    0    0     0       0          0\n";
        let ifaces = super::parse_net_dev(text);
        assert_eq!(ifaces.len(), 2, "{ifaces:?}");
        assert_eq!(ifaces[1].name, "eth0");
        let eth0 = &ifaces[1];
        assert_eq!(
            (eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors),
            (5000, 40, 1)
        );
        assert_eq!(
            (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors),
            (3000, 30, 2)
        );
    }
}

#[cfg(test)]
mod ids_tests {
    #[test]
    fn ids_are_the_effective_ones_with_every_group() {
        let status =
            "Name:\tsh\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 20 1234 \n";
        assert_eq!(
            super::parse_ids(status),
            Some((1001, 51, vec![4, 20, 1234]))
        );
        assert_eq!(
            super::parse_ids("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"),
            Some((0, 0, vec![]))
        );
        assert_eq!(super::parse_ids("Uid:\t0\t0\t0\t0\n"), None);
        // This process, read from the kernel.
        let (uid, _, _) = super::ids(std::process::id()).unwrap();
        assert_eq!(uid, rustix::process::geteuid().as_raw());
    }
}
