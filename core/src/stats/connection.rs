//! [`ConnectionStats`]: what the stream adapter prints live, writes with `--stats-json`, and what
//! the simulator checks its invariants against.
//!
//! The JSON keys are a contract (issue 2): `messages`, `malformed_frames`, `connect_attempts`,
//! `connects`, `reconnects`, `heartbeat_timeouts`, `gaps`, `duplicates`, `uptime_ms`,
//! `downtime_ms`, `last_error`, `history`; the rest are additions. The snapshot is as of the last
//! `now` the machine was given (the core has no clock).

use crate::backoff::ReconnectHistory;
use crate::patterns::Pattern;
use crate::protocol::Name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counters and durations of one [`crate::connection::Connection`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionStats {
    /// Text frames received on live transports (market data, responses, errors, malformed).
    pub messages: u64,
    /// Frames that did not decode (counted, never fatal).
    pub malformed_frames: u64,
    /// Transports opened (each `Open` output).
    pub connect_attempts: u64,
    /// Attempts that reached `Opened`.
    pub connects: u64,
    /// Connects after the first one (after a loss, a failure or a rollover).
    pub reconnects: u64,
    /// Failed attempts plus live transports lost (each counted once).
    pub failures: u64,
    /// Transports declared dead by the heartbeat.
    pub heartbeat_timeouts: u64,
    /// Gaps reported.
    pub gaps: u64,
    /// Ids missing in all reported gaps together.
    pub missing_ids: u64,
    /// Market events dropped as duplicates.
    pub duplicates: u64,
    /// Streams whose server restarted its id numbering (each detected restart once).
    pub sequence_restarts: u64,
    /// Market events passed on (fresh, in order).
    pub market_events: u64,
    /// Fresh market events per stream name.
    /// Keyed by the connection's shared [`Name`]s (read like `String`s), so that counting an event
    /// compares pointers, not texts.
    pub messages_by_stream: BTreeMap<Name, u64>,
    /// Stall actions taken (resubscribes and stall reconnects).
    pub stalls: u64,
    /// Planned reconnects (the rollover before Binance's 24 h cutoff, or its serverShutdown notice).
    pub rollovers: u64,
    /// Error replies from the server to our requests.
    pub server_errors: u64,
    /// Pongs whose payload did not match the outstanding ping (still counted as liveness).
    pub unmatched_pongs: u64,
    /// Round-trip time of the last matched pong.
    pub last_rtt_ms: Option<u64>,
    /// Time live (a transport open).
    pub uptime_ms: u64,
    /// Time not live, from the start until stopped.
    pub downtime_ms: u64,
    /// The current outage (0 when live).
    pub current_outage_ms: u64,
    /// The longest outage so far, the current one included.
    pub longest_outage_ms: u64,
    /// The delay of the current wait before reconnecting (0 when not waiting).
    pub current_backoff_ms: u64,
    /// Consecutive failures counted by the backoff.
    pub consecutive_failures: u32,
    /// `connects / connect_attempts` (0 before the first attempt).
    pub success_rate: f64,
    /// Failures by error class name (`transient`, `rate_limited`, `fatal`).
    pub failures_by_class: BTreeMap<String, u64>,
    /// Failures by error kind (`reset`, `timeout`, `server_close_1008`, `http_429`...).
    pub failures_by_error: BTreeMap<String, u64>,
    /// When the last text frame arrived (the machine's time, ms), for a "last message age" gauge.
    pub last_message_at_ms: Option<u64>,
    /// Disconnect patterns found in the recent drops (see `patterns`), most specific first.
    pub patterns: Vec<Pattern>,
    /// The last transport error, as text.
    pub last_error: Option<String>,
    /// The last 10 attempts.
    pub history: ReconnectHistory,
}

impl ConnectionStats {
    /// The stats of several connections of one run (one per shard of the streams) as one: counters
    /// and per-key maps are summed (so `uptime_ms` and `downtime_ms` are connection-milliseconds),
    /// gauges of the worst connection kept (`current_outage_ms`, `longest_outage_ms`,
    /// `current_backoff_ms`, `consecutive_failures`, `last_rtt_ms`), `success_rate` recomputed,
    /// `history` merged by time, `last_error` taken from the connection that attempted last. One
    /// part is returned as it is.
    pub fn merged(parts: &[ConnectionStats]) -> ConnectionStats {
        if let [one] = parts {
            return one.clone();
        }
        let mut m = ConnectionStats::default();
        let add = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
            for (k, v) in from {
                *into.entry(k.clone()).or_default() += v;
            }
        };
        for p in parts {
            m.messages += p.messages;
            m.malformed_frames += p.malformed_frames;
            m.connect_attempts += p.connect_attempts;
            m.connects += p.connects;
            m.reconnects += p.reconnects;
            m.failures += p.failures;
            m.heartbeat_timeouts += p.heartbeat_timeouts;
            m.gaps += p.gaps;
            m.missing_ids += p.missing_ids;
            m.duplicates += p.duplicates;
            m.sequence_restarts += p.sequence_restarts;
            m.market_events += p.market_events;
            for (k, v) in &p.messages_by_stream {
                *m.messages_by_stream.entry(k.clone()).or_default() += v;
            }
            m.stalls += p.stalls;
            m.rollovers += p.rollovers;
            m.server_errors += p.server_errors;
            m.unmatched_pongs += p.unmatched_pongs;
            m.last_rtt_ms = m.last_rtt_ms.max(p.last_rtt_ms);
            m.uptime_ms += p.uptime_ms;
            m.downtime_ms += p.downtime_ms;
            m.current_outage_ms = m.current_outage_ms.max(p.current_outage_ms);
            m.longest_outage_ms = m.longest_outage_ms.max(p.longest_outage_ms);
            m.current_backoff_ms = m.current_backoff_ms.max(p.current_backoff_ms);
            m.consecutive_failures = m.consecutive_failures.max(p.consecutive_failures);
            add(&mut m.failures_by_class, &p.failures_by_class);
            add(&mut m.failures_by_error, &p.failures_by_error);
            m.last_message_at_ms = m.last_message_at_ms.max(p.last_message_at_ms);
            m.patterns.extend(p.patterns.iter().filter(|x| !m.patterns.contains(x)).cloned().collect::<Vec<_>>());
        }
        m.success_rate = if m.connect_attempts == 0 { 0.0 } else { m.connects as f64 / m.connect_attempts as f64 };
        m.last_error = parts
            .iter()
            .filter(|p| p.last_error.is_some())
            .max_by_key(|p| p.history.last().map(|r| r.at))
            .and_then(|p| p.last_error.clone());
        m.history = ReconnectHistory::merged(parts.iter().map(|p| &p.history));
        m
    }

    /// The stats as one JSON object (what `--stats-json` writes).
    pub fn to_json(&self) -> String {
        // Plain counters, strings and maps with string keys: serialization cannot fail; fall back to
        // an error object rather than panic if a future field ever makes it fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_sums_counters_and_keeps_the_worst_gauges() {
        use crate::time::Timestamp;
        use std::time::Duration;
        let mut a =
            ConnectionStats { messages: 10, connects: 1, connect_attempts: 2, uptime_ms: 500, ..Default::default() };
        a.longest_outage_ms = 30;
        a.failures_by_class.insert("transient".into(), 1);
        a.last_error = Some("reset".into());
        a.history.start(Timestamp::from_millis(5), Duration::ZERO);
        let mut b =
            ConnectionStats { messages: 7, connects: 1, connect_attempts: 1, uptime_ms: 400, ..Default::default() };
        b.longest_outage_ms = 90;
        b.failures_by_class.insert("transient".into(), 2);
        b.last_error = Some("eof".into());
        b.history.start(Timestamp::from_millis(1), Duration::ZERO);
        b.history.start(Timestamp::from_millis(9), Duration::ZERO);
        assert_eq!(ConnectionStats::merged(std::slice::from_ref(&a)), a);
        let m = ConnectionStats::merged(&[a.clone(), b.clone()]);
        assert_eq!((m.messages, m.connects, m.connect_attempts, m.uptime_ms), (17, 2, 3, 900));
        assert_eq!((m.longest_outage_ms, m.success_rate), (90, 2.0 / 3.0));
        assert_eq!(m.failures_by_class["transient"], 3);
        // b attempted last (at 9 ms).
        assert_eq!(m.last_error.as_deref(), Some("eof"));
        let at: Vec<u64> = m.history.iter().map(|r| r.at.as_millis()).collect();
        assert_eq!(at, vec![1, 5, 9]);
    }

    #[test]
    fn json_has_the_contract_keys() {
        let json: serde_json::Value = serde_json::from_str(&ConnectionStats::default().to_json()).unwrap();
        for key in [
            "messages",
            "malformed_frames",
            "connect_attempts",
            "connects",
            "reconnects",
            "heartbeat_timeouts",
            "gaps",
            "duplicates",
            "uptime_ms",
            "downtime_ms",
            "last_error",
            "history",
            "stalls",
            "messages_by_stream",
            "current_backoff_ms",
            "success_rate",
            "longest_outage_ms",
            "missing_ids",
        ] {
            assert!(json.get(key).is_some(), "missing key {key}");
        }
        assert!(json["history"].is_array());
    }

    #[test]
    fn older_json_without_new_keys_loads() {
        let s: ConnectionStats = serde_json::from_str(r#"{"messages": 3, "connects": 1}"#).unwrap();
        assert_eq!((s.messages, s.connects, s.gaps), (3, 1, 0));
    }
}
