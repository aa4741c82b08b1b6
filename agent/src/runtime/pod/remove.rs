//! RemovePodSandbox: what is left of a pod (containers, namespaces, cgroup, records) removed.

use super::stop::*;
use crate::{
    runtime::Error, runtime::Result, runtime::Runtime, runtime::io_err, runtime::kill_cgroup,
    runtime::release_pins, state,
};

impl Runtime {
    /// Removes a pod (stopping it first). Removing a missing pod is not an error.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let pod_id = match self.pod(id).await {
            Ok(p) => p.id,
            Err(Error::SandboxNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = self.op_lock(&format!("pod/{pod_id}")).await;
        for c in self.pod_containers(&pod_id).await {
            self.remove_container(&c).await?;
        }
        let sandbox = match self.mark_not_ready(&pod_id).await {
            Ok(sandbox) => sandbox,
            Err(Error::SandboxNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        stop_pid_holder(&sandbox, &self.pins.join(&sandbox.id));
        self.leave_networks(&sandbox.id).await?;
        release_pins(&self.pins.join(&sandbox.id));
        let cgroup = self.cgroups.cgroup(&sandbox.cgroup)?;
        kill_cgroup(&cgroup).await?;
        self.remove_cgroup(&sandbox.cgroup).await?;
        let dir = self.sandbox_dir(&sandbox.id);
        state::remove_record_dir(&dir).map_err(io_err("cannot remove", &dir))?;
        let _ = std::fs::remove_dir_all(self.pins.join(&sandbox.id));
        self.sandboxes.lock().await.remove(&sandbox.id);
        Ok(())
    }
}
