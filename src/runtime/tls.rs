//! The TLS acceptor (feature `tls`): one per TLS listener, computed from the
//! vhosts that share the listener (their `Host` names and server
//! configurations), and replaced whenever that set or a certificate changes;
//! connections already accepted keep the configuration they started with.
//!
//! The handshake runs in two steps, as rustls' `Acceptor` allows: read the
//! ClientHello, pick the vhost whose names match its SNI (exact, then `*.`
//! wildcard, then the vhost without names), then finish the handshake with
//! that vhost's `ServerConfig` (its certificate, its client verification,
//! ALPN `http/1.1`). So mutual TLS is per vhost too. The whole handshake
//! runs under the listener's `handshake_timeout` (see `listener.rs`); every
//! failure is counted by reason.
//!
//! The resulting stream carries the handshake's facts ([`TlsInfo`]: SNI,
//! ALPN, the verified client chain) to the connection, which attaches them
//! to each request; the session layer never knows it runs over TLS.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_io::Async;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::LazyConfigAcceptor;
use futures_rustls::server::TlsStream;
use rustls::ServerConfig;

use super::transport::{Accepting, Acceptor, Tcp, Transport};
use crate::proto::tls::{Certificate, TlsInfo, pick_site};

/// Why a TLS handshake failed, as `wsgate_tls_handshake_failures_total`
/// labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// It did not finish within `handshake_timeout` (a silent or stalling
    /// peer).
    Timeout,
    /// The peer closed before the handshake finished.
    Closed,
    /// The first bytes were not a TLS ClientHello (plain HTTP, garbage).
    NotTls,
    /// A vhost with `client_ca` got no client certificate, or one that does
    /// not verify.
    ClientCertificate,
    /// Any other TLS error (no common version or cipher suite, a bad
    /// message, an alert from the peer).
    Protocol,
    /// A socket error.
    Io,
}

impl TlsFailure {
    /// The metric label.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::NotTls => "not_tls",
            Self::ClientCertificate => "client_certificate",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }
}

/// Where failures are counted (the context's metrics).
pub(crate) type FailureSink = Arc<dyn Fn(TlsFailure) + Send + Sync>;

/// One vhost as the TLS acceptor sees it.
#[derive(Clone)]
pub(crate) struct TlsSite {
    /// Its `Host` names (lowercase; exact or `*.` wildcards).
    pub(crate) hosts: Vec<String>,
    pub(crate) server: Arc<ServerConfig>,
}

/// The acceptor of one TLS listener.
pub(crate) struct TlsAcceptor {
    sites: Arc<[TlsSite]>,
    failures: FailureSink,
}

impl TlsAcceptor {
    /// An acceptor choosing among `sites` (in configuration order) by SNI.
    pub(crate) fn new(sites: Vec<TlsSite>, failures: FailureSink) -> Self {
        Self {
            sites: sites.into(),
            failures,
        }
    }
}

impl Acceptor for TlsAcceptor {
    fn accept(&self, stream: Async<TcpStream>, peer: SocketAddr) -> Accepting {
        let sites = self.sites.clone();
        let failures = self.failures.clone();
        Box::pin(async move {
            match handshake(Tcp(stream), &sites).await {
                Ok(stream) => Ok(Box::new(stream) as Box<dyn Transport>),
                Err((failure, e)) => {
                    tracing::debug!(%peer, reason = failure.label(), error = %e, "TLS handshake failed");
                    failures(failure);
                    Err(e)
                }
            }
        })
    }

    fn timed_out(&self, peer: SocketAddr) {
        tracing::debug!(%peer, "TLS handshake timed out");
        (self.failures)(TlsFailure::Timeout);
    }
}

/// What a client speaking plain HTTP to a TLS port is told (as nginx
/// does), instead of a TLS alert it cannot read.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 45\r\nConnection: close\r\n\r\n\
this port speaks TLS: use https:// or wss://\n";

/// The most of a plain-HTTP request read (and dropped) before the answer.
const PLAIN_HTTP_DRAIN: usize = 16 * 1024;

async fn handshake(
    mut stream: Tcp,
    sites: &[TlsSite],
) -> Result<TlsTransport, (TlsFailure, io::Error)> {
    // A TLS connection starts with a handshake record (0x16). One that
    // starts with a letter is plain HTTP sent to the TLS port: answer it in
    // HTTP. Anything else goes to rustls, which refuses it.
    let io = |e: io::Error| (TlsFailure::Io, e);
    stream.0.readable().await.map_err(io)?;
    let mut first = [0u8; 1];
    match stream.0.get_ref().peek(&mut first).map_err(io)? {
        0 => {
            return Err((TlsFailure::Closed, io::ErrorKind::UnexpectedEof.into()));
        }
        _ if first[0].is_ascii_uppercase() => {
            answer_plain_http(&mut stream).await;
            return Err((
                TlsFailure::NotTls,
                io::Error::new(io::ErrorKind::InvalidData, "plain HTTP on a TLS port"),
            ));
        }
        _ => {}
    }
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
        .await
        .map_err(|e| (classify(&e, true), e))?;
    let sni = start
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    let site = pick_site(sites.iter().map(|s| s.hosts.as_slice()), sni.as_deref())
        .and_then(|i| sites.get(i))
        .ok_or_else(|| {
            (
                TlsFailure::Protocol,
                io::Error::other("no TLS vhost on this listener"),
            )
        })?;
    let stream = start
        .into_stream(site.server.clone())
        .await
        .map_err(|e| (classify(&e, false), e))?;
    let (_, conn) = stream.get_ref();
    let info = TlsInfo::new(
        sni,
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| Certificate::from_der(c.to_vec()))
            .collect(),
    );
    Ok(TlsTransport {
        stream,
        info: Arc::new(info),
    })
}

/// Tells a plain-HTTP client to use TLS and closes. What it already sent
/// (its request head, bounded) is read and dropped first, without waiting,
/// so that closing does not reset the connection before it reads the answer.
async fn answer_plain_http(stream: &mut Tcp) {
    use std::io::Read;

    use futures_lite::AsyncWriteExt;
    let mut scratch = [0u8; 2048];
    let mut total = 0;
    while total < PLAIN_HTTP_DRAIN {
        match stream.0.get_ref().read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    if stream.write_all(PLAIN_HTTP_ANSWER).await.is_ok() {
        let _ = stream.close().await;
    }
}

/// The reason of a handshake error; `hello`: while reading the ClientHello.
fn classify(e: &io::Error, hello: bool) -> TlsFailure {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return TlsFailure::Closed;
    }
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return if e.kind() == io::ErrorKind::InvalidData {
            TlsFailure::Protocol
        } else {
            TlsFailure::Io
        };
    };
    match tls {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } if hello => {
            TlsFailure::NotTls
        }
        rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => {
            TlsFailure::ClientCertificate
        }
        _ => TlsFailure::Protocol,
    }
}

/// A TLS stream with its handshake's facts.
pub(crate) struct TlsTransport {
    stream: TlsStream<Tcp>,
    info: Arc<TlsInfo>,
}

impl Transport for TlsTransport {
    /// Ready while rustls holds decrypted bytes not yet read; otherwise the
    /// socket's readiness, so that a session waiting for its next message
    /// makes no read call that can only say "would block" (as over plain
    /// TCP).
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let (tcp, conn) = self.stream.get_mut();
        if !conn.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.0.poll_readable(cx)
    }

    fn tls(&self) -> Option<Arc<TlsInfo>> {
        Some(self.info.clone())
    }
}

impl AsyncRead for TlsTransport {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTransport {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_announces_its_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
