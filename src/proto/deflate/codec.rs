//! The compressor and the decompressor (zlib-rs, raw deflate), the ones each
//! thread shares between its sessions, and the cache that compresses a
//! message sent to many sessions once.
//!
//! zlib-rs rather than flate2's default backend: miniz_oxide ignores window
//! bits, and flate2's API passes no `memLevel`; zlib-rs is the pure-Rust zlib
//! that flate2 would run with its `zlib-rs` feature, called through its own
//! safe API.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use zlib_rs::{DeflateConfig, DeflateFlush, InflateFlush, Status};

use crate::common::lock;
use crate::proto::extension::ExtensionError;

/// What RFC 7692 §7.2.1 strips from the end of each compressed message and
/// §7.2.2 appends before inflating it: the empty stored block of a sync
/// flush.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compressor's parameters: what its output depends on, beside the
/// input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    /// 9..=15 (zlib's raw deflate has no 8).
    pub(crate) window: u8,
    pub(crate) level: u8,
    pub(crate) mem_level: u8,
}

/// zlib-rs's hash table: 2^16 two-byte heads, whatever the window.
const HASH_TABLE: usize = 2 << 16;

/// The bytes a compressor with these parameters allocates (zlib-rs 0.6:
/// window, chain, hash table, symbol buffer, and the state).
pub(crate) fn deflate_memory(window: u8, mem_level: u8) -> usize {
    let w = 1usize << window.max(9);
    2 * w + 2 * w + HASH_TABLE + 4 * (1usize << (mem_level + 6)) + 6 * 1024
}

/// The bytes a decompressor with this window allocates (the window and the
/// state with its code tables).
pub(crate) fn inflate_memory(window: u8) -> usize {
    (1usize << window.max(9)) + 7 * 1024
}

/// A raw-deflate compressor.
pub(crate) struct Compressor {
    inner: Box<zlib_rs::Deflate>,
}

impl Compressor {
    pub(crate) fn new(p: Params) -> Self {
        let config = DeflateConfig {
            level: i32::from(p.level.min(9)),
            // Raw deflate (no zlib header): a negative window.
            window_bits: -i32::from(p.window.clamp(9, 15)),
            mem_level: i32::from(p.mem_level.clamp(1, 9)),
            ..DeflateConfig::default()
        };
        // The parameters are clamped to what zlib-rs accepts, so its
        // constructor's check holds.
        Self {
            inner: Box::new(zlib_rs::Deflate::new_with_config(config)),
        }
    }

    /// Compresses one message behind whatever the stream holds (context
    /// takeover), ending with a sync flush whose tail is stripped; `None` if
    /// the compressor failed (it must then not be used again).
    pub(crate) fn compress(&mut self, input: &[u8]) -> Option<Bytes> {
        let d = &mut self.inner;
        let (in0, out0) = (d.total_in(), d.total_out());
        // A message that does not compress grows by at most 5 bytes per
        // 16 KiB stored block, plus the flush.
        let mut out = vec![0u8; input.len() + input.len() / 1024 + 64];
        loop {
            let consumed = usize::try_from(d.total_in() - in0).ok()?;
            let written = usize::try_from(d.total_out() - out0).ok()?;
            if written == out.len() {
                out.resize(out.len() * 2, 0);
            }
            d.compress(
                input.get(consumed..)?,
                out.get_mut(written..)?,
                DeflateFlush::SyncFlush,
            )
            .ok()?;
            let consumed = usize::try_from(d.total_in() - in0).ok()?;
            let written = usize::try_from(d.total_out() - out0).ok()?;
            // The flush is complete once all input is taken and zlib left
            // room in the output (zlib's own rule for Z_SYNC_FLUSH).
            if consumed == input.len() && written < out.len() {
                out.truncate(written);
                break;
            }
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        // The buffer was sized for the input: without this a queued frame
        // would hold about its uncompressed size while the queue and the
        // memory budget count its compressed length (and `Bytes` takes a
        // Vec whose length is its capacity without a separate header).
        out.shrink_to_fit();
        Some(Bytes::from(out))
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// A raw-deflate decompressor.
pub(crate) struct Inflater {
    inner: Box<zlib_rs::Inflate>,
}

impl Inflater {
    pub(crate) fn new(window: u8) -> Self {
        Self::with_window(window.clamp(9, 15))
    }

    /// A decompressor with exactly this window (8..=15), as a strict client
    /// would have.
    pub(crate) fn with_window(window: u8) -> Self {
        Self {
            inner: Box::new(zlib_rs::Inflate::new(false, window.clamp(8, 15))),
        }
    }

    /// Forgets the stream (the window is kept allocated).
    pub(crate) fn reset(&mut self) {
        self.inner.reset(false);
    }

    /// Inflates one message's payload with the tail appended, producing at
    /// most `max` bytes: [`ExtensionError::TooBig`] the moment one more would
    /// come out, [`ExtensionError::Invalid`] with zlib's reason for a stream
    /// it cannot decode. Also says whether the client ended its stream (a
    /// final block), after which the next message starts a new one.
    pub(crate) fn inflate(
        &mut self,
        payload: &[u8],
        max: usize,
    ) -> Result<(Vec<u8>, bool), ExtensionError> {
        let d = &mut self.inner;
        // Grown as output comes, never past max + 1: the extra byte is how
        // "more than max" is seen without producing it all.
        let cap = max.saturating_add(1);
        let mut out = vec![
            0u8;
            payload
                .len()
                .saturating_mul(4)
                .clamp(256, 64 * 1024)
                .min(cap)
        ];
        let mut written = 0;
        for (part, input) in [payload, &TAIL[..]].into_iter().enumerate() {
            let mut consumed = 0;
            loop {
                if written == out.len() {
                    if out.len() >= cap {
                        return Err(ExtensionError::TooBig);
                    }
                    let grown = out.len().saturating_mul(2).min(cap);
                    out.resize(grown, 0);
                }
                let (in0, out0) = (d.total_in(), d.total_out());
                let status = d
                    .decompress(
                        &input[consumed..],
                        &mut out[written..],
                        InflateFlush::SyncFlush,
                    )
                    .map_err(|e| {
                        let fallback = match e {
                            zlib_rs::InflateError::NeedDict { .. } => {
                                "compressed data needs a dictionary"
                            }
                            _ => "invalid compressed data",
                        };
                        ExtensionError::Invalid(d.error_message().unwrap_or(fallback))
                    })?;
                let took = usize::try_from(d.total_in() - in0).unwrap_or(usize::MAX);
                let gave = usize::try_from(d.total_out() - out0).unwrap_or(usize::MAX);
                consumed = consumed.saturating_add(took).min(input.len());
                written = written.saturating_add(gave).min(out.len());
                if written > max {
                    return Err(ExtensionError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block: nothing but the tail may follow it.
                    if part == 0 && consumed < input.len() {
                        return Err(ExtensionError::Invalid("data after the final block"));
                    }
                    out.truncate(written);
                    out.shrink_to_fit();
                    return Ok((out, true));
                }
                if consumed == input.len() && written < out.len() {
                    break;
                }
                if took == 0 && gave == 0 && written < out.len() {
                    // No progress with room left: zlib wants input that is
                    // not there (an unfinished block; the tail comes next).
                    break;
                }
            }
        }
        // Grown by doubling: up to twice the message, which the application
        // and the budget count by its length.
        out.truncate(written);
        out.shrink_to_fit();
        Ok((out, false))
    }
}

thread_local! {
    /// Each thread's decompressor for messages inflated on their own (no
    /// client context takeover), reset per message; allocated on its first
    /// use, freed when the thread exits.
    static INFLATER: RefCell<Option<Inflater>> = const { RefCell::new(None) };

    /// Each thread's compressors for messages compressed on their own, one
    /// per parameter set seen on the thread (in practice one or two).
    static COMPRESSORS: RefCell<Vec<(Params, Compressor)>> = const { RefCell::new(Vec::new()) };
}

/// The most parameter sets a thread keeps a compressor for; past it the
/// oldest is dropped (each is a few hundred KiB).
const MAX_THREAD_COMPRESSORS: usize = 4;

/// Inflates a message on its own, with the thread's decompressor.
pub(crate) fn inflate_shared(payload: &[u8], max: usize) -> Result<Vec<u8>, ExtensionError> {
    INFLATER.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Not reentrant (no callback runs inside); a private one if ever.
            return Inflater::new(15).inflate(payload, max).map(|(out, _)| out);
        };
        let inflater = slot.get_or_insert_with(|| Inflater::new(15));
        inflater.reset();
        inflater.inflate(payload, max).map(|(out, _)| out)
    })
}

/// Compresses a message on its own, with the thread's compressor for `p`.
fn compress_shared(payload: &[u8], p: Params) -> Option<Bytes> {
    COMPRESSORS.with(|cell| {
        let Ok(mut list) = cell.try_borrow_mut() else {
            return Compressor::new(p).compress(payload);
        };
        let i = match list.iter().position(|(q, _)| *q == p) {
            Some(i) => i,
            None => {
                if list.len() == MAX_THREAD_COMPRESSORS {
                    list.remove(0);
                }
                list.push((p, Compressor::new(p)));
                list.len() - 1
            }
        };
        let c = &mut list[i].1;
        c.reset();
        let out = c.compress(payload);
        if out.is_none() {
            list.remove(i);
        }
        out
    })
}

/// How many recently compressed messages a negotiator remembers.
const CACHE_ENTRIES: usize = 8;

/// Messages larger than this are compressed per session rather than kept
/// (the cache holds a reference to each payload it keys on: at most
/// `CACHE_ENTRIES` of them, 2 MiB per vhost).
const CACHE_MAX_PAYLOAD: usize = 256 << 10;

/// The compressed forms of the last messages compressed without context
/// takeover, shared by every session of a negotiator (a vhost).
#[derive(Default)]
pub(crate) struct SharedCache {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    entries: Vec<Entry>,
    next: usize,
}

struct Entry {
    /// Keeps the keyed buffer alive, so that its address names its content.
    payload: Bytes,
    params: Params,
    /// Computed by the first session that sends it; `None`: not worth it
    /// (no smaller than the payload), sent plain.
    out: Arc<OnceLock<Option<Bytes>>>,
}

impl SharedCache {
    /// The compressed form of `payload` with `p`, without context takeover:
    /// from the cache if another session compressed the same buffer, else
    /// compressed now (once, even if sessions on several threads ask at the
    /// same time). `None`: send it plain (no gain, or the compressor failed).
    pub(crate) fn compress(&self, payload: &Bytes, p: Params) -> Option<Bytes> {
        if payload.len() > CACHE_MAX_PAYLOAD {
            return compress_shared(payload, p).filter(|c| c.len() < payload.len());
        }
        let slot = {
            let mut ring = lock(&self.ring);
            let found = ring.entries.iter().find(|e| {
                e.params == p
                    && e.payload.len() == payload.len()
                    && e.payload.as_ptr() == payload.as_ptr()
            });
            match found {
                Some(e) => e.out.clone(),
                None => {
                    let out = Arc::new(OnceLock::new());
                    let entry = Entry {
                        payload: payload.clone(),
                        params: p,
                        out: out.clone(),
                    };
                    if ring.entries.len() < CACHE_ENTRIES {
                        ring.entries.push(entry);
                    } else {
                        let i = ring.next;
                        ring.entries[i] = entry;
                        ring.next = (i + 1) % CACHE_ENTRIES;
                    }
                    out
                }
            }
        };
        slot.get_or_init(|| compress_shared(payload, p).filter(|c| c.len() < payload.len()))
            .clone()
    }

    /// Compressions done, for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.ring).entries.len()
    }
}
