//! RuntimeService RPCs of the node: Version, Status, RuntimeConfig.

use std::collections::HashMap;

use strata_api::cri::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse,
    RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse, VersionRequest, VersionResponse,
};
use tonic::{Request, Response, Status};

use super::super::Context;
use super::{KUBE_API_VERSION, RUNTIME_API_VERSION, RUNTIME_NAME, condition};

pub(super) async fn version(
    _ctx: &Context,
    _request: Request<VersionRequest>,
) -> Result<Response<VersionResponse>, Status> {
    Ok(Response::new(VersionResponse {
        version: KUBE_API_VERSION.to_string(),
        runtime_name: RUNTIME_NAME.to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: RUNTIME_API_VERSION.to_string(),
    }))
}

pub(super) async fn status(
    ctx: &Context,
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
        let config = serde_json::to_string(&ctx.config)
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

pub(super) async fn runtime_config(
    _ctx: &Context,
    _request: Request<RuntimeConfigRequest>,
) -> Result<Response<RuntimeConfigResponse>, Status> {
    Ok(Response::new(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: CgroupDriver::Cgroupfs as i32,
        }),
    }))
}
