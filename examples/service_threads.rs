//! One context served by N service threads: the host builds one executor per
//! thread and attaches a single wsgate context to all of them.
//!
//! This is libwebsockets' `count_threads` done the smol way: executor 0 (run
//! by the main thread) accepts, and each accepted connection is handed to the
//! thread that serves the fewest connections at that moment; it stays there,
//! WebSocket session included, until it ends. wsgate starts none of these
//! threads: the host does, with `std::thread::scope`, and each thread simply
//! runs its executor until shutdown is requested.
//!
//! Teardown is one `Drain` over the whole set: once every thread has stopped,
//! the main thread drains all the executors at once. The example prints the
//! drain report and the most connections each thread served at once (sampled
//! by a host task on executor 0, ten times a second).
//!
//! ```text
//! cargo run --example service_threads -- [--threads N] [--seconds N] [--listen ADDR]
//! ```
//!
//! `--threads` defaults to the CPUs available to the process. `--listen`
//! defaults to 127.0.0.1:7681 (`127.0.0.1:0` picks a free port; the bound
//! address is printed as `listening on ADDR`). Without `--seconds` the example
//! serves `/echo` until Ctrl-C. Open a few clients, for example several
//! `websocat ws://127.0.0.1:7681/echo` (`cargo install websocat`), and watch
//! them spread over the threads. If 7681 is taken (by the gateway, say), it
//! says so with the reason: use `--listen 127.0.0.1:0`.

use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_io::Timer;
use futures_lite::{StreamExt, future};
use wsgate::protocols::Echo;
use wsgate::{Config, Context, ContextHandle, Mount, VhostConfig};

/// How long the drain may wait for the clients' answers to our Close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the host samples the per-thread load.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

const USAGE: &str = "usage: service_threads [--threads N] [--seconds N] [--listen ADDR]";

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("service_threads: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&*e);
            ExitCode::FAILURE
        }
    }
}

/// Prints `e` with its causes (the OS reason of a failed bind is the
/// source of `wsgate::Error::Bind`), and what to do when the port is taken.
fn report(e: &(dyn Error + 'static)) {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    eprintln!("service_threads: {text}");
    if let Some(wsgate::Error::Bind { .. }) = e.downcast_ref() {
        eprintln!(
            "service_threads: is another server on that port? --listen 127.0.0.1:0 picks a free one"
        );
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    // The host's executors, one per service thread. wsgate borrows them all.
    let executors: Vec<Executor<'_>> = (0..args.threads).map(|_| Executor::new()).collect();
    let main_loop = &executors[0];

    let vhost = VhostConfig::builder("default")
        .listen(args.listen)
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()?;
    // Every listener is bound when this returns; nothing runs yet.
    let ctx = Context::attach_set(&executors, Config::builder().vhost(vhost).build()?)?;
    let handle = ctx.handle();

    // SIGINT and SIGTERM reach executor 0 through signal-hook's self-pipe: the
    // first one calls `handle.shutdown()`, a second one exits at once (130).
    let signals = wsgate::signals::shutdown_on_signals(&handle)?;
    let signal_task = main_loop.spawn(signals.run());

    // The host's own task, on executor 0: the most connections each thread
    // has served at once.
    let peaks = Arc::new(Mutex::new(vec![0; args.threads]));
    let sampler = main_loop.spawn(sample_loads(handle.clone(), peaks.clone()));

    for addr in ctx.local_addrs() {
        println!("listening on {addr}");
    }
    println!("serving on {} thread(s)", args.threads);
    std::io::stdout().flush()?;

    let seconds = args.seconds;
    thread::scope(|s| -> Result<(), Box<dyn Error>> {
        for (i, ex) in executors.iter().enumerate().skip(1) {
            let handle = &handle;
            let spawned = thread::Builder::new()
                .name(format!("service-{i}"))
                .spawn_scoped(s, move || {
                    // `wsgate::run` is `block_on(ex.run(..))` that polls
                    // the reactor every few tasks (see its docs).
                    wsgate::run(ex, handle.shutdown_requested());
                });
            if let Err(e) = spawned {
                // Stop the threads already running; the scope joins them.
                let _ = handle.shutdown();
                return Err(e.into());
            }
        }
        // Executor 0 on this thread, until a signal or `--seconds`; either
        // way every thread sees the shutdown request and stops.
        wsgate::run(
            main_loop,
            future::or(handle.shutdown_requested(), async {
                match seconds {
                    Some(d) => Timer::after(d).await,
                    None => future::pending().await,
                };
                let _ = handle.shutdown();
            }),
        );
        Ok(())
    })?;

    // Every service thread has stopped: one drain drives all the executors
    // from here until every client has answered our Close, or the deadline.
    let report = ctx
        .destroy()
        .drain(&executors, Instant::now() + DRAIN_TIMEOUT);
    println!("drain: {report}");
    let peaks = peaks.lock().unwrap_or_else(PoisonError::into_inner).clone();
    println!("peak connections per thread: {peaks:?}");
    std::io::stdout().flush()?;

    // Cancelling the host's tasks drops the signal registration.
    drop(sampler);
    drop(signal_task);
    drop(executors);
    Ok(())
}

/// Samples the connections each thread serves, keeping the highest seen,
/// until teardown begins.
async fn sample_loads(handle: ContextHandle, peaks: Arc<Mutex<Vec<u64>>>) {
    let mut ticks = Timer::interval(SAMPLE_EVERY);
    while ticks.next().await.is_some() {
        let Ok(stats) = handle.stats() else {
            return;
        };
        let mut peaks = peaks.lock().unwrap_or_else(PoisonError::into_inner);
        for (peak, now) in peaks.iter_mut().zip(&stats.connections_per_thread) {
            *peak = (*peak).max(*now);
        }
    }
}

/// The command line.
struct Args {
    threads: usize,
    listen: SocketAddr,
    seconds: Option<Duration>,
}

impl Args {
    /// `Ok(None)` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut parsed = Self {
            threads: thread::available_parallelism().map_or(1, NonZeroUsize::get),
            listen: SocketAddr::from(([127, 0, 0, 1], 7681)),
            seconds: None,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--threads" => {
                    let v = value("--threads")?;
                    parsed.threads = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or(format!("--threads: {v:?} is not a number from 1 to 1024"))?;
                }
                "--listen" => {
                    let v = value("--listen")?;
                    parsed.listen = v.parse().map_err(|_| {
                        format!("--listen: {v:?} is not an address like 127.0.0.1:7681")
                    })?;
                }
                "--seconds" => {
                    let v = value("--seconds")?;
                    let secs = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 1e9)
                        .ok_or(format!("--seconds: {v:?} is not a number of seconds"))?;
                    parsed.seconds = Some(Duration::from_secs_f64(secs));
                }
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Some(parsed))
    }
}
