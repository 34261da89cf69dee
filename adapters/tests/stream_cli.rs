//! The `keel stream` binary: exit codes and messages a user sees.

use keel::exchange::{Exchange, ExchangeConfig};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn wrong_ca_exits_2_with_a_clear_message_and_no_retry() {
    let ex = Exchange::start(ExchangeConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("keel-stream-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong-ca.pem");
    std::fs::write(&wrong, keel::exchange::generate_certs("some other CA").unwrap().ca_pem).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &ex.url(), "--rest-url", &ex.rest_url()])
        .args(["--streams", "btcusdt@aggTrade", "--duration", "20"])
        .arg("--ca-file")
        .arg(&wrong)
        .arg("--out")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("certificate was rejected"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "the message names the fix: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "gave up at once, not after --duration");
    assert_eq!(ex.connections().len(), 1, "no retry after a rejected certificate");
}

#[test]
fn stats_json_and_recorded_files_after_a_duration() {
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(20), ..ExchangeConfig::default() }).unwrap();
    let dir = std::env::temp_dir().join(format!("keel-stream-cli2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ex.write_ca(&dir.join("ca.pem")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &ex.url(), "--rest-url", &ex.rest_url()])
        .args(["--streams", "btcusdt@aggTrade,btcusdt@kline_1m", "--duration", "1"])
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .arg("--out")
        .arg(dir.join("data"))
        .arg("--stats-json")
        .arg(dir.join("stats.json"))
        .arg("--trace")
        .arg(dir.join("trace.ron"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).unwrap()).unwrap();
    let events = stats["market_events"].as_u64().unwrap();
    assert!(events > 10, "{stats}");
    assert_eq!(stats["connects"], 1);
    let day_files: Vec<_> = std::fs::read_dir(dir.join("data/btcusdt@kline_1m")).unwrap().collect();
    assert_eq!(day_files.len(), 1);
    // The trace replays through a fresh machine to the same outputs.
    let trace = std::fs::read_to_string(dir.join("trace.ron")).unwrap();
    keel_core::trace::replay_text(&trace).unwrap();
}
