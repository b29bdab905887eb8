//! The bounded outbound queue in front of a session's single writer.
//!
//! # Invariants
//!
//! - Only the session's driver takes from the queue and touches the socket.
//!   Everybody else (protocol callbacks, other tasks, other threads) appends
//!   here, so there is exactly one writer and frames never interleave.
//! - The queue is bounded in bytes and in messages. A non-waiting push to a
//!   full queue applies the vhost's [`OverflowPolicy`]; a waiting one waits
//!   for room ([`Outbox::room`]).
//! - A close request is queued behind the messages already accepted, so they
//!   go out before the Close frame.
//! - The driver's waker waits here, checked and registered under the same
//!   lock as a push, so that no push slips between the driver's last look and
//!   its sleep. A push wakes the driver only while it waits for messages; a
//!   push from its own callbacks (an echo) costs no wake-up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::Waker;

use event_listener::{Event, EventListener};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::budget::{Budget, Kind};
use crate::common::lock;
use crate::config::OverflowPolicy;
use crate::error::SendError;
use crate::proto::close::close_frame;

/// A session's outbound queue.
pub(crate) struct Outbox {
    max_bytes: usize,
    max_messages: usize,
    overflow: OverflowPolicy,
    /// The context's memory budget, which counts every queued byte.
    budget: Option<Arc<Budget>>,
    queue: Mutex<Queue>,
    /// Notified when room frees up or the session closes.
    room: Event,
}

struct Queue {
    messages: VecDeque<Message>,
    bytes: usize,
    state: QueueState,
    /// The driver's waker, left by [`Outbox::park`].
    waker: Option<Waker>,
    /// Whether a push should wake the driver: only while it is parked
    /// waiting for messages.
    wants_data: bool,
}

#[derive(Debug)]
enum QueueState {
    Open,
    /// A close was requested; it goes out once the queue is empty.
    Closing(CloseFrame),
    /// The Close has been handed to the writer, or the session is over.
    Closed,
}

/// What one push did.
#[derive(Debug)]
pub(crate) struct Pushed {
    /// Whether the message was queued, or why not (the message handed back).
    pub(crate) result: Result<(), SendError>,
    /// Messages the overflow policy dropped to make this push's decision
    /// (older ones for drop-oldest, this one for drop-newest).
    pub(crate) dropped: u64,
}

/// What the driver takes from the queue.
pub(crate) enum Pop {
    Message(Message),
    Close(CloseFrame),
    Empty,
}

/// What [`Outbox::park`] found.
pub(crate) struct Park {
    /// The queue changed under us: look again instead of sleeping.
    pub(crate) retry: bool,
    /// A close has been requested (or the session is closed).
    pub(crate) closing: bool,
}

impl Outbox {
    pub(crate) fn new(
        max_bytes: usize,
        max_messages: usize,
        overflow: OverflowPolicy,
        budget: Option<Arc<Budget>>,
    ) -> Self {
        Self {
            max_bytes,
            max_messages,
            overflow,
            budget,
            queue: Mutex::new(Queue {
                messages: VecDeque::new(),
                bytes: 0,
                state: QueueState::Open,
                waker: None,
                wants_data: false,
            }),
            room: Event::new(),
        }
    }

    /// Whether messages are still accepted.
    pub(crate) fn is_open(&self) -> bool {
        matches!(lock(&self.queue).state, QueueState::Open)
    }

    /// Bytes waiting.
    pub(crate) fn queued_bytes(&self) -> usize {
        lock(&self.queue).bytes
    }

    /// A listener for the next change of room (a pop, a close).
    pub(crate) fn room(&self) -> EventListener {
        self.room.listen()
    }

    /// Queues `message`. With `apply_policy` a full queue applies the
    /// overflow policy; without, it hands the message back as `Full`.
    pub(crate) fn push(&self, message: Message, apply_policy: bool) -> Pushed {
        let size = message.len();
        let mut q = lock(&self.queue);
        if !matches!(q.state, QueueState::Open) {
            return Pushed {
                result: Err(SendError::Closed(message)),
                dropped: 0,
            };
        }
        // One message larger than the whole bound may still go out alone, or it
        // could never be sent at all; its size is the application's choice.
        // The context's memory budget is a bound too: a message that would
        // take it over finds the queue full, however empty the queue is.
        let full = |q: &Queue| {
            (!q.messages.is_empty()
                && (q.bytes + size > self.max_bytes || q.messages.len() >= self.max_messages))
                || self.budget.as_ref().is_some_and(|b| !b.fits(size))
        };
        let mut dropped = 0;
        if full(&q) {
            if !apply_policy {
                return Pushed {
                    result: Err(SendError::Full(message)),
                    dropped: 0,
                };
            }
            match self.overflow {
                OverflowPolicy::Reject => {
                    return Pushed {
                        result: Err(SendError::Full(message)),
                        dropped: 0,
                    };
                }
                OverflowPolicy::Close(code) => {
                    q.state = QueueState::Closing(close_frame(code, "outbound queue full"));
                    let waker = q.waker.take();
                    drop(q);
                    tracing::debug!("outbound queue full, closing");
                    wake(waker);
                    self.room.notify(usize::MAX);
                    return Pushed {
                        result: Err(SendError::Full(message)),
                        dropped: 0,
                    };
                }
                OverflowPolicy::DropNewest => {
                    return Pushed {
                        result: Err(SendError::Full(message)),
                        dropped: 1,
                    };
                }
                OverflowPolicy::DropOldest => {
                    while full(&q) {
                        let Some(old) = q.messages.pop_front() else {
                            break;
                        };
                        q.bytes -= old.len();
                        dropped += 1;
                        // What the budget gets back is room for this one.
                        self.give_back(old.len());
                    }
                    if full(&q) {
                        // Nothing left to drop and still over the budget:
                        // this one goes instead.
                        return Pushed {
                            result: Err(SendError::Full(message)),
                            dropped: dropped + 1,
                        };
                    }
                }
            }
        }
        q.bytes += size;
        if let Some(b) = &self.budget {
            b.add(Kind::Outbound, size);
        }
        q.messages.push_back(message);
        let waker = if q.wants_data {
            q.wants_data = false;
            q.waker.take()
        } else {
            None
        };
        drop(q);
        wake(waker);
        Pushed {
            result: Ok(()),
            dropped,
        }
    }

    /// Requests the close handshake behind the queued messages; `true` if
    /// this call started it.
    pub(crate) fn request_close(&self, code: CloseCode, reason: &str) -> bool {
        let mut q = lock(&self.queue);
        if !matches!(q.state, QueueState::Open) {
            return false;
        }
        q.state = QueueState::Closing(close_frame(code, reason));
        // A close wakes the driver even while it waits for the socket instead
        // of for messages: its close deadline must start now.
        let waker = q.waker.take();
        drop(q);
        wake(waker);
        // Senders parked on a full queue learn at once that it is closed.
        self.room.notify(usize::MAX);
        true
    }

    /// Takes the next message for the writer (or the requested Close). The
    /// driver is running, so pushes stop waking it until it parks again.
    pub(crate) fn pop(&self) -> Pop {
        let mut q = lock(&self.queue);
        q.wants_data = false;
        if let Some(m) = q.messages.pop_front() {
            q.bytes -= m.len();
            drop(q);
            self.give_back(m.len());
            self.room.notify(usize::MAX);
            return Pop::Message(m);
        }
        match std::mem::replace(&mut q.state, QueueState::Closed) {
            QueueState::Closing(frame) => Pop::Close(frame),
            other => {
                q.state = other;
                Pop::Empty
            }
        }
    }

    /// Whether the queue holds its byte bound or more.
    pub(crate) fn over_bound(&self) -> bool {
        lock(&self.queue).bytes >= self.max_bytes
    }

    /// Leaves the driver's waker for the next push (when `wants_data`) or
    /// close request. Checks and registers under one lock.
    pub(crate) fn park(&self, waker: &Waker, wants_data: bool) -> Park {
        let mut q = lock(&self.queue);
        let closing = !matches!(q.state, QueueState::Open);
        if wants_data && (!q.messages.is_empty() || matches!(q.state, QueueState::Closing(_))) {
            return Park {
                retry: true,
                closing,
            };
        }
        match &q.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => q.waker = Some(waker.clone()),
        }
        q.wants_data = wants_data;
        Park {
            retry: false,
            closing,
        }
    }

    /// No more messages: drops what is queued, lets go of the driver's waker
    /// and releases waiting senders.
    pub(crate) fn mark_closed(&self) {
        let mut q = lock(&self.queue);
        q.state = QueueState::Closed;
        q.messages.clear();
        let bytes = std::mem::take(&mut q.bytes);
        let waker = q.waker.take();
        drop(q);
        self.give_back(bytes);
        drop(waker);
        self.room.notify(usize::MAX);
    }
}

impl Outbox {
    /// Gives `n` queued bytes back to the budget.
    fn give_back(&self, n: usize) {
        if let Some(b) = &self.budget {
            b.sub(Kind::Outbound, n);
        }
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}
