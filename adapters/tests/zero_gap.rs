//! Zero gap on loopback (issue 9): the real stream loop + Recovery + REST client against the
//! embedded exchange's streams and REST API, real TLS, real files.

mod common;

use common::{exchange, recorded_ids, tmp};

use keel::exchange::{ExchangeHandle, Fault, FaultPlan, RestFault};
use keel::stream::{StreamOptions, StreamReport, stream};
use keel_core::config::Config;
use keel_core::recovery::RecoveryOutput;
use std::path::Path;
use std::time::Duration;

const AGG: &str = "btcusdt@aggTrade";

fn config(ex: &ExchangeHandle, dir: &Path, streams: &[&str]) -> Config {
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), streams).unwrap();
    cfg.stream.stall_after_ms = 3_000;
    cfg.tls.handshake_timeout_ms = 3_000;
    cfg.reconnect.initial_delay_ms = 300;
    cfg.reconnect.max_delay_ms = 600;
    cfg.reconnect.jitter = 0.0;
    // Pings every 600 ms keep the heartbeat's writes in play during the short runs; 500 ms for the
    // pong leaves room for a loaded CI machine (a false timeout would drop frames in flight and
    // break the exact counts below).
    cfg.heartbeat.ping_interval_ms = 600;
    cfg.heartbeat.pong_timeout_ms = 500;
    cfg
}

fn run(cfg: Config, duration_ms: u64) -> StreamReport {
    run_with(cfg, duration_ms, None)
}

fn run_with(cfg: Config, duration_ms: u64, metrics: Option<keel::metrics::Metrics>) -> StreamReport {
    let opts = StreamOptions {
        seed: 7,
        duration: Some(Duration::from_millis(duration_ms)),
        record: true,
        metrics,
        ..StreamOptions::default()
    };
    smol::block_on(stream(cfg, opts)).unwrap()
}

/// Every id between the first and the last recorded, once, in order.
fn assert_complete(ids: &[u64]) {
    assert!(ids.len() > 10, "too few events recorded: {}", ids.len());
    let first = ids[0];
    let expected: Vec<u64> = (first..first + ids.len() as u64).collect();
    if ids != expected.as_slice() {
        let bad = ids.windows(2).find(|w| w[1] != w[0] + 1).unwrap();
        panic!("recorded ids not continuous: ...{} then {}... ({} ids)", bad[0], bad[1], ids.len());
    }
}

#[test]
fn a_reset_mid_stream_is_backfilled() {
    let ex = exchange(10, FaultPlan::default().on(0, Fault::Reset { after: 60 }));
    let dir = tmp("reset");
    let metrics = keel::metrics::Metrics::new();
    let report = run_with(config(&ex, &dir, &[AGG]), 3_000, Some(metrics.clone()));
    let skipped = ex.skipped(AGG);
    let missed: u64 = skipped.iter().map(|(a, b)| b - a + 1).sum();
    assert!(missed > 0, "the reset must have cost ids (skipped {skipped:?})");
    assert!(report.stats.reconnects >= 1);

    let ids = recorded_ids(&dir, AGG);
    assert_complete(&ids);
    assert_eq!(ids.len() as u64, report.market_events[AGG]);
    for (a, b) in &skipped {
        assert!(ids.contains(a) && ids.contains(b), "skipped {a}..={b} recorded");
    }
    // Stats say how many were backfilled: exactly the ids the exchange sent on no connection.
    assert_eq!(report.backfilled_events.get(AGG).copied(), Some(missed));
    assert_eq!(report.recovery.backfilled_trades, missed);
    assert_eq!(report.recovery.abandoned_ids, 0);
    assert!(
        report.recovery_log.iter().any(|o| matches!(o, RecoveryOutput::Backfilled { stream, .. } if stream == AGG))
    );
    // --stats-json carries the recovery next to the connection counters.
    let v: serde_json::Value = serde_json::from_str(&report.stats_json()).unwrap();
    assert_eq!(v["recovery"]["backfilled_trades"].as_u64(), Some(missed));
    assert_eq!(v["reconnects"].as_u64(), Some(report.stats.reconnects));
    // And so do the metrics.
    let text = metrics.render();
    assert!(text.contains(&format!("keel_backfilled_trades_total{{kind=\"aggTrade\"}} {missed}\n")), "{text}");
    assert!(text.contains("keel_backfilled_trades_total{kind=\"kline\"} 0\n"), "{text}");
    assert!(text.contains("keel_backfill_abandoned_ids_total{kind=\"aggTrade\"} 0\n"), "{text}");
    assert!(text.contains("keel_book_resyncs_total 0\n"), "{text}");
}

#[test]
fn a_dropped_depth_diff_resyncs_that_symbol_alone() {
    let ex = exchange(20, FaultPlan::default().on(0, Fault::DropDepth { after: 40 }));
    let dir = tmp("depth");
    let report = run(config(&ex, &dir, &["btcusdt@depth@100ms", "ethusdt@depth"]), 2_500);
    let dropped = ex.connections()[0].dropped_depth.clone();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let hit = dropped[0].0.split('@').next().unwrap().to_ascii_uppercase();
    let other = if hit == "BTCUSDT" { "ETHUSDT" } else { "BTCUSDT" };
    let resyncs: Vec<&str> = report
        .recovery_log
        .iter()
        .filter_map(|o| match o {
            RecoveryOutput::BookResync { symbol, .. } => Some(symbol.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(resyncs, vec![hit.as_str()], "{:#?}", report.recovery_log);
    let syncs = |sym: &str| {
        report
            .recovery_log
            .iter()
            .filter(|o| matches!(o, RecoveryOutput::BookSynced { symbol, .. } if symbol == sym))
            .count()
    };
    assert_eq!(syncs(&hit), 2, "first sync, then the resync");
    assert_eq!(syncs(other), 1, "the other book is never resynced");
    assert_eq!(report.recovery.book_resyncs, 1);
    assert_eq!(report.stats.reconnects, 0, "a dropped diff is not a reason to reconnect");
    for sym in ["BTCUSDT", "ETHUSDT"] {
        let top = &report.books[sym];
        let (bid, ask) = (top.best_bid.as_ref().unwrap(), top.best_ask.as_ref().unwrap());
        assert!(bid.0.parse::<f64>().unwrap() < ask.0.parse::<f64>().unwrap(), "{sym}: {top:?}");
    }
}

#[test]
fn a_rollover_under_load_delivers_every_id_once() {
    // 2 ms ticks on two symbols (about 500 aggTrades a second each, plus trades): the cutoff lands
    // while frames are in flight on the old transport.
    // serverShutdown comes 1 s before the close; the connection is stable by then (a notice on an
    // unstable one is a failure, not a rollover).
    let faults = FaultPlan::default().on(0, Fault::Cutoff { after: Duration::from_millis(1_800) });
    let ex = exchange(2, faults);
    let dir = tmp("rollover");
    let mut cfg = config(&ex, &dir, &[AGG, "ethusdt@aggTrade", "btcusdt@trade"]);
    cfg.reconnect.stable_after_ms = 500;
    let report = run(cfg, 3_000);
    assert!(report.stats.rollovers >= 1, "no rollover: {:?}", report.stats);
    for stream in [AGG, "ethusdt@aggTrade"] {
        let ids = recorded_ids(&dir, stream);
        assert_complete(&ids);
        assert!(ids.len() > 500, "{stream}: only {} ids", ids.len());
    }
    assert_eq!(report.recovery.abandoned_ids, 0);
}

#[test]
fn rest_429_is_obeyed() {
    let ex = exchange(10, FaultPlan::default().on(0, Fault::Reset { after: 40 }));
    ex.rest_fault_next(vec![RestFault::RateLimited { retry_after_secs: Some(2) }]);
    let dir = tmp("429");
    let report = run(config(&ex, &dir, &[AGG]), 4_500);
    let log = ex.rest_requests();
    assert!(log.len() >= 2, "{log:?}");
    assert_eq!(log[0].status, 429);
    let wait = log[1].at_ms - log[0].at_ms;
    // Both clocks (the exchange's log and the client's Timestamp) count whole milliseconds: allow 5 ms.
    assert!(wait + 5 >= 2_000, "the next request came {wait} ms after a 429 with Retry-After: 2 ({log:?})");
    assert_eq!(report.recovery.rest_rate_limited, 1);
    assert_complete(&recorded_ids(&dir, AGG));
    assert!(report.recovery.backfilled_trades > 0);
}

#[test]
fn a_run_that_stops_mid_backfill_records_what_it_held_and_reports_the_rest() {
    // The reset's gap is requested, but the answer comes after the run ended: the gap must be
    // reported abandoned and the live trades held behind it recorded, none dropped.
    let ex = exchange(10, FaultPlan::default().on(0, Fault::Reset { after: 60 }));
    ex.rest_fault_next(vec![RestFault::Slow { delay: Duration::from_millis(4_000) }]);
    let dir = tmp("stop-mid-backfill");
    let report = run(config(&ex, &dir, &[AGG]), 2_000);
    let missed: u64 = ex.skipped(AGG).iter().map(|(a, b)| b - a + 1).sum();
    assert!(missed > 0 && report.stats.reconnects >= 1, "the reset must have cost ids");

    let ids = recorded_ids(&dir, AGG);
    assert_eq!(ids.len() as u64, report.market_events[AGG], "every delivered trade is recorded");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "recorded in id order");
    let abandoned: Vec<(u64, u64)> = report
        .recovery_log
        .iter()
        .filter_map(|o| match o {
            RecoveryOutput::Abandoned { stream, first, last, reason } if stream == AGG => {
                assert!(reason.contains("stopped"), "{reason}");
                Some((*first, *last))
            }
            _ => None,
        })
        .collect();
    assert_eq!(abandoned, ex.skipped(AGG), "exactly the skipped ids are reported lost");
    // Recorded ∪ abandoned is every id from the first to the last, once.
    let mut all = ids.clone();
    all.extend(abandoned.iter().flat_map(|&(a, b)| a..=b));
    all.sort_unstable();
    assert_eq!(all, (ids[0]..=*ids.last().unwrap()).collect::<Vec<_>>());
    assert!(ids.last().unwrap() > &abandoned[0].1, "trades held behind the gap were recorded");
    assert_eq!((report.recovery.abandoned_ids, report.recovery.held_events), (missed, 0));
    assert_eq!(report.recovery.backfilled_trades, 0);
}
