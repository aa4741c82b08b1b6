//! UpdateContainerResources: new limits on a running container's cgroup (and unit), recorded
//! as the limits in force.

use crate::{runtime::Error, runtime::Result, runtime::Runtime};

impl Runtime {
    /// Applies new limits to a container's cgroup.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: &crate::cgroup::Resources,
    ) -> Result<()> {
        let c = self.container(id).await?;
        let _op = self.op_lock(&c.id).await;
        c.can_update().map_err(Error::Precondition)?;
        self.cgroups.cgroup(&c.cgroup)?.set(resources)?;
        // And on the unit, or systemd would put the old limits back at its next reload.
        if let (Some(systemd), Some(scope)) =
            (&self.systemd, crate::cgroup::systemd::unit_of(&c.cgroup))
        {
            systemd.set_properties(scope, resources).await?;
        }
        // What is in force now, for ContainerStatus (the kubelet reads a resize back).
        let mut containers = self.containers.lock().await;
        if let Some(c) = containers.get_mut(&c.id) {
            c.spec.resources = c.spec.resources.merged(resources);
            self.save_container(c)?;
        }
        Ok(())
    }
}
