//! `session_bytes`: raw bytes as a client's side of a real echo session over an in-memory
//! stream; the properties (bounded, well-formed server frames) are in
//! `wsgate::fuzz::session_bytes`.
//!
//! `cargo +nightly fuzz run session_bytes` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wsgate::fuzz::session_bytes(data));
