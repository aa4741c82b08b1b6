//! UpdatePodSandboxResources: a pod's new pod-level resources, recorded.

use crate::{cgroup, runtime::Error, runtime::Result, runtime::Runtime, runtime::sandbox::Sandbox};

impl Runtime {
    /// Records a pod's new pod-level resources and overhead (UpdatePodSandboxResources,
    /// after an in-place resize). Like those of RunPodSandbox they are not enforced here:
    /// the kubelet enforces them on the pod's parent cgroup.
    pub async fn update_pod_resources(
        &self,
        id: &str,
        overhead: Option<cgroup::Resources>,
        resources: Option<cgroup::Resources>,
    ) -> Result<Sandbox> {
        for r in overhead.iter().chain(&resources) {
            r.validate()?;
        }
        let id = self.pod(id).await?.id;
        let _op = self.op_lock(&format!("pod/{id}")).await;
        let mut sandboxes = self.sandboxes.lock().await;
        let sandbox = sandboxes
            .get_mut(&id)
            .ok_or_else(|| Error::SandboxNotFound(id.clone()))?;
        if let Some(o) = overhead {
            sandbox.spec.overhead = o;
        }
        if let Some(r) = resources {
            sandbox.spec.resources = r;
        }
        self.save(sandbox)?;
        Ok(sandbox.clone())
    }
}
