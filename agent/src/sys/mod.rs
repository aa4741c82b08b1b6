//! Privileged and path-sensitive system calls, behind small safe types.

pub mod net;
pub mod rootdir;
