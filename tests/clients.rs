//! End to end with the ecosystem's own clients: the real `crictl` (cri-tools v1.26.1, from
//! `../shared/cri-tools`, installed by tests/run.sh), and a raw HTTP/2 client that sends
//! what Go's gRPC and others send for unix sockets: the socket's path as `:authority`.

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use common::cri::env;
use prost::Message as _;
use strata_api::cri::{VersionRequest, VersionResponse};

/// The real crictl: `CRICTL`, or the one tests/run.sh unpacked into target/cri-tools.
fn crictl_binary() -> PathBuf {
    let path = std::env::var_os("CRICTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cri-tools/crictl")
        });
    assert!(
        path.is_file(),
        "{} is missing: tests/run.sh installs crictl from ../shared/cri-tools (or set CRICTL)",
        path.display()
    );
    path
}

struct Crictl {
    endpoint: String,
    config: PathBuf,
}

impl Crictl {
    fn new(daemon: &common::Daemon) -> Crictl {
        // An empty config file, so that no /etc/crictl.yaml of the machine applies.
        let config = daemon.path("crictl.yaml");
        std::fs::write(&config, "").unwrap();
        Crictl {
            endpoint: daemon.endpoint(),
            config,
        }
    }

    /// Runs crictl and returns its stdout; a failure fails the test with what it said.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(crictl_binary())
            .arg("--config")
            .arg(&self.config)
            .args([
                "--runtime-endpoint",
                &self.endpoint,
                "--image-endpoint",
                &self.endpoint,
            ])
            .args(["--timeout", "30s"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "crictl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.run(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {text}"))
    }
}

/// Writes `value` as JSON to the daemon's test directory; its path.
fn write_json(d: &common::Daemon, name: &str, value: serde_json::Value) -> PathBuf {
    let path = d.path(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_crictl_drives_a_whole_lifecycle() {
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);

    let version = crictl.run(&["version"]);
    assert!(version.contains("RuntimeName:  strata"), "{version}");
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");
    let info = crictl.json(&["info"]);
    assert_eq!(info["status"]["conditions"][0]["type"], "RuntimeReady");

    // Pull through crictl (the harness pulled it once already; pulling again is a no-op
    // that must still answer with the image).
    let pulled = crictl.run(&["pull", &env.image]);
    assert!(
        pulled.contains("Image is up to date for sha256:"),
        "{pulled}"
    );
    let images = crictl.run(&["images"]);
    let (repo, tag) = env.image.rsplit_once(':').unwrap();
    assert!(
        images
            .lines()
            .any(|l| l.starts_with(repo) && l.contains(tag)),
        "{images}"
    );
    let image = crictl.json(&["inspecti", &env.image]);
    assert_eq!(image["status"]["repoTags"][0], env.image.as_str());

    // The configs crictl's documentation uses: no hostname, `linux: {}`.
    let logs = d.path("pod-logs");
    let pod_json = write_json(
        d,
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1,
                         "uid": "hdishd83djaidwnduwk28bcsb"},
            "log_directory": logs.display().to_string(),
            "linux": {}
        }),
    );
    let container_json = write_json(
        d,
        "container.json",
        serde_json::json!({
            "metadata": {"name": "busybox"},
            "image": {"image": env.image},
            "command": ["sh", "-c", "echo started; exec sleep 1000"],
            "log_path": "busybox.0.log",
            "linux": {}
        }),
    );
    let pod_path = pod_json.to_str().unwrap();
    let pod = crictl.run(&["runp", pod_path]).trim().to_string();
    assert_eq!(pod.len(), 64, "{pod}");
    let id = crictl
        .run(&["create", &pod, container_json.to_str().unwrap(), pod_path])
        .trim()
        .to_string();
    crictl.run(&["start", &id]);
    let ps = crictl.run(&["ps"]);
    assert!(ps.contains(&id[..13]) && ps.contains("Running"), "{ps}");

    let out = crictl.run(&["exec", "-s", &id, "sh", "-c", "echo hi; hostname"]);
    let node = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // crictl prints the output, then stderr, each followed by a newline.
    assert_eq!(
        out.trim_end(),
        format!("hi\n{node}"),
        "without a hostname, a pod takes the node's"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !crictl.run(&["logs", &id]).contains("started") {
        assert!(std::time::Instant::now() < deadline, "no log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = crictl.json(&["stats", "-o", "json", &id]);
    assert_eq!(
        stats["stats"][0]["attributes"]["id"],
        id.as_str(),
        "{stats}"
    );
    let inspect = crictl.json(&["inspect", &id]);
    assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING");
    let inspectp = crictl.json(&["inspectp", &pod]);
    assert_eq!(inspectp["status"]["state"], "SANDBOX_READY");
    assert_eq!(inspectp["status"]["metadata"]["name"], "nginx-sandbox");

    crictl.run(&["stop", &id]);
    assert_eq!(
        crictl.json(&["inspect", &id])["status"]["state"],
        "CONTAINER_EXITED"
    );
    crictl.run(&["rm", &id]);
    assert!(!crictl.run(&["ps", "-a", "-q"]).contains(&id));
    crictl.run(&["stopp", &pod]);
    crictl.run(&["rmp", &pod]);
    assert!(crictl.run(&["pods", "-q"]).trim().is_empty());
    crictl.run(&["rmi", &env.image]);
    assert!(!crictl.run(&["images", "-q"]).contains("sha256"));
}

impl Crictl {
    /// Runs crictl with `input` on its stdin; its exit status, stdout and stderr.
    fn run_with_input(
        &self,
        args: &[&str],
        input: &[u8],
    ) -> (std::process::ExitStatus, String, String) {
        use std::io::Write as _;
        // Killed after two minutes: a session that stalls fails the test, not hangs it.
        let mut child = Command::new("timeout")
            .arg("120")
            .arg(crictl_binary())
            .arg("--config")
            .arg(&self.config)
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--timeout", "30s"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Written beside the reading of its output: a command may answer as it reads.
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A pod and a running sleeper container in it, made with crictl; their ids.
    fn sleeper(&self, d: &common::Daemon, image: &str, name: &str) -> (String, String) {
        let pod_json = write_json(
            d,
            &format!("{name}-pod.json"),
            serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
                "linux": {}
            }),
        );
        let container_json = write_json(
            d,
            &format!("{name}-container.json"),
            serde_json::json!({
                "metadata": {"name": name},
                "image": {"image": image},
                "command": ["sh", "-c", "exec sleep 1000"],
                "linux": {}
            }),
        );
        let pod_path = pod_json.to_str().unwrap();
        let pod = self.run(&["runp", pod_path]).trim().to_string();
        let id = self
            .run(&["create", &pod, container_json.to_str().unwrap(), pod_path])
            .trim()
            .to_string();
        self.run(&["start", &id]);
        (pod, id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_crictl_execs_through_the_streaming_server() {
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let (pod, id) = crictl.sleeper(d, &env.image, "streamer");

    // Not `-s`: Exec, a URL, SPDY to the streaming server, stdout and stderr apart.
    let (status, out, err) =
        crictl.run_with_input(&["exec", &id, "sh", "-c", "echo out; echo err >&2"], b"");
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");

    // The exit code comes back through the error stream.
    let (status, _, err) = crictl.run_with_input(&["exec", &id, "sh", "-c", "exit 3"], b"");
    assert!(!status.success());
    assert!(err.contains("exit code 3"), "{err}");

    // stdin (-i) reaches the command; its end is the command's end of file.
    let input = "line one\nline two\n".repeat(2000);
    let (status, out, err) = crictl.run_with_input(
        &["exec", "-i", &id, "sh", "-c", "wc -l; echo done"],
        input.as_bytes(),
    );
    assert!(status.success(), "{status}: {err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["4000", "done"],
        "{out}"
    );

    // Input and output at once, more than every buffer between holds, both whole.
    let big = "0123456789abcdef".repeat(512 << 10);
    let (status, out, err) =
        crictl.run_with_input(&["exec", "-i", &id, "sh", "-c", "cat"], big.as_bytes());
    assert!(status.success(), "{status}: {err}");
    assert!(out == big, "{} of {} bytes came back", out.len(), big.len());

    // Output bigger than a frame and than a pipe arrives whole and in order.
    let (status, out, err) = crictl.run_with_input(
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done",
        ],
        b"",
    );
    assert!(status.success(), "{status}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert_eq!(lines[19999], "line-19999");

    // A stopped container has no exec, and nothing is left of the execs in its cgroup.
    crictl.run(&["stop", &id]);
    let (status, _, err) = crictl.run_with_input(&["exec", &id, "true"], b"");
    assert!(!status.success());
    assert!(err.contains("not running"), "{err}");
    crictl.run(&["rm", &id]);
    crictl.run(&["stopp", &pod]);
    crictl.run(&["rmp", &pod]);
}

/// How a request carries its `:authority`.
#[derive(Debug, Clone, Copy)]
enum Authority<'a> {
    New(&'a str),
    Indexed(u8),
}

/// A client of raw HTTP/2 frames on the daemon's socket.
struct RawClient {
    stream: UnixStream,
    decoder: loona_hpack::Decoder<'static>,
}

/// A frame as read: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

impl RawClient {
    fn connect(daemon: &common::Daemon) -> RawClient {
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        let mut client = RawClient {
            stream,
            decoder: loona_hpack::Decoder::new(),
        };
        client.send(0x4, 0, 0, &[]);
        client
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        self.stream.write_all(&frame).unwrap();
    }

    fn read(&mut self) -> Option<Frame> {
        let mut header = [0u8; 9];
        self.stream.read_exact(&mut header).ok()?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).ok()?;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        Some((header[3], header[4], stream, payload))
    }

    /// One unary call of `path` on `stream`, with `extra` headers and the encoded
    /// `message`; returns the response headers and trailers (decoded) and the body. No
    /// timer of its own: what comes back is the daemon's answer.
    fn unary(
        &mut self,
        stream: u32,
        authority: Authority,
        path: &str,
        extra: &[(&str, &str)],
        message: &[u8],
    ) -> (Vec<(String, String)>, Vec<u8>) {
        let literal = |name: &str, value: &str| {
            let mut out = vec![0x00, name.len() as u8];
            out.extend(name.as_bytes());
            out.push(value.len() as u8);
            out.extend(value.as_bytes());
            out
        };
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.extend(literal(":path", path));
        match authority {
            // With incremental indexing, as Go's encoder sends it the first time.
            Authority::New(value) => {
                let mut field = literal(":authority", value);
                field[0] = 0x40;
                block.extend(field);
            }
            // Then by its index in the dynamic table, which only the front can resolve.
            Authority::Indexed(index) => block.push(0x80 | index),
        }
        block.extend(literal("content-type", "application/grpc"));
        block.extend(literal("te", "trailers"));
        for (name, value) in extra {
            block.extend(literal(name, value));
        }
        self.send(0x1, 0x4, stream, &block);
        let mut data = vec![0];
        data.extend((message.len() as u32).to_be_bytes());
        data.extend(message);
        self.send(0x0, 0x1, stream, &data);

        let (mut headers, mut body) = (Vec::new(), Vec::new());
        while let Some((kind, flags, on, payload)) = self.read() {
            match kind {
                0x4 if flags & 1 == 0 => self.send(0x4, 1, 0, &[]), // ack the server's settings
                0x1 => {
                    for (n, v) in self.decoder.decode(&payload).expect("the server's HPACK") {
                        headers.push((
                            String::from_utf8_lossy(&n).into(),
                            String::from_utf8_lossy(&v).into(),
                        ));
                    }
                    if on == stream && flags & 1 != 0 {
                        break;
                    }
                }
                0x0 if on == stream => {
                    body.extend(payload);
                    if flags & 1 != 0 {
                        break;
                    }
                }
                0x3 if on == stream => panic!("the server reset the stream: {payload:?}"),
                0x7 => panic!("the server closed the connection: {payload:?}"),
                _ => {}
            }
        }
        (headers, body)
    }

    /// One Version call on `stream` with `authority`; returns the response headers and
    /// trailers (decoded), and the response message.
    fn version(
        &mut self,
        stream: u32,
        authority: Authority,
    ) -> (Vec<(String, String)>, Option<VersionResponse>) {
        let message = VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec();
        let (headers, body) = self.unary(
            stream,
            authority,
            "/runtime.v1.RuntimeService/Version",
            &[],
            &message,
        );
        let response = (body.len() > 5).then(|| VersionResponse::decode(&body[5..]).unwrap());
        (headers, response)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_authority_on_the_socket_is_accepted() {
    let daemon = common::Daemon::start().await;
    let socket = daemon.socket.display().to_string();
    let mut client = RawClient::connect(&daemon);
    for (stream, authority) in [
        (1, Authority::New(&socket)),
        (3, Authority::New("")),
        (5, Authority::New("%2Frun%2Fstrata%2Fstrata.sock")),
        (7, Authority::New("localhost")),
        // Four entries later, the first one (the socket's path) is index 62 + 3.
        (9, Authority::Indexed(65)),
    ] {
        let (headers, response) = client.version(stream, authority);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(":status"), Some("200"), "{authority:?}: {headers:?}");
        assert_eq!(get("grpc-status"), Some("0"), "{authority:?}: {headers:?}");
        assert_eq!(
            response.map(|r| r.runtime_name),
            Some("strata".to_string()),
            "{authority:?}"
        );
    }
}

/// A caller's deadline (`grpc-timeout`) is answered DEADLINE_EXCEEDED by the daemon, never
/// CANCELLED (tonic's own answer, which critest's "public image should timeout if
/// requested" refuses). The raw client keeps no timer, so the status is the daemon's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_is_answered_deadline_exceeded() {
    let daemon = common::Daemon::start().await;
    // A registry that accepts connections and never answers: the pull waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let image = format!("{}/silent/app:v1", silent.local_addr().unwrap());
    let message = strata_api::cri::PullImageRequest {
        image: Some(strata_api::cri::ImageSpec {
            image,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let mut client = RawClient::connect(&daemon);
    for (stream, timeout) in [(1, "1m"), (3, "1m"), (5, "200m"), (7, "1S")] {
        let started = std::time::Instant::now();
        let (headers, _) = client.unary(
            stream,
            Authority::New("localhost"),
            "/runtime.v1.ImageService/PullImage",
            &[("grpc-timeout", timeout)],
            &message,
        );
        let status = headers
            .iter()
            .find(|(n, _)| n == "grpc-status")
            .map(|(_, v)| v.as_str());
        assert_eq!(status, Some("4"), "{timeout}: {headers:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{timeout}: {:?}",
            started.elapsed()
        );
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_hostile_streams_lose_their_connection_only() {
    let daemon = common::Daemon::start().await;
    // Not HTTP/2 at all.
    let mut garbage = UnixStream::connect(&daemon.socket).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    assert!(
        garbage.read_to_end(&mut rest).is_ok(),
        "closed, not left hanging"
    );
    // A header block that never ends.
    let mut endless = RawClient::connect(&daemon);
    endless.send(0x1, 0, 1, &[0x83]);
    let closed = (0..40).any(|_| {
        let ok = endless
            .stream
            .write_all(&[0, 0x40, 0, 0x9, 0, 0, 0, 0, 1])
            .is_ok()
            && endless.stream.write_all(&[0x86; 0x4000]).is_ok();
        !ok
    });
    // The daemon closes the connection (EOF, not the read timeout).
    let mut rest = Vec::new();
    let eof = endless.stream.read_to_end(&mut rest);
    assert!(closed || eof.is_ok(), "the connection stayed open: {eof:?}");
    // The daemon and other clients carry on.
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
    let log = daemon.logs();
    assert!(
        log.contains("refusing a client connection") && log.contains("connection preface"),
        "{log}"
    );
    assert!(log.contains("header block over"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_ends_with_its_client() {
    use std::io::BufRead as _;
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let (pod, id) = crictl.sleeper(d, &env.image, "abandoned");
    let mut child = Command::new(crictl_binary())
        .arg("--config")
        .arg(&crictl.config)
        .args(["--runtime-endpoint", &crictl.endpoint])
        .args(["exec", &id, "sh", "-c", "echo ready; exec sleep 7878"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let sleeping = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| c == b"sleep\x007878\x00")
    };
    // "ready" is written by the shell just before it execs sleep: give the exec a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sleeping() {
        assert!(std::time::Instant::now() < deadline, "the command runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client goes away without a word: the command goes with it, and its cgroup leaf.
    child.kill().unwrap();
    child.wait().unwrap();
    let cgroup = format!("{}/pod-{pod}/{id}", d.cgroup_parent);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leaves: Vec<PathBuf> = common::cgroup_dirs(&cgroup)
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("exec-"))
            })
            .collect();
        if !sleeping() && leaves.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left after the client went: sleeping {}, leaves {leaves:?}",
            sleeping()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crictl.run(&["rmp", "-f", &pod]);
}

/// One HTTP/1.1 request to `url` with `headers`; the status line and the response head.
fn http(url: &str, headers: &[&str]) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_urls_are_checked_single_use_and_negotiated() {
    use strata_api::cri::{ExecRequest, runtime_service_client::RuntimeServiceClient};
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let (pod, id) = crictl.sleeper(d, &env.image, "urls");
    let mut rt = RuntimeServiceClient::new(d.channel().await);
    let request = |cmd: &[&str], tty: bool, stderr: bool| ExecRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: false,
        stdout: true,
        stderr,
        ..Default::default()
    };
    // Requests the streaming server could never serve are refused at once.
    for (bad, code) in [
        (request(&[], false, true), tonic::Code::InvalidArgument),
        (request(&["true"], true, true), tonic::Code::InvalidArgument),
        (
            ExecRequest {
                container_id: "nope".into(),
                ..request(&["true"], false, true)
            },
            tonic::Code::NotFound,
        ),
    ] {
        let err = rt.exec(bad).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
    }
    let url = || {
        let mut rt = rt.clone();
        let request = request(&["true"], false, true);
        async move { rt.exec(request).await.unwrap().into_inner().url }
    };
    let spdy = [
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
        "X-Stream-Protocol-Version: v4.channel.k8s.io",
    ];
    // On loopback by default, with a token of 128 bits.
    let first = url().await;
    assert!(first.starts_with("http://127.0.0.1:"), "{first}");
    assert_eq!(first.rsplit('/').next().unwrap().len(), 32, "{first}");
    // A protocol we do not speak: 403, and the ones we do.
    let refused = http(
        &first,
        &[
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
            "X-Stream-Protocol-Version: v9.channel.k8s.io",
        ],
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
        "{refused}"
    );
    // No upgrade asked for: 400.
    let plain = http(
        &url().await,
        &["X-Stream-Protocol-Version: v4.channel.k8s.io"],
    );
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    // A good one switches protocols, once: the same URL again is not found, nor is a
    // made-up one.
    let good = url().await;
    let switched = http(&good, &spdy);
    assert!(switched.starts_with("HTTP/1.1 101"), "{switched}");
    assert!(
        switched
            .to_ascii_lowercase()
            .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{switched}"
    );
    assert!(http(&good, &spdy).starts_with("HTTP/1.1 404"));
    let forged = format!(
        "{}/exec/{}",
        good.rsplit_once("/exec/").unwrap().0,
        "0".repeat(32)
    );
    assert!(http(&forged, &spdy).starts_with("HTTP/1.1 404"));
    crictl.run(&["rmp", "-f", &pod]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_crictl_forwards_a_port_into_the_pod() {
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let pod_json = write_json(
        d,
        "forward-pod.json",
        serde_json::json!({
            "metadata": {"name": "forward", "namespace": "default", "uid": "forward-uid"},
            "linux": {}
        }),
    );
    // An HTTP server on the pod's own loopback only: nothing on the host listens there.
    let container_json = write_json(
        d,
        "forward-container.json",
        serde_json::json!({
            "metadata": {"name": "httpd"},
            "image": {"image": env.image},
            "command": ["sh", "-c",
                "mkdir /www; echo hello-through-the-pod > /www/index.html; \
                 exec /bin/busybox httpd -f -p 127.0.0.1:8080 -h /www"],
            "linux": {}
        }),
    );
    let pod_path = pod_json.to_str().unwrap();
    let pod = crictl.run(&["runp", pod_path]).trim().to_string();
    let id = crictl
        .run(&["create", &pod, container_json.to_str().unwrap(), pod_path])
        .trim()
        .to_string();
    crictl.run(&["start", &id]);
    let local = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut forwarder = Command::new(crictl_binary())
        .arg("--config")
        .arg(&crictl.config)
        .args(["--runtime-endpoint", &crictl.endpoint])
        .args(["port-forward", &pod, &format!("{local}:8080")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Two connections, one after the other, each its own pair of streams.
    let get = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        Some(response)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let first = loop {
        match get() {
            Some(r) if r.contains("hello-through-the-pod") => break r,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no answer through the forward: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let second = get().expect("a second connection");
    assert!(second.contains("hello-through-the-pod"), "{second}");
    forwarder.kill().unwrap();
    forwarder.wait().unwrap();

    // A port nothing listens on: the connection is refused inside, and closed outside.
    let mut refused = Command::new(crictl_binary())
        .arg("--config")
        .arg(&crictl.config)
        .args(["--runtime-endpoint", &crictl.endpoint])
        .args(["port-forward", &pod, &format!("{local}:9")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", local)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
                break;
            }
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the forward never listened"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    refused.kill().unwrap();
    let out = refused.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("connection refused") || said.contains("Connection refused"),
        "{said}"
    );

    // Only a ready pod takes a port-forward.
    use strata_api::cri::{PortForwardRequest, runtime_service_client::RuntimeServiceClient};
    let mut rt = RuntimeServiceClient::new(d.channel().await);
    let missing = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    crictl.run(&["stopp", &pod]);
    let stopped = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        stopped.code(),
        tonic::Code::FailedPrecondition,
        "{stopped:?}"
    );
    crictl.run(&["rmp", "-f", &pod]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_crictl_execs_on_a_terminal() {
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let (pod, id) = crictl.sleeper(d, &env.image, "terminal");
    // crictl wants a terminal of its own: `script` gives it one, with our input typed at it.
    // The command's stdin, stdout and stderr are one terminal of the container's devpts, its
    // controlling one; input typed at it is read line by line.
    let command = format!(
        "{} --config {} --runtime-endpoint {} exec -it {id} sh -c \
         'tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-terminals; \
          read line; echo got-$line; exit 5'",
        crictl_binary().display(),
        crictl.config.display(),
        crictl.endpoint,
    );
    let out = {
        use std::io::Write as _;
        let mut child = Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        let mut stdin = child.stdin.take().unwrap();
        // Typed once the command reads: after the terminal is up.
        std::thread::sleep(Duration::from_millis(1500));
        stdin.write_all(b"typed\n").unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        out
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "the exit code is 5: {text}");
    assert!(text.contains("exit code 5"), "{text}");
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{text:?}");
    assert!(lines.contains(&"all-terminals"), "{text:?}");
    assert!(lines.contains(&"got-typed"), "{text:?}");
    crictl.run(&["rmp", "-f", &pod]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_crictl_attaches_to_a_containers_stdio() {
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let pod_json = write_json(
        d,
        "attach-pod.json",
        serde_json::json!({
            "metadata": {"name": "attach", "namespace": "default", "uid": "attach-uid"},
            "log_directory": d.path("attach-logs").display().to_string(),
            "linux": {}
        }),
    );
    // It reads its stdin (a pipe its monitor holds) until the first attacher's input ends.
    let container_json = write_json(
        d,
        "attach-container.json",
        serde_json::json!({
            "metadata": {"name": "reader"},
            "image": {"image": env.image},
            "command": ["sh", "-c",
                "echo before-attach; while read line; do echo got-$line; echo err-$line >&2; done; echo bye"],
            "stdin": true,
            "stdin_once": true,
            "log_path": "reader.log",
            "linux": {}
        }),
    );
    let pod_path = pod_json.to_str().unwrap();
    let pod = crictl.run(&["runp", pod_path]).trim().to_string();
    let id = crictl
        .run(&["create", &pod, container_json.to_str().unwrap(), pod_path])
        .trim()
        .to_string();
    crictl.run(&["start", &id]);
    let (status, out, err) = crictl.run_with_input(&["attach", "-i", &id], b"one\ntwo\n");
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, "got-one\ngot-two\nbye\n", "stdout since the attach");
    assert_eq!(err, "err-one\nerr-two\n", "stderr apart");
    // The input's end was the container's: it ended, and the CRI log has every line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = crictl.json(&["inspect", &id])["status"]["state"].clone();
        if state == "CONTAINER_EXITED" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = crictl.run(&["logs", &id]);
    for line in ["before-attach", "got-one", "got-two", "bye"] {
        assert!(logs.contains(line), "{line} not in the log: {logs}");
    }
    // A container without stdin takes no attached input.
    let (_, sleeper) = crictl.sleeper(d, &env.image, "no-stdin");
    let (status, _, err) = crictl.run_with_input(&["attach", "-i", &sleeper], b"x\n");
    assert!(!status.success());
    assert!(err.contains("not created with stdin"), "{err}");
    crictl.run(&["rmp", "-f", &pod]);
    crictl.run(&["rmp", "--all", "-f"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_crictl_streams_over_https_with_a_self_signed_certificate() {
    let env = common::cri::env_with("[streaming]\ntls = true\n").await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let (pod, id) = crictl.sleeper(d, &env.image, "https");
    use strata_api::cri::{ExecRequest, runtime_service_client::RuntimeServiceClient};
    let url = RuntimeServiceClient::new(d.channel().await)
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // Plain HTTP to it is no session (the TLS handshake fails, nothing is served).
    let authority = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut plain = std::net::TcpStream::connect(&authority).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"POST /exec/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 1"), "{answer:?}");

    // crictl (SPDY) and stratactl (WebSocket) both run commands through it.
    let (status, out, err) = crictl.run_with_input(
        &["exec", "-i", &id, "sh", "-c", "cat; echo over-tls"],
        b"in\n",
    );
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, "in\nover-tls\n");
    let out = d.ctl(["exec", &id, "sh", "-c", "echo wss; exit 2"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(out.stdout, "wss\n");
    crictl.run(&["rmp", "-f", &pod]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_crictl_attaches_to_a_container_on_a_terminal() {
    let env = env().await;
    let d = &env.daemon;
    let crictl = Crictl::new(d);
    let pod_json = write_json(
        d,
        "tty-pod.json",
        serde_json::json!({
            "metadata": {"name": "tty", "namespace": "default", "uid": "tty-uid"},
            "linux": {}
        }),
    );
    let container_json = write_json(
        d,
        "tty-container.json",
        serde_json::json!({
            "metadata": {"name": "shell"},
            "image": {"image": env.image},
            "command": ["sh", "-c",
                "while read line; do [ \"$line\" = quit ] && exit 0; echo got-$line; done"],
            "tty": true,
            "stdin": true,
            "linux": {}
        }),
    );
    let pod_path = pod_json.to_str().unwrap();
    let pod = crictl.run(&["runp", pod_path]).trim().to_string();
    let id = crictl
        .run(&["create", &pod, container_json.to_str().unwrap(), pod_path])
        .trim()
        .to_string();
    crictl.run(&["start", &id]);
    // SPDY v4 with a resize stream; crictl wants a terminal of its own: script(1).
    let command = format!(
        "{} --config {} --runtime-endpoint {} attach -it {id}",
        crictl_binary().display(),
        crictl.config.display(),
        crictl.endpoint,
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(b"hi\r").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"quit\r").unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("got-hi"), "{text:?}");
    let st = crictl.json(&["inspect", &id]);
    assert_eq!(st["status"]["state"], "CONTAINER_EXITED", "{st}");
    assert_eq!(st["status"]["exitCode"], 0, "{st}");
    crictl.run(&["rmp", "-f", &pod]);
}

/// The daemon takes requests of up to 16 MiB, so it answers with as much: a pod with a
/// 5 MiB annotation comes back whole in every list and status. `stratactl` reads replies
/// as large as that (tonic's own limit is 4 MiB), as crictl does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stratactl_reads_replies_as_large_as_the_daemon_sends() {
    use strata_api::cri::RunPodSandboxRequest;
    let daemon = common::Daemon::start().await;
    let mut config = common::cri::pod_config("annotated");
    let big = "a".repeat(5 << 20);
    config
        .annotations
        .insert("strata.test/big".into(), big.clone());
    let id = daemon
        .runtime()
        .await
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("a 5 MiB pod is within the daemon's 16 MiB")
        .into_inner()
        .pod_sandbox_id;

    let listed = daemon.ctl(["pods"]);
    assert!(
        listed.ok().lines().any(|l| l.starts_with(&id[..13])),
        "{listed:?}"
    );
    assert_eq!(daemon.ctl(["pods", "-q"]).ok().trim(), id);
    // crictl, for comparison, reads it too.
    let crictl = Crictl::new(&daemon);
    assert_eq!(crictl.run(&["pods", "-q"]).trim(), id);
    let inspected = daemon.ctl(["inspectp", &id]);
    let doc: serde_json::Value = serde_json::from_str(inspected.ok()).unwrap();
    assert_eq!(
        doc["status"]["annotations"]["strata.test/big"]
            .as_str()
            .map(str::len),
        Some(big.len()),
        "the annotation comes back whole"
    );
    println!(
        "stratactl inspectp printed {} bytes",
        inspected.stdout.len()
    );
    daemon.ctl(["rmp", "-f", &id]).ok();
    common::assert_pod_gone(&daemon, &id);
    assert!(daemon.ctl(["pods", "-q"]).ok().trim().is_empty());
}
