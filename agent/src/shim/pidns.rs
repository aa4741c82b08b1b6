//! `stratad __pidns`: holds a pod's shared PID namespace. A PID namespace lives only as
//! long as its first process, so unlike the other pod namespaces it cannot be pinned to a
//! file: this helper forks that first process, which does nothing but reap the orphans
//! that land on it, until the pod is stopped (SIGKILL from the daemon ends the namespace
//! and everything in it). The parent prints the holder's pid and exits.
//!
//! The holder is PID 1 of every container in the pod, so it is confined like a pause
//! container (`sys::confine`): nothing of the host is reachable through `/proc/1`.

use std::{
    io::{Read, Write},
    os::fd::AsFd,
    process::ExitCode,
};

use nix::{
    sys::{
        signal::{SigSet, Signal},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};

use crate::{
    oci::Helper,
    sys::{
        process::{Forked, fork, single_threaded},
        syscall::{Linux, Namespace, Syscall},
    },
};

pub fn main(args: &[String]) -> ExitCode {
    if !args.is_empty() {
        eprintln!("usage: stratad {}", Helper::Pidns.arg());
        return ExitCode::FAILURE;
    }
    if let Err(e) = Linux::default().unshare(&[Namespace::Pid]) {
        eprintln!("stratad pidns: unshare: {e}");
        return ExitCode::FAILURE;
    }
    // The holder says on this pipe that it is confined; only then is its pid given out.
    let (ready_r, ready_w) = match nix::unistd::pipe() {
        Ok(pipe) => pipe,
        Err(e) => {
            eprintln!("stratad pidns: pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let forked = single_threaded().and_then(|one| fork(&one));
    match forked {
        Err(e) => {
            eprintln!("stratad pidns: fork: {e}");
            ExitCode::FAILURE
        }
        Ok(Forked::Parent(child)) => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            if std::fs::File::from(ready_r).read_exact(&mut byte).is_err() {
                eprintln!("stratad pidns: the holder died while confining itself");
                return ExitCode::FAILURE;
            }
            println!("{}", child.as_raw());
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Ok(Forked::Child) => {
            drop(ready_r);
            hold(std::fs::File::from(ready_w))
        }
    }
}

/// PID 1 of the pod: reap whatever ends up here, for ever.
fn hold(mut ready: std::fs::File) -> ! {
    let _ = nix::unistd::setsid();
    if let Err(e) = crate::sys::confine::confine_holder(ready.as_fd()) {
        // Unconfined, it must not serve as the pod's PID 1.
        eprintln!("stratad pidns: confining the holder: {e}");
        std::process::exit(1);
    }
    if ready.write_all(b"c").is_err() {
        std::process::exit(1);
    }
    drop(ready);
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
