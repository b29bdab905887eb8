//! The sans-IO protocol core: frames, the HTTP handshake, close codes, the
//! session state machine and the per-message extension point.
//!
//! Nothing under `proto` does I/O, reads a clock or knows about tasks: bytes
//! and instants come in as arguments, bytes and decisions come out. That is
//! what makes it testable on a virtual clock and fuzzable without sockets,
//! and it is checked: no file here may name an async crate or read the
//! clock (see `tests/layers.rs`). The runtime layer ([`crate::runtime`])
//! drives it over real sockets and timers.

pub(crate) mod admission;
pub(crate) mod close;
pub(crate) mod deflate;
pub(crate) mod extension;
pub(crate) mod frame;
pub(crate) mod http;
pub(crate) mod session;
pub(crate) mod tls;
