//! `keel config check FILE`: says "ok" only to a file `keel stream` would start with. A file that
//! validates but names a CA file that is missing or is not PEM used to pass the check and then stop
//! the stream at once.

mod common;

use common::tmp;
use std::path::Path;
use std::process::Command;

/// Runs `keel config check` on `ron` written to `dir/keel.ron`; the exit code and stdout + stderr.
fn check(dir: &Path, ron: &str) -> (Option<i32>, String) {
    let path = dir.join("keel.ron");
    std::fs::write(&path, ron).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .current_dir(dir)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), all)
}

#[test]
fn a_file_the_stream_would_refuse_fails_the_check() {
    let dir = tmp("refused");
    let not_pem = dir.join("not-a-cert.pem").display().to_string();
    std::fs::write(&not_pem, "hello").unwrap();
    let a_file = dir.join("a-file").display().to_string();
    std::fs::write(&a_file, "").unwrap();
    let cases = [
        // Each bad input and what the message must name.
        (
            r#"(stream: (url: "wss://not a host:99999/"), rest: (backfill: false))"#.to_string(),
            vec!["stream.url = wss://not a host:99999/ is invalid", "\"not a host\" holds ' '"],
        ),
        (
            r#"(tls: (ca_file: Some("/nonexistent/ca.pem")))"#.to_string(),
            vec!["cannot read the CA file /nonexistent/ca.pem", "tls.ca_file", "1 unusable path(s)"],
        ),
        (
            format!("(tls: (ca_file: Some({not_pem:?})))"),
            vec!["holds no valid PEM or DER certificate", "tls.ca_file", &not_pem],
        ),
        (format!("(stream: (out_dir: {a_file:?}))"), vec!["stream.out_dir", "is not a directory"]),
    ];
    for (ron, needles) in cases {
        let (code, all) = check(&dir, &ron);
        assert_eq!(code, Some(1), "{ron}: {all}");
        assert!(!all.contains(": ok"), "{ron}: {all}");
        for needle in needles {
            assert!(all.contains(needle), "{ron}: {needle:?} missing from: {all}");
        }
    }
}

#[test]
fn a_relative_ca_path_that_is_missing_says_where_it_was_looked_for() {
    let dir = tmp("relative");
    let (code, all) = check(&dir, r#"(tls: (ca_file: Some("certs/missing-ca.pem")))"#);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("certs/missing-ca.pem") && all.contains("a relative path is read from"), "{all}");
}

#[test]
fn a_usable_file_is_ok() {
    let dir = tmp("ok");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, keel::exchange::generate_certs("config check CA").unwrap().ca_pem).unwrap();
    let ron = format!(
        r#"(stream: (url: "wss://localhost:9443", out_dir: {:?}), rest: (url: "https://localhost:9444"), tls: (ca_file: Some({:?})))"#,
        dir.join("data").display().to_string(),
        ca.display().to_string()
    );
    let (code, all) = check(&dir, &ron);
    assert_eq!(code, Some(0), "{all}");
    assert!(all.trim_end().ends_with(": ok"), "{all}");
    assert!(!dir.join("data").exists(), "the check creates nothing");
}

#[test]
fn one_check_names_out_of_range_values_and_unusable_paths_together() {
    // Before, a file with a bad value stopped at the values, and the missing CA file surfaced only
    // on the second run, after the value was fixed.
    let dir = tmp("both");
    let (code, all) = check(&dir, r#"(heartbeat: (ping_interval_ms: 0), tls: (ca_file: Some("/nonexistent/ca.pem")))"#);
    assert_eq!(code, Some(1), "{all}");
    for needle in [
        "heartbeat.ping_interval_ms",
        "cannot read the CA file /nonexistent/ca.pem",
        "2 invalid value(s), 1 unusable path(s)", // the zero also breaks pong < ping
    ] {
        assert!(all.contains(needle), "{needle:?} missing from: {all}");
    }
}

#[test]
fn a_file_that_does_not_parse_is_reported_without_path_checks() {
    let dir = tmp("unparsed");
    let (code, all) = check(&dir, r#"(heartbeet: (), tls: (ca_file: Some("/nonexistent/ca.pem")))"#);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("heartbeet"), "{all}");
    assert!(!all.contains("CA file"), "a file that does not parse has no paths to check: {all}");
}

#[test]
fn a_legal_value_that_keeps_the_feed_down_for_ages_passes_with_a_caution() {
    // Before, `rate_limit_floor_ms: u64::MAX` said "ok", and the first 1008 close or bare 429 then
    // waited forever with nothing saying why.
    let dir = tmp("caution");
    let (code, all) = check(&dir, "(reconnect: (rate_limit_floor_ms: 18446744073709551615), rest: (backfill: false))");
    assert_eq!(code, Some(0), "cautioned, not refused: {all}");
    for needle in [
        "caution: reconnect.rate_limit_floor_ms = 18446744073709551615 is allowed, but",
        "584542046 years",
        "the default is 60000",
        "ok, with 1 caution(s) above",
    ] {
        assert!(all.contains(needle), "{needle:?} missing from: {all}");
    }
}

#[test]
fn the_stream_logs_each_caution_on_start() {
    use keel::exchange::{Exchange, ExchangeConfig};
    let ex = Exchange::start(ExchangeConfig::default()).unwrap();
    let dir = tmp("stream-caution");
    let mut cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), &["btcusdt@aggTrade"]).unwrap();
    cfg.reconnect.max_delay_ms = 86_400_000;
    std::fs::write(dir.join("keel.ron"), cfg.to_ron()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["stream", "--duration", "1", "--no-record", "--config"])
        .arg(dir.join("keel.ron"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "a caution does not stop the run: {stderr}");
    assert!(
        stderr.contains("configuration caution: reconnect.max_delay_ms = 86400000 is allowed, but")
            && stderr.contains("up to 24 h"),
        "{stderr}"
    );
}
