//! End to end: layers as the unit of sharing. Commit with config changes, push to the real
//! registry (only what it lacks; mounts from another repository), pull on another root,
//! export and import (OCI layout, gzipped, `docker save`), and archives and pushes that fail.

mod common;

use std::{collections::BTreeSet, io::Read as _, path::Path};

use common::{
    Daemon,
    cri::{Env, Node, container_config, env},
    oci::{self, Compression, ImageBuilder, LayerBuilder, busybox_layer},
    proxy::{Fault, FaultyProxy},
    registry::{Auth, Registry},
    store_listing,
    token::TokenIssuer,
};
use serde_json::Value;
use strata_api::ext::{self, blob_progress::State, push_image_response::Event};

/// A protobuf-JSON integer: 64-bit ones are strings.
fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

fn blob_size(daemon: &Daemon, digest: &str) -> u64 {
    let hex = digest.trim_start_matches("sha256:");
    std::fs::metadata(daemon.root.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest}: {e}"))
        .len()
}

fn inspect(daemon: &Daemon, image: &str) -> Value {
    serde_json::from_str(daemon.ctl(["inspecti", "-o", "json", image]).ok()).unwrap()
}

fn image_names(daemon: &Daemon) -> BTreeSet<String> {
    let list: Value = serde_json::from_str(daemon.ctl(["images", "-o", "json"]).ok()).unwrap();
    list["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {}", i["id"].as_str().unwrap(), i["repoTags"]))
        .collect()
}

/// Runs the image's own command (no command in the container config) in a new pod.
async fn run_default(node: &mut Node, image: &str) -> Vec<String> {
    let pod = node.pod("runner").await;
    let mut config = container_config("default", image, "");
    config.command.clear();
    config.args.clear();
    let (lines, st) = node.run_config(&pod, config).await;
    assert_eq!(st.exit_code, 0, "{st:?} {lines:?}");
    node.remove_pods(vec![pod]).await;
    lines
}

async fn run_script(node: &mut Node, image: &str, script: &str) -> Vec<String> {
    let pod = node.pod("runner").await;
    let (lines, st) = node
        .run_config(&pod, container_config("script", image, script))
        .await;
    assert_eq!(st.exit_code, 0, "{st:?} {lines:?}");
    node.remove_pods(vec![pod]).await;
    lines
}

fn push_json(daemon: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json", "push"];
    all.extend_from_slice(args);
    serde_json::from_str(daemon.ctl(&all).ok()).unwrap()
}

/// Pushes through the API; returns the progress events and the result.
async fn push_events(daemon: &Daemon, image: &str) -> (Vec<Event>, ext::PushDone) {
    let mut stream = ext::images_client::ImagesClient::new(daemon.channel().await)
        .push_image(ext::PushImageRequest {
            image: image.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        match message.event.unwrap() {
            Event::Done(done) => {
                assert!(stream.message().await.unwrap().is_none(), "done is last");
                return (events, done);
            }
            event => events.push(event),
        }
    }
    panic!("the push stream ended without a result: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_with_changes_push_and_pull_on_another_root() {
    let mut env: Env = env().await;
    let host = env.registry.host.clone();
    let image = env.image.clone();
    let pod = env.pod("builder").await;
    // Changes: a new directory and file, a file of a lower layer deleted, a whole
    // directory deleted.
    let id = env
        .start_sleeper(
            &pod,
            "changer",
            &image,
            "mkdir /data && echo payload > /data/file; rm /etc/kept; rm -rf /tmp; exec sleep 1000",
        )
        .await;
    let v1 = format!("{host}/app:v1");
    let cmd = r#"CMD ["/bin/sh", "-c", "echo $MODE; pwd; cat file; test -e /etc/kept || echo kept-gone; test -e /tmp || echo tmp-gone"]"#;
    let v1_id = env
        .daemon
        .ctl([
            "commit",
            "-m",
            "first",
            "-c",
            "ENV MODE=committed",
            "-c",
            cmd,
            "-c",
            "WORKDIR /data",
            "-c",
            "LABEL stage=one",
            &id,
            &v1,
        ])
        .ok()
        .trim()
        .to_string();
    let doc = inspect(&env.daemon, &v1);
    let config = &doc["info"]["imageSpec"]["config"];
    assert_eq!(config["WorkingDir"], "/data");
    assert_eq!(config["Labels"]["stage"], "one");
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("MODE=committed")),
        "{config}"
    );
    let expected = ["committed", "/data", "payload", "kept-gone", "tmp-gone"];
    assert_eq!(run_default(&mut env.node, &v1).await, expected);

    // First push: the three busybox layers are in another repository of this registry
    // (the image came from there), so they are mounted; the new layer and the config are
    // uploaded.
    let layers = doc["info"]["layers"].as_array().unwrap().clone();
    let new_layer = layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let done = push_json(&env.daemon, &[&v1]);
    assert_eq!(num(&done["blobsMounted"]), 3, "{done}");
    assert_eq!(num(&done["blobsUploaded"]), 2, "{done}");
    assert_eq!(num(&done["blobsSkipped"]), 0, "{done}");
    let uploaded: BTreeSet<String> = env.registry.blob_uploads("app").into_iter().collect();
    assert_eq!(
        uploaded,
        BTreeSet::from([new_layer.clone(), v1_id.clone()]),
        "uploads seen by the registry"
    );
    assert_eq!(env.registry.blob_mounts("app").len(), 3);
    let manifest = doc["info"]["manifestDigest"].as_str().unwrap().to_string();
    assert_eq!(
        num(&done["uploadedBytes"]),
        blob_size(&env.daemon, &new_layer)
            + blob_size(&env.daemon, &v1_id)
            + blob_size(&env.daemon, &manifest)
    );
    assert_eq!(done["reference"], format!("{host}/app@{manifest}"));

    // Pulled into a second daemon on another root: the same manifest, and it runs.
    let mut other = Node::new(Daemon::start().await).await;
    other.daemon.ctl(["pull", &v1]).ok();
    let pulled = inspect(&other.daemon, &v1);
    assert_eq!(pulled["info"]["manifestDigest"], manifest.as_str());
    assert_eq!(pulled["status"]["id"], v1_id.as_str());
    assert_eq!(run_default(&mut other, &v1).await, expected);

    // A second commit on top: only its layer, the config and the manifest go up.
    let id2 = env
        .start_sleeper(
            &pod,
            "changer2",
            &v1,
            "echo more > /data/more; exec sleep 1000",
        )
        .await;
    let v2 = format!("{host}/app:v2");
    let v2_id = env
        .daemon
        .ctl(["commit", &id2, &v2])
        .ok()
        .trim()
        .to_string();
    let doc2 = inspect(&env.daemon, &v2);
    let layers2 = doc2["info"]["layers"].as_array().unwrap();
    assert_eq!(layers2.len(), layers.len() + 1);
    let newest = layers2.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let before = env.registry.blob_uploads("app").len();
    // Through the API this time, to see the progress stream: the blobs first, then each
    // blob's states, each ending as EXISTS or DONE, then the result.
    let (events, done2) = push_events(&env.daemon, &v2).await;
    let Some(Event::Resolved(resolved)) = events.first() else {
        panic!("the stream starts with the blobs: {events:?}");
    };
    assert_eq!(resolved.blobs.len(), 6, "five layers and the config");
    assert_eq!(
        resolved.manifest_digest,
        doc2["info"]["manifestDigest"].as_str().unwrap()
    );
    for blob in &resolved.blobs {
        let states: Vec<(State, u64)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Blob(b) if b.digest == blob.digest => {
                    Some((State::try_from(b.state).unwrap(), b.uploaded))
                }
                _ => None,
            })
            .collect();
        let last = states.last().unwrap().0;
        let uploaded = blob.digest == newest || blob.digest == v2_id;
        assert_eq!(
            last,
            if uploaded { State::Done } else { State::Exists },
            "{}: {states:?}",
            blob.digest
        );
        assert!(states.iter().all(|(_, n)| *n <= blob.size), "{states:?}");
    }
    let done2 = serde_json::to_value(&done2).unwrap();
    assert_eq!(num(&done2["blobsUploaded"]), 2, "{done2}");
    assert_eq!(num(&done2["blobsSkipped"]), 4, "{done2}");
    let new_uploads: BTreeSet<String> = env.registry.blob_uploads("app")[before..]
        .iter()
        .cloned()
        .collect();
    assert_eq!(new_uploads, BTreeSet::from([newest.clone(), v2_id.clone()]));
    let manifest2 = doc2["info"]["manifestDigest"].as_str().unwrap();
    let second_bytes = num(&done2["uploadedBytes"]);
    assert_eq!(
        second_bytes,
        blob_size(&env.daemon, &newest)
            + blob_size(&env.daemon, &v2_id)
            + blob_size(&env.daemon, manifest2)
    );
    // The human form says the same.
    let line = env.daemon.ctl(["push", &v2]).ok().to_string();
    assert!(
        line.contains("0 blobs uploaded") && line.contains("6 already there"),
        "{line}"
    );

    other.daemon.ctl(["pull", &v2]).ok();
    assert_eq!(
        run_script(&mut other, &v2, "cat /data/file /data/more").await,
        ["payload", "more"]
    );
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pushes_leave_the_image_and_a_retry_works() {
    let registry = Registry::start().await;
    let node = Node::new(
        Daemon::start_with(common::Options {
            config: "[images]\nprogress_timeout_secs = 2\n".into(),
            ..Default::default()
        })
        .await,
    )
    .await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new().file("srv/app", b"v1\n", 0o644).finish(),
            Compression::Gzip,
        )
        .build();
    registry.push("src/app", "v1", &image).await;
    let source = registry.reference("src/app", "v1");
    node.daemon.ctl(["pull", &source]).ok();

    // Every blob upload is cut off mid-request: the push fails after its retries.
    let cutting =
        FaultyProxy::start(&registry.host, "digest=sha256", Fault::Truncate(0), 100).await;
    let target = format!("{}/moved:v1", cutting.host);
    node.daemon.ctl(["tag", &source, &target]).ok();
    let before = (store_listing(&node.daemon), image_names(&node.daemon));
    let line = node.daemon.ctl(["push", &target]).failed().to_string();
    assert!(line.contains("Unavailable"), "{line}");
    assert!(cutting.hits() >= 3, "retried: {} tries", cutting.hits());
    assert_eq!(
        (store_listing(&node.daemon), image_names(&node.daemon)),
        before,
        "a failed push changed the store"
    );

    // A registry that never answers an upload: the progress timeout ends each try.
    let stalling = FaultyProxy::start(&registry.host, "digest=sha256", Fault::Stall(0), 100).await;
    let target = format!("{}/stalled:v1", stalling.host);
    node.daemon.ctl(["tag", &source, &target]).ok();
    let started = std::time::Instant::now();
    let line = node.daemon.ctl(["push", &target]).failed().to_string();
    assert!(
        line.contains("DeadlineExceeded") && line.contains("no data"),
        "{line}"
    );
    assert!(stalling.hits() >= 3, "retried: {} tries", stalling.hits());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(store_listing(&node.daemon), before.0);

    // One cut: the retry completes the push.
    let flaky = FaultyProxy::start(&registry.host, "digest=sha256", Fault::Truncate(0), 1).await;
    let target = format!("{}/moved:v1", flaky.host);
    node.daemon.ctl(["tag", &source, &target]).ok();
    let done = push_json(&node.daemon, &[&target]);
    // Nothing of the cut uploads reached the registry: all three blobs go up, one twice.
    assert_eq!(num(&done["blobsUploaded"]), 3, "{done}");
    assert_eq!(flaky.hits(), 4, "three uploads and one retry");
    let mut other = Node::new(Daemon::start().await).await;
    let pulled = registry.reference("moved", "v1");
    other.daemon.ctl(["pull", &pulled]).ok();
    assert_eq!(
        inspect(&other.daemon, &pulled)["info"]["manifestDigest"],
        image.manifest.digest.as_str()
    );
    assert_eq!(
        run_script(&mut other, &pulled, "cat /srv/app").await,
        ["v1"]
    );

    // A registry that wants credentials refuses the push without them.
    let guarded = Registry::start_with(Auth::Basic {
        user: "pusher".into(),
        password: "secret".into(),
    })
    .await;
    let target = guarded.reference("app", "v1");
    node.daemon.ctl(["tag", &source, &target]).ok();
    let line = node.daemon.ctl(["push", &target]).failed().to_string();
    assert!(line.contains("Unauthenticated"), "{line}");
    assert!(guarded.blob_uploads("app").is_empty());
    node.daemon
        .ctl(["push", "--creds", "pusher:secret", &target])
        .ok();
    assert_eq!(guarded.blob_uploads("app").len(), 3);

    // Bad requests.
    let line = node
        .daemon
        .ctl(["push", "missing/image:v1"])
        .failed()
        .to_string();
    assert!(line.contains("NotFound"), "{line}");
    let line = node
        .daemon
        .ctl(["push", &source, "Not A Reference"])
        .failed()
        .to_string();
    assert!(line.contains("InvalidArgument"), "{line}");
    let line = node.daemon.ctl(["push", image.id()]).failed().to_string();
    assert!(line.contains("several names"), "{line}");
}

/// New content for an archive entry, given its name and content.
type EditEntry<'a> = dyn Fn(&str, &[u8]) -> Option<Vec<u8>> + 'a;

/// The entries of a tar, in order.
fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(archive);
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn import(daemon: &Daemon, bytes: &[u8], extra: &[&str]) -> common::CtlOutput {
    let file = daemon.path("archive.tar");
    std::fs::write(&file, bytes).unwrap();
    let mut args = vec!["import".to_string(), file.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    daemon.ctl(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trip_and_docker_save_archives() {
    let env = env().await;
    let image = env.image.clone();
    let original = inspect(&env.daemon, &image);
    let archive = env.daemon.path("busybox.tar");
    env.daemon
        .ctl(["export", archive.to_str().unwrap(), &image])
        .ok();
    let bytes = std::fs::read(&archive).unwrap();
    let names: Vec<String> = entries(&bytes).into_iter().map(|(n, _)| n).collect();
    for wanted in ["oci-layout", "index.json", "manifest.json"] {
        assert!(names.contains(&wanted.to_string()), "{names:?}");
    }
    // manifest, config and three layers, each once.
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("blobs/sha256/"))
            .count(),
        5
    );
    // To stdout: the same bytes (an export is deterministic).
    let piped = std::process::Command::new(common::bin("stratactl"))
        .args(["--endpoint", &env.daemon.endpoint(), "export", "-", &image])
        .output()
        .unwrap();
    assert!(piped.status.success(), "{piped:?}");
    assert!(piped.stdout == bytes, "stdout export differs from the file");

    // Onto a fresh root: the same image (id and manifest), under the same name, and it runs.
    let mut fresh = Node::new(Daemon::start().await).await;
    let out = fresh
        .daemon
        .ctl(["import", archive.to_str().unwrap()])
        .ok()
        .to_string();
    let id = original["status"]["id"].as_str().unwrap();
    assert_eq!(out.trim(), format!("Imported {image} ({id})"));
    let imported = inspect(&fresh.daemon, &image);
    assert_eq!(imported["status"]["id"], id);
    assert_eq!(
        imported["info"]["manifestDigest"],
        original["info"]["manifestDigest"]
    );
    assert_eq!(
        run_script(
            &mut fresh,
            &image,
            "cat /etc/kept; test -e /etc/doomed || echo doomed-gone"
        )
        .await,
        ["kept", "doomed-gone"]
    );
    // From stdin too (the same image again: nothing changes).
    let mut child = std::process::Command::new(common::bin("stratactl"))
        .args(["--endpoint", &fresh.daemon.endpoint(), "import", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("Imported {image} ({id})")
    );

    // Gzipped, and from a second export that names two images: the same ids again.
    env.daemon.ctl(["tag", &image, "local/second:v2"]).ok();
    let two = env.daemon.path("two.tar");
    env.daemon
        .ctl(["export", two.to_str().unwrap(), &image, "local/second:v2"])
        .ok();
    fresh.daemon.ctl(["rmi", &image]).ok();
    let gz = gzip(&std::fs::read(&two).unwrap());
    let out: Value =
        serde_json::from_str(import(&fresh.daemon, &gz, &["-o", "json"]).ok()).unwrap();
    let images = out["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "one image with two names: {out}");
    assert_eq!(images[0]["imageId"], id);
    assert_eq!(
        images[0]["names"],
        serde_json::json!([image, "docker.io/local/second:v2"])
    );

    // `docker save` format: config and layer tars by path, a layer reached by a symlink,
    // legacy metadata files beside them.
    let hello = LayerBuilder::new()
        .file("srv/hello", b"from docker\n", 0o644)
        .finish();
    let busybox = busybox_layer();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh", "-c", "cat /srv/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [oci::sha256(&busybox), oci::sha256(&hello)]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_id = oci::sha256(&config);
    let config_name = format!("{}.json", config_id.trim_start_matches("sha256:"));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["docker.example/saved:v1"],
        "Layers": ["aaa/layer.tar", "ccc/layer.tar"],
    }]);
    let mut tar = LayerBuilder::new();
    tar.file(&config_name, &config, 0o644)
        .file("aaa/VERSION", b"1.0", 0o644)
        .file("aaa/json", b"{}", 0o644)
        .file("aaa/layer.tar", &busybox, 0o644)
        .file("bbb/layer.tar", &hello, 0o644)
        .symlink("ccc/layer.tar", "../bbb/layer.tar")
        .file("repositories", b"{}", 0o644)
        .file(
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
            0o644,
        );
    let out = import(&fresh.daemon, &tar.finish(), &[]).ok().to_string();
    assert_eq!(
        out.trim(),
        format!("Imported docker.example/saved:v1 ({config_id})")
    );
    assert_eq!(
        run_default(&mut fresh, "docker.example/saved:v1").await,
        ["from docker"]
    );

    // An archive that names no image takes the name given with the import.
    let plain = ImageBuilder::new()
        .layer(
            LayerBuilder::new().file("x", b"x", 0o644).finish(),
            Compression::Gzip,
        )
        .build();
    let mut unnamed = LayerBuilder::new();
    unnamed.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": plain.manifest_media_type(),
        "digest": plain.manifest.digest,
        "size": plain.manifest.bytes.len(),
    }]});
    unnamed.file("index.json", &serde_json::to_vec(&index).unwrap(), 0o644);
    for blob in plain.blobs().chain([&plain.manifest]) {
        let path = format!("blobs/sha256/{}", blob.digest.trim_start_matches("sha256:"));
        unnamed.file(&path, &blob.bytes, 0o644);
    }
    let out = import(
        &fresh.daemon,
        &unnamed.finish(),
        &["--name", "local/named:v3"],
    )
    .ok()
    .to_string();
    assert!(out.contains("docker.io/local/named:v3"), "{out}");

    // Export of an unknown image: a clear error, and no file left behind.
    let nothing = env.daemon.path("nothing.tar");
    let line = env
        .daemon
        .ctl(["export", nothing.to_str().unwrap(), "no/such:image"])
        .failed()
        .to_string();
    assert!(line.contains("NotFound"), "{line}");
    assert!(!nothing.exists() && !env.daemon.path("nothing.tar.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_are_refused_and_change_nothing() {
    let daemon = Daemon::start().await;
    let good = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new().file("srv/a", b"a", 0o644).finish(),
            Compression::Gzip,
        )
        .build();
    let archive = oci::layout_archive(&good, "local/good:v1", &[]);
    import(&daemon, &archive, &[]).ok();
    let baseline = (store_listing(&daemon), image_names(&daemon));

    let hostile_layer = ImageBuilder::new()
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
        .build();
    let passwd_len = std::fs::metadata("/etc/passwd").unwrap().len();
    let lying = ImageBuilder::new()
        .layer(
            LayerBuilder::new().file("srv/b", b"b", 0o644).finish(),
            Compression::Gzip,
        )
        .diff_ids(vec![oci::sha256(b"not the layer")])
        .build();
    // The good archive rebuilt: each entry's content through `edit`, an extra one first.
    let with_entries = |edit: &EditEntry<'_>, extra: Option<(&str, &[u8])>| {
        let mut tar = LayerBuilder::new();
        if let Some((name, data)) = extra {
            tar.raw(tar::EntryType::Regular, name, "", data);
        }
        for (name, data) in entries(&archive) {
            if let Some(data) = edit(&name, &data) {
                tar.file(&name, &data, 0o644);
            }
        }
        tar.finish()
    };
    let layer_hex = good.layers[1]
        .blob
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let big_index = {
        let mut v = br#"{"schemaVersion":2,"manifests":[],"pad":""#.to_vec();
        v.extend(std::iter::repeat_n(b'a', 5 << 20));
        v.extend(br#""}"#);
        v
    };
    // A gzip bomb as the image's one layer, and an image listing one layer 10,000 times.
    // (The bomb stands for a layer the node lacks: one it has is not unpacked again.)
    let mut bomb = ImageBuilder::new()
        .layer(
            LayerBuilder::new().file("srv/bomb", b"b", 0o644).finish(),
            Compression::Gzip,
        )
        .build();
    bomb.layers[0].blob = oci::gzip_bomb(2 << 30);
    bomb.manifest = bomb.manifest_with(vec![bomb.layers[0].blob.descriptor()]);
    let mut ten_thousand = good.clone();
    ten_thousand.manifest =
        ten_thousand.manifest_with(vec![ten_thousand.layers[1].blob.descriptor(); 10_000]);
    let mut corrupt_gz = gzip(&archive);
    let middle = corrupt_gz.len() / 2;
    corrupt_gz[middle] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not an archive",
            b"hello, this is not a tar".to_vec(),
            "InvalidArgument",
        ),
        ("empty", Vec::new(), "InvalidArgument"),
        (
            "truncated",
            archive[..archive.len() / 2].to_vec(),
            "InvalidArgument",
        ),
        (
            "truncated gzip",
            gzip(&archive)[..1000].to_vec(),
            "InvalidArgument",
        ),
        // The flipped byte lands in the busybox layer: its digest no longer matches.
        ("corrupt gzip", corrupt_gz, "DataLoss"),
        (
            "an entry outside the archive",
            with_entries(
                &|_, d| Some(d.to_vec()),
                Some(("../../escaped-entry", b"x")),
            ),
            "InvalidArgument",
        ),
        (
            "a blob whose content is not its name",
            with_entries(
                &|n, d| {
                    let mut d = d.to_vec();
                    if n.ends_with(&layer_hex) {
                        d[20] ^= 0xff;
                    }
                    Some(d)
                },
                None,
            ),
            "DataLoss",
        ),
        (
            "an index over 4 MiB",
            with_entries(
                &|n, d| {
                    Some(if n == "index.json" {
                        big_index.clone()
                    } else {
                        d.to_vec()
                    })
                },
                None,
            ),
            "ResourceExhausted",
        ),
        (
            "a missing layer",
            oci::layout_archive(&good, "local/bad:v1", &[&good.layers[1].blob.digest]),
            "InvalidArgument",
        ),
        (
            "a layer that escapes its root",
            oci::layout_archive(&hostile_layer, "local/bad:v1", &[]),
            "DataLoss",
        ),
        (
            "a gzip bomb",
            oci::layout_archive(&bomb, "local/bad:v1", &[]),
            "inflates past 67108864 bytes",
        ),
        (
            "10,000 layers",
            oci::layout_archive(&ten_thousand, "local/bad:v1", &[]),
            "10000 layers",
        ),
        (
            "a config lying about diff_ids",
            oci::layout_archive(&lying, "local/bad:v1", &[]),
            "DataLoss",
        ),
    ];
    for (what, bytes, code) in cases {
        let line = import(&daemon, &bytes, &[]).failed().to_string();
        assert!(line.contains(code), "{what}: {line}");
        assert_eq!(
            (store_listing(&daemon), image_names(&daemon)),
            baseline,
            "{what} changed the store"
        );
        assert!(
            !daemon.root.join("../escaped-entry").exists(),
            "{what} wrote outside"
        );
        assert!(
            !Path::new("/escaped-entry").exists(),
            "{what} wrote outside"
        );
        assert_eq!(
            std::fs::metadata("/etc/passwd").unwrap().len(),
            passwd_len,
            "{what} touched a host file"
        );
    }
    // The store still works: the good image runs.
    let mut node = Node::new(daemon).await;
    assert_eq!(
        run_script(&mut node, "local/good:v1", "cat /srv/a; echo").await,
        ["a"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_bearer_tokens_mounts_across_repositories() {
    let issuer = TokenIssuer::start("bob", "hunter2", "refresh-bob").await;
    let registry = Registry::start_with(Auth::Token {
        issuer: issuer.clone(),
        push_repository: "team/base".into(),
    })
    .await;
    let node = Node::new(Daemon::start().await).await;
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new().file("srv/t", b"t\n", 0o644).finish(),
            Compression::Gzip,
        )
        .build();
    registry.push("team/base", "v1", &image).await;
    let source = registry.reference("team/base", "v1");
    node.daemon
        .ctl(["pull", "--creds", "bob:hunter2", &source])
        .ok();

    // Without credentials the token grants nothing: refused, nothing sent.
    let target = registry.reference("team/copy", "v1");
    let line = node
        .daemon
        .ctl(["push", &source, &target])
        .failed()
        .to_string();
    assert!(line.contains("Unauthenticated"), "{line}");
    assert!(registry.blob_uploads("team/copy").is_empty());

    // With them: one token covers pushing to team/copy and reading team/base, so every
    // blob is mounted and nothing is uploaded but the manifest.
    let done = push_json(&node.daemon, &["--creds", "bob:hunter2", &source, &target]);
    assert_eq!(num(&done["blobsMounted"]), 3, "{done}");
    assert_eq!(num(&done["blobsUploaded"]), 0, "{done}");
    assert_eq!(registry.blob_mounts("team/copy").len(), 3);
    assert_eq!(
        num(&done["uploadedBytes"]),
        image.manifest.bytes.len() as u64
    );
    assert_eq!(
        done["reference"],
        format!("{}/team/copy@{}", registry.host, image.manifest.digest)
    );
}
