//! The per-message extension point (RFC 6455 §9): what a negotiated
//! extension such as permessage-deflate (RFC 7692) plugs into.
//!
//! An extension is agreed on in the handshake and then owns some of the
//! reserved bits (RSV1 for permessage-deflate) of the *first* frame of each
//! data message it transformed. The frame layer lets exactly those bits
//! through on exactly those frames and hands such a message, fragments
//! joined, to [`Extension::decode`]; outbound, [`Extension::encode`] may
//! transform a message's payload and the frame layer sets the bits. Control
//! frames never pass through an extension.
//!
//! Without an extension nothing here runs: the session checks one `Option`
//! per message, and every reserved bit stays a protocol error (1002).
//!
//! A vhost offers extensions through [`ExtensionNegotiator`]s; at most one
//! extension is negotiated per session (the first negotiator, in the
//! vhost's order, that accepts one of the client's offers), so two
//! extensions can never claim the same bit.

use std::fmt;

use bytes::Bytes;

use super::http::{Request, is_token_byte};

/// One negotiated per-message extension on one session.
///
/// It runs on the session's thread, inside the session's poll, like a
/// protocol callback: it must not block, and what it allocates should be
/// bounded (`decode` receives the most it may produce).
pub trait Extension: Send + 'static {
    /// The reserved bits this extension sets on the first frame of a message
    /// it transformed: `0x40` is RSV1, `0x20` RSV2, `0x10` RSV3.
    fn rsv(&self) -> u8;

    /// Restores a received message whose first frame carried the reserved
    /// bits `rsv` (fragments already joined): at most `max_size` bytes out.
    ///
    /// # Errors
    ///
    /// [`ExtensionError::TooBig`] the moment the output would pass
    /// `max_size` (the session closes with 1009);
    /// [`ExtensionError::Invalid`] for a payload the extension cannot
    /// decode (1007).
    fn decode(&mut self, rsv: u8, payload: Bytes, max_size: usize)
    -> Result<Bytes, ExtensionError>;

    /// Transforms the payload of an outbound text or binary message; `None`
    /// sends it as it is, without the reserved bits. The payload is the
    /// message's shared buffer: a message sent to many sessions is the same
    /// `Bytes` in each, which lets an extension transform it once.
    fn encode(&mut self, payload: &Bytes) -> Option<Bytes>;

    /// Bytes this extension holds for its session now (compression windows
    /// and buffers), which count against the context's memory budget.
    /// Default: 0.
    fn memory(&self) -> usize {
        0
    }
}

/// Agrees on an extension with a client, in the handshake.
///
/// # Examples
///
/// A negotiator that accepts a hypothetical `x-identity` extension whatever
/// its parameters:
///
/// ```
/// use bytes::Bytes;
/// use wsgate::extension::{Extension, ExtensionError, ExtensionNegotiator, ExtensionOffer};
///
/// struct Identity;
///
/// impl Extension for Identity {
///     fn rsv(&self) -> u8 {
///         0x40
///     }
///     fn decode(&mut self, _rsv: u8, payload: Bytes, max: usize) -> Result<Bytes, ExtensionError> {
///         if payload.len() > max { Err(ExtensionError::TooBig) } else { Ok(payload) }
///     }
///     fn encode(&mut self, _payload: &Bytes) -> Option<Bytes> {
///         None
///     }
/// }
///
/// #[derive(Debug)]
/// struct IdentityNegotiator;
///
/// impl ExtensionNegotiator for IdentityNegotiator {
///     fn name(&self) -> &str {
///         "x-identity"
///     }
///     fn accept(&self, offers: &[ExtensionOffer]) -> Option<(Box<dyn Extension>, String)> {
///         offers.first().map(|_| (Box::new(Identity) as Box<dyn Extension>, "x-identity".to_owned()))
///     }
/// }
/// ```
pub trait ExtensionNegotiator: fmt::Debug + Send + Sync + 'static {
    /// The extension token the client offers (`permessage-deflate`).
    fn name(&self) -> &str;

    /// Given the client's offers of this extension, in the client's order,
    /// accepts at most one: the extension for the session, and the value of
    /// the `Sec-WebSocket-Extensions` response header (the token and the
    /// parameters the server agrees to). `None` declines them all, and the
    /// session runs without it. Never fails the handshake.
    fn accept(&self, offers: &[ExtensionOffer]) -> Option<(Box<dyn Extension>, String)>;
}

/// Why an extension could not restore a message; each maps to one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtensionError {
    /// The restored message would pass the session's `max_message_size`
    /// (1009).
    TooBig,
    /// The payload is not valid for the extension (1007), with a short
    /// lowercase reason.
    Invalid(&'static str),
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooBig => f.write_str("message too big"),
            Self::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for ExtensionError {}

/// One extension offer from a client's `Sec-WebSocket-Extensions` header:
/// its token and its parameters, in order (RFC 6455 §9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    name: String,
    params: Vec<(String, Option<String>)>,
}

impl ExtensionOffer {
    /// The extension token.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parameters, in the order sent: a name and, if given, its value
    /// (quotes removed).
    pub fn params(&self) -> &[(String, Option<String>)] {
        &self.params
    }
}

/// The most offers taken from one request: a browser sends one or two; the
/// rest of a longer list is ignored rather than parsed.
const MAX_OFFERS: usize = 16;

/// The client's extension offers, in order. An offer that does not follow
/// the grammar of RFC 6455 §9.1 is skipped (the server declines what it
/// cannot read; it never fails the handshake for it).
pub(crate) fn offers(request: &Request) -> Vec<ExtensionOffer> {
    let mut out = Vec::new();
    for value in request.values("sec-websocket-extensions") {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in split_unquoted(value, ',') {
            if out.len() == MAX_OFFERS {
                return out;
            }
            if let Some(o) = parse_offer(offer) {
                out.push(o);
            }
        }
    }
    out
}

/// Parses `token *( ";" param )`, `param = token [ "=" (token | quoted) ]`.
fn parse_offer(text: &str) -> Option<ExtensionOffer> {
    let mut parts = split_unquoted(text, ';').into_iter();
    let name = parts.next()?.trim();
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        if !is_token(k) {
            return None;
        }
        let v = match v {
            None => None,
            Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
                let inner = &v[1..v.len() - 1];
                // §9.1: a quoted value must still be a token.
                if !is_token(inner) {
                    return None;
                }
                Some(inner.to_owned())
            }
            Some(v) if is_token(v) => Some(v.to_owned()),
            Some(_) => return None,
        };
        params.push((k.to_ascii_lowercase(), v));
    }
    Some(ExtensionOffer {
        name: name.to_ascii_lowercase(),
        params,
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers_of(values: &[&str]) -> Vec<ExtensionOffer> {
        let headers: Vec<(&str, &str)> = values
            .iter()
            .map(|v| ("Sec-WebSocket-Extensions", *v))
            .collect();
        let peer = "127.0.0.1:1".parse().unwrap();
        offers(&Request::synthetic("GET", "/", &headers, peer))
    }

    #[test]
    fn a_browser_offer_parses_in_order_with_its_parameters() {
        let o = offers_of(&["permessage-deflate; client_max_window_bits, x-foo"]);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].name(), "permessage-deflate");
        assert_eq!(
            o[0].params(),
            &[("client_max_window_bits".to_owned(), None)]
        );
        assert_eq!(o[1].name(), "x-foo");
        assert!(o[1].params().is_empty());
    }

    #[test]
    fn values_may_be_quoted_tokens_and_headers_add_up() {
        let o = offers_of(&[
            "permessage-deflate; server_max_window_bits=\"10\"",
            "permessage-deflate;client_no_context_takeover",
        ]);
        assert_eq!(o.len(), 2);
        assert_eq!(
            o[0].params(),
            &[("server_max_window_bits".to_owned(), Some("10".to_owned()))]
        );
        assert_eq!(
            o[1].params(),
            &[("client_no_context_takeover".to_owned(), None)]
        );
    }

    #[test]
    fn malformed_offers_are_skipped_not_fatal() {
        let o = offers_of(&["bad token, ok; a=\"b c\", ; =x, fine; k=v"]);
        let names: Vec<&str> = o.iter().map(ExtensionOffer::name).collect();
        assert_eq!(names, ["fine"]);
        assert_eq!(o[0].params(), &[("k".to_owned(), Some("v".to_owned()))]);
    }

    #[test]
    fn a_long_list_is_cut_at_the_bound() {
        let list = vec!["x"; 100].join(",");
        assert_eq!(offers_of(&[&list]).len(), MAX_OFFERS);
    }
}
