//! What a container uses (its cgroup's counters, its read-write layer's disk use), and its
//! read-write layer handed to a commit, frozen while it is read.

use std::path::PathBuf;

use crate::{
    runtime::Result, runtime::Runtime, runtime::container::Container,
    runtime::container::ContainerState,
};

/// A frozen container's cgroup, thawed when dropped.
pub struct Frozen(crate::cgroup::Cgroup);

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.0.freeze(false) {
            tracing::error!(error = %e, "cannot thaw a container after a commit");
        }
    }
}

impl Runtime {
    /// A container's cgroup counters.
    pub fn container_stats(&self, c: &Container) -> crate::cgroup::Stats {
        self.cgroups
            .cgroup(&c.cgroup)
            .map(|cg| cg.stats())
            .unwrap_or_default()
    }

    /// What a container's writable layer holds (as last counted; see `usage`), and where
    /// it is.
    pub async fn writable_layer_usage(&self, id: &str) -> (crate::runtime::Usage, PathBuf) {
        let upper = self.container_layout(id).upper();
        (self.usage.usage(&upper).await, upper)
    }

    /// What a commit needs of a container: its read-write layer and its image. With
    /// `pause`, a running container is frozen until the returned guard is dropped.
    pub async fn commit_source(
        &self,
        id: &str,
        pause: bool,
    ) -> Result<(Container, PathBuf, Option<Frozen>)> {
        let c = self.container(id).await?;
        let upper = self.container_layout(&c.id).upper();
        let frozen = if pause && c.state == ContainerState::Running {
            let cgroup = self.cgroups.cgroup(&c.cgroup)?;
            cgroup.freeze(true)?;
            Some(Frozen(cgroup))
        } else {
            None
        };
        Ok((c, upper, frozen))
    }

    /// How many containers there are, and the bytes their read-write layers hold.
    pub async fn containers_disk_usage(&self) -> (usize, u64) {
        let ids: Vec<String> = self.containers.lock().await.keys().cloned().collect();
        let mut bytes = 0;
        for id in &ids {
            bytes += self.writable_layer_usage(id).await.0.bytes;
        }
        (ids.len(), bytes)
    }

    /// A pod's cgroup counters (its containers' together).
    pub fn pod_stats(&self, sandbox: &crate::runtime::Sandbox) -> crate::cgroup::Stats {
        self.cgroups
            .cgroup(&sandbox.cgroup)
            .map(|cg| cg.stats())
            .unwrap_or_default()
    }
}
