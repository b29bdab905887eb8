//! The event loop: one thread, edge-triggered epoll (mio), every connection
//! a small state machine driven by readiness events.
//!
//! Per message the client does a copy of a pre-built frame into the
//! connection's output, one write per batch, and a header-only parse of what
//! comes back; one clock read per readiness event, not per message. A read
//! shorter than the buffer means the socket is drained (edge-triggered: new
//! bytes raise a new event), which saves the read that would return
//! `WouldBlock`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::hist::Histogram;
use crate::wire::{Frames, Stream, upgrade_request};

/// What the connections do once open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every connection keeps `inflight` messages in flight (1: ping-pong).
    Echo { inflight: usize },
    /// Connections stay open and silent; with `touch`, each first does one
    /// echo round trip.
    Idle { touch: bool },
    /// Connection 0 publishes, the others subscribe; the publisher keeps at
    /// most `window` messages ahead of the average subscriber.
    Broadcast { window: usize },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshake,
    Open,
    Dead,
}

struct Conn {
    stream: Stream,
    state: State,
    /// The handshake response read so far.
    response: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    frames: Frames,
    /// Send times (ns since the engine's start) of the messages in flight.
    sent_at: VecDeque<u64>,
    /// Broadcast: messages this subscriber has received (the index of the
    /// next one in the publisher's send times).
    received: u64,
    /// The next of the pre-built frames this connection sends: each
    /// connection goes through all of them in turn, from its own start, so
    /// that its stream repeats a message only after all the others (as a
    /// compressor with context takeover would see real traffic).
    next: usize,
}

impl Conn {
    /// Writes what is pending; `Ok(true)` once all of it is written.
    fn flush(&mut self) -> Result<bool, String> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        // Over TLS, records a full socket left in rustls.
        match self.stream.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(format!("flush: {e}")),
        }
    }

    /// Queues `n` messages, the connection's next pre-built frames in turn.
    fn queue(&mut self, frames: &[Vec<u8>], n: usize, now_ns: u64) {
        for _ in 0..n {
            self.out
                .extend_from_slice(&frames[self.next % frames.len()]);
            self.next = self.next.wrapping_add(1);
            self.sent_at.push_back(now_ns);
        }
    }
}

/// The load generator's state: connections, counters, the latency histogram.
pub(crate) struct Engine {
    addr: SocketAddr,
    /// `wss://`: the client configuration and the SNI name.
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    upgrade: Vec<u8>,
    /// The pre-built message frames, sent in turn (one, or several distinct
    /// JSON messages).
    frames: Vec<Vec<u8>>,
    mode: Mode,
    total: usize,
    max_connecting: usize,
    poll: Poll,
    conns: Vec<Conn>,
    read_buf: Vec<u8>,
    start: Instant,
    // Connection phase.
    connecting: usize,
    pub(crate) open: usize,
    pub(crate) dead: usize,
    last_open_at: Option<Instant>,
    pub(crate) first_error: Option<String>,
    // Run phase: sending is allowed while `running`; messages count inside
    // [window_start, window_end) (ns since `start`).
    running: bool,
    window_start: u64,
    window_end: u64,
    pub(crate) counted: u64,
    /// Payload bytes of the counted messages as they came over the wire
    /// (compressed, with permessage-deflate).
    pub(crate) wire_bytes: u64,
    /// The first 101's `Sec-WebSocket-Extensions`, if any.
    pub(crate) extensions: Option<String>,
    pub(crate) latency: Histogram,
    // Broadcast.
    pub(crate) published: u64,
    /// Publishes made inside the measured window.
    pub(crate) published_counted: u64,
    delivered: u64,
    /// When each message was published (ns), for the subscribers' latency:
    /// a subscriber's k-th message is the publisher's k-th.
    pub_sent: Vec<u64>,
    /// Where the publisher (connection 0) connects, when not to `addr`.
    pub_addr: Option<SocketAddr>,
    pub_upgrade: Option<Vec<u8>>,
    // Idle with touch: connections whose round trip came back.
    pub(crate) touched: usize,
    /// Nanoseconds spent in polls that found nothing: the client's headroom.
    pub(crate) idle_ns: u64,
}

/// Everything the engine needs to know before it starts.
pub(crate) struct Setup {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) host: String,
    pub(crate) path: String,
    /// The message frames, sent in turn.
    pub(crate) frames: Vec<Vec<u8>>,
    /// The `Sec-WebSocket-Extensions` to offer, if any.
    pub(crate) offer: Option<String>,
    pub(crate) mode: Mode,
    pub(crate) conns: usize,
    pub(crate) max_connecting: usize,
    /// Broadcast: the publisher's own endpoint (address, Host, path), for a
    /// publisher on another node of a cluster than its subscribers.
    pub(crate) publisher: Option<(SocketAddr, String, String)>,
}

impl Engine {
    pub(crate) fn new(setup: Setup) -> Result<Self, String> {
        let total = match setup.mode {
            Mode::Broadcast { .. } => setup.conns + 1,
            _ => setup.conns,
        };
        let sni = setup
            .host
            .rsplit_once(':')
            .map_or(setup.host.as_str(), |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        Ok(Self {
            addr: setup.addr,
            tls: setup.tls.map(|c| (c, sni)),
            upgrade: upgrade_request(&setup.host, &setup.path, setup.offer.as_deref()),
            frames: setup.frames,
            mode: setup.mode,
            total,
            max_connecting: setup.max_connecting,
            poll: Poll::new().map_err(|e| format!("epoll: {e}"))?,
            conns: Vec::with_capacity(total),
            read_buf: vec![0; 256 * 1024],
            start: Instant::now(),
            connecting: 0,
            open: 0,
            dead: 0,
            last_open_at: None,
            first_error: None,
            running: false,
            window_start: u64::MAX,
            window_end: u64::MAX,
            counted: 0,
            wire_bytes: 0,
            extensions: None,
            latency: Histogram::new(),
            published: 0,
            published_counted: 0,
            delivered: 0,
            pub_sent: Vec::new(),
            pub_addr: setup.publisher.as_ref().map(|p| p.0),
            pub_upgrade: setup
                .publisher
                .as_ref()
                .map(|(_, host, path)| upgrade_request(host, path, setup.offer.as_deref())),
            touched: 0,
            idle_ns: 0,
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        t.duration_since(self.start).as_nanos() as u64
    }

    /// Opens every connection, at most `max_connecting` handshakes at a
    /// time; returns the seconds from the first connect to the last 101.
    pub(crate) fn connect_all(
        &mut self,
        events: &mut Events,
        timeout: Duration,
    ) -> Result<f64, String> {
        let begin = Instant::now();
        let deadline = begin + timeout;
        self.start_connects()?;
        while self.open + self.dead < self.total {
            if Instant::now() > deadline {
                return Err(format!(
                    "timeout: {} of {} connections open ({} failed{})",
                    self.open,
                    self.total,
                    self.dead,
                    self.first_error
                        .as_ref()
                        .map(|e| format!(", first: {e}"))
                        .unwrap_or_default()
                ));
            }
            self.poll_once(events, Duration::from_millis(100))?;
            self.start_connects()?;
        }
        let end = self.last_open_at.unwrap_or_else(Instant::now);
        Ok(end.duration_since(begin).as_secs_f64())
    }

    /// Starts sending (every connection's first messages, or the
    /// publisher's window) and sets the measured window.
    pub(crate) fn start_run(&mut self, warmup: Duration, duration: Duration) {
        let now = Instant::now();
        self.window_start = self.ns(now + warmup);
        self.window_end = self.ns(now + warmup + duration);
        self.running = true;
        match self.mode {
            Mode::Echo { inflight } => {
                let now_ns = self.ns(now);
                for i in 0..self.conns.len() {
                    let c = &mut self.conns[i];
                    c.queue(&self.frames, inflight, now_ns);
                    if let Err(e) = c.flush() {
                        self.kill(i, e);
                    }
                }
            }
            Mode::Broadcast { .. } => self.pump_publisher(),
            Mode::Idle { .. } => {}
        }
    }

    pub(crate) fn stop_run(&mut self) {
        self.running = false;
    }

    /// Runs the loop until `until`.
    pub(crate) fn run_until(
        &mut self,
        events: &mut Events,
        until: Instant,
        busy: bool,
    ) -> Result<(), String> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let timeout = if busy && self.running {
                Duration::ZERO
            } else {
                (until - now).min(Duration::from_millis(100))
            };
            self.poll_once(events, timeout)?;
            if matches!(self.mode, Mode::Broadcast { .. }) {
                self.pump_publisher();
            }
        }
    }

    /// Resets connections with RST rather than FIN (SO_LINGER 0), so that
    /// thousands of sockets do not sit in TIME_WAIT and starve the next run
    /// of ports.
    pub(crate) fn reset_all(&mut self) {
        for c in &mut self.conns {
            let _ = socket2::SockRef::from(&*c.stream.tcp()).set_linger(Some(Duration::ZERO));
        }
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> Result<(), String> {
        let t = Instant::now();
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        if events.is_empty() {
            self.idle_ns += t.elapsed().as_nanos() as u64;
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_error();
            if let Err(e) = self.handle(i, readable, writable) {
                self.kill(i, e);
            }
        }
        Ok(())
    }

    fn start_connects(&mut self) -> Result<(), String> {
        while self.conns.len() < self.total && self.connecting < self.max_connecting {
            let i = self.conns.len();
            let addr = match (i, self.pub_addr) {
                (0, Some(a)) if matches!(self.mode, Mode::Broadcast { .. }) => a,
                _ => self.addr,
            };
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .map_err(|e| format!("socket: {e} (raise ulimit -n?)"))?;
            socket.set_nonblocking(true).map_err(|e| e.to_string())?;
            socket.set_tcp_nodelay(true).map_err(|e| e.to_string())?;
            match socket.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS
                Err(e) => return Err(format!("connect to {addr}: {e}")),
            }
            let mut stream = Stream::new(
                mio::net::TcpStream::from_std(socket.into()),
                self.tls.as_ref(),
            )
            .map_err(|e| format!("tls: {e}"))?;
            self.poll
                .registry()
                .register(
                    stream.tcp(),
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            self.conns.push(Conn {
                stream,
                state: State::Connecting,
                response: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                frames: Frames::new(),
                sent_at: VecDeque::new(),
                received: 0,
                next: i,
            });
            self.connecting += 1;
        }
        Ok(())
    }

    fn kill(&mut self, i: usize, why: String) {
        let c = &mut self.conns[i];
        match c.state {
            State::Dead => return,
            State::Connecting | State::Handshake => self.connecting -= 1,
            State::Open => self.open -= 1,
        }
        c.state = State::Dead;
        let _ = self.poll.registry().deregister(c.stream.tcp());
        self.dead += 1;
        self.first_error
            .get_or_insert_with(|| format!("connection {i}: {why}"));
    }

    fn handle(&mut self, i: usize, readable: bool, writable: bool) -> Result<(), String> {
        let now = Instant::now();
        let c = &mut self.conns[i];
        match c.state {
            State::Dead => return Ok(()),
            State::Connecting => {
                if let Some(e) = c.stream.tcp().take_error().map_err(|e| e.to_string())? {
                    return Err(format!("connect: {e}"));
                }
                match c.stream.tcp().peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(()),
                    Err(e) => return Err(format!("connect: {e}")),
                }
                c.state = State::Handshake;
                let upgrade = match (&self.pub_upgrade, i, self.mode) {
                    (Some(u), 0, Mode::Broadcast { .. }) => u,
                    _ => &self.upgrade,
                };
                c.out.extend_from_slice(upgrade);
            }
            State::Handshake | State::Open => {}
        }
        if readable {
            self.read(i, now)?;
        }
        let c = &mut self.conns[i];
        if !c.out.is_empty() || writable {
            c.flush()?;
        }
        Ok(())
    }

    fn read(&mut self, i: usize, now: Instant) -> Result<(), String> {
        loop {
            let c = &mut self.conns[i];
            let n = match c.stream.read(&mut self.read_buf) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let drained = n < self.read_buf.len() && c.stream.short_read_drains();
            if c.state == State::Handshake {
                c.response.extend_from_slice(&self.read_buf[..n]);
                let Some(end) = c.response.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if c.response.len() > 16 * 1024 {
                        return Err("handshake response too long".into());
                    }
                    if drained {
                        return Ok(());
                    }
                    continue;
                };
                if !c.response.starts_with(b"HTTP/1.1 101 ") {
                    let status = String::from_utf8_lossy(&c.response);
                    return Err(format!(
                        "handshake refused: {}",
                        status.lines().next().unwrap_or("")
                    ));
                }
                if self.extensions.is_none() {
                    let head = String::from_utf8_lossy(&c.response[..end]);
                    self.extensions = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("sec-websocket-extensions")
                            .then(|| v.trim().to_owned())
                    });
                }
                // Bytes after the head are the first frames.
                let early = c.response.split_off(end + 4);
                c.response = Vec::new();
                c.state = State::Open;
                let messages = c.frames.feed(&early, &mut c.out)?;
                self.on_open(i, now);
                if messages > 0 {
                    self.on_messages(i, messages, now);
                }
            } else {
                let before = c.frames.data_bytes;
                let messages = c.frames.feed(&self.read_buf[..n], &mut c.out)?;
                let wire = c.frames.data_bytes - before;
                let now_ns = self.ns(now);
                let publisher = i == 0 && matches!(self.mode, Mode::Broadcast { .. });
                if (self.window_start..self.window_end).contains(&now_ns) && !publisher {
                    self.wire_bytes += wire;
                }
                if messages > 0 {
                    self.on_messages(i, messages, now);
                }
            }
            if drained {
                return Ok(());
            }
        }
    }

    fn on_open(&mut self, i: usize, now: Instant) {
        self.connecting -= 1;
        self.open += 1;
        self.last_open_at = Some(now);
        if self.mode == (Mode::Idle { touch: true }) {
            let now_ns = self.ns(now);
            self.conns[i].queue(&self.frames, 1, now_ns);
        }
    }

    fn on_messages(&mut self, i: usize, messages: u64, now: Instant) {
        let now_ns = self.ns(now);
        let counting = (self.window_start..self.window_end).contains(&now_ns);
        match self.mode {
            Mode::Echo { .. } => {
                let c = &mut self.conns[i];
                let m = (messages as usize).min(c.sent_at.len());
                for sent in c.sent_at.drain(..m) {
                    if counting {
                        self.latency.record(now_ns.saturating_sub(sent));
                    }
                }
                if counting {
                    self.counted += m as u64;
                }
                if self.running {
                    c.queue(&self.frames, m, now_ns);
                }
            }
            Mode::Idle { .. } => {
                let c = &mut self.conns[i];
                if !c.sent_at.is_empty() {
                    c.sent_at.clear();
                    self.touched += 1;
                }
            }
            // The publisher's own copies (a server may relay to the sender
            // too) are not deliveries.
            Mode::Broadcast { .. } if i == 0 => {}
            Mode::Broadcast { .. } => {
                self.delivered += messages;
                let c = &mut self.conns[i];
                if counting {
                    self.counted += messages;
                    for k in c.received..c.received + messages {
                        if let Some(&sent) = self.pub_sent.get(k as usize) {
                            self.latency.record(now_ns.saturating_sub(sent));
                        }
                    }
                }
                c.received += messages;
            }
        }
    }

    /// Lets the publisher send while it is less than `window` messages
    /// ahead of the average subscriber.
    fn pump_publisher(&mut self) {
        let Mode::Broadcast { window } = self.mode else {
            return;
        };
        if !self.running || self.conns.is_empty() || self.conns[0].state != State::Open {
            return;
        }
        let subscribers = (self.total - 1) as u64;
        let now_ns = self.ns(Instant::now());
        let counting = (self.window_start..self.window_end).contains(&now_ns);
        let c = &mut self.conns[0];
        let before = self.published;
        while self.published * subscribers < self.delivered + window as u64 * subscribers {
            c.out
                .extend_from_slice(&self.frames[c.next % self.frames.len()]);
            c.next = c.next.wrapping_add(1);
            self.published += 1;
            self.pub_sent.push(now_ns);
            if counting {
                self.published_counted += 1;
            }
        }
        if self.published > before
            && let Err(e) = c.flush()
        {
            self.kill(0, e);
        }
    }
}
