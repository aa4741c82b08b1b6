//! RemoveContainer: what is left of a container (its processes, cgroup, mounts, directory,
//! leases) removed, whatever state it was in.

use std::time::Duration;

use super::stop::*;
use crate::{runtime::Error, runtime::Result, runtime::Runtime, runtime::io_err, state};

impl Runtime {
    /// Removes a container, stopping it first. Removing a missing container is not an error.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let c = match self.container(id).await {
            Ok(c) => c,
            Err(Error::ContainerNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = self.op_lock(&c.id).await;
        let c = match self.stop_locked(&c.id, Duration::ZERO).await {
            Ok(c) => c,
            // Removed meanwhile by another call.
            Err(Error::ContainerNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        crate::failpoint::hit("container.stopped-for-removal");
        // The monitor records the exit and then winds down (its streams, the attach
        // socket); its directory goes once it is gone.
        if let Some(watch) = watch_monitor(c.monitor) {
            let _ = tokio::time::timeout(KILL_TIMEOUT, watch.readable()).await;
        }
        self.remove_cgroup(&c.cgroup).await?;
        crate::failpoint::hit("container.removing");
        let dir = self.containers_dir.join(&c.id);
        state::remove_record_dir(&dir).map_err(io_err("cannot remove", &dir))?;
        self.usage.forget(&self.container_layout(&c.id).upper());
        self.containers.lock().await.remove(&c.id);
        if let Some(leases) = &self.leases {
            leases.unpin(&c.id);
        }
        Ok(())
    }
}
