//! `runtime.v1.RuntimeService`. RPCs without a handler here answer UNIMPLEMENTED through
//! the generated default stubs.

use std::{collections::HashMap, sync::Arc};

use strata_api::cri::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse, VersionRequest, VersionResponse,
    runtime_service_server::RuntimeService,
};
use tonic::{Request, Response, Status};

use super::Context;

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
