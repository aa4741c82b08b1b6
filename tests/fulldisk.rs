//! A root on a small tmpfs that fills up: during an import, during a commit and during a
//! container's writes. Each fails with a clear error (`ResourceExhausted` for the daemon's
//! calls, ENOSPC inside the container), the daemon lives on, the store is as it was, and
//! everything works again once space is freed. (A pull that fills the disk: `images.rs`.)

mod common;

use std::io::Read as _;

use common::{
    Daemon, Options, Tmpfs,
    cri::{container_config, env_on},
    oci::{Compression, ImageBuilder, LayerBuilder, busybox_layer},
    store_listing,
};
use strata_api::cri::{RemoveContainerRequest, VersionRequest};

fn random(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(len as u64)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_imports_commits_and_writes_cleanly_and_recovers() {
    let mut daemon = Daemon::prepare();
    let disk = Tmpfs::mount(&daemon.path("small"), "40m");
    daemon.root = disk.path.join("root");
    daemon.launch(Options::default()).await;
    let mut env = env_on(daemon).await;
    let image = env.image.clone();
    let pod = env.pod("full").await;

    // A container fills the disk to its last few MiB.
    let filler = env
        .create(
            &pod,
            container_config(
                "filler",
                &image,
                "dd if=/dev/urandom of=/fill bs=1048576 count=30 2>/dev/null; sync; echo filled; \
                 dd if=/dev/zero of=/more bs=1048576 count=64 2>&1 | grep -o 'No space left on device' | head -n 1; \
                 exec sleep 1000",
            ),
        )
        .await
        .unwrap();
    env.start(&filler).await;
    let upper = env
        .daemon
        .root
        .join("containers")
        .join(&filler)
        .join("upper/fill");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&upper).map_or(0, |m| m.len()) < 30 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the filler never filled the disk"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // ... and its own writes past the end get ENOSPC.
    let log = env.status(&filler).await.log_path;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("No space left on device")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no ENOSPC in the filler: {:?}",
            std::fs::read_to_string(&log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let baseline = store_listing(&env.daemon);
    let images_before = env.daemon.ctl(["images", "-q"]).ok().to_string();

    // An import of an 8 MiB layer: the disk fills while its blob is stored.
    let big = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file("srv/big", &random(8 << 20), 0o644)
                .finish(),
            Compression::Gzip,
        )
        .build();
    let file = env.daemon.path("big.tar");
    std::fs::write(
        &file,
        common::oci::layout_archive(&big, "local/big:v1", &[]),
    )
    .unwrap();
    let out = env.daemon.ctl(["import", file.to_str().unwrap()]);
    let said = out.failed().to_string();
    assert!(said.contains("ResourceExhausted"), "import: {said}");
    assert_eq!(
        store_listing(&env.daemon),
        baseline,
        "the import left something"
    );

    // A commit of the filler's 30 MiB.
    let committed = format!("{}/full/committed:v1", env.registry.host);
    let out = env.daemon.ctl(["commit", &filler, &committed]);
    let said = out.failed().to_string();
    assert!(said.contains("ResourceExhausted"), "commit: {said}");
    assert_eq!(
        store_listing(&env.daemon),
        baseline,
        "the commit left something"
    );
    assert_eq!(env.daemon.ctl(["images", "-q"]).ok(), images_before);

    // A container created on the full disk: refused with ResourceExhausted, leaving nothing.
    let err = env
        .create(&pod, container_config("writer", &image, "echo ran"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("No space left on device"), "{err:?}");
    let dirs: Vec<_> = std::fs::read_dir(env.daemon.root.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        dirs,
        [std::ffi::OsString::from(&filler)],
        "a refused container left its directory"
    );
    let version = env
        .rt
        .version(VersionRequest::default())
        .await
        .expect("the daemon lives")
        .into_inner();
    assert_eq!(version.runtime_name, "strata");

    // The store is consistent after all of it.
    let check = env.daemon.ctl(["check"]);
    assert!(
        check.ok().contains(": 0 problems, 0 left"),
        "{}",
        check.stdout
    );

    // Space freed: the import and a commit work.
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: filler.clone(),
        })
        .await
        .unwrap();
    env.daemon.ctl(["import", file.to_str().unwrap()]).ok();
    let small = env
        .create(
            &pod,
            container_config("small", &image, "echo s > /s; exec sleep 1000"),
        )
        .await
        .unwrap();
    env.start(&small).await;
    env.daemon.ctl(["commit", &small, &committed]).ok();
    env.remove_pods(vec![pod]).await;
    env.daemon.stop().await;
}
