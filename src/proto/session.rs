//! The session state machine: one WebSocket connection after the
//! handshake, sans-IO (the quinn-proto shape, STYLE rule 6).
//!
//! Inputs say what happened and when: [`Session::receive`] (bytes from the
//! peer, with `now`), [`Session::send`] and [`Session::close`] (the
//! application), [`Session::handle_timeout`] (the timer fired),
//! [`Session::on_eof`] and [`Session::on_transport_error`].
//! Outputs are polled until they say nothing: [`Session::poll_message`] (the
//! next message for the application), [`Session::transmit`] (the bytes to
//! write, with [`Session::advance`] for what was written),
//! [`Session::poll_timeout`] (the one instant at which `handle_timeout`
//! must run) and [`Session::poll_end`] (how it ended).
//!
//! The driver (`runtime::driver`) moves bytes between these methods and a
//! socket, arms one timer from `poll_timeout`, and decides nothing.
//!
//! # States
//!
//! ```text
//!                 ┌──────────── peer's Close ─────────────┐
//!  Open ──────────┤                                       ▼
//!   │  our Close  └── protocol error ──► Ending (our last Close due, then out)
//!   ▼                                        │ bytes out (or deadline)
//!  Closing ── peer's Close ──► Done ◄────────┘
//!      └──── protocol error ──► Ending
//! ```
//!
//! - **Open**: messages flow; a silent peer is pinged after `ping_interval`
//!   and reported idle after `idle_timeout` (the driver then asks the
//!   application side to close, so that queued messages go first). A close
//!   the application asked for but that waits behind unsent messages
//!   carries its deadline here (`close_by`).
//! - **Closing**: we sent Close first; reading goes on until the peer's
//!   Close (clean) or the close deadline (not clean).
//! - **Ending**: the peer closed first, or broke the protocol; our last Close
//!   (the answer, or the failure's code) is *due*: the application's answers
//!   to the messages read before it still go first (they were queued by the
//!   callbacks that ran on those messages), then the Close, then nothing.
//!   Over once the bytes are out, or at the deadline.
//! - **Done**: how it ended.
//!
//! # Invariants
//!
//! - After our Close is encoded nothing else is; after the peer's Close we
//!   send only our answer (RFC 6455 §5.5.1).
//! - Every ping is answered with its own pong, in order (§5.5.2), while open.
//! - Every wait is bounded: the idle timeout covers silent peers, the close
//!   deadline peers that never answer our Close or never read it.
//! - The read buffer holds at most an incomplete frame (plus what one read
//!   added); between messages it is empty and, once idle, unallocated.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;

use super::close::{CloseReason, close_frame};
use super::extension::{Extension, ExtensionError};
use super::frame::{self, DecodeLimits, Decoder, Event, Fail, opcode};

#[cfg(test)]
mod tests;

/// Payloads up to this size are copied next to their header; larger ones are
/// written from the shared `Bytes` they arrived in.
pub(crate) const COPY_MAX: usize = 1024;

/// Beyond this many chunks the output list's memory is handed back once it
/// has been written.
const MAX_CHUNKS_KEPT: usize = 32;

/// The timing and size limits one session enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionConfig {
    /// Silence after which the peer is pinged.
    pub(crate) ping_interval: Duration,
    /// Silence after which the session is reported idle.
    pub(crate) idle_timeout: Duration,
    /// How long the peer has to answer our Close (or read our last bytes).
    pub(crate) close_timeout: Duration,
    /// Frame and message sizes.
    pub(crate) limits: DecodeLimits,
    /// What the sessions' [`Stamp`]s count from (the config's creation:
    /// every session starts later).
    pub(crate) epoch: Instant,
}

/// An instant as a session keeps it: nanoseconds since its config's
/// `epoch` (8 bytes on every connection instead of an `Instant`'s 16; an
/// instant before the epoch is the epoch, one 584 years after it the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

impl SessionConfig {
    /// `t` as a [`Stamp`].
    pub(crate) fn stamp(&self, t: Instant) -> Stamp {
        let since = t.saturating_duration_since(self.epoch);
        Stamp(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The instant `s` stands for.
    pub(crate) fn instant(&self, s: Stamp) -> Instant {
        self.epoch + Duration::from_nanos(s.0)
    }
}

/// What [`Session::handle_timeout`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Nothing was due (the timer fired early, or the session is over).
    Nothing,
    /// The peer was silent for `ping_interval`: a ping is queued.
    Pinged,
    /// The peer was silent for `idle_timeout`: the application side should
    /// close the session (1001), behind what is already queued for it.
    Idle,
    /// A close deadline passed: the session is over ([`Session::poll_end`]).
    Ended,
}

/// Data messages and payload bytes in and out since the last
/// [`Session::take_tally`] (taken every poll, so 32 bits are plenty; they
/// saturate rather than wrap).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) messages_in: u32,
    pub(crate) bytes_in: u32,
    pub(crate) messages_out: u32,
    pub(crate) bytes_out: u32,
    /// Of the messages the extension transformed (compressed ones): their
    /// bytes on the wire and restored, in and out.
    pub(crate) extension: ExtensionTally,
}

impl Tally {
    /// `messages` data messages of `bytes` payload bytes went out.
    fn count_out(&mut self, messages: u32, bytes: usize) {
        self.messages_out = self.messages_out.saturating_add(messages);
        self.bytes_out = self.bytes_out.saturating_add(saturate(bytes));
    }
}

/// Bytes of the messages that went through the extension, as on the wire
/// (compressed) and as the application sees them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExtensionTally {
    pub(crate) wire_in: u32,
    pub(crate) plain_in: u32,
    pub(crate) wire_out: u32,
    pub(crate) plain_out: u32,
}

/// One WebSocket session, sans-IO.
pub(crate) struct Session {
    state: State,
    /// Shared by every session of a vhost.
    config: Arc<SessionConfig>,
    /// The frame engine's state, only while the session has traffic (see
    /// [`Buffers`]).
    bufs: Option<Box<Buffers>>,
    /// When the peer last sent anything.
    last_rx: Stamp,
    /// The negotiated extension, behind a thin pointer (8 bytes on every
    /// session; one more allocation only where one was negotiated).
    extension: Option<Box<Box<dyn Extension>>>,
    /// No data message either way since a ping went out after a silent
    /// interval (a pong does not count): once nothing is buffered, the
    /// buffers go.
    quiet: bool,
}

/// What a session needs while bytes move: the decoder, the bytes received
/// and not yet decoded, and the encoded output. Boxed and created on the
/// first bytes either way, and dropped when nothing is buffered after the
/// peer has been silent for a whole ping interval (a keepalive ping and its
/// pong do not keep them): a connection that has carried no message since
/// its handshake, or since a ping interval of silence, carries only the
/// pointer (about 190 bytes less per idle connection). Nothing in
/// it outlives a quiet moment: the decoder is between messages, the
/// buffers are empty (their spare memory was handed back anyway).
struct Buffers {
    decoder: Decoder,
    rbuf: BytesMut,
    out: Output,
    /// The traffic since the last [`Session::take_tally`] (only messages
    /// count, and they need the buffers).
    tally: Tally,
}

impl Buffers {
    fn new(limits: DecodeLimits, rsv: u8) -> Self {
        Self {
            decoder: Decoder::with_extension_bits(limits, rsv),
            rbuf: BytesMut::new(),
            out: Output::default(),
            tally: Tally::default(),
        }
    }

    /// Holds nothing that the next bytes would need.
    fn is_at_rest(&self) -> bool {
        self.rbuf.is_empty()
            && self.tally == Tally::default()
            && self.out.len == 0
            && self.out.scratch.is_empty()
            && self.decoder.is_at_rest()
    }
}

/// What [`Session::transmit`] shows while the session has no buffers.
static NO_CHUNKS: VecDeque<Bytes> = VecDeque::new();

/// Where the session is. Each state carries what it needs, so that an
/// impossible combination (a deadline without a close, a Close sent twice)
/// cannot be written down.
enum State {
    Open {
        /// A ping went out after a silent interval; the idle timeout runs.
        pinged: bool,
        /// A close was requested and must be done by then.
        close_by: Option<Instant>,
    },
    /// We sent `sent` first and wait for the peer's Close until `deadline`.
    /// (The frames and reasons are boxed: every open session carries the
    /// size of the largest state, 32 bytes rather than 72.)
    Closing {
        sent: Box<CloseFrame>,
        deadline: Instant,
    },
    /// Our last Close is `due` (not yet encoded) or sent; over once the
    /// bytes are out, or at `deadline`.
    Ending {
        why: Box<Ending>,
        due: bool,
        deadline: Instant,
    },
    Done(Box<CloseReason>),
}

/// Why a session is ending.
enum Ending {
    /// The peer closed first, with this frame (`None`: no code).
    PeerClosed(Option<CloseFrame>),
    /// The peer broke the protocol; `sent` is the Close we answer with (or
    /// had already sent).
    Failed { sent: CloseFrame },
}

impl Ending {
    /// The Close that ends it: the peer's code echoed without a reason, or
    /// the failure's.
    fn last_close(&self) -> Message {
        match self {
            Self::PeerClosed(frame) => {
                Message::Close(frame.as_ref().map(|f| close_frame(f.code, "")))
            }
            Self::Failed { sent } => Message::Close(Some(sent.clone())),
        }
    }

    fn reason(&self, clean: bool) -> CloseReason {
        match self {
            Self::PeerClosed(frame) => CloseReason::by_peer(frame.as_ref(), clean),
            Self::Failed { sent } => CloseReason::by_us(sent, false),
        }
    }
}

impl Session {
    /// A session that starts now, with the bytes that arrived behind the
    /// handshake (`leftover`) already in hand.
    pub(crate) fn new(
        config: Arc<SessionConfig>,
        extension: Option<Box<dyn Extension>>,
        leftover: &[u8],
        now: Instant,
    ) -> Self {
        let last_rx = config.stamp(now);
        let mut session = Self {
            state: State::Open {
                pinged: false,
                close_by: None,
            },
            config,
            bufs: None,
            last_rx,
            extension: extension.map(Box::new),
            quiet: false,
        };
        if !leftover.is_empty() {
            session.bufs().rbuf.extend_from_slice(leftover);
        }
        session
    }

    /// The buffers, created if the session had none.
    fn bufs(&mut self) -> &mut Buffers {
        let limits = self.config.limits;
        let rsv = self.extension.as_deref().map_or(0, |e| e.rsv());
        self.bufs
            .get_or_insert_with(|| Box::new(Buffers::new(limits, rsv)))
    }

    // Inbound.

    /// Bytes from the peer arrived at `now`.
    pub(crate) fn receive(&mut self, data: &[u8], now: Instant) {
        self.bufs().rbuf.extend_from_slice(data);
        self.last_rx = self.config.stamp(now);
        if let State::Open { pinged, .. } = &mut self.state {
            *pinged = false;
        }
    }

    /// When bytes from the peer last arrived (the session's start before
    /// any did).
    pub(crate) fn last_receive(&self) -> Instant {
        self.config.instant(self.last_rx)
    }

    /// `t` as the session keeps instants (see [`Stamp`]).
    pub(crate) fn stamp(&self, t: Instant) -> Stamp {
        self.config.stamp(t)
    }

    /// The instant `s` stands for.
    pub(crate) fn instant(&self, s: Stamp) -> Instant {
        self.config.instant(s)
    }

    /// Whether the session still reads from the peer: while open, and after
    /// our Close until the peer's answer.
    pub(crate) fn is_reading(&self) -> bool {
        matches!(self.state, State::Open { .. } | State::Closing { .. })
    }

    /// The next complete message for the application, decoded from what has
    /// been received; `None` when more bytes are needed or reading is over.
    /// Control frames are handled here: pings answered, the peer's Close
    /// answered, protocol errors turned into our Close.
    pub(crate) fn poll_message(&mut self, now: Instant) -> Option<Message> {
        while self.is_reading() {
            let bufs = self.bufs.as_mut()?;
            let event = match bufs.decoder.decode(&mut bufs.rbuf) {
                Ok(Some(event)) => event,
                Ok(None) => return None,
                Err(fail) => {
                    self.fail(fail, now);
                    return None;
                }
            };
            let open = matches!(self.state, State::Open { .. });
            match event {
                Event::Text(text) => {
                    self.count_in(text.len());
                    if open {
                        return Some(Message::Text(text));
                    }
                }
                Event::Binary(data) => {
                    self.count_in(data.len());
                    if open {
                        return Some(Message::Binary(data));
                    }
                }
                Event::Extended { text, rsv, payload } => {
                    if !open {
                        self.count_in(payload.len());
                        continue;
                    }
                    match self.restore(text, rsv, payload) {
                        Ok(message) => {
                            self.count_in(message.len());
                            return Some(message);
                        }
                        Err(fail) => {
                            self.fail(fail, now);
                            return None;
                        }
                    }
                }
                Event::Ping(payload) => {
                    if open {
                        self.bufs().out.push(&Message::Pong(payload));
                    }
                }
                Event::Pong(_) => {}
                Event::Close(frame) => self.on_peer_close(frame, now),
            }
        }
        None
    }

    /// The peer sent EOF: the session is over.
    pub(crate) fn on_eof(&mut self, flushed: bool) {
        let reason = self.reason_now(flushed);
        self.state = State::Done(Box::new(reason));
    }

    /// The transport failed: the session is over, and not cleanly.
    pub(crate) fn on_transport_error(&mut self) {
        let mut reason = self.reason_now(false);
        reason.clean = false;
        self.state = State::Done(Box::new(reason));
    }

    // Outbound.

    /// Whether the application's messages are still taken: while open, and
    /// in the last moment before our final Close is encoded (the answers to
    /// what was read before the peer's Close or a protocol error).
    pub(crate) fn takes_messages(&self) -> bool {
        match &self.state {
            State::Open { .. } => true,
            State::Ending { due, .. } => *due,
            State::Closing { .. } | State::Done(_) => false,
        }
    }

    /// Queues `messages` data messages of `payload` bytes that are already
    /// encoded, as [`send`](Self::send) would have encoded them for a
    /// session without an extension (final, unmasked frames with no reserved
    /// bits, which a session with one may send as well: they are
    /// uncompressed messages). Dropped like `send`'s once the session takes
    /// no more messages. Hands the buffer back, emptied, unless the session
    /// keeps it.
    pub(crate) fn send_encoded(
        &mut self,
        mut frames: BytesMut,
        messages: u32,
        payload: usize,
    ) -> Option<BytesMut> {
        if !self.takes_messages() {
            frames.clear();
            return Some(frames);
        }
        self.quiet = false;
        let bufs = self.bufs();
        bufs.tally.count_out(messages, payload);
        bufs.out.push_encoded(frames)
    }

    /// Whether the session is ending because the peer broke the protocol
    /// (or was aborted): our Close answers a peer that may still be sending,
    /// so the driver reads and discards a little after it (see the driver's
    /// linger) for the Close to be seen rather than reset away.
    pub(crate) fn is_failing(&self) -> bool {
        matches!(&self.state, State::Ending { why, .. } if matches!(**why, Ending::Failed { .. }))
    }

    /// Whether the session is open (no Close decided on either side).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Encodes a text or binary message behind what is already waiting
    /// (through the extension, if one was negotiated). Ignored once
    /// [`takes_messages`](Self::takes_messages) is false, and for control
    /// messages, which are the session's own business.
    pub(crate) fn send(&mut self, message: &Message) {
        if !self.takes_messages() {
            return;
        }
        // The message's own buffer, borrowed (a text's bytes are a `Bytes`
        // too), so that a message sent to many sessions is one key for the
        // extension's cache.
        let (op, payload): (u8, &Bytes) = match message {
            Message::Text(t) => (opcode::TEXT, t.as_ref()),
            Message::Binary(b) => (opcode::BINARY, b),
            _ => return,
        };
        let len = payload.len();
        self.quiet = false;
        let encoded = self
            .extension
            .as_deref_mut()
            .and_then(|e| e.encode(payload).map(|p| (e.rsv(), p)));
        let bufs = self.bufs();
        bufs.tally.count_out(1, len);
        if let Some((rsv, p)) = encoded {
            let ext = &mut bufs.tally.extension;
            ext.plain_out = ext.plain_out.saturating_add(saturate(len));
            ext.wire_out = ext.wire_out.saturating_add(saturate(p.len()));
            bufs.out.push_payload(op, rsv, p);
        } else {
            bufs.out.push(message);
        }
    }

    /// Starts our close handshake with `frame`: encoded behind what is
    /// waiting, then the peer has `close_timeout` (or what was left of a
    /// requested close's deadline) to answer. Ignored unless open.
    pub(crate) fn close(&mut self, frame: CloseFrame, now: Instant) {
        let State::Open { close_by, .. } = self.state else {
            return;
        };
        self.bufs().out.push(&Message::Close(Some(frame.clone())));
        self.state = State::Closing {
            sent: Box::new(frame),
            deadline: close_by.unwrap_or(now + self.config.close_timeout),
        };
    }

    /// A close was requested that cannot be encoded yet (it waits behind
    /// messages the peer is not reading): its deadline starts now.
    pub(crate) fn close_requested(&mut self, now: Instant) {
        if let State::Open { close_by, .. } = &mut self.state {
            close_by.get_or_insert(now + self.config.close_timeout);
        }
    }

    /// The bytes to write, in order, after encoding a due Close. Write what
    /// the transport takes and report it with [`advance`](Self::advance).
    pub(crate) fn transmit(&mut self) -> &VecDeque<Bytes> {
        let last = match &mut self.state {
            State::Ending { why, due, .. } if *due => {
                *due = false;
                Some(why.last_close())
            }
            _ => None,
        };
        if let Some(close) = last {
            self.bufs().out.push(&close);
        }
        match self.bufs.as_mut() {
            Some(bufs) => {
                bufs.out.seal();
                &bufs.out.chunks
            }
            None => &NO_CHUNKS,
        }
    }

    /// `n` bytes of [`transmit`](Self::transmit)'s output were written.
    pub(crate) fn advance(&mut self, n: usize) {
        if let Some(bufs) = self.bufs.as_mut() {
            bufs.out.advance(n);
        }
    }

    /// Encoded bytes not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.bufs
            .as_ref()
            .map_or(0, |b| b.out.len + b.out.scratch.len())
    }

    /// Hands back the output list's memory after a large batch went out,
    /// and all the buffers once a quiet peer's session holds nothing.
    pub(crate) fn compact(&mut self) {
        let open = self.is_open();
        let Some(bufs) = self.bufs.as_mut() else {
            return;
        };
        if bufs.out.len == 0 && bufs.out.chunks.capacity() > MAX_CHUNKS_KEPT {
            bufs.out.chunks = VecDeque::new();
        }
        if self.quiet && open && bufs.is_at_rest() {
            self.bufs = None;
        }
    }

    // Time.

    /// The one instant at which [`handle_timeout`](Self::handle_timeout)
    /// must run; `None` once the session is over.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            // A requested close's deadline supersedes the keepalive.
            State::Open {
                close_by: Some(by), ..
            } => Some(*by),
            State::Open { pinged, .. } => {
                let silence = if *pinged {
                    self.config.idle_timeout
                } else {
                    self.config.ping_interval
                };
                Some(self.config.instant(self.last_rx) + silence)
            }
            State::Closing { deadline, .. } | State::Ending { deadline, .. } => Some(*deadline),
            State::Done(_) => None,
        }
    }

    /// Time has come to `now`: ping a silent peer, report an idle one, or
    /// give up on a close that took too long.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Expired {
        match self.poll_timeout() {
            Some(at) if now >= at => {}
            _ => return Expired::Nothing,
        }
        match &mut self.state {
            State::Open {
                close_by: Some(by), ..
            } if now >= *by => {
                // The requested Close never got out (the peer stopped
                // reading): give up without a handshake.
                self.state = State::Done(Box::new(CloseReason::abnormal(
                    "connection closed without a close handshake",
                )));
                Expired::Ended
            }
            State::Open { pinged, close_by } => {
                if *pinged {
                    close_by.get_or_insert(now + self.config.close_timeout);
                    Expired::Idle
                } else {
                    *pinged = true;
                    // Silent for a whole interval: hand back the buffers'
                    // spare memory (the next read allocates what it needs),
                    // and the buffers themselves once the ping is out
                    // ([`compact`](Self::compact)).
                    self.quiet = true;
                    let bufs = self.bufs();
                    bufs.out.push(&Message::Ping(Bytes::new()));
                    bufs.decoder.shrink();
                    self.release_read_buffer();
                    Expired::Pinged
                }
            }
            State::Closing { sent, .. } => {
                self.state = State::Done(Box::new(CloseReason::by_us(sent, false)));
                Expired::Ended
            }
            State::Ending { why, .. } => {
                self.state = State::Done(Box::new(why.reason(false)));
                Expired::Ended
            }
            State::Done(_) => Expired::Nothing,
        }
    }

    // The end.

    /// How the session ended, once it has: `flushed` says whether every
    /// byte written has also been flushed by the transport.
    pub(crate) fn poll_end(&mut self, flushed: bool) -> Option<CloseReason> {
        match &self.state {
            State::Done(reason) => Some(CloseReason::clone(reason)),
            State::Ending {
                why, due: false, ..
            } if flushed && self.pending() == 0 => {
                let reason = why.reason(true);
                self.state = State::Done(Box::new(reason.clone()));
                Some(reason)
            }
            _ => None,
        }
    }

    // Memory.

    /// Frees the read buffer if it holds nothing (between messages), so
    /// that an idle session keeps none.
    pub(crate) fn release_read_buffer(&mut self) {
        if let Some(bufs) = self.bufs.as_mut()
            && bufs.rbuf.is_empty()
            && bufs.rbuf.capacity() > 0
        {
            bufs.rbuf = BytesMut::new();
        }
    }

    /// Whether the session holds its buffers now.
    #[cfg(test)]
    pub(crate) fn holds_buffers(&self) -> bool {
        self.bufs.is_some()
    }

    /// Memory held for what the peer sent and the application has not been
    /// given yet: the unfinished message and the undecoded bytes (their
    /// buffers' capacities, what the allocator actually holds).
    pub(crate) fn buffered_in(&self) -> usize {
        self.bufs
            .as_ref()
            .map_or(0, |b| b.decoder.held() + b.rbuf.capacity())
    }

    /// Whether the peer is in the middle of a message or frame (reading on
    /// would grow what is held).
    pub(crate) fn is_unfinished(&self) -> bool {
        self.bufs
            .as_ref()
            .is_some_and(|b| b.decoder.buffered() > 0 || !b.rbuf.is_empty())
    }

    /// Bytes the negotiated extension holds.
    pub(crate) fn extension_memory(&self) -> usize {
        self.extension.as_deref().map_or(0, |e| e.memory())
    }

    /// Ends the session from our side at once (the memory budget sheds it):
    /// our Close with `frame` behind what is already encoded, nothing read
    /// any more, and the unfinished message and read buffer freed now. The
    /// peer is not waited for.
    pub(crate) fn abort(&mut self, frame: CloseFrame, now: Instant) {
        self.fail_with(frame, now);
        if let Some(bufs) = self.bufs.as_mut() {
            bufs.decoder.clear();
            bufs.rbuf = BytesMut::new();
        }
    }

    /// The traffic since the last call.
    pub(crate) fn take_tally(&mut self) -> Tally {
        self.bufs
            .as_mut()
            .map(|b| std::mem::take(&mut b.tally))
            .unwrap_or_default()
    }

    // Helpers.

    /// A data message of `len` bytes came in: counted, and the quiet
    /// (see [`Session::compact`]) is over.
    fn count_in(&mut self, len: usize) {
        self.quiet = false;
        let tally = &mut self.bufs().tally;
        tally.messages_in = tally.messages_in.saturating_add(1);
        tally.bytes_in = tally.bytes_in.saturating_add(saturate(len));
    }

    /// Restores a message through the extension, then checks its text.
    fn restore(&mut self, text: bool, rsv: u8, payload: Bytes) -> Result<Message, Fail> {
        let Some(ext) = self.extension.as_deref_mut() else {
            return Err(Fail::protocol("reserved bits set"));
        };
        let wire = payload.len();
        let data = ext
            .decode(rsv, payload, self.config.limits.max_message_size)
            .map_err(|e| match e {
                ExtensionError::TooBig => Fail::size("message too big"),
                ExtensionError::Invalid(reason) => Fail::invalid(reason),
            })?;
        let t = &mut self.bufs().tally.extension;
        t.wire_in = t.wire_in.saturating_add(saturate(wire));
        t.plain_in = t.plain_in.saturating_add(saturate(data.len()));
        if text {
            Utf8Bytes::try_from(data)
                .map(Message::Text)
                .map_err(|_| Fail::invalid("invalid utf-8"))
        } else {
            Ok(Message::Binary(data))
        }
    }

    fn on_peer_close(&mut self, frame: Option<CloseFrame>, now: Instant) {
        match &self.state {
            State::Open { close_by, .. } => {
                // Answer with the peer's code, send nothing else, and close
                // TCP once the answer is out (RFC 6455 §5.5.1, §7.1.1).
                let deadline = close_by.unwrap_or(now + self.config.close_timeout);
                self.state = State::Ending {
                    why: Box::new(Ending::PeerClosed(frame)),
                    due: true,
                    deadline,
                };
            }
            State::Closing { sent, .. } => {
                self.state = State::Done(Box::new(CloseReason::by_us(sent, true)));
            }
            State::Ending { .. } | State::Done(_) => {}
        }
    }

    /// The peer broke the protocol: our Close with the failure's code (unless
    /// ours is out already), then nothing.
    fn fail(&mut self, fail: Fail, now: Instant) {
        self.fail_with(fail.to_close_frame(), now);
    }

    /// Our Close with `frame` (unless ours is out already), then nothing:
    /// a protocol failure and the budget's abort end the same way.
    fn fail_with(&mut self, frame: CloseFrame, now: Instant) {
        self.state = match std::mem::replace(
            &mut self.state,
            // A stand-in for the instant of the swap (allocates nothing).
            State::Open {
                pinged: false,
                close_by: None,
            },
        ) {
            State::Open { close_by, .. } => State::Ending {
                why: Box::new(Ending::Failed { sent: frame }),
                due: true,
                deadline: close_by.unwrap_or(now + self.config.close_timeout),
            },
            State::Closing { sent, deadline } => State::Ending {
                why: Box::new(Ending::Failed { sent: *sent }),
                due: false,
                deadline,
            },
            other => other,
        };
    }

    /// How the session would end if the transport ended now.
    fn reason_now(&self, flushed: bool) -> CloseReason {
        match &self.state {
            State::Open { .. } => {
                CloseReason::abnormal("connection closed without a close handshake")
            }
            State::Closing { sent, .. } => CloseReason::by_us(sent, false),
            State::Ending { why, due, .. } => why.reason(flushed && !due && self.pending() == 0),
            State::Done(reason) => CloseReason::clone(reason),
        }
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Open { .. } => "open",
            State::Closing { .. } => "closing",
            State::Ending { .. } => "ending",
            State::Done(_) => "done",
        };
        f.debug_struct("Session")
            .field("state", &state)
            .field("pending", &self.pending())
            .field("buffered", &self.bufs.as_ref().map_or(0, |b| b.rbuf.len()))
            .finish_non_exhaustive()
    }
}

/// Encoded bytes waiting for the transport, in order: headers and small
/// payloads gathered in `scratch`, large payloads shared, never copied.
#[derive(Default)]
struct Output {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    len: usize,
    scratch: BytesMut,
}

impl Output {
    /// Encodes `message` (a large data payload is shared, not copied).
    fn push(&mut self, message: &Message) {
        let large = match message {
            Message::Text(t) if t.len() > COPY_MAX => Some((opcode::TEXT, Bytes::from(t.clone()))),
            Message::Binary(b) if b.len() > COPY_MAX => Some((opcode::BINARY, b.clone())),
            _ => None,
        };
        match large {
            Some((op, payload)) => self.push_payload(op, 0, payload),
            None => {
                frame::encode(&mut self.scratch, message);
            }
        }
    }

    /// Appends frames encoded elsewhere: copied if small, like a small
    /// payload (the emptied buffer is handed back, for its next use), shared
    /// otherwise.
    fn push_encoded(&mut self, mut frames: BytesMut) -> Option<BytesMut> {
        if frames.len() <= COPY_MAX {
            self.scratch.extend_from_slice(&frames);
            frames.clear();
            Some(frames)
        } else {
            self.seal();
            self.len += frames.len();
            self.chunks.push_back(frames.freeze());
            None
        }
    }

    /// Encodes a data frame with reserved bits `rsv` around `payload`.
    fn push_payload(&mut self, op: u8, rsv: u8, payload: Bytes) {
        let (mut head, n) = frame::header(op, true, payload.len());
        head[0] |= rsv & 0x70;
        self.scratch.extend_from_slice(&head[..n]);
        if payload.len() <= COPY_MAX {
            self.scratch.extend_from_slice(&payload);
        } else {
            self.seal();
            self.len += payload.len();
            self.chunks.push_back(payload);
        }
    }

    /// Moves the gathered small bytes into the chunk list.
    fn seal(&mut self) {
        if !self.scratch.is_empty() {
            let chunk = self.scratch.split().freeze();
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}
