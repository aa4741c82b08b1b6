//! The per-container monitor (`stratad __monitor`, its container's DIR on stdin):
//! single-threaded, no async runtime.
//! It forks the container's init (into a new PID namespace when the container has one),
//! puts it in its cgroup, tells the daemon when the container is created, writes the
//! container's output to the CRI log, waits for the exit, and records it in `DIR/exit.json`,
//! also while the daemon is down.
#![allow(unsafe_code)] // fork()

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
    sched::{CloneFlags, unshare},
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, Pid, fork},
};
use serde::{Deserialize, Serialize};

use super::init;
use crate::{cgroup, runtime::spec::Spec, state};

pub const MONITOR: &str = "__monitor";

/// How a container ended, as the monitor records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Why the entrypoint could not be executed, if it could not.
    pub exec_error: Option<String>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
}

/// A CRI log line longer than this is split and marked partial.
const MAX_LINE: usize = 16 << 10;

pub fn main(args: &[String]) -> ExitCode {
    // The container's directory comes on stdin, not in argv: until it execs, the init is
    // this process's copy, and other containers of a pod sharing its PID namespace can read
    // its command line.
    let mut line = String::new();
    if !args.is_empty() || std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty()
    {
        eprintln!("usage: echo CONTAINER_DIR | stratad {MONITOR}");
        return ExitCode::FAILURE;
    }
    let dir = PathBuf::from(line.trim_end_matches('\n'));
    match monitor(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Before "ready" this goes to the daemon; after, to monitor.log.
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn monitor(dir: &Path) -> Result<(), String> {
    let spec: Spec = serde_json::from_slice(
        &std::fs::read(dir.join("config.json")).map_err(|e| format!("reading config.json: {e}"))?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    let cgroups = cgroup::Hierarchy::detect(&spec.strata.cgroup_root).map_err(|e| e.to_string())?;
    let container = cgroups
        .cgroup(&spec.linux.cgroups_path)
        .map_err(|e| e.to_string())?;
    let cgroup = container
        .child(cgroup::CONTAINER_LEAF)
        .map_err(|e| e.to_string())?;
    let oom_before = container.oom_kills();

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // The PID namespace applies to the children forked after this: the init.
    if let Some(ns) = spec.linux.namespaces.iter().find(|n| n.kind == "pid") {
        match &ns.path {
            None => unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(pid): {e}"))?,
            Some(path) => {
                let file =
                    File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
                nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("joining the PID namespace {}: {e}", path.display()))?;
            }
        }
    }
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((out_r, err_r, sync_r, go_w));
            init::run(
                &spec,
                init::Pipes {
                    go: go_r,
                    sync: sync_w,
                    stdout: out_w,
                    stderr: err_w,
                },
            )
        }
        ForkResult::Parent { child } => child,
    };
    drop((out_w, err_w, sync_w, go_r));
    let ready = (|| {
        cgroup
            .add_pid(child.as_raw() as u32)
            .map_err(|e| e.to_string())?;
        File::from(go_w)
            .write_all(b"g")
            .map_err(|e| format!("releasing the init: {e}"))?;
        let mut line = Vec::new();
        let mut sync = File::from(sync_r.try_clone().map_err(|e| e.to_string())?);
        let mut byte = [0u8; 1];
        while sync.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if line == "ready" {
            Ok(())
        } else if line.is_empty() {
            Err("the container's init died while setting up".to_string())
        } else {
            Err(line.trim_start_matches("error: ").to_string())
        }
    })();
    if let Err(e) = ready {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e);
    }
    println!("ready {}", child.as_raw());
    let _ = std::io::stdout().flush();
    detach_stdio(dir);

    let exec_error = pump(&spec, dir, out_r, err_r, sync_r);
    let (exit_code, signal) = wait(child);
    let exit = Exit {
        exit_code: if exec_error.is_some() { 128 } else { exit_code },
        signal,
        oom_killed: container.oom_kills() > oom_before,
        exec_error,
        finished_at: crate::image::now_nanos(),
    };
    let bytes = serde_json::to_vec(&exit).map_err(|e| e.to_string())?;
    state::write_atomic(&spec.strata.exit_file, &bytes)
        .map_err(|e| format!("recording the exit: {e}"))
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
fn pump(spec: &Spec, dir: &Path, out: OwnedFd, err: OwnedFd, sync: OwnedFd) -> Option<String> {
    let mut log = CriLog::open(&spec.strata.log_path);
    let mut streams = [
        Some((out, "stdout", Vec::new())),
        Some((err, "stderr", Vec::new())),
    ];
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
            which.push(2);
        }
        if let Some(file) = &control {
            fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
            which.push(3);
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready: Vec<usize> = fds
            .iter()
            .zip(&which)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, i)| *i)
            .collect();
        drop(fds);
        for i in ready {
            if i == 3 {
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
            if i == 2 {
                let Some(fd) = sync.take() else { continue };
                let mut text = String::new();
                let _ = File::from(fd).read_to_string(&mut text);
                for warning in text.lines().filter_map(|l| l.strip_prefix("warning: ")) {
                    eprintln!("stratad monitor: {warning}");
                }
                if let Some(e) = text.lines().find_map(|l| l.strip_prefix("error: ")) {
                    exec_error = Some(e.to_string());
                } else {
                    let _ = std::fs::write(dir.join("started"), b"");
                }
                continue;
            }
            let Some((fd, stream, pending)) = &mut streams[i] else {
                continue;
            };
            match nix::unistd::read(&*fd, &mut buf) {
                Ok(0) | Err(_) => {
                    if !pending.is_empty() {
                        log.line(stream, false, pending);
                    }
                    streams[i] = None;
                }
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=pos).collect();
                        log.line(stream, false, &line[..line.len() - 1]);
                    }
                    while pending.len() >= MAX_LINE {
                        let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
                        log.line(stream, true, &part);
                    }
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

/// The CRI log file: `<RFC3339Nano> <stream> <P|F> <text>` per line.
struct CriLog {
    file: Option<File>,
}

impl CriLog {
    fn open(path: &Path) -> CriLog {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        CriLog {
            file: File::options().create(true).append(true).open(path).ok(),
        }
    }

    fn line(&mut self, stream: &str, partial: bool, text: &[u8]) {
        let Some(file) = &mut self.file else { return };
        let mut out = Vec::with_capacity(text.len() + 48);
        out.extend_from_slice(rfc3339_nano(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(format!(" {stream} {} ", if partial { "P" } else { "F" }).as_bytes());
        out.extend_from_slice(text);
        out.push(b'\n');
        let _ = file.write_all(&out);
    }
}

/// `2026-11-28T12:00:00.123456789Z`.
pub fn rfc3339_nano(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        assert_eq!(
            super::rfc3339_nano(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(super::rfc3339_nano(t), "2023-11-14T22:13:20.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&super::rfc3339_nano(leap)[..10], "2000-02-29");
    }
}
