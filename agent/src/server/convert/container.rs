//! The container RPCs of `runtime.v1.RuntimeService`: CRI messages to and from the
//! runtime's domain types.

use std::{collections::HashMap, time::Duration};

use strata_api::cri;
use tonic::Status;

use super::pod::ns_mode;
use crate::runtime::{
    ContainerFilter,
    container::{
        Container, ContainerSpec, ContainerState, DeviceSpec, MountImage, MountSpec, Propagation,
    },
    sandbox::NamespaceMode,
};
use crate::seccomp;
use crate::server::Context;

pub fn container_spec(config: cri::ContainerConfig) -> Result<ContainerSpec, Status> {
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("container config has no metadata"))?;
    if metadata.name.is_empty() {
        return Err(Status::invalid_argument("container metadata has no name"));
    }
    let image = config.image.map(|i| i.image).unwrap_or_default();
    if let Some(adj) = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(|r| r.oom_score_adj)
        && !(-1000..=1000).contains(&adj)
    {
        return Err(Status::invalid_argument(format!(
            "oom_score_adj {adj} is outside -1000..1000"
        )));
    }
    // CRI: a recursive read-only mount is read-only and private, or refused.
    for m in config.mounts.iter().filter(|m| m.recursive_read_only) {
        if !m.readonly {
            return Err(Status::invalid_argument(format!(
                "mount of {}: recursive_read_only needs readonly",
                m.host_path
            )));
        }
        if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
            return Err(Status::invalid_argument(format!(
                "mount of {}: recursive_read_only needs private propagation",
                m.host_path
            )));
        }
    }
    if image.is_empty() {
        return Err(Status::invalid_argument("container config names no image"));
    }
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let caps = security.capabilities.unwrap_or_default();
    let ns = security.namespace_options.unwrap_or_default();
    if ns_mode(ns.pid) == NamespaceMode::Target && ns.target_id.is_empty() {
        return Err(Status::invalid_argument(
            "PID namespace mode TARGET needs a target_id",
        ));
    }
    // Older kubelets still send the deprecated string form.
    #[allow(deprecated)]
    let apparmor_profile = &security.apparmor_profile;
    let apparmor = apparmor_choice(
        security.apparmor.as_ref(),
        apparmor_profile,
        crate::sys::apparmor_enabled(),
        security.privileged,
    )?;
    Ok(ContainerSpec {
        name: metadata.name,
        attempt: metadata.attempt,
        image,
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs: config
            .envs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect(),
        devices: config
            .devices
            .into_iter()
            .map(|d| DeviceSpec {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        cdi_devices: config.cdi_devices.into_iter().map(|d| d.name).collect(),
        mounts: config
            .mounts
            .into_iter()
            .map(|m| MountSpec {
                container_path: m.container_path,
                host_path: m.host_path,
                // Named here, resolved in the store by `resolve_image_volumes`.
                image: m.image.filter(|i| !i.image.is_empty()).map(|i| MountImage {
                    image: i.image,
                    sub_path: m.image_sub_path,
                    ..Default::default()
                }),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: match cri::MountPropagation::try_from(m.propagation) {
                    Ok(cri::MountPropagation::PropagationHostToContainer) => {
                        Propagation::HostToContainer
                    }
                    Ok(cri::MountPropagation::PropagationBidirectional) => {
                        Propagation::Bidirectional
                    }
                    _ => Propagation::Private,
                },
            })
            .collect(),
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        log_path: config.log_path,
        privileged: security.privileged,
        run_as_user: security.run_as_user.map(|v| v.value),
        run_as_group: security.run_as_group.map(|v| v.value),
        run_as_username: security.run_as_username,
        supplemental_groups: security.supplemental_groups,
        stop_signal: match cri::Signal::try_from(config.stop_signal) {
            Ok(cri::Signal::RuntimeDefault) => String::new(),
            Ok(signal) => signal.as_str_name().to_string(),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "stop_signal {} is not a signal",
                    config.stop_signal
                )));
            }
        },
        supplemental_groups_strict: security.supplemental_groups_policy
            == cri::SupplementalGroupsPolicy::Strict as i32,
        readonly_rootfs: security.readonly_rootfs,
        no_new_privs: security.no_new_privs,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        masked_paths: (!security.masked_paths.is_empty()).then_some(security.masked_paths),
        readonly_paths: (!security.readonly_paths.is_empty()).then_some(security.readonly_paths),
        pid: ns_mode(ns.pid),
        target_id: ns.target_id.clone(),
        oom_score_adj: linux.resources.as_ref().map_or(0, |r| r.oom_score_adj),
        // The deprecated string still comes from kubelets that predate the field.
        #[allow(deprecated)]
        seccomp: seccomp_choice(security.seccomp.as_ref(), &security.seccomp_profile_path)
            .map_err(crate::runtime::Error::from)?,
        resources: linux
            .resources
            .map(super::pod::resources)
            .unwrap_or_default(),
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        apparmor,
    })
}

/// The AppArmor profile a container runs under (None: unconfined). On a host with
/// AppArmor: the one asked for, the runtime's default for RuntimeDefault and for a
/// container that names none (as containerd and CRI-O do), none for a privileged one
/// that does not name its own. An AppArmor profile is never dropped in silence: on a host
/// without AppArmor, any profile but unconfined is refused (as containerd does), rather
/// than the container running unconfined while the kubelet believes it confined.
fn apparmor_choice(
    profile: Option<&cri::SecurityProfile>,
    deprecated: &str,
    host_has_apparmor: bool,
    privileged: bool,
) -> Result<Option<String>, Status> {
    use cri::security_profile::ProfileType;
    if host_has_apparmor {
        let default = (!privileged).then(|| crate::apparmor::DEFAULT_PROFILE.to_string());
        let named = |name: &str| {
            if name.is_empty() {
                Err(Status::invalid_argument(
                    "AppArmor profile localhost/ names no profile",
                ))
            } else {
                Ok(Some(name.to_string()))
            }
        };
        return match profile {
            Some(p) => match ProfileType::try_from(p.profile_type) {
                Ok(ProfileType::Unconfined) => Ok(None),
                Ok(ProfileType::Localhost) => named(&p.localhost_ref),
                _ => Ok(default),
            },
            None => match deprecated {
                "unconfined" => Ok(None),
                "" | "runtime/default" => Ok(default),
                other => match other.strip_prefix("localhost/") {
                    Some(name) => named(name),
                    None => Err(Status::invalid_argument(format!(
                        "AppArmor profile {other:?} is neither runtime/default, unconfined nor localhost/<name>"
                    ))),
                },
            },
        };
    }
    let asked = match profile {
        Some(p) if p.profile_type != cri::security_profile::ProfileType::Unconfined as i32 => {
            match cri::security_profile::ProfileType::try_from(p.profile_type) {
                Ok(cri::security_profile::ProfileType::Localhost) => {
                    format!("localhost/{}", p.localhost_ref)
                }
                _ => "runtime/default".to_string(),
            }
        }
        Some(_) => return Ok(None),
        None if !deprecated.is_empty() && deprecated != "unconfined" => deprecated.to_string(),
        None => return Ok(None),
    };
    Err(Status::invalid_argument(format!(
        "AppArmor profile {asked:?}: AppArmor is not enabled on this host (only unconfined runs here)"
    )))
}

/// The container's seccomp profile: the `seccomp` field when set, else the deprecated
/// path string (empty: unconfined, as on containerd).
fn seccomp_choice(
    profile: Option<&cri::SecurityProfile>,
    path: &str,
) -> Result<seccomp::Choice, seccomp::Error> {
    use cri::security_profile::ProfileType;
    let Some(profile) = profile else {
        return seccomp::Choice::from_path_string(path);
    };
    match ProfileType::try_from(profile.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(seccomp::Choice::RuntimeDefault),
        Ok(ProfileType::Unconfined) => Ok(seccomp::Choice::Unconfined),
        Ok(ProfileType::Localhost) => seccomp::Choice::localhost(&profile.localhost_ref),
        Err(_) => Err(seccomp::Error::Invalid(format!(
            "unknown profile type {}",
            profile.profile_type
        ))),
    }
}

/// The image a container runs, resolved in the image store.
pub fn cri_state(state: ContainerState) -> i32 {
    (match state {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
    }) as i32
}

fn metadata(c: &Container) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.spec.name.clone(),
        attempt: c.spec.attempt,
    }
}

fn image_spec(c: &Container) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.spec.image.clone(),
        user_specified_image: c.spec.image.clone(),
        ..Default::default()
    }
}

pub fn cri_container(c: &Container) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        state: cri_state(c.state),
        created_at: c.created_at,
        labels: c.spec.labels.clone().into_iter().collect(),
        annotations: c.spec.annotations.clone().into_iter().collect(),
        image_id: c.image_id.clone(),
    }
}

pub fn cri_status(c: &Container) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(metadata(c)),
        state: cri_state(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        // repo@digest where the image has one (the kubelet's imageID), as containerd.
        image_ref: if c.image_ref.is_empty() {
            c.image_id.clone()
        } else {
            c.image_ref.clone()
        },
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.spec.labels.clone().into_iter().collect(),
        annotations: c.spec.annotations.clone().into_iter().collect(),
        mounts: c
            .spec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                // image_ref: what the kubelet reports as the volume's digest.
                image: m.image.as_ref().map(|i| cri::ImageSpec {
                    image: i.image.clone(),
                    image_ref: if i.image_ref.is_empty() {
                        i.id.clone()
                    } else {
                        i.image_ref.clone()
                    },
                    ..Default::default()
                }),
                image_sub_path: m
                    .image
                    .as_ref()
                    .map(|i| i.sub_path.clone())
                    .unwrap_or_default(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: match m.propagation {
                    Propagation::Private => cri::MountPropagation::PropagationPrivate,
                    Propagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
                } as i32,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.display().to_string(),
        resources: Some(cri::ContainerResources {
            linux: Some(super::pod::cri_resources(
                &c.spec.resources,
                c.spec.oom_score_adj,
            )),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(c.user.uid),
                gid: i64::from(c.user.gid),
                supplemental_groups: c
                    .user
                    .additional_gids
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
        stop_signal: cri_signal(&c.stop_signal) as i32,
    }
}

/// The CRI's name of the signal that stops a container (RUNTIME_DEFAULT: SIGTERM).
fn cri_signal(name: &str) -> cri::Signal {
    crate::runtime::container::signal_name(name)
        .and_then(|name| cri::Signal::from_str_name(&name))
        .unwrap_or(cri::Signal::RuntimeDefault)
}

pub fn verbose_info(c: &Container) -> HashMap<String, String> {
    let info = serde_json::json!({
        "sandboxID": c.pod_id,
        "pid": c.pid,
        "cgroup": c.cgroup,
        "user": c.user,
        "spec": c.spec,
    });
    [("info".to_string(), info.to_string())]
        .into_iter()
        .collect()
}

pub fn filter(f: Option<cri::ContainerFilter>) -> ContainerFilter {
    let Some(f) = f else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: Some(f.id).filter(|s| !s.is_empty()),
        pod_id: Some(f.pod_sandbox_id).filter(|s| !s.is_empty()),
        state: f
            .state
            .map(|s| match cri::ContainerState::try_from(s.state) {
                Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
                Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
                _ => ContainerState::Exited,
            }),
        labels: f.label_selector.into_iter().collect(),
    }
}

/// StopContainer's timeout: seconds, negative treated as zero.
pub fn stop_timeout(seconds: i64) -> Duration {
    Duration::from_secs(seconds.max(0) as u64)
}

fn u64_value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// Pressure stall information in the CRI's terms (its totals are in nanoseconds).
fn psi(pressure: Option<crate::cgroup::Pressure>) -> Option<cri::PsiStats> {
    let data = |s: crate::cgroup::Stall| cri::PsiData {
        total: s.total_us.saturating_mul(1000),
        avg10: s.avg10,
        avg60: s.avg60,
        avg300: s.avg300,
    };
    pressure.map(|p| cri::PsiStats {
        full: Some(data(p.full)),
        some: Some(data(p.some)),
    })
}

fn cpu(stats: &crate::cgroup::Stats, now: i64) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: u64_value(stats.cpu_usage_ns),
        usage_nano_cores: None,
        psi: psi(stats.cpu_pressure),
    }
}

fn memory(stats: &crate::cgroup::Stats, now: i64) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: u64_value(stats.memory_working_set),
        // What is left under the limit, as cadvisor counts it (none without a limit).
        available_bytes: stats
            .memory_limit
            .and_then(|l| u64_value(l.saturating_sub(stats.memory_working_set))),
        usage_bytes: u64_value(stats.memory_usage),
        rss_bytes: u64_value(stats.memory_rss),
        page_faults: u64_value(stats.page_faults),
        major_page_faults: u64_value(stats.major_page_faults),
        psi: psi(stats.memory_pressure),
    }
}

fn swap(stats: &crate::cgroup::Stats, now: i64) -> Option<cri::SwapUsage> {
    let usage = stats.swap_usage?;
    Some(cri::SwapUsage {
        timestamp: now,
        swap_available_bytes: stats
            .swap_limit
            .and_then(|l| u64_value(l.saturating_sub(usage))),
        swap_usage_bytes: u64_value(usage),
    })
}

fn io(stats: &crate::cgroup::Stats, now: i64) -> Option<cri::IoUsage> {
    stats.io_pressure.map(|p| cri::IoUsage {
        timestamp: now,
        psi: psi(Some(p)),
    })
}

/// A container's stats: its cgroup counters and its writable layer's use (as the runtime
/// last counted it).
pub async fn container_stats(ctx: &Context, c: &Container) -> cri::ContainerStats {
    let now = crate::clock::now_nanos();
    let stats = ctx.runtime.container_stats(c);
    let (usage, upper) = ctx.runtime.writable_layer_usage(&c.id).await;
    let (bytes, inodes) = (usage.bytes, usage.inodes);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(metadata(c)),
            labels: c.spec.labels.clone().into_iter().collect(),
            annotations: c.spec.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu(&stats, now)),
        memory: Some(memory(&stats, now)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: upper.display().to_string(),
            }),
            used_bytes: u64_value(bytes),
            inodes_used: u64_value(inodes),
        }),
        swap: swap(&stats, now),
        io: io(&stats, now),
    }
}

pub async fn pod_stats(
    ctx: &Context,
    sandbox: &crate::runtime::sandbox::Sandbox,
    containers: &[Container],
) -> cri::PodSandboxStats {
    let now = crate::clock::now_nanos();
    let stats = ctx.runtime.pod_stats(sandbox);
    let mut container_stats_list = Vec::with_capacity(containers.len());
    for c in containers {
        container_stats_list.push(container_stats(ctx, c).await);
    }
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sandbox.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: sandbox.spec.name.clone(),
                uid: sandbox.spec.uid.clone(),
                namespace: sandbox.spec.namespace.clone(),
                attempt: sandbox.spec.attempt,
            }),
            labels: sandbox.spec.labels.clone().into_iter().collect(),
            annotations: sandbox.spec.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(&stats, now)),
            memory: Some(memory(&stats, now)),
            network: None,
            process: Some(cri::ProcessUsage {
                timestamp: now,
                process_count: u64_value(stats.pids),
            }),
            containers: container_stats_list,
            io: io(&stats, now),
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_swap_and_available_memory_in_the_cris_terms() {
        use crate::cgroup::{Pressure, Stall, Stats};
        let stall = |avg10, total_us| Stall {
            avg10,
            avg60: 0.5,
            avg300: 0.25,
            total_us,
        };
        let stats = Stats {
            memory_working_set: 300,
            memory_limit: Some(1000),
            swap_usage: Some(40),
            swap_limit: Some(100),
            cpu_pressure: Some(Pressure {
                some: stall(1.5, 7),
                full: stall(0.0, 3),
            }),
            io_pressure: Some(Pressure::default()),
            ..Default::default()
        };
        let cpu_psi = cpu(&stats, 1).psi.unwrap();
        let some = cpu_psi.some.unwrap();
        assert_eq!((some.total, some.avg10, some.avg300), (7000, 1.5, 0.25));
        assert_eq!(cpu_psi.full.unwrap().total, 3000);
        let used = memory(&stats, 1);
        assert_eq!(used.available_bytes.unwrap().value, 700);
        assert!(used.psi.is_none(), "no memory.pressure: none reported");
        let swapped = swap(&stats, 1).unwrap();
        assert_eq!(
            (
                swapped.swap_usage_bytes.unwrap().value,
                swapped.swap_available_bytes.unwrap().value
            ),
            (40, 60)
        );
        assert!(io(&stats, 1).unwrap().psi.is_some());
        // A v1 node without swap accounting or limits: those stay unset.
        let bare = Stats::default();
        assert!(swap(&bare, 1).is_none() && io(&bare, 1).is_none());
        assert!(memory(&bare, 1).available_bytes.is_none());
    }

    #[test]
    fn apparmor_profiles_are_refused_where_the_host_has_no_apparmor() {
        use cri::security_profile::ProfileType as T;
        let profile = |t: T, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        for (p, deprecated) in [
            (Some(profile(T::RuntimeDefault, "")), ""),
            (Some(profile(T::Localhost, "my-profile")), ""),
            (None, "runtime/default"),
            (None, "localhost/other"),
        ] {
            let err = apparmor_choice(p.as_ref(), deprecated, false, false).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains("AppArmor is not enabled"), "{err:?}");
        }
        for (p, deprecated) in [
            (Some(profile(T::Unconfined, "")), ""),
            (None, "unconfined"),
            (None, ""),
        ] {
            assert_eq!(
                apparmor_choice(p.as_ref(), deprecated, false, false).unwrap(),
                None
            );
        }
    }

    #[test]
    fn apparmor_profiles_on_a_host_with_apparmor() {
        use cri::security_profile::ProfileType as T;
        let profile = |t: T, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let default = Some(crate::apparmor::DEFAULT_PROFILE.to_string());
        for (p, deprecated, privileged, expected) in [
            (
                Some(profile(T::RuntimeDefault, "")),
                "",
                false,
                default.clone(),
            ),
            (
                Some(profile(T::Localhost, "mine")),
                "",
                false,
                Some("mine".into()),
            ),
            (
                Some(profile(T::Localhost, "mine")),
                "",
                true,
                Some("mine".into()),
            ),
            (Some(profile(T::Unconfined, "")), "", false, None),
            (None, "runtime/default", false, default.clone()),
            (None, "localhost/other", false, Some("other".into())),
            (None, "unconfined", false, None),
            // Named by no one: the default, except for a privileged container.
            (None, "", false, default.clone()),
            (None, "", true, None),
            (Some(profile(T::RuntimeDefault, "")), "", true, None),
        ] {
            assert_eq!(
                apparmor_choice(p.as_ref(), deprecated, true, privileged).unwrap(),
                expected,
                "{p:?} {deprecated:?} privileged={privileged}"
            );
        }
        for (p, deprecated) in [
            (Some(profile(T::Localhost, "")), ""),
            (None, "localhost/"),
            (None, "bogus"),
        ] {
            let err = apparmor_choice(p.as_ref(), deprecated, true, false).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{deprecated}");
        }
    }
}
