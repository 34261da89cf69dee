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
