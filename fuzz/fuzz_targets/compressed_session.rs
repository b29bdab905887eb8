//! `compressed_session`: permessage-deflate messages with parameters chosen
//! by the input through a real echo session over an in-memory stream; the
//! properties (bounded output, inflatable server frames within the limit,
//! valid close codes) are in `wsgate::fuzz::compressed_session`.
//!
//! `cargo +nightly fuzz run compressed_session` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wsgate::fuzz::compressed_session(data));
