//! End to end: containers that attack the walks of their own read-write layer. A commit
//! or a stats call reads the layer while the container changes it; swapping a directory
//! for a symlink must never make the daemon read the host, and a huge layer must never
//! hold up the daemon's other calls.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::cri::env;
use strata_api::cri;

/// Every path below `dir`, relative to it (a symlink is not followed).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// CommitContainer while the container swaps a directory for a symlink to /etc (which the
/// daemon, walking by path, used to follow on the host: the committed layer held the host's
/// /etc, shadow included). The swap lands while the commit reads a big file that sorts
/// after the directory, that is after the directory was listed and before it is read. Each
/// commit either is refused with a clear error or holds only what the container wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_never_follows_a_symlink_the_container_swaps_in() {
    let mut env = env().await;
    let pod = env.pod("racer").await;
    let image = env.image.clone();
    let script = "mkdir /zz && echo mine > /zz/marker; \
                  dd if=/dev/urandom of=/zzbig bs=1M count=16 2>/dev/null; \
                  exec sleep 1000";
    let id = env.start_sleeper(&pod, "racer", &image, script).await;

    let (mut committed, mut refused) = (0, 0);
    for round in 0..3 {
        let tag = format!("local/race:r{round}");
        let commit = std::process::Command::new(common::bin("stratactl"))
            .args(["--endpoint", &env.daemon.endpoint(), "commit", &id, &tag])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The commit lists / at once, then spends a second or more on zzbig.
        tokio::time::sleep(Duration::from_millis(300)).await;
        env.daemon
            .ctl([
                "exec",
                "-s",
                &id,
                "sh",
                "-c",
                "mv /zz /zz.real && ln -s /etc /zz",
            ])
            .ok();
        let out = commit.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            committed += 1;
        } else {
            refused += 1;
            assert!(
                stderr.contains("symlink") || stderr.contains("changed while"),
                "an unclear refusal: {stderr}"
            );
        }
        env.daemon
            .ctl(["exec", "-s", &id, "sh", "-c", "rm /zz && mv /zz.real /zz"])
            .ok();
    }
    // Left alone, the container's layer commits.
    env.daemon.ctl(["commit", &id, "local/race:still"]).ok();
    eprintln!("racing commits: {committed} committed, {refused} refused with a clear error");

    // No committed layer holds anything of the host's /etc.
    let mut layers_seen = 0;
    for entry in std::fs::read_dir(env.daemon.root.join("layers"))
        .unwrap()
        .flatten()
    {
        let fs = entry.path().join("fs");
        if !fs.join("zzbig").exists() {
            continue;
        }
        layers_seen += 1;
        for path in tree(&fs) {
            let top = path
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .to_string();
            if top == "zz" || top == "zz.real" {
                assert!(
                    path.components().count() == 1 || path.ends_with("marker"),
                    "host file {path:?} in the committed layer {}",
                    fs.display()
                );
            }
            assert!(
                !path.ends_with("shadow") && !path.ends_with("passwd"),
                "host file {path:?} in {}",
                fs.display()
            );
        }
    }
    assert!(layers_seen >= 1, "the final commit's layer is in the store");
    env.remove_pods(vec![pod]).await;
}

async fn stats(
    rt: &mut strata_api::cri::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
) -> (u64, u64) {
    let layer = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .writable_layer
        .unwrap();
    (
        layer.used_bytes.map_or(0, |v| v.value),
        layer.inodes_used.map_or(0, |v| v.value),
    )
}

/// ContainerStats on a layer of 200,000 files while the container swaps the directory that
/// holds them for a symlink to / : the count never follows the symlink (the daemon used to count the whole
/// host: 69–277 GB for a 400 kB layer, 25–67 s a call), it runs off the async workers
/// (Version stays fast while three stats calls wait), and calls are answered from a cache
/// at once while one walk at a time refreshes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_huge_and_racing_layer_stay_cheap_and_inside() {
    // STRATA_STATS_FILES=1000000 for the figure of a million files; STRATA_STATS_COLD=1
    // drops the machine's page and dentry caches before the calls (a cold walk).
    let files: u64 = std::env::var("STRATA_STATS_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut env = env().await;
    let pod = env.pod("hoarder").await;
    let image = env.image.clone();
    // The files are made first; the swapping starts when the test says so (/go): /a (which
    // holds the files, and a `usr` and a `var` that the host has too) keeps turning into a
    // symlink to / and back. A walk by path that met /a as a directory and reads below it
    // later counts the host's /usr and /var.
    let script = format!(
        "i=0; while [ $i -lt {dirs} ]; do mkdir -p /a/bulk/$i && cd /a/bulk/$i && seq 1000 | xargs touch; i=$((i+1)); done; \
         mkdir /a/usr /a/var; cd /; \
         (while [ ! -e /go ]; do sleep 0.1; done; \
          while :; do mv /a /a.r; ln -s / /a; sleep 0.2; rm /a; mv /a.r /a; sleep 0.2; done) & \
         exec sleep 1000",
        dirs = files / 1000
    );
    let started = Instant::now();
    let id = env
        .start_sleeper_within(&pod, "hoarder", &image, &script, Duration::from_secs(240))
        .await;
    eprintln!("{files} files made in {:?}", started.elapsed());
    if std::env::var_os("STRATA_STATS_COLD").is_some() {
        std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    }

    // Three stats calls at once, and Version meanwhile.
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut rt = env.rt.clone();
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let counted = stats(&mut rt, &id).await;
            (t.elapsed(), counted)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    env.rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    let version = t.elapsed();
    for call in calls {
        let (took, _) = call.await.unwrap();
        eprintln!("a first stats call answered in {took:?}");
        assert!(took < Duration::from_secs(3), "a stats call took {took:?}");
    }
    assert!(
        version < Duration::from_millis(500),
        "Version took {version:?} during the walks"
    );

    // The count ends by itself, inside the layer.
    let walk = Instant::now();
    let (bytes, inodes) = loop {
        let (bytes, inodes) = stats(&mut env.rt, &id).await;
        if inodes >= files {
            break (bytes, inodes);
        }
        assert!(
            walk.elapsed() < Duration::from_secs(600),
            "the count never finished: {inodes} inodes so far"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "stats: Version {version:?} during three calls; layer counted ({inodes} inodes, {bytes} bytes) within {:?}",
        walk.elapsed()
    );
    // The files, their directories, and a few more (/m, /d, ...).
    assert!(
        inodes < files + files / 1000 + 100,
        "{inodes} inodes: the walk left the layer"
    );
    assert!(bytes < 1 << 30, "{bytes} bytes: the walk left the layer");
    // The kubelet polls: calls for 12 s, through at least one recount while the container
    // keeps swapping /a for a symlink to / (which, followed, counts the host's /usr and /var
    // and takes seconds). What a recount skips may make a figure smaller, never larger.
    env.daemon
        .ctl(["exec", "-s", &id, "sh", "-c", "touch /go"])
        .ok();
    let polling = Instant::now();
    let mut calls = 0;
    while polling.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        let (bytes, inodes) = stats(&mut env.rt, &id).await;
        let took = t.elapsed();
        calls += 1;
        assert!(took < Duration::from_secs(3), "a stats call took {took:?}");
        assert!(
            bytes < 1 << 30 && inodes < files + files / 1000 + 100,
            "{bytes} bytes, {inodes} inodes: the walk left the layer"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("{calls} polls in 12 s, each inside the layer");
    // Cached: a second call is answered at once.
    let t = Instant::now();
    stats(&mut env.rt, &id).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    env.remove_pods(vec![pod]).await;
}
