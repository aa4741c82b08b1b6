//! End to end: nothing a registry sends is trusted. A hostile registry (hand-written HTTP
//! on loopback, `common::hostile`) answers with error and token bodies of 1.5 GiB, bodies
//! and token services that stall, and upload locations on another port; the real daemon
//! must stay small, end every pull by itself, and keep credentials with the registry they
//! were given for. Each test prints what it measured.

mod common;

use std::time::{Duration, Instant};

use common::{
    Daemon, Options,
    hostile::{Body, GIB, HostileRegistry, MIB, Reply, Route},
    image_spec as spec,
    oci::{Compression, ImageBuilder, LayerBuilder},
    registry::Registry,
};
use strata_api::cri::{
    AuthConfig, PullImageRequest, RemoveImageRequest, image_service_client::ImageServiceClient,
};
use tonic::{Code, Status, transport::Channel};

/// The most a hostile answer may grow the daemon by.
const RSS_SLACK_KIB: u64 = 64 << 10;
/// How long a test waits for a pull before calling it hung.
const HUNG: Duration = Duration::from_secs(60);

async fn images(daemon: &Daemon) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(daemon.channel().await)
}

/// Pulls `image`; None if it has not ended within `within`.
async fn pull_within(
    daemon: &Daemon,
    image: &str,
    auth: Option<AuthConfig>,
    within: Duration,
) -> (Option<Result<String, Status>>, Duration) {
    let mut client = images(daemon).await;
    let started = Instant::now();
    let result = tokio::time::timeout(
        within,
        client.pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        }),
    )
    .await
    .ok()
    .map(|r| r.map(|r| r.into_inner().image_ref));
    (result, started.elapsed())
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(daemon: &Daemon, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", daemon.pid()))
}

/// Resets the daemon's peak RSS (VmHWM) to its RSS now (`clear_refs` 5, root).
fn reset_peak(daemon: &Daemon) {
    std::fs::write(format!("/proc/{}/clear_refs", daemon.pid()), "5").unwrap();
}

/// How a pull against a hostile answer went: its result, its time, and how much the
/// daemon's resident memory grew at its peak.
struct Measured {
    result: Result<String, Status>,
    elapsed: Duration,
    peak_growth_kib: u64,
    rss_after_kib: u64,
}

async fn measure_pull(daemon: &Daemon, image: &str, what: &str) -> Measured {
    reset_peak(daemon);
    let before = status_kib(daemon, "VmRSS");
    let (result, elapsed) = pull_within(daemon, image, None, HUNG).await;
    let peak = status_kib(daemon, "VmHWM");
    let after = status_kib(daemon, "VmRSS");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{what}: pull ended after {:.2} s; daemon VmRSS {} MiB before, peak (VmHWM) {} MiB (+{} MiB), {} MiB after; result: {result:?}",
        elapsed.as_secs_f64(),
        before >> 10,
        peak >> 10,
        growth >> 10,
        after >> 10,
    );
    let result = result.unwrap_or_else(|| panic!("{what}: the pull still runs after {HUNG:?}"));
    Measured {
        result,
        elapsed,
        peak_growth_kib: growth,
        rss_after_kib: after,
    }
}

#[track_caller]
fn assert_small_and_quick(m: &Measured, what: &str) {
    assert!(
        m.peak_growth_kib < RSS_SLACK_KIB,
        "{what}: the daemon grew by {} MiB at its peak ({} MiB now)",
        m.peak_growth_kib >> 10,
        m.rss_after_kib >> 10
    );
    assert!(
        m.elapsed < Duration::from_secs(5),
        "{what}: took {:?}",
        m.elapsed
    );
}

/// 404 and 500 answers whose bodies are 1.5 GiB of zeros, with and without a length:
/// the pull fails as the status says, and the daemon reads a few KiB of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_body_is_not_read_whole() {
    let len = 3 * GIB / 2;
    let hostile = HostileRegistry::start(|_| {
        vec![
            Route::new(
                "GET",
                "/v2/declared/app/manifests/",
                Reply::body(
                    404,
                    "application/json",
                    Body::Zeros {
                        len,
                        declared: true,
                    },
                ),
            ),
            Route::new(
                "GET",
                "/v2/streamed/app/manifests/",
                Reply::body(
                    500,
                    "application/json",
                    Body::Zeros {
                        len,
                        declared: false,
                    },
                ),
            ),
        ]
    })
    .await;
    let daemon = Daemon::start().await;

    let m = measure_pull(
        &daemon,
        &format!("{}/declared/app:v1", hostile.host),
        "404 with a 1.5 GiB body",
    )
    .await;
    let err = m.result.as_ref().unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("declared/app:v1"), "{err:?}");
    assert_small_and_quick(&m, "404 with a 1.5 GiB body");

    let m = measure_pull(
        &daemon,
        &format!("{}/streamed/app:v1", hostile.host),
        "500 with a 1.5 GiB body of no stated length (retried)",
    )
    .await;
    let err = m.result.as_ref().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&hostile.host), "{err:?}");
    assert_small_and_quick(&m, "500 with a 1.5 GiB body");
    eprintln!(
        "the hostile registry got {} MiB of body into its sockets in all; {} requests",
        hostile.body_bytes_sent() / MIB,
        hostile.seen().len()
    );
}

/// A Bearer challenge whose token service answers 1.5 GiB (with a length, refused before
/// reading; without, counted while reading): a clear error naming the token service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_answer_is_refused() {
    let len = 3 * GIB / 2;
    let hostile = HostileRegistry::start(|host| {
        let challenge =
            |name: &str| format!(r#"Bearer realm="http://{host}/token/{name}",service="hostile""#);
        let manifest = Reply::status(404);
        vec![
            Route::new("GET", "/v2/declared/", manifest.clone()).challenged(&challenge("declared")),
            Route::new("GET", "/v2/streamed/", manifest).challenged(&challenge("streamed")),
            Route::new(
                "GET",
                "/token/declared",
                Reply::body(
                    200,
                    "application/json",
                    Body::Zeros {
                        len,
                        declared: true,
                    },
                ),
            ),
            Route::new(
                "GET",
                "/token/streamed",
                Reply::body(
                    200,
                    "application/json",
                    Body::Zeros {
                        len,
                        declared: false,
                    },
                ),
            ),
        ]
    })
    .await;
    let daemon = Daemon::start().await;

    for name in ["declared", "streamed"] {
        let what = format!("a token answer of 1.5 GiB ({name} length)");
        let m = measure_pull(&daemon, &format!("{}/{name}/app:v1", hostile.host), &what).await;
        let err = m.result.as_ref().unwrap_err();
        assert!(
            err.message().contains("token service") && err.message().contains("/token/"),
            "{what}: {err:?}"
        );
        assert_ne!(err.code(), Code::Ok);
        assert_small_and_quick(&m, &what);
        assert_eq!(
            hostile.seen_for("/token/").len(),
            if name == "declared" { 1 } else { 2 },
            "asked once"
        );
    }
    eprintln!(
        "the hostile registry got {} MiB of body into its sockets in all",
        hostile.body_bytes_sent() / MIB
    );
}

/// Error bodies and token services that stop halfway (the connection kept open) or never
/// answer: each pull ends by itself within the progress timeout and some slack, with an
/// error that says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_error_bodies_and_token_services_end_the_pull() {
    let timeout = 2u64;
    let hostile = HostileRegistry::start(|host| {
        let challenge =
            |name: &str| format!(r#"Bearer realm="http://{host}/token/{name}",service="hostile""#);
        vec![
            // 11 bytes of a 1000-byte 404 body, then nothing.
            Route::new(
                "GET",
                "/v2/stalled404/",
                Reply::body(
                    404,
                    "application/json",
                    Body::Stall {
                        sent: br#"{"errors":["#.to_vec(),
                        declared: 1000,
                    },
                ),
            ),
            Route::new("GET", "/v2/silent/", Reply::status(404)).challenged(&challenge("silent")),
            Route::new("GET", "/token/silent", Reply::Silence),
            Route::new("GET", "/v2/halfway/", Reply::status(404)).challenged(&challenge("halfway")),
            Route::new(
                "GET",
                "/token/halfway",
                Reply::body(
                    200,
                    "application/json",
                    Body::Stall {
                        sent: br#"{"token":""#.to_vec(),
                        declared: 1000,
                    },
                ),
            ),
        ]
    })
    .await;
    let daemon = Daemon::start_with(Options {
        config: format!("[images]\nprogress_timeout_secs = {timeout}\n"),
        ..Default::default()
    })
    .await;
    let bound = Duration::from_secs(timeout + 3);

    let cases: [(&str, &str, Code, &[&str]); 3] = [
        (
            "a 404 body that stalls after 11 bytes",
            "stalled404",
            Code::NotFound,
            &["stalled404/app:v1", "not found"],
        ),
        (
            "a token service that never answers",
            "silent",
            Code::Unavailable,
            &[
                "token service",
                "/token/silent",
                "did not answer within 2 s",
            ],
        ),
        (
            "a token answer that stalls after 10 bytes",
            "halfway",
            Code::Unavailable,
            &[
                "token service",
                "/token/halfway",
                "did not answer within 2 s",
            ],
        ),
    ];
    for (what, repo, code, words) in cases {
        let (result, elapsed) = pull_within(
            &daemon,
            &format!("{}/{repo}/app:v1", hostile.host),
            None,
            HUNG,
        )
        .await;
        eprintln!(
            "{what}: the pull ended after {:.2} s (progress timeout {timeout} s): {result:?}",
            elapsed.as_secs_f64()
        );
        let err = result
            .unwrap_or_else(|| panic!("{what}: the pull still runs after {HUNG:?}"))
            .unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        for word in words {
            assert!(err.message().contains(word), "{what}: {word:?} in {err:?}");
        }
        assert!(elapsed < bound, "{what}: took {elapsed:?}");
    }
}

/// A push with credentials to a registry whose upload `Location` names another port: the
/// blobs go there (the registry may put its uploads where it likes), the credentials do
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_credentials_stay_with_the_registry() {
    let registry = Registry::start().await;
    let source = registry.push_busybox("src/app").await;
    let elsewhere = HostileRegistry::start(|_| {
        vec![
            Route::new("PUT", "/upload/", Reply::status(201)),
            Route::new("PATCH", "/upload/", Reply::status(202)),
        ]
    })
    .await;
    let location = format!("http://{}/upload/evil", elsewhere.host);
    let hostile = HostileRegistry::start(|_| {
        let basic = r#"Basic realm="hostile""#;
        vec![
            Route::new("HEAD", "/v2/app/blobs/", Reply::status(404)).challenged(basic),
            Route::new(
                "POST",
                "/v2/app/blobs/uploads/",
                Reply::status(202).with_header("Location", &location),
            )
            .challenged(basic),
            Route::new("PUT", "/v2/app/manifests/", Reply::status(201)).challenged(basic),
        ]
    })
    .await;
    let daemon = Daemon::start().await;
    daemon.ctl(["pull", &source]).ok();
    let target = format!("{}/app:v1", hostile.host);
    daemon.ctl(["tag", &source, &target]).ok();

    let started = Instant::now();
    let push = daemon.ctl(["push", "--creds", "pusher:secret", &target]);
    let to_registry = hostile
        .seen()
        .iter()
        .filter(|s| s.authorization.is_some())
        .count();
    let uploads = elsewhere.seen();
    let leaked: Vec<_> = uploads
        .iter()
        .filter(|s| s.authorization.is_some())
        .collect();
    eprintln!(
        "push ({}) after {:.2} s: {} requests to the registry, {to_registry} with credentials; {} to the upload location on another port, {} with credentials: {leaked:?}",
        if push.status.success() {
            "succeeded".to_string()
        } else {
            push.stderr.trim().to_string()
        },
        started.elapsed().as_secs_f64(),
        hostile.seen().len(),
        uploads.len(),
        leaked.len(),
    );
    assert!(
        hostile
            .seen()
            .iter()
            .any(|s| s.authorization.as_deref() == Some("Basic cHVzaGVyOnNlY3JldA==")),
        "the registry itself got the credentials: {:?}",
        hostile.seen()
    );
    assert!(
        uploads.iter().any(|s| s.method == "PUT"),
        "the blobs went to the location: {uploads:?} {push:?}"
    );
    assert!(
        leaked.is_empty(),
        "credentials sent to another port: {leaked:?}"
    );
}

/// A manifest request with credentials answered by a redirect to another port: the
/// redirect is followed (registries send blobs to storage elsewhere), the credentials
/// are not (reqwest drops Authorization when scheme, host or port change; this guards
/// that behaviour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_leave_credentials_behind() {
    let elsewhere = HostileRegistry::start(|_| vec![]).await;
    let target = format!("http://{}/storage/manifest", elsewhere.host);
    let hostile = HostileRegistry::start(|_| {
        vec![
            Route::new(
                "GET",
                "/v2/redirected/app/manifests/",
                Reply::status(307).with_header("Location", &target),
            )
            .challenged(r#"Basic realm="hostile""#),
        ]
    })
    .await;
    let daemon = Daemon::start().await;
    let auth = AuthConfig {
        username: "puller".into(),
        password: "secret".into(),
        ..Default::default()
    };
    let (result, elapsed) = pull_within(
        &daemon,
        &format!("{}/redirected/app:v1", hostile.host),
        Some(auth),
        HUNG,
    )
    .await;
    let followed = elsewhere.seen();
    eprintln!(
        "redirected pull ended after {:.2} s: {result:?}; the other port saw {followed:?}",
        elapsed.as_secs_f64()
    );
    assert_eq!(
        result.expect("the pull ended").unwrap_err().code(),
        Code::NotFound
    );
    assert!(
        hostile.seen().iter().any(|s| s.authorization.is_some()),
        "the registry itself got the credentials"
    );
    assert!(!followed.is_empty(), "the redirect was followed");
    assert!(
        followed.iter().all(|s| s.authorization.is_none()),
        "credentials followed the redirect: {followed:?}"
    );
}

/// A pull whose layer download stalls holds nothing that another pull or an image
/// removal needs: both finish within a few seconds while it waits for its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pull_blocks_no_other_pull() {
    let registry = Registry::start().await;
    let healthy = registry.push_busybox("healthy/app").await;
    let removable = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("etc/removable", b"gone soon\n", 0o644)
                .finish(),
            Compression::Gzip,
        )
        .build();
    registry.push("removable/app", "v1", &removable).await;
    let removable_ref = registry.reference("removable/app", "v1");

    // An image whose manifest and config come at once and whose layer (shared with no
    // other image) stops after 100 bytes, the connection kept open.
    let stalled = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("etc/stalled", b"never arrives\n", 0o644)
                .finish(),
            Compression::None,
        )
        .build();
    let layer = stalled.layers[0].blob.clone();
    let hostile = {
        let (manifest, config) = (stalled.manifest.clone(), stalled.config.clone());
        HostileRegistry::start(move |_| {
            vec![
                Route::new(
                    "GET",
                    "/v2/stalled/app/manifests/",
                    Reply::body(
                        200,
                        &manifest.media_type,
                        Body::Bytes(manifest.bytes.clone()),
                    ),
                ),
                Route::new(
                    "GET",
                    &format!("/v2/stalled/app/blobs/{}", config.digest),
                    Reply::body(200, "application/octet-stream", Body::Bytes(config.bytes)),
                ),
                Route::new(
                    "GET",
                    &format!("/v2/stalled/app/blobs/{}", layer.digest),
                    Reply::body(
                        200,
                        "application/octet-stream",
                        Body::Stall {
                            sent: layer.bytes[..100].to_vec(),
                            declared: layer.bytes.len() as u64,
                        },
                    ),
                ),
            ]
        })
        .await
    };
    let daemon = Daemon::start_with(Options {
        config: "[images]\nprogress_timeout_secs = 60\n".into(),
        ..Default::default()
    })
    .await;
    daemon.ctl(["pull", &removable_ref]).ok();

    let stalled_pull = {
        let mut client = images(&daemon).await;
        let image = format!("{}/stalled/app:v1", hostile.host);
        tokio::spawn(async move {
            client
                .pull_image(PullImageRequest {
                    image: spec(&image),
                    ..Default::default()
                })
                .await
        })
    };
    assert!(
        hostile
            .wait_for(&stalled.layers[0].blob.digest, Duration::from_secs(20))
            .await,
        "the stalled pull reached its layer: {:?}",
        hostile.seen()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stalled_pull.is_finished(), "the stalled pull is stalled");

    let (result, pull_time) = pull_within(&daemon, &healthy, None, Duration::from_secs(30)).await;
    eprintln!(
        "while another pull stalls: pulling {healthy} took {:.2} s: {result:?}",
        pull_time.as_secs_f64()
    );
    let started = Instant::now();
    let removal = tokio::time::timeout(
        Duration::from_secs(30),
        images(&daemon).await.remove_image(RemoveImageRequest {
            image: spec(&removable_ref),
        }),
    )
    .await;
    let removal_time = started.elapsed();
    eprintln!(
        "while another pull stalls: removing {removable_ref} took {:.2} s: {removal:?}",
        removal_time.as_secs_f64()
    );
    let still_stalled = !stalled_pull.is_finished();
    stalled_pull.abort();
    drop(hostile);

    assert!(
        still_stalled,
        "the stalled pull was still waiting throughout"
    );
    let image = result
        .unwrap_or_else(|| panic!("the healthy pull still runs after 30 s"))
        .unwrap();
    assert!(!image.is_empty());
    assert!(
        pull_time < Duration::from_secs(5),
        "the healthy pull took {pull_time:?}"
    );
    removal
        .unwrap_or_else(|_| panic!("the removal still waits after 30 s"))
        .unwrap();
    assert!(
        removal_time < Duration::from_secs(5),
        "the removal took {removal_time:?}"
    );
}
