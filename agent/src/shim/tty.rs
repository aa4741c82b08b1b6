//! A terminal exec's pty: opened by the exec helper inside the container's mount namespace
//! (the pty is the container's devpts'), its slave the command's controlling terminal and
//! stdio, its master relayed by the helper: frames from the daemon on stdin (input, window
//! sizes, end of input) in, the terminal's output to stdout.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::{
    fcntl::OFlag,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt},
    sys::{
        signal::{Signal, kill},
        signalfd::SignalFd,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use super::{Error, Result, at};
use crate::oci::{Stage, TtyInput};

pub struct Terminal {
    master: PtyMaster,
    slave: String,
}

/// A new pty of the devpts at /dev/pts (the container's, once in its mount namespace).
pub fn open() -> Result<Terminal> {
    let err = |what: &'static str| at(Stage::Setup, move || what.to_string());
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("opening /dev/ptmx"))?;
    grantpt(&master).map_err(err("grantpt"))?;
    unlockpt(&master).map_err(err("unlockpt"))?;
    let slave = ptsname_r(&master).map_err(err("ptsname"))?;
    Ok(Terminal { master, slave })
}

impl Terminal {
    /// In the command (a fresh child): a session of its own, the slave as its controlling
    /// terminal and its stdin, stdout and stderr.
    pub fn become_controlling(&self) -> Result<()> {
        let err = |what: &'static str| at(Stage::Setup, move || what.to_string());
        nix::unistd::setsid().map_err(err("setsid"))?;
        // A session leader without a terminal acquires the first it opens.
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.slave)
            .map_err(at(Stage::Setup, || "opening the pty".to_string()))?
            .into();
        nix::unistd::dup2_stdin(&slave).map_err(err("dup2"))?;
        nix::unistd::dup2_stdout(&slave).map_err(err("dup2"))?;
        nix::unistd::dup2_stderr(&slave).map_err(err("dup2"))?;
        Ok(())
    }

    /// In the helper: relays until the command has exited and its terminal is drained;
    /// returns its exit code. SIGTERM (blocked by the caller) kills the command.
    pub fn relay(self, child: Pid, signals: &nix::sys::signal::SigSet) -> Result<u8> {
        let err = |what: &'static str| at(Stage::Setup, move || what.to_string());
        let signalfd = SignalFd::new(signals).map_err(err("signalfd"))?;
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        // Non-blocking: input the command does not read yet is kept (`pending`) while its
        // output goes on being relayed, and no more is read while much is kept.
        let flags =
            nix::fcntl::fcntl(&self.master, nix::fcntl::FcntlArg::F_GETFL).map_err(err("fcntl"))?;
        nix::fcntl::fcntl(
            &self.master,
            nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(err("fcntl"))?;
        let mut pending: Vec<u8> = Vec::new();
        let mut input = Vec::new();
        let mut input_open = true;
        let mut exit: Option<u8> = None;
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let master_events = if pending.is_empty() {
                PollFlags::POLLIN
            } else {
                PollFlags::POLLIN | PollFlags::POLLOUT
            };
            let mut fds = vec![
                PollFd::new(self.master.as_fd(), master_events),
                PollFd::new(signalfd.as_fd(), PollFlags::POLLIN),
            ];
            if input_open && pending.len() < MAX_PENDING {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            // Once the command has exited, a terminal that stays quiet (a background child
            // holding it) no longer holds the exec up.
            let timeout = if exit.is_some() {
                PollTimeout::from(250u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    if let Some(code) = exit {
                        return Ok(code);
                    }
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(err("poll")(e)),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (master_ready, signal_ready, stdin_ready) = (ready(0), ready(1), ready(2));
            drop(fds);
            if master_ready && !pending.is_empty() {
                flush(self.master.as_fd(), &mut pending);
            }
            if master_ready {
                match nix::unistd::read(&self.master, &mut buf) {
                    Ok(0) | Err(nix::errno::Errno::EIO) => {
                        // Every slave is closed: the command and whatever it left are done
                        // with the terminal.
                        if let Some(code) = exit {
                            return Ok(code);
                        }
                        return Ok(wait(child));
                    }
                    Ok(n) => write_all(stdout.as_fd(), &buf[..n])?,
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    Err(e) => return Err(err("reading the pty")(e)),
                }
            }
            if signal_ready && let Ok(Some(info)) = signalfd.read_signal() {
                if info.ssi_signo == Signal::SIGTERM as u32 {
                    let _ = kill(child, Signal::SIGKILL);
                }
                if let Ok(WaitStatus::Exited(_, code)) = waitpid(child, Some(WaitPidFlag::WNOHANG))
                {
                    exit = Some(code as u8);
                } else if let Ok(WaitStatus::Signaled(_, signal, _)) =
                    waitpid(child, Some(WaitPidFlag::WNOHANG))
                {
                    exit = Some(128u8.wrapping_add(signal as u8));
                }
            }
            if stdin_ready {
                match nix::unistd::read(&stdin, &mut buf) {
                    Ok(0) | Err(_) => input_open = false,
                    Ok(n) => input.extend_from_slice(&buf[..n]),
                }
                loop {
                    match TtyInput::decode(&mut input) {
                        Ok(Some(TtyInput::Data(data))) => {
                            pending.extend_from_slice(&data);
                            flush(self.master.as_fd(), &mut pending);
                        }
                        Ok(Some(TtyInput::Resize { cols, rows })) => {
                            let _ = crate::sys::process::set_window_size(
                                self.master.as_fd(),
                                cols,
                                rows,
                            );
                        }
                        Ok(Some(TtyInput::End)) => {
                            // The end of a terminal's input is its EOF character.
                            pending.push(4);
                            flush(self.master.as_fd(), &mut pending);
                        }
                        Ok(None) => break,
                        Err(e) => return Err(Error::Usage(e)),
                    }
                }
            }
        }
    }
}

/// Input kept for the command beyond which no more is read.
const MAX_PENDING: usize = 64 << 10;

/// Writes what the terminal takes of `pending` now (its master is non-blocking).
fn flush(master: BorrowedFd<'_>, pending: &mut Vec<u8>) {
    while !pending.is_empty() {
        match nix::unistd::write(master, pending) {
            Ok(0) | Err(nix::errno::Errno::EAGAIN) => return,
            Ok(n) => {
                pending.drain(..n);
            }
            Err(nix::errno::Errno::EINTR) => {}
            // The terminal is gone: nobody reads this.
            Err(_) => pending.clear(),
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(e) => {
                return Err(at(Stage::Setup, || {
                    format!("writing to fd {}", fd.as_raw_fd())
                })(e));
            }
        }
    }
    Ok(())
}

/// The command's exit code, once it has ended.
fn wait(child: Pid) -> u8 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128u8.wrapping_add(signal as u8),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}
