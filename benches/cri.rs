//! CRI benchmark, strata against containerd 1.6 + runc (Debian's packages), in one run:
//! `stratactl bench` drives each endpoint with the same image and the same host-network
//! pods, and reports RPC latencies, 50 pods started back to back, and memory.
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

fn bench(endpoint: &str, image: &str, daemon_pid: u32, helper: &str) -> String {
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
        .args(["--iterations", "20", "--pods", "50"])
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
    let strata = bench(
        &daemon.endpoint(),
        &reference,
        daemon.pid().as_raw() as u32,
        "__monitor",
    );
    drop(daemon);
    println!("=== strata ===\n{strata}");

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
    let theirs = bench(&endpoint, &reference, containerd.0.id(), "containerd-shim");
    containerd.stop();
    // containerd leaves its shims' mounts and its own state; clear them.
    for mount in common::mounts_below(dir.path()).into_iter().rev() {
        let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
    }

    println!("=== containerd 1.6 + runc ===\n{theirs}");
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
