//! Container events (CRI `GetContainerEvents`), as the kubelet's evented PLEG reads them:
//! a container (or a pod, whose events carry the pod's id as the container's) was created,
//! started, stopped or deleted, with the pod's status and its containers' statuses as they
//! are when the event goes out.
//!
//! Events are broadcast through a bounded queue. Sending never waits: a subscriber that
//! falls a whole queue behind is dropped (its stream ends with RESOURCE_EXHAUSTED and it
//! must list again), so a client that never reads cannot slow the daemon or grow its memory.

use std::{collections::HashSet, sync::Arc};

use strata_api::cri::{self, ContainerEventType};
use tokio::sync::broadcast;
use tonic::Status;

use super::{
    BoxStream, Context,
    convert::{container::cri_status, pod::cri_pod_status},
};
use crate::runtime::{ContainerFilter, container::ContainerState};

/// The events queue and what was already said.
pub struct Events {
    tx: broadcast::Sender<Arc<cri::ContainerEventResponse>>,
    /// Held while an event is built and sent, so that each subject's events go out in the
    /// order they happened; holds the subjects whose STOPPED event went out (it is said
    /// once, whoever notices the exit first).
    stopped: tokio::sync::Mutex<HashSet<String>>,
}

/// What an event is about.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Pod(&'a str),
    Container { id: &'a str, pod_id: &'a str },
}

impl Events {
    /// `queue`: the events a subscriber may be behind before it is dropped.
    pub fn new(queue: usize) -> Events {
        let (tx, _) = broadcast::channel(queue.max(1));
        Events {
            tx,
            stopped: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// How many clients are subscribed.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A subscription: every event from now on, until the subscriber falls behind.
    pub fn subscribe(&self) -> BoxStream<cri::ContainerEventResponse> {
        let rx = self.tx.subscribe();
        Box::pin(futures_util::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(event) => Some((Ok(Arc::unwrap_or_clone(event)), Some(rx))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "an events subscriber fell behind; dropped");
                    Some((
                        Err(Status::resource_exhausted(format!(
                            "this subscriber fell {missed} events behind and was dropped; \
                             subscribe again and list what it missed"
                        ))),
                        None,
                    ))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }
}

impl Context {
    /// Says that `subject` was created, started, stopped or deleted. STOPPED goes out once
    /// per subject; statuses are read while the event is built.
    pub async fn emit(&self, subject: Subject<'_>, kind: ContainerEventType) {
        let (id, pod_id) = match subject {
            Subject::Pod(id) => (id, id),
            Subject::Container { id, pod_id } => (id, pod_id),
        };
        let mut stopped = self.events.stopped.lock().await;
        match kind {
            ContainerEventType::ContainerStoppedEvent if !stopped.insert(id.to_string()) => {
                return;
            }
            ContainerEventType::ContainerStoppedEvent if id != pod_id => {
                let reason = self.runtime.container(id).await.map(|c| c.reason);
                crate::metrics::exit(reason.as_deref().unwrap_or("Unknown"));
            }
            ContainerEventType::ContainerDeletedEvent => {
                stopped.remove(id);
            }
            _ => {}
        }
        if self.events.subscribers() == 0 {
            return;
        }
        let pod_sandbox_status = self
            .runtime
            .pod(pod_id)
            .await
            .ok()
            .map(|s| cri_pod_status(&s));
        let filter = ContainerFilter {
            pod_id: Some(pod_id.to_string()),
            ..Default::default()
        };
        let containers_statuses = self
            .runtime
            .containers(&filter)
            .await
            .iter()
            .map(cri_status)
            .collect();
        let event = cri::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind.into(),
            created_at: crate::clock::now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        };
        // No receiver left since the check: nobody to tell.
        let _ = self.events.tx.send(Arc::new(event));
    }

    /// Says STOPPED when the container `id` exits, whoever stops it (or when it ends by
    /// itself). For a container that is running or about to. The watch is in place when
    /// this returns.
    pub async fn watch_exit(self: &Arc<Self>, id: String) {
        let Ok(exit) = self.runtime.exit_watch(&id).await else {
            return;
        };
        let ctx = Arc::clone(self);
        tokio::spawn(async move {
            exit.await;
            match ctx.runtime.container(&id).await {
                Ok(c) if c.state == ContainerState::Exited => {
                    let subject = Subject::Container {
                        id: &c.id,
                        pod_id: &c.pod_id,
                    };
                    ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
                        .await;
                }
                // Removed meanwhile: its removal says what happened.
                Ok(_) | Err(_) => {}
            }
        });
    }
}
