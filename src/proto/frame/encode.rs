//! The encoder: unmasked server frames, appended to an output buffer.

use bytes::BytesMut;
use tungstenite::Message;

use super::{MAX_CONTROL_PAYLOAD, opcode};

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
