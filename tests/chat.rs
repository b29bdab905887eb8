//! `examples/chat.rs`, run as a user runs it: `cargo run --example chat` in a
//! child process, with two real WebSocket clients that take nicknames, join
//! a room, talk in it, send a private message and ask who is online; then
//! both get Close 1001 when `--seconds` elapse, and the example must exit 0
//! after draining both sessions cleanly.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::Ws;
use support::example::{EXIT_LIMIT, Example};
use wsgate::{CloseCode, Message};

/// How long the example serves: time enough for the conversation below on
/// a busy machine.
const SERVE_SECONDS: &str = "6";

/// Time for the clients' part: the conversation, then the close.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn two_clients_chat_in_a_room_and_in_private_then_get_1001_and_the_drain_is_clean() {
    let mut example = Example::start(
        "chat",
        &["--listen", "127.0.0.1:0", "--seconds", SERVE_SECONDS],
    );
    let addr = example.address();

    support::block_on_timeout(CLIENT_LIMIT, async {
        let mut alice = support::connect(addr, "/chat").await;
        let guest = line_starting(&mut alice, "* welcome, you are ").await;
        assert!(guest.starts_with("guest"), "{guest}");
        let mut bob = support::connect(addr, "/chat").await;
        line_starting(&mut bob, "* welcome, you are ").await;

        // Nicknames, unique.
        say(&mut alice, "/nick alice").await;
        expect(&mut alice, "* you are now alice").await;
        say(&mut bob, "/nick alice").await;
        expect(&mut bob, "! alice is taken").await;
        say(&mut bob, "/nick bob").await;
        expect(&mut bob, "* you are now bob").await;
        // Everyone online hears of it.
        expect(&mut alice, "is now bob").await;

        // A room: talking outside one is a mistake, inside it reaches all.
        say(&mut alice, "hello?").await;
        expect(&mut alice, "! join a room first: /join ROOM").await;
        say(&mut alice, "/join lobby").await;
        expect(&mut alice, "* alice joined #lobby").await;
        say(&mut bob, "/join lobby").await;
        expect(&mut bob, "* bob joined #lobby").await;
        expect(&mut alice, "* bob joined #lobby").await;
        say(&mut alice, "hello room").await;
        expect(&mut alice, "#lobby <alice> hello room").await;
        expect(&mut bob, "#lobby <alice> hello room").await;

        // A private message reaches its recipient only.
        say(&mut alice, "/msg bob psst, bob").await;
        expect(&mut alice, "(to bob) psst, bob").await;
        expect(&mut bob, "(private) <alice> psst, bob").await;
        say(&mut alice, "/msg carol hi").await;
        expect(&mut alice, "! no such nick: carol").await;

        // The online list and the room's members, from presence.
        say(&mut bob, "/who").await;
        expect(&mut bob, "* online: alice, bob").await;
        say(&mut bob, "/who lobby").await;
        expect(&mut bob, "* #lobby: alice, bob").await;
        say(&mut alice, "/rooms").await;
        expect(&mut alice, "* rooms: #lobby (2)").await;

        // The room message from bob that alice sees proves the private
        // message did not reach the room.
        say(&mut bob, "bye").await;
        let skipped = expect(&mut alice, "#lobby <bob> bye").await;
        assert!(
            !skipped.iter().any(|l| l.contains("psst")),
            "the private message leaked: {skipped:?}"
        );

        // When `--seconds` elapse, both get Close 1001 and answer it.
        let (a, b) = futures_util::future::join(close_code(&mut alice), close_code(&mut bob)).await;
        assert_eq!(a, Some(CloseCode::Away));
        assert_eq!(b, Some(CloseCode::Away));
    });

    let status = example.wait(EXIT_LIMIT);
    let stdout = example.rest_of_stdout();
    assert!(status.success(), "the example exited with {status}");
    let drain = stdout
        .iter()
        .find_map(|l| l.strip_prefix("drain: "))
        .unwrap_or_else(|| panic!("no drain line in {stdout:#?}"));
    assert!(
        drain.starts_with("2 clean, 0 aborted, 0 forced (0 other tasks)"),
        "drain: {drain}"
    );
}

async fn say(ws: &mut Ws, line: &str) {
    ws.send(Message::text(line)).await.expect("send");
}

/// Reads lines until one contains `wanted`; returns the lines skipped on
/// the way (announcements meant for everyone, say).
async fn expect(ws: &mut Ws, wanted: &str) -> Vec<String> {
    let mut skipped = Vec::new();
    loop {
        let line = next_line(ws).await;
        if line.contains(wanted) {
            return skipped;
        }
        skipped.push(line);
    }
}

/// Reads lines until one starts with `prefix`; returns the rest of it.
async fn line_starting(ws: &mut Ws, prefix: &str) -> String {
    loop {
        if let Some(rest) = next_line(ws).await.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

async fn next_line(ws: &mut Ws) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a line, got {other:?}"),
        }
    }
}

/// Reads until the Close frame, lets the close handshake finish, and returns
/// the frame's code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("websocket error before the Close frame: {e}"),
            None => panic!("connection ended without a Close frame"),
        }
    };
    // The client's answer goes out on the next poll; then the server
    // closes TCP.
    while let Some(Ok(_)) = ws.next().await {}
    code
}
