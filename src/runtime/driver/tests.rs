//! The memory budget's accounting, through real drivers over scripted
//! in-memory streams: whatever sessions do (open, receive parts of messages,
//! deliver them, queue answers, get stuck behind a peer that does not read,
//! break the protocol, close, get dropped), the count returns to zero.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use tungstenite::Message;

use super::{Driver, SessionHooks, driver_config, session_config};
use crate::common::lock;
use crate::proto::close::CloseReason;
use crate::proto::session::Tally;
use crate::runtime::budget::Budget;
use crate::runtime::outbox::Outbox;

/// A tiny deterministic generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The peer's side of a scripted stream.
#[derive(Default)]
struct Pipe {
    /// Bytes the peer sent that the server has not read.
    input: VecDeque<u8>,
    /// The peer closed its side.
    eof: bool,
    /// The peer reads what the server writes (otherwise writes wait).
    reading: bool,
    waker: Option<Waker>,
}

struct Scripted(Arc<Mutex<Pipe>>);

impl crate::transport::Transport for Scripted {}

impl futures_lite::AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut pipe = lock(&self.0);
        if pipe.input.is_empty() {
            if pipe.eof {
                return Poll::Ready(Ok(0));
            }
            pipe.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(pipe.input.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.input.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }
}

impl futures_lite::AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut pipe = lock(&self.0);
        if pipe.reading {
            Poll::Ready(Ok(buf.len()))
        } else {
            pipe.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Echoes every message through the queue.
struct Echo(Arc<Outbox>);

impl SessionHooks for Echo {
    fn outbox(&self) -> &Outbox {
        &self.0
    }

    fn message(&mut self, message: Message) {
        let _ = self.0.push(message, true);
    }

    fn traffic(&mut self, _tally: Tally) {}

    fn finish(self: Box<Self>, _reason: CloseReason) {}
}

struct Live {
    pipe: Arc<Mutex<Pipe>>,
    outbox: Arc<Outbox>,
    driver: Driver<Scripted>,
    hooks: Echo,
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x11, 0x22, 0x33, 0x44];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// What a peer sends next: whole messages, fragments, parts of frames, pings,
/// a Close, or garbage.
fn next_bytes(rng: &mut Rng) -> Vec<u8> {
    let size = match rng.below(4) {
        0 => rng.below(126),
        1 => rng.below(8 * 1024),
        _ => rng.below(64 * 1024),
    };
    let payload = vec![b'a'; size];
    let whole = frame(true, 1 + rng.below(2) as u8, &payload);
    match rng.below(10) {
        0..=3 => whole,
        4 | 5 => {
            // A part of a frame: the rest may never come.
            let cut = rng.below(whole.len().max(1));
            whole[..cut].to_vec()
        }
        6 => frame(false, 2, &payload),
        7 => frame(true, 9, &payload[..payload.len().min(125)]),
        8 => frame(true, 8, &1000u16.to_be_bytes()),
        _ => vec![0xff; 1 + rng.below(16)],
    }
}

/// One run; returns whether the budget came under pressure and how many
/// sessions were paused and shed.
fn run(seed: u64) -> (bool, u64, u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let limits = crate::Limits::default();
    // Small enough that eight sessions' unfinished messages and queues cross
    // both water marks again and again.
    let budget = Budget::new(256 * 1024);
    let reactor = crate::runtime::reactor::Reactor::new();
    let waker = Waker::noop();
    let mut cx = TaskContext::from_waker(waker);
    let mut live: Vec<Live> = Vec::new();
    let mut pressed = false;
    for _ in 0..600 {
        pressed |= budget.under_pressure();
        if live.len() < 8 && rng.below(4) == 0 {
            let pipe = Arc::new(Mutex::new(Pipe {
                reading: true,
                ..Pipe::default()
            }));
            let outbox = Arc::new(Outbox::new(
                limits.max_queue_bytes,
                limits.max_queue_messages,
                limits.overflow,
                Some(budget.clone()),
                true,
            ));
            let driver = Driver::new(
                Scripted(pipe.clone()),
                &[],
                session_config(&limits),
                None,
                driver_config(&limits),
                Some(budget.clone()),
                &reactor,
            );
            live.push(Live {
                pipe,
                hooks: Echo(outbox.clone()),
                outbox,
                driver,
            });
        }
        if live.is_empty() {
            continue;
        }
        let i = rng.below(live.len());
        match rng.below(12) {
            0..=4 => {
                let bytes = next_bytes(&mut rng);
                lock(&live[i].pipe).input.extend(bytes);
            }
            5 => {
                let mut pipe = lock(&live[i].pipe);
                pipe.reading = !pipe.reading;
            }
            6 => {
                // Another thread's send (or publish) into the queue.
                let size = rng.below(32 * 1024);
                let _ = live[i]
                    .outbox
                    .push(Message::binary(vec![0u8; size]), rng.below(2) == 0);
            }
            7 => lock(&live[i].pipe).eof = true,
            9 => {
                // A small one, queued encoded (in runs with its neighbours).
                let size = rng.below(1024);
                let _ = live[i]
                    .outbox
                    .push(Message::binary(vec![0u8; size]), rng.below(2) == 0);
            }
            8 if rng.below(4) == 0 => {
                // Forced down: the task dropped mid-session.
                let gone = live.swap_remove(i);
                drop(gone.driver);
                gone.outbox.mark_closed();
                continue;
            }
            _ => {}
        }
        // Poll a few sessions, as the executor would.
        for _ in 0..3 {
            let j = rng.below(live.len());
            let l = &mut live[j];
            if l.driver.poll_run(&mut cx, &mut l.hooks).is_ready() {
                let done = live.swap_remove(j);
                drop(done.driver);
                done.outbox.mark_closed();
                if live.is_empty() {
                    break;
                }
            }
        }
    }
    for l in live {
        drop(l.driver);
        l.outbox.mark_closed();
    }
    let usage = budget.usage();
    assert_eq!(
        (usage.inbound, usage.outbound, usage.compression),
        (0, 0, 0),
        "seed {seed}: bytes left charged to the budget"
    );
    assert!(
        !budget.under_pressure(),
        "seed {seed}: pressure outlived every session"
    );
    (pressed, usage.paused, usage.shed)
}

#[test]
fn any_run_of_sessions_returns_the_budget_to_zero() {
    let (mut pressed, mut paused, mut shed) = (0, 0, 0);
    for seed in 0..40 {
        let (p, pa, sh) = run(seed);
        pressed += u32::from(p);
        paused += pa;
        shed += sh;
    }
    eprintln!("pressure in {pressed} runs, {paused} pauses, {shed} sheds");
    // The property means little if the runs never press the budget.
    assert!(
        pressed >= 5 && paused > 0 && shed > 0,
        "pressure in {pressed} runs, {paused} pauses, {shed} sheds"
    );
}
