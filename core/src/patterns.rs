//! Disconnect pattern analysis: turns a list of lost connections into "this keeps happening every
//! ~5 min: an idle timeout in a proxy or NAT; ping more often" for the logs and stats.
//!
//! Pure: the connection keeps the last [`DISCONNECT_LOG_LEN`] drops of live transports
//! ([`Disconnect`]) and calls [`analyze`] after each. Three shapes are recognised:
//! - **Fixed uptime**: at least [`MIN_REPEATS`] connections, and at least half of them, lived
//!   about the same time before dying (within 5 % or 2 s). ~24 h is Binance's cutoff
//!   (rollover disabled or too late); minutes to an hour is typically an idle timeout in a
//!   proxy, load balancer or NAT that does not see our pings as traffic, or drops quiet flows.
//! - **Time of day**: with a wall-clock offset, drops cluster within 15 minutes of the same time
//!   of day on at least two different days: a nightly job on the path (NAT flush, VPN re-key, ISP
//!   reconnect, maintenance).
//! - **Storm**: the last [`MIN_STORM`] connections all died before becoming stable: the server
//!   accepts and drops at once (the backoff keeps growing, see `backoff`).

use crate::classify::ErrorClass;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// How many drops the connection keeps for the analysis.
pub const DISCONNECT_LOG_LEN: usize = 64;
/// Repeats needed before a shape counts as a pattern.
pub const MIN_REPEATS: usize = 3;
/// Consecutive short-lived connections that make a storm.
pub const MIN_STORM: usize = 5;

const DAY_MS: u64 = 86_400_000;
const TIME_OF_DAY_TOLERANCE_MS: u64 = 15 * 60_000;

/// One live transport that was lost (not closed by us on purpose).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// When it was lost.
    pub at: Timestamp,
    /// How long it had been up.
    pub up_for_ms: u64,
    /// The class of the error that ended it.
    pub class: ErrorClass,
    /// A short name of the error (`reset`, `timeout`, `server_close_1006`...).
    pub error: String,
}

/// A recognised shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternKind {
    /// Connections die after about the same uptime.
    FixedUptime {
        /// The typical uptime (median of the cluster).
        every_ms: u64,
    },
    /// Drops cluster at the same wall-clock time of day.
    TimeOfDay {
        /// Minutes after midnight UTC (median of the cluster).
        minute_of_day: u32,
    },
    /// Connections keep dying before they become stable.
    Storm {
        /// The longest uptime among them.
        max_up_ms: u64,
    },
}

/// A pattern, with the evidence and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    /// The shape.
    pub kind: PatternKind,
    /// How many drops fit it.
    pub count: usize,
    /// Of how many analysed.
    pub of: usize,
    /// The likely cause and the fix, in one line.
    pub advice: String,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} disconnects: {}", self.count, self.of, self.advice)
    }
}

fn human(ms: u64) -> String {
    match ms {
        ms if ms >= 3_600_000 => format!("{:.1} h", ms as f64 / 3_600_000.0),
        ms if ms >= 60_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        ms => format!("{:.1} s", ms as f64 / 1_000.0),
    }
}

/// The largest set of values within a tolerance of each other: `(count, median)`.
fn densest(mut values: Vec<u64>, tolerance: impl Fn(u64) -> u64) -> Option<(usize, u64)> {
    values.sort_unstable();
    let mut best: Option<(usize, u64)> = None;
    let mut start = 0;
    for end in 0..values.len() {
        while values[end] - values[start] > tolerance(values[start]) {
            start += 1;
        }
        let count = end - start + 1;
        if best.is_none_or(|(c, _)| count > c) {
            best = Some((count, values[start + count / 2]));
        }
    }
    best
}

/// Finds the patterns in `disconnects` (oldest first). `wall_clock_offset_ms` maps a
/// [`Timestamp`] to milliseconds since the Unix epoch (`None`: no time-of-day analysis, as in the
/// simulator); `stable_after_ms` is the backoff's stability threshold.
pub fn analyze(disconnects: &[Disconnect], wall_clock_offset_ms: Option<u64>, stable_after_ms: u64) -> Vec<Pattern> {
    let of = disconnects.len();
    let mut patterns = Vec::new();

    let storm: Vec<&Disconnect> = disconnects.iter().rev().take_while(|d| d.up_for_ms < stable_after_ms).collect();
    if storm.len() >= MIN_STORM {
        let max_up_ms = storm.iter().map(|d| d.up_for_ms).max().unwrap_or(0);
        patterns.push(Pattern {
            kind: PatternKind::Storm { max_up_ms },
            count: storm.len(),
            of,
            advice: format!(
                "the server accepts and then drops every connection within {} (last error: {}); the backoff keeps \
                 growing instead of hammering it. Check the stream names, the IP's rate limits (429/418) and any proxy",
                human(max_up_ms),
                storm.first().map_or("?", |d| d.error.as_str())
            ),
        });
    }

    // Short-lived connections belong to the storm, not to an uptime pattern.
    let uptimes: Vec<u64> =
        disconnects.iter().map(|d| d.up_for_ms).filter(|&up| up >= stable_after_ms.min(10_000)).collect();
    if let Some((count, every_ms)) = densest(uptimes, |v| (v / 20).max(2_000))
        && count >= MIN_REPEATS
        && count * 2 >= of
    {
        let advice = if (23 * 3_600_000..=25 * 3_600_000).contains(&every_ms) {
            format!(
                "connections die after ~{}: Binance's 24-hour cutoff. Keep stream.rollover_after_ms below 24 h \
                 (default 23 h 30 min) so that keel reconnects first",
                human(every_ms)
            )
        } else if every_ms <= 2 * 3_600_000 {
            format!(
                "connections die after ~{} up: an idle timeout in a proxy, load balancer or NAT on the path. \
                 Set heartbeat.ping_interval_ms well below {} ms, or raise the timeout on that device",
                human(every_ms),
                every_ms
            )
        } else {
            format!(
                "connections die after ~{} up: a session limit on the path (proxy, VPN re-key, DHCP lease) or \
                 on the server; plan a rollover (stream.rollover_after_ms) shorter than that",
                human(every_ms)
            )
        };
        patterns.push(Pattern { kind: PatternKind::FixedUptime { every_ms }, count, of, advice });
    }

    if let Some(offset) = wall_clock_offset_ms {
        let wall: Vec<u64> = disconnects.iter().map(|d| d.at.as_millis().saturating_add(offset)).collect();
        // Minute of day, unwrapped around midnight by trying both the raw and a half-day shifted view.
        let best = [0, DAY_MS / 2]
            .into_iter()
            .filter_map(|shift| {
                let tod: Vec<u64> = wall.iter().map(|w| (w + shift) % DAY_MS).collect();
                densest(tod, |_| 2 * TIME_OF_DAY_TOLERANCE_MS)
                    .map(|(count, median)| (count, (median + DAY_MS - shift) % DAY_MS))
            })
            .max_by_key(|&(count, _)| count);
        if let Some((count, tod)) = best {
            let near = |w: &u64| {
                let d = (w % DAY_MS).abs_diff(tod);
                d.min(DAY_MS - d) <= TIME_OF_DAY_TOLERANCE_MS
            };
            let mut days: Vec<u64> = wall.iter().filter(|w| near(w)).map(|w| w / DAY_MS).collect();
            days.dedup();
            if count >= MIN_REPEATS && days.len() >= 2 {
                let minute_of_day = (tod / 60_000) as u32;
                patterns.push(Pattern {
                    kind: PatternKind::TimeOfDay { minute_of_day },
                    count,
                    of,
                    advice: format!(
                        "disconnects cluster around {:02}:{:02} UTC on {} different days: a scheduled job on the path \
                         (NAT table flush, VPN re-key, ISP reconnect) or maintenance; nothing to fix in keel, but \
                         check the network at that time",
                        minute_of_day / 60,
                        minute_of_day % 60,
                        days.len()
                    ),
                });
            }
        }
    }
    patterns
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::QuickCheck;

    fn drop_at(at_ms: u64, up_for_ms: u64) -> Disconnect {
        Disconnect { at: Timestamp::from_millis(at_ms), up_for_ms, class: ErrorClass::Transient, error: "reset".into() }
    }

    /// Connections that each live `up` (plus a small wobble) and reconnect after 1 s.
    fn periodic(up: u64, n: u64) -> Vec<Disconnect> {
        let mut at = 0;
        (0..n)
            .map(|i| {
                let up_for = up + (i * 37) % 1_000;
                at += up_for;
                let d = drop_at(at, up_for);
                at += 1_000;
                d
            })
            .collect()
    }

    #[test]
    fn recognises_the_24_hour_cutoff() {
        let p = analyze(&periodic(24 * 3_600_000, 4), None, 30_000);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(matches!(p[0].kind, PatternKind::FixedUptime { every_ms } if every_ms / 60_000 == 24 * 60));
        assert!(p[0].advice.contains("rollover_after_ms"), "{}", p[0]);
        assert_eq!((p[0].count, p[0].of), (4, 4));
    }

    #[test]
    fn recognises_an_idle_timeout() {
        let mut drops = periodic(300_000, 5);
        drops.push(drop_at(10_000_000, 3_000_000)); // one unrelated drop
        let p = analyze(&drops, None, 30_000);
        assert!(matches!(p[..], [Pattern { kind: PatternKind::FixedUptime { .. }, count: 5, of: 6, .. }]), "{p:?}");
        assert!(p[0].advice.contains("idle timeout") && p[0].advice.contains("ping_interval_ms"), "{}", p[0]);
    }

    #[test]
    fn random_uptimes_are_no_pattern() {
        let ups = [45_000, 900_000, 3_700_000, 120_000, 7_200_000, 61_000];
        let mut at = 0;
        let drops: Vec<_> = ups
            .iter()
            .map(|&up| {
                at += up + 5_000;
                drop_at(at, up)
            })
            .collect();
        assert_eq!(analyze(&drops, None, 30_000), vec![]);
        assert_eq!(analyze(&[], Some(0), 30_000), vec![]);
    }

    #[test]
    fn recognises_a_storm() {
        let mut drops = periodic(3_600_000 * 5, 1);
        drops.extend((0..5).map(|i| drop_at(20_000_000 + i * 10_000, 200)));
        let p = analyze(&drops, None, 30_000);
        assert!(matches!(p[..], [Pattern { kind: PatternKind::Storm { max_up_ms: 200 }, count: 5, .. }]), "{p:?}");
        // Four are not yet a storm.
        assert_eq!(analyze(&drops[..5], None, 30_000), vec![]);
    }

    #[test]
    fn recognises_a_time_of_day_across_midnight() {
        // Drops at 23:55, 00:05, 23:58 UTC on three days, uptimes all different.
        let offset = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS;
        let times = [23 * 60 + 55, 24 * 60 + 5, 2 * 24 * 60 + 23 * 60 + 58];
        let drops: Vec<_> =
            times.iter().enumerate().map(|(i, m)| drop_at(m * 60_000, 10_000_000 * (i as u64 + 1))).collect();
        let p = analyze(&drops, Some(offset), 30_000);
        match &p[..] {
            [Pattern { kind: PatternKind::TimeOfDay { minute_of_day }, count: 3, .. }] => {
                assert!(*minute_of_day >= 23 * 60 + 45 || *minute_of_day <= 15, "{minute_of_day}");
            }
            other => panic!("{other:?}"),
        }
        // Without a wall clock there is no time of day.
        assert_eq!(analyze(&drops, None, 30_000), vec![]);
        // Same time, same day: not a daily pattern.
        let same_day: Vec<_> = (0..3).map(|i| drop_at(60_000 * (600 + i), 1_000_000 * (i + 1))).collect();
        assert_eq!(analyze(&same_day, Some(offset), 30_000), vec![]);
    }

    #[test]
    fn prop_never_panics_and_counts_stay_within_the_input() {
        fn prop(raw: Vec<(u32, u32)>, offset: Option<u64>) -> bool {
            let mut at = 0u64;
            let drops: Vec<_> = raw
                .iter()
                .map(|&(gap, up)| {
                    at += u64::from(gap);
                    drop_at(at, u64::from(up))
                })
                .collect();
            analyze(&drops, offset.map(|o| o % (1 << 50)), 30_000)
                .iter()
                .all(|p| p.count <= p.of && p.of == drops.len())
        }
        QuickCheck::new().quickcheck(prop as fn(Vec<(u32, u32)>, Option<u64>) -> bool);
    }
}
