//! `runtime.v1.RuntimeService`. RPCs without a handler here answer UNIMPLEMENTED through
//! the generated default stubs.

use std::{collections::HashMap, sync::Arc};

use strata_api::cri::{
    self, CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse, VersionRequest, VersionResponse,
    runtime_service_server::RuntimeService,
};
use tonic::{Request, Response, Status};

use super::{
    Context,
    convert::{
        container as container_convert,
        pod::{cri_pod, cri_pod_status, pod_spec, resources, sandbox_filter},
    },
};
use crate::runtime::{SandboxFilter, sandbox::SandboxState};

/// Pods per message of a streamed list.
const STREAM_CHUNK: usize = 500;

type BoxStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

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

    async fn pod_running_containers(
        &self,
        pod_id: &str,
    ) -> Vec<crate::runtime::container::Container> {
        let filter = crate::runtime::ContainerFilter {
            pod_id: Some(pod_id.to_string()),
            state: Some(crate::runtime::container::ContainerState::Running),
            ..Default::default()
        };
        self.ctx.runtime.containers(&filter).await
    }
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
        Ok(Response::new(VersionResponse {
            version: KUBE_API_VERSION.to_string(),
            runtime_name: RUNTIME_NAME.to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: RUNTIME_API_VERSION.to_string(),
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let conditions = vec![
            condition("RuntimeReady", true, "", ""),
            // Only host-network pods can be given a network until CNI support lands.
            condition(
                "NetworkReady",
                false,
                "NetworkPluginNotReady",
                "strata has no pod network plugin (CNI) yet; only host-network pods can be networked",
            ),
        ];
        let mut info = HashMap::new();
        if request.get_ref().verbose {
            let config = serde_json::to_string(&self.ctx.config)
                .map_err(|e| Status::internal(format!("encoding the config: {e}")))?;
            info.insert("config".to_string(), config);
            let version = serde_json::json!({
                "runtimeName": RUNTIME_NAME,
                "runtimeVersion": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
            });
            info.insert("version".to_string(), version.to_string());
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: false,
                user_namespaces_host_network: false,
            }),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox needs a config"))?;
        let spec = pod_spec(config, request.runtime_handler)?;
        let sandbox = self.ctx.runtime.run_pod(spec).await?;
        tracing::info!(pod = %sandbox.id, name = %sandbox.spec.full_name(), "pod sandbox running");
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: sandbox.id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        self.ctx
            .runtime
            .stop_pod(&request.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("pod sandbox id is empty"));
        }
        self.ctx.runtime.remove_pod(&id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let sandbox = self.ctx.runtime.pod(&request.pod_sandbox_id).await?;
        let mut info = HashMap::new();
        if request.verbose {
            let details = serde_json::json!({
                "id": sandbox.id,
                "name": sandbox.spec.full_name(),
                "cgroup": sandbox.cgroup,
                "cgroupExists": self.ctx.runtime.pod_cgroup_exists(&sandbox),
                "cgroupVersion": self.ctx.runtime.cgroup_version(),
                "namespaces": sandbox.namespaces,
                "sandboxDir": self.ctx.runtime.sandbox_dir(&sandbox.id),
                "spec": sandbox.spec,
            });
            info.insert("info".to_string(), details.to_string());
        }
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(cri_pod_status(&sandbox)),
            info,
            containers_statuses: vec![],
            timestamp: crate::clock::now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = sandbox_filter(request.into_inner().filter);
        let items = self
            .ctx
            .runtime
            .pods(&filter)
            .await
            .iter()
            .map(cri_pod)
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<BoxStream<cri::StreamPodSandboxesResponse>>, Status> {
        let filter = sandbox_filter(request.into_inner().filter);
        let pods: Vec<cri::PodSandbox> = self
            .ctx
            .runtime
            .pods(&filter)
            .await
            .iter()
            .map(cri_pod)
            .collect();
        let messages: Vec<Result<cri::StreamPodSandboxesResponse, Status>> = pods
            .chunks(STREAM_CHUNK)
            .map(|chunk| {
                Ok(cri::StreamPodSandboxesResponse {
                    pod_sandboxes: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer needs a config"))?;
        let spec = container_convert::container_spec(config)?;
        let image = container_convert::image_root(&self.ctx, &spec.image)?;
        // Held from before the container exists, so image removal cannot race its creation.
        let claim = format!(
            "creating-{}",
            crate::runtime::new_id().map_err(|e| Status::internal(e.to_string()))?
        );
        let diff_ids: Vec<crate::image::Digest> = image
            .diff_ids
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect();
        self.ctx.images.pin_layers(&claim, diff_ids.clone());
        let created = self
            .ctx
            .runtime
            .create_container(&request.pod_sandbox_id, spec, image)
            .await;
        self.ctx.images.unpin_layers(&claim);
        let container = created?;
        self.ctx.images.pin_layers(&container.id, diff_ids);
        tracing::info!(container = %container.id, pod = %container.pod_id, name = %container.spec.name, "container created");
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: container.id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        self.ctx
            .runtime
            .start_container(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        self.ctx
            .runtime
            .stop_container(
                &request.container_id,
                container_convert::stop_timeout(request.timeout),
            )
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("container id is empty"));
        }
        let full = self.ctx.runtime.container(&id).await.map(|c| c.id);
        self.ctx.runtime.remove_container(&id).await?;
        if let Ok(full) = full {
            self.ctx.images.unpin_layers(&full);
        }
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let c = self.ctx.runtime.container(&request.container_id).await?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container_convert::cri_status(&c)),
            info: if request.verbose {
                container_convert::verbose_info(&c)
            } else {
                HashMap::new()
            },
        }))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = container_convert::filter(request.into_inner().filter);
        let containers = self.ctx.runtime.containers(&filter).await;
        Ok(Response::new(cri::ListContainersResponse {
            containers: containers
                .iter()
                .map(container_convert::cri_container)
                .collect(),
        }))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let out = self
            .ctx
            .runtime
            .exec_sync(
                &request.container_id,
                request.cmd,
                container_convert::stop_timeout(request.timeout),
            )
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let c = self
            .ctx
            .runtime
            .container(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(container_convert::container_stats(&self.ctx, &c)),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = crate::runtime::ContainerFilter {
            id: Some(f.id).filter(|s| !s.is_empty()),
            pod_id: Some(f.pod_sandbox_id).filter(|s| !s.is_empty()),
            state: Some(crate::runtime::container::ContainerState::Running),
            labels: f.label_selector.into_iter().collect(),
        };
        let containers = self.ctx.runtime.containers(&filter).await;
        Ok(Response::new(cri::ListContainerStatsResponse {
            stats: containers
                .iter()
                .map(|c| container_convert::container_stats(&self.ctx, c))
                .collect(),
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let sandbox = self
            .ctx
            .runtime
            .pod(&request.into_inner().pod_sandbox_id)
            .await?;
        let containers = self.pod_running_containers(&sandbox.id).await;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(container_convert::pod_stats(
                &self.ctx,
                &sandbox,
                &containers,
            )),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = SandboxFilter {
            id: Some(f.id).filter(|s| !s.is_empty()),
            state: Some(SandboxState::Ready),
            labels: f.label_selector.into_iter().collect(),
        };
        let mut stats = Vec::new();
        for sandbox in self.ctx.runtime.pods(&filter).await {
            let containers = self.pod_running_containers(&sandbox.id).await;
            stats.push(container_convert::pod_stats(
                &self.ctx,
                &sandbox,
                &containers,
            ));
        }
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.ctx
            .runtime
            .reopen_log(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let resources = request.linux.map(resources).unwrap_or_default();
        self.ctx
            .runtime
            .update_resources(&request.container_id, &resources)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}
