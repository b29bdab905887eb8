//! HTTP beside WebSocket: every error answer with its status, headers and
//! short text body; `/healthz`, HEAD, keep-alive and mounted HTTP handlers.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Error as WsError;
use support::{
    HttpReply, Server, connect, raw_http, read_reply, run, try_connect, upgrade_request,
};
use wsgate::{Config, Limits, Mount, Request, Response, Vhost, VhostConfig, protocols::Echo};

/// A valid `Sec-WebSocket-Key` (RFC 6455's example).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn vhost(limits: Limits) -> VhostConfig {
    VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Echo)
        .mount(Mount::websocket("/ws", ["echo"]))
        .mount(Mount::http("/page", |req: &Request, vhost: &Vhost| {
            Response::text(
                200,
                format!(
                    "{} {} q={} on {}",
                    req.method(),
                    req.path(),
                    req.query_param("q").unwrap_or("-"),
                    vhost.name()
                ),
            )
        }))
        .limits(limits)
        .build()
        .unwrap()
}

fn server_with(limits: Limits) -> Server {
    Server::start(Config::builder().vhost(vhost(limits)).build().unwrap())
}

fn server() -> Server {
    server_with(Limits::default())
}

fn http(server: &Server, request: &str) -> HttpReply {
    raw_http(server.addr(), request.as_bytes())
}

/// An upgrade request for `/ws` with every header line given.
fn handshake(method: &str, headers: &[&str]) -> String {
    let mut s = format!("{method} /ws HTTP/1.1\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

/// Asserts an error answer: status, exact body, and that it closes.
#[track_caller]
fn assert_refused(reply: &HttpReply, status: u16, body: &str) {
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (status, body),
        "{reply:?}"
    );
    assert_eq!(
        reply.header("Content-Type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("Connection").as_deref(), Some("close"));
}

fn rejected(server: &Server) -> u64 {
    server.handle.stats().unwrap().rejected_total
}

#[test]
fn malformed_heads_are_400() {
    let server = server();
    let cases = [
        (
            "GET / HTTP/1.1\r\nHost localhost\r\n\r\n",
            "malformed request head\n",
        ),
        ("\x01\x02 nonsense\r\n\r\n", "malformed request head\n"),
        (
            "GET nothing HTTP/1.1\r\nHost: x\r\n\r\n",
            "request target must be an absolute path\n",
        ),
    ];
    for (request, body) in cases {
        assert_refused(&http(&server, request), 400, body);
    }
    assert_eq!(rejected(&server), 3);
}

#[test]
fn bad_upgrade_headers_are_400() {
    let server = server();
    let base = [
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ];
    let with = |extra: &[&str]| {
        let mut h: Vec<&str> = base.to_vec();
        h.extend_from_slice(extra);
        handshake("GET", &h)
    };
    let cases = [
        (with(&[]), "missing Sec-WebSocket-Key\n"),
        (
            with(&["Sec-WebSocket-Key: %%%not base64%%%"]),
            "Sec-WebSocket-Key is not base64\n",
        ),
        (
            with(&["Sec-WebSocket-Key: c2hvcnQ="]),
            "Sec-WebSocket-Key must encode 16 bytes\n",
        ),
        (
            with(&[
                &format!("Sec-WebSocket-Key: {KEY}"),
                "Sec-WebSocket-Protocol: a b",
            ]),
            "malformed Sec-WebSocket-Protocol\n",
        ),
        (
            handshake(
                "GET",
                &[
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    "Sec-WebSocket-Version: 13",
                    &format!("Sec-WebSocket-Key: {KEY}"),
                ],
            ),
            "missing Host header\n",
        ),
        (
            handshake(
                "GET",
                &[
                    "Host: localhost",
                    "Upgrade: websocket",
                    "Connection: keep-alive",
                    "Sec-WebSocket-Version: 13",
                    &format!("Sec-WebSocket-Key: {KEY}"),
                ],
            ),
            "Connection header must contain Upgrade\n",
        ),
    ];
    let n = cases.len() as u64;
    for (request, body) in cases {
        assert_refused(&http(&server, &request), 400, body);
    }
    assert_eq!(rejected(&server), n);
    // The same server upgrades a valid request.
    run(connect(server.addr(), "/ws"));
}

#[test]
fn unmounted_path_is_404() {
    let server = server();
    assert_refused(
        &http(&server, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        404,
        "not found\n",
    );
    assert_refused(
        &raw_http(server.addr(), &upgrade_request("/nope", "")),
        404,
        "not found\n",
    );
    // Mounts match exactly unless they are prefix mounts.
    assert_refused(
        &http(&server, "GET /page/below HTTP/1.1\r\nHost: x\r\n\r\n"),
        404,
        "not found\n",
    );
    assert_eq!(rejected(&server), 3);
}

#[test]
fn post_to_a_websocket_mount_is_405_allowing_get() {
    let server = server();
    let request = handshake(
        "POST",
        &[
            "Host: localhost",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            &format!("Sec-WebSocket-Key: {KEY}"),
            "Content-Length: 0",
        ],
    );
    let reply = http(&server, &request);
    assert_refused(&reply, 405, "a WebSocket handshake must use GET\n");
    assert_eq!(reply.header("Allow").as_deref(), Some("GET"));
}

#[test]
fn post_to_an_http_mount_is_405_allowing_get_and_head() {
    let server = server();
    for path in ["/page", "/healthz"] {
        let reply = http(
            &server,
            &format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_refused(&reply, 405, "method not allowed\n");
        assert_eq!(
            reply.header("Allow").as_deref(),
            Some("GET, HEAD"),
            "{path}"
        );
    }
}

#[test]
fn wrong_websocket_version_is_426_naming_version_13() {
    let server = server();
    let request = handshake(
        "GET",
        &[
            "Host: localhost",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 8",
            &format!("Sec-WebSocket-Key: {KEY}"),
        ],
    );
    let reply = http(&server, &request);
    assert_refused(&reply, 426, "unsupported WebSocket version\n");
    assert_eq!(reply.header("Sec-WebSocket-Version").as_deref(), Some("13"));
}

#[test]
fn plain_get_to_a_websocket_mount_is_426() {
    let server = server();
    let reply = http(&server, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_refused(&reply, 426, "this endpoint speaks WebSocket\n");
    assert_eq!(reply.header("Upgrade").as_deref(), Some("websocket"));
}

#[test]
fn oversized_head_is_431() {
    let server = server();
    let request = format!(
        "GET /page HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_refused(&http(&server, &request), 431, "request head too large\n");
    // A head that never ends is refused once it reaches the limit, too.
    let endless = format!("GET /page HTTP/1.1\r\nX-Big: {}", "a".repeat(9000));
    assert_refused(&http(&server, &endless), 431, "request head too large\n");
    // Just under the limit is fine.
    let request = format!(
        "GET /page HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    assert_eq!(http(&server, &request).status, 200);
}

#[test]
fn too_many_headers_is_431() {
    let server = server_with(Limits::default().max_headers(16));
    let mut request = String::from("GET /page HTTP/1.1\r\nHost: x\r\n");
    for i in 0..16 {
        request.push_str(&format!("X-H{i}: y\r\n"));
    }
    request.push_str("\r\n");
    assert_refused(&http(&server, &request), 431, "too many request headers\n");
    // Exactly the limit (Host plus 15) passes.
    let mut request = String::from("GET /page HTTP/1.1\r\nHost: x\r\n");
    for i in 0..15 {
        request.push_str(&format!("X-H{i}: y\r\n"));
    }
    request.push_str("\r\n");
    assert_eq!(http(&server, &request).status, 200);
}

#[test]
fn too_many_headers_under_default_limits_is_431() {
    let server = server();
    let mut request = String::from("GET /page HTTP/1.1\r\nHost: x\r\n");
    for i in 0..70 {
        request.push_str(&format!("X-H{i}: y\r\n"));
    }
    request.push_str("\r\n");
    assert_refused(&http(&server, &request), 431, "too many request headers\n");
}

#[test]
fn handshake_over_max_sessions_is_503() {
    let server = server_with(Limits::default().max_sessions(1));
    run(async {
        let _held = connect(server.addr(), "/ws").await;
        let reply = raw_http(server.addr(), &upgrade_request("/ws", ""));
        assert_refused(&reply, 503, "too many sessions\n");
        match try_connect(server.addr(), format!("ws://{}/ws", server.addr())).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
            Err(e) => panic!("expected 503, got {e}"),
            Ok(_) => panic!("a second session was admitted over max_sessions"),
        }
        let counters = server.handle.stats().unwrap();
        assert_eq!((counters.sessions_open, counters.sessions_total), (1, 1));
        assert_eq!(counters.rejected_total, 2);
        // HTTP is not a session: it is still served.
        let reply = http(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(reply.status, 200);
    });
}

#[test]
fn connection_over_max_connections_is_503() {
    let config = Config::builder()
        .vhost(vhost(Limits::default()))
        .max_connections(1)
        .build()
        .unwrap();
    let server = Server::start(config);
    // Hold the only slot with a keep-alive connection that has been served,
    // so it was certainly accepted first.
    let mut held = TcpStream::connect(server.addr()).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut pending = Vec::new();
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut held, &mut pending).status, 200);

    let reply = http(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_refused(&reply, 503, "server busy\n");
    let counters = server.handle.stats().unwrap();
    assert_eq!((counters.connections, counters.rejected_total), (1, 1));

    // The held connection is still served.
    held.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut held, &mut pending);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "GET /page q=- on default")
    );
}

#[test]
fn healthz_answers_ok_on_the_default_vhost() {
    let server = server();
    let reply = http(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    assert_eq!(reply.header("Content-Length").as_deref(), Some("3"));
    assert_eq!(reply.header("Connection").as_deref(), Some("keep-alive"));
    // HTTP/1.0 without keep-alive is closed after the answer.
    let reply = http(&server, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    assert_eq!(reply.header("Connection").as_deref(), Some("close"));
    assert_eq!(rejected(&server), 0);
}

#[test]
fn head_answers_without_a_body() {
    let server = server();
    // `Connection: close` so that the end of the answer is the end of the stream.
    // The handler runs for HEAD too; only its body is left out.
    for (path, body) in [("/healthz", "ok\n"), ("/page", "HEAD /page q=- on default")] {
        let reply = http(
            &server,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.body, "", "{path}");
        assert_eq!(
            reply.header("Content-Length"),
            Some(body.len().to_string()),
            "{path}"
        );
    }
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = server();
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_reply(&mut s, &mut pending);
    assert_eq!((first.status, first.body.as_str()), (200, "ok\n"));
    assert_eq!(first.header("Connection").as_deref(), Some("keep-alive"));
    s.write_all(b"GET /page?q=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let second = read_reply(&mut s, &mut pending);
    assert_eq!(
        (second.status, second.body.as_str()),
        (200, "GET /page q=2 on default")
    );
    // Pipelined: both requests in one write, both answered in order; the
    // last asks to close.
    s.write_all(
        b"GET /page?q=3 HTTP/1.1\r\nHost: x\r\n\r\nGET /page?q=4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let third = read_reply(&mut s, &mut pending);
    assert_eq!(third.body, "GET /page q=3 on default");
    let fourth = read_reply(&mut s, &mut pending);
    assert_eq!(fourth.body, "GET /page q=4 on default");
    assert_eq!(fourth.header("Connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        pending.is_empty() && rest.is_empty(),
        "{pending:?} {rest:?}"
    );
    assert_eq!(rejected(&server), 0);
}

#[test]
fn mounted_http_handler_sees_the_request_and_its_vhost() {
    let server = server();
    let reply = http(&server, "GET /page?q=hello&x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "GET /page q=hello on default")
    );
    assert_eq!(
        reply.header("Content-Type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn slow_request_head_is_408() {
    let timeout = Duration::from_millis(300);
    let server = server_with(Limits::default().handshake_timeout(timeout));
    let started = Instant::now();
    // No blank line: the head never completes. Reading blocks until the
    // server gives up.
    let reply = http(&server, "GET /page HTTP/1.1\r\nHost: x\r\n");
    assert_refused(&reply, 408, "request head timed out\n");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    assert_eq!(rejected(&server), 1);
}

#[test]
fn idle_keep_alive_connection_is_closed_quietly() {
    let timeout = Duration::from_millis(300);
    let server = server_with(Limits::default().handshake_timeout(timeout));
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut pending = Vec::new();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut s, &mut pending).status, 200);
    // Nothing more is sent: after the timeout the server closes without a 408.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(rejected(&server), 0);
}

/// A refusal half-closes at once: the client reads the answer and then EOF
/// long before the bounded linger (500 ms) would have run out.
#[test]
fn refusal_is_followed_by_fin_without_waiting_for_the_linger() {
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert!(all.starts_with(b"HTTP/1.1 404"));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(400), "EOF after {took:?}");
}
