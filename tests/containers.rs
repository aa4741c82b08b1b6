//! End to end: containers in pods, from images in a real registry, on the real kernel.

mod common;

use std::time::{Duration, Instant};

use common::{
    Daemon,
    oci::{Compression, ImageBuilder, LayerBuilder, busybox_layer},
    registry::Registry,
};
use strata_api::cri::{
    self, ContainerConfig, ContainerStatusRequest, CreateContainerRequest, ImageSpec, KeyValue,
    PodSandboxConfig, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::{Code, transport::Channel};

struct Env {
    _registry: Registry,
    daemon: Daemon,
    rt: RuntimeServiceClient<Channel>,
    image: String,
}

/// A daemon with a busybox image pulled (and a file the top layer deletes).
async fn env() -> Env {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file("etc/doomed", b"x", 0o644)
                .file("etc/kept", b"kept\n", 0o644)
                .finish(),
            Compression::Gzip,
        )
        .layer(
            LayerBuilder::new().whiteout("etc/doomed").finish(),
            Compression::Gzip,
        )
        .build();
    registry.push("ctr/busybox", "v1", &image).await;
    let reference = registry.reference("ctr/busybox", "v1");
    ImageServiceClient::new(daemon.channel().await)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let rt = daemon.runtime().await;
    Env {
        _registry: registry,
        daemon,
        rt,
        image: reference,
    }
}

fn pod_config(name: &str) -> PodSandboxConfig {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "hostname": format!("{name}-host"),
    }))
    .unwrap()
}

fn container_config(name: &str, image: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        envs: vec![KeyValue {
            key: "GREETING".into(),
            value: "hello".into(),
        }],
        ..Default::default()
    }
}

impl Env {
    async fn pod(&mut self, name: &str) -> String {
        self.rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(name)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
    }

    async fn create(
        &mut self,
        pod: &str,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn wait_exit(&mut self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.status(id).await;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `script` in a new container of `pod`; returns its stdout lines and status.
    async fn run(
        &mut self,
        pod: &str,
        name: &str,
        script: &str,
    ) -> (Vec<String>, cri::ContainerStatus) {
        let id = self
            .create(pod, container_config(name, &self.image.clone(), script))
            .await
            .unwrap();
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        let st = self.wait_exit(&id).await;
        let log = std::fs::read_to_string(&st.log_path).unwrap_or_default();
        let lines = log
            .lines()
            .filter_map(|l| l.split_once(" stdout F ").map(|(_, t)| t.to_string()))
            .collect();
        (lines, st)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_in_its_pod_and_its_own_rootfs() {
    let mut env = env().await;
    let pod = env.pod("web").await;
    let script = "echo $GREETING; hostname; cat /etc/hostname; ls /proc | grep -c '^[0-9]'; \
                  cat /etc/kept; test -e /etc/doomed && echo doomed-visible || echo doomed-gone; \
                  echo written > /newfile; ls /proc/self/fd | wc -l; id -u; exit 3";
    let (lines, st) = env.run(&pod, "first", script).await;
    assert_eq!(st.exit_code, 3, "{st:?} {lines:?}");
    assert_eq!(st.reason, "Error");
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1], "web-host", "the pod's hostname");
    assert_eq!(lines[2], "web-host", "/etc/hostname from the init layer");
    assert_eq!(
        lines[3], "3",
        "only the container's processes (sh, ls, grep) in /proc: {lines:?}"
    );
    assert_eq!(lines[4], "kept");
    assert_eq!(lines[5], "doomed-gone", "the whiteout hides the file");
    // ls's own fds: 0-2 plus the directory it reads.
    assert_eq!(lines[6], "4", "only fds 0-2 are inherited: {lines:?}");
    assert_eq!(lines[7], "0");

    // The write went to the container's upper dir, not to any image layer.
    let containers = env.daemon.root.join("containers");
    let dir = std::fs::read_dir(&containers)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(dir.join("upper/newfile")).unwrap(),
        "written\n"
    );
    assert!(
        !dir.join("upper/etc/hosts").exists(),
        "init layer files never reach the upper dir"
    );

    let id = dir.file_name().unwrap().to_str().unwrap().to_string();
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert!(!dir.exists());
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_and_remove_cleans_up() {
    let mut env = env().await;
    let pod = env.pod("sleepy").await;
    let id = env
        .create(
            &pod,
            container_config(
                "sleeper",
                &env.image.clone(),
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    env.rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let err = env
        .rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let st = env.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "SIGTERM was handled: {st:?}"
    );

    // One that ignores SIGTERM is killed after the timeout.
    let stubborn = env
        .create(
            &pod,
            container_config(
                "stubborn",
                &env.image.clone(),
                "trap '' TERM; while true; do sleep 0.1; done",
            ),
        )
        .await
        .unwrap();
    env.rt
        .start_container(StartContainerRequest {
            container_id: stubborn.clone(),
        })
        .await
        .unwrap();
    let started = Instant::now();
    env.rt
        .stop_container(StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    let st = env.status(&stubborn).await;
    assert_eq!(st.exit_code, 137, "{st:?}");

    // Removing the pod removes its containers; nothing is left.
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_dir(env.daemon.root.join("containers"))
            .unwrap()
            .count(),
        0
    );
    assert!(common::cgroup_dirs(&format!("{}/pod-{pod}", env.daemon.cgroup_parent)).is_empty());
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&id),
        "a monitor is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_container_requests() {
    let mut env = env().await;
    let pod = env.pod("bad").await;
    let image = env.image.clone();
    let err = env
        .create(
            &pod,
            container_config("x", "127.0.0.1:1/missing:v1", "true"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = env
        .create("0000000000", container_config("x", &image, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    env.create(&pod, container_config("dup", &image, "true"))
        .await
        .unwrap();
    let err = env
        .create(&pod, container_config("dup", &image, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let mut unknown_user = container_config("who", &image, "true");
    unknown_user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "nobody-here".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = env.create(&pod, unknown_user).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut missing_mount = container_config("mnt", &image, "true");
    missing_mount.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/strata".into(),
        ..Default::default()
    }];
    let err = env.create(&pod, missing_mount).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // An entrypoint that is not in the image: the container reports it; the daemon lives on.
    let mut no_such = container_config("noexec", &image, "");
    no_such.command = vec!["/no/such/binary".into()];
    let id = env.create(&pod, no_such).await.unwrap();
    let err = env
        .rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let st = env.status(&id).await;
    assert_eq!(st.reason, "StartError");
    assert!(st.message.contains("/no/such/binary"), "{}", st.message);

    // A stopped pod takes no new containers.
    env.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let err = env
        .create(&pod, container_config("late", &image, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_dir(env.daemon.root.join("containers"))
            .unwrap()
            .count(),
        0
    );
}
