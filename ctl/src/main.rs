//! stratactl: a command-line client for any CRI v1 endpoint (strata, containerd, CRI-O).

#![deny(unsafe_code)]

mod bench;
mod containers;
mod images;
mod output;
mod pods;
mod stream;

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strata_api::{
    cri::{
        StatusRequest, VersionRequest, image_service_client::ImageServiceClient,
        runtime_service_client::RuntimeServiceClient,
    },
    ext::images_client::ImagesClient,
};
use tonic::transport::Channel;

use output::{Format, Table};

#[derive(Debug, Parser)]
#[command(
    name = "stratactl",
    version,
    about = "Client for CRI v1 runtimes: strata, containerd, CRI-O"
)]
struct Cli {
    /// CRI endpoint to talk to: unix:///path, or https://host:port (mutual TLS)
    #[arg(long, short = 'r', global = true, env = "STRATA_ENDPOINT",
          default_value = concat!("unix://", "/run/strata/strata.sock"))]
    endpoint: String,
    /// For an https:// endpoint: the CA the agent's certificate chains to (PEM)
    #[arg(long, global = true, env = "STRATA_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// For an https:// endpoint: this client's certificate (PEM)
    #[arg(long, global = true, env = "STRATA_CERT")]
    cert: Option<std::path::PathBuf>,
    /// For an https:// endpoint: this client's key (PEM)
    #[arg(long, global = true, env = "STRATA_KEY")]
    key: Option<std::path::PathBuf>,
    /// Deadline for connecting and for each call: 10s, 500ms, 2m, or plain seconds
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the runtime's name and versions
    Version,
    /// Show the runtime's status and conditions
    Info,
    /// Pull an image from a registry
    Pull {
        image: String,
        #[command(flatten)]
        auth: images::RegistryAuth,
    },
    /// List images
    #[command(alias = "image")]
    Images {
        /// Only images this name or id refers to
        image: Option<String>,
        /// Print image ids only
        #[arg(long, short)]
        quiet: bool,
        /// Show digests
        #[arg(long)]
        digests: bool,
    },
    /// Show an image's status, manifest, config and layers
    Inspecti {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images
    Rmi {
        images: Vec<String>,
        /// Remove every image
        #[arg(long, short)]
        all: bool,
        /// Remove every image no container uses
        #[arg(long, short)]
        prune: bool,
    },
    /// Show the image filesystem's usage
    Imagefsinfo,
    /// Give an image another name
    Tag { source: String, target: String },
    /// Show an image's layers and history
    History { image: String },
    /// Show disk use of layers, blobs and containers, and what sharing saves
    Df,
    /// Check the image store: every blob against its digest, every image's parts present,
    /// nothing unreferenced (exits 1 while a problem is left)
    Check {
        /// Remove what is wrong: corrupt blobs, broken layers, the images that lost a part
        /// (pull them again), and what nothing uses
        #[arg(long)]
        repair: bool,
    },
    /// Save a container's changes as a new image: commit CONTAINER NAME:TAG
    Commit {
        container: String,
        reference: String,
        #[arg(long, short)]
        message: Option<String>,
        #[arg(long, short)]
        author: Option<String>,
        /// Freeze the container while its layer is read
        #[arg(long, short)]
        pause: bool,
        /// A Dockerfile instruction for the new image's config: ENV, CMD, ENTRYPOINT,
        /// WORKDIR, USER or LABEL; repeat for several
        #[arg(long, short = 'c', value_name = "INSTRUCTION")]
        change: Vec<String>,
    },
    /// Upload an image to a registry: push IMAGE [REFERENCE]
    Push {
        image: String,
        /// Where to push (default: the image's own name)
        reference: Option<String>,
        #[command(flatten)]
        auth: images::RegistryAuth,
    },
    /// Load images from an OCI layout or `docker save` archive (tar or tar.gz; - for stdin)
    Import {
        file: std::path::PathBuf,
        /// Name for an image the archive does not name (NAME:TAG)
        #[arg(long)]
        name: Option<String>,
    },
    /// Write images to an OCI layout tar archive (- for stdout): export FILE IMAGE...
    Export {
        file: std::path::PathBuf,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Run a pod sandbox from a crictl-style JSON or YAML config
    Runp {
        config: std::path::PathBuf,
        /// Runtime handler
        #[arg(long)]
        runtime: Option<String>,
    },
    /// List pod sandboxes
    Pods {
        /// Only pods whose id starts with this
        #[arg(long)]
        id: Option<String>,
        /// ready or notready
        #[arg(long)]
        state: Option<String>,
        /// KEY=VALUE; repeat for several
        #[arg(long)]
        label: Vec<String>,
        /// Print pod ids only
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show pod sandboxes' status
    Inspectp {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Stop pod sandboxes
    Stopp {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Create a container in a pod: create POD_ID CONTAINER.json POD.json
    Create {
        pod: String,
        container_config: std::path::PathBuf,
        pod_config: std::path::PathBuf,
    },
    /// Start created containers
    Start {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Pull if needed, run a pod, create and start a container: run CONTAINER.json POD.json
    Run {
        container_config: std::path::PathBuf,
        pod_config: std::path::PathBuf,
        /// Do not pull a missing image
        #[arg(long)]
        no_pull: bool,
    },
    /// List containers (running ones unless --all)
    Ps {
        /// Show every container
        #[arg(long, short)]
        all: bool,
        /// Print container ids only
        #[arg(long, short)]
        quiet: bool,
        /// Only containers whose id starts with this
        #[arg(long)]
        id: Option<String>,
        /// Only containers of this pod
        #[arg(long, short)]
        pod: Option<String>,
        /// created, running or exited
        #[arg(long)]
        state: Option<String>,
        /// KEY=VALUE; repeat for several
        #[arg(long)]
        label: Vec<String>,
        /// Only containers whose name contains this
        #[arg(long)]
        name: Option<String>,
    },
    /// Show containers' status
    Inspect {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Stop running containers
    Stop {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Seconds to wait after the stop signal before SIGKILL
        #[arg(long = "timeout-seconds", short = 's', default_value = "10")]
        grace: i64,
    },
    /// Remove containers
    Rm {
        ids: Vec<String>,
        /// Remove running containers too
        #[arg(long, short)]
        force: bool,
        /// Remove every container
        #[arg(long, short)]
        all: bool,
    },
    /// Print a container's log
    Logs {
        id: String,
        /// Keep printing until the container exits
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines
        #[arg(long)]
        tail: Option<usize>,
        /// Prefix each line with its time
        #[arg(long)]
        timestamps: bool,
    },
    /// Run a command in a running container (streamed; with -s, ExecSync)
    Exec {
        /// Pass stdin to the command
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Run the command on a terminal (stdin in raw mode; with -i)
        #[arg(long, short = 't')]
        tty: bool,
        /// Run it with ExecSync: output collected, then printed
        #[arg(long, short = 's')]
        sync: bool,
        /// With --sync: seconds before the command is killed (0: no limit)
        #[arg(long = "exec-timeout", default_value = "0")]
        exec_timeout: i64,
        id: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Attach to a running container's stdio
    Attach {
        /// Pass stdin to the container
        #[arg(long, short = 'i')]
        stdin: bool,
        /// The container runs on a terminal (stdin in raw mode; with -i)
        #[arg(long, short = 't')]
        tty: bool,
        id: String,
    },
    /// Forward local ports (on 127.0.0.1) to a pod's: [LOCAL:]REMOTE ...
    #[command(name = "port-forward")]
    PortForward {
        pod: String,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Show containers' resource usage
    Stats { id: Option<String> },
    /// Show pods' resource usage
    Statsp { id: Option<String> },
    /// Print container and pod events as they happen (-o json: one object per line)
    Events {
        /// Stop after this many events
        #[arg(long, short = 'n')]
        count: Option<usize>,
    },
    /// Change running containers' limits
    Update {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Memory limit in bytes
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long)]
        cpu_shares: Option<i64>,
        #[arg(long)]
        cpu_quota: Option<i64>,
        #[arg(long)]
        cpu_period: Option<i64>,
        #[arg(long)]
        cpuset_cpus: Option<String>,
        #[arg(long)]
        cpuset_mems: Option<String>,
    },
    /// Benchmark the endpoint's pod and container lifecycle (any CRI runtime)
    Bench {
        /// Image for the containers (must already be on the node)
        #[arg(long)]
        image: String,
        /// Rounds of run/create/start/stop/remove for the latency figures
        #[arg(long, default_value = "20")]
        iterations: usize,
        /// Pods (one container each) started back to back, or by --parallel clients
        #[arg(long, default_value = "50")]
        pods: usize,
        /// The daemon's pid, to report its memory
        #[arg(long)]
        daemon_pid: Option<u32>,
        /// A string in the command line of the runtime's per-container helpers
        #[arg(long)]
        helper_match: Option<String>,
        /// Run the containers under the runtime's default seccomp profile (RuntimeDefault)
        #[arg(long)]
        seccomp_default: bool,
        /// Clients starting the --pods pods at once, each its share one after another, as a
        /// kubelet syncing many pods does (1: one client, back to back)
        #[arg(long, default_value = "1")]
        parallel: usize,
    },
    /// Remove pod sandboxes
    Rmp {
        ids: Vec<String>,
        /// Stop them first
        #[arg(long, short)]
        force: bool,
        /// Remove every pod sandbox
        #[arg(long, short)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stratactl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A read of stdin may still be blocked on a thread of its own (an exec's input from a
    // terminal): not waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `exec` passes the command's own status through, quietly.
        Err(e) if e.downcast_ref::<ExitWith>().is_some() => {
            let code = e.downcast_ref::<ExitWith>().map_or(1, |c| c.0);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("stratactl: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// A command's exit status that stratactl exits with (for `exec`).
#[derive(Debug)]
struct ExitWith(i32);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

/// The whole error chain on one line, without repeating a cause already in its parent.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(status) => format!("{:?}: {}", status.code(), status.message()),
            None => cause.to_string(),
        };
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 10s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(value * scale)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

/// A connection to the endpoint and the per-call deadline.
struct Client {
    channel: Channel,
    timeout: Duration,
}

impl Client {
    async fn connect(
        endpoint: &str,
        tls: &strata_api::TlsFiles,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        let channel = tokio::time::timeout(timeout, strata_api::connect_with(endpoint, tls))
            .await
            .map_err(|_| {
                anyhow::anyhow!("connecting to {endpoint}: no answer within {timeout:?}")
            })??;
        Ok(Client { channel, timeout })
    }

    // Replies as large as the daemon takes requests (a pod's 5 MiB annotation comes back
    // in every list), not tonic's 4 MiB.
    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
            .max_decoding_message_size(strata_api::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(strata_api::MAX_MESSAGE_SIZE)
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(strata_api::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(strata_api::MAX_MESSAGE_SIZE)
    }

    fn ext(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
            .max_decoding_message_size(strata_api::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(strata_api::MAX_MESSAGE_SIZE)
    }

    /// Runs one RPC under the deadline.
    async fn call<T>(
        &self,
        what: &'static str,
        rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, rpc).await {
            Ok(result) => Ok(result.with_context(|| what)?.into_inner()),
            Err(_) => anyhow::bail!("{what}: no answer within {:?}", self.timeout),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = strata_api::TlsFiles {
        ca: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let client = Client::connect(&cli.endpoint, &tls, cli.timeout).await?;
    match cli.command {
        Command::Version => version(&client, cli.output).await,
        Command::Info => info(&client, cli.output).await,
        Command::Pull { image, auth } => images::pull(&client, &image, auth.config()?).await,
        Command::Images {
            image,
            quiet,
            digests,
        } => images::list(&client, cli.output, image.as_deref(), quiet, digests).await,
        Command::Inspecti { images: names } => images::inspect(&client, cli.output, &names).await,
        Command::Rmi {
            images: names,
            all,
            prune,
        } => images::remove(&client, &names, all, prune).await,
        Command::Imagefsinfo => images::fs_info(&client, cli.output).await,
        Command::Tag { source, target } => images::tag(&client, &source, &target).await,
        Command::History { image } => images::history(&client, cli.output, &image).await,
        Command::Df => images::df(&client, cli.output).await,
        Command::Check { repair } => images::check(&client, cli.output, repair).await,
        Command::Commit {
            container,
            reference,
            message,
            author,
            pause,
            change,
        } => {
            let changes = images::parse_changes(&change)?;
            let request = strata_api::ext::CommitContainerRequest {
                container_id: container,
                reference,
                message: message.unwrap_or_default(),
                author: author.unwrap_or_default(),
                pause,
                changes,
            };
            images::commit(&client, request).await
        }
        Command::Push {
            image,
            reference,
            auth,
        } => images::push(&client, cli.output, &image, reference, auth.config()?).await,
        Command::Import { file, name } => {
            images::import(&client, cli.output, &file, name.unwrap_or_default()).await
        }
        Command::Export {
            file,
            images: names,
        } => images::export(&client, &file, names).await,
        Command::Runp { config, runtime } => pods::run(&client, &config, runtime).await,
        Command::Pods {
            id,
            state,
            label,
            quiet,
        } => {
            let options = pods::ListOptions {
                id,
                state,
                labels: label,
                quiet,
            };
            pods::list(&client, cli.output, options).await
        }
        Command::Inspectp { ids } => pods::inspect(&client, cli.output, &ids).await,
        Command::Stopp { ids } => pods::stop(&client, &ids).await,
        Command::Rmp { ids, force, all } => pods::remove(&client, &ids, force, all).await,
        Command::Create {
            pod,
            container_config,
            pod_config,
        } => containers::create(&client, &pod, &container_config, &pod_config).await,
        Command::Start { ids } => containers::start(&client, &ids).await,
        Command::Bench {
            image,
            iterations,
            pods,
            daemon_pid,
            helper_match,
            seccomp_default,
            parallel,
        } => {
            let options = bench::Options {
                image,
                iterations,
                pods,
                daemon_pid,
                helper_match,
                seccomp_default,
                parallel,
            };
            bench::run(&client, options).await
        }
        Command::Run {
            container_config,
            pod_config,
            no_pull,
        } => containers::run(&client, &container_config, &pod_config, no_pull).await,
        Command::Ps {
            all,
            quiet,
            id,
            pod,
            state,
            label,
            name,
        } => {
            let options = containers::PsOptions {
                all,
                quiet,
                id,
                pod,
                state,
                labels: label,
                name,
            };
            containers::ps(&client, cli.output, options).await
        }
        Command::Inspect { ids } => containers::inspect(&client, cli.output, &ids).await,
        Command::Stop { ids, grace } => containers::stop(&client, &ids, grace).await,
        Command::Rm { ids, force, all } => containers::remove(&client, &ids, force, all).await,
        Command::Logs {
            id,
            follow,
            tail,
            timestamps,
        } => containers::logs(&client, &id, follow, tail, timestamps).await,
        Command::Exec {
            interactive,
            tty,
            sync,
            exec_timeout,
            id,
            cmd,
        } => {
            let code = match sync {
                true => containers::exec(&client, &id, &cmd, exec_timeout).await?,
                false => stream::exec(&client, &id, &cmd, interactive, tty).await?,
            };
            if code != 0 {
                return Err(ExitWith(code).into());
            }
            Ok(())
        }
        Command::Attach { stdin, tty, id } => {
            let code = stream::attach(&client, &id, stdin, tty).await?;
            if code != 0 {
                return Err(ExitWith(code).into());
            }
            Ok(())
        }
        Command::PortForward { pod, ports } => stream::port_forward(&client, &pod, &ports).await,
        Command::Stats { id } => containers::stats(&client, cli.output, id).await,
        Command::Statsp { id } => containers::stats_pods(&client, cli.output, id).await,
        Command::Events { count } => containers::events(&client, cli.output, count).await,
        Command::Update {
            ids,
            memory,
            cpu_shares,
            cpu_quota,
            cpu_period,
            cpuset_cpus,
            cpuset_mems,
        } => {
            let options = containers::UpdateOptions {
                memory,
                cpu_shares,
                cpu_quota,
                cpu_period,
                cpuset_cpus,
                cpuset_mems,
            };
            containers::update(&client, &ids, options).await
        }
    }
}

async fn version(client: &Client, format: Format) -> anyhow::Result<()> {
    let v = client
        .call(
            "version",
            client.runtime().version(VersionRequest {
                version: "v1".into(),
            }),
        )
        .await?;
    if format != Format::Table {
        return output::print_structured(format, &v);
    }
    println!("Version:  {}", v.version);
    println!("RuntimeName:  {}", v.runtime_name);
    println!("RuntimeVersion:  {}", v.runtime_version);
    println!("RuntimeApiVersion:  {}", v.runtime_api_version);
    Ok(())
}

async fn info(client: &Client, format: Format) -> anyhow::Result<()> {
    let status = client
        .call(
            "info",
            client.runtime().status(StatusRequest { verbose: true }),
        )
        .await?;
    if format == Format::Table {
        let mut table = Table::new(["CONDITION", "STATUS", "REASON", "MESSAGE"]);
        for c in status.status.iter().flat_map(|s| &s.conditions) {
            table.row([
                c.r#type.clone(),
                c.status.to_string(),
                c.reason.clone(),
                c.message.clone(),
            ]);
        }
        print!("{}", table.render());
        // The pod networks in use, by name and plugins.
        let cni: serde_json::Value = status
            .info
            .get("cni")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        for list in cni["networks"].as_array().into_iter().flatten() {
            let plugins: Vec<&str> = list["plugins"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["type"].as_str())
                .collect();
            println!(
                "network {}: {} (CNI {})",
                list["name"].as_str().unwrap_or("?"),
                plugins.join(" → "),
                list["cniVersion"].as_str().unwrap_or("?")
            );
        }
        return Ok(());
    }
    // Like crictl: the status, then each verbose info entry as the JSON it holds.
    let mut doc = BTreeMap::new();
    doc.insert("status".to_string(), serde_json::to_value(&status.status)?);
    doc.insert(
        "runtimeHandlers".to_string(),
        serde_json::to_value(&status.runtime_handlers)?,
    );
    doc.insert(
        "features".to_string(),
        serde_json::to_value(status.features)?,
    );
    for (key, value) in &status.info {
        let value = serde_json::from_str(value).unwrap_or(serde_json::Value::String(value.clone()));
        doc.insert(key.clone(), value);
    }
    output::print_structured(format, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
