//! `runtime.v1.RuntimeService`: the service forwards each RPC to its group's file (node,
//! pods, containers, exec, stats). RPCs without a handler answer UNIMPLEMENTED through the
//! generated default stubs.

mod containers;
mod exec;
mod node;
mod pods;
mod stats;

use std::sync::Arc;

use strata_api::cri::{
    self, RuntimeCondition, RuntimeConfigRequest, RuntimeConfigResponse, StatusRequest,
    StatusResponse, VersionRequest, VersionResponse, runtime_service_server::RuntimeService,
};
use tonic::{Request, Response, Status};

use super::{BoxStream, Context};

/// The CRI API version the kubelet asks about; the only one there is.
const KUBE_API_VERSION: &str = "0.1.0";
pub const RUNTIME_NAME: &str = "strata";
const RUNTIME_API_VERSION: &str = "v1";

pub struct Runtime {
    ctx: Arc<Context>,
}

impl Runtime {
    pub fn new(ctx: Arc<Context>) -> Self {
        Runtime { ctx }
    }
}

async fn pod_running_containers(
    ctx: &Context,
    pod_id: &str,
) -> Vec<crate::runtime::container::Container> {
    let filter = crate::runtime::ContainerFilter {
        pod_id: Some(pod_id.to_string()),
        state: Some(crate::runtime::container::ContainerState::Running),
        ..Default::default()
    };
    ctx.runtime.containers(&filter).await
}

/// Runs a call that changes the node to its end in a task of its own. A client that gives
/// up (its deadline passes, it disconnects) has the server drop the call's future; dropped
/// part-way, a creation would leave what it had made so far (a cgroup, a systemd unit and
/// its placeholder process, pinned layers) for no one to remove until a restart. The
/// answer then goes nowhere, and the node is whole.
async fn to_completion<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(call)
        .await
        .unwrap_or_else(|e| Err(Status::internal(format!("the call ended abnormally: {e}"))))
}

fn condition(kind: &str, ready: bool, reason: &str, message: &str) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.to_string(),
        status: ready,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        node::version(&self.ctx, _request).await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        node::status(&self.ctx, request).await
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { pods::run_pod_sandbox(&ctx, request).await }).await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { pods::stop_pod_sandbox(&ctx, request).await }).await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { pods::remove_pod_sandbox(&ctx, request).await }).await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        pods::pod_sandbox_status(&self.ctx, request).await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        pods::list_pod_sandbox(&self.ctx, request).await
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<BoxStream<cri::StreamPodSandboxesResponse>>, Status> {
        pods::stream_pod_sandboxes(&self.ctx, request).await
    }

    async fn stream_containers(
        &self,
        request: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<BoxStream<cri::StreamContainersResponse>>, Status> {
        let filter = request.into_inner().filter;
        let listed = containers::list_containers(
            &self.ctx,
            Request::new(cri::ListContainersRequest { filter }),
        )
        .await?
        .into_inner()
        .containers;
        Ok(Response::new(crate::server::chunked(
            listed,
            |containers| cri::StreamContainersResponse { containers },
        )))
    }

    async fn stream_container_stats(
        &self,
        request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<BoxStream<cri::StreamContainerStatsResponse>>, Status> {
        let filter = request.into_inner().filter;
        let listed = stats::list_container_stats(
            &self.ctx,
            Request::new(cri::ListContainerStatsRequest { filter }),
        )
        .await?
        .into_inner()
        .stats;
        Ok(Response::new(crate::server::chunked(
            listed,
            |container_stats| cri::StreamContainerStatsResponse { container_stats },
        )))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<BoxStream<cri::StreamPodSandboxStatsResponse>>, Status> {
        let filter = request.into_inner().filter;
        let listed = stats::list_pod_sandbox_stats(
            &self.ctx,
            Request::new(cri::ListPodSandboxStatsRequest { filter }),
        )
        .await?
        .into_inner()
        .stats;
        Ok(Response::new(crate::server::chunked(
            listed,
            |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<BoxStream<cri::StreamPodSandboxMetricsResponse>>, Status> {
        let listed = crate::server::metrics::pod_metrics(&self.ctx).await;
        Ok(Response::new(crate::server::chunked(
            listed,
            |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { containers::create_container(&ctx, request).await }).await
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { containers::start_container(&ctx, request).await }).await
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { containers::stop_container(&ctx, request).await }).await
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { containers::remove_container(&ctx, request).await }).await
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        containers::container_status(&self.ctx, request).await
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        containers::list_containers(&self.ctx, request).await
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        exec::exec_sync(&self.ctx, request).await
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        exec::exec(&self.ctx, request).await
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        exec::attach(&self.ctx, request).await
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        exec::port_forward(&self.ctx, request).await
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        stats::container_stats(&self.ctx, request).await
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        stats::list_container_stats(&self.ctx, request).await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        stats::pod_sandbox_stats(&self.ctx, request).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        stats::list_pod_sandbox_stats(&self.ctx, request).await
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        containers::reopen_container_log(&self.ctx, request).await
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let ctx = Arc::clone(&self.ctx);
        to_completion(async move { containers::update_container_resources(&ctx, request).await })
            .await
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        pods::update_pod_sandbox_resources(&self.ctx, request).await
    }

    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        node::runtime_config(&self.ctx, _request).await
    }

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<BoxStream<cri::ContainerEventResponse>>, Status> {
        Ok(Response::new(self.ctx.events.subscribe()))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::server::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: crate::server::metrics::pod_metrics(&self.ctx).await,
        }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        node::update_runtime_config(&self.ctx, request).await
    }
}
