//! The workload shared by the allocation benches (`benches/alloc.rs`, which
//! counts, and `benches/alloc_sites.rs`, which profiles): a wsgate `Context`
//! with `/echo` and `/broadcast` on an `async_executor::Executor` that one
//! dedicated server thread runs, and blocking clients on another thread that
//! speak WebSocket by hand (a written-out upgrade request, pre-encoded masked
//! frames, reads into a buffer allocated before the measured window), so that
//! nothing they do allocates per message.
//!
//! The server thread runs the loop in three phases: warm-up, the measured
//! window, and the rest until shutdown. The window is run inside the
//! caller's `measure` function (a per-thread allocation counter, a heap
//! profiler), which therefore sees exactly what the server thread did while
//! the measured messages went through.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use futures_lite::future;
use wsgate::protocols::{Broadcast, Echo};
use wsgate::{Config, Context, DrainReport, Mount, VhostConfig};

/// Payload bytes of every message.
pub(crate) const PAYLOAD: usize = 32;
/// One server frame: a 2-byte header (FIN + binary, length 32) and the payload.
const SERVER_FRAME: usize = 2 + PAYLOAD;
/// A blocked read or write longer than this fails the scenario.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole scenario longer than this fails (the process exits non-zero).
pub(crate) const SCENARIO_LIMIT: Duration = Duration::from_secs(300);

/// What one scenario does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// `conns` connections to `/echo`, each with `inflight` messages written
    /// at once and read back before the next batch (1 is ping-pong).
    Echo { conns: usize, inflight: usize },
    /// One publisher and `subs` subscribers on `/broadcast`; the publisher
    /// writes `window` messages at once and every subscriber reads them all
    /// before the next batch.
    Broadcast { subs: usize, window: usize },
    /// `conns` connections to `/echo` opened inside the window and left
    /// idle (after a warm-up of echo round trips on [`IDLE_WARM`] others):
    /// what the server still holds at the window's end is what an idle
    /// connection costs. `measured` counts the connections.
    Idle { conns: usize },
}

/// Connections that warm the server up before an idle scenario's window
/// (one echo round trip each: the thread's read buffer, the tables' first
/// growth).
const IDLE_WARM: usize = 10;

/// One scenario: its name, what it does, and how many messages (round trips
/// for echo, published messages for broadcast) go through the warm-up and
/// the measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) label: &'static str,
    pub(crate) kind: Kind,
    pub(crate) warmup: u64,
    pub(crate) measured: u64,
}

impl Scenario {
    /// The three standard scenarios, with `scale` applied to the message
    /// counts (1.0: 100,000 round trips after 10,000, and 20,000 published
    /// messages after 2,000).
    pub(crate) fn standard(scale: f64) -> Vec<Self> {
        let n = |v: u64| ((v as f64 * scale) as u64).max(160);
        vec![
            Self {
                name: "echo",
                label: "echo ping-pong, 10 conns",
                kind: Kind::Echo {
                    conns: 10,
                    inflight: 1,
                },
                warmup: n(10_000),
                measured: n(100_000),
            },
            Self {
                name: "pipe16",
                label: "echo pipelined K=16, 10 conns",
                kind: Kind::Echo {
                    conns: 10,
                    inflight: 16,
                },
                warmup: n(10_000),
                measured: n(100_000),
            },
            Self {
                name: "bcast",
                label: "broadcast 1 -> 100 subs, W=16",
                kind: Kind::Broadcast {
                    subs: 100,
                    window: 16,
                },
                warmup: n(2_000),
                measured: n(20_000),
            },
            Self {
                name: "idle",
                label: "idle connections",
                kind: Kind::Idle { conns: 2_000 },
                warmup: 10,
                measured: 2_000,
            },
        ]
    }

    /// Whether this is the idle scenario (its figures are per connection).
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.kind, Kind::Idle { .. })
    }

    /// Messages each copy of which the server delivers (1 for echo).
    pub(crate) fn fan_out(&self) -> u64 {
        match self.kind {
            Kind::Echo { .. } | Kind::Idle { .. } => 1,
            Kind::Broadcast { subs, .. } => subs as u64,
        }
    }

    /// Messages per batch over all connections: the granularity of the
    /// counts, which are rounded up to it.
    fn batch(&self) -> u64 {
        match self.kind {
            Kind::Echo { conns, inflight } => (conns * inflight) as u64,
            Kind::Broadcast { window, .. } => window as u64,
            Kind::Idle { .. } => IDLE_WARM as u64,
        }
    }

    /// Selects scenarios by name from the command line (`cargo bench --bench
    /// alloc -- echo bcast`); cargo's own `--bench` flag is ignored.
    pub(crate) fn select(all: Vec<Self>) -> Result<Vec<Self>, String> {
        let wanted: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        if wanted.is_empty() {
            return Ok(all);
        }
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        if let Some(w) = wanted.iter().find(|w| !names.contains(&w.as_str())) {
            return Err(format!(
                "unknown scenario {w:?} (known: {})",
                names.join(", ")
            ));
        }
        Ok(all
            .into_iter()
            .filter(|s| wanted.iter().any(|w| w == s.name))
            .collect())
    }
}

/// What a completed scenario measured: the caller's measurement of the
/// window, the messages that went through it, its duration, and the drain.
#[derive(Debug)]
pub(crate) struct Outcome<M> {
    pub(crate) measurement: M,
    /// Messages received by the server in the window (round trips for echo,
    /// published messages for broadcast).
    pub(crate) messages: u64,
    /// Messages sent by the server in the window.
    pub(crate) deliveries: u64,
    pub(crate) window: Duration,
    pub(crate) drain: DrainReport,
}

/// Runs `scenario`, with the measured window run by `measure` on the server
/// thread (it must call the function it is given exactly once). Fails, and
/// never hangs, if the scenario does not complete within [`SCENARIO_LIMIT`].
pub(crate) fn run<M, F>(scenario: Scenario, measure: F) -> Result<Outcome<M>, String>
where
    M: Send + 'static,
    F: FnOnce(&mut dyn FnMut()) -> M + Send + 'static,
{
    let deadline = Instant::now() + SCENARIO_LIMIT;
    let gates = Arc::new(Gates::default());
    let (started_tx, started_rx) = mpsc::channel();
    let (window_tx, window_rx) = mpsc::channel::<()>();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    let server_gates = gates.clone();
    thread::Builder::new()
        .name("wsgate-server".into())
        .spawn(move || {
            let result = serve(
                &server_gates,
                &started_tx,
                &window_tx,
                &closed_tx,
                scenario.is_idle(),
                measure,
            );
            let _ = done_tx.send(result);
        })
        .map_err(|e| format!("spawn the server thread: {e}"))?;
    let (addr, handle) = started_rx
        .recv_timeout(IO_TIMEOUT)
        .map_err(|_| "the server thread did not start".to_owned())?
        .map_err(|e| format!("attach: {e}"))?;

    // The clients, on a thread of their own so that this one keeps the
    // deadline whatever they do.
    let (client_tx, client_rx) = mpsc::channel();
    let client_gates = gates.clone();
    thread::Builder::new()
        .name("clients".into())
        .spawn(move || {
            let _ = client_tx.send(drive(scenario, addr, &client_gates, &window_rx, &closed_rx));
        })
        .map_err(|e| format!("spawn the client thread: {e}"))?;
    let left = deadline.saturating_duration_since(Instant::now());
    let client = client_rx
        .recv_timeout(left)
        .unwrap_or_else(|_| Err(format!("did not complete within {SCENARIO_LIMIT:?}")));

    // Whatever happened, let the server thread finish: open every gate and
    // shut down (a no-op for the phases already passed).
    gates.open_all();
    let _ = handle.shutdown();
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(10));
    let served = done_rx
        .recv_timeout(left)
        .map_err(|_| "the server thread did not finish".to_owned())?;
    let (window, messages) = client?;
    let (measurement, drain) = served?;
    Ok(Outcome {
        measurement,
        messages,
        deliveries: messages * scenario.fan_out(),
        window,
        drain,
    })
}

// ---------------------------------------------------------------------------
// The server thread.

type Started = Result<(SocketAddr, wsgate::ContextHandle), wsgate::Error>;

/// The server thread: attaches, runs the warm-up, the measured window inside
/// `measure`, then serves until shutdown and drains. With `settle`, the
/// window ends only once no task is left to run (the last sessions'
/// first polls), and `window_closed` tells the clients that they may go.
fn serve<M, F>(
    gates: &Gates,
    started: &mpsc::Sender<Started>,
    window_started: &mpsc::Sender<()>,
    window_closed: &mpsc::Sender<()>,
    settle: bool,
    measure: F,
) -> Result<(M, DrainReport), String>
where
    F: FnOnce(&mut dyn FnMut()) -> M,
{
    let ex = Executor::new();
    let ctx = match config().and_then(|c| Context::attach(&ex, c)) {
        Ok(ctx) => ctx,
        Err(e) => {
            let msg = e.to_string();
            let _ = started.send(Err(e));
            return Err(msg);
        }
    };
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    started
        .send(Ok((addr, handle.clone())))
        .map_err(|_| "the bench went away".to_owned())?;

    let run_until = |gate: &Flag| {
        async_io::block_on(ex.run(future::or(gate.wait(), handle.shutdown_requested())));
    };
    run_until(&gates.warm);
    // The clients may start the window now: whatever they send waits in the
    // sockets until the loop runs again, inside `measure`.
    let _ = window_started.send(());
    let measurement = measure(&mut || {
        run_until(&gates.measured);
        if settle {
            while ex.try_tick() {}
        }
    });
    let _ = window_closed.send(());
    async_io::block_on(ex.run(handle.shutdown_requested()));
    let report = ctx
        .destroy()
        .drain(&ex, Instant::now() + Duration::from_secs(5));
    Ok((measurement, report))
}

/// `/echo` (echo) and `/broadcast` (broadcast) on 127.0.0.1:0, default limits.
fn config() -> Result<Config, wsgate::Error> {
    let vhost = VhostConfig::builder("bench")
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .protocol(Echo)
        .protocol(Broadcast::default())
        .mount(Mount::websocket("/echo", ["echo"]))
        .mount(Mount::websocket("/broadcast", ["broadcast"]))
        .build()?;
    Ok(Config::builder().vhost(vhost).build()?)
}

/// The phase boundaries, set by the client thread.
#[derive(Debug, Default)]
struct Gates {
    warm: Flag,
    measured: Flag,
}

impl Gates {
    fn open_all(&self) {
        self.warm.set();
        self.measured.set();
    }
}

/// A one-shot flag that the server's loop can await.
#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    event: event_listener::Event,
}

impl Flag {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    async fn wait(&self) {
        loop {
            let listener = self.event.listen();
            if self.set.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }
}

// ---------------------------------------------------------------------------
// The clients.

/// Connects, warms up, opens the window, runs the measured messages, closes
/// the window. Returns the window's duration and its message count.
fn drive(
    scenario: Scenario,
    addr: SocketAddr,
    gates: &Gates,
    window_started: &mpsc::Receiver<()>,
    window_closed: &mpsc::Receiver<()>,
) -> Result<(Duration, u64), String> {
    if let Kind::Idle { conns } = scenario.kind {
        return drive_idle(conns, addr, gates, window_started, window_closed);
    }
    let batch = scenario.batch();
    let rounds = |n: u64| n.div_ceil(batch);
    let (warm_rounds, measured_rounds) = (rounds(scenario.warmup), rounds(scenario.measured));
    let mut clients = Clients::connect(scenario.kind, addr)?;
    for _ in 0..warm_rounds {
        clients.round()?;
    }
    gates.warm.set();
    window_started
        .recv_timeout(IO_TIMEOUT)
        .map_err(|_| "the server did not open the window".to_owned())?;
    let started = Instant::now();
    for _ in 0..measured_rounds {
        clients.round()?;
    }
    let window = started.elapsed();
    gates.measured.set();
    Ok((window, measured_rounds * batch))
}

/// The idle scenario: echo round trips on [`IDLE_WARM`] connections, then
/// `conns` handshakes inside the window; the connections stay open until
/// the server has closed the window.
fn drive_idle(
    conns: usize,
    addr: SocketAddr,
    gates: &Gates,
    window_started: &mpsc::Receiver<()>,
    window_closed: &mpsc::Receiver<()>,
) -> Result<(Duration, u64), String> {
    let mut warm = Clients::connect(
        Kind::Echo {
            conns: IDLE_WARM,
            inflight: 1,
        },
        addr,
    )?;
    warm.round()?;
    gates.warm.set();
    window_started
        .recv_timeout(IO_TIMEOUT)
        .map_err(|_| "the server did not open the window".to_owned())?;
    let started = Instant::now();
    let idle = (0..conns)
        .map(|_| handshake(addr, "/echo"))
        .collect::<Result<Vec<_>, _>>()?;
    let window = started.elapsed();
    gates.measured.set();
    window_closed
        .recv_timeout(SCENARIO_LIMIT)
        .map_err(|_| "the server did not close the window".to_owned())?;
    drop((idle, warm));
    Ok((window, conns as u64))
}

/// The client connections of one scenario, with their pre-encoded batch.
struct Clients {
    kind: Kind,
    /// Echo: every connection. Broadcast: the publisher first, then the
    /// subscribers.
    conns: Vec<TcpStream>,
    /// One batch of masked client frames, written with one call.
    batch: Vec<u8>,
    /// What one batch looks like coming back.
    expected: Vec<u8>,
    buf: Vec<u8>,
}

impl Clients {
    fn connect(kind: Kind, addr: SocketAddr) -> Result<Self, String> {
        let payload: [u8; PAYLOAD] = std::array::from_fn(|i| i as u8);
        let (conns, per_batch) = match kind {
            Kind::Echo { conns, inflight } => (
                (0..conns)
                    .map(|_| handshake(addr, "/echo"))
                    .collect::<Result<Vec<_>, _>>()?,
                inflight,
            ),
            Kind::Idle { .. } => return Err("an idle scenario has no batches".to_owned()),
            Kind::Broadcast { subs, window } => {
                // Subscribers first: each joins the room before its 101.
                let mut all = (0..subs)
                    .map(|_| handshake(addr, "/broadcast"))
                    .collect::<Result<Vec<_>, _>>()?;
                all.insert(0, handshake(addr, "/broadcast")?);
                (all, window)
            }
        };
        let frame = masked_frame(&payload);
        let mut server_frame = vec![0x82, PAYLOAD as u8];
        server_frame.extend_from_slice(&payload);
        Ok(Self {
            kind,
            conns,
            batch: frame.repeat(per_batch),
            expected: server_frame.repeat(per_batch),
            buf: vec![0; SERVER_FRAME * per_batch],
        })
    }

    /// One batch: written to every echo connection (or by the publisher),
    /// then read back in full from every echo connection (or subscriber),
    /// and compared byte for byte.
    fn round(&mut self) -> Result<(), String> {
        let readers = match self.kind {
            Kind::Echo { .. } | Kind::Idle { .. } => {
                for c in &mut self.conns {
                    c.write_all(&self.batch)
                        .map_err(|e| format!("write: {e}"))?;
                }
                0..self.conns.len()
            }
            Kind::Broadcast { .. } => {
                self.conns[0]
                    .write_all(&self.batch)
                    .map_err(|e| format!("publish: {e}"))?;
                1..self.conns.len()
            }
        };
        for i in readers {
            self.conns[i]
                .read_exact(&mut self.buf)
                .map_err(|e| format!("read on connection {i}: {e}"))?;
            if self.buf != self.expected {
                return Err(format!(
                    "connection {i} received something else than its messages: {:02x?}",
                    &self.buf[..self.buf.len().min(64)]
                ));
            }
        }
        Ok(())
    }
}

/// Opens a WebSocket to `path` with a written-out upgrade request and reads
/// the `101` head (a byte at a time, so nothing after it is consumed).
fn handshake(addr: SocketAddr, path: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("handshake write: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => {
                return Err(format!(
                    "closed mid-handshake: {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
            Err(e) => return Err(format!("handshake read: {e}")),
        }
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(format!(
            "upgrade refused: {:?}",
            String::from_utf8_lossy(&head)
        ));
    }
    Ok(s)
}

/// A final binary client frame carrying `payload`, masked (RFC 6455 5.3).
fn masked_frame(payload: &[u8; PAYLOAD]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x82, 0x80 | PAYLOAD as u8];
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}
