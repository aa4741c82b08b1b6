//! StartContainer: the init released through its start FIFO, and what it said of its exec.

use std::{os::unix::fs::OpenOptionsExt as _, path::Path, time::Duration};

use super::{stop::*, store::*};
use crate::{
    oci, oci::Message, runtime::Error, runtime::Result, runtime::Runtime,
    runtime::container::Container, sys::watch::Watched,
};

/// How long StartContainer waits for the exec to happen (or fail).
pub(in crate::runtime) const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the init said on the start FIFO.
#[derive(Debug)]
pub(in crate::runtime) enum Release {
    /// Released: it said `started`, and the FIFO closed at its exec.
    Started,
    /// Released, but the exec failed.
    ExecFailed(String),
    /// It was never released: not waiting (it died, or never got there), or the FIFO failed.
    NotWaiting(String),
}

/// Opens the start FIFO (the init is blocked opening its other end, which releases it)
/// and reads what the init says until end of file: `started`, then the end at its exec;
/// or a failure. Event-driven: a FIFO no writer has opened yet is not readable.
pub(in crate::runtime) async fn release_init(fifo: &Path) -> Release {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .and_then(|file| Watched::new(file.into()));
    let watched = match opened {
        Ok(watched) => watched,
        Err(e) => return Release::NotWaiting(format!("opening {}: {e}", fifo.display())),
    };
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    let mut broken = None;
    loop {
        match watched.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(e) => {
                broken = Some(format!("reading {}: {e}", fifo.display()));
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&said);
    let mut started = false;
    for line in text.lines() {
        match oci::parse(line) {
            Ok(Message::Started) => started = true,
            Ok(Message::Failure { message, .. }) if started => {
                return Release::ExecFailed(message);
            }
            Ok(Message::Failure { message, .. }) => return Release::NotWaiting(message),
            Ok(other) => broken = Some(format!("unexpected {other:?} from the container's init")),
            Err(e) => broken = Some(e.to_string()),
        }
    }
    match (started, broken) {
        (true, None) => Release::Started,
        (true, Some(e)) => Release::ExecFailed(e),
        (false, e) => {
            Release::NotWaiting(e.unwrap_or_else(|| "the container's init has exited".into()))
        }
    }
}

impl Runtime {
    pub async fn start_container(&self, id: &str) -> Result<Container> {
        let id = self.container(id).await?.id;
        let _op = self.op_lock(&id).await;
        let mut c = self.container(&id).await?;
        c.can_start().map_err(Error::Precondition)?;
        let layout = self.container_layout(&c.id);
        // Opening the FIFO releases the init; it says "started" and execs (the FIFO closes
        // then), or says why it could not.
        let fifo = layout.fifo();
        crate::failpoint::hit("container.releasing");
        let released = tokio::select! {
            r = tokio::time::timeout(START_TIMEOUT, release_init(&fifo)) => r.unwrap_or_else(|_| {
                Release::NotWaiting(format!(
                    "the container's init did not start within {START_TIMEOUT:?}"
                ))
            }),
            () = monitor_exit(c.monitor, &layout) => {
                Release::NotWaiting("the container's init has exited".into())
            }
        };
        let failure = match released {
            Release::Started => None,
            // Released, but the exec failed: the monitor records why.
            Release::ExecFailed(e) => {
                wait_exit(&layout, c.monitor, KILL_TIMEOUT).await;
                Some(e)
            }
            // Never released: the container stays what it was (or what the monitor
            // recorded, if the init died).
            Release::NotWaiting(e) => {
                let refreshed = self.refresh(&mut c);
                self.containers.lock().await.insert(c.id.clone(), c.clone());
                self.settle(vec![(c.clone(), refreshed)]).await;
                return Err(Error::Precondition(format!(
                    "container {} cannot start: {e}",
                    c.id
                )));
            }
        };
        crate::failpoint::hit("container.starting");
        c.started(crate::clock::now_nanos());
        let refreshed = self.refresh(&mut c);
        self.containers.lock().await.insert(c.id.clone(), c.clone());
        self.settle(vec![(c.clone(), Refreshed::Changed.max(refreshed))])
            .await;
        if c.reason == "StartError" {
            return Err(Error::Precondition(format!(
                "container {} failed to start: {}",
                c.id, c.message
            )));
        }
        if let Some(e) = failure {
            return Err(Error::Precondition(format!(
                "container {} failed to start: {e}",
                c.id
            )));
        }
        Ok(c)
    }
}
