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
//! - For a session without an extension, small data messages are queued
//!   already encoded, back to back ([`Frames`]): a message published to many
//!   sessions is copied into each queue as a frame (no shared buffer to count
//!   references to, no queue entry per message), and the writer takes a run
//!   of them as one piece. The bounds still count messages and payload
//!   bytes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use bytes::BytesMut;
use event_listener::{Event, EventListener};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::budget::{Budget, Kind};
use crate::common::lock;
use crate::config::OverflowPolicy;
use crate::error::SendError;
use crate::proto::close::close_frame;
use crate::proto::frame;
use crate::proto::session::COPY_MAX;

/// A session's outbound queue.
pub(crate) struct Outbox {
    /// The bounds, 32 bits on every session (saturated: a queue bound above
    /// 4 GiB is one nobody reaches).
    max_bytes: u32,
    max_messages: u32,
    overflow: OverflowPolicy,
    /// Whether small data messages are queued encoded ([`Frames`]): for a
    /// session without an extension (which encodes each message itself),
    /// unless the overflow policy drops the oldest messages one by one.
    encodes: bool,
    /// The context's memory budget, which counts what the queued messages
    /// hold (see [`Item::charge`]).
    budget: Option<Arc<Budget>>,
    queue: Mutex<Queue>,
    /// Whether the queue is anything but open and empty (it holds messages,
    /// a Close is requested, or it is closed): written under the lock on
    /// every change, read without it. The driver looking at an empty queue
    /// (twice per message in ping-pong traffic) takes no lock, and the
    /// direct lane ([`Lane`]) is only taken while it is clear. A stale
    /// `false` in the driver is harmless: it looks again under the lock
    /// before it sleeps ([`Outbox::park`]).
    busy: AtomicBool,
    /// Whether a push should wake the driver: only while it is parked
    /// waiting for messages. Set under the lock by [`Outbox::park`], read
    /// and cleared under it by a push; the driver also clears it without
    /// the lock when it starts looking (a push that still sees it set wakes
    /// a running driver once, for nothing; one that sees it clear relies on
    /// the driver's next look under the lock).
    wants_data: AtomicBool,
    /// Notified when room frees up or the session closes.
    room: Event,
}

/// The queue is open (no close requested, not closed), closing (`closing`
/// holds the requested Close) or closed: a pointer and a flag in the
/// padding instead of a 16-byte state enum.
struct Queue {
    items: VecDeque<Item>,
    /// Payload bytes of the messages in `items`.
    bytes: usize,
    /// Messages in `items` (a [`Frames`] entry holds several).
    messages: u32,
    /// A close was requested; this Close goes out once the queue is empty.
    closing: Option<Box<CloseFrame>>,
    /// The driver's waker, left by [`Outbox::park`].
    waker: Option<Waker>,
    /// A waiting sender found the queue full: the next pop tells `room`.
    /// (Notifying an event nobody listens to still takes its lock, and the
    /// first notification allocates its list.)
    room_wanted: bool,
    /// The Close has been handed to the writer, or the session is over.
    closed: bool,
}

impl Queue {
    /// Neither closing nor closed.
    fn is_open(&self) -> bool {
        self.closing.is_none() && !self.closed
    }

    /// The requested Close, if any; the queue is closed from then on.
    fn take_close(&mut self) -> Option<CloseFrame> {
        let frame = self.closing.take()?;
        self.closed = true;
        Some(*frame)
    }

    /// Closed, dropping a requested Close not yet taken.
    fn set_closed(&mut self) {
        self.closing = None;
        self.closed = true;
    }
}

/// One entry of the queue.
pub(crate) enum Item {
    /// A message as it was sent.
    Message(Message),
    /// Small data messages, encoded.
    Frames(Frames),
}

/// Small data messages queued as the frames the session would encode for
/// them (unmasked, final, no extension bits), back to back. Encoded at the
/// push, outside the driver; handed to the session as one piece.
pub(crate) struct Frames {
    pub(crate) bytes: BytesMut,
    /// How many messages `bytes` holds.
    pub(crate) messages: u32,
    /// Their payload bytes (what the bounds and the budget count).
    pub(crate) payload: usize,
}

/// The most encoded bytes one [`Frames`] entry holds.
const FRAMES_MAX: usize = 4096;
/// The first capacity of a [`Frames`] entry's buffer (it grows as frames are
/// added, up to [`FRAMES_MAX`]).
const FRAMES_FIRST: usize = 512;
/// The most a thread keeps of emptied [`Frames`] buffers (see [`recycle`]):
/// enough for a publish to a thousand sessions.
const SPARE_BYTES: usize = 1 << 20;

thread_local! {
    /// Emptied buffers of [`Frames`] entries the writers on this thread
    /// have copied out, for the next entries encoded on it: a publish on
    /// the thread that also writes (one service thread) allocates none.
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            buffers: Vec::new(),
            bytes: 0,
        })
    };
}

struct Spare {
    buffers: Vec<BytesMut>,
    /// Their capacity.
    bytes: usize,
}

/// Keeps the emptied buffer of a [`Frames`] entry for the next one encoded
/// on this thread (none larger than two entries' worth, at most
/// [`SPARE_BYTES`] of them).
pub(crate) fn recycle(mut buf: BytesMut) {
    let size = buf.capacity();
    if !(FRAMES_FIRST..=2 * FRAMES_MAX).contains(&size) {
        return;
    }
    buf.clear();
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.bytes + size <= SPARE_BYTES
        {
            spare.bytes += size;
            spare.buffers.push(buf);
        }
    });
}

/// A buffer for a new [`Frames`] entry whose first frame is `framed` bytes:
/// a spare one of this thread's if it has room, else a new one.
fn run_buffer(framed: usize) -> BytesMut {
    let spare = SPARE
        .try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            if spare.buffers.last()?.capacity() < framed {
                return None;
            }
            let buf = spare.buffers.pop()?;
            spare.bytes -= buf.capacity();
            Some(buf)
        })
        .ok()
        .flatten();
    spare.unwrap_or_else(|| BytesMut::with_capacity(framed.max(FRAMES_FIRST)))
}

impl Item {
    /// Payload bytes.
    fn len(&self) -> usize {
        match self {
            Self::Message(m) => m.len(),
            Self::Frames(f) => f.payload,
        }
    }

    /// What the memory budget counts for it: a message's payload, or the
    /// capacity of the buffer holding the encoded ones (its memory, charged
    /// as it grows: a few times per buffer instead of once per message).
    fn charge(&self) -> usize {
        match self {
            Self::Message(m) => m.len(),
            Self::Frames(f) => f.bytes.capacity(),
        }
    }

    /// Messages.
    fn messages(&self) -> u32 {
        match self {
            Self::Message(_) => 1,
            Self::Frames(f) => f.messages,
        }
    }
}

/// A message to queue: owned (handed back when refused), or borrowed (a
/// publish to many queues: encoded from the borrow, cloned only if it is
/// queued as a message).
trait Offer {
    fn message(&self) -> &Message;
    fn into_message(self) -> Message;
}

impl Offer for Message {
    fn message(&self) -> &Message {
        self
    }

    fn into_message(self) -> Message {
        self
    }
}

impl Offer for &Message {
    fn message(&self) -> &Message {
        self
    }

    fn into_message(self) -> Message {
        self.clone()
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Closed,
    Full,
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

/// Messages [`Outbox::pop_batch`] takes at most at once.
const BATCH: usize = 16;

/// Messages taken from the queue in one go, on the driver's stack.
pub(crate) struct Batch {
    slots: [Option<Item>; BATCH],
    len: usize,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Self {
            slots: Default::default(),
            len: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn is_full(&self) -> bool {
        self.len == BATCH
    }

    fn push(&mut self, m: Item) {
        if let Some(slot) = self.slots.get_mut(self.len) {
            *slot = Some(m);
            self.len += 1;
        }
    }

    /// The entries, in order; the batch is empty afterwards.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Item> + '_ {
        let len = std::mem::take(&mut self.len);
        self.slots[..len].iter_mut().filter_map(Option::take)
    }
}

/// What [`Outbox::park`] found.
pub(crate) struct Park {
    /// The queue changed under us: look again instead of sleeping.
    pub(crate) retry: bool,
    /// A close has been requested (or the session is closed).
    pub(crate) closing: bool,
}

impl Outbox {
    /// A queue bounded by `max_bytes` of payload and `max_messages`;
    /// `encodes`: whether small data messages may be queued encoded (only
    /// for a session without an extension: see [`Frames`]).
    pub(crate) fn new(
        max_bytes: usize,
        max_messages: usize,
        overflow: OverflowPolicy,
        budget: Option<Arc<Budget>>,
        encodes: bool,
    ) -> Self {
        let cap = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            max_bytes: cap(max_bytes),
            max_messages: cap(max_messages),
            overflow,
            // Dropping the oldest message must find it on its own.
            encodes: encodes && overflow != OverflowPolicy::DropOldest,
            budget,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                messages: 0,
                closing: None,
                waker: None,
                room_wanted: false,
                closed: false,
            }),
            busy: AtomicBool::new(false),
            wants_data: AtomicBool::new(false),
            room: Event::new(),
        }
    }

    fn max_bytes(&self) -> usize {
        self.max_bytes as usize
    }

    fn max_messages(&self) -> usize {
        self.max_messages as usize
    }

    /// Whether messages are still accepted.
    pub(crate) fn is_open(&self) -> bool {
        lock(&self.queue).is_open()
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
        let (message, ahead) = match self.offer_to_lane(message) {
            Ok(()) => {
                return Pushed {
                    result: Ok(()),
                    dropped: 0,
                };
            }
            Err(back) => back,
        };
        let (result, dropped) = self.enqueue(message, ahead, apply_policy);
        let result = result.map_err(|(refusal, message)| match refusal {
            Refusal::Closed => SendError::Closed(message),
            Refusal::Full => SendError::Full(message),
        });
        Pushed { result, dropped }
    }

    /// Queues a copy of `message` (a publish to many sessions), applying the
    /// overflow policy to a full queue; returns the refusal, and how many
    /// messages the policy dropped.
    pub(crate) fn push_ref(&self, message: &Message) -> (Result<(), Refusal>, u64) {
        if self.in_lane() {
            let pushed = self.push(message.clone(), true);
            let result = pushed.result.map_err(|e| match e {
                SendError::Closed(_) => Refusal::Closed,
                SendError::Full(_) => Refusal::Full,
            });
            return (result, pushed.dropped);
        }
        let (result, dropped) = self.enqueue(message, Ahead::default(), true);
        (result.map_err(|(refusal, _)| refusal), dropped)
    }

    /// Queues what the lane did not take (`ahead`: what the lane holds for
    /// this session, counted as queued ahead of it); a refusal hands the
    /// offer back. Also returns how many messages the overflow policy
    /// dropped.
    fn enqueue<O: Offer>(
        &self,
        offer: O,
        ahead: Ahead,
        apply_policy: bool,
    ) -> (Result<(), (Refusal, O)>, u64) {
        let message = offer.message();
        let size = message.len();
        // Encoded from the borrow, or queued as it is.
        let encode = self.encodes
            && size <= COPY_MAX
            && matches!(message, Message::Text(_) | Message::Binary(_));
        let mut q = lock(&self.queue);
        if !q.is_open() {
            return (Err((Refusal::Closed, offer)), 0);
        }
        // One message larger than the whole bound may still go out alone, or it
        // could never be sent at all; its size is the application's choice.
        // The context's memory budget is a bound the same way: a message
        // that would take it over finds a non-empty queue full, and an empty
        // queue takes it (the budget is overshot by at most one message per
        // session, a fast reader's queue is usually empty, and a waiting
        // `send` always has a pop coming that wakes it: a budget that never
        // relents cannot hold it forever).
        // What the direct lane took before this message counts as queued
        // ahead of it (see `Lane`).
        let full = |q: &Queue| {
            (q.messages > 0 || ahead.bytes > 0 || ahead.messages > 0)
                && (q.bytes + ahead.bytes + size > self.max_bytes()
                    || q.messages as usize + ahead.messages >= self.max_messages()
                    || self.budget.as_ref().is_some_and(|b| !b.fits(size)))
        };
        let mut dropped = 0;
        if full(&q) {
            if !apply_policy {
                // A waiting send: it listens to `room` and tries again.
                q.room_wanted = true;
                return (Err((Refusal::Full, offer)), 0);
            }
            match self.overflow {
                OverflowPolicy::Reject => {
                    return (Err((Refusal::Full, offer)), 0);
                }
                OverflowPolicy::Close(code) => {
                    q.closing = Some(Box::new(close_frame(code, "outbound queue full")));
                    self.busy.store(true, Ordering::Release);
                    let waker = q.waker.take();
                    drop(q);
                    tracing::debug!("outbound queue full, closing");
                    wake(waker);
                    self.room.notify(usize::MAX);
                    return (Err((Refusal::Full, offer)), 0);
                }
                OverflowPolicy::DropNewest => {
                    return (Err((Refusal::Full, offer)), 1);
                }
                OverflowPolicy::DropOldest => {
                    // An empty queue is never full.
                    while full(&q) {
                        let Some(old) = q.items.pop_front() else {
                            break;
                        };
                        let (len, n, charge) = (old.len(), old.messages(), old.charge());
                        q.bytes -= len;
                        q.messages -= n;
                        dropped += u64::from(n);
                        // What the budget gets back is room for this one.
                        self.give_back(charge);
                    }
                }
            }
        }
        q.bytes += size;
        q.messages += 1;
        let charge = if encode {
            append_frame(&mut q.items, message, size)
        } else {
            q.items.push_back(Item::Message(offer.into_message()));
            size
        };
        if let Some(b) = &self.budget {
            b.add(Kind::Outbound, charge);
        }
        self.busy.store(true, Ordering::Release);
        let waker = if self.wants_data.load(Ordering::Relaxed) {
            self.wants_data.store(false, Ordering::Relaxed);
            q.waker.take()
        } else {
            None
        };
        drop(q);
        wake(waker);
        (Ok(()), dropped)
    }

    /// Requests the close handshake behind the queued messages; `true` if
    /// this call started it.
    pub(crate) fn request_close(&self, code: CloseCode, reason: &str) -> bool {
        let mut q = lock(&self.queue);
        if !q.is_open() {
            return false;
        }
        q.closing = Some(Box::new(close_frame(code, reason)));
        self.busy.store(true, Ordering::Release);
        // A close wakes the driver even while it waits for the socket instead
        // of for messages: its close deadline must start now.
        let waker = q.waker.take();
        drop(q);
        wake(waker);
        // Senders parked on a full queue learn at once that it is closed.
        self.room.notify(usize::MAX);
        true
    }

    /// Takes queued messages for the writer, in order, under one lock: as
    /// many as `batch` holds, while their bytes stay under `max_bytes` (at
    /// least one). With nothing queued, takes the requested Close instead,
    /// if any. The driver is running, so pushes stop waking it until it
    /// parks again.
    pub(crate) fn pop_batch(&self, batch: &mut Batch, max_bytes: usize) -> Option<CloseFrame> {
        self.wants_data.store(false, Ordering::Relaxed);
        if !self.busy.load(Ordering::Acquire) {
            return None;
        }
        let mut q = lock(&self.queue);
        let mut taken = 0;
        let mut count = 0;
        let mut charged = 0;
        while !batch.is_full() {
            let Some(size) = q.items.front().map(Item::len) else {
                break;
            };
            if count > 0 && taken + size > max_bytes {
                break;
            }
            if let Some(item) = q.items.pop_front() {
                q.messages -= item.messages();
                charged += item.charge();
                batch.push(item);
            }
            taken += size;
            count += 1;
        }
        if count > 0 {
            q.bytes -= taken;
            self.busy
                .store(!q.items.is_empty() || !q.is_open(), Ordering::Release);
            let notify = std::mem::take(&mut q.room_wanted);
            drop(q);
            self.give_back(charged);
            if notify {
                self.room.notify(usize::MAX);
            }
            return None;
        }
        // Closed from now on if a Close was taken: `busy` stays set.
        q.take_close()
    }

    /// Whether the queue holds its byte bound or more.
    pub(crate) fn over_bound(&self) -> bool {
        lock(&self.queue).bytes >= self.max_bytes()
    }

    /// Leaves the driver's waker for the next push (when `wants_data`) or
    /// close request. Checks and registers under one lock.
    pub(crate) fn park(&self, waker: &Waker, wants_data: bool) -> Park {
        let mut q = lock(&self.queue);
        let closing = !q.is_open();
        if wants_data && (!q.items.is_empty() || q.closing.is_some()) {
            return Park {
                retry: true,
                closing,
            };
        }
        match &q.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => q.waker = Some(waker.clone()),
        }
        self.wants_data.store(wants_data, Ordering::Relaxed);
        Park {
            retry: false,
            closing,
        }
    }

    /// No more messages: drops what is queued, lets go of the driver's waker
    /// and releases waiting senders.
    pub(crate) fn mark_closed(&self) {
        let mut q = lock(&self.queue);
        q.set_closed();
        // What the budget gets back: what the entries were charged.
        let charged = q.items.drain(..).map(|item| item.charge()).sum();
        q.messages = 0;
        self.busy.store(true, Ordering::Release);
        q.bytes = 0;
        let waker = q.waker.take();
        drop(q);
        self.give_back(charged);
        drop(waker);
        self.room.notify(usize::MAX);
    }
}

impl Outbox {
    /// Whether this thread is delivering to this queue's session (its
    /// callbacks' sends to it may take the direct lane).
    fn in_lane(&self) -> bool {
        LANE_OWNER.get() == std::ptr::from_ref(self).addr()
    }

    /// Hands `message` to the direct lane if this thread is delivering to
    /// this very session, nothing is queued before it, and it fits (see
    /// [`Lane`]); otherwise hands it back for the queue, with what the lane
    /// holds for this session (nothing unless this thread is delivering to
    /// it), which the queue's bounds count as ahead of it.
    fn offer_to_lane(&self, message: Message) -> Result<(), (Message, Ahead)> {
        // The common case of a push from elsewhere (a publish to many
        // subscribers) costs one thread-local load.
        if !self.in_lane() {
            return Err((message, Ahead::default()));
        }
        let size = message.len();
        let busy = self.busy.load(Ordering::Acquire);
        let mut slot = Some(message);
        let mut ahead = Ahead::default();
        // Unreachable (the thread is ending): the queue.
        let _ = LANE.try_with(|lane| {
            let Ok(mut lane) = lane.try_borrow_mut() else {
                return;
            };
            if !busy
                && lane.bytes + size <= lane.limit
                && lane.messages.len() < self.max_messages()
                && let Some(message) = slot.take()
            {
                lane.bytes += size;
                lane.messages.push(message);
                return;
            }
            ahead = Ahead {
                bytes: lane.bytes,
                messages: lane.messages.len(),
            };
        });
        match slot {
            None => Ok(()),
            Some(message) => Err((message, ahead)),
        }
    }

    /// Gives `n` queued bytes back to the budget.
    fn give_back(&self, n: usize) {
        if let Some(b) = &self.budget {
            b.sub(Kind::Outbound, n);
        }
    }
}

thread_local! {
    /// The address of the outbox whose session this thread is delivering
    /// to (0: none; compared, never followed), in a cell of its own so that
    /// a push for another session looks at nothing else.
    static LANE_OWNER: Cell<usize> = const { Cell::new(0) };
    /// This thread's direct lane (see [`Lane`]).
    static LANE: RefCell<LaneState> = const {
        RefCell::new(LaneState {
            limit: 0,
            bytes: 0,
            messages: Vec::new(),
        })
    };
}

struct LaneState {
    /// The most `messages` may hold, in bytes.
    limit: usize,
    /// Bytes of `messages`.
    bytes: usize,
    messages: Vec<Message>,
}

/// What the direct lane holds for a session (taken by the callback running
/// now), counted by the queue's bounds as queued ahead.
#[derive(Debug, Default, Clone, Copy)]
struct Ahead {
    bytes: usize,
    messages: usize,
}

/// The direct lane. While a session's driver hands a message to the
/// application, what the application's callbacks send to that same session
/// (an echo, a reply) skips the queue: no lock, no memory-budget charge, no
/// wake-up; the driver encodes it as soon as the callback returns. Only
/// while the queue is open and empty (so nothing queued earlier is
/// overtaken), and only while its bytes plus what the session has yet to
/// write stay under the driver's write batch and the queue's byte bound,
/// and its messages under the queue's message bound. What does not fit goes
/// to the queue, which counts the lane's messages as queued ahead of it:
/// one callback still queues at most the bound, the overflow policy applies
/// beyond, and a queue over its bound stops the reading as before (a peer
/// that does not read is held by TCP). A callback that sends elsewhere, or
/// a session that is not being delivered to, uses the queue as before.
pub(crate) struct Lane {
    open: bool,
    /// The most the session's output may hold with the lane's messages.
    max_bytes: usize,
}

impl Lane {
    /// Opens this thread's lane for `outbox`'s session, which has `pending`
    /// bytes yet to write and writes in batches of `write_batch`: the lane
    /// takes what keeps the session's output under the smaller of that and
    /// the queue's bound (so a session's output grows no larger than
    /// without the lane). A lane already open (a driver inside a driver:
    /// not something wsgate does) stays as it is, and this one is not
    /// opened.
    pub(crate) fn open(outbox: &Outbox, pending: usize, write_batch: usize) -> Self {
        let me = std::ptr::from_ref(outbox).addr();
        let max_bytes = outbox.max_bytes().min(write_batch);
        if LANE_OWNER.get() != 0 {
            return Self {
                open: false,
                max_bytes,
            };
        }
        let open = LANE
            .try_with(|lane| match lane.try_borrow_mut() {
                Ok(mut lane) => {
                    LANE_OWNER.set(me);
                    lane.limit = max_bytes.saturating_sub(pending);
                    lane.bytes = 0;
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        Self { open, max_bytes }
    }

    /// Hands what the lane holds, in order, to `sink`.
    pub(crate) fn drain(&self, mut sink: impl FnMut(Message)) {
        if !self.open {
            return;
        }
        let mut messages = LANE
            .try_with(|lane| {
                lane.try_borrow_mut()
                    .map(|mut lane| {
                        lane.bytes = 0;
                        std::mem::take(&mut lane.messages)
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        if messages.is_empty() {
            return;
        }
        for message in messages.drain(..) {
            sink(message);
        }
        // The emptied vector goes back: its capacity is the lane's.
        let _ = LANE.try_with(|lane| {
            if let Ok(mut lane) = lane.try_borrow_mut()
                && lane.messages.is_empty()
            {
                lane.messages = messages;
            }
        });
    }

    /// The session now has `pending` bytes to write: the lane takes the
    /// rest of its bound.
    pub(crate) fn set_pending(&self, pending: usize) {
        if !self.open {
            return;
        }
        let limit = self.max_bytes.saturating_sub(pending);
        let _ = LANE.try_with(|lane| {
            if let Ok(mut lane) = lane.try_borrow_mut() {
                lane.limit = limit;
            }
        });
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if self.open {
            LANE_OWNER.set(0);
            let _ = LANE.try_with(|lane| {
                if let Ok(mut lane) = lane.try_borrow_mut() {
                    lane.bytes = 0;
                    // Left only if a callback's send raced a panic out of
                    // the driver; nothing more to do with them.
                    lane.messages.clear();
                }
            });
        }
    }
}

/// Appends `message` (a small text or binary message of `size` payload
/// bytes) to the queue's last [`Frames`] entry, or to a new one if the last
/// entry is a message or has no room; returns the memory this took (what
/// the buffers' capacity grew by).
fn append_frame(items: &mut VecDeque<Item>, message: &Message, size: usize) -> usize {
    let framed = frame::header(0, true, size).1 + size;
    if let Some(Item::Frames(last)) = items.back_mut()
        && last.bytes.len() + framed <= FRAMES_MAX
    {
        let before = last.bytes.capacity();
        last.add(message, size);
        return last.bytes.capacity().saturating_sub(before);
    }
    let mut frames = Frames {
        bytes: run_buffer(framed),
        messages: 0,
        payload: 0,
    };
    frames.add(message, size);
    let charge = frames.bytes.capacity();
    items.push_back(Item::Frames(frames));
    charge
}

impl Frames {
    fn add(&mut self, message: &Message, size: usize) {
        frame::encode(&mut self.bytes, message);
        self.messages += 1;
        self.payload += size;
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll};

    use super::*;

    fn outbox(max_bytes: usize, max_messages: usize) -> Outbox {
        Outbox::new(max_bytes, max_messages, OverflowPolicy::Reject, None, false)
    }

    fn texts(batch: &mut Batch) -> Vec<String> {
        batch
            .drain()
            .map(|item| match item {
                Item::Message(m) => m.into_text().map(|t| t.to_string()).unwrap_or_default(),
                Item::Frames(_) => "<frames>".to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_batch_takes_messages_in_order_up_to_its_size_then_the_close() {
        let o = outbox(1 << 20, 1000);
        for i in 0..20 {
            assert!(o.push(Message::text(i.to_string()), true).result.is_ok());
        }
        assert!(o.request_close(CloseCode::Normal, "bye"));
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        let first = texts(&mut batch);
        assert_eq!(first, (0..16).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert_eq!(texts(&mut batch), ["16", "17", "18", "19"]);
        assert_eq!(o.queued_bytes(), 0);
        let close = o.pop_batch(&mut batch, usize::MAX);
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
        assert!(texts(&mut batch).is_empty());
    }

    #[test]
    fn a_batch_stays_under_its_byte_room_but_takes_at_least_one() {
        let o = outbox(1 << 20, 1000);
        for s in ["aaaa", "bbbb", "cccc"] {
            assert!(o.push(Message::text(s), true).result.is_ok());
        }
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, 1).is_none());
        assert_eq!(texts(&mut batch), ["aaaa"]);
        assert!(o.pop_batch(&mut batch, 8).is_none());
        assert_eq!(texts(&mut batch), ["bbbb", "cccc"]);
    }

    #[test]
    fn a_close_by_the_overflow_policy_or_a_request_is_seen_by_the_next_pop() {
        // The driver looks at an empty queue without the lock: whatever
        // makes it non-empty must say so.
        let o = Outbox::new(4, 1, OverflowPolicy::Close(CloseCode::Policy), None, false);
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert!(o.push(Message::text("full"), true).result.is_ok());
        assert!(o.push(Message::text("over"), true).result.is_err());
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert_eq!(texts(&mut batch), ["full"]);
        let close = o.pop_batch(&mut batch, usize::MAX);
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Policy));
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());

        let o = outbox(1 << 20, 1000);
        assert!(o.request_close(CloseCode::Away, "bye"));
        let close = o.pop_batch(&mut batch, usize::MAX);
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
        assert!(texts(&mut batch).is_empty());
    }

    #[test]
    fn a_push_wakes_a_parked_driver_once_and_a_looking_one_not_at_all() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let o = outbox(1 << 20, 1000);
        let park = o.park(&waker, true);
        assert!(!park.retry);
        assert!(o.push(Message::text("a"), true).result.is_ok());
        assert!(o.push(Message::text("b"), true).result.is_ok());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert_eq!(texts(&mut batch), ["a", "b"]);
        // Looking (even at an empty queue) means running: no wake-up.
        assert!(!o.park(&waker, true).retry);
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert!(o.push(Message::text("c"), true).result.is_ok());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Parked with something queued: look again instead.
        assert!(o.park(&waker, true).retry);
    }

    #[test]
    fn the_lane_takes_its_own_sessions_sends_within_the_queues_bounds() {
        let o = outbox(10, 100);
        let other = outbox(10, 100);
        let mut batch = Batch::new();
        {
            let lane = Lane::open(&o, 0, usize::MAX);
            assert!(o.push(Message::text("aaaa"), true).result.is_ok());
            assert!(o.push(Message::text("bbbb"), true).result.is_ok());
            // Not in the queue: in the lane.
            assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
            assert!(texts(&mut batch).is_empty());
            // Over the bound with what the lane holds: refused.
            assert!(matches!(
                o.push(Message::text("cccc"), true).result,
                Err(SendError::Full(_))
            ));
            // Another session's queue is its own.
            assert!(other.push(Message::text("dddd"), true).result.is_ok());
            assert_eq!(other.queued_bytes(), 4);
            let mut taken = Vec::new();
            lane.drain(|m| taken.push(m.into_text().unwrap().to_string()));
            assert_eq!(taken, ["aaaa", "bbbb"]);
            // The session now has 8 bytes to write: 2 left for the lane.
            lane.set_pending(8);
            assert!(o.push(Message::text("ee"), true).result.is_ok());
            assert_eq!(o.queued_bytes(), 0);
            // What does not fit goes to the queue (behind the lane's).
            assert!(o.push(Message::text("fff"), true).result.is_ok());
            assert_eq!(o.queued_bytes(), 3);
            // Once something is queued, everything is, in order.
            lane.set_pending(0);
            assert!(o.push(Message::text("g"), true).result.is_ok());
            assert_eq!(o.queued_bytes(), 4);
            let mut taken = Vec::new();
            lane.drain(|m| taken.push(m.into_text().unwrap().to_string()));
            assert_eq!(taken, ["ee"]);
        }
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert_eq!(texts(&mut batch), ["fff", "g"]);
        // The lane is closed: the queue again.
        assert!(o.push(Message::text("h"), true).result.is_ok());
        assert_eq!(o.queued_bytes(), 1);
    }

    #[test]
    fn a_sender_waiting_for_room_is_woken_by_the_next_pop() {
        let o = outbox(4, 1);
        assert!(o.push(Message::text("full"), false).result.is_ok());
        let listener = o.room();
        assert!(matches!(
            o.push(Message::text("more"), false).result,
            Err(SendError::Full(_))
        ));
        let mut listener = pin!(listener);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(listener.as_mut().poll(&mut cx).is_pending());
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert_eq!(listener.as_mut().poll(&mut cx), Poll::Ready(()));
        assert!(o.push(Message::text("more"), false).result.is_ok());
    }

    fn encoding(max_bytes: usize, max_messages: usize) -> Outbox {
        Outbox::new(max_bytes, max_messages, OverflowPolicy::Reject, None, true)
    }

    /// What the session would have encoded for `messages`, back to back.
    fn encoded(messages: &[Message]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for m in messages {
            frame::encode(&mut out, m);
        }
        out.to_vec()
    }

    #[test]
    fn small_messages_are_queued_encoded_in_order_around_large_ones() {
        let o = encoding(1 << 20, 1000);
        let large = Message::binary(vec![7u8; COPY_MAX + 1]);
        let first = [Message::text("a"), Message::binary(vec![1, 2, 3])];
        for m in &first {
            assert!(o.push(m.clone(), true).result.is_ok());
        }
        assert!(o.push_ref(&large).0.is_ok());
        assert!(o.push_ref(&Message::text("b")).0.is_ok());
        // Pings are not data: queued as they are.
        assert!(
            o.push(Message::Ping(Default::default()), true)
                .result
                .is_ok()
        );
        assert_eq!(o.queued_bytes(), 1 + 3 + COPY_MAX + 1 + 1);
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        let items: Vec<Item> = batch.drain().collect();
        assert_eq!(items.len(), 4);
        match &items[0] {
            Item::Frames(f) => {
                assert_eq!(f.bytes.to_vec(), encoded(&first));
                assert_eq!((f.messages, f.payload), (2, 4));
            }
            Item::Message(_) => panic!("small messages are encoded"),
        }
        assert!(matches!(&items[1], Item::Message(m) if *m == large));
        match &items[2] {
            Item::Frames(f) => {
                assert_eq!(f.bytes.to_vec(), encoded(&[Message::text("b")]));
                assert_eq!((f.messages, f.payload), (1, 1));
            }
            Item::Message(_) => panic!("small messages are encoded"),
        }
        assert!(matches!(&items[3], Item::Message(Message::Ping(_))));
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn encoded_messages_count_one_by_one_against_the_bounds() {
        let o = encoding(1 << 20, 3);
        for _ in 0..3 {
            assert!(o.push_ref(&Message::text("aa")).0.is_ok());
        }
        assert_eq!(o.push_ref(&Message::text("aa")).0, Err(Refusal::Full));
        assert!(matches!(
            o.push(Message::text("aa"), true).result,
            Err(SendError::Full(m)) if m == Message::text("aa")
        ));
        assert_eq!(o.queued_bytes(), 6);
        let o = encoding(5, 100);
        assert!(o.push_ref(&Message::text("aaaa")).0.is_ok());
        assert_eq!(o.push_ref(&Message::text("bb")).0, Err(Refusal::Full));
        o.mark_closed();
        assert_eq!(o.push_ref(&Message::text("c")).0, Err(Refusal::Closed));
        assert!(matches!(
            o.push(Message::text("c"), true).result,
            Err(SendError::Closed(_))
        ));
    }

    #[test]
    fn an_encoded_run_stays_under_its_size_and_a_batch_under_its_room() {
        let o = encoding(1 << 20, 1000);
        let m = Message::binary(vec![9u8; 100]);
        for _ in 0..100 {
            assert!(o.push_ref(&m).0.is_ok());
        }
        let mut batch = Batch::new();
        // One run at least, however small the room.
        assert!(o.pop_batch(&mut batch, 1).is_none());
        let mut runs: Vec<Item> = batch.drain().collect();
        assert_eq!(runs.len(), 1);
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        runs.extend(batch.drain());
        let mut messages = 0;
        let mut bytes = Vec::new();
        for item in runs {
            let Item::Frames(f) = item else {
                panic!("small messages are encoded");
            };
            assert!(f.bytes.len() <= FRAMES_MAX, "{}", f.bytes.len());
            messages += f.messages;
            bytes.extend_from_slice(&f.bytes);
        }
        assert_eq!(messages, 100);
        assert_eq!(bytes, encoded(&vec![m; 100]));
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn drop_oldest_queues_messages_as_they_are() {
        let o = Outbox::new(1 << 20, 2, OverflowPolicy::DropOldest, None, true);
        for s in ["a", "b", "c"] {
            assert!(o.push_ref(&Message::text(s)).0.is_ok());
        }
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, usize::MAX).is_none());
        assert_eq!(texts(&mut batch), ["b", "c"]);
    }

    #[test]
    fn the_budget_counts_the_encoded_buffers_and_gets_all_of_it_back() {
        let budget = Budget::new(1 << 30);
        let o = Outbox::new(
            1 << 20,
            10_000,
            OverflowPolicy::Reject,
            Some(budget.clone()),
            true,
        );
        let small = Message::binary(vec![1u8; 30]);
        let large = Message::binary(vec![2u8; COPY_MAX + 1]);
        assert!(o.push_ref(&small).0.is_ok());
        // A first buffer of its first capacity, for one 32-byte frame.
        assert_eq!(budget.total(), FRAMES_FIRST);
        for _ in 0..200 {
            assert!(o.push_ref(&small).0.is_ok());
        }
        assert!(o.push_ref(&large).0.is_ok());
        let held = budget.total();
        // Buffers (at most twice what they hold) and the large payload.
        assert!(held > 201 * 32 + COPY_MAX, "{held}");
        assert!(held <= 2 * 201 * 32 + FRAMES_FIRST + COPY_MAX + 1, "{held}");
        let mut batch = Batch::new();
        assert!(o.pop_batch(&mut batch, 2 * FRAMES_MAX).is_none());
        assert!(budget.total() < held);
        assert!(o.push_ref(&small).0.is_ok());
        o.mark_closed();
        assert_eq!(budget.total(), 0);
        drop(batch);
    }
}
