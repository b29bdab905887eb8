//! Each worker's reactor: the readiness of its session sockets and the
//! deadlines of its sessions, for the tasks of one task set.
//!
//! async-io stays the reactor the host sees, and the host still owns the
//! loop: this module starts no thread and blocks nowhere. What it changes
//! is how much a message costs in system calls.
//!
//! # Why
//!
//! async-io registers each socket one-shot, so every read that has drained
//! the socket is followed by an `epoll_ctl` to re-arm it: one system call per
//! message on top of `recv` and `send`. And each session owning an async-io
//! `Timer` puts an entry per session in async-io's timer map (memory, and a
//! timer operation whenever a deadline moves earlier).
//!
//! # How
//!
//! - **Sockets (Linux).** A worker owns an epoll instance of its own, nested
//!   in async-io's: its descriptor is registered with async-io
//!   (`Async<OwnedFd>`) and is readable whenever one of its sockets has an
//!   event. Session sockets ([`Registered`]) are added once, edge-triggered,
//!   for reading and writing, and never re-armed. An event marks the socket
//!   ready in this reactor's table and wakes the task that owns it; the task
//!   clears the mark itself, only when a call would block or came back short
//!   (on a stream socket a short read has emptied the receive queue, and the
//!   next byte to arrive is a new edge), and only if no event arrived since
//!   it looked (a sequence number), so no edge is lost. Once the peer has
//!   shut down, hung up or reset, the read mark stays: a short read may leave
//!   the end of the stream unread, and its edge came folded into the data's.
//! - **The reactor's task** ([`Reactor::drive`], one per worker, in its task
//!   set) drains the nested epoll without blocking (`epoll_wait` with a zero
//!   timeout) and wakes the owners of the ready sockets: a burst of ready
//!   sockets costs async-io one wake-up and one re-arm. While bursts keep
//!   coming it drains again after the tasks it woke have run, and re-arms
//!   only when it finds nothing, so a busy worker makes about one
//!   `epoll_wait` per burst and no `epoll_ctl`.
//! - **Deadlines.** Every session's deadline (ping interval, idle and close
//!   timeouts, linger) is an entry in one min-heap per worker, in ticks of
//!   [`TICK`] ([`deadlines`]); the reactor's task sleeps on one async-io
//!   `Timer` until the earliest. Deadlines fire late by up to a tick, never
//!   early.
//!
//! Elsewhere than Linux, or if the nested epoll cannot be created, sockets
//! stay async-io's (`runtime::transport::Tcp`) and only the deadlines are the
//! reactor's.
//!
//! # Invariants
//!
//! - An entry has one waker: the task that owns it (a connection, then its
//!   session). Every readiness event and a passed deadline wake it; a wake-up
//!   it did not wait for is harmless (it looks and waits again).
//! - A readiness mark is set only by events and cleared only by the owner,
//!   as above; the owner's cached view is never more ready than the table.
//! - Keys carry a generation: an event or deadline of a freed entry never
//!   reaches the entry that reuses its slot.

use std::future::Future;
use std::io;
#[cfg(target_os = "linux")]
use std::io::IoSlice;
#[cfg(target_os = "linux")]
use std::mem::MaybeUninit;
#[cfg(target_os = "linux")]
use std::net::Shutdown;
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(target_os = "linux")]
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use async_io::Async;
use async_io::Timer;
#[cfg(target_os = "linux")]
use futures_lite::{AsyncRead, AsyncWrite};
#[cfg(target_os = "linux")]
use rustix::event::epoll;

use crate::common::lock;

pub(crate) mod deadlines;

use deadlines::{Deadlines, NONE, Table, Tick, Ticks};

/// The granularity of session deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Entries per page of the table: the table grows a page at a time, so its
/// slack is at most one page, never half of it.
const PAGE: usize = 256;

/// Events taken from the nested epoll per `epoll_wait`.
#[cfg(target_os = "linux")]
const EVENTS: usize = 256;

/// Readiness bits. `EOF` (the peer shut down, hung up or reset) keeps
/// `READ` set for good, `HUP` (hung up or failed) keeps `WRITE` set: a
/// short read may leave the end of the stream (or a reset) unread, and its
/// edge has already come, folded into the data's. (Elsewhere than Linux
/// there is no nested epoll, so nothing sets them.)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const READ: u8 = 1;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const WRITE: u8 = 2;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const EOF: u8 = 4;
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUP: u8 = 8;

/// One worker's reactor. Shared by its reactor task and every registration.
pub(crate) struct Reactor {
    state: Mutex<State>,
    /// Tick 0.
    epoch: Instant,
    /// The nested epoll (none: sockets stay async-io's).
    #[cfg(target_os = "linux")]
    epoll: Option<Async<OwnedFd>>,
}

struct State {
    entries: Entries,
    deadlines: Deadlines,
    /// The reactor task's waker, to move its timer earlier.
    drive: Option<Waker>,
    /// The tick the reactor task's timer is set for ([`NONE`]: none).
    drive_at: Tick,
}

/// The table: pages of entries and a free list.
#[derive(Default)]
struct Entries {
    pages: Vec<Box<[Entry]>>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Entry {
    waker: Option<Waker>,
    ticks: Ticks,
    /// Bumped on every reuse of the slot.
    generation: u32,
    /// Bumped (wrapping) on every readiness event.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    seq: u16,
    ready: u8,
    live: bool,
}

impl Entries {
    fn get(&mut self, index: u32) -> Option<&mut Entry> {
        let index = index as usize;
        self.pages
            .get_mut(index / PAGE)
            .and_then(|p| p.get_mut(index % PAGE))
    }

    fn live(&mut self, index: u32, generation: u32) -> Option<&mut Entry> {
        self.get(index)
            .filter(|e| e.live && e.generation == generation)
    }

    fn insert(&mut self, ready: u8) -> (u32, u32) {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let base = self.pages.len() * PAGE;
                self.pages
                    .push((0..PAGE).map(|_| Entry::default()).collect());
                // The new page's slots, lowest index last (popped first).
                self.free
                    .extend((base as u32 + 1..(base + PAGE) as u32).rev());
                base as u32
            }
        };
        let entry = self.get(index).map(|e| {
            e.live = true;
            e.ready = ready;
            e.ticks = Ticks::IDLE;
            e.generation
        });
        (index, entry.unwrap_or(0))
    }

    fn remove(&mut self, index: u32, generation: u32) {
        if let Some(e) = self.live(index, generation) {
            e.live = false;
            e.waker = None;
            e.ticks = Ticks::IDLE;
            e.ready = 0;
            e.generation = e.generation.wrapping_add(1);
            self.free.push(index);
        }
    }
}

impl Table for Entries {
    fn ticks(&mut self, index: u32) -> Option<&mut Ticks> {
        self.get(index).filter(|e| e.live).map(|e| &mut e.ticks)
    }
}

impl Reactor {
    /// A reactor with a nested epoll where there is one (Linux); without,
    /// deadlines only.
    pub(crate) fn new() -> Arc<Self> {
        #[cfg(target_os = "linux")]
        let epoll = match epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(io::Error::from)
            .and_then(Async::new_nonblocking)
        {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "no nested epoll; sockets stay on async-io");
                None
            }
        };
        Arc::new(Self {
            state: Mutex::new(State {
                entries: Entries::default(),
                deadlines: Deadlines::default(),
                drive: None,
                drive_at: NONE,
            }),
            epoch: Instant::now(),
            #[cfg(target_os = "linux")]
            epoll,
        })
    }

    /// The reactor's task: drains the nested epoll and fires deadlines. Runs
    /// until dropped (with its task set).
    pub(crate) fn drive(self: &Arc<Self>) -> Drive {
        Drive {
            reactor: self.clone(),
            timer: Timer::never(),
            timer_at: NONE,
            busy: false,
        }
    }

    /// An entry for deadlines only (a session whose stream is not
    /// registered here).
    pub(crate) fn deadline(self: &Arc<Self>) -> Token {
        let (index, generation) = lock(&self.state).entries.insert(0);
        Token(Alarm {
            reactor: self.clone(),
            index,
            generation,
        })
    }

    /// Registers `stream` edge-triggered in the nested epoll; `Err` gives
    /// the stream back when there is no nested epoll or it refused it.
    #[cfg(target_os = "linux")]
    pub(crate) fn register(self: &Arc<Self>, stream: NonBlocking) -> Result<Registered, TcpStream> {
        let stream = stream.0;
        let Some(epoll) = &self.epoll else {
            return Err(stream);
        };
        // Writable at first, but not readable: registering reports what
        // the socket has already (epoll's ADD polls it), so the first read
        // waits for that report instead of guessing. A read that guessed
        // found nothing yet (a request that had not arrived: always, over a
        // real network), or took the request before the report, which then
        // made the session's first read find nothing: a system call for
        // nothing either way.
        let (index, generation) = lock(&self.state).entries.insert(WRITE);
        let token = Token(Alarm {
            reactor: self.clone(),
            index,
            generation,
        });
        let flags = epoll::EventFlags::IN
            | epoll::EventFlags::OUT
            | epoll::EventFlags::RDHUP
            | epoll::EventFlags::ET;
        let data = epoll::EventData::new_u64(token.key());
        if epoll::add(epoll.get_ref(), &stream, data, flags).is_err() {
            return Err(stream);
        }
        Ok(Registered {
            token,
            stream,
            ready: WRITE,
            seq: 0,
        })
    }

    /// The tick at or after `at`.
    fn tick_at(&self, at: Instant) -> Tick {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let tick = nanos.div_ceil(TICK.as_nanos());
        Tick::try_from(tick).unwrap_or(NONE - 1).min(NONE - 1)
    }

    /// The tick that `now` is in.
    fn tick_of(&self, now: Instant) -> Tick {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        Tick::try_from(nanos / TICK.as_nanos())
            .unwrap_or(NONE - 1)
            .min(NONE - 1)
    }

    fn instant_of(&self, tick: Tick) -> Instant {
        let nanos = u128::from(tick).saturating_mul(TICK.as_nanos());
        let since = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        // Ticks come from real instants, so this does not overflow; if it
        // did, a far instant (never early).
        self.epoch
            .checked_add(since)
            .unwrap_or_else(|| self.epoch + Duration::from_secs(u64::from(u32::MAX)))
    }

    /// Drains the nested epoll without blocking, marks the sockets ready and
    /// wakes their owners; returns the number of events.
    #[cfg(target_os = "linux")]
    fn dispatch(&self) -> usize {
        let Some(fd) = &self.epoll else {
            return 0;
        };
        // On the stack: the events hold no memory between drains (and an
        // event, which may carry a pointer, is not `Send`).
        let mut buf = [MaybeUninit::<epoll::Event>::uninit(); EVENTS];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let events = match epoll::wait(fd.get_ref(), &mut buf[..], Some(&zero)) {
            Ok((events, _)) => events,
            Err(rustix::io::Errno::INTR) => return 0,
            Err(e) => {
                tracing::warn!(error = %e, "nested epoll_wait failed");
                return 0;
            }
        };
        let mut state = lock(&self.state);
        for event in events.iter() {
            // Copied out: the event is packed.
            let (flags, key) = (event.flags, event.data.u64());
            let mut ready = 0;
            if flags.contains(epoll::EventFlags::IN) {
                ready |= READ;
            }
            if flags.contains(epoll::EventFlags::OUT) {
                ready |= WRITE;
            }
            if flags.intersects(epoll::EventFlags::RDHUP) {
                ready |= READ | EOF;
            }
            if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                ready |= READ | WRITE | EOF | HUP;
            }
            let (index, generation) = split(key);
            if let Some(e) = state.entries.live(index, generation) {
                e.ready |= ready;
                e.seq = e.seq.wrapping_add(1);
                if let Some(w) = &e.waker {
                    w.wake_by_ref();
                }
            }
        }
        events.len()
    }

    /// Fires every deadline due at `now`; returns the next queued tick.
    fn expire(&self, now: Instant, drive: &Waker) -> Tick {
        let now = self.tick_of(now);
        let mut state = lock(&self.state);
        let State {
            entries, deadlines, ..
        } = &mut *state;
        deadlines.expire(now, entries, |entries, index| {
            if let Some(w) = entries.get(index).and_then(|e| e.waker.as_ref()) {
                w.wake_by_ref();
            }
        });
        let next = deadlines.next().unwrap_or(NONE);
        state.drive_at = next;
        match &state.drive {
            Some(w) if w.will_wake(drive) => {}
            _ => state.drive = Some(drive.clone()),
        }
        next
    }
}

#[cfg(target_os = "linux")]
fn split(key: u64) -> (u32, u32) {
    // Truncation is the point: the low half is the index, the high half
    // the generation.
    (key as u32, (key >> 32) as u32)
}

/// The reactor's task (see the module docs).
#[must_use = "the reactor does nothing unless its task runs"]
pub(crate) struct Drive {
    reactor: Arc<Reactor>,
    /// Sleeps until the earliest deadline.
    timer: Timer,
    /// The tick `timer` is set for ([`NONE`]: far away).
    timer_at: Tick,
    /// The last drain found events: drain again before re-arming.
    busy: bool,
}

impl Future for Drive {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            #[cfg(target_os = "linux")]
            if let Some(epoll) = &this.reactor.epoll {
                let readable = this.busy
                    || match epoll.poll_readable(cx) {
                        Poll::Ready(Ok(())) => true,
                        Poll::Ready(Err(e)) => {
                            tracing::warn!(error = %e, "nested epoll unusable");
                            false
                        }
                        Poll::Pending => false,
                    };
                if readable {
                    let found = this.reactor.dispatch();
                    this.busy = found > 0;
                    if !this.busy {
                        // Nothing (more): re-arm with async-io (above),
                        // which says "pending" the second time, and sleep.
                        continue;
                    }
                }
            }
            let next = this.reactor.expire(Instant::now(), cx.waker());
            if next != this.timer_at {
                // Moving an async-io timer is a timer operation on its
                // reactor: only when the earliest deadline changed.
                this.timer_at = next;
                if next == NONE {
                    this.timer = Timer::never();
                } else {
                    this.timer.set_at(this.reactor.instant_of(next));
                }
            }
            if next != NONE && Pin::new(&mut this.timer).poll(cx).is_ready() {
                continue;
            }
            if this.busy {
                // Let the tasks just woken run, then drain again.
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
    }
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive").field("busy", &self.busy).finish()
    }
}

/// An entry in a reactor: a registered socket's readiness, a deadline, and
/// the waker of the task that owns them. Freed when dropped (the [`Alarm`]
/// it wraps only names it).
pub(crate) struct Token(Alarm);

impl Token {
    #[cfg(target_os = "linux")]
    fn key(&self) -> u64 {
        u64::from(self.0.index) | (u64::from(self.0.generation) << 32)
    }

    /// Asks for the owner (`waker`) to be woken once `at` has passed (up to
    /// a [`TICK`] later). A later call with a later instant only records it
    /// (the first wake-up comes at the earlier one); an earlier one takes
    /// effect.
    pub(crate) fn arm(&self, at: Instant, waker: &Waker) {
        self.0.arm(at, waker);
    }

    /// A handle on this entry for deadlines alone (see [`Sleep`]).
    pub(crate) fn alarm(&self) -> Alarm {
        self.0.clone()
    }
}

impl Alarm {
    /// Arms the entry (see [`Token::arm`]); `false` if it is gone.
    fn arm(&self, at: Instant, waker: &Waker) -> bool {
        let (index, generation) = (self.index, self.generation);
        let tick = self.reactor.tick_at(at);
        let mut state = lock(&self.reactor.state);
        let State {
            entries,
            deadlines,
            drive,
            drive_at,
        } = &mut *state;
        let Some(e) = entries.live(index, generation) else {
            return false;
        };
        match &e.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => e.waker = Some(waker.clone()),
        }
        if deadlines.arm(index, &mut e.ticks, tick) && tick < *drive_at {
            // Earlier than the reactor task sleeps: let it set its timer.
            *drive_at = tick;
            if let Some(w) = drive {
                w.wake_by_ref();
            }
        }
        true
    }
}

/// An entry of a worker's reactor, for deadlines only: it neither owns nor
/// removes the entry (its stream's [`Token`] does), and arming it once the
/// entry is gone does nothing.
#[derive(Clone)]
pub(crate) struct Alarm {
    reactor: Arc<Reactor>,
    index: u32,
    generation: u32,
}

/// Completes once `at` has passed (up to a [`TICK`] later), woken by the
/// worker's reactor when the stream has an entry there, so that a timeout
/// on a plain TCP connection's handshake costs no async-io timer (each of
/// those takes async-io's timer queue and a tree of its own); otherwise, or
/// if the entry goes, by an async-io `Timer`.
pub(crate) struct Sleep {
    alarm: Option<Alarm>,
    at: Instant,
    timer: Option<Timer>,
}

impl Sleep {
    pub(crate) fn until(alarm: Option<Alarm>, at: Instant) -> Self {
        Self {
            alarm,
            at,
            timer: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = &mut *self;
        if Instant::now() >= this.at {
            return Poll::Ready(());
        }
        if this.timer.is_none()
            && let Some(a) = &this.alarm
            && a.arm(this.at, cx.waker())
        {
            return Poll::Pending;
        }
        let at = this.at;
        Pin::new(this.timer.get_or_insert_with(|| Timer::at(at)))
            .poll(cx)
            .map(|_| ())
    }
}

impl Token {
    /// Ready (with the sequence number seen) if the socket is marked ready
    /// for `dir`; otherwise registers `cx`'s waker.
    #[cfg(target_os = "linux")]
    fn poll_ready(&self, cx: &mut TaskContext<'_>, dir: u8) -> (u8, u16, bool) {
        let mut state = lock(&self.0.reactor.state);
        let Some(e) = state.entries.live(self.0.index, self.0.generation) else {
            // Cannot happen while the token lives; report ready so that the
            // caller's system call says what is wrong.
            return (READ | WRITE, 0, true);
        };
        if e.ready & dir != 0 {
            return (e.ready, e.seq, true);
        }
        match &e.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => e.waker = Some(cx.waker().clone()),
        }
        (e.ready, e.seq, false)
    }

    /// Clears the mark for `dir` unless an event arrived since `seq`;
    /// returns the table's view afterwards.
    #[cfg(target_os = "linux")]
    fn clear(&self, dir: u8, seq: u16) -> (u8, u16) {
        let mut state = lock(&self.0.reactor.state);
        match state.entries.live(self.0.index, self.0.generation) {
            Some(e) => {
                let sticky = if e.ready & EOF != 0 { READ } else { 0 }
                    | if e.ready & HUP != 0 { WRITE } else { 0 };
                if e.seq == seq {
                    e.ready &= !(dir & !sticky);
                }
                (e.ready, e.seq)
            }
            None => (READ | WRITE, seq),
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        lock(&self.0.reactor.state)
            .entries
            .remove(self.0.index, self.0.generation);
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("index", &self.0.index)
            .finish()
    }
}

/// An accepted TCP stream in non-blocking mode, as the nested epoll's reads
/// and writes need it: on Linux accepted so (`accept4` with
/// `SOCK_NONBLOCK`, no separate system call to switch it), elsewhere
/// switched after `accept`.
#[derive(Debug)]
pub(crate) struct NonBlocking(TcpStream);

impl NonBlocking {
    /// Accepts the next connection from `listener` (non-blocking itself).
    pub(crate) fn accept(listener: &TcpListener) -> io::Result<(Self, SocketAddr)> {
        #[cfg(target_os = "linux")]
        {
            use rustix::net::{SocketFlags, acceptfrom_with};
            let (fd, peer) =
                acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
            let stream = TcpStream::from(fd);
            let peer = match peer.and_then(|a| SocketAddr::try_from(a).ok()) {
                Some(peer) => peer,
                None => stream.peer_addr()?,
            };
            Ok((Self(stream), peer))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let (stream, peer) = listener.accept()?;
            stream.set_nonblocking(true)?;
            Ok((Self(stream), peer))
        }
    }

    pub(crate) fn get_ref(&self) -> &TcpStream {
        &self.0
    }

    pub(crate) fn into_inner(self) -> TcpStream {
        self.0
    }
}

/// A TCP stream registered edge-triggered in a worker's nested epoll (see
/// the module docs): reads and writes are plain system calls while the
/// socket is marked ready, and nothing at all while it is not.
#[cfg(target_os = "linux")]
pub(crate) struct Registered {
    token: Token,
    stream: TcpStream,
    /// The last view of the table's marks: never more ready than the table.
    ready: u8,
    seq: u16,
}

#[cfg(target_os = "linux")]
impl Registered {
    /// The entry, for the session's deadlines.
    pub(crate) fn token(&self) -> &Token {
        &self.token
    }

    /// Ready to try a call for `dir`: from the cached view, or (when that
    /// says not ready) the table's, registering the waker if not ready.
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>, dir: u8) -> Poll<()> {
        if self.ready & dir != 0 {
            return Poll::Ready(());
        }
        let (ready, seq, ok) = self.token.poll_ready(cx, dir);
        self.ready = ready;
        self.seq = seq;
        if ok { Poll::Ready(()) } else { Poll::Pending }
    }

    /// The socket said "drained" for `dir` (would block, or a short call).
    fn drained(&mut self, dir: u8) {
        let (ready, seq) = self.token.clear(dir, self.seq);
        self.ready = ready;
        self.seq = seq;
    }

    /// One call (`op`) under the readiness protocol.
    fn poll_io(
        &mut self,
        cx: &mut TaskContext<'_>,
        dir: u8,
        want: usize,
        mut op: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            futures_lite::ready!(self.poll_ready(cx, dir));
            match op(&self.stream) {
                Ok(n) => {
                    // A short call on a stream socket emptied the receive
                    // queue (or filled the send buffer): the next change is
                    // an edge. EOF (0 of a non-empty read) stays ready.
                    if n > 0 && n < want {
                        self.drained(dir);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained(dir),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl crate::runtime::transport::Transport for Registered {
    fn poll_readable(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.poll_ready(cx, READ).map(Ok)
    }
}

#[cfg(target_os = "linux")]
impl AsyncRead for Registered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let want = buf.len();
        self.poll_io(cx, READ, want, |s| {
            rustix::net::recv(s, &mut *buf, rustix::net::RecvFlags::empty())
                .map(|(n, _)| n)
                .map_err(io::Error::from)
        })
    }
}

#[cfg(target_os = "linux")]
impl AsyncWrite for Registered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // MSG_NOSIGNAL: a peer that reset the connection is an error, not
        // a SIGPIPE for a host that does not ignore it.
        self.poll_io(cx, WRITE, buf.len(), |s| {
            rustix::net::send(s, buf, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
        })
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let want = bufs.iter().map(|b| b.len()).sum();
        self.poll_io(cx, WRITE, want, |s| {
            rustix::net::sendmsg(
                s,
                bufs,
                &mut rustix::net::SendAncillaryBuffer::default(),
                rustix::net::SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-closes: our FIN leaves at once, and reading goes on.
    fn poll_close(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.shutdown(Shutdown::Write))
    }
}

#[cfg(target_os = "linux")]
impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("token", &self.token)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}
