//! Starting a helper: the daemon never forks Rust code of its own; it execs its own binary
//! (a sealed copy, see `sys::selfexe`) in one of these modes, hidden from `--help`.

use std::{io, path::Path};

/// The helper modes, as the first argument names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    /// Pins a pod's namespaces (like CRI-O's pinns).
    Pinns,
    /// Holds a pod's shared PID namespace.
    Pidns,
    /// One per container: forks its init, holds its stdio, writes its log, records its exit.
    Monitor,
    /// Runs a command inside a running container.
    Exec,
}

impl Helper {
    pub const ALL: [Helper; 4] = [Helper::Pinns, Helper::Pidns, Helper::Monitor, Helper::Exec];

    pub fn arg(self) -> &'static str {
        match self {
            Helper::Pinns => "__pinns",
            Helper::Pidns => "__pidns",
            Helper::Monitor => "__monitor",
            Helper::Exec => "__exec",
        }
    }

    pub fn from_arg(arg: &str) -> Option<Helper> {
        Helper::ALL.into_iter().find(|h| h.arg() == arg)
    }
}

/// A command for `helper`: the sealed binary, argv0 `stratad` (a container sharing the
/// PID namespace sees nothing of the host's paths), its own process group (signals to the
/// daemon's group do not reach it), stdin piped (directories go there, not into argv).
pub fn helper_command(helper: Helper) -> io::Result<tokio::process::Command> {
    let exe = crate::sys::selfexe::helper_binary()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg0("stratad")
        .arg(helper.arg())
        .stdin(std::process::Stdio::piped())
        .process_group(0);
    Ok(command)
}

/// Gives a helper its directory on stdin, then end of file.
pub async fn send_dir(stdin: Option<tokio::process::ChildStdin>, dir: &Path) -> io::Result<()> {
    match stdin {
        Some(mut stdin) => write_dir(&mut stdin, dir).await,
        None => Ok(()),
    }
}

/// Gives a helper its directory as the first line on stdin; what follows is its input.
pub async fn write_dir(stdin: &mut tokio::process::ChildStdin, dir: &Path) -> io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut line = dir.as_os_str().as_encoded_bytes().to_vec();
    line.push(b'\n');
    stdin.write_all(&line).await
}

/// A container's attach socket (`DIR/attach`, served by its monitor), named through a
/// descriptor of the directory, which the caller holds while it binds or connects: a
/// socket's path is limited to 107 bytes.
pub fn attach_socket(dir: &Path) -> io::Result<(std::fs::File, String)> {
    let dirfd = std::fs::File::open(dir)?;
    let path = format!(
        "/proc/self/fd/{}/attach",
        std::os::fd::AsRawFd::as_raw_fd(&dirfd)
    );
    Ok((dirfd, path))
}

#[cfg(test)]
mod tests {
    use super::Helper;

    #[test]
    fn every_mode_is_named_once() {
        for h in Helper::ALL {
            assert_eq!(Helper::from_arg(h.arg()), Some(h));
            assert!(h.arg().starts_with("__"));
        }
        assert_eq!(Helper::from_arg("--help"), None);
    }
}
