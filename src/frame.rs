//! The WebSocket frame engine: a sans-IO [`Decoder`] for the frames a client
//! sends and an [`encode`]r for the frames the server sends (RFC 6455 §5).
//!
//! Nothing here touches a socket, a clock or a task. The session driver reads
//! into its own buffer, hands it to [`Decoder::decode`], and acts on the
//! [`Event`]s or the [`Fail`] that come back; it writes by appending frames to
//! its own output buffer with [`encode`] (or [`header`] plus a shared payload
//! for vectored writes).
//!
//! # Why we own the frame engine
//!
//! The handshake, [`Message`], [`CloseCode`] and [`CloseFrame`] stay
//! tungstenite's. Its read and write paths do not fit a gateway, for four
//! reasons:
//!
//! - **Fail-fast UTF-8.** tungstenite validates a text message once a whole
//!   frame has arrived. We validate as payload bytes arrive, across reads,
//!   frames and fragments, and fail the connection with 1007 at the first
//!   byte that cannot be part of valid UTF-8 (RFC 6455 §5.6, §8.1; Autobahn
//!   6.4.x strict).
//! - **Limits before allocation.** The frame and message limits are checked
//!   as soon as the length field is known, before the mask or any payload
//!   byte is read, and nothing is ever reserved beyond the bytes that have
//!   actually arrived (§10.4). A peer announcing 2^62 bytes costs nothing.
//! - **Zero copy.** A single-frame data message whose payload is already in
//!   the read buffer is unmasked in place and split out of it, without a copy.
//! - **Coalesced writes.** The encoder appends to one output buffer, so a
//!   batch of messages goes out in one write; [`header`] alone serves
//!   vectored writes of a payload shared between many sessions.
//!
//! # Invariants
//!
//! - The decoder consumes only what it has used. A partial header (at most 13
//!   bytes) stays in the caller's buffer until the rest arrives, but every
//!   rule that can be decided from the bytes present is decided at once: the
//!   first two bytes (reserved bits, opcode, mask bit, control-frame rules,
//!   fragmentation order: §5.2, §5.4, §5.5), then the length (its most
//!   significant bit, the limits), then the mask.
//! - Payload is consumed as it arrives. Data payload is unmasked (§5.3) and
//!   appended to the message buffer, which therefore never holds more than
//!   the bytes received, and never more than `max_message_size`. A control
//!   frame's payload (at most 125 bytes, §5.5) is kept in a fixed array.
//! - For a text message, `message[..validated]` is valid UTF-8 and
//!   `message[validated..]` is the incomplete start of a code point (at most 3
//!   bytes) that more bytes may complete. At the end of the message it must
//!   be empty.
//! - Control frames may arrive between the fragments of a data message (§5.4)
//!   and do not disturb it.
//! - After a failure or a Close event the decoder is done: later calls
//!   consume nothing and return `Ok(None)`, and its buffers are released.
//! - No input can make the decoder panic: every index is within bounds by the
//!   invariant noted beside it.
//! - Server frames are never masked (§5.1); control frames the encoder writes
//!   carry at most 125 bytes of payload.

use std::fmt;
use std::str;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use bytes::{Buf, Bytes, BytesMut};

use crate::CloseCode;

/// Frame opcodes (RFC 6455 §5.2), for [`header`].
pub(crate) mod opcode {
    /// Continuation frame of a fragmented message.
    pub(crate) const CONTINUATION: u8 = 0x0;
    /// First (or only) frame of a text message.
    pub(crate) const TEXT: u8 = 0x1;
    /// First (or only) frame of a binary message.
    pub(crate) const BINARY: u8 = 0x2;
    /// Close control frame.
    pub(crate) const CLOSE: u8 = 0x8;
    /// Ping control frame.
    pub(crate) const PING: u8 = 0x9;
    /// Pong control frame.
    pub(crate) const PONG: u8 = 0xA;
}

/// The largest payload of a control frame (RFC 6455 §5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// The size limits a [`Decoder`] enforces, both checked from the frame header
/// before any payload byte is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeLimits {
    /// The largest payload of one frame, control frames included; a larger
    /// announced length fails with 1009.
    pub(crate) max_frame_size: usize,
    /// The largest data message, summed over its fragments; a frame that
    /// would take the message past it fails with 1009.
    pub(crate) max_message_size: usize,
}

/// What the decoder hands out: a complete message or a control frame.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// A complete text message, valid UTF-8.
    Text(Utf8Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A Ping and its payload (at most 125 bytes), to be answered by a Pong.
    Ping(Bytes),
    /// A Pong and its payload (at most 125 bytes).
    Pong(Bytes),
    /// A Close frame with its parsed payload; the decoder is done after it.
    Close(Option<CloseFrame>),
}

impl Event {
    /// The payload's length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) | Self::Ping(b) | Self::Pong(b) => b.len(),
            Self::Close(_) => 0,
        }
    }
}

impl From<Event> for Message {
    fn from(event: Event) -> Self {
        match event {
            Event::Text(text) => Self::Text(text),
            Event::Binary(data) => Self::Binary(data),
            Event::Ping(data) => Self::Ping(data),
            Event::Pong(data) => Self::Pong(data),
            Event::Close(close) => Self::Close(close),
        }
    }
}

/// Why the peer's bytes were refused: the code and reason to send in the
/// Close frame that fails the connection (RFC 6455 §7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fail {
    /// 1002 (protocol error), 1007 (invalid UTF-8) or 1009 (too big).
    pub(crate) code: CloseCode,
    /// A short lowercase reason, such as "reserved bits set".
    pub(crate) reason: &'static str,
}

impl Fail {
    /// A protocol error (1002).
    const fn protocol(reason: &'static str) -> Self {
        Self {
            code: CloseCode::Protocol,
            reason,
        }
    }

    /// A frame or message over its limit (1009).
    const fn size(reason: &'static str) -> Self {
        Self {
            code: CloseCode::Size,
            reason,
        }
    }

    /// The Close frame that reports this failure to the peer.
    pub(crate) fn to_close_frame(self) -> CloseFrame {
        CloseFrame {
            code: self.code,
            reason: Utf8Bytes::from_static(self.reason),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

/// Invalid UTF-8 in a text message or a close reason (1007, RFC 6455 §8.1).
const INVALID_UTF8: Fail = Fail {
    code: CloseCode::Invalid,
    reason: "invalid utf-8",
};

/// A sans-IO decoder of the frames a client sends to a server.
///
/// Feed it the connection's read buffer with [`decode`](Self::decode) until
/// it returns `Ok(None)`, then read more bytes into the same buffer.
pub(crate) struct Decoder {
    limits: DecodeLimits,
    state: State,
    /// The data message being reassembled, fragments concatenated (§5.4).
    message: BytesMut,
    /// The kind of the data message in progress, if any.
    kind: Option<DataKind>,
    /// How many leading bytes of a text `message` are known valid UTF-8.
    validated: usize,
    /// The payload of the control frame being read.
    control: [u8; MAX_CONTROL_PAYLOAD],
}

impl Decoder {
    /// A decoder at the start of a connection's frame stream.
    pub(crate) fn new(limits: DecodeLimits) -> Self {
        Self {
            limits,
            state: State::Header,
            message: BytesMut::new(),
            kind: None,
            validated: 0,
            control: [0; MAX_CONTROL_PAYLOAD],
        }
    }

    /// Consumes bytes from the front of `input` and returns the next event.
    ///
    /// Returns `Ok(Some(_))` as soon as a message completes or a control
    /// frame arrives, possibly leaving further frames in `input` (call again);
    /// `Ok(None)` when more bytes are needed, having consumed everything
    /// usable (a partial header stays in `input`, to be completed by the next
    /// read appended behind it).
    ///
    /// # Errors
    ///
    /// The [`Fail`] to send in a Close frame when the peer broke RFC 6455 or
    /// a limit. After an error, or after an [`Event::Close`], the decoder is
    /// done: further calls consume nothing and return `Ok(None)`.
    pub(crate) fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Event>, Fail> {
        let result = self.step(input);
        if matches!(result, Err(_) | Ok(Some(Event::Close(_)))) {
            self.state = State::Done;
            self.kind = None;
            self.validated = 0;
            self.message = BytesMut::new();
        }
        result
    }

    /// Bytes currently held for an incomplete data message or control frame.
    pub(crate) fn buffered(&self) -> usize {
        let control = match self.state {
            State::Payload(Frame {
                kind: FrameKind::Control(_),
                read,
                ..
            }) => read,
            _ => 0,
        };
        self.message.len() + control
    }

    /// Releases the spare capacity of the message buffer (when the connection
    /// goes idle); an incomplete message is kept, in a buffer of its size.
    pub(crate) fn shrink(&mut self) {
        if self.message.is_empty() {
            self.message = BytesMut::new();
        } else if self.message.capacity() > self.message.len() {
            self.message = BytesMut::from(&self.message[..]);
        }
    }

    /// Reads frames until one yields an event or the input runs out.
    fn step(&mut self, input: &mut BytesMut) -> Result<Option<Event>, Fail> {
        loop {
            let frame = match self.state {
                State::Done => return Ok(None),
                State::Payload(frame) => frame,
                State::Header => match self.read_header(input)? {
                    Some(frame) => frame,
                    None => return Ok(None),
                },
            };
            let progress = match frame.kind {
                FrameKind::Control(op) => self.control_payload(op, frame, input)?,
                FrameKind::Data { kind, starts } => {
                    self.data_payload(kind, starts, frame, input)?
                }
            };
            match progress {
                Progress::Partial(frame) => {
                    self.state = State::Payload(frame);
                    return Ok(None);
                }
                Progress::Complete(event) => {
                    self.state = State::Header;
                    if event.is_some() {
                        return Ok(event);
                    }
                }
            }
        }
    }

    /// Parses the header at the front of `input`, deciding each rule as soon
    /// as the bytes it needs are present, and consumes it once complete.
    fn read_header(&mut self, input: &mut BytesMut) -> Result<Option<Frame>, Fail> {
        let &[b0, b1, ..] = &input[..] else {
            return Ok(None);
        };
        // §5.2: no extension is negotiated, so every reserved bit must be 0.
        if b0 & 0x70 != 0 {
            return Err(Fail::protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let kind = match b0 & 0x0F {
            opcode::CONTINUATION => match self.kind {
                Some(kind) => FrameKind::Data {
                    kind,
                    starts: false,
                },
                None => return Err(Fail::protocol("unexpected continuation frame")),
            },
            op @ (opcode::TEXT | opcode::BINARY) => {
                // §5.4: the fragments of one message are not interleaved
                // with another message.
                if self.kind.is_some() {
                    return Err(Fail::protocol("expected continuation frame"));
                }
                let kind = if op == opcode::TEXT {
                    DataKind::Text
                } else {
                    DataKind::Binary
                };
                FrameKind::Data { kind, starts: true }
            }
            op @ (opcode::CLOSE | opcode::PING | opcode::PONG) => {
                // §5.5: control frames are never fragmented and carry at
                // most 125 bytes, so their length fits in the first 7 bits.
                if !fin {
                    return Err(Fail::protocol("fragmented control frame"));
                }
                if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                    return Err(Fail::protocol("control frame too big"));
                }
                FrameKind::Control(match op {
                    opcode::CLOSE => ControlOp::Close,
                    opcode::PING => ControlOp::Ping,
                    _ => ControlOp::Pong,
                })
            }
            _ => return Err(Fail::protocol("unknown opcode")),
        };
        // §5.1, §5.3: a server closes the connection on an unmasked frame.
        if b1 & 0x80 == 0 {
            return Err(Fail::protocol("unmasked client frame"));
        }
        let (len, mask_at) = match len7 {
            126 => {
                let Some(&[a, b]) = input.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([a, b])), 4)
            }
            127 => {
                let Some(&[a, b, c, d, e, f, g, h]) = input.get(2..10) else {
                    return Ok(None);
                };
                (u64::from_be_bytes([a, b, c, d, e, f, g, h]), 10)
            }
            short => (u64::from(short), 2),
        };
        // §5.2: the most significant bit of a 64-bit length must be 0.
        if len >> 63 != 0 {
            return Err(Fail::protocol("invalid frame length"));
        }
        // A length that does not fit in usize is above any limit.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.limits.max_frame_size {
            return Err(Fail::size("frame too big"));
        }
        if matches!(kind, FrameKind::Data { .. })
            && self.message.len().saturating_add(len) > self.limits.max_message_size
        {
            return Err(Fail::size("message too big"));
        }
        let Some(&[m0, m1, m2, m3]) = input.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        input.advance(mask_at + 4);
        if let FrameKind::Data { kind, starts: true } = kind {
            self.kind = Some(kind);
        }
        Ok(Some(Frame {
            kind,
            fin,
            mask: [m0, m1, m2, m3],
            len,
            read: 0,
        }))
    }

    /// Reads a control frame's payload into the fixed array.
    fn control_payload(
        &mut self,
        op: ControlOp,
        mut frame: Frame,
        input: &mut BytesMut,
    ) -> Result<Progress, Fail> {
        let take = frame.remaining().min(input.len());
        // In bounds: `read_header` admitted this control frame only with
        // `len <= 125`, and `read + remaining == len`, so
        // `read + take <= 125`; `take <= input.len()`.
        let dst = &mut self.control[frame.read..frame.read + take];
        dst.copy_from_slice(&input[..take]);
        unmask(dst, frame.mask, frame.read);
        input.advance(take);
        frame.read += take;
        if frame.read < frame.len {
            return Ok(Progress::Partial(frame));
        }
        // In bounds: `frame.len <= 125`, as above.
        let payload = &self.control[..frame.len];
        let event = match op {
            ControlOp::Close => Event::Close(close_payload(payload)?),
            ControlOp::Ping => Event::Ping(Bytes::copy_from_slice(payload)),
            ControlOp::Pong => Event::Pong(Bytes::copy_from_slice(payload)),
        };
        Ok(Progress::Complete(Some(event)))
    }

    /// Consumes what has arrived of a data frame's payload.
    fn data_payload(
        &mut self,
        kind: DataKind,
        starts: bool,
        mut frame: Frame,
        input: &mut BytesMut,
    ) -> Result<Progress, Fail> {
        if starts && frame.fin && frame.read == 0 && input.len() >= frame.len {
            // A whole single-frame message is in the read buffer: unmask it
            // there and hand it out without copying.
            // When the frame is all that is left, take the whole buffer:
            // a split would allocate to share it.
            let mut payload = if input.len() == frame.len {
                std::mem::take(input)
            } else {
                input.split_to(frame.len)
            };
            unmask(&mut payload, frame.mask, 0);
            self.kind = None;
            return message_event(kind, payload.freeze()).map(|e| Progress::Complete(Some(e)));
        }
        // Reserve only for bytes that have arrived, never the announced length.
        let take = frame.remaining().min(input.len());
        // In bounds: `take <= input.len()`.
        let chunk = &mut input[..take];
        unmask(chunk, frame.mask, frame.read);
        self.message.extend_from_slice(chunk);
        input.advance(take);
        frame.read += take;
        if kind == DataKind::Text {
            self.check_utf8()?;
        }
        if frame.read < frame.len {
            return Ok(Progress::Partial(frame));
        }
        if !frame.fin {
            return Ok(Progress::Complete(None));
        }
        // §8.1: a code point cut off by the end of the message is invalid.
        if kind == DataKind::Text && self.validated != self.message.len() {
            return Err(INVALID_UTF8);
        }
        self.kind = None;
        self.validated = 0;
        // `split` hands the bytes out and leaves only spare capacity behind,
        // which `shrink` releases.
        let payload = self.message.split().freeze();
        message_event(kind, payload).map(|e| Progress::Complete(Some(e)))
    }

    /// Validates the text message's bytes not yet known valid, failing at the
    /// first byte that no continuation could make valid.
    fn check_utf8(&mut self) -> Result<(), Fail> {
        // In bounds: `validated` only ever grows to at most `message.len()`,
        // and `message` only grows until it is reset with `validated`.
        match str::from_utf8(&self.message[self.validated..]) {
            Ok(_) => self.validated = self.message.len(),
            // An incomplete code point at the end: valid so far.
            Err(e) if e.error_len().is_none() => self.validated += e.valid_up_to(),
            Err(_) => return Err(INVALID_UTF8),
        }
        Ok(())
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("limits", &self.limits)
            .field("state", &self.state)
            .field("kind", &self.kind)
            .field("buffered", &self.buffered())
            .finish_non_exhaustive()
    }
}

/// Parses a Close frame's payload (RFC 6455 §5.5.1): nothing, or a status
/// code followed by a UTF-8 reason.
///
/// # Errors
///
/// 1002 for a payload of one byte or of more than 125 (§5.5), or a code
/// that may not be sent (§7.4); 1007 for a reason that is not UTF-8.
pub(crate) fn close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, Fail> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(Fail::protocol("control frame too big"));
    }
    match payload {
        [] => Ok(None),
        [_] => Err(Fail::protocol("truncated close code")),
        &[hi, lo, ref reason @ ..] => {
            let code = u16::from_be_bytes([hi, lo]);
            if !is_valid_close_code(code) {
                return Err(Fail::protocol("invalid close code"));
            }
            let reason =
                Utf8Bytes::try_from(Bytes::copy_from_slice(reason)).map_err(|_| INVALID_UTF8)?;
            Ok(Some(CloseFrame {
                code: CloseCode::from(code),
                reason,
            }))
        }
    }
}

/// Appends one unmasked frame for `message` to `out`: header, then payload.
///
/// Control payloads are cut to 125 bytes (§5.5): a Close reason at a char
/// boundary, a Ping or Pong payload at byte 125. Returns false, encoding
/// nothing, for `Message::Frame`, which wsgate never produces.
pub(crate) fn encode(out: &mut BytesMut, message: &Message) -> bool {
    match message {
        Message::Text(text) => put_frame(out, opcode::TEXT, text.as_bytes()),
        Message::Binary(data) => put_frame(out, opcode::BINARY, data),
        Message::Ping(data) => put_frame(out, opcode::PING, control_prefix(data)),
        Message::Pong(data) => put_frame(out, opcode::PONG, control_prefix(data)),
        Message::Close(None) => put_frame(out, opcode::CLOSE, &[]),
        Message::Close(Some(close)) => {
            let reason = close.reason.as_str();
            let reason = &reason[..reason.floor_char_boundary(MAX_CONTROL_PAYLOAD - 2)];
            let (head, head_len) = header(opcode::CLOSE, true, 2 + reason.len());
            out.reserve(head_len + 2 + reason.len());
            out.extend_from_slice(&head[..head_len]);
            out.extend_from_slice(&u16::from(close.code).to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
        Message::Frame(_) => return false,
    }
    true
}

/// The header of an unmasked frame with a payload of `len` bytes: the array
/// and how many of its bytes to send (2, 4 or 10).
pub(crate) fn header(opcode: u8, fin: bool, len: usize) -> ([u8; 10], usize) {
    let b0 = if fin { 0x80 } else { 0 } | (opcode & 0x0F);
    if let Ok(short @ 0..=125) = u8::try_from(len) {
        return ([b0, short, 0, 0, 0, 0, 0, 0, 0, 0], 2);
    }
    if let Ok(medium) = u16::try_from(len) {
        let [a, b] = medium.to_be_bytes();
        return ([b0, 126, a, b, 0, 0, 0, 0, 0, 0], 4);
    }
    // Lossless: usize has at most 64 bits on every target Rust supports.
    let [a, b, c, d, e, f, g, h] = (len as u64).to_be_bytes();
    ([b0, 127, a, b, c, d, e, f, g, h], 10)
}

/// Where the decoder is in the frame stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// At a frame boundary, waiting for a header.
    Header,
    /// Inside this frame's payload.
    Payload(Frame),
    /// After a failure or a Close frame.
    Done,
}

/// A frame whose header has been read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: FrameKind,
    fin: bool,
    mask: [u8; 4],
    /// The payload length, within the limits.
    len: usize,
    /// Payload bytes consumed so far; also the mask offset.
    read: usize,
}

impl Frame {
    fn remaining(&self) -> usize {
        self.len - self.read
    }
}

/// A frame's opcode, resolved against the message in progress.
#[derive(Debug, Clone, Copy)]
enum FrameKind {
    /// A frame of a data message of `kind`; `starts` unless a continuation.
    Data {
        kind: DataKind,
        starts: bool,
    },
    Control(ControlOp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

#[derive(Debug, Clone, Copy)]
enum ControlOp {
    Close,
    Ping,
    Pong,
}

/// What reading a frame's payload came to.
enum Progress {
    /// The input ran out inside the payload.
    Partial(Frame),
    /// The frame is complete, with the event it completed, if any.
    Complete(Option<Event>),
}

/// The event for a complete data message.
fn message_event(kind: DataKind, payload: Bytes) -> Result<Event, Fail> {
    match kind {
        DataKind::Binary => Ok(Event::Binary(payload)),
        DataKind::Text => Utf8Bytes::try_from(payload)
            .map(Event::Text)
            .map_err(|_| INVALID_UTF8),
    }
}

/// Whether `code` may appear in a Close frame (RFC 6455 §7.4.1, §7.4.2, and
/// the IANA registry for 1012–1014).
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// At most the first 125 bytes of a control payload.
fn control_prefix(data: &[u8]) -> &[u8] {
    data.get(..MAX_CONTROL_PAYLOAD).unwrap_or(data)
}

/// Appends a final frame with this opcode and payload.
fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    let (head, head_len) = header(opcode, true, payload.len());
    out.reserve(head_len + payload.len());
    out.extend_from_slice(&head[..head_len]);
    out.extend_from_slice(payload);
}

/// XORs `buf` with the masking key (§5.3), `buf[0]` being payload byte
/// `offset`.
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut mask = mask;
    mask.rotate_left(offset % 4);
    // Whole words first, in a form the compiler vectorizes.
    let mut words = buf.chunks_exact_mut(4);
    for word in &mut words {
        for (byte, m) in word.iter_mut().zip(mask) {
            *byte ^= m;
        }
    }
    for (byte, m) in words.into_remainder().iter_mut().zip(mask) {
        *byte ^= m;
    }
}

#[cfg(test)]
mod tests {
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
    fn buffered_counts_a_partial_control_frame() {
        let mut decoder = Decoder::new(LIMITS);
        let ping = frame(true, opcode::PING, &[5; 50]);
        let mut input = BytesMut::from(&ping[..2 + 4 + 20]);
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.buffered(), 20);
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
        use async_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
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
            events.into_iter().map(Message::from).collect::<Vec<_>>(),
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
}
