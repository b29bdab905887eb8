//! [`SessionHandle`]: the cloneable, thread-safe handle to one session, and
//! what the context keeps per session (its queue, topics, tasks).
//!
//! The handle never touches the socket: it feeds the session's bounded queue
//! ([`Outbox`]), whose only reader is the session's driver.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_executor::Task;

use crate::common::lock;
use crate::context::broker::SubscribeRequest;
use crate::error::SendError;
use crate::runtime::outbox::{Outbox, Refusal};
use crate::runtime::tasks::Spawner;
use crate::{CloseCode, Message, Vhost};

/// A session's identifier, unique within its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl SessionId {
    /// The number behind the id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A cloneable, thread-safe handle to one session: send to it, close it, or
/// ask who it is, from any thread.
///
/// The handle never touches the socket: it feeds the session's bounded queue,
/// whose only reader is the session's writer. Once the session has closed,
/// every send returns [`SendError::Closed`].
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) shared: Arc<SessionShared>,
}

pub(crate) struct SessionShared {
    id: SessionId,
    peer: SocketAddr,
    vhost: Vhost,
    /// Shared with its mount when the request asked for the mount's own path.
    path: Arc<str>,
    /// The negotiated protocol, as its index among the vhost's (4 bytes
    /// instead of a 16-byte pointer to it; the name is what sessions ask
    /// for).
    protocol: u32,
    /// The bounded queue in front of the session's single writer.
    pub(crate) outbox: Outbox,
    /// Messages dropped by the overflow policy.
    dropped: AtomicU64,
    /// Topics this session is subscribed to, unsubscribed when it ends
    /// (boxed on the first subscription: an idle session that subscribes to
    /// nothing carries only the pointer).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes on every session instead of a Vec's 24; most never subscribe"
    )]
    pub(crate) topics: Mutex<Option<Box<Vec<Arc<str>>>>>,
    /// The task set of the worker serving the session, where
    /// [`SessionHandle::spawn`] puts its tasks.
    spawner: Spawner,
    /// The tasks [`SessionHandle::spawn`] started (boxed on the first),
    /// cancelled when the session ends.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes on every session instead of a Vec's 24; most never spawn"
    )]
    tasks: Mutex<Option<Box<Vec<Task<()>>>>>,
    /// The session has ended: no more tasks can be spawned. Read and written
    /// only while `tasks` is locked, which orders it; an atomic only so that
    /// it can live outside the lock's value (in the padding beside
    /// `protocol`: inside, it took `SessionShared` over a size class).
    tasks_ended: AtomicBool,
}

impl SessionHandle {
    /// A session's handle; `plain`: the session has no extension (its
    /// queue may hold small messages encoded).
    pub(crate) fn new(
        id: SessionId,
        peer: SocketAddr,
        vhost: Vhost,
        path: Arc<str>,
        protocol: u32,
        spawner: Spawner,
        plain: bool,
    ) -> Self {
        let limits = vhost.limits();
        let budget = vhost.context().and_then(|c| c.budget().cloned());
        let outbox = Outbox::new(
            limits.max_queue_bytes,
            limits.max_queue_messages,
            limits.overflow,
            budget,
            // Without an extension, small messages are queued encoded.
            plain,
        );
        Self {
            shared: Arc::new(SessionShared {
                id,
                peer,
                vhost,
                path,
                protocol,
                outbox,
                dropped: AtomicU64::new(0),
                topics: Mutex::new(None),
                spawner,
                tasks: Mutex::new(None),
                tasks_ended: AtomicBool::new(false),
            }),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The vhost that serves this session.
    pub fn vhost(&self) -> &Vhost {
        &self.shared.vhost
    }

    /// The path the session's request asked for: its mount's, or one below
    /// it on a prefix mount (without the query).
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The negotiated protocol's name.
    pub fn protocol(&self) -> &str {
        self.shared.vhost.protocol_name(self.shared.protocol)
    }

    /// Whether the session still accepts messages.
    pub fn is_open(&self) -> bool {
        self.shared.outbox.is_open()
    }

    /// Bytes waiting in the outbound queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.outbox.queued_bytes()
    }

    /// Messages the vhost's overflow policy dropped for this session.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Subscribes this session to `topic`: every [`ContextHandle::publish`]
    /// to it is queued here (through the overflow policy) until the session
    /// unsubscribes or ends. Returns `false` if it was already subscribed.
    ///
    /// # Errors
    ///
    /// [`crate::Error::SessionClosed`] for a session that is closing or
    /// closed (or whose handshake was refused),
    /// [`crate::Error::TooManySubscriptions`] past the vhost's
    /// `max_subscriptions`, [`crate::Error::Closed`] during teardown.
    ///
    /// [`ContextHandle::publish`]: crate::ContextHandle::publish
    pub fn subscribe(&self, topic: &str) -> Result<bool, crate::Error> {
        self.subscribe_with(topic, SubscribeRequest::new())
    }

    /// Subscribes like [`subscribe`](Self::subscribe), with the request's
    /// options: recover the messages published since a
    /// [`Position`](crate::pubsub::Position) (if the broker keeps history),
    /// and queue an acknowledgement before anything else of the topic. If
    /// the session was already subscribed, the acknowledgement is queued
    /// with nothing recovered and `Ok(false)` returned.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe).
    pub fn subscribe_with(
        &self,
        topic: &str,
        request: SubscribeRequest,
    ) -> Result<bool, crate::Error> {
        let ctx = self.shared.vhost.context().ok_or(crate::Error::Closed)?;
        ctx.topics.subscribe(topic, self, request)
    }

    /// Unsubscribes from `topic`; returns whether it was subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        self.shared
            .vhost
            .context()
            .is_some_and(|ctx| ctx.topics.unsubscribe(topic, self))
    }

    /// The topics this session is subscribed to.
    pub fn subscriptions(&self) -> Vec<String> {
        lock(&self.shared.topics)
            .iter()
            .flat_map(|topics| topics.iter())
            .map(|t| t.to_string())
            .collect()
    }

    /// Runs `task` on the context's loop, on the session's own service
    /// thread, for as long as the session lives (a timer that pushes to it,
    /// say). The task belongs to the session: it is cancelled (dropped at its
    /// next await) when the session ends, after the protocol's
    /// [`close`](crate::Protocol::close) callback, or at once if the
    /// handshake is refused after `open` spawned it. Work that must outlive
    /// the session belongs on the host's own executor, or in
    /// [`ContextHandle::post`](crate::ContextHandle::post).
    ///
    /// # Errors
    ///
    /// [`crate::Error::SessionClosed`] once the session has ended (or its
    /// handshake was refused); [`crate::Error::Closed`] during teardown.
    pub fn spawn(
        &self,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), crate::Error> {
        let ctx = self.shared.vhost.context().ok_or(crate::Error::Closed)?;
        if !ctx.is_running() {
            return Err(crate::Error::Closed);
        }
        let spawner = &self.shared.spawner;
        // Under the lock, so that a session ending at this moment either
        // sees the task and cancels it, or refuses it.
        let mut tasks = lock(&self.shared.tasks);
        if self.shared.tasks_ended.load(Ordering::Relaxed) {
            return Err(crate::Error::SessionClosed);
        }
        let task = spawner.spawn_task(task).ok_or(crate::Error::Closed)?;
        let tasks = tasks.get_or_insert_with(Box::default);
        // Bounded by what is still running: finished tasks are let go here.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok(())
    }

    /// Queues `message` without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the session is closing or closed;
    /// [`SendError::Full`] when the queue is at its byte bound, after which the
    /// vhost's [`OverflowPolicy`](crate::OverflowPolicy) may also close the session.
    pub fn try_send(&self, message: Message) -> Result<(), SendError> {
        self.shared.push(message, true)
    }

    /// Queues `message` without waiting, as [`try_send`](Self::try_send)
    /// does, for a message sent to many sessions: a small text or binary
    /// message is copied into the queue already encoded (on a session
    /// without an extension), a larger one shares its payload, so the caller
    /// keeps the message and nothing is cloned that need not be.
    ///
    /// # Errors
    ///
    /// As [`try_send`](Self::try_send)'s, carrying a copy of the message.
    pub fn try_send_ref(&self, message: &Message) -> Result<(), SendError> {
        self.offer(message).map_err(|refusal| match refusal {
            Refusal::Closed => SendError::Closed(message.clone()),
            Refusal::Full => SendError::Full(message.clone()),
        })
    }

    /// [`try_send_ref`](Self::try_send_ref) for callers that only count the
    /// refusals (a publish): no copy of the message for the error.
    pub(crate) fn offer(&self, message: &Message) -> Result<(), Refusal> {
        let (result, dropped) = self.shared.outbox.push_ref(message);
        self.shared.count_drops(dropped);
        result
    }

    /// Queues `message`, waiting for room in the queue if it is full.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the session closes before the message is queued.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes drops the message unsent.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        let mut message = message;
        loop {
            let listener = self.shared.outbox.room();
            match self.shared.push(message, false) {
                Err(SendError::Full(m)) => message = m,
                other => return other,
            }
            listener.await;
        }
    }

    /// Starts the close handshake with `code` and `reason` (truncated to the
    /// 123 bytes a Close frame allows) once the already queued messages are out.
    ///
    /// # Errors
    ///
    /// [`crate::Error::SessionClosed`] when the session is already closing or closed.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), crate::Error> {
        if self.shared.outbox.request_close(code, reason) {
            Ok(())
        } else {
            Err(crate::Error::SessionClosed)
        }
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("vhost", &self.shared.vhost.name())
            .field("path", &self.shared.path)
            .finish()
    }
}

impl SessionShared {
    /// Cancels the tasks the session spawned and refuses new ones: the
    /// session has ended.
    pub(crate) fn cancel_tasks(&self) {
        let tasks = {
            let mut tasks = lock(&self.tasks);
            self.tasks_ended.store(true, Ordering::Relaxed);
            tasks.take()
        };
        // Dropped outside the lock: a task's drop may run arbitrary code.
        drop(tasks);
    }

    /// Counts messages the overflow policy dropped, here and context-wide.
    fn count_drops(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(ctx) = self.vhost.context() {
            ctx.metrics.count_drops(n);
        }
    }

    fn push(&self, message: Message, apply_policy: bool) -> Result<(), SendError> {
        let pushed = self.outbox.push(message, apply_policy);
        self.count_drops(pushed.dropped);
        pushed.result
    }
}
