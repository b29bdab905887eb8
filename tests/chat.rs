//! `examples/chat`, run as a user runs it: `cargo run --example chat` in a
//! child process, driven by real WebSocket clients over loopback sockets.
//!
//! - guests take nicknames, talk in a room and in private, ask who is
//!   online, and get Close 1001 when `--seconds` elapse; the drain is clean;
//! - accounts: register, log in, log out, the answers to a wrong password, a
//!   taken name, an account's name taken with `/nick`, out-of-range history,
//!   over-long lines; a second login takes the account over;
//! - three account holders talk, the example is stopped with SIGINT and
//!   started again on the same `--db` file, and `/history` returns what
//!   they said, in order;
//! - while twenty clients register at once (argon2 on the blocking pool),
//!   another client's `/who` is answered before the last registration is.

mod support;

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_util::StreamExt;
use futures_util::future::{join, join_all};
use support::Ws;
use support::example::{EXIT_LIMIT, Example};
use wsgate::{CloseCode, Message};

/// How long the first example serves: time enough for the conversation
/// below on a busy machine.
const SERVE_SECONDS: &str = "6";

/// Time for the clients' part of a test.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// How many clients register at once in the burst test.
const BURST: usize = 20;

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
        let (a, b) = join(close_code(&mut alice), close_code(&mut bob)).await;
        assert_eq!(a, Some(CloseCode::Away));
        assert_eq!(b, Some(CloseCode::Away));
    });

    let status = example.wait(EXIT_LIMIT);
    let stdout = example.rest_of_stdout();
    assert!(status.success(), "the example exited with {status}");
    assert_drain(&stdout, 2);
}

#[test]
fn accounts_register_log_in_refuse_mistakes_and_a_second_login_takes_over() {
    let mut example = Example::start("chat", &["--listen", "127.0.0.1:0"]);
    let addr = example.address();

    support::block_on_timeout(CLIENT_LIMIT, async {
        let mut alice = join_chat(addr).await;
        let mut other = join_chat(addr).await;

        // Register, and the answer comes before that of the /who sent right
        // behind it: one session's answers keep the order of its commands.
        say(&mut alice, "/register alice correct horse").await;
        say(&mut alice, "/who").await;
        let before = expect(&mut alice, "* online: ").await;
        assert!(
            before
                .iter()
                .any(|l| l == "* registered alice; you are logged in"),
            "no registration before the /who answer: {before:?}"
        );

        // The name is the account's now.
        say(&mut other, "/register alice something-else").await;
        expect_next(&mut other, "! alice is taken").await;
        say(&mut other, "/nick alice").await;
        expect_next(
            &mut other,
            "! alice belongs to an account: /login alice PASSWORD",
        )
        .await;

        // Wrong password and unknown name: the same answer (and both cost an
        // argon2 verification; the times are printed for comparison).
        let started = Instant::now();
        say(&mut other, "/login alice wrong horse").await;
        expect_next(&mut other, "! wrong name or password").await;
        let wrong = started.elapsed();
        let started = Instant::now();
        say(&mut other, "/login nobody wrong horse").await;
        expect_next(&mut other, "! wrong name or password").await;
        let unknown = started.elapsed();
        println!("login refused: wrong password {wrong:.1?}, unknown name {unknown:.1?}");

        // Bad input: a clear `!` line each.
        say(&mut other, "/register bob short").await;
        expect_next(&mut other, "! a password is 8 to 128 bytes").await;
        say(&mut other, "/history 0").await;
        expect_next(&mut other, "! /history: N is a number from 1 to 200").await;
        say(&mut other, "/history 201").await;
        expect_next(&mut other, "! /history: N is a number from 1 to 200").await;
        say(&mut other, "/history").await;
        expect_next(&mut other, "! join a room first: /join ROOM").await;
        say(&mut other, "/history @alice").await;
        expect_next(&mut other, "! log in to read your private history").await;
        say(&mut other, &"x".repeat(1001)).await;
        expect_next(&mut other, "! a line is at most 1000 bytes").await;
        say(&mut other, "/frobnicate").await;
        expect_next(&mut other, "! unknown command /frobnicate (try /help)").await;

        // Log out, log in again.
        say(&mut alice, "/logout").await;
        let guest = line_starting(&mut alice, "* logged out; you are ").await;
        assert!(guest.starts_with("guest"), "{guest}");
        say(&mut alice, "/login alice correct horse").await;
        expect(&mut alice, "* logged in as alice").await;
        say(&mut alice, "/history @other").await;
        expect(&mut alice, "* history of you and other: none yet").await;

        // A second login as alice takes the account over: the first session
        // is told, and closed normally.
        say(&mut other, "/login alice correct horse").await;
        expect(&mut other, "* logged in as alice").await;
        expect(
            &mut alice,
            "* you logged in as alice from another connection",
        )
        .await;
        assert_eq!(close_code(&mut alice).await, Some(CloseCode::Normal));
        expect(&mut other, " is offline").await;
        say(&mut other, "/who").await;
        let online = line_starting(&mut other, "* online: ").await;
        assert_eq!(online, "alice", "the old session is gone");

        // Past the vhost's message limit (16 KiB) the session is closed.
        say(&mut other, &"x".repeat(20 * 1024)).await;
        assert_eq!(close_code(&mut other).await, Some(CloseCode::Size));

        // /quit closes with 1000.
        let mut third = join_chat(addr).await;
        say(&mut third, "/quit").await;
        expect(&mut third, "* bye").await;
        assert_eq!(close_code(&mut third).await, Some(CloseCode::Normal));
    });

    example.interrupt();
    let status = example.wait(EXIT_LIMIT);
    assert!(status.success(), "the example exited with {status}");
}

#[test]
fn guests_may_only_register_or_log_in_with_accounts_only() {
    let mut example = Example::start("chat", &["--listen", "127.0.0.1:0", "--accounts-only"]);
    let addr = example.address();

    support::block_on_timeout(CLIENT_LIMIT, async {
        let mut ws = join_chat(addr).await;
        for line in ["hello", "/nick zed", "/join lobby", "/who"] {
            say(&mut ws, line).await;
            expect_next(
                &mut ws,
                "! log in first: /login NAME PASSWORD, or /register NAME PASSWORD",
            )
            .await;
        }
        say(&mut ws, "/register zed zed-password").await;
        expect_next(&mut ws, "* registered zed; you are logged in").await;
        say(&mut ws, "/join lobby").await;
        expect(&mut ws, "* zed joined #lobby").await;
    });

    example.interrupt();
    assert!(example.wait(EXIT_LIMIT).success());
}

#[test]
fn three_clients_talk_and_history_survives_a_restart_on_the_same_db() {
    let dir = TempDir::new("restart");
    let db = dir.path.join("chat.db");
    let db = db.to_str().expect("a UTF-8 temp path");
    let args = ["--listen", "127.0.0.1:0", "--db", db];

    // First run: three accounts, a conversation, a private message.
    let mut example = Example::start("chat", &args);
    let addr = example.address();
    support::block_on_timeout(CLIENT_LIMIT, async {
        let mut clients = Vec::new();
        for name in ["alice", "bob", "carol"] {
            let mut ws = join_chat(addr).await;
            say(&mut ws, &format!("/register {name} {name}-password")).await;
            expect(&mut ws, "* registered").await;
            say(&mut ws, "/join lobby").await;
            expect(&mut ws, &format!("* {name} joined #lobby")).await;
            clients.push(ws);
        }
        // Each line reaches all three before the next is said.
        for (who, text) in [(0, "one"), (1, "two"), (2, "three"), (0, "four")] {
            say(&mut clients[who], text).await;
            let nick = ["alice", "bob", "carol"][who];
            for ws in &mut clients {
                expect(ws, &format!("#lobby <{nick}> {text}")).await;
            }
        }
        say(&mut clients[0], "/msg bob just between us").await;
        expect(&mut clients[1], "(private) <alice> just between us").await;

        // Ctrl-C: every client gets 1001.
        example.interrupt();
        let codes = join_all(clients.iter_mut().map(close_code)).await;
        assert!(
            codes.iter().all(|c| *c == Some(CloseCode::Away)),
            "{codes:?}"
        );
    });
    let status = example.wait(EXIT_LIMIT);
    let stdout = example.rest_of_stdout();
    assert!(status.success(), "the example exited with {status}");
    assert_drain(&stdout, 3);

    // Second run, on the same file.
    let mut example = Example::start("chat", &args);
    let addr = example.address();
    let stdout = example.stdout_so_far();
    assert!(
        stdout
            .iter()
            .any(|l| l.ends_with("(schema version 1): 3 accounts, 5 messages")),
        "{stdout:#?}"
    );
    support::block_on_timeout(CLIENT_LIMIT, async {
        // Room history is for anyone in the room, oldest first.
        let mut dave = join_chat(addr).await;
        say(&mut dave, "/join lobby").await;
        expect(&mut dave, "* guest").await;
        say(&mut dave, "/history").await;
        assert_eq!(
            history(&mut dave).await,
            ["<alice> one", "<bob> two", "<carol> three", "<alice> four"]
        );
        say(&mut dave, "/history 2").await;
        assert_eq!(history(&mut dave).await, ["<carol> three", "<alice> four"]);

        // The accounts survived too; private history needs the login.
        let mut bob = join_chat(addr).await;
        say(&mut bob, "/login bob bob-password").await;
        expect_next(&mut bob, "* logged in as bob").await;
        say(&mut bob, "/history @alice").await;
        assert_eq!(history(&mut bob).await, ["<alice> just between us"]);
        say(&mut dave, "/register carol carol-password").await;
        expect_next(&mut dave, "! carol is taken").await;
        say(&mut dave, "/nick carol").await;
        expect_next(
            &mut dave,
            "! carol belongs to an account: /login carol PASSWORD",
        )
        .await;
    });
    example.interrupt();
    assert!(example.wait(EXIT_LIMIT).success());
}

#[test]
fn who_is_answered_while_twenty_clients_register() {
    let mut example = Example::start("chat", &["--listen", "127.0.0.1:0"]);
    let addr = example.address();

    support::block_on_timeout(CLIENT_LIMIT, async {
        let mut registering = join_all((0..BURST).map(|_| join_chat(addr))).await;
        let mut watcher = join_chat(addr).await;

        // All twenty registrations go out at once.
        join_all(
            registering
                .iter_mut()
                .enumerate()
                .map(|(i, ws)| async move {
                    say(ws, &format!("/register burst{i} password-{i}")).await
                }),
        )
        .await;
        let burst = Instant::now();

        // Then the watcher asks /who over and over until the last
        // registration is confirmed, timing each answer.
        let registered = &Cell::new(0);
        let confirmations = join_all(registering.iter_mut().map(|ws| async move {
            expect(ws, "* registered burst").await;
            registered.set(registered.get() + 1);
        }));
        let watching = async {
            let mut round_trips = Vec::new();
            let mut registered_at_first_answer = None;
            loop {
                let asked = Instant::now();
                say(&mut watcher, "/who").await;
                expect(&mut watcher, "* online: ").await;
                round_trips.push(asked.elapsed());
                registered_at_first_answer.get_or_insert(registered.get());
                if registered.get() == BURST {
                    break;
                }
                // A sampling interval, not a synchronisation.
                Timer::after(Duration::from_millis(5)).await;
            }
            (registered_at_first_answer, round_trips)
        };
        let (_, (registered_at_first_answer, round_trips)) = join(confirmations, watching).await;
        let burst = burst.elapsed();

        let registered_at_first_answer = registered_at_first_answer.expect("one answer at least");
        assert!(
            registered_at_first_answer < BURST,
            "the first /who answer came after all {BURST} registrations"
        );
        let mut sorted = round_trips.clone();
        sorted.sort_unstable();
        println!(
            "/who during {BURST} registrations ({burst:.1?} in all): first answer with \
             {registered_at_first_answer} of them done, in {:.1?}; median {:.1?}, worst {:.1?} \
             over {} round trips",
            round_trips[0],
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            sorted.len()
        );
    });

    example.interrupt();
    assert!(example.wait(EXIT_LIMIT).success());
}

/// A temporary directory, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("wsgate-chat-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Connects and reads the greeting, up to the list of commands.
async fn join_chat(addr: std::net::SocketAddr) -> Ws {
    let mut ws = support::connect(addr, "/chat").await;
    expect(&mut ws, "* commands: ").await;
    ws
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

/// Reads the next line that is not an announcement to everyone online
/// (`* X is online`, `* X is now Y`, ...) and checks it is `wanted`.
async fn expect_next(ws: &mut Ws, wanted: &str) {
    loop {
        let line = next_line(ws).await;
        let announcement = line.starts_with("* ")
            && [" is online", " is offline", " is now "]
                .iter()
                .any(|a| line.contains(a));
        if !announcement {
            assert_eq!(line, wanted);
            return;
        }
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

/// Reads a `/history` answer: its `<NICK> TEXT` lines, without the times.
async fn history(ws: &mut Ws) -> Vec<String> {
    line_starting(ws, "* history of ").await;
    let mut lines = Vec::new();
    loop {
        let line = next_line(ws).await;
        if line == "* end of history" {
            return lines;
        }
        let (time, rest) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
            .unwrap_or_else(|| panic!("not a history line: {line}"));
        assert!(time.ends_with('Z') && time.len() == 20, "{time}");
        lines.push(rest.to_owned());
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

/// The example's drain line says `clients` sessions closed cleanly.
fn assert_drain(stdout: &[String], clients: usize) {
    let drain = stdout
        .iter()
        .find_map(|l| l.strip_prefix("drain: "))
        .unwrap_or_else(|| panic!("no drain line in {stdout:#?}"));
    assert!(
        drain.starts_with(&format!(
            "{clients} clean, 0 aborted, 0 forced (0 other tasks)"
        )),
        "drain: {drain}"
    );
}
