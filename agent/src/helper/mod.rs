//! The agent's helper modes. The daemon is multi-threaded and never forks Rust code of its
//! own: when it needs a process that enters namespaces or outlives it, it execs its own
//! binary in one of these modes (hidden from `--help`).
//!
//! - `__pinns`: pins a pod's namespaces (like CRI-O's pinns).
//! - `__exec`: runs a command inside a running container (ExecSync).
//! - `__pidns`: holds a pod's shared PID namespace.
//! - `__monitor`: one per container, single-threaded: forks the container's init, holds
//!   its stdio, writes the CRI log, waits for the exit and records it.

pub mod exec;
pub mod init;
pub mod monitor;
pub mod pidns;
mod pinns;

pub use pinns::{PINNS, pinns};
