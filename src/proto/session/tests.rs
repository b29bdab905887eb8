//! The session state machine alone, on a virtual clock: every timer is
//! asserted in test-time milliseconds, and nothing sleeps.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::*;
use crate::testing::Clock;

const PING: Duration = Duration::from_millis(30_000);
const IDLE: Duration = Duration::from_millis(60_000);
const CLOSE: Duration = Duration::from_millis(5_000);

/// A config whose epoch is the clock's start (a real config is made before
/// its sessions start).
fn config(clock: &Clock) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        ping_interval: PING,
        idle_timeout: IDLE,
        close_timeout: CLOSE,
        limits: DecodeLimits {
            max_frame_size: 1 << 16,
            max_message_size: 1 << 16,
        },
        epoch: clock.now(),
    })
}

fn session(clock: &Clock) -> Session {
    Session::new(config(clock), None, &[], clock.now())
}

fn with_xor(clock: &Clock) -> Session {
    Session::new(config(clock), Some(Box::new(Xor)), &[], clock.now())
}

/// A masked client frame with the given first byte (FIN, RSV and opcode).
fn frame_with(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    assert!(payload.len() < 126);
    let mut f = vec![b0, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn client(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(0x80 | opcode, payload)
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// Everything the session has to write, as one buffer, marked written.
fn drain(s: &mut Session) -> Vec<u8> {
    let out: Vec<u8> = s
        .transmit()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    s.advance(out.len());
    out
}

#[test]
fn a_silent_peer_is_pinged_after_the_interval_and_not_before() {
    let mut clock = Clock::start();
    let mut s = session(&clock);
    assert_eq!(s.poll_timeout(), Some(clock.now() + PING));
    let early = clock.advance(PING - Duration::from_millis(1));
    assert_eq!(s.handle_timeout(early), Expired::Nothing);
    assert!(drain(&mut s).is_empty());
    let due = clock.advance(Duration::from_millis(1));
    assert_eq!(s.handle_timeout(due), Expired::Pinged);
    assert_eq!(drain(&mut s), [0x89, 0x00]);
    // The idle timeout counts from the last byte received, not the ping.
    assert_eq!(s.poll_timeout(), Some(due - PING + IDLE));
}

#[test]
fn the_buffers_exist_only_while_messages_move() {
    let mut clock = Clock::start();
    let mut s = session(&clock);
    assert!(!s.holds_buffers(), "nothing received yet");
    s.receive(&client(0x1, b"hi"), clock.now());
    assert!(matches!(s.poll_message(clock.now()), Some(Message::Text(t)) if t == "hi"));
    s.send(&Message::text("hi"));
    assert_eq!(drain(&mut s), [0x81, 0x02, b'h', b'i']);
    s.compact();
    assert!(s.holds_buffers(), "kept while messages move");
    // The driver takes the traffic after every poll; until then it is kept.
    assert_eq!(s.take_tally().messages_in, 1);

    // A ping interval of silence: the ping goes out, then the buffers.
    let due = clock.advance(PING);
    assert_eq!(s.handle_timeout(due), Expired::Pinged);
    s.compact();
    assert!(s.holds_buffers(), "the ping is not out yet");
    assert_eq!(drain(&mut s), [0x89, 0x00]);
    s.compact();
    assert!(!s.holds_buffers());

    // The pong brings them back only until it is decoded.
    s.receive(&client(0xA, b""), clock.now());
    assert!(s.poll_message(clock.now()).is_none());
    s.release_read_buffer();
    s.compact();
    assert!(!s.holds_buffers());

    // Half a frame keeps them, and its message keeps them for good.
    let frame = client(0x2, b"abc");
    s.receive(&frame[..3], clock.now());
    assert!(s.poll_message(clock.now()).is_none());
    s.compact();
    assert!(s.holds_buffers(), "an unfinished frame is kept");
    s.receive(&frame[3..], clock.now());
    assert!(matches!(s.poll_message(clock.now()), Some(Message::Binary(b)) if b == b"abc"[..]));
    s.release_read_buffer();
    s.compact();
    assert!(s.holds_buffers(), "a message ends the quiet");
    assert_eq!(s.poll_timeout(), Some(clock.now() + PING));
}

#[test]
fn traffic_moves_the_ping_later() {
    let mut clock = Clock::start();
    let mut s = session(&clock);
    let t = clock.advance(Duration::from_millis(20_000));
    s.receive(&client(0x1, b"hi"), t);
    assert_eq!(s.poll_message(t), Some(Message::text("hi")));
    assert_eq!(s.poll_timeout(), Some(t + PING));
    assert_eq!(
        s.handle_timeout(clock.advance(PING - Duration::from_millis(5))),
        Expired::Nothing
    );
}

#[test]
fn a_peer_silent_past_the_idle_timeout_is_reported_idle_then_given_the_close_timeout() {
    let mut clock = Clock::start();
    let start = clock.now();
    let mut s = session(&clock);
    assert_eq!(s.handle_timeout(clock.advance(PING)), Expired::Pinged);
    drain(&mut s);
    let idle = clock.advance(IDLE - PING);
    assert_eq!(idle, start + IDLE);
    assert_eq!(s.handle_timeout(idle), Expired::Idle);
    // The application side closes (1001) through its queue; meanwhile the
    // close deadline runs from the moment the peer was found idle.
    assert_eq!(s.poll_timeout(), Some(idle + CLOSE));
    let later = clock.advance(Duration::from_millis(1_000));
    s.close(close_frame(CloseCode::Away, "idle timeout"), later);
    let out = drain(&mut s);
    assert_eq!(&out[..4], &[0x88, 14, 0x03, 0xe9]);
    assert_eq!(s.poll_timeout(), Some(idle + CLOSE));
    assert_eq!(s.handle_timeout(clock.advance(CLOSE)), Expired::Ended);
    let r = s.poll_end(true).expect("ended");
    assert_eq!(r.code, CloseCode::Away);
    assert!(!r.clean);
}

#[test]
fn our_close_unanswered_ends_unclean_at_the_close_timeout() {
    let mut clock = Clock::start();
    let mut s = session(&clock);
    let t = clock.advance(Duration::from_millis(10));
    s.close(close_frame(CloseCode::Normal, "bye"), t);
    assert_eq!(drain(&mut s), [0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
    assert!(!s.takes_messages());
    assert!(s.is_reading(), "reads on, for the peer's answer");
    assert_eq!(s.poll_timeout(), Some(t + CLOSE));
    assert_eq!(
        s.handle_timeout(t + CLOSE - Duration::from_millis(1)),
        Expired::Nothing
    );
    assert_eq!(s.poll_end(true), None);
    assert_eq!(s.handle_timeout(t + CLOSE), Expired::Ended);
    let r = s.poll_end(true).unwrap();
    assert_eq!(
        (r.code, r.closed_by, r.clean),
        (CloseCode::Normal, crate::ClosedBy::Server, false)
    );
}

#[test]
fn our_close_answered_ends_clean_and_drops_late_messages() {
    let mut clock = Clock::start();
    let mut s = session(&clock);
    let t = clock.now();
    s.close(close_frame(CloseCode::Normal, ""), t);
    drain(&mut s);
    let t = clock.advance(Duration::from_millis(3));
    let mut input = client(0x1, b"late");
    input.extend(client(0x9, b"no pong now"));
    input.extend(client(0x8, &close_payload(1000)));
    s.receive(&input, t);
    assert_eq!(
        s.poll_message(t),
        None,
        "nothing after our Close reaches the app"
    );
    assert!(drain(&mut s).is_empty(), "no pong after our Close");
    let r = s.poll_end(false).expect("done at the peer's answer");
    assert!(r.clean);
    assert_eq!(r.closed_by, crate::ClosedBy::Server);
}

#[test]
fn the_peers_close_is_answered_after_the_answers_to_what_came_before_it() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = session(&clock);
    let mut input = client(0x1, b"one");
    input.extend(client(0x1, b"two"));
    input.extend(client(0x8, &close_payload(1001)));
    s.receive(&input, t);
    // The application answers each message as it gets it.
    while let Some(m) = s.poll_message(t) {
        let Message::Text(text) = m else { panic!() };
        s.send(&Message::text(text.to_uppercase()));
    }
    assert!(!s.is_open() && !s.is_reading());
    // The last moment: what the callbacks queued still goes out first.
    assert!(s.takes_messages());
    s.send(&Message::text("queued earlier"));
    let out = drain(&mut s);
    let mut want = vec![0x81, 3];
    want.extend_from_slice(b"ONE");
    want.extend_from_slice(&[0x81, 3]);
    want.extend_from_slice(b"TWO");
    want.extend_from_slice(&[0x81, 14]);
    want.extend_from_slice(b"queued earlier");
    want.extend_from_slice(&[0x88, 2, 0x03, 0xe9]);
    assert_eq!(out, want);
    assert!(!s.takes_messages(), "nothing after our answer");
    s.send(&Message::text("too late"));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_end(false), None, "not before the bytes are flushed");
    let r = s.poll_end(true).unwrap();
    assert_eq!(r.code, CloseCode::Away);
    assert_eq!(r.closed_by, crate::ClosedBy::Client);
    assert!(r.clean);
}

#[test]
fn a_peer_that_closes_and_never_reads_our_answer_is_given_up_at_the_deadline() {
    let mut clock = Clock::start();
    let mut s = session(&clock);
    let t = clock.now();
    s.receive(&client(0x8, &[]), t);
    assert_eq!(s.poll_message(t), None);
    let _ = s.transmit();
    assert_eq!(s.poll_timeout(), Some(t + CLOSE));
    assert_eq!(s.handle_timeout(clock.advance(CLOSE)), Expired::Ended);
    let r = s.poll_end(false).unwrap();
    assert_eq!(r.code, CloseCode::Status, "no code: 1005");
    assert!(!r.clean);
}

#[test]
fn a_protocol_error_fails_with_1002_after_the_answers_already_due() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = session(&clock);
    let mut input = client(0x1, b"ok");
    input.extend(frame_with(0x80 | 0x40 | 0x1, b"rsv1 without an extension"));
    s.receive(&input, t);
    let m = s.poll_message(t).unwrap();
    s.send(&m);
    assert_eq!(s.poll_message(t), None);
    assert!(!s.is_reading());
    let out = drain(&mut s);
    assert_eq!(&out[..4], &[0x81, 2, b'o', b'k']);
    assert_eq!(&out[4..8], &[0x88, 19, 0x03, 0xea]);
    assert_eq!(&out[8..], b"reserved bits set");
    let r = s.poll_end(true).unwrap();
    assert_eq!((r.code, r.clean), (CloseCode::Protocol, false));
}

#[test]
fn every_ping_is_answered_in_order_while_open() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = session(&clock);
    let mut input = client(0x9, b"a");
    input.extend(client(0x9, b"bc"));
    s.receive(&input, t);
    assert_eq!(s.poll_message(t), None);
    assert_eq!(drain(&mut s), [0x8a, 1, b'a', 0x8a, 2, b'b', b'c']);
}

#[test]
fn queued_messages_go_out_before_our_close_and_nothing_after_it() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = session(&clock);
    s.send(&Message::text("a"));
    s.send(&Message::binary(vec![7u8; 2000]));
    s.close(close_frame(CloseCode::Normal, ""), t);
    s.send(&Message::text("after"));
    let out = drain(&mut s);
    assert_eq!(&out[..3], &[0x81, 1, b'a']);
    assert_eq!(&out[3..7], &[0x82, 126, 0x07, 0xd0]);
    assert!(
        out[7..2007].iter().all(|&b| b == 7),
        "the large payload is whole"
    );
    assert_eq!(&out[2007..], &[0x88, 2, 0x03, 0xe8]);
}

#[test]
fn eof_while_open_is_abnormal_and_partial_writes_are_kept_in_order() {
    let clock = Clock::start();
    let mut s = session(&clock);
    s.send(&Message::text("hello"));
    let first: Vec<u8> = s
        .transmit()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    s.advance(3);
    assert_eq!(s.pending(), first.len() - 3);
    let rest: Vec<u8> = s
        .transmit()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    assert_eq!(rest, &first[3..]);
    s.on_eof(false);
    let r = s.poll_end(false).unwrap();
    assert_eq!((r.code, r.clean), (CloseCode::Abnormal, false));
}

#[test]
fn a_requested_close_that_cannot_leave_is_given_up_at_its_deadline() {
    let mut clock = Clock::start();
    let mut s = session(&clock);
    let t = clock.advance(Duration::from_millis(100));
    s.close_requested(t);
    assert_eq!(s.poll_timeout(), Some(t + CLOSE));
    assert_eq!(s.handle_timeout(clock.advance(CLOSE)), Expired::Ended);
    let r = s.poll_end(false).unwrap();
    assert_eq!(r.code, CloseCode::Abnormal);
}

/// An extension that XORs payloads with 0x55 and marks them with RSV1.
struct Xor;

impl Extension for Xor {
    fn rsv(&self) -> u8 {
        0x40
    }

    fn decode(&mut self, _rsv: u8, payload: Bytes, max: usize) -> Result<Bytes, ExtensionError> {
        if payload.len() > max {
            return Err(ExtensionError::TooBig);
        }
        if payload.first() == Some(&(b'!' ^ 0x55)) {
            return Err(ExtensionError::Invalid("bad xor stream"));
        }
        Ok(payload.iter().map(|b| b ^ 0x55).collect())
    }

    fn encode(&mut self, payload: &Bytes) -> Option<Bytes> {
        Some(payload.iter().map(|b| b ^ 0x55).collect())
    }
}

fn xor(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|b| b ^ 0x55).collect()
}

#[test]
fn an_extension_transforms_marked_messages_both_ways() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = with_xor(&clock);
    let mut input = frame_with(0x80 | 0x40 | 0x1, &xor(b"secret"));
    input.extend(client(0x1, b"plain"));
    s.receive(&input, t);
    assert_eq!(s.poll_message(t), Some(Message::text("secret")));
    assert_eq!(s.poll_message(t), Some(Message::text("plain")));
    s.send(&Message::text("hi"));
    let out = drain(&mut s);
    assert_eq!(out[0], 0x80 | 0x40 | 0x1, "RSV1 on the transformed frame");
    assert_eq!(&out[2..], xor(b"hi").as_slice());
    // Pongs are never transformed.
    s.receive(&client(0x9, b"p"), t);
    assert_eq!(s.poll_message(t), None);
    assert_eq!(drain(&mut s), [0x8a, 1, b'p']);
}

#[test]
fn an_extension_bit_on_a_control_frame_or_a_bad_payload_fails_the_session() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = with_xor(&clock);
    s.receive(&frame_with(0x80 | 0x40 | 0x9, b"x"), t);
    assert_eq!(s.poll_message(t), None);
    let out = drain(&mut s);
    assert_eq!(&out[2..4], &[0x03, 0xea], "1002");

    let mut s = with_xor(&clock);
    s.receive(&frame_with(0x80 | 0x40 | 0x1, &xor(b"!nope")), t);
    assert_eq!(s.poll_message(t), None);
    let out = drain(&mut s);
    assert_eq!(&out[2..4], &[0x03, 0xef], "1007");
    assert_eq!(&out[4..], b"bad xor stream");

    // What the extension restores is checked as text.
    let mut s = with_xor(&clock);
    s.receive(&frame_with(0x80 | 0x40 | 0x1, &xor(&[0xff, 0xfe])), t);
    assert_eq!(s.poll_message(t), None);
    assert_eq!(&drain(&mut s)[2..4], &[0x03, 0xef], "1007");
}

#[test]
fn the_tally_counts_data_messages_both_ways() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = session(&clock);
    s.receive(&client(0x2, b"abc"), t);
    let m = s.poll_message(t).unwrap();
    s.send(&m);
    s.send(&Message::text("xy"));
    let tally = s.take_tally();
    assert_eq!(
        tally,
        Tally {
            messages_in: 1,
            bytes_in: 3,
            messages_out: 2,
            bytes_out: 5,
            extension: ExtensionTally::default(),
        }
    );
    assert_eq!(s.take_tally(), Tally::default());
}

/// A session with permessage-deflate agreed as `response` says, and a
/// client-side compressor/decompressor pair for it.
fn with_deflate(clock: &Clock, mode: crate::proto::deflate::CompressionMode) -> Session {
    use crate::proto::deflate::{Compression, PermessageDeflate};
    use crate::proto::extension::ExtensionNegotiator;
    let n = PermessageDeflate::new(Compression::builder(mode).threshold(0).build().unwrap());
    let peer = "127.0.0.1:1".parse().unwrap();
    let req = crate::proto::http::Request::synthetic(
        "GET",
        "/",
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
        peer,
    );
    let offers = crate::proto::extension::offers(&req);
    let (ext, _) = n.accept(&offers).unwrap();
    Session::new(config(clock), Some(ext), &[], clock.now())
}

/// A masked client frame of any length.
fn long_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn deflated(data: &[u8]) -> Vec<u8> {
    let mut c = crate::proto::deflate::testing::compressor(15);
    c(data)
}

#[test]
fn a_compressed_message_is_inflated_and_an_answer_compressed() {
    use crate::proto::deflate::CompressionMode;
    let clock = Clock::start();
    let t = clock.now();
    for mode in [CompressionMode::Shared, CompressionMode::Dedicated] {
        let mut s = with_deflate(&clock, mode);
        let text = "{\"hello\":\"world\",\"hello2\":\"world\"}".repeat(20);
        s.receive(
            &long_frame(0x80 | 0x40 | 0x1, &deflated(text.as_bytes())),
            t,
        );
        assert_eq!(
            s.poll_message(t),
            Some(Message::text(text.clone())),
            "{mode:?}"
        );
        s.send(&Message::text(text.clone()));
        let out = drain(&mut s);
        assert_eq!(out[0], 0x80 | 0x40 | 0x1, "RSV1 on the compressed frame");
        let n = usize::from(out[1]);
        assert!(n < 126, "{text} compresses to under 126 bytes");
        let plain = crate::proto::deflate::testing::inflate(&out[2..2 + n]);
        assert_eq!(plain, text.as_bytes());
        let tally = s.take_tally();
        assert_eq!(tally.extension.plain_in as usize, text.len());
        assert_eq!(tally.extension.plain_out as usize, text.len());
        assert_eq!(tally.extension.wire_out as usize, n);
        // Pongs stay plain.
        s.receive(&client(0x9, b"p"), t);
        assert_eq!(s.poll_message(t), None);
        assert_eq!(drain(&mut s), [0x8a, 1, b'p']);
    }
}

#[test]
fn a_zip_bomb_costs_at_most_the_limit_and_closes_1009() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = with_deflate(&clock, crate::proto::deflate::CompressionMode::Shared);
    // 64 MiB of zeros deflate to about 64 KiB; the limit is 64 KiB.
    let bomb = deflated(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 16, "{}", bomb.len());
    s.receive(&long_frame(0x80 | 0x40 | 0x2, &bomb), t);
    assert_eq!(s.poll_message(t), None);
    let out = drain(&mut s);
    assert_eq!(out[0], 0x88);
    assert_eq!(&out[2..4], &[0x03, 0xf1], "1009");
}

#[test]
fn a_corrupt_stream_or_bad_text_closes_1007_with_a_reason() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = with_deflate(&clock, crate::proto::deflate::CompressionMode::Dedicated);
    // BTYPE 11 is reserved.
    s.receive(&frame_with(0x80 | 0x40 | 0x1, &[0xff, 0xff, 0xff]), t);
    assert_eq!(s.poll_message(t), None);
    let out = drain(&mut s);
    assert_eq!(&out[2..4], &[0x03, 0xef], "1007");
    assert_eq!(&out[4..], b"invalid block type");

    let mut s = with_deflate(&clock, crate::proto::deflate::CompressionMode::Shared);
    s.receive(&frame_with(0x80 | 0x40 | 0x1, &deflated(&[0xff, 0xfe])), t);
    assert_eq!(s.poll_message(t), None);
    assert_eq!(&drain(&mut s)[2..4], &[0x03, 0xef], "1007");
}

#[test]
fn rsv1_on_a_continuation_or_control_frame_is_a_protocol_error() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = with_deflate(&clock, crate::proto::deflate::CompressionMode::Shared);
    let mut input = frame_with(0x40 | 0x1, &deflated(b"ab"));
    input.extend(frame_with(0x80 | 0x40, b""));
    s.receive(&input, t);
    assert_eq!(s.poll_message(t), None);
    assert_eq!(&drain(&mut s)[2..4], &[0x03, 0xea], "1002");

    let mut s = with_deflate(&clock, crate::proto::deflate::CompressionMode::Shared);
    s.receive(&frame_with(0x80 | 0x40 | 0xA, b""), t);
    assert_eq!(s.poll_message(t), None);
    assert_eq!(&drain(&mut s)[2..4], &[0x03, 0xea], "1002");
}

#[test]
fn a_fragmented_compressed_message_is_joined_then_inflated() {
    let clock = Clock::start();
    let t = clock.now();
    let mut s = with_deflate(&clock, crate::proto::deflate::CompressionMode::Dedicated);
    let z = deflated(b"fragmented and compressed, fragmented and compressed");
    let (a, b) = z.split_at(z.len() / 2);
    let mut input = frame_with(0x40 | 0x1, a);
    input.extend(client(0x9, b"p"));
    input.extend(frame_with(0x80, b));
    s.receive(&input, t);
    assert_eq!(
        s.poll_message(t),
        Some(Message::text(
            "fragmented and compressed, fragmented and compressed"
        ))
    );
}
