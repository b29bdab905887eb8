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
        self.thread.take().expect("joined twice").join().expect("server thread panicked")
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
    try_connect(addr, format!("ws://{addr}{path}")).await.expect("websocket handshake")
}

/// Opens a WebSocket with a request built by the caller (headers, subprotocols).
pub async fn try_connect(
    addr: SocketAddr,
    request: impl IntoClientRequest + Unpin,
) -> Result<Ws, async_tungstenite::tungstenite::Error> {
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
                if let Some(reply) = HttpReply::parse(&out) {
                    if reply.complete {
                        return reply;
                    }
                }
            }
            Err(_) => break,
        }
    }
    HttpReply::parse(&out).unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&out)))
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
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
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
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
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
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}
