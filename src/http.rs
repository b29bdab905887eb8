//! HTTP/1.1 beside WebSocket: request heads (parsed with httparse), responses,
//! the upgrade check, and the built-in HTTP handlers.
//!
//! The decisions here are pure (bytes in, verdict out) so that they can be
//! unit-tested and fuzzed without sockets.

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;

use crate::config::is_token_byte;
use crate::vhost::Vhost;

/// A parsed HTTP request head, as seen by [`Protocol::open`](crate::Protocol::open)
/// and HTTP handlers.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    query: Option<String>,
    minor_version: u8,
    headers: Vec<(String, Vec<u8>)>,
    peer: SocketAddr,
}

impl Request {
    /// The method (`GET`).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string after `?`, if any (not decoded).
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The first header called `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// All headers in arrival order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The value of cookie `name`, if sent.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    pub fn is_http11(&self) -> bool {
        self.minor_version == 1
    }

    /// The `Host` header without its port, lowercased.
    pub fn host(&self) -> Option<String> {
        let h = self.header("host")?.trim();
        let name = if let Some(rest) = h.strip_prefix('[') {
            // An IPv6 literal: keep the brackets' content.
            rest.split(']').next().unwrap_or(rest)
        } else {
            h.rsplit_once(':').map_or(h, |(name, _)| name)
        };
        Some(name.to_ascii_lowercase())
    }

    /// The `Origin` header for the origin check. A header that is present but
    /// not UTF-8 comes back as a value no allow-list contains, so it can
    /// never pass as "no Origin".
    pub(crate) fn origin(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("origin"))
            .map(|(_, v)| std::str::from_utf8(v).unwrap_or("\u{fffd}"))
    }

    /// Whether any header `name` has the comma-separated token `token`.
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the request announces a body we would have to skip.
    pub(crate) fn has_body(&self) -> bool {
        self.header("transfer-encoding").is_some()
            || self
                .header("content-length")
                .is_some_and(|v| v.trim() != "0")
    }

    /// Whether the connection may serve another request after this one.
    pub(crate) fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.is_http11() || self.has_token("connection", "keep-alive")
    }

    /// A request for tests and handlers built by hand.
    #[doc(hidden)]
    pub fn synthetic(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        peer: SocketAddr,
    ) -> Self {
        let (path, query) = split_target(target);
        Self {
            method: method.to_owned(),
            path,
            query,
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            peer,
        }
    }
}

fn split_target(target: &str) -> (String, Option<String>) {
    match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    }
}

/// An HTTP response from a handler or from wsgate itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Response {
    /// A response with `status` and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// Adds a header.
    #[must_use = "the changed response is returned"]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use = "the changed response is returned"]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    pub fn body_bytes(&self) -> &Bytes {
        &self.body
    }

    /// Serialises status line and headers (the body follows separately).
    pub(crate) fn head_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.headers.len() * 32);
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status,
                reason_phrase(self.status)
            )
            .as_bytes(),
        );
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.status != 101 {
            let len = if head_only && self.body.is_empty() {
                0
            } else {
                self.body.len()
            };
            out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
            out.extend_from_slice(if keep_alive {
                b"Connection: keep-alive\r\n"
            } else {
                b"Connection: close\r\n"
            });
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// An HTTP endpoint mounted on a vhost. Runs on the loop; must not block.
pub trait HttpHandler: Send + Sync + 'static {
    /// Answers one GET or HEAD request.
    fn handle(&self, request: &Request, vhost: &Vhost) -> Response;
}

impl<F> HttpHandler for F
where
    F: Fn(&Request, &Vhost) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &Request, vhost: &Vhost) -> Response {
        self(request, vhost)
    }
}

/// Checks a bearer token, for [`Protocol::open`](crate::Protocol::open):
/// accepted from `Authorization: Bearer TOKEN`, a `token` query parameter, or
/// a `token` cookie (browsers cannot set headers on a WebSocket handshake).
///
/// # Errors
///
/// 401 with `WWW-Authenticate: Bearer` when no token was presented; 403 when
/// the token is wrong. The comparison takes the same time wherever the first
/// difference is.
///
/// # Examples
///
/// ```
/// use wsgate::{Request, http::check_bearer};
///
/// let peer = "127.0.0.1:1".parse().unwrap();
/// let ok = Request::synthetic("GET", "/ws?token=s3cret", &[], peer);
/// assert!(check_bearer(&ok, "s3cret").is_ok());
/// let none = Request::synthetic("GET", "/ws", &[], peer);
/// assert_eq!(check_bearer(&none, "s3cret").unwrap_err().status(), 401);
/// ```
pub fn check_bearer(request: &Request, token: &str) -> Result<(), crate::Reject> {
    let presented = request
        .header("authorization")
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .or_else(|| request.query_param("token"))
        .or_else(|| request.cookie("token"));
    match presented {
        None => {
            Err(crate::Reject::unauthorized("token required").header("WWW-Authenticate", "Bearer"))
        }
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(crate::Reject::forbidden("invalid token")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/healthz`: 200 `ok` while serving, 503 once teardown has begun.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health;

impl HttpHandler for Health {
    fn handle(&self, _request: &Request, vhost: &Vhost) -> Response {
        if vhost.is_serving() {
            Response::text(200, "ok\n")
        } else {
            Response::text(503, "shutting down\n")
        }
    }
}

/// A short text page listing the vhost's endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Index;

impl HttpHandler for Index {
    fn handle(&self, _request: &Request, vhost: &Vhost) -> Response {
        let mut body = format!(
            "wsgate {}: vhost {}\n\nendpoints:\n",
            env!("CARGO_PKG_VERSION"),
            vhost.name()
        );
        for m in vhost.mounts() {
            let what = match m.target() {
                crate::MountTarget::WebSocket(p) => format!("WebSocket ({})", p.join(", ")),
                crate::MountTarget::Http(_) => "HTTP".to_owned(),
            };
            body.push_str(&format!("  {:<12} {what}\n", m.path()));
        }
        if !vhost.mounts().iter().any(|m| m.path() == "/healthz") {
            body.push_str("  /healthz     HTTP (health check)\n");
        }
        Response::text(200, body)
    }
}

/// Why a request head was refused; maps to exactly one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
    pub(crate) extra: Option<(&'static str, &'static str)>,
}

impl Refusal {
    pub(crate) const fn new(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            extra: None,
        }
    }

    pub(crate) fn response(&self) -> Response {
        let mut r = Response::text(self.status, format!("{}\n", self.reason));
        if let Some((n, v)) = self.extra {
            r = r.header(n, v);
        }
        r
    }
}

/// The outcome of trying to parse the bytes read so far.
#[derive(Debug)]
pub(crate) enum Head {
    /// More bytes are needed.
    Partial,
    /// A complete head of `len` bytes.
    Complete(Request, usize),
}

/// Parses a request head from `buf` (pure; bounded by `max_headers`).
pub(crate) fn parse_head(
    buf: &[u8],
    max_head_bytes: usize,
    max_headers: usize,
    peer: SocketAddr,
) -> Result<Head, Refusal> {
    // Only call httparse once the blank line has arrived: a peer that trickles
    // bytes must not make us re-parse the head for every byte.
    let Some(end) = find_head_end(buf) else {
        return if buf.len() >= max_head_bytes {
            Err(Refusal::new(431, "request head too large"))
        } else {
            Ok(Head::Partial)
        };
    };
    if end > max_head_bytes {
        return Err(Refusal::new(431, "request head too large"));
    }
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) => {
            let method = req.method.unwrap_or_default().to_owned();
            let (path, query) = split_target(req.path.unwrap_or_default());
            if !path.starts_with('/') {
                return Err(Refusal::new(400, "request target must be an absolute path"));
            }
            let headers = req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect();
            Ok(Head::Complete(
                Request {
                    method,
                    path,
                    query,
                    minor_version: req.version.unwrap_or(1),
                    headers,
                    peer,
                },
                n,
            ))
        }
        Ok(httparse::Status::Partial) => Err(Refusal::new(400, "malformed request head")),
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::new(431, "too many request headers")),
        Err(httparse::Error::Version) => Err(Refusal::new(505, "HTTP version not supported")),
        Err(_) => Err(Refusal::new(400, "malformed request head")),
    }
}

/// The index just past the `\r\n\r\n` that ends a head, if present.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What an acceptable upgrade request carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Upgrade {
    pub(crate) accept: String,
    pub(crate) offered: Vec<String>,
}

/// Whether the request asks for a WebSocket upgrade at all.
pub(crate) fn wants_upgrade(req: &Request) -> bool {
    req.has_token("upgrade", "websocket")
}

/// Validates a WebSocket upgrade request (RFC 6455 section 4.2.1).
pub(crate) fn check_upgrade(req: &Request) -> Result<Upgrade, Refusal> {
    if req.method() != "GET" {
        return Err(Refusal {
            extra: Some(("Allow", "GET")),
            ..Refusal::new(405, "a WebSocket handshake must use GET")
        });
    }
    if !req.is_http11() {
        return Err(Refusal::new(400, "a WebSocket handshake needs HTTP/1.1"));
    }
    if req.header("host").is_none() {
        return Err(Refusal::new(400, "missing Host header"));
    }
    if !wants_upgrade(req) {
        return Err(Refusal {
            extra: Some(("Upgrade", "websocket")),
            ..Refusal::new(426, "this endpoint speaks WebSocket")
        });
    }
    if !req.has_token("connection", "upgrade") {
        return Err(Refusal::new(400, "Connection header must contain Upgrade"));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refusal {
            extra: Some(("Sec-WebSocket-Version", "13")),
            ..Refusal::new(426, "unsupported WebSocket version")
        });
    }
    let key = req
        .header("sec-websocket-key")
        .map(str::trim)
        .ok_or(Refusal::new(400, "missing Sec-WebSocket-Key"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| Refusal::new(400, "Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(Refusal::new(400, "Sec-WebSocket-Key must encode 16 bytes"));
    }
    let mut offered = Vec::new();
    for (n, v) in req.headers() {
        if n.eq_ignore_ascii_case("sec-websocket-protocol") {
            let v = std::str::from_utf8(v)
                .map_err(|_| Refusal::new(400, "malformed Sec-WebSocket-Protocol"))?;
            for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !p.bytes().all(is_token_byte) {
                    return Err(Refusal::new(400, "malformed Sec-WebSocket-Protocol"));
                }
                offered.push(p.to_owned());
            }
        }
    }
    Ok(Upgrade {
        accept: async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        offered,
    })
}

/// Picks the subprotocol: the first one the client offered that the mount
/// speaks, echoed back; with no offer, the mount's first protocol, not echoed.
/// An offer that matches nothing proceeds without a subprotocol (RFC 6455
/// section 4.2.2), leaving it to the client to fail the connection.
pub(crate) fn negotiate<'a>(offered: &[String], speaks: &'a [String]) -> (&'a str, bool) {
    for o in offered {
        if let Some(p) = speaks.iter().find(|p| *p == o) {
            return (p, true);
        }
    }
    (speaks[0].as_str(), false)
}

/// The `101 Switching Protocols` answer.
pub(crate) fn switching_protocols(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        out.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn parse(s: &str) -> Result<Head, Refusal> {
        parse_head(s.as_bytes(), 8192, 64, peer())
    }

    fn upgrade_req(extra: &str) -> Request {
        let text = format!(
            "GET /echo?x=1 HTTP/1.1\r\nHost: a.example:80\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        );
        match parse(&text).unwrap() {
            Head::Complete(r, _) => r,
            Head::Partial => panic!("partial"),
        }
    }

    #[test]
    fn partial_until_blank_line() {
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: x\r\n"),
            Ok(Head::Partial)
        ));
    }

    #[test]
    fn oversized_head_is_431() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(&big).unwrap_err().status, 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for i in 0..70 {
            s.push_str(&format!("X{i}: y\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(parse(&s).unwrap_err().status, 431);
    }

    #[test]
    fn garbage_is_400() {
        assert_eq!(parse("\x01\x02 nonsense\r\n\r\n").unwrap_err().status, 400);
    }

    #[test]
    fn rfc_example_accept_key() {
        let up = check_upgrade(&upgrade_req("")).unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(up.offered.is_empty());
    }

    #[test]
    fn host_strips_port_and_query_splits() {
        let r = upgrade_req("");
        assert_eq!(r.host().as_deref(), Some("a.example"));
        assert_eq!(r.path(), "/echo");
        assert_eq!(r.query_param("x"), Some("1"));
    }

    #[test]
    fn wrong_version_is_426_with_header() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let Head::Complete(r, _) = parse(text).unwrap() else {
            panic!()
        };
        let refusal = check_upgrade(&r).unwrap_err();
        assert_eq!(refusal.status, 426);
        assert_eq!(refusal.extra, Some(("Sec-WebSocket-Version", "13")));
    }

    #[test]
    fn bad_key_is_400() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n";
        let Head::Complete(r, _) = parse(text).unwrap() else {
            panic!()
        };
        assert_eq!(check_upgrade(&r).unwrap_err().status, 400);
    }

    #[test]
    fn subprotocol_negotiation() {
        let speaks = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(negotiate(&["x".into(), "b".into()], &speaks), ("b", true));
        assert_eq!(negotiate(&[], &speaks), ("a", false));
        assert_eq!(negotiate(&["x".into()], &speaks), ("a", false));
    }

    #[test]
    fn cookies_and_tokens() {
        let r = upgrade_req("Cookie: a=1; token=abc\r\n");
        assert_eq!(r.cookie("token"), Some("abc"));
        assert!(r.has_token("connection", "upgrade"));
        assert!(r.keep_alive());
    }
}
