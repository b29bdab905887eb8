//! The session driver: thin plumbing between a [`Transport`], the sans-IO
//! [`Session`](crate::proto::session::Session), the session's outbound
//! queue and the application (through [`SessionHooks`]). It arms one timer
//! from the session's `poll_timeout` and decides nothing about the protocol.
//!
//! What it does decide is I/O scheduling:
//!
//! - **Corking.** Every whole message already read is handed to the
//!   application before anything is written, so the answers to one read
//!   leave in one write (`send`, or `writev` for several chunks). Bounded by
//!   a budget of frames per poll and a batch of payload bytes, after which
//!   the queue's bound is looked at again.
//! - **Back-pressure.** Reading stops while the queue is over its bound, or
//!   while as many bytes of the session's own (pongs) wait for the socket,
//!   so a peer that sends without reading is throttled by TCP, not buffered.
//! - **Few system calls.** One read per message into a per-thread buffer;
//!   after a short read, or one that would block, the driver waits for
//!   readiness instead of reading again. The deadline is re-armed lazily:
//!   traffic only moves it later, so reading a message never touches the
//!   worker's deadline heap (`runtime::reactor`).

#[cfg(target_os = "linux")]
use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use event_listener::EventListener;
use futures_lite::AsyncRead;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::budget::{Budget, HEAVY, Heavy, Kind};
use super::outbox::{self, Batch, Item, Lane, Outbox};
use super::reactor::{Reactor, Token};
use super::transport::Transport;
use crate::config::Limits;
use crate::proto::close::{CloseReason, close_frame};
use crate::proto::extension::Extension;
use crate::proto::frame::DecodeLimits;
use crate::proto::session::{Expired, Session, SessionConfig, Stamp, Tally};

/// How many frames a session handles per poll before yielding, so that one
/// busy connection cannot starve the others on the same loop.
const BUDGET: usize = 64;

/// Chunks handed to one vectored write.
const MAX_IOV: usize = 32;

/// The size of each thread's read buffer: the most one read call takes.
pub(crate) const SCRATCH_SIZE: usize = 64 * 1024;

/// After a failure's Close (a protocol error, a message over a limit, a
/// session shed by the memory budget) the peer may still be sending.
/// Closing a socket with unread input makes the kernel send a reset, and a
/// reset makes the peer's kernel drop what the peer has not read yet: our
/// Close. So the driver half-closes and reads and discards the peer's input
/// for at most this long and this many bytes first (into the thread's read
/// buffer; nothing is kept).
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1024 * 1024;

thread_local! {
    /// Every session on a thread reads into this one buffer, zeroed once, and
    /// keeps only the bytes of an incomplete frame (or, for a whole frame,
    /// exactly the bytes of that frame, which become the message's payload
    /// without another copy). So a read costs no zero-fill and an idle
    /// connection holds no read buffer at all.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Reads once from `io` into this thread's read buffer (at most `want`
/// bytes, and at most [`SCRATCH_SIZE`]) and hands what arrived to `take`;
/// returns how many bytes that was (0: EOF). Every reader of a connection
/// goes through here: the request head, the session, the linger after a
/// failure. No callback runs while the buffer is borrowed, so no other
/// reader on this thread can want it meanwhile. A transport (an
/// application's, through an `Acceptor`) that claims more than it was
/// given broke the `AsyncRead` contract: an error, not a panic.
pub(crate) fn read_once<S: AsyncRead + Unpin + ?Sized>(
    io: &mut S,
    cx: &mut TaskContext<'_>,
    want: usize,
    take: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    SCRATCH
        .try_with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Poll::Ready(Err(io::Error::other("read buffer busy")));
            };
            let room = &mut scratch[..want.min(SCRATCH_SIZE)];
            match Pin::new(io).poll_read(cx, room) {
                Poll::Ready(Ok(n)) => match room.get(..n) {
                    Some(read) => {
                        take(read);
                        Poll::Ready(Ok(n))
                    }
                    None => Poll::Ready(Err(io::Error::other("read past the buffer"))),
                },
                other => other,
            }
        })
        .unwrap_or_else(|_| Poll::Ready(Err(io::Error::other("read buffer gone"))))
}

/// What a session's driver needs from the layer above: its queue and where
/// its messages go.
pub(crate) trait SessionHooks: Send {
    /// The session's outbound queue.
    fn outbox(&self) -> &Outbox;
    /// A complete text or binary message for the application.
    fn message(&mut self, message: Message);
    /// Traffic since the last report (once per poll, only when there was
    /// some).
    fn traffic(&mut self, tally: Tally);
    /// The session ended (called once). Dropping the hooks without this
    /// call means the session was forced down.
    fn finish(self: Box<Self>, reason: CloseReason);
}

/// How the driver schedules I/O for one session. 32-bit sizes (saturated:
/// more than 4 GiB in flight is no bound anyone sets), so that every
/// connection carries 12 bytes here rather than 24.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DriverConfig {
    /// The most one read takes (1 to [`SCRATCH_SIZE`]).
    read_size: u32,
    /// Stop taking messages from the queue above this many encoded bytes.
    write_batch: u32,
    /// Stop reading while this many bytes wait for the socket.
    max_out: u32,
}

/// A session's timing and size limits, from its vhost's.
pub(crate) fn session_config(limits: &Limits) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        ping_interval: limits.ping_interval,
        idle_timeout: limits.idle_timeout,
        close_timeout: limits.close_timeout,
        limits: DecodeLimits {
            max_frame_size: limits.max_frame_size,
            max_message_size: limits.max_message_size,
        },
        epoch: Instant::now(),
    })
}

/// How the driver schedules a session's I/O, from its vhost's limits.
pub(crate) fn driver_config(limits: &Limits) -> DriverConfig {
    // Below this a batch would be a frame or two.
    const MIN_BATCH: usize = 1024;
    let write_batch = limits.write_buffer_size.max(MIN_BATCH);
    let cap = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    DriverConfig {
        read_size: cap(limits.read_buffer_size.clamp(1, SCRATCH_SIZE)),
        write_batch: cap(write_batch),
        max_out: cap(limits.max_queue_bytes.max(write_batch)),
    }
}

/// The session task's state.
pub(crate) struct Driver<S> {
    io: S,
    session: Session,
    config: DriverConfig,
    /// The last read returned less than asked: the socket is drained, so
    /// wait for readiness before the next read call.
    read_dry: bool,
    /// The outbound queue was over its bound when last looked at.
    over_bound: bool,
    flush_pending: bool,
    /// The queue has been told the session is no longer open.
    outbox_closed: bool,
    /// The deadline last armed (lazily: see [`Driver::poll_timer`]).
    timer_at: Stamp,
    /// The context's memory budget, and what this session has charged to it.
    budget: Option<Arc<Budget>>,
    charged: Charged,
    /// What few sessions need, boxed on first use (one pointer on every
    /// connection instead of four).
    cold: Option<Box<Cold>>,
}

/// A driver's rarely used state.
#[derive(Default)]
struct Cold {
    /// The session's entry in its worker's reactor for its deadline, when
    /// its stream has none of its own (see [`Driver::token`]).
    timer: Option<Token>,
    /// This session's entry in the budget's shedding list, from the first
    /// time it held an unfinished message of at least [`HEAVY`] bytes.
    heavy: Option<Arc<Heavy>>,
    /// Waiting for the budget's pressure to end before reading on.
    paused: Option<EventListener>,
    /// The session has ended in failure; the peer's input is being
    /// discarded before the socket closes.
    linger: Option<Linger>,
    /// What the session's extension's memory is charged to the budget (see
    /// [`Charged`]; only a session with an extension has any).
    compression: u32,
    /// The session's tracing span, entered while its task runs and while it
    /// is dropped; only while a subscriber records it (see
    /// [`Driver::set_span`]).
    span: Option<tracing::Span>,
}

/// A failed session's last moments (see [`LINGER_TIME`]).
struct Linger {
    reason: CloseReason,
    /// Bytes still to discard.
    left: usize,
    /// Our side is shut down (`poll_close` finished).
    shut: bool,
    /// When to stop waiting for the peer.
    until: Instant,
}

/// What a session has charged to the memory budget, by kind (32 bits: a
/// session's buffers are bounded far below 4 GiB by its limits; a count
/// beyond is charged as 4 GiB). The compression kind's count is in the
/// driver's cold state: only sessions with an extension have one, and
/// eight bytes less keep every session's task a size class smaller.
#[derive(Debug, Default)]
struct Charged {
    inbound: u32,
    outbound: u32,
}

/// Moves `*charged` of `kind` to `now`.
fn reconcile(budget: &Budget, kind: Kind, charged: &mut u32, now: usize) {
    let now = u32::try_from(now).unwrap_or(u32::MAX);
    let mut wide = *charged as usize;
    budget.reconcile(kind, &mut wide, now as usize);
    *charged = now;
}

impl Charged {
    /// Charges `budget` with what the session's buffers hold now.
    fn update(&mut self, budget: &Budget, inbound: usize, outbound: usize) {
        reconcile(budget, Kind::Inbound, &mut self.inbound, inbound);
        reconcile(budget, Kind::Outbound, &mut self.outbound, outbound);
    }
}

impl<S: Transport> Driver<S> {
    /// A driver for `io`, whose first bytes (`leftover`, read with the
    /// request head) are already in hand; its deadlines go to `reactor`
    /// (its worker's).
    pub(crate) fn new(
        io: S,
        leftover: &[u8],
        session: Arc<SessionConfig>,
        extension: Option<Box<dyn Extension>>,
        config: DriverConfig,
        budget: Option<Arc<Budget>>,
        reactor: &Arc<Reactor>,
    ) -> Self {
        let now = Instant::now();
        let session = Session::new(session, extension, leftover, now);
        let timer_at = session.stamp(now);
        let cold = registered(&io).is_none().then(|| {
            Box::new(Cold {
                timer: Some(reactor.deadline()),
                ..Cold::default()
            })
        });
        Self {
            io,
            session,
            config,
            read_dry: false,
            over_bound: false,
            flush_pending: false,
            outbox_closed: false,
            // Nothing armed yet: the first park arms the session's deadline.
            timer_at,
            budget,
            charged: Charged::default(),
            cold,
        }
    }

    /// Runs the session to its end, feeding messages to `hooks`, and reports
    /// how it ended. The caller calls `hooks.finish`.
    #[cfg(any(fuzzing, test))]
    pub(crate) async fn run(&mut self, hooks: &mut dyn SessionHooks) -> CloseReason {
        std::future::poll_fn(|cx| self.poll_run(cx, hooks)).await
    }

    /// Polls the session: `Ready` with how it ended.
    pub(crate) fn poll_run(
        &mut self,
        cx: &mut TaskContext<'_>,
        hooks: &mut dyn SessionHooks,
    ) -> Poll<CloseReason> {
        if self.lingering() {
            return self.poll_linger(cx);
        }
        let poll = self.poll_session(cx, hooks);
        let tally = self.session.take_tally();
        if tally != Tally::default() {
            hooks.traffic(tally);
        }
        self.account(cx);
        let Poll::Ready(reason) = poll else {
            return Poll::Pending;
        };
        hooks.outbox().mark_closed();
        if self.lingering() {
            // The session failed: its Close is out; discard what the peer
            // still sends for a moment so the Close is not reset away.
            return self.poll_linger(cx);
        }
        Poll::Ready(reason)
    }

    /// Half-closes, then reads and discards until the peer closes too, the
    /// byte allowance is used up, or the time is over.
    fn poll_linger(&mut self, cx: &mut TaskContext<'_>) -> Poll<CloseReason> {
        let Some(linger) = self.cold.as_mut().and_then(|c| c.linger.as_mut()) else {
            return Poll::Ready(CloseReason::abnormal("session ended"));
        };
        let finished = loop {
            if !linger.shut {
                match Pin::new(&mut self.io).poll_close(cx) {
                    Poll::Ready(Ok(())) => linger.shut = true,
                    Poll::Ready(Err(_)) => break true,
                    Poll::Pending => break false,
                }
            }
            match read_once(&mut self.io, cx, linger.left, |_| {}) {
                Poll::Ready(Ok(n)) if n > 0 && n < linger.left => linger.left -= n,
                Poll::Ready(_) => break true,
                Poll::Pending => break false,
            }
        };
        if !finished {
            let until = linger.until;
            if Instant::now() < until {
                self.arm(until, cx);
                return Poll::Pending;
            }
        }
        let reason = self
            .cold
            .as_mut()
            .and_then(|c| c.linger.take())
            .map(|l| l.reason);
        Poll::Ready(reason.unwrap_or_else(|| CloseReason::abnormal("session ended")))
    }

    fn poll_session(
        &mut self,
        cx: &mut TaskContext<'_>,
        hooks: &mut dyn SessionHooks,
    ) -> Poll<CloseReason> {
        let mut budget = BUDGET;
        // A read in this poll took the time (the session's last receive); the timer check
        // then uses it instead of reading the clock again (microseconds
        // apart, against deadlines of seconds).
        let mut fresh = false;
        loop {
            // Outbound: queued messages (or a requested Close) into the
            // session, then as much of its output as the socket takes.
            let (mut progress, batch_full) = self.gather(hooks.outbox());
            let before = self.session.pending();
            if let Poll::Ready(Err(e)) = self.poll_write(cx) {
                return Poll::Ready(self.transport_end(&e));
            }
            // Writing is progress for the next round only where the output
            // held the queue back (its room); everything else that depends
            // on what is written (the end, the read gate, the park) looks
            // after the write in this round. A ping-pong message takes two
            // rounds (read and answer; write and find nothing), not three.
            progress |= batch_full && self.session.pending() < before;
            let flushed = self.session.pending() == 0 && !self.flush_pending;
            let failing = self.session.is_failing();
            if let Some(reason) = self.session.poll_end(flushed) {
                if failing {
                    self.cold().linger = Some(Linger {
                        reason: reason.clone(),
                        left: LINGER_BYTES,
                        shut: false,
                        until: Instant::now() + LINGER_TIME,
                    });
                }
                return Poll::Ready(reason);
            }

            // The memory budget picked this session to shed: close it with
            // 1013 and free what it holds now.
            if self.session.is_reading() && self.heavy().is_some_and(|h| h.is_shed()) {
                tracing::debug!("shed by the memory budget");
                let frame = close_frame(CloseCode::Again, "memory budget exhausted");
                self.session.abort(frame, Instant::now());
                if let (Some(budget), Some(heavy)) = (&self.budget, self.heavy()) {
                    // Before the buffers go back (`account`), so that the
                    // shedder may look again when they do.
                    budget.settle(heavy);
                }
                continue;
            }

            // Inbound, unless the queue is over its bound (keep reading while
            // closing, to see the peer's Close).
            if self.session.is_reading()
                && (!self.session.is_open() || !self.over_bound)
                && self.session.pending() < self.config.max_out as usize
            {
                if self.deliver(hooks, &mut budget) {
                    progress = true;
                } else if self.may_read(cx) {
                    match self.poll_read(cx) {
                        Poll::Ready(Ok(0)) => {
                            self.session.on_eof(flushed);
                            progress = true;
                        }
                        Poll::Ready(Ok(_)) => {
                            fresh = true;
                            self.deliver(hooks, &mut budget);
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(self.transport_end(&e)),
                        Poll::Pending => {}
                    }
                }
            }

            if progress {
                budget -= 1;
                if budget == 0 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                continue;
            }

            // Nothing moved. Leave our waker with the queue: pushes wake us
            // only while we wait for messages; while a full batch waits for
            // the socket, its writability wakes us instead, so a stalled
            // subscriber costs a publisher no wake-up per message.
            let wants_data =
                self.session.is_open() && self.session.pending() < self.config.write_batch as usize;
            let park = hooks.outbox().park(cx.waker(), wants_data);
            // A close requested while queued messages cannot leave (the peer
            // stopped reading) must not wait for the idle timeout: its close
            // deadline starts now.
            if park.closing {
                self.session.close_requested(Instant::now());
            }
            if park.retry {
                continue;
            }
            let now = if fresh {
                self.session.last_receive()
            } else {
                Instant::now()
            };
            if self.poll_timer(cx, hooks.outbox(), now) {
                fresh = false;
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Takes queued messages (then a requested Close) into the session until
    /// a batch is gathered; returns whether it took any, and whether it
    /// stopped for want of room in the output (the queue may hold more).
    /// Once the session is no longer open, tells the queue (its handles then
    /// refuse sends).
    fn gather(&mut self, outbox: &Outbox) -> (bool, bool) {
        let mut progress = false;
        let mut full = false;
        if self.session.takes_messages() {
            // An empty queue is not over its bound; a full batch looks.
            self.over_bound = false;
            let mut batch = Batch::new();
            loop {
                let room =
                    (self.config.write_batch as usize).saturating_sub(self.session.pending());
                if room == 0 {
                    self.over_bound = outbox.over_bound();
                    full = true;
                    break;
                }
                // Many messages per lock; the ones taken are encoded
                // outside it.
                if let Some(frame) = outbox.pop_batch(&mut batch, room) {
                    self.session.close(frame, Instant::now());
                    progress = true;
                    break;
                }
                if batch.is_empty() {
                    break;
                }
                for item in batch.drain() {
                    match item {
                        Item::Message(m) => self.session.send(&m),
                        Item::Frames(f) => {
                            let spare = self.session.send_encoded(f.bytes, f.messages, f.payload);
                            if let Some(buf) = spare {
                                outbox::recycle(buf);
                            }
                        }
                    }
                }
                progress = true;
            }
        }
        if !self.outbox_closed && !self.session.is_open() {
            outbox.mark_closed();
            self.outbox_closed = true;
        }
        (progress, full)
    }

    /// Hands every whole message already read to the application, within
    /// the budget and a batch of payload; returns whether anything happened
    /// (a message, a pong queued, a Close or a failure).
    fn deliver(&mut self, hooks: &mut dyn SessionHooks, budget: &mut usize) -> bool {
        let before = (self.session.is_reading(), self.session.pending());
        let mut delivered = false;
        let mut batch = 0;
        let now = self.session.last_receive();
        // What the callbacks send back to this session meanwhile is encoded
        // as each returns, without the queue (see `Lane`); opened with the
        // first message.
        let mut lane = None;
        while *budget > 1 && batch < self.config.write_batch as usize {
            let Some(message) = self.session.poll_message(now) else {
                break;
            };
            batch += message.len();
            let lane = lane.get_or_insert_with(|| {
                Lane::open(
                    hooks.outbox(),
                    self.session.pending(),
                    self.config.write_batch as usize,
                )
            });
            hooks.message(message);
            let session = &mut self.session;
            lane.drain(|m| session.send(&m));
            lane.set_pending(session.pending());
            *budget -= 1;
            delivered = true;
        }
        delivered || before != (self.session.is_reading(), self.session.pending())
    }

    /// Whether the memory budget lets this session read: always, unless the
    /// budget is under pressure and the session holds an unfinished message
    /// (which reading would grow). Then it waits, registered for the end of
    /// the pressure, and TCP's flow control holds the peer.
    fn may_read(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        if !budget.under_pressure() || !self.session.is_unfinished() {
            if let Some(cold) = self.cold.as_mut() {
                cold.paused = None;
            }
            return true;
        }
        let cold = self.cold.get_or_insert_with(Box::default);
        if cold.paused.is_none() {
            budget.count_pause();
        }
        loop {
            let relieved = cold.paused.get_or_insert_with(|| budget.relieved());
            if !budget.under_pressure() {
                cold.paused = None;
                return true;
            }
            match Pin::new(relieved).poll(cx) {
                Poll::Ready(()) => cold.paused = None,
                Poll::Pending => return false,
            }
        }
    }

    /// Brings what this session charges to the memory budget up to date (once
    /// per poll: a session between messages holds nothing, so ping-pong
    /// traffic never changes the count), and keeps its entry in the
    /// shedding list while it holds an unfinished message worth shedding.
    fn account(&mut self, cx: &TaskContext<'_>) {
        let Some(budget) = &self.budget else {
            return;
        };
        let held = self.session.buffered_in();
        self.charged.update(budget, held, self.session.pending());
        let compression = self.session.extension_memory();
        let charged = self.cold.as_ref().map_or(0, |c| c.compression);
        if compression != charged as usize {
            let cold = self.cold.get_or_insert_with(Box::default);
            reconcile(
                budget,
                Kind::Compression,
                &mut cold.compression,
                compression,
            );
        }
        let unfinished = if self.session.is_reading() { held } else { 0 };
        if unfinished >= HEAVY && self.heavy().is_none() {
            let h = Heavy::new();
            budget.enlist(&h);
            self.cold().heavy = Some(h);
        }
        if let Some(heavy) = self.heavy() {
            heavy.update(unfinished, cx.waker());
        }
    }

    /// Reads once into the thread's buffer and feeds the session; `Ok(0)` is
    /// EOF.
    fn poll_read(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<usize>> {
        if self.read_dry {
            match self.io.poll_readable(cx) {
                Poll::Ready(Ok(())) => self.read_dry = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.session.release_read_buffer();
                    return Poll::Pending;
                }
            }
        }
        let want = self.config.read_size as usize;
        let session = &mut self.session;
        let read = read_once(&mut self.io, cx, want, |read| {
            if !read.is_empty() {
                session.receive(read, Instant::now());
            }
        });
        match read {
            Poll::Ready(Ok(n)) => {
                self.read_dry = n < want;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // The stream registered for readability: until it fires,
                // another read call would only say "would block" again.
                self.read_dry = true;
                self.session.release_read_buffer();
                Poll::Pending
            }
        }
    }

    /// Writes as much of the session's output as the socket takes, then
    /// flushes.
    fn poll_write(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        loop {
            let chunks = self.session.transmit();
            if chunks.is_empty() {
                break;
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (slot, chunk) in iov.iter_mut().zip(chunks) {
                *slot = IoSlice::new(chunk);
                n_iov += 1;
            }
            // One chunk (the common case: small frames gathered together)
            // goes out with a plain send, cheaper in the kernel than writev.
            let written = if n_iov == 1 {
                Pin::new(&mut self.io).poll_write(cx, &iov[0])
            } else {
                Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..n_iov])
            };
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.session.advance(n);
                    self.flush_pending = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.session.compact();
        if self.flush_pending {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush_pending = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The session's entry in its worker's reactor: its stream's, when the
    /// stream is registered there, or its own.
    fn token(&self) -> Option<&Token> {
        self.cold
            .as_ref()
            .and_then(|c| c.timer.as_ref())
            .or_else(|| registered(&self.io))
    }

    /// Asks to be woken once `at` has passed.
    fn arm(&self, at: Instant, cx: &TaskContext<'_>) {
        if let Some(token) = self.token() {
            token.arm(at, cx.waker());
        }
    }

    /// Runs the session's timeout if its deadline has passed (returns `true`:
    /// there may be new work), or makes sure it will be woken for it.
    fn poll_timer(&mut self, cx: &mut TaskContext<'_>, outbox: &Outbox, now: Instant) -> bool {
        let Some(target) = self.session.poll_timeout() else {
            return false;
        };
        if now < target {
            // Activity only moves the target later. The armed deadline is
            // left where it is (reading a message never touches the
            // reactor) until it passes: the wake-up then re-arms at the
            // target. An earlier target is armed at once.
            let armed = self.session.instant(self.timer_at);
            if target < armed || now >= armed {
                self.arm(target, cx);
                self.timer_at = self.session.stamp(target);
            }
            return false;
        }
        // Nothing armed until a new target is computed.
        self.timer_at = self.session.stamp(now);
        if self.session.handle_timeout(now) == Expired::Idle {
            tracing::debug!("idle timeout");
            // Through the queue, behind what is already queued.
            outbox.request_close(CloseCode::Away, "idle timeout");
        }
        true
    }

    fn transport_end(&mut self, e: &io::Error) -> CloseReason {
        tracing::debug!(error = %e, "transport ended");
        self.session.on_transport_error();
        self.session
            .poll_end(false)
            .unwrap_or_else(|| CloseReason::abnormal("transport failed"))
    }
}

/// The stream's own entry in its worker's reactor, if it is registered
/// there (a plain TCP connection on Linux).
pub(crate) fn registered<S: Transport>(io: &S) -> Option<&Token> {
    #[cfg(target_os = "linux")]
    {
        (io as &dyn Any)
            .downcast_ref::<super::reactor::Registered>()
            .map(super::reactor::Registered::token)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = io;
        None
    }
}

impl<S> Driver<S> {
    /// Keeps the session's tracing span, if a subscriber records it (a
    /// disabled span costs the session nothing).
    pub(crate) fn set_span(&mut self, span: tracing::Span) {
        if !span.is_disabled() {
            self.cold().span = Some(span);
        }
    }

    /// The session's tracing span, if it was kept.
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.cold.as_ref().and_then(|c| c.span.as_ref())
    }

    /// The rarely used state, created if need be.
    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Whether the failed session's input is being discarded.
    fn lingering(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| c.linger.is_some())
    }

    /// The session's entry in the budget's shedding list, if it has one.
    fn heavy(&self) -> Option<&Arc<Heavy>> {
        self.cold.as_ref().and_then(|c| c.heavy.as_ref())
    }
}

impl<S> Drop for Driver<S> {
    fn drop(&mut self) {
        // Whatever this session still charged goes back with it.
        if let Some(budget) = &self.budget {
            if let Some(heavy) = self.heavy() {
                budget.settle(heavy);
            }
            self.charged.update(budget, 0, 0);
            if let Some(cold) = self.cold.as_mut() {
                reconcile(budget, Kind::Compression, &mut cold.compression, 0);
            }
        }
    }
}

impl<S> fmt::Debug for Driver<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
