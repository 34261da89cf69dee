//! Live-process scrapes: the real `keel stream` / `keel train` binary with `--metrics-addr
//! 127.0.0.1:0`; the bound address is read from its log, `/metrics` is scraped over TCP while it
//! runs and parsed with `prometheus-parse`.

mod common;

use common::tmp;

use keel::exchange::{Exchange, ExchangeConfig, Fault, FaultPlan};
use keel_core::config::Config;
use prometheus_parse::{Scrape, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The child, with its stderr lines arriving on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines, seen: Vec::new() }
    }

    /// The address of "metrics endpoint listening on http://ADDR/metrics".
    fn metrics_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line.clone());
            if let Some((_, rest)) = line.split_once("listening on http://")
                && let Some((addr, _)) = rest.split_once("/metrics")
            {
                return addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
            }
        }
        panic!("no metrics address logged within 5 s:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the whole response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header/body separator");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("a valid exposition")
}

/// The sample's value, if present (`label`: one label that must match).
fn value(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let s =
        scrape.samples.iter().find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))?;
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// Scrapes every 100 ms until `ok` holds (panics after `within`); returns that scrape.
fn scrape_until(addr: SocketAddr, within: Duration, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let s = scrape(addr);
        if ok(&s) {
            return s;
        }
        if Instant::now() > deadline {
            let dump: Vec<String> =
                s.samples.iter().map(|x| format!("{} {:?} {:?}", x.metric, x.labels, x.value)).collect();
            panic!("{what}: not within {within:?}; last scrape:\n{}", dump.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_running_stream_is_scraped_with_real_values_and_counts_the_reset() {
    const AGG: &str = "btcusdt@aggTrade";
    // The first connection is reset after 40 frames; the client reconnects within ~100 ms.
    let faults = FaultPlan::default().on(0, Fault::Reset { after: 40 });
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(10), faults, ..ExchangeConfig::default() })
        .unwrap();
    let dir = tmp("stream");
    // The reset's gap is backfilled from the exchange's REST API (never from the real Binance).
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), &[AGG]).unwrap();
    cfg.reconnect.initial_delay_ms = 50;
    cfg.reconnect.max_delay_ms = 100;
    std::fs::write(dir.join("keel.ron"), cfg.to_ron()).unwrap();
    let config = dir.join("keel.ron");
    let mut run = Running::start(&[
        "stream",
        "--metrics-addr",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
        "--duration",
        "8",
        "--no-record",
    ]);
    let addr = run.metrics_addr();
    assert_ne!(addr.port(), 0);
    let s = scrape_until(addr, Duration::from_secs(6), "a reconnect after the reset", |s| {
        value(s, "keel_connection_reconnects_total", None).is_some_and(|v| v >= 1.0)
    });
    assert!(value(&s, "keel_connection_connects_total", None).unwrap() >= 2.0);
    assert!(value(&s, "keel_connection_messages_total", Some(("stream", AGG))).unwrap() > 0.0);
    assert!(value(&s, "keel_connection_failures_total", Some(("class", "transient"))).unwrap() >= 1.0);
    assert_eq!(value(&s, "keel_connection_failures_total", Some(("class", "fatal"))), Some(0.0));
    assert!(value(&s, "keel_connection_errors_total", Some(("error", "reset"))).unwrap() >= 1.0);
    // The ids lost in the reset were fetched over REST (zero gap), and the metrics say so.
    scrape_until(addr, Duration::from_secs(4), "the reset's gap backfilled", |s| {
        value(s, "keel_backfilled_trades_total", None).is_some_and(|v| v >= 1.0)
    });
    // Still running and live: the counters keep moving between scrapes.
    let before = value(&s, "keel_connection_market_events_total", None).unwrap();
    scrape_until(addr, Duration::from_secs(3), "market events advancing", |s| {
        value(s, "keel_connection_up", None) == Some(1.0)
            && value(s, "keel_connection_market_events_total", None).is_some_and(|v| v > before)
    });
}

#[test]
fn a_running_training_is_scraped_with_the_scale_and_an_advancing_step() {
    let dir = tmp("train");
    // A tiny model: many short steps, so that two scrapes see the step move.
    let mut cfg = Config::default();
    (cfg.train.d_model, cfg.train.n_heads, cfg.train.d_ff, cfg.train.batch_size) = (16, 2, 32, 4);
    (cfg.train.e_layers, cfg.train.d_layers) = (1, 1);
    std::fs::write(dir.join("keel.ron"), cfg.to_ron()).unwrap();
    let config = dir.join("keel.ron");
    let out = dir.join("ckpt");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/msft-daily.csv");
    let mut run = Running::start(&[
        "train",
        "--metrics-addr",
        "127.0.0.1:0",
        "--data",
        data,
        "--config",
        config.to_str().unwrap(),
        "--seq-len",
        "16",
        "--label-len",
        "8",
        "--pred-len",
        "4",
        "--epochs",
        "20",
        "--patience",
        "20",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let addr = run.metrics_addr();
    let first = scrape_until(addr, Duration::from_secs(5), "a first training step", |s| {
        value(s, "keel_training_step", None).is_some_and(|v| v >= 1.0)
    });
    assert!(value(&first, "keel_training_loss_scale", None).unwrap() > 0.0);
    assert!(value(&first, "keel_training_loss", None).unwrap().is_finite());
    let step = value(&first, "keel_training_step", None).unwrap();
    scrape_until(addr, Duration::from_secs(3), "the step advancing", |s| {
        value(s, "keel_training_step", None).is_some_and(|v| v > step)
            && value(s, "keel_training_steps_total", None).is_some_and(|v| v >= 1.0)
    });
}
