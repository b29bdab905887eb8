//! `Context`: one gateway instance attached to the host's executor (or to
//! several, one per service thread), and `ContextHandle`, its thread-safe
//! remote control.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_executor::Executor;
use event_listener::Event;

use crate::config::{Config, VhostConfig};
use crate::error::Error;
use crate::listener::{Listener, bind_all};
use crate::metrics::{Metrics, Stats};
use crate::protocol::{CloseReason, Wake};
use crate::pubsub::{Presence, Published, Topics};
use crate::session::SessionHandle;
use crate::tasks::{Host, Live, Spawner, TaskSet, force_all};
use crate::teardown::Drain;
use crate::vhost::{Vhost, lock};
use crate::{CloseCode, Message};

/// One gateway instance, attached to an executor that the host owns and runs
/// ([`attach`](Self::attach)), or to several executors that the host runs on
/// its service threads ([`attach_set`](Self::attach_set)).
///
/// `attach` binds every listener and spawns wsgate's tasks on the host's
/// executor; it starts no thread, no runtime and no signal handler. The
/// context borrows the executor, so the executor cannot be dropped while the
/// context (or the [`Drain`] it turns into) is alive.
///
/// Teardown is a typestate: [`destroy`](Self::destroy) consumes the context and
/// returns a [`Drain`], whose [`drain`](Drain::drain) runs the extra loop
/// iterations that let the close handshakes finish.
///
/// # Examples
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use async_executor::Executor;
/// use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ex = Executor::new();
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:7681".parse()?)
///     .protocol(Echo)
///     .mount(Mount::websocket("/echo", ["echo"]))
///     .build()?;
/// let ctx = Context::attach(&ex, Config::builder().vhost(vhost).build()?)?;
/// let handle = ctx.handle();
/// // The host runs its loop until something asks for shutdown.
/// async_io::block_on(ex.run(handle.shutdown_requested()));
/// let report = ctx.destroy().drain(&ex, Instant::now() + Duration::from_secs(5));
/// println!("{report:?}");
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a Context forces every session closed; call destroy() and drain()"]
pub struct Context<'ex> {
    /// The host's executors, one per worker, in `attach_set`'s order.
    hosts: Vec<&'ex dyn Host>,
    shared: Arc<ContextShared>,
    /// One task set per worker; empty once handed to the `Drain` or forced.
    tasks: Vec<TaskSet>,
}

/// The thread-safe remote control of a [`Context`]: `Clone + Send + Sync`.
///
/// Every call returns [`Error::Closed`] once teardown has begun.
#[derive(Clone)]
pub struct ContextHandle {
    shared: Arc<ContextShared>,
}

/// A snapshot of a context's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Sessions open now.
    pub sessions_open: usize,
    /// WebSocket handshakes accepted since attach.
    pub accepted: u64,
    /// Requests refused with an HTTP error status since attach.
    pub rejected: u64,
    /// Sessions that have ended since attach.
    pub closed: u64,
    /// TCP connections open now (HTTP and WebSocket).
    pub connections: usize,
    /// The accepted connections each service thread serves now, indexed like
    /// the executors given to [`Context::attach_set`] (one entry for
    /// [`Context::attach`]). New connections go to the lowest of these. They
    /// add up to `connections`, but for a connection being accepted at that
    /// very moment.
    pub connections_per_thread: Vec<usize>,
}

pub(crate) struct ContextShared {
    running: AtomicBool,
    /// Worker 0's spawner: accept loops, posted closures, wake-ups and tasks
    /// spawned from sessions run there. Its live count is context-wide.
    pub(crate) spawner: Spawner,
    /// Every worker (one per host executor), for the hand-off of connections.
    workers: Vec<Worker>,
    vhosts: Mutex<Vec<Vhost>>,
    pub(crate) listeners: Mutex<Vec<Arc<Listener>>>,
    sessions: Mutex<HashMap<u64, SessionHandle>>,
    next_id: AtomicU64,
    pub(crate) max_connections: usize,
    connections: AtomicUsize,
    accepted: AtomicU64,
    rejected: AtomicU64,
    closed: AtomicU64,
    pub(crate) drain_clean: AtomicUsize,
    pub(crate) drain_aborted: AtomicUsize,
    pub(crate) drain_forced: AtomicUsize,
    teardown: Event,
    pub(crate) topics: Topics,
    pub(crate) metrics: Metrics,
    /// When teardown began (by `shutdown`, `destroy` or drop).
    teardown_started: Mutex<Option<std::time::Instant>>,
}

impl<'ex> Context<'ex> {
    /// Binds every listener of `config`, then spawns wsgate's tasks on `ex`.
    ///
    /// The one-executor case of [`attach_set`](Self::attach_set).
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] if an address cannot be bound; nothing is left running
    /// and every socket bound so far is closed.
    pub fn attach(ex: &'ex Executor<'_>, config: Config) -> Result<Self, Error> {
        Self::attach_set(std::slice::from_ref(ex), config)
    }

    /// Binds every listener of `config`, then attaches one *worker* to each
    /// executor of `executors`, which the host runs on its service threads
    /// (one thread per executor, typically).
    ///
    /// Each worker is a task set of its own run by `config.pumps` pump tasks
    /// spawned on its executor. Worker 0 (on `executors[0]`) runs the accept
    /// loops and the context-wide tasks ([`ContextHandle::post`],
    /// [`ContextHandle::wake`]); each accepted connection (HTTP, then its
    /// WebSocket session) is handed to the worker serving the fewest
    /// connections at that moment, the lowest index on a tie, and stays
    /// there. See [`Counters::connections_per_thread`].
    ///
    /// It returns once every listener is bound, before anything has run: a
    /// client may connect at once and is served when the host runs the
    /// executors. Teardown is one [`Drain`] over all of them.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::{Duration, Instant};
    /// use async_executor::Executor;
    /// use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let executors: Vec<Executor<'_>> = (0..4).map(|_| Executor::new()).collect();
    /// let vhost = VhostConfig::builder("default")
    ///     .listen("127.0.0.1:7681".parse()?)
    ///     .protocol(Echo)
    ///     .mount(Mount::websocket("/echo", ["echo"]))
    ///     .build()?;
    /// let ctx = Context::attach_set(&executors, Config::builder().vhost(vhost).build()?)?;
    /// let handle = ctx.handle();
    /// // One service thread per executor, until something asks for shutdown.
    /// std::thread::scope(|s| {
    ///     for ex in &executors {
    ///         let handle = &handle;
    ///         s.spawn(move || async_io::block_on(ex.run(handle.shutdown_requested())));
    ///     }
    /// });
    /// // The threads have stopped: one drain drives every executor.
    /// let report = ctx.destroy().drain(&executors, Instant::now() + Duration::from_secs(5));
    /// println!("{report}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NoExecutors`] if `executors` is empty; [`Error::Bind`] if an
    /// address cannot be bound. Either way nothing is left running and every
    /// socket bound so far is closed.
    pub fn attach_set(executors: &'ex [Executor<'_>], config: Config) -> Result<Self, Error> {
        if executors.is_empty() {
            return Err(Error::NoExecutors);
        }
        let Config {
            vhosts,
            max_connections,
            pumps,
        } = config;
        let addrs: Vec<SocketAddr> = vhosts
            .iter()
            .flat_map(|v| v.listen().iter().copied())
            .collect();
        let mut bound = bind_all(&addrs, &[])?;
        let hosts: Vec<&'ex dyn Host> = executors.iter().map(|ex| ex as &dyn Host).collect();
        let live = Live::new();
        let (tasks, workers): (Vec<TaskSet>, Vec<Worker>) = hosts
            .iter()
            .map(|host| {
                let (tasks, spawner) = TaskSet::new(*host, pumps, &live);
                let worker = Worker {
                    spawner,
                    load: AtomicUsize::new(0),
                };
                (tasks, worker)
            })
            .unzip();
        let shared = Arc::new(ContextShared {
            running: AtomicBool::new(true),
            // Not empty: checked above, one worker per executor.
            spawner: workers[0].spawner.clone(),
            workers,
            vhosts: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_connections,
            connections: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            drain_clean: AtomicUsize::new(0),
            drain_aborted: AtomicUsize::new(0),
            drain_forced: AtomicUsize::new(0),
            teardown: Event::new(),
            topics: Topics::default(),
            metrics: Metrics::default(),
            teardown_started: Mutex::new(None),
        });
        for cfg in vhosts {
            if cfg.mounts().is_empty() {
                // Legal (a vhost may be filled in later, or only hold an
                // address), but at start it is almost always a forgotten
                // `[[vhost.mount]]`.
                tracing::warn!(vhost = %cfg.name(), "vhost has no mounts: requests to it get 404 (only /healthz answers)");
            }
            let vhost = Vhost::new(cfg, Arc::downgrade(&shared));
            shared.install_vhost(&vhost, &mut bound);
        }
        tracing::info!(
            listeners = ?shared.local_addrs(),
            workers = hosts.len(),
            "context attached"
        );
        Ok(Self {
            hosts,
            shared,
            tasks,
        })
    }

    /// A thread-safe handle for wake-ups, posts, broadcasts and shutdown.
    pub fn handle(&self) -> ContextHandle {
        ContextHandle {
            shared: self.shared.clone(),
        }
    }

    /// Adds a vhost at runtime, binding any new listen addresses first.
    ///
    /// # Errors
    ///
    /// [`Error::VhostExists`], [`Error::Bind`], or [`Error::Closed`] during teardown.
    pub fn add_vhost(&self, config: VhostConfig) -> Result<Vhost, Error> {
        if !self.shared.is_running() {
            return Err(Error::Closed);
        }
        if self.vhost(config.name()).is_some() {
            return Err(Error::VhostExists(config.name().to_owned()));
        }
        let existing: Vec<SocketAddr> = lock(&self.shared.listeners)
            .iter()
            .map(|l| l.configured)
            .collect();
        let mut bound = bind_all(config.listen(), &existing)?;
        let vhost = Vhost::new(config, Arc::downgrade(&self.shared));
        self.shared.install_vhost(&vhost, &mut bound);
        Ok(vhost)
    }

    /// Removes a vhost: stops the listeners no other vhost uses, sends Close
    /// 1001 to its sessions and calls its protocols' destroy hooks. The vhost
    /// (and its user data) lives on while handles to it remain.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchVhost`].
    pub fn remove_vhost(&self, name: &str) -> Result<(), Error> {
        self.shared.remove_vhost(name)
    }

    /// The vhost called `name`.
    pub fn vhost(&self, name: &str) -> Option<Vhost> {
        lock(&self.shared.vhosts)
            .iter()
            .find(|v| v.name() == name)
            .cloned()
    }

    /// Every bound listen address (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.local_addrs()
    }

    /// Begins teardown: stops every listener, sends Close 1001 "going away" to
    /// every session, and calls each protocol's destroy hook. Returns the
    /// [`Drain`] that finishes the job.
    ///
    /// May be called while the loop runs or after it stopped; if a
    /// [`ContextHandle::shutdown`] already began teardown, this only moves on
    /// to the drain.
    pub fn destroy(mut self) -> Drain<'ex> {
        self.shared.begin_teardown("destroy");
        let tasks = std::mem::take(&mut self.tasks);
        Drain::new(self.hosts.clone(), self.shared.clone(), tasks)
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            tracing::warn!(
                sessions = self.shared.session_count(),
                workers = self.tasks.len(),
                "context dropped without destroy(): forcing every session closed"
            );
            self.shared.begin_teardown("drop");
            force_all(std::mem::take(&mut self.tasks), &[], 0);
        }
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl ContextHandle {
    pub(crate) fn from_shared(shared: Arc<ContextShared>) -> Self {
        Self { shared }
    }

    /// Delivers `payload` to every protocol's [`wake`](crate::Protocol::wake)
    /// callback, on the loop.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn wake<T: Any + Send + Sync>(&self, payload: T) -> Result<(), Error> {
        let wake = Wake::new(payload);
        let shared = self.shared.clone();
        self.spawn(async move {
            for vhost in shared.vhosts() {
                for p in vhost.protocols() {
                    p.wake(&vhost, &wake);
                }
            }
        })
    }

    /// Runs `f` on the loop.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn post<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), Error> {
        self.spawn(async move { f() })
    }

    /// Queues `message` to every session of vhost `vhost` connected to mount
    /// `path`; the payload is shared, not copied. Returns how many sessions
    /// accepted it (a full or closing session does not).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchVhost`], or [`Error::Closed`] after teardown began.
    pub fn broadcast(&self, vhost: &str, path: &str, message: Message) -> Result<usize, Error> {
        self.check()?;
        let v = self
            .shared
            .vhosts()
            .into_iter()
            .find(|v| v.name() == vhost)
            .ok_or_else(|| Error::NoSuchVhost(vhost.to_owned()))?;
        Ok(v.sessions()
            .iter()
            .filter(|s| s.path() == path)
            .filter(|s| s.try_send(message.clone()).is_ok())
            .count())
    }

    /// Publishes `message` to every subscriber of `topic`, from any thread.
    /// The payload is shared among them, not copied; a subscriber whose queue
    /// is full is handled by its vhost's overflow policy and never slows the
    /// others. Publishing to a topic nobody subscribes to delivers nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn publish(&self, topic: &str, message: Message) -> Result<Published, Error> {
        self.check()?;
        self.shared
            .metrics
            .published
            .fetch_add(1, Ordering::Relaxed);
        Ok(self.shared.topics.publish(topic, &message))
    }

    /// Who is subscribed to `topic`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn presence(&self, topic: &str) -> Result<Presence, Error> {
        self.check()?;
        Ok(self.shared.topics.presence(topic))
    }

    /// The topics that have subscribers, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn topics(&self) -> Result<Vec<String>, Error> {
        self.check()?;
        Ok(self.shared.topics.names())
    }

    /// Counters and gauges (also served as Prometheus text by the `metrics`
    /// HTTP handler).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn stats(&self) -> Result<Stats, Error> {
        self.check()?;
        Ok(Stats::collect(&self.shared))
    }

    /// Requests teardown from any thread (a signal thread, a GUI thread): the
    /// same first step as [`Context::destroy`]. The host notices through
    /// [`shutdown_requested`](Self::shutdown_requested), stops its loop, and
    /// calls `destroy` and `drain`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if teardown had already begun.
    pub fn shutdown(&self) -> Result<(), Error> {
        if self.shared.begin_teardown("shutdown") {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }

    /// Resolves once teardown has begun (by `shutdown`, `destroy` or drop).
    pub async fn shutdown_requested(&self) {
        loop {
            let l = self.shared.teardown.listen();
            if !self.shared.is_running() {
                return;
            }
            l.await;
        }
    }

    /// Whether the context is still serving.
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
    }

    /// The counters.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn counters(&self) -> Result<Counters, Error> {
        self.check()?;
        Ok(self.shared.counters())
    }

    fn check(&self) -> Result<(), Error> {
        if self.shared.is_running() {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        self.check()?;
        if self.shared.spawner.spawn(fut) {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }
}

impl fmt::Debug for ContextHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextHandle")
            .field("shared", &self.shared)
            .finish()
    }
}

impl fmt::Debug for ContextShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextShared")
            .field("running", &self.is_running())
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl ContextShared {
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub(crate) fn vhosts(&self) -> Vec<Vhost> {
        lock(&self.vhosts).clone()
    }

    pub(crate) fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).iter().map(|l| l.local).collect()
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            sessions_open: self.session_count(),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            connections_per_thread: self
                .workers
                .iter()
                .map(|w| w.load.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Registers `vhost` with its listeners (new ones from `bound` are started).
    fn install_vhost(
        self: &Arc<Self>,
        vhost: &Vhost,
        bound: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    ) {
        let mut locals = Vec::new();
        let mut listeners = lock(&self.listeners);
        for addr in vhost.listen() {
            let listener = if let Some(l) = listeners.iter().find(|l| l.configured == *addr) {
                l.clone()
            } else if let Some(pos) = bound.iter().position(|(a, _)| a == addr) {
                let (_, socket) = bound.swap_remove(pos);
                let l = Listener::start(*addr, socket, self);
                listeners.push(l.clone());
                l
            } else {
                continue;
            };
            locals.push(listener.local);
            listener.add_vhost(vhost.clone());
        }
        drop(listeners);
        vhost.set_local_addrs(locals);
        lock(&self.vhosts).push(vhost.clone());
    }

    fn remove_vhost(&self, name: &str) -> Result<(), Error> {
        let vhost = {
            let mut vhosts = lock(&self.vhosts);
            let pos = vhosts
                .iter()
                .position(|v| v.name() == name)
                .ok_or_else(|| Error::NoSuchVhost(name.to_owned()))?;
            vhosts.remove(pos)
        };
        vhost.mark_removed();
        lock(&self.listeners).retain(|l| {
            let empty = l.remove_vhost(&vhost);
            if empty {
                l.stop();
            }
            !empty
        });
        let closing = vhost.close_sessions(CloseCode::Away, "vhost removed");
        vhost.destroy_protocols();
        tracing::info!(vhost = name, closing, "vhost removed");
        Ok(())
    }

    /// The first step of teardown. Returns `false` if it had already begun.
    pub(crate) fn begin_teardown(&self, why: &str) -> bool {
        if !self.running.swap(false, Ordering::AcqRel) {
            return false;
        }
        *lock(&self.teardown_started) = Some(std::time::Instant::now());
        for l in lock(&self.listeners).drain(..) {
            l.stop();
        }
        let sessions: Vec<SessionHandle> = lock(&self.sessions).values().cloned().collect();
        let closing = sessions
            .iter()
            .filter(|s| s.shared.request_close(CloseCode::Away, "going away"))
            .count();
        self.teardown.notify(usize::MAX);
        for vhost in self.vhosts() {
            vhost.destroy_protocols();
        }
        tracing::info!(why, closing, "teardown begun");
        true
    }

    /// When teardown began, if it has.
    pub(crate) fn teardown_started(&self) -> Option<std::time::Instant> {
        *lock(&self.teardown_started)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn teardown_listener(&self) -> event_listener::EventListener {
        self.teardown.listen()
    }

    /// Counts a refused request.
    pub(crate) fn rejected(&self, status: u16) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected(status);
    }

    /// Reserves a connection slot; `None` when at the limit.
    pub(crate) fn try_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let n = self.connections.fetch_add(1, Ordering::AcqRel);
        let slot = ConnectionSlot {
            ctx: self.clone(),
            worker: None,
        };
        (n < self.max_connections).then_some(slot)
    }

    /// Registers an accepted session. If teardown raced with the handshake, the
    /// session is asked to close at once.
    pub(crate) fn register(&self, session: &SessionHandle) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(session.id().get(), session.clone());
        session.vhost().register(session);
        if !self.is_running() || !session.vhost().is_serving() {
            session.shared.request_close(CloseCode::Away, "going away");
        }
    }

    /// Unregisters a session; `outcome` is `None` when it was forced down.
    pub(crate) fn unregister(&self, session: &SessionHandle, outcome: Option<&CloseReason>) {
        lock(&self.sessions).remove(&session.id().get());
        session.vhost().unregister(session.id().get());
        self.topics.leave_all(session);
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .closed(outcome.map_or(1006, |r| u16::from(r.code)));
        if !self.is_running() {
            let counter = match outcome {
                Some(r) if r.clean => &self.drain_clean,
                Some(_) => &self.drain_aborted,
                None => &self.drain_forced,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One service thread's share of a context: the spawner of its task set and
/// the number of connections it serves.
struct Worker {
    spawner: Spawner,
    /// Connections handed to this worker and not yet ended.
    load: AtomicUsize,
}

/// An open TCP connection's place under `max_connections`, and once handed
/// off, its place in its worker's load: both are given back when the
/// connection's task ends (or is dropped by a forced teardown).
pub(crate) struct ConnectionSlot {
    ctx: Arc<ContextShared>,
    worker: Option<usize>,
}

impl ConnectionSlot {
    pub(crate) fn ctx(&self) -> &Arc<ContextShared> {
        &self.ctx
    }

    /// The spawner of the worker serving this connection.
    pub(crate) fn spawner(&self) -> Spawner {
        self.worker.map_or_else(
            || self.ctx.spawner.clone(),
            |i| self.ctx.workers[i].spawner.clone(),
        )
    }

    /// Hands the connection to the worker serving the fewest connections (the
    /// lowest index on a tie), counts it there, and returns that worker's
    /// spawner, on which the connection's task must be spawned.
    ///
    /// The look and the increment are not one atomic step, so two listeners
    /// accepting at the same instant may both pick the same worker; the
    /// imbalance is one connection and corrects itself on the next hand-off.
    pub(crate) fn hand_off(&mut self) -> Spawner {
        let workers = &self.ctx.workers;
        let index = least_loaded(workers.iter().map(|w| w.load.load(Ordering::Acquire)));
        if let Some(previous) = self.worker.replace(index) {
            workers[previous].load.fetch_sub(1, Ordering::AcqRel);
        }
        let worker = &workers[index];
        worker.load.fetch_add(1, Ordering::AcqRel);
        worker.spawner.clone()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.ctx.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(index) = self.worker {
            self.ctx.workers[index].load.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The index of the smallest load, the lowest index among equals (0 for none).
fn least_loaded(loads: impl Iterator<Item = usize>) -> usize {
    loads
        .enumerate()
        .min_by_key(|&(i, load)| (load, i))
        .map_or(0, |(i, _)| i)
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ContextHandle>();
    send_sync::<SessionHandle>();
    send_sync::<Vhost>();
    send_sync::<Context<'static>>();
    send_sync::<Drain<'static>>();
};

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn the_least_loaded_worker_wins_and_ties_go_to_the_lowest_index() {
        assert_eq!(least_loaded([0, 0, 0].into_iter()), 0);
        assert_eq!(least_loaded([1, 0, 0].into_iter()), 1);
        assert_eq!(least_loaded([3, 2, 1, 1].into_iter()), 2);
        assert_eq!(least_loaded([5].into_iter()), 0);
        assert_eq!(least_loaded(std::iter::empty()), 0);
    }
}
