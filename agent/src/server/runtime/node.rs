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
    let network = ctx.runtime.network().status().await;
    let conditions = vec![
        condition("RuntimeReady", true, "", ""),
        match &network {
            Ok(_) => condition("NetworkReady", true, "", ""),
            Err(e) => condition(
                "NetworkReady",
                false,
                "NetworkPluginNotReady",
                &crate::report::error_line(e),
            ),
        },
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
        let lists: Vec<_> = network.iter().flatten().map(|l| &l.raw).collect();
        let cni = serde_json::json!({
            "networks": lists,
            "error": network.as_ref().err().map(|e| e.to_string()),
        });
        info.insert("cni".to_string(), cni.to_string());
    }
    Ok(Response::new(StatusResponse {
        status: Some(RuntimeStatus { conditions }),
        info,
        runtime_handlers: vec![RuntimeHandler {
            name: String::new(),
            features: Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: crate::sys::mount::recursive_read_only_supported(),
                user_namespaces: false,
            }),
        }],
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
        }),
    }))
}

/// The kubelet's pod CIDR, handed to plugins that take `ipRanges` (host-local).
pub(super) async fn update_runtime_config(
    ctx: &Context,
    request: Request<strata_api::cri::UpdateRuntimeConfigRequest>,
) -> Result<Response<strata_api::cri::UpdateRuntimeConfigResponse>, Status> {
    let cidr = request
        .into_inner()
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    for part in cidr.split(',').filter(|p| !p.is_empty()) {
        let valid = part.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
        });
        if !valid {
            return Err(Status::invalid_argument(format!(
                "pod CIDR {part:?} is not an address/prefix"
            )));
        }
    }
    // A dual-stack node gives both, comma-separated; host-local takes the first range set.
    let first = cidr.split(',').next().unwrap_or_default();
    tracing::info!(pod_cidr = %cidr, "the kubelet set the pod CIDR");
    ctx.runtime.network().set_pod_cidr(first);
    Ok(Response::new(
        strata_api::cri::UpdateRuntimeConfigResponse {},
    ))
}

pub(super) async fn runtime_config(
    ctx: &Context,
    _request: Request<RuntimeConfigRequest>,
) -> Result<Response<RuntimeConfigResponse>, Status> {
    let driver = match ctx.config.cgroups.driver {
        crate::config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        crate::config::CgroupDriver::Systemd => CgroupDriver::Systemd,
    };
    Ok(Response::new(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }))
}
