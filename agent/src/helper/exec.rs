//! `stratad __exec DIR PID -- CMD...`: runs a command inside a running container for
//! ExecSync. It joins the container's cgroup and namespaces (those of its init, PID), forks
//! so that the child is inside the container's PID namespace, and the child takes the
//! container's user, capabilities and environment and execs. It exits with the command's
//! status. The child dies with it (PDEATHSIG), so killing it on timeout kills the command.
#![allow(unsafe_code)] // fork()

use std::{fs::File, os::fd::AsFd, path::PathBuf, process::ExitCode};

use nix::{
    sched::{CloneFlags, setns},
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, fork},
};

use crate::{cgroup, runtime::spec::Spec};

pub const EXEC: &str = "__exec";

pub fn main(args: &[String]) -> ExitCode {
    let (dir, pid, command) = match args {
        [dir, pid, sep, command @ ..] if sep == "--" && !command.is_empty() => {
            (PathBuf::from(dir), pid, command)
        }
        _ => {
            eprintln!("usage: stratad {EXEC} CONTAINER_DIR PID -- CMD...");
            return ExitCode::from(126);
        }
    };
    match run(&dir, pid, command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stratad exec: {e}");
            ExitCode::from(126)
        }
    }
}

fn run(dir: &std::path::Path, pid: &str, command: &[String]) -> Result<u8, String> {
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
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let wanted = format!("/{}", spec.linux.cgroups_path.trim_start_matches('/'));
    if !cgroups.lines().any(|l| l.ends_with(&wanted)) {
        return Err("the container is not running".into());
    }
    let hierarchy =
        cgroup::Hierarchy::detect(&spec.strata.cgroup_root).map_err(|e| e.to_string())?;
    hierarchy
        .cgroup(&spec.linux.cgroups_path)
        .and_then(|c| c.add_pid(std::process::id()))
        .map_err(|e| format!("joining the container's cgroup: {e}"))?;
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
    // SAFETY: this helper is single-threaded.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let result = (|| -> Result<std::convert::Infallible, String> {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(|e| format!("PDEATHSIG: {e}"))?;
                let cwd = if spec.process.cwd.is_empty() {
                    "/"
                } else {
                    spec.process.cwd.as_str()
                };
                std::env::set_current_dir(cwd).map_err(|e| format!("entering {cwd}: {e}"))?;
                let mut process = spec.process.clone();
                process.args = command.to_vec();
                let exec_spec = Spec {
                    process,
                    ..spec.clone()
                };
                super::init::exec_as_container(&exec_spec)
            })();
            let e = match result {
                Err(e) => e,
                Ok(never) => match never {},
            };
            eprintln!("stratad exec: {e}");
            std::process::exit(if e.contains("not found") { 127 } else { 126 });
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code as u8),
                Ok(WaitStatus::Signaled(_, signal, _)) => {
                    return Ok(128u8.wrapping_add(signal as u8));
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("waiting for the command: {e}")),
            }
        },
    }
}
