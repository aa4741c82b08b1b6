//! stratad: a container node agent serving the Kubernetes CRI v1 API on a unix socket.

#![deny(unsafe_code)]

mod cgroup;
mod config;
mod daemon;
mod helper;
mod image;
mod report;
mod runtime;
mod seccomp;
mod server;
mod state;
mod sys;

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use clap::Parser;

use config::{Config, LogFormat, Overrides};

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
    match args.get(1).map(String::as_str) {
        Some(helper::PINNS) => return helper::pinns(&args[2..]),
        Some(helper::monitor::MONITOR) => return helper::monitor::main(&args[2..]),
        Some(helper::exec::EXEC) => return helper::exec::main(&args[2..]),
        Some(helper::pidns::PIDNS) => return helper::pidns::main(&args[2..]),
        _ => {}
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
