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
