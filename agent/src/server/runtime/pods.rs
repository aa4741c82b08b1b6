//! RuntimeService RPCs of pod sandboxes: run, stop, remove, status, list, resource updates.

use std::collections::HashMap;

use strata_api::cri::{self, ContainerEventType};
use tonic::{Request, Response, Status};

use super::BoxStream;
use crate::runtime::{ContainerFilter, container::ContainerState};
use crate::server::{
    Context,
    convert::pod::{self as convert, cri_pod, cri_pod_status, pod_spec, sandbox_filter},
    events::Subject,
};

pub(super) async fn run_pod_sandbox(
    ctx: &Context,
    request: Request<cri::RunPodSandboxRequest>,
) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
    let request = request.into_inner();
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox needs a config"))?;
    let spec = pod_spec(config, request.runtime_handler)?;
    let sandbox = ctx.runtime.run_pod(spec).await?;
    tracing::info!(pod_id = %sandbox.id, name = %sandbox.spec.full_name(), "pod sandbox running");
    let subject = Subject::Pod(&sandbox.id);
    ctx.emit(subject, ContainerEventType::ContainerCreatedEvent)
        .await;
    ctx.emit(subject, ContainerEventType::ContainerStartedEvent)
        .await;
    Ok(Response::new(cri::RunPodSandboxResponse {
        pod_sandbox_id: sandbox.id,
    }))
}

pub(super) async fn stop_pod_sandbox(
    ctx: &Context,
    request: Request<cri::StopPodSandboxRequest>,
) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
    let id = request.into_inner().pod_sandbox_id;
    if id.is_empty() {
        return Err(Status::invalid_argument("pod sandbox id is empty"));
    }
    let before = pod_containers(ctx, &id).await;
    // Stopping a pod that is not there succeeds (CRI: stop is idempotent; the kubelet stops
    // pods it no longer finds).
    // (Removed between the stop and the look-up: stopped all the same.)
    let stopped = match ctx.runtime.stop_pod(&id).await {
        Ok(()) => ctx.runtime.pod(&id).await,
        Err(e) => Err(e),
    };
    let pod_id = match stopped {
        Ok(pod) => pod.id,
        Err(crate::runtime::Error::SandboxNotFound(_)) => {
            return Ok(Response::new(cri::StopPodSandboxResponse {}));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(pod_id = %pod_id, "pod sandbox stopped");
    for (c, state) in &before {
        if *state == ContainerState::Running {
            let subject = Subject::Container {
                id: c,
                pod_id: &pod_id,
            };
            ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
                .await;
        }
    }
    ctx.emit(
        Subject::Pod(&pod_id),
        ContainerEventType::ContainerStoppedEvent,
    )
    .await;
    Ok(Response::new(cri::StopPodSandboxResponse {}))
}

pub(super) async fn remove_pod_sandbox(
    ctx: &Context,
    request: Request<cri::RemovePodSandboxRequest>,
) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
    let id = request.into_inner().pod_sandbox_id;
    if id.is_empty() {
        return Err(Status::invalid_argument("pod sandbox id is empty"));
    }
    let pod_id = ctx.runtime.pod(&id).await.ok().map(|p| p.id);
    let before = pod_containers(ctx, &id).await;
    ctx.runtime.remove_pod(&id).await?;
    // Removing a pod that is not there is not an error, and nothing to tell.
    let Some(pod_id) = pod_id else {
        return Ok(Response::new(cri::RemovePodSandboxResponse {}));
    };
    tracing::info!(pod_id = %pod_id, "pod sandbox removed");
    for (c, state) in &before {
        let subject = Subject::Container {
            id: c,
            pod_id: &pod_id,
        };
        if *state != ContainerState::Created {
            ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
                .await;
        }
        ctx.emit(subject, ContainerEventType::ContainerDeletedEvent)
            .await;
    }
    let subject = Subject::Pod(&pod_id);
    ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
        .await;
    ctx.emit(subject, ContainerEventType::ContainerDeletedEvent)
        .await;
    Ok(Response::new(cri::RemovePodSandboxResponse {}))
}

/// The containers of pod `id` (a prefix is fine) and their states.
async fn pod_containers(ctx: &Context, id: &str) -> Vec<(String, ContainerState)> {
    let Ok(pod) = ctx.runtime.pod(id).await else {
        return Vec::new();
    };
    let filter = ContainerFilter {
        pod_id: Some(pod.id),
        ..Default::default()
    };
    ctx.runtime
        .containers(&filter)
        .await
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect()
}

/// The kubelet's pod-level resources after an in-place resize: recorded with the pod (as
/// at RunPodSandbox, where they are not enforced either).
pub(super) async fn update_pod_sandbox_resources(
    ctx: &Context,
    request: Request<cri::UpdatePodSandboxResourcesRequest>,
) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
    let request = request.into_inner();
    if request.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument("pod sandbox id is empty"));
    }
    ctx.runtime
        .update_pod_resources(
            &request.pod_sandbox_id,
            request.overhead.map(convert::resources),
            request.resources.map(convert::resources),
        )
        .await?;
    Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
}

pub(super) async fn pod_sandbox_status(
    ctx: &Context,
    request: Request<cri::PodSandboxStatusRequest>,
) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
    let request = request.into_inner();
    let sandbox = ctx.runtime.pod(&request.pod_sandbox_id).await?;
    let mut info = HashMap::new();
    if request.verbose {
        let networks: Vec<_> = ctx
            .runtime
            .check_networks(&sandbox)
            .await?
            .into_iter()
            .map(|(name, ifname, problem)| {
                serde_json::json!({"name": name, "interface": ifname, "check": problem.unwrap_or_else(|| "ok".into())})
            })
            .collect();
        let details = serde_json::json!({
            "networks": networks,
            "ips": sandbox.ips,
            "id": sandbox.id,
            "name": sandbox.spec.full_name(),
            "cgroup": sandbox.cgroup,
            "cgroupExists": ctx.runtime.pod_cgroup_exists(&sandbox),
            "cgroupVersion": ctx.runtime.cgroup_version(),
            "namespaces": sandbox.namespaces,
            "sandboxDir": ctx.runtime.sandbox_dir(&sandbox.id),
            "spec": sandbox.spec,
        });
        info.insert("info".to_string(), details.to_string());
    }
    // The pod's containers too: the kubelet's evented PLEG reads them from here (with the
    // timestamp) instead of listing containers.
    let timestamp = crate::clock::now_nanos();
    let filter = ContainerFilter {
        pod_id: Some(sandbox.id.clone()),
        ..Default::default()
    };
    let containers_statuses = ctx
        .runtime
        .containers(&filter)
        .await
        .iter()
        .map(crate::server::convert::container::cri_status)
        .collect();
    Ok(Response::new(cri::PodSandboxStatusResponse {
        status: Some(cri_pod_status(&sandbox)),
        info,
        containers_statuses,
        timestamp,
    }))
}

pub(super) async fn list_pod_sandbox(
    ctx: &Context,
    request: Request<cri::ListPodSandboxRequest>,
) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
    let filter = sandbox_filter(request.into_inner().filter);
    let items = ctx
        .runtime
        .pods(&filter)
        .await
        .iter()
        .map(cri_pod)
        .collect();
    Ok(Response::new(cri::ListPodSandboxResponse { items }))
}

pub(super) async fn stream_pod_sandboxes(
    ctx: &Context,
    request: Request<cri::StreamPodSandboxesRequest>,
) -> Result<Response<BoxStream<cri::StreamPodSandboxesResponse>>, Status> {
    let filter = sandbox_filter(request.into_inner().filter);
    let pods: Vec<cri::PodSandbox> = ctx
        .runtime
        .pods(&filter)
        .await
        .iter()
        .map(cri_pod)
        .collect();
    Ok(Response::new(crate::server::chunked(
        pods,
        |pod_sandboxes| cri::StreamPodSandboxesResponse { pod_sandboxes },
    )))
}
