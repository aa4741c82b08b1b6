//! StopPodSandbox: the pod's containers stopped, its networks left, its holder ended.

use std::path::Path;

use crate::{
    runtime::Result, runtime::Runtime, runtime::kill_cgroup, runtime::release_pins,
    runtime::sandbox::Sandbox,
};

/// Ends a pod's shared PID namespace (and whatever is left in it) by killing its holder,
/// after checking through a pidfd that the pid is still that holder: the process that
/// started when the holder did (a holder of an older agent: whose command line names the
/// pod's directory).
pub(in crate::runtime) fn stop_pid_holder(sandbox: &Sandbox, dir: &Path) {
    let Some(pid) = sandbox.pid_holder else {
        return;
    };
    crate::sys::process::signal_if(pid, rustix::process::Signal::KILL, || {
        match sandbox.pid_holder_started {
            Some(started) => crate::sys::process::start_time(pid) == Some(started),
            None => {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
            }
        }
    });
}

impl Runtime {
    /// Removes everything a pod has on the machine; best effort, for failed creations.
    pub(in crate::runtime) async fn destroy(&self, sandbox: &Sandbox) {
        if let Err(e) = self.leave_networks(&sandbox.id).await {
            tracing::warn!(sandbox = %sandbox.id, error = %e, "cannot release a failed pod's network");
        }
        stop_pid_holder(sandbox, &self.pins.join(&sandbox.id));
        release_pins(&self.pins.join(&sandbox.id));
        if let Ok(cg) = self.cgroups.cgroup(&sandbox.cgroup)
            && let Err(e) = cg.kill_all()
        {
            tracing::warn!(error = %e, "cannot kill a pod's processes");
        }
        if let Err(e) = self.remove_cgroup(&sandbox.cgroup).await {
            tracing::warn!(error = %e, "cannot remove a pod cgroup");
        }
        let _ = std::fs::remove_dir_all(self.sandbox_dir(&sandbox.id));
    }

    /// Stops a pod: its containers are killed and its namespaces released. Idempotent.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let pod_id = self.pod(id).await?.id;
        let _op = self.op_lock(&format!("pod/{pod_id}")).await;
        for c in self.pod_containers(&pod_id).await {
            self.stop_container(&c, std::time::Duration::ZERO).await?;
        }
        // The pod's record is changed under the lock; the killing and unmounting, which can
        // take seconds, happen without it.
        let sandbox = self.mark_not_ready(&pod_id).await?;
        stop_pid_holder(&sandbox, &self.pins.join(&sandbox.id));
        // Until the holder (and with it the pod's PID namespace) is really gone.
        kill_cgroup(&self.holder_cgroup(&sandbox)?).await?;
        // Before the netns goes: plugins find the pod's interfaces in it.
        self.leave_networks(&sandbox.id).await?;
        release_pins(&self.pins.join(&sandbox.id));
        // Saved every time: a stop that failed half-way and is retried records it then.
        self.save(&sandbox)
    }
}
