//! Streaming benchmark, strata against containerd 1.6 + runc in one run, both driven by
//! the real crictl (SPDY) and by stratactl (WebSocket):
//! - exec round trip of a trivial command: `crictl exec -s` (ExecSync) against
//!   `crictl exec -i` (Exec, a URL, an upgrade and the remote-command protocol), and
//!   `stratactl exec` (WebSocket);
//! - port-forward throughput: 256 MiB from a pod's port through one forwarded connection;
//! - memory per open stream: the daemon's RSS with 50 exec sessions held open (stdin
//!   open, `sleep 120`), less its
//!   RSS before, over 50 (containerd: the containerd process; its shims are apart).
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench streaming`.
//! Needs root, docker-registry, busybox-static, containerd and runc, and crictl (installed
//! by tests/run.sh into target/cri-tools).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, containerd::Containerd, registry::Registry};
use strata_api::cri::{self, ImageSpec, runtime_service_client::RuntimeServiceClient};

/// Round trips timed per client.
const ROUND_TRIPS: usize = 30;
/// Bytes sent through the forwarded connection.
const FORWARDED: usize = 256 << 20;
/// Exec sessions held open for the memory figure.
const OPEN_STREAMS: usize = 50;

fn crictl() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cri-tools/crictl");
    assert!(path.is_file(), "{}: run tests/run.sh first", path.display());
    path
}

/// One runtime under test.
struct Target {
    name: &'static str,
    endpoint: String,
    pid: u32,
    config: PathBuf,
}

impl Target {
    fn crictl(&self) -> Command {
        let mut c = Command::new(crictl());
        c.arg("--config")
            .arg(&self.config)
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--image-endpoint", &self.endpoint])
            .args(["--timeout", "60s"]);
        c
    }

    fn stratactl(&self) -> Command {
        let mut c = Command::new(common::bin("stratactl"));
        c.args(["-r", &self.endpoint, "--timeout", "60s"]);
        c
    }
}

/// A host-network pod with a container serving `FORWARDED` zero bytes per connection on
/// `port`; the pod's and the container's ids.
async fn serving_pod(target: &Target, image: &str, port: u16) -> (String, String) {
    let mut rt = RuntimeServiceClient::new(strata_api::connect(&target.endpoint).await.unwrap());
    let mut pod_config: cri::PodSandboxConfig = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stream-bench", "namespace": "bench", "uid": "stream-bench-uid"},
    }))
    .unwrap();
    pod_config.linux = Some(common::cri::host_network());
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let script = format!(
        "while true; do dd if=/dev/zero bs=1M count={} 2>/dev/null | nc -l -p {port}; done",
        FORWARDED >> 20
    );
    let container = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "server".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/sh".into(), "-c".into(), script],
                ..Default::default()
            }),
            sandbox_config: Some(pod_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .unwrap();
    (pod, container)
}

/// Median and 90th percentile of `runs` timed runs of `command`, in milliseconds.
fn timed(runs: usize, mut command: impl FnMut() -> Command) -> (f64, f64) {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let out = command()
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            // The command ran: its output came back.
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
                "{:?} {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[runs / 2], times[runs * 9 / 10])
}

/// MiB/s of `FORWARDED` bytes read through a forwarder listening on `local`.
fn throughput(local: u16) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let start = Instant::now();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0usize;
            while total < FORWARDED {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            if total == FORWARDED {
                return total as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing came through the forward"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first free port of the node.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The node's processes that are an open session's command: `sleep 120` (or the `sh -c`
/// that runs it, where the shell does not exec it).
fn session_commands() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.as_slice() == b"sleep\x00120\x00" || c.as_slice() == b"sh\0-c\0sleep 120\0")
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Every figure of one runtime, as lines.
async fn measure(target: &Target, image: &str) -> Vec<String> {
    let port = free_port();
    let (pod, id) = serving_pod(target, image, port).await;
    let mut lines = Vec::new();
    // Warm both paths once.
    for sync in ["-s", "-i"] {
        let _ = target
            .crictl()
            .args(["exec", sync, &id, "sh", "-c", ":"])
            .stdin(Stdio::null())
            .output();
    }
    let (p50, p90) = timed(ROUND_TRIPS, || {
        let mut c = target.crictl();
        c.args(["exec", "-s", &id, "sh", "-c", "echo ok"]);
        c
    });
    eprintln!("{}: measuring", target.name);
    lines.push(format!(
        "exec round trip, crictl exec -s (ExecSync):      p50 {p50:6.1} ms  p90 {p90:6.1} ms"
    ));
    let (p50, p90) = timed(ROUND_TRIPS, || {
        let mut c = target.crictl();
        c.args(["exec", "-i", &id, "sh", "-c", "echo ok"]);
        c
    });
    lines.push(format!(
        "exec round trip, crictl exec -i (Exec, SPDY):    p50 {p50:6.1} ms  p90 {p90:6.1} ms"
    ));
    let (p50, p90) = timed(ROUND_TRIPS, || {
        let mut c = target.stratactl();
        c.args(["exec", "-i", &id, "sh", "-c", "echo ok"]);
        c
    });
    lines.push(format!(
        "exec round trip, stratactl exec -i (WebSocket):  p50 {p50:6.1} ms  p90 {p90:6.1} ms"
    ));

    // Port-forward: one connection, 256 MiB.
    for (client, mut command) in [
        ("crictl port-forward (SPDY)", target.crictl()),
        ("stratactl port-forward (WebSocket)", target.stratactl()),
    ] {
        let local = free_port();
        let forwarder = Killed(
            command
                .args(["port-forward", &pod, &format!("{local}:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let rate = throughput(local);
        drop(forwarder);
        lines.push(format!("port-forward, {client:<36} {rate:7.1} MiB/s"));
        // The server's next connection is up again before the next client.
        std::thread::sleep(Duration::from_millis(500));
    }

    // Memory per open stream: sessions waiting on their stdin.
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(target.pid);
    let mut sessions = Vec::new();
    for _ in 0..OPEN_STREAMS {
        let child = target
            .crictl()
            .args(["exec", "-i", &id, "sh", "-c", "sleep 120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        sessions.push(Killed(child));
    }
    // Every session is up once its command runs (seen from the node: the container's
    // processes are the node's too); the figure says how many were.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut running = session_commands();
    while running < OPEN_STREAMS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        running = session_commands();
    }
    let alive = sessions
        .iter_mut()
        .filter_map(|s| s.0.try_wait().ok())
        .filter(Option::is_none)
        .count();
    // What a session that ended said.
    if let Some(ended) = sessions
        .iter_mut()
        .find_map(|s| matches!(s.0.try_wait(), Ok(Some(_))).then_some(s))
    {
        let mut said = String::new();
        if let Some(mut stderr) = ended.0.stderr.take() {
            let _ = stderr.read_to_string(&mut said);
        }
        let status = ended.0.try_wait();
        eprintln!(
            "{}: a session ended ({status:?}): {}",
            target.name,
            said.trim()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(target.pid);
    drop(sessions);
    lines.push(format!(
        "memory per open exec stream in the daemon: {:.0} KiB ({} KiB before, {} KiB with {OPEN_STREAMS} clients connected, {alive} still connected, {running} commands running)",
        after.saturating_sub(before) as f64 / OPEN_STREAMS as f64,
        before,
        after
    ));

    let mut rt = RuntimeServiceClient::new(strata_api::connect(&target.endpoint).await.unwrap());
    let _ = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
    lines
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    let reference = registry.push_busybox("bench/busybox").await;
    let config = tempfile::NamedTempFile::new().unwrap();

    let daemon = Daemon::start().await;
    common::pull_on(&daemon.endpoint(), &reference).await;
    let strata = Target {
        name: "strata",
        endpoint: daemon.endpoint(),
        pid: daemon.pid().as_raw() as u32,
        config: config.path().to_path_buf(),
    };
    let ours = measure(&strata, &reference).await;
    drop(daemon);

    let containerd = Containerd::start(&registry).await;
    common::pull_on(&containerd.endpoint, &reference).await;
    let theirs_target = Target {
        name: "containerd 1.6 + runc",
        endpoint: containerd.endpoint.clone(),
        pid: containerd.pid(),
        config: config.path().to_path_buf(),
    };
    let theirs = measure(&theirs_target, &reference).await;
    drop(containerd);

    for (target, lines) in [(&strata, ours), (&theirs_target, theirs)] {
        println!("=== {} ===", target.name);
        for line in lines {
            println!("{line}");
        }
    }
}
