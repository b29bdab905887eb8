//! Echo over real sockets: text and binary come back with their opcode and in
//! order, large messages pass, pings get pongs, and a client-initiated close
//! is clean on both ends.

mod support;

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::CloseFrame;
use futures_util::{SinkExt, StreamExt};
use support::{Server, Ws, connect, run};
use wsgate::{
    CloseCode, CloseReason, ClosedBy, Config, Message, Mount, Protocol, Reject, Request,
    SessionHandle, VhostConfig, protocols::Echo,
};

/// Echoes like `Echo` and reports every session's close reason.
struct Reporter {
    closes: Mutex<mpsc::Sender<CloseReason>>,
}

impl Protocol for Reporter {
    type State = ();

    fn name(&self) -> &str {
        "reporter"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        session.try_send(message).expect("echo queued");
    }

    fn close(&self, _state: (), _session: &SessionHandle, reason: &CloseReason) {
        let _ = self.closes.lock().unwrap().send(reason.clone());
    }
}

/// A server with `Echo` at `/echo` and `Reporter` at `/report`; the receiver
/// gets the close reasons of `/report` sessions.
fn server() -> (Server, mpsc::Receiver<CloseReason>) {
    let (tx, rx) = mpsc::channel();
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Echo)
        .protocol(Reporter {
            closes: Mutex::new(tx),
        })
        .mount(Mount::websocket("/echo", ["echo"]))
        .mount(Mount::websocket("/report", ["reporter"]))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    (server, rx)
}

async fn next(ws: &mut Ws) -> Message {
    ws.next()
        .await
        .expect("stream ended early")
        .expect("websocket error")
}

#[test]
fn text_and_binary_come_back_with_their_opcode() {
    let (server, _closes) = server();
    run(async {
        let mut ws = connect(server.addr(), "/echo").await;
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("hello"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
        // Valid UTF-8 sent as binary stays binary.
        ws.send(Message::binary(&b"hello"[..])).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(&b"hello"[..]));
    });
}

#[test]
fn many_messages_come_back_in_order() {
    let (server, _closes) = server();
    run(async {
        let mut ws = connect(server.addr(), "/echo").await;
        let sent: Vec<Message> = (0..200)
            .map(|i| {
                if i % 2 == 0 {
                    Message::text(format!("message {i}"))
                } else {
                    Message::binary(format!("bytes {i}").into_bytes())
                }
            })
            .collect();
        // Queue them all before reading any answer.
        for m in &sent {
            ws.feed(m.clone()).await.unwrap();
        }
        ws.flush().await.unwrap();
        for expected in sent {
            assert_eq!(next(&mut ws).await, expected);
        }
    });
}

#[test]
fn large_binary_message_under_the_limit_comes_back_whole() {
    let (server, _closes) = server();
    let payload: Vec<u8> = (0..500 * 1024).map(|i| (i % 251) as u8).collect();
    run(async {
        let mut ws = connect(server.addr(), "/echo").await;
        ws.send(Message::binary(payload.clone())).await.unwrap();
        match next(&mut ws).await {
            Message::Binary(got) => {
                assert_eq!(got.len(), payload.len());
                assert!(got == payload, "payload corrupted");
            }
            other => panic!("expected binary, got {other:?}"),
        }
    });
}

#[test]
fn ping_is_answered_with_pong_carrying_its_payload() {
    let (server, _closes) = server();
    run(async {
        let mut ws = connect(server.addr(), "/echo").await;
        ws.send(Message::Ping(b"are you there"[..].into()))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Pong(b"are you there"[..].into())
        );
        // The session still echoes afterwards.
        ws.send(Message::text("after ping")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("after ping"));
    });
}

#[test]
fn client_close_is_echoed_and_reported_clean() {
    let (server, closes) = server();
    run(async {
        let mut ws = connect(server.addr(), "/report").await;
        ws.send(Message::text("one")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("one"));
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        match next(&mut ws).await {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1000);
            }
            other => panic!("expected the echoed Close, got {other:?}"),
        }
        // After the close handshake the stream ends without an error.
        assert!(ws.next().await.is_none(), "stream continues after Close");
    });
    let reason = closes
        .recv_timeout(Duration::from_secs(10))
        .expect("close callback not called");
    assert_eq!(reason.code, CloseCode::Normal, "{reason:?}");
    assert_eq!(reason.reason, "bye", "{reason:?}");
    assert_eq!(reason.closed_by, ClosedBy::Client, "{reason:?}");
    assert!(reason.clean, "{reason:?}");
    assert!(
        closes.try_recv().is_err(),
        "close callback called more than once"
    );
    let report = server.shutdown();
    assert_eq!(report.forced, 0, "{report:?}");
}
