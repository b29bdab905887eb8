//! The memory budget: one bound on the bytes a context holds for its peers,
//! whatever their number.
//!
//! Per-session limits bound each session (a message, a queue); the budget
//! bounds their sum, so that no combination of peers can exhaust the
//! process. It counts, across every service thread:
//!
//! - **inbound**: partially received messages and bytes read but not yet
//!   decoded (a session's read buffer and its decoder's message buffer),
//!   reconciled by each session's driver once per poll (a session between
//!   messages holds nothing, so ping-pong traffic never touches the count);
//! - **outbound**: messages in sessions' queues (counted as they are pushed
//!   and taken) and encoded bytes waiting for the socket (reconciled per
//!   poll);
//! - **compression**: what negotiated extensions hold (their windows and
//!   buffers, [`Extension::memory`](crate::extension::Extension::memory)).
//!
//! What happens as the total grows:
//!
//! - below the *high-water mark* (90 % of the budget) nothing changes;
//! - above it, a session that holds an unfinished inbound message is not
//!   read any more (TCP's flow control holds the peer) until the total falls
//!   below the *low-water mark* (75 %); sessions without one keep reading,
//!   so small complete messages keep flowing. And the sessions holding the
//!   most unfinished inbound bytes are *shed* (closed with 1013, try again
//!   later, their buffers freed at once) until what remains is below the
//!   low-water mark, so the budget cannot deadlock with every session half
//!   way through a message;
//! - a push that would take the total over the budget applies the session's
//!   overflow policy as if its queue were full;
//! - new WebSocket handshakes are refused with 503 while the total is above
//!   the high-water mark.
//!
//! All of it is relaxed atomics. The shedding scan runs when the high-water
//! mark is crossed, and again while the pressure lasts each time the sessions
//! marked before have let go and the total is still not below the low-water
//! mark (at most every [`RESCAN_EVERY`] when a scan found nothing to shed).
//! It visits only sessions that have held an unfinished message of at least
//! [`HEAVY`] bytes (each enlists once, when it first does).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};

use crate::common::lock;

/// Unfinished inbound bytes from which a session enlists in the shedding
/// list (once; it stays there, holding a few words, for its life). Low
/// enough that no number of sessions the default limits admit can hold the
/// budget below it (60,000 connections × 4 KiB is 234 MiB, under the
/// default budget's high-water mark).
pub(crate) const HEAVY: usize = 4 * 1024;

/// After a shedding scan that found nothing to shed, the next waits this
/// long (a scan visits the whole list).
const RESCAN_EVERY: Duration = Duration::from_millis(100);

/// At most one warning per this long while the budget is under pressure.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the budget counts, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Inbound,
    Outbound,
    Compression,
}

/// A context's memory budget.
pub(crate) struct Budget {
    limit: usize,
    high: usize,
    low: usize,
    inbound: AtomicUsize,
    outbound: AtomicUsize,
    compression: AtomicUsize,
    /// Above the high-water mark since it was last crossed, until the total
    /// falls below the low-water mark.
    pressure: AtomicBool,
    /// Notified when the pressure ends.
    relieved: Event,
    /// Sessions that have held at least [`HEAVY`] unfinished inbound bytes.
    heavy: Mutex<HeavyList>,
    /// Sessions marked to shed whose drivers have not yet let go.
    shedding: AtomicUsize,
    /// When a scan last found nothing to shed (milliseconds since `born`,
    /// plus one; 0: never).
    barren_at: AtomicU64,
    born: Instant,
    paused: AtomicU64,
    shed: AtomicU64,
    refused: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

/// The shedding list: weak entries, pruned when it has doubled since the
/// last pruning (so that enlisting costs amortised O(1)).
#[derive(Default)]
struct HeavyList {
    entries: Vec<Weak<Heavy>>,
    prune_at: usize,
}

/// A session's entry in the shedding list.
pub(crate) struct Heavy {
    /// Its unfinished inbound bytes, as last reconciled.
    held: AtomicUsize,
    /// Set by the shedder: the session must close (1013).
    shed: AtomicBool,
    /// The driver let go of a shed session (see [`Budget::settle`]).
    settled: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Heavy {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            shed: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }

    /// Whether the shedder picked this session.
    pub(crate) fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    /// Records what the session holds and where to wake it.
    pub(crate) fn update(&self, held: usize, waker: &Waker) {
        self.held.store(held, Ordering::Relaxed);
        if held == 0 {
            return;
        }
        let mut w = lock(&self.waker);
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
    }
}

/// A snapshot of the budget, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) limit: u64,
    pub(crate) pressure: bool,
    pub(crate) inbound: u64,
    pub(crate) outbound: u64,
    pub(crate) compression: u64,
    pub(crate) paused: u64,
    pub(crate) shed: u64,
    pub(crate) refused: u64,
}

impl Budget {
    /// A budget of `limit` bytes (high water at 90 %, low water at 75 %).
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            high: limit / 10 * 9,
            low: limit / 4 * 3,
            inbound: AtomicUsize::new(0),
            outbound: AtomicUsize::new(0),
            compression: AtomicUsize::new(0),
            pressure: AtomicBool::new(false),
            relieved: Event::new(),
            heavy: Mutex::new(HeavyList::default()),
            shedding: AtomicUsize::new(0),
            barren_at: AtomicU64::new(0),
            born: Instant::now(),
            paused: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        })
    }

    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Inbound => &self.inbound,
            Kind::Outbound => &self.outbound,
            Kind::Compression => &self.compression,
        }
    }

    /// Every byte counted now.
    pub(crate) fn total(&self) -> usize {
        self.inbound.load(Ordering::Relaxed)
            + self.outbound.load(Ordering::Relaxed)
            + self.compression.load(Ordering::Relaxed)
    }

    /// Whether `more` bytes fit under the budget.
    pub(crate) fn fits(&self, more: usize) -> bool {
        self.total().saturating_add(more) <= self.limit
    }

    /// Whether the total is above the high-water mark (and has not yet
    /// fallen below the low-water mark since).
    pub(crate) fn under_pressure(&self) -> bool {
        self.pressure.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes of `kind`; crossing the high-water mark starts
    /// the pressure (a warning, and shedding).
    pub(crate) fn add(&self, kind: Kind, n: usize) {
        if n == 0 {
            return;
        }
        self.counter(kind).fetch_add(n, Ordering::Relaxed);
        if !self.under_pressure() {
            if self.total() > self.high {
                self.begin_pressure();
            }
        } else {
            self.shed_more();
        }
    }

    /// Counts `n` bytes of `kind` given back; falling below the low-water
    /// mark ends the pressure and wakes the paused sessions.
    pub(crate) fn sub(&self, kind: Kind, n: usize) {
        if n == 0 {
            return;
        }
        // Every byte given back was counted before (a session's own charges
        // from its thread; a queued message's under the queue's lock, which
        // orders it before the pop that gives it back), so the count cannot
        // go below zero; saturating all the same, and loud in debug builds.
        let counter = self.counter(kind);
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            debug_assert!(v >= n, "{kind:?} budget count {v} given back {n}");
            Some(v.saturating_sub(n))
        });
        if self.under_pressure() {
            if self.total() < self.low {
                self.end_pressure();
            } else {
                self.shed_more();
            }
        }
    }

    /// Moves a reconciled count from `*charged` to `now`.
    pub(crate) fn reconcile(&self, kind: Kind, charged: &mut usize, now: usize) {
        if now > *charged {
            self.add(kind, now - *charged);
        } else if now < *charged {
            self.sub(kind, *charged - now);
        }
        *charged = now;
    }

    /// A listener for the end of the pressure (check `under_pressure` after
    /// listening).
    pub(crate) fn relieved(&self) -> EventListener {
        self.relieved.listen()
    }

    /// Enters `heavy` in the shedding list.
    pub(crate) fn enlist(&self, heavy: &Arc<Heavy>) {
        let mut list = lock(&self.heavy);
        if list.entries.len() >= list.prune_at {
            list.entries.retain(|w| w.strong_count() > 0);
            list.prune_at = (list.entries.len() * 2).max(64);
        }
        list.entries.push(Arc::downgrade(heavy));
    }

    /// The driver of `heavy`'s session let go of it (closed it, or dropped
    /// it): if it was marked, the shedder may look again.
    pub(crate) fn settle(&self, heavy: &Heavy) {
        if heavy.is_shed() && !heavy.settled.swap(true, Ordering::AcqRel) {
            let _ = self
                .shedding
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(1))
                });
        }
    }

    /// A session that stopped reading because of the pressure.
    pub(crate) fn count_pause(&self) {
        self.paused.fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake refused because of the pressure.
    pub(crate) fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The numbers, for metrics.
    pub(crate) fn usage(&self) -> Usage {
        let wide = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        Usage {
            limit: self.limit as u64,
            pressure: self.under_pressure(),
            inbound: wide(&self.inbound),
            outbound: wide(&self.outbound),
            compression: wide(&self.compression),
            paused: self.paused.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn begin_pressure(&self) {
        if self.pressure.swap(true, Ordering::AcqRel) {
            return;
        }
        self.warn();
        self.shed_heaviest();
    }

    /// Under pressure, once the sessions marked before have let go: if the
    /// total is still not below the low-water mark, shed again.
    fn shed_more(&self) {
        if self.shedding.load(Ordering::Acquire) != 0 || self.total() < self.low {
            return;
        }
        let barren = self.barren_at.load(Ordering::Relaxed);
        if barren != 0 {
            let since = self.millis().saturating_sub(barren - 1);
            if since < RESCAN_EVERY.as_millis() as u64 {
                return;
            }
        }
        self.shed_heaviest();
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn end_pressure(&self) {
        if self.pressure.swap(false, Ordering::AcqRel) {
            self.relieved.notify(usize::MAX);
        }
    }

    /// Marks the sessions holding the most unfinished inbound bytes to be
    /// closed, until what the others hold is below the low-water mark, and
    /// wakes them. Runs no callback: each marked session's driver closes it.
    fn shed_heaviest(&self) {
        let mut heavy: Vec<(usize, Arc<Heavy>)> = {
            let mut list = lock(&self.heavy);
            list.entries.retain(|w| w.strong_count() > 0);
            list.prune_at = (list.entries.len() * 2).max(64);
            list.entries
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|h| !h.is_shed())
                .map(|h| (h.held.load(Ordering::Relaxed), h))
                .filter(|(held, _)| *held > 0)
                .collect()
        };
        heavy.sort_by_key(|(held, _)| std::cmp::Reverse(*held));
        let mut total = self.total();
        let mut marked = 0;
        for (held, h) in heavy {
            if total < self.low {
                break;
            }
            total = total.saturating_sub(held);
            // Counted before the mark is visible, so that a driver settling
            // at once never takes the count below the marks.
            self.shedding.fetch_add(1, Ordering::AcqRel);
            h.shed.store(true, Ordering::Release);
            marked += 1;
            self.shed.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = lock(&h.waker).take() {
                w.wake();
            }
        }
        let barren = if marked == 0 { self.millis() + 1 } else { 0 };
        self.barren_at.store(barren, Ordering::Relaxed);
    }

    /// Logs the crossing, at most once per [`WARN_EVERY`].
    fn warn(&self) {
        let now = Instant::now();
        let mut last = lock(&self.last_warning);
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        *last = Some(now);
        drop(last);
        let u = self.usage();
        tracing::warn!(
            budget = u.limit,
            inbound = u.inbound,
            outbound = u.outbound,
            compression = u.compression,
            "memory budget above its high-water mark: pausing readers of unfinished messages, shedding the largest"
        );
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("total", &self.total())
            .field("pressure", &self.under_pressure())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (no dependency).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn any_sequence_of_reconciliations_returns_the_count_to_zero() {
        for seed in 1..200 {
            let mut rng = Rng(seed);
            let budget = Budget::new(1 << 20);
            // Sessions with what each has charged, by kind.
            let mut charged = [[0usize; 3]; 8];
            for _ in 0..500 {
                let s = (rng.next() % 8) as usize;
                let k = (rng.next() % 3) as usize;
                let kind = [Kind::Inbound, Kind::Outbound, Kind::Compression][k];
                let now = (rng.next() % 300_000) as usize;
                budget.reconcile(kind, &mut charged[s][k], now);
                let sum: usize = charged.iter().flatten().sum();
                assert_eq!(budget.total(), sum, "seed {seed}");
            }
            // Every session ends: everything given back.
            for (s, c) in charged.iter_mut().enumerate() {
                for (k, kind) in [Kind::Inbound, Kind::Outbound, Kind::Compression]
                    .into_iter()
                    .enumerate()
                {
                    budget.reconcile(kind, &mut c[k], 0);
                    let _ = s;
                }
            }
            assert_eq!(budget.total(), 0, "seed {seed}");
            assert!(!budget.under_pressure());
        }
    }

    #[test]
    fn pressure_starts_above_high_water_and_ends_below_low_water() {
        let b = Budget::new(1000);
        b.add(Kind::Inbound, 900);
        assert!(!b.under_pressure(), "at the mark, not above it");
        b.add(Kind::Outbound, 1);
        assert!(b.under_pressure());
        assert!(!b.fits(100));
        b.sub(Kind::Inbound, 100);
        assert!(b.under_pressure(), "801 is above low water");
        b.sub(Kind::Inbound, 100);
        assert!(!b.under_pressure(), "701 is below 750");
    }

    #[test]
    fn shedding_picks_the_heaviest_until_below_low_water() {
        let b = Budget::new(1000);
        let sessions: Vec<Arc<Heavy>> = (0..4).map(|_| Heavy::new()).collect();
        let waker = futures_lite::future::block_on(std::future::poll_fn(|cx| {
            std::task::Poll::Ready(cx.waker().clone())
        }));
        for (h, held) in sessions.iter().zip([100, 400, 50, 300]) {
            h.update(held, &waker);
            b.enlist(h);
        }
        b.add(Kind::Inbound, 850);
        b.add(Kind::Outbound, 60);
        // 910 > 900: shed the 400 (510 left, below 750): only that one.
        let shed: Vec<bool> = sessions.iter().map(|h| h.is_shed()).collect();
        assert_eq!(shed, [false, true, false, false]);
        assert_eq!(b.usage().shed, 1);
    }
}
