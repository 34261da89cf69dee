//! More streams than one connection carries: `keel stream` splits them over several connections
//! (`keel_core::shard`), drives them from one loop, and reports them together. Real TLS on
//! 127.0.0.1 against the embedded exchange, which refuses a 1025th stream on one connection as
//! Binance does.

use keel::exchange::{Exchange, ExchangeConfig, ExchangeHandle, Fault, FaultPlan};
use keel::stream::transport::{TransportEvent, TransportSettings};
use keel::stream::{StopCause, StreamOptions, StreamReport, stream};
use keel_core::classify::TransportError;
use keel_core::config::Config;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-e2e-split-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn exchange(tick_ms: u64, faults: FaultPlan) -> ExchangeHandle {
    Exchange::start(ExchangeConfig {
        tick: Duration::from_millis(tick_ms),
        ping_interval: Duration::from_millis(400),
        faults,
        ..ExchangeConfig::default()
    })
    .unwrap()
}

fn config(ex: &ExchangeHandle, dir: &Path, streams: &[String]) -> Config {
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), &names).unwrap();
    cfg.stream.stall_after_ms = 3_000;
    cfg.tls.handshake_timeout_ms = 3_000;
    cfg.reconnect.initial_delay_ms = 200;
    cfg.reconnect.max_delay_ms = 400;
    // Pings every 600 ms keep the heartbeat's writes in play during the short runs; 500 ms for the
    // pong leaves room for a loaded CI machine (a false timeout would drop frames in flight and
    // break the exact counts below).
    cfg.heartbeat.ping_interval_ms = 600;
    cfg.heartbeat.pong_timeout_ms = 500;
    cfg
}

fn run(cfg: Config, duration_ms: u64, record: bool) -> StreamReport {
    run_traced(cfg, duration_ms, record, None)
}

fn run_traced(cfg: Config, duration_ms: u64, record: bool, trace: Option<PathBuf>) -> StreamReport {
    run_observed(cfg, duration_ms, record, trace, None)
}

fn run_observed(
    cfg: Config,
    duration_ms: u64,
    record: bool,
    trace: Option<PathBuf>,
    metrics: Option<keel::metrics::Metrics>,
) -> StreamReport {
    let duration = Some(Duration::from_millis(duration_ms));
    let opts = StreamOptions { seed: 7, duration, record, trace, metrics, ..Default::default() };
    smol::block_on(stream(cfg, opts)).unwrap()
}

/// `GET /metrics` over plain TCP; the body.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(raw)
}

/// The value of the sample `name{connection="sN"..}` (the first, when it has more labels).
fn sample(body: &str, name: &str, connection: usize) -> f64 {
    let prefix = format!("{name}{{connection=\"s{connection}\"");
    body.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
}

/// Rows of each recorded file of `stream` (the header skipped), as their column `col`.
fn column(dir: &Path, stream: &str, col: usize) -> Vec<u64> {
    let mut files: Vec<_> =
        std::fs::read_dir(dir.join("data").join(stream)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        out.extend(text.lines().skip(1).map(|l| l.split(',').nth(col).unwrap().parse::<u64>().unwrap()));
    }
    out
}

#[test]
fn five_streams_over_three_connections_survive_a_reset_of_one() {
    // The first connection the exchange accepts is reset after 40 frames.
    let ex = exchange(10, FaultPlan::default().on(0, Fault::Reset { after: 40 }));
    let dir = scratch("five");
    let streams: Vec<String> =
        ["btcusdt@aggTrade", "ethusdt@aggTrade", "btcusdt@trade", "ethusdt@trade", "bnbusdt@aggTrade"]
            .map(String::from)
            .to_vec();
    let mut cfg = config(&ex, &dir, &streams);
    cfg.stream.max_streams_per_connection = 2;
    cfg.stream.max_connections = 3;
    let (metrics, server) = keel::metrics::serve_new("127.0.0.1:0".parse().unwrap()).unwrap();
    let report = run_observed(cfg, 3_000, true, Some(dir.join("trace.ron")), Some(metrics));
    assert_eq!(report.cause, StopCause::Duration);
    assert!(report.gave_up.is_none(), "{:?}", report.gave_up);

    // One trace per connection (trace.ron, trace.ron.1, trace.ron.2), each replaying through a fresh
    // machine built from its own shard's config and seed to the same outputs.
    for name in ["trace.ron", "trace.ron.1", "trace.ron.2"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        keel_core::trace::replay_text(&text).unwrap_or_else(|e| panic!("{name} does not replay: {e}"));
    }

    // Three connections, a symbol's streams on one connection each.
    let shards: Vec<Vec<String>> = report.connections.iter().map(|c| c.streams.clone()).collect();
    assert_eq!(
        shards,
        vec![
            vec!["btcusdt@aggTrade".to_string(), "btcusdt@trade".into()],
            vec!["ethusdt@aggTrade".to_string(), "ethusdt@trade".into()],
            vec!["bnbusdt@aggTrade".to_string()],
        ]
    );
    // The exchange saw them as separate connections of at most 2 streams, every stream served.
    let infos = ex.connections();
    assert!(infos.len() >= 4, "3 connections and a reconnect, got {infos:#?}");
    assert!(infos.iter().all(|i| i.subscriptions.len() <= 2), "{infos:#?}");
    let served: BTreeSet<&String> = infos.iter().flat_map(|i| &i.subscriptions).collect();
    assert_eq!(served, streams.iter().collect());

    // Exactly one connection lost its transport, reconnected, and backfilled what it missed.
    let reconnects: Vec<u64> = report.connections.iter().map(|c| c.stats.reconnects).collect();
    assert_eq!(reconnects.iter().filter(|r| **r > 0).count(), 1, "reconnects per connection {reconnects:?}");
    let reset_shard = reconnects.iter().position(|r| *r > 0).unwrap();
    assert!(!report.disconnects.is_empty() && report.disconnects.iter().all(|d| d.shard == reset_shard));
    assert_eq!(report.stats.reconnects, reconnects.iter().sum::<u64>());
    assert_eq!(report.stats.connects, report.connections.iter().map(|c| c.stats.connects).sum::<u64>());
    assert_eq!(report.stats.connects, 4);

    // Every stream's events recorded: one row per event passed on; aggTrade ids without a hole.
    let mut rows = 0;
    for s in &streams {
        let col = if s.ends_with("@aggTrade") { 1 } else { 0 };
        let values = column(&dir, s, col);
        assert!(values.len() > 10, "{s}: {} rows", values.len());
        assert_eq!(values.len() as u64, report.market_events[s.as_str()], "{s}");
        if col == 1 {
            assert!(values.windows(2).all(|w| w[1] == w[0] + 1), "{s}: ids not continuous");
        }
        rows += values.len() as u64;
    }
    assert_eq!(report.rows_written, rows);
    assert!(!ex.skipped(&report.connections[reset_shard].streams[0]).is_empty(), "the reset cost ids");
    assert_eq!(report.recovery.abandoned_ids, 0);

    // --stats-json: the totals at the top, each connection under "connections".
    let v: serde_json::Value = serde_json::from_str(&report.stats_json()).unwrap();
    assert_eq!(v["connects"], 4);
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[2]["streams"], serde_json::json!(["bnbusdt@aggTrade"]));
    assert_eq!(conns[reset_shard]["reconnects"], 1);

    // /metrics: each connection's own series, labelled as in the logs (`s1`), the reset one's differ.
    let body = scrape(server.local_addr());
    for i in 0..3 {
        let lost = if i == reset_shard { 1.0 } else { 0.0 };
        assert_eq!(sample(&body, "keel_connection_reconnects_total", i), lost, "s{i}");
        assert_eq!(sample(&body, "keel_connection_attempts_total", i), 1.0 + lost, "s{i}");
        let transient = format!("keel_connection_failures_total{{connection=\"s{i}\",class=\"transient\"}} {lost}");
        assert!(body.lines().any(|l| l == transient), "{transient} in\n{body}");
        assert!(sample(&body, "keel_connection_frames_total", i) > 10.0, "s{i}");
    }
    assert_eq!(body.matches("# TYPE keel_connection_reconnects counter").count(), 1, "one family");
    assert!(!body.contains("keel_connection_reconnects_total "), "no unlabelled total beside its parts");
    ex.shutdown();
}

#[test]
fn the_connections_share_one_attempt_budget() {
    // 3 attempts per 5 minutes for the whole run of 2 connections. The exchange resets the first
    // connection it accepts, and then the third (the reconnect).
    let ex = exchange(10, FaultPlan::default().on(0, Fault::Reset { after: 40 }).on(2, Fault::Reset { after: 40 }));
    let dir = scratch("pool");
    let streams: Vec<String> = ["btcusdt@aggTrade", "ethusdt@aggTrade"].map(String::from).to_vec();
    let mut cfg = config(&ex, &dir, &streams);
    cfg.stream.max_streams_per_connection = 1;
    cfg.reconnect.max_attempts_per_window = 3;
    cfg.rest.backfill = false;
    let report = run_traced(cfg, 2_500, false, Some(dir.join("trace.ron")));
    assert!(report.gave_up.is_none(), "{:?}", report.gave_up);
    // The reset connection reconnected with the budget its healthy neighbour does not use (equal
    // shares would have left it 1 attempt: no reconnect for 5 minutes); the second reset found the
    // pool spent (3 attempts in the window), so it waits: the run never exceeded the budget.
    let attempts: Vec<u64> = report.connections.iter().map(|c| c.stats.connect_attempts).collect();
    let reset = report.disconnects.first().expect("a reset").shard;
    assert_eq!(attempts.iter().sum::<u64>(), 3, "attempts per connection {attempts:?}");
    assert_eq!((attempts[reset], report.connections[reset].stats.reconnects), (2, 1));
    assert_eq!(report.disconnects.iter().filter(|d| d.shard == reset).count(), 2, "{:?}", report.disconnects);
    assert_eq!(report.opened.len(), 3);
    assert_eq!(ex.connections().len(), 3);
    // Each connection's trace (grants included) replays.
    for name in ["trace.ron", "trace.ron.1"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.starts_with("StartPooled("), "{name}");
        let summary = keel_core::trace::replay_text(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary.stats.connect_attempts, attempts[usize::from(name.ends_with(".1"))], "{name}");
    }
    ex.shutdown();
}

/// 1100 streams: 220 symbols x 5 kinds.
fn eleven_hundred() -> Vec<String> {
    (0..220)
        .flat_map(|i| ["aggTrade", "trade", "bookTicker", "kline_1m", "kline_5m"].map(|k| format!("x{i}usdt@{k}")))
        .collect()
}

#[test]
fn a_1025th_stream_is_refused_by_the_exchange_so_1100_streams_take_two_connections() {
    let ex = exchange(100, FaultPlan::default());
    let dir = scratch("big");
    let streams = eleven_hundred();
    let mut cfg = config(&ex, &dir, &streams);
    cfg.rest.backfill = false;

    // One connection with 1025 streams: Binance's limit, enforced by the exchange.
    let settings = TransportSettings::from_config(&cfg).unwrap();
    let url = format!("{}/stream?streams={}", cfg.stream.url, streams[..1025].join("/"));
    let (events_tx, events_rx) = smol::channel::unbounded();
    let (_cmd_tx, cmd_rx) = smol::channel::unbounded();
    let (_recycle_tx, recycle_rx) = smol::channel::bounded(1);
    smol::block_on(keel::stream::transport::run(0u8, url, settings, events_tx, cmd_rx, recycle_rx));
    match events_rx.try_recv() {
        Ok((0, TransportEvent::Failed(f))) => {
            assert!(matches!(f.error, TransportError::HttpStatus { status: 400, .. }), "{f:?}")
        }
        other => panic!("1025 streams on one connection must be refused, got {other:?}"),
    }

    // keel splits them: 204 symbols (1020 streams) on the first connection, 16 on the second.
    let report = run(cfg, 2_500, false);
    assert!(report.gave_up.is_none(), "{:?}", report.gave_up);
    let sizes: Vec<usize> = report.connections.iter().map(|c| c.streams.len()).collect();
    assert_eq!(sizes, vec![1020, 80]);
    // The refused connection above is logged as rejected (400), with no subscriptions; only it.
    let infos = ex.connections();
    let rejected: Vec<(Option<u16>, usize)> =
        infos.iter().filter(|i| i.rejected.is_some()).map(|i| (i.rejected, i.subscriptions.len())).collect();
    assert_eq!(rejected, vec![(Some(400), 0)]);
    let mut served: Vec<usize> = infos.iter().map(|i| i.subscriptions.len()).filter(|n| *n > 0).collect();
    served.sort_unstable();
    assert_eq!(served, vec![80, 1020]);
    let silent: Vec<&String> = streams.iter().filter(|s| !report.market_events.contains_key(s.as_str())).collect();
    assert!(silent.is_empty(), "{} streams without an event, e.g. {:?}", silent.len(), &silent[..silent.len().min(5)]);
    assert_eq!(report.stats.connects, 2);
    ex.shutdown();
}

#[test]
fn one_connection_giving_up_ends_the_run_and_names_its_streams() {
    // The first connection the exchange accepts is refused with 403: fatal, that connection gives up.
    let ex = exchange(10, FaultPlan::default().on(0, Fault::RejectUpgrade { status: 403, retry_after_secs: None }));
    let dir = scratch("gaveup");
    let streams: Vec<String> = ["btcusdt@aggTrade", "ethusdt@aggTrade"].map(String::from).to_vec();
    let mut cfg = config(&ex, &dir, &streams);
    cfg.stream.max_streams_per_connection = 1;
    let started = std::time::Instant::now();
    let report = run(cfg, 10_000, false);
    assert!(started.elapsed() < Duration::from_secs(5), "the run must end at the give-up, not at --duration");
    assert_eq!(report.cause, StopCause::GaveUp);
    let g = report.gave_up.expect("a give-up");
    assert!(matches!(g.error, TransportError::HttpStatus { status: 403, .. }), "{g:?}");
    let refused = report.connections.iter().position(|c| c.stats.connects == 0).expect("the refused connection");
    assert!(
        g.reason.starts_with(&format!("connection s{refused} of 2 (streams {}): ", streams[refused])),
        "{}",
        g.reason
    );
    // The other connection was closed cleanly, not left running.
    assert_eq!(report.connections.len(), 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ex.open_connections(), 0);
    ex.shutdown();
}
