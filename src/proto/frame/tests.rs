//! The frame engine's tests: decoding (every RFC 6455 §5 rule, limits,
//! fail-fast UTF-8, arbitrary splits) and encoding (round trips).

use bytes::BytesMut;
use tungstenite::Message;

use super::decode::unmask;
use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 1 << 20,
    max_message_size: 1 << 20,
};

/// A masked client frame whose first byte is `b0` (FIN, RSV, opcode).
fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let (head, n) = header(0, false, payload.len());
    let mut out = head[..n].to_vec();
    out[0] = b0;
    out[1] |= 0x80;
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A masked client frame.
fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(if fin { 0x80 } else { 0 } | op, payload)
}

/// The header of a masked client frame announcing `len` in the 64-bit
/// form, with its mask and without payload.
fn announce(b0: u8, len: u64) -> Vec<u8> {
    let mut out = vec![b0, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MASK);
    out
}

fn close_bytes(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// Feeds `chunks` one after another into one read buffer, draining events
/// after each; stops at the first failure.
fn run<'a>(
    decoder: &mut Decoder,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Event>, Option<Fail>) {
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    for chunk in chunks {
        input.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(fail) => return (events, Some(fail)),
            }
        }
    }
    (events, None)
}

fn whole_with(limits: DecodeLimits, bytes: &[u8]) -> (Vec<Event>, Option<Fail>) {
    run(&mut Decoder::new(limits), [bytes])
}

fn whole(bytes: &[u8]) -> (Vec<Event>, Option<Fail>) {
    whole_with(LIMITS, bytes)
}

fn bytewise(bytes: &[u8]) -> (Vec<Event>, Option<Fail>) {
    run(&mut Decoder::new(LIMITS), bytes.chunks(1))
}

/// The failure that decoding `bytes` whole ends with.
fn fail_of(bytes: &[u8]) -> Fail {
    whole(bytes).1.expect("decoding should fail")
}

fn text(s: &str) -> Event {
    Event::Text(Utf8Bytes::from(s))
}

fn binary(b: &[u8]) -> Event {
    Event::Binary(Bytes::copy_from_slice(b))
}

/// A deterministic xorshift64 generator for pseudo-random payloads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn text(&mut self, chars: usize) -> String {
        const ALPHABET: [char; 6] = ['a', 'Z', 'é', 'ж', '€', '𝄞'];
        (0..chars)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }
}

/// Turns a server frame from `encode` into the frame a client would send:
/// mask bit set, masking key inserted, payload masked.
fn as_client(server_frame: &[u8]) -> Vec<u8> {
    let head_len = match server_frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = server_frame[..head_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&MASK);
    let payload = &server_frame[head_len..];
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    assert!(encode(&mut out, message));
    out.to_vec()
}

// ---- Decoding valid streams ----

#[test]
fn decodes_a_single_text_frame() {
    assert_eq!(
        whole(&frame(true, opcode::TEXT, b"hello")),
        (vec![text("hello")], None)
    );
}

#[test]
fn decodes_a_single_binary_frame() {
    assert_eq!(
        whole(&frame(true, opcode::BINARY, &[0, 1, 0xFF])),
        (vec![binary(&[0, 1, 0xFF])], None)
    );
}

#[test]
fn empty_messages_are_valid() {
    let stream = cat(&[
        frame(true, opcode::TEXT, b""),
        frame(true, opcode::BINARY, b""),
        frame(false, opcode::TEXT, b""),
        frame(true, opcode::CONTINUATION, b""),
    ]);
    let expected = || vec![text(""), binary(b""), text("")];
    assert_eq!(whole(&stream), (expected(), None));
    assert_eq!(bytewise(&stream), (expected(), None));
}

#[test]
fn decodes_ping_and_pong_with_their_payloads() {
    let stream = cat(&[
        frame(true, opcode::PING, b"are you there"),
        frame(true, opcode::PONG, b"yes"),
        frame(true, opcode::PING, b""),
    ]);
    assert_eq!(
        whole(&stream),
        (
            vec![
                Event::Ping(Bytes::from_static(b"are you there")),
                Event::Pong(Bytes::from_static(b"yes")),
                Event::Ping(Bytes::new()),
            ],
            None
        )
    );
}

#[test]
fn a_control_frame_of_125_bytes_is_accepted() {
    let payload = [7u8; 125];
    assert_eq!(
        whole(&frame(true, opcode::PING, &payload)),
        (vec![Event::Ping(Bytes::copy_from_slice(&payload))], None)
    );
}

#[test]
fn an_empty_close_is_close_none() {
    assert_eq!(
        whole(&frame(true, opcode::CLOSE, b"")),
        (vec![Event::Close(None)], None)
    );
}

#[test]
fn a_close_carries_its_code_and_reason() {
    let (events, fail) = whole(&frame(true, opcode::CLOSE, &close_bytes(1001, b"bye")));
    assert_eq!(fail, None);
    assert_eq!(
        events,
        vec![Event::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: Utf8Bytes::from_static("bye"),
        }))]
    );
}

#[test]
fn decodes_16_and_64_bit_lengths() {
    let mut rng = Rng(7);
    for len in [126, 1000, 65535, 65536, 100_000] {
        let payload = rng.bytes(len);
        assert_eq!(
            whole(&frame(true, opcode::BINARY, &payload)),
            (vec![binary(&payload)], None),
            "len {len}"
        );
    }
}

#[test]
fn a_non_minimal_length_encoding_is_accepted() {
    // §5.2 asks senders for the minimal form; receivers need not insist.
    let mut stream = announce(0x82, 3);
    stream.extend([1, 2, 3].iter().enumerate().map(|(i, b)| b ^ MASK[i]));
    assert_eq!(whole(&stream), (vec![binary(&[1, 2, 3])], None));
}

#[test]
fn reassembles_a_message_fragmented_in_three_with_pings_between() {
    let stream = cat(&[
        frame(false, opcode::TEXT, "Hello, ".as_bytes()),
        frame(true, opcode::PING, b"1"),
        frame(false, opcode::CONTINUATION, "wörld".as_bytes()),
        frame(true, opcode::PING, b"2"),
        frame(true, opcode::PONG, b"3"),
        frame(true, opcode::CONTINUATION, "!".as_bytes()),
    ]);
    let expected = || {
        vec![
            Event::Ping(Bytes::from_static(b"1")),
            Event::Ping(Bytes::from_static(b"2")),
            Event::Pong(Bytes::from_static(b"3")),
            text("Hello, wörld!"),
        ]
    };
    assert_eq!(whole(&stream), (expected(), None));
    assert_eq!(bytewise(&stream), (expected(), None));
}

#[test]
fn reassembles_a_fragmented_binary_message() {
    let stream = cat(&[
        frame(false, opcode::BINARY, &[1, 2]),
        frame(false, opcode::CONTINUATION, &[]),
        frame(true, opcode::CONTINUATION, &[3, 4, 5]),
    ]);
    assert_eq!(whole(&stream), (vec![binary(&[1, 2, 3, 4, 5])], None));
}

#[test]
fn a_close_between_fragments_ends_the_stream() {
    let stream = cat(&[
        frame(false, opcode::TEXT, b"half"),
        frame(true, opcode::CLOSE, &close_bytes(1000, b"")),
        frame(true, opcode::CONTINUATION, b" more"),
    ]);
    let mut decoder = Decoder::new(LIMITS);
    let (events, fail) = run(&mut decoder, [&stream[..]]);
    assert_eq!(fail, None);
    assert_eq!(
        events,
        vec![Event::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::default(),
        }))]
    );
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn each_call_returns_one_event_and_leaves_the_rest() {
    let first = frame(true, opcode::TEXT, b"one");
    let second = frame(true, opcode::BINARY, b"two");
    let mut input = BytesMut::from(&cat(&[first, second.clone()])[..]);
    let mut decoder = Decoder::new(LIMITS);
    assert_eq!(decoder.decode(&mut input), Ok(Some(text("one"))));
    assert_eq!(&input[..], &second[..]);
    assert_eq!(decoder.decode(&mut input), Ok(Some(binary(b"two"))));
    assert!(input.is_empty());
    assert_eq!(decoder.decode(&mut input), Ok(None));
}

#[test]
fn a_partial_header_is_left_in_the_input() {
    let full = frame(true, opcode::TEXT, &[b'x'; 300]);
    let mut decoder = Decoder::new(LIMITS);
    // 1 byte, then 3 (of the 4 before the mask), then 7 (of the 8 up to
    // the end of the mask): nothing is consumed.
    for n in [1, 3, 7] {
        let mut input = BytesMut::from(&full[..n]);
        assert_eq!(decoder.decode(&mut input), Ok(None), "{n} bytes");
        assert_eq!(input.len(), n, "{n} bytes");
    }
    let mut input = BytesMut::from(&full[..]);
    assert_eq!(decoder.decode(&mut input), Ok(Some(text(&"x".repeat(300)))));
}

#[test]
fn a_partial_payload_is_consumed_as_it_arrives() {
    let full = frame(true, opcode::BINARY, &[9; 100]);
    let mut decoder = Decoder::new(LIMITS);
    let mut input = BytesMut::from(&full[..2 + 4 + 30]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert!(input.is_empty());
    assert_eq!(decoder.buffered(), 30);
    input.extend_from_slice(&full[36..]);
    assert_eq!(decoder.decode(&mut input), Ok(Some(binary(&[9; 100]))));
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn byte_by_byte_and_random_chunks_yield_the_same_events_as_whole() {
    let mut rng = Rng(0x5eed);
    let long_text = rng.text(400);
    let streams = [
        frame(true, opcode::TEXT, b"hello"),
        frame(true, opcode::BINARY, &rng.bytes(70_000)),
        cat(&[
            frame(false, opcode::TEXT, &long_text.as_bytes()[..1]),
            frame(true, opcode::PING, b"p"),
            frame(false, opcode::CONTINUATION, &long_text.as_bytes()[1..301]),
            frame(true, opcode::CONTINUATION, &long_text.as_bytes()[301..]),
        ]),
        cat(&[
            frame(true, opcode::PONG, &[1; 125]),
            frame(true, opcode::TEXT, "€".as_bytes()),
            frame(false, opcode::BINARY, &rng.bytes(200)),
            frame(true, opcode::CONTINUATION, &rng.bytes(3)),
            frame(true, opcode::CLOSE, &close_bytes(4000, "fin ✓".as_bytes())),
        ]),
    ];
    for (i, stream) in streams.iter().enumerate() {
        let expected = whole(stream);
        assert_eq!(expected.1, None, "stream {i}");
        assert!(!expected.0.is_empty(), "stream {i}");
        assert_eq!(bytewise(stream), expected, "stream {i} byte by byte");
        for _ in 0..20 {
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(300));
                let (chunk, tail) = rest.split_at(n);
                chunks.push(chunk);
                rest = tail;
            }
            assert_eq!(
                run(&mut Decoder::new(LIMITS), chunks),
                expected,
                "stream {i} in chunks"
            );
        }
    }
}

#[test]
fn a_single_frame_message_in_the_buffer_is_not_copied() {
    let payload = [0xAB; 1000];
    let stream = frame(true, opcode::BINARY, &payload);
    let mut input = BytesMut::from(&stream[..]);
    let start = input.as_ptr() as usize;
    let Ok(Some(Event::Binary(data))) = Decoder::new(LIMITS).decode(&mut input) else {
        panic!("expected a binary message");
    };
    assert_eq!(&data[..], &payload[..]);
    // The payload follows a 4-byte header and the mask in the read buffer.
    assert_eq!(data.as_ptr() as usize, start + 4 + 4);
}

// ---- Header rules ----

#[test]
fn each_reserved_bit_is_a_protocol_error() {
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        assert_eq!(
            fail_of(&raw_frame(0x80 | rsv | opcode::TEXT, b"x")),
            Fail::protocol("reserved bits set"),
            "rsv {rsv:#x}"
        );
    }
}

#[test]
fn reserved_bits_fail_before_the_rest_of_the_header() {
    let mut input = BytesMut::from(&[0xC1, 0xFE][..]);
    assert_eq!(
        Decoder::new(LIMITS).decode(&mut input),
        Err(Fail::protocol("reserved bits set"))
    );
}

#[test]
fn unknown_opcodes_are_protocol_errors() {
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        assert_eq!(
            fail_of(&frame(true, op, b"")),
            Fail::protocol("unknown opcode"),
            "opcode {op:#x}"
        );
    }
}

#[test]
fn an_unmasked_client_frame_is_a_protocol_error() {
    assert_eq!(
        fail_of(&[0x81, 0x02, b'h', b'i']),
        Fail::protocol("unmasked client frame")
    );
}

#[test]
fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() {
    let unlimited = DecodeLimits {
        max_frame_size: usize::MAX,
        max_message_size: usize::MAX,
    };
    for len in [1 << 63, u64::MAX] {
        assert_eq!(
            whole_with(unlimited, &announce(0x82, len)).1,
            Some(Fail::protocol("invalid frame length")),
            "len {len:#x}"
        );
    }
}

#[test]
fn fragmented_control_frames_are_protocol_errors() {
    for op in [opcode::CLOSE, opcode::PING, opcode::PONG] {
        assert_eq!(
            fail_of(&frame(false, op, b"")),
            Fail::protocol("fragmented control frame"),
            "opcode {op:#x}"
        );
    }
}

#[test]
fn control_frames_over_125_bytes_are_protocol_errors() {
    for op in [opcode::CLOSE, opcode::PING, opcode::PONG] {
        assert_eq!(
            fail_of(&frame(true, op, &[0; 126])),
            Fail::protocol("control frame too big"),
            "opcode {op:#x}"
        );
        assert_eq!(
            fail_of(&announce(0x80 | op, 1)),
            Fail::protocol("control frame too big"),
            "opcode {op:#x}, 64-bit form"
        );
    }
}

#[test]
fn a_continuation_without_a_message_is_a_protocol_error() {
    assert_eq!(
        fail_of(&frame(true, opcode::CONTINUATION, b"x")),
        Fail::protocol("unexpected continuation frame")
    );
    // Also right after a complete message.
    let stream = cat(&[
        frame(true, opcode::TEXT, b"done"),
        frame(false, opcode::CONTINUATION, b"x"),
    ]);
    assert_eq!(
        whole(&stream),
        (
            vec![text("done")],
            Some(Fail::protocol("unexpected continuation frame"))
        )
    );
}

#[test]
fn a_new_data_frame_during_a_fragmented_message_is_a_protocol_error() {
    for first in [opcode::TEXT, opcode::BINARY] {
        for second in [opcode::TEXT, opcode::BINARY] {
            let stream = cat(&[frame(false, first, b"a"), frame(true, second, b"b")]);
            assert_eq!(
                whole(&stream),
                (vec![], Some(Fail::protocol("expected continuation frame"))),
                "{first} then {second}"
            );
        }
    }
}

// ---- Limits ----

#[test]
fn announcing_2_pow_62_bytes_costs_nothing() {
    let mut decoder = Decoder::new(LIMITS);
    // Only the 10 bytes up to the length: the limit fails before the mask.
    let mut input = BytesMut::from(&announce(0x82, 1 << 62)[..10]);
    assert_eq!(decoder.decode(&mut input), Err(Fail::size("frame too big")));
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.message.capacity(), 0);
}

#[test]
fn a_16_bit_length_over_the_limit_fails_before_the_mask() {
    let limits = DecodeLimits {
        max_frame_size: 1000,
        max_message_size: 1000,
    };
    let mut input = BytesMut::from(&[0x82, 0x80 | 126, 0x03, 0xE9][..]);
    assert_eq!(
        Decoder::new(limits).decode(&mut input),
        Err(Fail::size("frame too big"))
    );
}

#[test]
fn a_gib_announce_over_a_mib_limit_fails_before_any_payload() {
    let mut decoder = Decoder::new(LIMITS);
    let mut input = BytesMut::from(&announce(0x81, 1 << 30)[..]);
    assert_eq!(decoder.decode(&mut input), Err(Fail::size("frame too big")));
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn a_frame_at_exactly_the_frame_limit_passes() {
    let limits = DecodeLimits {
        max_frame_size: 1000,
        max_message_size: 5000,
    };
    assert_eq!(
        whole_with(limits, &frame(true, opcode::BINARY, &[1; 1000])),
        (vec![binary(&[1; 1000])], None)
    );
    assert_eq!(
        whole_with(limits, &frame(true, opcode::BINARY, &[1; 1001])).1,
        Some(Fail::size("frame too big"))
    );
}

#[test]
fn the_frame_limit_applies_to_control_frames() {
    let limits = DecodeLimits {
        max_frame_size: 10,
        max_message_size: 10,
    };
    assert_eq!(
        whole_with(limits, &frame(true, opcode::PING, &[0; 11])).1,
        Some(Fail::size("frame too big"))
    );
}

#[test]
fn a_message_at_exactly_the_message_limit_passes() {
    let limits = DecodeLimits {
        max_frame_size: 100,
        max_message_size: 250,
    };
    let at_limit = cat(&[
        frame(false, opcode::BINARY, &[1; 100]),
        frame(true, opcode::PING, &[0; 100]),
        frame(false, opcode::CONTINUATION, &[2; 100]),
        frame(true, opcode::CONTINUATION, &[3; 50]),
    ]);
    let (events, fail) = whole_with(limits, &at_limit);
    assert_eq!(fail, None);
    assert_eq!(events.len(), 2, "the ping and the message");
    assert!(matches!(&events[1], Event::Binary(b) if b.len() == 250));

    let over = cat(&[
        frame(false, opcode::BINARY, &[1; 100]),
        frame(false, opcode::CONTINUATION, &[2; 100]),
        frame(true, opcode::CONTINUATION, &[3; 51]),
    ]);
    assert_eq!(
        whole_with(limits, &over),
        (vec![], Some(Fail::size("message too big")))
    );
}

#[test]
fn the_message_limit_fails_at_the_header_of_the_offending_fragment() {
    let limits = DecodeLimits {
        max_frame_size: 100,
        max_message_size: 150,
    };
    let mut decoder = Decoder::new(limits);
    let first = frame(false, opcode::BINARY, &[1; 100]);
    let second = frame(true, opcode::CONTINUATION, &[2; 51]);
    let mut input = BytesMut::from(&first[..]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    // Just the second header's first two bytes announce 51 bytes.
    input.extend_from_slice(&second[..2]);
    assert_eq!(
        decoder.decode(&mut input),
        Err(Fail::size("message too big"))
    );
}

#[test]
fn only_bytes_that_arrived_are_reserved() {
    let mut decoder = Decoder::new(LIMITS);
    let mut input = BytesMut::from(&announce(0x82, 1 << 20)[..]);
    input.extend_from_slice(&[0; 100]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(decoder.buffered(), 100);
    assert!(decoder.message.capacity() < 4096, "{decoder:?}");
}

#[test]
fn a_partial_control_frame_stays_in_the_callers_buffer() {
    let mut decoder = Decoder::new(LIMITS);
    let ping = frame(true, opcode::PING, &[5; 50]);
    let mut input = BytesMut::from(&ping[..2 + 4 + 20]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(input.len(), 26, "nothing consumed until the frame is whole");
    input.extend_from_slice(&ping[26..]);
    assert_eq!(
        decoder.decode(&mut input),
        Ok(Some(Event::Ping(Bytes::from_static(&[5; 50]))))
    );
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn the_message_buffer_is_released_after_a_big_message() {
    let mut decoder = Decoder::new(LIMITS);
    let stream = cat(&[
        frame(false, opcode::BINARY, &vec![1; 100_000]),
        frame(true, opcode::CONTINUATION, &vec![2; 100_000]),
    ]);
    let (events, fail) = run(&mut decoder, [&stream[..]]);
    assert_eq!(fail, None);
    assert!(matches!(&events[..], [Event::Binary(b)] if b.len() == 200_000));
    assert_eq!(decoder.buffered(), 0);
    decoder.shrink();
    assert_eq!(decoder.message.capacity(), 0);
}

#[test]
fn shrink_keeps_a_partial_message() {
    let mut decoder = Decoder::new(LIMITS);
    let stream = cat(&[
        frame(false, opcode::TEXT, "grüß".as_bytes()),
        frame(true, opcode::CONTINUATION, b" dich"),
    ]);
    let split = stream.len() - 3;
    let mut input = BytesMut::from(&stream[..split]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    let held = decoder.buffered();
    decoder.shrink();
    assert_eq!(decoder.buffered(), held);
    assert_eq!(decoder.message.capacity(), decoder.message.len());
    input.extend_from_slice(&stream[split..]);
    assert_eq!(decoder.decode(&mut input), Ok(Some(text("grüß dich"))));
}

// ---- UTF-8 ----

#[test]
fn invalid_utf8_fails_fast_mid_frame() {
    // A text frame announcing 20 payload bytes, of which only 4 valid
    // bytes ("ab", "é") and then 0xFF are ever fed.
    let mut bytes = vec![0x81, 0x80 | 20];
    bytes.extend_from_slice(&MASK);
    bytes.extend(
        [b'a', b'b', 0xC3, 0xA9, 0xFF]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4]),
    );
    let mut decoder = Decoder::new(LIMITS);
    let mut input = BytesMut::from(&bytes[..]);
    assert_eq!(decoder.decode(&mut input), Err(INVALID_UTF8));
}

#[test]
fn invalid_utf8_fails_on_the_read_that_brings_it() {
    let payload = [b'o', b'k', 0xED, 0xA0, 0x80, b'z'];
    let stream = frame(true, opcode::TEXT, &payload);
    let mut decoder = Decoder::new(LIMITS);
    // Header, mask, "ok" and 0xED: a valid prefix so far.
    let mut input = BytesMut::from(&stream[..2 + 4 + 3]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    // 0xA0 after 0xED would encode a surrogate: invalid at once.
    input.extend_from_slice(&stream[9..10]);
    assert_eq!(decoder.decode(&mut input), Err(INVALID_UTF8));
}

#[test]
fn invalid_utf8_fails_fast_in_a_later_fragment() {
    let first = frame(false, opcode::TEXT, "κόσμε".as_bytes());
    let second = frame(true, opcode::CONTINUATION, b"ab\xF5cdefghijklmnop");
    let mut decoder = Decoder::new(LIMITS);
    let mut input = BytesMut::from(&first[..]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    input.extend_from_slice(&second[..2 + 4 + 3]);
    assert_eq!(decoder.decode(&mut input), Err(INVALID_UTF8));
}

#[test]
fn a_code_point_split_across_fragments_is_valid() {
    let euro = "€".as_bytes();
    let stream = cat(&[
        frame(false, opcode::TEXT, &euro[..1]),
        frame(true, opcode::PING, b""),
        frame(false, opcode::CONTINUATION, &euro[1..2]),
        frame(true, opcode::CONTINUATION, &euro[2..]),
    ]);
    let expected = || vec![Event::Ping(Bytes::new()), text("€")];
    assert_eq!(whole(&stream), (expected(), None));
    assert_eq!(bytewise(&stream), (expected(), None));
}

#[test]
fn a_code_point_cut_off_by_the_end_of_a_message_is_invalid() {
    let clef = "𝄞".as_bytes();
    // Single frame.
    assert_eq!(
        fail_of(&frame(true, opcode::TEXT, &clef[..3])),
        INVALID_UTF8
    );
    // Fragmented, ending with an empty final fragment.
    let stream = cat(&[
        frame(false, opcode::TEXT, &clef[..2]),
        frame(true, opcode::CONTINUATION, b""),
    ]);
    assert_eq!(whole(&stream), (vec![], Some(INVALID_UTF8)));
    assert_eq!(bytewise(&stream), (vec![], Some(INVALID_UTF8)));
}

#[test]
fn invalid_utf8_in_a_whole_single_frame_is_refused() {
    for bad in [&b"\xFF"[..], b"\xC0\xAF", b"\xED\xA0\x80", b"a\x80"] {
        assert_eq!(fail_of(&frame(true, opcode::TEXT, bad)), INVALID_UTF8);
        assert_eq!(
            bytewise(&frame(true, opcode::TEXT, bad)).1,
            Some(INVALID_UTF8)
        );
    }
}

#[test]
fn binary_messages_are_not_checked_for_utf8() {
    assert_eq!(
        whole(&frame(true, opcode::BINARY, b"\xFF\xFE")),
        (vec![binary(b"\xFF\xFE")], None)
    );
}

#[test]
fn arbitrary_streams_never_panic_and_stay_bounded() {
    let limits = DecodeLimits {
        max_frame_size: 300,
        max_message_size: 700,
    };
    // Mostly the first bytes of valid frames, sometimes of broken ones.
    let good = [0x81, 0x82, 0x01, 0x02, 0x00, 0x80, 0x89, 0x8A];
    let bad = [0x88, 0x09, 0x83, 0xC1, 0x8F];
    let mut rng = Rng(0xF00D);
    for _ in 0..3000 {
        let mut stream = Vec::new();
        for _ in 0..1 + rng.below(12) {
            let b0 = if rng.below(8) == 0 {
                bad[rng.below(bad.len())]
            } else {
                good[rng.below(good.len())]
            };
            let len = match rng.below(10) {
                0 => 126 + rng.below(400),
                1 => rng.below(5),
                _ => rng.below(130),
            };
            let payload = if rng.below(2) == 0 {
                rng.text(len / 2).into_bytes()
            } else {
                rng.bytes(len)
            };
            let mut f = raw_frame(b0, &payload);
            if rng.below(20) == 0 {
                let at = rng.below(f.len());
                f[at] = rng.next() as u8;
            }
            if rng.below(20) == 0 {
                f.truncate(rng.below(f.len()));
            }
            stream.extend(f);
        }
        if rng.below(10) == 0 {
            let len = rng.below(200);
            stream = rng.bytes(len);
        }
        let mut decoder = Decoder::new(limits);
        let mut input = BytesMut::new();
        let mut rest = &stream[..];
        'feed: while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
            rest = tail;
            input.extend_from_slice(chunk);
            loop {
                let before = input.len();
                let result = decoder.decode(&mut input);
                assert!(input.len() <= before);
                assert!(decoder.buffered() <= limits.max_message_size + 125);
                assert!(decoder.message.capacity() <= 2 * limits.max_message_size + 64);
                match result {
                    Ok(Some(Event::Text(t))) => assert!(t.len() <= limits.max_message_size),
                    Ok(Some(Event::Binary(b))) => assert!(b.len() <= limits.max_message_size),
                    Ok(Some(Event::Ping(_) | Event::Pong(_))) => {}
                    Ok(Some(Event::Extended { .. })) => panic!("no extension negotiated"),
                    Ok(None) => break,
                    Ok(Some(Event::Close(_))) | Err(_) => {
                        assert_eq!(decoder.buffered(), 0);
                        assert_eq!(decoder.decode(&mut input), Ok(None));
                        break 'feed;
                    }
                }
            }
        }
    }
}

// ---- Done after failure or close ----

#[test]
fn after_a_failure_nothing_more_is_consumed() {
    let mut decoder = Decoder::new(LIMITS);
    let mut input = BytesMut::from(&frame(true, 0x3, b"")[..]);
    assert!(decoder.decode(&mut input).is_err());
    let mut input = BytesMut::from(&frame(true, opcode::TEXT, b"late")[..]);
    let len = input.len();
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(input.len(), len);
}

#[test]
fn after_a_close_nothing_more_is_consumed() {
    let stream = cat(&[
        frame(true, opcode::CLOSE, b""),
        frame(true, opcode::TEXT, b"late"),
    ]);
    let mut decoder = Decoder::new(LIMITS);
    let mut input = BytesMut::from(&stream[..]);
    assert_eq!(decoder.decode(&mut input), Ok(Some(Event::Close(None))));
    let left = input.len();
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(input.len(), left);
}

#[test]
fn a_failure_releases_the_partial_message() {
    let stream = cat(&[
        frame(false, opcode::BINARY, &[0; 10_000]),
        frame(true, 0x7, b""),
    ]);
    let mut decoder = Decoder::new(LIMITS);
    let (_, fail) = run(&mut decoder, [&stream[..]]);
    assert_eq!(fail, Some(Fail::protocol("unknown opcode")));
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.message.capacity(), 0);
}

// ---- Close payloads ----

#[test]
fn close_payload_accepts_exactly_the_sendable_codes() {
    for code in 0..=u16::MAX {
        let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        let result = close_payload(&close_bytes(code, b""));
        if allowed {
            let close = result.expect("allowed code").expect("a close frame");
            assert_eq!(u16::from(close.code), code);
        } else {
            assert_eq!(result, Err(Fail::protocol("invalid close code")), "{code}");
        }
    }
}

#[test]
fn close_payload_refuses_the_reserved_and_unsendable_codes() {
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(
            close_payload(&close_bytes(code, b"x")),
            Err(Fail::protocol("invalid close code")),
            "{code}"
        );
    }
    for code in [
        1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        assert!(close_payload(&close_bytes(code, b"x")).is_ok(), "{code}");
    }
}

#[test]
fn close_payload_of_one_byte_is_a_protocol_error() {
    assert_eq!(
        close_payload(&[0x03]),
        Err(Fail::protocol("truncated close code"))
    );
    assert_eq!(
        fail_of(&frame(true, opcode::CLOSE, &[0x03])),
        Fail::protocol("truncated close code")
    );
}

#[test]
fn close_payload_over_125_bytes_is_a_protocol_error() {
    assert!(close_payload(&close_bytes(1000, &[b'a'; 123])).is_ok());
    assert_eq!(
        close_payload(&close_bytes(1000, &[b'a'; 124])),
        Err(Fail::protocol("control frame too big"))
    );
}

#[test]
fn close_reason_must_be_utf8() {
    assert_eq!(
        close_payload(&close_bytes(1000, b"\xFF")),
        Err(INVALID_UTF8)
    );
    assert_eq!(
        close_payload(&close_bytes(1000, &"é".as_bytes()[..1])),
        Err(INVALID_UTF8)
    );
    assert_eq!(
        fail_of(&frame(true, opcode::CLOSE, &close_bytes(1000, b"\xC3\x28"))),
        INVALID_UTF8
    );
}

#[test]
fn a_close_frame_with_an_invalid_code_fails_the_decoder() {
    assert_eq!(
        fail_of(&frame(true, opcode::CLOSE, &close_bytes(1005, b""))),
        Fail::protocol("invalid close code")
    );
}

#[test]
fn close_payload_round_trips_through_encode() {
    let mut rng = Rng(42);
    for code in [1000, 1003, 1007, 1014, 3000, 3999, 4000, 4999] {
        for chars in [0, 1, 10, 30] {
            let reason = rng.text(chars);
            let payload = close_bytes(code, reason.as_bytes());
            if payload.len() > MAX_CONTROL_PAYLOAD {
                continue;
            }
            let close = close_payload(&payload).expect("valid payload");
            let wire = encoded(&Message::Close(close));
            assert_eq!(&wire[2..], &payload[..], "{code} {reason:?}");
        }
    }
}

// ---- Encoder ----

#[test]
fn header_uses_the_shortest_length_form() {
    assert_eq!(
        header(opcode::BINARY, true, 0),
        ([0x82, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2)
    );
    assert_eq!(header(opcode::BINARY, true, 125).1, 2);
    assert_eq!(header(opcode::BINARY, true, 125).0[..2], [0x82, 125]);
    assert_eq!(
        header(opcode::BINARY, true, 126).0[..4],
        [0x82, 126, 0, 126]
    );
    assert_eq!(header(opcode::BINARY, true, 126).1, 4);
    assert_eq!(
        header(opcode::BINARY, true, 65535).0[..4],
        [0x82, 126, 0xFF, 0xFF]
    );
    assert_eq!(header(opcode::BINARY, true, 65535).1, 4);
    assert_eq!(
        header(opcode::BINARY, true, 65536),
        ([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0], 10)
    );
}

#[test]
fn header_sets_fin_and_opcode() {
    assert_eq!(header(opcode::TEXT, false, 3).0[0], 0x01);
    assert_eq!(header(opcode::CONTINUATION, true, 3).0[0], 0x80);
    assert_eq!(header(opcode::PONG, true, 3).0[0], 0x8A);
}

#[test]
fn encode_writes_header_and_payload_at_each_length_boundary() {
    for (len, head_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let wire = encoded(&Message::Binary(Bytes::from(vec![0xAA; len])));
        assert_eq!(wire.len(), head_len + len, "len {len}");
        assert_eq!(wire[0], 0x82);
        assert_eq!(wire[1] & 0x80, 0, "server frames are unmasked");
    }
}

#[test]
fn encode_uses_each_opcode() {
    let cases = [
        (Message::text("t"), 0x81),
        (Message::binary(vec![1]), 0x82),
        (Message::Ping(Bytes::new()), 0x89),
        (Message::Pong(Bytes::new()), 0x8A),
        (Message::Close(None), 0x88),
    ];
    for (message, b0) in cases {
        assert_eq!(encoded(&message)[0], b0, "{message:?}");
    }
    assert_eq!(encoded(&Message::Close(None)), [0x88, 0]);
}

#[test]
fn encode_appends_to_what_is_already_queued() {
    let mut out = BytesMut::from(&b"queued"[..]);
    assert!(encode(&mut out, &Message::text("a")));
    assert!(encode(&mut out, &Message::text("b")));
    assert_eq!(&out[..], b"queued\x81\x01a\x81\x01b");
}

#[test]
fn encode_refuses_raw_frames() {
    use tungstenite::protocol::frame::Frame as WsFrame;
    let mut out = BytesMut::new();
    assert!(!encode(&mut out, &Message::Frame(WsFrame::ping(vec![1]))));
    assert!(out.is_empty());
}

#[test]
fn encode_writes_a_close_code_big_endian_then_the_reason() {
    let close = CloseFrame {
        code: CloseCode::Library(4001),
        reason: Utf8Bytes::from_static("bye"),
    };
    assert_eq!(
        encoded(&Message::Close(Some(close))),
        [0x88, 5, 0x0F, 0xA1, b'b', b'y', b'e']
    );
}

#[test]
fn encode_truncates_a_long_close_reason_at_a_char_boundary() {
    let close = |reason: String| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: reason.into(),
        }))
    };
    // 123 ASCII bytes fit exactly.
    let wire = encoded(&close("a".repeat(123)));
    assert_eq!(wire[1], 125);
    // 100 two-byte chars: cut to 61 of them (122 bytes), not mid-char.
    let wire = encoded(&close("é".repeat(100)));
    assert_eq!(wire[1], 2 + 122);
    let parsed = close_payload(&wire[2..]).expect("valid").expect("some");
    assert_eq!(parsed.reason.as_str(), "é".repeat(61));
}

#[test]
fn encode_truncates_oversized_ping_and_pong_payloads() {
    let wire = encoded(&Message::Ping(Bytes::from(vec![1; 300])));
    assert_eq!(wire.len(), 2 + 125);
    assert_eq!(wire[1], 125);
    let wire = encoded(&Message::Pong(Bytes::from(vec![1; 126])));
    assert_eq!(wire.len(), 2 + 125);
}

#[test]
fn encoded_messages_decode_to_themselves_when_masked_like_a_client() {
    let mut rng = Rng(0xC0FFEE);
    let mut lengths = vec![0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70_001];
    lengths.extend((0..40).map(|_| rng.below(2000)));
    for len in lengths {
        let messages = [
            Message::Binary(Bytes::from(rng.bytes(len))),
            Message::Text(rng.text(len / 2).into()),
            Message::Ping(Bytes::from(rng.bytes(len.min(125)))),
            Message::Pong(Bytes::from(rng.bytes(len.min(125)))),
        ];
        for message in messages {
            let wire = as_client(&encoded(&message));
            let expected = vec![match message.clone() {
                Message::Text(t) => Event::Text(t),
                Message::Binary(b) => Event::Binary(b),
                Message::Ping(p) => Event::Ping(p),
                Message::Pong(p) => Event::Pong(p),
                other => unreachable!("{other:?}"),
            }];
            assert_eq!(whole(&wire), (expected, None), "len {len}");
        }
    }
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Again,
        reason: rng.text(20).into(),
    }));
    let (events, fail) = whole(&as_client(&encoded(&close)));
    assert_eq!(fail, None);
    assert_eq!(
        events.into_iter().map(to_message).collect::<Vec<_>>(),
        [close]
    );
}

#[test]
fn unmask_matches_the_bytewise_definition_at_every_offset() {
    let mut rng = Rng(3);
    for len in 0..20 {
        for offset in 0..8 {
            let data = rng.bytes(len);
            let mut fast = data.clone();
            unmask(&mut fast, MASK, offset);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[(offset + i) % 4])
                .collect();
            assert_eq!(fast, slow, "len {len} offset {offset}");
        }
    }
}

#[test]
fn fail_becomes_the_close_frame_to_send() {
    let close = INVALID_UTF8.to_close_frame();
    assert_eq!(close.code, CloseCode::Invalid);
    assert_eq!(close.reason.as_str(), "invalid utf-8");
    assert_eq!(INVALID_UTF8.to_string(), "invalid utf-8 (1007)");
}

/// The message an event stands for (test-only: the session does this, with
/// the extension's say for `Extended`).
fn to_message(event: Event) -> Message {
    match event {
        Event::Text(text) => Message::Text(text),
        Event::Binary(data) => Message::Binary(data),
        Event::Ping(data) => Message::Ping(data),
        Event::Pong(data) => Message::Pong(data),
        Event::Close(close) => Message::Close(close),
        Event::Extended { .. } => panic!("no extension in these tests"),
    }
}
