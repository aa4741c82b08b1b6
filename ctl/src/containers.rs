//! Container verbs, in crictl's argument order: create, start, run, ps, inspect, stop, rm,
//! logs, exec, stats, statsp, update.

use std::{io::Write, path::Path, time::Duration};

use strata_api::cri::{
    self, ContainerConfig, ContainerFilter, ContainerStateValue, ContainerStatsFilter,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest,
    ListContainerStatsRequest, ListContainersRequest, ListPodSandboxStatsRequest, PodSandboxConfig,
    PullImageRequest, RemoveContainerRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, UpdateContainerResourcesRequest,
};

use crate::{
    Client,
    output::{self, Format, Table},
    pods::{ago, read_config},
};

pub async fn create(
    client: &Client,
    pod: &str,
    container: &Path,
    pod_config: &Path,
) -> anyhow::Result<()> {
    let config: ContainerConfig = read_config(container)?;
    let sandbox: PodSandboxConfig = read_config(pod_config)?;
    let id = create_in(client, pod, config, sandbox).await?;
    println!("{id}");
    Ok(())
}

async fn create_in(
    client: &Client,
    pod: &str,
    config: ContainerConfig,
    sandbox: PodSandboxConfig,
) -> anyhow::Result<String> {
    Ok(client
        .call(
            "create",
            client.runtime().create_container(CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            }),
        )
        .await?
        .container_id)
}

pub async fn start(client: &Client, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        client
            .call(
                "start",
                client.runtime().start_container(StartContainerRequest {
                    container_id: id.clone(),
                }),
            )
            .await?;
        println!("{id}");
    }
    Ok(())
}

/// `run CONTAINER.json POD.json`: pulls the image if it is missing, runs the pod, creates
/// and starts the container.
pub async fn run(
    client: &Client,
    container: &Path,
    pod_config: &Path,
    no_pull: bool,
) -> anyhow::Result<()> {
    let config: ContainerConfig = read_config(container)?;
    let sandbox: PodSandboxConfig = read_config(pod_config)?;
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if !no_pull {
        let status = client
            .call(
                "run",
                client.images().image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                }),
            )
            .await?;
        if status.image.is_none() {
            let mut images = client.images();
            let pull = images.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: Some(sandbox.clone()),
            });
            // A pull is not bound by the per-call deadline: it takes as long as it takes.
            pull.await
                .map_err(|s| anyhow::Error::new(s).context("run: pulling the image"))?;
        }
    }
    let pod = client
        .call(
            "run",
            client.runtime().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await?
        .pod_sandbox_id;
    let id = create_in(client, &pod, config, sandbox).await?;
    client
        .call(
            "run",
            client.runtime().start_container(StartContainerRequest {
                container_id: id.clone(),
            }),
        )
        .await?;
    println!("{id}");
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

pub struct PsOptions {
    pub all: bool,
    pub quiet: bool,
    pub id: Option<String>,
    pub pod: Option<String>,
    pub state: Option<String>,
    pub labels: Vec<String>,
    pub name: Option<String>,
}

pub async fn ps(client: &Client, format: Format, options: PsOptions) -> anyhow::Result<()> {
    let state = match options
        .state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None if options.all => None,
        None => Some(cri::ContainerState::ContainerRunning),
        Some("created") => Some(cri::ContainerState::ContainerCreated),
        Some("running") => Some(cri::ContainerState::ContainerRunning),
        Some("exited") => Some(cri::ContainerState::ContainerExited),
        Some(other) => anyhow::bail!("ps: unknown state {other:?} (created, running or exited)"),
    };
    let labels = output::labels("ps", &options.labels)?;
    let response = client
        .call(
            "ps",
            client.runtime().list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    id: options.id.unwrap_or_default(),
                    state: state.map(|s| ContainerStateValue { state: s as i32 }),
                    pod_sandbox_id: options.pod.unwrap_or_default(),
                    label_selector: labels,
                }),
            }),
        )
        .await?;
    let mut containers: Vec<cri::Container> = response
        .containers
        .into_iter()
        .filter(|c| {
            options.name.as_ref().is_none_or(|n| {
                c.metadata
                    .as_ref()
                    .is_some_and(|m| m.name.contains(n.as_str()))
            })
        })
        .collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    if options.quiet {
        for c in &containers {
            println!("{}", c.id);
        }
        return Ok(());
    }
    if format != Format::Table {
        return output::print_structured(format, &cri::ListContainersResponse { containers });
    }
    let mut table = Table::new([
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
    ]);
    for c in &containers {
        let meta = c.metadata.clone().unwrap_or_default();
        table.row([
            c.id.chars().take(13).collect(),
            c.image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            ago(c.created_at),
            state_name(c.state).to_string(),
            meta.name,
            meta.attempt.to_string(),
            c.pod_sandbox_id.chars().take(13).collect(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn inspect(client: &Client, format: Format, ids: &[String]) -> anyhow::Result<()> {
    let mut docs = Vec::new();
    for id in ids {
        let status = client
            .call(
                "inspect",
                client.runtime().container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: true,
                }),
            )
            .await?;
        docs.push(output::inspection(&status.status, status.info)?);
    }
    output::print_inspections(format, docs)
}

pub async fn stop(client: &Client, ids: &[String], timeout: i64) -> anyhow::Result<()> {
    for id in ids {
        let mut runtime = client.runtime();
        // The grace period may outlast the per-call deadline.
        runtime
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout,
            })
            .await
            .map_err(|s| anyhow::Error::new(s).context("stop"))?;
        println!("{id}");
    }
    Ok(())
}

pub async fn remove(client: &Client, ids: &[String], force: bool, all: bool) -> anyhow::Result<()> {
    let mut ids = ids.to_vec();
    if all {
        let listed = client
            .call(
                "rm",
                client
                    .runtime()
                    .list_containers(ListContainersRequest::default()),
            )
            .await?;
        ids.extend(listed.containers.into_iter().map(|c| c.id));
    }
    if ids.is_empty() {
        anyhow::bail!("rm: name at least one container, or use --all");
    }
    for id in ids {
        let status = client
            .call(
                "rm",
                client.runtime().container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                }),
            )
            .await?;
        let running = status
            .status
            .as_ref()
            .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
        if running && !force {
            anyhow::bail!("rm: container {id} is running; stop it first or use --force");
        }
        client
            .call(
                "rm",
                client.runtime().remove_container(RemoveContainerRequest {
                    container_id: id.clone(),
                }),
            )
            .await?;
        println!("{id}");
    }
    Ok(())
}

/// Prints a CRI log file: the text of each line (partial lines joined), optionally with
/// its timestamp; `tail` keeps the last lines; `follow` keeps reading until the container
/// has exited.
pub async fn logs(
    client: &Client,
    id: &str,
    follow: bool,
    tail: Option<usize>,
    timestamps: bool,
) -> anyhow::Result<()> {
    let status = |client: &Client| {
        let id = id.to_string();
        let mut runtime = client.runtime();
        async move {
            runtime
                .container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .map(|r| r.into_inner().status.unwrap_or_default())
                .map_err(|s| anyhow::Error::new(s).context("logs"))
        }
    };
    let st = status(client).await?;
    let path = std::path::PathBuf::from(&st.log_path);
    let mut offset = 0usize;
    let mut pending = String::new();
    let mut first = true;
    loop {
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("logs: reading {}: {e}", path.display()))?;
        let new = &bytes[offset.min(bytes.len())..];
        // Only whole lines; a line still being written waits for the next round.
        let end = new.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let text = String::from_utf8_lossy(&new[..end]).into_owned();
        offset += end;
        let mut out: Vec<String> = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            let (Some(time), Some(_stream), Some(tag), content) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next().unwrap_or(""),
            ) else {
                continue;
            };
            pending.push_str(content);
            if tag == "F" {
                let full = std::mem::take(&mut pending);
                out.push(if timestamps {
                    format!("{time} {full}")
                } else {
                    full
                });
            }
        }
        if first {
            if let Some(n) = tail {
                let skip = out.len().saturating_sub(n);
                out.drain(..skip);
            }
            first = false;
        }
        let mut stdout = std::io::stdout().lock();
        for line in out {
            writeln!(stdout, "{line}")?;
        }
        stdout.flush()?;
        if !follow {
            return Ok(());
        }
        if status(client).await?.state == cri::ContainerState::ContainerExited as i32 && end == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ExecSync: the command's stdout and stderr, and its exit code as ours.
pub async fn exec(client: &Client, id: &str, cmd: &[String], timeout: i64) -> anyhow::Result<i32> {
    // Each stream may carry 16 MiB.
    let mut runtime = client.runtime().max_decoding_message_size(64 << 20);
    let request = ExecSyncRequest {
        container_id: id.to_string(),
        cmd: cmd.to_vec(),
        timeout,
    };
    let response = match timeout {
        0 => runtime.exec_sync(request).await,
        t => match tokio::time::timeout(
            Duration::from_secs(t as u64 + 5),
            runtime.exec_sync(request),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => anyhow::bail!("exec: no answer within {t} s"),
        },
    }
    .map_err(|s| anyhow::Error::new(s).context("exec"))?
    .into_inner();
    std::io::stdout().write_all(&response.stdout)?;
    std::io::stderr().write_all(&response.stderr)?;
    Ok(response.exit_code)
}

pub async fn stats(client: &Client, format: Format, id: Option<String>) -> anyhow::Result<()> {
    let response = client
        .call(
            "stats",
            client
                .runtime()
                .list_container_stats(ListContainerStatsRequest {
                    filter: Some(ContainerStatsFilter {
                        id: id.unwrap_or_default(),
                        ..Default::default()
                    }),
                }),
        )
        .await?;
    if format != Format::Table {
        return output::print_structured(format, &response);
    }
    let mut table = Table::new(["CONTAINER", "NAME", "CPU (s)", "MEM", "DISK", "INODES"]);
    for s in &response.stats {
        let attrs = s.attributes.clone().unwrap_or_default();
        let cpu = s
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value);
        let mem = s
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        let disk = s.writable_layer.as_ref();
        table.row([
            attrs.id.chars().take(13).collect(),
            attrs.metadata.map(|m| m.name).unwrap_or_default(),
            format!("{:.2}", cpu as f64 / 1e9),
            output::human_size(mem),
            output::human_size(
                disk.and_then(|d| d.used_bytes.as_ref())
                    .map_or(0, |v| v.value),
            ),
            disk.and_then(|d| d.inodes_used.as_ref())
                .map_or(0, |v| v.value)
                .to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn stats_pods(client: &Client, format: Format, id: Option<String>) -> anyhow::Result<()> {
    let response = client
        .call(
            "statsp",
            client
                .runtime()
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                    filter: Some(cri::PodSandboxStatsFilter {
                        id: id.unwrap_or_default(),
                        ..Default::default()
                    }),
                }),
        )
        .await?;
    if format != Format::Table {
        return output::print_structured(format, &response);
    }
    let mut table = Table::new(["POD", "NAME", "CPU (s)", "MEM", "PROCESSES", "CONTAINERS"]);
    for s in &response.stats {
        let attrs = s.attributes.clone().unwrap_or_default();
        let linux = s.linux.clone().unwrap_or_default();
        table.row([
            attrs.id.chars().take(13).collect(),
            attrs.metadata.map(|m| m.name).unwrap_or_default(),
            format!(
                "{:.2}",
                linux
                    .cpu
                    .and_then(|c| c.usage_core_nano_seconds)
                    .map_or(0, |v| v.value) as f64
                    / 1e9
            ),
            output::human_size(
                linux
                    .memory
                    .and_then(|m| m.working_set_bytes)
                    .map_or(0, |v| v.value),
            ),
            linux
                .process
                .and_then(|p| p.process_count)
                .map_or(0, |v| v.value)
                .to_string(),
            linux.containers.len().to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

pub struct UpdateOptions {
    pub memory: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

pub async fn update(client: &Client, ids: &[String], o: UpdateOptions) -> anyhow::Result<()> {
    let linux = cri::LinuxContainerResources {
        memory_limit_in_bytes: o.memory.unwrap_or(0),
        cpu_shares: o.cpu_shares.unwrap_or(0),
        cpu_quota: o.cpu_quota.unwrap_or(0),
        cpu_period: o.cpu_period.unwrap_or(0),
        cpuset_cpus: o.cpuset_cpus.unwrap_or_default(),
        cpuset_mems: o.cpuset_mems.unwrap_or_default(),
        ..Default::default()
    };
    for id in ids {
        client
            .call(
                "update",
                client
                    .runtime()
                    .update_container_resources(UpdateContainerResourcesRequest {
                        container_id: id.clone(),
                        linux: Some(linux.clone()),
                        ..Default::default()
                    }),
            )
            .await?;
        println!("{id}");
    }
    Ok(())
}

/// Prints events as they come, until `count` of them (or the daemon ends the stream).
pub async fn events(client: &Client, format: Format, count: Option<usize>) -> anyhow::Result<()> {
    use tokio_stream::StreamExt as _;
    // No deadline: a subscription is meant to stay open.
    let mut stream = client
        .runtime()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .map_err(|e| anyhow::anyhow!("events: {}", e.message()))?
        .into_inner();
    if format == Format::Table {
        println!(
            "{:<24}  {:<8}  {:<9}  {:<13}  {:<9}  NAME",
            "TIME", "EVENT", "KIND", "ID", "STATE"
        );
    }
    let mut out = std::io::stdout();
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let Some(event) = stream.next().await else {
            break;
        };
        let event = event.map_err(|e| anyhow::anyhow!("events: {}", e.message()))?;
        seen += 1;
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&event)?)?,
            Format::Yaml => write!(out, "---\n{}", serde_norway::to_string(&event)?)?,
            Format::Table => {
                let kind = cri::ContainerEventType::try_from(event.container_event_type).map_or(
                    "UNKNOWN",
                    |k| match k {
                        cri::ContainerEventType::ContainerCreatedEvent => "CREATED",
                        cri::ContainerEventType::ContainerStartedEvent => "STARTED",
                        cri::ContainerEventType::ContainerStoppedEvent => "STOPPED",
                        cri::ContainerEventType::ContainerDeletedEvent => "DELETED",
                    },
                );
                let pod = event.pod_sandbox_status.as_ref();
                let container = event
                    .containers_statuses
                    .iter()
                    .find(|c| c.id == event.container_id);
                let is_pod = pod.is_none_or(|p| p.id == event.container_id);
                let (what, state, name) = match (is_pod, container) {
                    (true, _) => (
                        "pod",
                        pod.map_or("Removed", |p| crate::pods::state_name(p.state)),
                        pod.and_then(|p| p.metadata.as_ref())
                            .map_or("", |m| m.name.as_str()),
                    ),
                    (false, Some(c)) => (
                        "container",
                        state_name(c.state),
                        c.metadata.as_ref().map_or("", |m| m.name.as_str()),
                    ),
                    (false, None) => ("container", "Removed", ""),
                };
                let id: String = event.container_id.chars().take(13).collect();
                writeln!(
                    out,
                    "{:<24}  {kind:<8}  {what:<9}  {id:<13}  {state:<9}  {name}",
                    output::utc_time(event.created_at),
                )?;
            }
        }
        out.flush()?;
    }
    Ok(())
}
