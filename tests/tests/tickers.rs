//! `@ticker`, `@ticker_1h` and `@miniTicker`, and the all-market arrays `!miniTicker@arr` and
//! `!ticker_1h@arr`, end to end: the embedded exchange derives them from its own trades, `keel stream`
//! receives them over real TLS on 127.0.0.1, decodes and records them, and every recorded ticker
//! agrees with the aggTrades recorded beside it.

use keel::exchange::{Exchange, ExchangeConfig};
use keel::stream::{StreamOptions, stream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// The header and rows of every day file of `stream`, in order.
fn rows(dir: &Path, stream: &str) -> (String, Vec<Vec<String>>) {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("data").join(stream))
        .unwrap_or_else(|e| panic!("no files for {stream}: {e}"))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let (mut header, mut out) = (String::new(), Vec::new());
    for f in files {
        let text = std::fs::read_to_string(f).expect("read");
        let mut lines = text.lines();
        header = lines.next().expect("header").to_string();
        out.extend(lines.map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>()));
    }
    (header, out)
}

/// The column `name` of `row` under `header`.
fn col<'a>(header: &str, row: &'a [String], name: &str) -> &'a str {
    let i = header.split(',').position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {header}"));
    &row[i]
}

fn price(text: &str) -> f64 {
    text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Records `streams` from `ex` for 3.6 s with no fault and no backfill, checking that nothing was
/// malformed, dropped or stalled; returns the scratch directory holding `data/`, and the report.
fn record_clean(
    ex: &keel::exchange::ExchangeHandle,
    name: &str,
    streams: &[&str],
    seed: u64,
) -> (std::path::PathBuf, keel::stream::StreamReport) {
    let dir = scratch(name);
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), streams).expect("client config");
    cfg.stream.stall_after_ms = 3_000;
    cfg.heartbeat.ping_interval_ms = 1_000;
    cfg.heartbeat.pong_timeout_ms = 500;
    cfg.rest.backfill = false;
    cfg.validate().unwrap_or_else(|e| panic!("{streams:?} are valid configuration: {e}"));
    let opts =
        StreamOptions { seed, duration: Some(Duration::from_millis(3_600)), record: true, ..StreamOptions::default() };
    let report = smol::block_on(stream(cfg, opts)).expect("stream runs");
    assert_eq!((report.stats.malformed_frames, report.stats.reconnects, report.stats.stalls), (0, 0, 0));
    (dir, report)
}

#[test]
fn tickers_decoded_and_recorded_agree_with_the_exchange_trades() {
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(20), ..ExchangeConfig::default() })
        .expect("exchange starts");
    let (dir, report) = record_clean(
        &ex,
        "tickers",
        &["btcusdt@aggTrade", "btcusdt@ticker", "btcusdt@miniTicker", "btcusdt@ticker_1h"],
        3,
    );

    // aggTrades by event time: (price, last trade id). The exchange sends one per symbol and tick,
    // before the tickers of that tick.
    let (h, aggs) = rows(&dir, "btcusdt@aggTrade");
    let mut by_time = BTreeMap::new();
    for r in &aggs {
        let t: u64 = col(&h, r, "event_time").parse().expect("time");
        by_time.insert(t, (col(&h, r, "price").to_string(), col(&h, r, "last_trade_id").parse::<i64>().expect("id")));
    }
    let first_agg = *by_time.keys().next().expect("aggTrades recorded");

    for (stream, has_ids) in [("btcusdt@ticker", true), ("btcusdt@ticker_1h", true), ("btcusdt@miniTicker", false)] {
        let (h, tickers) = rows(&dir, stream);
        assert!(tickers.len() >= 2, "{stream}: a ticker a second for 3.6 s, got {}", tickers.len());
        assert_eq!(report.market_events[stream], tickers.len() as u64, "{stream}: one row per event passed on");
        let times: Vec<u64> = tickers.iter().map(|r| col(&h, r, "event_time").parse().expect("time")).collect();
        // Once a second on the exchange's second boundaries (the first as soon as the stream is in use).
        assert!(times[1] - times[0] <= 1_100, "{stream}: {times:?}");
        for w in times[1..].windows(2) {
            assert!((900..=1_100).contains(&(w[1] - w[0])), "{stream}: once a second: {times:?}");
        }
        let last = if has_ids { "last_price" } else { "close" };
        let mut compared = 0;
        for (r, t) in tickers.iter().zip(&times).filter(|(_, t)| **t >= first_agg) {
            compared += 1;
            let (agg_price, agg_last_id) =
                by_time.range(..=t).next_back().map(|(_, v)| v.clone()).expect("an aggTrade");
            // Same text as the aggTrade's (both are the exchange's integer ticks printed alike).
            assert_eq!(col(&h, r, last), agg_price, "{stream} at {t}: last price = last trade price");
            let seen = by_time.range(..=t).map(|(_, (p, _))| price(p));
            let (lo, hi) = seen.fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p), hi.max(p)));
            assert!(price(col(&h, r, "high")) >= hi && price(col(&h, r, "low")) <= lo, "{stream} at {t}: {r:?}");
            if has_ids {
                assert_eq!(col(&h, r, "last_trade_id").parse::<i64>().expect("id"), agg_last_id, "{stream} at {t}");
                let (first, last, n): (i64, i64, i64) = (
                    col(&h, r, "first_trade_id").parse().expect("id"),
                    col(&h, r, "last_trade_id").parse().expect("id"),
                    col(&h, r, "trades").parse().expect("n"),
                );
                assert_eq!(n, last - first + 1, "{stream}: continuous trade ids");
                assert_eq!(col(&h, r, "close_time"), t.to_string());
            }
        }
        assert!(compared >= 2, "{stream}: only {compared} tickers after the first aggTrade");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn all_market_arrays_record_a_row_per_symbol_that_agrees_with_the_trades() {
    let ex = Exchange::start(ExchangeConfig {
        tick: Duration::from_millis(20),
        symbols: vec!["btcusdt".to_string(), "solusdt".to_string()],
        ..ExchangeConfig::default()
    })
    .expect("exchange starts");
    let (dir, report) = record_clean(&ex, "arrays", &["btcusdt@aggTrade", "!miniTicker@arr", "!ticker_1h@arr"], 4);

    let (h, aggs) = rows(&dir, "btcusdt@aggTrade");
    let by_time: BTreeMap<u64, (String, i64)> = aggs
        .iter()
        .map(|r| {
            let t = col(&h, r, "event_time").parse().expect("time");
            (t, (col(&h, r, "price").to_string(), col(&h, r, "last_trade_id").parse().expect("id")))
        })
        .collect();
    let first_agg = *by_time.keys().next().expect("aggTrades recorded");
    for (stream, last) in [("!miniTicker@arr", "close"), ("!ticker_1h@arr", "last_price")] {
        let (h, elements) = rows(&dir, stream);
        assert!(h.starts_with("symbol,event_time,"), "{stream}: {h}");
        // One frame a second, one row per symbol of the exchange's universe in each: the configured
        // symbols and the default list.
        let mut frames = BTreeMap::<u64, Vec<&str>>::new();
        for r in &elements {
            frames.entry(col(&h, r, "event_time").parse().expect("time")).or_default().push(col(&h, r, "symbol"));
        }
        assert!(frames.len() >= 3, "{stream}: a frame a second for 3.6 s, got {}", frames.len());
        assert_eq!(report.market_events[stream], frames.len() as u64, "{stream}: one event per frame");
        for symbols in frames.values() {
            assert_eq!(symbols, &["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"], "{stream}");
        }
        let mut compared = 0;
        for r in elements.iter().filter(|r| col(&h, r, "symbol") == "BTCUSDT") {
            let t: u64 = col(&h, r, "event_time").parse().expect("time");
            if t < first_agg {
                continue;
            }
            compared += 1;
            let (agg_price, agg_last_id) =
                by_time.range(..=t).next_back().map(|(_, v)| v.clone()).expect("an aggTrade");
            assert_eq!(col(&h, r, last), agg_price, "{stream} at {t}: last price = last trade price");
            if stream == "!ticker_1h@arr" {
                assert_eq!(col(&h, r, "last_trade_id").parse::<i64>().expect("id"), agg_last_id, "{stream} at {t}");
            }
        }
        assert!(compared >= 2, "{stream}: only {compared} BTCUSDT rows after the first aggTrade");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
