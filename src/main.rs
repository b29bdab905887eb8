//! `wsgate`: the gateway binary. Glue only: CLI → config → context → signals
//! → exit code.
//!
//! It serves on `--threads` service threads (default: one per CPU available
//! to the process): one executor per thread, all attached to one context
//! ([`Context::attach_set`]). Executor 0 runs on the main thread, with the
//! accept loops, the signal task, reloads and the stats publisher; the others
//! run on scoped threads named `wsgate-1`, `wsgate-2`, ... until shutdown is
//! requested. Once every thread has stopped, one drain drives all the
//! executors from the main thread. `--threads 1` is the single-loop gateway:
//! no thread is started.
//!
//! Besides serving, the binary does two things of its own on the loop:
//!
//! - **Reload on SIGHUP.** It re-reads `--config`, builds every vhost and
//!   hands them to [`Context::reconfigure`], the library's reload: vhosts
//!   whose configuration did not change keep running with their sessions
//!   untouched; changed ones are replaced (their sessions get Close 1001);
//!   new ones are added and removed ones removed; a vhost whose only change
//!   is its TLS certificate files keeps its sessions and serves the new
//!   certificate to new handshakes. A configuration that does
//!   not parse, build or bind is logged, and the running one stays as it
//!   was. Each reload prints one line, `wsgate reloaded: ...` or
//!   `wsgate reload failed: ...`.
//! - **The `stats` topic.** Every `--stats-interval` it publishes a JSON
//!   snapshot of its counters to the topic `stats` (see `cli::stats`).

mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_executor::Executor;
use clap::Parser;
use futures_lite::future;
use wsgate::config::ConfigFile;
use wsgate::{ConfigError, Context, ProtocolRegistry};

use cli::{error_chain, parse_duration, parse_listen, parse_threads};

/// An embeddable async WebSocket gateway: WebSocket and HTTP on one port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file, re-read on SIGHUP (default: built in: the demo
    /// page at /, /echo, /broadcast, /increment, /pubsub, /healthz and
    /// /metrics on 127.0.0.1:7681).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address for the first vhost, replacing the configured ones
    /// (repeatable; also applied to the first vhost of a reloaded file): an
    /// IP:PORT such as 127.0.0.1:7681, or a host name with a port such as
    /// localhost:7681, resolved once at start to its first address (IPv4
    /// first).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    listen: Vec<SocketAddr>,
    /// How long a signal-initiated shutdown waits for close handshakes
    /// (overrides the file's drain_timeout), e.g. "10s".
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// How often a JSON snapshot of the counters is published to the topic
    /// "stats"; "0s" turns it off.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    stats_interval: Duration,
    /// Service threads, each running its own executor; new connections go to
    /// the least loaded (overrides the file's threads; default: the CPUs
    /// available to the process, which respects its CPU affinity).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    cli::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let registry = ProtocolRegistry::builtin();
    let file = read_config(cli.config.as_deref(), &cli.listen)?;
    let config = file
        .build(&registry)
        .map_err(|e| located(cli.config.as_deref(), &e))?;
    let mut drain_timeout = file.drain_timeout();
    let threads = cli
        .threads
        .or(file.threads())
        .unwrap_or_else(cli::available_threads);

    // One executor per service thread; executor 0 is the main thread's.
    let executors: Vec<Executor<'_>> = (0..threads).map(|_| Executor::new()).collect();
    let ex = &executors[0];
    let ctx = Context::attach_set(&executors, config).map_err(|e| error_chain(&e))?;
    let handle = ctx.handle();
    let signals =
        wsgate::signals::shutdown_on_signals(&handle).map_err(|e| format!("signals: {e}"))?;
    ex.spawn(signals.run()).detach();
    let mut reloads = wsgate::signals::reload_on_sighup().map_err(|e| format!("signals: {e}"))?;
    for addr in ctx.local_addrs() {
        // Tests and scripts read the bound address (port 0) from this line.
        println!("wsgate listening on {addr}");
    }
    // The stats task is the host's, not wsgate's: it is cancelled (by
    // dropping it) once the loop stops, before teardown.
    let stats = (!cli.stats_interval.is_zero()).then(|| {
        ex.spawn(cli::stats::publish_stats(
            handle.clone(),
            cli.stats_interval,
        ))
    });

    // Reloads run inside the loop's own future, which borrows the context
    // (`reconfigure` is a `Context` method, on the loop).
    let reload_loop = async {
        loop {
            match reloads.wait().await {
                Ok(()) => {
                    if let Some(d) = reload(&cli, &ctx, &registry, &file) {
                        drain_timeout = d;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP can no longer be received; reloads are off");
                    future::pending::<()>().await;
                }
            }
        }
    };
    tracing::info!(threads, "serving");
    // Every service thread runs its executor until shutdown is requested; the
    // scope ends once all of them have stopped, before the drain.
    let failed = std::thread::scope(|s| {
        let mut failed = None;
        for (i, service) in executors.iter().enumerate().skip(1) {
            let handle = &handle;
            let spawned = std::thread::Builder::new()
                .name(format!("wsgate-{i}"))
                .spawn_scoped(s, move || {
                    wsgate::run(service, handle.shutdown_requested());
                });
            if let Err(e) = spawned {
                // The connections already handed to this executor are served
                // by the drain; shut down rather than run a thread short.
                failed = Some(format!("cannot start service thread wsgate-{i}: {e}"));
                let _ = handle.shutdown();
                break;
            }
        }
        wsgate::run(ex, future::or(handle.shutdown_requested(), reload_loop));
        failed
    });
    drop(stats);

    let drain_timeout = cli.drain_timeout.unwrap_or(drain_timeout);
    let report = ctx
        .destroy()
        .drain(&executors, Instant::now() + drain_timeout);
    tracing::info!(
        clean = report.clean,
        aborted = report.aborted,
        forced = report.forced,
        iterations = report.iterations,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "shutdown complete"
    );
    println!("wsgate drained: {report}");
    failed.map_or(Ok(()), Err)
}

/// Reads and parses `path` (the built-in configuration when `None`), with the
/// `--listen` addresses applied to its first vhost.
fn read_config(path: Option<&Path>, listen: &[SocketAddr]) -> Result<ConfigFile, String> {
    let mut file = match path {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            // Relative file names in it (TLS certificates) are relative to
            // its folder, not to where wsgate was started.
            let dir = path.parent().unwrap_or(Path::new("."));
            ConfigFile::parse(&text)
                .map_err(|e| located(Some(path), &e))?
                .with_base_dir(dir)
        }
        None => ConfigFile::builtin(),
    };
    if !listen.is_empty() {
        file.override_listen(listen);
    }
    Ok(file)
}

fn located(path: Option<&Path>, e: &ConfigError) -> String {
    match path {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    }
}

/// Handles one SIGHUP: re-reads `--config`, builds every vhost (with the
/// file-wide checks) and hands them to [`Context::reconfigure`], printing
/// one line with the outcome. Returns the file's `drain_timeout` if the
/// reload went through. `started` is the file the context was attached
/// with: its context-wide values stay until a restart.
///
/// Without `--config` the binary runs on the built-in configuration, which
/// cannot change, so there is nothing to do.
fn reload(
    cli: &Cli,
    ctx: &Context<'_>,
    registry: &ProtocolRegistry,
    started: &ConfigFile,
) -> Option<Duration> {
    let Some(path) = cli.config.as_deref() else {
        tracing::info!("SIGHUP: no --config file (built-in configuration), nothing to reload");
        println!("wsgate reloaded: no changes");
        return None;
    };
    let outcome = read_config(Some(path), &cli.listen).and_then(|next| {
        let vhosts = next
            .build_vhosts(registry)
            .map_err(|e| located(Some(path), &e))?;
        let done = ctx.reconfigure(vhosts).map_err(|e| error_chain(&e))?;
        if next.context_fingerprint() != started.context_fingerprint() {
            tracing::warn!(
                "max_connections, memory_budget, pumps, threads and [broker] only change on restart; the running values stay"
            );
        }
        Ok((done, next.drain_timeout()))
    });
    match outcome {
        Ok((done, drain_timeout)) => {
            tracing::info!(summary = %done, "configuration reloaded");
            println!("wsgate reloaded: {done}");
            Some(drain_timeout)
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the running configuration stays");
            println!("wsgate reload failed: {e}");
            None
        }
    }
}
