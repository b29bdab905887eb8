//! `wsgate`: the gateway binary. Glue only: CLI → config → context → signals
//! → exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_executor::Executor;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsgate::Context;
use wsgate::config::{ConfigFile, ProtocolRegistry};

/// An embeddable async WebSocket gateway: WebSocket and HTTP on one port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (default: built in, /echo /healthz / on 127.0.0.1:7681).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address for the first vhost, replacing the configured ones (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// How long a signal-initiated shutdown waits for close handshakes
    /// (overrides the file's drain_timeout), e.g. "10s".
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let mut file = match &cli.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            ConfigFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => ConfigFile::builtin(),
    };
    if !cli.listen.is_empty() {
        file.override_listen(&cli.listen);
    }
    let drain_timeout = cli.drain_timeout.unwrap_or_else(|| file.drain_timeout());
    let config = file
        .build(&ProtocolRegistry::builtin())
        .map_err(|e| match &cli.config {
            Some(p) => format!("{}: {e}", p.display()),
            None => e.to_string(),
        })?;

    let ex = Executor::new();
    let ctx = Context::attach(&ex, config).map_err(|e| error_chain(&e))?;
    let handle = ctx.handle();
    let signals =
        wsgate::signals::shutdown_on_signals(&handle).map_err(|e| format!("signals: {e}"))?;
    ex.spawn(signals.run()).detach();
    for addr in ctx.local_addrs() {
        // Tests and scripts read the bound address (port 0) from this line.
        println!("wsgate listening on {addr}");
    }

    async_io::block_on(ex.run(handle.shutdown_requested()));
    let report = ctx.destroy().drain(&ex, Instant::now() + drain_timeout);
    tracing::info!(
        clean = report.clean,
        aborted = report.aborted,
        forced = report.forced,
        iterations = report.iterations,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "shutdown complete"
    );
    println!("wsgate drained: {report}");
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    wsgate::config::parse_duration(s)
        .ok_or_else(|| format!("invalid duration {s:?} (expected a number with ms, s, m or h)"))
}
