//! Listening sockets: binding (all before anything starts), the accept loop,
//! the acceptor, and the hand-off of each accepted connection to the least
//! loaded worker. What a connection is then served with is the listener's
//! [`Service`], which the layer above provides.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use event_listener::Event;
use futures_lite::future;

use super::connection::{Service, refuse_busy, serve};
use super::reactor::NonBlocking;
use super::transport::{Acceptor, Tcp, Transport};
use super::workers::Workers;
use crate::common::lock;
use crate::error::Error;

/// The accept backlog: deep enough for connection storms (the same as tokio's).
const BACKLOG: i32 = 1024;

/// Connections refused with a polite 503 at once; above this they are reset.
const MAX_REFUSING: usize = 64;

/// How long the accept loop backs off after an accept error (out of
/// descriptors, say) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one "accept failed" warning per this long; the others are counted
/// and reported with the next one.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(5);

/// One listening socket and its accept loop.
pub(crate) struct Listener {
    /// The address as configured (port 0 stays 0).
    pub(crate) configured: SocketAddr,
    /// The address bound (port 0 resolved).
    pub(crate) local: SocketAddr,
    stopped: AtomicBool,
    stop: Event,
    refusing: Arc<AtomicUsize>,
    /// What accepted streams go through (`None`: plain TCP); a
    /// reconfiguration may swap it, for the connections accepted after.
    acceptor: Mutex<Option<Arc<dyn Acceptor>>>,
    /// Accept errors since the last warning.
    accept_errors: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
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
    /// Wraps a bound socket and spawns its accept loop on worker 0: each
    /// connection goes through `acceptor` (plain TCP without one) and is
    /// served with `service` on the least loaded worker.
    pub(crate) fn start(
        configured: SocketAddr,
        socket: TcpListener,
        workers: &Arc<Workers>,
        service: Arc<dyn Service>,
        acceptor: Option<Arc<dyn Acceptor>>,
    ) -> Arc<Self> {
        let local = socket.local_addr().unwrap_or(configured);
        let listener = Arc::new(Self {
            configured,
            local,
            stopped: AtomicBool::new(false),
            stop: Event::new(),
            refusing: Arc::new(AtomicUsize::new(0)),
            acceptor: Mutex::new(acceptor),
            accept_errors: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        });
        match Async::new(socket) {
            Ok(socket) => {
                let accept = AcceptLoop {
                    listener: listener.clone(),
                    workers: workers.clone(),
                    service,
                };
                workers.first().spawn(accept.run(socket));
            }
            Err(e) => tracing::error!(%local, error = %e, "cannot register listener"),
        }
        listener
    }

    /// Replaces the acceptor for the connections accepted from now on.
    pub(crate) fn set_acceptor(&self, acceptor: Option<Arc<dyn Acceptor>>) {
        *lock(&self.acceptor) = acceptor;
    }

    /// Ends the accept loop at once; the socket closes with it.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify(usize::MAX);
    }

    /// Logs an accept error, at most once per [`ACCEPT_WARNING_EVERY`]: at
    /// the descriptor limit the loop fails every 50 ms.
    fn accept_failed(&self, e: &io::Error) {
        let errors = self.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = lock(&self.last_warning);
        if last.is_some_and(|t| now.duration_since(t) < ACCEPT_WARNING_EVERY) {
            return;
        }
        *last = Some(now);
        drop(last);
        self.accept_errors.store(0, Ordering::Relaxed);
        tracing::warn!(local = %self.local, error = %e, errors, "accept failed; backing off");
    }
}

/// What an accept loop needs.
struct AcceptLoop {
    listener: Arc<Listener>,
    workers: Arc<Workers>,
    service: Arc<dyn Service>,
}

impl AcceptLoop {
    async fn run(self, socket: Async<TcpListener>) {
        let listener = &self.listener;
        tracing::debug!(local = %listener.local, "accepting");
        loop {
            let stop = listener.stop.listen();
            if listener.stopped.load(Ordering::Acquire) {
                break;
            }
            // The accepted socket is not registered with async-io here: a
            // plain connection is registered with its worker's reactor.
            let accepted = future::or(
                async { Some(socket.read_with(NonBlocking::accept).await) },
                async {
                    stop.await;
                    None
                },
            )
            .await;
            match accepted {
                None => break,
                Some(Ok((stream, peer))) => self.on_accept(stream, peer),
                Some(Err(e)) => {
                    // Out of descriptors or memory: back off instead of
                    // spinning; the listener stays up and retries.
                    listener.accept_failed(&e);
                    Timer::after(ACCEPT_BACKOFF).await;
                }
            }
        }
        tracing::debug!(local = %listener.local, "listener stopped");
    }

    fn on_accept(&self, stream: NonBlocking, peer: SocketAddr) {
        let _ = stream.get_ref().set_nodelay(true);
        let Some(mut slot) = self.workers.try_connection() else {
            // Refusals are short and bounded (MAX_REFUSING); they stay on the
            // accepting worker.
            self.service.refused(503);
            let refusing = &self.listener.refusing;
            if refusing.fetch_add(1, Ordering::AcqRel) < MAX_REFUSING {
                let refusing = refusing.clone();
                let Ok(stream) = Async::new(stream.into_inner()) else {
                    refusing.fetch_sub(1, Ordering::AcqRel);
                    return;
                };
                self.workers.first().spawn(async move {
                    refuse_busy(Tcp(stream)).await;
                    refusing.fetch_sub(1, Ordering::AcqRel);
                });
            } else {
                refusing.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(%peer, "over the connection limit; reset");
            }
            return;
        };
        // The connection (and the session it may become) is served by the
        // least loaded worker until it ends; its slot counts it there.
        let worker = slot.hand_off();
        let service = self.service.clone();
        let acceptor = lock(&self.listener.acceptor).clone();
        let accepted_at = Instant::now();
        match acceptor {
            None => {
                // Edge-triggered in the worker's reactor where it has one
                // (Linux); async-io's one-shot registration otherwise.
                #[cfg(target_os = "linux")]
                let stream = match worker.reactor().map(|r| r.register(stream)) {
                    Some(Ok(registered)) => {
                        worker.spawn(serve(registered, peer, service, slot, accepted_at));
                        return;
                    }
                    Some(Err(stream)) => stream,
                    // The worker's task set is gone (teardown).
                    None => return,
                };
                #[cfg(not(target_os = "linux"))]
                let stream = stream.into_inner();
                if let Some(stream) = register(stream, peer) {
                    worker.spawn(serve(Tcp(stream), peer, service, slot, accepted_at));
                }
            }
            Some(acceptor) => {
                let Some(stream) = register(stream.into_inner(), peer) else {
                    return;
                };
                let mut accepting = acceptor.accept(stream, peer);
                // The acceptor's handshake (TLS) and the request head share
                // one `handshake_timeout` from accept: a peer cannot take it
                // twice by stalling in each.
                let limit = service.head_limits().handshake_timeout;
                worker.spawn(async move {
                    // The handshake is borrowed, not moved, into the race: on
                    // a timeout it is counted before its socket closes.
                    let accepted = future::or(async { Some((&mut accepting).await) }, async {
                        Timer::at(accepted_at + limit).await;
                        None
                    })
                    .await;
                    match accepted {
                        Some(Ok(stream)) => {
                            serve::<Box<dyn Transport>>(stream, peer, service, slot, accepted_at)
                                .await;
                        }
                        Some(Err(e)) => tracing::debug!(%peer, error = %e, "acceptor refused"),
                        None => {
                            acceptor.timed_out(peer);
                            tracing::debug!(%peer, "acceptor timed out");
                            drop(accepting);
                        }
                    }
                });
            }
        }
    }
}

/// An accepted stream registered with async-io, or `None` (logged) if the
/// reactor refuses it; the connection is then dropped.
fn register(stream: TcpStream, peer: SocketAddr) -> Option<Async<TcpStream>> {
    Async::new(stream)
        .inspect_err(|e| tracing::debug!(%peer, error = %e, "cannot register connection"))
        .ok()
}
