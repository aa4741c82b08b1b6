//! End to end: the systemd cgroup driver. Pods become transient slices and containers
//! transient scopes, made through systemd's D-Bus API with their limits as unit properties.
//!
//! This machine's init is not systemd, so the lifecycle runs against a stand-in that serves
//! systemd's API on a socket of its own and does to the real cgroupfs what systemd would
//! (tests/common/systemd.rs); where systemd is PID 1, the same lifecycle also runs against
//! the real one.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{
    Daemon, Options,
    cri::{container_config, env_on, memory_hog, pod_config},
    stratad_refuses,
    systemd::{Call, FakeSystemd},
};
use strata_api::cri::{self, RemovePodSandboxRequest, StopPodSandboxRequest};

/// Every hierarchy's copy of a cgroup.
const ROOT: &str = "/sys/fs/cgroup";

/// Removes, also when the test fails, the slice tree the test's pods were made in.
struct TopSlice(String);

impl Drop for TopSlice {
    fn drop(&mut self) {
        common::kill_leftovers(Path::new("/nonexistent"), Some(&self.0));
        common::remove_cgroup_tree(&self.0);
    }
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn starts<'a>(calls: &'a [Call], unit: &str) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| c.method == "StartTransientUnit" && c.unit == unit)
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The test's slice names: a kubelet-like parent, `<top>-besteffort.slice` inside
/// `<top>.slice`, removed at the end.
fn names(test: &str) -> (String, String, TopSlice) {
    let top = format!("strata_e2e_{test}{}", std::process::id());
    let parent = format!("{top}-besteffort.slice");
    let cleanup = TopSlice(format!("{top}.slice"));
    (top, parent, cleanup)
}

/// A daemon with the systemd driver, talking to `fake`, and the busybox image.
async fn systemd_env(fake: &FakeSystemd, top: &str, parent: &str) -> (common::cri::Env, Options) {
    let mut daemon = Daemon::prepare();
    daemon.cgroup_parent = format!("{top}.slice");
    let options = Options {
        config: format!(
            "cgroup_parent = {parent:?}\n[cgroups]\ndriver = \"systemd\"\nsystemd_socket = {:?}\n",
            fake.socket.to_str().unwrap()
        ),
        ..Default::default()
    };
    daemon.launch(options.clone()).await;
    assert!(
        daemon.logs().contains("cgroup driver: systemd"),
        "{}",
        daemon.logs()
    );
    (env_on(daemon).await, options)
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_its_client_gave_up_on_is_finished_not_left_half_built() {
    let fake = FakeSystemd::start();
    let (top, parent, _cleanup) = names("impatient");
    let (mut env, _) = systemd_env(&fake, &top, &parent).await;
    let image = env.image.clone();
    let pod = env.pod("impatient").await;
    // systemd takes longer to start the scope than the client waits.
    fake.delay_scopes(Duration::from_millis(1500));
    let mut request = tonic::Request::new(cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config("late", &image, "exec sleep 1000")),
        sandbox_config: None,
    });
    request.set_timeout(Duration::from_millis(300));
    let err = env.rt.create_container(request).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    fake.delay_scopes(Duration::ZERO);
    // The creation went on to its end: a created container, whose scope's placeholder is
    // gone, not a scope held open by a placeholder nobody kills.
    let mut id = String::new();
    eventually("the container the client gave up on is created", || {
        id = env.daemon.ctl(["ps", "-a", "-q"]).stdout.trim().to_string();
        !id.is_empty()
    })
    .await;
    let scope = format!("strata-{id}.scope");
    let calls = fake.calls();
    let started = starts(&calls, &scope);
    assert_eq!(started.len(), 1, "{calls:#?}");
    let placeholder = started[0].pids[0];
    eventually("the placeholder is gone", || !is_alive(placeholder)).await;
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    // And it can be used and removed like any other.
    env.start(&id).await;
    env.remove_pods(vec![pod]).await;
    assert!(fake.units().is_empty(), "{:?}", fake.units());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_containers_are_systemd_units_with_their_limits() {
    let fake = FakeSystemd::start();
    let (top, parent, _cleanup) = names("units");
    let (mut env, options) = systemd_env(&fake, &top, &parent).await;
    let image = env.image.clone();

    // The kubelet (>= 1.28) reads the driver from the runtime.
    let rc = env
        .rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );

    // A pod that shares one PID namespace: its slice, and its PID-namespace holder in a
    // scope of its own inside it (a slice holds no process).
    let mut config = pod_config("units");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = env.pod_with(config).await;
    let pod_slice = format!("{top}-besteffort-strata_pod_{pod}.slice");
    let pod_path = format!("{top}.slice/{parent}/{pod_slice}");
    assert_eq!(env.record("sandboxes", &pod)["cgroup"], pod_path.as_str());
    let calls = fake.calls();
    assert_eq!(starts(&calls, &pod_slice).len(), 1, "{calls:#?}");
    let holder_scope = format!("strata-pod-{pod}.scope");
    let holder = starts(&calls, &holder_scope);
    assert_eq!(holder.len(), 1, "{calls:#?}");
    assert_eq!(
        holder[0].props.get("Slice").map(String::as_str),
        Some(pod_slice.as_str()),
        "{holder:#?}"
    );
    let holder_pid = env.record("sandboxes", &pod)["pid_holder"]
        .as_u64()
        .unwrap() as u32;
    assert_eq!(holder[0].pids, vec![holder_pid]);
    assert!(
        pids_in(
            &Path::new(ROOT)
                .join("memory")
                .join(&pod_path)
                .join(&holder_scope)
        )
        .contains(&holder_pid),
        "the holder in its scope"
    );

    // A container with limits: a scope in the pod's slice, delegated, the limits as its
    // properties.
    let mut limited = container_config("limited", &image, "exec sleep 1000");
    limited.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    let id = env.create(&pod, limited).await.unwrap();
    env.start(&id).await;
    let scope = format!("strata-{id}.scope");
    let scope_path = format!("{pod_path}/{scope}");
    let record = env.record("containers", &id);
    assert_eq!(record["cgroup"], scope_path.as_str());
    let calls = fake.calls();
    let started = starts(&calls, &scope);
    assert_eq!(started.len(), 1, "{calls:#?}");
    let props = &started[0].props;
    assert_eq!(
        props.get("Delegate").map(String::as_str),
        Some("true"),
        "{props:?}"
    );
    assert_eq!(
        props.get("Slice").map(String::as_str),
        Some(pod_slice.as_str())
    );
    assert!(
        props.get("MemoryLimit").map(String::as_str) == Some("67108864"),
        "{props:?}"
    );
    assert!(
        props.get("CPUShares").map(String::as_str) == Some("512"),
        "{props:?}"
    );
    // 50 % of a CPU: 500 ms of CPU time per second.
    assert!(
        props.get("CPUQuotaPerSecUSec").map(String::as_str) == Some("500000"),
        "{props:?}"
    );
    // The scope's first process was a placeholder: gone once the container's init is in.
    let placeholder = started[0].pids[0];
    let init = record["pid"].as_u64().unwrap() as u32;
    let monitor = record["monitor"][0].as_u64().unwrap() as u32;
    for hierarchy in ["memory", "systemd"] {
        let dir = Path::new(ROOT).join(hierarchy).join(&scope_path);
        assert!(
            !pids_in(&dir).contains(&placeholder),
            "the placeholder left the scope ({hierarchy})"
        );
        assert!(
            pids_in(&dir.join("main")).contains(&init),
            "the container's init in {}/main",
            dir.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(
            Path::new(ROOT)
                .join("memory")
                .join(&scope_path)
                .join("memory.limit_in_bytes")
        )
        .unwrap()
        .trim(),
        "67108864"
    );
    // The monitor is in the scope for systemd (which then keeps it until the exit is
    // recorded) but in no controller's cgroup of it.
    assert!(
        pids_in(
            &Path::new(ROOT)
                .join("systemd")
                .join(&scope_path)
                .join("monitor")
        )
        .contains(&monitor)
    );
    assert!(
        !Path::new(ROOT)
            .join("memory")
            .join(&scope_path)
            .join("monitor")
            .exists()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fake.units().contains_key(&scope),
        "a running container's scope stays"
    );
    let out = env
        .daemon
        .ctl(["exec", "-s", &id, "sh", "-c", "echo in-scope"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "in-scope");

    // New limits go to the unit too (or systemd would put the old ones back).
    env.rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let calls = fake.calls();
    let set: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "SetUnitProperties" && c.unit == scope)
        .collect();
    assert_eq!(set.len(), 1, "{calls:#?}");
    assert!(
        set[0].props.get("MemoryLimit").map(String::as_str) == Some("134217728"),
        "{set:?}"
    );

    // A daemon restart: the running container and its unit are kept, and the new daemon
    // drives them on a connection of its own.
    env.node.daemon.stop().await;
    env.node.daemon.launch(options).await;
    env.node.rt = env.node.daemon.runtime().await;
    assert!(fake.units().contains_key(&scope));
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    env.rt
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    assert_eq!(env.status(&id).await.exit_code, 137);

    // A container that exits: its exit code and an OOM kill are recorded although systemd
    // collects the scope once nothing runs in it.
    let (_, st) = env
        .run_config(&pod, container_config("failing", &image, "exit 3"))
        .await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"), "{st:?}");
    let (_, st) = env.run_config(&pod, memory_hog(&image)).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    let hungry_scope = format!("strata-{}.scope", st.id);
    eventually("systemd collected the exited container's scope", || {
        fake.collected().contains(&hungry_scope)
    })
    .await;
    // Removing a collected container is fine.
    env.rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: st.id.clone(),
        })
        .await
        .unwrap();

    // Stopping and removing the pod stops its units; nothing is left in any hierarchy.
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let calls = fake.calls();
    for unit in [&pod_slice, &scope] {
        assert!(
            calls
                .iter()
                .any(|c| c.method == "StopUnit" && &c.unit == unit),
            "{unit} stopped: {calls:#?}"
        );
    }
    assert!(fake.units().is_empty(), "{:?}", fake.units());
    let left: Vec<String> = common::cgroup_dirs(&pod_path)
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    assert!(
        !Path::new("/proc")
            .join(init.to_string())
            .join("exe")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_systemd_the_systemd_driver_is_refused_plainly() {
    if Path::new("/run/systemd/system").is_dir() {
        // systemd is the init here: the driver must start against the real one.
        let top = format!("strata_e2e_real{}", std::process::id());
        let _cleanup = TopSlice(format!("{top}.slice"));
        let mut daemon = Daemon::prepare();
        daemon.cgroup_parent = format!("{top}.slice");
        daemon
            .launch(Options {
                config: format!(
                    "cgroup_parent = \"{top}.slice\"\n[cgroups]\ndriver = \"systemd\"\n"
                ),
                ..Default::default()
            })
            .await;
        let mut env = env_on(daemon).await;
        let pod = env.pod("real-systemd").await;
        let image = env.image.clone();
        let (lines, st) = env
            .run_config(
                &pod,
                container_config("c", &image, "cat /proc/self/cgroup; exit 4"),
            )
            .await;
        assert_eq!(st.exit_code, 4);
        assert!(
            lines.iter().any(|l| l.contains(".scope")),
            "the container ran in a systemd scope: {lines:?}"
        );
        env.remove_pods(vec![pod]).await;
        return;
    }
    eprintln!(
        "systemd is not PID 1 on this machine (no /run/systemd/system): the systemd driver is \
         tested against a stand-in of its API, and here only its refusal to start is tested"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "cgroup_parent = \"kubepods.slice\"\n[cgroups]\ndriver = \"systemd\"\n",
    )
    .unwrap();
    let error = stratad_refuses([
        "--config".as_ref(),
        config.as_os_str(),
        "--root".as_ref(),
        dir.path().join("root").as_os_str(),
        "--state-dir".as_ref(),
        dir.path().join("run").as_os_str(),
        "--socket".as_ref(),
        dir.path().join("run/strata.sock").as_os_str(),
    ]);
    assert!(error.contains("/run/systemd/private"), "{error}");
    assert!(error.contains("systemd is not the init system"), "{error}");
    assert!(!dir.path().join("run/strata.sock").exists());

    // A parent that is not a slice is a config error, before anything connects.
    std::fs::write(
        &config,
        "cgroup_parent = \"kubepods\"\n[cgroups]\ndriver = \"systemd\"\n",
    )
    .unwrap();
    let error = stratad_refuses(["--config".as_ref(), config.as_os_str()]);
    assert!(error.contains("cgroup_parent"), "{error}");
    assert!(error.contains("slice"), "{error}");
}
