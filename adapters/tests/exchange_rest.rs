//! The embedded exchange's REST server against a plain HTTP/1.1-over-TLS client written here (no
//! keel client code): same state as the streams, Binance shapes, errors, weight, faults.

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
mod common;

use common::{Reply, https_get};
use keel::exchange::{Exchange, ExchangeConfig, ExchangeHandle, Fault, RestFault};
use smol::future::FutureExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn start(cfg: ExchangeConfig) -> ExchangeHandle {
    Exchange::start(ExchangeConfig { tick: Duration::from_millis(20), ..cfg }).unwrap()
}

fn connector(ex: &ExchangeHandle) -> async_native_tls::TlsConnector {
    async_native_tls::TlsConnector::new()
        .add_root_certificate(native_tls::Certificate::from_pem(ex.ca_pem().as_bytes()).unwrap())
}

/// One `GET path` on a fresh connection, trusting only the exchange's CA.
async fn get(ex: &ExchangeHandle, path: &str) -> Reply {
    https_get(ex.rest_addr(), ex.ca_pem().as_bytes(), path).await
}

type Ws = async_tungstenite::WebSocketStream<async_native_tls::TlsStream<smol::net::TcpStream>>;

async fn ws(ex: &ExchangeHandle, streams: &str) -> Ws {
    let tcp = smol::net::TcpStream::connect(ex.addr()).await.unwrap();
    let tls = connector(ex).connect("localhost", tcp).await.unwrap();
    let url = format!("{}/stream?streams={streams}", ex.url());
    async_tungstenite::client_async(url, tls).await.unwrap().0
}

async fn next_data(ws: &mut Ws) -> (String, serde_json::Value) {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    return (v["stream"].as_str().unwrap().to_string(), v["data"].take());
                }
                Some(Ok(_)) => continue,
                other => panic!("stream ended: {other:?}"),
            }
        }
    };
    read.or(async {
        smol::Timer::after(Duration::from_secs(3)).await;
        panic!("no frame within 3 s")
    })
    .await
}

#[test]
fn agg_trades_over_rest_are_the_streamed_ones() {
    let ex = start(ExchangeConfig::default());
    smol::block_on(async {
        let mut w = ws(&ex, "btcusdt@aggTrade").await;
        let mut streamed = Vec::new();
        for _ in 0..20 {
            let (_, mut v) = next_data(&mut w).await;
            let o = v.as_object_mut().unwrap();
            for k in ["e", "E", "s"] {
                o.remove(k);
            }
            streamed.push(v);
        }
        let first = streamed[0]["a"].as_u64().unwrap();
        let r = get(&ex, &format!("/api/v3/aggTrades?symbol=BTCUSDT&fromId={first}&limit=20")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers.get("x-mbx-used-weight-1m").map(String::as_str), Some("4"));
        assert_eq!(r.json(), serde_json::Value::Array(streamed));
        // Default limit 500; without fromId, the most recent trades.
        let recent = get(&ex, "/api/v3/aggTrades?symbol=BTCUSDT").await.json();
        let ids: Vec<u64> = recent.as_array().unwrap().iter().map(|t| t["a"].as_u64().unwrap()).collect();
        assert!(ids.len() >= 20 && ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        assert_eq!(get(&ex, "/api/v3/ping").await.body, "{}");
    });
}

/// Binance's procedure: buffer diffs, take the snapshot, drop u <= lastUpdateId, the first applied
/// one straddles it, each next U is the previous u + 1; the book then equals a later snapshot.
#[test]
fn depth_snapshot_and_diffs_build_the_exchange_book() {
    let ex = start(ExchangeConfig::default());
    type Side = BTreeMap<String, String>;
    fn apply(side: &mut Side, levels: &serde_json::Value) {
        for l in levels.as_array().unwrap() {
            let (p, q) = (l[0].as_str().unwrap(), l[1].as_str().unwrap());
            if q.parse::<f64>().unwrap() == 0.0 {
                side.remove(p);
            } else {
                side.insert(p.to_string(), q.to_string());
            }
        }
    }
    fn side(v: &serde_json::Value) -> Side {
        v.as_array().unwrap().iter().map(|l| (l[0].as_str().unwrap().into(), l[1].as_str().unwrap().into())).collect()
    }
    smol::block_on(async {
        let mut w = ws(&ex, "btcusdt@depth/ethusdt@depth").await;
        let (_, first) = next_data(&mut w).await;
        let snap = get(&ex, "/api/v3/depth?symbol=BTCUSDT&limit=1000").await;
        assert_eq!(snap.headers.get("x-mbx-used-weight-1m").map(String::as_str), Some("50"));
        let snap = snap.json();
        let last_id = snap["lastUpdateId"].as_u64().unwrap();
        assert!(first["U"].as_u64().is_some());
        let (mut bids, mut asks) = (side(&snap["bids"]), side(&snap["asks"]));
        let mut prev: Option<u64> = None;
        let mut later: Option<serde_json::Value> = None;
        let mut applied = 0;
        for _ in 0..400 {
            let (stream, d) = next_data(&mut w).await;
            if stream != "btcusdt@depth" {
                continue;
            }
            let (lo, hi) = (d["U"].as_u64().unwrap(), d["u"].as_u64().unwrap());
            if hi <= last_id {
                continue;
            }
            match prev {
                None => assert!(lo <= last_id + 1 && last_id < hi, "first diff straddles the snapshot"),
                Some(p) => assert_eq!(lo, p + 1, "continuous U/u"),
            }
            prev = Some(hi);
            apply(&mut bids, &d["b"]);
            apply(&mut asks, &d["a"]);
            applied += 1;
            if applied == 5 {
                later = Some(get(&ex, "/api/v3/depth?symbol=BTCUSDT&limit=5000").await.json());
            }
            if let Some(l) = later.as_ref().filter(|l| l["lastUpdateId"].as_u64() == Some(hi)) {
                assert_eq!(bids, side(&l["bids"]));
                assert_eq!(asks, side(&l["asks"]));
                return;
            }
        }
        panic!("never reached the later snapshot's lastUpdateId");
    });
}

#[test]
fn bad_parameters_get_binance_error_bodies() {
    let ex = start(ExchangeConfig::default());
    smol::block_on(async {
        let table = [
            ("/api/v3/aggTrades?symbol=NOPEUSDT", 400, -1121),
            ("/api/v3/aggTrades?symbol=btcusdt", 400, -1121),
            ("/api/v3/aggTrades", 400, -1102),
            ("/api/v3/aggTrades?symbol=BTCUSDT&limit=1001", 400, -1130),
            ("/api/v3/aggTrades?symbol=BTCUSDT&fromId=abc", 400, -1100),
            ("/api/v3/aggTrades?symbol=BTCUSDT&startTime=1", 400, -1104),
            ("/api/v3/depth?symbol=XRPUSDT", 400, -1121),
            ("/api/v3/depth?symbol=BTCUSDT&limit=0", 400, -1130),
            ("/api/v3/klines?symbol=BTCUSDT", 400, -1102),
            ("/api/v3/klines?symbol=BTCUSDT&interval=7m", 400, -1120),
            ("/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=5&endTime=4", 400, -1023),
            ("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1001", 400, -1130),
            ("/api/v3/klines?symbol=BTCUSDT&interval=1m&timeZone=%2B15%3A00", 400, -1130),
            ("/api/v3/klines?symbol=BTCUSDT&interval=1m&timeZone=UTC", 400, -1100),
            ("/api/v3/klines?symbol=NOPEUSDT&interval=1m", 400, -1121),
            ("/api/v3/historicalTrades?symbol=BTCUSDT&limit=0", 400, -1130),
            ("/api/v3/historicalTrades?symbol=BTCUSDT&startTime=1", 400, -1104),
            ("/api/v3/historicalTrades?symbol=NOPEUSDT", 400, -1121),
            ("/api/v3/uiKlines?symbol=BTCUSDT", 404, -1000),
        ];
        for (path, status, code) in table {
            let r = get(&ex, path).await;
            assert_eq!((r.status, r.json()["code"].as_i64()), (status, Some(code)), "{path}: {}", r.body);
            assert!(r.json()["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert_eq!(
            get(&ex, "/api/v3/aggTrades?symbol=NOPEUSDT").await.body,
            r#"{"code":-1121,"msg":"Invalid symbol."}"#
        );
        // A depth limit past 5000 is cut to 5000 (weight 250), as on Binance.
        let r = get(&ex, "/api/v3/depth?symbol=ETHUSDT&limit=9000").await;
        assert_eq!(r.status, 200);
        assert!(r.json()["bids"].as_array().is_some_and(|b| !b.is_empty()));
    });
}

#[test]
fn rest_faults_on_demand_and_the_weight_limit() {
    let ex = start(ExchangeConfig { rest_weight_limit: 20, ..ExchangeConfig::default() });
    ex.rest_fault_next(vec![
        RestFault::RateLimited { retry_after_secs: Some(3) },
        RestFault::Banned { retry_after_secs: Some(120) },
        RestFault::ServerError,
        RestFault::Slow { delay: Duration::from_millis(300) },
    ]);
    smol::block_on(async {
        let path = "/api/v3/aggTrades?symbol=BTCUSDT&limit=1";
        let r = get(&ex, path).await;
        assert_eq!((r.status, r.headers.get("retry-after").cloned()), (429, Some("3".to_string())));
        assert_eq!(r.json()["code"], -1003);
        let r = get(&ex, path).await;
        assert_eq!((r.status, r.headers.get("retry-after").cloned()), (418, Some("120".to_string())));
        assert_eq!(get(&ex, path).await.status, 500);
        let t = Instant::now();
        assert_eq!(get(&ex, path).await.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Faults cost no weight; the slow one cost 4. Four more fit in 20, the fifth is refused.
        for used in [8, 12, 16, 20] {
            let r = get(&ex, path).await;
            assert_eq!((r.status, r.headers["x-mbx-used-weight-1m"].clone()), (200, used.to_string()));
        }
        let r = get(&ex, path).await;
        assert_eq!(r.status, 429);
        let wait: u64 = r.headers["retry-after"].parse().unwrap();
        assert!((50..=60).contains(&wait), "Retry-After {wait}");
        let log = ex.rest_requests();
        assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 418, 500, 200, 200, 200, 200, 200, 429]);
    });
}

#[test]
fn drop_depth_fault_leaves_a_gap_of_exactly_that_diff() {
    let ex = start(ExchangeConfig::default());
    ex.fault_next(vec![Fault::DropDepth { after: 6 }]);
    smol::block_on(async {
        // Binance's update-speed spelling gets the same diffs under its own name.
        let mut w = ws(&ex, "btcusdt@depth@100ms/ethusdt@depth").await;
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        let mut gaps = Vec::new();
        for _ in 0..30 {
            let (stream, d) = next_data(&mut w).await;
            let (lo, hi) = (d["U"].as_u64().unwrap(), d["u"].as_u64().unwrap());
            if let Some(p) = last.get(&stream).filter(|p| lo != **p + 1) {
                gaps.push((stream.clone(), p + 1, lo - 1));
            }
            last.insert(stream, hi);
        }
        assert_eq!(last.keys().collect::<Vec<_>>(), ["btcusdt@depth@100ms", "ethusdt@depth"]);
        let dropped = ex.connections()[0].dropped_depth.clone();
        assert_eq!(dropped.len(), 1);
        assert_eq!(gaps, dropped);
    });
}
