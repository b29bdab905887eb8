//! Graceful shutdown on SIGINT and SIGTERM, on the host's request only
//! (feature `signals`).
//!
//! The signal handler does nothing but write a byte into signal-hook's
//! self-pipe, whose read end the host's loop awaits; the loop then calls
//! [`ContextHandle::shutdown`]. No thread is started. A second signal, while
//! the first shutdown is still draining, exits the process at once with
//! status 130: signal-hook's conditional shutdown does that from inside the
//! handler, so it works even if the loop is stuck.

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use async_io::Async;
use futures_lite::AsyncReadExt;
use signal_hook::SigId;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::ContextHandle;

/// The exit status of a forced exit on a second signal (128 + SIGINT).
pub const FORCED_EXIT_STATUS: i32 = 130;

/// Registered SIGINT/SIGTERM handlers feeding one context's shutdown.
///
/// Await [`run`](Self::run) on the loop (spawn it on the host's executor).
/// Dropping it unregisters the handlers.
pub struct Signals {
    read: Async<UnixStream>,
    ids: Vec<SigId>,
    handle: ContextHandle,
}

/// Registers SIGINT and SIGTERM: the first one shuts `handle`'s context down,
/// a second one exits the process with [`FORCED_EXIT_STATUS`].
///
/// # Errors
///
/// If the self-pipe cannot be created or a handler cannot be registered.
pub fn shutdown_on_signals(handle: &ContextHandle) -> io::Result<Signals> {
    let (read, write) = UnixStream::pair()?;
    let flag = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional shutdown sees the flag as it was
        // before this delivery sets it, so only a second signal exits.
        ids.push(signal_hook::flag::register_conditional_shutdown(
            sig,
            FORCED_EXIT_STATUS,
            flag.clone(),
        )?);
        ids.push(signal_hook::flag::register(sig, flag.clone())?);
        ids.push(signal_hook::low_level::pipe::register(
            sig,
            write.try_clone()?,
        )?);
    }
    Ok(Signals {
        read: Async::new(read)?,
        ids,
        handle: handle.clone(),
    })
}

impl Signals {
    /// Waits for signals and shuts the context down on the first. Never
    /// returns on its own: it keeps the handlers registered (so that a second
    /// signal still forces an exit) until it is dropped.
    pub async fn run(mut self) {
        let mut buf = [0u8; 32];
        loop {
            match self.read.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    if self.handle.shutdown().is_ok() {
                        tracing::info!(
                            "signal received: shutting down gracefully (signal again to force)"
                        );
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("handlers", &self.ids.len())
            .finish()
    }
}
