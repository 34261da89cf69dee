//! The structured log contract (README "Logs"): every connection line of `keel stream` carries
//! `conn`, `state`, `attempt` and `class`; every scaler line of `keel train` carries `epoch`,
//! `step`, `scale` and `grad_norm`. Both run the real binary with `--log-format json`.

mod common;

use common::tmp;

use keel::exchange::{Exchange, ExchangeConfig, Fault, FaultPlan};
use keel_core::config::{Config, ScaleChoice};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Every stderr line that is a JSON object (the final summary is plain text by design).
fn json_lines(stderr: &str) -> Vec<Value> {
    let lines: Vec<Value> = stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    assert!(!lines.is_empty(), "no JSON log line in:\n{stderr}");
    lines
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

const CONNECTION_LINES: [&str; 12] = [
    "opening",
    "connected",
    "disconnected",
    "heartbeat timeout",
    "stream stalled",
    "malformed frame",
    "server error reply",
    "rollover",
    "transport failed",
    "server closed",
    "giving up",
    "gap:",
];

#[test]
fn stream_connection_lines_carry_conn_state_attempt_and_class() {
    // Connection 0 is reset after 30 frames; connection 1 also sends malformed frames.
    let faults = FaultPlan::default().on(0, Fault::Reset { after: 30 }).on(1, Fault::Malformed { every: 20 });
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(10), faults, ..ExchangeConfig::default() })
        .unwrap();
    let dir = tmp("stream");
    // The reset's gap is backfilled from the exchange's REST API (never from the real Binance).
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), &["btcusdt@aggTrade"]).unwrap();
    cfg.reconnect.initial_delay_ms = 50;
    cfg.reconnect.max_delay_ms = 200;
    std::fs::write(dir.join("keel.ron"), cfg.to_ron()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--log-format", "json", "--log", "info,keel=debug", "--duration", "2", "--no-record"])
        .arg("--config")
        .arg(dir.join("keel.ron"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut seen = std::collections::BTreeMap::<&str, u32>::new();
    for line in json_lines(&stderr) {
        let msg = message(&line);
        let Some(kind) = CONNECTION_LINES.iter().find(|k| msg.starts_with(**k)) else { continue };
        *seen.entry(kind).or_default() += 1;
        let f = &line["fields"];
        for key in ["conn", "state", "attempt", "class"] {
            assert!(!f[key].is_null(), "{kind:?} line without `{key}`: {line}");
        }
        assert!(f["conn"].as_str().unwrap().starts_with('#'), "{line}");
        assert!(["connecting", "live", "waiting", "stopped"].contains(&f["state"].as_str().unwrap()), "{line}");
        assert!(f["attempt"].as_u64().is_some(), "{line}");
        let class = f["class"].as_str().unwrap();
        match *kind {
            "connected" => assert_eq!((class, f["state"].as_str().unwrap()), ("none", "live"), "{line}"),
            "disconnected" => assert_eq!((class, f["state"].as_str().unwrap()), ("transient", "waiting"), "{line}"),
            "transport failed" => assert_eq!(class, "transient", "{line}"),
            _ => assert!(["none", "transient", "rate_limited", "fatal"].contains(&class), "{line}"),
        }
    }
    for kind in ["opening", "connected", "disconnected", "transport failed", "malformed frame"] {
        assert!(seen.contains_key(kind), "no {kind:?} line (seen {seen:?}):\n{stderr}");
    }
    assert!(seen["connected"] >= 2, "reconnected after the reset: {seen:?}");
}

#[test]
fn train_scaler_lines_carry_epoch_step_scale_and_grad_norm() {
    let dir = tmp("train");
    // Start at the maximum scale in f16 so that the first steps overflow and the scale is warned
    // about and reset; a tiny model keeps the run well under a second.
    let mut cfg = Config::default();
    cfg.scaler.init_scale = ScaleChoice::Fixed(cfg.scaler.max_scale);
    (cfg.train.d_model, cfg.train.n_heads, cfg.train.d_ff, cfg.train.batch_size) = (16, 2, 32, 4);
    (cfg.train.e_layers, cfg.train.d_layers) = (1, 1);
    // From the maximum scale the reference model overflows enough in these 2 epochs for a reset;
    // the instance-normalized one (smaller losses) overflowed 2 of 12 steps per epoch and did not.
    cfg.train.instance_norm = false;
    std::fs::write(dir.join("keel.ron"), cfg.to_ron()).unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/msft-daily.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["train", "--log-format", "json", "--data", data, "--dtype", "f16"])
        .args(["--seq-len", "16", "--label-len", "8", "--pred-len", "4", "--epochs", "2", "--max-batches", "12"])
        .args(["--quiet", "--seed", "3", "--config"])
        .arg(dir.join("keel.ron"))
        .arg("--out")
        .arg(dir.join("ckpt"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut scaler_lines = 0;
    let mut overflow_lines = 0;
    let mut epoch_done = 0;
    let (mut measured, mut unmeasured) = (0, 0);
    for line in json_lines(&stderr) {
        let msg = message(&line);
        if !(msg.starts_with("loss scale") || msg == "epoch done") {
            continue;
        }
        scaler_lines += 1;
        overflow_lines += u32::from(msg.starts_with("loss scaler"));
        epoch_done += u32::from(msg == "epoch done");
        let f = &line["fields"];
        assert!(f["epoch"].as_u64().is_some(), "{line}");
        assert!(f["step"].as_u64().is_some(), "{line}");
        assert!(f["scale"].as_f64().is_some_and(|s| s > 0.0), "{line}");
        // A number, or null where no norm was measured (an overflowing step).
        assert!(f.get("grad_norm").is_some_and(|g| g.is_null() || g.as_f64().is_some()), "{line}");
        measured += u32::from(f["grad_norm"].as_f64().is_some_and(|g| g > 0.0));
        unmeasured += u32::from(f["grad_norm"].is_null());
    }
    assert_eq!(epoch_done, 2, "{stderr}");
    assert!(measured >= 1 && unmeasured >= 1, "norms after applied steps, null after overflows: {stderr}");
    assert!(stderr.contains("loss scale reset from"), "{stderr}");
    assert!(overflow_lines >= 1, "the f16 run at the maximum scale warned: {stderr}");
    assert!(scaler_lines >= 3, "{stderr}");
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let ex = Exchange::start(ExchangeConfig::default()).unwrap();
    let dir = tmp("ansi");
    ex.write_ca(&dir.join("ca.pem")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &ex.url(), "--rest-url", &ex.rest_url(), "--streams", "btcusdt@aggTrade"])
        .args(["--max-messages", "3", "--no-record", "--log", "info,keel=debug"])
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("INFO") && stderr.contains("connected"), "text log lines expected:\n{stderr}");
    assert!(!stderr.contains("\x1b["), "colour codes in a piped log:\n{stderr:?}");
}
