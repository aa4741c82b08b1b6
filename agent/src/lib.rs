//! strata's node agent as a library: everything `stratad` is made of, for the daemon binary
//! and for the fuzz targets (`fuzz/`), which drive its parsers directly.

#![deny(unsafe_code)]

pub mod apparmor;
pub mod cdi;
pub mod cgroup;
pub mod clock;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod failpoint;
pub mod image;
pub mod metrics;
pub mod oci;
pub mod report;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod server;
pub mod shim;
pub mod state;
pub mod sys;
