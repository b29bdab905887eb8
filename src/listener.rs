//! Listening sockets: binding (all before anything starts), the accept loop,
//! the hand-off of each accepted connection to the least loaded worker, and
//! the vhosts that share each listener.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_io::{Async, Timer};
use event_listener::Event;
use futures_lite::{AsyncRead, AsyncWrite, future};

use crate::connection::{refuse_busy, serve};
use crate::context::ContextShared;
use crate::error::Error;
use crate::vhost::{Vhost, lock};

/// The accept backlog: deep enough for connection storms (the same as tokio's).
const BACKLOG: i32 = 1024;

/// Connections refused with a polite 503 at once; above this they are reset.
const MAX_REFUSING: usize = 64;

pub(crate) struct Listener {
    pub(crate) configured: SocketAddr,
    pub(crate) local: SocketAddr,
    vhosts: Mutex<Vec<Vhost>>,
    stopped: AtomicBool,
    stop: Event,
    refusing: Arc<AtomicUsize>,
}

/// Binds every address in `addrs` not in `skip` (duplicates once). On any
/// failure the sockets bound so far are closed and the error returned.
pub(crate) fn bind_all(
    addrs: &[SocketAddr],
    skip: &[SocketAddr],
) -> Result<Vec<(SocketAddr, TcpListener)>, Error> {
    let mut bound: Vec<(SocketAddr, TcpListener)> = Vec::new();
    for addr in addrs {
        if skip.contains(addr) || bound.iter().any(|(a, _)| a == addr) {
            continue;
        }
        let socket = bind(*addr).map_err(|source| Error::Bind {
            addr: *addr,
            source,
        })?;
        bound.push((*addr, socket));
    }
    Ok(bound)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Listener {
    /// Wraps a bound socket and spawns its accept loop on the task set.
    pub(crate) fn start(
        configured: SocketAddr,
        socket: TcpListener,
        ctx: &Arc<ContextShared>,
    ) -> Arc<Self> {
        let local = socket.local_addr().unwrap_or(configured);
        let listener = Arc::new(Self {
            configured,
            local,
            vhosts: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            stop: Event::new(),
            refusing: Arc::new(AtomicUsize::new(0)),
        });
        match Async::new(socket) {
            Ok(socket) => {
                let l = listener.clone();
                let c = ctx.clone();
                ctx.spawner.spawn(accept_loop(l, socket, c));
            }
            Err(e) => tracing::error!(%local, error = %e, "cannot register listener"),
        }
        listener
    }

    pub(crate) fn add_vhost(&self, vhost: Vhost) {
        lock(&self.vhosts).push(vhost);
    }

    /// Removes `vhost`; returns `true` if no vhost is left.
    pub(crate) fn remove_vhost(&self, vhost: &Vhost) -> bool {
        let mut v = lock(&self.vhosts);
        v.retain(|w| !Arc::ptr_eq(&w.0, &vhost.0));
        v.is_empty()
    }

    pub(crate) fn vhosts(&self) -> Vec<Vhost> {
        lock(&self.vhosts).clone()
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify(usize::MAX);
    }
}

async fn accept_loop(listener: Arc<Listener>, socket: Async<TcpListener>, ctx: Arc<ContextShared>) {
    tracing::debug!(local = %listener.local, "accepting");
    loop {
        let stop = listener.stop.listen();
        if listener.stopped.load(Ordering::Acquire) {
            break;
        }
        let accepted = future::or(async { Some(socket.accept().await) }, async {
            stop.await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => on_accept(&listener, &ctx, stream, peer),
            Some(Err(e)) => {
                // Out of descriptors or memory: back off instead of spinning;
                // the listener stays up and retries.
                tracing::warn!(local = %listener.local, error = %e, "accept failed");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(local = %listener.local, "listener stopped");
}

fn on_accept(
    listener: &Arc<Listener>,
    ctx: &Arc<ContextShared>,
    stream: Async<TcpStream>,
    peer: SocketAddr,
) {
    let _ = stream.get_ref().set_nodelay(true);
    let stream = Tcp(stream);
    match ctx.try_connection() {
        Some(mut slot) => {
            // The connection (and the session it may become) is served by
            // the least loaded worker until it ends; its slot counts it there.
            let worker = slot.hand_off();
            worker.spawn(serve(stream, peer, listener.clone(), slot));
        }
        // Refusals are short and bounded (MAX_REFUSING); they stay on the
        // accepting worker.
        None => {
            ctx.rejected(503);
            if listener.refusing.fetch_add(1, Ordering::AcqRel) < MAX_REFUSING {
                let refusing = listener.refusing.clone();
                ctx.spawner.spawn(async move {
                    refuse_busy(stream).await;
                    refusing.fetch_sub(1, Ordering::AcqRel);
                });
            } else {
                listener.refusing.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(%peer, "over the connection limit; reset");
            }
        }
    }
}

/// An accepted TCP stream whose `close` half-closes the connection
/// (`shutdown(Write)`), so that a refusal's FIN leaves at once while we read
/// what the client still sends. async-io's own `poll_close` only flushes.
pub(crate) struct Tcp(Async<TcpStream>);

impl crate::session::Transport for Tcp {
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        futures_lite::ready!(Pin::new(&mut self.0).poll_flush(cx))?;
        Poll::Ready(self.0.get_ref().shutdown(Shutdown::Write))
    }
}
