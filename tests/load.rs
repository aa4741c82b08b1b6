//! Load: 8 clients each looping run pod → create → start → exec → stop → remove, beside
//! pulls (and removals) of other images and a kubelet-like poller (`ListContainers`,
//! `ListPodSandbox`, `ListContainerStats` every second). No call may fail, none may hang,
//! and afterwards the node has no mount, cgroup, monitor, pin, directory or daemon fd more
//! than before. The short form (10 rounds per client) runs with the suite;
//! `STRATA_LOAD_SECS=600` runs each client for that long instead.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    cri::{container_config, env, pod_config},
    oci::{Compression, ImageBuilder, LayerBuilder, busybox_layer},
};
use strata_api::cri::{
    CreateContainerRequest, ExecSyncRequest, ImageSpec, ListContainerStatsRequest,
    ListContainersRequest, ListPodSandboxRequest, PullImageRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

const CLIENTS: usize = 8;
const SHORT_ROUNDS: usize = 10;
/// Longest the whole short form may take: past it, something is stuck.
const DEADLINE: Duration = Duration::from_secs(600);

type Latencies = Arc<Mutex<BTreeMap<&'static str, Vec<Duration>>>>;

async fn timed<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(
    latencies: &Latencies,
    op: &'static str,
    call: F,
) -> T {
    let started = Instant::now();
    let out = call
        .await
        .unwrap_or_else(|e| panic!("{op} failed under load: {e:?}"));
    latencies
        .lock()
        .unwrap()
        .entry(op)
        .or_default()
        .push(started.elapsed());
    out
}

/// One client's round: a pod with one container, through its whole life.
async fn round(
    rt: &mut RuntimeServiceClient<Channel>,
    image: &str,
    name: &str,
    latencies: &Latencies,
) {
    let pod = timed(
        latencies,
        "RunPodSandbox",
        rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config(name)),
            runtime_handler: String::new(),
        }),
    )
    .await
    .into_inner()
    .pod_sandbox_id;
    let id = timed(
        latencies,
        "CreateContainer",
        rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("worker", image, "exec sleep 1000")),
            sandbox_config: Some(pod_config(name)),
        }),
    )
    .await
    .into_inner()
    .container_id;
    timed(
        latencies,
        "StartContainer",
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        }),
    )
    .await;
    let out = timed(
        latencies,
        "ExecSync",
        rt.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo $((6 * 7))".into()],
            timeout: 30,
        }),
    )
    .await
    .into_inner();
    assert_eq!((out.exit_code, out.stdout), (0, b"42\n".to_vec()), "{name}");
    timed(
        latencies,
        "StopPodSandbox",
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await;
    timed(
        latencies,
        "RemovePodSandbox",
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        }),
    )
    .await;
}

/// What the node holds that a leak would grow.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    daemon_fds: usize,
    mounts: usize,
    cgroups: usize,
    monitors: usize,
    pod_records: usize,
    container_records: usize,
    pins: usize,
}

/// The daemon's open fds but its TCP connections: those are the registry client's pool,
/// which keeps or drops idle connections as it likes.
fn daemon_fds(pid: i32) -> usize {
    let mut tcp = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        tcp.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_string)),
        );
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'));
            !inode.is_some_and(|i| tcp.contains(i))
        })
        .count()
}

fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn footprint(env: &common::cri::Env) -> Footprint {
    let daemon = &env.daemon;
    Footprint {
        daemon_fds: daemon_fds(daemon.pid().as_raw()),
        mounts: common::mounts_below(&daemon.path("")).len(),
        cgroups: common::cgroups_below(&daemon.cgroup_parent).len(),
        monitors: common::monitors_running(),
        pod_records: count(&daemon.root.join("sandboxes")),
        container_records: count(&daemon.root.join("containers")),
        pins: count(&daemon.state_dir.join("sandboxes")),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_pulls_and_polling_without_errors_or_leaks() {
    let env = env().await;
    let image = env.image.clone();
    // Images for the pullers: none of them used by a container.
    let mut pulled = Vec::new();
    for i in 0..3 {
        let extra = ImageBuilder::new()
            .layer(busybox_layer(), Compression::Gzip)
            .layer(
                LayerBuilder::new()
                    .file(&format!("srv/{i}"), &vec![i as u8; 2 << 20], 0o644)
                    .finish(),
                Compression::Gzip,
            )
            .build();
        let repo = format!("load/pulled{i}");
        env.registry.push(&repo, "v1", &extra).await;
        pulled.push(env.registry.reference(&repo, "v1"));
    }
    // The clients' connection is open before the first count and after the last.
    let channel = env.daemon.channel().await;
    let before = footprint(&env);
    let soak = std::env::var("STRATA_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let latencies: Latencies = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut rt = RuntimeServiceClient::new(channel.clone());
        let image = image.clone();
        let latencies = latencies.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                round(&mut rt, &image, &format!("load-{c}-{n}"), &latencies).await;
                n += 1;
                match soak {
                    Some(secs) if started.elapsed() < secs => {}
                    None if n < SHORT_ROUNDS => {}
                    _ => return n,
                }
            }
        }));
    }
    let puller = {
        let mut images = ImageServiceClient::new(channel.clone());
        let latencies = latencies.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let reference = &pulled[n % pulled.len()];
                let spec = || {
                    Some(ImageSpec {
                        image: reference.clone(),
                        ..Default::default()
                    })
                };
                timed(
                    &latencies,
                    "PullImage",
                    images.pull_image(PullImageRequest {
                        image: spec(),
                        ..Default::default()
                    }),
                )
                .await;
                timed(
                    &latencies,
                    "RemoveImage",
                    images.remove_image(RemoveImageRequest { image: spec() }),
                )
                .await;
                n += 1;
            }
        })
    };
    let poller = {
        let mut rt = RuntimeServiceClient::new(channel.clone());
        let latencies = latencies.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                timed(
                    &latencies,
                    "ListContainers",
                    rt.list_containers(ListContainersRequest { filter: None }),
                )
                .await;
                timed(
                    &latencies,
                    "ListPodSandbox",
                    rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
                )
                .await;
                timed(
                    &latencies,
                    "ListContainerStats",
                    rt.list_container_stats(ListContainerStatsRequest { filter: None }),
                )
                .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let deadline = soak.map_or(DEADLINE, |s| s + DEADLINE);
    let rounds = tokio::time::timeout(deadline, async {
        let mut rounds = 0;
        for client in clients {
            rounds += client.await.expect("a client panicked");
        }
        rounds
    })
    .await
    .unwrap_or_else(|_| panic!("the clients did not finish within {deadline:?}: stuck"));
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    puller.await.expect("the puller panicked");
    poller.await.expect("the poller panicked");

    let latencies = latencies.lock().unwrap().clone();
    let ops: usize = latencies.values().map(Vec::len).sum();
    println!(
        "load: {CLIENTS} clients, {rounds} rounds in {elapsed:.1?}: {ops} calls, {:.1} calls/s, {:.2} rounds/s",
        ops as f64 / elapsed.as_secs_f64(),
        rounds as f64 / elapsed.as_secs_f64()
    );
    for (op, mut times) in latencies {
        times.sort();
        println!(
            "load: {op:<20} n={:<5} p50 {:>8.1?} p99 {:>8.1?} max {:>8.1?}",
            times.len(),
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
    }
    assert_eq!(
        rounds,
        if soak.is_some() {
            rounds
        } else {
            CLIENTS * SHORT_ROUNDS
        }
    );

    // Nothing leaked; the monitors of removed containers may take a moment to go.
    let settle = Instant::now() + Duration::from_secs(10);
    let mut after = footprint(&env);
    while after != before && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = footprint(&env);
    }
    assert_eq!(
        after, before,
        "what the node holds before and after the load"
    );
    let list = RuntimeServiceClient::new(channel)
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(list.is_empty(), "{list:?}");
}
