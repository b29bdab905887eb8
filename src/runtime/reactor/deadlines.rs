//! The deadlines of a worker's sessions: a min-heap of coarse ticks (pure: no
//! clock, no waker; the reactor passes the current tick in).
//!
//! A session's deadline moves later with every message it receives (its
//! ping interval restarts) and earlier only rarely (a close begins). So an
//! entry is queued once, at the earliest tick it asked for (`armed`), and
//! later requests only record the new `deadline`: when the armed tick comes,
//! an entry whose deadline has moved on is queued again at that deadline
//! instead of firing. Traffic therefore never touches the heap; a session
//! costs it at most one push per tick that actually comes.
//!
//! Items of entries that were re-armed earlier or freed stay in the heap
//! until their tick and are skipped then (`armed` no longer matches them).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A tick: 10 ms since the reactor's start. 64 bits, so that a worker can
/// run for longer than 32-bit ticks last (497 days) without its deadlines
/// saturating.
pub(crate) type Tick = u64;

/// No tick: not queued, or no deadline.
pub(crate) const NONE: Tick = Tick::MAX;

/// An entry's two ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticks {
    /// The tick the entry is queued at, or [`NONE`].
    pub(crate) armed: Tick,
    /// The tick it must fire at, or [`NONE`].
    pub(crate) deadline: Tick,
}

impl Ticks {
    pub(crate) const IDLE: Self = Self {
        armed: NONE,
        deadline: NONE,
    };
}

impl Default for Ticks {
    fn default() -> Self {
        Self::IDLE
    }
}

/// Where the heap finds its entries' ticks by index (a live entry only).
pub(crate) trait Table {
    fn ticks(&mut self, index: u32) -> Option<&mut Ticks>;
}

/// Queued ticks, earliest first.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    /// (tick, entry index).
    heap: BinaryHeap<Reverse<(Tick, u32)>>,
}

impl Deadlines {
    /// Asks for the entry at `index` to fire at `tick`: queues it unless it
    /// is queued at that tick or earlier already. Returns `true` if it was
    /// queued (the earliest tick may have moved earlier).
    pub(crate) fn arm(&mut self, index: u32, ticks: &mut Ticks, tick: Tick) -> bool {
        ticks.deadline = tick;
        if ticks.armed <= tick {
            return false;
        }
        ticks.armed = tick;
        self.heap.push(Reverse((tick, index)));
        true
    }

    /// The earliest queued tick.
    pub(crate) fn next(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse((tick, _))| *tick)
    }

    /// Items queued (stale ones included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Pops every item due at tick `now`: an entry whose deadline has come
    /// is disarmed and passed to `fire` (with the table); one whose deadline
    /// moved later is queued again at it; stale items are dropped.
    pub(crate) fn expire<T: Table>(
        &mut self,
        now: Tick,
        table: &mut T,
        mut fire: impl FnMut(&mut T, u32),
    ) {
        while let Some(&Reverse((tick, index))) = self.heap.peek() {
            if tick > now {
                break;
            }
            self.heap.pop();
            let Some(ticks) = table.ticks(index) else {
                continue;
            };
            if ticks.armed != tick {
                continue;
            }
            if ticks.deadline <= now {
                *ticks = Ticks::IDLE;
                fire(table, index);
            } else {
                ticks.armed = ticks.deadline;
                self.heap.push(Reverse((ticks.deadline, index)));
            }
        }
        // A heap that has mostly stale items (sessions that ended) is
        // rebuilt smaller rather than kept at its high-water mark.
        if self.heap.capacity() > 64 && self.heap.len() < self.heap.capacity() / 4 {
            self.heap.shrink_to(self.heap.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Deadlines, NONE, Table, Ticks};

    struct Entries(Vec<Option<Ticks>>);

    impl Table for Entries {
        fn ticks(&mut self, index: u32) -> Option<&mut Ticks> {
            self.0.get_mut(index as usize).and_then(Option::as_mut)
        }
    }

    fn fired(d: &mut Deadlines, now: super::Tick, e: &mut Entries) -> Vec<u32> {
        let mut out = Vec::new();
        d.expire(now, e, |_, i| out.push(i));
        out.sort_unstable();
        out
    }

    #[test]
    fn an_entry_fires_at_its_tick_and_not_before() {
        let mut d = Deadlines::default();
        let mut e = Entries(vec![Some(Ticks::IDLE), Some(Ticks::IDLE)]);
        assert!(d.arm(0, e.0[0].as_mut().unwrap(), 10));
        assert!(d.arm(1, e.0[1].as_mut().unwrap(), 5));
        assert_eq!(d.next(), Some(5));
        assert_eq!(fired(&mut d, 4, &mut e), Vec::<u32>::new());
        assert_eq!(fired(&mut d, 5, &mut e), vec![1]);
        assert_eq!(fired(&mut d, 9, &mut e), Vec::<u32>::new());
        assert_eq!(fired(&mut d, 100, &mut e), vec![0]);
        assert_eq!(d.next(), None);
        assert_eq!(e.0[0], Some(Ticks::IDLE));
    }

    #[test]
    fn a_later_deadline_does_not_touch_the_heap_and_is_requeued_at_the_armed_tick() {
        let mut d = Deadlines::default();
        let mut e = Entries(vec![Some(Ticks::IDLE)]);
        assert!(d.arm(0, e.0[0].as_mut().unwrap(), 10));
        // Traffic: the deadline moves later, the heap does not change.
        assert!(!d.arm(0, e.0[0].as_mut().unwrap(), 20));
        assert!(!d.arm(0, e.0[0].as_mut().unwrap(), 30));
        assert_eq!(d.len(), 1);
        assert_eq!(fired(&mut d, 10, &mut e), Vec::<u32>::new());
        assert_eq!(d.next(), Some(30));
        assert_eq!(fired(&mut d, 30, &mut e), vec![0]);
    }

    #[test]
    fn an_earlier_deadline_queues_again_and_the_old_item_goes_stale() {
        let mut d = Deadlines::default();
        let mut e = Entries(vec![Some(Ticks::IDLE)]);
        assert!(d.arm(0, e.0[0].as_mut().unwrap(), 30));
        assert!(d.arm(0, e.0[0].as_mut().unwrap(), 10));
        assert_eq!(d.next(), Some(10));
        assert_eq!(fired(&mut d, 10, &mut e), vec![0]);
        // The item at 30 is stale: it does not fire again.
        assert_eq!(fired(&mut d, 30, &mut e), Vec::<u32>::new());
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn freed_entries_are_skipped() {
        let mut d = Deadlines::default();
        let mut e = Entries(vec![Some(Ticks::IDLE), Some(Ticks::IDLE)]);
        d.arm(0, e.0[0].as_mut().unwrap(), 3);
        d.arm(1, e.0[1].as_mut().unwrap(), 3);
        e.0[0] = None;
        assert_eq!(fired(&mut d, 3, &mut e), vec![1]);
        // A reused slot that never armed ignores the old item.
        e.0[0] = Some(Ticks::IDLE);
        d.arm(0, e.0[0].as_mut().unwrap(), 8);
        assert_eq!(fired(&mut d, 8, &mut e), vec![0]);
    }

    #[test]
    fn a_jump_far_ahead_fires_everything_due_once() {
        let mut d = Deadlines::default();
        let mut e = Entries((0..100).map(|_| Some(Ticks::IDLE)).collect());
        for i in 0..100u32 {
            d.arm(i, e.0[i as usize].as_mut().unwrap(), u64::from(i) * 7);
        }
        let all = fired(&mut d, 10_000, &mut e);
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(d.next(), None);
        assert!(e.0.iter().all(|t| t.unwrap().armed == NONE));
    }

    #[test]
    fn ticks_past_32_bits_keep_their_order() {
        // More than 497 days of 10 ms ticks after the worker started.
        let far = u64::from(u32::MAX) + 1_000;
        let mut d = Deadlines::default();
        let mut e = Entries(vec![Some(Ticks::IDLE), Some(Ticks::IDLE)]);
        d.arm(0, e.0[0].as_mut().unwrap(), far + 500);
        d.arm(1, e.0[1].as_mut().unwrap(), far);
        assert_eq!(fired(&mut d, far - 1, &mut e), Vec::<u32>::new());
        assert_eq!(fired(&mut d, far, &mut e), vec![1]);
        assert_eq!(d.next(), Some(far + 500));
        assert_eq!(fired(&mut d, far + 500, &mut e), vec![0]);
    }
}
