//! The 10,000-connection soak: the `wsgate` binary, in a process of its own,
//! serves `SOAK_CONNS` WebSocket sessions on `/echo` from this process for
//! `SOAK_SECS` seconds, each sending one message a second (phases spread over
//! the second) and getting every one back; then SIGINT drains every session
//! cleanly (Close 1001 answered by every client) and the binary exits 0.
//!
//! Ignored by plain `cargo test`: it needs a raised descriptor limit (one
//! socket per session on each side) and a minute. Run it with
//! `scripts/soak.sh` (which raises `ulimit -n` and runs
//! `cargo test --release --test soak -- --ignored --nocapture`), for example
//! `SOAK_CONNS=2000 SOAK_SECS=10 bash scripts/soak.sh`.
//!
//! Environment: `SOAK_CONNS` (default 10000), `SOAK_SECS` (default 60),
//! `SOAK_THREADS` (client threads, default 2). Every phase is bounded by a
//! deadline, so a stuck soak fails instead of hanging. It ends with one line:
//!
//! ```text
//! soak: 10000 connections, 600000 messages sent, 600000 echoed, echo p50 .. ms p99 .. ms,
//! peak server RSS .. MiB (VmHWM; .. bytes/connection above a .. MiB baseline),
//! drain .. s (10000 clean, 0 aborted, 0 forced), wall .. s
//! ```

#![cfg(feature = "cli")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::LocalExecutor;
use async_io::{Async, Timer};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_lite::{StreamExt, future};
use futures_util::future::join_all;
use wsgate::Message;

/// Handshakes in flight at once, per client thread.
const HANDSHAKE_BATCH: usize = 64;
/// How long the last echoes may take to arrive after the last send.
const ECHO_GRACE: Duration = Duration::from_secs(30);
/// The binary's drain deadline, and how long we wait for it to exit after
/// SIGINT (the watchdog kills it then).
const DRAIN_TIMEOUT: &str = "30s";
const EXIT_LIMIT: Duration = Duration::from_secs(60);
/// How long the clients may take to see their streams end after the drain.
const CLOSE_LIMIT: Duration = Duration::from_secs(30);
/// Descriptors the test process needs beyond one per session.
const FD_SLACK: u64 = 256;

type Ws = WebSocketStream<Async<TcpStream>>;

#[test]
#[ignore = "a minute and 10,000 sockets per side: run scripts/soak.sh"]
fn ten_thousand_sessions_echo_for_a_minute_and_drain_cleanly() {
    let wall = Instant::now();
    let conns = env_number("SOAK_CONNS", 10_000) as usize;
    let secs = env_number("SOAK_SECS", 60);
    let threads = (env_number("SOAK_THREADS", 2) as usize).clamp(1, 64);
    assert!(
        conns > 0 && secs > 0,
        "SOAK_CONNS and SOAK_SECS must be positive"
    );
    check_fd_limit(conns);
    let connect_limit = Duration::from_secs(30) + Duration::from_millis(10) * conns as u32;
    let run_limit = Duration::from_secs(secs) + ECHO_GRACE;

    let mut gw = Gateway::start();
    let baseline = gw.memory().expect("server memory").rss;
    let sampler = Sampler::start(gw.child.id());
    println!(
        "soak: server pid {} on {}, baseline RSS {:.1} MiB; {conns} sessions, {secs} s, {threads} client threads",
        gw.child.id(),
        gw.addr,
        mib(baseline)
    );

    // The clients: each thread connects its share (a batch of handshakes at
    // a time) and runs its sessions on a local executor.
    let shared = Arc::new(Shared::default());
    let client_limit = connect_limit + run_limit + EXIT_LIMIT + CLOSE_LIMIT;
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let ids: Vec<usize> = (t..conns).step_by(threads).collect();
            let shared = shared.clone();
            let addr = gw.addr;
            thread::Builder::new()
                .name(format!("soak-client-{t}"))
                .spawn(move || client_thread(addr, ids, conns, secs, shared, client_limit))
                .expect("spawn client thread")
        })
        .collect();

    // Connect, then start every session's clock at once.
    let connect_started = Instant::now();
    wait_for(connect_limit, "every session connected", || {
        shared.connected.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire) >= conns
    });
    let connect_time = connect_started.elapsed();
    assert_eq!(
        shared.failed.load(Ordering::Acquire),
        0,
        "handshakes failed: {:?}",
        shared.errors.lock().unwrap().first()
    );
    let idle_rss = gw.memory().map_or(0, |m| m.rss);
    println!(
        "soak: {conns} sessions connected in {:.1} s ({:.0}/s); server RSS {:.1} MiB ({} bytes/connection)",
        connect_time.as_secs_f64(),
        conns as f64 / connect_time.as_secs_f64(),
        mib(idle_rss),
        idle_rss.saturating_sub(baseline) / conns as u64
    );
    shared.t0.set(Instant::now()).expect("t0 set twice");
    shared.go.set();

    // Every session sends for `secs` seconds and waits for its echoes.
    let run_deadline = Instant::now() + run_limit;
    let mut next_report = Instant::now() + Duration::from_secs(10);
    while shared.finished.load(Ordering::Acquire) < conns {
        assert!(
            Instant::now() < run_deadline,
            "sessions still sending or missing echoes after {run_limit:?}: {} of {conns} done, {} sent, {} echoed",
            shared.finished.load(Ordering::Acquire),
            shared.sent.load(Ordering::Relaxed),
            shared.echoed.load(Ordering::Relaxed)
        );
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            println!(
                "soak: t={:>3.0} s: {} sent, {} echoed, server RSS {:.1} MiB",
                shared.t0.get().unwrap().elapsed().as_secs_f64(),
                shared.sent.load(Ordering::Relaxed),
                shared.echoed.load(Ordering::Relaxed),
                mib(gw.memory().map_or(0, |m| m.rss))
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let errors = shared.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} sessions failed while echoing, first: {}",
        errors.len(),
        errors[0]
    );

    // SIGINT while every client keeps reading: each gets Close 1001 and
    // answers it; the binary drains and exits 0.
    gw.signal("-INT");
    let code = gw.wait(EXIT_LIMIT);
    let peak = sampler.stop();
    // Up to the end of the output: the last lines may still be on their way
    // from the reader thread after the exit.
    let mut lines = Vec::new();
    while let Ok(line) = gw.lines.recv_timeout(Duration::from_secs(20)) {
        lines.push(line);
    }
    assert_eq!(code, 0, "wsgate exit status; stdout: {lines:?}");
    let drained = lines
        .iter()
        .find_map(|l| l.strip_prefix("wsgate drained: "))
        .unwrap_or_else(|| panic!("no drained line in {lines:?}"));
    let report = DrainLine::parse(drained).unwrap_or_else(|| panic!("drained line {drained:?}"));

    let mut sessions = Vec::with_capacity(conns);
    for c in clients {
        sessions.extend(c.join().expect("client thread panicked"));
    }
    assert_eq!(sessions.len(), conns);
    let (sent, echoed): (u64, u64) = sessions
        .iter()
        .fold((0, 0), |(s, e), r| (s + r.sent, e + r.echoed));
    let mismatched: Vec<&Outcome> = sessions.iter().filter(|r| r.sent != r.echoed).collect();
    assert!(
        mismatched.is_empty(),
        "{} sessions lost echoes, e.g. session {}: {:?}",
        mismatched.len(),
        mismatched[0].id,
        mismatched[0]
    );
    assert!(
        sessions.iter().all(|r| r.sent == secs),
        "every session sends one message a second"
    );
    let not_1001: Vec<&Outcome> = sessions
        .iter()
        .filter(|r| r.close_code != Some(1001) || r.error.is_some())
        .collect();
    assert!(
        not_1001.is_empty(),
        "{} sessions did not end with a clean Close 1001, e.g. session {}: {:?}",
        not_1001.len(),
        not_1001[0].id,
        not_1001[0]
    );
    assert_eq!(
        (report.clean, report.aborted, report.forced),
        (conns as u64, 0, 0),
        "drain report: {drained}"
    );

    let mut latencies: Vec<u32> = sessions
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let hwm = peak.hwm.max(peak.rss);
    println!(
        "soak: {conns} connections, {sent} messages sent, {echoed} echoed, echo p50 {:.2} ms p99 {:.2} ms, \
         peak server RSS {:.1} MiB (VmHWM; {} bytes/connection above a {:.1} MiB baseline), \
         drain {:.3} s ({} clean, {} aborted, {} forced), wall {:.1} s",
        percentile(&latencies, 50) as f64 / 1000.0,
        percentile(&latencies, 99) as f64 / 1000.0,
        mib(hwm),
        hwm.saturating_sub(baseline) / conns as u64,
        mib(baseline),
        report.seconds,
        report.clean,
        report.aborted,
        report.forced,
        wall.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// The clients.

/// What the client threads share with the test's thread.
#[derive(Default)]
struct Shared {
    /// Sessions whose handshake completed, and those whose handshake failed.
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Set once everyone is connected: the sessions' common clock.
    t0: OnceLock<Instant>,
    go: support::Flag,
    /// Sessions done sending with every echo back (or failed).
    finished: AtomicUsize,
    /// Progress counters for the periodic report.
    sent: AtomicU64,
    echoed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }
}

/// How one session went.
#[derive(Debug, Default)]
struct Outcome {
    id: usize,
    sent: u64,
    echoed: u64,
    close_code: Option<u16>,
    /// What ended the session otherwise (a failure, or an error after the Close).
    error: Option<String>,
    latencies_us: Vec<u32>,
}

fn client_thread(
    addr: SocketAddr,
    ids: Vec<usize>,
    conns: usize,
    secs: u64,
    shared: Arc<Shared>,
    limit: Duration,
) -> Vec<Outcome> {
    let ex = LocalExecutor::new();
    support::block_on_timeout(
        limit,
        ex.run(async {
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let mut tasks = Vec::with_capacity(ids.len());
            for batch in ids.chunks(HANDSHAKE_BATCH) {
                let opened = join_all(batch.iter().map(|_| connect(addr, config))).await;
                for (&id, ws) in batch.iter().zip(opened) {
                    match ws {
                        Ok(ws) => {
                            tasks.push(ex.spawn(session(id, conns, secs, ws, shared.clone())));
                            shared.connected.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => {
                            shared.fail(format!("session {id}: handshake: {e}"));
                            shared.failed.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
            }
            let mut outcomes = Vec::with_capacity(tasks.len());
            for t in tasks {
                outcomes.push(t.await);
            }
            outcomes
        }),
    )
}

async fn connect(addr: SocketAddr, config: WebSocketConfig) -> Result<Ws, tungstenite::Error> {
    let tcp = Async::<TcpStream>::connect(addr).await?;
    tcp.get_ref().set_nodelay(true)?;
    let (ws, _) =
        async_tungstenite::client_async_with_config(format!("ws://{addr}/echo"), tcp, Some(config))
            .await?;
    Ok(ws)
}

/// One session: waits for the common start, sends `secs` messages one second
/// apart (its phase within the second spread by `id`), checks that each comes
/// back in order, then reads until the server's Close and the end of the
/// stream.
async fn session(id: usize, conns: usize, secs: u64, mut ws: Ws, shared: Arc<Shared>) -> Outcome {
    let mut out = Outcome {
        id,
        latencies_us: Vec::with_capacity(secs as usize),
        ..Outcome::default()
    };
    shared.go.wait().await;
    let t0 = *shared.t0.get().expect("t0 is set before go");
    let phase = Duration::from_micros((id as u64 * 1_000_000) / conns as u64);
    let mut next_send = t0 + phase;
    let echo_deadline = t0 + Duration::from_secs(secs) + ECHO_GRACE;

    enum Event {
        Send,
        Read(Option<Result<Message, tungstenite::Error>>),
        Late,
    }
    // Sending and echo phase.
    let failed = loop {
        if out.sent == secs && out.echoed == secs {
            break None;
        }
        let send_at = (out.sent < secs).then_some(next_send);
        let event = future::or(
            async {
                match send_at {
                    Some(at) => {
                        Timer::at(at).await;
                        Event::Send
                    }
                    None => {
                        Timer::at(echo_deadline).await;
                        Event::Late
                    }
                }
            },
            async { Event::Read(ws.next().await) },
        )
        .await;
        match event {
            Event::Send => {
                let sent_at = t0.elapsed().as_nanos() as u64;
                let mut payload = [0u8; 16];
                payload[..4].copy_from_slice(&(id as u32).to_be_bytes());
                payload[4..8].copy_from_slice(&(out.sent as u32).to_be_bytes());
                payload[8..].copy_from_slice(&sent_at.to_be_bytes());
                if let Err(e) = ws.send(Message::binary(payload.to_vec())).await {
                    break Some(format!("send {}: {e}", out.sent));
                }
                out.sent += 1;
                shared.sent.fetch_add(1, Ordering::Relaxed);
                next_send += Duration::from_secs(1);
            }
            Event::Read(Some(Ok(Message::Binary(b)))) => {
                let now = t0.elapsed().as_nanos() as u64;
                if b.len() != 16
                    || b[..4] != (id as u32).to_be_bytes()
                    || b[4..8] != (out.echoed as u32).to_be_bytes()
                {
                    break Some(format!(
                        "echo {} out of order or foreign: {b:?}",
                        out.echoed
                    ));
                }
                let sent_at = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
                let us = now.saturating_sub(sent_at) / 1000;
                out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                out.echoed += 1;
                shared.echoed.fetch_add(1, Ordering::Relaxed);
            }
            Event::Read(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Event::Read(Some(Ok(m))) => break Some(format!("unexpected {m:?} while echoing")),
            Event::Read(Some(Err(e))) => break Some(format!("read while echoing: {e}")),
            Event::Read(None) => break Some("stream ended while echoing".to_owned()),
            Event::Late => {
                break Some(format!(
                    "{} of {} echoes missing after {ECHO_GRACE:?}",
                    out.sent - out.echoed,
                    out.sent
                ));
            }
        }
    };
    if let Some(e) = failed {
        shared.fail(format!("session {id}: {e}"));
        out.error = Some(e);
        shared.finished.fetch_add(1, Ordering::AcqRel);
        return out;
    }
    shared.finished.fetch_add(1, Ordering::AcqRel);

    // Drain phase: keep reading; tungstenite answers the server's Close on
    // the read after it, and the stream then ends when the server closes TCP.
    loop {
        match ws.next().await {
            None => break,
            Some(Ok(Message::Close(frame))) if out.close_code.is_none() => {
                out.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) if out.close_code.is_none() => {}
            Some(Ok(m)) => {
                out.error = Some(format!("unexpected {m:?} during the drain"));
                break;
            }
            Some(Err(e)) => {
                out.error = Some(format!("read during the drain: {e}"));
                break;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The server process.

/// The `wsgate` binary on 127.0.0.1:0, its stdout lines on a channel.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Gateway {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", "127.0.0.1:0", "--stats-interval", "0s"])
            .args(["--drain-timeout", DRAIN_TIMEOUT])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The server's warnings, if any, at most a screenful of them.
        thread::spawn(move || {
            let mut n = 0usize;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                n += 1;
                if n <= 20 {
                    eprintln!("[wsgate] {line}");
                } else if n == 21 {
                    eprintln!("[wsgate] (further log lines not shown)");
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("no listening line from wsgate within 20 s");
        let addr = first
            .strip_prefix("wsgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .expect("listening address");
        Self { child, addr, lines }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for exit and returns the exit code; a watchdog kills the process
    /// if it has not exited within `limit` (the code is then -1).
    fn wait(&mut self, limit: Duration) -> i32 {
        let (done, watchdog) = mpsc::channel::<()>();
        let pid = self.child.id().to_string();
        let dog = thread::spawn(move || {
            if watchdog.recv_timeout(limit).is_err() {
                eprintln!("soak: wsgate did not exit within {limit:?}; killing it");
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        let status = self.child.wait().expect("wait for wsgate");
        let _ = done.send(());
        dog.join().expect("watchdog");
        status.code().unwrap_or(-1)
    }

    fn memory(&self) -> Option<Memory> {
        Memory::of(self.child.id())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    rss: u64,
    hwm: u64,
}

impl Memory {
    fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status.lines().find_map(|l| {
                let kb = l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim();
                kb.parse::<u64>().ok().map(|kb| kb * 1024)
            })
        };
        Some(Self {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
        })
    }
}

/// Samples a process's memory once a second and keeps the peaks.
struct Sampler {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<Memory>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let mut peak = Memory::default();
            loop {
                if let Some(m) = Memory::of(pid) {
                    peak.rss = peak.rss.max(m.rss);
                    peak.hwm = peak.hwm.max(m.hwm);
                }
                match stopped.recv_timeout(Duration::from_secs(1)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return peak,
                }
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> Memory {
        let _ = self.stop.send(());
        self.thread.join().expect("sampler thread")
    }
}

/// The numbers of `wsgate drained: N clean, N aborted, N forced (N other
/// tasks) in X.XXX s (N iterations)`.
#[derive(Debug)]
struct DrainLine {
    clean: u64,
    aborted: u64,
    forced: u64,
    seconds: f64,
}

impl DrainLine {
    fn parse(text: &str) -> Option<Self> {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.get(1) != Some(&"clean,") || words.get(9) != Some(&"in") {
            return None;
        }
        Some(Self {
            clean: words.first()?.parse().ok()?,
            aborted: words.get(2)?.parse().ok()?,
            forced: words.get(4)?.parse().ok()?,
            seconds: words.get(10)?.parse().ok()?,
        })
    }
}

// ---------------------------------------------------------------------------
// Helpers.

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Fails early, with the remedy, when this process may not open a socket per
/// session (the server, a child, inherits the same limit).
fn check_fd_limit(conns: usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(soft) = soft {
        assert!(
            soft >= conns as u64 + FD_SLACK,
            "the descriptor limit ({soft}) is too low for {conns} sessions: \
             run scripts/soak.sh, or `ulimit -n \"$(ulimit -Hn)\"` first, or lower SOAK_CONNS"
        );
    }
}

/// Waits until `cond` holds, looking every 20 ms; panics after `limit`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(sorted: &[u32], p: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
