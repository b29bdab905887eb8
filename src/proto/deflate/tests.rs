//! Negotiation by RFC 7692 §7, and the codec: round trips with and without
//! context takeover, the 8-bit window, bombs, corrupt streams, the cache.

use bytes::Bytes;

use super::testing::{compressor, inflate, inflater};
use super::*;
use crate::proto::extension::{ExtensionOffer, offers};
use crate::proto::http::Request;

fn offers_of(header: &str) -> Vec<ExtensionOffer> {
    let peer = "127.0.0.1:1".parse().unwrap();
    offers(&Request::synthetic(
        "GET",
        "/",
        &[("Sec-WebSocket-Extensions", header)],
        peer,
    ))
}

fn settings(mode: CompressionMode, window: u8) -> Compression {
    Compression::builder(mode)
        .window_bits(window)
        .threshold(0)
        .build()
        .unwrap()
}

/// The response to `header` and what was agreed, or `None` (declined).
fn negotiate(mode: CompressionMode, window: u8, header: &str) -> Option<(Agreed, String)> {
    let s = settings(mode, window);
    offers_of(header)
        .iter()
        .find_map(Offer::parse)
        .map(|o| agree(&s, &o))
}

fn response(mode: CompressionMode, window: u8, header: &str) -> Option<String> {
    negotiate(mode, window, header).map(|(_, r)| r)
}

use CompressionMode::{Dedicated, Shared};

#[test]
fn shared_mode_always_asks_for_no_context_takeover_both_ways() {
    for offer in [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    ] {
        assert_eq!(
            response(Shared, 15, offer).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            "{offer}"
        );
    }
    assert_eq!(
        response(Shared, 15, "permessage-deflate; server_max_window_bits=10").as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        )
    );
}

#[test]
fn dedicated_mode_keeps_context_within_its_window() {
    // A browser's offer at the full window: nothing to add.
    let (a, r) = negotiate(Dedicated, 15, "permessage-deflate; client_max_window_bits").unwrap();
    assert_eq!(r, "permessage-deflate");
    assert!(a.server_takeover && a.client_takeover);
    assert_eq!((a.server_window, a.client_window), (15, 15));
    // A smaller window is asked of both sides.
    let (a, r) = negotiate(Dedicated, 10, "permessage-deflate; client_max_window_bits").unwrap();
    assert_eq!(
        r,
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits=10"
    );
    assert_eq!((a.server_window, a.client_window), (10, 10));
    // The client's smaller values win.
    let (a, r) = negotiate(
        Dedicated,
        12,
        "permessage-deflate; server_max_window_bits=9; client_max_window_bits=11",
    )
    .unwrap();
    assert_eq!(
        r,
        "permessage-deflate; server_max_window_bits=9; client_max_window_bits=11"
    );
    assert_eq!((a.server_window, a.client_window), (9, 11));
    // A client that cannot limit its window keeps no context instead.
    let (a, r) = negotiate(Dedicated, 10, "permessage-deflate").unwrap();
    assert_eq!(
        r,
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=10"
    );
    assert!(a.server_takeover && !a.client_takeover);
    // The client's no-context-takeover requests are honoured.
    let (a, r) = negotiate(
        Dedicated,
        15,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    )
    .unwrap();
    assert_eq!(
        r,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert!(!a.server_takeover && !a.client_takeover);
}

#[test]
fn an_eight_bit_server_window_is_honoured_without_context_takeover() {
    for mode in [Shared, Dedicated] {
        let (a, r) = negotiate(mode, 15, "permessage-deflate; server_max_window_bits=8").unwrap();
        assert!(r.contains("server_no_context_takeover"), "{r}");
        assert!(r.ends_with("server_max_window_bits=8"), "{r}");
        assert_eq!(a.server_window, 8);
        assert!(!a.server_takeover);
    }
}

#[test]
fn a_malformed_or_duplicated_parameter_declines_that_offer_only() {
    for bad in [
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover=1",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits; client_max_window_bits",
        "permessage-deflate; x_unknown",
        "permessage-deflate; max_window_bits=10",
    ] {
        assert_eq!(response(Shared, 15, bad), None, "{bad}");
        // The next, well-formed offer is the one accepted.
        let two = format!("{bad}, permessage-deflate; client_max_window_bits=12");
        let (a, r) = negotiate(Dedicated, 15, &two).unwrap();
        assert_eq!(r, "permessage-deflate; client_max_window_bits=12", "{two}");
        assert_eq!(a.client_window, 12);
    }
    // Quoted values are values (RFC 6455 §9.1).
    assert!(
        response(
            Shared,
            15,
            "permessage-deflate; server_max_window_bits=\"10\""
        )
        .is_some()
    );
}

#[test]
fn the_negotiator_declines_when_off_and_accepts_the_first_good_offer() {
    let off = PermessageDeflate::new(Compression::off());
    assert!(off.accept(&offers_of("permessage-deflate")).is_none());
    let on = PermessageDeflate::new(settings(Dedicated, 15));
    let (ext, r) = on
        .accept(&offers_of(
            "permessage-deflate; bogus, permessage-deflate; server_no_context_takeover",
        ))
        .unwrap();
    assert_eq!(r, "permessage-deflate; server_no_context_takeover");
    assert_eq!(ext.rsv(), 0x40);
    assert!(on.accept(&offers_of("permessage-deflate; bogus")).is_none());
}

#[test]
fn settings_out_of_range_are_errors() {
    let e = Compression::builder(Shared)
        .window_bits(8)
        .build()
        .unwrap_err();
    assert_eq!(e.key, "compression.window_bits");
    let e = Compression::builder(Shared)
        .mem_level(0)
        .build()
        .unwrap_err();
    assert_eq!(e.key, "compression.mem_level");
    let e = Compression::builder(Shared).level(10).build().unwrap_err();
    assert_eq!(e.key, "compression.level");
    assert_eq!(Compression::default().mode(), CompressionMode::Off);
}

fn extension(mode: CompressionMode, window: u8, header: &str) -> Deflate {
    let n = PermessageDeflate::new(settings(mode, window));
    let (agreed, _) = negotiate(mode, window, header).unwrap();
    n.extension(agreed)
}

fn json(i: usize) -> Bytes {
    Bytes::from(format!(
        "{{\"id\":{i},\"user\":\"someone\",\"text\":\"hello there, this is message {i}\",\"tags\":[\"a\",\"b\"]}}"
    ))
}

#[test]
fn context_takeover_round_trips_and_compresses_repeats_better() {
    let mut server = extension(Dedicated, 15, "permessage-deflate");
    let mut client_inflate = inflater(15);
    let mut client_deflate = compressor(15);
    let mut sizes = Vec::new();
    for i in 0..5 {
        let m = json(i);
        let z = server.encode(&m).unwrap();
        sizes.push(z.len());
        assert_eq!(client_inflate(&z).unwrap(), m);
        let back = server
            .decode(0x40, Bytes::from(client_deflate(&m)), 1 << 20)
            .unwrap();
        assert_eq!(back, m);
    }
    assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
    assert!(server.memory() > 0);
    assert_eq!(
        server.memory(),
        settings(Dedicated, 15).dedicated_memory(),
        "the documented number is what memory() reports"
    );
}

#[test]
fn without_context_takeover_each_message_stands_alone() {
    let mut server = extension(Shared, 15, "permessage-deflate");
    for i in 0..3 {
        let m = json(i);
        let z = server.encode(&m).unwrap();
        // A fresh decompressor per message.
        assert_eq!(inflate(&z), m);
    }
    assert_eq!(server.memory(), 0, "shared mode holds nothing per session");
    // A client that keeps its context although asked not to is caught.
    let mut client = compressor(15);
    let first = client(&json(1));
    let second = client(&json(1));
    assert_eq!(
        server.decode(0x40, Bytes::from(first), 1 << 20).unwrap(),
        json(1)
    );
    assert_eq!(
        server.decode(0x40, Bytes::from(second), 1 << 20),
        Err(ExtensionError::Invalid("invalid distance too far back"))
    );
}

#[test]
fn an_eight_bit_window_compresses_only_what_256_bytes_cover() {
    let mut server = extension(Shared, 15, "permessage-deflate; server_max_window_bits=8");
    let small = Bytes::from("abcabcabc".repeat(28));
    assert!(small.len() <= 256);
    let z = server.encode(&small).unwrap();
    // No distance can reach past the message's start, so a decompressor
    // with a 256-byte window takes it.
    assert_eq!(inflater(8)(&z).unwrap(), small);
    let large = Bytes::from("abcabcabc".repeat(40));
    assert_eq!(server.encode(&large), None, "sent plain");
}

#[test]
fn short_messages_stay_plain_and_incompressible_ones_too_without_context() {
    let n = PermessageDeflate::new(Compression::builder(Shared).threshold(64).build().unwrap());
    let (agreed, _) = negotiate(Shared, 15, "permessage-deflate").unwrap();
    let mut server = n.extension(agreed);
    assert_eq!(server.encode(&Bytes::from_static(&[b'a'; 63])), None);
    assert!(server.encode(&Bytes::from_static(&[b'a'; 64])).is_some());
    // Pseudo-random bytes do not compress.
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    assert_eq!(server.encode(&Bytes::from(noise)), None);
}

#[test]
fn inflation_stops_at_the_limit() {
    let mut server = extension(Shared, 15, "permessage-deflate");
    let zeros = compressor(15)(&vec![0u8; 1 << 20]);
    let z = Bytes::from(zeros);
    assert_eq!(
        server.decode(0x40, z.clone(), (1 << 20) - 1),
        Err(ExtensionError::TooBig)
    );
    assert_eq!(
        server.decode(0x40, z.clone(), 1 << 20).unwrap().len(),
        1 << 20
    );
    assert_eq!(server.decode(0x40, z, 1000), Err(ExtensionError::TooBig));
    // An empty message.
    let empty = Bytes::from(compressor(15)(b""));
    assert_eq!(server.decode(0x40, empty, 0).unwrap(), Bytes::new());
}

#[test]
fn a_final_block_then_garbage_is_invalid_and_a_final_block_alone_is_fine() {
    let mut server = extension(Dedicated, 15, "permessage-deflate");
    // A fixed-Huffman final block holding "a" (BFINAL=1, BTYPE=01): 4b 04 00.
    const FIN: [u8; 3] = [0x4b, 0x04, 0x00];
    let fin = FIN;
    assert_eq!(
        server.decode(0x40, Bytes::from_static(&FIN), 100).unwrap(),
        Bytes::from_static(b"a")
    );
    // The next message starts a new stream.
    assert_eq!(
        server.decode(0x40, Bytes::from_static(&FIN), 100).unwrap(),
        Bytes::from_static(b"a")
    );
    let mut garbage = fin.to_vec();
    garbage.extend_from_slice(b"xyz");
    assert_eq!(
        server.decode(0x40, Bytes::from(garbage), 100),
        Err(ExtensionError::Invalid("data after the final block"))
    );
}

#[test]
fn a_message_sent_to_many_sessions_is_compressed_once() {
    let n = PermessageDeflate::new(settings(Shared, 15));
    let (agreed, _) = negotiate(Shared, 15, "permessage-deflate").unwrap();
    let mut sessions: Vec<Deflate> = (0..10).map(|_| n.extension(agreed)).collect();
    let m = json(7);
    let outs: Vec<Bytes> = sessions
        .iter_mut()
        .map(|s| s.encode(&m.clone()).unwrap())
        .collect();
    for o in &outs {
        assert_eq!(o.as_ptr(), outs[0].as_ptr(), "the same bytes, not a copy");
    }
    assert_eq!(n.cache.len(), 1);
    // An equal payload in another buffer is another key.
    let other = Bytes::from(m.to_vec());
    let o = sessions[0].encode(&other).unwrap();
    assert_ne!(o.as_ptr(), outs[0].as_ptr());
    assert_eq!(o, outs[0]);
}
