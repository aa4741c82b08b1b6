//! stratad: a container node agent serving the Kubernetes CRI v1 API on a unix socket.

#![deny(unsafe_code)]

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use clap::Parser;

use strata_agent::{
    config::{Config, LogFormat, Overrides},
    daemon, oci, report, shim,
};

#[derive(Debug, Parser)]
#[command(
    name = "stratad",
    version,
    about = "strata container node agent (CRI v1)"
)]
struct Cli {
    /// Config file [default: /etc/strata/config.toml, if it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for persistent data (images, layers, containers) [default: /var/lib/strata]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Directory for runtime state [default: /run/strata]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Socket to serve CRI on [default: <state-dir>/strata.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or tracing directives [default: info]
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log line format [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    // Helper modes run before anything else: no runtime, no threads, no logging set-up.
    let args: Vec<String> = std::env::args().collect();
    if let Some(helper) = args.get(1).and_then(|a| oci::Helper::from_arg(a)) {
        let rest = &args[2..];
        return match helper {
            oci::Helper::Pinns => shim::pinns::main(rest),
            oci::Helper::Pidns => shim::pidns::main(rest),
            oci::Helper::Monitor => shim::monitor::main(rest),
            oci::Helper::Exec => shim::exec::main(rest),
        };
    }
    let cli = Cli::parse();
    let config = match Config::load(Overrides {
        config: cli.config,
        root: cli.root,
        state_dir: cli.state_dir,
        socket: cli.socket,
        log_level: cli.log_level,
        log_format: cli.log_format,
    }) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    init_logging(&config);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stratad")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// One line on stderr, naming what failed and why, and a non-zero exit.
fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("stratad: {}", report::error_line(error));
    ExitCode::FAILURE
}

fn init_logging(config: &Config) {
    // Validated when the config was loaded.
    let filter = tracing_subscriber::EnvFilter::builder().parse_lossy(&config.log_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
