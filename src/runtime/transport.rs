//! Transports and acceptors: the seam between sockets and sessions.
//!
//! A [`Transport`] is any byte stream a connection can run on: an accepted
//! TCP stream, a Unix socket, an in-memory pipe, a TLS stream. A listener's
//! [`Acceptor`] turns each accepted TCP stream into the transport its
//! connections run on: the plain acceptor hands the stream on as it is (and
//! keeps the hot path free of indirection); the TLS acceptor
//! (`runtime/tls.rs`, feature `tls`) runs the TLS handshake first. The session layer never knows which.
//!
//! A host with a stream of its own (a Unix socket it accepted, its own TLS)
//! hands it to [`ContextHandle::serve_stream`](crate::ContextHandle::serve_stream).

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_io::Async;
use futures_lite::{AsyncRead, AsyncWrite};

use crate::config::{Binding, VhostBuilder};
use crate::proto::tls::TlsInfo;

/// A byte stream a connection can run on.
///
/// `poll_close` should half-close the stream (send FIN and keep reading), so
/// that a refusal's answer leaves at once while wsgate reads what the client
/// still sends; it must not wait for the peer.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Resolves when the stream may have bytes to read, registering for a
    /// wake-up otherwise. After a read that returned less than it asked for,
    /// the session waits here instead of making a read call that would only
    /// say "would block". The default says "try reading".
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// The facts of the TLS handshake this stream ran, if it is a TLS
    /// stream: they reach every request on it
    /// ([`Request::tls`](crate::Request::tls)), and on a TLS listener the
    /// request's `Host` must agree with the SNI name (else 421). The
    /// default says "not TLS".
    fn tls(&self) -> Option<Arc<TlsInfo>> {
        None
    }
}

impl Transport for Box<dyn Transport> {
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        (**self).poll_readable(cx)
    }

    fn tls(&self) -> Option<Arc<TlsInfo>> {
        (**self).tls()
    }
}

impl Transport for Async<TcpStream> {
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Self::poll_readable(self, cx)
    }
}

#[cfg(unix)]
impl Transport for Async<UnixStream> {
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Self::poll_readable(self, cx)
    }
}

/// A boxed future, as an [`Acceptor`] returns it.
pub type Accepting = Pin<Box<dyn Future<Output = io::Result<Box<dyn Transport>>> + Send>>;

/// Turns each TCP stream a listener accepts into the [`Transport`] its
/// connection runs on (a TLS handshake, a PROXY-protocol preamble, ...).
///
/// The future runs on the loop, under the listener's default vhost's
/// `handshake_timeout` (a peer that stalls is dropped when it passes), and
/// must not block. An error closes the connection without an answer.
pub trait Acceptor: Send + Sync + 'static {
    /// Accepts `stream` from `peer`.
    fn accept(&self, stream: Async<TcpStream>, peer: SocketAddr) -> Accepting;

    /// Called when an [`accept`](Self::accept) future from `peer` passed
    /// the handshake timeout and was dropped (for counting). The default
    /// does nothing.
    fn timed_out(&self, peer: SocketAddr) {
        let _ = peer;
    }
}

/// An acceptor as a configuration carries it.
struct AcceptorObject(Arc<dyn Acceptor>);

/// The acceptor a configuration carries.
pub(crate) fn bound_acceptor(binding: &Binding) -> Option<Arc<dyn Acceptor>> {
    binding.get::<AcceptorObject>().map(|a| a.0.clone())
}

impl VhostBuilder {
    /// Runs every connection this vhost's listeners accept through
    /// `acceptor` first (a TLS handshake, a PROXY-protocol preamble). Vhosts
    /// that share a listen address must share the acceptor too (the same
    /// value, cloned into each builder, or none on all of them). Default:
    /// none (plain TCP).
    pub fn acceptor(self, acceptor: Arc<dyn Acceptor>) -> Self {
        let name = std::any::type_name_of_val(&*acceptor).to_owned();
        let identity = Arc::as_ptr(&acceptor).cast::<()>() as usize;
        self.acceptor_binding(Binding::shared(name, AcceptorObject(acceptor), identity))
    }
}

/// An accepted TCP stream whose `close` half-closes the connection
/// (`shutdown(Write)`), so that a refusal's FIN leaves at once while we read
/// what the client still sends. async-io's own `poll_close` only flushes.
pub(crate) struct Tcp(pub(crate) Async<TcpStream>);

impl Transport for Tcp {
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
