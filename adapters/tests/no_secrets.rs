//! No secret is logged: a listenKey-style path segment and credential-like query values given to
//! `keel stream` appear in no log line, no stats JSON and no error message (README "Secrets").

mod common;

use common::tmp;

use keel::exchange::{Exchange, ExchangeConfig};
use std::process::{Command, Output};

/// 64 characters, like a Binance listenKey.
const LISTEN_KEY: &str = "Zq8VnW3xT5yR1uI0oP9aS7dF6gH4jK2lZ1xC3vB5nM7qW9eR2tY4uI6oP8aS0dFg";
const SIGNATURE: &str = "c0ffee5a1d7e6b9f8e7d6c5b4a3928170f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn assert_clean(what: &str, text: &str) {
    for secret in [LISTEN_KEY, SIGNATURE] {
        assert!(!text.contains(secret), "{what} leaks a secret:\n{text}");
    }
}

fn run(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel")).args(args).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, all)
}

#[test]
fn a_listen_key_in_the_url_is_never_logged_nor_in_stats() {
    let ex = Exchange::start(ExchangeConfig::default()).unwrap();
    let dir = tmp("stream");
    ex.write_ca(&dir.join("ca.pem")).unwrap();
    let host = ex.url().trim_start_matches("wss://").to_string();
    let stats = dir.join("stats.json");
    // A listenKey in the path plus a signature (the exchange refuses the path: the error path), and
    // a password in the userinfo (the exchange accepts it: the live path); the most verbose logs.
    let cases = [
        ("text", format!("wss://{host}/ws/{LISTEN_KEY}?signature={SIGNATURE}"), format!("{host}/ws/<redacted>")),
        ("json", format!("wss://keel:{SIGNATURE}@{host}"), format!("<redacted>@{host}")),
    ];
    for (format, url, shown) in cases {
        let (_, all) = run(&[
            "stream",
            "--log-format",
            format,
            "--log",
            "trace",
            "--url",
            &url,
            "--rest-url",
            &ex.rest_url(),
            "--streams",
            "btcusdt@aggTrade",
            "--duration",
            "1",
            "--no-record",
            "--ca-file",
            dir.join("ca.pem").to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ]);
        assert_clean("the output", &all);
        // The URL is still shown, with the secret parts replaced.
        assert!(all.contains(&shown), "{all}");
        let stats = std::fs::read_to_string(&stats).unwrap();
        assert_clean("--stats-json", &stats);
    }
    // A URL keel refuses (plain ws://) is named in the error, redacted.
    let bad = format!("ws://127.0.0.1:1/ws/{LISTEN_KEY}");
    let (out, all) = run(&["stream", "--url", &bad, "--duration", "1", "--no-record"]);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("stream.url"), "{all}");
    assert_clean("the config error", &all);
}

#[test]
fn a_secret_in_the_config_file_is_not_echoed_by_config_check() {
    let dir = tmp("config");
    let path = dir.join("keel.ron");
    std::fs::write(&path, format!("(stream: (url: \"ws://user:{SIGNATURE}@example.org/ws/{LISTEN_KEY}\"))")).unwrap();
    let (out, all) = run(&["config", "check", path.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("ws://<redacted>@example.org/ws/<redacted>"), "{all}");
    assert_clean("keel config check", &all);
}
