//! A restarted `keel stream` continues its recording: what traded while keel was not running is
//! backfilled over REST, so the aggTrade file holds every id once, in order, across both runs, and
//! the missed closed 1s klines are fetched too. Before, the second run started at the live ids and
//! reported no gap: a hole as long as the downtime, silently. Real TLS against the embedded
//! exchange, real files, the real stream loop twice on one output directory.

use keel::exchange::{Exchange, ExchangeConfig, ExchangeHandle};
use keel::stream::{StreamOptions, StreamReport, stream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const AGG: &str = "btcusdt@aggTrade";
const KLINE: &str = "btcusdt@kline_1s";

/// The rows of every day file of `stream` under `dir`, in order.
fn rows(dir: &Path, stream: &str) -> Vec<Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(stream)).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|f| f.extension().is_some_and(|e| e == "csv"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        out.extend(text.lines().skip(1).map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>()));
    }
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-tests-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One recording run of `ms` against `ex` into `dir/data`.
fn run(ex: &ExchangeHandle, dir: &Path, streams: &[&str], ms: u64) -> StreamReport {
    let cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), streams).unwrap();
    let opts = StreamOptions { seed: 3, duration: Some(Duration::from_millis(ms)), record: true, ..Default::default() };
    smol::block_on(stream(cfg, opts)).unwrap()
}

#[test]
fn a_second_run_backfills_what_traded_between_runs() {
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(10), ..ExchangeConfig::default() }).unwrap();
    let dir = scratch("gap");
    let data = dir.join("data");
    let first = run(&ex, &dir, &[AGG, KLINE], 1_500);
    let after_first = rows(&data, AGG).len();
    assert!(after_first > 20, "the first run recorded trades: {after_first}");
    let last_open_first: u64 = rows(&data, KLINE).last().unwrap()[1].parse().unwrap();
    // Down for 2.5 s: the exchange trades on (and closes two or more 1s klines) without us.
    std::thread::sleep(Duration::from_millis(2_500));
    let second = run(&ex, &dir, &[AGG, KLINE], 1_500);
    assert_eq!((first.resumed.len(), second.resumed.clone()), (0, vec![AGG.to_string(), KLINE.to_string()]));
    let json: serde_json::Value = serde_json::from_str(&second.stats_json()).unwrap();
    assert_eq!(json["resumed_streams"], serde_json::json!([AGG, KLINE]), "--stats-json names them");

    let ids: Vec<u64> = rows(&data, AGG).iter().map(|r| r[1].parse().unwrap()).collect();
    let expected: Vec<u64> = (ids[0]..ids[0] + ids.len() as u64).collect();
    assert_eq!(ids, expected, "every aggTrade id once, in order, across both runs");
    let fetched = second.recovery.kind("aggTrade").backfilled;
    assert!(fetched >= 50, "the downtime's trades came over REST, not live: {fetched} (first run: {first:?})");
    assert_eq!(second.recovery.abandoned_ids, 0, "{:?}", second.recovery);

    // Klines: every closed interval from the first run's last one on, once, in order.
    let closed: Vec<u64> = rows(&data, KLINE).iter().filter(|r| r[10] == "1").map(|r| r[1].parse().unwrap()).collect();
    let after: Vec<u64> = closed.iter().copied().filter(|o| *o >= last_open_first).collect();
    assert!(after.len() >= 4, "closes across the downtime: {after:?}");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1_000), "no closed 1s kline missing or doubled: {after:?}");
    assert!(second.recovery.kind("kline").backfilled >= 2, "{:?}", second.recovery);
}

#[test]
fn a_renumbered_exchange_is_recorded_not_taken_for_old_ids() {
    // A fresh exchange with the same seed numbers its trades from the same start, below where the
    // recording ends: taken as already recorded, the second run would drop every trade.
    let dir = scratch("renumbered");
    let data = dir.join("data");
    let old = Exchange::start(ExchangeConfig { tick: Duration::from_millis(10), ..ExchangeConfig::default() }).unwrap();
    run(&old, &dir, &[AGG], 1_500);
    drop(old);
    let recorded = rows(&data, AGG).len();
    assert!(recorded > 20, "{recorded}");
    let new = Exchange::start(ExchangeConfig { tick: Duration::from_millis(10), ..ExchangeConfig::default() }).unwrap();
    let second = run(&new, &dir, &[AGG], 1_000);
    let all = rows(&data, AGG);
    assert!(all.len() > recorded + 20, "the second run recorded: {} rows after {recorded}", all.len());
    let first_new: u64 = all[recorded][1].parse().unwrap();
    let last_old: u64 = all[recorded - 1][1].parse().unwrap();
    assert!(first_new < last_old, "the new numbering starts below the old one: {first_new} vs {last_old}");
    assert_eq!(second.recovery.backfill_requests, 0, "nothing fetched across numberings: {:?}", second.recovery);
}
