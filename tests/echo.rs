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

/// Answers each message `n` with "n.0" .. "n.3" on its own session, has
/// another thread queue "n.side" in between (while the callback waits for
/// it), sends "n.4", and on "bye" also closes with 1000.
struct Replies;

impl Protocol for Replies {
    type State = ();

    fn name(&self) -> &str {
        "replies"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        let text = message.into_text().expect("text").to_string();
        for i in 0..4 {
            session
                .try_send(Message::text(format!("{text}.{i}")))
                .unwrap();
        }
        // A send from elsewhere, finished before the callback goes on: it
        // must not be overtaken by what the callback sends after it.
        let other = session.clone();
        let side = format!("{text}.side");
        std::thread::spawn(move || other.try_send(Message::text(side)).unwrap())
            .join()
            .unwrap();
        session
            .try_send(Message::text(format!("{text}.4")))
            .unwrap();
        if text == "bye" {
            session.close(CloseCode::Normal, "done").unwrap();
            // After the close request: refused, and nothing goes out.
            assert!(session.try_send(Message::text("late")).is_err());
        }
    }
}

/// What a callback sends to its own session leaves in the order it was
/// sent, interleaved correctly with what other threads queued meanwhile,
/// and before the Close it requested (the callbacks' own replies take a
/// shorter path than the queue; the order is the contract either way).
#[test]
fn a_callbacks_replies_keep_their_order_with_other_senders_and_its_close() {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Replies)
        .mount(Mount::websocket("/replies", ["replies"]))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    run(async {
        let mut ws = connect(server.addr(), "/replies").await;
        // Pipelined: several messages in one read, each answered in turn.
        for m in ["a", "b", "bye"] {
            ws.feed(Message::text(m)).await.unwrap();
        }
        ws.flush().await.unwrap();
        let mut got = Vec::new();
        let ending = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => got.push(t.to_string()),
                Some(Ok(Message::Close(frame))) => break frame,
                other => panic!("unexpected {other:?}"),
            }
        };
        let expected: Vec<String> = ["a", "b", "bye"]
            .iter()
            .flat_map(|m| {
                ["0", "1", "2", "3", "side", "4"]
                    .iter()
                    .map(move |s| format!("{m}.{s}"))
            })
            .collect();
        assert_eq!(got, expected);
        assert_eq!(ending.map(|f| f.code), Some(CloseCode::Normal));
    });
}

/// Answers every message with the session's path.
struct PathEcho;

impl Protocol for PathEcho {
    type State = ();

    fn name(&self) -> &str {
        "path"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, _message: Message) {
        session
            .try_send(Message::text(session.path()))
            .expect("answer queued");
    }
}

/// A session's path is the one its request asked for: the mount's own (which
/// sessions share with the mount) or one below a prefix mount (a copy).
#[test]
fn a_sessions_path_is_the_requested_one_on_exact_and_prefix_mounts() {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(PathEcho)
        .mount(Mount::websocket("/room", ["path"]))
        .mount(Mount::websocket("/topic", ["path"]).prefix(true))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();
    run(async move {
        for path in ["/room", "/topic", "/topic/a/b", "/room"] {
            let mut ws = connect(addr, path).await;
            ws.send(Message::text("which?")).await.unwrap();
            let answer = ws.next().await.expect("an answer").expect("a message");
            assert_eq!(answer, Message::text(path), "session on {path}");
            ws.close(None).await.unwrap();
        }
    });
    let report = server.shutdown();
    assert_eq!(report.forced, 0, "{report:?}");
}

/// On any message, sends `Mixed::sequence()` from another thread: through
/// the queue (not the callback's direct lane), small messages mixed with
/// large ones, by value and by reference, waiting for room when the queue
/// is full.
struct Mixed;

impl Mixed {
    const COUNT: usize = 600;

    fn sequence() -> Vec<Message> {
        (0..Self::COUNT)
            .map(|i| match i % 4 {
                0 => Message::text(format!("small {i}")),
                1 => Message::binary(vec![(i % 251) as u8; i % 200]),
                2 => Message::binary(vec![(i % 253) as u8; 3000 + i]),
                _ => Message::text("é".repeat(i % 300)),
            })
            .collect()
    }
}

impl Protocol for Mixed {
    type State = ();

    fn name(&self) -> &str {
        "mixed"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, _message: Message) {
        let session = session.clone();
        std::thread::spawn(move || {
            for (i, m) in Self::sequence().into_iter().enumerate() {
                let queued = if i % 3 == 0 {
                    // Waits for room (the queue bound is small).
                    futures_lite::future::block_on(session.send(m))
                } else {
                    let mut m = m;
                    loop {
                        match session.try_send_ref(&m) {
                            Err(wsgate::SendError::Full(back)) => {
                                m = back;
                                std::thread::yield_now();
                            }
                            other => break other,
                        }
                    }
                };
                queued.expect("queued");
            }
        });
    }
}

/// What other tasks and threads queue for a session arrives whole and in
/// order, small messages (queued already encoded) between large ones
/// (queued shared), through a queue too small to hold them all at once.
#[test]
fn queued_small_and_large_messages_arrive_whole_and_in_order() {
    // A full queue refuses (the default closes the session).
    let limits = wsgate::Limits::default()
        .max_queue_messages(8)
        .max_queue_bytes(16 * 1024)
        .overflow(wsgate::OverflowPolicy::Reject);
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .limits(limits)
        .protocol(Mixed)
        .mount(Mount::websocket("/mixed", ["mixed"]))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();
    run(async move {
        let mut ws = connect(addr, "/mixed").await;
        ws.send(Message::text("go")).await.unwrap();
        for (i, expected) in Mixed::sequence().into_iter().enumerate() {
            let got = ws.next().await.expect("a message").expect("a frame");
            assert_eq!(got, expected, "message {i}");
        }
        ws.close(None).await.unwrap();
    });
    let report = server.shutdown();
    assert_eq!(report.forced, 0, "{report:?}");
}
