//! The negotiation of RFC 7692 §7: an offer's parameters parsed (a bad one
//! declines the offer), then what the server agrees to and says.

use std::fmt::Write as _;

use super::{Compression, CompressionMode};
use crate::proto::extension::ExtensionOffer;

/// A well-formed permessage-deflate offer (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) server_no_context_takeover: bool,
    pub(crate) client_no_context_takeover: bool,
    /// `server_max_window_bits=N`: the most the client can inflate with.
    pub(crate) server_max_window_bits: Option<u8>,
    /// `client_max_window_bits[=N]`: the client can limit its window (to N
    /// at most, if given).
    pub(crate) client_max_window_bits: Option<Option<u8>>,
}

impl Offer {
    /// Parses an offer's parameters; `None` declines it: an unknown
    /// parameter, one given twice, a value where none is allowed or none
    /// where one is required, or a window outside 8..=15 (§7.1:
    /// "a server MUST decline an extension negotiation offer" with any of
    /// these).
    pub(crate) fn parse(offer: &ExtensionOffer) -> Option<Self> {
        if offer.name() != "permessage-deflate" {
            return None;
        }
        let mut o = Self::default();
        let mut seen = [false; 4];
        for (name, value) in offer.params() {
            let (i, ok) = match name.as_str() {
                "server_no_context_takeover" => {
                    o.server_no_context_takeover = true;
                    (0, value.is_none())
                }
                "client_no_context_takeover" => {
                    o.client_no_context_takeover = true;
                    (1, value.is_none())
                }
                "server_max_window_bits" => {
                    o.server_max_window_bits = value.as_deref().and_then(window_bits);
                    (2, o.server_max_window_bits.is_some())
                }
                "client_max_window_bits" => match value.as_deref() {
                    None => {
                        o.client_max_window_bits = Some(None);
                        (3, true)
                    }
                    Some(v) => {
                        let bits = window_bits(v);
                        o.client_max_window_bits = Some(bits);
                        (3, bits.is_some())
                    }
                },
                _ => return None,
            };
            if !ok || std::mem::replace(&mut seen[i], true) {
                return None;
            }
        }
        Some(o)
    }
}

/// A window size as RFC 7692 §7.1.2 writes it: 8 to 15 in decimal, no
/// leading zero, no sign.
fn window_bits(v: &str) -> Option<u8> {
    match v {
        "8" => Some(8),
        "9" => Some(9),
        "10" => Some(10),
        "11" => Some(11),
        "12" => Some(12),
        "13" => Some(13),
        "14" => Some(14),
        "15" => Some(15),
        _ => None,
    }
}

/// What a session agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// We keep our compression context between messages.
    pub(crate) server_takeover: bool,
    /// The client keeps its context (our decompressor is per session).
    pub(crate) client_takeover: bool,
    /// The most our back-references may reach: 2^bits bytes (8..=15).
    pub(crate) server_window: u8,
    /// The client's window (what a per-session decompressor needs).
    pub(crate) client_window: u8,
}

/// The parameters the server agrees to for a well-formed `offer`, and the
/// response header's value (the table in the module documentation).
pub(crate) fn agree(settings: &Compression, offer: &Offer) -> (Agreed, String) {
    let shared = settings.mode != CompressionMode::Dedicated;
    let ours = if shared { 15 } else { settings.window_bits };
    let server_window = offer.server_max_window_bits.map_or(ours, |n| n.min(ours));
    // Without a 256-byte window in zlib, an 8-bit window is honoured by
    // compressing each message on its own (module documentation).
    let server_takeover = !shared && !offer.server_no_context_takeover && server_window > 8;
    let say_server_window = offer.server_max_window_bits.is_some() || server_window < 15;

    let (client_takeover, client_window, say_client_window) =
        if shared || offer.client_no_context_takeover {
            (false, 15, None)
        } else {
            match offer.client_max_window_bits {
                // The client can limit its window: to ours, or its own if less.
                Some(limit) => {
                    let w = limit.map_or(ours, |n| n.min(ours));
                    let say = (limit.is_some() || w < 15).then_some(w);
                    (true, w, say)
                }
                // It cannot: with a window below 15 to keep, keep none of its
                // context instead (our decompressor is then the thread's).
                None if ours < 15 => (false, 15, None),
                None => (true, 15, None),
            }
        };

    let mut response = String::from("permessage-deflate");
    if !server_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if !client_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if say_server_window {
        let _ = write!(response, "; server_max_window_bits={server_window}");
    }
    if let Some(w) = say_client_window {
        let _ = write!(response, "; client_max_window_bits={w}");
    }
    (
        Agreed {
            server_takeover,
            client_takeover,
            server_window,
            client_window,
        },
        response,
    )
}
