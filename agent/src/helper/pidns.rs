//! `stratad __pidns DIR`: holds a pod's shared PID namespace. A PID namespace lives only as
//! long as its first process, so unlike the other pod namespaces it cannot be pinned to a
//! file: this helper forks that first process, which does nothing but reap the orphans
//! that land on it, until the pod is stopped (SIGKILL from the daemon ends the namespace
//! and everything in it). The parent prints the holder's pid and exits. `DIR` (the pod's
//! state directory) is only there to tell whose holder it is.
#![allow(unsafe_code)] // fork()

use std::{io::Write, process::ExitCode};

use nix::{
    sched::{CloneFlags, unshare},
    sys::{
        signal::{SigSet, Signal},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::{ForkResult, Pid, fork},
};

pub const PIDNS: &str = "__pidns";

pub fn main(args: &[String]) -> ExitCode {
    if args.len() != 1 {
        eprintln!("usage: stratad {PIDNS} POD_DIR");
        return ExitCode::FAILURE;
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("stratad pidns: unshare: {e}");
        return ExitCode::FAILURE;
    }
    // SAFETY: this helper is single-threaded.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("stratad pidns: fork: {e}");
            ExitCode::FAILURE
        }
        Ok(ForkResult::Parent { child }) => {
            println!("{}", child.as_raw());
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Ok(ForkResult::Child) => hold(),
    }
}

/// PID 1 of the pod: reap whatever ends up here, for ever.
fn hold() -> ! {
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let _ = nix::unistd::setsid();
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_block();
    loop {
        let _ = set.wait();
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
}
