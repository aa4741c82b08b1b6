//! `stratad __exec PID LEAF -- CMD...`, the container's DIR on stdin (the child is visible
//! in the container's PID namespace until it execs, and its command line with it): runs a
//! command inside a running container for ExecSync. It joins the exec's leaf below the container's cgroup (which the daemon made,
//! and kills and removes when the call ends, with whatever the command left there) and
//! the namespaces of the container's init (PID), then forks so that the child is inside
//! the container's PID namespace. The child enters the working directory the safe way,
//! takes the container's OOM score, rlimits, user, capabilities and environment, and
//! execs. The helper exits with the command's status; the child dies with it
//! (PDEATHSIG).

use std::{fs::File, os::fd::AsFd, path::PathBuf, process::ExitCode};

use nix::sys::{
    signal::{SigSet, Signal, kill},
    wait::{WaitPidFlag, WaitStatus, waitpid},
};

use super::{Error, Result, at, init};
use crate::{
    cgroup,
    oci::{Helper, Stage, spec::Spec},
    sys::{
        process::{Forked, fork, single_threaded},
        syscall::{Linux, Namespace, Syscall},
    },
};

/// The first line of stdin, read a byte at a time: what follows it is the command's input
/// (a streaming exec's stdin), which a buffered read would take.
fn first_line() -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(std::io::stdin(), &mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return None,
        }
        if line.len() > 4096 {
            return None;
        }
    }
    String::from_utf8(line).ok().filter(|l| !l.is_empty())
}

pub fn main(args: &[String]) -> ExitCode {
    // `--tty` before `--`: the command gets a terminal.
    let (tty, args) = match args {
        [pid, leaf, flag, rest @ ..] if flag == "--tty" => (
            true,
            [vec![pid.clone(), leaf.clone()], rest.to_vec()].concat(),
        ),
        _ => (false, args.to_vec()),
    };
    let line = match args.as_slice() {
        [_, _, sep, command @ ..] if sep == "--" && !command.is_empty() => first_line(),
        _ => None,
    };
    let (dir, pid, leaf, command) = match (args.as_slice(), line) {
        ([pid, leaf, _, command @ ..], Some(line)) => (PathBuf::from(line), pid, leaf, command),
        _ => {
            eprintln!(
                "usage: echo CONTAINER_DIR | stratad {} PID LEAF -- CMD...",
                Helper::Exec.arg()
            );
            return ExitCode::from(126);
        }
    };
    match run(&dir, pid, leaf, command, tty) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stratad exec: {e}");
            ExitCode::from(126)
        }
    }
}

fn run(dir: &std::path::Path, pid: &str, leaf: &str, command: &[String], tty: bool) -> Result<u8> {
    let mut sys = Linux::default();
    let one_thread = single_threaded().map_err(at(Stage::Setup, || "fork".into()))?;
    // Nothing in the container may ptrace or read /proc of the helper or of the child
    // before it execs (the child keeps this across fork; exec resets it).
    sys.set_non_dumpable()
        .map_err(at(Stage::Setup, || "prctl(PR_SET_DUMPABLE)".into()))?;
    if !leaf.starts_with(cgroup::EXEC_LEAF_PREFIX) {
        return Err(Error::Usage(format!("bad exec cgroup {leaf:?}")));
    }
    let spec: Spec = serde_json::from_slice(
        &std::fs::read(dir.join("config.json"))
            .map_err(at(Stage::Setup, || "reading config.json".into()))?,
    )
    .map_err(|e| Error::Spec(format!("config.json: {e}")))?;
    let pid: u32 = pid
        .parse()
        .map_err(|_| Error::Usage(format!("bad pid {pid:?}")))?;
    let not_running = |what: String| {
        move |e: std::io::Error| Error::Sys {
            stage: Stage::Namespaces,
            what: format!("the container is not running ({what})"),
            source: e,
        }
    };
    // Open every namespace first: once in the container's mount namespace, the host's
    // /proc is out of reach. Paths through /proc/self/fd keep them reachable.
    let mut namespaces = Vec::new();
    for kind in [
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Network,
        Namespace::Pid,
        Namespace::Mount,
    ] {
        let file = File::open(format!("/proc/{pid}/ns/{}", kind.proc_name()))
            .map_err(not_running(format!("its {} namespace", kind.proc_name())))?;
        namespaces.push((kind, file));
    }
    // The pid must still be the container's init: it is in the container's cgroup.
    let cgroup_err = |what: &str| {
        let what = what.to_string();
        move |e: cgroup::Error| Error::Sys {
            stage: Stage::Cgroup,
            what,
            source: std::io::Error::other(e.to_string()),
        }
    };
    let container = cgroup::Hierarchy::detect(&spec.strata.cgroup_root)
        .and_then(|h| h.cgroup(&spec.linux.cgroups_path))
        .map_err(cgroup_err("the container's cgroup"))?;
    if !container.holds_container_process(pid) {
        return Err(not_running(format!("pid {pid} is not in its cgroup"))(
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    container
        .child(leaf)
        .and_then(|c| c.add_pid(std::process::id()))
        .map_err(cgroup_err("joining the exec's cgroup"))?;
    // Read while the host's paths are still in reach.
    let seccomp = init::read_seccomp(&spec)?;
    for (kind, file) in &namespaces {
        // Sharing the host's namespace (a host-network pod): nothing to join.
        let ino = |m: std::fs::Metadata| std::os::unix::fs::MetadataExt::ino(&m);
        if std::fs::metadata(format!("/proc/self/ns/{}", kind.proc_name()))
            .ok()
            .map(ino)
            == file.metadata().ok().map(ino)
        {
            continue;
        }
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(file)
        ));
        sys.join(*kind, &path).map_err(at(Stage::Namespaces, || {
            format!("joining the {} namespace", kind.proc_name())
        }))?;
    }
    drop(namespaces);
    // In the container's mount namespace by now: the pty is its devpts'.
    let terminal = if tty { Some(super::tty::open()?) } else { None };
    // Blocked before the fork so that no SIGTERM is lost; the child unblocks them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    signals
        .thread_block()
        .map_err(at(Stage::Setup, || "blocking signals".into()))?;
    // The child holds the read end: it reads EOF once the helper is gone.
    let (alive, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(at(Stage::Setup, || "pipe".into()))?;
    match fork(&one_thread).map_err(at(Stage::Setup, || "fork".into()))? {
        Forked::Child => {
            let result = (|| -> Result<std::convert::Infallible> {
                signals
                    .thread_unblock()
                    .map_err(at(Stage::Setup, || "unblocking signals".into()))?;
                crate::sys::process::die_with_parent()
                    .map_err(at(Stage::Setup, || "PDEATHSIG".into()))?;
                // The helper may have died before PDEATHSIG was set: then so do we. Its pid
                // says nothing (outside the container's PID namespace it reads as 0, and so
                // does the host init that would adopt us); the pipe does.
                drop(alive_w);
                let mut fds = [nix::poll::PollFd::new(
                    alive.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)
                    .map_err(at(Stage::Setup, || "poll".into()))?
                    > 0
                {
                    return Err(Error::Usage("the exec helper is gone".into()));
                }
                drop(alive);
                if let Some(terminal) = &terminal {
                    terminal.become_controlling()?;
                }
                init::enter_working_dir(&spec, &mut sys, false)?;
                // The container's process attributes, not the daemon's: its OOM score (a
                // refused lowering leaves the inherited one, as for the init) and rlimits.
                init::apply_limits(&spec, &mut sys, &mut |_| {})?;
                let mut process = spec.process.clone();
                process.args = command.to_vec();
                let exec_spec = Spec {
                    process,
                    ..spec.clone()
                };
                init::exec_as_container(&exec_spec, &mut sys, seccomp.as_deref())
            })();
            let e = match result {
                Err(e) => e,
                Ok(never) => match never {},
            };
            eprintln!("stratad exec: {e}");
            std::process::exit(if e.stage() == Stage::NotFound {
                127
            } else {
                126
            });
        }
        // The helper stays the command's parent until it has reaped it: were it to die
        // first, the command would become an orphan of the *host's* PID 1 (orphans go to
        // the init of the dying parent's namespace). So the daemon's timeout is a SIGTERM,
        // on which the helper kills the command and waits for it.
        Forked::Parent(child) => {
            drop(alive);
            let _alive = alive_w;
            if let Some(terminal) = terminal {
                return terminal.relay(child, &signals);
            }
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code as u8),
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        return Ok(128u8.wrapping_add(signal as u8));
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(at(Stage::Setup, || "waiting for the command".into())(e)),
                }
                if let Ok(Signal::SIGTERM) = signals.wait() {
                    let _ = kill(child, Signal::SIGKILL);
                }
            }
        }
    }
}
