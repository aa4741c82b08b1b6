//! AppArmor on hosts that have it: which profile a container runs under, and the
//! runtime's default profile, loaded on first use. The init changes to the profile at its
//! exec (`Syscall::set_apparmor_exec_profile`); a host without AppArmor refuses every
//! profile but unconfined (see the CRI conversion), so nothing is ever dropped in silence.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// The profile RuntimeDefault (and a container that names none) runs under.
pub const DEFAULT_PROFILE: &str = "strata-default";

/// Where the kernel lists the loaded profiles, `name (mode)` a line.
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// How long loading the default profile may take.
const PARSER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AppArmor profile {0:?} is not loaded on this node")]
    NotLoaded(String),
    #[error("cannot load the AppArmor profile {name}: {reason}")]
    Load { name: String, reason: String },
}

/// The runtime's default profile: what the container may not do whatever its
/// capabilities (mount, write the kernel's knobs in /proc and /sys, read the kernel's
/// memory, trace processes outside its own profile), everything else allowed.
pub fn default_profile() -> String {
    format!(
        r#"#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},
  ptrace (trace,read,tracedby,readby) peer={name},

  deny mount,

  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"#,
        name = DEFAULT_PROFILE
    )
}

/// Whether `name` is among the loaded profiles the kernel lists.
fn listed(profiles: &str, name: &str) -> bool {
    profiles.lines().any(|line| {
        line.rsplit_once(" (")
            .map_or(line, |(profile, _)| profile)
            .trim()
            == name
    })
}

/// Makes sure the profile `name` is loaded before a container asks for it: the default one
/// is loaded (by `apparmor_parser`, from `<dir>/strata-default`) when it is not; any other
/// must have been loaded by the node's administrator.
pub async fn ensure(name: &str, dir: &Path) -> Result<(), Error> {
    let profiles = tokio::fs::read_to_string(PROFILES)
        .await
        .unwrap_or_default();
    if listed(&profiles, name) {
        return Ok(());
    }
    if name != DEFAULT_PROFILE {
        return Err(Error::NotLoaded(name.to_string()));
    }
    let fail = |reason: String| Error::Load {
        name: name.to_string(),
        reason,
    };
    let file: PathBuf = dir.join(DEFAULT_PROFILE);
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    crate::state::write_atomic(&file, default_profile().as_bytes())
        .map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let parser = tokio::process::Command::new("apparmor_parser")
        .arg("-Kr")
        .arg(&file)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PARSER_TIMEOUT, parser)
        .await
        .map_err(|_| fail(format!("apparmor_parser took over {PARSER_TIMEOUT:?}")))?
        .map_err(|e| fail(format!("apparmor_parser: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "apparmor_parser: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_profiles_are_read_by_name_whatever_their_mode() {
        let list = "docker-default (enforce)\nstrata-default (enforce)\n/usr/bin/man (complain)\nodd name (x) (enforce)\n";
        assert!(listed(list, "strata-default"));
        assert!(listed(list, "/usr/bin/man"));
        assert!(listed(list, "odd name (x)"));
        assert!(!listed(list, "strata"));
        assert!(!listed("", DEFAULT_PROFILE));
    }

    #[test]
    fn the_default_profile_names_itself_and_denies_mounts_and_kernel_knobs() {
        let text = default_profile();
        assert!(text.contains("profile strata-default flags="));
        assert!(text.contains("signal (send,receive) peer=strata-default,"));
        for rule in [
            "deny mount,",
            "deny @{PROC}/sysrq-trigger rwklx,",
            "deny /sys/kernel/security/** rwklx,",
        ] {
            assert!(text.contains(rule), "{rule}");
        }
        // Balanced braces: apparmor_parser would refuse the file otherwise.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
