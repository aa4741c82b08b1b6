//! End to end: pod sandboxes — pinned namespaces, the pod's files, its cgroup, listing
//! and filters, stop and removal leaving nothing behind, and restarts.

mod common;

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use common::{Daemon, Options, assert_pod_gone, cgroup_dirs, mounts_below, pod_cgroup};
use strata_api::cri::{
    self, ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter, PodSandboxStateValue,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::{Code, transport::Channel};

fn config(name: &str, hostname: &str) -> PodSandboxConfig {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "attempt": 0},
        "hostname": hostname,
        "log_directory": "/tmp",
        "dns_config": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"], "options": ["ndots:5"]},
        "labels": {"app": name, "tier": "test"},
        "annotations": {"note": "kept as given"},
    }))
    .unwrap()
}

async fn run(
    client: &mut RuntimeServiceClient<Channel>,
    config: PodSandboxConfig,
) -> Result<String, tonic::Status> {
    client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<cri::PodSandboxStatusResponse, tonic::Status> {
    client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner())
}

fn ns_file(daemon: &Daemon, id: &str, kind: &str) -> PathBuf {
    daemon
        .state_dir
        .join("sandboxes")
        .join(id)
        .join("ns")
        .join(kind)
}

fn nsenter(kind: &str, file: &Path, cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--{kind}={}", file.display()))
        .args(cmd)
        .output()
        .expect("nsenter (util-linux)");
    assert!(
        out.status.success(),
        "nsenter {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_owns_pinned_namespaces_its_files_and_a_cgroup() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;

    // Through stratactl, from a crictl-style YAML file.
    let yaml = daemon.path("pod.yaml");
    std::fs::write(
        &yaml,
        "metadata:\n  name: web\n  namespace: default\n  uid: uid-web\nhostname: web-0\nlog_directory: /tmp\n\
         dns_config:\n  servers: [10.96.0.10]\n  searches: [default.svc.cluster.local]\n  options: [\"ndots:5\"]\n\
         labels:\n  app: web\nlinux:\n  resources:\n    memory_limit_in_bytes: 268435456\n",
    )
    .unwrap();
    let id = daemon
        .ctl(["runp", yaml.to_str().unwrap()])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");

    // The namespaces are pinned as nsfs mounts and are what the pod says.
    let mounts = mounts_below(&daemon.state_dir);
    for kind in ["net", "ipc", "uts"] {
        let file = ns_file(&daemon, &id, kind);
        assert!(
            mounts.contains(&file),
            "{} not mounted: {mounts:?}",
            file.display()
        );
        let host = std::fs::metadata(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .ino();
        assert_ne!(
            std::fs::metadata(&file).unwrap().ino(),
            host,
            "{kind} is the host's"
        );
    }
    assert_eq!(
        nsenter("uts", &ns_file(&daemon, &id, "uts"), &["hostname"]).trim(),
        "web-0"
    );
    let lo = nsenter(
        "net",
        &ns_file(&daemon, &id, "net"),
        &["ip", "-o", "link", "show", "lo"],
    );
    assert!(lo.contains("UP"), "loopback is down: {lo}");
    let links = nsenter("net", &ns_file(&daemon, &id, "net"), &["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "only loopback: {links}");

    // The pod's files.
    let dir = daemon.root.join("sandboxes").join(&id);
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        "web-0\n"
    );
    assert!(
        std::fs::read_to_string(dir.join("hosts"))
            .unwrap()
            .contains("127.0.1.1\tweb-0")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );

    // Its cgroup, without the pod's limit: the kubelet enforces pod limits on the parent
    // it gives, and the sum it sends here would cap unlimited containers.
    let cgroups = cgroup_dirs(&pod_cgroup(&daemon, &id));
    assert!(!cgroups.is_empty(), "no pod cgroup");
    let limit = cgroups
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .expect("a memory controller");
    assert_ne!(
        limit.trim(),
        "268435456",
        "the pod's resources were enforced"
    );

    // CRI's view, and stratactl's.
    let st = status(&mut client, &id).await.unwrap();
    let pod = st.status.unwrap();
    assert_eq!(pod.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(pod.metadata.unwrap().name, "web");
    assert_eq!(pod.labels["app"], "web");
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["cgroupExists"], true);
    let table = daemon.ctl(["pods"]);
    let row = table.ok().lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.starts_with(&id[..13]) && row.contains("Ready") && row.contains("web"),
        "{row}"
    );
    let inspected: serde_json::Value =
        serde_json::from_str(daemon.ctl(["inspectp", &id[..12]]).ok()).unwrap();
    assert_eq!(inspected["status"]["id"], id);
    assert_eq!(inspected["status"]["state"], "SANDBOX_READY");

    // A second pod has namespaces of its own.
    let other = run(&mut client, config("db", "db-0")).await.unwrap();
    assert_ne!(
        std::fs::metadata(ns_file(&daemon, &other, "net"))
            .unwrap()
            .ino(),
        std::fs::metadata(ns_file(&daemon, &id, "net"))
            .unwrap()
            .ino()
    );

    // Stop: NotReady, namespaces released; again: no error. Remove: nothing left.
    daemon.ctl(["stopp", &id]).ok();
    assert_eq!(
        status(&mut client, &id)
            .await
            .unwrap()
            .status
            .unwrap()
            .state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert!(!ns_file(&daemon, &id, "net").exists());
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    daemon.ctl(["rmp", &id]).ok();
    assert!(!cgroup_dirs(&pod_cgroup(&daemon, &other)).is_empty());
    daemon.ctl(["rmp", "--force", &other]).ok();
    assert_pod_gone(&daemon, &id);
    assert_pod_gone(&daemon, &other);
    // Removing again is not an error.
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_by_id_state_and_labels() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let a = run(&mut client, config("a", "a")).await.unwrap();
    let b = run(&mut client, config("b", "b")).await.unwrap();
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
        .unwrap();
    let list = |filter: PodSandboxFilter| {
        let mut client = client.clone();
        async move {
            let mut ids: Vec<String> = client
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(PodSandboxFilter::default()).await, both);
    assert_eq!(
        list(PodSandboxFilter {
            id: a[..10].into(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    let ready = PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    };
    assert_eq!(
        list(PodSandboxFilter {
            state: Some(ready),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    let labels = [("app".to_string(), "b".to_string())].into_iter().collect();
    assert_eq!(
        list(PodSandboxFilter {
            label_selector: labels,
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    let both_labels = [("tier".to_string(), "test".to_string())]
        .into_iter()
        .collect();
    assert_eq!(
        list(PodSandboxFilter {
            label_selector: both_labels,
            ..Default::default()
        })
        .await,
        both
    );
    assert_eq!(
        daemon
            .ctl(["pods", "-q", "--state", "notready"])
            .ok()
            .trim(),
        b
    );
    assert_eq!(
        daemon.ctl(["pods", "-q", "--label", "app=a"]).ok().trim(),
        a
    );

    let mut streamed = client
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = streamed.message().await.unwrap().unwrap();
    assert_eq!(first.pod_sandboxes.len(), 2);
    assert!(streamed.message().await.unwrap().is_none());

    daemon.ctl(["rmp", "--all", "--force"]).ok();
    assert_pod_gone(&daemon, &a);
    assert_pod_gone(&daemon, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_leave_nothing() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let id = run(&mut client, config("dup", "dup")).await.unwrap();
    let err = run(&mut client, config("dup", "dup")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    for (what, mut cfg, code) in [
        (
            "no metadata",
            PodSandboxConfig::default(),
            Code::InvalidArgument,
        ),
        (
            "bad hostname",
            config("h", "not a hostname"),
            Code::InvalidArgument,
        ),
        (
            "memory limit of 10 bytes",
            config("m", "m"),
            Code::InvalidArgument,
        ),
        (
            "escaping cgroup parent",
            config("c", "c"),
            Code::InvalidArgument,
        ),
    ] {
        if what.starts_with("memory") {
            cfg.linux = Some(cri::LinuxPodSandboxConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 10,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if what.starts_with("escaping") {
            cfg.linux = Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: "../../etc".into(),
                ..Default::default()
            });
        }
        let err = run(&mut client, cfg).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    let err = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config("r", "r")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kata"), "{}", err.message());

    let err = status(&mut client, "0123456789abcdef").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Stop, like remove, is idempotent: a pod that is not there is stopped.
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
        })
        .await
        .expect("stopping a pod that is not there succeeds");
    let err = client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let line = daemon
        .ctl(["inspectp", "0123456789abcdef"])
        .failed()
        .to_string();
    assert!(line.contains("NotFound"), "{line}");
    let bad_file = daemon.path("bad.json");
    std::fs::write(&bad_file, "{ not json or yaml: [").unwrap();
    let line = daemon
        .ctl(["runp", bad_file.to_str().unwrap()])
        .failed()
        .to_string();
    assert!(line.contains("bad.json"), "{line}");

    // Only the first pod exists, and only its things.
    let listed = client
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        std::fs::read_dir(daemon.root.join("sandboxes"))
            .unwrap()
            .count(),
        1
    );
    // Its three namespaces and its /dev/shm.
    assert_eq!(mounts_below(&daemon.state_dir).len(), 4);
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    assert_pod_gone(&daemon, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_and_restarts() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let mut host = config("host", "");
    host.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let host_id = run(&mut client, host).await.unwrap();
    assert!(
        !ns_file(&daemon, &host_id, "net").exists(),
        "a host-network pod has no network namespace"
    );
    let node = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let hostname = std::fs::read_to_string(
        daemon
            .root
            .join("sandboxes")
            .join(&host_id)
            .join("hostname"),
    )
    .unwrap();
    assert_eq!(hostname.trim(), node);

    let ready = run(&mut client, config("keep", "keep")).await.unwrap();
    let stopped = run(&mut client, config("stopped", "stopped"))
        .await
        .unwrap();
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: stopped.clone(),
        })
        .await
        .unwrap();
    let net_ino = std::fs::metadata(ns_file(&daemon, &ready, "net"))
        .unwrap()
        .ino();

    // A daemon restart keeps pods and their namespaces as they were.
    drop(client);
    assert!(daemon.stop().await.success());
    daemon.launch(Options::default()).await;
    let mut client = daemon.runtime().await;
    let state = |s: cri::PodSandboxStatusResponse| s.status.unwrap().state;
    assert_eq!(
        state(status(&mut client, &ready).await.unwrap()),
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        state(status(&mut client, &stopped).await.unwrap()),
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        std::fs::metadata(ns_file(&daemon, &ready, "net"))
            .unwrap()
            .ino(),
        net_ino
    );

    for id in [&host_id, &ready, &stopped] {
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap();
        assert_pod_gone(&daemon, id);
    }
}
