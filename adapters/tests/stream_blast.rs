//! `keel stream` under a feed that never pauses (the exchange's blast mode): frames are handed over
//! in batches on the loop's own thread, and the loop's deadlines must still fire on time.

use keel::exchange::{Exchange, ExchangeConfig, Fault};
use keel::stream::{StopCause, StreamOptions, stream};
use std::time::Duration;

const AGG: &str = "btcusdt@aggTrade";

#[test]
fn a_blast_that_never_pauses_does_not_starve_the_duration_timer_or_the_recorder() {
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_secs(3600), ..ExchangeConfig::default() }).unwrap();
    // Far more frames than the client can read in the run: the socket always has data waiting.
    ex.fault_next(vec![Fault::Blast { frames: 50_000_000 }]);
    let dir = std::env::temp_dir().join(format!("keel-stream-blast-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), &[AGG]).unwrap();
    cfg.rest.backfill = false;
    let opts =
        StreamOptions { seed: 1, duration: Some(Duration::from_millis(700)), record: true, ..StreamOptions::default() };
    let report = smol::block_on(stream(cfg, opts)).unwrap();
    ex.shutdown();

    assert_eq!(report.cause, StopCause::Duration);
    // 0.7 s of streaming, then a close handshake bounded at 1 s (the exchange reads nothing while it
    // blasts) and the close task's own 2 s bound: a starved timer would run on for the whole blast.
    assert!(report.elapsed < Duration::from_secs(4), "stopped after {:?}", report.elapsed);
    assert!(report.stats.market_events > 1_000, "only {} events", report.stats.market_events);
    assert_eq!(report.stats.gaps, 0);
    assert_eq!(report.rows_written, report.stats.market_events);
    // Every row passed on is in the file (flushed at the end), in id order without gaps.
    let text = std::fs::read_to_string(&report.files[0]).unwrap();
    let ids: Vec<u64> = text.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
    assert_eq!(ids.len() as u64, report.rows_written);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids not consecutive");
    let _ = std::fs::remove_dir_all(&dir);
}
