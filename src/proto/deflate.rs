//! permessage-deflate (RFC 7692): the settings a vhost compresses with, the
//! negotiation (§7), and the extension that compresses and inflates each data
//! message, sans-IO.
//!
//! # Modes
//!
//! - **Shared**: no context takeover either way (the response always carries
//!   `server_no_context_takeover; client_no_context_takeover`), so each
//!   message is compressed and inflated on its own, by one compressor and one
//!   decompressor per thread, reset per message. A session holds nothing of
//!   its own for compression: an idle compressed session costs what an
//!   uncompressed one does. A message sent to many sessions (a publish, a
//!   broadcast) is compressed once and the same bytes go to every session
//!   that agreed on the same parameters (see *Compressed once* below).
//! - **Dedicated**: context takeover with the vhost's `window_bits`, which
//!   compresses better (each message may refer to the ones before it) at the
//!   price of a compressor and a decompressor per session, allocated on the
//!   session's first compressed message each way
//!   ([`Compression::dedicated_memory`] says how much).
//!
//! Either way, messages shorter than the threshold go out uncompressed, as do
//! control frames (RFC 7692 §6.1), and what comes in is limited by what it
//! inflates to: inflation stops the moment the output would pass
//! `max_message_size` (1009), and a stream zlib cannot decode is 1007 with
//! zlib's reason.
//!
//! # Negotiation (RFC 7692 §7)
//!
//! The first of the client's `permessage-deflate` offers whose parameters are
//! well formed is accepted (every well-formed offer can be honoured); an offer
//! with an unknown, duplicated or malformed parameter is declined, and the
//! next one is tried. What the response says:
//!
//! | parameter | when |
//! |---|---|
//! | `server_no_context_takeover` | the client asked for it; shared mode; or the server's window is 8 bits (below) |
//! | `client_no_context_takeover` | the client offered it; shared mode; or dedicated mode with `window_bits` below 15 and a client that did not offer `client_max_window_bits` (its window cannot be limited, so its context is not kept) |
//! | `server_max_window_bits=N` | the client offered it (N is the smaller of its value and ours), or dedicated mode with `window_bits` below 15 |
//! | `client_max_window_bits=N` | the client offered it, with a value or a window below 15 to ask for (dedicated mode) |
//!
//! **An 8-bit server window** (`server_max_window_bits=8`, Autobahn 13.3 and
//! 13.5) is honoured, not declined: zlib's raw deflate has no 256-byte
//! window, so such a session compresses without context takeover and only
//! messages of at most 256 bytes, whose back-references cannot reach further
//! than 255 bytes whatever the compressor's window; longer messages go out
//! uncompressed, which RFC 7692 allows for any message.
//!
//! # Compressed once
//!
//! Without context takeover on our side, a message's compressed bytes depend
//! only on its payload and the compressor's parameters. Each negotiator (one
//! per vhost) keeps a small ring of the last messages it compressed, keyed by
//! the identity of the payload's shared buffer (the `Bytes` that a publish or
//! a broadcast clones into every subscriber's queue) and the parameters; the
//! first session to send such a message compresses it, every other one
//! reuses the bytes. The ring holds a reference to each payload it keys on,
//! so an address cannot be reused by another payload while it is there.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::extension::{Extension, ExtensionError, ExtensionNegotiator, ExtensionOffer};
use crate::error::ConfigError;

mod codec;
mod negotiate;
#[cfg(test)]
mod tests;

use codec::{Inflater, Params, SharedCache};
pub(crate) use negotiate::{Agreed, Offer, agree};

/// How a vhost compresses messages with permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CompressionMode {
    /// permessage-deflate is declined (the default).
    #[default]
    Off,
    /// No context takeover: one compressor and one decompressor per thread,
    /// nothing per session; a broadcast is compressed once.
    Shared,
    /// Context takeover with the configured window: the best ratio, at the
    /// memory of a compressor and a decompressor per session.
    Dedicated,
}

impl CompressionMode {
    /// The mode's name in the TOML (`"off"`, `"shared"`, `"dedicated"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Shared => "shared",
            Self::Dedicated => "dedicated",
        }
    }
}

/// A vhost's permessage-deflate settings (RFC 7692), built with
/// [`Compression::builder`] and given to
/// [`VhostBuilder::compression`](crate::VhostBuilder::compression).
///
/// # Examples
///
/// ```
/// use wsgate::{Compression, CompressionMode};
///
/// let c = Compression::builder(CompressionMode::Dedicated)
///     .window_bits(10)
///     .threshold(128)
///     .build()?;
/// assert_eq!(c.window_bits(), 10);
/// # Ok::<(), wsgate::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compression {
    mode: CompressionMode,
    window_bits: u8,
    mem_level: u8,
    level: u8,
    threshold: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Self::off()
    }
}

impl Compression {
    /// Starts a builder for `mode` with the defaults of every other setting
    /// (the level's depends on the mode: see [`CompressionBuilder::level`]).
    pub fn builder(mode: CompressionMode) -> CompressionBuilder {
        CompressionBuilder {
            c: Self {
                mode,
                level: if mode == CompressionMode::Dedicated {
                    1
                } else {
                    6
                },
                ..Self::off()
            },
        }
    }

    /// No compression: permessage-deflate offers are declined.
    pub fn off() -> Self {
        Self {
            mode: CompressionMode::Off,
            window_bits: 15,
            mem_level: 8,
            level: 6,
            threshold: 64,
        }
    }

    /// The mode.
    pub fn mode(&self) -> CompressionMode {
        self.mode
    }

    /// The server's LZ77 window (2^bits bytes) in dedicated mode.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// zlib's `memLevel`: the compressor's symbol buffer (4 × 2^(level+6)
    /// bytes).
    pub fn mem_level(&self) -> u8 {
        self.mem_level
    }

    /// The compression level, 0 (stored) to 9 (best).
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Messages shorter than this many bytes are sent uncompressed.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The bytes a dedicated-mode session holds once it has compressed a
    /// message and inflated one (before that, nothing): the compressor's
    /// window (2 × 2^window_bits), its chain (2 × 2^window_bits), its hash
    /// table (128 KiB in zlib-rs, whatever the window) and its symbol buffer
    /// (4 × 2^(mem_level+6)); the decompressor's window (2^window_bits, at
    /// least 2^9) and state (about 7 KiB). 365 KiB at the defaults (window
    /// 15, memLevel 8), 210 KiB at window 10, 64 KiB less at memLevel 1.
    /// Measured RSS per session after one message each way: 334 KiB and
    /// 210 KiB (docs/BENCHMARKS.md). Shared mode: 0.
    pub fn dedicated_memory(&self) -> usize {
        if self.mode != CompressionMode::Dedicated {
            return 0;
        }
        codec::deflate_memory(self.window_bits, self.mem_level)
            + codec::inflate_memory(self.window_bits)
    }
}

/// Builds a [`Compression`]; [`build`](Self::build) checks the ranges.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct CompressionBuilder {
    c: Compression,
}

impl CompressionBuilder {
    /// The server's window in dedicated mode, 9 to 15 (the window is
    /// 2^bits bytes; the compressor holds four times that). Shared mode
    /// compresses each message on its own and uses 15 unless the client
    /// asks for less. Default: 15.
    pub fn window_bits(mut self, bits: u8) -> Self {
        self.c.window_bits = bits;
        self
    }

    /// zlib's `memLevel`, 1 to 9: the size of the compressor's symbol
    /// buffer (4 × 2^(mem_level+6) bytes: 64 KiB at 8). Default: 8.
    pub fn mem_level(mut self, level: u8) -> Self {
        self.c.mem_level = level;
        self
    }

    /// The compression level, 0 to 9 (zlib's: 1 fastest, 9 best, 0 stored
    /// blocks). Default: 6 (zlib's default) in shared mode; 1 in dedicated
    /// mode, where the context kept between messages gives the ratio: on 1
    /// KiB JSON messages (docs/BENCHMARKS.md) dedicated mode compresses 3.1
    /// times at level 1 for 25 µs of server CPU per echoed message, and 5.3
    /// times at level 6 for 126 µs (shared mode: 2.9 times at level 6, 35 µs).
    pub fn level(mut self, level: u8) -> Self {
        self.c.level = level;
        self
    }

    /// Messages shorter than this many bytes go out uncompressed (the
    /// frame header and deflate's own overhead would eat the gain).
    /// Default: 64.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.c.threshold = bytes;
        self
    }

    /// The settings.
    ///
    /// # Errors
    ///
    /// `compression.window_bits` outside 9..=15, `compression.mem_level`
    /// outside 1..=9, `compression.level` above 9.
    pub fn build(self) -> Result<Compression, ConfigError> {
        let c = self.c;
        if !(9..=15).contains(&c.window_bits) {
            return Err(ConfigError::new(
                "compression.window_bits",
                format!("must be between 9 and 15, not {}", c.window_bits),
            ));
        }
        if !(1..=9).contains(&c.mem_level) {
            return Err(ConfigError::new(
                "compression.mem_level",
                format!("must be between 1 and 9, not {}", c.mem_level),
            ));
        }
        if c.level > 9 {
            return Err(ConfigError::new(
                "compression.level",
                format!("must be between 0 and 9, not {}", c.level),
            ));
        }
        Ok(c)
    }
}

/// The permessage-deflate negotiator: what
/// [`VhostBuilder::compression`](crate::VhostBuilder::compression) offers.
/// Usable on its own with
/// [`VhostBuilder::extension`](crate::VhostBuilder::extension) (to put it
/// after or before another extension).
#[derive(Clone)]
pub struct PermessageDeflate {
    settings: Compression,
    /// Compressed forms of the last messages sent without context takeover.
    cache: Arc<SharedCache>,
}

impl PermessageDeflate {
    /// A negotiator with these settings (mode `Off` declines every offer).
    pub fn new(settings: Compression) -> Self {
        Self {
            settings,
            cache: Arc::new(SharedCache::default()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Compression {
        &self.settings
    }

    /// The extension for a session that agreed on `agreed`.
    pub(crate) fn extension(&self, agreed: Agreed) -> Deflate {
        Deflate {
            agreed,
            level: self.settings.level,
            mem_level: self.settings.mem_level,
            threshold: self.settings.threshold,
            cache: self.cache.clone(),
            compressor: None,
            inflater: None,
        }
    }
}

impl fmt::Debug for PermessageDeflate {
    // The settings only: this is what a reconfiguration compares.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermessageDeflate")
            .field("settings", &self.settings)
            .finish()
    }
}

impl ExtensionNegotiator for PermessageDeflate {
    fn name(&self) -> &str {
        "permessage-deflate"
    }

    fn accept(&self, offers: &[ExtensionOffer]) -> Option<(Box<dyn Extension>, String)> {
        if self.settings.mode == CompressionMode::Off {
            return None;
        }
        let offer = offers.iter().find_map(Offer::parse)?;
        let (agreed, response) = agree(&self.settings, &offer);
        Some((Box::new(self.extension(agreed)), response))
    }
}

/// permessage-deflate on one session.
pub(crate) struct Deflate {
    agreed: Agreed,
    level: u8,
    mem_level: u8,
    threshold: usize,
    cache: Arc<SharedCache>,
    /// Ours, with context takeover (dedicated mode): allocated on the first
    /// compressed message.
    compressor: Option<codec::Compressor>,
    /// Ours, with the client's context takeover: allocated on the first
    /// compressed message received.
    inflater: Option<Inflater>,
}

impl Deflate {
    /// The parameters of our compressor for a message of `len` bytes
    /// without context takeover: a message no longer than the agreed window
    /// cannot refer further back than the window, so any window does and
    /// the shared 15-bit one is used (one compressor per thread, and more
    /// sessions share a cached form).
    fn shared_params(&self, len: usize) -> Params {
        let window = if len <= 1 << self.agreed.server_window {
            15
        } else {
            self.agreed.server_window
        };
        Params {
            window,
            level: self.level,
            mem_level: self.mem_level,
        }
    }
}

impl Extension for Deflate {
    fn rsv(&self) -> u8 {
        0x40
    }

    fn decode(
        &mut self,
        rsv: u8,
        payload: Bytes,
        max_size: usize,
    ) -> Result<Bytes, ExtensionError> {
        if rsv != 0x40 {
            // The frame layer lets only RSV1 through; anything else is not ours.
            return Err(ExtensionError::Invalid("unexpected reserved bits"));
        }
        if !self.agreed.client_takeover {
            return codec::inflate_shared(&payload, max_size).map(Bytes::from);
        }
        let window = self.agreed.client_window;
        let inflater = self.inflater.get_or_insert_with(|| Inflater::new(window));
        let (out, ended) = inflater.inflate(&payload, max_size)?;
        if ended {
            // The client ended its stream: its next message starts a new
            // one, with the same window, in a fresh decompressor (zlib-rs's
            // reset would widen the window to 15 bits). Dropped now, so the
            // memory budget sees the window go.
            self.inflater = None;
        }
        Ok(Bytes::from(out))
    }

    fn encode(&mut self, payload: &Bytes) -> Option<Bytes> {
        if payload.len() < self.threshold {
            return None;
        }
        if !self.agreed.server_takeover {
            // An 8-bit window: only what a 256-byte window covers anyway.
            if self.agreed.server_window < 9 && payload.len() > 1 << self.agreed.server_window {
                return None;
            }
            let params = self.shared_params(payload.len());
            return self.cache.compress(payload, params);
        }
        let params = Params {
            window: self.agreed.server_window,
            level: self.level,
            mem_level: self.mem_level,
        };
        let compressor = self
            .compressor
            .get_or_insert_with(|| codec::Compressor::new(params));
        match compressor.compress(payload) {
            Some(out) => Some(out),
            None => {
                // The compressor failed mid-message: a fresh one refers to
                // nothing the peer has not seen, so dropping it is safe.
                self.compressor = None;
                None
            }
        }
    }

    fn memory(&self) -> usize {
        let deflate = self.compressor.as_ref().map_or(0, |_| {
            codec::deflate_memory(self.agreed.server_window, self.mem_level)
        });
        let inflate = self
            .inflater
            .as_ref()
            .map_or(0, |_| codec::inflate_memory(self.agreed.client_window));
        deflate + inflate
    }
}

impl fmt::Debug for Deflate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deflate")
            .field("agreed", &self.agreed)
            .field("memory", &self.memory())
            .finish_non_exhaustive()
    }
}

/// A client's side of the codec, for the tests and the fuzz targets.
#[cfg(any(test, fuzzing))]
pub(crate) mod testing {
    use super::codec::{Compressor, Inflater, Params};

    /// A compressor with context takeover and a window of 2^`window`
    /// bytes: each call compresses one message, tail stripped.
    pub(crate) fn compressor(window: u8) -> impl FnMut(&[u8]) -> Vec<u8> {
        let mut c = Compressor::new(Params {
            window,
            level: 6,
            mem_level: 8,
        });
        move |data| c.compress(data).map(|b| b.to_vec()).unwrap_or_default()
    }

    /// A decompressor with context takeover and a window of 2^`window`
    /// bytes: each call inflates one message (tail appended).
    pub(crate) fn inflater(window: u8) -> impl FnMut(&[u8]) -> Option<Vec<u8>> {
        let mut i = Inflater::with_window(window);
        move |data| i.inflate(data, usize::MAX).ok().map(|(out, _)| out)
    }

    /// Inflates one message on its own.
    #[cfg(test)]
    pub(crate) fn inflate(data: &[u8]) -> Vec<u8> {
        inflater(15)(data).unwrap_or_default()
    }
}
