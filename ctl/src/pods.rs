//! Pod verbs: runp, pods, inspectp, stopp, rmp. Config files are crictl's JSON or YAML.

use std::path::Path;

use strata_api::cri::{
    self, ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter, PodSandboxStateValue,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};

use crate::{
    Client,
    output::{self, Format, Table},
};

/// Reads a CRI message from a JSON or YAML file (crictl's field names, snake_case or
/// camelCase).
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => serde_norway::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is neither JSON nor YAML: {e}", path.display()))?,
    };
    serde_json::from_value(value).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub async fn run(client: &Client, config: &Path, runtime: Option<String>) -> anyhow::Result<()> {
    let config: PodSandboxConfig = read_config(config)?;
    let response = client
        .call(
            "runp",
            client.runtime().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: runtime.unwrap_or_default(),
            }),
        )
        .await?;
    println!("{}", response.pod_sandbox_id);
    Ok(())
}

pub fn state_name(state: i32) -> &'static str {
    if state == cri::PodSandboxState::SandboxReady as i32 {
        "Ready"
    } else {
        "NotReady"
    }
}

/// "5 seconds ago", like crictl.
pub fn ago(nanos: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let secs = ((now - nanos) / 1_000_000_000).max(0);
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if n == 0 {
        "Less than a second ago".into()
    } else {
        format!("{n} {unit}{plural} ago")
    }
}

pub struct ListOptions {
    pub id: Option<String>,
    pub state: Option<String>,
    pub labels: Vec<String>,
    pub quiet: bool,
}

pub async fn list(client: &Client, format: Format, options: ListOptions) -> anyhow::Result<()> {
    let state = match options
        .state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => None,
        Some("ready") => Some(cri::PodSandboxState::SandboxReady),
        Some("notready") => Some(cri::PodSandboxState::SandboxNotready),
        Some(other) => anyhow::bail!("pods: unknown state {other:?} (ready or notready)"),
    };
    let labels = output::labels("pods", &options.labels)?;
    let response = client
        .call(
            "pods",
            client.runtime().list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    id: options.id.unwrap_or_default(),
                    state: state.map(|s| PodSandboxStateValue { state: s as i32 }),
                    label_selector: labels,
                }),
            }),
        )
        .await?;
    let mut items = response.items;
    items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    if options.quiet {
        for pod in &items {
            println!("{}", pod.id);
        }
        return Ok(());
    }
    if format != Format::Table {
        return output::print_structured(format, &cri::ListPodSandboxResponse { items });
    }
    let mut table = Table::new([
        "POD ID",
        "CREATED",
        "STATE",
        "NAME",
        "NAMESPACE",
        "ATTEMPT",
        "RUNTIME",
    ]);
    for pod in &items {
        let meta = pod.metadata.clone().unwrap_or_default();
        table.row([
            pod.id.chars().take(13).collect(),
            ago(pod.created_at),
            state_name(pod.state).to_string(),
            meta.name,
            meta.namespace,
            meta.attempt.to_string(),
            if pod.runtime_handler.is_empty() {
                "(default)".into()
            } else {
                pod.runtime_handler.clone()
            },
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
                "inspectp",
                client
                    .runtime()
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id.clone(),
                        verbose: true,
                    }),
            )
            .await?;
        docs.push(output::inspection(&status.status, status.info)?);
    }
    output::print_inspections(format, docs)
}

pub async fn stop(client: &Client, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        client
            .call(
                "stopp",
                client.runtime().stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                }),
            )
            .await?;
        println!("Stopped sandbox {id}");
    }
    Ok(())
}

pub async fn remove(client: &Client, ids: &[String], force: bool, all: bool) -> anyhow::Result<()> {
    let mut ids = ids.to_vec();
    if all {
        let listed = client
            .call(
                "rmp",
                client
                    .runtime()
                    .list_pod_sandbox(ListPodSandboxRequest::default()),
            )
            .await?;
        ids.extend(listed.items.into_iter().map(|p| p.id));
    }
    if ids.is_empty() {
        anyhow::bail!("rmp: name at least one pod sandbox, or use --all");
    }
    for id in ids {
        if force {
            client
                .call(
                    "rmp",
                    client.runtime().stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }),
                )
                .await?;
        }
        // Like crictl: removing a pod that does not exist is reported.
        client
            .call(
                "rmp",
                client
                    .runtime()
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: id.clone(),
                        verbose: false,
                    }),
            )
            .await?;
        client
            .call(
                "rmp",
                client
                    .runtime()
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }),
            )
            .await?;
        println!("Removed sandbox {id}");
    }
    Ok(())
}
