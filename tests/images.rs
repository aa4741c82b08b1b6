//! End to end: pulling images from a real registry (Debian's docker-registry on loopback)
//! into the layer store, through CRI's ImageService, strata's progress stream and
//! `stratactl`; the layer store's contents checked file by file.

mod common;

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    Daemon, Options, image_spec as spec,
    oci::{self, Compression, Image, ImageBuilder, LayerBuilder, busybox_layer},
    proxy::{self, Fault, FaultyProxy},
    registry::{Auth, Registry},
    store_listing,
    token::TokenIssuer,
};
use strata_api::{
    cri::{
        AuthConfig, ImageFsInfoRequest, ImageStatusRequest, ListImagesRequest, PullImageRequest,
        RemoveImageRequest, StreamImagesRequest, image_service_client::ImageServiceClient,
    },
    ext::{self, images_client::ImagesClient, pull_image_progress_response::Event},
};
use tonic::{Code, transport::Channel};

async fn images(daemon: &Daemon) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(daemon.channel().await)
}

async fn pull(daemon: &Daemon, image: &str) -> Result<String, tonic::Status> {
    pull_with(daemon, image, None).await
}

async fn pull_with(
    daemon: &Daemon,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    images(daemon)
        .await
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn layer_fs(daemon: &Daemon, diff_id: &str) -> PathBuf {
    daemon.root.join("layers").join(hex(diff_id)).join("fs")
}

/// A layer holding one file.
fn file_layer(path: &str, content: &[u8]) -> Vec<u8> {
    LayerBuilder::new().file(path, content, 0o644).finish()
}

/// `base` plus a one-file layer named `top`: images that share all but one layer.
fn on_base(base: &[u8], top: &str) -> Image {
    ImageBuilder::new()
        .layer(base.to_vec(), Compression::Gzip)
        .layer(file_layer(top, top.as_bytes()), Compression::Gzip)
        .build()
}

/// Bytes gzip cannot shrink, so downloads take a moment and fill disks.
fn noise(len: u32, shift: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> shift) as u8)
        .collect()
}

async fn list(daemon: &Daemon) -> Vec<strata_api::cri::Image> {
    images(daemon)
        .await
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_unpacks_every_kind_of_entry_exactly() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;

    let busybox = std::fs::read("/bin/busybox").unwrap();
    let base = {
        let mut l = LayerBuilder::new();
        l.dir("data", 0o755)
            .file_owned("data/setuid", b"#!/bin/sh\n", 0o4755, 1000, 1000)
            .file("data/keep", b"keep me", 0o640)
            .file("data/gone", b"deleted above", 0o644)
            .hardlink("data/link", "data/keep")
            .symlink("data/abs", "/etc/passwd")
            .fifo("data/fifo")
            .char_device("data/null", 1, 3)
            .file_with_xattrs(
                "data/attr",
                b"x",
                &[("user.strata", b"yes"), ("trusted.overlay.opaque", b"y")],
            )
            .dir("opaque", 0o755)
            .file("opaque/old", b"old", 0o644);
        l.finish()
    };
    let top = LayerBuilder::new()
        .whiteout("data/gone")
        .opaque("opaque")
        .file("opaque/new", b"new", 0o600)
        .finish();
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(base, Compression::Gzip)
        .layer(top, Compression::Gzip)
        .user("1000:1000")
        .build();
    registry.push("test/multi", "v1", &image).await;
    let reference = registry.reference("test/multi", "v1");

    let out = daemon.ctl(["pull", &reference]);
    assert_eq!(
        out.ok().trim(),
        format!("Image is up to date for {}", image.id())
    );

    // Layer 0: busybox, byte for byte.
    let l0 = layer_fs(&daemon, &image.layers[0].diff_id);
    assert_eq!(std::fs::read(l0.join("bin/busybox")).unwrap(), busybox);
    assert_eq!(
        std::fs::read_link(l0.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::metadata(l0.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );

    // Layer 1: modes, owners, times, links, devices, xattrs.
    let l1 = layer_fs(&daemon, &image.layers[1].diff_id);
    let setuid = std::fs::metadata(l1.join("data/setuid")).unwrap();
    assert_eq!(
        setuid.permissions().mode() & 0o7777,
        0o4755,
        "setuid bit kept"
    );
    assert_eq!((setuid.uid(), setuid.gid()), (1000, 1000));
    assert_eq!(setuid.mtime(), oci::MTIME as i64);
    assert_eq!(
        std::fs::metadata(l1.join("data")).unwrap().mtime(),
        oci::MTIME as i64,
        "directory mtime"
    );
    let keep = std::fs::metadata(l1.join("data/keep")).unwrap();
    assert_eq!(keep.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        keep.ino(),
        std::fs::metadata(l1.join("data/link")).unwrap().ino(),
        "hardlink"
    );
    assert_eq!(keep.nlink(), 2);
    assert_eq!(
        std::fs::read_link(l1.join("data/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(
        std::fs::symlink_metadata(l1.join("data/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = std::fs::metadata(l1.join("data/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(
        getxattr(&l1.join("data/attr"), "user.strata").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        getxattr(&l1.join("data/attr"), "trusted.overlay.opaque"),
        None,
        "overlay xattrs from an image are dropped"
    );
    assert_eq!(std::fs::read(l1.join("opaque/old")).unwrap(), b"old");

    // Layer 2: whiteouts in overlay form.
    let l2 = layer_fs(&daemon, &image.layers[2].diff_id);
    let wh = std::fs::symlink_metadata(l2.join("data/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is a character device"
    );
    assert_eq!(wh.rdev(), 0);
    assert!(!l2.join("data/.wh.gone").exists());
    assert_eq!(
        getxattr(&l2.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("opaque/.wh..wh..opq").exists());
    assert_eq!(
        std::fs::metadata(l2.join("opaque/new"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // CRI's view.
    let listed = images(&daemon)
        .await
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.images.len(), 1);
    let mut streamed = images(&daemon)
        .await
        .stream_images(StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = streamed.message().await.unwrap().unwrap();
    assert_eq!(
        first.images, listed.images,
        "StreamImages answers like ListImages"
    );
    assert!(streamed.message().await.unwrap().is_none());
    let listed = &listed.images[0];
    assert_eq!(listed.id, image.id());
    assert_eq!(listed.repo_tags, vec![reference.clone()]);
    assert_eq!(
        listed.repo_digests,
        vec![format!(
            "{}/test/multi@{}",
            registry.host, image.manifest.digest
        )]
    );
    let expected_size =
        image.manifest.bytes.len() + image.blobs().map(|b| b.bytes.len()).sum::<usize>();
    assert_eq!(listed.size, expected_size as u64);
    assert_eq!(listed.uid.as_ref().map(|u| u.value), Some(1000));

    let status = images(&daemon)
        .await
        .image_status(ImageStatusRequest {
            image: spec(&reference),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.image.unwrap().id, image.id());
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["layers"][1]["diffID"], image.layers[1].diff_id);
    assert_eq!(info["imageSpec"]["config"]["User"], "1000:1000");

    // stratactl's views.
    let table = daemon.ctl(["images"]);
    let row = table.ok().lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.starts_with(&format!("{}/test/multi", registry.host)) && row.contains(" v1 "),
        "{row}"
    );
    assert!(row.contains(&hex(image.id())[..13]), "{row}");
    assert_eq!(daemon.ctl(["images", "-q"]).ok().trim(), image.id());
    let inspected: serde_json::Value =
        serde_json::from_str(daemon.ctl(["inspecti", &reference]).ok()).unwrap();
    assert_eq!(inspected["status"]["id"], image.id());
    assert_eq!(inspected["info"]["manifestDigest"], image.manifest.digest);
    let json: serde_json::Value =
        serde_json::from_str(daemon.ctl(["images", "-o", "json"]).ok()).unwrap();
    assert_eq!(json["images"][0]["repoTags"][0], reference);
    store_listing(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_by_short_name_digest_and_tag_at_digest() {
    let registry = Registry::start().await;
    // The local registry mirrors Docker Hub, so short names resolve through it; a dead
    // mirror listed first is skipped.
    let daemon = Daemon::start_with(Options {
        config: format!(
            "[registries.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:1\", \"http://{}\"]\n",
            registry.host
        ),
        ..Default::default()
    })
    .await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("library/busybox", "latest", &image).await;

    assert_eq!(pull(&daemon, "busybox").await.unwrap(), image.id());
    let by_digest = format!(
        "{}/library/busybox@{}",
        registry.host, image.manifest.digest
    );
    assert_eq!(pull(&daemon, &by_digest).await.unwrap(), image.id());
    let tag_at_digest = format!(
        "{}/library/busybox:latest@{}",
        registry.host, image.manifest.digest
    );
    assert_eq!(pull(&daemon, &tag_at_digest).await.unwrap(), image.id());

    let listed = list(&daemon).await;
    assert_eq!(listed.len(), 1, "one image under several names: {listed:?}");
    let tags = &listed[0].repo_tags;
    assert!(
        tags.contains(&"docker.io/library/busybox:latest".to_string()),
        "{tags:?}"
    );
    assert!(
        tags.contains(&format!("{}/library/busybox:latest", registry.host)),
        "{tags:?}"
    );
    for name in [
        "busybox",
        "docker.io/library/busybox:latest",
        &by_digest,
        image.id(),
        &hex(image.id())[..12],
    ] {
        let found = images(&daemon)
            .await
            .image_status(ImageStatusRequest {
                image: spec(name),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image;
        assert_eq!(
            found.map(|i| i.id).as_deref(),
            Some(image.id()),
            "lookup by {name}"
        );
    }

    // A digest the registry does not have, and a malformed reference.
    let wrong = format!(
        "{}/library/busybox@sha256:{}",
        registry.host,
        "0".repeat(64)
    );
    assert_eq!(
        pull(&daemon, &wrong).await.unwrap_err().code(),
        Code::NotFound
    );
    let bad = pull(&daemon, "UPPER/Case").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let line = daemon.ctl(["pull", "UPPER/Case"]).failed().to_string();
    assert!(line.contains("invalid image reference"), "{line}");
}

fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_selects_the_node_platform() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let other_arch = if node_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let ours = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .architecture(node_arch())
        .label("ours")
        .build();
    let theirs = ImageBuilder::new()
        .layer(file_layer("theirs", b"x"), Compression::Gzip)
        .architecture(other_arch)
        .label("theirs")
        .build();
    for image in [&ours, &theirs] {
        for blob in image.blobs() {
            registry.push_blob("multi/arch", blob).await;
        }
        registry
            .push_manifest(
                "multi/arch",
                &image.manifest.digest,
                oci::OCI_MANIFEST,
                &image.manifest.bytes,
            )
            .await;
    }
    let index = oci::index(&[(&theirs, other_arch), (&ours, node_arch())]);
    registry
        .push_manifest("multi/arch", "v1", oci::OCI_INDEX, &index.bytes)
        .await;

    let id = pull(&daemon, &registry.reference("multi/arch", "v1"))
        .await
        .unwrap();
    assert_eq!(id, ours.id());
    let listed = list(&daemon).await;
    assert_eq!(
        listed[0].repo_digests,
        vec![format!("{}/multi/arch@{}", registry.host, index.digest)]
    );
    // Only our platform's layers were fetched.
    assert!(layer_fs(&daemon, &ours.layers[0].diff_id).is_dir());
    assert!(!layer_fs(&daemon, &theirs.layers[0].diff_id).exists());

    let only_theirs = oci::index(&[(&theirs, "s390x")]);
    registry
        .push_manifest("multi/arch", "s390x", oci::OCI_INDEX, &only_theirs.bytes)
        .await;
    let err = pull(&daemon, &registry.reference("multi/arch", "s390x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("linux/s390x") && err.message().contains(node_arch()),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_uncompressed_and_docker_schema2_layers() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let mixed = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Zstd)
        .layer(file_layer("plain/file", b"uncompressed"), Compression::None)
        .layer(file_layer("gz/file", b"gzip"), Compression::Gzip)
        .build();
    registry.push("mixed/layers", "v1", &mixed).await;
    assert_eq!(
        pull(&daemon, &registry.reference("mixed/layers", "v1"))
            .await
            .unwrap(),
        mixed.id()
    );
    assert_eq!(
        std::fs::read(layer_fs(&daemon, &mixed.layers[1].diff_id).join("plain/file")).unwrap(),
        b"uncompressed"
    );
    assert!(
        layer_fs(&daemon, &mixed.layers[0].diff_id)
            .join("bin/busybox")
            .is_file()
    );

    let docker = ImageBuilder::new()
        .layer(file_layer("docker/file", b"schema2"), Compression::Gzip)
        .docker()
        .build();
    registry.push("docker/schema2", "v1", &docker).await;
    assert_eq!(
        pull(&daemon, &registry.reference("docker/schema2", "v1"))
            .await
            .unwrap(),
        docker.id()
    );
    assert_eq!(
        std::fs::read(layer_fs(&daemon, &docker.layers[0].diff_id).join("docker/file")).unwrap(),
        b"schema2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_with_120_layers() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let mut builder = ImageBuilder::new().layer(busybox_layer(), Compression::Gzip);
    for i in 1..120 {
        builder = builder.layer(
            LayerBuilder::new()
                .file(&format!("layer/{i:03}"), format!("{i}").as_bytes(), 0o644)
                .finish(),
            Compression::Gzip,
        );
    }
    let image = builder.build();
    assert_eq!(image.layers.len(), 120);
    registry.push("many/layers", "v1", &image).await;
    assert_eq!(
        pull(&daemon, &registry.reference("many/layers", "v1"))
            .await
            .unwrap(),
        image.id()
    );
    let (layers, _) = store_listing(&daemon);
    assert_eq!(layers.len(), 120);
    for (i, layer) in image.layers.iter().enumerate().skip(1) {
        let file = layer_fs(&daemon, &layer.diff_id).join(format!("layer/{i:03}"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), i.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry() {
    let registry = Registry::start_with(Auth::Basic {
        user: "alice".into(),
        password: "s3cret".into(),
    })
    .await;
    let daemon = Daemon::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("private/app", "v1", &image).await;
    let reference = registry.reference("private/app", "v1");

    let err = pull(&daemon, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = AuthConfig {
        username: "alice".into(),
        password: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &reference, Some(wrong))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let line = daemon
        .ctl(["pull", "--creds", "alice:nope", &reference])
        .failed()
        .to_string();
    assert!(line.contains("Unauthenticated"), "{line}");

    assert!(
        daemon
            .ctl(["pull", "--creds", "alice:s3cret", &reference])
            .ok()
            .contains(image.id())
    );
    // The docker-config form: base64 of user:password.
    let auth = AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &reference, Some(auth)).await.unwrap(),
        image.id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry() {
    let issuer = TokenIssuer::start("bob", "hunter2", "refresh-bob").await;
    let registry = Registry::start_with(Auth::Token {
        issuer: issuer.clone(),
        push_repository: "secure/app".into(),
    })
    .await;
    let daemon = Daemon::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("secure/app", "v1", &image).await;
    let reference = registry.reference("secure/app", "v1");

    // Anonymous: the issuer hands out a token that grants nothing.
    let before = issuer.requests();
    let err = pull(&daemon, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        issuer.requests() > before,
        "the challenge sent the client to the issuer"
    );

    // Wrong password: the issuer refuses.
    let wrong = AuthConfig {
        username: "bob".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = pull_with(&daemon, &reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("token service"), "{}", err.message());

    // Username and password exchanged for a token.
    let good = AuthConfig {
        username: "bob".into(),
        password: "hunter2".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &reference, Some(good)).await.unwrap(),
        image.id()
    );

    // An identity token, exchanged through the OAuth2 refresh-token form.
    images(&daemon)
        .await
        .remove_image(RemoveImageRequest {
            image: spec(image.id()),
        })
        .await
        .unwrap();
    let identity = AuthConfig {
        identity_token: "refresh-bob".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &reference, Some(identity))
            .await
            .unwrap(),
        image.id()
    );

    // A registry token is sent as it is: the issuer is not asked.
    images(&daemon)
        .await
        .remove_image(RemoveImageRequest {
            image: spec(image.id()),
        })
        .await
        .unwrap();
    let token = issuer.mint("secure/app", &["pull"]);
    let before = issuer.requests();
    let direct = AuthConfig {
        registry_token: token,
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &reference, Some(direct)).await.unwrap(),
        image.id()
    );
    assert_eq!(issuer.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_frees_what_nothing_else_uses() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let base = busybox_layer();
    let a = on_base(&base, "a");
    let b = on_base(&base, "b");
    registry.push("shared/a", "v1", &a).await;
    registry.push("shared/a", "alias", &a).await;
    registry.push("shared/b", "v1", &b).await;
    pull(&daemon, &registry.reference("shared/a", "v1"))
        .await
        .unwrap();
    pull(&daemon, &registry.reference("shared/a", "alias"))
        .await
        .unwrap();
    pull(&daemon, &registry.reference("shared/b", "v1"))
        .await
        .unwrap();
    assert_eq!(
        store_listing(&daemon).0.len(),
        3,
        "the shared base layer is stored once"
    );

    // Removing by one tag removes the image under all its tags.
    let out = daemon.ctl(["rmi", &registry.reference("shared/a", "v1")]);
    assert!(
        out.ok().contains(&registry.reference("shared/a", "alias")),
        "{}",
        out.stdout
    );
    let listed = list(&daemon).await;
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![b.id()]
    );
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.contains(&hex(&a.layers[0].diff_id).to_string()),
        "shared layer kept"
    );
    assert!(
        !layers.contains(&hex(&a.layers[1].diff_id).to_string()),
        "a's own layer freed"
    );
    assert!(
        !blobs.contains(&hex(&a.layers[1].blob.digest).to_string()),
        "a's own blob freed"
    );
    assert!(
        !blobs.contains(&hex(a.id()).to_string())
            && !blobs.contains(&hex(&a.manifest.digest).to_string())
    );

    // Removing a missing image is not an error.
    images(&daemon)
        .await
        .remove_image(RemoveImageRequest {
            image: spec("127.0.0.1:1/none:x"),
        })
        .await
        .unwrap();
    images(&daemon)
        .await
        .remove_image(RemoveImageRequest {
            image: spec(b.id()),
        })
        .await
        .unwrap();
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // Several at once, then --prune (no container uses any image).
    let (ra, rb) = (
        registry.reference("shared/a", "v1"),
        registry.reference("shared/b", "v1"),
    );
    pull(&daemon, &ra).await.unwrap();
    pull(&daemon, &rb).await.unwrap();
    let out = daemon.ctl(["rmi", &ra, &rb]);
    assert!(
        out.ok().contains(&ra) && out.stdout.contains(&rb),
        "{}",
        out.stdout
    );
    assert!(daemon.ctl(["images", "-q"]).ok().trim().is_empty());
    pull(&daemon, &ra).await.unwrap();
    pull(&daemon, &rb).await.unwrap();
    daemon.ctl(["rmi", "--prune"]).ok();
    assert!(daemon.ctl(["images", "-q"]).ok().trim().is_empty());
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );
    let line = daemon.ctl(["rmi", "nosuch:image"]).failed().to_string();
    assert!(line.contains("no such image"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart() {
    let registry = Registry::start().await;
    let mut daemon = Daemon::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("persist/app", "v1", &image).await;
    pull(&daemon, &registry.reference("persist/app", "v1"))
        .await
        .unwrap();
    assert!(daemon.stop().await.success());
    daemon.launch(Options::default()).await;
    let listed = list(&daemon).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].repo_tags,
        vec![registry.reference("persist/app", "v1")]
    );
    assert!(
        layer_fs(&daemon, &image.layers[0].diff_id)
            .join("bin/busybox")
            .is_file()
    );
}

/// A path outside every test directory that a hostile layer might try to create.
fn canary(tag: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/strata-escape-{tag}-{}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_stay_inside_or_fail_cleanly() {
    let registry = Registry::start().await;
    let daemon = Daemon::start_with(Options {
        config: "[images]\nmax_layer_entries = 500\n".into(),
        ..Default::default()
    })
    .await;
    let (dotdot, abs, sym_abs, sym_rel) = (
        canary("dotdot"),
        canary("abs"),
        canary("symabs"),
        canary("symrel"),
    );
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();

    // Escapes that are confined: `..`, absolute paths, and writes through symlinks
    // planted earlier in the same layer all land inside the layer.
    let confined = LayerBuilder::new()
        .raw(
            tar::EntryType::Regular,
            &format!("../../../../../tmp/{}", name(&dotdot)),
            "",
            b"dotdot",
        )
        .raw(
            tar::EntryType::Regular,
            &format!("/tmp/{}", name(&abs)),
            "",
            b"abs",
        )
        .symlink("esc", "/tmp")
        .raw(
            tar::EntryType::Regular,
            &format!("esc/{}", name(&sym_abs)),
            "",
            b"symabs",
        )
        .symlink("up", "../../../../../../tmp")
        .raw(
            tar::EntryType::Regular,
            &format!("up/{}", name(&sym_rel)),
            "",
            b"symrel",
        )
        .symlink("passwd", "/etc/passwd")
        .raw(tar::EntryType::Link, "linked-symlink", "passwd", b"")
        .finish();
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    let image = ImageBuilder::new()
        .layer(confined, Compression::Gzip)
        .build();
    registry.push("hostile/confined", "v1", &image).await;
    pull(&daemon, &registry.reference("hostile/confined", "v1"))
        .await
        .unwrap();
    let fs = layer_fs(&daemon, &image.layers[0].diff_id);
    for (path, content) in [
        (&dotdot, "dotdot"),
        (&abs, "abs"),
        (&sym_abs, "symabs"),
        (&sym_rel, "symrel"),
    ] {
        assert!(
            !path.exists(),
            "{} was written outside the layer",
            path.display()
        );
        let inside = fs.join("tmp").join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read_to_string(&inside).unwrap(),
            content,
            "{}",
            inside.display()
        );
    }
    assert!(
        std::fs::symlink_metadata(fs.join("linked-symlink"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd_links,
        "host file untouched"
    );

    // Failures that must leave nothing behind.
    let cases: Vec<(&str, Image, Code)> = vec![
        (
            "hardlink out of the root",
            ImageBuilder::new()
                .layer(
                    LayerBuilder::new()
                        .raw(
                            tar::EntryType::Link,
                            "h",
                            "../../../../../../etc/passwd",
                            b"",
                        )
                        .finish(),
                    Compression::Gzip,
                )
                .build(),
            Code::DataLoss,
        ),
        (
            "too many entries",
            ImageBuilder::new()
                .layer(
                    {
                        let mut l = LayerBuilder::new();
                        for i in 0..1000 {
                            l.file(&format!("f{i}"), b"", 0o644);
                        }
                        l.finish()
                    },
                    Compression::Gzip,
                )
                .build(),
            Code::ResourceExhausted,
        ),
        (
            "a whiteout of ..",
            ImageBuilder::new()
                .layer(
                    LayerBuilder::new()
                        .file("a/f", b"f", 0o644)
                        .raw(tar::EntryType::Regular, "a/.wh..", "", b"")
                        .finish(),
                    Compression::Gzip,
                )
                .build(),
            Code::DataLoss,
        ),
        (
            "wrong diff_id",
            ImageBuilder::new()
                .layer(file_layer("x", b"x"), Compression::Gzip)
                .diff_ids(vec![format!("sha256:{}", "1".repeat(64))])
                .build(),
            Code::DataLoss,
        ),
    ];
    for (i, (what, image, code)) in cases.into_iter().enumerate() {
        let repo = format!("hostile/case{i}");
        registry.push(&repo, "v1", &image).await;
        let err = pull(&daemon, &registry.reference(&repo, "v1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        let (layers, blobs) = store_listing(&daemon);
        assert_eq!(layers.len(), 1, "{what}: layers left: {layers:?}");
        assert!(
            !blobs
                .iter()
                .any(|b| image.layers.iter().any(|l| hex(&l.blob.digest) == b)),
            "{what}: blob kept"
        );
    }

    // A manifest that misstates a layer's size: the download comes up short or long.
    let honest = ImageBuilder::new()
        .layer(file_layer("s", b"size"), Compression::Gzip)
        .build();
    for blob in honest.blobs() {
        registry.push_blob("hostile/size", blob).await;
    }
    let mut manifest: serde_json::Value = serde_json::from_slice(&honest.manifest.bytes).unwrap();
    manifest["layers"][0]["size"] = serde_json::json!(honest.layers[0].blob.bytes.len() + 10);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    registry
        .push_manifest("hostile/size", "v1", oci::OCI_MANIFEST, &bytes)
        .await;
    let err = pull(&daemon, &registry.reference("hostile/size", "v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::DataLoss | Code::Unavailable),
        "{err:?}"
    );
    assert_eq!(store_listing(&daemon).0.len(), 1);

    // A layer media type strata cannot unpack, and a config over the 4 MiB cap.
    let foreign = ImageBuilder::new()
        .layer(file_layer("f", b"f"), Compression::Gzip)
        .build();
    for blob in foreign.blobs() {
        registry.push_blob("hostile/foreign", blob).await;
    }
    let mut manifest: serde_json::Value = serde_json::from_slice(&foreign.manifest.bytes).unwrap();
    manifest["layers"][0]["mediaType"] =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
    registry
        .push_manifest(
            "hostile/foreign",
            "v1",
            oci::OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await;
    let err = pull(&daemon, &registry.reference("hostile/foreign", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("foreign.diff"), "{}", err.message());

    let huge_label = "x".repeat(5 << 20);
    let fat = ImageBuilder::new()
        .layer(file_layer("g", b"g"), Compression::Gzip)
        .label(&huge_label)
        .build();
    registry.push("hostile/fatconfig", "v1", &fat).await;
    let err = pull(&daemon, &registry.reference("hostile/fatconfig", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(store_listing(&daemon).0.len(), 1);

    // A manifest over the 4 MiB cap (a real registry refuses to store one, so a fake
    // one serves it).
    let mut manifest: serde_json::Value = serde_json::from_slice(&fat.manifest.bytes).unwrap();
    manifest["annotations"] = serde_json::json!({ "padding": "y".repeat(5 << 20) });
    let host = proxy::serve_static(serde_json::to_vec(&manifest).unwrap(), oci::OCI_MANIFEST).await;
    let err = pull(&daemon, &format!("{host}/fat/manifest:v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit"), "{}", err.message());

    // The store still works.
    let good = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("hostile/after", "v1", &good).await;
    assert_eq!(
        pull(&daemon, &registry.reference("hostile/after", "v1"))
            .await
            .unwrap(),
        good.id()
    );
}

/// Pushes an image of `carrier`'s config and the manifest listing `layers` (with `blob`),
/// and pulls it: the pull must fail; its error and how long the pull took.
async fn refused(
    registry: &Registry,
    daemon: &Daemon,
    repo: &str,
    carrier: &Image,
    blob: &oci::Blob,
    layers: Vec<serde_json::Value>,
) -> (tonic::Status, Duration) {
    registry.push_blob(repo, &carrier.config).await;
    registry.push_blob(repo, blob).await;
    let manifest = carrier.manifest_with(layers);
    registry
        .push_manifest(repo, "v1", oci::OCI_MANIFEST, &manifest.bytes)
        .await;
    let started = Instant::now();
    let err = pull(daemon, &registry.reference(repo, "v1"))
        .await
        .expect_err("the pull must be refused");
    (err, started.elapsed())
}

/// A gzip bomb (2 MiB that inflate to 2 GiB) and a manifest of 10,000 layers: each refused
/// fast, with nothing left in the store, and the store still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_and_ten_thousand_layers_are_refused_fast() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let bomb = oci::gzip_bomb(2 << 30);
    assert!(bomb.bytes.len() < 4 << 20, "{} bytes", bomb.bytes.len());
    let carrier = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    let (err, bomb_took) = refused(
        &registry,
        &daemon,
        "hostile/bomb",
        &carrier,
        &bomb,
        vec![bomb.descriptor()],
    )
    .await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("inflates past 67108864 bytes"),
        "{}",
        err.message()
    );
    assert!(bomb_took < Duration::from_secs(20), "took {bomb_took:?}");
    let (layers, blobs) = store_listing(&daemon);
    assert!(layers.is_empty(), "layers left: {layers:?}");
    assert!(
        !blobs.iter().any(|b| b == hex(&bomb.digest)),
        "the bomb's blob was kept"
    );

    // 10,000 layers (one small blob, listed again and again: the registry checks that
    // each exists). Refused before the config or any layer is fetched.
    let small = &carrier.layers[0].blob;
    let (err, layers_took) = refused(
        &registry,
        &daemon,
        "hostile/layers",
        &carrier,
        small,
        vec![small.descriptor(); 10_000],
    )
    .await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("10000 layers") && err.message().contains("256"),
        "{}",
        err.message()
    );
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // A layer of 1,000,000 empty entries (half a GiB of headers in 2 MiB).
    let entries = oci::many_entries(1000);
    let (err, entries_took) = refused(
        &registry,
        &daemon,
        "hostile/entries",
        &carrier,
        &entries,
        vec![entries.descriptor()],
    )
    .await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("inflates past") || err.message().contains("entries"),
        "{}",
        err.message()
    );
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );
    println!(
        "refused: gzip bomb in {bomb_took:?}, 10,000 layers in {layers_took:?}, \
         1,000,000 entries ({} bytes) in {entries_took:?}",
        entries.bytes.len()
    );

    registry.push("hostile/after", "v1", &carrier).await;
    assert_eq!(
        pull(&daemon, &registry.reference("hostile/after", "v1"))
            .await
            .unwrap(),
        carrier.id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_a_registry_that_is_down() {
    let mut registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("known/app", "v1", &image).await;
    assert_eq!(
        pull(&daemon, &registry.reference("unknown/app", "v1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = pull(&daemon, &registry.reference("known/app", "nosuchtag"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("known/app:nosuchtag"),
        "{}",
        err.message()
    );

    registry.stop();
    let started = Instant::now();
    let err = pull(&daemon, &registry.reference("known/app", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&registry.host), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    store_listing(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_stalled_downloads_are_retried_then_fail_cleanly() {
    let registry = Registry::start().await;
    let daemon = Daemon::start_with(Options {
        config: "[images]\nprogress_timeout_secs = 1\n".into(),
        ..Default::default()
    })
    .await;
    let noise = noise(2 << 20, 9);
    let image = ImageBuilder::new()
        .layer(file_layer("noise", &noise), Compression::Gzip)
        .build();
    registry.push("faulty/app", "v1", &image).await;
    let blob = image.layers[0].blob.digest.clone();

    // Cut once: the retry gets it.
    let proxy = FaultyProxy::start(&registry.host, &blob, Fault::Truncate(100_000), 1).await;
    let reference = format!("{}/faulty/app:v1", proxy.host);
    assert_eq!(pull(&daemon, &reference).await.unwrap(), image.id());
    assert_eq!(proxy.hits(), 2, "one cut download and one retry");
    images(&daemon)
        .await
        .remove_image(RemoveImageRequest {
            image: spec(image.id()),
        })
        .await
        .unwrap();

    // Cut every time: the pull fails after its retries, leaving nothing behind.
    let proxy =
        FaultyProxy::start(&registry.host, &blob, Fault::Truncate(100_000), usize::MAX).await;
    let reference = format!("{}/faulty/app:v1", proxy.host);
    let err = pull(&daemon, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(proxy.hits(), 3);
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // A corrupted byte: the digests catch it.
    let proxy = FaultyProxy::start(&registry.host, &blob, Fault::Corrupt(50_000), usize::MAX).await;
    let reference = format!("{}/faulty/app:v1", proxy.host);
    let err = pull(&daemon, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // Stalled every time: no bytes for a second fails each attempt; no overall deadline.
    let proxy = FaultyProxy::start(&registry.host, &blob, Fault::Stall(100_000), usize::MAX).await;
    let reference = format!("{}/faulty/app:v1", proxy.host);
    let started = Instant::now();
    let err = pull(&daemon, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("no data received for 1 s"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // A registry that takes the request and never answers: each try ends after a second.
    let proxy =
        FaultyProxy::start(&registry.host, "/manifests/", Fault::Stall(0), usize::MAX).await;
    let reference = format!("{}/faulty/app:v1", proxy.host);
    let started = Instant::now();
    let err = pull(&daemon, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("no answer within 1 s"),
        "{}",
        err.message()
    );
    assert_eq!(proxy.hits(), 3, "retried");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_fetch_each_blob_once() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    // Incompressible bytes so the shared layer takes a moment to download.
    let noise = noise(4 << 20, 13);
    let shared = file_layer("noise", &noise);
    let a = on_base(&shared, "a");
    let b = on_base(&shared, "b");
    registry.push("conc/app", "a", &a).await;
    registry.push("conc/app", "b", &b).await;
    let (ra, rb) = (
        registry.reference("conc/app", "a"),
        registry.reference("conc/app", "b"),
    );
    let results = tokio::join!(
        pull(&daemon, &ra),
        pull(&daemon, &ra),
        pull(&daemon, &rb),
        pull(&daemon, &rb)
    );
    assert_eq!(results.0.unwrap(), a.id());
    assert_eq!(results.1.unwrap(), a.id());
    assert_eq!(results.2.unwrap(), b.id());
    assert_eq!(results.3.unwrap(), b.id());
    for layer in a.layers.iter().chain(&b.layers[1..]) {
        assert_eq!(
            registry.blob_gets("conc/app", &layer.blob.digest),
            1,
            "layer {} fetched more than once",
            layer.blob.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_stream_reports_layers_and_existing_ones() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(file_layer("p", b"p"), Compression::Gzip)
        .build();
    registry.push("progress/app", "v1", &image).await;
    let reference = registry.reference("progress/app", "v1");
    let collect = |daemon_channel: Channel| {
        let reference = reference.clone();
        async move {
            let mut stream = ImagesClient::new(daemon_channel)
                .pull_image_progress(ext::PullImageProgressRequest {
                    image: spec(&reference),
                    auth: None,
                })
                .await
                .unwrap()
                .into_inner();
            let mut events = Vec::new();
            while let Some(m) = stream.message().await.unwrap() {
                events.push(m.event.unwrap());
            }
            events
        }
    };
    let events = collect(daemon.channel().await).await;
    let Some(Event::Resolved(resolved)) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(resolved.layers.len(), 2);
    assert_eq!(resolved.manifest_digest, image.manifest.digest);
    let done_layers = |events: &[Event], state: ext::layer_progress::State| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Layer(l) if l.state == state as i32))
            .count()
    };
    assert_eq!(done_layers(&events, ext::layer_progress::State::Done), 2);
    assert!(matches!(events.last(), Some(Event::Done(d)) if d.image_ref == image.id()));

    let again = collect(daemon.channel().await).await;
    assert_eq!(
        done_layers(&again, ext::layer_progress::State::Exists),
        2,
        "{again:?}"
    );
    assert_eq!(
        registry.blob_gets("progress/app", &image.layers[0].blob.digest),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_counts_the_store() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    registry.push("fsinfo/app", "v1", &image).await;
    pull(&daemon, &registry.reference("fsinfo/app", "v1"))
        .await
        .unwrap();
    let info = images(&daemon)
        .await
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let fs = &info.image_filesystems[0];
    let used = fs.used_bytes.as_ref().unwrap().value;
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
    assert!(used >= busybox, "used {used} < busybox {busybox}");
    assert!(fs.inodes_used.as_ref().unwrap().value >= 8);
    assert_eq!(
        fs.fs_id.as_ref().unwrap().mountpoint,
        daemon.root.to_str().unwrap()
    );
    let table = daemon.ctl(["imagefsinfo"]);
    assert!(
        table.ok().contains(daemon.root.to_str().unwrap()),
        "{}",
        table.stdout
    );
}

/// A root on a small tmpfs: a pull that does not fit fails with ResourceExhausted and
/// leaves nothing half-written; a pull that fits works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_pull_cleanly() {
    let registry = Registry::start().await;
    let mut daemon = Daemon::prepare();
    let mount = common::Tmpfs::mount(&daemon.path("small"), "6m");
    daemon.root = mount.path.join("root");
    daemon.launch(Options::default()).await;

    let noise = noise(8 << 20, 11);
    let big = ImageBuilder::new()
        .layer(file_layer("big", &noise), Compression::Gzip)
        .build();
    registry.push("full/big", "v1", &big).await;
    let err = pull(&daemon, &registry.reference("full/big", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    let small = ImageBuilder::new()
        .layer(file_layer("small", b"fits"), Compression::Gzip)
        .build();
    registry.push("full/small", "v1", &small).await;
    assert_eq!(
        pull(&daemon, &registry.reference("full/small", "v1"))
            .await
            .unwrap(),
        small.id()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_history_and_disk_usage() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let base = busybox_layer();
    let a = on_base(&base, "a");
    let b = on_base(&base, "b");
    registry.push("du/a", "v1", &a).await;
    registry.push("du/b", "v1", &b).await;
    pull(&daemon, &registry.reference("du/a", "v1"))
        .await
        .unwrap();
    pull(&daemon, &registry.reference("du/b", "v1"))
        .await
        .unwrap();

    // A new name, normalised; it moves when given to another image.
    let out = daemon.ctl(["tag", &registry.reference("du/a", "v1"), "local/app:stable"]);
    assert_eq!(
        out.ok().trim(),
        format!("docker.io/local/app:stable {}", a.id())
    );
    assert_eq!(
        list(&daemon)
            .await
            .iter()
            .find(|i| i.id == a.id())
            .unwrap()
            .repo_tags
            .len(),
        2
    );
    daemon.ctl(["tag", b.id(), "local/app:stable"]).ok();
    let images = list(&daemon).await;
    assert!(
        images
            .iter()
            .find(|i| i.id == b.id())
            .unwrap()
            .repo_tags
            .contains(&"docker.io/local/app:stable".to_string())
    );
    assert!(
        !images
            .iter()
            .find(|i| i.id == a.id())
            .unwrap()
            .repo_tags
            .contains(&"docker.io/local/app:stable".to_string())
    );
    let line = daemon
        .ctl(["tag", "no/such:image", "x:y"])
        .failed()
        .to_string();
    assert!(line.contains("NotFound"), "{line}");
    let line = daemon.ctl(["tag", a.id(), "Bad Name"]).failed().to_string();
    assert!(line.contains("InvalidArgument"), "{line}");

    // History: newest first; the base layer is shared by both images.
    let history: serde_json::Value =
        serde_json::from_str(daemon.ctl(["history", "-o", "json", a.id()]).ok()).unwrap();
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["layerDigest"], a.layers[1].blob.digest);
    assert_eq!(entries[0]["sharedBy"], 1);
    assert_eq!(entries[1]["layerDigest"], a.layers[0].blob.digest);
    assert_eq!(entries[1]["sharedBy"], 2);
    assert!(daemon.ctl(["history", a.id()]).ok().contains("LAYER"));

    // df: the layers on disk, counted once, against the images' sizes added up.
    let usage: serde_json::Value =
        serde_json::from_str(daemon.ctl(["df", "-o", "json"]).ok()).unwrap();
    let number = |v: &serde_json::Value| {
        v.as_str()
            .map_or_else(|| v.as_u64().unwrap(), |s| s.parse().unwrap())
    };
    assert_eq!(usage["layers"], 3);
    assert_eq!(usage["images"], 2);
    let on_disk = number(&usage["layersBytes"]);
    let unshared = number(&usage["imagesUnsharedBytes"]);
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
    assert!(unshared >= 2 * busybox, "{unshared}");
    assert!(
        on_disk < unshared,
        "sharing saves nothing? {on_disk} vs {unshared}"
    );
    let du = std::process::Command::new("du")
        .args(["-s", "-B1"])
        .arg(daemon.root.join("layers"))
        .output()
        .unwrap();
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // du also counts the layers directory itself.
    assert!(
        du >= on_disk && du - on_disk <= 4096,
        "df {on_disk} vs du {du}"
    );
    assert!(daemon.ctl(["df"]).ok().contains("sharing:"));
}

/// `stratactl check`: a blob whose bytes changed on disk, a layer whose directory went, a
/// blob nothing names: each found, mended by `--repair` (the images that lost a part go,
/// to be pulled again), and the store checks clean afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_and_repairs_what_is_wrong_with_the_store() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let build = |name: &str| {
        ImageBuilder::new()
            .layer(busybox_layer(), Compression::Gzip)
            .layer(file_layer(name, name.as_bytes()), Compression::Gzip)
            .build()
    };
    let (a, b, c) = (build("a"), build("b"), build("c"));
    for (repo, image) in [("check/a", &a), ("check/b", &b), ("check/c", &c)] {
        registry.push(repo, "v1", image).await;
        pull(&daemon, &registry.reference(repo, "v1"))
            .await
            .unwrap();
    }
    let clean = daemon.ctl(["check"]);
    assert!(
        clean
            .ok()
            .contains("checked 3 images, 10 blobs, 4 layers: 0 problems, 0 left"),
        "{}",
        clean.stdout
    );

    // The damage: a's own layer blob gets a flipped byte; b's own layer directory goes; a
    // blob nobody names appears.
    let blob = |digest: &str| daemon.root.join("blobs/sha256").join(hex(digest));
    let mut bytes = std::fs::read(blob(&a.layers[1].blob.digest)).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(blob(&a.layers[1].blob.digest), &bytes).unwrap();
    std::fs::remove_dir_all(daemon.root.join("layers").join(hex(&b.layers[1].diff_id))).unwrap();
    let stray = oci::Blob::new(b"nobody's".to_vec(), "application/octet-stream");
    std::fs::write(blob(&stray.digest), &stray.bytes).unwrap();

    let found = daemon.ctl(["check", "-o", "json"]);
    assert!(
        !found.status.success(),
        "check must fail while problems are left"
    );
    let report: serde_json::Value = serde_json::from_str(&found.stdout).unwrap();
    let problems: Vec<(String, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        [
            ("corrupt-blob".to_string(), a.layers[1].blob.digest.clone()),
            ("missing-layer".to_string(), b.layers[1].diff_id.clone()),
            ("orphan-blob".to_string(), stray.digest.clone()),
        ],
        "{report}"
    );

    let repaired = daemon.ctl(["check", "--repair"]);
    assert!(
        repaired.ok().contains("3 problems, 0 left"),
        "{}",
        repaired.stdout
    );
    let again = daemon.ctl(["check"]);
    assert!(
        again.ok().contains(": 0 problems, 0 left"),
        "{}",
        again.stdout
    );
    // a and b went (their parts are gone), c and the shared base stayed; a and b come back.
    let ids: Vec<String> = list(&daemon).await.into_iter().map(|i| i.id).collect();
    assert_eq!(ids, [c.id().to_string()]);
    for (repo, image) in [("check/a", &a), ("check/b", &b)] {
        assert_eq!(
            pull(&daemon, &registry.reference(repo, "v1"))
                .await
                .unwrap(),
            image.id()
        );
    }
    assert!(daemon.ctl(["check"]).ok().contains(": 0 problems, 0 left"));
}

/// The value of the first series of `family` on the metrics page at `port` whose line
/// holds every one of `parts`, if any.
fn metric(port: u16, family: &str, parts: &[&str]) -> Option<f64> {
    let (_, _, page) = common::http_get(port, "/metrics");
    page.lines()
        .filter(|l| l.starts_with(family) && parts.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A PullImage whose caller's deadline passes is answered DeadlineExceeded by the daemon
/// (tonic's own answer was Canceled, which critest's "should timeout" spec refuses), and
/// the pull, which nobody waits for any more, stops and leaves nothing: no image, no blob,
/// no layer, no download in progress. Two callers of the same image share one download,
/// and the pull stops only when the last of them has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_nobody_waits_for_stops_and_its_deadline_is_deadline_exceeded() {
    let registry = Registry::start().await;
    let port = common::free_port();
    let daemon = Daemon::start_with(Options {
        config: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Default::default()
    })
    .await;
    // Big enough that its pull takes a while (a second or so in a debug build).
    let noise = noise(16 << 20, 3);
    let image = ImageBuilder::new()
        .layer(file_layer("noise", &noise), Compression::Gzip)
        .build();
    registry.push("abandoned/app", "v1", &image).await;
    let blob = image.layers[0].blob.digest.clone();

    // A tonic client gives up on its own timer too (and calls that Cancelled); what the
    // daemon answered is on its metrics page.
    let deadline_pull = |reference: String, timeout: Duration| {
        let endpoint = daemon.endpoint();
        async move {
            let channel = strata_api::connect(&endpoint).await.expect("connect");
            let mut request = tonic::Request::new(PullImageRequest {
                image: spec(&reference),
                auth: None,
                sandbox_config: None,
            });
            request.set_timeout(timeout);
            let result = ImageServiceClient::new(channel).pull_image(request).await;
            if let Err(e) = &result {
                assert!(
                    matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
                    "{e:?}"
                );
            }
            result
        }
    };
    let pull_answers = |code: &str| {
        metric(
            port,
            "strata_grpc_requests_total",
            &["ImageService/PullImage", &format!("code=\"{code}\"")],
        )
        .unwrap_or(0.0)
    };

    // A 1 ms deadline (critest's "should timeout"), several times. (That the daemon's
    // answer is DeadlineExceeded, tests/clients.rs shows with a client that keeps no timer.)
    let reference = format!("{}/abandoned/app:v1", registry.host);
    for _ in 0..5 {
        deadline_pull(reference.clone(), Duration::from_millis(1))
            .await
            .unwrap_err();
    }
    // The abandoned pulls stopped: nothing recorded, nothing kept, nothing in progress.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pull_answers("Cancelled"), 0.0);
    assert_eq!(metric(port, "strata_pulls_in_flight", &[]), Some(0.0));
    assert!(
        list(&daemon).await.is_empty(),
        "an abandoned pull kept its image"
    );
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // A download that stalls: the caller's deadline ends the call, and the pull with it,
    // long before the registry's progress timeout (60 s) would.
    let proxy = FaultyProxy::start(&registry.host, &blob, Fault::Stall(100_000), usize::MAX).await;
    let stalled = format!("{}/abandoned/app:v1", proxy.host);
    let started = Instant::now();
    deadline_pull(stalled.clone(), Duration::from_secs(2))
        .await
        .unwrap_err();
    let answered = started.elapsed();
    assert!(answered < Duration::from_secs(4), "{answered:?}");
    let mut gone = None;
    for _ in 0..50 {
        let ingest = std::fs::read_dir(daemon.root.join("ingest"))
            .map(|d| d.count())
            .unwrap_or(0);
        if ingest == 0 && metric(port, "strata_pulls_in_flight", &[]) == Some(0.0) {
            gone = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = gone.expect("the stalled pull never stopped");
    eprintln!(
        "stalled pull: answered after {answered:?}, stopped and its download gone after {gone:?}"
    );
    assert_eq!(pull_answers("Cancelled"), 0.0);
    let (layers, blobs) = store_listing(&daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // Two callers share one pull: the first gives up, the second still gets the image, and
    // the registry served the layer once.
    let counting = FaultyProxy::start(&registry.host, &blob, Fault::Stall(usize::MAX), 0).await;
    let shared = format!("{}/abandoned/app:v1", counting.host);
    let patient = tokio::spawn(deadline_pull(shared.clone(), Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    deadline_pull(shared.clone(), Duration::from_millis(30))
        .await
        .unwrap_err();
    let pulled = patient.await.unwrap().expect("the patient caller's pull");
    assert_eq!(pulled.into_inner().image_ref, image.id());
    assert_eq!(counting.hits(), 1, "one download for both callers");
}

/// A client that stalls an import (sends half an archive, then nothing) or an export
/// (reads nothing) holds no lock: removing an image meanwhile is immediate, and each
/// transfer ends cleanly with its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_import_or_export_blocks_no_removal() {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let big = ImageBuilder::new()
        .layer(file_layer("noise", &noise(16 << 20, 5)), Compression::Gzip)
        .build();
    registry.push("stalled/big", "v1", &big).await;
    let small = ImageBuilder::new()
        .layer(file_layer("a", b"a"), Compression::Gzip)
        .build();
    registry.push("stalled/small", "v1", &small).await;
    let big_ref = format!("{}/stalled/big:v1", registry.host);
    let small_ref = format!("{}/stalled/small:v1", registry.host);
    pull(&daemon, &big_ref).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("big.tar");
    daemon
        .ctl(["export", archive.to_str().unwrap(), &big_ref])
        .ok();
    let archive = std::fs::read(&archive).unwrap();

    let stratactl = |args: &[&str]| {
        Command::new(common::bin("stratactl"))
            .arg("--endpoint")
            .arg(daemon.endpoint())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // An import whose client sends half the archive and stops.
    let mut import = stratactl(&["import", "-", "--name", "local/half:v1"]);
    let mut stdin = import.stdin.take().unwrap();
    stdin.write_all(&archive[..archive.len() / 2]).unwrap();
    stdin.flush().unwrap();
    // An export nobody reads.
    let mut export = stratactl(&["export", "-", &big_ref]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    for round in 0..3 {
        pull(&daemon, &small_ref).await.unwrap();
        let started = Instant::now();
        let mut client = images(&daemon).await;
        let removal = client.remove_image(RemoveImageRequest {
            image: spec(&small_ref),
        });
        tokio::time::timeout(Duration::from_secs(10), removal)
            .await
            .expect("the removal waited for the stalled transfers")
            .unwrap();
        let took = started.elapsed();
        eprintln!("removal {round} during a stalled import and export: {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // The clients go; their transfers end, and the store keeps only the big image.
    drop(stdin);
    assert!(
        !import.wait().unwrap().success(),
        "half an archive imported"
    );
    export.kill().unwrap();
    export.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names: Vec<String> = list(&daemon)
        .await
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    assert_eq!(names, [big_ref], "{names:?}");
    daemon.ctl(["check"]).ok();
}
