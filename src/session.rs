//! Sessions: one task per WebSocket connection that both reads and writes,
//! the bounded outbound queue in front of its single writer, and the
//! thread-safe [`SessionHandle`].
//!
//! # Invariants
//!
//! - Only the session task touches the socket. Everybody else (protocol
//!   callbacks, other tasks, other threads) appends to the outbound queue, so
//!   there is exactly one writer and frames never interleave.
//! - The queue is bounded in bytes. A non-waiting send to a full queue applies
//!   the vhost's [`OverflowPolicy`]; a waiting send waits for room.
//! - While the queue is over its bound the task stops reading, so a peer that
//!   sends without reading is throttled by TCP instead of growing our memory.
//! - A close request is queued behind the messages already accepted, so they
//!   go out before the Close frame.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
#[cfg(any(fuzzing, test))]
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
#[cfg(any(fuzzing, test))]
use std::task::{Context as TaskContext, Poll};

use async_executor::Task;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use event_listener::Event;
#[cfg(any(fuzzing, test))]
use futures_lite::{AsyncRead, AsyncWrite};

use crate::config::OverflowPolicy;
use crate::error::SendError;
use crate::tasks::Spawner;
use crate::vhost::{Vhost, lock};
use crate::{CloseCode, Message};

mod driver;

pub(crate) use driver::{Driver, Transport};

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
    path: String,
    protocol: String,
    max_bytes: usize,
    max_messages: usize,
    overflow: OverflowPolicy,
    /// Messages dropped by the overflow policy.
    dropped: AtomicU64,
    /// Topics this session is subscribed to, unsubscribed when it ends.
    pub(crate) topics: Mutex<Vec<Arc<str>>>,
    /// The task set of the worker serving the session, where
    /// [`SessionHandle::spawn`] puts its tasks (`None`: the context's first).
    spawner: Option<Spawner>,
    /// The tasks [`SessionHandle::spawn`] started, cancelled when the session
    /// ends (`None` from then on: no more can be spawned).
    tasks: Mutex<Option<Vec<Task<()>>>>,
    outbox: Mutex<Outbox>,
    /// Notified when room frees up or the session closes.
    room: Event,
}

struct Outbox {
    queue: VecDeque<Message>,
    bytes: usize,
    state: OutState,
    /// The session task's waker, left by [`SessionShared::park`].
    waker: Option<Waker>,
    /// Whether a push should wake the task: only while it is parked waiting
    /// for messages. While it runs it looks at the queue again before it
    /// parks, so a push from its own callbacks (an echo) costs no wake-up.
    wants_data: bool,
}

/// What [`SessionShared::park`] found.
pub(crate) struct Park {
    /// The queue changed under us: look again instead of sleeping.
    pub(crate) retry: bool,
    /// A close has been requested (or the session is closed).
    pub(crate) closing: bool,
}

#[derive(Debug)]
enum OutState {
    Open,
    /// A close was requested; it goes out once the queue is empty.
    Closing(CloseFrame),
    /// The Close frame has been handed to the writer, or the peer closed.
    Closed,
}

pub(crate) enum Pop {
    Message(Message),
    Close(CloseFrame),
    Empty,
}

impl SessionHandle {
    pub(crate) fn new(
        id: SessionId,
        peer: SocketAddr,
        vhost: Vhost,
        path: String,
        protocol: String,
        spawner: Option<Spawner>,
    ) -> Self {
        let limits = vhost.limits();
        let (max_bytes, max_messages, overflow) = (
            limits.max_queue_bytes,
            limits.max_queue_messages,
            limits.overflow,
        );
        Self {
            shared: Arc::new(SessionShared {
                id,
                peer,
                vhost,
                path,
                protocol,
                max_bytes,
                max_messages,
                overflow,
                dropped: AtomicU64::new(0),
                topics: Mutex::new(Vec::new()),
                spawner,
                tasks: Mutex::new(Some(Vec::new())),
                outbox: Mutex::new(Outbox {
                    queue: VecDeque::new(),
                    bytes: 0,
                    state: OutState::Open,
                    waker: None,
                    wants_data: false,
                }),
                room: Event::new(),
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

    /// The mount path the session connected to.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The negotiated protocol's name.
    pub fn protocol(&self) -> &str {
        &self.shared.protocol
    }

    /// Whether the session still accepts messages.
    pub fn is_open(&self) -> bool {
        matches!(self.shared.lock().state, OutState::Open)
    }

    /// Bytes waiting in the outbound queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
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
        let ctx = self.shared.vhost.context().ok_or(crate::Error::Closed)?;
        ctx.topics.subscribe(topic, self)
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
        let spawner = self.shared.spawner.as_ref().unwrap_or(&ctx.spawner);
        // Under the lock, so that a session ending at this moment either
        // sees the task and cancels it, or refuses it.
        let mut tasks = lock(&self.shared.tasks);
        let Some(tasks) = tasks.as_mut() else {
            return Err(crate::Error::SessionClosed);
        };
        let task = spawner.spawn_task(task).ok_or(crate::Error::Closed)?;
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
    /// vhost's [`OverflowPolicy`] may also close the session.
    pub fn try_send(&self, message: Message) -> Result<(), SendError> {
        self.shared.push(message, true)
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
            let listener = self.shared.room.listen();
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
        if self.shared.request_close(code, reason) {
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
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a few field updates), so poisoning is ignored.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, message: Message, apply_policy: bool) -> Result<(), SendError> {
        let size = message.len();
        let mut out = self.lock();
        if !matches!(out.state, OutState::Open) {
            return Err(SendError::Closed(message));
        }
        // One message larger than the whole bound may still go out alone, or it
        // could never be sent at all; its size is the application's choice.
        let full = |out: &Outbox| {
            !out.queue.is_empty()
                && (out.bytes + size > self.max_bytes || out.queue.len() >= self.max_messages)
        };
        let mut dropped = 0;
        if full(&out) {
            if !apply_policy {
                return Err(SendError::Full(message));
            }
            match self.overflow {
                OverflowPolicy::Reject => return Err(SendError::Full(message)),
                OverflowPolicy::Close(code) => {
                    out.state = OutState::Closing(close_frame(code, "outbound queue full"));
                    let waker = out.waker.take();
                    drop(out);
                    tracing::debug!(session = %self.id, "outbound queue full, closing");
                    wake(waker);
                    self.room.notify(usize::MAX);
                    return Err(SendError::Full(message));
                }
                OverflowPolicy::DropNewest => {
                    drop(out);
                    self.count_drops(1);
                    return Err(SendError::Full(message));
                }
                OverflowPolicy::DropOldest => {
                    while full(&out) {
                        let Some(old) = out.queue.pop_front() else {
                            break;
                        };
                        out.bytes -= old.len();
                        dropped += 1;
                    }
                }
            }
        }
        out.bytes += size;
        out.queue.push_back(message);
        let waker = if out.wants_data {
            out.wants_data = false;
            out.waker.take()
        } else {
            None
        };
        drop(out);
        wake(waker);
        if dropped > 0 {
            self.count_drops(dropped);
        }
        Ok(())
    }

    fn count_drops(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(ctx) = self.vhost.context() {
            ctx.metrics.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Returns `true` if this call started the close.
    pub(crate) fn request_close(&self, code: CloseCode, reason: &str) -> bool {
        let mut out = self.lock();
        if !matches!(out.state, OutState::Open) {
            return false;
        }
        out.state = OutState::Closing(close_frame(code, reason));
        // A close wakes the task even while it waits for the socket instead
        // of for messages: its close timeout must start now.
        let waker = out.waker.take();
        drop(out);
        wake(waker);
        // Senders parked on a full queue learn at once that it is closed.
        self.room.notify(usize::MAX);
        true
    }

    /// Takes the next message for the writer (or the requested Close).
    /// The task is running, so pushes stop waking it until it parks again.
    pub(crate) fn pop(&self) -> Pop {
        let mut out = self.lock();
        out.wants_data = false;
        if let Some(m) = out.queue.pop_front() {
            out.bytes -= m.len();
            drop(out);
            self.room.notify(usize::MAX);
            return Pop::Message(m);
        }
        match std::mem::replace(&mut out.state, OutState::Closed) {
            OutState::Closing(frame) => Pop::Close(frame),
            other => {
                out.state = other;
                Pop::Empty
            }
        }
    }

    pub(crate) fn over_bound(&self) -> bool {
        self.lock().bytes >= self.max_bytes
    }

    /// Leaves the task's waker for the next push (when `wants_data`) or
    /// close request. Checks and registers under one lock, so that no push
    /// slips between the task's last look at the queue and its sleep.
    pub(crate) fn park(&self, waker: &Waker, wants_data: bool) -> Park {
        let mut out = self.lock();
        let closing = !matches!(out.state, OutState::Open);
        if wants_data && (!out.queue.is_empty() || matches!(out.state, OutState::Closing(_))) {
            return Park {
                retry: true,
                closing,
            };
        }
        match &out.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => out.waker = Some(waker.clone()),
        }
        out.wants_data = wants_data;
        Park {
            retry: false,
            closing,
        }
    }

    /// Cancels the tasks the session spawned and refuses new ones: the
    /// session has ended.
    pub(crate) fn cancel_tasks(&self) {
        let tasks = lock(&self.tasks).take();
        // Dropped outside the lock: a task's drop may run arbitrary code.
        drop(tasks);
    }

    /// No more sends: drop what is queued and release waiting senders.
    pub(crate) fn mark_closed(&self) {
        let mut out = self.lock();
        out.state = OutState::Closed;
        out.queue.clear();
        out.bytes = 0;
        // The task is ending: let go of its waker (and the task's memory).
        let waker = out.waker.take();
        drop(out);
        drop(waker);
        self.room.notify(usize::MAX);
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

/// Builds a Close frame, truncating the reason to what fits in a control frame.
pub(crate) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    }
}

/// Runs one echo session over an in-memory stream fed with `input` (read in
/// chunks of 1 to 13 bytes, then EOF) and returns what the server wrote
/// (capped at 1 MiB). Deterministic; used by the `session_bytes` fuzz target
/// and its corpus replay.
#[cfg(any(fuzzing, test))]
pub(crate) fn run_in_memory(input: &[u8], limits: &crate::Limits) -> Vec<u8> {
    use std::sync::Weak;

    use crate::protocol::erase;

    let vhost = crate::VhostConfig::builder("fuzz")
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .protocol(crate::protocols::Echo)
        .mount(crate::Mount::websocket("/", ["echo"]))
        .limits(limits.clone())
        .build()
        .map(|cfg| Vhost::new(cfg, Weak::new()));
    let Ok(vhost) = vhost else {
        return Vec::new();
    };
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let handle = SessionHandle::new(SessionId(1), peer, vhost, "/".into(), "echo".into(), None);
    let request = crate::Request::synthetic("GET", "/", &[], peer);
    let Ok(mut callbacks) = erase(crate::protocols::Echo).open(&request, &handle) else {
        return Vec::new();
    };
    let stream = MemStream {
        input: input.to_vec(),
        pos: 0,
        output: Vec::new(),
    };
    let mut driver = Driver::new(stream, &[], handle.clone(), limits);
    let reason = async_io::block_on(driver.run(callbacks.as_mut()));
    handle.shared.mark_closed();
    callbacks.close(&handle, &reason);
    driver.into_io().output
}

/// An in-memory byte stream: reads come from `input` in small chunks, writes
/// go to `output` (refused past 1 MiB so that memory stays bounded).
#[cfg(any(fuzzing, test))]
struct MemStream {
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
}

#[cfg(any(fuzzing, test))]
impl AsyncRead for MemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        // Chunk sizes vary with the position so that frames are split at
        // every kind of boundary, deterministically.
        let chunk = 1 + self.pos % 13;
        let n = chunk.min(buf.len()).min(self.input.len() - self.pos);
        let pos = self.pos;
        buf[..n].copy_from_slice(&self.input[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

#[cfg(any(fuzzing, test))]
impl AsyncWrite for MemStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.output.len() + buf.len() > 1 << 20 {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn in_memory_session_echoes_and_answers_close() {
        let mut input = client_frame(0x1, b"hello");
        input.extend(client_frame(0x8, &[0x03, 0xe8]));
        let out = run_in_memory(&input, &crate::Limits::default());
        assert_eq!(&out[..7], b"\x81\x05hello");
        assert_eq!(&out[7..], b"\x88\x02\x03\xe8");
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        let f = close_frame(CloseCode::Normal, &long);
        assert!(f.reason.len() <= 123);
        assert_eq!(f.reason.len() % 2, 0);
    }
}
