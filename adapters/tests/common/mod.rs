//! Helpers shared by the integration tests: a fresh scratch directory per test, and a plain
//! HTTP/1.1-over-TLS GET that trusts only the CA it is given (no keel client code, so a REST test
//! checks the exchange's server against an independent client).
//!
//! Each test binary compiles this module on its own and uses part of it.
#![allow(dead_code)]

use futures_util::{AsyncReadExt, AsyncWriteExt};
use smol::future::FutureExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// An empty directory for one test: named after the test binary, `name` and this process, so that
/// test binaries running side by side and a leftover from an earlier run never share one.
pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-{}-{name}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One HTTP answer, parsed by hand.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET path` on a fresh TLS connection to `addr` (`Connection: close`) for host name `localhost`,
/// trusting only `ca_pem`; panics if no answer comes within 5 s.
pub async fn https_get(addr: SocketAddr, ca_pem: &[u8], path: &str) -> Reply {
    let work = async {
        // Each step names itself when it fails: a flake under load (seen once, a connect) must say where.
        let ca = native_tls::Certificate::from_pem(ca_pem).unwrap_or_else(|e| panic!("CA PEM for {addr}: {e}"));
        let tcp = smol::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        let mut tls = async_native_tls::TlsConnector::new()
            .add_root_certificate(ca)
            .connect("localhost", tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap_or_else(|e| panic!("sending GET {path} to {addr}: {e}"));
        tls.flush().await.unwrap_or_else(|e| panic!("sending GET {path} to {addr}: {e}"));
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await.unwrap_or_else(|e| panic!("reading the answer to {path} from {addr}: {e}"));
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Reply { status, headers, body: body.to_string() }
    };
    work.or(async {
        smol::Timer::after(Duration::from_secs(5)).await;
        panic!("no REST answer within 5 s for {path}")
    })
    .await
}

/// The aggTrade ids recorded under `dir/data/<stream>/`, day files in order, rows in file order
/// (checks the header names the id column, so a column shift cannot pass unnoticed).
pub fn recorded_ids(dir: &std::path::Path, stream: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let sdir = dir.join("data").join(stream);
    let mut files: Vec<_> = std::fs::read_dir(&sdir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap().split(',').nth(1), Some("agg_id"));
        ids.extend(lines.map(|l| l.split(',').nth(1).unwrap().parse::<u64>().unwrap()));
    }
    ids
}

/// The embedded exchange on loopback with a market tick of `tick_ms` and server pings every 400 ms,
/// so that a test sees many events and heartbeats within a second or two.
pub fn exchange(tick_ms: u64, faults: keel::exchange::FaultPlan) -> keel::exchange::ExchangeHandle {
    keel::exchange::Exchange::start(keel::exchange::ExchangeConfig {
        tick: Duration::from_millis(tick_ms),
        ping_interval: Duration::from_millis(400),
        faults,
        ..keel::exchange::ExchangeConfig::default()
    })
    .unwrap()
}
