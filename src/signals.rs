//! Signals for a host that asks for them (feature `signals`): graceful
//! shutdown on SIGINT and SIGTERM, and reload requests on SIGHUP.
//!
//! Each signal handler does nothing but write a byte into signal-hook's
//! self-pipe, whose read end the host's loop awaits. No thread is started and
//! nothing is registered until the host calls [`shutdown_on_signals`] or
//! [`reload_on_sighup`]; dropping what they return unregisters the handlers.
//!
//! - [`shutdown_on_signals`]: the loop calls [`ContextHandle::shutdown`] on
//!   the first SIGINT or SIGTERM. A second one, while the first shutdown is
//!   still draining, exits the process at once with status 130: signal-hook's
//!   conditional shutdown does that from inside the handler, so it works even
//!   if the loop is stuck.
//! - [`reload_on_sighup`]: SIGHUP no longer terminates the process (its
//!   default action); [`Reloads::wait`] resolves instead, and what a reload
//!   means is the host's business (the `wsgate` binary re-reads its
//!   configuration file and applies the difference vhost by vhost).

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use async_io::Async;
use futures_lite::AsyncReadExt;
use signal_hook::SigId;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

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

/// A registered SIGHUP handler: reload requests for the host's loop.
///
/// Await [`wait`](Self::wait) on the loop. Dropping it unregisters the
/// handler; SIGHUP then does nothing (signal-hook does not restore the
/// default action, which would terminate the process).
pub struct Reloads {
    read: Async<UnixStream>,
    id: SigId,
}

/// Registers SIGHUP as a reload request: instead of terminating the process,
/// it makes [`Reloads::wait`] resolve.
///
/// # Errors
///
/// If the self-pipe cannot be created or the handler cannot be registered.
///
/// # Examples
///
/// ```no_run
/// # async fn host() -> std::io::Result<()> {
/// let mut reloads = wsgate::signals::reload_on_sighup()?;
/// loop {
///     reloads.wait().await?;
///     // Re-read the configuration and apply it.
/// }
/// # }
/// ```
pub fn reload_on_sighup() -> io::Result<Reloads> {
    let (read, write) = UnixStream::pair()?;
    let id = signal_hook::low_level::pipe::register(SIGHUP, write)?;
    Ok(Reloads {
        read: Async::new(read)?,
        id,
    })
}

impl Reloads {
    /// Resolves once a SIGHUP has arrived since the previous call resolved.
    /// Signals that arrive while the host is busy (for example applying the
    /// previous reload) are coalesced: they make the next call resolve once.
    ///
    /// # Errors
    ///
    /// If reading the self-pipe fails; no further reload request can then
    /// arrive through this registration.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a signal is consumed only by the call that resolves with
    /// it, so dropping the future loses nothing.
    pub async fn wait(&mut self) -> io::Result<()> {
        // One byte per delivery; everything pending is read at once so that
        // a burst of signals requests one reload, not one per signal.
        let mut buf = [0u8; 64];
        match self.read.read(&mut buf).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the signal pipe was closed",
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Reloads {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.id);
    }
}

impl fmt::Debug for Reloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloads").finish_non_exhaustive()
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("handlers", &self.ids.len())
            .finish()
    }
}
