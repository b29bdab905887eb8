//! Limits: every bound a peer can push against, breached over a real socket.
//! Request head bytes and header count (431), handshake time (408), frame and
//! message size (1009), protocol violations (1002), bad UTF-8 (1007), the
//! outbound queue (1008, 1013, or a refused send), sessions per vhost (503)
//! and per address (429), and the idle timeout (1001). Each answer is
//! asserted, then the TCP close within a bounded time.
//!
//! Close reasons are asserted loosely (non-empty, a keyword at most): their
//! wording belongs to the frame engine; the codes are the contract.

mod support;

use std::io::{ErrorKind, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::CloseFrame;
use support::{
    LIMIT, Server, ServerFrame, TcpEnd, Ws, block_on_timeout, client_frame, connect, echo_config,
    frame_head, http_until_closed, raw_ws, raw_ws_with, read_to_end, read_until_closed, run,
    server_frames, upgrade_request, wait_until,
};
use wsgate::{
    CloseCode, Config, Limits, Message, Mount, OverflowPolicy, Protocol, Reject, Request,
    SendError, SessionHandle, VhostConfig,
};

/// How long the server may take to close TCP once it has answered. The
/// handshake timeout (10 s) and the idle timeout (60 s) stay longer unless
/// they are the subject of the test, so a server that waits for a head or a
/// payload that never comes fails it.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The handshake: head bytes, header count, time.

/// Sends `request` and asserts the answer's status, that its body names the
/// cause, and that TCP closes in an orderly way (FIN) within `CLOSE_WITHIN`.
#[track_caller]
fn assert_refused(server: &Server, request: &[u8], status: u16, keyword: &str) {
    let (reply, end) = http_until_closed(server.addr(), request, CLOSE_WITHIN);
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(reply.body.contains(keyword), "{reply:?}");
    assert_eq!(reply.header("Connection").as_deref(), Some("close"));
    assert_eq!(end, TcpEnd::Eof, "{reply:?}");
}

#[test]
fn request_head_over_max_head_bytes_is_431() {
    let server = Server::start(echo_config("v", Limits::default().max_head_bytes(1024)));
    let filler = format!("X-Filler: {}\r\n", "a".repeat(2000));
    // A complete head over the limit.
    assert_refused(
        &server,
        &upgrade_request("/echo", &filler),
        431,
        "too large",
    );
    // A head that never ends: refused once the limit is reached, without
    // waiting for the handshake timeout (10 s, longer than CLOSE_WITHIN).
    let endless = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{filler}");
    assert_refused(&server, endless.as_bytes(), 431, "too large");
    assert_eq!(server.handle.stats().unwrap().rejected_total, 2);
}

#[test]
fn request_headers_over_max_headers_is_431() {
    let server = Server::start(echo_config("v", Limits::default().max_headers(8)));
    let extra: String = (0..20).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    assert_refused(&server, &upgrade_request("/echo", &extra), 431, "headers");
    // At the limit is fine: the 5 headers of the upgrade plus 3 more.
    let at_limit: String = (0..3).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let mut ws = raw_ws_with(server.addr(), "/echo", &at_limit);
    ws.write_all(&client_frame(0x88, &1000u16.to_be_bytes()))
        .unwrap();
    let (bytes, _) = read_until_closed(&mut ws, CLOSE_WITHIN);
    assert_eq!(last_close(&bytes).close_code(), Some(1000));
}

#[test]
fn stalled_request_head_is_408_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    let server = Server::start(echo_config(
        "v",
        Limits::default().handshake_timeout(timeout),
    ));
    let started = Instant::now();
    let (reply, end) = http_until_closed(
        server.addr(),
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\n",
        CLOSE_WITHIN,
    );
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(reply.body.contains("timed out"), "{reply:?}");
    assert_eq!(end, TcpEnd::Eof);
    assert!(elapsed >= timeout, "answered after {elapsed:?}");
}

// ---------------------------------------------------------------------------
// Frames and messages: sizes, protocol violations, UTF-8.

/// Frame limits small enough to breach cheaply; the idle timeout stays at its
/// default (60 s) so that only the breach can end a session within
/// `CLOSE_WITHIN`.
fn frame_limits() -> Limits {
    Limits::default()
        .max_frame_size(1024)
        .max_message_size(4096)
        .close_timeout(Duration::from_millis(500))
}

fn frame_server() -> Server {
    Server::start(echo_config("v", frame_limits()))
}

/// The last frame of what the server sent, which must be a Close.
#[track_caller]
fn last_close(bytes: &[u8]) -> ServerFrame {
    let frames = server_frames(bytes);
    let last = frames.last().cloned().expect("no frame from the server");
    assert_eq!(
        last.opcode(),
        0x8,
        "the last frame is not a Close: {frames:?}"
    );
    last
}

/// Opens a raw WebSocket to `/echo`, sends `bytes` and returns the server's
/// Close frame, after asserting that it is the only frame the server sent and
/// that TCP closed within `CLOSE_WITHIN`.
#[track_caller]
fn close_after(server: &Server, bytes: &[u8]) -> ServerFrame {
    let mut s = raw_ws(server.addr(), "/echo");
    if let Err(e) = s.write_all(bytes) {
        // The server may fail the connection before it has read everything.
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{e}"
        );
    }
    let (answer, _end) = read_until_closed(&mut s, CLOSE_WITHIN);
    let frames = server_frames(&answer);
    assert_eq!(frames.len(), 1, "expected a lone Close: {frames:?}");
    last_close(&answer)
}

#[track_caller]
fn assert_close(frame: &ServerFrame, code: u16, what: &str) {
    assert_eq!(frame.close_code(), Some(code), "{what}: {frame:?}");
    assert!(!frame.close_reason().is_empty(), "{what}: no reason");
}

#[test]
fn frame_over_max_frame_size_is_1009() {
    let server = frame_server();
    let close = close_after(&server, &client_frame(0x82, &[7u8; 2000]));
    assert_close(&close, 1009, "one frame over the limit");
    // At the limit is fine.
    let mut s = raw_ws(server.addr(), "/echo");
    s.write_all(&client_frame(0x82, &[7u8; 1024])).unwrap();
    s.write_all(&client_frame(0x88, &1000u16.to_be_bytes()))
        .unwrap();
    let (bytes, end) = read_until_closed(&mut s, CLOSE_WITHIN);
    let frames = server_frames(&bytes);
    assert_eq!(frames[0].first, 0x82);
    assert_eq!(frames[0].payload, vec![7u8; 1024]);
    assert_eq!(frames[1].close_code(), Some(1000));
    assert_eq!(end, TcpEnd::Eof);
}

#[test]
fn fragments_over_max_message_size_are_1009() {
    let server = frame_server();
    // Five fragments of 1000 bytes: each under the frame limit (1024), 5000
    // together, over the message limit (4096).
    let mut bytes = client_frame(0x02, &[1u8; 1000]);
    for _ in 0..3 {
        bytes.extend(client_frame(0x00, &[1u8; 1000]));
    }
    bytes.extend(client_frame(0x80, &[1u8; 1000]));
    assert_close(&close_after(&server, &bytes), 1009, "reassembled message");
    // The same for text.
    let mut text = client_frame(0x01, &[b'a'; 1000]);
    for _ in 0..3 {
        text.extend(client_frame(0x00, &[b'a'; 1000]));
    }
    text.extend(client_frame(0x80, &[b'a'; 1000]));
    assert_close(&close_after(&server, &text), 1009, "reassembled text");
}

#[test]
fn frame_announcing_a_terabyte_is_1009_at_once() {
    let server = frame_server();
    // 2^40 bytes announced, none sent: the answer must not wait for the
    // payload (the idle timeout is 60 s), nor allocate it.
    let started = Instant::now();
    let close = close_after(&server, &frame_head(0x82, 1 << 40, true));
    assert_close(&close, 1009, "announced length");
    assert!(started.elapsed() < CLOSE_WITHIN);
    // The largest length the format can carry (2^63 - 1), and as a text frame.
    let close = close_after(&server, &frame_head(0x81, (1 << 63) - 1, true));
    assert_close(&close, 1009, "announced 2^63 - 1");
}

#[test]
fn protocol_violations_are_1002() {
    let server = frame_server();
    let unmasked = {
        let mut f = frame_head(0x81, 5, false);
        f.extend_from_slice(b"hello");
        f
    };
    let new_message_mid_message = {
        let mut f = client_frame(0x01, b"first half");
        f.extend(client_frame(0x81, b"not a continuation"));
        f
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked client frame", unmasked),
        ("RSV1 set", client_frame(0xc1, b"hello")),
        ("RSV2 set", client_frame(0xa1, b"hello")),
        ("RSV3 set", client_frame(0x92, b"hello")),
        ("reserved data opcode 0x3", client_frame(0x83, b"x")),
        ("reserved data opcode 0x7", client_frame(0x87, b"x")),
        ("reserved control opcode 0xB", client_frame(0x8b, b"x")),
        ("reserved control opcode 0xF", client_frame(0x8f, b"")),
        ("fragmented ping", client_frame(0x09, b"x")),
        (
            "fragmented close",
            client_frame(0x08, &1000u16.to_be_bytes()),
        ),
        ("continuation without a start", client_frame(0x80, b"x")),
        (
            "unfinished continuation without a start",
            client_frame(0x00, b"x"),
        ),
        (
            "data frame inside a fragmented message",
            new_message_mid_message,
        ),
        ("ping of 126 bytes", client_frame(0x89, &[0u8; 126])),
        ("pong of 126 bytes", client_frame(0x8a, &[0u8; 126])),
        ("close of 126 bytes", {
            let mut p = 1000u16.to_be_bytes().to_vec();
            p.extend_from_slice(&[b'a'; 124]);
            client_frame(0x88, &p)
        }),
        ("close with a 1-byte payload", client_frame(0x88, &[0x03])),
        (
            "close code 1005",
            client_frame(0x88, &1005u16.to_be_bytes()),
        ),
        (
            "close code 1006",
            client_frame(0x88, &1006u16.to_be_bytes()),
        ),
        (
            "close code 1015",
            client_frame(0x88, &1015u16.to_be_bytes()),
        ),
        ("close code 999", client_frame(0x88, &999u16.to_be_bytes())),
        (
            "close code 1004",
            client_frame(0x88, &1004u16.to_be_bytes()),
        ),
        (
            "close code 2999",
            client_frame(0x88, &2999u16.to_be_bytes()),
        ),
        (
            "close code 5000",
            client_frame(0x88, &5000u16.to_be_bytes()),
        ),
    ];
    for (what, bytes) in &cases {
        assert_close(&close_after(&server, bytes), 1002, what);
    }
}

/// Autobahn 6.3.1's text: valid UTF-8 up to an encoded surrogate (ED A0 80).
const BAD_UTF8: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";

/// Frames read together are answered together ("corking"), but never out
/// of order: the echoes of the valid messages in the same write as a
/// protocol violation, or as the client's Close, leave before our Close
/// (Autobahn 3.2, 4.1.3, 5.15 and the like).
#[test]
fn answers_to_messages_read_with_a_violation_or_a_close_go_out_first() {
    let server = frame_server();
    for (last, code) in [
        (vec![0xC1, 0x80, 0, 0, 0, 0], 1002), // RSV1 set on a text frame
        (client_frame(0x88, &1000u16.to_be_bytes()), 1000),
    ] {
        let mut bytes = Vec::new();
        for i in 0..3u8 {
            bytes.extend(client_frame(0x81, &[b'a' + i; 5]));
        }
        bytes.extend(last);
        let mut s = raw_ws(server.addr(), "/echo");
        s.write_all(&bytes).unwrap();
        let (answer, end) = read_until_closed(&mut s, CLOSE_WITHIN);
        let frames = server_frames(&answer);
        let texts: Vec<&[u8]> = frames
            .iter()
            .filter(|f| f.opcode() == 0x1)
            .map(|f| f.payload.as_slice())
            .collect();
        assert_eq!(texts, [b"aaaaa", b"bbbbb", b"ccccc"], "{frames:?}");
        assert_eq!(frames.len(), 4, "three echoes, then the Close: {frames:?}");
        assert_eq!(last_close(&answer).close_code(), Some(code));
        assert_eq!(end, TcpEnd::Eof);
    }
    server.shutdown();
}

#[test]
fn invalid_utf8_in_a_text_message_is_1007() {
    let server = frame_server();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one frame", client_frame(0x81, BAD_UTF8)),
        ("a lone 0xFF", client_frame(0x81, b"abc\xffdef")),
        (
            "truncated sequence at the end",
            client_frame(0x81, b"abc\xe2\x82"),
        ),
        ("fragmented", {
            let mut f = client_frame(0x01, &BAD_UTF8[..5]);
            f.extend(client_frame(0x80, &BAD_UTF8[5..]));
            f
        }),
        ("close reason", {
            let mut p = 1000u16.to_be_bytes().to_vec();
            p.extend_from_slice(b"\xff\xfe");
            client_frame(0x88, &p)
        }),
    ];
    for (what, bytes) in &cases {
        assert_close(&close_after(&server, bytes), 1007, what);
    }
    // Binary messages carry any bytes.
    let mut s = raw_ws(server.addr(), "/echo");
    s.write_all(&client_frame(0x82, BAD_UTF8)).unwrap();
    s.write_all(&client_frame(0x88, &1000u16.to_be_bytes()))
        .unwrap();
    let (bytes, _) = read_until_closed(&mut s, CLOSE_WITHIN);
    let frames = server_frames(&bytes);
    assert_eq!(frames[0].payload, BAD_UTF8);
    assert_eq!(frames[1].close_code(), Some(1000));
}

#[test]
fn invalid_utf8_in_an_unfinished_message_is_1007_at_once() {
    let server = frame_server();
    // The first fragment is valid, the second (not final) turns invalid; the
    // rest of the message never comes. The answer must not wait for it.
    let mut bytes = client_frame(0x01, b"hello ");
    bytes.extend(client_frame(0x00, b"w\xf0\x28\x8c\x28orld"));
    let close = close_after(&server, &bytes);
    assert_close(&close, 1007, "unfinished message");
}

#[test]
fn invalid_utf8_in_an_unfinished_frame_is_1007_at_once() {
    let server = frame_server();
    // A final text frame announcing 100 bytes; only the first 10 are sent,
    // and they are already invalid. The rest never comes (idle timeout 60 s).
    let mut payload = b"abcd\xffefghi".to_vec();
    payload.resize(100, b'a');
    let frame = client_frame(0x81, &payload);
    assert_eq!(frame.len(), 2 + 4 + 100);
    let close = close_after(&server, &frame[..2 + 4 + 10]);
    assert_close(&close, 1007, "unfinished frame");
    assert!(close.close_reason().to_ascii_lowercase().contains("utf-8"));
}

// ---------------------------------------------------------------------------
// The outbound queue.

const CHUNK: usize = 64 * 1024;
const FLOOD: usize = 64; // 4 MiB in all
const QUEUE_BYTES: usize = 256 * 1024;

/// How the flood's sends went, reported by the protocol.
#[derive(Debug, Default)]
struct Sends {
    /// Indices of the messages that were queued, in order.
    queued: Vec<u64>,
    full: usize,
    closed: usize,
    open_after: bool,
}

/// On the text "flood", queues 4 MiB in 64 KiB binary messages (each starting
/// with its index) without waiting, and reports how that went; echoes
/// anything else.
struct Flood(mpsc::Sender<Sends>);

impl Protocol for Flood {
    type State = ();

    fn name(&self) -> &str {
        "flood"
    }

    fn open(&self, _: &Request, _: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _: &mut (), session: &SessionHandle, message: Message) {
        if message != Message::text("flood") {
            let _ = session.try_send(message);
            return;
        }
        let mut sends = Sends::default();
        for i in 0..FLOOD as u64 {
            let mut payload = vec![0u8; CHUNK];
            payload[..8].copy_from_slice(&i.to_be_bytes());
            match session.try_send(Message::binary(payload)) {
                Ok(()) => sends.queued.push(i),
                Err(SendError::Full(_)) => sends.full += 1,
                Err(e) => {
                    assert!(e.is_closed(), "{e}");
                    sends.closed += 1;
                }
            }
        }
        sends.open_after = session.is_open();
        self.0.send(sends).unwrap();
    }
}

fn flood_server(overflow: OverflowPolicy) -> (Server, mpsc::Receiver<Sends>) {
    let (tx, rx) = mpsc::channel();
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Flood(tx))
        .mount(Mount::websocket("/flood", ["flood"]))
        .limits(
            Limits::default()
                .max_queue_bytes(QUEUE_BYTES)
                .overflow(overflow)
                .close_timeout(Duration::from_secs(2)),
        )
        .build()
        .unwrap();
    (
        Server::start(Config::builder().vhost(vhost).build().unwrap()),
        rx,
    )
}

/// Connects, triggers the flood and, without reading anything, waits for the
/// protocol's report.
fn flood(server: &Server, sends: &mpsc::Receiver<Sends>) -> (Ws, Sends) {
    let addr = server.addr();
    let ws = run(async move {
        let mut ws = connect(addr, "/flood").await;
        ws.send(Message::text("flood")).await.unwrap();
        ws
    });
    let report = sends.recv_timeout(LIMIT).expect("the flood did not run");
    // The queue took what fits in its bound, in order, and refused the rest.
    assert!(!report.queued.is_empty(), "{report:?}");
    assert!(report.queued.len() * CHUNK <= QUEUE_BYTES, "{report:?}");
    assert_eq!(
        report.queued,
        (0..report.queued.len() as u64).collect::<Vec<_>>()
    );
    (ws, report)
}

/// A Close frame with 1000 and no reason.
fn normal() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }
}

#[track_caller]
fn assert_prefix(messages: &[Message], queued: &[u64]) {
    let indices: Vec<u64> = messages
        .iter()
        .map(|m| match m {
            Message::Binary(b) => {
                assert_eq!(b.len(), CHUNK);
                u64::from_be_bytes(b[..8].try_into().unwrap())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(indices, queued);
}

fn overflow_closes_with(code: CloseCode) {
    let (server, sends) = flood_server(OverflowPolicy::Close(code));
    let (mut ws, report) = flood(&server, &sends);
    // The first refused send closed the session; later ones see it closed.
    assert_eq!(report.full, 1, "{report:?}");
    assert_eq!(report.closed, FLOOD - report.queued.len() - 1, "{report:?}");
    assert!(!report.open_after);
    // Reading now: what was queued, then the Close, then the TCP close.
    let ending = block_on_timeout(CLOSE_WITHIN, read_to_end(&mut ws));
    assert_prefix(&ending.messages, &report.queued);
    ending.assert_closed_with(u16::from(code));
    let frame = ending.close.unwrap().unwrap();
    assert!(!frame.reason.is_empty());
}

#[test]
fn outbound_queue_overflow_closes_with_1008() {
    overflow_closes_with(CloseCode::Policy);
}

#[test]
fn outbound_queue_overflow_closes_with_1013() {
    overflow_closes_with(CloseCode::Again);
}

#[test]
fn outbound_queue_overflow_rejects_and_the_session_stays_open() {
    let (server, sends) = flood_server(OverflowPolicy::Reject);
    let (mut ws, report) = flood(&server, &sends);
    assert_eq!(report.full, FLOOD - report.queued.len(), "{report:?}");
    assert_eq!(report.closed, 0, "{report:?}");
    assert!(report.open_after);
    block_on_timeout(CLOSE_WITHIN, async {
        use futures_util::StreamExt;
        // Sent before reading: handled once the queue has drained.
        ws.send(Message::text("still there?")).await.unwrap();
        let mut messages = Vec::new();
        for _ in 0..report.queued.len() {
            messages.push(ws.next().await.unwrap().unwrap());
        }
        assert_prefix(&messages, &report.queued);
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still there?")
        );
        ws.close(Some(normal())).await.unwrap();
        let ending = read_to_end(&mut ws).await;
        ending.assert_closed_with(1000);
        assert!(ending.messages.is_empty(), "{ending:?}");
    });
}

// ---------------------------------------------------------------------------
// Sessions per vhost and per address.

/// With `limits` allowing two sessions, a third handshake is answered
/// `status`; once one of the two has closed, a new one succeeds.
fn third_session_is_refused(limits: Limits, status: u16, keyword: &str) {
    let server = Server::start(echo_config("v", limits));
    let addr = server.addr();
    let (mut first, second) =
        run(async move { (connect(addr, "/echo").await, connect(addr, "/echo").await) });
    assert_refused(&server, &upgrade_request("/echo", ""), status, keyword);
    let counters = server.handle.stats().unwrap();
    assert_eq!((counters.sessions_open, counters.rejected_total), (2, 1));

    run(async move {
        first.close(Some(normal())).await.unwrap();
        read_to_end(&mut first).await.assert_closed_with(1000);
    });
    // The server frees the place just after it has closed TCP; only the
    // second client's connection is left once it has.
    wait_until(CLOSE_WITHIN, "first session gone", || {
        server.handle.stats().unwrap().connections == 1
    });
    run(async move {
        use futures_util::StreamExt;
        let mut third = connect(addr, "/echo").await;
        third.send(Message::text("third")).await.unwrap();
        assert_eq!(third.next().await.unwrap().unwrap(), Message::text("third"));
        drop(second);
    });
}

#[test]
fn sessions_over_max_sessions_are_503() {
    third_session_is_refused(Limits::default().max_sessions(2), 503, "too many sessions");
}

#[test]
fn sessions_over_max_sessions_per_ip_are_429() {
    // Every loopback client comes from 127.0.0.1.
    third_session_is_refused(
        Limits::default().max_sessions_per_ip(2),
        429,
        "this address",
    );
}

// ---------------------------------------------------------------------------
// Time: the idle timeout.

#[test]
fn silent_peer_gets_1001_after_the_idle_timeout_then_tcp_closes() {
    let (ping, idle, close) = (
        Duration::from_millis(100),
        Duration::from_millis(400),
        Duration::from_millis(300),
    );
    let server = Server::start(echo_config(
        "v",
        Limits::default()
            .ping_interval(ping)
            .idle_timeout(idle)
            .close_timeout(close),
    ));
    // Timed from before the handshake: the server's clock starts later.
    let started = Instant::now();
    let mut s = raw_ws(server.addr(), "/echo");
    // Never answer anything: not the pings, not the Close.
    let (bytes, end) = read_until_closed(&mut s, CLOSE_WITHIN);
    let elapsed = started.elapsed();
    assert_eq!(end, TcpEnd::Eof);
    let frames = server_frames(&bytes);
    let (close_frame, pings) = frames.split_last().unwrap();
    assert!(
        !pings.is_empty() && pings.iter().all(|f| f.first == 0x89),
        "{frames:?}"
    );
    assert_eq!(close_frame.close_code(), Some(1001));
    assert!(
        close_frame.close_reason().contains("idle"),
        "{close_frame:?}"
    );
    // The Close goes at the idle timeout, TCP closes a close timeout later.
    assert!(elapsed >= idle + close, "closed after {elapsed:?}");
    assert!(
        elapsed < idle + close + Duration::from_secs(2),
        "closed after {elapsed:?}"
    );
}
