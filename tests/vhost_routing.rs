//! Vhosts that share a listener are chosen by the `Host` header; vhosts can be
//! added and removed at runtime, and removal closes their sessions with 1001.

mod support;

use std::net::{SocketAddr, TcpStream};

use async_io::Async;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use futures_util::StreamExt;
use support::{Server, Ws, raw_http, run};
use wsgate::{Config, Message, Mount, Protocol, Reject, Request, SessionHandle, VhostConfig};

/// The literal every vhost of the shared listener names.
const SHARED: &str = "127.0.0.1:0";

/// A second loopback address (Linux routes all of 127/8 to `lo`), for a
/// listener that only a runtime-added vhost uses.
const OTHER: &str = "127.0.0.2:0";

/// Greets every session with the name of the vhost that serves it, then echoes.
struct Whoami;

impl Protocol for Whoami {
    type State = ();

    fn name(&self) -> &str {
        "whoami"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        session
            .try_send(Message::text(session.vhost().name()))
            .expect("greeting queued");
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        session.try_send(message).expect("echo queued");
    }
}

fn vhost(name: &str, listen: &str, hosts: &[&str]) -> VhostConfig {
    let mut b = VhostConfig::builder(name)
        .listen(listen.parse().unwrap())
        .protocol(Whoami)
        .mount(Mount::websocket("/who", ["whoami"]));
    for h in hosts {
        b = b.host(*h);
    }
    b.build().unwrap()
}

/// `a` and `b` by name, and `fallback` without names, all on one listener.
fn config() -> Config {
    Config::builder()
        .vhost(vhost("a", SHARED, &["a.example"]))
        .vhost(vhost("b", SHARED, &["b.example"]))
        .vhost(vhost("fallback", SHARED, &[]))
        .build()
        .unwrap()
}

/// Opens `/who` on `addr` with `Host: host` (the URL's authority) and returns
/// the socket and the vhost name it was greeted with.
async fn who(addr: SocketAddr, host: &str) -> (Ws, String) {
    let mut ws = try_who(addr, host).await.expect("websocket handshake");
    let name = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a greeting, got {other:?}"),
    };
    (ws, name)
}

async fn try_who(addr: SocketAddr, host: &str) -> Result<Ws, tungstenite::Error> {
    let req = format!("ws://{host}/who").into_client_request()?;
    let tcp = Async::<TcpStream>::connect(addr).await?;
    let (ws, _) = async_tungstenite::client_async(req, tcp).await?;
    Ok(ws)
}

async fn expect_close(ws: &mut Ws, code: u16) {
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), code),
        other => panic!("expected Close {code}, got {other:?}"),
    }
    // Reading on sends our answer and sees the end of the stream.
    while let Some(Ok(_)) = ws.next().await {}
}

#[test]
fn vhosts_naming_the_same_address_share_one_listener() {
    let server = Server::start(config());
    assert_eq!(server.addrs.len(), 1, "{:?}", server.addrs);
    assert_ne!(server.addr().port(), 0);
}

#[test]
fn host_header_chooses_the_vhost() {
    let server = Server::start(config());
    let addr = server.addr();
    run(async {
        let port = addr.port();
        let cases = [
            ("a.example".to_owned(), "a"),
            ("b.example".to_owned(), "b"),
            (format!("a.example:{port}"), "a"),
            ("b.example:8080".to_owned(), "b"),
            ("B.Example".to_owned(), "b"),
            ("unknown.example".to_owned(), "fallback"),
            (format!("unknown.example:{port}"), "fallback"),
            (addr.to_string(), "fallback"),
        ];
        for (host, expected) in cases {
            let (mut ws, name) = who(addr, &host).await;
            assert_eq!(name, expected, "Host: {host}");
            ws.send(Message::text("ping")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
        }
    });
}

#[test]
fn host_header_chooses_the_vhost_for_http_too() {
    let vhost = |name: &'static str, hosts: &[&str]| {
        let mut b = VhostConfig::builder(name)
            .listen(SHARED.parse().unwrap())
            .mount(Mount::http(
                "/name",
                move |_: &Request, v: &wsgate::Vhost| {
                    wsgate::Response::text(200, format!("{} via {name}", v.name()))
                },
            ));
        for h in hosts {
            b = b.host(*h);
        }
        b.build().unwrap()
    };
    let config = Config::builder()
        .vhost(vhost("a", &["a.example"]))
        .vhost(vhost("fallback", &[]))
        .build()
        .unwrap();
    let server = Server::start(config);
    let get = |host: &str| {
        raw_http(
            server.addr(),
            format!("GET /name HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let reply = get("a.example:1234");
    assert_eq!((reply.status, reply.body.as_str()), (200, "a via a"));
    let reply = get("elsewhere");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "fallback via fallback")
    );
}

#[test]
fn vhost_added_before_the_loop_joins_the_shared_listener() {
    let server = Server::start_with(config(), |ctx| {
        ctx.add_vhost(vhost("c", SHARED, &["c.example"])).unwrap();
    });
    assert_eq!(server.addrs.len(), 1, "{:?}", server.addrs);
    run(async {
        assert_eq!(who(server.addr(), "c.example").await.1, "c");
        assert_eq!(who(server.addr(), "a.example").await.1, "a");
        assert_eq!(who(server.addr(), "x.example").await.1, "fallback");
    });
}

#[test]
fn vhost_added_at_runtime_serves_on_its_own_listener_and_the_shared_one() {
    let (server, control) = Server::start_controlled(config());
    let own = control.with(|ctx| {
        let v = ctx
            .add_vhost(
                VhostConfig::builder("d")
                    .listen(OTHER.parse().unwrap())
                    .listen(SHARED.parse().unwrap())
                    .host("d.example")
                    .protocol(Whoami)
                    .mount(Mount::websocket("/who", ["whoami"]))
                    .build()
                    .unwrap(),
            )
            .unwrap();
        v.local_addrs()
    });
    assert_eq!(own.len(), 2, "{own:?}");
    assert_eq!(own[1], server.addr(), "the shared listener is reused");
    assert_ne!(own[0].port(), 0);
    // A name that is already taken is refused.
    let dup = control.with(|ctx| ctx.add_vhost(vhost("a", SHARED, &[])).map(|_| ()));
    assert!(
        matches!(dup, Err(wsgate::Error::VhostExists(ref n)) if n == "a"),
        "{dup:?}"
    );
    run(async {
        // Its own listener has it as the only (so default) vhost.
        assert_eq!(who(own[0], "anything.example").await.1, "d");
        assert_eq!(who(server.addr(), "d.example").await.1, "d");
        assert_eq!(who(server.addr(), "a.example").await.1, "a");
    });
}

#[test]
fn removed_vhost_closes_its_sessions_with_1001_and_others_keep_serving() {
    let (server, control) = Server::start_controlled(config());
    let addr = server.addr();
    run(async {
        let (mut on_a, name) = who(addr, "a.example").await;
        assert_eq!(name, "a");
        let (mut on_b, name) = who(addr, "b.example").await;
        assert_eq!(name, "b");

        control.with(|ctx| ctx.remove_vhost("a")).unwrap();

        expect_close(&mut on_a, 1001).await;
        // The shared listener stays up for the others; `a.example` now falls
        // back to the default vhost.
        on_b.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            on_b.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
        assert_eq!(who(addr, "a.example").await.1, "fallback");
        assert_eq!(who(addr, "b.example").await.1, "b");
    });
    let missing = control.with(|ctx| ctx.remove_vhost("a"));
    assert!(
        matches!(missing, Err(wsgate::Error::NoSuchVhost(ref n)) if n == "a"),
        "{missing:?}"
    );
    assert!(control.with(|ctx| ctx.vhost("a").is_none()));
}

#[test]
fn removing_the_only_vhost_of_a_listener_stops_it() {
    let (server, control) = Server::start_controlled(config());
    let own = control.with(|ctx| {
        ctx.add_vhost(vhost("solo", OTHER, &[]))
            .unwrap()
            .local_addrs()[0]
    });
    run(async {
        let (mut session, name) = who(own, "solo.example").await;
        assert_eq!(name, "solo");

        control.with(|ctx| ctx.remove_vhost("solo")).unwrap();

        expect_close(&mut session, 1001).await;
        let refused = try_who(own, "solo.example").await;
        assert!(
            refused.is_err(),
            "a stopped listener accepted a WebSocket session"
        );
        // The other listener is untouched.
        assert_eq!(who(server.addr(), "b.example").await.1, "b");
    });
    assert_eq!(server.addrs.len(), 1);
}
