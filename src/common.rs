//! Small helpers every layer uses.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning.
///
/// Every critical section in wsgate leaves its data consistent (a few field
/// updates, no callback runs under a lock), so a panic elsewhere while a lock
/// was held does not make the data unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
