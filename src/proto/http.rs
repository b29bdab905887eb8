//! HTTP/1.1 as the gateway speaks it, sans-IO: request heads (parsed with
//! httparse, within their limits), responses, the WebSocket upgrade check
//! (RFC 6455 §4.2.1), subprotocol negotiation, the bearer-token check, and
//! every reason a request can be refused, mapped to its status in one place.
//!
//! Bytes in, verdicts out: nothing here touches a socket, so all of it is
//! unit-tested and fuzzed directly.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;

use super::tls::{Certificate, TlsInfo};

/// A parsed HTTP request head, as seen by [`Protocol::open`](crate::Protocol::open)
/// and HTTP handlers.
#[derive(Clone)]
pub struct Request {
    /// The head's method, target and header names and values, copied once
    /// side by side (two allocations per request, this and `headers`,
    /// rather than two per header).
    raw: Box<[u8]>,
    method: Span,
    path: Span,
    query: Option<Span>,
    minor_version: u8,
    /// Each header's name and value in `raw`, in arrival order.
    headers: Vec<(Span, Span)>,
    peer: SocketAddr,
    /// The TLS handshake's facts, on a TLS connection (shared by every
    /// request of the connection).
    tls: Option<Arc<TlsInfo>>,
}

/// A range of [`Request::raw`] (heads are bounded by `max_head_bytes`,
/// far below 4 GiB).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Request {
    /// A request from its parts (method, target, and UTF-8 parts as
    /// httparse validated them: the ranges they get are valid UTF-8).
    fn from_parts<'a>(
        method: &str,
        target: &str,
        minor_version: u8,
        headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
        peer: SocketAddr,
    ) -> Self {
        let size = method.len()
            + target.len()
            + headers
                .clone()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        let mut raw = Vec::with_capacity(size);
        let mut put = |bytes: &[u8]| {
            let start = u32::try_from(raw.len()).unwrap_or(u32::MAX);
            raw.extend_from_slice(bytes);
            let end = u32::try_from(raw.len()).unwrap_or(u32::MAX);
            Span { start, end }
        };
        let method = put(method.as_bytes());
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (put(p.as_bytes()), Some(put(q.as_bytes()))),
            None => (put(target.as_bytes()), None),
        };
        let headers = headers.map(|(n, v)| (put(n.as_bytes()), put(v))).collect();
        Self {
            raw: raw.into_boxed_slice(),
            method,
            path,
            query,
            minor_version,
            headers,
            peer,
            tls: None,
        }
    }

    fn bytes(&self, span: Span) -> &[u8] {
        self.raw
            .get(span.start as usize..span.end as usize)
            .unwrap_or_default()
    }

    /// A part that was UTF-8 when it was stored.
    fn text(&self, span: Span) -> &str {
        std::str::from_utf8(self.bytes(span)).unwrap_or_default()
    }

    /// The method (`GET`).
    pub fn method(&self) -> &str {
        self.text(self.method)
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.text(self.path)
    }

    /// The query string after `?`, if any (not decoded).
    pub fn query(&self) -> Option<&str> {
        self.query.map(|q| self.text(q))
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
        self.values(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The values of the headers called `name` (case-insensitive), in
    /// arrival order. Names are compared as bytes: a handshake looks up a
    /// dozen headers, and checking every name's UTF-8 on every lookup was
    /// most of what the lookups cost.
    pub(crate) fn values<'s, 'n>(
        &'s self,
        name: &'n str,
    ) -> impl Iterator<Item = &'s [u8]> + use<'s, 'n> {
        self.headers
            .iter()
            .filter(move |&&(n, _)| self.bytes(n).eq_ignore_ascii_case(name.as_bytes()))
            .map(|&(_, v)| self.bytes(v))
    }

    /// All headers in arrival order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|&(n, v)| (self.text(n), self.bytes(v)))
    }

    /// The value of cookie `name`, if sent.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.values("cookie")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The TLS handshake's facts (SNI name, ALPN, client certificates) when
    /// the request came over a TLS listener of wsgate's; `None` over plain
    /// TCP and host-provided streams.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_deref()
    }

    /// The client's verified certificate chain, leaf first (mutual TLS: a
    /// vhost with `client_ca`); empty without TLS or without a client
    /// certificate.
    ///
    /// # Examples
    ///
    /// A protocol that admits only the client certificates it knows:
    ///
    /// ```
    /// use wsgate::{Reject, Request};
    ///
    /// fn authorize(request: &Request) -> Result<String, Reject> {
    ///     let leaf = request.peer_certificates().first();
    ///     match leaf.and_then(|c| c.subject_common_name()) {
    ///         Some(name) if name.ends_with(".clients.example") => Ok(name.to_owned()),
    ///         _ => Err(Reject::forbidden("client certificate required")),
    ///     }
    /// }
    /// # let peer = "127.0.0.1:1".parse().unwrap();
    /// # assert!(authorize(&Request::synthetic("GET", "/", &[], peer)).is_err());
    /// ```
    pub fn peer_certificates(&self) -> &[Certificate] {
        self.tls.as_ref().map_or(&[], |t| t.peer_certificates())
    }

    /// Attaches the TLS facts of the connection the request came on.
    pub(crate) fn set_tls(&mut self, tls: Option<Arc<TlsInfo>>) {
        self.tls = tls;
    }

    /// A synthetic request as if it came over TLS, for tests.
    #[doc(hidden)]
    #[must_use = "the changed request is returned"]
    pub fn with_tls(mut self, tls: TlsInfo) -> Self {
        self.tls = Some(Arc::new(tls));
        self
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
        self.values("origin")
            .next()
            .map(|v| std::str::from_utf8(v).unwrap_or("\u{fffd}"))
    }

    /// Whether any header `name` has the comma-separated token `token`.
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
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
        Self::from_parts(
            method,
            target,
            1,
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            peer,
        )
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers()
            .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned()))
            .collect();
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .field("minor_version", &self.minor_version)
            .field("headers", &headers)
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .finish()
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

/// A refusal of a WebSocket handshake by the application: the HTTP status
/// and a short reason that becomes the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
}

impl Reject {
    /// Refuse with `status` (a 4xx or 5xx code; anything else becomes 500).
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        let status = if (400..=599).contains(&status) {
            status
        } else {
            500
        };
        Self {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// 401 Unauthorized.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(401, reason)
    }

    /// 403 Forbidden.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(403, reason)
    }

    /// Adds a response header (for example `WWW-Authenticate`).
    #[must_use = "the header is added to the returned value"]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason (the response body).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The whole answer.
    pub(crate) fn response(&self) -> Response {
        let mut r = Response::text(self.status, format!("{}\n", self.reason));
        for (n, v) in &self.headers {
            r = r.header(n.clone(), v.clone());
        }
        r
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
pub fn check_bearer(request: &Request, token: &str) -> Result<(), Reject> {
    let presented = request
        .header("authorization")
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .or_else(|| request.query_param("token"))
        .or_else(|| request.cookie("token"));
    match presented {
        None => Err(Reject::unauthorized("token required").header("WWW-Authenticate", "Bearer")),
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Reject::forbidden("invalid token")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request was refused before it reached an application: each reason
/// maps to exactly one HTTP answer (status, short body, sometimes a header),
/// in [`Refused::status`] and [`Refused::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The head passed `max_head_bytes`.
    HeadTooLarge,
    /// More headers than `max_headers`.
    TooManyHeaders,
    /// httparse could not make sense of the head.
    MalformedHead,
    /// The request target is not an absolute path.
    TargetNotAbsolute,
    /// Not HTTP/1.0 or 1.1.
    VersionNotSupported,
    /// The head did not arrive within `handshake_timeout`.
    HeadTimeout,
    /// No mount serves the path.
    NotFound,
    /// An HTTP mount got something other than GET or HEAD.
    MethodNotAllowed,
    /// A WebSocket mount got a request that is not a GET.
    UpgradeNotGet,
    /// A WebSocket handshake over HTTP/1.0.
    UpgradeNeedsHttp11,
    /// No `Host` header.
    MissingHost,
    /// A WebSocket mount got a plain HTTP request.
    NotAnUpgrade,
    /// `Connection` lacks `Upgrade`.
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key`.
    MissingKey,
    /// `Sec-WebSocket-Key` is not base64.
    KeyNotBase64,
    /// `Sec-WebSocket-Key` does not decode to 16 bytes.
    KeyLength,
    /// `Sec-WebSocket-Protocol` is not a list of tokens.
    MalformedSubprotocol,
    /// The `Origin` is not among the vhost's allowed origins.
    OriginNotAllowed,
    /// The mount's protocol wants a bearer token and none came.
    TokenRequired,
    /// The bearer token presented is wrong.
    TokenInvalid,
    /// The vhost is at `max_sessions`.
    TooManySessions,
    /// The peer's address is at `max_sessions_per_ip`.
    TooManyFromAddress,
    /// The context is tearing down or the vhost was removed.
    ShuttingDown,
    /// No vhost serves the listener (all were removed).
    NoVhost,
    /// On a TLS listener, the `Host` names another vhost than the one the
    /// TLS server name (SNI) chose, whose certificate the client saw.
    Misdirected,
    /// The context is at `max_connections`.
    ServerBusy,
    /// The context's memory budget is above its high-water mark.
    MemoryExhausted,
    /// A handler or protocol panicked, or the configuration is inconsistent.
    Internal,
}

impl Refused {
    /// The HTTP status: the one place where refusals become status codes.
    pub(crate) const fn status(self) -> u16 {
        match self {
            Self::MalformedHead
            | Self::TargetNotAbsolute
            | Self::UpgradeNeedsHttp11
            | Self::MissingHost
            | Self::ConnectionNotUpgrade
            | Self::MissingKey
            | Self::KeyNotBase64
            | Self::KeyLength
            | Self::MalformedSubprotocol => 400,
            Self::TokenRequired => 401,
            Self::OriginNotAllowed | Self::TokenInvalid => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed | Self::UpgradeNotGet => 405,
            Self::HeadTimeout => 408,
            Self::NotAnUpgrade | Self::UnsupportedVersion => 426,
            Self::Misdirected => 421,
            Self::TooManyFromAddress => 429,
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::Internal => 500,
            Self::TooManySessions
            | Self::ShuttingDown
            | Self::NoVhost
            | Self::ServerBusy
            | Self::MemoryExhausted => 503,
            Self::VersionNotSupported => 505,
        }
    }

    /// The short reason that becomes the response body.
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            Self::HeadTooLarge => "request head too large",
            Self::TooManyHeaders => "too many request headers",
            Self::MalformedHead => "malformed request head",
            Self::TargetNotAbsolute => "request target must be an absolute path",
            Self::VersionNotSupported => "HTTP version not supported",
            Self::HeadTimeout => "request head timed out",
            Self::NotFound => "not found",
            Self::MethodNotAllowed => "method not allowed",
            Self::UpgradeNotGet => "a WebSocket handshake must use GET",
            Self::UpgradeNeedsHttp11 => "a WebSocket handshake needs HTTP/1.1",
            Self::MissingHost => "missing Host header",
            Self::NotAnUpgrade => "this endpoint speaks WebSocket",
            Self::ConnectionNotUpgrade => "Connection header must contain Upgrade",
            Self::UnsupportedVersion => "unsupported WebSocket version",
            Self::MissingKey => "missing Sec-WebSocket-Key",
            Self::KeyNotBase64 => "Sec-WebSocket-Key is not base64",
            Self::KeyLength => "Sec-WebSocket-Key must encode 16 bytes",
            Self::MalformedSubprotocol => "malformed Sec-WebSocket-Protocol",
            Self::OriginNotAllowed => "origin not allowed",
            Self::TokenRequired => "token required",
            Self::TokenInvalid => "invalid token",
            Self::TooManySessions => "too many sessions",
            Self::TooManyFromAddress => "too many sessions from this address",
            Self::ShuttingDown => "shutting down",
            Self::NoVhost => "no vhost serves this address",
            Self::Misdirected => "misdirected request: Host does not match the TLS server name",
            Self::ServerBusy => "server busy",
            Self::MemoryExhausted => "memory budget exhausted, try again later",
            Self::Internal => "internal error",
        }
    }

    /// A header the answer carries, if any.
    const fn header(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::MethodNotAllowed => Some(("Allow", "GET, HEAD")),
            Self::UpgradeNotGet => Some(("Allow", "GET")),
            Self::NotAnUpgrade => Some(("Upgrade", "websocket")),
            Self::UnsupportedVersion => Some(("Sec-WebSocket-Version", "13")),
            Self::TokenRequired => Some(("WWW-Authenticate", "Bearer")),
            Self::MemoryExhausted => Some(("Retry-After", "1")),
            _ => None,
        }
    }

    /// The whole answer.
    pub(crate) fn response(self) -> Response {
        let mut r = Response::text(self.status(), format!("{}\n", self.reason()));
        if let Some((n, v)) = self.header() {
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

/// RFC 7230 `tchar`: what a token (a subprotocol name, an extension name)
/// may contain.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head from `buf` (pure; bounded by `max_headers`).
pub(crate) fn parse_head(
    buf: &[u8],
    max_head_bytes: usize,
    max_headers: usize,
    peer: SocketAddr,
) -> Result<Head, Refused> {
    // Only call httparse once the blank line has arrived: a peer that trickles
    // bytes must not make us re-parse the head for every byte.
    let Some(end) = find_head_end(buf) else {
        return if buf.len() >= max_head_bytes {
            Err(Refused::HeadTooLarge)
        } else {
            Ok(Head::Partial)
        };
    };
    if end > max_head_bytes {
        return Err(Refused::HeadTooLarge);
    }
    // The default limit's worth of header slots on the stack (2 KiB, no
    // allocation per request); a larger limit allocates.
    const ON_STACK: usize = 64;
    let mut stack = [httparse::EMPTY_HEADER; ON_STACK];
    let mut heap = Vec::new();
    let slots = if max_headers <= ON_STACK {
        stack.get_mut(..max_headers).unwrap_or_default()
    } else {
        heap.resize(max_headers, httparse::EMPTY_HEADER);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(slots);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) => {
            let target = req.path.unwrap_or_default();
            if !target.starts_with('/') {
                return Err(Refused::TargetNotAbsolute);
            }
            Ok(Head::Complete(
                Request::from_parts(
                    req.method.unwrap_or_default(),
                    target,
                    req.version.unwrap_or(1),
                    req.headers.iter().map(|h| (h.name, h.value)),
                    peer,
                ),
                n,
            ))
        }
        Ok(httparse::Status::Partial) => Err(Refused::MalformedHead),
        Err(httparse::Error::TooManyHeaders) => Err(Refused::TooManyHeaders),
        Err(httparse::Error::Version) => Err(Refused::VersionNotSupported),
        Err(_) => Err(Refused::MalformedHead),
    }
}

/// The index just past the `\r\n\r\n` that ends a head, if present.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What an acceptable upgrade request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upgrade {
    pub(crate) accept: String,
    pub(crate) offered: Vec<String>,
}

/// Whether the request asks for a WebSocket upgrade at all.
pub(crate) fn wants_upgrade(req: &Request) -> bool {
    req.has_token("upgrade", "websocket")
}

/// Validates a WebSocket upgrade request (RFC 6455 section 4.2.1).
pub(crate) fn check_upgrade(req: &Request) -> Result<Upgrade, Refused> {
    if req.method() != "GET" {
        return Err(Refused::UpgradeNotGet);
    }
    if !req.is_http11() {
        return Err(Refused::UpgradeNeedsHttp11);
    }
    if req.header("host").is_none() {
        return Err(Refused::MissingHost);
    }
    if !wants_upgrade(req) {
        return Err(Refused::NotAnUpgrade);
    }
    if !req.has_token("connection", "upgrade") {
        return Err(Refused::ConnectionNotUpgrade);
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refused::UnsupportedVersion);
    }
    let key = req
        .header("sec-websocket-key")
        .map(str::trim)
        .ok_or(Refused::MissingKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| Refused::KeyNotBase64)?;
    if decoded.len() != 16 {
        return Err(Refused::KeyLength);
    }
    let mut offered = Vec::new();
    for v in req.values("sec-websocket-protocol") {
        let v = std::str::from_utf8(v).map_err(|_| Refused::MalformedSubprotocol)?;
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !p.bytes().all(is_token_byte) {
                return Err(Refused::MalformedSubprotocol);
            }
            offered.push(p.to_owned());
        }
    }
    Ok(Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
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

/// The `101 Switching Protocols` answer, with the chosen subprotocol and the
/// negotiated extension's response parameters, if any.
pub(crate) fn switching_protocols(
    accept: &str,
    protocol: Option<&str>,
    extension: Option<&str>,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        out.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some(e) = extension {
        out.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
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
        421 => "Misdirected Request",
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

    fn parse(s: &str) -> Result<Head, Refused> {
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
        assert_eq!(parse(&big).unwrap_err().status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for i in 0..70 {
            s.push_str(&format!("X{i}: y\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(parse(&s).unwrap_err().status(), 431);
    }

    #[test]
    fn garbage_is_400() {
        assert_eq!(
            parse("\x01\x02 nonsense\r\n\r\n").unwrap_err().status(),
            400
        );
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
        assert_eq!(refusal.status(), 426);
        assert_eq!(refusal.header(), Some(("Sec-WebSocket-Version", "13")));
    }

    #[test]
    fn bad_key_is_400() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n";
        let Head::Complete(r, _) = parse(text).unwrap() else {
            panic!()
        };
        assert_eq!(check_upgrade(&r).unwrap_err().status(), 400);
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
