//! When to try connecting again: exponential backoff with jitter, an attempt budget, and the
//! history of the last attempts.
//!
//! Three separate pieces, composed by [`crate::connection::Connection`]:
//! - [`Backoff`] turns consecutive failures into delays (`initial * multiplier^(n-1)`, capped at
//!   `max`, then jittered down into `[d*(1-jitter), d]`) and gives up after
//!   `max_consecutive_failures`. The failure count resets only when a connection stayed up for
//!   `stable_after`: a server that accepts and drops at once must keep the delays growing, or the
//!   client hammers it (the reconnect-storm bug of naive clients that reset on every connect).
//! - [`AttemptBudget`] keeps connection attempts under Binance's per-IP limit (300 per 5 minutes)
//!   by *delaying* an attempt until the window has room, never by failing it.
//! - [`ReconnectHistory`] remembers the last [`HISTORY_LEN`] attempts for stats and diagnosis.

use crate::classify::{ErrorClass, TransportError};
use crate::config::ReconnectConfig;
use crate::rng::Rng;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// How many attempts [`ReconnectHistory`] keeps.
pub const HISTORY_LEN: usize = 10;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackoffDecision {
    /// Try again after this delay (jitter already applied).
    Retry {
        /// The delay before the next attempt.
        delay: Duration,
        /// Consecutive failures so far, this one included.
        failures: u32,
    },
    /// `max_consecutive_failures` was reached: stop.
    GiveUp {
        /// Consecutive failures, this one included.
        failures: u32,
    },
}

/// Exponential backoff with jitter and a consecutive-failure limit.
///
/// The jitter generator is owned and seeded, so the same seed gives the same delays.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: f64,
    max_failures: u32,
    stable_after: Duration,
    failures: u32,
    rng: Rng,
}

impl Backoff {
    /// A policy from the `reconnect` section; `seed` fixes the jitter sequence.
    pub fn new(config: &ReconnectConfig, seed: u64) -> Self {
        Backoff {
            initial: Duration::from_millis(config.initial_delay_ms),
            multiplier: config.multiplier,
            max: Duration::from_millis(config.max_delay_ms),
            // Clamped so that an unvalidated config cannot produce a negative or NaN delay.
            jitter: if config.jitter.is_finite() { config.jitter.clamp(0.0, 1.0) } else { 0.0 },
            max_failures: config.max_consecutive_failures.max(1),
            stable_after: Duration::from_millis(config.stable_after_ms),
            failures: 0,
            rng: Rng::new(seed),
        }
    }

    /// Consecutive failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long a connection must stay up before the failure count resets.
    pub fn stable_after(&self) -> Duration {
        self.stable_after
    }

    /// The delay before jitter after `failures` consecutive failures (`failures >= 1`):
    /// `initial * multiplier^(failures-1)`, capped at `max`. Never decreases as `failures` grows.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(i32::MAX as u32) as i32;
        let ms = self.initial.as_millis() as f64 * self.multiplier.powi(exponent);
        let max_ms = self.max.as_millis() as f64;
        // `min` also maps +inf (a huge exponent) to the cap; NaN cannot occur with multiplier >= 1.
        Duration::from_millis(ms.min(max_ms).max(0.0) as u64)
    }

    /// Records a failed attempt (or a connection that dropped before becoming stable) and
    /// returns the jittered delay before the next attempt, or `GiveUp`.
    pub fn on_failure(&mut self) -> BackoffDecision {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.max_failures {
            return BackoffDecision::GiveUp { failures: self.failures };
        }
        let base = self.base_delay(self.failures).as_millis() as f64;
        // One draw per failure, whatever the jitter, so that replays stay aligned.
        let r = self.rng.next_f64();
        let low = base * (1.0 - self.jitter);
        let ms = (low + (base - low) * r).round().max(low.ceil()).min(base);
        BackoffDecision::Retry { delay: Duration::from_millis(ms as u64), failures: self.failures }
    }

    /// A connection that has been up for `up_for` ended or is still up: when it was up for at least
    /// `stable_after`, forget the failures (returns whether it did).
    pub fn on_uptime(&mut self, up_for: Duration) -> bool {
        if up_for >= self.stable_after && self.failures > 0 {
            self.failures = 0;
            true
        } else {
            false
        }
    }

    /// Forgets the failures unconditionally.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// At most `limit` attempts in any window of `window`, enforced by delaying.
///
/// Keeps the times of the last `limit` attempts: a new one is allowed when the oldest of them is at
/// least `window` ago, so no half-open window of that length ever holds more than `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptBudget {
    limit: usize,
    window: Duration,
    recent: VecDeque<Timestamp>,
}

impl AttemptBudget {
    /// `limit` attempts per `window` (a limit of 0 is treated as 1, so attempts are never blocked forever).
    pub fn new(limit: u32, window: Duration) -> Self {
        let limit = (limit as usize).max(1);
        AttemptBudget { limit, window, recent: VecDeque::with_capacity(limit.min(1024)) }
    }

    /// The budget of the `reconnect` section.
    pub fn from_config(config: &ReconnectConfig) -> Self {
        Self::new(config.max_attempts_per_window, Duration::from_millis(config.attempt_window_ms))
    }

    /// The earliest time at or after `now` at which an attempt fits in the budget.
    pub fn next_allowed(&self, now: Timestamp) -> Timestamp {
        if self.recent.len() < self.limit {
            return now;
        }
        match self.recent.front() {
            Some(&oldest) => (oldest + self.window).max(now),
            None => now,
        }
    }

    /// Records an attempt at `now`. The caller checks [`Self::next_allowed`] first; recording an
    /// attempt that does not fit is allowed (it is counted) but breaks the guarantee.
    pub fn record(&mut self, now: Timestamp) {
        self.recent.push_back(now);
        while self.recent.len() > self.limit {
            self.recent.pop_front();
        }
    }

    /// Attempts within the window ending at `now`.
    pub fn used(&self, now: Timestamp) -> usize {
        self.recent.iter().filter(|&&t| now.saturating_since(t) < self.window).count()
    }
}

/// How one connection attempt ended (so far).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// Still connecting.
    Pending,
    /// Connected and still up.
    Connected,
    /// Never connected.
    Failed {
        /// What went wrong.
        error: TransportError,
        /// Its class.
        class: ErrorClass,
    },
    /// Connected, then lost after `up_for_ms`.
    Dropped {
        /// How long it was up.
        up_for_ms: u64,
        /// What went wrong.
        error: TransportError,
        /// Its class.
        class: ErrorClass,
    },
    /// Connected, then closed by us (shutdown, rollover, stall) after `up_for_ms`.
    Closed {
        /// How long it was up.
        up_for_ms: u64,
        /// Why we closed it.
        reason: String,
    },
    /// Abandoned by us before it connected (shutdown).
    Abandoned,
}

/// One connection attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the attempt started (the `Open` was emitted).
    pub at: Timestamp,
    /// The delay waited before it (0 for the first attempt and for rollovers).
    pub delay_ms: u64,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

/// The last [`HISTORY_LEN`] attempts, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReconnectHistory {
    records: VecDeque<AttemptRecord>,
}

impl ReconnectHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new attempt record (dropping the oldest beyond [`HISTORY_LEN`]).
    pub fn start(&mut self, at: Timestamp, delay: Duration) {
        self.records.push_back(AttemptRecord {
            at,
            delay_ms: delay.as_millis() as u64,
            outcome: AttemptOutcome::Pending,
        });
        while self.records.len() > HISTORY_LEN {
            self.records.pop_front();
        }
    }

    /// Sets the outcome of the latest attempt (no-op on an empty history).
    pub fn finish(&mut self, outcome: AttemptOutcome) {
        if let Some(last) = self.records.back_mut() {
            last.outcome = outcome;
        }
    }

    /// The latest attempt.
    pub fn last(&self) -> Option<&AttemptRecord> {
        self.records.back()
    }

    /// All kept records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &AttemptRecord> {
        self.records.iter()
    }

    /// Number of kept records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The last [`HISTORY_LEN`] attempts of several connections together, by start time (several
    /// connections of one run share Binance's per-IP attempt limit, so their attempts read as one list).
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a ReconnectHistory>) -> ReconnectHistory {
        let mut all: Vec<AttemptRecord> = parts.into_iter().flat_map(|h| h.records.iter().cloned()).collect();
        all.sort_by_key(|r| r.at);
        let skip = all.len().saturating_sub(HISTORY_LEN);
        ReconnectHistory { records: all.into_iter().skip(skip).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn config(jitter: f64) -> ReconnectConfig {
        ReconnectConfig { jitter, ..ReconnectConfig::default() }
    }

    fn delays(b: &mut Backoff, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| match b.on_failure() {
                BackoffDecision::Retry { delay, .. } => delay.as_millis() as u64,
                BackoffDecision::GiveUp { .. } => u64::MAX,
            })
            .collect()
    }

    #[test]
    fn without_jitter_delays_double_up_to_the_cap() {
        let mut b = Backoff::new(&config(0.0), 1);
        assert_eq!(delays(&mut b, 9), [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
        assert_eq!(b.failures(), 9);
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let mut b = Backoff::new(&config(0.5), 7);
        let bands = [(500, 1_000), (1_000, 2_000), (2_000, 4_000), (4_000, 8_000), (8_000, 16_000), (16_000, 32_000)];
        for (d, (lo, hi)) in delays(&mut b, 6).into_iter().zip(bands) {
            assert!((lo..=hi).contains(&d), "{d} not in {lo}..={hi}");
        }
        // Full jitter: anything from 0 to the base.
        let mut b = Backoff::new(&config(1.0), 7);
        assert!(delays(&mut b, 20).iter().all(|&d| d <= 60_000));
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let a = delays(&mut Backoff::new(&config(0.5), 42), 20);
        let b = delays(&mut Backoff::new(&config(0.5), 42), 20);
        let c = delays(&mut Backoff::new(&config(0.5), 43), 20);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn gives_up_at_the_limit() {
        let cfg = ReconnectConfig { max_consecutive_failures: 3, jitter: 0.0, ..ReconnectConfig::default() };
        let mut b = Backoff::new(&cfg, 0);
        assert_eq!(b.on_failure(), BackoffDecision::Retry { delay: Duration::from_secs(1), failures: 1 });
        assert_eq!(b.on_failure(), BackoffDecision::Retry { delay: Duration::from_secs(2), failures: 2 });
        assert_eq!(b.on_failure(), BackoffDecision::GiveUp { failures: 3 });
    }

    #[test]
    fn only_a_stable_connection_resets_the_failures() {
        let mut b = Backoff::new(&config(0.0), 0);
        assert_eq!(delays(&mut b, 3), [1_000, 2_000, 4_000]);
        // Accepted and dropped at once: no reset, the delays keep growing (no reconnect storm).
        assert!(!b.on_uptime(Duration::from_millis(50)));
        assert!(!b.on_uptime(Duration::from_millis(29_999)));
        assert_eq!(delays(&mut b, 1), [8_000]);
        assert!(b.on_uptime(Duration::from_secs(30)));
        assert_eq!(b.failures(), 0);
        assert_eq!(delays(&mut b, 2), [1_000, 2_000]);
    }

    #[test]
    fn huge_failure_counts_stay_capped() {
        let b = Backoff::new(&ReconnectConfig { multiplier: 10.0, ..config(0.0) }, 0);
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(60));
        assert_eq!(b.base_delay(1), Duration::from_secs(1));
        assert_eq!(b.base_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn budget_delays_the_attempt_past_the_window() {
        let mut budget = AttemptBudget::new(3, Duration::from_secs(10));
        let t = Timestamp::from_millis;
        // (attempt at, next allowed after recording it)
        let table = [(0, 0), (1_000, 1_000), (2_000, 10_000)];
        for (at, next) in table {
            assert_eq!(budget.next_allowed(t(at)), t(at));
            budget.record(t(at));
            assert_eq!(budget.next_allowed(t(at)), t(next), "after the attempt at {at}");
        }
        assert_eq!(budget.used(t(2_000)), 3);
        assert_eq!(budget.next_allowed(t(9_999)), t(10_000));
        budget.record(t(10_000));
        assert_eq!(budget.next_allowed(t(10_000)), t(11_000));
        assert_eq!(budget.used(t(10_000)), 3);
    }

    #[test]
    fn history_keeps_the_last_ten() {
        let mut h = ReconnectHistory::new();
        for i in 0..15u64 {
            h.start(Timestamp::from_millis(i * 1_000), Duration::from_millis(i));
            h.finish(AttemptOutcome::Failed {
                error: TransportError::Reset(format!("#{i}")),
                class: ErrorClass::Transient,
            });
        }
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.iter().next().map(|r| r.at), Some(Timestamp::from_millis(5_000)));
        assert_eq!(h.last().map(|r| r.delay_ms), Some(14));
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.starts_with('[') && json.contains("\"#14\""), "{json}");
    }

    fn arbitrary_config(initial: u16, mult_tenths: u8, max_extra: u16, jitter_pct: u8) -> ReconnectConfig {
        ReconnectConfig {
            initial_delay_ms: u64::from(initial) + 1,
            multiplier: 1.0 + f64::from(mult_tenths % 50) / 10.0,
            max_delay_ms: u64::from(initial) + 1 + u64::from(max_extra),
            jitter: f64::from(jitter_pct % 101) / 100.0,
            max_consecutive_failures: 1_000,
            ..ReconnectConfig::default()
        }
    }

    #[test]
    fn prop_delays_within_bounds() {
        fn prop(initial: u16, mult: u8, max_extra: u16, jitter: u8, seed: u64, n: u8) -> bool {
            let cfg = arbitrary_config(initial, mult, max_extra, jitter);
            let mut b = Backoff::new(&cfg, seed);
            let floor = (cfg.initial_delay_ms as f64 * (1.0 - cfg.jitter)).floor() as u64;
            delays(&mut b, usize::from(n)).iter().all(|&d| d <= cfg.max_delay_ms && d >= floor)
        }
        QuickCheck::new().quickcheck(prop as fn(u16, u8, u16, u8, u64, u8) -> bool);
    }

    #[test]
    fn prop_base_delays_never_decrease_within_an_outage() {
        fn prop(initial: u16, mult: u8, max_extra: u16, jitter: u8, seed: u64, n: u8) -> bool {
            let cfg = arbitrary_config(initial, mult, max_extra, jitter);
            let b = Backoff::new(&cfg, seed);
            let bases: Vec<_> = (1..=u32::from(n) + 1).map(|k| b.base_delay(k)).collect();
            // And the jittered delay of failure k never exceeds its base.
            let mut j = Backoff::new(&cfg, seed);
            let jittered = delays(&mut j, bases.len());
            bases.windows(2).all(|w| w[0] <= w[1])
                && jittered.iter().zip(&bases).all(|(&d, base)| d <= base.as_millis() as u64)
        }
        QuickCheck::new().quickcheck(prop as fn(u16, u8, u16, u8, u64, u8) -> bool);
    }

    #[test]
    fn prop_attempt_budget_holds_over_any_sequence() {
        // Attempts want to happen after arbitrary gaps; each is delayed to `next_allowed`. No window
        // of the configured length may then hold more than `limit` attempts.
        fn prop(limit: u8, window_s: u8, gaps: Vec<u16>) -> TestResult {
            let limit = u32::from(limit % 20) + 1;
            let window = Duration::from_secs(u64::from(window_s % 30) + 1);
            let mut budget = AttemptBudget::new(limit, window);
            let mut now = Timestamp::ZERO;
            let mut times = Vec::new();
            for gap in gaps {
                now += Duration::from_millis(u64::from(gap % 2_000));
                let at = budget.next_allowed(now);
                if at < now {
                    return TestResult::failed();
                }
                budget.record(at);
                times.push(at);
                now = at;
            }
            for (i, &start) in times.iter().enumerate() {
                let in_window = times[i..].iter().take_while(|&&t| t < start + window).count();
                if in_window > limit as usize {
                    return TestResult::failed();
                }
            }
            TestResult::passed()
        }
        QuickCheck::new().quickcheck(prop as fn(u8, u8, Vec<u16>) -> TestResult);
    }
}
