//! The second half of teardown: `Drain` runs extra loop iterations until the
//! close handshakes finish or a deadline forces the rest, and `DrainReport`
//! says what happened.
//!
//! The order destroy → stop the loop → drain is a typestate:
//! [`Context::destroy`](crate::Context::destroy) consumes the context and
//! returns the `Drain`; both borrow the executor, so the executor cannot be
//! dropped before them.
//!
//! A context attached to several executors (service threads) has one `Drain`
//! for all of them: once the host has stopped its threads, `drain` drives
//! every executor from the calling thread.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_executor::{Executor, LocalExecutor};
use async_io::Timer;
use event_listener::{Event, EventListener};
use futures_lite::future;

use crate::common::lock;

use crate::context::metrics::Stats;
use crate::context::{ContextShared, LoopKind, SharedLoop};
use crate::runtime::tasks::{HostExecutor, TaskSet, force_all};

/// The executors a context was attached to, as [`Drain::drain`] takes them:
/// one [`Executor`] (after [`Context::attach`](crate::Context::attach)), the
/// whole set (after [`Context::attach_set`](crate::Context::attach_set)) as a
/// slice, a `Vec` or an array, or one [`LocalExecutor`] (after
/// [`Context::attach_local`](crate::Context::attach_local)).
///
/// This trait is sealed: it cannot be implemented outside wsgate.
pub trait Executors: sealed::Sealed {}

impl Executors for Executor<'_> {}
impl Executors for [Executor<'_>] {}
impl Executors for Vec<Executor<'_>> {}
impl<const N: usize> Executors for [Executor<'_>; N] {}
impl Executors for LocalExecutor<'_> {}

mod sealed {
    use async_executor::{Executor, LocalExecutor};

    use crate::runtime::tasks::HostExecutor;

    /// The identities of the executors (see `HostExecutor::id`), which `drain`
    /// compares with the attached ones. Not nameable outside the crate, so
    /// `Executors` cannot be implemented (or this called) elsewhere.
    pub trait Sealed {
        fn ids(&self) -> Vec<usize>;
    }

    impl Sealed for Executor<'_> {
        fn ids(&self) -> Vec<usize> {
            vec![HostExecutor::id(self)]
        }
    }

    impl Sealed for LocalExecutor<'_> {
        fn ids(&self) -> Vec<usize> {
            vec![HostExecutor::id(self)]
        }
    }

    impl Sealed for [Executor<'_>] {
        fn ids(&self) -> Vec<usize> {
            self.iter().map(HostExecutor::id).collect()
        }
    }

    impl Sealed for Vec<Executor<'_>> {
        fn ids(&self) -> Vec<usize> {
            self.as_slice().ids()
        }
    }

    impl<const N: usize> Sealed for [Executor<'_>; N] {
        fn ids(&self) -> Vec<usize> {
            self.as_slice().ids()
        }
    }
}

/// Where a context is in its life, and the numbers its teardown reports.
pub(crate) struct Lifecycle {
    running: AtomicBool,
    /// Notified once, when teardown begins.
    teardown: Event,
    /// When teardown began (by `shutdown`, `destroy` or drop).
    started: Mutex<Option<Instant>>,
    clean: AtomicUsize,
    aborted: AtomicUsize,
    forced: AtomicUsize,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        Self {
            running: AtomicBool::new(true),
            teardown: Event::new(),
            started: Mutex::new(None),
            clean: AtomicUsize::new(0),
            aborted: AtomicUsize::new(0),
            forced: AtomicUsize::new(0),
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Marks teardown as begun; `false` if it already had.
    pub(crate) fn begin(&self) -> bool {
        if !self.running.swap(false, Ordering::AcqRel) {
            return false;
        }
        *lock(&self.started) = Some(Instant::now());
        true
    }

    /// Wakes everyone waiting for teardown.
    pub(crate) fn announce(&self) {
        self.teardown.notify(usize::MAX);
    }

    /// A listener for the start of teardown (check `is_running` after
    /// listening).
    pub(crate) fn listen(&self) -> EventListener {
        self.teardown.listen()
    }

    /// When teardown began, if it has.
    pub(crate) fn started(&self) -> Option<Instant> {
        *lock(&self.started)
    }

    /// Counts how a session ended during teardown: `None` when forced.
    pub(crate) fn count_end(&self, outcome: Option<&crate::CloseReason>) {
        if self.is_running() {
            return;
        }
        let counter = match outcome {
            Some(r) if r.clean => &self.clean,
            Some(_) => &self.aborted,
            None => &self.forced,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (clean, aborted, forced) so far.
    pub(crate) fn ends(&self) -> (usize, usize, usize) {
        (
            self.clean.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
            self.forced.load(Ordering::Relaxed),
        )
    }
}

/// How far past its deadline a drain may return before it warns: the
/// deadline is checked between polls, so a little lateness is normal.
const OVERRUN_WARNING: Duration = Duration::from_millis(50);

/// A context that has begun teardown and waits for its close handshakes.
///
/// Call [`drain`](Self::drain) after the host has stopped running its loop
/// (every executor of a context from [`attach_set`], with its service threads
/// joined). Dropping a `Drain` undrained forces every remaining session closed
/// (TCP close, no handshake) and logs it; it never blocks.
///
/// [`attach_set`]: crate::Context::attach_set
#[must_use = "call drain() to let the close handshakes finish; dropping a Drain forces them"]
pub struct Drain<'ex, K: LoopKind = SharedLoop> {
    /// Every executor the context was attached to, one per worker.
    hosts: Vec<K::Host<'ex>>,
    shared: Arc<ContextShared>,
    /// One task set per worker; empty once forced.
    tasks: Vec<TaskSet>,
    started: Instant,
}

/// What a drain achieved, and the context's final counters.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// progress, posted closures that had not finished, tasks of sessions.
    pub tasks_forced: usize,
    /// Host executor iterations (ticks) the drain ran, summed over every
    /// executor of the context.
    pub iterations: u64,
    /// Time from the start of teardown (`destroy`, or an earlier
    /// `ContextHandle::shutdown`) to the end of the drain.
    pub elapsed: Duration,
    /// How long after the deadline the drain returned (zero when it was in
    /// time). No library can pre-empt a callback: one that blocks (a `close`
    /// that sleeps, a `message` doing blocking I/O) holds the drain past its
    /// deadline, and this says by how much.
    pub overrun: Duration,
    /// The longest a single wsgate task ran without yielding during the
    /// drain (one poll, or the forced drop of what was left): the time the
    /// slowest callback blocked the thread. A few microseconds normally; a
    /// large value names the cause of an `overrun`.
    pub longest_stall: Duration,
    /// The context's counters after the drain: the final numbers, once
    /// [`ContextHandle::stats`](crate::ContextHandle::stats) answers
    /// [`Error::Closed`](crate::Error::Closed).
    pub stats: Stats,
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
        )?;
        if !self.overrun.is_zero() {
            write!(
                f,
                "; {:.3} s past the deadline (a callback blocked for {:.3} s)",
                self.overrun.as_secs_f64(),
                self.longest_stall.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

impl<'ex, K: LoopKind> Drain<'ex, K> {
    pub(crate) fn new(
        hosts: Vec<K::Host<'ex>>,
        shared: Arc<ContextShared>,
        tasks: Vec<TaskSet>,
    ) -> Self {
        Self {
            hosts,
            shared,
            tasks,
            started: Instant::now(),
        }
    }

    /// Runs iterations of the executors the context was attached to until
    /// every session has finished its close handshake and every wsgate task
    /// has ended, or until `deadline`; then forces the rest closed.
    ///
    /// `executors` is the executor given to [`attach`], or the set given to
    /// [`attach_set`] (a slice, `Vec` or array). If it is not the attached
    /// executors, a warning is logged and the attached ones are drained
    /// anyway.
    ///
    /// Every executor is driven from the calling thread (an `Executor` is
    /// `Sync`): it runs whatever is ready on each executor in turn, as long as
    /// any of them makes progress, then sleeps until one of them has work, no
    /// wsgate task is left, or the deadline passes. The host's own tasks on
    /// those executors run too. At the deadline every worker is forced: its
    /// task set is dropped (closing the remaining sockets), then each executor
    /// is ticked until its pumps have let go.
    ///
    /// Call it once the host has stopped running the executors (its service
    /// threads joined), from a thread outside of any `block_on`: it drives the
    /// reactor itself while it waits.
    ///
    /// [`attach`]: crate::Context::attach
    /// [`attach_set`]: crate::Context::attach_set
    pub fn drain<E: Executors + ?Sized>(mut self, executors: &E, deadline: Instant) -> DrainReport {
        let mut given = sealed::Sealed::ids(executors);
        let mut attached: Vec<usize> = self.hosts.iter().map(|h| K::host(h).id()).collect();
        given.sort_unstable();
        attached.sort_unstable();
        if given != attached {
            tracing::warn!(
                given = given.len(),
                attached = attached.len(),
                "drain() was given other executors than attach(); draining the attached ones"
            );
        }
        let hosts: Vec<&dyn HostExecutor> = self.hosts.iter().map(K::host).collect();
        let spawner = self.shared.spawner.clone();
        let live = spawner.live_state().clone();
        live.watch_stalls();
        let mut iterations = 0u64;
        let going = || spawner.live() > 0 && Instant::now() < deadline;
        while going() {
            // Whatever is ready, round-robin, so that no executor waits for
            // another's backlog.
            let mut progressed = true;
            while progressed && going() {
                progressed = false;
                for host in &hosts {
                    if host.try_tick() {
                        progressed = true;
                        iterations += 1;
                    }
                }
            }
            if !going() {
                break;
            }
            // Nothing is ready: sleep (driving the reactor) until one
            // executor has run a task, everything has ended, or the deadline.
            let ticked = async_io::block_on(future::or(
                async {
                    any_tick(&hosts).await;
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
        let left = self.shared.registry.session_count();
        // Every session is one task; what is live beyond them is other work.
        let tasks_forced = spawner.live().saturating_sub(left);
        if left > 0 || tasks_forced > 0 {
            tracing::warn!(
                sessions = left,
                tasks = tasks_forced,
                "drain deadline passed; forcing"
            );
        }
        let tasks = std::mem::take(&mut self.tasks);
        let forcing = Instant::now();
        iterations += force_all(tasks, &hosts, 1024) as u64;
        // Dropping what was left runs its `close` callbacks: time it too.
        live.record_stall(forcing.elapsed());
        let now = Instant::now();
        let overrun = now.saturating_duration_since(deadline);
        let (clean, aborted, forced) = self.shared.lifecycle.ends();
        let report = DrainReport {
            clean,
            aborted,
            forced,
            tasks_forced,
            iterations,
            elapsed: self
                .shared
                .lifecycle
                .started()
                .unwrap_or(self.started)
                .elapsed(),
            overrun,
            longest_stall: live.longest_stall(),
            stats: self.shared.stats(),
        };
        if overrun > OVERRUN_WARNING {
            tracing::warn!(
                overrun_ms = overrun.as_millis() as u64,
                longest_stall_ms = report.longest_stall.as_millis() as u64,
                "drain overran its deadline: a callback blocked the loop"
            );
        }
        tracing::info!(%report, executors = hosts.len(), "drained");
        report
    }
}

impl<K: LoopKind> Drop for Drain<'_, K> {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            tracing::warn!(
                sessions = self.shared.registry.session_count(),
                workers = self.tasks.len(),
                "Drain dropped without drain(): forcing every session closed"
            );
            force_all(std::mem::take(&mut self.tasks), &[], 0);
        }
    }
}

impl<K: LoopKind> fmt::Debug for Drain<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("executors", &self.hosts.len())
            .field("sessions", &self.shared.registry.session_count())
            .field("tasks", &self.shared.spawner.live())
            .finish_non_exhaustive()
    }
}

/// Resolves once any of `hosts` has run one task.
async fn any_tick(hosts: &[&dyn HostExecutor]) {
    let mut ticks: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> =
        hosts.iter().map(|h| h.tick()).collect();
    future::poll_fn(|cx| {
        if ticks.iter_mut().any(|t| t.as_mut().poll(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}
