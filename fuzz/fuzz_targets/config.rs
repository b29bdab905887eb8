//! `config`: bytes as a TOML configuration file, parsed and built with the built-in
//! protocols; the properties (a config or an error with a key and a real line)
//! are in `wsgate::fuzz::config`.
//!
//! `cargo +nightly fuzz run config` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wsgate::fuzz::config(data));
