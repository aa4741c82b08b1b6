//! The shim: the processes that run beside a container, each a mode of the agent's own
//! binary (see `oci::Helper`). The daemon is multi-threaded and never forks Rust code of
//! its own; these are single-threaded and may.
//!
//! - `pinns`: pins a pod's namespaces to files (like CRI-O's pinns).
//! - `pidns`: holds a pod's shared PID namespace.
//! - `monitor`: one per container: forks its `init`, holds its stdio, writes the CRI log,
//!   waits for the exit and records it.
//! - `init`: the container's first process until it execs the entrypoint: applies the
//!   rootfs plan and the process's identity through `sys::Syscall`.
//! - `exec`: runs a command inside a running container.
//!
//! The shim imports only the contract (`oci`), `rootfs`, `sys`, `cgroup`, `state` and
//! `clock`.

mod attach;
pub mod exec;
pub mod init;
mod log;
pub mod monitor;
pub mod pidns;
pub mod pinns;
mod tty;

use crate::oci::Stage;

/// Why a shim process failed: the stage (sent to the daemon as the failure's typed
/// reason) and what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Sys {
        stage: Stage,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The spec asks for something the shim cannot do (it is the daemon's bug, or a
    /// hand-edited config.json).
    #[error("{0}")]
    Spec(String),
    #[error("exec {0}: executable file not found in $PATH")]
    NotFound(String),
    #[error("{0}")]
    Usage(String),
    /// The container's init failed, and said so.
    #[error("{message}")]
    Init { stage: Stage, message: String },
}

impl Error {
    pub fn stage(&self) -> Stage {
        match self {
            Error::Sys { stage, .. } => *stage,
            Error::Spec(_) | Error::Usage(_) => Stage::Setup,
            Error::NotFound(_) => Stage::NotFound,
            Error::Init { stage, .. } => *stage,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with its stage and what was being done.
pub(crate) fn at<E: Into<std::io::Error>>(
    stage: Stage,
    what: impl FnOnce() -> String,
) -> impl FnOnce(E) -> Error {
    move |e| Error::Sys {
        stage,
        what: what(),
        source: e.into(),
    }
}
