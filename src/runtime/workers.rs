//! The workers of a context (one task set per host executor) and the places
//! of open connections: the `max_connections` bound and each worker's load,
//! which decides where a new connection goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::tasks::Spawner;

/// Every worker of a context, and the count of open connections.
pub(crate) struct Workers {
    spawners: Vec<Spawner>,
    /// Connections handed to each worker and not yet ended.
    loads: Vec<AtomicUsize>,
    connections: AtomicUsize,
    max_connections: usize,
}

impl Workers {
    /// One worker per spawner (at least one).
    pub(crate) fn new(spawners: Vec<Spawner>, max_connections: usize) -> Arc<Self> {
        let loads = spawners.iter().map(|_| AtomicUsize::new(0)).collect();
        Arc::new(Self {
            spawners,
            loads,
            connections: AtomicUsize::new(0),
            max_connections,
        })
    }

    /// Worker 0's spawner: accept loops and context-wide tasks run there.
    pub(crate) fn first(&self) -> &Spawner {
        &self.spawners[0]
    }

    /// Open connections (HTTP and WebSocket).
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Each worker's open connections, in executor order.
    pub(crate) fn loads(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Reserves a connection place; `None` at `max_connections`.
    pub(crate) fn try_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let n = self.connections.fetch_add(1, Ordering::AcqRel);
        let slot = ConnectionSlot {
            workers: self.clone(),
            worker: None,
        };
        (n < self.max_connections).then_some(slot)
    }
}

/// An open connection's place under `max_connections`, and once handed off,
/// its place in its worker's load: both are given back when the connection's
/// task ends (or is dropped by a forced teardown).
pub(crate) struct ConnectionSlot {
    workers: Arc<Workers>,
    /// 32 bits: an open connection carries 16 bytes here, not 24.
    worker: Option<u32>,
}

impl ConnectionSlot {
    /// The spawner of the worker serving this connection.
    pub(crate) fn spawner(&self) -> &Spawner {
        &self.workers.spawners[self.worker.map_or(0, |w| w as usize)]
    }

    /// Hands the connection to the worker serving the fewest connections (the
    /// lowest index on a tie), counts it there, and returns that worker's
    /// spawner, on which the connection's task must be spawned.
    ///
    /// The look and the increment are not one atomic step, so two listeners
    /// accepting at the same instant may both pick the same worker; the
    /// imbalance is one connection and corrects itself on the next hand-off.
    pub(crate) fn hand_off(&mut self) -> Spawner {
        let w = &self.workers;
        let index = least_loaded(w.loads.iter().map(|l| l.load(Ordering::Acquire)));
        // A worker per service thread: far fewer than 2^32.
        let slot = u32::try_from(index).unwrap_or(0);
        let index = slot as usize;
        if let Some(previous) = self.worker.replace(slot) {
            w.loads[previous as usize].fetch_sub(1, Ordering::AcqRel);
        }
        w.loads[index].fetch_add(1, Ordering::AcqRel);
        w.spawners[index].clone()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.workers.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(index) = self.worker {
            self.workers.loads[index as usize].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The index of the smallest load, the lowest index among equals (0 for none).
fn least_loaded(loads: impl Iterator<Item = usize>) -> usize {
    loads
        .enumerate()
        .min_by_key(|&(i, load)| (load, i))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn the_least_loaded_worker_wins_and_ties_go_to_the_lowest_index() {
        assert_eq!(least_loaded([0, 0, 0].into_iter()), 0);
        assert_eq!(least_loaded([1, 0, 0].into_iter()), 1);
        assert_eq!(least_loaded([3, 2, 1, 1].into_iter()), 2);
        assert_eq!(least_loaded([5].into_iter()), 0);
        assert_eq!(least_loaded(std::iter::empty()), 0);
    }
}
