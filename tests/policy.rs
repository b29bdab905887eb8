//! Policy hooks: a vhost's allowed origins (any other `Origin` gets 403, which
//! stops cross-site WebSocket hijacking; clients that send none are not
//! affected) and authentication in `open` with `wsgate::http::check_bearer`:
//! a token from the `Authorization` header, the query or a cookie, 401 with
//! `WWW-Authenticate: Bearer` without one and 403 with a wrong one, also
//! through the configuration file's `token` option. Every refusal counts in
//! `Stats::rejected_total`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use futures_util::StreamExt;
use support::{
    HttpReply, LIMIT, Server, TcpEnd, http_until_closed, raw_http, run, try_connect,
    upgrade_request, wait_until,
};
use wsgate::{
    Config, Message, Mount, Protocol, Reject, Request, SessionHandle, VhostConfig,
    http::check_bearer, protocols::Echo,
};

/// How long the server may take to answer a refused handshake and close TCP.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Completes a handshake to `path` with `headers` added (a real WebSocket
/// client), checks that the session echoes, and closes it.
#[track_caller]
fn assert_accepted(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let what = format!("{path} {headers:?}");
    run(async move {
        let mut ws = try_connect(addr, request)
            .await
            .unwrap_or_else(|e| panic!("{what}: handshake refused: {e}"));
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
}

/// Sends an upgrade request for `path` with `extra` header lines and asserts
/// the refusal's status and that it closes the connection; returns as soon as
/// the answer is complete.
#[track_caller]
fn assert_refused(addr: SocketAddr, path: &str, extra: &str, status: u16) -> HttpReply {
    let reply = raw_http(addr, &upgrade_request(path, extra));
    assert_eq!(reply.status, status, "{path} {extra:?}: {reply:?}");
    assert!(!reply.body.is_empty(), "{reply:?}");
    assert_eq!(reply.header("Connection").as_deref(), Some("close"));
    reply
}

/// Like [`assert_refused`], and waits for the server to close TCP (it
/// lingers up to half a second for the client to close first).
#[track_caller]
fn assert_refused_and_closed(addr: SocketAddr, path: &str, extra: &str, status: u16) -> HttpReply {
    let (reply, end) = http_until_closed(addr, &upgrade_request(path, extra), CLOSE_WITHIN);
    assert_eq!(reply.status, status, "{path} {extra:?}: {reply:?}");
    assert_eq!(end, TcpEnd::Eof, "{reply:?}");
    reply
}

fn counters(server: &Server) -> (u64, u64, u64) {
    let c = server.handle.stats().unwrap();
    (c.sessions_total, c.rejected_total, c.sessions_open)
}

// ---------------------------------------------------------------------------
// Origins.

fn origin_server() -> Server {
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .origin("https://app.example")
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()
        .unwrap();
    Server::start(Config::builder().vhost(vhost).build().unwrap())
}

#[test]
fn an_allowed_origin_is_accepted_in_any_case_and_with_a_trailing_slash() {
    let server = origin_server();
    for origin in [
        "https://app.example",
        "https://app.example/",
        "HTTPS://APP.EXAMPLE",
        "https://App.Example/",
    ] {
        assert_accepted(server.addr(), "/echo", &[("Origin", origin)]);
    }
    assert_eq!(counters(&server).0, 4);
    assert_eq!(counters(&server).1, 0);
}

#[test]
fn a_handshake_without_origin_is_accepted() {
    let server = origin_server();
    assert_accepted(server.addr(), "/echo", &[]);
    // The client has seen the TCP close; the server counts the session
    // closed just after its socket closes (the session ends after it).
    wait_until(LIMIT, "the session counted closed", || {
        counters(&server).2 == 0
    });
    assert_eq!(counters(&server), (1, 0, 0));
}

#[test]
fn any_other_origin_is_403() {
    let server = origin_server();
    let foreign = [
        "https://evil.example",
        // Look-alikes: another host, scheme or port, a suffix, a path.
        "https://app.example.evil.example",
        "https://evilapp.example",
        "http://app.example",
        "https://app.example:8443",
        "https://app.example/evil",
        "null",
        "",
    ];
    for (i, origin) in foreign.iter().enumerate() {
        let refuse = if i == 0 {
            assert_refused_and_closed
        } else {
            assert_refused
        };
        let reply = refuse(
            server.addr(),
            "/echo",
            &format!("Origin: {origin}\r\n"),
            403,
        );
        assert_eq!(reply.body, "origin not allowed\n", "{origin:?}");
        assert_eq!(counters(&server), (0, i as u64 + 1, 0), "{origin:?}");
    }
}

// ---------------------------------------------------------------------------
// A bearer token checked in `open`.

/// Requires the token `s3cret` (header, query or cookie), then echoes.
struct Authed;

impl Protocol for Authed {
    type State = ();

    fn name(&self) -> &str {
        "authed"
    }

    fn open(&self, request: &Request, _: &SessionHandle) -> Result<(), Reject> {
        check_bearer(request, "s3cret")?;
        Ok(())
    }

    fn message(&self, _: &mut (), session: &SessionHandle, message: Message) {
        let _ = session.try_send(message);
    }
}

fn auth_server() -> Server {
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Authed)
        .mount(Mount::websocket("/ws", ["authed"]))
        .build()
        .unwrap();
    Server::start(Config::builder().vhost(vhost).build().unwrap())
}

/// The same token behaviour, on any server that guards `path` with `token`.
fn token_is_required(server: &Server, path: &str, token: &str) {
    let addr = server.addr();
    let (accepted, rejected, _) = counters(server);
    let mut refusals = 0;
    let mut statuses = Vec::new();
    let mut refused = |query: &str, extra: &str, status: u16| {
        // The first refusal of each status waits for the TCP close too.
        let refuse = if statuses.contains(&status) {
            assert_refused
        } else {
            statuses.push(status);
            assert_refused_and_closed
        };
        let reply = refuse(addr, &format!("{path}{query}"), extra, status);
        refusals += 1;
        assert_eq!(counters(server).1, rejected + refusals, "{query} {extra:?}");
        reply
    };

    // No token, or none that counts as a bearer token: 401 with the scheme.
    for extra in [
        "",
        "Authorization: Basic dXNlcjpwYXNz\r\n",
        "Authorization: Bearer\r\n",
        "Cookie: session=abc\r\n",
    ] {
        let reply = refused("", extra, 401);
        assert_eq!(
            reply.header("WWW-Authenticate").as_deref(),
            Some("Bearer"),
            "{extra:?}"
        );
    }
    refused("?other=1", "", 401);

    // A wrong token, wherever it is: 403.
    let wrong = [
        "nope".to_owned(),
        token[..token.len() - 1].to_owned(),
        format!("{token}x"),
        token.to_ascii_uppercase(),
    ];
    for w in &wrong {
        refused("", &format!("Authorization: Bearer {w}\r\n"), 403);
        refused(&format!("?token={w}"), "", 403);
        refused("", &format!("Cookie: token={w}\r\n"), 403);
    }
    // The header wins over a right token elsewhere.
    refused(
        &format!("?token={token}"),
        "Authorization: Bearer nope\r\n",
        403,
    );
    assert_eq!(counters(server).0, accepted, "a refused handshake opened");
    assert_eq!(counters(server).2, 0);

    // The right token in a header, the query or a cookie.
    let bearer = format!("Bearer {token}");
    let lower = format!("bearer {token}");
    let cookie = format!("token={token}");
    let cookies = format!("a=1; token={token}; b=2");
    let query = format!("{path}?token={token}");
    let query_among = format!("{path}?x=1&token={token}&y=2");
    let cases: [(&str, &[(&str, &str)]); 6] = [
        (path, &[("Authorization", bearer.as_str())]),
        (path, &[("Authorization", lower.as_str())]),
        (&query, &[]),
        (&query_among, &[]),
        (path, &[("Cookie", cookie.as_str())]),
        (path, &[("Cookie", cookies.as_str())]),
    ];
    for (p, headers) in cases {
        assert_accepted(addr, p, headers);
    }
    assert_eq!(counters(server).0, accepted + 6);
    assert_eq!(counters(server).1, rejected + refusals);
}

#[test]
fn check_bearer_in_open_answers_401_and_403_and_accepts_header_query_or_cookie() {
    let server = auth_server();
    token_is_required(&server, "/ws", "s3cret");
}

#[cfg(feature = "toml-config")]
#[test]
fn the_config_files_token_option_guards_the_protocol() {
    let text = r#"
[[vhost]]
name = "t"
listen = ["127.0.0.1:0"]
origins = ["https://app.example"]

[vhost.options.echo]
token = "t0k"

[[vhost.mount]]
path = "/echo"
protocol = "echo"
"#;
    let config = wsgate::load_toml(text, &wsgate::ProtocolRegistry::builtin()).unwrap();
    let server = Server::start(config);
    token_is_required(&server, "/echo", "t0k");
    // The file's origins apply too, before the token is looked at.
    let reply = assert_refused(
        server.addr(),
        "/echo?token=t0k",
        "Origin: https://evil.example\r\n",
        403,
    );
    assert_eq!(reply.body, "origin not allowed\n");
    assert_accepted(
        server.addr(),
        "/echo?token=t0k",
        &[("Origin", "https://app.example")],
    );
}

#[cfg(feature = "toml-config")]
#[test]
fn an_empty_token_option_is_a_config_error() {
    let text = r#"
[[vhost]]
name = "t"
listen = ["127.0.0.1:0"]

[vhost.options.echo]
token = ""

[[vhost.mount]]
path = "/echo"
protocol = "echo"
"#;
    let err = wsgate::load_toml(text, &wsgate::ProtocolRegistry::builtin()).unwrap_err();
    assert_eq!(err.key, "vhost.t.options.echo.token", "{err}");
}

/// An `Origin` header that is present but not UTF-8 is not "no Origin": it
/// matches no allowed origin and gets 403.
#[test]
fn undecodable_origin_is_refused() {
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .origin("https://app.example")
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let mut request = upgrade_request("/echo", "");
    let end = request.len() - 2;
    request.splice(
        end..end,
        b"Origin: https://caf\xe9.example\r\n".iter().copied(),
    );
    let reply = raw_http(server.addr(), &request);
    assert_eq!(reply.status, 403, "{reply:?}");
}
