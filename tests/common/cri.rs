//! Pods and containers for the end-to-end tests: a daemon with the busybox test image
//! pulled from a real registry, and helpers to run containers and read their output.

use std::time::{Duration, Instant};

use strata_api::cri::{
    self, ContainerConfig, ContainerStatusRequest, CreateContainerRequest, ImageSpec, KeyValue,
    PodSandboxConfig, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

use super::{
    Daemon, Options,
    oci::{Compression, Image, ImageBuilder, LayerBuilder, busybox_layer},
    registry::Registry,
};

/// A daemon and its runtime client.
pub struct Node {
    pub daemon: Daemon,
    pub rt: RuntimeServiceClient<Channel>,
}

/// A registry, and a node with the busybox test image from it pulled.
pub struct Env {
    pub registry: Registry,
    pub node: Node,
    pub image: String,
}

impl std::ops::Deref for Env {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

/// A daemon with a busybox image pulled (and a file the top layer deletes).
pub async fn env() -> Env {
    env_with("").await
}

pub async fn env_with(config: &str) -> Env {
    let daemon = Daemon::start_with(Options {
        config: config.into(),
        ..Default::default()
    })
    .await;
    env_on(daemon).await
}

/// [`env`] on a daemon the test started itself.
pub async fn env_on(daemon: Daemon) -> Env {
    let registry = Registry::start().await;
    let image = busybox_image();
    let mut env = Env {
        registry,
        node: Node::new(daemon).await,
        image: String::new(),
    };
    env.image = env.publish("ctr/busybox", &image).await;
    env
}

/// The test image: busybox, a layer with two files, and one that deletes one of them.
pub fn busybox_image() -> Image {
    ImageBuilder::new()
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
        .build()
}

pub fn pod_config(name: &str) -> PodSandboxConfig {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "hostname": format!("{name}-host"),
    }))
    .unwrap()
}

pub fn container_config(name: &str, image: &str, script: &str) -> ContainerConfig {
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
        // As the kubelet asks for every container of a pod that does not share processes.
        linux: Some(pid_mode(cri::NamespaceMode::Container)),
        ..Default::default()
    }
}

/// A container with 32 MiB of memory that the OOM killer ends: `tail /dev/zero` buffers
/// without end.
pub fn memory_hog(image: &str) -> ContainerConfig {
    let mut hungry = container_config("hungry", image, "tail /dev/zero; exit $?");
    hungry.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    hungry
}

/// A pod's Linux config for the node's network (a host-network pod).
pub fn host_network() -> cri::LinuxPodSandboxConfig {
    cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn pid_mode(mode: cri::NamespaceMode) -> cri::LinuxContainerConfig {
    cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: mode as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Node {
    pub async fn new(daemon: Daemon) -> Node {
        let rt = daemon.runtime().await;
        Node { daemon, rt }
    }

    pub async fn pod(&mut self, name: &str) -> String {
        self.pod_with(pod_config(name)).await
    }

    /// Runs a pod of `config`; returns its id.
    pub async fn pod_with(&mut self, config: PodSandboxConfig) -> String {
        self.rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
    }

    pub async fn create(
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

    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
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

    /// Creates and starts a container that may well be refused: at create, at start (with
    /// what it came to), or not at all (it ran to its end).
    pub async fn attempt(&mut self, pod: &str, config: ContainerConfig) -> Attempt {
        let id = match self.create(pod, config).await {
            Ok(id) => id,
            Err(e) => return Attempt::Refused(e),
        };
        let started = self
            .rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        let status = self.wait_exit(&id).await;
        match started {
            Ok(_) => Attempt::Ran(status),
            Err(e) => Attempt::StartFailed(e, status),
        }
    }

    pub async fn wait_exit(&mut self, id: &str) -> cri::ContainerStatus {
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

    pub async fn start(&mut self, id: &str) {
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap();
    }

    /// Creates and starts a container of `pod`, waits for it to exit, and returns its
    /// stdout lines and status.
    pub async fn run_config(
        &mut self,
        pod: &str,
        config: ContainerConfig,
    ) -> (Vec<String>, cri::ContainerStatus) {
        let id = self.create(pod, config).await.unwrap();
        self.start(&id).await;
        let st = self.wait_exit(&id).await;
        (stdout_lines(&st), st)
    }

    /// Starts `script` (which should end in `exec sleep …`) in a new container of `pod` and
    /// waits until sleep is its PID 1, so that whatever the script did is done.
    pub async fn start_sleeper(
        &mut self,
        pod: &str,
        name: &str,
        image: &str,
        script: &str,
    ) -> String {
        self.start_sleeper_within(pod, name, image, script, Duration::from_secs(10))
            .await
    }

    /// [`Node::start_sleeper`] for a script that takes up to `within` before its sleep.
    pub async fn start_sleeper_within(
        &mut self,
        pod: &str,
        name: &str,
        image: &str,
        script: &str,
        within: Duration,
    ) -> String {
        let id = self
            .create(pod, container_config(name, image, script))
            .await
            .unwrap();
        self.start(&id).await;
        let deadline = Instant::now() + within;
        loop {
            let out = self
                .daemon
                .ctl(["exec", "-s", &id, "sh", "-c", "cat /proc/1/cmdline"]);
            if out.status.success() && out.stdout.starts_with("sleep") {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never got to sleep: {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The daemon's record of a pod (`kind` "sandboxes") or container ("containers").
    pub fn record(&self, kind: &str, id: &str) -> serde_json::Value {
        let path = self.daemon.root.join(kind).join(id).join("state.json");
        serde_json::from_slice(&std::fs::read(&path).expect("the record"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub async fn remove_pods(&mut self, pods: Vec<String>) {
        for pod_sandbox_id in pods {
            self.rt
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id })
                .await
                .unwrap();
        }
    }
}

impl Env {
    /// Pushes `image` to the registry as `repo:v1` and pulls it into the daemon; returns its
    /// reference.
    pub async fn publish(&self, repo: &str, image: &Image) -> String {
        self.registry.push(repo, "v1", image).await;
        let reference = self.registry.reference(repo, "v1");
        ImageServiceClient::new(self.daemon.channel().await)
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: reference.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        reference
    }

    /// What ImageStatus says of the image `reference` names (which must be there).
    pub async fn image_status(&self, reference: &str) -> cri::Image {
        ImageServiceClient::new(self.daemon.channel().await)
            .image_status(cri::ImageStatusRequest {
                image: Some(ImageSpec {
                    image: reference.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .unwrap()
    }

    /// Runs `script` in a new container of `pod`; returns its stdout lines and status.
    pub async fn run(
        &mut self,
        pod: &str,
        name: &str,
        script: &str,
    ) -> (Vec<String>, cri::ContainerStatus) {
        let config = container_config(name, &self.image.clone(), script);
        self.run_config(pod, config).await
    }
}

/// What became of a container that [`Node::attempt`] tried.
#[derive(Debug)]
pub enum Attempt {
    Refused(tonic::Status),
    StartFailed(tonic::Status, cri::ContainerStatus),
    Ran(cri::ContainerStatus),
}

/// The complete stdout lines of a container's CRI log.
pub fn stdout_lines(st: &cri::ContainerStatus) -> Vec<String> {
    std::fs::read_to_string(&st.log_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(" stdout F ").map(|(_, t)| t.to_string()))
        .collect()
}
