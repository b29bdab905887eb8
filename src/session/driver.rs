//! The session task: one future per connection that reads frames through
//! wsgate's frame engine ([`crate::frame`]), feeds the protocol, and writes
//! the outbound queue. It is the only code that touches the socket.
//!
//! # Invariants
//!
//! - Reading stops while the outbound queue is over its bound, or while as
//!   many bytes of our own (pongs) wait for the socket, so a peer that sends
//!   without reading is throttled by TCP, not buffered by us.
//! - Outbound messages are encoded into a short list of chunks (headers and
//!   small payloads copied together, large payloads shared, never copied) and
//!   leave in one vectored write per batch; nothing is flushed per message.
//! - Every ping is answered with its own pong (RFC 6455 §5.5.2), in order.
//! - After our Close is queued nothing but that Close is sent; after the
//!   peer's Close we send only our answer and then close TCP first, as the
//!   server should (RFC 6455 §7.1.1).
//! - Every wait is bounded: the idle timeout covers silent peers, the close
//!   timeout covers peers that never answer our Close or never read it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};

use super::{Pop, SessionHandle, close_frame};
use crate::context::ContextShared;
use crate::frame::{self, DecodeLimits, Decoder, Event, Fail};
use crate::metrics::Metrics;
use crate::protocol::{CloseReason, ClosedBy, SessionCallbacks};
use crate::{CloseCode, Limits, Message};

/// How many frames a session handles per poll before yielding, so that one
/// busy connection cannot starve the others on the same loop.
const BUDGET: usize = 64;

/// Payloads up to this size are copied next to their header; larger ones are
/// written from the shared `Bytes` they arrived in.
const COPY_MAX: usize = 1024;

/// Chunks handed to one vectored write.
const MAX_IOV: usize = 32;

/// The size of each thread's read buffer: the most one read call takes.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    /// Every session on a thread reads into this one buffer, zeroed once, and
    /// keeps only the bytes of an incomplete frame (or, for a whole frame,
    /// exactly the bytes of that frame, which become the message's payload
    /// without another copy). So a read costs no zero-fill and an idle
    /// connection holds no read buffer at all.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// A byte stream the session can run on.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Resolves when the stream may have bytes to read, registering for a
    /// wake-up otherwise. After a read that returned less than it asked for,
    /// the driver waits here instead of making a read call that would only
    /// say "would block". The default says "try reading".
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

#[cfg(any(fuzzing, test))]
impl Transport for super::MemStream {}

/// Timing limits a session enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) ping_interval: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) close_timeout: Duration,
}

impl Timing {
    pub(crate) fn of(limits: &Limits) -> Self {
        Self {
            ping_interval: limits.ping_interval,
            idle_timeout: limits.idle_timeout,
            close_timeout: limits.close_timeout,
        }
    }
}

/// The session task's state.
pub(crate) struct Driver<S> {
    io: S,
    handle: SessionHandle,
    timing: Timing,
    decoder: Decoder,
    /// Bytes read and not yet decoded (empty, unallocated, between messages).
    rbuf: BytesMut,
    read_size: usize,
    /// The last read returned less than asked: the socket is drained, so
    /// wait for readiness before the next read call.
    read_dry: bool,
    /// The outbound queue was over its bound when last looked at.
    over_bound: bool,
    /// Encoded bytes waiting for the socket, in order.
    out: VecDeque<Bytes>,
    out_len: usize,
    /// Headers and small payloads are gathered here before joining `out`.
    scratch: BytesMut,
    /// Stop taking messages from the queue above this many encoded bytes.
    write_batch: usize,
    /// Stop reading while this many bytes wait for the socket: what we write
    /// without the queue (pongs) is bounded like the queue.
    max_out: usize,
    flush_pending: bool,
    ping_due: bool,
    pinged: bool,
    /// The Close frame we queued, if any.
    we_closed: Option<CloseFrame>,
    /// The peer answered our Close.
    acked: bool,
    /// The peer's Close, if it closed first (`Some(None)`: without a code).
    peer_closed: Option<Option<CloseFrame>>,
    /// The peer broke the protocol; we only write our Close, then stop.
    failing: bool,
    /// The peer sent EOF.
    eof: bool,
    close_deadline: Option<Instant>,
    last_rx: Instant,
    timer: Timer,
    timer_at: Instant,
    /// Traffic since the last report to the context's metrics.
    tally: Tally,
    ctx: Option<Arc<ContextShared>>,
}

/// Data messages and payload bytes in and out, added to the context's
/// metrics once per poll rather than per message.
#[derive(Default)]
struct Tally {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

impl<S: Transport> Driver<S> {
    /// A driver for `io`, whose first bytes (`leftover`, read with the
    /// request head) are already in hand.
    pub(crate) fn new(io: S, leftover: &[u8], handle: SessionHandle, limits: &Limits) -> Self {
        let timing = Timing::of(limits);
        let now = Instant::now();
        let timer_at = now + timing.ping_interval;
        let rbuf = BytesMut::from(leftover);
        Self {
            io,
            timing,
            decoder: Decoder::new(DecodeLimits {
                max_frame_size: limits.max_frame_size,
                max_message_size: limits.max_message_size,
            }),
            rbuf,
            read_size: limits.read_buffer_size.clamp(1, SCRATCH_SIZE),
            read_dry: false,
            over_bound: false,
            out: VecDeque::new(),
            out_len: 0,
            scratch: BytesMut::new(),
            write_batch: limits.write_buffer_size.max(COPY_MAX),
            max_out: limits
                .max_queue_bytes
                .max(limits.write_buffer_size.max(COPY_MAX)),
            flush_pending: false,
            ping_due: false,
            pinged: false,
            we_closed: None,
            acked: false,
            peer_closed: None,
            failing: false,
            eof: false,
            close_deadline: None,
            last_rx: now,
            timer: Timer::at(timer_at),
            timer_at,
            tally: Tally::default(),
            ctx: handle.vhost().context(),
            handle,
        }
    }

    /// Runs the session to its end, feeding messages to `callbacks`, and
    /// reports how it ended. The caller calls the `close` callback.
    #[cfg(any(fuzzing, test))]
    pub(crate) async fn run(&mut self, callbacks: &mut dyn SessionCallbacks) -> CloseReason {
        std::future::poll_fn(|cx| self.poll_run(cx, callbacks)).await
    }

    /// Polls the session: `Ready` with how it ended.
    pub(crate) fn poll_run(
        &mut self,
        cx: &mut TaskContext<'_>,
        callbacks: &mut dyn SessionCallbacks,
    ) -> Poll<CloseReason> {
        let poll = self.poll_session(cx, callbacks);
        self.report_tally();
        poll
    }

    fn report_tally(&mut self) {
        let Some(ctx) = &self.ctx else {
            return;
        };
        let t = std::mem::take(&mut self.tally);
        let m = &ctx.metrics;
        Metrics::add(&m.messages_in, t.messages_in);
        Metrics::add(&m.bytes_in, t.bytes_in);
        Metrics::add(&m.messages_out, t.messages_out);
        Metrics::add(&m.bytes_out, t.bytes_out);
    }

    /// The stream, once the session is over.
    #[cfg(any(fuzzing, test))]
    pub(crate) fn into_io(self) -> S {
        self.io
    }

    fn poll_session(
        &mut self,
        cx: &mut TaskContext<'_>,
        callbacks: &mut dyn SessionCallbacks,
    ) -> Poll<CloseReason> {
        let mut budget = BUDGET;
        loop {
            let mut progress = false;

            // Outbound: take queued messages (then a requested Close, then a
            // due ping) until a batch is gathered.
            progress |= self.gather();

            let before = self.pending_out();
            if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
                return Poll::Ready(self.transport_end(&e));
            }
            // Bytes left: there may be room for more of the queue.
            progress |= self.pending_out() < before;
            let drained = self.pending_out() == 0 && !self.flush_pending;

            // Endings that wait only for our bytes to leave.
            if drained && (self.failing || self.peer_closed.is_some()) {
                return Poll::Ready(self.ended());
            }
            if self.acked {
                return Poll::Ready(self.ended());
            }
            if self.eof {
                return Poll::Ready(self.ended());
            }

            // Inbound, unless the queue is over its bound (keep reading while
            // closing, to see the peer's Close).
            if self.reading()
                && (self.we_closed.is_some() || !self.over_bound)
                && self.pending_out() < self.max_out
            {
                match self.poll_event(cx) {
                    Poll::Ready(Ok(Some(event))) => {
                        self.on_event(event, callbacks);
                        progress = true;
                        // Handle every other whole frame already read before
                        // writing, so that the answers to one read leave in
                        // one write ("corking"). Bounded by the budget and by
                        // a batch's worth of payload, after which the queue's
                        // bound is looked at again.
                        let mut batch = 0;
                        while budget > 1 && batch < self.write_batch && self.reading() {
                            match self.decoder.decode(&mut self.rbuf) {
                                Ok(Some(event)) => {
                                    batch += event.len();
                                    self.on_event(event, callbacks);
                                    budget -= 1;
                                }
                                Ok(None) => break,
                                Err(fail) => {
                                    self.fail(fail);
                                    break;
                                }
                            }
                        }
                    }
                    Poll::Ready(Ok(None)) => {
                        self.eof = true;
                        progress = true;
                    }
                    Poll::Ready(Err(ReadError::Fail(fail))) => {
                        tracing::debug!(session = %self.handle.id(), code = u16::from(fail.code), reason = fail.reason, "failing the connection");
                        self.fail(fail);
                        progress = true;
                    }
                    Poll::Ready(Err(ReadError::Io(e))) => {
                        return Poll::Ready(self.transport_end(&e));
                    }
                    Poll::Pending => {}
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
            // subscriber costs a publisher no wake-up per message. Checking
            // and registering under one lock loses no push.
            let wants_data = self.we_closed.is_none()
                && self.peer_closed.is_none()
                && !self.failing
                && self.pending_out() < self.write_batch;
            let park = self.handle.shared.park(cx.waker(), wants_data);
            // A close requested while queued messages cannot leave (the peer
            // stopped reading) must not wait for the idle timeout: its close
            // timeout starts now.
            if park.closing && self.close_deadline.is_none() {
                self.arm_close_deadline();
            }
            if park.retry {
                continue;
            }

            if self.poll_timer(cx) {
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Takes queued messages (then a requested Close, then a due ping) into
    /// the output until a batch is gathered; returns whether it took any.
    fn gather(&mut self) -> bool {
        let mut progress = false;
        if self.we_closed.is_some() || self.peer_closed.is_some() || self.failing {
            return progress;
        }
        // An empty queue is not over its bound; a full batch looks.
        self.over_bound = false;
        loop {
            if self.pending_out() >= self.write_batch {
                self.over_bound = self.handle.shared.over_bound();
                break;
            }
            match self.handle.shared.pop() {
                Pop::Message(m) => self.push(&m),
                Pop::Close(frame) => {
                    self.push(&Message::Close(Some(frame.clone())));
                    self.we_closed = Some(frame);
                    self.arm_close_deadline();
                    return true;
                }
                Pop::Empty if self.ping_due => {
                    self.ping_due = false;
                    self.push(&Message::Ping(Bytes::new()));
                }
                Pop::Empty => break,
            }
            progress = true;
        }
        progress
    }

    /// Whether inbound frames are still wanted (after our Close, to see the
    /// peer's answer).
    fn reading(&self) -> bool {
        !self.failing && self.peer_closed.is_none()
    }

    fn pending_out(&self) -> usize {
        self.out_len + self.scratch.len()
    }

    /// Encodes `message` behind what is already waiting.
    fn push(&mut self, message: &Message) {
        if let Message::Text(_) | Message::Binary(_) = message {
            self.tally.messages_out += 1;
            self.tally.bytes_out += message.len() as u64;
        }
        let payload: Option<(u8, Bytes)> = match message {
            Message::Text(t) if t.len() > COPY_MAX => Some((0x1, Bytes::from(t.clone()))),
            Message::Binary(b) if b.len() > COPY_MAX => Some((0x2, b.clone())),
            _ => None,
        };
        match payload {
            Some((opcode, bytes)) => {
                let (head, n) = frame::header(opcode, true, bytes.len());
                self.scratch.extend_from_slice(&head[..n]);
                self.seal_scratch();
                self.out_len += bytes.len();
                self.out.push_back(bytes);
            }
            None => {
                frame::encode(&mut self.scratch, message);
            }
        }
    }

    /// Moves the gathered small bytes into the output list.
    fn seal_scratch(&mut self) {
        if !self.scratch.is_empty() {
            let chunk = self.scratch.split().freeze();
            self.out_len += chunk.len();
            self.out.push_back(chunk);
        }
    }

    /// Writes as much of the output as the socket takes, then flushes.
    fn poll_write_out(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.seal_scratch();
        while self.out_len > 0 {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (slot, chunk) in iov.iter_mut().zip(&self.out) {
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
                    self.consume_out(n);
                    self.flush_pending = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // The output went out whole: release a big batch's chunks list.
        if self.out.capacity() > MAX_IOV {
            self.out = VecDeque::new();
        }
        if self.flush_pending {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush_pending = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn consume_out(&mut self, mut n: usize) {
        self.out_len -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// The next decoded event, reading from the socket when needed;
    /// `Ok(None)` is EOF.
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Option<Event>, ReadError>> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(event)) => return Poll::Ready(Ok(Some(event))),
                Ok(None) => {}
                Err(fail) => return Poll::Ready(Err(ReadError::Fail(fail))),
            }
            if self.read_dry {
                match self.io.poll_readable(cx) {
                    Poll::Ready(Ok(())) => self.read_dry = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Io(e))),
                    Poll::Pending => {
                        self.release_rbuf();
                        return Poll::Pending;
                    }
                }
            }
            let want = self.read_size;
            let (io, rbuf) = (&mut self.io, &mut self.rbuf);
            let read = SCRATCH.with(|scratch| {
                // No callback runs while the buffer is borrowed, so no other
                // session on this thread can want it at the same time.
                let Ok(mut scratch) = scratch.try_borrow_mut() else {
                    return Poll::Ready(Err(io::Error::other("read buffer busy")));
                };
                let buf = &mut scratch[..want];
                let poll = Pin::new(io).poll_read(cx, buf);
                if let Poll::Ready(Ok(n)) = poll {
                    // In bounds: `n <= buf.len()` by the `AsyncRead` contract.
                    rbuf.extend_from_slice(&buf[..n]);
                }
                poll
            });
            match read {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(n)) => {
                    self.read_dry = n < want;
                    self.last_rx = Instant::now();
                    self.pinged = false;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Io(e))),
                Poll::Pending => {
                    // The stream registered for readability: until it fires,
                    // another read call would only say "would block" again.
                    self.read_dry = true;
                    self.release_rbuf();
                    return Poll::Pending;
                }
            }
        }
    }

    /// Between messages the read buffer is empty: free it, so that an idle
    /// connection holds none (the next read allocates what it needs).
    fn release_rbuf(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    fn on_event(&mut self, event: Event, callbacks: &mut dyn SessionCallbacks) {
        match event {
            Event::Text(t) => {
                self.tally.messages_in += 1;
                self.tally.bytes_in += t.len() as u64;
                if self.we_closed.is_none() {
                    callbacks.message(&self.handle, Message::Text(t));
                }
            }
            Event::Binary(b) => {
                self.tally.messages_in += 1;
                self.tally.bytes_in += b.len() as u64;
                if self.we_closed.is_none() {
                    callbacks.message(&self.handle, Message::Binary(b));
                }
            }
            Event::Ping(p) => {
                if self.we_closed.is_none() {
                    self.push(&Message::Pong(p));
                }
            }
            Event::Pong(_) => {}
            Event::Close(frame) => {
                // The answers to the messages handled before the Close (a
                // batch read together) go out before any Close of ours.
                self.gather();
                if self.we_closed.is_some() {
                    self.acked = true;
                } else {
                    // The peer closed first: answer with its code, send
                    // nothing else, and close TCP once the answer is out.
                    self.handle.shared.mark_closed();
                    let answer = frame.as_ref().map(|f| close_frame(f.code, ""));
                    self.push(&Message::Close(answer));
                    self.peer_closed = Some(frame);
                    self.arm_close_deadline();
                }
            }
        }
    }

    fn fail(&mut self, fail: Fail) {
        // Likewise: the messages that were valid are answered first.
        self.gather();
        self.failing = true;
        self.handle.shared.mark_closed();
        if self.we_closed.is_none() {
            let frame = fail.to_close_frame();
            self.push(&Message::Close(Some(frame.clone())));
            self.we_closed = Some(frame);
        }
        self.arm_close_deadline();
    }

    fn arm_close_deadline(&mut self) {
        if self.close_deadline.is_none() {
            self.close_deadline = Some(Instant::now() + self.timing.close_timeout);
        }
    }

    /// Returns `true` if the timer fired and there may be new work.
    fn poll_timer(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let target = if let Some(d) = self.close_deadline {
            d
        } else if self.pinged {
            self.last_rx + self.timing.idle_timeout
        } else {
            self.last_rx + self.timing.ping_interval
        };
        // Activity only moves the target later; the timer is re-armed lazily
        // when it fires early, so reading a message never touches the reactor.
        if target < self.timer_at {
            self.timer.set_at(target);
            self.timer_at = target;
        }
        if Pin::new(&mut self.timer).poll(cx).is_pending() {
            return false;
        }
        let now = Instant::now();
        if now < target {
            self.timer.set_at(target);
            self.timer_at = target;
            return true;
        }
        // Park the timer far out until a new target is computed.
        self.timer_at = now + Duration::from_secs(86_400 * 365);
        self.timer.set_at(self.timer_at);
        if self.close_deadline.is_some() {
            // Whatever we were waiting for (our bytes to leave, the peer's
            // answer) took too long: give up on it.
            self.failing = true;
            self.eof = true;
            return true;
        }
        if !self.pinged {
            self.pinged = true;
            self.ping_due = true;
            // Silent for a whole ping interval: hand back the buffers' spare
            // memory (the read buffer is allocated again by the next read).
            self.decoder.shrink();
            self.release_rbuf();
        } else {
            tracing::debug!(session = %self.handle.id(), "idle timeout");
            self.handle
                .shared
                .request_close(CloseCode::Away, "idle timeout");
            self.arm_close_deadline();
        }
        true
    }

    /// How the session ended, from its state.
    fn ended(&self) -> CloseReason {
        if let Some(frame) = &self.peer_closed {
            let done = self.pending_out() == 0 && !self.flush_pending;
            return match frame {
                Some(f) => CloseReason {
                    code: f.code,
                    reason: f.reason.to_string(),
                    closed_by: ClosedBy::Client,
                    clean: done,
                },
                None => CloseReason {
                    code: CloseCode::Status,
                    reason: String::new(),
                    closed_by: ClosedBy::Client,
                    clean: done,
                },
            };
        }
        if let Some(f) = &self.we_closed {
            return CloseReason {
                code: f.code,
                reason: f.reason.to_string(),
                closed_by: ClosedBy::Server,
                clean: self.acked && !self.failing,
            };
        }
        CloseReason::abnormal("connection closed without a close handshake")
    }

    fn transport_end(&self, e: &io::Error) -> CloseReason {
        tracing::debug!(session = %self.handle.id(), error = %e, "transport ended");
        let mut r = self.ended();
        r.clean = false;
        r
    }
}

impl<S> fmt::Debug for Driver<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("session", &self.handle)
            .finish_non_exhaustive()
    }
}

enum ReadError {
    Fail(Fail),
    Io(io::Error),
}
