//! The per-container monitor (`stratad __monitor`, its container's DIR on stdin):
//! single-threaded, no async runtime.
//! It forks the container's init (into a new PID namespace when the container has one),
//! puts it in its cgroup, tells the daemon when the container is created, writes the
//! container's output to the CRI log, waits for the exit, and records it in `DIR/exit.json`,
//! also while the daemon is down.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsFd, OwnedFd},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::wait::{WaitStatus, waitpid},
    unistd::Pid,
};

use super::{
    Error, Result, at,
    attach::Attach,
    init,
    log::{CriLog, Splitter},
};
use crate::{
    cgroup,
    oci::{self, Exit, Message, Stage, spec::Spec},
    state,
    sys::{
        process::{Forked, fork, single_threaded},
        syscall::{Linux, Namespace, Syscall},
    },
};

pub fn main(args: &[String]) -> ExitCode {
    // The container's directory comes on stdin, not in argv: until it execs, the init is
    // this process's copy, and other containers of a pod sharing its PID namespace can read
    // its command line.
    let mut line = String::new();
    if !args.is_empty() || std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty()
    {
        eprintln!(
            "usage: echo CONTAINER_DIR | stratad {}",
            oci::Helper::Monitor.arg()
        );
        return ExitCode::FAILURE;
    }
    let dir = PathBuf::from(line.trim_end_matches('\n'));
    match monitor(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Before "ready" this goes to the daemon; after, to /dev/null (monitor.log has
            // the reason through eprintln below).
            let failure = Message::Failure {
                stage: e.stage(),
                message: e.to_string(),
            };
            let _ = oci::write_message(&mut std::io::stdout(), &failure);
            eprintln!("stratad monitor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(at(Stage::Setup, || "pipe".into()))
}

/// Reads one message line from the init, a byte at a time so that nothing after it is
/// taken from the pipe. End of file: the init died.
fn read_from_init(sync: &OwnedFd) -> Result<Message> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(sync, &mut byte) {
            Ok(1) if byte[0] != b'\n' => line.push(byte[0]),
            Ok(1) => break,
            Ok(_) => {
                return Err(Error::Sys {
                    stage: Stage::Setup,
                    what: "the container's init died while setting up".into(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(at(Stage::Setup, || "reading from the init".into())(e)),
        }
    }
    oci::parse(&String::from_utf8_lossy(&line)).map_err(|e| Error::Spec(e.to_string()))
}

fn monitor(dir: &Path) -> Result<()> {
    let one_thread = single_threaded().map_err(at(Stage::Setup, || "fork".into()))?;
    let spec: Spec = serde_json::from_slice(
        &std::fs::read(dir.join("config.json"))
            .map_err(at(Stage::Setup, || "reading config.json".into()))?,
    )
    .map_err(|e| Error::Spec(format!("config.json: {e}")))?;
    let cgroup_err = |e: cgroup::Error| Error::Sys {
        stage: Stage::Cgroup,
        what: "the container's cgroup".into(),
        source: std::io::Error::other(e.to_string()),
    };
    let cgroups = cgroup::Hierarchy::detect(&spec.strata.cgroup_root).map_err(cgroup_err)?;
    let container = cgroups
        .cgroup(&spec.linux.cgroups_path)
        .map_err(cgroup_err)?;
    let cgroup = container
        .child(cgroup::CONTAINER_LEAF)
        .map_err(cgroup_err)?;
    // Below a systemd scope, the monitor keeps it from being collected until the exit is
    // recorded (an init gone and nothing else left would have systemd remove the cgroup
    // whose OOM counter the exit reads).
    container
        .track(cgroup::MONITOR_LEAF, std::process::id())
        .map_err(cgroup_err)?;
    let oom_before = container.oom_kills();
    // The exit is recorded even if the container fills the disk meanwhile.
    let exit_record = state::Reserved::new(&spec.strata.exit_file, 4096)
        .map_err(at(Stage::Setup, || {
            "reserving room for the exit record".into()
        }))?;

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let terminal = spec.process.terminal;
    // On a terminal the pty is the container's stdin: no pipe.
    let (stdin_r, stdin_w) = match spec.strata.stdin && !terminal {
        true => {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        }
        false => (None, None),
    };
    // The terminal's master comes from the init over this socket.
    let (console, console_init) = match terminal {
        true => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(at(Stage::Setup, || "socketpair".into()))?;
            (Some(ours), Some(OwnedFd::from(theirs)))
        }
        false => (None, None),
    };
    // The PID namespace applies to the children forked after this: the init.
    if let Some(ns) = spec.linux.namespaces.iter().find(|n| n.kind == "pid") {
        let mut sys = Linux::default();
        match &ns.path {
            None => sys.unshare(&[Namespace::Pid]),
            Some(path) => sys.join(Namespace::Pid, path),
        }
        .map_err(at(Stage::Namespaces, || "the PID namespace".into()))?;
    }
    let child = match fork(&one_thread).map_err(at(Stage::Setup, || "fork".into()))? {
        Forked::Child => {
            drop((out_r, err_r, sync_r, go_w, stdin_w, console));
            init::run(
                &spec,
                init::Pipes {
                    go: go_r,
                    sync: sync_w,
                    stdout: out_w,
                    stderr: err_w,
                    stdin: stdin_r,
                    console: console_init,
                },
            )
        }
        Forked::Parent(child) => child,
    };
    drop((out_w, err_w, sync_w, go_r, stdin_r, console_init));
    let ready = (|| {
        cgroup.add_pid(child.as_raw() as u32).map_err(cgroup_err)?;
        File::from(go_w)
            .write_all(b"g")
            .map_err(at(Stage::Setup, || "releasing the init".into()))?;
        match read_from_init(&sync_r)? {
            Message::Ready { .. } => {}
            Message::Failure { stage, message } => return Err(Error::Init { stage, message }),
            other => return Err(Error::Spec(format!("unexpected {other:?} from the init"))),
        }
        // Sent before "ready".
        let master = match &console {
            Some(socket) => Some(
                crate::sys::process::recv_fd(socket.as_fd())
                    .map_err(at(Stage::Setup, || "receiving the terminal".into()))?,
            ),
            None => None,
        };
        // Served before the container is reported created: Attach may come right after.
        let input = match &master {
            Some(master) => Some(
                master
                    .try_clone()
                    .map_err(at(Stage::Setup, || "dup of the terminal".into()))?,
            ),
            None => stdin_w,
        };
        let attach = Attach::bind(dir, input, spec.strata.stdin_once, master.is_some())
            .map_err(at(Stage::Setup, || "serving the attach socket".into()))?;
        Ok((master, attach))
    })();
    let (master, attach) = match ready {
        Ok(ready) => ready,
        Err(e) => {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Err(e);
        }
    };
    drop(console);
    let _ = oci::write_message(
        &mut std::io::stdout(),
        &Message::Ready {
            pid: Some(child.as_raw() as u32),
        },
    );
    detach_stdio(dir);

    // On a terminal its output is the container's one stream, logged as stdout; the
    // pipes, unused, are closed.
    let outputs = match master {
        Some(master) => vec![Some((master, "stdout", Splitter::default()))],
        None => vec![
            Some((out_r, "stdout", Splitter::default())),
            Some((err_r, "stderr", Splitter::default())),
        ],
    };
    let exec_error = pump(&spec, dir, outputs, sync_r, attach);
    let (exit_code, signal) = wait(child);
    let exit = Exit {
        exit_code: if exec_error.is_some() { 128 } else { exit_code },
        signal,
        oom_killed: container.oom_kills() > oom_before,
        exec_error,
        finished_at: crate::clock::now_nanos(),
    };
    let bytes = serde_json::to_vec(&exit).map_err(|e| Error::Spec(e.to_string()))?;
    exit_record
        .commit(&bytes)
        .map_err(at(Stage::Setup, || "recording the exit".into()))
}

/// After "ready" the daemon stops reading: stdin and stdout go to /dev/null and stderr to
/// the container's monitor.log, so a daemon restart cannot break the monitor's streams.
fn detach_stdio(dir: &Path) {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
    }
    if let Ok(log) = File::options()
        .create(true)
        .append(true)
        .open(dir.join("monitor.log"))
    {
        let _ = nix::unistd::dup2_stderr(&log);
    }
}

/// Copies the container's output into the CRI log until both streams close, and watches
/// the sync pipe: it closes at a successful exec, or carries the exec's error.
/// Poll slots from here on are the attach socket's.
const ATTACH_SLOTS: usize = 100;

/// Poll slots of the sync pipe and the control FIFO (the outputs' come first).
const SYNC_SLOT: usize = 90;
const CONTROL_SLOT: usize = 91;

fn pump(
    spec: &Spec,
    dir: &Path,
    mut streams: Vec<Option<(OwnedFd, &'static str, Splitter)>>,
    sync: OwnedFd,
    mut attach: Attach,
) -> Option<String> {
    let mut log = CriLog::open(&spec.strata.log_path);
    let mut sync = Some(sync);
    // ReopenContainerLog writes to this FIFO; opened read-write so it never reads EOF.
    let control = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.join("control"))
        .ok();
    let mut exec_error = None;
    let mut buf = vec![0u8; 64 << 10];
    while streams.iter().any(Option::is_some) || sync.is_some() {
        let mut fds: Vec<PollFd> = Vec::new();
        let mut which = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            if let Some((fd, _, _)) = s {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        if let Some(fd) = &sync {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            which.push(SYNC_SLOT);
        }
        if let Some(file) = &control {
            fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
            which.push(CONTROL_SLOT);
        }
        // Attach slots come after.
        attach.sweep();
        let attach_fds = attach.fds();
        let slots: Vec<_> = attach_fds.iter().map(|(_, slot, _)| *slot).collect();
        for (k, (fd, _, flags)) in attach_fds.iter().enumerate() {
            fds.push(PollFd::new(*fd, *flags));
            which.push(ATTACH_SLOTS + k);
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready: Vec<(usize, PollFlags)> = fds
            .iter()
            .zip(&which)
            .filter_map(|(fd, i)| fd.revents().filter(|r| !r.is_empty()).map(|r| (*i, r)))
            .collect();
        drop(fds);
        drop(attach_fds);
        for (i, events) in ready {
            if i >= ATTACH_SLOTS {
                attach.ready(slots[i - ATTACH_SLOTS], events);
                continue;
            }
            if i == CONTROL_SLOT {
                let mut requests = [0u8; 64];
                let n = control
                    .as_ref()
                    .and_then(|mut f| f.read(&mut requests).ok())
                    .unwrap_or(0);
                if requests[..n].contains(&b'r') {
                    log = CriLog::open(&spec.strata.log_path);
                }
                continue;
            }
            if i == SYNC_SLOT {
                // Read to its end: it closes at the exec, or after the init's failure.
                let Some(fd) = sync.take() else { continue };
                let mut text = String::new();
                let _ = File::from(fd).read_to_string(&mut text);
                for line in text.lines() {
                    match oci::parse(line) {
                        Ok(Message::Warning { message }) => {
                            eprintln!("stratad monitor: {message}")
                        }
                        Ok(Message::Failure { message, .. }) => exec_error = Some(message),
                        Ok(other) => eprintln!("stratad monitor: unexpected {other:?}"),
                        Err(e) => eprintln!("stratad monitor: {e}"),
                    }
                }
                if exec_error.is_none() {
                    let _ = std::fs::write(dir.join("started"), b"");
                }
                continue;
            }
            let Some((fd, stream, splitter)) = &mut streams[i] else {
                continue;
            };
            let stream = *stream;
            match nix::unistd::read(&*fd, &mut buf) {
                // A terminal's master is non-blocking (attach writes to it).
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                // A terminal's master reads EIO once every slave is closed.
                Ok(0) | Err(_) => {
                    splitter.finish(&mut |partial, text| log.line(stream, partial, text));
                    streams[i] = None;
                }
                Ok(n) => {
                    attach.output(if stream == "stdout" { 1 } else { 2 }, &buf[..n]);
                    splitter.push(&buf[..n], &mut |partial, text| {
                        log.line(stream, partial, text)
                    })
                }
            }
        }
    }
    exec_error
}

fn wait(child: Pid) -> (i32, Option<i32>) {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return (code, None),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return (128 + signal as i32, Some(signal as i32));
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return (255, None),
        }
    }
}
