//! End to end: the remote API (TCP, TLS 1.3, mutual TLS) across a real network boundary.
//! Agents run in network namespaces of their own, joined by veth pairs to a client
//! namespace, from where `stratactl` drives them; certificates are made by the test.

mod common;

use std::{
    io::{Read as _, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{
    CtlOutput, Daemon, Options, bin,
    oci::{Compression, ImageBuilder, busybox_layer, layout_archive},
    pki::{Ca, Pair},
};
use nix::sys::signal::Signal;

/// Network namespaces `<prefix>-c` (the client's) and one per agent, each agent's joined to
/// the client's by a veth pair: agent `n` is 10.231.n.2, the client 10.231.n.1 on that link.
struct Netns {
    prefix: String,
    agents: usize,
}

impl Netns {
    fn new(agents: usize) -> Netns {
        let prefix = format!("stt-rm-{}-{}", std::process::id(), unique());
        let netns = Netns { prefix, agents };
        ip(&["netns", "add", &netns.client()]);
        ip(&["-n", &netns.client(), "link", "set", "lo", "up"]);
        for n in 1..=agents {
            let agent = netns.agent(n);
            ip(&["netns", "add", &agent]);
            ip(&["-n", &agent, "link", "set", "lo", "up"]);
            let (here, there) = (format!("sttc{n}"), format!("stta{n}"));
            ip(&[
                "link",
                "add",
                &here,
                "netns",
                &netns.client(),
                "type",
                "veth",
                "peer",
                "name",
                &there,
                "netns",
                &agent,
            ]);
            ip(&[
                "-n",
                &netns.client(),
                "addr",
                "add",
                &format!("10.231.{n}.1/24"),
                "dev",
                &here,
            ]);
            ip(&["-n", &netns.client(), "link", "set", &here, "up"]);
            ip(&[
                "-n",
                &agent,
                "addr",
                "add",
                &format!("10.231.{n}.2/24"),
                "dev",
                &there,
            ]);
            ip(&["-n", &agent, "link", "set", &there, "up"]);
        }
        netns
    }

    fn client(&self) -> String {
        format!("{}-c", self.prefix)
    }

    fn agent(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }
}

impl Drop for Netns {
    /// The veths go with their namespaces.
    fn drop(&mut self) {
        let mut names = vec![self.client()];
        names.extend((1..=self.agents).map(|n| self.agent(n)));
        for name in names {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

fn unique() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

#[track_caller]
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The certificates of a fleet: its CA, and clients of each kind.
struct Fleet {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    /// May do anything.
    orchestrator: Pair,
    /// OU=observers: read-only.
    dashboard: Pair,
    expired: Pair,
    /// Signed by another CA.
    intruder: Pair,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("fleet CA");
        let ca_file = ca.write(&dir.path().join("ca.crt"));
        let orchestrator = ca.client(dir.path(), "orchestrator", "orchestrator", None);
        let dashboard = ca.client(dir.path(), "dashboard", "dashboard", Some("observers"));
        let expired = ca.expired_client(dir.path(), "expired", "old-timer");
        let intruder = Ca::new("another CA").client(dir.path(), "intruder", "orchestrator", None);
        Fleet {
            dir,
            ca,
            ca_file,
            orchestrator,
            dashboard,
            expired,
            intruder,
        }
    }

    /// The `[remote]` section of agent `n` (its server certificate made here).
    fn agent_config(&self, n: usize) -> String {
        let address = format!("10.231.{n}.2");
        let server = self
            .ca
            .server(self.dir.path(), &format!("agent-{n}"), &[&address]);
        format!(
            "[remote]\nlisten = \"{address}:10010\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nread_only = [\"OU=observers\"]\n",
            server.cert, server.key, self.ca_file
        )
    }
}

/// `stratactl` in the client's namespace against agent `n`, as `who` (no certificate:
/// `None`), trusting `ca`.
fn remote_ctl(netns: &Netns, n: usize, ca: &Path, who: Option<&Pair>, args: &[&str]) -> CtlOutput {
    let mut cmd = remote_command(netns, n, ca, who, args);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.stdin(Stdio::null()).output().expect("run stratactl");
    CtlOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn remote_command(
    netns: &Netns,
    n: usize,
    ca: &Path,
    who: Option<&Pair>,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", Netns::path(&netns.client()).display()))
        .arg(bin("stratactl"))
        .args(["--endpoint", &format!("https://10.231.{n}.2:10010")])
        .arg("--cacert")
        .arg(ca)
        .args(["--timeout", "20s"]);
    if let Some(pair) = who {
        cmd.arg("--cert")
            .arg(&pair.cert)
            .arg("--key")
            .arg(&pair.key);
    }
    cmd.args(args)
        .env_remove("STRATA_ENDPOINT")
        .env_remove("STRATA_CERT")
        .env_remove("STRATA_KEY")
        .env_remove("STRATA_CACERT");
    cmd
}

async fn agent(netns: &Netns, fleet: &Fleet, n: usize) -> Daemon {
    Daemon::start_with(Options {
        config: fleet.agent_config(n),
        netns: Some(Netns::path(&netns.agent(n))),
        ..Default::default()
    })
    .await
}

fn write_json(dir: &Path, name: &str, value: serde_json::Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path.display().to_string()
}

/// What the client's namespace gets back for `bytes` sent to agent `n`'s port, in a
/// thread that enters that namespace.
fn raw_exchange(netns: &Netns, n: usize, bytes: &'static [u8]) -> std::io::Result<Vec<u8>> {
    let path = Netns::path(&netns.client());
    std::thread::spawn(move || {
        let ns = std::fs::File::open(path)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut tcp = std::net::TcpStream::connect(format!("10.231.{n}.2:10010"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.write_all(bytes)?;
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got);
        Ok(got)
    })
    .join()
    .expect("the probe thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_are_driven_over_mutual_tls_from_another_namespace() {
    let netns = Netns::new(2);
    let fleet = Fleet::new();
    let agents = [
        agent(&netns, &fleet, 1).await,
        agent(&netns, &fleet, 2).await,
    ];
    let dir = fleet.dir.path();
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .build();
    let archive = dir.join("busybox.tar");
    std::fs::write(
        &archive,
        layout_archive(&image, "fleet.test/busybox:v1", &[]),
    )
    .unwrap();
    let archive = archive.display().to_string();
    let ca = fleet.ca_file.as_path();
    let orchestrator = Some(&fleet.orchestrator);
    let dashboard = Some(&fleet.dashboard);

    let mut containers = Vec::new();
    for n in 1..=2 {
        let v = remote_ctl(&netns, n, ca, orchestrator, &["version"]);
        assert!(v.ok().contains("RuntimeName:  strata"), "{v:?}");
        // Images travel to the agent over the connection: it cannot reach any registry.
        remote_ctl(&netns, n, ca, orchestrator, &["import", &archive]).ok();
        let pod_config = write_json(
            dir,
            &format!("pod-{n}.json"),
            serde_json::json!({"metadata": {"name": format!("remote-{n}"), "namespace": "fleet", "uid": format!("u{n}")}}),
        );
        let container_config = write_json(
            dir,
            &format!("c-{n}.json"),
            serde_json::json!({
                "metadata": {"name": "sleeper"},
                "image": {"image": "fleet.test/busybox:v1"},
                "command": ["/bin/sh", "-c", "exec sleep 1000"],
                "envs": [{"key": "PATH", "value": "/bin"}],
            }),
        );
        let pod = remote_ctl(&netns, n, ca, orchestrator, &["runp", &pod_config])
            .ok()
            .trim()
            .to_string();
        let id = remote_ctl(
            &netns,
            n,
            ca,
            orchestrator,
            &["create", &pod, &container_config, &pod_config],
        )
        .ok()
        .trim()
        .to_string();
        remote_ctl(&netns, n, ca, orchestrator, &["start", &id]).ok();
        containers.push((pod, id));
    }
    // Each agent runs its own container, and only that.
    for (n, (_, id)) in (1..=2).zip(&containers) {
        let ps = remote_ctl(&netns, n, ca, dashboard, &["ps", "-q"]);
        assert_eq!(ps.ok().trim(), id.as_str(), "agent {n}");
    }
    let hello = remote_ctl(
        &netns,
        1,
        ca,
        orchestrator,
        &["exec", "-s", &containers[0].1, "sh", "-c", "echo hello"],
    );
    assert_eq!(hello.ok().trim(), "hello");

    // The refusals, all against agent 1.
    let id = containers[0].1.clone();
    let denied = remote_ctl(&netns, 1, ca, dashboard, &["stop", &id]);
    let line = denied.failed();
    println!("read-only: {line}");
    assert!(line.contains("dashboard may only read"), "{line}");
    let denied = remote_ctl(&netns, 1, ca, dashboard, &["pull", "fleet.test/other:v1"]);
    assert!(denied.failed().contains("may only read"), "{denied:?}");
    let denied = remote_ctl(
        &netns,
        1,
        ca,
        dashboard,
        &["exec", "-s", &id, "sh", "-c", "true"],
    );
    assert!(denied.failed().contains("may only read"), "{denied:?}");
    let anonymous = remote_ctl(&netns, 1, ca, None, &["ps"]);
    println!("no certificate: {}", anonymous.failed());
    assert!(
        anonymous.failed().contains("client certificate"),
        "{anonymous:?}"
    );
    for (who, why, told) in [
        (&fleet.expired, "certificate expired", "CertificateExpired"),
        (&fleet.intruder, "UnknownIssuer", "UnknownCA"),
    ] {
        let refused = remote_ctl(&netns, 1, ca, Some(who), &["ps"]);
        let line = refused.failed();
        println!("{why}: the client says {line}");
        assert!(
            line.contains("refused this client's certificate") && line.contains(told),
            "{line}"
        );
        // The server sends its alert before it writes the log line, so the
        // client can hear the refusal a moment before the line is there.
        let logged = |log: &str| {
            log.lines().any(|l| {
                l.contains("refusing a remote connection")
                    && l.contains("10.231.1.1")
                    && l.contains(why)
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut log = agents[0].logs();
        while !logged(&log) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            log = agents[0].logs();
        }
        assert!(logged(&log), "{why} not logged with the peer:\n{log}");
    }
    // A plain-text HTTP/2 client gets its connection closed, without an answer.
    let got = raw_exchange(&netns, 1, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    assert!(got.is_empty(), "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agents[0]
        .logs()
        .contains("plain-text HTTP/2 on the TLS port")
    {
        assert!(Instant::now() < deadline, "{}", agents[0].logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing changed: the container runs on, and the refusals were logged with the peer.
    let ps = remote_ctl(&netns, 1, ca, dashboard, &["ps", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(ps.ok()).unwrap();
    assert_eq!(
        listed["containers"][0]["state"], "CONTAINER_RUNNING",
        "{listed}"
    );
    let log = agents[0].logs();
    assert!(
        log.lines().any(|l| l.contains("refused: read-only client")
            && l.contains("identity=dashboard")
            && l.contains("StopContainer")),
        "{log}"
    );
    assert!(log.contains("refused: no client certificate"), "{log}");
    // Mutating calls are logged with who made them.
    remote_ctl(&netns, 1, ca, orchestrator, &["stop", &id]).ok();
    let log = agents[0].logs();
    assert!(
        log.lines().any(|l| l.contains("remote call")
            && l.contains("identity=orchestrator")
            && l.contains("/runtime.v1.RuntimeService/StopContainer")),
        "{log}"
    );
    assert!(
        !log.contains("identity=orchestrator method=/runtime.v1.RuntimeService/ListContainers")
    );
    for (n, (pod, _)) in (1..=2).zip(&containers) {
        remote_ctl(&netns, n, ca, orchestrator, &["rmp", "-f", pod]).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_without_dropping_a_live_client() {
    let netns = Netns::new(1);
    let fleet = Fleet::new();
    let config = fleet.agent_config(1);
    let daemon = agent(&netns, &fleet, 1).await;
    let dir = fleet.dir.path();
    let ca = fleet.ca_file.clone();

    // A live subscriber on the old certificates, waiting for one event.
    let live = remote_command(
        &netns,
        1,
        &ca,
        Some(&fleet.orchestrator),
        &["events", "-o", "json", "-n", "1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // A new CA replaces the old one; the agent's certificate is renewed under it. The same
    // files the config names are rewritten.
    let next = Ca::new("fleet CA 2025");
    let server = next.server(dir, "renewed", &["10.231.1.2"]);
    let orchestrator2 = next.client(dir, "orchestrator2", "orchestrator", None);
    std::fs::copy(&server.cert, dir.join("agent-1.crt")).unwrap();
    std::fs::copy(&server.key, dir.join("agent-1.key")).unwrap();
    let next_ca = next.write(&dir.join("ca-next.crt"));
    std::fs::copy(&next_ca, &ca).unwrap();
    assert!(config.contains("agent-1.crt"), "{config}");

    let sent = Instant::now();
    nix::sys::signal::kill(daemon.pid(), Signal::SIGHUP).unwrap();
    let rotated = loop {
        let v = remote_ctl(&netns, 1, &next_ca, Some(&orchestrator2), &["version"]);
        if v.status.success() {
            break sent.elapsed();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "{v:?}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("SIGHUP to the first call on the new certificates: {rotated:?}");
    let log = daemon.logs();
    let reloaded = log
        .lines()
        .find(|l| l.contains("remote API certificates reloaded"))
        .unwrap_or_else(|| panic!("{log}"));
    println!("{reloaded}");
    // The old CA's clients are refused from now on.
    remote_ctl(&netns, 1, &next_ca, Some(&fleet.orchestrator), &["ps"]).failed();

    // The live client, on the session it opened before, still gets its event.
    let n = {
        let pod_config = write_json(
            dir,
            "pod.json",
            serde_json::json!({"metadata": {"name": "rotated", "namespace": "fleet", "uid": "r1"}}),
        );
        remote_ctl(
            &netns,
            1,
            &next_ca,
            Some(&orchestrator2),
            &["runp", &pod_config],
        )
        .ok()
        .trim()
        .to_string()
    };
    let out = tokio::task::spawn_blocking(move || live.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
    let event: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(event["containerId"], n.as_str());

    // A certificate file that does not load: the old (current) ones stay, and say why.
    std::fs::write(dir.join("agent-1.crt"), "not a certificate").unwrap();
    nix::sys::signal::kill(daemon.pid(), Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon
        .logs()
        .contains("keeping the remote API's old certificates")
    {
        assert!(Instant::now() < deadline, "{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        daemon.logs().contains("agent-1.crt"),
        "the bad file is named"
    );
    let ps = remote_ctl(&netns, 1, &next_ca, Some(&orchestrator2), &["pods", "-q"]);
    assert_eq!(ps.ok().trim(), n);
    remote_ctl(
        &netns,
        1,
        &next_ca,
        Some(&orchestrator2),
        &["rmp", "-f", &n],
    )
    .ok();
}

/// Alphanumerics from a xorshift generator: paths no service has and no test sends twice.
struct Noise(u64);

impl Noise {
    fn new(stream: u64) -> Noise {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Noise((now ^ (stream << 32) ^ u64::from(std::process::id())) | 1)
    }

    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ALPHABET[(self.0 % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }
}

/// What marks the flood's paths: no name of the API has it.
const FLOOD_MARK: &str = "Zqx";

/// Sends up to `count` unary calls on `channel`, 16 at a time and for at most `limit`, each
/// to a path of `len` characters made up here (half of them on a real service's name);
/// how many calls each code answered.
async fn flood(
    channel: &tonic::transport::Channel,
    count: usize,
    len: usize,
    limit: Duration,
) -> std::collections::BTreeMap<String, usize> {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use strata_api::cri::{VersionRequest, VersionResponse};
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..16u64 {
        let (channel, next) = (channel.clone(), Arc::clone(&next));
        workers.spawn(async move {
            let mut noise = Noise::new(worker);
            let mut codes = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let service = match codes.len() % 2 {
                    0 => "/flood.v1.Flood/",
                    _ => "/runtime.v1.RuntimeService/",
                };
                let path = format!(
                    "{service}{FLOOD_MARK}{}",
                    noise.text(len - service.len() - FLOOD_MARK.len())
                );
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                let code = match grpc.ready().await {
                    Err(_) => tonic::Code::Unavailable,
                    Ok(()) => {
                        let path = tonic::codegen::http::uri::PathAndQuery::try_from(path)
                            .expect("an alphanumeric path");
                        let codec =
                            tonic_prost::ProstCodec::<VersionRequest, VersionResponse>::default();
                        let request = tonic::Request::new(VersionRequest::default());
                        match grpc.unary(request, path, codec).await {
                            Ok(_) => tonic::Code::Ok,
                            Err(status) => status.code(),
                        }
                    }
                };
                codes.push(code);
            }
            codes
        });
    }
    let mut seen = std::collections::BTreeMap::new();
    while let Some(codes) = workers.join_next().await {
        for code in codes.expect("a flood worker") {
            *seen.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    seen
}

/// The daemon's resident memory, from /proc.
fn resident_bytes(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// GET /metrics from `port`: the body's length (as the response says it) and its first
/// MiB, so that a page of hundreds of MiB is measured without being read whole.
fn metrics_page(port: u16) -> (usize, String) {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics port");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let head_end = loop {
        let n = tcp.read(&mut chunk).expect("the metrics page");
        assert!(n > 0, "the page ended before its head");
        got.extend_from_slice(&chunk[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while got.len() - head_end < length.min(1 << 20) {
        let n = tcp.read(&mut chunk).expect("the metrics page");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let end = got.len().min(head_end + (1 << 20));
    (
        length,
        String::from_utf8_lossy(&got[head_end..end]).into_owned(),
    )
}

/// Lines of the daemon's log about refused calls.
fn refusal_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("refused:")).collect()
}

/// A read-only client (or one without a certificate) that sends calls to long paths of its
/// own making is refused, and that is all: no label of the metrics page is made of what it
/// sent, the daemon's memory stays where it was, and its log gains a few lines, not one
/// per call, with the suppressed ones counted. On loopback, in the test's own namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_with_long_paths_leave_the_daemon_as_it_was() {
    const CALLS: usize = 2_000;
    const PATH_LEN: usize = 15_000;
    let fleet = Fleet::new();
    let dir = fleet.dir.path();
    let server = fleet.ca.server(dir, "local", &["127.0.0.1"]);
    let (remote_port, metrics_port) = (common::free_port(), common::free_port());
    let daemon = Daemon::start_with(Options {
        config: format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n[remote]\n\
             listen = \"127.0.0.1:{remote_port}\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             read_only = [\"OU=observers\"]\n",
            server.cert, server.key, fleet.ca_file
        ),
        ..Default::default()
    })
    .await;
    let endpoint = format!("https://127.0.0.1:{remote_port}");
    let files = |who: Option<&Pair>| strata_api::TlsFiles {
        ca: Some(fleet.ca_file.clone()),
        cert: who.map(|p| p.cert.clone()),
        key: who.map(|p| p.key.clone()),
    };
    let dashboard = strata_api::connect_with(&endpoint, &files(Some(&fleet.dashboard)))
        .await
        .expect("the read-only client connects");
    let anonymous = strata_api::connect_with(&endpoint, &files(None))
        .await
        .expect("a client without a certificate gets through the handshake");
    // Bounded in time as well as in count: each long path costs the daemon a few ms of
    // HPACK decoding (more in a debug build).
    let limit = Duration::from_secs(150);

    // A first round, so that what any traffic costs (buffers, the connections' tasks) is
    // paid before the measure.
    tokio::join!(
        flood(&dashboard, 50, PATH_LEN, limit),
        flood(&anonymous, 50, PATH_LEN, limit)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = resident_bytes(daemon.pid());
    let log_before = daemon.logs();
    let (page_before, _) = metrics_page(metrics_port);

    let started = Instant::now();
    // Two connections, in parallel: each is decoded on a core of its own.
    let (read_only, no_certificate) = tokio::join!(
        flood(&dashboard, CALLS, PATH_LEN, limit),
        flood(&anonymous, CALLS, PATH_LEN, limit)
    );
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = resident_bytes(daemon.pid());
    let (page_after, page) = metrics_page(metrics_port);
    let log = daemon.logs();
    let added: Vec<&str> = refusal_lines(&log)
        .into_iter()
        .skip(refusal_lines(&log_before).len())
        .collect();
    let log_growth = log.len().saturating_sub(log_before.len());
    println!(
        "calls to {PATH_LEN}-character paths in {took:?}: read-only {read_only:?}, \
         without a certificate {no_certificate:?}"
    );
    println!(
        "daemon RSS {} KiB -> {} KiB; /metrics {page_before} -> {page_after} bytes; \
         {} refusal lines ({log_growth} bytes) added to the log",
        rss_before / 1024,
        rss_after / 1024,
        added.len()
    );

    // Every call sent was refused, and enough were sent in the time given.
    let sent = |codes: &std::collections::BTreeMap<String, usize>, code: &str| {
        assert_eq!(codes.len(), 1, "{codes:?}");
        let n = codes.get(code).copied().unwrap_or_default();
        assert!(n >= CALLS / 2, "{codes:?} within {limit:?}");
        n
    };
    let denied_sent = sent(&read_only, "PermissionDenied");
    sent(&no_certificate, "Unauthenticated");
    assert!(
        page_after < 200_000,
        "the metrics page grew to {page_after} bytes"
    );
    assert!(!page.contains(FLOOD_MARK), "a client's path became a label");
    let denied = page
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "strata_grpc_requests_total{method=\"other\",code=\"PermissionDenied\"} ",
            )
        })
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no refused calls counted in:\n{page}"));
    assert!(denied >= denied_sent + 50, "{denied} refused calls counted");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 8 << 20,
        "the daemon's RSS grew by {} KiB",
        growth / 1024
    );
    // At most 10 lines in each 10 s window the flood touched (the first round may have
    // taken the whole of the first one); both kinds of refusal are logged.
    let windows = took.as_secs() as usize / 10 + 2;
    assert!(
        added.len() <= 10 * windows,
        "{} refusal lines in {took:?}",
        added.len()
    );
    for kind in [
        "refused: read-only client",
        "refused: no client certificate",
    ] {
        assert!(log.contains(kind), "{kind} never logged");
    }
    // Those lines, under 1 KiB each, and little else.
    assert!(
        log_growth < (10 * windows + 16) << 10,
        "the log grew by {log_growth} bytes"
    );
    for line in &added {
        assert!(line.len() < 1024, "a refusal line of {} bytes", line.len());
    }

    // After the window, the next refusal is logged with the count of those left out.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    flood(&dashboard, 1, 200, limit).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let summary = loop {
        let log = daemon.logs();
        if let Some(line) = log
            .lines()
            .skip(log_before.lines().count())
            .find(|l| l.contains("refused:") && l.contains("suppressed="))
        {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no count of suppressed lines");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("{summary}");
    // The daemon still answers.
    assert!(daemon.ctl(["version"]).ok().contains("strata"));
}
