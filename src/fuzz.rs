//! Entry points for the fuzz targets in `fuzz/` (compiled only under
//! `cfg(fuzzing)` and for the corpus replay in `cargo test`).
//!
//! Each function takes a target's raw input, runs the code under test and
//! asserts properties of what came out: a failed assertion is a finding just
//! like a panic in the code under test. The properties are written next to
//! each function. `cargo test` replays every file of `fuzz/corpus/<target>/`
//! (and `fuzz/regressions/<target>/`, where crashes found by the fuzzer are
//! kept) through the same functions.

use std::net::SocketAddr;
use std::sync::Weak;

use crate::config::{Mount, VhostConfig};
use crate::proto::admission::{Admission, Table, admit, find_mount, path_matches, route};
use crate::proto::http::{Head, Refused, Request, is_token_byte, parse_head};
use crate::protocols::Echo;
use crate::{Message, Protocol, Reject, SessionHandle, Vhost};

/// The default `max_head_bytes`.
const MAX_HEAD_BYTES: usize = 8192;
/// The default `max_headers`.
const MAX_HEADERS: usize = 64;
/// The most the in-memory session may write (its stream refuses more).
const MAX_SESSION_OUTPUT: usize = 1 << 20;

/// `request_head`: raw bytes through the two pure decisions a connection
/// makes before it upgrades: [`parse_head`], then [`admit`] against the same
/// kind of routing table a listener holds (built from two fixture vhosts).
///
/// Properties:
/// - parsing and admission are deterministic (the same bytes give the same
///   verdicts twice);
/// - a parse refusal is 400, 431 or 505, always with a reason;
/// - `Partial` only while no blank line has arrived and the head is under
///   its byte bound;
/// - a complete head is at most the input and the bound long, ends with a
///   line break, has an absolute path without the query, and at most
///   `max_headers` headers;
/// - admission routes to the vhost named by `Host` if any names it, else the
///   default one; the mount it picks matches the path (an exact mount wins),
///   and "not found" only when no mount matches;
/// - HTTP is answered only for GET and HEAD;
/// - an upgrade is a GET over HTTP/1.1 with the accept key of RFC 6455
///   §4.2.2, offering only non-empty tokens, from an allowed origin (once
///   origins are listed), with a protocol the mount speaks and the vhost
///   has, echoed only if offered, and, for the protocol with a token, only
///   with the exact token;
/// - every refusal maps to a 4xx or 5xx status with a reason.
pub fn request_head(data: &[u8]) {
    let peer = fixed_peer();
    let first = parse_head(data, MAX_HEAD_BYTES, MAX_HEADERS, peer);
    let second = parse_head(data, MAX_HEAD_BYTES, MAX_HEADERS, peer);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "parse_head is not deterministic"
    );
    let (req, len) = match first {
        Err(refusal) => {
            assert_refusal(&refusal, &[400, 431, 505]);
            return;
        }
        Ok(Head::Partial) => {
            assert!(data.len() < MAX_HEAD_BYTES, "a full buffer must be refused");
            assert!(
                !data.windows(4).any(|w| w == b"\r\n\r\n"),
                "a head with its blank line is not partial"
            );
            return;
        }
        Ok(Head::Complete(req, len)) => (req, len),
    };
    assert!(
        0 < len && len <= data.len() && len <= MAX_HEAD_BYTES,
        "head length {len} out of bounds (input {})",
        data.len()
    );
    assert_eq!(data[len - 1], b'\n', "a head ends with a line break");
    assert!(req.path().starts_with('/'), "path {:?}", req.path());
    assert!(
        !req.path().contains('?'),
        "path {:?} holds the query",
        req.path()
    );
    assert!(req.headers().count() <= MAX_HEADERS);
    assert_eq!(req.peer(), peer);
    if let Some(host) = req.host() {
        assert_eq!(host, host.to_ascii_lowercase(), "host() lowercases");
    }

    let vhosts = fixture_vhosts();
    let table = Table {
        sites: vhosts.iter().map(|v| v.site().clone()).collect(),
    };
    let verdict = admit(&req, &table);
    assert_eq!(verdict, admit(&req, &table), "admit is not deterministic");

    // Routing, checked against the table whatever the verdict.
    let site = route(&table, &req).expect("a table with a default routes everything");
    match req.host() {
        Some(h) if table.sites.iter().any(|s| s.hosts.contains(&h)) => {
            assert!(
                table.sites[site].hosts.contains(&h),
                "{h:?} routed elsewhere"
            );
        }
        _ => assert!(
            table.sites[site].hosts.is_empty(),
            "routed to a named vhost"
        ),
    }
    let mounts = &table.sites[site].mounts;
    let mount = find_mount(mounts, req.path());
    match mount {
        Some(m) => {
            let m = &mounts[m];
            assert!(path_matches(&m.path, m.prefix, req.path()));
            if mounts.iter().any(|o| *o.path == *req.path()) {
                assert_eq!(&*m.path, req.path(), "an exact mount wins");
            }
        }
        None => assert!(
            !mounts
                .iter()
                .any(|m| path_matches(&m.path, m.prefix, req.path())),
            "a matching mount was not found for {:?}",
            req.path()
        ),
    }

    match verdict {
        Admission::Refuse(refused) => {
            assert!((400..600).contains(&refused.status()));
            assert!(!refused.reason().is_empty(), "a refusal without a reason");
            if refused == Refused::NotFound {
                assert!(mount.is_none() && req.path() != "/healthz");
            }
        }
        Admission::Health { site: s } | Admission::Http { site: s, .. } => {
            assert_eq!(s, site);
            assert!(matches!(req.method(), "GET" | "HEAD"));
        }
        Admission::Upgrade {
            site: s,
            mount: m,
            protocol,
            echo,
            upgrade: up,
        } => {
            assert_eq!((s, Some(m)), (site, mount));
            assert_eq!(req.method(), "GET");
            assert!(req.is_http11());
            let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
            assert_eq!(
                up.accept,
                tungstenite::handshake::derive_accept_key(key.as_bytes())
            );
            assert_eq!(up.accept.len(), 28, "a base64 SHA-1 is 28 characters");
            for p in &up.offered {
                assert!(!p.is_empty() && p.bytes().all(is_token_byte));
            }
            let site = &table.sites[s];
            if let Some(o) = req.origin().filter(|_| !site.origins.is_empty()) {
                let o = o.trim().trim_end_matches('/');
                assert!(
                    site.origins.iter().any(|a| a.eq_ignore_ascii_case(o)),
                    "origin {o:?} let in"
                );
            }
            let speaks = site.mounts[m]
                .protocols
                .as_ref()
                .expect("a WebSocket mount");
            assert!(speaks.contains(&protocol), "{protocol:?} not spoken");
            assert!(
                vhosts[s].protocol(&protocol).is_some(),
                "{protocol:?} not registered"
            );
            if echo {
                assert!(up.offered.contains(&protocol), "{protocol:?} not offered");
            } else {
                assert_eq!(protocol, speaks[0], "without a match the default is used");
                assert!(!up.offered.iter().any(|o| speaks.contains(o)));
            }
            if site.tokens.iter().any(|(p, _)| *p == protocol) {
                assert!(presents_token(&req), "a wrong token passed");
            }
        }
    }
}

/// `session_bytes`: arbitrary client bytes through a real echo session over
/// an in-memory stream (see [`run_in_memory`]).
///
/// Properties: it returns (the input is finite and EOF ends the session; the
/// fuzzer's `-timeout` catches a hang), writes at most 1 MiB, and what it
/// wrote is a sequence of well-formed unmasked server frames (see
/// [`check_server_frames`]) echoing no more payload than came in.
pub fn session_bytes(data: &[u8]) {
    let out = run_in_memory(data, &crate::Limits::default());
    assert!(out.len() <= MAX_SESSION_OUTPUT, "wrote {} bytes", out.len());
    let data_bytes = check_server_frames(&out);
    assert!(
        data_bytes <= data.len(),
        "echoed {data_bytes} payload bytes from {} input bytes",
        data.len()
    );
}

/// Runs one echo session over an in-memory stream fed with `input` (read in
/// chunks of 1 to 13 bytes, then EOF) and returns what the server wrote
/// (capped at 1 MiB): the runtime's driver over the sans-IO session, as a
/// real connection runs them, with an application that echoes every
/// message. Deterministic.
pub(crate) fn run_in_memory(input: &[u8], limits: &crate::Limits) -> Vec<u8> {
    run_in_memory_with(input, limits, None)
}

/// [`run_in_memory`] with a negotiated extension.
pub(crate) fn run_in_memory_with(
    input: &[u8],
    limits: &crate::Limits,
    extension: Option<Box<dyn crate::extension::Extension>>,
) -> Vec<u8> {
    use crate::runtime::driver::{Driver, driver_config, session_config};

    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stream = MemStream {
        input: input.to_vec(),
        pos: 0,
        output: output.clone(),
    };
    // A budget far above what one session can hold: accounted, never binding.
    let budget = crate::runtime::budget::Budget::new(1 << 40);
    let mut hooks = EchoHooks(crate::runtime::outbox::Outbox::new(
        limits.max_queue_bytes,
        limits.max_queue_messages,
        limits.overflow,
        Some(budget.clone()),
        extension.is_none(),
    ));
    let reactor = crate::runtime::reactor::Reactor::new();
    let mut driver = Driver::new(
        stream,
        &[],
        session_config(limits),
        extension,
        driver_config(limits),
        Some(budget.clone()),
        &reactor,
    );
    // The reactor's task runs beside the session, for its deadlines.
    let _reason = async_io::block_on(futures_lite::future::or(driver.run(&mut hooks), async {
        reactor.drive().await;
        crate::CloseReason::abnormal("reactor stopped")
    }));
    drop(driver);
    hooks.0.mark_closed();
    assert_eq!(
        budget.total(),
        0,
        "the session left bytes charged to the budget"
    );
    std::mem::take(&mut *crate::common::lock(&output))
}

/// An application that echoes every message through the session's queue.
struct EchoHooks(crate::runtime::outbox::Outbox);

impl crate::runtime::driver::SessionHooks for EchoHooks {
    fn outbox(&self) -> &crate::runtime::outbox::Outbox {
        &self.0
    }

    fn message(&mut self, message: Message) {
        let _ = self.0.push(message, true);
    }

    fn traffic(&mut self, _tally: crate::proto::session::Tally) {}

    fn finish(self: Box<Self>, _reason: crate::CloseReason) {}
}

/// An in-memory byte stream: reads come from `input` in small chunks, writes
/// go to `output` (refused past 1 MiB so that memory stays bounded).
struct MemStream {
    input: Vec<u8>,
    pos: usize,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl crate::transport::Transport for MemStream {}

impl futures_lite::AsyncRead for MemStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // Chunk sizes vary with the position so that frames are split at
        // every kind of boundary, deterministically.
        let chunk = 1 + self.pos % 13;
        let n = chunk.min(buf.len()).min(self.input.len() - self.pos);
        let pos = self.pos;
        buf[..n].copy_from_slice(&self.input[pos..pos + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(n))
    }
}

impl futures_lite::AsyncWrite for MemStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut output = crate::common::lock(&self.output);
        if output.len() + buf.len() > MAX_SESSION_OUTPUT {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        output.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// `compressed_session`: a permessage-deflate echo session over an in-memory
/// stream, with the offer, the vhost's settings and the limit chosen by the
/// input, then client messages (compressed by a client that follows the
/// agreement, or garbage marked compressed, fragmented, with pings between
/// fragments, some breaking the rules) built from the rest.
///
/// Input: byte 0 picks the mode and the offer's parameters, byte 1 the
/// offered windows, byte 2 the vhost's window and level, byte 3 the
/// threshold, bytes 4-5 `max_message_size` (1 to 65536); then messages, each
/// a flags byte, a two-byte length and that many bytes.
///
/// Properties: it returns; the server writes at most 1 MiB of well-formed
/// frames, RSV1 only on the first frame of a data message; every compressed
/// message it sent inflates, with a client decompressor that has exactly
/// the agreed window (8 bits included) and context, to at most
/// `max_message_size` bytes (UTF-8 for text); every close code is one an
/// endpoint may send, and 1002, 1007 or 1009 when the session failed.
pub fn compressed_session(data: &[u8]) {
    use crate::proto::deflate::{self, Compression, CompressionMode, PermessageDeflate};

    let Some((head, mut rest)) = data.split_first_chunk::<6>() else {
        return;
    };
    let mode = if head[0] & 1 == 0 {
        CompressionMode::Shared
    } else {
        CompressionMode::Dedicated
    };
    let mut offer = String::from("permessage-deflate");
    if head[0] & 2 != 0 {
        offer.push_str("; server_no_context_takeover");
    }
    if head[0] & 4 != 0 {
        offer.push_str("; client_no_context_takeover");
    }
    if head[0] & 8 != 0 {
        offer.push_str(&format!("; server_max_window_bits={}", 8 + head[1] % 8));
    }
    if head[0] & 16 != 0 {
        offer.push_str("; client_max_window_bits");
        if head[0] & 32 != 0 {
            offer.push_str(&format!("={}", 8 + (head[1] >> 3) % 8));
        }
    }
    let Ok(settings) = Compression::builder(mode)
        .window_bits(9 + head[2] % 7)
        .level((head[2] >> 4) % 10)
        .threshold(usize::from(head[3]))
        .build()
    else {
        panic!("settings in range must build");
    };
    let max_message = 1 + usize::from(u16::from_le_bytes([head[4], head[5]]));
    let offers = crate::proto::extension::offers(&Request::synthetic(
        "GET",
        "/",
        &[("Sec-WebSocket-Extensions", offer.as_str())],
        "127.0.0.1:1"
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1))),
    ));
    let parsed = offers.iter().find_map(deflate::Offer::parse);
    let Some(parsed) = parsed else {
        panic!("a well-formed offer must parse: {offer}");
    };
    let (agreed, _) = deflate::agree(&settings, &parsed);
    let negotiator = PermessageDeflate::new(settings);
    let extension = negotiator.extension(agreed);

    // The client: compresses as agreed (context kept only if allowed).
    let mut compress = deflate::testing::compressor(agreed.client_window.max(9));
    let mut input = Vec::new();
    while let Some((&[flags, lo, hi], tail)) = rest.split_first_chunk::<3>() {
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let text = flags & 1 != 0;
        let compressed = flags & 2 != 0;
        let payload = if compressed && flags & 4 == 0 {
            if !agreed.client_takeover {
                compress = deflate::testing::compressor(agreed.client_window.max(9));
            }
            compress(body)
        } else {
            body.to_vec()
        };
        let pieces = 1 + usize::from((flags >> 3) & 7);
        let step = payload.len().div_ceil(pieces).max(1);
        let chunks: Vec<&[u8]> = if payload.is_empty() {
            vec![&[][..]]
        } else {
            payload.chunks(step).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let mut b0 = if i == 0 {
                if text { 0x1 } else { 0x2 }
            } else {
                0x0
            };
            if i == last {
                b0 |= 0x80;
            }
            // RSV1 on the first frame of a compressed message, and (a
            // violation) on a continuation when bit 7 says so.
            if (i == 0 && compressed) || (i > 0 && flags & 0x80 != 0) {
                b0 |= 0x40;
            }
            push_client_frame(&mut input, b0, chunk);
            if flags & 0x40 != 0 && i < last {
                push_client_frame(&mut input, 0x89, b"p");
            }
        }
    }
    let limits = crate::Limits::default()
        .max_message_size(max_message)
        .max_frame_size(max_message.max(125));
    let out = run_in_memory_with(&input, &limits, Some(Box::new(extension)));
    assert!(out.len() <= MAX_SESSION_OUTPUT, "wrote {} bytes", out.len());

    // The client's decompressor: exactly the agreed window.
    let mut inflate = deflate::testing::inflater(agreed.server_window);
    let mut message: Option<(u8, bool, Vec<u8>)> = None;
    for (header, payload) in walk_frames(&out, true) {
        match header.opcode {
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                let (op, rsv1, mut bytes) = match (header.opcode, message.take()) {
                    (OP_CONTINUATION, Some(m)) => m,
                    (OP_CONTINUATION, None) => panic!("a continuation outside a message"),
                    (_, Some(_)) => panic!("a new message inside a fragmented one"),
                    (op, None) => (op, header.rsv1, Vec::new()),
                };
                assert!(
                    header.opcode != OP_CONTINUATION || !header.rsv1,
                    "RSV1 on a continuation"
                );
                bytes.extend_from_slice(payload);
                if !header.fin {
                    message = Some((op, rsv1, bytes));
                    continue;
                }
                let plain = if rsv1 {
                    if !agreed.server_takeover {
                        inflate = deflate::testing::inflater(agreed.server_window);
                    }
                    let Some(plain) = inflate(&bytes) else {
                        panic!("a compressed message from the server does not inflate");
                    };
                    plain
                } else {
                    bytes
                };
                assert!(
                    plain.len() <= max_message,
                    "echoed {} bytes, the limit is {max_message}",
                    plain.len()
                );
                if op == OP_TEXT {
                    assert!(
                        std::str::from_utf8(&plain).is_ok(),
                        "echoed text is not UTF-8"
                    );
                }
            }
            OP_CLOSE if payload.len() >= 2 => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                assert!(is_sendable_close_code(code), "close code {code}");
                assert!(
                    matches!(code, 1000 | 1001 | 1002 | 1007 | 1009 | 1011),
                    "close code {code} from an echo session"
                );
                assert!(std::str::from_utf8(&payload[2..]).is_ok());
            }
            _ => {}
        }
    }
}

/// Appends a masked client frame with first byte `b0`.
fn push_client_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8]) {
    let mask = [0x5a, 0x17, 0xc3, 0x80];
    out.push(b0);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// `config`: TOML text to a [`Config`](crate::Config) or a clear error.
///
/// Properties: non-UTF-8 input is skipped (the binary reads text); parsing
/// and building never panic; an error has a key, a reason and a non-empty
/// message, and its line, if any, is a line of the text; a built
/// configuration holds only valid vhosts (a name, a listen address, mount
/// paths starting with `/`, WebSocket mounts naming a protocol).
#[cfg(feature = "toml-config")]
pub fn config(data: &[u8]) {
    use crate::config::ConfigFile;
    use crate::loader::ProtocolRegistry;

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.matches('\n').count() + 1;
    let check = |e: &crate::ConfigError| {
        assert!(!e.to_string().is_empty());
        assert!(!e.key.is_empty(), "error without a key: {e:?}");
        assert!(!e.reason.is_empty(), "error without a reason: {e:?}");
        if let Some(line) = e.line {
            assert!(
                (1..=lines).contains(&line),
                "line {line} of a {lines}-line text: {e}"
            );
        }
    };
    // `[vhost.tls]` files name the test certificates in fuzz/fixtures/
    // (only regular files of at most 4 MiB are ever read).
    let file = match ConfigFile::parse(text) {
        Ok(file) => file.with_base_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/fixtures")),
        Err(e) => return check(&e),
    };
    match file.build(&ProtocolRegistry::builtin()) {
        Ok(cfg) => {
            for v in cfg.vhosts() {
                check_vhost(v);
            }
        }
        Err(e) => check(&e),
    }
}

/// `close_frame`: a Close frame's payload to code and reason, and back.
///
/// Properties: an empty payload, and only that, is `Ok(None)`, and a Close
/// without payload encodes back to it; a refusal is 1007 when only the
/// reason's UTF-8 is wrong and 1002 otherwise (a size, a code that may not be
/// sent); a parsed frame has a sendable code, carries the payload's first two
/// bytes as its code and the rest, unchanged, as its reason; encoding it as
/// a Close message gives one well-formed unmasked server frame whose payload
/// is the input and parses back to the same frame.
pub fn close_frame(data: &[u8]) {
    use bytes::BytesMut;

    use crate::proto::frame::{close_payload, encode};

    let frame = match close_payload(data) {
        Ok(None) => {
            assert!(data.is_empty(), "a non-empty payload parsed as no frame");
            let mut out = BytesMut::new();
            assert!(encode(&mut out, &Message::Close(None)));
            assert_eq!(&out[..], b"\x88\x00", "a Close without payload");
            return;
        }
        Ok(Some(frame)) => frame,
        Err(fail) => {
            // The cause is one the caller can put on the wire: 1007 exactly
            // when a well-sized payload with a sendable code has a reason
            // that is not UTF-8, 1002 for everything else.
            let utf8_only = (2..=125).contains(&data.len())
                && is_sendable_close_code(u16::from_be_bytes([data[0], data[1]]))
                && std::str::from_utf8(&data[2..]).is_err();
            let expected = if utf8_only { 1007 } else { 1002 };
            assert_eq!(u16::from(fail.code), expected, "{fail:?} for {data:?}");
            assert!(!fail.reason.is_empty());
            return;
        }
    };
    assert!(
        (2..=125).contains(&data.len()),
        "a {}-byte payload",
        data.len()
    );
    assert!(is_sendable_close_code(u16::from(frame.code)));
    assert_eq!(
        u16::from(frame.code),
        u16::from_be_bytes([data[0], data[1]])
    );
    assert_eq!(
        frame.reason.as_bytes(),
        &data[2..],
        "the reason is kept as sent"
    );

    let mut out = BytesMut::new();
    assert!(
        encode(&mut out, &Message::Close(Some(frame.clone()))),
        "a parsed close frame must encode"
    );
    let frames = walk_server_frames(&out);
    assert_eq!(frames.len(), 1, "one message, one frame");
    let (header, payload) = frames[0];
    assert_eq!(header.opcode, OP_CLOSE);
    assert_eq!(payload, data, "the payload is re-encoded as it came");
    match close_payload(payload) {
        Ok(Some(back)) => assert_eq!(back, frame, "round trip"),
        other => panic!("the encoded payload parsed as {other:?}"),
    }
}

/// Checks that `out` is a sequence of complete, well-formed server frames
/// (RFC 6455 section 5): no reserved bits (no extension is negotiated), known
/// opcodes, no mask, minimal length encoding, control frames final and at
/// most 125 bytes, continuations only inside a fragmented message and no new
/// message inside one, text messages valid UTF-8, Close payloads empty or a
/// sendable code (section 7.4) and a UTF-8 reason, and nothing after a Close.
/// Returns the payload bytes of the data frames.
///
/// # Panics
///
/// On the first violation, with a message saying which.
fn check_server_frames(out: &[u8]) -> usize {
    let mut data_bytes = 0;
    // The opcode and bytes of the message being fragmented, if one is.
    let mut message: Option<(u8, Vec<u8>)> = None;
    let mut closed = false;
    for (header, payload) in walk_server_frames(out) {
        assert!(!closed, "a frame after the Close frame");
        match header.opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                data_bytes += payload.len();
                let (opcode, mut bytes) = match (header.opcode, message.take()) {
                    (OP_CONTINUATION, Some(m)) => m,
                    (OP_CONTINUATION, None) => panic!("a continuation outside a message"),
                    (_, Some(_)) => panic!("a new message inside a fragmented one"),
                    (op, None) => (op, Vec::new()),
                };
                bytes.extend_from_slice(payload);
                if !header.fin {
                    message = Some((opcode, bytes));
                } else if opcode == OP_TEXT {
                    assert!(
                        std::str::from_utf8(&bytes).is_ok(),
                        "a text message is not UTF-8"
                    );
                }
            }
            OP_CLOSE => {
                closed = true;
                if !payload.is_empty() {
                    assert!(payload.len() >= 2, "a one-byte close payload");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(
                        is_sendable_close_code(code),
                        "close code {code} must not be sent"
                    );
                    assert!(
                        std::str::from_utf8(&payload[2..]).is_ok(),
                        "the close reason is not UTF-8"
                    );
                }
            }
            // Walked frames have known opcodes only; ping and pong carry
            // anything up to 125 bytes.
            _ => {}
        }
    }
    data_bytes
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    fin: bool,
    opcode: u8,
    rsv1: bool,
}

/// Splits `out` into server frames, checking each header on its own.
fn walk_server_frames(out: &[u8]) -> Vec<(FrameHeader, &[u8])> {
    walk_frames(out, false)
}

/// [`walk_server_frames`], with RSV1 allowed on the first frame of a data
/// message when `rsv1` (permessage-deflate negotiated).
fn walk_frames(out: &[u8], rsv1: bool) -> Vec<(FrameHeader, &[u8])> {
    let mut frames = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "a truncated frame header");
        let (b0, b1) = (rest[0], rest[1]);
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            rsv1: b0 & 0x40 != 0,
        };
        if rsv1 && matches!(header.opcode, OP_TEXT | OP_BINARY) {
            assert_eq!(b0 & 0x30, 0, "RSV2 or RSV3 set");
        } else {
            assert_eq!(b0 & 0x70, 0, "reserved bits set without an extension");
        }
        assert!(
            matches!(
                header.opcode,
                OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
            ),
            "reserved opcode {:#x}",
            header.opcode
        );
        assert_eq!(b1 & 0x80, 0, "a server frame must not be masked");
        let (len, at) = match b1 & 0x7F {
            126 => {
                assert!(rest.len() >= 4, "a truncated 16-bit length");
                let n = u16::from_be_bytes([rest[2], rest[3]]) as usize;
                assert!(n >= 126, "length {n} not minimally encoded");
                (n, 4)
            }
            127 => {
                assert!(rest.len() >= 10, "a truncated 64-bit length");
                let mut be = [0; 8];
                be.copy_from_slice(&rest[2..10]);
                let n = u64::from_be_bytes(be);
                assert!(n >> 63 == 0, "the length's top bit is set");
                assert!(n > 0xFFFF, "length {n} not minimally encoded");
                (usize::try_from(n).unwrap_or(usize::MAX), 10)
            }
            n => (usize::from(n), 2),
        };
        if header.opcode & 0x8 != 0 {
            assert!(header.fin, "a fragmented control frame");
            assert!(len <= 125, "a {len}-byte control frame");
        }
        assert!(len <= rest.len() - at, "a truncated frame payload");
        frames.push((header, &rest[at..at + len]));
        rest = &rest[at + len..];
    }
    frames
}

/// The codes an endpoint may put in a Close frame (RFC 6455 section 7.4):
/// the defined ones except 1004 (reserved), 1005 and 1006 (never on the
/// wire) and 1015 (TLS, never on the wire), the IANA-registered 1012 to 1014,
/// and the registered and private ranges.
fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn assert_refusal(refusal: &Refused, statuses: &[u16]) {
    assert!(
        statuses.contains(&refusal.status()),
        "status {} ({}) not among {statuses:?}",
        refusal.status(),
        refusal.reason()
    );
    assert!(!refusal.reason().is_empty(), "a refusal without a reason");
}

/// The token of the fixture's bearer check.
const FIXTURE_TOKEN: &str = "s3cret";

/// Whether `req` presents [`FIXTURE_TOKEN`] in one of the places
/// `check_bearer` looks (checked independently of its precedence).
fn presents_token(req: &Request) -> bool {
    let bearer = req
        .header("authorization")
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(s, t)| s.eq_ignore_ascii_case("bearer") && t.trim() == FIXTURE_TOKEN);
    bearer
        || req.query_param("token") == Some(FIXTURE_TOKEN)
        || req.cookie("token") == Some(FIXTURE_TOKEN)
}

fn fixed_peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 50_000))
}

/// Two vhosts sharing a listener: `named` for `a.example` and `[::1]`, with
/// two allowed origins and exact, prefix and HTTP mounts; `default` with a root prefix mount that
/// speaks two protocols.
fn fixture_vhosts() -> [Vhost; 2] {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let named = VhostConfig::builder("named")
        .listen(listen)
        .host("a.example")
        .host("::1")
        .origin("https://app.example")
        .origin("http://localhost:8080/")
        .protocol(Echo)
        .protocol_with_options(
            Chat,
            crate::Options::from([("token".to_owned(), FIXTURE_TOKEN.to_owned())]),
        )
        .mount(Mount::websocket("/echo", ["echo"]))
        .mount(Mount::websocket("/api/", ["chat", "echo"]).prefix(true))
        .mount(Mount::http("/healthz", crate::http::Health));
    let default = VhostConfig::builder("default")
        .listen(listen)
        .protocol(Echo)
        .protocol(Chat)
        .mount(Mount::websocket("/", ["echo", "chat"]).prefix(true))
        .mount(Mount::websocket("/chat", ["chat"]));
    [named, default].map(|b| match b.build() {
        Ok(cfg) => Vhost::new(cfg, Weak::new()),
        Err(e) => panic!("the fixture vhosts are valid: {e}"),
    })
}

#[cfg(feature = "toml-config")]
fn check_vhost(v: &VhostConfig) {
    assert!(!v.name().is_empty());
    assert!(!v.listen().is_empty(), "vhost {} listens nowhere", v.name());
    for m in v.mounts() {
        assert!(m.path().starts_with('/'), "mount path {:?}", m.path());
        if let crate::MountTarget::WebSocket(p) = m.target() {
            assert!(!p.is_empty(), "mount {} names no protocol", m.path());
        }
    }
}

/// A second protocol for the fixture, so that negotiation has a choice.
#[derive(Debug)]
struct Chat;

impl Protocol for Chat {
    type State = ();

    fn name(&self) -> &str {
        "chat"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), _session: &SessionHandle, _message: Message) {}
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::panic::catch_unwind;
    use std::path::{Path, PathBuf};

    use super::*;

    /// Runs every file of `fuzz/corpus/<target>/` (which must exist and hold
    /// files) and of `fuzz/regressions/<target>/` (if present) through `run`,
    /// and names every file that failed.
    fn replay(target: &str, run: fn(&[u8])) {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut inputs = files(&fuzz.join("corpus").join(target));
        assert!(
            !inputs.is_empty(),
            "fuzz/corpus/{target} is missing or empty"
        );
        let regressions = fuzz.join("regressions").join(target);
        if regressions.is_dir() {
            inputs.extend(files(&regressions));
        }
        let failed: Vec<String> = inputs
            .iter()
            .filter(|path| {
                let data = fs::read(path).unwrap();
                catch_unwind(|| run(&data)).is_err()
            })
            .map(|path| path.display().to_string())
            .collect();
        assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn request_head_corpus() {
        replay("request_head", request_head);
    }

    #[test]
    fn session_bytes_corpus() {
        replay("session_bytes", session_bytes);
    }

    #[cfg(feature = "toml-config")]
    #[test]
    fn config_corpus() {
        replay("config", config);
    }

    #[test]
    fn compressed_session_corpus() {
        replay("compressed_session", compressed_session);
    }

    #[test]
    fn a_compressed_seed_is_echoed_compressed() {
        let json = br#"{"type":"chat","user":"ada","text":"hello, hello, hello"}"#;
        let mut input = Vec::new();
        let mut compress = crate::proto::deflate::testing::compressor(15);
        push_client_frame(&mut input, 0x81 | 0x40, &compress(json));
        push_client_frame(&mut input, 0x81 | 0x40, &compress(json));
        let settings = crate::Compression::builder(crate::CompressionMode::Dedicated)
            .threshold(0)
            .build()
            .unwrap();
        let offer = crate::proto::deflate::Offer::default();
        let (agreed, _) = crate::proto::deflate::agree(&settings, &offer);
        let ext = crate::extension::PermessageDeflate::new(settings).extension(agreed);
        let out = run_in_memory_with(&input, &crate::Limits::default(), Some(Box::new(ext)));
        let frames = walk_frames(&out, true);
        assert_eq!(frames.len(), 2, "{out:?}");
        assert!(frames.iter().all(|(h, _)| h.rsv1 && h.opcode == OP_TEXT));
        assert!(frames[1].1.len() < frames[0].1.len(), "context kept");
    }

    #[test]
    fn close_frame_corpus() {
        replay("close_frame", close_frame);
    }

    #[test]
    fn walker_accepts_an_echo_and_a_close() {
        let out = b"\x81\x05hello\x02\x02ab\x80\x01c\x89\x00\x88\x02\x03\xe8";
        assert_eq!(check_server_frames(out), 8);
    }

    #[test]
    #[should_panic(expected = "must not be masked")]
    fn walker_refuses_a_masked_frame() {
        check_server_frames(b"\x81\x81abcdx");
    }

    #[test]
    #[should_panic(expected = "after the Close")]
    fn walker_refuses_a_frame_after_close() {
        check_server_frames(b"\x88\x00\x81\x00");
    }

    #[test]
    #[should_panic(expected = "truncated frame payload")]
    fn walker_refuses_a_truncated_frame() {
        check_server_frames(b"\x82\x05abc");
    }

    #[test]
    #[should_panic(expected = "not minimally encoded")]
    fn walker_refuses_a_long_length_for_a_short_payload() {
        check_server_frames(b"\x82\x7e\x00\x01a");
    }

    #[test]
    #[should_panic(expected = "not UTF-8")]
    fn walker_refuses_invalid_utf8_across_fragments() {
        check_server_frames(b"\x01\x01\xce\x80\x01a");
    }

    #[test]
    #[should_panic(expected = "must not be sent")]
    fn walker_refuses_close_1005() {
        check_server_frames(b"\x88\x02\x03\xed");
    }

    #[test]
    fn session_output_is_checked_frames() {
        // The unit test in session.rs: "hello" then Close 1000, masked.
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut input = vec![0x81, 0x85];
        input.extend_from_slice(&mask);
        input.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        input.extend_from_slice(&[0x88, 0x82]);
        input.extend_from_slice(&mask);
        input.extend([0x03 ^ mask[0], 0xe8 ^ mask[1]]);
        let out = run_in_memory(&input, &crate::Limits::default());
        assert_eq!(check_server_frames(&out), 5);
    }
}
