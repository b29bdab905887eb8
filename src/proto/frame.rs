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

use bytes::Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;

use tungstenite::protocol::frame::coding::CloseCode;

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
    /// A complete data message whose first frame carried the reserved bits
    /// `rsv` of a negotiated extension: its payload (not yet UTF-8 checked,
    /// for text) is for the extension to transform.
    Extended {
        /// Whether it is a text message.
        text: bool,
        /// The reserved bits of its first frame (`0x40` is RSV1).
        rsv: u8,
        /// The payload as received, fragments joined.
        payload: Bytes,
    },
    /// A Ping and its payload (at most 125 bytes), to be answered by a Pong.
    Ping(Bytes),
    /// A Pong and its payload (at most 125 bytes).
    Pong(Bytes),
    /// A Close frame with its parsed payload; the decoder is done after it.
    Close(Option<CloseFrame>),
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
    pub(crate) const fn protocol(reason: &'static str) -> Self {
        Self {
            code: CloseCode::Protocol,
            reason,
        }
    }

    /// A frame or message over its limit (1009).
    pub(crate) const fn size(reason: &'static str) -> Self {
        Self {
            code: CloseCode::Size,
            reason,
        }
    }

    /// A payload that is not what its type promises (1007): invalid UTF-8,
    /// or data an extension cannot decode.
    pub(crate) const fn invalid(reason: &'static str) -> Self {
        Self {
            code: CloseCode::Invalid,
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
const INVALID_UTF8: Fail = Fail::invalid("invalid utf-8");

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub(crate) use decode::Decoder;
#[cfg(any(fuzzing, test))]
pub(crate) use decode::close_payload;
pub(crate) use encode::{encode, header};
