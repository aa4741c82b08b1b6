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

use super::Context;
use crate::runtime::{
    SandboxFilter,
    sandbox::{Dns, NamespaceMode, PodSpec, Sandbox, SandboxState},
};

pub(super) fn ns_mode(mode: i32) -> NamespaceMode {
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Container) => NamespaceMode::Container,
        Ok(cri::NamespaceMode::Node) => NamespaceMode::Node,
        Ok(cri::NamespaceMode::Target) => NamespaceMode::Target,
        _ => NamespaceMode::Pod,
    }
}

fn cri_ns_mode(mode: NamespaceMode) -> i32 {
    (match mode {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

/// CRI's pod config → the runtime's pod spec.
fn pod_spec(config: cri::PodSandboxConfig, runtime_handler: String) -> Result<PodSpec, Status> {
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("pod sandbox config has no metadata"))?;
    let linux = config.linux.unwrap_or_default();
    let ns = linux
        .security_context
        .and_then(|s| s.namespace_options)
        .unwrap_or_default();
    Ok(PodSpec {
        name: metadata.name,
        uid: metadata.uid,
        namespace: metadata.namespace,
        attempt: metadata.attempt,
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| Dns {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls.into_iter().collect(),
        network: ns_mode(ns.network),
        ipc: ns_mode(ns.ipc),
        pid: ns_mode(ns.pid),
        runtime_handler,
        resources: linux.resources.map(resources).unwrap_or_default(),
    })
}

/// CRI's resources (0 or empty meaning "not set") → cgroup limits.
pub fn resources(r: cri::LinuxContainerResources) -> crate::cgroup::Resources {
    let positive = |v: i64| (v != 0).then_some(v);
    crate::cgroup::Resources {
        memory_limit: positive(r.memory_limit_in_bytes),
        memory_swap_limit: positive(r.memory_swap_limit_in_bytes),
        cpu_shares: (r.cpu_shares != 0).then_some(r.cpu_shares.max(0) as u64),
        cpu_quota: positive(r.cpu_quota),
        cpu_period: (r.cpu_period != 0).then_some(r.cpu_period.max(0) as u64),
        cpuset_cpus: Some(r.cpuset_cpus).filter(|s| !s.is_empty()),
        cpuset_mems: Some(r.cpuset_mems).filter(|s| !s.is_empty()),
        pids_limit: None,
        unified: r.unified.into_iter().collect(),
    }
}

fn cri_state(state: SandboxState) -> i32 {
    (match state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }) as i32
}

fn cri_metadata(spec: &PodSpec) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: spec.name.clone(),
        uid: spec.uid.clone(),
        namespace: spec.namespace.clone(),
        attempt: spec.attempt,
    }
}

fn cri_pod(s: &Sandbox) -> cri::PodSandbox {
    cri::PodSandbox {
        id: s.id.clone(),
        metadata: Some(cri_metadata(&s.spec)),
        state: cri_state(s.state),
        created_at: s.created_at,
        labels: s.spec.labels.clone().into_iter().collect(),
        annotations: s.spec.annotations.clone().into_iter().collect(),
        runtime_handler: s.spec.runtime_handler.clone(),
    }
}

fn cri_pod_status(s: &Sandbox) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: Some(cri_metadata(&s.spec)),
        state: cri_state(s.state),
        created_at: s.created_at,
        // No pod network yet: a pod has loopback only (or the node's network).
        network: Some(cri::PodSandboxNetworkStatus::default()),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: cri_ns_mode(s.spec.network),
                    pid: cri_ns_mode(s.spec.pid),
                    ipc: cri_ns_mode(s.spec.ipc),
                    ..Default::default()
                }),
            }),
        }),
        labels: s.spec.labels.clone().into_iter().collect(),
        annotations: s.spec.annotations.clone().into_iter().collect(),
        runtime_handler: s.spec.runtime_handler.clone(),
    }
}

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

fn sandbox_filter(filter: Option<cri::PodSandboxFilter>) -> SandboxFilter {
    let Some(filter) = filter else {
        return SandboxFilter::default();
    };
    SandboxFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        state: filter.state.map(|s| {
            if s.state == cri::PodSandboxState::SandboxReady as i32 {
                SandboxState::Ready
            } else {
                SandboxState::NotReady
            }
        }),
        labels: filter.label_selector.into_iter().collect(),
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
            timestamp: crate::image::now_nanos(),
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
        let spec = super::container::container_spec(config)?;
        let image = super::container::image_root(&self.ctx, &spec.image)?;
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
                super::container::stop_timeout(request.timeout),
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
            status: Some(super::container::cri_status(&c)),
            info: if request.verbose {
                super::container::verbose_info(&c)
            } else {
                HashMap::new()
            },
        }))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = super::container::filter(request.into_inner().filter);
        let containers = self.ctx.runtime.containers(&filter).await;
        Ok(Response::new(cri::ListContainersResponse {
            containers: containers
                .iter()
                .map(super::container::cri_container)
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
                super::container::stop_timeout(request.timeout),
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
            stats: Some(super::container::container_stats(&self.ctx, &c)),
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
                .map(|c| super::container::container_stats(&self.ctx, c))
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
            stats: Some(super::container::pod_stats(
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
            stats.push(super::container::pod_stats(
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
