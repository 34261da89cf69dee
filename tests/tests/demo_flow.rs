//! The whole flow, shortened: embedded exchange -> stream with every fault -> files -> train ->
//! checkpoint -> load -> predict. Real TLS on 127.0.0.1, real files, real candle tensors.

use keel::demo::{DemoArgs, run_demo};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn faults_injected_are_faults_survived_and_the_model_trains_on_what_was_recorded() {
    let out = scratch("demo");
    // 25 s covers the fault schedule (reset, stall, 1008, 429, cutoff) with the demo's timings.
    let args = DemoArgs { out: out.clone(), stream_secs: 25, epochs: 1, seed: 11 };
    let outcome = run_demo(&args).expect("the demo's stages run");
    assert!(outcome.failures.is_empty(), "demo checks failed: {:#?}", outcome.failures);

    let s = &outcome.stream.stats;
    // Every transport loss became a reconnect: reset, stall, 1008, 429 (a failed attempt), cutoff.
    assert!(s.reconnects >= 4, "reconnects {}", s.reconnects);
    assert_eq!(outcome.stream.gave_up, None);
    // Gaps the client reported match the ids the exchange skipped, id for id.
    let reported: u64 =
        outcome.stream.gaps.iter().filter(|g| g.stream == "btcusdt@aggTrade").map(|g| g.missing()).sum();
    let skipped: u64 = outcome.skipped.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(reported, skipped, "gaps {:?} vs skipped {:?}", outcome.stream.gaps, outcome.skipped);
    assert!(skipped > 0, "the outages must have cost some ids");

    // Files hold every event the client passed on, none twice.
    let agg_dir = out.join("data").join("btcusdt@aggTrade");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&agg_dir).expect("aggTrade files") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines().skip(1) {
            ids.push(line.split(',').nth(1).expect("agg_id column").parse::<u64>().expect("numeric id"));
        }
    }
    let passed_on = outcome.stream.market_events.get("btcusdt@aggTrade").copied().unwrap_or(0);
    assert_eq!(ids.len() as u64, passed_on);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "an aggTrade id was recorded twice");

    // Training ran on the recorded klines without a NaN loss, and the checkpoint forecasts.
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outcome.training_stats).expect("stats file")).expect("json");
    assert_eq!(stats["nan_losses"], 0);
    assert!(stats["steps"].as_u64().expect("steps") > 0);
    // The injected training fault: the scale started at 2^24, where f16 gradients overflow. Every
    // overflowing step was skipped, 5 in a row reset the scale, and later steps were applied.
    let count = |k: &str| stats[k].as_u64().unwrap_or_else(|| panic!("{k} in {stats}"));
    assert!(count("overflows") > 0, "{stats}");
    assert_eq!(count("skipped"), count("overflows"));
    assert!(count("resets") >= 1, "{stats}");
    assert!(count("applied") > 0 && stats["current_scale"].as_f64().expect("scale") < 16_777_216.0, "{stats}");
    assert!(out.join("train-config.ron").is_file());
    let dev = candle_core::Device::Cpu;
    let forecast = keel::train::predict_file(&outcome.checkpoint, &outcome.klines, &dev, false).expect("forecast");
    let again = keel::train::predict_file(&outcome.checkpoint, &outcome.klines, &dev, false).expect("forecast");
    assert_eq!(forecast, again, "a reloaded checkpoint must forecast deterministically");
    let rows: Vec<&str> = forecast.lines().collect();
    assert_eq!(rows.len(), 1 + 12, "header + pred_len rows: {forecast}");
    for row in &rows[1..] {
        let close: f64 = row.split(',').nth(1).expect("value").parse().expect("number");
        assert!(close.is_finite() && close > 0.0, "{row}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
