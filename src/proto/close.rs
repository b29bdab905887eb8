//! How sessions end: [`CloseReason`] and [`ClosedBy`] (what the application
//! is told), and the Close frames we send (RFC 6455 §5.5.1, §7).
//!
//! A normal close is an outcome, never an error. The one place where a
//! peer's broken stream becomes a close code is [`Fail`](super::frame::Fail)
//! (1002, 1007, 1009); an extension's failure maps through
//! [`ExtensionError`](super::extension::ExtensionError) (1007, 1009).

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

/// The largest reason a Close frame can carry: 125 bytes of payload minus
/// the two of the code (RFC 6455 §5.5).
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// Which side started the close, or that nobody did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClosedBy {
    /// The server (the application, a limit, or teardown) sent Close first.
    Server,
    /// The client sent Close first.
    Client,
    /// The connection ended without a close handshake (reset, EOF, forced).
    Transport,
}

/// How a session ended. A normal close is an outcome, never an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReason {
    /// The close code that went (or would have gone) on the wire; 1006 when
    /// the connection ended without a close handshake, 1005 when the peer's
    /// Close carried no code.
    pub code: CloseCode,
    /// The reason text from the Close frame.
    pub reason: String,
    /// Who started the close.
    pub closed_by: ClosedBy,
    /// Whether the RFC 6455 close handshake completed in both directions.
    pub clean: bool,
}

impl CloseReason {
    /// An end without a close handshake (1006), with why.
    pub(crate) fn abnormal(reason: &str) -> Self {
        Self {
            code: CloseCode::Abnormal,
            reason: reason.to_owned(),
            closed_by: ClosedBy::Transport,
            clean: false,
        }
    }

    /// The peer's Close (or its absence of a code: 1005).
    pub(crate) fn by_peer(frame: Option<&CloseFrame>, clean: bool) -> Self {
        match frame {
            Some(f) => Self {
                code: f.code,
                reason: f.reason.to_string(),
                closed_by: ClosedBy::Client,
                clean,
            },
            None => Self {
                code: CloseCode::Status,
                reason: String::new(),
                closed_by: ClosedBy::Client,
                clean,
            },
        }
    }

    /// Our Close, answered (`clean`) or not.
    pub(crate) fn by_us(frame: &CloseFrame, clean: bool) -> Self {
        Self {
            code: frame.code,
            reason: frame.reason.to_string(),
            closed_by: ClosedBy::Server,
            clean,
        }
    }
}

/// Builds a Close frame, truncating the reason at a character boundary to
/// what fits in a control frame.
pub(crate) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    let end = reason.floor_char_boundary(MAX_CLOSE_REASON);
    CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        let f = close_frame(CloseCode::Normal, &long);
        assert!(f.reason.len() <= MAX_CLOSE_REASON);
        assert_eq!(f.reason.len() % 2, 0);
        assert_eq!(close_frame(CloseCode::Away, "bye").reason.as_str(), "bye");
    }
}
