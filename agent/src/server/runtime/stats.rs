//! RuntimeService RPCs of cgroup and disk counters of containers and pods.

use strata_api::cri;
use tonic::{Request, Response, Status};

use super::pod_running_containers;
use crate::runtime::{SandboxFilter, sandbox::SandboxState};
use crate::server::{Context, convert::container as container_convert};

pub(super) async fn container_stats(
    ctx: &Context,
    request: Request<cri::ContainerStatsRequest>,
) -> Result<Response<cri::ContainerStatsResponse>, Status> {
    let c = ctx
        .runtime
        .container(&request.into_inner().container_id)
        .await?;
    Ok(Response::new(cri::ContainerStatsResponse {
        stats: Some(container_convert::container_stats(ctx, &c).await),
    }))
}

pub(super) async fn list_container_stats(
    ctx: &Context,
    request: Request<cri::ListContainerStatsRequest>,
) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
    let f = request.into_inner().filter.unwrap_or_default();
    let filter = crate::runtime::ContainerFilter {
        id: Some(f.id).filter(|s| !s.is_empty()),
        pod_id: Some(f.pod_sandbox_id).filter(|s| !s.is_empty()),
        state: Some(crate::runtime::container::ContainerState::Running),
        labels: f.label_selector.into_iter().collect(),
    };
    let containers = ctx.runtime.containers(&filter).await;
    let mut stats = Vec::with_capacity(containers.len());
    for c in &containers {
        stats.push(container_convert::container_stats(ctx, c).await);
    }
    Ok(Response::new(cri::ListContainerStatsResponse { stats }))
}

pub(super) async fn pod_sandbox_stats(
    ctx: &Context,
    request: Request<cri::PodSandboxStatsRequest>,
) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
    let sandbox = ctx
        .runtime
        .pod(&request.into_inner().pod_sandbox_id)
        .await?;
    let containers = pod_running_containers(ctx, &sandbox.id).await;
    Ok(Response::new(cri::PodSandboxStatsResponse {
        stats: Some(container_convert::pod_stats(ctx, &sandbox, &containers).await),
    }))
}

pub(super) async fn list_pod_sandbox_stats(
    ctx: &Context,
    request: Request<cri::ListPodSandboxStatsRequest>,
) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
    let f = request.into_inner().filter.unwrap_or_default();
    let filter = SandboxFilter {
        id: Some(f.id).filter(|s| !s.is_empty()),
        state: Some(SandboxState::Ready),
        labels: f.label_selector.into_iter().collect(),
    };
    let mut stats = Vec::new();
    for sandbox in ctx.runtime.pods(&filter).await {
        let containers = pod_running_containers(ctx, &sandbox.id).await;
        stats.push(container_convert::pod_stats(ctx, &sandbox, &containers).await);
    }
    Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
}
