//! Commit benchmark: the time to commit a container that wrote 100 MiB in 1,000 files, and
//! the disk that sharing saves for 10 images committed on one base.
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench commit`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{
    Daemon,
    oci::{Compression, ImageBuilder, busybox_layer},
    registry::Registry,
};

fn ctl(daemon: &Daemon, args: &[&str]) -> String {
    daemon.ctl(args).ok().trim().to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("bench/base", "v1", &image).await;
    let reference = registry.reference("bench/base", "v1");
    let daemon = Daemon::start().await;
    ctl(&daemon, &["pull", &reference]);
    let pod_json = daemon.path("pod.json");
    std::fs::write(&pod_json, r#"{"metadata": {"name": "bench", "namespace": "bench", "uid": "bench"}, "hostname": "bench"}"#).unwrap();
    let pod = ctl(&daemon, &["runp", pod_json.to_str().unwrap()]);

    let run = |name: &str, script: &str| -> String {
        let config = daemon.path(&format!("{name}.json"));
        let body = serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": reference},
            "command": ["/bin/sh", "-c", format!("{script}; touch /done; exec sleep 3600")],
        });
        std::fs::write(&config, body.to_string()).unwrap();
        let id = ctl(
            &daemon,
            &[
                "create",
                &pod,
                config.to_str().unwrap(),
                pod_json.to_str().unwrap(),
            ],
        );
        ctl(&daemon, &["start", &id]);
        let deadline = Instant::now() + Duration::from_secs(300);
        while !daemon
            .ctl(["exec", &id, "sh", "-c", "test -e /done"])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "{name} never finished writing");
            std::thread::sleep(Duration::from_millis(200));
        }
        id
    };

    // 100 MiB in 1,000 files of 100 KiB, random (incompressible) bytes.
    let big = run(
        "big",
        "mkdir /data; i=0; while [ $i -lt 1000 ]; do head -c 102400 /dev/urandom > /data/f$i; i=$((i+1)); done",
    );
    let started = Instant::now();
    ctl(&daemon, &["commit", &big, "bench/big:v1"]);
    let commit = started.elapsed();
    println!(
        "commit of 100 MiB in 1,000 files: {:.0} ms",
        commit.as_secs_f64() * 1e3
    );

    // Ten images on one base, each with 1 MiB of its own.
    for i in 0..10 {
        let id = run(&format!("small{i}"), "head -c 1048576 /dev/urandom > /mine");
        ctl(&daemon, &["commit", &id, &format!("bench/small:v{i}")]);
    }
    let df: serde_json::Value = serde_json::from_str(&ctl(&daemon, &["df", "-o", "json"])).unwrap();
    let number = |v: &serde_json::Value| {
        v.as_str()
            .map_or_else(|| v.as_u64().unwrap_or(0), |s| s.parse().unwrap_or(0))
    };
    let (unshared, on_disk) = (
        number(&df["imagesUnsharedBytes"]),
        number(&df["layersBytes"]),
    );
    println!(
        "{} images: layers add up to {:.1} MiB unshared, take {:.1} MiB on disk (saved {:.1} MiB)",
        df["images"],
        unshared as f64 / 1048576.0,
        on_disk as f64 / 1048576.0,
        (unshared.saturating_sub(on_disk)) as f64 / 1048576.0
    );
    ctl(&daemon, &["rmp", "-f", &pod]);
}
