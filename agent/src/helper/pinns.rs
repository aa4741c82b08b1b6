//! Pinning a pod's namespaces to files, so they live on with no process in them.

use std::{path::PathBuf, process::ExitCode};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

/// The first argument that selects the namespace-pinning helper.
pub const PINNS: &str = "__pinns";

/// `stratad __pinns DIR HOSTNAME [net] [ipc] [uts] -- [SYSCTL=VALUE]...`: creates the named
/// namespaces, sets the hostname (uts), brings loopback up (net), sets the sysctls (paths
/// below /proc/sys, which shows the writer's namespaces), and bind-mounts each namespace
/// onto `DIR/<ns>` so that it lives on with no process in it. Exits 0, or 1 with one line
/// on stderr.
pub fn pinns(args: &[String]) -> ExitCode {
    match pin(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratad pinns: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pin(args: &[String]) -> Result<(), String> {
    let [dir, hostname, rest @ ..] = args else {
        return Err("usage: __pinns DIR HOSTNAME [net] [ipc] [uts] -- [SYSCTL=VALUE]...".into());
    };
    let split = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
    let (kinds, sysctls) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let dir = PathBuf::from(dir);
    let mut flags = CloneFlags::empty();
    for kind in kinds {
        flags |= match kind.as_str() {
            "net" => CloneFlags::CLONE_NEWNET,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "uts" => CloneFlags::CLONE_NEWUTS,
            other => return Err(format!("unknown namespace {other:?}")),
        };
    }
    unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    if flags.contains(CloneFlags::CLONE_NEWUTS) {
        nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
    }
    if flags.contains(CloneFlags::CLONE_NEWNET) {
        crate::sys::net::loopback_up().map_err(|e| format!("bringing loopback up: {e}"))?;
    }
    for sysctl in sysctls {
        let (path, value) = sysctl
            .split_once('=')
            .ok_or_else(|| format!("bad sysctl {sysctl:?}"))?;
        // The daemon checked the name: a namespaced sysctl, no `..`.
        std::fs::write(format!("/proc/sys/{path}"), value)
            .map_err(|e| format!("setting sysctl {path} to {value:?}: {e}"))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for kind in kinds {
        let target = dir.join(kind);
        std::fs::File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        let source = format!("/proc/self/ns/{kind}");
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("pinning {source} on {}: {e}", target.display()))?;
    }
    Ok(())
}
