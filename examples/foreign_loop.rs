//! A host application that owns its event loop and embeds wsgate in it.
//!
//! The host creates its own `async_executor::Executor` and runs its own work
//! on it (a timer task that logs a tick every 500 ms). A worker thread of the
//! host pushes a temperature reading to every `/temperature` session once a
//! second through `SessionHandle`s. That is the "temperature push" which races
//! and crashes callback-style C servers, where a timer writes to a connection
//! that its read callback is writing to as well, or has just freed. Here a
//! handle only feeds the session's bounded queue, whose single writer is the
//! session task, and a send to a closed session is an error.
//!
//! wsgate attaches to the host's executor and serves `/temperature`, `/echo`,
//! `/healthz` and an index at `/`. On SIGINT or SIGTERM (through
//! `wsgate::signals`), or when `--seconds` have elapsed, the host tears down
//! in the strict order: destroy the context, stop running the loop, drain it;
//! then it prints the drain report, stops its worker thread and drops its
//! executor.
//!
//! ```text
//! cargo run --example foreign_loop -- [--seconds N] [--listen ADDR]
//! ```
//!
//! `--listen` defaults to 127.0.0.1:7681 (`127.0.0.1:0` picks a free port; the
//! bound address is printed as `listening on ADDR`). Without `--seconds` the
//! example serves until Ctrl-C. Try it with any WebSocket client, for example
//! `websocat ws://127.0.0.1:7681/temperature` (`cargo install websocat`), or
//! open `http://127.0.0.1:7681/` for its index page. If 7681 is taken (by the
//! gateway, say), it says so with the reason: use `--listen 127.0.0.1:0`.

use std::collections::HashMap;
use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_io::Timer;
use futures_lite::{StreamExt, future};
use wsgate::http::Index;
use wsgate::protocols::Echo;
use wsgate::{
    CloseReason, Config, Context, ContextHandle, Message, Mount, Protocol, Reject, Request,
    SessionHandle, SessionId, VhostConfig,
};

/// How long the drain may wait for the clients' answers to our Close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the worker thread pushes a reading.
const READING_EVERY: Duration = Duration::from_secs(1);

/// How often the host's own timer task ticks.
const TICK_EVERY: Duration = Duration::from_millis(500);

const USAGE: &str = "usage: foreign_loop [--seconds N] [--listen ADDR]";

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("foreign_loop: {e}\n{USAGE}");
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
    eprintln!("foreign_loop: {text}");
    if let Some(wsgate::Error::Bind { .. }) = e.downcast_ref() {
        eprintln!(
            "foreign_loop: is another server on that port? --listen 127.0.0.1:0 picks a free one"
        );
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    // The host's loop. wsgate borrows it: it spawns its tasks here, starts no
    // thread of its own, and runs only while the host runs this executor.
    let ex = Executor::new();

    let subscribers = Subscribers::default();
    let vhost = VhostConfig::builder("default")
        .listen(args.listen)
        .protocol(Temperature {
            subscribers: subscribers.clone(),
        })
        .protocol(Echo)
        .mount(Mount::websocket("/temperature", ["temperature"]))
        .mount(Mount::websocket("/echo", ["echo"]))
        .mount(Mount::http("/", Index))
        .build()?;
    let ctx = Context::attach(&ex, Config::builder().vhost(vhost).build()?)?;
    let handle = ctx.handle();

    // SIGINT and SIGTERM reach the loop through signal-hook's self-pipe: the
    // first one calls `handle.shutdown()`, a second one exits at once (130).
    // The task keeps running during the drain, so a second Ctrl-C still works.
    let signals = wsgate::signals::shutdown_on_signals(&handle)?;
    let signal_task = ex.spawn(signals.run());

    // The host's own work shares the loop with wsgate's tasks.
    let ticker = ex.spawn(tick(handle.clone()));

    // A thread of the host's that is not the loop's.
    let worker = Worker::spawn(subscribers.clone())?;

    for addr in ctx.local_addrs() {
        println!("listening on {addr}");
    }
    std::io::stdout().flush()?;

    let seconds = args.seconds;
    let drain = async_io::block_on(ex.run(async {
        // Serve until a signal asks for shutdown or the time is up.
        future::or(handle.shutdown_requested(), async {
            match seconds {
                Some(d) => {
                    Timer::after(d).await;
                }
                None => future::pending().await,
            }
        })
        .await;
        // 1. Destroy, on the loop: stop accepting and send Close 1001 "going
        //    away" to every session (a no-op beyond that if a signal already
        //    began the teardown).
        ctx.destroy()
    }));
    // 2. The loop has stopped: `ex.run` returned and nothing runs `ex` now.
    // 3. Extra iterations of the loop, until every client has answered our
    //    Close or the deadline forces the rest closed.
    let report = drain.drain(&ex, Instant::now() + DRAIN_TIMEOUT);
    println!("drain: {report}");
    std::io::stdout().flush()?;

    // Every session's close callback has run, so the worker holds no
    // handles any more; its sends would have failed harmlessly anyway.
    worker.stop();
    let left = lock(&subscribers).len();
    if left > 0 {
        eprintln!("foreign_loop: {left} session(s) still subscribed after the drain");
    }
    // Cancelling the host's tasks drops the signal registration.
    drop(ticker);
    drop(signal_task);
    drop(ex);
    Ok(())
}

/// The sessions that receive readings, shared between the loop (whose protocol
/// callbacks add and remove them) and the worker thread (which sends to them).
type Subscribers = Arc<Mutex<HashMap<SessionId, SessionHandle>>>;

/// The `temperature` protocol: every session receives the readings; what the
/// client sends is ignored.
struct Temperature {
    subscribers: Subscribers,
}

impl Protocol for Temperature {
    type State = ();

    fn name(&self) -> &str {
        "temperature"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        lock(&self.subscribers).insert(session.id(), session.clone());
        Ok(())
    }

    fn message(&self, _state: &mut (), _session: &SessionHandle, _message: Message) {}

    fn close(&self, _state: (), session: &SessionHandle, _reason: &CloseReason) {
        // Called exactly once per opened session, also when teardown forces
        // it down, so the registry never keeps a session that is gone.
        lock(&self.subscribers).remove(&session.id());
    }
}

/// The host's worker thread: once a second, a reading to every subscriber.
struct Worker {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Worker {
    fn spawn(subscribers: Subscribers) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("temperature".into())
            .spawn(move || {
                let started = Instant::now();
                let mut next = started + READING_EVERY;
                loop {
                    let wait = next.saturating_duration_since(Instant::now());
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    next += READING_EVERY;
                    let reading = sensor(started.elapsed());
                    // One message; each session's copy shares its payload.
                    let message = Message::text(format!("temperature {reading:.1}"));
                    let sessions: Vec<SessionHandle> =
                        lock(&subscribers).values().cloned().collect();
                    for session in sessions {
                        // The session may have closed since the snapshot: then
                        // this is an error, not a write to freed state. A full
                        // queue is the vhost's overflow policy's business.
                        let _ = session.try_send(message.clone());
                    }
                }
            })?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            eprintln!("foreign_loop: the worker thread panicked");
        }
    }
}

/// A simulated sensor: a slow swing around 21.5 °C.
fn sensor(t: Duration) -> f64 {
    21.5 + 1.5 * (t.as_secs_f64() / 10.0).sin()
}

/// The host's periodic timer task, on the same loop as wsgate.
async fn tick(handle: ContextHandle) {
    let mut ticks = Timer::interval(TICK_EVERY);
    let mut n = 0u64;
    while ticks.next().await.is_some() {
        n += 1;
        match handle.stats() {
            Ok(c) => println!("host tick {n}: {} session(s) open", c.sessions_open),
            Err(_) => println!("host tick {n}: the gateway is shutting down"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections are single map operations; a panic elsewhere
    // cannot leave the map half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The command line.
struct Args {
    listen: SocketAddr,
    seconds: Option<Duration>,
}

impl Args {
    /// `Ok(None)` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut parsed = Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7681)),
            seconds: None,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
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
