//! The `keel stream` binary: exit codes and messages a user sees.

mod common;

use common::tmp;
use keel::exchange::{Exchange, ExchangeConfig, ExchangeHandle};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `keel stream` against `ex` trusting `dir/ca.pem` (written here), with `args` after; its output
/// and how long it ran.
fn stream_against(ex: &ExchangeHandle, dir: &Path, args: &[&str]) -> (Output, Duration) {
    ex.write_ca(&dir.join("ca.pem")).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &ex.url(), "--rest-url", &ex.rest_url(), "--streams", "btcusdt@aggTrade"])
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .args(args)
        .output()
        .unwrap();
    (out, started.elapsed())
}

/// `keel stream --url wss://localhost:PORT` (nothing to verify against: these servers never get
/// that far), with `args` after; its output and how long it ran.
fn stream_to_port(port: u16, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &format!("wss://localhost:{port}")])
        .args(["--rest-url", &format!("https://localhost:{port}"), "--no-record"])
        .args(args)
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CA in DER (what `openssl x509 -outform der` and Windows' export write) is trusted like its PEM;
/// bytes that are neither say so.
#[test]
fn a_der_ca_file_is_trusted_like_its_pem() {
    let ex = Exchange::start(ExchangeConfig::default()).unwrap();
    let dir = tmp("der-ca");
    let der = dir.join("ca.der");
    std::fs::write(&der, native_tls::Certificate::from_pem(ex.ca_pem().as_bytes()).unwrap().to_der().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &ex.url(), "--rest-url", &ex.rest_url(), "--streams", "btcusdt@aggTrade"])
        .args(["--max-messages", "3", "--duration", "20", "--no-record", "--ca-file"])
        .arg(&der)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("keel stream: 3 market events"), "{err}");
    let junk = dir.join("junk.der");
    std::fs::write(&junk, [0x30, 0x82, 0x01, 0x00, 0xff]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &ex.url(), "--rest-url", &ex.rest_url(), "--no-record", "--ca-file"])
        .arg(&junk)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("holds no valid PEM or DER certificate: not PEM, and not a DER certificate either"), "{err}");
}

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
    // A CA file was given: the advice blames that file, not "pass its CA with --ca-file".
    assert!(stderr.contains(&format!("the CA in {}", wrong.display())), "{stderr}");
    let advice = stderr.lines().find(|l| l.starts_with("keel: not retrying")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(!advice.contains("pass the CA that did"), "{advice}");
    // OpenSSL's reason once per line, not three times on the ERROR line.
    let giving_up = stderr.lines().find(|l| l.contains("giving up")).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(giving_up.matches("certificate verify failed").count(), 1, "{giving_up}");
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

#[test]
fn a_restart_sets_a_partial_row_aside_and_refuses_a_file_of_another_layout() {
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(20), ..ExchangeConfig::default() }).unwrap();
    let dir = tmp("partial");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let sdir = dir.join("data/btcusdt@aggTrade");
    std::fs::create_dir_all(&sdir).unwrap();
    let file = sdir.join(format!("{}.csv", keel::stream::recorder::utc_day(now_ms)));
    let header = "event_time,agg_id,price,quantity,first_trade_id,last_trade_id,trade_time,buyer_is_maker";
    let kept = "1672515782136,1,0.001,100,100,105,1672515782136,1";
    // A run killed in the middle of its second row.
    std::fs::write(&file, format!("{header}\n{kept}\n1672515782")).unwrap();
    let (out, _) = stream_against(&ex, &dir, &["--max-messages", "5", "--out", dir.join("data").to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], [header, kept], "complete rows are kept: {text}");
    assert!(lines.len() >= 3 && lines[2..].iter().all(|l| l.split(',').count() == 8), "no glued row: {text}");
    assert!(text.ends_with('\n'));
    let partial = std::fs::read_to_string(format!("{}.partial", file.display())).unwrap();
    assert_eq!(partial, "1672515782\n", "the partial row is set aside, not lost");
    assert!(err.contains("partial row") && err.contains(&file.display().to_string()), "warned: {err}");

    // A file of another layout is refused, untouched.
    std::fs::write(&file, "foo,bar\n1,2\n3").unwrap();
    let (out, _) = stream_against(&ex, &dir, &["--max-messages", "5", "--out", dir.join("data").to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&file.display().to_string()) && err.contains("--out") && err.contains("\"foo,bar\""), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "foo,bar\n1,2\n3");
}

#[test]
fn output_paths_are_checked_before_connecting_and_os_errors_said_once() {
    let ex = Exchange::start(ExchangeConfig::default()).unwrap();
    let dir = tmp("paths");
    let afile = dir.join("afile");
    std::fs::write(&afile, "x").unwrap();
    let below_file = afile.join("sub");
    let cases: [(&[&str], &str); 3] = [
        (&["--out", afile.to_str().unwrap()], "--out"),
        (&["--out", below_file.to_str().unwrap()], "--out"),
        (&["--no-record", "--stats-json", dir.to_str().unwrap()], "--stats-json"),
    ];
    for (args, flag) in cases {
        let (out, took) = stream_against(&ex, &dir, &[args, &["--duration", "20"]].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} names the flag: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("keel: error:"), "{err}");
        // The OS error once: "(os error N)" appears once in the line.
        assert!(last.matches("os error").count() <= 1, "{last}");
        assert!(last.matches("directory").count() <= 2, "{last}");
        assert!(took < Duration::from_secs(10), "failed at once, not after --duration");
    }
    assert_eq!(ex.connections().len(), 0, "nothing connected before the paths were checked");
}

/// A full disk mid-run: the aggTrade file of the day is `/dev/full` (it opens, and every write
/// fails with ENOSPC, as on a full disk), the kline file a real one.
#[test]
fn a_full_disk_mid_run_stops_cleanly_keeping_the_summary_stats_and_other_files() {
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(20), ..ExchangeConfig::default() }).unwrap();
    let dir = tmp("full-disk");
    let data = dir.join("data");
    let agg = data.join("btcusdt@aggTrade");
    std::fs::create_dir_all(&agg).unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Today's and tomorrow's, for a run across midnight.
    for day in [now_ms, now_ms + 86_400_000] {
        let file = agg.join(format!("{}.csv", keel::stream::recorder::utc_day(day)));
        std::os::unix::fs::symlink("/dev/full", file).unwrap();
    }
    let stats = dir.join("stats.json");
    ex.write_ca(&dir.join("ca.pem")).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", &ex.url(), "--rest-url", &ex.rest_url()])
        .args(["--streams", "btcusdt@aggTrade,btcusdt@kline_1m", "--duration", "30"])
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .arg("--out")
        .arg(&data)
        .arg("--stats-json")
        .arg(&stats)
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Stopped at the first flush (about a second in), not at --duration.
    assert!(took < Duration::from_secs(15), "{took:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("keel")).collect();
    let at = lines.iter().position(|l| l.starts_with("keel stream: ") && l.contains("market events")).expect(&err);
    let error = lines.get(at + 1).copied().unwrap_or_default();
    assert!(error.starts_with("keel: error: cannot write recording file"), "the error after the summary: {err}");
    assert!(error.contains("btcusdt@aggTrade") && error.contains("--out"), "names the file and the fix: {error}");
    assert_eq!(error.matches("os error 28").count(), 1, "the OS error once: {error}");
    assert!(lines.get(at + 2).is_some_and(|l| l.contains("stopped")), "{err}");
    // The counters survive, and the run closed its connection cleanly.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert!(json["market_events"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["connects"], 1, "{json}");
    // The kline file, on a disk with room, holds its rows.
    let klines = std::fs::read_dir(data.join("btcusdt@kline_1m")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&klines).unwrap();
    assert!(text.starts_with("event_time,open_time,") && text.lines().count() > 1, "{text}");
    assert!(text.ends_with('\n'), "whole rows: {text}");
}

#[test]
fn an_unwritable_stats_json_at_the_end_keeps_the_summary() {
    let ex = Exchange::start(ExchangeConfig::default()).unwrap();
    let dir = tmp("stats-end");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let stats = dir.join("sub/stats.json");
    let remover = {
        let sub = dir.join("sub");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(800));
            std::fs::remove_dir_all(sub).unwrap();
        })
    };
    let (out, _) =
        stream_against(&ex, &dir, &["--no-record", "--duration", "2", "--stats-json", stats.to_str().unwrap()]);
    remover.join().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("keel stream: ") && err.contains("market events"), "the summary is printed: {err}");
    assert!(err.contains("cannot write --stats-json"), "{err}");
}

#[test]
fn a_run_that_never_connected_exits_1_and_says_why() {
    // Nothing listens.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (out, _) = stream_to_port(port, &["--duration", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("never connected to wss://localhost:{port} in")), "{err}");
    assert!(err.contains("last error: connection refused"), "{err}");

    // Plain HTTP on the port: said to be not TLS, not "a proxy may intercept TLS".
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in http.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let (out, _) = stream_to_port(port, &["--duration", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("the server at localhost:{port} did not answer TLS")), "{err}");
    assert!(err.contains("plain HTTP"), "{err}");
    assert!(!err.contains("proxy may intercept"), "{err}");
    assert!(err.contains("never connected"), "{err}");
}

#[test]
fn a_server_that_accepts_and_never_answers_is_logged_and_does_not_delay_the_end() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let (out, took) = stream_to_port(port, &["--duration", "4"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("has not answered TLS") && err.contains("tls.handshake_timeout_ms"), "a warning: {err}");
    assert!(err.contains("never connected") && err.contains("no answer after"), "{err}");
    // The stop cancels the pending handshake (it took 6.0 s: a 2 s wait for a close that could not go out).
    assert!(took < Duration::from_millis(5_500), "took {took:?}: {err}");
}

#[test]
fn zero_and_negative_bounds_are_refused_with_keel_s_message() {
    let (out, _) = stream_to_port(1, &["--max-messages", "0"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "clap's usage error: {err}");
    assert!(err.contains("--max-messages") && err.contains('0'), "{err}");
    for (value, shown) in [("-1", "-1"), ("0", "0"), ("NaN", "NaN")] {
        let (out, _) = stream_to_port(1, &["--duration", value]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{value}: {err}");
        assert!(err.contains(&format!("--duration must be > 0 seconds, got {shown}")), "{err}");
    }
    // Past what a Duration (1e20) or the monotonic clock (1e19) holds: both panicked before.
    for value in ["inf", "1e20", "1e19"] {
        let (out, _) = stream_to_port(1, &["--duration", value]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("--duration") && err.contains("too long") && err.contains("leave --duration out"),
            "{err}"
        );
    }
}

#[test]
fn a_bad_url_or_stream_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--url", "ws://localhost:9", "--rest-url", "https://localhost:9", "--no-record"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--url (stream.url)"), "{err}");
    let (out, _) = stream_to_port(9, &["--streams", "btcusdt@nonsense"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--streams (stream.streams"), "{err}");
}
