//! Pull benchmark, against a local docker-registry:
//!   (a) `stratactl pull` of a ~60 MiB compressed / ~170 MiB unpacked image of thousands
//!       of files, against (b) `curl` of its layer blob piped into `tar -xzf`, the
//!       practical limit;
//!   the end-to-end pull time of a 1 MiB image; the daemon's peak RSS during the big pull;
//!   and a second image sharing all but one layer (only that layer is fetched).
//!
//! Run `cargo build --release --workspace` first; then `cargo bench --bench pull`.
//! Needs root, docker-registry, busybox-static and curl (tests/run.sh installs them).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Daemon,
    oci::{Compression, ImageBuilder, LayerBuilder},
    registry::Registry,
};

const RUNS: usize = 3;

/// Text-like content: words drawn with a skewed distribution from a fixed vocabulary,
/// so gzip gets about the ratio it gets on real images (about 3:1).
fn corpus_file(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocabulary: Vec<Vec<u8>> = {
        let mut v_state = 0x9E37_79B9_7F4A_7C15u64;
        (0..1024)
            .map(|_| {
                v_state ^= v_state << 13;
                v_state ^= v_state >> 7;
                v_state ^= v_state << 17;
                let n = 3 + (v_state % 8) as usize;
                (0..n)
                    .map(|i| b'a' + ((v_state >> (8 + i * 5)) % 26) as u8)
                    .collect()
            })
            .collect()
    };
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let r = next();
        // Zipf-like: small indices far more often.
        let a = (r % 1024) as usize;
        let index = a * ((r >> 12) % 1024) as usize / 1024 * ((r >> 24) % 1024) as usize / 1024;
        out.extend_from_slice(&vocabulary[index]);
        out.push(if r % 13 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn big_layer() -> Vec<u8> {
    let mut layer = LayerBuilder::new();
    let mut total = 0usize;
    let mut i = 0u64;
    while total < 170 << 20 {
        // Sizes from 1 KiB to ~120 KiB.
        let len = 1024 + ((i * 7919) % 120) as usize * 1024;
        let dir = format!("usr/share/bench/d{:03}", i % 200);
        if i < 200 {
            layer.dir(&dir, 0o755);
        }
        layer.file(&format!("{dir}/f{i:05}"), &corpus_file(i, len), 0o644);
        total += len;
        i += 1;
    }
    eprintln!("big layer: {i} files, {} MiB of content", total >> 20);
    layer.finish()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn timed(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().expect("run");
    let elapsed = start.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let registry = Registry::start().await;
    eprintln!("building the big image…");
    let big_tar = big_layer();
    let big = ImageBuilder::new()
        .layer(big_tar.clone(), Compression::Gzip)
        .label("big")
        .build();
    let blob = &big.layers[0].blob;
    eprintln!(
        "big layer: {:.1} MiB compressed, {:.1} MiB tar",
        blob.bytes.len() as f64 / 1048576.0,
        big.layers[0].tar.len() as f64 / 1048576.0
    );
    registry.push("bench/big", "v1", &big).await;
    let blob_url = format!(
        "http://{}/v2/bench/big/blobs/{}",
        registry.host, blob.digest
    );

    // (b) curl | tar -xzf, into an empty directory each run.
    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().expect("dir");
        let script = format!(
            "curl -sf {blob_url} | tar -xzf - -C {}",
            dir.path().display()
        );
        baseline.push(timed(Command::new("sh").arg("-c").arg(&script)));
    }

    // (a) stratactl pull, into an empty root each run; peak RSS from the kernel's VmHWM.
    let mut ours = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..RUNS {
        let daemon = Daemon::start().await;
        let pid = daemon.pid().as_raw();
        let idle = status_kib(pid, "VmRSS:");
        let reference = registry.reference("bench/big", "v1");
        let mut cmd = Command::new(common::bin("stratactl"));
        cmd.arg("--endpoint")
            .arg(daemon.endpoint())
            .args(["pull", &reference]);
        ours.push(timed(&mut cmd));
        rss.push((idle, status_kib(pid, "VmHWM:")));
    }
    let (a, b) = (median(ours.clone()), median(baseline.clone()));
    println!(
        "big image ({:.1} MiB compressed, {:.1} MiB unpacked):",
        blob.bytes.len() as f64 / 1048576.0,
        big_tar.len() as f64 / 1048576.0
    );
    println!(
        "  (a) stratactl pull        : median {} (runs: {:?})",
        ms(a),
        ours.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    println!(
        "  (b) curl | tar -xzf       : median {} (runs: {:?})",
        ms(b),
        baseline.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    println!(
        "  ratio (a)/(b)             : {:.2}",
        a.as_secs_f64() / b.as_secs_f64()
    );
    for (idle, peak) in &rss {
        println!(
            "  daemon RSS: idle {:.1} MiB, peak {:.1} MiB, peak above idle {:.1} MiB",
            *idle as f64 / 1024.0,
            *peak as f64 / 1024.0,
            (*peak - idle.min(peak)) as f64 / 1024.0
        );
    }

    // A 1 MiB image: end-to-end pull (exec of stratactl included), fresh each time.
    let small = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("small", &corpus_file(7, 2 << 20), 0o644)
                .finish(),
            Compression::Gzip,
        )
        .label("small")
        .build();
    println!(
        "small image: {:.2} MiB compressed",
        small.layers[0].blob.bytes.len() as f64 / 1048576.0
    );
    registry.push("bench/small", "v1", &small).await;
    let daemon = Daemon::start().await;
    let reference = registry.reference("bench/small", "v1");
    let mut small_runs = Vec::new();
    for _ in 0..20 {
        let mut pull = Command::new(common::bin("stratactl"));
        pull.arg("--endpoint")
            .arg(daemon.endpoint())
            .args(["pull", &reference]);
        small_runs.push(timed(&mut pull));
        let mut rmi = Command::new(common::bin("stratactl"));
        rmi.arg("--endpoint")
            .arg(daemon.endpoint())
            .args(["rmi", &reference]);
        timed(&mut rmi);
    }
    let mut sorted = small_runs.clone();
    sorted.sort();
    println!(
        "  1 MiB image pull, end to end: min {}, median {}, max {}",
        ms(sorted[0]),
        ms(median(small_runs)),
        ms(sorted[sorted.len() - 1])
    );

    // Two images sharing all but one layer: the second pull fetches one layer.
    let x = ImageBuilder::new()
        .layer(big_tar.clone(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file("x", &corpus_file(1, 1 << 20), 0o644)
                .finish(),
            Compression::Gzip,
        )
        .build();
    let y = ImageBuilder::new()
        .layer(big_tar, Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file("y", &corpus_file(2, 1 << 20), 0o644)
                .finish(),
            Compression::Gzip,
        )
        .build();
    registry.push("bench/shared", "x", &x).await;
    registry.push("bench/shared", "y", &y).await;
    let daemon = Daemon::start().await;
    let pull = |reference: String| {
        let mut cmd = Command::new(common::bin("stratactl"));
        cmd.arg("--endpoint")
            .arg(daemon.endpoint())
            .args(["pull", &reference]);
        timed(&mut cmd)
    };
    let first = pull(registry.reference("bench/shared", "x"));
    let second = pull(registry.reference("bench/shared", "y"));
    let fetched: Vec<String> = y
        .layers
        .iter()
        .filter(|l| {
            registry.blob_gets("bench/shared", &l.blob.digest) > 1
                || (l.blob.digest == y.layers[1].blob.digest
                    && registry.blob_gets("bench/shared", &l.blob.digest) == 1)
        })
        .map(|l| {
            format!(
                "{} ({:.1} MiB)",
                &l.blob.digest[7..19],
                l.blob.bytes.len() as f64 / 1048576.0
            )
        })
        .collect();
    println!(
        "shared layers: first pull {}, second pull {}; layers the second pull fetched: {:?}; shared layer fetched {} time(s)",
        ms(first),
        ms(second),
        fetched,
        registry.blob_gets("bench/shared", &x.layers[0].blob.digest)
    );
}
