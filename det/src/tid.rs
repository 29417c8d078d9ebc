//! Deterministic thread ids.

use std::fmt;
use thiserror::Error;

/// A deterministic thread id: the thread's index in creation order.
///
/// Host and guest TIDs differ between the two replicas; this id does not, because threads are
/// created under the token (or inside a logged turn), so both replicas create them in the same
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DetTid(pub u32);

impl DetTid {
    /// The program's first thread.
    pub const MAIN: DetTid = DetTid(0);
}

impl fmt::Display for DetTid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// Errors of the id allocator.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TidError {
    /// All 2^32 ids have been handed out; ids are never reused, so that logs stay unambiguous.
    #[error("deterministic thread ids exhausted")]
    Exhausted,
}

/// Hands out [`DetTid`]s in creation order, starting at [`DetTid::MAIN`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DetTidAllocator {
    // u64 so that "every u32 was used" is representable without a separate flag.
    next: u64,
}

impl DetTidAllocator {
    /// An allocator whose first id is [`DetTid::MAIN`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The next id in creation order.
    pub fn allocate(&mut self) -> Result<DetTid, TidError> {
        let id = u32::try_from(self.next).map_err(|_| TidError::Exhausted)?;
        self.next += 1;
        Ok(DetTid(id))
    }

    /// How many ids have been handed out.
    pub fn allocated(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_creation_order() {
        let mut a = DetTidAllocator::new();
        assert_eq!(a.allocate(), Ok(DetTid::MAIN));
        assert_eq!(a.allocate(), Ok(DetTid(1)));
        assert_eq!(a.allocated(), 2);
        assert_eq!(DetTid(7).to_string(), "t7");
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut a = DetTidAllocator {
            next: u64::from(u32::MAX),
        };
        assert_eq!(a.allocate(), Ok(DetTid(u32::MAX)));
        assert_eq!(a.allocate(), Err(TidError::Exhausted));
    }
}
