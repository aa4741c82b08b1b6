//! The streaming server over WebSocket, end to end: `stratactl exec`, `attach` and
//! `port-forward` (which speak WebSocket), a WebSocket client of the test's own for what
//! only a raw client can check (window sizes, hostile messages), a container on a
//! terminal, the server's limits, and the daemon's descriptors before and after.

mod common;

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::cri::{container_config, env, env_with};
use futures_util::{SinkExt, StreamExt};
use strata_api::cri;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// `stratactl -r ENDPOINT ARGS` with `input` on its stdin: status, stdout, stderr.
fn ctl_with_input(
    d: &common::Daemon,
    args: &[&str],
    input: &[u8],
) -> (std::process::ExitStatus, String, String) {
    // Killed after two minutes: a session that stalls fails the test, not hangs it.
    let mut child = Command::new("timeout")
        .arg("120")
        .arg(common::bin("stratactl"))
        .args(["-r", &d.endpoint()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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

/// The daemon's open descriptors.
fn fds(d: &common::Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count()
}

/// Waits until the daemon holds `before` descriptors again (sessions end asynchronously).
async fn assert_fds_back(d: &common::Daemon, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fds(d);
        if now <= before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon holds {now} descriptors, {before} before the sessions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            String::from_utf8_lossy(c)
                .replace('\0', " ")
                .contains(needle)
        })
        .count()
}

/// A streaming Exec URL for `cmd` in container `id` (stdout only).
async fn env_rt_exec(d: &common::Daemon, id: &str, cmd: &[&str]) -> String {
    d.runtime()
        .await
        .exec(cri::ExecRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// A WebSocket session on a streaming URL, offering `protocol`.
async fn websocket(
    url: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let rest = url.strip_prefix("http://").expect("a plain http URL");
    let authority = rest.split('/').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut request = format!("ws://{rest}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("the WebSocket handshake");
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"]
            .to_str()
            .unwrap(),
        protocol.split(',').next().unwrap().trim()
    );
    ws
}

/// Reads binary messages until channel `channel`'s bytes contain `needle`; all of that
/// channel's bytes so far.
async fn read_until(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    channel: u8,
    needle: &str,
) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(needle) {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} never came on {channel}: {seen:?}"));
        match message {
            Some(Ok(Message::Binary(data))) if data.first() == Some(&channel) => {
                seen.push_str(&String::from_utf8_lossy(&data[1..]))
            }
            Some(Ok(_)) => {}
            other => panic!("the session ended before {needle:?}: {other:?} {seen:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stratactl_execs_and_forwards_ports_over_websocket() {
    let mut env = env().await;
    let image = env.image.clone();
    let pod = env.pod("ws").await;
    let id = env
        .start_sleeper(&pod, "sleeper", &image, "exec sleep 1000")
        .await;
    let d = &env.daemon;
    // One session first, so that what the daemon keeps for good (its pools) is there.
    let (status, _, err) = ctl_with_input(d, &["exec", &id, "sh", "-c", "true"], b"");
    assert!(status.success(), "{err}");
    let before = fds(d);

    // Output on its own channels, and the exit code from the status.
    let (status, out, err) = ctl_with_input(
        d,
        &["exec", &id, "sh", "-c", "echo out; echo err >&2; exit 3"],
        b"",
    );
    assert_eq!(status.code(), Some(3), "{err}");
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");

    // stdin reaches the command, and its end (v5's close of stdin) is its end of file.
    let input = "a line\n".repeat(5000);
    let (status, out, err) = ctl_with_input(
        d,
        &["exec", "-i", &id, "sh", "-c", "wc -l; echo done"],
        input.as_bytes(),
    );
    assert!(status.success(), "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["5000", "done"]);

    // Input and output at once, more than every buffer between holds: nothing waits on
    // anything else (the output does not go through the loop that reads the input).
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    // (Killed after a minute: a session that stalls fails the test, not hangs it.)
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(common::bin("stratactl"))
        .args(["-r", &d.endpoint(), "exec", "-i", &id, "sh", "-c", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let big = big.clone();
        std::thread::spawn(move || stdin.write_all(&big))
    };
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout == big,
        "{} of {} bytes came back",
        out.stdout.len(),
        big.len()
    );

    // The same on a terminal: the exec helper keeps relaying the terminal's output while
    // the command has not read all of its input yet. (What comes before `stty -echo` is
    // echoed: the count is wc's, on the last line.)
    let lines = "abcdefgh\n".repeat(20000);
    let (status, out, err) = ctl_with_input(
        d,
        &[
            "exec",
            "-i",
            "-t",
            &id,
            "sh",
            "-c",
            "stty -echo; tee /proc/self/fd/2 | wc -l",
        ],
        lines.as_bytes(),
    );
    assert!(status.success(), "{err}");
    assert!(out.len() > lines.len(), "{} bytes came back", out.len());
    assert_eq!(
        out.lines().map(str::trim).rfind(|l| !l.is_empty()),
        Some("20000"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );

    // Much output arrives whole and in order.
    let (status, out, _) = ctl_with_input(
        d,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done",
        ],
        b"",
    );
    assert!(status.success());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert_eq!(lines[12345], "line-12345");

    // A client that does not read: the command's output waits for it, the daemon does
    // not buffer it (its memory stays where it was, give or take its queues).
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let url = env_rt_exec(d, &id, &["sh", "-c", "cat /dev/zero"]).await;
    let ws = websocket(&url, "v5.channel.k8s.io").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the daemon grew from {rss_before} KiB to {rss_after} KiB for a client that does not read"
    );
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("cat /dev/zero") > 0 {
        assert!(Instant::now() < deadline, "the unread command lives on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // On a terminal: script(1) gives stratactl one, raw mode is set and restored.
    let command = format!(
        "{} -r {} exec -it {id} sh -c 'tty; read line; echo got-$line; exit 5'; echo after=$?; stty -a | grep -o -- '-\\?icanon'",
        common::bin("stratactl").display(),
        d.endpoint(),
    );
    let mut child = Command::new("script")
        .args(["-q", "-c", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(b"typed\r").unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{text:?}");
    assert!(lines.contains(&"got-typed"), "{text:?}");
    assert!(lines.contains(&"after=5"), "{text:?}");
    // The terminal is back in canonical mode once stratactl is done.
    assert!(lines.contains(&"icanon"), "{text:?}");

    assert_fds_back(d, before).await;
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stratactl_forwards_ports_into_a_pod_and_a_host_network_pod() {
    let mut env = env().await;
    let image = env.image.clone();
    let pod = env.pod("forward").await;
    env.start_sleeper(
        &pod,
        "httpd",
        &image,
        "mkdir /www; echo hello-from-the-pod > /www/index.html; \
         /bin/busybox httpd -p 127.0.0.1:8080 -h /www; exec sleep 1000",
    )
    .await;
    // A host-network pod's port is the node's loopback: a free port of the node.
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut host_pod_config = common::cri::pod_config("forward-host");
    host_pod_config.linux = Some(common::cri::host_network());
    let host_pod = env
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(host_pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut config = container_config(
        "host-httpd",
        &image,
        &format!(
            "mkdir /www; echo hello-from-the-node > /www/index.html; \
             /bin/busybox httpd -p 127.0.0.1:{host_port} -h /www; exec sleep 1000"
        ),
    );
    config.linux = None;
    let host_httpd = env
        .rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: host_pod.clone(),
            config: Some(config),
            sandbox_config: Some(host_pod_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    env.start(&host_httpd).await;
    let d = &env.daemon;
    let before = fds(d);

    for (pod, remote, body) in [
        (&pod, 8080, "hello-from-the-pod"),
        (&host_pod, host_port, "hello-from-the-node"),
    ] {
        let mut forwarder = Command::new(common::bin("stratactl"))
            .args([
                "-r",
                &d.endpoint(),
                "port-forward",
                pod,
                &format!(":{remote}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        {
            let stdout = forwarder.stdout.as_mut().unwrap();
            let mut byte = [0u8; 1];
            while !first.ends_with('\n') && stdout.read(&mut byte).unwrap() == 1 {
                first.push(byte[0] as char);
            }
        }
        // "Forwarding from 127.0.0.1:PORT -> REMOTE"
        let local: u16 = first
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{first:?}"));
        let get = move || -> Option<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
            let mut response = String::new();
            s.read_to_string(&mut response).ok()?;
            Some(response)
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match get() {
                Some(r) if r.contains(body) => break,
                other => {
                    assert!(Instant::now() < deadline, "no {body}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // Several connections at once, each a session of its own.
        let answers: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(get))
            .map(|t| t.join().unwrap())
            .collect();
        for answer in answers {
            assert!(
                answer.as_deref().is_some_and(|a| a.contains(body)),
                "{answer:?}"
            );
        }
        forwarder.kill().unwrap();
        forwarder.wait().unwrap();
    }

    // A port nothing listens on: the local connection is closed, the reason printed.
    let mut refused = Command::new(common::bin("stratactl"))
        .args(["-r", &d.endpoint(), "port-forward", &pod, ":9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        let stdout = refused.stdout.as_mut().unwrap();
        let mut byte = [0u8; 1];
        while !first.ends_with('\n') && stdout.read(&mut byte).unwrap() == 1 {
            first.push(byte[0] as char);
        }
    }
    let local: u16 = first
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    std::thread::sleep(Duration::from_millis(300));
    refused.kill().unwrap();
    let out = refused.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("onnection refused"), "{said}");

    assert_fds_back(d, before).await;
    env.remove_pods(vec![pod, host_pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_on_a_terminal_is_attached_to_resized_and_logged() {
    let mut env = env().await;
    let image = env.image.clone();
    let pod = env.pod("terminal").await;
    let mut config = container_config(
        "on-a-terminal",
        &image,
        "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-terminals; \
         while read line; do \
           case $line in quit) exit 0;; size) stty size;; *) echo got-$line;; esac; \
         done",
    );
    config.tty = true;
    config.stdin = true;
    config.log_path = "terminal.log".into();
    let mut pod_config = common::cri::pod_config("terminal");
    pod_config.log_directory = env.daemon.path("terminal-logs").display().to_string();
    let id = env
        .rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    // Counted before the start: a running container's exit is watched through a pidfd.
    let before = fds(&env.daemon);
    env.start(&id).await;

    // A raw WebSocket client (v5): the window size it sets is the container's terminal's.
    let url = env
        .rt
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = websocket(&url, "v5.channel.k8s.io").await;
    // Hostile and stray messages are dropped: unknown channels, empty and text messages.
    for junk in [
        Message::binary(vec![9, 1, 2]),
        Message::binary(Vec::new()),
        Message::text("0aGk="),
        Message::binary([&[4u8][..], b"{not json"].concat()),
    ] {
        ws.send(junk).await.unwrap();
    }
    ws.send(Message::binary(
        [&[4u8][..], br#"{"Width":123,"Height":45}"#].concat(),
    ))
    .await
    .unwrap();
    ws.send(Message::binary(b"\0size\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, 1, "45 123").await;
    ws.send(Message::binary(b"\0hello\n".to_vec()))
        .await
        .unwrap();
    read_until(&mut ws, 1, "got-hello").await;
    // Detaching (the session closed) leaves the container running.
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // A terminal has one output: stratactl attach -t reads it; "quit" ends the container.
    let (status, out, err) =
        ctl_with_input(&env.daemon, &["attach", "-i", "-t", &id], b"again\nquit\n");
    assert!(status.success(), "{err}");
    assert!(out.contains("got-again"), "{out:?}");
    let st = env.wait_exit(&id).await;
    assert_eq!(st.exit_code, 0);
    // The log has the terminal's output as stdout, all of it.
    let log = std::fs::read_to_string(&st.log_path).unwrap();
    for needle in ["all-terminals", "45 123", "got-hello", "got-again"] {
        assert!(
            log.lines()
                .any(|l| l.contains(" stdout ") && l.contains(needle)),
            "{needle} not in the log: {log}"
        );
    }
    assert!(!log.contains(" stderr "), "{log}");

    // A container not on a terminal cannot be attached to as one.
    let plain = env
        .start_sleeper(&pod, "plain", &image, "exec sleep 1000")
        .await;
    let refused = env
        .rt
        .attach(cri::AttachRequest {
            container_id: plain.clone(),
            tty: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("terminal"), "{refused:?}");
    env.rt
        .stop_container(cri::StopContainerRequest {
            container_id: plain,
            timeout: 0,
        })
        .await
        .unwrap();
    assert_fds_back(&env.daemon, before).await;
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_sessions_are_closed_and_bad_upgrades_refused() {
    let mut env = env_with("[streaming]\nidle_timeout_secs = 2\nmax_sessions = 2\n").await;
    let image = env.image.clone();
    let pod = env.pod("limits").await;
    let id = env
        .start_sleeper(&pod, "sleeper", &image, "exec sleep 1000")
        .await;
    let before = fds(&env.daemon);
    let exec_url = |rt: &mut cri::runtime_service_client::RuntimeServiceClient<_>, cmd: &str| {
        let request = cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let mut rt = rt.clone();
        async move { rt.exec(request).await.unwrap().into_inner().url }
    };
    // Two silent sessions fill the server; a third is refused while they are open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let url = exec_url(&mut env.rt, "exec sleep 4711").await;
        open.push(websocket(&url, "v5.channel.k8s.io").await);
    }
    let url = exec_url(&mut env.rt, "true").await;
    let rest = url.strip_prefix("http://").unwrap();
    let tcp = tokio::net::TcpStream::connect(rest.split('/').next().unwrap())
        .await
        .unwrap();
    let mut request = format!("ws://{rest}").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let refused = tokio_tungstenite::client_async(request, tcp)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("503"), "{refused}");
    // Both commands run (the helper may still be starting them: the sessions are open
    // before their commands are)...
    let deadline = Instant::now() + Duration::from_millis(1500);
    while processes_with("sleep 4711") < 2 {
        assert!(
            Instant::now() < deadline,
            "the sessions' commands never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and, idle for longer than the limit, are closed and their commands ended.
    for ws in &mut open {
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an idle session stayed open");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("sleep 4711") > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle sessions' commands live on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open);

    // A WebSocket upgrade without a key, or for protocols we do not speak, is refused; the
    // token is spent either way.
    for (headers, status) in [
        (vec![("Sec-WebSocket-Version", "13")], "400"),
        (
            vec![
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Protocol", "v9.channel.k8s.io"),
            ],
            "400",
        ),
    ] {
        let url = exec_url(&mut env.rt, "true").await;
        let rest = url.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(authority).unwrap();
        let mut head = format!(
            "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = [0u8; 512];
        let n = s.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
    // Bytes that are no WebSocket frames after the upgrade: that connection is closed, the
    // server serves the next.
    let url = exec_url(&mut env.rt, "exec sleep 4712").await;
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    s.write_all(
        format!(
            "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 1024];
    let n = s.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    s.write_all(&[0xff; 64]).unwrap();
    let mut rest_of_it = Vec::new();
    let _ = s.read_to_end(&mut rest_of_it);
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with("sleep 4712") > 0 {
        assert!(
            Instant::now() < deadline,
            "a broken session's command lives on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, out, err) = ctl_with_input(
        &env.daemon,
        &["exec", &id, "sh", "-c", "echo still-here"],
        b"",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, "still-here\n");

    // A URL for a container that has exited since: the session says why on its error
    // channel (a v4 Status), and ends.
    let url = exec_url(&mut env.rt, "true").await;
    env.rt
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let mut ws = websocket(&url, "v4.channel.k8s.io").await;
    let status = read_until(&mut ws, 3, "}").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"], "Failure", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("not running"),
        "{status}"
    );
    assert_fds_back(&env.daemon, before).await;
    env.remove_pods(vec![pod]).await;
}
