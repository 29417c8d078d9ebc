//! Locking shared by the replication sides.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: a program thread that panicked while holding a replication
/// lock leaves data that is still consistent enough to report on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
