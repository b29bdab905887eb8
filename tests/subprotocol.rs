//! Subprotocol negotiation and handshake rejection, as a client sees them:
//! the `Sec-WebSocket-Protocol` answer, and the HTTP status and body of a
//! protocol's `Reject`.

mod support;

use std::net::{SocketAddr, TcpStream};

use async_io::Async;
use async_tungstenite::tungstenite::Error as WsError;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use async_tungstenite::tungstenite::handshake::client::{Request as ClientRequest, Response};
use async_tungstenite::tungstenite::http::HeaderValue;
use futures_util::StreamExt;
use support::{Server, Ws, raw_http, run, upgrade_request};
use wsgate::{Config, Message, Mount, Protocol, Reject, Request, SessionHandle, VhostConfig};

/// Greets every session with its own protocol name, then echoes.
struct Named(&'static str);

impl Protocol for Named {
    type State = ();

    fn name(&self) -> &str {
        self.0
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        session
            .try_send(Message::text(self.0))
            .expect("greeting queued");
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        session.try_send(message).expect("echo queued");
    }
}

/// Admits only `?token=letmein` and `Authorization: Bearer s3cret`.
struct Guarded;

impl Protocol for Guarded {
    type State = ();

    fn name(&self) -> &str {
        "guarded"
    }

    fn open(&self, request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        if request.header("authorization") != Some("Bearer s3cret") {
            return Err(
                Reject::unauthorized("credentials required").header("WWW-Authenticate", "Bearer")
            );
        }
        if request.query_param("token") != Some("letmein") {
            return Err(Reject::new(403, "bad token"));
        }
        session
            .try_send(Message::text("welcome"))
            .expect("greeting queued");
        Ok(())
    }

    fn message(&self, _state: &mut (), _session: &SessionHandle, _message: Message) {}
}

fn server() -> Server {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Named("chat"))
        .protocol(Named("superchat"))
        .protocol(Guarded)
        .mount(Mount::websocket("/chat", ["chat", "superchat"]))
        .mount(Mount::websocket("/guarded", ["guarded"]))
        .build()
        .unwrap();
    Server::start(Config::builder().vhost(vhost).build().unwrap())
}

fn request(addr: SocketAddr, target: &str, headers: &[(&'static str, &str)]) -> ClientRequest {
    let mut req = format!("ws://{addr}{target}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    req
}

/// Handshakes and returns the socket with the server's 101 response.
async fn handshake(addr: SocketAddr, req: ClientRequest) -> Result<(Ws, Response), WsError> {
    let tcp = Async::<TcpStream>::connect(addr).await?;
    async_tungstenite::client_async(req, tcp).await
}

fn protocol_header(resp: &Response) -> Option<&str> {
    resp.headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap())
}

async fn greeting(ws: &mut Ws) -> String {
    match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a text greeting, got {other:?}"),
    }
}

#[test]
fn offered_protocol_is_echoed_and_serves_the_session() {
    let server = server();
    run(async {
        let req = request(
            server.addr(),
            "/chat",
            &[("Sec-WebSocket-Protocol", "superchat")],
        );
        let (mut ws, resp) = handshake(server.addr(), req).await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(protocol_header(&resp), Some("superchat"));
        assert_eq!(greeting(&mut ws).await, "superchat");
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    });
}

#[test]
fn first_offer_the_mount_speaks_wins() {
    let server = server();
    run(async {
        let req = request(
            server.addr(),
            "/chat",
            &[("Sec-WebSocket-Protocol", "nope, superchat, chat")],
        );
        let (mut ws, resp) = handshake(server.addr(), req).await.unwrap();
        assert_eq!(protocol_header(&resp), Some("superchat"));
        assert_eq!(greeting(&mut ws).await, "superchat");
    });
}

#[test]
fn no_offer_gets_the_first_protocol_without_a_header() {
    let server = server();
    run(async {
        let req = request(server.addr(), "/chat", &[]);
        let (mut ws, resp) = handshake(server.addr(), req).await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(protocol_header(&resp), None);
        assert_eq!(greeting(&mut ws).await, "chat");
    });
}

#[test]
fn unknown_offer_gets_no_header_and_the_client_fails_the_connection() {
    let server = server();
    run(async {
        let req = request(
            server.addr(),
            "/chat",
            &[("Sec-WebSocket-Protocol", "nope")],
        );
        match handshake(server.addr(), req).await {
            Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
                SubProtocolError::NoSubProtocol,
            ))) => {}
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("the client accepted a handshake without its subprotocol"),
        }
    });
}

/// What a tungstenite client saw of a refused handshake.
struct Refused {
    status: u16,
    www_authenticate: Option<String>,
    /// The body bytes that arrived with the head (tungstenite does not read on).
    body: String,
}

/// Expects the handshake to be refused with an HTTP status.
async fn refused(addr: SocketAddr, req: ClientRequest) -> Refused {
    match handshake(addr, req).await {
        Err(WsError::Http(resp)) => Refused {
            status: resp.status().as_u16(),
            www_authenticate: resp
                .headers()
                .get("WWW-Authenticate")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap(),
        },
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((_, resp)) => panic!("expected an HTTP refusal, got {}", resp.status()),
    }
}

#[test]
fn rejection_without_credentials_is_401() {
    let server = server();
    let seen = run(refused(
        server.addr(),
        request(server.addr(), "/guarded?token=letmein", &[]),
    ));
    assert_eq!(seen.status, 401);
    assert_eq!(seen.www_authenticate.as_deref(), Some("Bearer"));
    let counters = server.handle.stats().unwrap();
    assert_eq!((counters.sessions_total, counters.rejected_total), (0, 1));
}

#[test]
fn rejection_for_a_bad_or_missing_token_is_403() {
    let server = server();
    let auth = [("Authorization", "Bearer s3cret")];
    for target in ["/guarded?token=wrong", "/guarded", "/guarded?token"] {
        let seen = run(refused(
            server.addr(),
            request(server.addr(), target, &auth),
        ));
        assert_eq!(seen.status, 403, "{target}");
        assert_eq!(seen.www_authenticate, None, "{target}");
    }
    let counters = server.handle.stats().unwrap();
    assert_eq!((counters.sessions_total, counters.rejected_total), (0, 3));
}

/// tungstenite hands back only the body bytes that arrived together with the
/// response head, so the reason reaches a tungstenite client only if wsgate
/// sends head and body in one write. Repeated so that a split shows up.
#[test]
fn rejection_reason_reaches_a_tungstenite_client() {
    let server = server();
    let auth = [("Authorization", "Bearer s3cret")];
    for _ in 0..50 {
        let seen = run(refused(
            server.addr(),
            request(server.addr(), "/guarded?token=letmein", &[]),
        ));
        assert_eq!(
            (seen.status, seen.body.as_str()),
            (401, "credentials required\n")
        );
        let seen = run(refused(
            server.addr(),
            request(server.addr(), "/guarded?token=wrong", &auth),
        ));
        assert_eq!((seen.status, seen.body.as_str()), (403, "bad token\n"));
    }
}

#[test]
fn rejection_reads_the_same_over_raw_http() {
    let server = server();
    let reply = raw_http(
        server.addr(),
        &upgrade_request("/guarded?token=letmein", ""),
    );
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("WWW-Authenticate").as_deref(), Some("Bearer"));
    assert_eq!(reply.header("Connection").as_deref(), Some("close"));
    assert_eq!(reply.body, "credentials required\n");
    let reply = raw_http(
        server.addr(),
        &upgrade_request("/guarded?token=wrong", "Authorization: Bearer s3cret\r\n"),
    );
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, "bad token\n");
}

#[test]
fn valid_credentials_are_admitted() {
    let server = server();
    run(async {
        let req = request(
            server.addr(),
            "/guarded?token=letmein",
            &[("Authorization", "Bearer s3cret")],
        );
        let (mut ws, resp) = handshake(server.addr(), req).await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(greeting(&mut ws).await, "welcome");
    });
    let counters = server.handle.stats().unwrap();
    assert_eq!((counters.sessions_total, counters.rejected_total), (1, 0));
}
