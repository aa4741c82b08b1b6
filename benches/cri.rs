//! CRI benchmark, strata against containerd 1.6 + runc (Debian's packages), in one run:
//! `stratactl bench` drives each endpoint with the same image and the same host-network
//! pods, and reports RPC latencies, 50 pods started back to back, and memory; then 40 pods
//! started by one client and by 8 clients at once (`--parallel`), summed up side by side.
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench cri`.
//! Needs root, docker-registry, busybox-static, containerd and runc.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Daemon,
    oci::{Compression, ImageBuilder, busybox_layer},
    registry::Registry,
};
use strata_api::cri::{ImageSpec, PullImageRequest, image_service_client::ImageServiceClient};

async fn pull(endpoint: &str, image: &str) {
    let channel = strata_api::connect(endpoint).await.expect("connect");
    ImageServiceClient::new(channel)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image} on {endpoint}: {e}"));
}

/// Extra `stratactl bench` arguments of the main run, and of the 1- and 8-client runs.
const MAIN: &[&str] = &["--iterations", "20", "--pods", "50"];
const PARALLEL_1: &[&str] = &["--iterations", "1", "--pods", "40", "--parallel", "1"];
const PARALLEL_8: &[&str] = &["--iterations", "1", "--pods", "40", "--parallel", "8"];

fn bench(endpoint: &str, image: &str, daemon_pid: u32, helper: &str, args: &[&str]) -> String {
    let out = Command::new(common::bin("stratactl"))
        .args([
            "--endpoint",
            endpoint,
            "--timeout",
            "60s",
            "bench",
            "--image",
            image,
        ])
        .args(args)
        .args([
            "--daemon-pid",
            &daemon_pid.to_string(),
            "--helper-match",
            helper,
        ])
        .output()
        .expect("stratactl bench");
    assert!(
        out.status.success(),
        "bench on {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("bench/busybox", "v1", &image).await;
    let pause = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .cmd(&[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done",
        ])
        .label("pause")
        .build();
    registry.push("bench/pause", "3.6", &pause).await;
    let reference = registry.reference("bench/busybox", "v1");

    // strata.
    let daemon = Daemon::start().await;
    pull(&daemon.endpoint(), &reference).await;
    let (ours, pid) = (daemon.endpoint(), daemon.pid().as_raw() as u32);
    let strata = bench(&ours, &reference, pid, "__monitor", MAIN);
    println!("=== strata ===\n{strata}");
    let strata_one = bench(&ours, &reference, pid, "__monitor", PARALLEL_1);
    let strata_eight = bench(&ours, &reference, pid, "__monitor", PARALLEL_8);
    drop(daemon);

    // containerd + runc, on a root of its own.
    let dir = tempfile::Builder::new()
        .prefix("strata-bench-containerd-")
        .tempdir()
        .expect("dir");
    let socket = dir.path().join("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine's root cannot lower oom_score_adj (no CAP_SYS_RESOURCE); without this,
  # runc fails to start the sandbox when containerd asks for -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]
    endpoint = ["http://{host}"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{root}/cni"
"#,
        root = dir.path().join("root").display(),
        state = dir.path().join("state").display(),
        socket = socket.display(),
        pause = registry.reference("bench/pause", "3.6"),
        host = registry.host,
    );
    std::fs::write(dir.path().join("config.toml"), config).expect("config");
    // containerd makes its parent cgroup (`k8s.io`) and leaves it; the bench removes it
    // again unless the machine had it before.
    let had_parent = !common::cgroup_dirs("k8s.io").is_empty();
    let containerd = Command::new("containerd")
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("containerd.log")).expect("log"))
        .spawn()
        .expect("containerd (apt-get install containerd runc)");
    // Stopped however the bench ends, also on a panic.
    let mut containerd = Stopper(containerd);
    let endpoint = format!("unix://{}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    while strata_api::connect(&endpoint).await.is_err() {
        assert!(Instant::now() < deadline, "containerd did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pull(&endpoint, &reference).await;
    let pid = containerd.0.id();
    let theirs = bench(&endpoint, &reference, pid, "containerd-shim", MAIN);
    let theirs_one = bench(&endpoint, &reference, pid, "containerd-shim", PARALLEL_1);
    let theirs_eight = bench(&endpoint, &reference, pid, "containerd-shim", PARALLEL_8);
    containerd.stop();
    // containerd leaves its shims' mounts and its own state; clear them.
    for mount in common::mounts_below(dir.path()).into_iter().rev() {
        let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
    }
    if !had_parent {
        common::remove_cgroup_tree("k8s.io");
    }

    println!("=== containerd 1.6 + runc ===\n{theirs}");

    println!("=== 40 pods with one container each: one client, then 8 clients at once ===");
    for (runtime, output) in [
        ("strata", &strata_one),
        ("containerd 1.6", &theirs_one),
        ("strata", &strata_eight),
        ("containerd 1.6", &theirs_eight),
    ] {
        println!("{runtime:<16}{}", pods_line(output));
    }
}

/// The many-pods line of a `stratactl bench` output, without its "N pods with one container
/// each, " opening: "started back to back: ..." or "8 clients in parallel: ...".
fn pods_line(output: &str) -> &str {
    output
        .lines()
        .find_map(|l| l.split_once(" pods with one container each, "))
        .map_or("(no many-pods line)", |(_, rest)| rest)
}

/// A child process that is terminated when dropped.
struct Stopper(std::process::Child);

impl Stopper {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}
