//! End to end: the daemon's start-up, shutdown and the RPCs of the foundation (Version,
//! Status, RuntimeConfig, health, UNIMPLEMENTED for the rest), through the generated
//! client and through `stratactl`.

mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::{Daemon, Options, ctl_at, stratad_refuses};
use nix::sys::signal::Signal;
use strata_api::cri::{self, CgroupDriver, RuntimeConfigRequest, StatusRequest, VersionRequest};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_via_client_and_ctl() {
    let daemon = Daemon::start().await;
    let v = daemon
        .runtime()
        .await
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "strata");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let table = daemon.ctl(["version"]);
    let table = table.ok();
    assert!(table.contains("RuntimeName:  strata\n"), "{table}");
    assert!(table.contains("RuntimeApiVersion:  v1\n"), "{table}");

    let json: serde_json::Value =
        serde_json::from_str(daemon.ctl(["version", "-o", "json"]).ok()).unwrap();
    assert_eq!(json["runtimeName"], "strata");
    assert_eq!(json["runtimeApiVersion"], "v1");
    assert_eq!(json["runtimeVersion"], env!("CARGO_PKG_VERSION"));

    let yaml = daemon.ctl(["-o", "yaml", "version"]);
    assert!(yaml.ok().contains("runtimeName: strata"), "{}", yaml.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_conditions_and_verbose_info() {
    let mut daemon = Daemon::prepare();
    let config = format!("[cni]\nconf_dir = {:?}\n", daemon.path("no-cni"));
    daemon
        .launch(Options {
            config,
            ..Options::default()
        })
        .await;
    let mut client = daemon.runtime().await;

    let brief = client
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(
        brief.info.is_empty(),
        "info without verbose: {:?}",
        brief.info
    );
    let conditions = brief.status.unwrap().conditions;
    let find = |name: &str| {
        conditions
            .iter()
            .find(|c| c.r#type == name)
            .unwrap_or_else(|| panic!("no {name} condition in {conditions:?}"))
            .clone()
    };
    assert!(find("RuntimeReady").status);
    let network = find("NetworkReady");
    assert!(
        !network.status,
        "the daemon has no CNI network config, so NetworkReady must be false"
    );
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(
        network.message.contains("cni config uninitialized") && network.message.contains("no-cni"),
        "{network:?}"
    );
    assert_eq!(brief.runtime_handlers.len(), 1);
    assert_eq!(brief.runtime_handlers[0].name, "");

    let verbose = client
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&verbose.info["config"]).unwrap();
    assert_eq!(config["root"], daemon.root.to_str().unwrap());
    assert_eq!(config["socket"], daemon.socket.to_str().unwrap());

    let table = daemon.ctl(["info"]);
    let table = table.ok();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("CONDITION"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("RuntimeReady") && l.contains("true")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("NetworkReady") && l.contains("false")),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(daemon.ctl(["info", "-o", "json"]).ok()).unwrap();
    assert_eq!(json["status"]["conditions"][0]["type"], "RuntimeReady");
    assert_eq!(json["status"]["conditions"][0]["status"], true);
    assert_eq!(
        json["config"]["state_dir"],
        daemon.state_dir.to_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_names_the_cgroupfs_driver() {
    let daemon = Daemon::start().await;
    let config = daemon
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        config.linux.unwrap().cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_service_reports_serving() {
    let daemon = Daemon::start().await;
    let mut health = HealthClient::new(daemon.channel().await);
    for service in ["", "runtime.v1.RuntimeService", "runtime.v1.ImageService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_rpcs_say_so_and_stream_lists_answer() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime().await;

    // Checkpoints need CRIU, which this project cannot test here.
    let status = rt
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: "0123456789ab".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // The Stream* list calls answer as their List calls do: nothing on a new node.
    let mut containers = rt
        .stream_containers(cri::StreamContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(containers.message().await.unwrap().is_none());
    let mut metrics = rt
        .stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(metrics.message().await.unwrap().is_none());
    // The kubelet's pod CIDR is taken; one that is not a CIDR is refused.
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    rt.update_runtime_config(update("10.244.1.0/24,fd00:10:244:1::/64"))
        .await
        .unwrap();
    let bad = rt
        .update_runtime_config(update("10.244.1.0"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    // The daemon is unharmed and still answers.
    rt.version(VersionRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_shut_down_and_remove_the_socket() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut daemon = Daemon::start().await;
        assert!(daemon.socket.exists());
        let status = daemon.stop_with(signal).await;
        assert!(
            status.success(),
            "{signal}: exit {status}\n{}",
            daemon.logs()
        );
        assert!(!daemon.socket.exists(), "{signal}: socket left behind");
        assert!(daemon.logs().contains("shutting down"), "{}", daemon.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_its_directories_with_tight_modes() {
    let daemon = Daemon::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.root), 0o700);
    assert_eq!(mode(&daemon.state_dir), 0o700);
    assert_eq!(
        mode(&daemon.socket),
        0o600,
        "root only unless a group is named"
    );
}

/// `stratactl version` as uid 65534 (nobody), with `groups` as its supplementary groups.
fn ctl_as_nobody(endpoint: &str, groups: Option<&str>) -> common::CtlOutput {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534"]);
    match groups {
        Some(g) => cmd.arg(format!("--groups={g}")),
        None => cmd.arg("--clear-groups"),
    };
    let out = cmd
        .arg(common::bin("stratactl"))
        .args(["--endpoint", endpoint, "version"])
        .env_remove("STRATA_ENDPOINT")
        .output()
        .expect("run setpriv");
    common::CtlOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_for_root_and_the_configured_group_only() {
    // Others may pass through the test's own directory, as through /run.
    let mut daemon = Daemon::prepare();
    std::fs::set_permissions(daemon.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    daemon.launch(Options::default()).await;
    let refused = ctl_as_nobody(&daemon.endpoint(), None);
    let line = refused.failed();
    assert!(
        line.contains("permission denied") && line.contains("root"),
        "{line}"
    );
    drop(daemon);

    // staff (gid 50): its members may connect, nobody else.
    let mut daemon = Daemon::prepare();
    std::fs::set_permissions(daemon.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    daemon
        .launch(Options {
            config: "socket_group = \"staff\"\n".into(),
            ..Default::default()
        })
        .await;
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 50));
    let dir = std::fs::metadata(&daemon.state_dir).unwrap();
    assert_eq!((dir.mode() & 0o777, dir.gid()), (0o710, 50));
    let member = ctl_as_nobody(&daemon.endpoint(), Some("50"));
    assert!(member.ok().contains("strata"), "{member:?}");
    let line = ctl_as_nobody(&daemon.endpoint(), None).failed().to_string();
    assert!(
        line.contains("permission denied") && line.contains("group 50"),
        "{line}"
    );
    // A group that does not exist, or a mode that opens the socket to everyone: refused.
    let bad = stratad_refuses([
        "--config",
        &write_config(&daemon, "g.toml", "socket_group = \"no-such-group\"\n"),
    ]);
    assert!(
        bad.contains("socket_group") && bad.contains("no-such-group"),
        "{bad}"
    );
    let bad = stratad_refuses([
        "--config",
        &write_config(&daemon, "m.toml", "socket_mode = \"0666\"\n"),
    ]);
    assert!(bad.contains("socket_mode"), "{bad}");
}

fn write_config(daemon: &Daemon, name: &str, text: &str) -> String {
    let path = daemon.path(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start().await;
    let other_root = daemon.path("other-root");
    let line = stratad_refuses([
        "--config".as_ref(),
        daemon.path("config.toml").as_os_str(),
        "--root".as_ref(),
        other_root.as_os_str(),
        "--socket".as_ref(),
        daemon.socket.as_os_str(),
    ]);
    assert!(line.contains("in use"), "{line}");
    assert!(line.contains(daemon.socket.to_str().unwrap()), "{line}");

    // Same root, another socket: refused too, naming the root.
    let other_socket = daemon.path("other.sock");
    let line = stratad_refuses([
        "--config".as_ref(),
        daemon.path("config.toml").as_os_str(),
        "--root".as_ref(),
        daemon.root.as_os_str(),
        "--socket".as_ref(),
        other_socket.as_os_str(),
    ]);
    assert!(
        line.contains(daemon.root.to_str().unwrap()) && line.contains("in use"),
        "{line}"
    );
    assert!(!other_socket.exists());

    // The first daemon still serves on its socket.
    daemon.ctl(["version"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced() {
    let mut daemon = Daemon::prepare();
    std::fs::create_dir_all(&daemon.state_dir).unwrap();
    // A socket file with nobody behind it, as a crashed daemon leaves.
    drop(std::os::unix::net::UnixListener::bind(&daemon.socket).unwrap());
    assert!(daemon.socket.exists());

    // Started from the config file's paths alone, over the stale socket.
    daemon
        .launch(Options {
            paths_from_config: true,
            ..Default::default()
        })
        .await;
    assert!(daemon.ctl(["version"]).ok().contains("strata"));
    assert!(
        daemon.logs().contains("replaced a stale socket"),
        "{}",
        daemon.logs()
    );
    assert!(daemon.root.join("stratad.lock").exists());
    assert!(daemon.stop().await.success());
    assert!(!daemon.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file_socket = dir.path().join("from-file.sock");
    let daemon = Daemon::start_with(Options {
        config: format!(
            "socket = {:?}\nlog_level = \"debug\"\n",
            file_socket.to_str().unwrap()
        ),
        ..Default::default()
    })
    .await;
    // The harness passed --socket; the file's socket must not be used.
    assert!(daemon.socket.exists());
    assert!(!file_socket.exists());
    // The file's log level was applied.
    assert!(daemon.logs().contains("DEBUG"), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_json_lines() {
    let mut daemon = Daemon::start_with(Options {
        args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    })
    .await;
    daemon.stop().await;
    let logs = daemon.logs();
    let mut lines = 0;
    for line in logs.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "expected serving and shutdown lines:\n{logs}");
}

#[test]
fn start_up_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    // Each run names its config file and state dir; --root comes from `extra` or defaults.
    let run = |config: &str, extra: &[&std::ffi::OsStr]| {
        let config_path = p("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--config".into(),
            config_path.into(),
            "--state-dir".into(),
            p("run").into(),
        ];
        if !extra.iter().any(|a| *a == "--root") {
            args.extend(["--root".into(), p("root").into()]);
        }
        args.extend(extra.iter().map(|s| s.to_os_string()));
        stratad_refuses(args)
    };

    // A named config file that does not exist.
    let missing = p("missing.toml");
    let line = stratad_refuses(["--config".as_ref(), missing.as_os_str()]);
    assert!(line.contains(missing.to_str().unwrap()), "{line}");
    assert!(line.contains("No such file"), "{line}");

    // Invalid TOML, an unknown key, a wrong type, a relative path.
    let line = run("root = [unterminated", &[]);
    assert!(
        line.contains("config.toml") && line.contains("line 1"),
        "{line}"
    );
    let line = run("root = \"/tmp/x\"\ncolour = \"blue\"\n", &[]);
    assert!(line.contains("colour") && line.contains("line 2"), "{line}");
    let line = run("log_format = 7", &[]);
    assert!(line.contains("log_format = 7"), "{line}");
    let line = run("", &["--socket".as_ref(), "relative.sock".as_ref()]);
    assert!(
        line.contains("socket") && line.contains("absolute"),
        "{line}"
    );

    // An unwritable root: its parent is a regular file.
    std::fs::write(p("file"), b"").unwrap();
    let bad_root = p("file/root");
    let line = run("", &["--root".as_ref(), bad_root.as_os_str()]);
    assert!(
        line.contains(bad_root.to_str().unwrap()) && line.contains("Not a directory"),
        "{line}"
    );

    // An unwritable socket location.
    let bad_socket = p("file/strata.sock");
    let line = run("", &["--socket".as_ref(), bad_socket.as_os_str()]);
    assert!(line.contains(bad_socket.to_str().unwrap()), "{line}");

    // Something that is not a socket where the socket should go is left alone.
    let not_socket = p("regular-file.sock");
    std::fs::write(&not_socket, b"keep me").unwrap();
    let line = run("", &["--socket".as_ref(), not_socket.as_os_str()]);
    assert!(line.contains("not a socket"), "{line}");
    assert_eq!(std::fs::read(&not_socket).unwrap(), b"keep me");

    // A bad log level.
    let line = run("", &["--log-level".as_ref(), "loud[".as_ref()]);
    assert!(line.contains("log_level"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing there at all.
    let missing = dir.path().join("nobody.sock");
    let out = ctl_at(&format!("unix://{}", missing.display()), ["version"]);
    let line = out.failed();
    assert!(line.contains(missing.to_str().unwrap()), "{line}");

    // A socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let line = ctl_at(&format!("unix://{}", stale.display()), ["info"])
        .failed()
        .to_string();
    assert!(line.contains("refused"), "{line}");

    // An endpoint form the client does not speak.
    let line = ctl_at("tcp://127.0.0.1:1", ["version"])
        .failed()
        .to_string();
    assert!(line.contains("unix://"), "{line}");

    // A listener that accepts but never answers: the timeout is reported.
    let hung = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
    let started = std::time::Instant::now();
    let out = ctl_at(
        &format!("unix://{}", hung.display()),
        ["--timeout", "300ms", "version"],
    );
    let line = out.failed();
    assert!(line.contains("no answer within"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_and_stopping() {
    let mut daemon = Daemon::prepare();
    let path = daemon.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    daemon
        .launch(Options {
            env: vec![
                ("NOTIFY_SOCKET".into(), path.display().to_string()),
                // WatchdogSec=200ms: a ping every 100 ms.
                ("WATCHDOG_USEC".into(), "200000".into()),
            ],
            ..Default::default()
        })
        .await;
    let next = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // READY once the socket serves (the harness saw it serve before this point).
    assert_eq!(next(), "READY=1");
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    let three = started.elapsed();
    assert!(three < Duration::from_millis(900), "3 pings took {three:?}");
    daemon.stop_with(Signal::SIGTERM).await;
    let mut rest = Vec::new();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.contains(&"STOPPING=1".to_string()), "{rest:?}");
    // A watchdog meant for another process is not ours to feed.
    let mut other = Daemon::prepare();
    let path = other.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    other
        .launch(Options {
            env: vec![
                ("NOTIFY_SOCKET".into(), path.display().to_string()),
                ("WATCHDOG_USEC".into(), "200000".into()),
                ("WATCHDOG_PID".into(), "1".into()),
            ],
            ..Default::default()
        })
        .await;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        sock.recv(&mut buf).is_err(),
        "no WATCHDOG=1 for pid 1's watchdog"
    );
}
