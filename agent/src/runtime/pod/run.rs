//! RunPodSandbox: the request checked, the pod's namespaces pinned (and its PID-namespace
//! holder spawned), its cgroup made, its networks joined; undone whole if a step fails.

use std::{collections::BTreeMap, path::Path};

use crate::{
    cgroup, oci, oci::Helper, runtime::CREATING, runtime::Error, runtime::PathKind,
    runtime::Result, runtime::Runtime, runtime::check_path, runtime::container, runtime::io_err,
    runtime::new_id, runtime::sandbox, runtime::sandbox::NamespaceMode, runtime::sandbox::PodSpec,
    runtime::sandbox::Sandbox, runtime::sandbox::SandboxState, runtime::spawn_pid_holder,
    runtime::write_record, state,
};

pub(in crate::runtime) fn validate(spec: &PodSpec) -> Result<()> {
    let invalid = |what: &str, reason: &str| {
        Err(Error::Invalid {
            what: what.to_string(),
            reason: reason.to_string(),
        })
    };
    if spec.name.is_empty() || spec.namespace.is_empty() || spec.uid.is_empty() {
        return invalid("pod metadata", "name, namespace and uid are required");
    }
    if !spec.runtime_handler.is_empty() {
        return invalid(
            &format!("runtime handler {:?}", spec.runtime_handler),
            "unknown (strata has only the default handler)",
        );
    }
    if !spec.log_directory.is_empty() {
        check_path("log_directory", &spec.log_directory, PathKind::Absolute)?;
    }
    for (name, value) in &spec.sysctls {
        let owned = match sandbox::sysctl_namespace(name) {
            Some("net") => spec.network != NamespaceMode::Node,
            Some("ipc") => spec.ipc != NamespaceMode::Node,
            Some(_) => spec.network != NamespaceMode::Node,
            None => {
                return invalid(
                    &format!("sysctl {name:?}"),
                    "not a namespaced sysctl: it would change the whole node",
                );
            }
        };
        let path = sandbox::sysctl_path(name);
        if !owned {
            return invalid(
                &format!("sysctl {name:?}"),
                "the pod shares that namespace with the node",
            );
        }
        if path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
            || value.contains(['\n', '\0'])
        {
            return invalid(&format!("sysctl {name:?}"), "malformed name or value");
        }
    }
    if !spec.hostname.is_empty() && !sandbox::valid_hostname(&spec.hostname) {
        return invalid(
            &format!("hostname {:?}", spec.hostname),
            "must be 1-64 letters, digits, '-' or '.'",
        );
    }
    for (what, mode) in [("network", spec.network), ("ipc", spec.ipc)] {
        if matches!(mode, NamespaceMode::Container | NamespaceMode::Target) {
            return invalid(
                &format!("{what} namespace mode"),
                "a pod's must be POD or NODE",
            );
        }
    }
    spec.resources.validate()?;
    if !spec.cgroup_parent.is_empty() {
        // Checked by the hierarchy's path rules.
        let rel = spec.cgroup_parent.trim_matches('/');
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return invalid(
                &format!("cgroup parent {:?}", spec.cgroup_parent),
                "must be a plain path",
            );
        }
    }
    Ok(())
}

/// Runs the pinning helper (`stratad __pinns`) for `kinds`, which sets `sysctls` in them.
pub(in crate::runtime) async fn pin_namespaces(
    dir: &Path,
    hostname: &str,
    kinds: &[&str],
    sysctls: &BTreeMap<String, String>,
) -> Result<()> {
    let output = oci::helper_command(Helper::Pinns)
        .map_err(|e| Error::Namespaces(format!("finding our own binary: {e}")))?
        .arg(dir)
        .arg(hostname)
        .args(kinds)
        .arg("--")
        .args(
            sysctls
                .iter()
                .map(|(name, value)| format!("{}={value}", sandbox::sysctl_path(name))),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Namespaces(format!("running the helper: {e}")))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(Error::Namespaces(if text.is_empty() {
            output.status.to_string()
        } else {
            text
        }));
    }
    Ok(())
}

/// The scope of a pod's PID-namespace holder, with the systemd driver.
pub(in crate::runtime) fn holder_scope(pod: &str) -> String {
    cgroup::systemd::scope(&format!("pod-{pod}"))
}

/// The pod's /dev/shm: a tmpfs of 64 MiB, like the default of other runtimes.
pub(in crate::runtime) fn mount_shm(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_err("cannot create", path))?;
    crate::sys::mount::tmpfs(path, "mode=1777,size=65536k")
        .map_err(|e| io_err("cannot mount a tmpfs on", path)(e))
}

impl Runtime {
    pub async fn run_pod(&self, spec: PodSpec) -> Result<Sandbox> {
        validate(&spec)?;
        // A pod of its own network needs one to join: refused before anything is built,
        // as containerd and CRI-O refuse it while the node's network is not ready.
        if spec.network != NamespaceMode::Node {
            self.network.status().await?;
        }
        // The name is reserved under the lock; the pod is built without it (namespaces
        // pinned, the PID holder spawned), so that no other call waits for it.
        let _reserved = {
            let sandboxes = self.sandboxes.lock().await;
            if let Some(existing) = sandboxes
                .values()
                .find(|s| s.spec.full_name() == spec.full_name())
            {
                return Err(Error::SandboxExists {
                    name: spec.full_name(),
                    id: existing.id.clone(),
                });
            }
            container::NameReservation::take(&self.creating_pods, spec.full_name()).ok_or(
                Error::SandboxExists {
                    name: spec.full_name(),
                    id: "(being created)".into(),
                },
            )?
        };
        let id = new_id().map_err(io_err("cannot read", Path::new("/dev/urandom")))?;
        let parent = if spec.cgroup_parent.is_empty() {
            self.cgroup_parent.clone()
        } else {
            spec.cgroup_parent.trim_matches('/').to_string()
        };
        let cgroup = match &self.systemd {
            // A slice of its own inside the parent slice.
            Some(_) => {
                // The parent must be a slice, as the kubelet names them with this driver.
                cgroup::systemd::slice_path(&parent)?;
                cgroup::systemd::slice_path(&cgroup::systemd::pod_slice(&parent, &id))?
            }
            None => format!("{parent}/pod-{id}"),
        };
        let sandbox = Sandbox {
            cgroup,
            id: id.clone(),
            state: SandboxState::Ready,
            created_at: crate::clock::now_nanos(),
            namespaces: BTreeMap::new(),
            shm: None,
            pid_holder: None,
            pid_holder_started: None,
            ips: Vec::new(),
            spec,
        };
        match self.create(sandbox).await {
            Ok(sandbox) => {
                self.sandboxes.lock().await.insert(id, sandbox.clone());
                Ok(sandbox)
            }
            Err((e, partial)) => {
                // Undo whatever was made; the pod never existed.
                self.destroy(&partial).await;
                Err(e)
            }
        }
    }

    /// Builds the pod on the machine. On failure, returns what was built so far.
    pub(in crate::runtime) async fn create(
        &self,
        mut sandbox: Sandbox,
    ) -> std::result::Result<Sandbox, (Error, Sandbox)> {
        macro_rules! attempt {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((e.into(), sandbox)),
                }
            };
        }
        let dir = self.sandbox_dir(&sandbox.id);
        attempt!(std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir)));
        // What a crash during the build leaves is found through this (its cgroup, with the
        // PID holder in it), and undone at the next start.
        attempt!(write_record(&dir.join(CREATING), &sandbox));
        // CRI leaves the hostname optional; without one a pod takes the node's, as on
        // containerd and CRI-O.
        let hostname = if sandbox.spec.hostname.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            sandbox.spec.hostname.clone()
        };
        let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for (name, content) in [
            ("hostname", format!("{hostname}\n")),
            ("hosts", sandbox::hosts_file(&hostname)),
            (
                "resolv.conf",
                sandbox::resolv_conf(sandbox.spec.dns.as_ref(), &node_resolv),
            ),
        ] {
            let path = dir.join(name);
            attempt!(
                state::write_atomic(&path, content.as_bytes())
                    .map_err(io_err("cannot write", &path))
            );
        }
        // The pod's resources are recorded, not enforced: the kubelet fills them from the
        // containers that declare limits and enforces pod limits itself, on the pod cgroup
        // it gives as the parent. Capping this cgroup too would cap an unlimited container
        // at its neighbours' sum (containerd and CRI-O pass them on, and enforce nothing).
        let unenforced = cgroup::Resources::default();
        if let (Some(systemd), Some(unit)) =
            (&self.systemd, cgroup::systemd::unit_of(&sandbox.cgroup))
        {
            attempt!(systemd.start_slice(unit, &unenforced).await);
        }
        // Also with systemd: the controllers it leaves alone (cpuset, freezer on v1).
        let cgroup = attempt!(self.cgroups.create(&sandbox.cgroup));
        attempt!(cgroup.set(&unenforced));

        // A host-network pod shares the node's network and UTS namespaces.
        let mut kinds = Vec::new();
        if sandbox.spec.network != NamespaceMode::Node {
            kinds.extend(["net", "uts"]);
        }
        if sandbox.spec.ipc != NamespaceMode::Node {
            kinds.push("ipc");
        }
        if !kinds.is_empty() {
            let ns_dir = self.pins.join(&sandbox.id).join("ns");
            sandbox.namespaces = kinds
                .iter()
                .map(|k| (k.to_string(), ns_dir.join(k)))
                .collect();
            attempt!(pin_namespaces(&ns_dir, &hostname, &kinds, &sandbox.spec.sysctls).await);
            crate::failpoint::hit("pod.pinned");
        }
        if sandbox.spec.network != NamespaceMode::Node {
            let netns = self.pins.join(&sandbox.id).join("ns").join("net");
            attempt!(self.join_networks(&mut sandbox, netns, &dir).await);
            crate::failpoint::hit("pod.networked");
        }
        if sandbox.spec.pid == NamespaceMode::Pod {
            let dir = self.pins.join(&sandbox.id);
            attempt!(std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir)));
            let pid = attempt!(spawn_pid_holder().await);
            sandbox.pid_holder = Some(pid);
            sandbox.pid_holder_started = crate::sys::process::start_time(pid);
            match (&self.systemd, cgroup::systemd::unit_of(&sandbox.cgroup)) {
                // A scope of its own in the pod's slice (a slice holds no processes).
                (Some(systemd), Some(slice)) => attempt!(
                    systemd
                        .start_scope(&holder_scope(&sandbox.id), slice, pid, &Default::default())
                        .await
                ),
                // In the pod's cgroup (a leaf of its own, as v2 keeps processes in leaves).
                _ => attempt!(
                    cgroup
                        .create_leaf(crate::cgroup::POD_HOLDER_LEAF)
                        .and_then(|leaf| leaf.add_pid(pid))
                        .map_err(Error::from)
                ),
            }
        }
        if sandbox.spec.ipc != NamespaceMode::Node {
            let shm = self.pins.join(&sandbox.id).join("shm");
            sandbox.shm = Some(shm.clone());
            attempt!(mount_shm(&shm));
        }
        attempt!(self.save(&sandbox));
        let _ = std::fs::remove_file(dir.join(CREATING));
        Ok(sandbox)
    }

    /// The cgroup of a pod's PID-namespace holder.
    pub(in crate::runtime) fn holder_cgroup(&self, sandbox: &Sandbox) -> Result<cgroup::Cgroup> {
        let pod = self.cgroups.cgroup(&sandbox.cgroup)?;
        Ok(match cgroup::systemd::unit_of(&sandbox.cgroup) {
            Some(_) => pod.child(&holder_scope(&sandbox.id))?,
            None => pod.child(crate::cgroup::POD_HOLDER_LEAF)?,
        })
    }
}
