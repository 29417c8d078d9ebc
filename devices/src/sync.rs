//! Locking helpers shared by every layer of the syscall layer and the VMM.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: a panic in one vCPU thread must not take the
/// others down with a second panic while they report.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
