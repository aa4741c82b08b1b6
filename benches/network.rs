//! Pod network benchmark, strata against containerd 1.6 + runc (Debian's packages), in one
//! run and with the same conflist (bridge + host-local + portmap + loopback, each daemon on
//! a bridge and subnet of its own): RunPodSandbox of a pod with a CNI network and of a
//! host-network pod, one at a time (median, p99), then 20 pods with networks at once.
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench network`.
//! Needs root, docker-registry, busybox-static, containerd, runc, containernetworking-plugins.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{Daemon, Options, containerd::Containerd, registry::Registry};
use strata_api::cri::{
    self, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

const ROUNDS: usize = 30;
const CROWD: usize = 20;

fn conflist(dir: &Path, name: &str, bridge: &str, subnet: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let list = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": dir.join("leases"),
                  "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        {"type": "loopback"}]});
    std::fs::write(dir.join("10-bench.conflist"), list.to_string()).unwrap();
}

fn pod(name: &str, host_network: bool) -> cri::PodSandboxConfig {
    let mut config: cri::PodSandboxConfig = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "bench", "uid": format!("uid-{name}")},
        "hostname": "bench",
    }))
    .unwrap();
    if host_network {
        // A host-network pod has the node's hostname (runc refuses one of its own).
        config.hostname.clear();
        config.linux = Some(common::cri::host_network());
    }
    config
}

async fn run(rt: &mut RuntimeServiceClient<Channel>, config: cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

async fn remove(rt: &mut RuntimeServiceClient<Channel>, id: String) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .expect("RemovePodSandbox");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let p = |q: f64| ms(times[((times.len() - 1) as f64 * q).round() as usize]);
    format!("median {:6.1} ms  p99 {:6.1} ms", p(0.5), p(0.99))
}

async fn measure(label: &str, endpoint: &str) -> Vec<String> {
    let mut rt = RuntimeServiceClient::new(strata_api::connect(endpoint).await.expect("connect"));
    // Not counted: containerd pulls its pause image on the first pod.
    let warm = run(&mut rt, pod("warm-up", false)).await;
    remove(&mut rt, warm).await;
    let mut lines = Vec::new();
    for (kind, host) in [("CNI bridge", false), ("host network", true)] {
        let mut times = Vec::new();
        for i in 0..ROUNDS {
            let started = Instant::now();
            let id = run(&mut rt, pod(&format!("{}-{i}", host as u8), host)).await;
            times.push(started.elapsed());
            remove(&mut rt, id).await;
        }
        lines.push(format!(
            "{label:10} RunPodSandbox {kind:13} {}",
            summary(times)
        ));
    }
    let started = Instant::now();
    let runs = (0..CROWD).map(|i| {
        let mut rt = rt.clone();
        async move { run(&mut rt, pod(&format!("crowd-{i}"), false)).await }
    });
    let ids = futures_util::future::join_all(runs).await;
    let took = started.elapsed();
    lines.push(format!(
        "{label:10} {CROWD} pods with CNI at once: {:6.0} ms, {:5.1} pods/s",
        ms(took),
        CROWD as f64 / took.as_secs_f64()
    ));
    for id in ids {
        remove(&mut rt, id).await;
    }
    lines
}

/// The benchmark's bridges, removed at the end, also after a failure.
struct Bridges;

impl Drop for Bridges {
    fn drop(&mut self) {
        for bridge in ["stbench0", "stbench1"] {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", bridge])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    let work = tempfile::Builder::new()
        .prefix("strata-bench-net-")
        .tempdir()
        .unwrap();
    let bridges = Bridges;
    let portmap = common::Portmap::hold();
    let pid = std::process::id() % 200;
    let strata_cni = work.path().join("strata");
    let containerd_cni = work.path().join("containerd");
    conflist(
        &strata_cni,
        "bench-strata",
        "stbench0",
        &format!("10.{}.0.0/16", 30 + pid % 20),
    );
    conflist(
        &containerd_cni,
        "bench-containerd",
        "stbench1",
        &format!("10.{}.0.0/16", 60 + pid % 20),
    );

    let mut daemon = Daemon::start_with(Options {
        config: format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [\"/usr/lib/cni\"]\n",
            strata_cni.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    let mut report = measure("strata", &daemon.endpoint()).await;
    daemon.stop().await;

    let mut containerd = Containerd::start_with_cni(&registry, Some(&containerd_cni)).await;
    report.extend(measure("containerd", &containerd.endpoint).await);
    containerd.stop();
    drop(bridges);
    drop(portmap);
    println!("{}", report.join("\n"));
}
