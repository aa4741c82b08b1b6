//! `stratad __exec PID LEAF -- CMD...`, the container's DIR on stdin (the child is visible
//! in the container's PID namespace until it execs, and its command line with it): runs a
//! command inside a running container for ExecSync. It joins the exec's leaf below the container's cgroup (which the daemon made,
//! and kills and removes when the call ends, with whatever the command left there) and
//! the namespaces of the container's init (PID), then forks so that the child is inside
//! the container's PID namespace. The child enters the working directory the safe way,
//! takes the container's OOM score, rlimits, user, capabilities and environment, and
//! execs. The helper exits with the command's status; the child dies with it
//! (PDEATHSIG).
#![allow(unsafe_code)] // fork()

use std::{fs::File, os::fd::AsFd, path::PathBuf, process::ExitCode};

use nix::{
    sched::{CloneFlags, setns},
    sys::{
        signal::{SigSet, Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, fork},
};

use super::init;
use crate::{cgroup, runtime::spec::Spec};

pub const EXEC: &str = "__exec";

pub fn main(args: &[String]) -> ExitCode {
    let mut line = String::new();
    let (dir, pid, leaf, command) = match args {
        [pid, leaf, sep, command @ ..]
            if sep == "--"
                && !command.is_empty()
                && std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 1) =>
        {
            (
                PathBuf::from(line.trim_end_matches('\n')),
                pid,
                leaf,
                command,
            )
        }
        _ => {
            eprintln!("usage: echo CONTAINER_DIR | stratad {EXEC} PID LEAF -- CMD...");
            return ExitCode::from(126);
        }
    };
    match run(&dir, pid, leaf, command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stratad exec: {e}");
            ExitCode::from(126)
        }
    }
}

fn run(dir: &std::path::Path, pid: &str, leaf: &str, command: &[String]) -> Result<u8, String> {
    // Nothing in the container may ptrace or read /proc of the helper or of the child
    // before it execs (the child keeps this across fork; exec resets it).
    crate::sys::process::set_non_dumpable().map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    if !leaf.starts_with(cgroup::EXEC_LEAF_PREFIX) {
        return Err(format!("bad exec cgroup {leaf:?}"));
    }
    let spec: Spec = serde_json::from_slice(
        &std::fs::read(dir.join("config.json")).map_err(|e| format!("config.json: {e}"))?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    let pid: u32 = pid.parse().map_err(|_| format!("bad pid {pid:?}"))?;
    // Open every namespace first: once in the container's mount namespace, the host's
    // /proc is out of reach.
    let mut namespaces = Vec::new();
    for (kind, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let file = File::open(format!("/proc/{pid}/ns/{kind}"))
            .map_err(|e| format!("the container is not running ({kind}: {e})"))?;
        namespaces.push((kind, flag, file));
    }
    // The pid must still be the container's init: it is in the container's cgroup.
    let container = cgroup::Hierarchy::detect(&spec.strata.cgroup_root)
        .and_then(|h| h.cgroup(&spec.linux.cgroups_path))
        .map_err(|e| e.to_string())?;
    if !container.holds_container_process(pid) {
        return Err("the container is not running".into());
    }
    container
        .child(leaf)
        .and_then(|c| c.add_pid(std::process::id()))
        .map_err(|e| format!("joining the exec's cgroup: {e}"))?;
    // Read while the host's paths are still in reach.
    let seccomp = init::read_seccomp(&spec)?;
    for (kind, flag, file) in &namespaces {
        // Sharing the host's namespace (a host-network pod): nothing to join.
        if std::fs::metadata(format!("/proc/self/ns/{kind}"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            == file
                .metadata()
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        {
            continue;
        }
        setns(file.as_fd(), *flag).map_err(|e| format!("joining the {kind} namespace: {e}"))?;
    }
    drop(namespaces);
    // Blocked before the fork so that no SIGTERM is lost; the child unblocks them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    // The child holds the read end: it reads EOF once the helper is gone.
    let (alive, alive_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: this helper is single-threaded.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let result = (|| -> Result<std::convert::Infallible, String> {
                signals
                    .thread_unblock()
                    .map_err(|e| format!("unblocking signals: {e}"))?;
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(|e| format!("PDEATHSIG: {e}"))?;
                // The helper may have died before PDEATHSIG was set: then so do we. Its pid
                // says nothing (outside the container's PID namespace it reads as 0, and so
                // does the host init that would adopt us); the pipe does.
                drop(alive_w);
                let mut fds = [nix::poll::PollFd::new(
                    alive.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)
                    .map_err(|e| format!("poll: {e}"))?
                    > 0
                {
                    return Err("the exec helper is gone".into());
                }
                drop(alive);
                init::enter_working_dir(&spec, false)?;
                // The container's process attributes, not the daemon's: its OOM score (a
                // refused lowering leaves the inherited one, as for the init) and rlimits.
                init::set_oom_score_adj(&spec, &mut std::io::sink());
                init::set_rlimits(&spec)?;
                let mut process = spec.process.clone();
                process.args = command.to_vec();
                let exec_spec = Spec {
                    process,
                    ..spec.clone()
                };
                init::exec_as_container(&exec_spec, seccomp.as_deref())
            })();
            let e = match result {
                Err(e) => e,
                Ok(never) => match never {},
            };
            eprintln!("stratad exec: {e}");
            std::process::exit(if e.contains("not found") { 127 } else { 126 });
        }
        // The helper stays the command's parent until it has reaped it: were it to die
        // first, the command would become an orphan of the *host's* PID 1 (orphans go to
        // the init of the dying parent's namespace). So the daemon's timeout is a SIGTERM,
        // on which the helper kills the command and waits for it.
        ForkResult::Parent { child } => {
            drop(alive);
            let _alive = alive_w;
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code as u8),
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        return Ok(128u8.wrapping_add(signal as u8));
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("waiting for the command: {e}")),
                }
                if let Ok(Signal::SIGTERM) = signals.wait() {
                    let _ = kill(child, Signal::SIGKILL);
                }
            }
        }
    }
}
