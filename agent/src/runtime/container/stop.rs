//! StopContainer and the waits on a container's end: its stop signal, then SIGKILL after the
//! timeout; its monitor's exit watched through a pidfd.

use std::{time::Duration, time::Instant};

use crate::{
    runtime::Error, runtime::Result, runtime::Runtime, runtime::container,
    runtime::container::Container, runtime::container::ContainerState, runtime::container::Layout,
    runtime::kill_cgroup, sys::watch::Watched,
};

/// How long a SIGKILLed container may take to be reaped.
pub(in crate::runtime) const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves when the monitor `(pid, start time)` has exited (its pidfd turns readable). A
/// monitor that is unknown (a record of an older agent) or already gone: when the exit is
/// recorded, checked every few milliseconds.
pub(in crate::runtime) async fn monitor_exit(monitor: Option<(u32, u64)>, layout: &Layout) {
    match watch_monitor(monitor) {
        Some(watched) => {
            let _ = watched.readable().await;
        }
        None => {
            while !layout.exit_file().exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

pub(in crate::runtime) fn watch_monitor(monitor: Option<(u32, u64)>) -> Option<Watched> {
    let (pid, started) = monitor?;
    Watched::new(crate::sys::process::pidfd_of(pid, started)?).ok()
}

pub(in crate::runtime) fn stop_signal(name: &str) -> rustix::process::Signal {
    container::signal_number(name)
        .and_then(rustix::process::Signal::from_named_raw)
        .unwrap_or(rustix::process::Signal::TERM)
}

/// Signals the container's init through a pidfd, so a recycled pid is never hit: the
/// exit file is checked after the pidfd is opened.
pub(in crate::runtime) fn signal_init(
    pid: u32,
    cgroup: &crate::cgroup::Cgroup,
    signal: rustix::process::Signal,
    layout: &Layout,
) {
    // A process outside the container's cgroup is not the init: it is gone and the pid
    // belongs to someone else.
    crate::sys::process::signal_if(pid, signal, || {
        cgroup.holds_container_process(pid) && !layout.exit_file().exists()
    });
}

/// Waits up to `timeout` for the container's exit to be recorded: the monitor records it,
/// then exits, so its pidfd says when. A container whose monitor is unknown (a record of
/// an older agent) is checked every few milliseconds.
pub(in crate::runtime) async fn wait_exit(
    layout: &Layout,
    monitor: Option<(u32, u64)>,
    timeout: Duration,
) -> bool {
    if layout.exit_file().exists() {
        return true;
    }
    match watch_monitor(monitor) {
        Some(watch) => {
            let _ = tokio::time::timeout(timeout, watch.readable()).await;
        }
        None => {
            let deadline = Instant::now() + timeout;
            while !layout.exit_file().exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    layout.exit_file().exists()
}

impl Runtime {
    /// A future that resolves when the container `id` has exited (at once if it has). Its
    /// monitor's pidfd is open when this returns, so the watch costs one descriptor from
    /// then on, until the exit.
    pub async fn exit_watch(
        &self,
        id: &str,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
        let c = self.container(id).await?;
        let layout = self.container_layout(&c.id);
        let watched = match c.state {
            ContainerState::Exited => None,
            _ => Some(watch_monitor(c.monitor)),
        };
        Ok(async move {
            match watched {
                None => {}
                Some(Some(watched)) => {
                    let _ = watched.readable().await;
                }
                // No pidfd (a record of an older agent, or a monitor already gone): until
                // the exit is recorded, the monitor is seen gone, or the container removed.
                Some(None) => {
                    let monitor = c.monitor;
                    while layout.dir.exists()
                        && !layout.exit_file().exists()
                        && monitor.is_none_or(|(pid, started)| {
                            crate::sys::process::start_time(pid) == Some(started)
                        })
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout`. Idempotent.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<Container> {
        let id = self.container(id).await?.id;
        let _op = self.op_lock(&id).await;
        self.stop_locked(&id, timeout).await
    }

    /// [`stop_container`](Runtime::stop_container), under the container's operation lock.
    pub(in crate::runtime) async fn stop_locked(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Container> {
        let mut c = self.container(id).await?;
        let cgroup = self.cgroups.cgroup(&c.cgroup)?;
        if c.state == ContainerState::Exited {
            // An init that exited by itself may have left children running.
            kill_cgroup(&cgroup).await?;
            return Ok(c);
        }
        let layout = self.container_layout(&c.id);
        if let Some(pid) = c.pid {
            if !timeout.is_zero() && c.state == ContainerState::Running {
                let signal = stop_signal(&c.stop_signal);
                signal_init(pid, &cgroup, signal, &layout);
                wait_exit(&layout, c.monitor, timeout).await;
            }
            if !layout.exit_file().exists() {
                // A container that owns its PID namespace dies with its init; one that does
                // not (POD, NODE) would leave children behind: everything in its cgroup.
                if c.spec.pid == crate::runtime::sandbox::NamespaceMode::Container {
                    signal_init(pid, &cgroup, rustix::process::Signal::KILL, &layout);
                    crate::failpoint::hit("container.killed");
                } else {
                    kill_cgroup(&cgroup).await?;
                }
                if !wait_exit(&layout, c.monitor, KILL_TIMEOUT).await {
                    return Err(Error::Internal(format!(
                        "container {} did not die after SIGKILL",
                        c.id
                    )));
                }
            }
        }
        crate::failpoint::hit("container.stopping");
        kill_cgroup(&cgroup).await?;
        let refreshed = self.refresh(&mut c);
        self.containers.lock().await.insert(c.id.clone(), c.clone());
        self.settle(vec![(c.clone(), refreshed)]).await;
        Ok(c)
    }
}
