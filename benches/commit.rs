//! Layers benchmark: the time to commit a container that wrote 100 MiB in 1,000 files; the
//! push of that image to the local registry (MiB/s) and the bytes a second push of a small
//! commit on top sends; export and import of the image; and the disk that sharing saves for
//! 10 images committed on one base.
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench commit`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Daemon, registry::Registry};

fn ctl(daemon: &Daemon, args: &[&str]) -> String {
    daemon.ctl(args).ok().trim().to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    let reference = registry.push_busybox("bench/base").await;
    let daemon = Daemon::start().await;
    ctl(&daemon, &["pull", &reference]);
    let pod_json = daemon.path("pod.json");
    std::fs::write(&pod_json, r#"{"metadata": {"name": "bench", "namespace": "bench", "uid": "bench"}, "hostname": "bench"}"#).unwrap();
    let pod = ctl(&daemon, &["runp", pod_json.to_str().unwrap()]);

    let run = |name: &str, image: &str, script: &str| -> String {
        let config = daemon.path(&format!("{name}.json"));
        let body = serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": image},
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
            .ctl(["exec", "-s", &id, "sh", "-c", "test -e /done"])
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
        &reference,
        "mkdir /data; i=0; while [ $i -lt 1000 ]; do head -c 102400 /dev/urandom > /data/f$i; i=$((i+1)); done",
    );
    let started = Instant::now();
    let big_image = registry.reference("bench/big", "v1");
    ctl(&daemon, &["commit", &big, &big_image]);
    let commit = started.elapsed();
    println!(
        "commit of 100 MiB in 1,000 files: {:.0} ms",
        commit.as_secs_f64() * 1e3
    );
    let number = |v: &serde_json::Value| {
        v.as_str()
            .map_or_else(|| v.as_u64().unwrap_or(0), |s| s.parse().unwrap_or(0))
    };
    let mib = |bytes: u64| bytes as f64 / 1048576.0;

    // Push: the base layer is mounted from bench/base; the 100 MiB layer goes up.
    let started = Instant::now();
    let done: serde_json::Value =
        serde_json::from_str(&ctl(&daemon, &["-o", "json", "push", &big_image])).unwrap();
    let push = started.elapsed().as_secs_f64();
    let sent = number(&done["uploadedBytes"]);
    println!(
        "push: {:.1} MiB in {:.0} ms = {:.1} MiB/s ({} blobs uploaded, {} mounted)",
        mib(sent),
        push * 1e3,
        mib(sent) / push,
        done["blobsUploaded"],
        done["blobsMounted"]
    );

    // A second commit on top (1 MiB of changes), pushed: only its layer, config, manifest.
    let more = run(
        "more",
        &big_image,
        "head -c 1048576 /dev/urandom > /data/more",
    );
    let more_image = registry.reference("bench/big", "v2");
    ctl(&daemon, &["commit", &more, &more_image]);
    let started = Instant::now();
    let done: serde_json::Value =
        serde_json::from_str(&ctl(&daemon, &["-o", "json", "push", &more_image])).unwrap();
    println!(
        "second push: {} bytes ({:.2} MiB) sent in {:.0} ms; {} blobs uploaded, {} already there",
        number(&done["uploadedBytes"]),
        mib(number(&done["uploadedBytes"])),
        started.elapsed().as_secs_f64() * 1e3,
        done["blobsUploaded"],
        done["blobsSkipped"]
    );

    // Export to a file and import on a fresh root.
    let archive = daemon.path("big.tar");
    let started = Instant::now();
    ctl(&daemon, &["export", archive.to_str().unwrap(), &big_image]);
    let export = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&archive).unwrap().len();
    let fresh = Daemon::start().await;
    let started = Instant::now();
    ctl(&fresh, &["import", archive.to_str().unwrap()]);
    let import = started.elapsed().as_secs_f64();
    println!(
        "export: {:.1} MiB archive in {:.0} ms ({:.1} MiB/s); import on a fresh root: {:.0} ms ({:.1} MiB/s)",
        mib(size),
        export * 1e3,
        mib(size) / export,
        import * 1e3,
        mib(size) / import
    );
    drop(fresh);

    // Ten images on one base, each with 1 MiB of its own: what they add, as if unshared and
    // on disk; then the whole store.
    let usage = || -> (u64, u64, serde_json::Value) {
        let df: serde_json::Value =
            serde_json::from_str(&ctl(&daemon, &["df", "-o", "json"])).unwrap();
        (
            number(&df["imagesUnsharedBytes"]),
            number(&df["layersBytes"]),
            df["images"].clone(),
        )
    };
    let (unshared_before, disk_before, _) = usage();
    for i in 0..10 {
        let id = run(
            &format!("small{i}"),
            &reference,
            "head -c 1048576 /dev/urandom > /mine",
        );
        ctl(&daemon, &["commit", &id, &format!("bench/small:v{i}")]);
    }
    let (unshared, on_disk, images) = usage();
    let (added_unshared, added_disk) = (unshared - unshared_before, on_disk - disk_before);
    println!(
        "10 images committed on one base: {:.1} MiB as if unshared, {:.1} MiB on disk (saved {:.1} MiB)",
        mib(added_unshared),
        mib(added_disk),
        mib(added_unshared.saturating_sub(added_disk))
    );
    println!(
        "whole store, {images} images: layers add up to {:.1} MiB unshared, take {:.1} MiB on disk (saved {:.1} MiB)",
        mib(unshared),
        mib(on_disk),
        mib(unshared.saturating_sub(on_disk))
    );
    ctl(&daemon, &["rmp", "-f", &pod]);
}
