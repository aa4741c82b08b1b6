//! ReopenContainerLog: the monitor told to reopen the container's log file.

use std::{os::unix::fs::OpenOptionsExt as _, time::Duration, time::Instant};

use crate::{runtime::Error, runtime::Result, runtime::Runtime};

/// How long a monitor may take to reopen a container's log.
pub(in crate::runtime) const REOPEN_TIMEOUT: Duration = Duration::from_secs(5);

impl Runtime {
    /// Asks the container's monitor to reopen the log file (after the kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let c = self.container(id).await?;
        c.can_join().map_err(Error::Precondition)?;
        let control = self.container_layout(&c.id).control();
        let sent = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&control)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"r"));
        sent.map_err(|e| {
            Error::Precondition(format!("container {}'s monitor is gone: {e}", c.id))
        })?;
        // The call returns once the new file is there, as the kubelet expects: it moved the
        // old one away, and writes there next.
        let deadline = Instant::now() + REOPEN_TIMEOUT;
        while !c.log_path.exists() {
            if Instant::now() > deadline {
                return Err(Error::Precondition(format!(
                    "container {}'s monitor did not reopen {}",
                    c.id,
                    c.log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}
