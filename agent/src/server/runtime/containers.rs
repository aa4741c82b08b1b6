//! RuntimeService RPCs of containers: create, start, stop, remove, status, list, log reopening, resource updates.

use std::{collections::HashMap, sync::Arc};

use strata_api::cri::{self, ContainerEventType};
use tonic::{Request, Response, Status};

use crate::runtime::container::ContainerState;
use crate::server::{
    Context,
    convert::{container as container_convert, pod::resources},
    events::Subject,
};

pub(super) async fn create_container(
    ctx: &Context,
    request: Request<cri::CreateContainerRequest>,
) -> Result<Response<cri::CreateContainerResponse>, Status> {
    let request = request.into_inner();
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("CreateContainer needs a config"))?;
    let spec = container_convert::container_spec(config)?;
    let container = ctx
        .runtime
        .create_container(&request.pod_sandbox_id, spec)
        .await?;
    tracing::info!(container_id = %container.id, pod_id = %container.pod_id, image = %container.spec.image, name = %container.spec.name, "container created");
    let subject = Subject::Container {
        id: &container.id,
        pod_id: &container.pod_id,
    };
    ctx.emit(subject, ContainerEventType::ContainerCreatedEvent)
        .await;
    Ok(Response::new(cri::CreateContainerResponse {
        container_id: container.id,
    }))
}

pub(super) async fn start_container(
    ctx: &Arc<Context>,
    request: Request<cri::StartContainerRequest>,
) -> Result<Response<cri::StartContainerResponse>, Status> {
    let id = request.into_inner().container_id;
    let started = ctx.runtime.start_container(&id).await;
    // Started or not, what the container is now is said (a failed start leaves it exited).
    if let Ok(c) = ctx.runtime.container(&id).await {
        let subject = Subject::Container {
            id: &c.id,
            pod_id: &c.pod_id,
        };
        match c.state {
            ContainerState::Running if started.is_ok() => {
                tracing::info!(container_id = %c.id, pod_id = %c.pod_id, image = %c.spec.image, "container started");
                ctx.emit(subject, ContainerEventType::ContainerStartedEvent)
                    .await;
                ctx.watch_exit(c.id.clone()).await;
            }
            ContainerState::Exited if started.is_ok() => {
                ctx.emit(subject, ContainerEventType::ContainerStartedEvent)
                    .await;
                ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
                    .await;
            }
            ContainerState::Exited => {
                ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
                    .await;
            }
            _ => {}
        }
    }
    started?;
    Ok(Response::new(cri::StartContainerResponse {}))
}

pub(super) async fn stop_container(
    ctx: &Context,
    request: Request<cri::StopContainerRequest>,
) -> Result<Response<cri::StopContainerResponse>, Status> {
    let request = request.into_inner();
    if request.container_id.is_empty() {
        return Err(Status::invalid_argument("container id is empty"));
    }
    let stopped = ctx
        .runtime
        .stop_container(
            &request.container_id,
            container_convert::stop_timeout(request.timeout),
        )
        .await;
    // Stopping a container that is not there succeeds (CRI: stop is idempotent).
    let c = match stopped {
        Err(crate::runtime::Error::ContainerNotFound(_)) => {
            return Ok(Response::new(cri::StopContainerResponse {}));
        }
        other => other?,
    };
    tracing::info!(container_id = %c.id, pod_id = %c.pod_id, exit_code = c.exit_code, "container stopped");
    let subject = Subject::Container {
        id: &c.id,
        pod_id: &c.pod_id,
    };
    ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
        .await;
    Ok(Response::new(cri::StopContainerResponse {}))
}

pub(super) async fn remove_container(
    ctx: &Context,
    request: Request<cri::RemoveContainerRequest>,
) -> Result<Response<cri::RemoveContainerResponse>, Status> {
    let id = request.into_inner().container_id;
    if id.is_empty() {
        return Err(Status::invalid_argument("container id is empty"));
    }
    let found = ctx.runtime.container(&id).await.ok();
    ctx.runtime.remove_container(&id).await?;
    if let Some(c) = found {
        tracing::info!(container_id = %c.id, pod_id = %c.pod_id, "container removed");
        let subject = Subject::Container {
            id: &c.id,
            pod_id: &c.pod_id,
        };
        if c.state != ContainerState::Created {
            ctx.emit(subject, ContainerEventType::ContainerStoppedEvent)
                .await;
        }
        ctx.emit(subject, ContainerEventType::ContainerDeletedEvent)
            .await;
    }
    Ok(Response::new(cri::RemoveContainerResponse {}))
}

pub(super) async fn container_status(
    ctx: &Context,
    request: Request<cri::ContainerStatusRequest>,
) -> Result<Response<cri::ContainerStatusResponse>, Status> {
    let request = request.into_inner();
    let mut c = ctx.runtime.container(&request.container_id).await?;
    c.user = ctx.runtime.process_user(&c);
    Ok(Response::new(cri::ContainerStatusResponse {
        status: Some(container_convert::cri_status(&c)),
        info: if request.verbose {
            container_convert::verbose_info(&c)
        } else {
            HashMap::new()
        },
    }))
}

pub(super) async fn list_containers(
    ctx: &Context,
    request: Request<cri::ListContainersRequest>,
) -> Result<Response<cri::ListContainersResponse>, Status> {
    let filter = container_convert::filter(request.into_inner().filter);
    let containers = ctx.runtime.containers(&filter).await;
    Ok(Response::new(cri::ListContainersResponse {
        containers: containers
            .iter()
            .map(container_convert::cri_container)
            .collect(),
    }))
}

pub(super) async fn reopen_container_log(
    ctx: &Context,
    request: Request<cri::ReopenContainerLogRequest>,
) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
    ctx.runtime
        .reopen_log(&request.into_inner().container_id)
        .await?;
    Ok(Response::new(cri::ReopenContainerLogResponse {}))
}

pub(super) async fn update_container_resources(
    ctx: &Context,
    request: Request<cri::UpdateContainerResourcesRequest>,
) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
    let request = request.into_inner();
    let resources = request.linux.map(resources).unwrap_or_default();
    ctx.runtime
        .update_resources(&request.container_id, &resources)
        .await?;
    Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
}
