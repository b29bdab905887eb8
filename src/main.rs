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
//! - **Reload on SIGHUP.** It re-reads `--config` and applies the difference
//!   vhost by vhost (see [`apply`]): vhosts whose configuration did not change
//!   keep running with their sessions untouched; changed ones are replaced
//!   (their sessions get Close 1001); new ones are added and removed ones
//!   removed. A configuration that does not parse, build or bind is logged,
//!   and the running one stays as it was. Each reload prints one line,
//!   `wsgate reloaded: ...` or `wsgate reload failed: ...`.
//! - **The `stats` topic.** Every `--stats-interval` it publishes a JSON
//!   snapshot of its counters to the topic `stats` (the demo page's status
//!   panel subscribes to it through `/pubsub`; see `cli::stats`).

mod cli;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_executor::Executor;
use clap::Parser;
use futures_lite::future;
use wsgate::ProtocolRegistry;
use wsgate::config::ConfigFile;
use wsgate::{Context, Error, VhostConfig};

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
    let mut applied = Applied::of(&file);
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
    // (`add_vhost` and `remove_vhost` are `Context` methods, on the loop).
    let reload_loop = async {
        loop {
            match reloads.wait().await {
                Ok(()) => reload(&cli, &ctx, &registry, &mut applied),
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

    let drain_timeout = cli.drain_timeout.unwrap_or(applied.drain_timeout);
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
            ConfigFile::parse(&text).map_err(|e| located(Some(path), &e))?
        }
        None => ConfigFile::builtin(),
    };
    if !listen.is_empty() {
        file.override_listen(listen);
    }
    Ok(file)
}

fn located(path: Option<&Path>, e: &wsgate::ConfigError) -> String {
    match path {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    }
}

/// What the running context was built from, as the next reload compares it:
/// the fingerprint of every vhost that is running. It follows what was
/// actually applied, so a vhost that failed to come back is added by the next
/// reload even if the file did not change again.
#[derive(Debug)]
struct Applied {
    vhosts: BTreeMap<String, String>,
    /// `max_connections`, `pumps` and `threads`, which only a restart changes.
    context: String,
    drain_timeout: Duration,
}

impl Applied {
    fn of(file: &ConfigFile) -> Self {
        Self {
            vhosts: file
                .vhost_names()
                .filter_map(|n| Some((n.to_owned(), file.vhost_fingerprint(n)?)))
                .collect(),
            context: file.context_fingerprint(),
            drain_timeout: file.drain_timeout(),
        }
    }
}

/// Which vhosts a reload touches, by name. Unchanged vhosts are in none of
/// the lists. `add` and `change` are in the new file's order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    add: Vec<String>,
    change: Vec<String>,
    remove: Vec<String>,
}

impl Plan {
    fn new(applied: &BTreeMap<String, String>, next: &ConfigFile) -> Self {
        let mut plan = Self::default();
        for name in next.vhost_names() {
            match applied.get(name) {
                None => plan.add.push(name.to_owned()),
                Some(fp) if Some(fp) != next.vhost_fingerprint(name).as_ref() => {
                    plan.change.push(name.to_owned());
                }
                Some(_) => {}
            }
        }
        plan.remove = applied
            .keys()
            .filter(|n| !next.vhost_names().any(|m| m == n.as_str()))
            .cloned()
            .collect();
        plan
    }

    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.change.is_empty() && self.remove.is_empty()
    }
}

/// Handles one SIGHUP: re-reads `--config` and applies it, printing one line
/// with the outcome. Without `--config` the binary runs on the built-in
/// configuration, which cannot change, so there is nothing to do.
fn reload(cli: &Cli, ctx: &Context<'_>, registry: &ProtocolRegistry, applied: &mut Applied) {
    let Some(path) = cli.config.as_deref() else {
        tracing::info!("SIGHUP: no --config file (built-in configuration), nothing to reload");
        println!("wsgate reloaded: no changes");
        return;
    };
    let outcome = read_config(Some(path), &cli.listen).and_then(|next| {
        // Build the whole file first: it checks what no single vhost can
        // (duplicate names, at least one vhost, context-wide values).
        next.build(registry).map_err(|e| located(Some(path), &e))?;
        let summary =
            apply(ctx, &next, registry, applied).map_err(|e| format!("{}: {e}", path.display()))?;
        if next.context_fingerprint() != applied.context {
            tracing::warn!(
                "max_connections, pumps and threads only change on restart; the running values stay"
            );
        }
        applied.drain_timeout = next.drain_timeout();
        Ok(summary)
    });
    match outcome {
        Ok(summary) => {
            tracing::info!(%summary, "configuration reloaded");
            println!("wsgate reloaded: {summary}");
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the running configuration stays");
            println!("wsgate reload failed: {e}");
        }
    }
}

/// Applies `next` to the running context, vhost by vhost, and returns the
/// summary line: `+vhost NAME on ADDR...` for each added vhost, `~vhost NAME
/// on ADDR...` for each replaced one, `-vhost NAME` for each removed one
/// (`no changes` when nothing differs).
///
/// # Listeners across a reload
///
/// Listeners are keyed by the configured address and shared by the vhosts
/// that name it; `remove_vhost` stops a listener when its last vhost goes.
/// Removing a changed vhost and then adding its new version would therefore
/// close the socket of an address that both versions name (a port-0 address
/// would come back on another port, and a fixed port might not be bindable
/// again until the old socket's accept task has run). So before anything is
/// removed, a *holder* vhost (no mounts, a `Host` name nobody sends, added
/// last so it never becomes a listener's default) is added on every address
/// the new versions listen on: it keeps the existing listeners alive and
/// binds the new addresses. The old versions are then removed, the new ones
/// added (they find every listener in place, so adding cannot fail to bind),
/// and the holder removed; listeners that no vhost names any more stop there.
///
/// Everything that can fail does so before the first removal: building the
/// new versions, and binding new addresses (all at once, by adding the
/// holder; a failed bind closes whatever it had bound). The whole function
/// runs within one poll on the loop's thread, so no connection is routed
/// while the holder stands in.
///
/// # Errors
///
/// A vhost that does not build, or an address that cannot be bound; the
/// running configuration is then untouched.
fn apply(
    ctx: &Context<'_>,
    next: &ConfigFile,
    registry: &ProtocolRegistry,
    applied: &mut Applied,
) -> Result<String, String> {
    let plan = Plan::new(&applied.vhosts, next);
    if plan.is_empty() {
        return Ok("no changes".to_owned());
    }
    let mut built: Vec<VhostConfig> = Vec::new();
    for name in plan.change.iter().chain(&plan.add) {
        let vhost = next
            .build_vhost(name, registry)
            .map_err(|e| e.to_string())?;
        if vhost.mounts().is_empty() {
            // As Context::attach warns at start.
            tracing::warn!(vhost = %name, "vhost has no mounts: requests to it get 404 (only /healthz answers)");
        }
        built.push(vhost);
    }
    let holder = hold_listeners(ctx, next, &built).map_err(|e| error_chain(&e))?;

    for name in plan.remove.iter().chain(&plan.change) {
        match ctx.remove_vhost(name) {
            Ok(()) | Err(Error::NoSuchVhost(_)) => {}
            Err(e) => tracing::warn!(vhost = %name, error = %e, "cannot remove vhost"),
        }
        applied.vhosts.remove(name);
    }
    let mut summary = Vec::new();
    for cfg in built {
        let name = cfg.name().to_owned();
        let mark = if plan.change.contains(&name) {
            '~'
        } else {
            '+'
        };
        match ctx.add_vhost(cfg) {
            Ok(vhost) => {
                if let Some(fp) = next.vhost_fingerprint(&name) {
                    applied.vhosts.insert(name.clone(), fp);
                }
                let addrs: Vec<String> =
                    vhost.local_addrs().iter().map(|a| a.to_string()).collect();
                summary.push(format!("{mark}vhost {name} on {}", addrs.join(" ")));
            }
            Err(e) => {
                // Not expected (the names are free and the holder has every
                // address bound); the next reload retries this vhost.
                tracing::error!(vhost = %name, error = %error_chain(&e), "cannot add vhost");
                summary.push(format!("!vhost {name}: {e}"));
            }
        }
    }
    summary.extend(plan.remove.iter().map(|name| format!("-vhost {name}")));
    if let Some(holder) = holder {
        let _ = ctx.remove_vhost(&holder);
    }
    Ok(summary.join(", "))
}

/// Adds the holder vhost on every address `built` listens on (see [`apply`])
/// and returns its name; `None` when there is no address to hold.
fn hold_listeners(
    ctx: &Context<'_>,
    next: &ConfigFile,
    built: &[VhostConfig],
) -> Result<Option<String>, Error> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in built.iter().flat_map(|v| v.listen().iter().copied()) {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Ok(None);
    }
    let name = (0..)
        .map(|i| format!("wsgate-reload-{i}"))
        .find(|n| ctx.vhost(n).is_none() && !next.vhost_names().any(|m| m == n))
        .unwrap_or_default();
    let mut holder = VhostConfig::builder(name.clone()).host("wsgate-reload.invalid");
    for a in addrs {
        holder = holder.listen(a);
    }
    // A builder with a name and addresses, no mounts and default limits
    // always builds.
    let holder = holder.build().map_err(Error::from)?;
    ctx.add_vhost(holder)?;
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(text).unwrap()
    }

    fn vhost(name: &str, addr: &str, idle: &str) -> String {
        format!(
            "[[vhost]]\nname = \"{name}\"\nlisten = [\"{addr}\"]\n[vhost.limits]\nidle_timeout = \"{idle}\"\n[[vhost.mount]]\npath = \"/echo\"\nprotocol = \"echo\"\n"
        )
    }

    #[test]
    fn plan_sorts_vhosts_into_add_change_remove() {
        let old = file(
            &[
                vhost("a", "127.0.0.1:0", "60s"),
                vhost("b", "127.0.0.2:0", "60s"),
            ]
            .concat(),
        );
        let next = file(
            &[
                vhost("c", "127.0.0.3:0", "60s"),
                vhost("b", "127.0.0.2:0", "90s"),
                vhost("d", "127.0.0.4:0", "60s"),
            ]
            .concat(),
        );
        let plan = Plan::new(&Applied::of(&old).vhosts, &next);
        assert_eq!(
            plan,
            Plan {
                add: vec!["c".into(), "d".into()],
                change: vec!["b".into()],
                remove: vec!["a".into()],
            }
        );
    }

    #[test]
    fn an_unchanged_file_plans_nothing() {
        let text = [
            vhost("a", "127.0.0.1:0", "60s"),
            vhost("b", "127.0.0.2:0", "60s"),
        ]
        .concat();
        let commented = format!("# reloaded\n{}", text.replace("60s\"", "60s\"   # same"));
        let plan = Plan::new(&Applied::of(&file(&text)).vhosts, &file(&commented));
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn listen_override_keeps_applying_to_the_first_vhost() {
        let listen: [SocketAddr; 1] = ["127.0.0.1:0".parse().unwrap()];
        let mut old = file(&vhost("a", "127.0.0.9:9", "60s"));
        old.override_listen(&listen);
        // The file's own address for "a" changed, but --listen replaces it.
        let mut next = file(&vhost("a", "127.0.0.8:8", "60s"));
        next.override_listen(&listen);
        assert!(Plan::new(&Applied::of(&old).vhosts, &next).is_empty());
    }
}
