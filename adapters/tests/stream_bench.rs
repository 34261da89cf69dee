//! Throughput of the whole client path (TLS read, core decode + gap check, optional recording)
//! against the exchange's blast mode. Ignored by default; run with
//! `cargo test -p keel --release --test stream_bench -- --ignored --nocapture`.

use keel::exchange::{Exchange, ExchangeConfig, Fault, FaultPlan};
use keel::stream::{StreamOptions, stream};
use keel_core::config::Config;
use std::time::{Duration, Instant};

fn bench(frames: u64, record: bool) {
    let ex = Exchange::start(ExchangeConfig {
        tick: Duration::from_secs(3600),
        faults: FaultPlan::default().on(0, Fault::Blast { frames }),
        ..ExchangeConfig::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("keel-bench-{}-{record}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ex.write_ca(&dir.join("ca.pem")).unwrap();
    let mut cfg = Config::default();
    cfg.stream.url = ex.url();
    cfg.stream.streams = vec!["btcusdt@aggTrade".to_string()];
    cfg.stream.out_dir = dir.join("data").display().to_string();
    cfg.tls.ca_file = Some(dir.join("ca.pem").display().to_string());
    let started = Instant::now();
    let opts = StreamOptions {
        seed: 1,
        duration: Some(Duration::from_secs(120)),
        max_messages: Some(frames),
        record,
        ..StreamOptions::default()
    };
    let report = smol::block_on(stream(cfg, opts)).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.stats.market_events, frames);
    assert_eq!(report.stats.gaps, 0);
    println!("blast {frames} aggTrade frames, record={record}: {secs:.2} s, {:.0} events/s", frames as f64 / secs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "benchmark"]
fn blast_throughput() {
    bench(200_000, false);
    bench(200_000, true);
}
