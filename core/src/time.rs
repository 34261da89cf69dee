//! The only notion of time in the core: milliseconds since an origin the caller picks.
//!
//! Adapters map a monotonic clock onto it; the simulator uses a virtual clock. Nothing here reads
//! a clock, which is what lets a simulated day run in milliseconds.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time, in milliseconds since an arbitrary origin chosen by whoever drives the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later (never panics, so that a
    /// clock that steps backwards in an adapter cannot crash the machine).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Durations are whole milliseconds in the core; sub-millisecond parts are dropped.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(millis(rhs)))
    }
}

impl AddAssign<Duration> for Timestamp {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(millis(rhs)))
    }
}

impl fmt::Display for Timestamp {
    /// `t=+12.345s`, the form the simulator's logs use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t=+{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = Timestamp::from_millis(1_500);
        assert_eq!((t + Duration::from_millis(250)).as_millis(), 1_750);
        assert_eq!((t - Duration::from_secs(10)).as_millis(), 0);
        assert_eq!(t.saturating_since(Timestamp::from_millis(2_000)), Duration::ZERO);
        assert_eq!(t.saturating_since(Timestamp::from_millis(500)), Duration::from_secs(1));
        assert_eq!((Timestamp::from_millis(u64::MAX) + Duration::from_secs(1)).as_millis(), u64::MAX);
    }

    #[test]
    fn displays_in_simulated_seconds() {
        assert_eq!(Timestamp::from_millis(12_345).to_string(), "t=+12.345s");
        assert_eq!(Timestamp::from_millis(7).to_string(), "t=+0.007s");
    }
}
