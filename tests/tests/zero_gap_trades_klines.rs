//! Zero gap for `@trade` ids and closed klines, end to end: the real stream loop, recovery machine and
//! REST client against the embedded exchange (real TLS on 127.0.0.1) with a reset fault. The reset
//! and a reconnect delay longer than a kline interval cost trade ids and at least one closed 1s kline;
//! both come back over REST (`/api/v3/historicalTrades`, `/api/v3/klines`) and are recorded in order.

use keel::exchange::{Exchange, ExchangeConfig, ExchangeHandle, Fault, FaultPlan};
use keel::stream::{StreamOptions, stream};
use std::path::Path;
use std::time::Duration;

const TRADE: &str = "btcusdt@trade";
const KLINE: &str = "btcusdt@kline_1s";

/// The rows of every day file of `stream` under `dir/data`, in order, with the header checked.
fn rows(dir: &Path, stream: &str, header_starts: &str) -> Vec<Vec<String>> {
    let sdir = dir.join("data").join(stream);
    let mut files: Vec<_> = std::fs::read_dir(&sdir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with(header_starts), "{stream}: header {header}");
        out.extend(lines.map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>()));
    }
    out
}

/// Streams `streams` for `run_ms` from an exchange whose clock runs `clock_speed` times real time
/// and which resets the first connection after 150 frames; the reconnect delay is 1.3 s, longer
/// than a kline interval. Returns the exchange (still up, for its records), the scratch directory
/// and the report.
fn stream_through_a_reset(
    name: &str,
    streams: &[&str],
    clock_speed: u32,
    run_ms: u64,
) -> (ExchangeHandle, std::path::PathBuf, keel::stream::StreamReport) {
    let ex = Exchange::start(ExchangeConfig {
        tick: Duration::from_millis(10),
        clock_speed,
        ping_interval: Duration::from_millis(400),
        faults: FaultPlan::default().on(0, Fault::Reset { after: 150 }),
        ..ExchangeConfig::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("keel-tests-zero-gap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), streams).unwrap();
    cfg.stream.stall_after_ms = 3_000;
    cfg.tls.handshake_timeout_ms = 3_000;
    // Away for longer than a kline interval: at least one closed kline is missed live.
    cfg.reconnect.initial_delay_ms = 1_300;
    cfg.reconnect.max_delay_ms = 1_300;
    cfg.reconnect.jitter = 0.0;
    // Pings every 600 ms keep the heartbeat's writes in play during the short runs; 500 ms for the
    // pong leaves room for a loaded CI machine (a false timeout would drop frames in flight and
    // break the exact counts below).
    cfg.heartbeat.ping_interval_ms = 600;
    cfg.heartbeat.pong_timeout_ms = 500;
    let opts = StreamOptions {
        seed: 7,
        duration: Some(Duration::from_millis(run_ms)),
        record: true,
        ..StreamOptions::default()
    };
    let report = smol::block_on(stream(cfg, opts)).unwrap();
    (ex, dir, report)
}

#[test]
fn trade_ids_and_closed_klines_survive_a_reset() {
    let (ex, dir, report) = stream_through_a_reset("tk", &[TRADE, KLINE], 1, 4_000);
    assert!(report.stats.reconnects >= 1, "the reset must have happened");

    // Trades: every id from the first recorded one, once, in order; the ones sent on no connection included.
    let trades = rows(&dir, TRADE, "event_time,trade_id");
    let ids: Vec<u64> = trades.iter().map(|r| r[1].parse().unwrap()).collect();
    assert!(ids.len() > 50, "too few trades recorded: {}", ids.len());
    let expected: Vec<u64> = (ids[0]..ids[0] + ids.len() as u64).collect();
    assert!(ids == expected, "trade ids not continuous: {:?}", ids.windows(2).find(|w| w[1] != w[0] + 1));
    let skipped = ex.skipped(TRADE);
    let missed: u64 = skipped.iter().map(|(a, b)| b - a + 1).sum();
    assert!(missed > 0, "the reset must have cost trade ids (skipped {skipped:?})");
    for (a, b) in &skipped {
        assert!(ids.contains(a) && ids.contains(b), "skipped trades {a}..={b} recorded");
    }
    let r = &report.recovery;
    assert_eq!((r.kind("trade").backfilled, r.kind("trade").abandoned), (missed, 0), "{r:?}");

    // Klines: every closed kline from the first one recorded, once, one second apart, and the
    // one(s) missed during the outage fetched over REST.
    let klines = rows(&dir, KLINE, "event_time,open_time");
    let closed: Vec<u64> = klines.iter().filter(|r| r[10] == "1").map(|r| r[1].parse().unwrap()).collect();
    assert!(closed.len() >= 2, "too few closed klines: {closed:?}");
    for w in closed.windows(2) {
        assert_eq!(w[1], w[0] + 1_000, "closed klines not continuous: {closed:?}");
    }
    assert!(r.kind("kline").backfilled >= 1, "no kline was backfilled: {r:?}");
    assert_eq!((r.kind("kline").abandoned, r.held_events), (0, 0), "{r:?}");
    // Running updates (x=false) are never of an interval already closed.
    let mut last_closed = 0;
    for row in &klines {
        let open: u64 = row[1].parse().unwrap();
        if row[10] == "1" {
            last_closed = open;
        } else {
            assert!(open > last_closed, "a running kline of {open} after that interval closed");
        }
    }
    ex.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Binance's UTC+8 kline stream (`<symbol>@kline_<interval>@+08:00`) with day klines, which open at
/// local midnight (16:00 UTC): the exchange's clock runs a day per second, so the reset and a
/// reconnect delay of 1.3 s cost at least one closed day, fetched over `/api/v3/klines` with
/// `timeZone=+08:00` (escaped `%2B08%3A00`) and recorded in order.
#[test]
fn utc8_klines_survive_a_reset() {
    const KLINE8: &str = "btcusdt@kline_1d@+08:00";
    const DAY: u64 = 86_400_000;
    let (ex, dir, report) = stream_through_a_reset("k8", &[KLINE8], 86_400, 3_500);
    assert!(report.stats.reconnects >= 1, "the reset must have happened");
    let klines = rows(&dir, KLINE8, "event_time,open_time");
    let closed: Vec<u64> = klines.iter().filter(|r| r[10] == "1").map(|r| r[1].parse().unwrap()).collect();
    assert!(closed.len() >= 2, "too few closed klines: {closed:?}");
    for w in closed.windows(2) {
        assert_eq!(w[1], w[0] + DAY, "closed day klines not continuous: {closed:?}");
    }
    assert!(closed.iter().all(|t| t % DAY == 16 * 3_600_000), "not opened at 00:00 UTC+8: {closed:?}");
    let r = &report.recovery;
    assert!(r.kind("kline").backfilled >= 1, "no kline was backfilled: {r:?}");
    assert_eq!((r.kind("kline").abandoned, r.held_events), (0, 0), "{r:?}");
    let asked: Vec<_> = ex.rest_requests().into_iter().filter(|q| q.path.starts_with("/api/v3/klines?")).collect();
    assert!(
        !asked.is_empty() && asked.iter().all(|q| q.path.ends_with("&timeZone=%2B08%3A00") && q.status == 200),
        "{asked:?}"
    );
    ex.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
