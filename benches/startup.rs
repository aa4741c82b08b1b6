//! Start-up benchmark: the time from exec of `stratad` to its first served `Version`, and
//! the daemon's resident memory once idle.
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench startup`.
//! `STRATA_BIN_DIR` overrides where the binaries are looked up.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use strata_api::cri::{VersionRequest, runtime_service_client::RuntimeServiceClient};

const RUNS: usize = 40;

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRATA_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>/deps")
        .to_path_buf()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let stratad = bin_dir().join("stratad");
    assert!(
        stratad.is_file(),
        "{} missing: run cargo build --release --workspace first",
        stratad.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut ready = Vec::with_capacity(RUNS);
    let mut rss = Vec::new();
    for run in 0..RUNS {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/strata.sock");
        std::fs::write(dir.path().join("config.toml"), "").expect("config");
        let started = Instant::now();
        let mut child = Command::new(&stratad)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state-dir")
            .arg(dir.path().join("run"))
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn stratad");
        let elapsed = rt.block_on(async {
            loop {
                if let Ok(channel) = strata_api::connect_path(&socket).await
                    && RuntimeServiceClient::new(channel)
                        .version(VersionRequest::default())
                        .await
                        .is_ok()
                {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "stratad never served"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        ready.push(elapsed);
        if run % 10 == 0 {
            // Idle: the first call served, then nothing for a second.
            std::thread::sleep(Duration::from_secs(1));
            rss.push(rss_kib(child.id()));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        // Wait inside the runtime so the client's connection task answers the server's
        // HTTP/2 shutdown and the daemon exits at once.
        let status = rt.block_on(async {
            loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert!(status.success(), "stratad exited with {status}");
    }
    ready.sort();
    println!("stratad start-up, {RUNS} runs ({}):", stratad.display());
    println!(
        "  exec -> first Version served: min {:.1} ms, median {:.1} ms, p99 {:.1} ms",
        ready[0].as_secs_f64() * 1e3,
        percentile(&ready, 0.5).as_secs_f64() * 1e3,
        percentile(&ready, 0.99).as_secs_f64() * 1e3,
    );
    rss.sort();
    println!(
        "  idle RSS: min {:.1} MiB, max {:.1} MiB ({} samples)",
        rss[0] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0,
        rss.len()
    );
}
