//! `stratactl bench`: measures a CRI endpoint (strata, containerd, CRI-O alike): the
//! latency of each lifecycle RPC, the time to start many pods back to back (or from several
//! clients at once, as a kubelet syncing many pods does), and the memory of the daemon and of
//! its per-container helpers at 0, 1 and many running containers.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use strata_api::cri::{
    self, ContainerConfig, CreateContainerRequest, PodSandboxConfig, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, runtime_service_client::RuntimeServiceClient,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::Client;

/// Version and ListContainers calls timed for the transport figures.
const TRANSPORT_CALLS: usize = 200;

pub struct Options {
    pub image: String,
    pub iterations: usize,
    pub pods: usize,
    pub daemon_pid: Option<u32>,
    pub helper_match: Option<String>,
    /// Containers under RuntimeDefault seccomp instead of unconfined.
    pub seccomp_default: bool,
    /// Clients starting the many pods at once; 1: one client, back to back.
    pub parallel: usize,
}

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("bench-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        // A host-network pod has the node's hostname (runc refuses to set one).
        hostname: String::new(),
        log_directory: String::new(),
        // Host network: no CNI is needed on either side.
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(options: &Options) -> ContainerConfig {
    let image = &options.image;
    let linux = options.seccomp_default.then(|| cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    ContainerConfig {
        linux,
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), "exec sleep 3600".into()],
        ..Default::default()
    }
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn line(&self, name: &str) -> String {
        let mut v = self.0.clone();
        v.sort();
        let pick = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "{name:<18} min {:>8.2} ms   median {:>8.2} ms   p99 {:>8.2} ms",
            ms(v[0]),
            ms(pick(0.5)),
            ms(pick(0.99))
        )
    }

    /// The `p` quantile (0.0 to 1.0) by nearest rank, as in `line`; zero without samples.
    fn quantile(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// What one client made in the many-pods phase.
struct Share {
    /// (pod sandbox id, container id), in the order they were started.
    made: Vec<(String, String)>,
    /// Per pod: RunPodSandbox + CreateContainer + StartContainer, wall time.
    times: Vec<Duration>,
    /// When this client's last StartContainer returned.
    done: Instant,
}

/// One client's share of the many-pods phase: `count` pods named `{prefix}-{i}`, each run,
/// its container created and started, one after another.
async fn start_share(
    mut rt: RuntimeServiceClient<Channel>,
    container: ContainerConfig,
    prefix: String,
    count: usize,
) -> anyhow::Result<Share> {
    let mut share = Share {
        made: Vec::with_capacity(count),
        times: Vec::with_capacity(count),
        done: Instant::now(),
    };
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let begun = Instant::now();
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(&name)),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id;
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container.clone()),
                sandbox_config: Some(pod_config(&name)),
            })
            .await
            .with_context(|| format!("CreateContainer in {name}"))?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .with_context(|| format!("StartContainer in {name}"))?;
        share.done = Instant::now();
        share.times.push(share.done - begun);
        share.made.push((pod, id));
    }
    Ok(share)
}

/// Stops and removes the containers and pods of a share, one after another.
async fn remove_share(
    mut rt: RuntimeServiceClient<Channel>,
    made: Vec<(String, String)>,
) -> anyhow::Result<()> {
    for (pod, id) in made {
        rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .context("StopContainer")?;
        rt.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .context("RemoveContainer")?;
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .context("StopPodSandbox")?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .context("RemovePodSandbox")?;
    }
    Ok(())
}

async fn timed<T, F: Future<Output = Result<T, tonic::Status>>>(
    samples: &mut Samples,
    what: &str,
    f: F,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let result = f
        .await
        .map_err(|s| anyhow::Error::new(s).context(what.to_string()))?;
    samples.0.push(start.elapsed());
    Ok(result)
}

/// Resident and private memory (KiB) of a process, from /proc.
fn memory_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("Rss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

/// Processes whose command line contains `pattern`.
fn matching(pattern: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(pattern)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn memory_line(label: &str, options: &Options) -> String {
    let daemon = options.daemon_pid.map(memory_kib).unwrap_or_default();
    let helpers: Vec<(u64, u64)> = options
        .helper_match
        .as_deref()
        .map(matching)
        .unwrap_or_default()
        .into_iter()
        .map(memory_kib)
        .collect();
    let (rss, private) = helpers.iter().fold((0, 0), |(a, b), (r, p)| (a + r, b + p));
    let mib = |k: u64| k as f64 / 1024.0;
    format!(
        "{label:<22} daemon RSS {:>7.1} MiB | helpers: {:>3}, RSS {:>7.1} MiB, private {:>7.1} MiB",
        mib(daemon.0),
        helpers.len(),
        mib(rss),
        mib(private)
    )
}

pub async fn run(client: &Client, options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(options.parallel >= 1, "--parallel must be at least 1");
    let mut rt = client.runtime();
    let names = [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ];
    let mut samples: Vec<Samples> = names.iter().map(|_| Samples::default()).collect();
    println!("{}", memory_line("0 containers:", &options));
    // Calls that do next to nothing: what the connection itself costs (TLS or not).
    let (mut version, mut list) = (Samples::default(), Samples::default());
    for _ in 0..TRANSPORT_CALLS {
        timed(
            &mut version,
            "Version",
            rt.version(cri::VersionRequest::default()),
        )
        .await?;
        timed(
            &mut list,
            "ListContainers",
            rt.list_containers(cri::ListContainersRequest::default()),
        )
        .await?;
    }
    println!("transport-bound latency over {TRANSPORT_CALLS} calls:");
    println!("  {}", version.line("Version"));
    println!("  {}", list.line("ListContainers"));
    for i in 0..options.iterations {
        let pod = timed(
            &mut samples[0],
            "RunPodSandbox",
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(&format!("bench-{i}"))),
                runtime_handler: String::new(),
            }),
        )
        .await?
        .into_inner()
        .pod_sandbox_id;
        let id = timed(
            &mut samples[1],
            "CreateContainer",
            rt.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(&options)),
                sandbox_config: Some(pod_config(&format!("bench-{i}"))),
            }),
        )
        .await?
        .into_inner()
        .container_id;
        timed(
            &mut samples[2],
            "StartContainer",
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            }),
        )
        .await?;
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            println!("{}", memory_line("1 container:", &options));
        }
        timed(
            &mut samples[3],
            "StopContainer",
            rt.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            }),
        )
        .await?;
        timed(
            &mut samples[4],
            "RemoveContainer",
            rt.remove_container(RemoveContainerRequest { container_id: id }),
        )
        .await?;
        timed(
            &mut samples[5],
            "StopPodSandbox",
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        )
        .await?;
        timed(
            &mut samples[6],
            "RemovePodSandbox",
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            }),
        )
        .await?;
    }
    println!("per-RPC latency over {} iterations:", options.iterations);
    for (name, s) in names.iter().zip(&samples) {
        println!("  {}", s.line(name));
    }
    let start_path: Vec<Duration> = (0..options.iterations)
        .map(|i| samples[0].0[i] + samples[1].0[i] + samples[2].0[i])
        .collect();
    println!("  {}", Samples(start_path).line("pod+create+start"));

    // Many pods, one container each: back to back from one client, or split over several
    // clients at once (each its own RuntimeService client on the same channel).
    let container = container_config(&options);
    let started = Instant::now();
    let shares = if options.parallel == 1 {
        let share = start_share(client.runtime(), container, "many".into(), options.pods).await?;
        let elapsed = started.elapsed();
        println!(
            "{} pods with one container each, started back to back: {:.1} ms ({:.1} ms per pod)",
            options.pods,
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e3 / options.pods.max(1) as f64
        );
        vec![share]
    } else {
        // No more clients than pods: each client starts at least one.
        let clients = options.parallel.min(options.pods).max(1);
        let mut tasks = JoinSet::new();
        for task in 0..clients {
            let count = options.pods / clients + usize::from(task < options.pods % clients);
            tasks.spawn(start_share(
                client.runtime(),
                container.clone(),
                format!("par-{task}"),
                count,
            ));
        }
        let mut shares = Vec::with_capacity(clients);
        while let Some(joined) = tasks.join_next().await {
            shares.push(joined.context("a bench client task")??);
        }
        let elapsed = shares
            .iter()
            .map(|s| s.done)
            .max()
            .unwrap_or(started)
            .saturating_duration_since(started);
        let times = Samples(
            shares
                .iter()
                .flat_map(|s| s.times.iter().copied())
                .collect(),
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{} pods with one container each, {} clients in parallel: {:.1} ms ({:.1} ms per pod; \
             per-pod start p50 {:.1} ms, p99 {:.1} ms)",
            options.pods,
            clients,
            ms(elapsed),
            ms(elapsed) / options.pods.max(1) as f64,
            ms(times.quantile(0.5)),
            ms(times.quantile(0.99))
        );
        shares
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "{}",
        memory_line(&format!("{} containers:", options.pods), &options)
    );
    let mut tasks = JoinSet::new();
    for share in shares {
        tasks.spawn(remove_share(client.runtime(), share.made));
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a bench client task")??;
    }
    Ok(())
}
