//! ExecSync and Exec: a command joining a running container, in a cgroup leaf of its own
//! that is killed with everything the command started.

use std::{path::Path, path::PathBuf, sync::Arc, time::Duration};

use crate::{
    oci, oci::Helper, runtime::Error, runtime::Result, runtime::Runtime,
    runtime::container::Container, runtime::io_err,
};

/// What an ExecSync produced.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Each stream of an ExecSync is cut at this size; the rest is read and dropped.
pub const EXEC_OUTPUT_CAP: usize = 16 << 20;

pub(in crate::runtime) async fn read_capped(
    reader: Option<impl tokio::io::AsyncRead + Unpin>,
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut reader) = reader else {
        return;
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                let room = EXEC_OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// A command running in a container for a streaming exec.
pub struct ExecProcess {
    /// The exec helper: its stdin, stdout and stderr are the command's.
    pub child: tokio::process::Child,
    leaf: crate::cgroup::Cgroup,
    container: String,
}

/// Kills whatever an exec left in its leaf and removes the leaf (off the async threads).
pub(in crate::runtime) async fn remove_exec_leaf(leaf: crate::cgroup::Cgroup, container: &str) {
    let path = leaf.path();
    let cleaned = tokio::task::spawn_blocking(move || leaf.kill_all().and_then(|()| leaf.remove()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = cleaned {
        tracing::warn!(container, cgroup = %path, error = %e, "cannot clean up after an exec");
    }
}

impl ExecProcess {
    /// Waits for the command's exit code (ending it, if `cancelled` resolves first: the
    /// helper kills and reaps it), then kills and removes whatever is left of it.
    pub async fn finish(mut self, cancelled: impl std::future::Future<Output = ()>) -> i32 {
        let status = tokio::select! {
            status = self.child.wait() => status,
            () = cancelled => {
                if let Some(pid) = self.child.id() {
                    crate::sys::process::signal_if(pid, rustix::process::Signal::TERM, || true);
                }
                match tokio::time::timeout(EXEC_KILL_GRACE, self.child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = self.child.kill().await;
                        self.child.wait().await
                    }
                }
            }
        };
        let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
        remove_exec_leaf(self.leaf, &self.container).await;
        code
    }
}

/// How long an exec's output may go on after the command exited (a background child
/// holding its stdout): then what is left of the exec is killed.
pub(in crate::runtime) const EXEC_DRAIN: Duration = Duration::from_millis(250);

/// How long a timed-out exec's helper may take to kill and reap the command.
pub(in crate::runtime) const EXEC_KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs `stratad __exec` for one ExecSync and collects its output. Whatever is left in the
/// exec's leaf is the caller's to kill.
pub(in crate::runtime) async fn run_exec(
    dir: &Path,
    pid: u32,
    leaf: &str,
    cmd: &[String],
    timeout: Duration,
    cancelled: tokio::sync::oneshot::Receiver<()>,
) -> Result<ExecOutput> {
    let mut child = oci::helper_command(Helper::Exec)
        .map_err(io_err("cannot find", Path::new("/proc/self/exe")))?
        .arg(pid.to_string())
        .arg(leaf)
        .arg("--")
        .args(cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err("cannot exec in", dir))?;
    oci::send_dir(child.stdin.take(), dir)
        .await
        .map_err(io_err("cannot start a helper for", dir))?;
    // Output goes into buffers the call keeps, so that a reader given up on (a background
    // child still holding the pipe) still leaves what it read.
    let (out, err) = (Arc::default(), Arc::default());
    let mut readers = [
        tokio::spawn(read_capped(child.stdout.take(), Arc::clone(&out))),
        tokio::spawn(read_capped(child.stderr.take(), Arc::clone(&err))),
    ];
    let deadline = async {
        if timeout.is_zero() {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(timeout).await
        }
    };
    let exited = tokio::select! {
        status = child.wait() => Some(status),
        () = deadline => None,
        _ = cancelled => None,
    };
    let deadline = tokio::time::Instant::now() + EXEC_DRAIN;
    for reader in &mut readers {
        if exited.is_none()
            || tokio::time::timeout_at(deadline, &mut *reader)
                .await
                .is_err()
        {
            reader.abort();
        }
    }
    let Some(status) = exited else {
        // The helper kills the command and reaps it (a SIGKILL of the helper would leave
        // the command to the host's init); whatever else is left, the caller kills.
        if let Some(pid) = child.id() {
            crate::sys::process::signal_if(pid, rustix::process::Signal::TERM, || true);
        }
        let _ = tokio::time::timeout(EXEC_KILL_GRACE, child.wait()).await;
        return Err(Error::Timeout(format!(
            "command {cmd:?} timed out after {timeout:?}"
        )));
    };
    let status = status.map_err(io_err("cannot wait for exec in", dir))?;
    let take = |buf: Arc<std::sync::Mutex<Vec<u8>>>| {
        std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let (stdout, stderr) = (take(out), take(err));
    Ok(ExecOutput {
        stdout,
        stderr,
        exit_code: status.code().unwrap_or(137),
    })
}

impl Runtime {
    /// Runs `cmd` in a running container and collects its output (see [`EXEC_OUTPUT_CAP`]).
    /// A zero timeout waits for ever.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let (c, dir, pid, leaf_name, leaf) = self.prepare_exec(id, &cmd).await?;
        // The exec runs to its end in a task of its own, cleanup included, even if this
        // call is dropped (the client went away): that cancels it like a timeout.
        let (cancel_on_drop, cancelled) = tokio::sync::oneshot::channel::<()>();
        let job = tokio::spawn(async move {
            let result = run_exec(&dir, pid, &leaf_name, &cmd, timeout, cancelled).await;
            remove_exec_leaf(leaf, &c.id).await;
            result
        });
        let result = job
            .await
            .map_err(|e| Error::Internal(format!("the exec failed: {e}")))?;
        drop(cancel_on_drop);
        result
    }

    /// What every exec needs: a running container, a command, and a leaf of its own below
    /// the container's cgroup, so that whatever the command starts is killed with it.
    pub(in crate::runtime) async fn prepare_exec(
        &self,
        id: &str,
        cmd: &[String],
    ) -> Result<(Container, PathBuf, u32, String, crate::cgroup::Cgroup)> {
        let c = self.container(id).await?;
        if cmd.is_empty() {
            return Err(Error::Invalid {
                what: "exec".into(),
                reason: "no command".into(),
            });
        }
        let pid = c.can_join().map_err(Error::Precondition)?;
        let dir = self.containers_dir.join(&c.id);
        let suffix =
            crate::runtime::new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?;
        let leaf_name = format!("{}{}", crate::cgroup::EXEC_LEAF_PREFIX, &suffix[..12]);
        let leaf = self.cgroups.cgroup(&c.cgroup)?.create_leaf(&leaf_name)?;
        Ok((c, dir, pid, leaf_name, leaf))
    }

    /// Starts `cmd` in a running container with its stdin, stdout and stderr piped to the
    /// caller, for a streaming exec; with `tty`, on a terminal of its own, its input then
    /// `oci::TtyInput` frames. [`ExecProcess::finish`] ends it.
    pub async fn start_exec(&self, id: &str, cmd: Vec<String>, tty: bool) -> Result<ExecProcess> {
        let (c, dir, pid, leaf_name, leaf) = self.prepare_exec(id, &cmd).await?;
        let spawned = oci::helper_command(Helper::Exec)
            .map_err(io_err("cannot find", Path::new("/proc/self/exe")))
            .and_then(|mut command| {
                command.arg(pid.to_string()).arg(&leaf_name);
                if tty {
                    command.arg("--tty");
                }
                command
                    .arg("--")
                    .args(&cmd)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(io_err("cannot exec in", &dir))
            });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || leaf.remove()).await;
                return Err(e);
            }
        };
        // Its directory first; what comes after on stdin is the command's.
        if let Some(stdin) = child.stdin.as_mut() {
            oci::write_dir(stdin, &dir)
                .await
                .map_err(io_err("cannot start a helper for", &dir))?;
        }
        Ok(ExecProcess {
            child,
            leaf,
            container: c.id,
        })
    }
}
