//! The bytes on the wire: the connection's stream, the client's frames, and
//! a streaming parser of the server's frames.
//!
//! `Stream` is where a transport plugs in: plain TCP, or (`wss://`) the same
//! socket wrapped in a rustls `ClientConnection` (rustls is sans-IO, so it
//! fits this non-blocking engine as it is). The engine only reads, writes,
//! flushes and registers a `Stream`.
//! `Frames` is where an extension plugs in: permessage-deflate will pre-build
//! compressed frames (RSV1 set) and negotiate in the handshake; the parser
//! already counts messages without looking into payloads.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// The byte stream of one connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The socket underneath, to register with the poller and to set options.
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &mut s.sock,
        }
    }

    /// Whether a short read means the socket is drained (plain TCP). Over
    /// TLS a read returns at most a record's worth while more may sit in
    /// the socket, and the poller is edge-triggered: read to `WouldBlock`.
    pub(crate) fn short_read_drains(&self) -> bool {
        matches!(self, Self::Plain(_))
    }

    /// `stream` wrapped in TLS towards `host` (SNI), or as it is.
    pub(crate) fn new(
        stream: TcpStream,
        tls: Option<&(Arc<ClientConfig>, String)>,
    ) -> io::Result<Self> {
        let Some((config, host)) = tls else {
            return Ok(Self::Plain(stream));
        };
        let name = ServerName::try_from(host.clone()).map_err(io::Error::other)?;
        let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        Ok(Self::Tls(Box::new(StreamOwned::new(conn, stream))))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    /// Over TLS, pushes the records rustls still holds (a write that met a
    /// full socket leaves them there).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// The TLS client configuration for `wss://`: TLS 1.3 (or 1.2 with
/// `tls12`), ALPN `http/1.1`, and no certificate verification: the load
/// generator measures servers on this machine with test certificates, and
/// must not spend its CPU checking them.
pub(crate) fn tls_client(tls12: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Each connection is a full handshake, as a browser's first visit is.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts any server certificate (signatures are still checked, so the
/// handshake costs the server what it costs with a real client).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The mask key of every client frame: a fixed key lets a message's frame be
/// built once and copied, which is what keeps the client cheap. (A server
/// cannot tell; RFC 6455 asks for unpredictable keys only against proxies.)
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One complete, masked client frame (FIN set).
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = Vec::with_capacity(n + 14);
    f.push(0x80 | opcode);
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        f.push(0x80 | 126);
        f.extend_from_slice(&n.to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    f
}

/// The upgrade request, offering `extensions` if given; the key is fixed,
/// since the response's accept value is not checked (only its status line).
pub(crate) fn upgrade_request(host: &str, path: &str, extensions: Option<&str>) -> Vec<u8> {
    let offer = extensions.map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// A masked client frame of a message compressed with permessage-deflate
/// (RFC 7692): `data` deflated on its own (raw deflate, a sync flush, its
/// `00 00 ff ff` tail stripped), RSV1 set. A message compressed on its own
/// is valid whether or not the client's context takeover was agreed, so the
/// frame can be built once and sent again and again.
pub(crate) fn deflated_frame(opcode: u8, data: &[u8]) -> Vec<u8> {
    let mut d = zlib_rs::Deflate::new(6, false, 15);
    let mut out = vec![0u8; data.len() + 64];
    let _ = d.compress(data, &mut out, zlib_rs::DeflateFlush::SyncFlush);
    out.truncate(d.total_out() as usize);
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    let mut f = client_frame(opcode, &out);
    f[0] |= 0x40;
    f
}

/// `count` distinct JSON messages of `size` bytes (at least 2),
/// the kind of traffic permessage-deflate is for: the same keys, different
/// values, a text field padded with words.
pub(crate) fn json_messages(size: usize, count: usize) -> Vec<Vec<u8>> {
    const WORDS: [&str; 16] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
    ];
    let mut x: u32 = 0x9e37_79b9;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    (0..count)
        .map(|i| {
            let mut m = format!(
                "{{\"id\":{i},\"type\":\"message\",\"room\":\"room-{}\",\"user\":{{\"id\":{},\"name\":\"user{}\"}},\"ts\":{},\"price\":{}.{:02},\"text\":\"",
                rand() % 50,
                rand() % 100_000,
                rand() % 1000,
                1_700_000_000_000u64 + u64::from(rand() % 1_000_000),
                rand() % 1000,
                rand() % 100,
            );
            while m.len() < size {
                m.push_str(WORDS[(rand() % 16) as usize]);
                m.push(' ');
            }
            // ASCII throughout, so any cut is still UTF-8.
            m.truncate(size.saturating_sub(2));
            m.push_str("\"}");
            m.into_bytes()
        })
        .collect()
}

/// A streaming parser of server frames that counts complete data messages
/// and never buffers or validates their payload bytes: the client must cost
/// less than the server it measures. Only control payloads are kept (a ping
/// is answered with its pong).
pub(crate) struct Frames {
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to skip; `None` between frames.
    remaining: Option<u64>,
    /// Payload bytes of the data frames parsed so far.
    pub(crate) data_bytes: u64,
    fin: bool,
    opcode: u8,
    control: Vec<u8>,
}

impl Frames {
    pub(crate) fn new() -> Self {
        Self {
            head: [0; 14],
            head_len: 0,
            remaining: None,
            data_bytes: 0,
            fin: false,
            opcode: 0,
            control: Vec::new(),
        }
    }

    /// Parses `data`; returns the data messages it completed. Answers to
    /// pings are appended to `out`. A Close from the server is an error: no
    /// scenario expects one.
    pub(crate) fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<u64, String> {
        let mut messages = 0;
        while !data.is_empty() {
            if let Some(remaining) = self.remaining {
                let n = remaining.min(data.len() as u64) as usize;
                if self.opcode >= OP_CLOSE {
                    self.control.extend_from_slice(&data[..n]);
                } else {
                    self.data_bytes += n as u64;
                }
                data = &data[n..];
                self.remaining = Some(remaining - n as u64);
                if remaining == n as u64 {
                    messages += self.end_frame(out)?;
                }
                continue;
            }
            // The header: 2 bytes, then the extended length (and a mask key,
            // which a server must not send, but is skipped if it does).
            if self.head_len < 2 && !self.take_head(2, &mut data) {
                continue;
            }
            let ext = match self.head[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let need = 2 + ext + if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            if !self.take_head(need, &mut data) {
                continue;
            }
            let len = match self.head[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                127 => u64::from_be_bytes([
                    self.head[2],
                    self.head[3],
                    self.head[4],
                    self.head[5],
                    self.head[6],
                    self.head[7],
                    self.head[8],
                    self.head[9],
                ]),
                n => u64::from(n),
            };
            self.fin = self.head[0] & 0x80 != 0;
            self.opcode = self.head[0] & 0x0f;
            self.head_len = 0;
            self.remaining = Some(len);
            if len == 0 {
                messages += self.end_frame(out)?;
            }
        }
        Ok(messages)
    }

    /// Moves header bytes from `data` until the header holds `need`; says
    /// whether it does.
    fn take_head(&mut self, need: usize, data: &mut &[u8]) -> bool {
        let take = need.saturating_sub(self.head_len).min(data.len());
        self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
        self.head_len += take;
        *data = &data[take..];
        self.head_len >= need
    }

    fn end_frame(&mut self, out: &mut Vec<u8>) -> Result<u64, String> {
        self.remaining = None;
        if self.opcode < OP_CLOSE {
            return Ok(u64::from(self.fin));
        }
        match self.opcode {
            OP_CLOSE => {
                let code = self
                    .control
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
                return Err(format!("server sent Close {code:?}"));
            }
            OP_PING => out.extend_from_slice(&client_frame(OP_PONG, &self.control)),
            _ => {}
        }
        self.control.clear();
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        // The client frame minus its mask: clear the mask bit, drop the key,
        // unmask the payload.
        let masked = client_frame(opcode, payload);
        let head = masked.len() - payload.len() - 4;
        let mut f = masked[..head].to_vec();
        f[0] = (f[0] & 0x7f) | if fin { 0x80 } else { 0 };
        f[1] &= 0x7f;
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_messages_split_anywhere() {
        let mut wire = Vec::new();
        for size in [0, 5, 125, 126, 65535, 65536, 70000] {
            wire.extend(server_frame(OP_BINARY, true, &vec![7; size]));
        }
        wire.extend(server_frame(OP_TEXT, false, b"ab"));
        wire.extend(server_frame(OP_PING, true, b"p"));
        wire.extend(server_frame(0, true, b"cd"));
        for chunk in [1, 2, 3, 7, 100, 4096, wire.len()] {
            let mut frames = Frames::new();
            let mut out = Vec::new();
            let n: u64 = wire
                .chunks(chunk)
                .map(|c| frames.feed(c, &mut out).unwrap())
                .sum();
            assert_eq!(n, 8, "chunk {chunk}");
            assert_eq!(out, client_frame(OP_PONG, b"p"), "chunk {chunk}");
        }
    }

    #[test]
    fn a_close_is_an_error() {
        let mut out = Vec::new();
        let err = Frames::new()
            .feed(&server_frame(OP_CLOSE, true, &[0x03, 0xe9]), &mut out)
            .unwrap_err();
        assert!(err.contains("1001"), "{err}");
    }
}
