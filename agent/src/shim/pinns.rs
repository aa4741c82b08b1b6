//! Pinning a pod's namespaces to files, so they live on with no process in them.

use std::{path::PathBuf, process::ExitCode};

use super::{Error, Result, at};
use crate::{
    oci::Stage,
    sys::syscall::{Linux, Namespace, Syscall},
};

/// `stratad __pinns DIR HOSTNAME [net] [ipc] [uts] -- [SYSCTL=VALUE]...`: creates the named
/// namespaces, sets the hostname (uts), brings loopback up (net), sets the sysctls (paths
/// below /proc/sys, which shows the writer's namespaces), and bind-mounts each namespace
/// onto `DIR/<ns>` so that it lives on with no process in it. Exits 0, or 1 with one line
/// on stderr.
pub fn main(args: &[String]) -> ExitCode {
    match pin(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratad pinns: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pin(args: &[String]) -> Result<()> {
    let [dir, hostname, rest @ ..] = args else {
        return Err(Error::Usage(
            "usage: __pinns DIR HOSTNAME [net] [ipc] [uts] -- [SYSCTL=VALUE]...".into(),
        ));
    };
    let split = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
    let (kinds, sysctls) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let dir = PathBuf::from(dir);
    let namespaces = kinds
        .iter()
        .map(|kind| match kind.as_str() {
            "net" => Ok(Namespace::Network),
            "ipc" => Ok(Namespace::Ipc),
            "uts" => Ok(Namespace::Uts),
            other => Err(Error::Usage(format!("unknown namespace {other:?}"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Linux::default()
        .unshare(&namespaces)
        .map_err(at(Stage::Namespaces, || "unshare".into()))?;
    if namespaces.contains(&Namespace::Uts) {
        crate::sys::process::set_hostname(hostname).map_err(at(Stage::Namespaces, || {
            format!("sethostname {hostname:?}")
        }))?;
    }
    if namespaces.contains(&Namespace::Network) {
        crate::sys::net::loopback_up()
            .map_err(at(Stage::Namespaces, || "bringing loopback up".into()))?;
    }
    for sysctl in sysctls {
        let (path, value) = sysctl
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("bad sysctl {sysctl:?}")))?;
        // The daemon checked the name: a namespaced sysctl, no `..`.
        std::fs::write(format!("/proc/sys/{path}"), value).map_err(at(Stage::Setup, || {
            format!("setting sysctl {path} to {value:?}")
        }))?;
    }
    std::fs::create_dir_all(&dir).map_err(at(Stage::Setup, || dir.display().to_string()))?;
    for kind in kinds {
        let target = dir.join(kind);
        std::fs::File::create(&target)
            .map_err(at(Stage::Setup, || target.display().to_string()))?;
        let source = PathBuf::from(format!("/proc/self/ns/{kind}"));
        crate::sys::mount::bind(&source, &target).map_err(at(Stage::Mounts, || {
            format!("pinning {} on {}", source.display(), target.display())
        }))?;
    }
    Ok(())
}
