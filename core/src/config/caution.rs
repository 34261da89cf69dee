//! Values that validate but are almost certainly not what the writer meant.
//!
//! Validation (`Config::validate`) refuses what keel cannot run with; DESIGN.md gives the time
//! limits lower bounds only, because a long wait is legal and someone may want it. But
//! `rate_limit_floor_ms: 18446744073709551615` is legal too, and then the first 1008 close waits
//! until the heat death of the machine with nothing in the log to say why. A caution names the key,
//! what the value does to a running feed, and the default; `keel config check` prints it and
//! `keel stream` logs it on start. Nothing is refused.

use super::Config;
use std::fmt;

/// One legal value with a consequence the writer probably did not intend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caution {
    /// Dotted path of the key, e.g. `reconnect.rate_limit_floor_ms`.
    pub field: &'static str,
    /// The value as configured.
    pub value: String,
    /// What the value does, and the default to compare with.
    pub consequence: String,
}

impl fmt::Display for Caution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} is allowed, but {}", self.field, self.value, self.consequence)
    }
}

/// A wait keel may have to sit through, above which a caution is due: one hour. Binance's own
/// rate-limit bans start at 2 minutes and its connection limit counts 5-minute windows; an hour
/// without data is an outage a trading stack notices.
const LONG_WAIT_MS: u64 = 3_600_000;

/// Silent death noticed later than this (ping interval plus pong timeout) is cautioned: ten
/// minutes, twice Binance's own server-side pong deadline.
const LATE_NOTICE_MS: u64 = 600_000;

/// A handshake that may hang longer than this holds one connection attempt: five minutes.
const LONG_HANDSHAKE_MS: u64 = 300_000;

/// The attempt window longer than this turns a used-up budget into a long outage: one day.
const LONG_WINDOW_MS: u64 = 86_400_000;

impl Config {
    /// Every legal value with a consequence worth a second look, in key order. Empty for the
    /// defaults and for anything near them.
    pub fn cautions(&self) -> Vec<Caution> {
        let defaults = Config::default();
        let mut out = Vec::new();
        let mut caution = |field: &'static str, value: u64, consequence: String| {
            out.push(Caution { field, value: value.to_string(), consequence });
        };
        let s = &self.stream;
        if s.stall_after_ms >= s.rollover_after_ms {
            caution(
                "stream.stall_after_ms",
                s.stall_after_ms,
                format!(
                    "a stream that stops on a live connection is never noticed: the connection rolls over first, \
                     at stream.rollover_after_ms ({}); the default is {}",
                    human(s.rollover_after_ms),
                    defaults.stream.stall_after_ms
                ),
            );
        }
        let r = &self.reconnect;
        if r.max_delay_ms > LONG_WAIT_MS {
            caution(
                "reconnect.max_delay_ms",
                r.max_delay_ms,
                format!(
                    "after repeated failures one retry waits up to {}, and the feed stays down that long after the \
                     exchange is back; the default is {}",
                    human(r.max_delay_ms),
                    defaults.reconnect.max_delay_ms
                ),
            );
        }
        if r.stable_after_ms >= s.rollover_after_ms {
            caution(
                "reconnect.stable_after_ms",
                r.stable_after_ms,
                format!(
                    "no connection lives that long (each rolls over at stream.rollover_after_ms, {}), so failures \
                     are never forgotten and reconnect.max_consecutive_failures ({}) failures over the whole run \
                     end it; the default is {}",
                    human(s.rollover_after_ms),
                    r.max_consecutive_failures,
                    defaults.reconnect.stable_after_ms
                ),
            );
        }
        if r.attempt_window_ms > LONG_WINDOW_MS {
            caution(
                "reconnect.attempt_window_ms",
                r.attempt_window_ms,
                format!(
                    "once reconnect.max_attempts_per_window ({}) attempts are used, the next waits for the window to \
                     pass: up to {}; the default is {} (Binance's 5 minutes)",
                    r.max_attempts_per_window,
                    human(r.attempt_window_ms),
                    defaults.reconnect.attempt_window_ms
                ),
            );
        }
        if r.rate_limit_floor_ms > LONG_WAIT_MS {
            caution(
                "reconnect.rate_limit_floor_ms",
                r.rate_limit_floor_ms,
                format!(
                    "a 1008 close or an HTTP 429 that names no wait keeps the feed down for {}, an HTTP 418 for five \
                     times that; Binance's bans start at 2 minutes, and the default is {}",
                    human(r.rate_limit_floor_ms),
                    defaults.reconnect.rate_limit_floor_ms
                ),
            );
        }
        let h = &self.heartbeat;
        let notice = h.ping_interval_ms.saturating_add(h.pong_timeout_ms);
        if notice > LATE_NOTICE_MS {
            caution(
                "heartbeat.ping_interval_ms",
                h.ping_interval_ms,
                format!(
                    "a connection that dies silently is noticed only after up to {} (ping interval plus \
                     heartbeat.pong_timeout_ms), with no data all along; the default is {}",
                    human(notice),
                    defaults.heartbeat.ping_interval_ms
                ),
            );
        }
        let t = &self.tls;
        if t.handshake_timeout_ms > LONG_HANDSHAKE_MS {
            caution(
                "tls.handshake_timeout_ms",
                t.handshake_timeout_ms,
                format!(
                    "a server that accepts the connection and never answers the handshake holds the attempt for {}; \
                     the default is {}",
                    human(t.handshake_timeout_ms),
                    defaults.tls.handshake_timeout_ms
                ),
            );
        }
        out
    }
}

/// A duration in the largest unit that keeps it readable, rounded: `90 s`, `2.5 h`, `584542046 years`.
fn human(ms: u64) -> String {
    const UNITS: [(f64, &str); 6] = [
        (1.0, "ms"),
        (1_000.0, "s"),
        (60_000.0, "min"),
        (3_600_000.0, "h"),
        (86_400_000.0, "days"),
        (31_557_600_000.0, "years"),
    ];
    let ms = ms as f64;
    // The largest unit the value reaches twice of, so that 90 s stays seconds and 36 h stays hours.
    let (size, name) = UNITS.iter().rev().find(|(size, _)| ms >= 2.0 * size).copied().unwrap_or(UNITS[0]);
    let n = ms / size;
    if n >= 100.0 || n.fract() == 0.0 { format!("{n:.0} {name}") } else { format!("{n:.1} {name}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_draw_no_caution() {
        assert_eq!(Config::default().cautions(), Vec::new());
    }

    #[test]
    fn a_floor_of_u64_max_is_cautioned_with_what_it_does() {
        let mut cfg = Config::default();
        cfg.reconnect.rate_limit_floor_ms = u64::MAX;
        assert!(cfg.validate().is_ok(), "legal: cautioned, not refused");
        let cautions = cfg.cautions();
        assert_eq!(cautions.len(), 1, "{cautions:?}");
        let text = cautions[0].to_string();
        assert!(text.starts_with("reconnect.rate_limit_floor_ms = 18446744073709551615 is allowed, but"), "{text}");
        assert!(text.contains("584542046 years"), "{text}");
        assert!(text.contains("the default is 60000"), "{text}");
    }

    #[test]
    fn each_long_wait_is_cautioned_under_its_own_key() {
        let mut cfg = Config::default();
        cfg.stream.stall_after_ms = cfg.stream.rollover_after_ms;
        cfg.reconnect.max_delay_ms = LONG_WAIT_MS + 1;
        cfg.reconnect.stable_after_ms = cfg.stream.rollover_after_ms;
        cfg.reconnect.attempt_window_ms = LONG_WINDOW_MS + 1;
        cfg.reconnect.rate_limit_floor_ms = LONG_WAIT_MS + 1;
        cfg.heartbeat.ping_interval_ms = LATE_NOTICE_MS;
        cfg.tls.handshake_timeout_ms = LONG_HANDSHAKE_MS + 1;
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        let fields: Vec<_> = cfg.cautions().iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "stream.stall_after_ms",
                "reconnect.max_delay_ms",
                "reconnect.stable_after_ms",
                "reconnect.attempt_window_ms",
                "reconnect.rate_limit_floor_ms",
                "heartbeat.ping_interval_ms",
                "tls.handshake_timeout_ms",
            ]
        );
    }

    #[test]
    fn values_at_each_limit_draw_no_caution() {
        let mut cfg = Config::default();
        cfg.stream.stall_after_ms = cfg.stream.rollover_after_ms - 1;
        cfg.reconnect.max_delay_ms = LONG_WAIT_MS;
        cfg.reconnect.stable_after_ms = cfg.stream.rollover_after_ms - 1;
        cfg.reconnect.attempt_window_ms = LONG_WINDOW_MS;
        cfg.reconnect.rate_limit_floor_ms = LONG_WAIT_MS;
        cfg.heartbeat.ping_interval_ms = LATE_NOTICE_MS - cfg.heartbeat.pong_timeout_ms;
        cfg.tls.handshake_timeout_ms = LONG_HANDSHAKE_MS;
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        assert_eq!(cfg.cautions(), Vec::new());
    }

    #[test]
    fn a_stability_threshold_no_connection_reaches_names_the_failure_budget() {
        let mut cfg = Config::default();
        cfg.reconnect.stable_after_ms = 86_400_000;
        let text = cfg.cautions()[0].to_string();
        assert!(text.contains("23.5 h"), "{text}");
        assert!(text.contains("reconnect.max_consecutive_failures (100)"), "{text}");
    }

    #[test]
    fn durations_read_in_a_fitting_unit() {
        assert_eq!(human(0), "0 ms");
        assert_eq!(human(1_999), "1999 ms");
        assert_eq!(human(90_000), "90 s");
        assert_eq!(human(120_000), "2 min");
        assert_eq!(human(9_000_000), "2.5 h");
        assert_eq!(human(84_600_000), "23.5 h");
        assert_eq!(human(3 * 86_400_000), "3 days");
        assert_eq!(human(u64::MAX), "584542046 years");
    }
}
