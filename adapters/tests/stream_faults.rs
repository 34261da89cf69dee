//! `keel stream`'s library entry point against the embedded exchange: real TLS on loopback with
//! the exchange's own CA, short intervals, every run bounded by a duration or a message count.

mod common;

use common::{exchange, recorded_ids, tmp};

use keel::exchange::{ConnectionInfo, ExchangeHandle, Fault, FaultPlan};
use keel::stream::{StopCause, StreamOptions, StreamReport, stream};
use keel_core::classify::{ErrorClass, TransportError};
use keel_core::config::Config;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const AGG: &str = "btcusdt@aggTrade";

fn config(ex: &ExchangeHandle, dir: &Path, streams: &[&str]) -> Config {
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), streams).unwrap();
    cfg.stream.stall_after_ms = 3_000;
    cfg.tls.handshake_timeout_ms = 3_000;
    cfg.reconnect.initial_delay_ms = 50;
    cfg.reconnect.max_delay_ms = 200;
    cfg.reconnect.jitter = 0.0;
    cfg.reconnect.rate_limit_floor_ms = 400;
    // Pings every 600 ms keep the heartbeat's writes in play during the short runs; 500 ms for the
    // pong leaves room for a loaded CI machine (a false timeout would drop frames in flight and
    // break the exact counts below).
    cfg.heartbeat.ping_interval_ms = 600;
    cfg.heartbeat.pong_timeout_ms = 500;
    // These tests check that gaps are reported and the files hold exactly what the connection
    // passed on; with backfill off the recovery abandons each gap at once and passes events
    // straight through (zero_gap.rs tests the backfill against the exchange's REST API).
    cfg.rest.backfill = false;
    cfg
}

fn run(cfg: Config, duration_ms: u64, max_messages: Option<u64>) -> StreamReport {
    let opts = StreamOptions {
        seed: 7,
        duration: Some(Duration::from_millis(duration_ms)),
        max_messages,
        record: true,
        ..StreamOptions::default()
    };
    smol::block_on(stream(cfg, opts)).unwrap()
}

/// Files hold every event the client reported, none twice, in order, and the ids missing between
/// the first and the last are exactly the gaps the client reported.
fn check_file_against_report(dir: &Path, report: &StreamReport) {
    let ids = recorded_ids(dir, AGG);
    assert_eq!(ids.len() as u64, report.market_events[AGG], "one row per reported event");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increasing (no duplicate, no reordering)");
    let mut expected_missing = BTreeSet::new();
    for w in ids.windows(2) {
        expected_missing.extend(w[0] + 1..w[1]);
    }
    let mut reported = BTreeSet::new();
    for g in report.gaps.iter().filter(|g| g.stream == AGG) {
        reported.extend(g.first_missing..=g.last_missing);
    }
    assert_eq!(reported, expected_missing, "gaps reported == ids missing in the file");
}

fn infos_settled(ex: &ExchangeHandle) -> Vec<ConnectionInfo> {
    std::thread::sleep(Duration::from_millis(150));
    ex.connections()
}

#[test]
fn normal_run_records_everything_and_closes_cleanly() {
    let ex = exchange(20, FaultPlan::default());
    let dir = tmp("normal");
    let report = run(config(&ex, &dir, &[AGG, "btcusdt@kline_1m"]), 10_000, Some(60));
    assert_eq!(report.cause, StopCause::MaxMessages);
    assert!(report.gave_up.is_none());
    assert_eq!((report.stats.reconnects, report.stats.gaps, report.stats.malformed_frames), (0, 0, 0));
    assert!(report.stats.market_events >= 60);
    assert_eq!(report.rows_written, report.stats.market_events);
    assert_eq!(report.files.len(), 2);
    check_file_against_report(&dir, &report);
    let infos = infos_settled(&ex);
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].path, format!("/stream?streams={AGG}/btcusdt@kline_1m"));
    // The client sent a close frame: the exchange saw a clean close, not a dropped socket.
    assert_eq!(infos[0].ended.as_deref(), Some(r#"ClientGone("client sent close")"#));
}

#[test]
fn reset_reconnects_with_the_same_subscriptions_and_reports_the_gap() {
    let ex = exchange(20, FaultPlan::default().on(0, Fault::Reset { after: 15 }));
    let dir = tmp("reset");
    let report = run(config(&ex, &dir, &[AGG, "ethusdt@trade"]), 1_500, None);
    assert!(report.gave_up.is_none());
    assert!(
        matches!(report.disconnects.first().map(|d| &d.error), Some(TransportError::Reset(_))),
        "{:?}",
        report.disconnects
    );
    let infos = infos_settled(&ex);
    assert!(infos.len() >= 2, "{infos:?}");
    assert_eq!(infos[1].subscriptions, infos[0].subscriptions);
    assert_eq!(infos[1].path, infos[0].path);
    // The gap the client reported is exactly what the exchange produced while it was away.
    let skipped = ex.skipped(AGG);
    assert!(!skipped.is_empty());
    let reported: Vec<(u64, u64)> =
        report.gaps.iter().filter(|g| g.stream == AGG).map(|g| (g.first_missing, g.last_missing)).collect();
    assert_eq!(reported, skipped);
    check_file_against_report(&dir, &report);
}

#[test]
fn stall_is_detected_by_the_heartbeat_and_the_client_reconnects() {
    let ex = exchange(20, FaultPlan::default().on(0, Fault::Stall { after: 10 }));
    let dir = tmp("stall");
    let mut cfg = config(&ex, &dir, &[AGG]);
    // The heartbeat is what this test measures: a short one, so that the stall is seen quickly.
    cfg.heartbeat.ping_interval_ms = 300;
    cfg.heartbeat.pong_timeout_ms = 200;
    let report = run(cfg, 2_000, None);
    assert!(report.stats.heartbeat_timeouts >= 1, "{:?}", report.stats);
    let infos = infos_settled(&ex);
    assert!(infos.len() >= 2);
    // Stalled after ~10 ticks of 20 ms; dead after ping interval (300) + pong timeout (200) at
    // most; then a 50 ms backoff. Generous slack for a loaded machine.
    let detected_after = infos[1].accepted_ms - infos[0].accepted_ms;
    assert!(detected_after <= 300 + 200 + 50 + 200 + 400, "reconnected after {detected_after} ms");
    assert!(infos[1].frames_sent > 0, "data flows again on the new connection");
    check_file_against_report(&dir, &report);
}

#[test]
fn malformed_frames_are_counted_and_the_stream_continues() {
    let ex = exchange(20, FaultPlan { every_connection: vec![Fault::Malformed { every: 5 }], ..FaultPlan::default() });
    let dir = tmp("malformed");
    let report = run(config(&ex, &dir, &[AGG]), 10_000, Some(50));
    assert_eq!(report.cause, StopCause::MaxMessages);
    assert!(report.stats.malformed_frames >= 9, "{:?}", report.stats);
    assert_eq!((report.stats.reconnects, report.stats.gaps), (0, 0));
    check_file_against_report(&dir, &report);
}

#[test]
fn close_1008_waits_the_rate_limit_before_reconnecting() {
    let ex = exchange(20, FaultPlan::default().on(0, Fault::Close { after: 10, code: 1008 }));
    let dir = tmp("1008");
    let report = run(config(&ex, &dir, &[AGG]), 1_500, None);
    let d = report.disconnects.first().expect("a disconnection");
    assert!(matches!(d.error, TransportError::ServerClose { code: 1008, .. }), "{d:?}");
    assert_eq!(d.class, ErrorClass::RateLimited { wait: Duration::from_millis(400) });
    assert!(d.retry_in >= Duration::from_millis(400));
    let infos = infos_settled(&ex);
    assert!(infos.len() >= 2, "reconnected after the wait");
    let waited = infos[1].accepted_ms - infos[0].accepted_ms;
    assert!(waited >= 400, "reconnected after {waited} ms, before the 400 ms rate-limit wait");
    check_file_against_report(&dir, &report);
}

#[test]
fn http_429_on_upgrade_waits_retry_after_then_connects() {
    let ex = exchange(20, FaultPlan::default().on(0, Fault::RejectUpgrade { status: 429, retry_after_secs: Some(1) }));
    let dir = tmp("429");
    let report = run(config(&ex, &dir, &[AGG]), 10_000, Some(20));
    assert_eq!(report.cause, StopCause::MaxMessages);
    let d = report.disconnects.first().expect("the refused attempt");
    assert_eq!(d.error, TransportError::HttpStatus { status: 429, retry_after: Some(Duration::from_secs(1)) });
    assert_eq!(d.class, ErrorClass::RateLimited { wait: Duration::from_secs(1) });
    let infos = infos_settled(&ex);
    assert_eq!(infos[0].rejected, Some(429));
    let waited = infos[1].accepted_ms - infos[0].accepted_ms;
    assert!(waited >= 1_000, "retried after {waited} ms despite Retry-After: 1");
    check_file_against_report(&dir, &report);
}

#[test]
fn server_shutdown_notice_rolls_over_to_a_new_connection() {
    let ex = exchange(20, FaultPlan::default().on(0, Fault::Cutoff { after: Duration::from_millis(600) }));
    let dir = tmp("cutoff");
    let mut cfg = config(&ex, &dir, &[AGG]);
    // The rollover happens without backoff only on a stable connection.
    cfg.reconnect.stable_after_ms = 100;
    let report = run(cfg, 1_500, None);
    assert!(report.stats.rollovers >= 1, "{:?}", report.stats);
    assert!(report.gave_up.is_none());
    let infos = infos_settled(&ex);
    assert!(infos.len() >= 2);
    check_file_against_report(&dir, &report);
}

#[test]
fn a_message_over_the_size_limit_drops_the_transport_and_the_client_reconnects() {
    let ex = exchange(20, FaultPlan::default().on(0, Fault::Oversize { after: 5, bytes: 100_000 }));
    let dir = tmp("oversize");
    let mut cfg = config(&ex, &dir, &[AGG]);
    cfg.stream.max_message_bytes = 64 * 1024;
    let report = run(cfg, 1_200, None);
    let d = report.disconnects.first().expect("a disconnection");
    assert!(matches!(d.error, TransportError::MessageTooLarge { max: 65_536, size } if size > 65_536), "{:?}", d.error);
    assert!(infos_settled(&ex).len() >= 2);
    check_file_against_report(&dir, &report);
}
