//! `request_head`: raw bytes as a request head, through parsing, the upgrade check, routing,
//! the origin and bearer checks and subprotocol negotiation; the properties are
//! in `wsgate::fuzz::request_head`.
//!
//! `cargo +nightly fuzz run request_head` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wsgate::fuzz::request_head(data));
