//! Pod sandboxes: CRI messages to and from the runtime's domain types.

use strata_api::cri;
use tonic::Status;

use crate::runtime::{
    SandboxFilter,
    sandbox::{Dns, NamespaceMode, PodSpec, Sandbox, SandboxState},
};

pub fn ns_mode(mode: i32) -> NamespaceMode {
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Container) => NamespaceMode::Container,
        Ok(cri::NamespaceMode::Node) => NamespaceMode::Node,
        Ok(cri::NamespaceMode::Target) => NamespaceMode::Target,
        _ => NamespaceMode::Pod,
    }
}

pub fn cri_ns_mode(mode: NamespaceMode) -> i32 {
    (match mode {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

/// CRI's pod config → the runtime's pod spec.
pub fn pod_spec(config: cri::PodSandboxConfig, runtime_handler: String) -> Result<PodSpec, Status> {
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("pod sandbox config has no metadata"))?;
    let linux = config.linux.unwrap_or_default();
    let ns = linux
        .security_context
        .and_then(|s| s.namespace_options)
        .unwrap_or_default();
    let port_mappings = config
        .port_mappings
        .iter()
        .map(port_mapping)
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(PodSpec {
        port_mappings,
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
        overhead: linux.overhead.map(resources).unwrap_or_default(),
    })
}

fn port_mapping(p: &cri::PortMapping) -> Result<crate::cni::PortMapping, Status> {
    let port = |what: &str, v: i32| {
        u16::try_from(v).map_err(|_| {
            Status::invalid_argument(format!("port mapping: {what} {v} is not a port number"))
        })
    };
    let protocol = match cri::Protocol::try_from(p.protocol) {
        Ok(cri::Protocol::Tcp) => "tcp",
        Ok(cri::Protocol::Udp) => "udp",
        Ok(cri::Protocol::Sctp) => "sctp",
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "port mapping: unknown protocol {}",
                p.protocol
            )));
        }
    };
    Ok(crate::cni::PortMapping {
        protocol: protocol.into(),
        container_port: port("container port", p.container_port)?,
        host_port: port("host port", p.host_port)?,
        host_ip: p.host_ip.clone(),
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
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
    }
}

/// Recorded limits back in the CRI's terms (unset: 0 or empty), as a status reports them.
pub fn cri_resources(
    r: &crate::cgroup::Resources,
    oom_score_adj: i64,
) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period.map_or(0, |p| p as i64),
        cpu_quota: r.cpu_quota.unwrap_or(0),
        cpu_shares: r.cpu_shares.map_or(0, |s| s as i64),
        memory_limit_in_bytes: r.memory_limit.unwrap_or(0),
        oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone().unwrap_or_default(),
        cpuset_mems: r.cpuset_mems.clone().unwrap_or_default(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| cri::HugepageLimit {
                page_size: page_size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit.unwrap_or(0),
    }
}

pub fn cri_state(state: SandboxState) -> i32 {
    (match state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }) as i32
}

pub fn cri_metadata(spec: &PodSpec) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: spec.name.clone(),
        uid: spec.uid.clone(),
        namespace: spec.namespace.clone(),
        attempt: spec.attempt,
    }
}

pub fn cri_pod(s: &Sandbox) -> cri::PodSandbox {
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

pub fn cri_pod_status(s: &Sandbox) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: Some(cri_metadata(&s.spec)),
        state: cri_state(s.state),
        created_at: s.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: s.ips.first().cloned().unwrap_or_default(),
            additional_ips: s
                .ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
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

pub fn sandbox_filter(filter: Option<cri::PodSandboxFilter>) -> SandboxFilter {
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
