//! The second half of teardown: `Drain` runs extra loop iterations until the
//! close handshakes finish or a deadline forces the rest, and `DrainReport`
//! says what happened.
//!
//! The order destroy → stop the loop → drain is a typestate:
//! [`Context::destroy`](crate::Context::destroy) consumes the context and
//! returns the `Drain`; both borrow the executor, so the executor cannot be
//! dropped before them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_io::Timer;
use futures_lite::future;

use crate::context::ContextShared;
use crate::tasks::{Host, TaskSet, executor_id};

/// A context that has begun teardown and waits for its close handshakes.
///
/// Call [`drain`](Self::drain) after the host has stopped running its loop.
/// Dropping a `Drain` undrained forces every remaining session closed (TCP
/// close, no handshake) and logs it; it never blocks.
#[must_use = "call drain() to let the close handshakes finish; dropping a Drain forces them"]
pub struct Drain<'ex> {
    host: &'ex dyn Host,
    shared: Arc<ContextShared>,
    tasks: Option<TaskSet>,
    started: Instant,
}

/// What a drain achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Sessions that completed the close handshake after teardown began.
    pub clean: usize,
    /// Sessions whose peer vanished without completing the handshake, or that
    /// hit their own close timeout.
    pub aborted: usize,
    /// Sessions still open at the deadline, closed at the TCP level.
    pub forced: usize,
    /// Other wsgate tasks cut off at the deadline: HTTP exchanges still in
    /// progress, posted closures that had not finished.
    pub tasks_forced: usize,
    /// Host executor iterations (ticks) the drain ran.
    pub iterations: u64,
    /// Time from the start of teardown (`destroy`, or an earlier
    /// `ContextHandle::shutdown`) to the end of the drain.
    pub elapsed: Duration,
}

impl DrainReport {
    /// `true` when nothing had to be forced and no session was aborted.
    pub fn is_clean(&self) -> bool {
        self.forced == 0 && self.aborted == 0 && self.tasks_forced == 0
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} clean, {} aborted, {} forced ({} other tasks) in {:.3} s ({} iterations)",
            self.clean,
            self.aborted,
            self.forced,
            self.tasks_forced,
            self.elapsed.as_secs_f64(),
            self.iterations
        )
    }
}

impl<'ex> Drain<'ex> {
    pub(crate) fn new(
        host: &'ex dyn Host,
        shared: Arc<ContextShared>,
        tasks: Option<TaskSet>,
    ) -> Self {
        Self {
            host,
            shared,
            tasks,
            started: Instant::now(),
        }
    }

    /// Runs iterations of `ex` (the executor the context was attached to)
    /// until every session has finished its close handshake and every wsgate
    /// task has ended, or until `deadline`; then forces the rest closed.
    ///
    /// Call it from the thread that owns the loop, outside of any
    /// `block_on`: it drives the reactor itself while it waits.
    pub fn drain(mut self, ex: &Executor<'_>, deadline: Instant) -> DrainReport {
        let host: &dyn Host = if executor_id(ex) == self.host.id() {
            ex
        } else {
            tracing::warn!(
                "drain() was given another executor than attach(); draining the attached one"
            );
            self.host
        };
        let spawner = self.shared.spawner.clone();
        let mut iterations = 0u64;
        while spawner.live() > 0 && Instant::now() < deadline {
            let ticked = async_io::block_on(future::or(
                async {
                    host.tick().await;
                    true
                },
                future::or(
                    async {
                        spawner.idle().await;
                        false
                    },
                    async {
                        Timer::at(deadline).await;
                        false
                    },
                ),
            ));
            iterations += u64::from(ticked);
        }
        let left = self.shared.session_count();
        // Every session is one task; what is live beyond them is other work.
        let tasks_forced = spawner.live().saturating_sub(left);
        if left > 0 || tasks_forced > 0 {
            tracing::warn!(
                sessions = left,
                tasks = tasks_forced,
                "drain deadline passed; forcing"
            );
        }
        if let Some(mut tasks) = self.tasks.take() {
            iterations += tasks.force(Some(host), 1024) as u64;
        }
        let report = DrainReport {
            clean: self.shared.drain_clean.load(Ordering::Relaxed),
            aborted: self.shared.drain_aborted.load(Ordering::Relaxed),
            forced: self.shared.drain_forced.load(Ordering::Relaxed),
            tasks_forced,
            iterations,
            elapsed: self
                .shared
                .teardown_started()
                .unwrap_or(self.started)
                .elapsed(),
        };
        tracing::info!(%report, "drained");
        report
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tracing::warn!(
                sessions = self.shared.session_count(),
                "Drain dropped without drain(): forcing every session closed"
            );
            tasks.force(None, 0);
        }
    }
}

impl fmt::Debug for Drain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("sessions", &self.shared.session_count())
            .field("tasks", &self.shared.spawner.live())
            .finish_non_exhaustive()
    }
}
