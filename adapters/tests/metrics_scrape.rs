//! Scrapes `/metrics` over real TCP with a plain HTTP/1.1 client and parses the body with
//! `prometheus-parse`, an independent exposition-format parser.

use keel::metrics::{Metrics, TrainingSnapshot, serve};
use keel_core::stats::connection::ConnectionStats;
use keel_core::stats::training::TrainingStats;
use keel_core::time::Timestamp;
use prometheus_parse::{Scrape, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP/1.1 request with `Connection: close`; returns (status line, headers, body).
fn get(addr: SocketAddr, method: &str, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the whole response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header/body separator");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

fn value(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match s.value {
        // prometheus-parse knows the classic text format; OpenMetrics counters (TYPE on the name
        // without `_total`) come out untyped, so the type is checked on the TYPE lines instead.
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

#[test]
fn scrape_over_tcp_parses_with_an_exposition_format_parser() {
    let metrics = Metrics::new();
    let server = serve("127.0.0.1:0".parse().unwrap(), metrics.clone()).expect("bind an ephemeral port");
    let addr = server.local_addr();

    // Before anything is published the endpoint answers with an empty exposition.
    let (status, _, body) = get(addr, "GET", "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), "# EOF");

    metrics.set_connection(
        ConnectionStats {
            connect_attempts: 5,
            connects: 4,
            reconnects: 3,
            heartbeat_timeouts: 1,
            gaps: 2,
            missing_ids: 17,
            duplicates: 9,
            malformed_frames: 1,
            stalls: 1,
            success_rate: 0.8,
            current_backoff_ms: 0,
            uptime_ms: 61_000,
            failures_by_class: BTreeMap::from([("transient".into(), 2), ("rate_limited".into(), 1)]),
            failures_by_error: BTreeMap::from([("reset".into(), 2), ("server_close_1008".into(), 1)]),
            messages_by_stream: BTreeMap::from([("btcusdt@aggTrade".into(), 100), ("ethusdt@aggTrade".into(), 50)]),
            last_message_at_ms: Some(10_000),
            ..ConnectionStats::default()
        },
        Timestamp::from_millis(12_500),
    );
    metrics.set_training(TrainingSnapshot {
        stats: TrainingStats {
            steps: 200,
            overflows: 4,
            skipped: 4,
            overflow_rate: 0.02,
            resets: 1,
            warnings: 1,
            current_scale: 65_536.0,
            ..TrainingStats::default()
        },
        epoch: 2,
        step: 200,
        loss: Some(0.25),
    });

    let (status, headers, body) = get(addr, "GET", "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("content-type: application/openmetrics-text"), "{headers}");
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("a valid exposition");

    for (name, label, want) in [
        ("keel_connection_attempts_total", None, 5.0),
        ("keel_connection_connects_total", None, 4.0),
        ("keel_connection_reconnects_total", None, 3.0),
        ("keel_connection_failures_total", Some(("class", "transient")), 2.0),
        ("keel_connection_failures_total", Some(("class", "rate_limited")), 1.0),
        ("keel_connection_failures_total", Some(("class", "fatal")), 0.0),
        ("keel_connection_errors_total", Some(("error", "server_close_1008")), 1.0),
        ("keel_connection_success_ratio", None, 0.8),
        ("keel_connection_heartbeat_timeouts_total", None, 1.0),
        ("keel_connection_stalls_total", None, 1.0),
        ("keel_connection_gaps_total", None, 2.0),
        ("keel_connection_missing_ids_total", None, 17.0),
        ("keel_connection_duplicates_total", None, 9.0),
        ("keel_connection_malformed_frames_total", None, 1.0),
        ("keel_connection_messages_total", Some(("stream", "btcusdt@aggTrade")), 100.0),
        ("keel_connection_messages_total", Some(("stream", "ethusdt@aggTrade")), 50.0),
        ("keel_connection_uptime_seconds_total", None, 61.0),
        ("keel_connection_backoff_seconds", None, 0.0),
        ("keel_connection_up", None, 1.0),
        ("keel_training_loss_scale", None, 65_536.0),
        ("keel_training_overflows_total", None, 4.0),
        ("keel_training_overflow_ratio", None, 0.02),
        ("keel_training_skipped_steps_total", None, 4.0),
        ("keel_training_scale_resets_total", None, 1.0),
        ("keel_training_scale_warnings_total", None, 1.0),
        ("keel_training_epoch", None, 2.0),
        ("keel_training_step", None, 200.0),
        ("keel_training_loss", None, 0.25),
    ] {
        assert_eq!(value(&scrape, name, label), want, "{name} {label:?}");
    }
    let age = value(&scrape, "keel_connection_last_message_age_seconds", None);
    assert!((2.5..30.0).contains(&age), "last message age {age}");
    // Counters are typed as counters, gauges as gauges, and every family has help text.
    assert!(body.contains("# TYPE keel_connection_reconnects counter"), "{body}");
    assert!(body.contains("# TYPE keel_training_loss_scale gauge"), "{body}");
    assert!(scrape.docs.contains_key("keel_connection_heartbeat_timeouts"));

    let (status, _, body) = get(addr, "GET", "/nope");
    assert!(status.contains("404") && body.contains("/metrics"), "{status} {body}");
    let (status, _, _) = get(addr, "POST", "/metrics");
    assert!(status.contains("405"), "{status}");

    // Dropping the handle stops the server: new connections are refused or closed unanswered.
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    let answered = TcpStream::connect(addr).ok().and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        (!buf.is_empty()).then_some(buf)
    });
    assert_eq!(answered, None, "the server still answers after its handle was dropped");
}

#[test]
fn a_taken_port_is_an_error_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = serve(taken.local_addr().unwrap(), Metrics::new()).unwrap_err();
    assert!(format!("{err:#}").contains("--metrics-addr"), "{err:#}");
}
