//! keel's REST client (adapters/src/rest.rs) against the embedded exchange's REST server over real TLS.

use keel::exchange::{Exchange, ExchangeConfig, ExchangeHandle, RestFault};
use keel::rest::{RestClient, RestClientError};
use keel_core::config::Config;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn start() -> ExchangeHandle {
    Exchange::start(ExchangeConfig { tick: Duration::from_millis(20), ..ExchangeConfig::default() }).unwrap()
}

fn ca_file(name: &str, pem: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-zero-gap-client-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn config(ca: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.tls.ca_file = Some(ca.display().to_string());
    cfg
}

#[test]
fn one_kept_alive_connection_serves_every_request() {
    let ex = start();
    // `limit=3` returns 3 trades only once the market has made 3 (a tick is 20 ms; under load the
    // first request could come earlier: this test failed 2 times in 5 on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    while ex.produced("btcusdt@aggTrade").is_none_or(|(lo, hi)| hi < lo + 2) {
        assert!(Instant::now() < deadline, "the exchange produced no 3 aggTrades in 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let cfg = config(&ca_file("alive", ex.ca_pem()));
    let mut client = RestClient::from_config(&ex.rest_url(), &cfg).unwrap();
    smol::block_on(async {
        for i in 1..=5u32 {
            let r = client.get("/api/v3/aggTrades?symbol=BTCUSDT&limit=3").await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.used_weight, Some(4 * i));
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v.as_array().map(Vec::len), Some(3));
        }
        let r = client.get("/api/v3/depth?symbol=BTCUSDT&limit=5").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["bids"].as_array().map(Vec::len), Some(5));
        assert_eq!(client.connects(), 1, "the connection is reused");
        // Errors are answers too: status and Binance's body, no panic, same connection.
        let r = client.get("/api/v3/depth?symbol=NOPE").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (400, r#"{"code":-1121,"msg":"Invalid symbol."}"#));
        assert_eq!(client.connects(), 1);
    });
    assert_eq!(ex.rest_requests().len(), 7);
}

#[test]
fn klines_take_binances_time_zones_and_refuse_others_with_its_error_body() {
    let ex = start();
    let cfg = config(&ca_file("tz", ex.ca_pem()));
    let mut client = RestClient::from_config(&ex.rest_url(), &cfg).unwrap();
    smol::block_on(async {
        let path = |tz: &str| format!("/api/v3/klines?symbol=BTCUSDT&interval=1d&timeZone={tz}");
        for tz in ["%2B08%3A00", "8", "-1:00", "05%3A45", "0"] {
            let r = client.get(&path(tz)).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "[]"), "{tz}");
        }
        let r = client.get(&path("%2B15%3A00")).await.unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (400, r#"{"code":-1130,"msg":"Data sent for parameter 'timeZone' is not valid."}"#)
        );
        let r = client.get(&path("Asia%2FShanghai")).await.unwrap();
        assert_eq!(r.status, 400);
        assert!(r.body.contains("-1100") && r.body.contains("[-12:00 to +14:00]"), "{}", r.body);
    });
}

#[test]
fn rate_limits_and_failures_are_reported_as_seen() {
    let ex = start();
    let cfg = config(&ca_file("faults", ex.ca_pem()));
    ex.rest_fault_next(vec![
        RestFault::RateLimited { retry_after_secs: Some(3) },
        RestFault::Banned { retry_after_secs: Some(300) },
        RestFault::ServerError,
        RestFault::Slow { delay: Duration::from_millis(1500) },
    ]);
    let settings = keel::stream::transport::TransportSettings::from_config(&cfg).unwrap();
    let mut client =
        RestClient::new(&ex.rest_url(), settings, Duration::from_secs(5), Duration::from_millis(400)).unwrap();
    smol::block_on(async {
        let path = "/api/v3/aggTrades?symbol=BTCUSDT&limit=1";
        let r = client.get(path).await.unwrap();
        assert_eq!((r.status, r.retry_after), (429, Some(Duration::from_secs(3))));
        let r = client.get(path).await.unwrap();
        assert_eq!((r.status, r.retry_after), (418, Some(Duration::from_secs(300))));
        assert_eq!(client.get(path).await.unwrap().status, 500);
        let t = Instant::now();
        let e = client.get(path).await.unwrap_err();
        assert!(matches!(e, RestClientError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_millis(1200), "the deadline cut it: {:?}", t.elapsed());
        // The cut connection is replaced.
        assert_eq!(client.get(path).await.unwrap().status, 200);
        assert_eq!(client.connects(), 2);
    });
}

#[test]
fn wrong_ca_refused_port_and_bad_url_are_clear_errors() {
    let ex = start();
    let other = keel::exchange::generate_certs("some other CA").unwrap();
    let cfg = config(&ca_file("wrong", &other.ca_pem));
    let mut client = RestClient::from_config(&ex.rest_url(), &cfg).unwrap();
    smol::block_on(async {
        let e = client.get("/api/v3/ping").await.unwrap_err();
        assert!(matches!(e, RestClientError::Certificate { .. }), "{e:?}");
        assert!(e.to_string().contains("--ca-file"), "{e}");
        assert!(ex.rest_requests().is_empty());

        // A port nobody listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut client = RestClient::from_config(&format!("https://localhost:{free}"), &cfg).unwrap();
        let e = client.get("/api/v3/ping").await.unwrap_err();
        assert!(matches!(e, RestClientError::Connect { .. }), "{e:?}");
    });
    let e = RestClient::from_config("http://localhost:1", &cfg).err().unwrap();
    assert!(e.to_string().contains("only https://"), "{e}");
}
