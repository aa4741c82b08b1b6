//! A pod's networks: CNI ADD at run, DEL at stop (from the attachments cached with the pod),
//! CHECK for a verbose status.

use std::{path::Path, path::PathBuf};

use crate::{
    cni, runtime::Error, runtime::Result, runtime::Runtime, runtime::io_err, runtime::sandbox,
    runtime::sandbox::Sandbox, runtime::sandbox::SandboxState, runtime::write_record, state,
};

/// The networks a pod joined (or was joining), from its cache; `None` without one.
pub(in crate::runtime) fn read_attachments(dir: &Path) -> Result<Option<Vec<cni::Attachment>>> {
    let path = cni::cache_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

pub(in crate::runtime) fn write_attachments(
    dir: &Path,
    attachments: &[cni::Attachment],
) -> Result<()> {
    write_record(&cni::cache_path(dir), &attachments)
}

impl Runtime {
    /// Runs `ADD` of every network into the pod's netns. What the plugins are given is
    /// saved before they run (a crash mid-`ADD` can still be undone), and again with
    /// their results.
    pub(in crate::runtime) async fn join_networks(
        &self,
        sandbox: &mut Sandbox,
        netns: PathBuf,
        dir: &Path,
    ) -> Result<()> {
        let spec = &sandbox.spec;
        let (ingress_rate, egress_rate) = cni::bandwidth(&spec.annotations);
        let pod = cni::PodNetwork {
            id: sandbox.id.clone(),
            netns,
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            uid: spec.uid.clone(),
            port_mappings: spec.port_mappings.clone(),
            ingress_rate,
            egress_rate,
            dns: spec.dns.clone(),
            cgroup_path: format!("/{}", sandbox.cgroup),
        };
        let mut attachments = self.network.plan(&pod)?;
        write_attachments(dir, &attachments)?;
        for attachment in attachments.iter_mut() {
            // On failure, the ones joined before are left by `destroy`, through the plan.
            self.network.add(attachment).await?;
        }
        write_attachments(dir, &attachments)?;
        sandbox.ips = attachments.iter().flat_map(|a| a.addresses().ips).collect();
        // A pod without DNS settings of its own takes the ones its network gives.
        if let (None, Some(first)) = (&sandbox.spec.dns, attachments.first()) {
            let given = first.addresses();
            if !given.nameservers.is_empty() {
                let dns = sandbox::Dns {
                    servers: given.nameservers,
                    searches: given.search,
                    options: given.options,
                };
                let path = dir.join("resolv.conf");
                let text = sandbox::resolv_conf(Some(&dns), "");
                state::write_atomic(&path, text.as_bytes())
                    .map_err(io_err("cannot write", &path))?;
            }
        }
        Ok(())
    }

    /// `DEL` of every network the pod joined (retried: a plugin may fail on a busy node),
    /// then the cache goes. Without a cache there is nothing to release.
    pub(in crate::runtime) async fn leave_networks(&self, id: &str) -> Result<()> {
        let dir = self.sandbox_dir(id);
        let Some(attachments) = read_attachments(&dir)? else {
            return Ok(());
        };
        for attachment in attachments.iter().rev() {
            let mut tries = 0;
            loop {
                tries += 1;
                match self.network.del(attachment).await {
                    Ok(()) => break,
                    Err(e) if tries < 3 => {
                        tracing::warn!(sandbox = %id, error = %e, "CNI DEL failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let path = cni::cache_path(&dir);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("cannot remove", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// `CHECK` of each network a ready pod joined: (network, interface, what was wrong).
    pub async fn check_networks(
        &self,
        sandbox: &Sandbox,
    ) -> Result<Vec<(String, String, Option<String>)>> {
        let attachments = read_attachments(&self.sandbox_dir(&sandbox.id))?.unwrap_or_default();
        let mut out = Vec::new();
        for a in attachments.iter().filter(|a| a.result.is_some()) {
            let problem = if sandbox.state == SandboxState::Ready {
                self.network.check(a).await.err().map(|e| e.to_string())
            } else {
                Some("the pod is not ready".into())
            };
            out.push((a.network.clone(), a.ifname.clone(), problem));
        }
        Ok(out)
    }

    /// The network namespace of a ready pod (`None`: it uses the node's), for a port-forward.
    pub async fn pod_network(&self, id: &str) -> Result<Option<PathBuf>> {
        let sandbox = self.pod(id).await?;
        sandbox.can_host().map_err(Error::Precondition)?;
        Ok(sandbox.namespaces.get("net").cloned())
    }
}
