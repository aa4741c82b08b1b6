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

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat`, field 22): with the
/// pid, it names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}
