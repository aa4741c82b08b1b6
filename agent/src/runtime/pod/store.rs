//! The pods' records: lookups and lists (a pod whose PID-namespace holder died is marked
//! not ready as it is looked at), saving them, marking them not ready.

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    runtime::Error, runtime::Result, runtime::Runtime, runtime::SandboxFilter,
    runtime::sandbox::Sandbox, runtime::write_record,
};

/// A Ready pod whose PID namespace holder is gone (killed, OOM-killed) has lost the PID
/// namespace its containers share: it is NotReady, as a pod whose pause container died is
/// on other runtimes. True if this changed the pod.
pub(in crate::runtime) fn check_holder(sandbox: &mut Sandbox) -> bool {
    let changed = sandbox.check_holder(crate::sys::process::start_time);
    if changed {
        tracing::warn!(sandbox = %sandbox.id, "the pod's PID namespace holder died; marking it NotReady");
    }
    changed
}

/// Finds a pod by its id or a unique prefix of it.
pub(in crate::runtime) fn find_mut<'a>(
    sandboxes: &'a mut BTreeMap<String, Sandbox>,
    id: &str,
) -> Result<&'a mut Sandbox> {
    if id.is_empty() {
        return Err(Error::Invalid {
            what: "pod sandbox id".into(),
            reason: "empty".into(),
        });
    }
    let mut matches = sandboxes
        .iter()
        .filter(|(k, _)| k.starts_with(id))
        .map(|(k, _)| k.clone());
    match (matches.next(), matches.next()) {
        (Some(key), None) => sandboxes
            .get_mut(&key)
            .ok_or_else(|| Error::SandboxNotFound(id.to_string())),
        (Some(_), Some(_)) => Err(Error::Invalid {
            what: format!("pod sandbox id {id:?}"),
            reason: "matches more than one pod".into(),
        }),
        (None, _) => Err(Error::SandboxNotFound(id.to_string())),
    }
}

impl Runtime {
    pub fn pod_cgroup_exists(&self, sandbox: &Sandbox) -> bool {
        self.cgroups
            .cgroup(&sandbox.cgroup)
            .is_ok_and(|c| c.exists())
    }

    pub(in crate::runtime) fn save(&self, sandbox: &Sandbox) -> Result<()> {
        write_record(&self.records.join(&sandbox.id).join("state.json"), sandbox)
    }

    /// The directory with the pod's hostname, hosts and resolv.conf.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.records.join(id)
    }

    /// Marks a pod NotReady in memory (so that no new container joins it) and returns it.
    pub(in crate::runtime) async fn mark_not_ready(&self, pod_id: &str) -> Result<Sandbox> {
        let mut sandboxes = self.sandboxes.lock().await;
        let sandbox = find_mut(&mut sandboxes, pod_id)?;
        sandbox.not_ready();
        Ok(sandbox.clone())
    }

    pub async fn pod(&self, id: &str) -> Result<Sandbox> {
        let mut sandboxes = self.sandboxes.lock().await;
        let sandbox = find_mut(&mut sandboxes, id)?;
        let changed = check_holder(sandbox).then(|| sandbox.clone());
        let sandbox = sandbox.clone();
        drop(sandboxes);
        self.persist_pods(changed.into_iter().collect()).await;
        Ok(sandbox)
    }

    pub async fn pods(&self, filter: &SandboxFilter) -> Vec<Sandbox> {
        let mut sandboxes = self.sandboxes.lock().await;
        let changed: Vec<Sandbox> = sandboxes
            .values_mut()
            .filter_map(|s| check_holder(s).then(|| s.clone()))
            .collect();
        let out = sandboxes
            .values()
            .filter(|s| {
                filter
                    .id
                    .as_ref()
                    .is_none_or(|id| s.id.starts_with(id.as_str()))
            })
            .filter(|s| filter.state.is_none_or(|st| s.state == st))
            .filter(|s| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| s.spec.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        drop(sandboxes);
        self.persist_pods(changed).await;
        out
    }

    /// Saves pod records changed by a read, outside the lock and off the async threads.
    pub(in crate::runtime) async fn persist_pods(&self, changed: Vec<Sandbox>) {
        if changed.is_empty() {
            return;
        }
        let records = self.records.clone();
        let saved = tokio::task::spawn_blocking(move || {
            for sandbox in changed {
                let path = records.join(&sandbox.id).join("state.json");
                if let Err(e) = write_record(&path, &sandbox) {
                    tracing::warn!(sandbox = %sandbox.id, error = %e, "cannot record a pod's state");
                }
            }
        })
        .await;
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot record pod states");
        }
    }
}
