//! CRI benchmark, strata against containerd 1.6 + runc (Debian's packages), in one run:
//! `stratactl bench` drives each endpoint with the same image and the same host-network
//! pods, and reports RPC latencies, 50 pods started back to back, and memory; then 40 pods
//! started by one client and by 8 clients at once (`--parallel`), summed up side by side.
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench cri`.
//! Needs root, docker-registry, busybox-static, containerd and runc.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{Daemon, containerd::Containerd, registry::Registry};
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
    let reference = registry.push_busybox("bench/busybox").await;

    // strata.
    let daemon = Daemon::start().await;
    common::pull_on(&daemon.endpoint(), &reference).await;
    let (ours, pid) = (daemon.endpoint(), daemon.pid().as_raw() as u32);
    let strata = bench(&ours, &reference, pid, "__monitor", MAIN);
    println!("=== strata ===\n{strata}");
    let strata_one = bench(&ours, &reference, pid, "__monitor", PARALLEL_1);
    let strata_eight = bench(&ours, &reference, pid, "__monitor", PARALLEL_8);
    drop(daemon);

    // containerd + runc, on a root of its own.
    let containerd = Containerd::start(&registry).await;
    let endpoint = containerd.endpoint.clone();
    common::pull_on(&endpoint, &reference).await;
    let pid = containerd.pid();
    let theirs = bench(&endpoint, &reference, pid, "containerd-shim", MAIN);
    let theirs_one = bench(&endpoint, &reference, pid, "containerd-shim", PARALLEL_1);
    let theirs_eight = bench(&endpoint, &reference, pid, "containerd-shim", PARALLEL_8);
    drop(containerd);

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
