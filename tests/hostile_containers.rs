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

/// CommitContainer while the container keeps swapping a directory for a symlink to /etc
/// (which the daemon, walking by path, used to follow on the host: the committed layer held
/// the host's /etc, shadow included). Each commit either fails with a clear error or holds
/// only what the container wrote; once the container stops swapping, the commit succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_never_follows_a_symlink_the_container_swaps_in() {
    let mut env = env().await;
    let pod = env.pod("racer").await;
    let image = env.image.clone();
    // `zzbig` sorts after `zz`: it is read between the listing of `zz` and its reading, so
    // the swap has the whole time of that read to land.
    let script = "mkdir /zz && echo mine > /zz/marker; \
                  dd if=/dev/urandom of=/zzbig bs=1M count=12 2>/dev/null; \
                  (while [ ! -e /stop ]; do mv /zz /zz.real; ln -s /etc /zz; rm /zz; mv /zz.real /zz; done; touch /stopped) & \
                  exec sleep 1000";
    let id = env.start_sleeper(&pod, "racer", &image, script).await;

    let (mut committed, mut refused) = (0, 0);
    for round in 0..6 {
        let tag = format!("local/race:r{round}");
        let out = env.daemon.ctl(["commit", &id, &tag]);
        if out.status.success() {
            committed += 1;
        } else {
            refused += 1;
            assert!(
                out.stderr.contains("symlink")
                    || out.stderr.contains("changed while")
                    || out.stderr.contains("No such file"),
                "an unclear refusal: {}",
                out.stderr
            );
        }
    }
    // The container stops swapping; a last commit must then succeed.
    env.daemon
        .ctl([
            "exec",
            "-s",
            &id,
            "sh",
            "-c",
            "touch /stop; while [ ! -e /stopped ]; do sleep 1; done",
        ])
        .ok();
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

/// ContainerStats on a layer of 200,000 files while the container swaps a directory for a
/// symlink to / : the count never follows the symlink (the daemon used to count the whole
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
    let script = format!(
        "mkdir /d; (while :; do mv /d /d.r; ln -s / /d; rm /d; mv /d.r /d; done) & \
         i=0; while [ $i -lt {dirs} ]; do mkdir -p /m/$i && cd /m/$i && seq 1000 | xargs touch; i=$((i+1)); done; \
         cd /; exec sleep 1000",
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
