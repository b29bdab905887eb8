//! `close_frame`: bytes as a Close frame's payload, parsed to code and reason and
//! round-tripped through the encoder; the properties are in
//! `wsgate::fuzz::close_frame`.
//!
//! `cargo +nightly fuzz run close_frame` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wsgate::fuzz::close_frame(data));
