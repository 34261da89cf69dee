//! A server that restarts its id numbering (the embedded exchange's `restart:N` fault) on loopback:
//! the real stream loop, TLS, REST and recorder. keel must notice, say so, start the stream's
//! tracking and recovery over, and record every event after the restart: before, every event was
//! dropped as a duplicate until the ids passed the old ones, and the feed went silent.

mod common;

use common::{exchange, recorded_ids, tmp};

use keel::exchange::{ExchangeHandle, Fault, FaultPlan};
use keel::stream::{StreamOptions, StreamReport, stream};
use keel_core::config::Config;
use keel_core::recovery::RecoveryOutput;
use std::path::Path;
use std::time::Duration;

const AGG: &str = "btcusdt@aggTrade";
const DEPTH: &str = "btcusdt@depth@100ms";

fn config(ex: &ExchangeHandle, dir: &Path) -> Config {
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), &[AGG, DEPTH]).unwrap();
    cfg.stream.stall_after_ms = 3_000;
    cfg.tls.handshake_timeout_ms = 3_000;
    cfg.reconnect.initial_delay_ms = 200;
    cfg.reconnect.jitter = 0.0;
    // Pings every 600 ms keep the heartbeat's writes in play during the short runs; 500 ms for the
    // pong leaves room for a loaded CI machine (a false timeout would drop frames in flight and
    // break the exact counts below).
    cfg.heartbeat.ping_interval_ms = 600;
    cfg.heartbeat.pong_timeout_ms = 500;
    cfg
}

fn run(cfg: Config, metrics: &keel::metrics::Metrics) -> StreamReport {
    let opts = StreamOptions {
        seed: 7,
        duration: Some(Duration::from_millis(2_500)),
        record: true,
        metrics: Some(metrics.clone()),
        ..StreamOptions::default()
    };
    smol::block_on(stream(cfg, opts)).unwrap()
}

/// The recorded ids split where they start over: (old numbering, new numbering), each continuous.
fn split_at_restart(ids: &[u64]) -> (&[u64], &[u64]) {
    let drops: Vec<usize> = ids.windows(2).enumerate().filter(|(_, w)| w[1] <= w[0]).map(|(i, _)| i + 1).collect();
    assert_eq!(drops.len(), 1, "exactly one place where the ids start over: {drops:?}");
    let (old, new) = ids.split_at(drops[0]);
    for part in [old, new] {
        assert!(part.windows(2).all(|w| w[1] == w[0] + 1), "not continuous: {part:?}");
    }
    (old, new)
}

fn assert_book_resynced(report: &StreamReport) {
    let count = |f: fn(&RecoveryOutput) -> bool| report.recovery_log.iter().filter(|o| f(o)).count();
    assert_eq!(count(|o| matches!(o, RecoveryOutput::BookResync { reason, .. } if reason.contains("restarted"))), 1);
    assert_eq!(count(|o| matches!(o, RecoveryOutput::BookSynced { .. })), 2, "{:#?}", report.recovery_log);
    let top = &report.books["BTCUSDT"];
    let (bid, ask) = (top.best_bid.as_ref().unwrap(), top.best_ask.as_ref().unwrap());
    assert!(bid.0.parse::<f64>().unwrap() < ask.0.parse::<f64>().unwrap(), "{top:?}");
}

#[test]
fn a_restart_mid_connection_is_reported_and_every_event_after_it_is_recorded() {
    let ex = exchange(10, FaultPlan::default().on(0, Fault::Restart { after: 60 }));
    let dir = tmp("midway");
    let metrics = keel::metrics::Metrics::new();
    let report = run(config(&ex, &dir), &metrics);

    let ids = recorded_ids(&dir, AGG);
    let (old, new) = split_at_restart(&ids);
    assert!(old[0] > 1_000_000 && old.len() >= 10, "{} old ids from {}", old.len(), old[0]);
    assert_eq!(new[0], 1, "the new numbering is recorded from its first id");
    assert!(new.len() > 50, "the feed carries on after the restart: {} new ids", new.len());
    assert_eq!(ids.len() as u64, report.market_events[AGG]);

    let restarts: Vec<(&str, u64, u64)> =
        report.restarts.iter().map(|r| (r.stream.as_str(), r.last, r.first)).collect();
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    assert!(restarts.contains(&(AGG, *old.last().unwrap(), 1)), "{restarts:?}");
    assert!(restarts.iter().any(|(s, last, first)| *s == DEPTH && *last > 9_000_000 && *first == 1), "{restarts:?}");
    assert_eq!(report.stats.sequence_restarts, 2);
    assert_eq!(report.stats.reconnects, 0, "a restart is not a reason to reconnect");
    assert_eq!(report.recovery.abandoned_ids, 0);
    assert_book_resynced(&report);
    assert!(metrics.render().contains("keel_sequence_restarts_total{connection=\"s0\"} 2\n"));
}

#[test]
fn an_exchange_restarted_while_keel_reconnects_is_detected_on_the_first_event() {
    // The exchange restarts its numbering and drops the connection at the same frame, as a restarted
    // process would: the first event of the next connection is already in the new numbering.
    let plan = FaultPlan::default().on(0, Fault::Restart { after: 60 }).on(0, Fault::Reset { after: 60 });
    let ex = exchange(10, plan);
    let dir = tmp("reconnect");
    let metrics = keel::metrics::Metrics::new();
    let report = run(config(&ex, &dir), &metrics);

    assert!(report.stats.reconnects >= 1);
    let ids = recorded_ids(&dir, AGG);
    let (old, new) = split_at_restart(&ids);
    assert!(old[0] > 1_000_000 && new[0] < 1_000, "old from {}, new from {}", old[0], new[0]);
    assert!(new.len() > 50, "the feed carries on after the restart: {} new ids", new.len());
    let agg: Vec<_> = report.restarts.iter().filter(|r| r.stream == AGG).collect();
    assert_eq!(agg.len(), 1, "{:?}", report.restarts);
    assert_eq!((agg[0].last, agg[0].first), (*old.last().unwrap(), new[0]));
    assert_eq!(report.stats.sequence_restarts, 2);
    assert_book_resynced(&report);
}
