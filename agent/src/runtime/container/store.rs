//! The container store: the records in memory and on disk, brought up to date with what
//! each container's monitor recorded (refresh, settle), the lookups and lists, the
//! per-container operation locks and the name reservations of creates in flight.

use std::{path::PathBuf, sync::Arc};

use crate::{
    oci::Exit, runtime::Error, runtime::Result, runtime::Runtime, runtime::container::Container,
    runtime::container::ContainerState, runtime::container::Layout,
};

/// Which containers a list asks for; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub pod_id: Option<String>,
    pub state: Option<ContainerState>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A container name being created, held until the create ends either way.
pub(in crate::runtime) struct NameReservation<'a> {
    names: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    name: String,
}

impl<'a> NameReservation<'a> {
    /// `None` when another create holds the name.
    pub(in crate::runtime) fn take(
        names: &'a std::sync::Mutex<std::collections::HashSet<String>>,
        name: String,
    ) -> Option<NameReservation<'a>> {
        let fresh = names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        fresh.then_some(NameReservation { names, name })
    }
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

pub(in crate::runtime) use super::Refreshed;

/// Kills a scope's placeholder process, if it is still the one started then.
pub(in crate::runtime) fn kill_placeholder(pid: u32, started: Option<u64>) {
    crate::sys::process::signal_if(pid, rustix::process::Signal::KILL, || {
        crate::sys::process::start_time(pid) == started
    });
}

/// A container's cgroup inside its pod's: a scope with the systemd driver (the pod's cgroup
/// is then a slice), a directory named by its id with cgroupfs.
pub(in crate::runtime) fn container_cgroup(pod_cgroup: &str, id: &str) -> String {
    match crate::cgroup::systemd::unit_of(pod_cgroup) {
        Some(_) => format!("{pod_cgroup}/{}", crate::cgroup::systemd::scope(id)),
        None => format!("{pod_cgroup}/{id}"),
    }
}

impl Runtime {
    /// A container's directory (its config, records and its monitor's attach socket).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    pub(in crate::runtime) fn container_layout(&self, id: &str) -> Layout {
        Layout {
            dir: self.containers_dir.join(id),
        }
    }

    /// The uid, gid and groups a running container's first process has (read from the
    /// kernel, as ContainerStatus.user reports them); those its init was to apply otherwise.
    pub fn process_user(&self, c: &Container) -> crate::oci::spec::User {
        let running = c.state == ContainerState::Running;
        match c.pid.filter(|_| running).and_then(crate::sys::process::ids) {
            Some((uid, gid, additional_gids)) => crate::oci::spec::User {
                uid,
                gid,
                additional_gids,
            },
            None => c.user.clone(),
        }
    }

    pub(in crate::runtime) fn save_container(&self, c: &Container) -> Result<()> {
        crate::runtime::write_record(&self.containers_dir.join(&c.id).join("state.json"), c)
    }

    /// Brings a record up to date with what the monitor recorded, in memory only (the
    /// caller may hold the containers lock): what it returns is to be [`settle`]d once the
    /// lock is released.
    ///
    /// [`settle`]: Runtime::settle
    pub(in crate::runtime) fn refresh(&self, c: &mut Container) -> Refreshed {
        if c.state == ContainerState::Exited {
            return Refreshed::Unchanged;
        }
        let seen = self.observe(c);
        c.refresh(&seen)
    }

    /// What the host says of a container that has not exited: the exit record (an
    /// unreadable one is not there yet), the `started` marker's time, its monitor's life.
    fn observe(&self, c: &Container) -> super::Observed {
        let layout = self.container_layout(&c.id);
        let exit = std::fs::read(layout.exit_file())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Exit>(&bytes).ok());
        let started_at = std::fs::metadata(layout.started())
            .ok()
            .and_then(|marker| marker.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        super::Observed {
            monitor_alive: exit.is_some() || !self.monitor_is_gone(c, &layout),
            exit,
            started_at,
        }
    }

    /// A container whose monitor died (killed, OOM-killed, a reboot) has no one to record
    /// its exit or write its log: what is left of it is killed, then it is reported exited,
    /// its status unknown, so that it can be stopped and removed like any other
    /// ([`settle_orphan`](Runtime::settle_orphan)).
    pub(in crate::runtime) fn monitor_is_gone(&self, c: &Container, layout: &Layout) -> bool {
        let Some((pid, started)) = c.monitor else {
            return false;
        };
        if crate::sys::process::start_time(pid) == Some(started) {
            return false;
        }
        // It may have recorded the exit just before it went.
        !layout.exit_file().exists()
    }

    /// Records that `c`'s monitor died: once what was left of it is killed, so that nobody
    /// is told it exited while its processes still run.
    pub(in crate::runtime) fn mark_orphaned(c: &mut Container) {
        tracing::warn!(container_id = %c.id, "the container's monitor died");
        c.orphaned(crate::clock::now_nanos());
    }

    /// Kills what is left of a container whose monitor died, then records it exited.
    pub(in crate::runtime) async fn settle_orphan(
        &self,
        id: &str,
        cgroup: &str,
    ) -> Result<Container> {
        if let Ok(cgroup) = self.cgroups.cgroup(cgroup) {
            let killed = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
            if let Ok(Err(e)) = killed {
                tracing::warn!(container_id = %id, error = %e, "cannot kill an unmonitored container");
            }
        }
        let mut containers = self.containers.lock().await;
        let c = containers
            .get_mut(id)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        if c.state != ContainerState::Exited && self.monitor_is_gone(c, &self.container_layout(id))
        {
            Self::mark_orphaned(c);
        }
        let c = c.clone();
        drop(containers);
        self.settle(vec![(c.clone(), Refreshed::Changed)]).await;
        Ok(c)
    }

    /// Persists what [`refresh`](Runtime::refresh) found, outside every lock and off the
    /// async threads: fsynced records, and the processes of orphaned containers killed.
    pub(in crate::runtime) async fn settle(&self, changed: Vec<(Container, Refreshed)>) {
        if changed.is_empty() {
            return;
        }
        // What is written is the record as it is now, not as the caller saw it: another call
        // may have moved it on meanwhile. A record removed meanwhile is not written again.
        let work: Vec<_> = {
            let containers = self.containers.lock().await;
            changed
                .into_iter()
                .filter(|(_, r)| *r != Refreshed::Unchanged)
                .filter_map(|(c, _)| {
                    let current = containers.get(&c.id)?.clone();
                    let path = self.containers_dir.join(&current.id).join("state.json");
                    Some((path, current))
                })
                .collect()
        };
        let done = tokio::task::spawn_blocking(move || {
            for (path, c) in work {
                if let Err(e) = crate::runtime::write_record(&path, &c) {
                    tracing::warn!(container = %c.id, error = %e, "cannot record the exit");
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot record container states");
        }
    }

    /// At start-up: every container brought up to date with the machine before the first
    /// call (exits recorded while the daemon was down; containers whose monitor is gone are
    /// exited and what is left of them killed).
    pub(in crate::runtime) fn reconcile_containers(&self) {
        // Nothing else can hold the lock before the runtime is handed out.
        let Ok(mut containers) = self.containers.try_lock() else {
            return;
        };
        for c in containers.values_mut() {
            let refreshed = self.refresh(c);
            if refreshed == Refreshed::Orphaned {
                if let Ok(cgroup) = self.cgroups.cgroup(&c.cgroup)
                    && let Err(e) = cgroup.kill_all()
                {
                    tracing::warn!(container = %c.id, error = %e, "cannot kill an unmonitored container");
                }
                Self::mark_orphaned(c);
            }
            if refreshed != Refreshed::Unchanged
                && let Err(e) = self.save_container(c)
            {
                tracing::warn!(container = %c.id, error = %e, "cannot record a container's state");
            }
        }
    }

    /// The lock of one container's (or, keyed `pod/<id>`, one pod's) operations: start,
    /// stop, remove. Two of them on the same one wait for each other, on different ones
    /// never.
    pub(in crate::runtime) async fn op_lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.op_locks.lock().unwrap_or_else(|p| p.into_inner());
            // Locks of removed containers go when nothing holds them.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(locks.entry(id.to_string()).or_default())
        };
        lock.lock_owned().await
    }

    /// A container by id or unique id prefix, up to date.
    pub async fn container(&self, id: &str) -> Result<Container> {
        let mut containers = self.containers.lock().await;
        if id.is_empty() {
            return Err(Error::Invalid {
                what: "container id".into(),
                reason: "empty".into(),
            });
        }
        let keys: Vec<String> = containers
            .keys()
            .filter(|k| k.starts_with(id))
            .cloned()
            .collect();
        let key = match keys.as_slice() {
            [one] => one.clone(),
            [] => return Err(Error::ContainerNotFound(id.to_string())),
            _ => {
                return Err(Error::Invalid {
                    what: format!("container id {id:?}"),
                    reason: "matches more than one container".into(),
                });
            }
        };
        let c = containers
            .get_mut(&key)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        let refreshed = self.refresh(c);
        if refreshed == Refreshed::Orphaned {
            let cgroup = c.cgroup.clone();
            drop(containers);
            return self.settle_orphan(&key, &cgroup).await;
        }
        let c = c.clone();
        drop(containers);
        self.settle(vec![(c.clone(), refreshed)]).await;
        Ok(c)
    }

    pub async fn containers(&self, filter: &ContainerFilter) -> Vec<Container> {
        let mut containers = self.containers.lock().await;
        let mut out = Vec::new();
        let mut changed = Vec::new();
        let mut orphans = Vec::new();
        for c in containers.values_mut() {
            let refreshed = self.refresh(c);
            if refreshed == Refreshed::Orphaned {
                orphans.push((c.id.clone(), c.cgroup.clone()));
            } else if refreshed != Refreshed::Unchanged {
                changed.push((c.clone(), refreshed));
            }
            let keep = filter
                .id
                .as_ref()
                .is_none_or(|id| c.id.starts_with(id.as_str()))
                && filter
                    .pod_id
                    .as_ref()
                    .is_none_or(|p| c.pod_id.starts_with(p.as_str()))
                && filter.state.is_none_or(|s| c.state == s)
                && filter
                    .labels
                    .iter()
                    .all(|(k, v)| c.spec.labels.get(k) == Some(v));
            if keep {
                out.push(c.clone());
            }
        }
        drop(containers);
        self.settle(changed).await;
        if orphans.is_empty() {
            return out;
        }
        // Listed again once they are settled: they are exited now, and may not pass the
        // filter any more.
        for (id, cgroup) in orphans {
            let _ = self.settle_orphan(&id, &cgroup).await;
        }
        Box::pin(self.containers(filter)).await
    }

    /// Ids of the containers of a pod.
    pub(in crate::runtime) async fn pod_containers(&self, pod_id: &str) -> Vec<String> {
        let containers = self.containers.lock().await;
        containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| c.id.clone())
            .collect()
    }
}
