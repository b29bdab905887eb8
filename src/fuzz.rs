//! Entry points for the fuzz targets in `fuzz/` (compiled only under
//! `cfg(fuzzing)` and for the corpus replay in `cargo test`).

/// Feeds `input` as client bytes to a real echo session over an in-memory
/// stream; returns what the server wrote.
pub fn session_bytes(input: &[u8]) -> Vec<u8> {
    crate::session::run_in_memory(input, &crate::Limits::default())
}
