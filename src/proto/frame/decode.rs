//! The decoder: client frames in, [`Event`]s or a [`Fail`] out (sans-IO).

use std::fmt;
use std::str;

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;

use super::{CloseCode, DecodeLimits, Event, Fail, INVALID_UTF8, MAX_CONTROL_PAYLOAD, opcode};

/// A sans-IO decoder of the frames a client sends to a server.
///
/// Feed it the connection's read buffer with [`decode`](Self::decode) until
/// it returns `Ok(None)`, then read more bytes into the same buffer.
pub(crate) struct Decoder {
    limits: DecodeLimits,
    state: State,
    /// The data message being reassembled, fragments concatenated (§5.4).
    /// Visible to the tests, which check that its memory is released.
    pub(super) message: BytesMut,
    /// The kind of the data message in progress, if any.
    kind: Option<DataKind>,
    /// How many leading bytes of a text `message` are known valid UTF-8.
    validated: usize,
    /// The reserved bits a negotiated extension may set on the first frame
    /// of a data message (`0x40` for RSV1); 0 without an extension.
    rsv_allowed: u8,
    /// The reserved bits of the data message in progress: its payload is the
    /// extension's to transform, and is checked (UTF-8) only after that.
    rsv: u8,
}

impl Decoder {
    /// A decoder at the start of a connection's frame stream.
    #[cfg(test)]
    pub(crate) fn new(limits: DecodeLimits) -> Self {
        Self::with_extension_bits(limits, 0)
    }

    /// A decoder for a connection whose negotiated extension owns the
    /// reserved bits `rsv_allowed` (a subset of `0x70`) on the first frame of
    /// each data message.
    pub(crate) fn with_extension_bits(limits: DecodeLimits, rsv_allowed: u8) -> Self {
        Self {
            limits,
            state: State::Header,
            message: BytesMut::new(),
            kind: None,
            validated: 0,
            rsv_allowed: rsv_allowed & 0x70,
            rsv: 0,
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
            self.rsv = 0;
            self.message = BytesMut::new();
        }
        result
    }

    /// Bytes currently held for an incomplete data message (an incomplete
    /// control frame stays in the caller's buffer).
    pub(crate) fn buffered(&self) -> usize {
        self.message.len()
    }

    /// Between messages, at a frame boundary, holding nothing: a fresh
    /// decoder with the same settings would go on from here.
    pub(crate) fn is_at_rest(&self) -> bool {
        matches!(self.state, State::Header) && self.kind.is_none() && self.message.is_empty()
    }

    /// The memory the message buffer holds (its capacity: what the
    /// allocator gave, which grows ahead of what arrived).
    pub(crate) fn held(&self) -> usize {
        self.message.capacity()
    }

    /// Stops decoding and frees the message in progress (the session is
    /// being shed): later calls consume nothing and return `Ok(None)`.
    pub(crate) fn clear(&mut self) {
        self.state = State::Done;
        self.kind = None;
        self.validated = 0;
        self.rsv = 0;
        self.message = BytesMut::new();
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
        // §5.2: a reserved bit is set only with an extension that defines
        // it; an extension's bits only on the first frame of a data message
        // (RFC 7692 §6: never on continuation or control frames).
        let rsv = b0 & 0x70;
        let opcode = b0 & 0x0F;
        if rsv != 0
            && (rsv & !self.rsv_allowed != 0 || !matches!(opcode, opcode::TEXT | opcode::BINARY))
        {
            return Err(Fail::protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let kind = match opcode {
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
        // A control frame (at most 131 bytes) is taken whole or not at all:
        // until its last byte arrives it stays in the caller's buffer, so the
        // decoder needs no buffer of its own for it.
        if matches!(kind, FrameKind::Control(_)) && input.len() < mask_at + 4 + len {
            return Ok(None);
        }
        input.advance(mask_at + 4);
        if let FrameKind::Data { kind, starts: true } = kind {
            self.kind = Some(kind);
            self.rsv = rsv;
        }
        Ok(Some(Frame {
            kind,
            fin,
            mask: [m0, m1, m2, m3],
            len,
            read: 0,
        }))
    }

    /// Takes a control frame's payload, which `read_header` made sure is
    /// whole in `input`.
    fn control_payload(
        &mut self,
        op: ControlOp,
        frame: Frame,
        input: &mut BytesMut,
    ) -> Result<Progress, Fail> {
        // In bounds: `read_header` admitted this control frame only with its
        // whole payload (at most 125 bytes) in `input`.
        let mut payload = input.split_to(frame.len);
        unmask(&mut payload, frame.mask, 0);
        let event = match op {
            ControlOp::Close => Event::Close(close_payload(&payload)?),
            ControlOp::Ping => Event::Ping(payload.freeze()),
            ControlOp::Pong => Event::Pong(payload.freeze()),
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
            let rsv = std::mem::take(&mut self.rsv);
            return message_event(kind, rsv, payload.freeze()).map(|e| Progress::Complete(Some(e)));
        }
        // Reserve only for bytes that have arrived, never the announced length.
        let take = frame.remaining().min(input.len());
        // In bounds: `take <= input.len()`.
        let chunk = &mut input[..take];
        unmask(chunk, frame.mask, frame.read);
        self.message.extend_from_slice(chunk);
        input.advance(take);
        frame.read += take;
        // An extension's payload is checked once it has been transformed.
        if kind == DataKind::Text && self.rsv == 0 {
            self.check_utf8()?;
        }
        if frame.read < frame.len {
            return Ok(Progress::Partial(frame));
        }
        if !frame.fin {
            return Ok(Progress::Complete(None));
        }
        // §8.1: a code point cut off by the end of the message is invalid.
        if kind == DataKind::Text && self.rsv == 0 && self.validated != self.message.len() {
            return Err(INVALID_UTF8);
        }
        self.kind = None;
        self.validated = 0;
        let rsv = std::mem::take(&mut self.rsv);
        // `split` hands the bytes out and leaves only spare capacity behind,
        // which `shrink` releases.
        let payload = self.message.split().freeze();
        message_event(kind, rsv, payload).map(|e| Progress::Complete(Some(e)))
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

/// The event for a complete data message; one whose first frame carried an
/// extension's reserved bits goes to the extension untouched.
fn message_event(kind: DataKind, rsv: u8, payload: Bytes) -> Result<Event, Fail> {
    match kind {
        _ if rsv != 0 => Ok(Event::Extended {
            text: kind == DataKind::Text,
            rsv,
            payload,
        }),
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

/// XORs `buf` with the masking key (§5.3), `buf[0]` being payload byte
/// `offset`.
pub(super) fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
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
