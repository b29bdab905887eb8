//! Shared helpers for the integration tests: a server on its own thread that
//! owns its executor, WebSocket and raw-HTTP clients over real loopback
//! sockets, timeouts that every async test races, and descriptor counting.

#![allow(dead_code, unreachable_pub, missing_docs)] // each test file uses a subset

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_io::{Async, Timer};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use futures_lite::future;
use wsgate::{Config, Context, ContextHandle, DrainReport};

pub mod example;
#[cfg(feature = "cli")]
pub mod gateway;
pub mod redis;
#[cfg(feature = "tls")]
pub mod tls;

/// A WebSocket client over a real TCP connection.
pub type Ws = WebSocketStream<Async<TcpStream>>;

/// Default time limit for one test's async part.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Runs `fut` on this thread, panicking if it takes longer than `limit`.
pub fn block_on_timeout<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    async_io::block_on(future::or(fut, async {
        Timer::after(limit).await;
        panic!("timed out after {limit:?}");
    }))
}

/// Runs `fut` with the default limit.
pub fn run<T>(fut: impl Future<Output = T>) -> T {
    block_on_timeout(LIMIT, fut)
}

/// A wsgate context served by its own thread, which owns the executor: it
/// runs the loop until shutdown, then destroys and drains in the strict order.
pub struct Server {
    pub addrs: Vec<SocketAddr>,
    pub handle: ContextHandle,
    thread: Option<thread::JoinHandle<DrainReport>>,
}

impl Server {
    /// Attaches `config` on a new thread; `setup` runs on that thread with the
    /// context before the loop starts (add vhosts, etc.).
    pub fn start(config: Config) -> Self {
        Self::start_with(config, |_| {})
    }

    pub fn start_with(config: Config, setup: impl FnOnce(&Context<'_>) + Send + 'static) -> Self {
        Self::start_drain(config, Duration::from_secs(10), setup)
    }

    /// Like `start_with`, with the drain deadline after shutdown.
    pub fn start_drain(
        config: Config,
        drain_for: Duration,
        setup: impl FnOnce(&Context<'_>) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let ex = Executor::new();
            let ctx = Context::attach(&ex, config).expect("attach");
            setup(&ctx);
            let handle = ctx.handle();
            tx.send((ctx.local_addrs(), handle.clone())).unwrap();
            async_io::block_on(ex.run(handle.shutdown_requested()));
            ctx.destroy().drain(&ex, Instant::now() + drain_for)
        });
        let (addrs, handle) = rx.recv_timeout(LIMIT).expect("server did not start");
        Self {
            addrs,
            handle,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Requests shutdown and waits for the drain report.
    pub fn shutdown(mut self) -> DrainReport {
        let _ = self.handle.shutdown();
        self.join()
    }

    /// Waits for the server thread (after someone else requested shutdown).
    pub fn join(&mut self) -> DrainReport {
        self.thread
            .take()
            .expect("joined twice")
            .join()
            .expect("server thread panicked")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.handle.shutdown();
            let _ = t.join();
        }
    }
}

/// Opens a WebSocket to `ws://addr{path}`.
pub async fn connect(addr: SocketAddr, path: &str) -> Ws {
    try_connect(addr, format!("ws://{addr}{path}"))
        .await
        .expect("websocket handshake")
}

/// Opens a WebSocket with a request built by the caller (headers, subprotocols).
pub async fn try_connect(
    addr: SocketAddr,
    request: impl IntoClientRequest + Unpin,
) -> Result<Ws, tungstenite::Error> {
    let tcp = Async::<TcpStream>::connect(addr).await?;
    let (ws, _resp) = async_tungstenite::client_async(request, tcp).await?;
    Ok(ws)
}

/// A raw HTTP exchange: sends `request` bytes, reads until the server closes
/// (or `limit`), and returns the status, the head and the body.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if let Some(reply) = HttpReply::parse(&out)
                    && reply.complete
                {
                    return reply;
                }
            }
            Err(_) => break,
        }
    }
    HttpReply::parse(&out)
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&out)))
}

#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
    complete: bool,
}

impl HttpReply {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok());
        Some(Self {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
            complete: len.is_some_and(|l| body.len() >= l),
        })
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// A minimal valid upgrade request for `path`, with `extra` header lines
/// (each ending in `\r\n`).
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A closure run on a server thread with its `Context`.
type Command = Box<dyn FnOnce(&Context<'_>) + Send>;

/// Runs closures on a controlled server's thread, with its `Context`, while
/// the loop runs: runtime `add_vhost`, `remove_vhost`, vhost look-ups.
pub struct Control {
    tx: mpsc::Sender<Command>,
    ready: std::sync::Arc<event_listener::Event>,
}

impl Control {
    /// Runs `f` on the server thread, between two turns of its loop, and
    /// returns its result.
    pub fn with<R: Send + 'static>(&self, f: impl FnOnce(&Context<'_>) -> R + Send + 'static) -> R {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .send(Box::new(move |ctx| {
                let _ = rtx.send(f(ctx));
            }))
            .expect("server thread is gone");
        self.ready.notify(usize::MAX);
        rrx.recv_timeout(LIMIT)
            .expect("server thread did not run the command")
    }
}

impl Server {
    /// Like `start`, plus a `Control` that runs closures with the context
    /// while the loop runs.
    pub fn start_controlled(config: Config) -> (Self, Control) {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let ready = std::sync::Arc::new(event_listener::Event::new());
        let notified = ready.clone();
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let ex = Executor::new();
            let ctx = Context::attach(&ex, config).expect("attach");
            let handle = ctx.handle();
            tx.send((ctx.local_addrs(), handle.clone())).unwrap();
            let commands = async {
                loop {
                    // Listen before looking, so that no notification is lost.
                    let listener = notified.listen();
                    loop {
                        match cmd_rx.try_recv() {
                            Ok(cmd) => cmd(&ctx),
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => {
                                return std::future::pending::<()>().await;
                            }
                        }
                    }
                    listener.await;
                }
            };
            async_io::block_on(ex.run(future::or(handle.shutdown_requested(), commands)));
            ctx.destroy()
                .drain(&ex, Instant::now() + Duration::from_secs(10))
        });
        let (addrs, handle) = rx.recv_timeout(LIMIT).expect("server did not start");
        let server = Self {
            addrs,
            handle,
            thread: Some(thread),
        };
        (server, Control { tx: cmd_tx, ready })
    }
}

/// Reads one HTTP response (head plus `Content-Length` body) from a
/// keep-alive connection, leaving anything after it unread in `pending`.
/// Not for answers to HEAD, whose `Content-Length` announces no body.
pub fn read_reply(s: &mut TcpStream, pending: &mut Vec<u8>) -> HttpReply {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("response without Content-Length");
            let total = end + 4 + len;
            if pending.len() >= total {
                let reply = HttpReply::parse(&pending[..total]).expect("HTTP reply");
                pending.drain(..total);
                return reply;
            }
        }
        let n = s.read(&mut buf).expect("read HTTP reply");
        assert!(
            n > 0,
            "connection closed mid-reply: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Starts async-io's reactor (its poller's descriptors live as long as the
/// process) and returns the number of open descriptors: the baseline that a
/// lifecycle test compares against once everything it opened is gone.
pub fn fd_baseline() -> usize {
    let warm = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    drop(warm);
    async_io::block_on(Timer::after(Duration::from_millis(1)));
    open_fds()
}

/// How a WebSocket client's stream ended, as seen by [`read_to_end`].
#[derive(Debug)]
pub struct Ending {
    /// Text and binary messages received before the Close frame, in order.
    pub messages: Vec<wsgate::Message>,
    /// The Close frame, if one arrived (`Some(None)`: a Close without a code).
    pub close: Option<Option<tungstenite::protocol::CloseFrame>>,
    /// Anything at all that arrived after the Close frame (must stay empty).
    pub after_close: Vec<wsgate::Message>,
    /// The error that ended the stream, if it did not end cleanly (`None`).
    pub error: Option<tungstenite::Error>,
}

impl Ending {
    /// The code of the Close frame, if one with a code arrived.
    pub fn close_code(&self) -> Option<u16> {
        self.close.as_ref()?.as_ref().map(|f| u16::from(f.code))
    }

    /// Panics unless a Close with `code` arrived, nothing followed it, and the
    /// stream then ended cleanly (the close handshake completed).
    pub fn assert_closed_with(&self, code: u16) {
        assert_eq!(self.close_code(), Some(code), "{self:?}");
        assert!(self.after_close.is_empty(), "{self:?}");
        assert!(self.error.is_none(), "{self:?}");
    }
}

/// Reads `ws` until its stream ends, recording the messages, the Close frame
/// (tungstenite answers it on the next read) and what followed.
pub async fn read_to_end(ws: &mut Ws) -> Ending {
    use futures_lite::StreamExt;
    let mut ending = Ending {
        messages: Vec::new(),
        close: None,
        after_close: Vec::new(),
        error: None,
    };
    loop {
        match ws.next().await {
            None => return ending,
            Some(Err(e)) => {
                ending.error = Some(e);
                return ending;
            }
            Some(Ok(wsgate::Message::Close(f))) if ending.close.is_none() => ending.close = Some(f),
            Some(Ok(m)) if ending.close.is_some() => ending.after_close.push(m),
            Some(Ok(m @ (wsgate::Message::Text(_) | wsgate::Message::Binary(_)))) => {
                ending.messages.push(m);
            }
            Some(Ok(_)) => {} // pings and pongs
        }
    }
}

/// Serialises the tests of one test binary that count descriptors (a
/// process-wide number): every test of such a file holds this guard.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One vhost called `name` on 127.0.0.1:0 serving the built-in echo protocol
/// at `/echo`, with `limits`.
pub fn echo_config(name: &str, limits: wsgate::Limits) -> Config {
    let vhost = wsgate::VhostConfig::builder(name)
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(wsgate::protocols::Echo)
        .mount(wsgate::Mount::websocket("/echo", ["echo"]))
        .limits(limits)
        .build()
        .unwrap();
    Config::builder().vhost(vhost).build().unwrap()
}

/// Connects `n` clients to `/echo`, a batch at a time, and checks that each
/// one echoes a message.
pub async fn connect_echoing(addr: SocketAddr, n: usize) -> Vec<Ws> {
    use futures_lite::StreamExt;
    const BATCH: usize = 50;
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = BATCH.min(n - clients.len());
        clients.extend(
            futures_util::future::join_all((0..batch).map(|_| connect(addr, "/echo"))).await,
        );
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(wsgate::Message::text(format!("hello {i}")))
            .await
            .expect("send");
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        let m = ws.next().await.expect("echo").expect("echo");
        assert_eq!(m, wsgate::Message::text(format!("hello {i}")));
    }
    clients
}

/// A one-shot signal between threads that a task can await (for example to
/// keep a host's loop running until a client thread is done).
#[derive(Debug, Default)]
pub struct Flag {
    set: std::sync::atomic::AtomicBool,
    event: event_listener::Event,
}

impl Flag {
    pub fn set(&self) {
        self.set.store(true, std::sync::atomic::Ordering::Release);
        self.event.notify(usize::MAX);
    }

    pub async fn wait(&self) {
        loop {
            let listener = self.event.listen();
            if self.set.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }
}

/// Blocks the loop of the context behind `handle` (with a posted closure)
/// until the returned sender is used or dropped, so that no session reads or
/// writes meanwhile. Returns once the loop is held.
pub fn hold_loop(handle: &ContextHandle) -> mpsc::Sender<()> {
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    handle
        .post(move || {
            held_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(LIMIT);
        })
        .expect("post");
    held_rx.recv_timeout(LIMIT).expect("the loop was not held");
    release_tx
}

/// The masking key of every frame built by [`client_frame`].
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame header (RFC 6455 section 5.2): `first` is the first byte (FIN, RSV
/// and opcode), `len` the payload length it announces (shortest encoding),
/// followed by [`MASK`] when `masked`.
pub fn frame_head(first: u8, len: u64, masked: bool) -> Vec<u8> {
    let bit = if masked { 0x80 } else { 0 };
    let mut head = vec![first];
    match len {
        0..=125 => head.push(bit | len as u8),
        126..=0xffff => {
            head.push(bit | 126);
            head.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            head.push(bit | 127);
            head.extend_from_slice(&len.to_be_bytes());
        }
    }
    if masked {
        head.extend_from_slice(&MASK);
    }
    head
}

/// A masked client frame written by hand: `first` is the first byte (`0x81`
/// a final text frame, `0x02` a first binary fragment, `0x80` a final
/// continuation). A prefix of it is a valid partial frame.
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_head(first, payload.len() as u64, true);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// One unmasked frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// FIN, RSV and opcode.
    pub first: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    /// The code of a Close frame that carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The reason text of a Close frame (lossy).
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// Splits what a server sent into frames; panics on a masked or truncated one.
pub fn server_frames(mut bytes: &[u8]) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "truncated frame header: {bytes:?}");
        assert_eq!(bytes[1] & 0x80, 0, "the server masked a frame");
        let (len, at) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (usize::try_from(u64::from_be_bytes(n)).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        assert!(bytes.len() >= at + len, "truncated frame ({len} bytes)");
        frames.push(ServerFrame {
            first: bytes[0],
            payload: bytes[at..at + len].to_vec(),
        });
        bytes = &bytes[at + len..];
    }
    frames
}

/// How the server ended a raw connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEnd {
    /// A FIN: orderly close.
    Eof,
    /// A RST: the server closed with unread input (allowed after an error).
    Reset,
}

/// Reads `s` until the server closes TCP (EOF or reset) and returns what
/// arrived; panics if that takes longer than `limit`.
pub fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, TcpEnd) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server did not close TCP within {limit:?}; got {} bytes: {:?}",
            out.len(),
            String::from_utf8_lossy(&out[..out.len().min(256)])
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, TcpEnd::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (out, TcpEnd::Reset);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read failed before the server closed: {e}"),
        }
    }
}

/// Sends `request` on a new connection and reads until the server closes TCP
/// (within `limit`); returns the parsed answer and how the connection ended.
pub fn http_until_closed(addr: SocketAddr, request: &[u8], limit: Duration) -> (HttpReply, TcpEnd) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let (bytes, end) = read_until_closed(&mut s, limit);
    let reply = HttpReply::parse(&bytes)
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&bytes)));
    (reply, end)
}

/// Opens a WebSocket to `path` with a raw TCP client: sends
/// [`upgrade_request`] and reads exactly the `101` head (a byte at a time),
/// leaving whatever follows unread. Reads time out after [`LIMIT`].
pub fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    raw_ws_with(addr, path, "")
}

/// Like [`raw_ws`], with `extra` header lines (each ending in `\r\n`).
pub fn raw_ws_with(addr: SocketAddr, path: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(&upgrade_request(path, extra)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read the handshake answer");
        assert_eq!(
            n,
            1,
            "closed mid-handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Waits until `cond` holds, yielding between looks; panics after `limit`.
/// Only for conditions that no event announces (counters).
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        thread::yield_now();
    }
}
