//! Fleet figures, in one run on one daemon with the remote API, metrics and events on:
//! `stratactl bench` over the unix socket and over mutual TLS on TCP (loopback), side by
//! side; the time a SIGHUP rotation of the certificates takes; the latency from a
//! container's exit to its STOPPED event; the daemon's RSS idle and with 20 containers, a
//! subscriber and a scraper.
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench fleet`.
//! Needs root, docker-registry and busybox-static.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, Options, pki::Ca, registry::Registry};
use futures_util::StreamExt as _;
use strata_api::cri::{self, runtime_service_client::RuntimeServiceClient};

fn bench(args: &[&str], image: &str, pid: u32) -> String {
    let out = Command::new(common::bin("stratactl"))
        .args(args)
        .args(["--timeout", "60s", "bench", "--image", image])
        .args(["--iterations", "20", "--pods", "20"])
        .args([
            "--daemon-pid",
            &pid.to_string(),
            "--helper-match",
            "__monitor",
        ])
        .output()
        .expect("stratactl bench");
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn quantiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let pick = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    let reference = registry.push_busybox("bench/busybox").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bench CA");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let server = ca.server(dir.path(), "server", &["127.0.0.1"]);
    let client = ca.client(dir.path(), "client", "bench", None);
    let (remote_port, metrics_port) = (common::free_port(), common::free_port());
    let daemon = Daemon::start_with(Options {
        config: format!(
            "[remote]\nlisten = \"127.0.0.1:{remote_port}\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            server.cert, server.key, ca_file
        ),
        ..Default::default()
    })
    .await;
    let pid = daemon.pid().as_raw() as u32;
    common::pull_on(&daemon.endpoint(), &reference).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_mib(pid);

    let unix = bench(&["--endpoint", &daemon.endpoint()], &reference, pid);
    let https = format!("https://127.0.0.1:{remote_port}");
    let (ca_arg, cert, key) = (
        ca_file.display().to_string(),
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let tls = bench(
        &[
            "--endpoint",
            &https,
            "--cacert",
            &ca_arg,
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        &reference,
        pid,
    );
    println!("=== unix socket ===\n{unix}\n=== mutual TLS over TCP (loopback) ===\n{tls}");

    // SIGHUP: a rotation of the same files, as the daemon logs it.
    let mut took = Vec::new();
    for _ in 0..20 {
        let before = daemon.logs().matches("certificates reloaded").count();
        nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
        let line = loop {
            let log = daemon.logs();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("certificates reloaded"))
                .collect();
            if lines.len() > before {
                break lines[lines.len() - 1].to_string();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let us: u64 = line
            .rsplit("took_us=")
            .next()
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        took.push(Duration::from_micros(us));
    }
    println!(
        "SIGHUP rotation (files read, TLS config rebuilt): {}",
        quantiles(took)
    );

    // Exit → STOPPED event: 20 containers that exit at once, one subscriber.
    let channel = daemon.channel().await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(common::cri::pod_config("events")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut ids = Vec::new();
    for n in 0..20 {
        let config = common::cri::container_config(&format!("c{n}"), &reference, "sleep 1");
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let busy = rss_mib(pid);
    // Scrape while the containers run.
    let scrape_started = Instant::now();
    let page = scrape(metrics_port);
    let scrape = scrape_started.elapsed();
    let mut latency = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while latency.len() < ids.len() && Instant::now() < deadline {
        let Some(Ok(e)) = events.next().await else {
            break;
        };
        if e.container_event_type != cri::ContainerEventType::ContainerStoppedEvent as i32
            || !ids.contains(&e.container_id)
        {
            continue;
        }
        let st = e
            .containers_statuses
            .iter()
            .find(|c| c.id == e.container_id)
            .unwrap();
        latency.push(Duration::from_nanos(
            (e.created_at - st.finished_at).max(0) as u64
        ));
    }
    println!(
        "container exit to its STOPPED event: {}",
        quantiles(latency)
    );
    println!(
        "metrics page: {} bytes, {} families, scraped in {:.2} ms",
        page.len(),
        page.lines().filter(|l| l.starts_with("# TYPE")).count(),
        scrape.as_secs_f64() * 1e3
    );
    println!(
        "daemon RSS with remote API, metrics and events on: idle {idle:.1} MiB; \
         with 20 containers, a subscriber and after the benches {busy:.1} MiB"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

/// GET /metrics over a plain TCP connection.
fn scrape(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    text
}
