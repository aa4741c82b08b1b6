//! The daemon killed in the middle of an operation (its crash points: `STRATA_FAILPOINTS`,
//! debug builds only): after a restart nothing is half-built — no orphan mount, cgroup,
//! namespace pin, process, ingest file, layer, blob or record — and the operation tried
//! again succeeds. Each point is tried in turn on one node, and at the end, with every
//! pod and image removed, the node must be as empty as it started.

mod common;

use std::time::Instant;

use common::{
    Options,
    cri::{Env, container_config, env, pod_config},
    oci::{Compression, ImageBuilder, LayerBuilder, busybox_layer},
    store_listing,
};
use strata_api::cri::{
    self, ImageSpec, ListContainersRequest, ListPodSandboxRequest, PullImageRequest,
    RemoveImageRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    image_service_client::ImageServiceClient,
};

/// Restarts the daemon with `point` armed (or none).
async fn restart(env: &mut Env, point: Option<&str>) {
    env.daemon.stop().await;
    launch(env, point).await;
}

async fn launch(env: &mut Env, point: Option<&str>) {
    env.daemon
        .launch(Options {
            env: point
                .map(|p| vec![("STRATA_FAILPOINTS".to_string(), p.to_string())])
                .unwrap_or_default(),
            ..Options::default()
        })
        .await;
    env.node.rt = env.daemon.runtime().await;
}

/// After the call that reached the crash point: the daemon died of it; start it again.
async fn crashed(env: &mut Env, point: &str, call_failed: bool) {
    assert!(
        call_failed,
        "{point}: the call succeeded, so the point was never reached"
    );
    env.daemon.wait_crash().await;
    assert!(
        env.daemon.logs().contains(point),
        "{point}: not the crash point that killed the daemon:\n{}",
        env.daemon.logs()
    );
    launch(env, None).await;
}

async fn pull(env: &Env, image: &str) -> Result<(), tonic::Status> {
    ImageServiceClient::new(env.daemon.channel().await)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn remove_image(env: &Env, image: &str) {
    ImageServiceClient::new(env.daemon.channel().await)
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

fn images(env: &Env) -> Vec<String> {
    let out = env.daemon.ctl(["images", "-q"]);
    let mut ids: Vec<String> = out.ok().lines().map(str::to_string).collect();
    ids.sort();
    ids
}

async fn run_pod(env: &mut Env, name: &str) -> Result<String, tonic::Status> {
    env.rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config(name)),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn pods(env: &mut Env) -> Vec<cri::PodSandbox> {
    env.rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
}

async fn containers(env: &mut Env) -> Vec<cri::Container> {
    env.rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers
}

/// The crash points the agent has: the list in its source, so that a new one is tried too.
fn crash_points() -> Vec<&'static str> {
    let source = include_str!("../agent/src/failpoint.rs");
    let list = source
        .split_once("pub const POINTS: &[&str] = &[")
        .and_then(|(_, rest)| rest.split_once("];"))
        .expect("the POINTS list in agent/src/failpoint.rs")
        .0;
    list.split('"').skip(1).step_by(2).collect()
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What a node with no pod must not have: for the pods' and containers' points.
async fn no_pod_leftovers(env: &mut Env, point: &str, pods_expected: usize) {
    assert_eq!(pods(env).await.len(), pods_expected, "{point}: pods listed");
    let pins = env.daemon.state_dir.join("sandboxes");
    assert_eq!(
        entries(&pins).len(),
        pods_expected,
        "{point}: pins in {}",
        pins.display()
    );
    assert_eq!(
        entries(&env.daemon.root.join("sandboxes")).len(),
        pods_expected,
        "{point}: pod records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_point_leaves_nothing_half_built_and_the_retry_succeeds() {
    let mut env = env().await;
    let monitors_at_start = common::monitors_running();
    let baseline_images = images(&env);
    let baseline_store = store_listing(&env.daemon);
    let mut tried = Vec::new();

    // Pulls: killed while downloading, while unpacking, and before the image is recorded.
    let app = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file("srv/app", &vec![7u8; 3 << 20], 0o644)
                .finish(),
            Compression::Gzip,
        )
        .build();
    env.registry.push("kill/app", "v1", &app).await;
    let app_ref = env.registry.reference("kill/app", "v1");
    for point in ["pull.downloading", "unpack.entry", "pull.recording"] {
        let started = Instant::now();
        restart(&mut env, Some(point)).await;
        let failed = pull(&env, &app_ref).await.is_err();
        crashed(&mut env, point, failed).await;
        assert_eq!(
            images(&env),
            baseline_images,
            "{point}: an image was recorded"
        );
        assert_eq!(
            store_listing(&env.daemon),
            baseline_store,
            "{point}: blobs or layers of the unrecorded image are left"
        );
        pull(&env, &app_ref).await.unwrap();
        remove_image(&env, &app_ref).await;
        assert_eq!(store_listing(&env.daemon), baseline_store, "{point}");
        tried.push((point, started.elapsed()));
    }

    // Imports: killed once the archive's blobs are stored, and while a layer unpacks.
    env.daemon.ctl(["pull", &app_ref]).ok();
    let archive = env.daemon.path("app.tar");
    env.daemon
        .ctl(["export", archive.to_str().unwrap(), &app_ref])
        .ok();
    remove_image(&env, &app_ref).await;
    for point in ["import.stored", "unpack.entry"] {
        let started = Instant::now();
        restart(&mut env, Some(point)).await;
        let out = env.daemon.ctl(["import", archive.to_str().unwrap()]);
        crashed(&mut env, point, !out.status.success()).await;
        assert_eq!(images(&env), baseline_images, "import {point}");
        assert_eq!(store_listing(&env.daemon), baseline_store, "import {point}");
        env.daemon.ctl(["import", archive.to_str().unwrap()]).ok();
        remove_image(&env, &app_ref).await;
        assert_eq!(store_listing(&env.daemon), baseline_store, "import {point}");
        tried.push((point, started.elapsed()));
    }

    // Pods: killed with the namespaces pinned, and once the network is joined.
    for point in ["pod.pinned", "pod.networked"] {
        let started = Instant::now();
        restart(&mut env, Some(point)).await;
        let failed = run_pod(&mut env, "crashing").await.is_err();
        crashed(&mut env, point, failed).await;
        no_pod_leftovers(&mut env, point, 0).await;
        assert!(
            common::cgroups_below(&env.daemon.cgroup_parent).is_empty(),
            "{point}: {:?}",
            common::cgroups_below(&env.daemon.cgroup_parent)
        );
        assert!(
            common::mounts_below(&env.daemon.path("")).is_empty(),
            "{point}: {:?}",
            common::mounts_below(&env.daemon.path(""))
        );
        let pod = run_pod(&mut env, "crashing").await.unwrap();
        env.remove_pods(vec![pod]).await;
        tried.push((point, started.elapsed()));
    }

    // Containers: created, started, stopped, removed, each killed at two points.
    let image = env.image.clone();
    let pod = run_pod(&mut env, "holder").await.unwrap();
    let config = || container_config("victim", &image, "echo up; exec sleep 1000");
    let remove = |env: &mut Env, id: String| {
        let mut rt = env.rt.clone();
        async move {
            rt.remove_container(cri::RemoveContainerRequest { container_id: id })
                .await
        }
    };
    let stop = |env: &mut Env, id: String| {
        let mut rt = env.rt.clone();
        async move {
            rt.stop_container(StopContainerRequest {
                container_id: id,
                timeout: 0,
            })
            .await
        }
    };
    let pod_cgroup = common::pod_cgroup(&env.daemon, &pod);
    for point in ["container.prepared", "container.creating"] {
        let started = Instant::now();
        restart(&mut env, Some(point)).await;
        let failed = env.create(&pod, config()).await.is_err();
        crashed(&mut env, point, failed).await;
        assert!(containers(&mut env).await.is_empty(), "{point}");
        assert!(
            entries(&env.daemon.root.join("containers")).is_empty(),
            "{point}"
        );
        // The pod's cgroup holds no container's any more (only the PID holder's leaf).
        let container_cgroups: Vec<String> = common::cgroup_dirs(&pod_cgroup)
            .iter()
            .flat_map(|d| {
                entries(d)
                    .into_iter()
                    .filter(|e| e != "pidns")
                    .map(|e| d.join(e))
                    .filter(|p| p.is_dir())
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            container_cgroups.is_empty(),
            "{point}: {container_cgroups:?}"
        );
        let id = env.create(&pod, config()).await.unwrap();
        remove(&mut env, id).await.unwrap();
        tried.push((point, started.elapsed()));
    }

    for point in ["container.releasing", "container.starting"] {
        let started = Instant::now();
        let id = env.create(&pod, config()).await.unwrap();
        restart(&mut env, Some(point)).await;
        let failed = env
            .rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .is_err();
        crashed(&mut env, point, failed).await;
        // Released before the crash, its init runs and is reported so; or it still waits,
        // and the retried start releases it.
        if env.status(&id).await.state == cri::ContainerState::ContainerCreated as i32 {
            env.start(&id).await;
        }
        assert_eq!(
            env.status(&id).await.state,
            cri::ContainerState::ContainerRunning as i32,
            "{point}"
        );
        remove(&mut env, id).await.unwrap();
        tried.push((point, started.elapsed()));
    }

    for point in ["container.killed", "container.stopping"] {
        let started = Instant::now();
        let id = env.create(&pod, config()).await.unwrap();
        env.start(&id).await;
        restart(&mut env, Some(point)).await;
        let failed = stop(&mut env, id.clone()).await.is_err();
        crashed(&mut env, point, failed).await;
        stop(&mut env, id.clone()).await.unwrap();
        let st = env.status(&id).await;
        assert_eq!(
            (st.state, st.exit_code),
            (cri::ContainerState::ContainerExited as i32, 137),
            "{point}"
        );
        remove(&mut env, id).await.unwrap();
        tried.push((point, started.elapsed()));
    }

    for point in ["container.stopped-for-removal", "container.removing"] {
        let started = Instant::now();
        let id = env.create(&pod, config()).await.unwrap();
        env.start(&id).await;
        restart(&mut env, Some(point)).await;
        let failed = remove(&mut env, id.clone()).await.is_err();
        crashed(&mut env, point, failed).await;
        remove(&mut env, id).await.unwrap();
        assert!(containers(&mut env).await.is_empty(), "{point}");
        assert!(
            entries(&env.daemon.root.join("containers")).is_empty(),
            "{point}"
        );
        tried.push((point, started.elapsed()));
    }

    // Commits: killed with the layer stored, and with the image stored but not recorded.
    let id = env.create(&pod, config()).await.unwrap();
    env.start(&id).await;
    let committed = format!("{}/kill/committed:v1", env.registry.host);
    for point in ["commit.layered", "commit.stored"] {
        let started = Instant::now();
        restart(&mut env, Some(point)).await;
        let out = env.daemon.ctl(["commit", &id, &committed]);
        crashed(&mut env, point, !out.status.success()).await;
        assert_eq!(images(&env), baseline_images, "{point}");
        assert_eq!(store_listing(&env.daemon), baseline_store, "{point}");
        env.daemon.ctl(["commit", &id, &committed]).ok();
        remove_image(&env, &committed).await;
        tried.push((point, started.elapsed()));
    }

    env.remove_pods(vec![pod]).await;

    // The node as it started: no pod, container, mount, cgroup, monitor, blob or layer more.
    no_pod_leftovers(&mut env, "at the end", 0).await;
    assert!(
        common::cgroups_below(&env.daemon.cgroup_parent).is_empty(),
        "{:?}",
        common::cgroups_below(&env.daemon.cgroup_parent)
    );
    assert!(common::mounts_below(&env.daemon.path("")).is_empty());
    assert_eq!(store_listing(&env.daemon), baseline_store);
    assert_eq!(images(&env), baseline_images);
    let check = env.daemon.ctl(["check"]);
    assert!(
        check.ok().contains(": 0 problems, 0 left"),
        "{}",
        check.stdout
    );
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while common::monitors_running() > monitors_at_start && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        common::monitors_running(),
        monitors_at_start,
        "monitors left running"
    );
    let mut all: Vec<&str> = tried.iter().map(|(p, _)| *p).collect();
    all.sort();
    all.dedup();
    let mut every = crash_points();
    every.sort();
    assert_eq!(all, every, "every crash point is tried");
    for (point, took) in &tried {
        println!("crash point {point}: crash, restart, check and retry in {took:?}");
    }
    env.daemon.stop().await;
}
