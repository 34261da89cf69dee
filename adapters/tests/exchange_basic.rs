//! The embedded exchange against a plain async-tungstenite client over real TLS (no keel client code).

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::{self, Message};
use futures_util::StreamExt;
use keel::exchange::{Exchange, ExchangeConfig, ExchangeHandle, Fault, FaultPlan};
use smol::future::FutureExt;
use std::time::Duration;

type Ws = WebSocketStream<async_native_tls::TlsStream<smol::net::TcpStream>>;

fn start(faults: FaultPlan) -> ExchangeHandle {
    let cfg = ExchangeConfig {
        tick: Duration::from_millis(20),
        ping_interval: Duration::from_millis(300),
        faults,
        ..ExchangeConfig::default()
    };
    Exchange::start(cfg).unwrap()
}

async fn connect_with(ex: &ExchangeHandle, ca_pem: &str, path: &str) -> Result<Ws, tungstenite::Error> {
    let tcp = smol::net::TcpStream::connect(ex.addr()).await?;
    let connector = async_native_tls::TlsConnector::new()
        .add_root_certificate(native_tls::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    let tls =
        connector.connect("localhost", tcp).await.map_err(|e| tungstenite::Error::Io(std::io::Error::other(e)))?;
    let (ws, _) = async_tungstenite::client_async(format!("{}{path}", ex.url()), tls).await?;
    Ok(ws)
}

async fn connect(ex: &ExchangeHandle, path: &str) -> Ws {
    connect_with(ex, ex.ca_pem(), path).await.unwrap()
}

/// The next text frame as JSON, within 3 s (pings are skipped; tungstenite answers them).
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match next_msg(ws).await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t.to_string()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn next_msg(ws: &mut Ws) -> Option<Result<Message, tungstenite::Error>> {
    async { ws.next().await }
        .or(async {
            smol::Timer::after(Duration::from_secs(3)).await;
            panic!("no frame within 3 s")
        })
        .await
}

async fn send(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

#[test]
fn combined_streams_requests_and_errors() {
    let ex = start(FaultPlan::default());
    smol::block_on(async {
        let mut ws = connect(&ex, "/stream?streams=btcusdt@aggTrade").await;
        let mut last = None;
        for _ in 0..5 {
            let v = next_json(&mut ws).await;
            assert_eq!(v["stream"], "btcusdt@aggTrade");
            let a = v["data"]["a"].as_u64().unwrap();
            if let Some(l) = last {
                assert_eq!(a, l + 1, "aggTrade ids continuous");
            }
            last = Some(a);
        }
        send(&mut ws, serde_json::json!({"method":"SUBSCRIBE","params":["ethusdt@kline_1m"],"id":7})).await;
        send(&mut ws, serde_json::json!({"method":"LIST_SUBSCRIPTIONS","id":8})).await;
        send(&mut ws, serde_json::json!({"method":"SUBSCRIBE","params":["btcusdt@nonsense"],"id":9})).await;
        send(&mut ws, serde_json::json!({"method":"FLY","id":10})).await;
        ws.send(Message::text("{not json")).await.unwrap();
        let mut replies = Vec::new();
        let mut saw_kline = false;
        while replies.len() < 5 || !saw_kline {
            let v = next_json(&mut ws).await;
            if v.get("stream").is_some() {
                saw_kline |= v["stream"] == "ethusdt@kline_1m";
            } else {
                replies.push(v);
            }
        }
        assert_eq!(replies[0], serde_json::json!({"result": null, "id": 7}));
        assert_eq!(replies[1], serde_json::json!({"result": ["btcusdt@aggTrade", "ethusdt@kline_1m"], "id": 8}));
        assert_eq!((replies[2]["error"]["code"].as_i64(), replies[2]["id"].as_u64()), (Some(2), Some(9)));
        assert!(replies[2]["error"]["msg"].as_str().unwrap().contains("btcusdt@nonsense"));
        assert_eq!(replies[3]["error"]["code"], 0);
        assert_eq!((replies[4]["error"]["code"].as_i64(), replies[4]["id"].is_null()), (Some(3), true));
    });
    let infos = ex.connections();
    assert_eq!(infos[0].subscriptions, vec!["btcusdt@aggTrade".to_string(), "ethusdt@kline_1m".to_string()]);
}

#[test]
fn raw_streams_have_no_envelope_and_bad_paths_are_refused() {
    let ex = start(FaultPlan::default());
    smol::block_on(async {
        let mut ws = connect(&ex, "/ws/ethusdt@depth").await;
        let v = next_json(&mut ws).await;
        assert_eq!(v["e"], "depthUpdate");
        assert!(v.get("stream").is_none());
        match connect_with(&ex, ex.ca_pem(), "/ws/btcusdt@bogus").await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
            other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
        }
    });
}

#[test]
fn ids_continue_across_connections_so_an_absent_client_sees_a_gap() {
    let ex = start(FaultPlan::default());
    smol::block_on(async {
        let stream = "/stream?streams=btcusdt@aggTrade";
        let mut ws = connect(&ex, stream).await;
        let mut last = 0;
        for _ in 0..3 {
            last = next_json(&mut ws).await["data"]["a"].as_u64().unwrap();
        }
        ws.close(None).await.unwrap();
        drop(ws);
        smol::Timer::after(Duration::from_millis(200)).await;
        let mut ws = connect(&ex, stream).await;
        let first = next_json(&mut ws).await["data"]["a"].as_u64().unwrap();
        assert!(first > last + 1, "the market kept trading while nobody listened: {last} then {first}");
        // The exchange's own account of what was skipped agrees with what the client saw.
        smol::Timer::after(Duration::from_millis(100)).await;
        let skipped = ex.skipped("btcusdt@aggTrade");
        assert_eq!(skipped.first(), Some(&(last + 1, first - 1)), "{skipped:?}");
    });
}

#[test]
fn server_pings_and_wrong_ca_is_rejected() {
    let ex = start(FaultPlan::default());
    let other = keel::exchange::generate_certs("another CA").unwrap();
    smol::block_on(async {
        let mut ws = connect(&ex, "/ws").await;
        let got_ping = loop {
            match next_msg(&mut ws).await {
                Some(Ok(Message::Ping(p))) => break p,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert!(!got_ping.is_empty());
        let err = connect_with(&ex, &other.ca_pem, "/ws").await.map(|_| ()).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    });
}

#[test]
fn upgrade_rejection_then_success() {
    let ex = start(FaultPlan::default().on(0, Fault::RejectUpgrade { status: 429, retry_after_secs: Some(3) }));
    smol::block_on(async {
        match connect_with(&ex, ex.ca_pem(), "/ws/btcusdt@trade").await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                assert_eq!(resp.headers()["retry-after"], "3");
            }
            other => panic!("expected HTTP 429, got {:?}", other.map(|_| ())),
        }
        let mut ws = connect(&ex, "/ws/btcusdt@trade").await;
        assert_eq!(next_json(&mut ws).await["e"], "trade");
    });
    assert_eq!(ex.connections()[0].rejected, Some(429));
}

#[test]
fn close_code_reset_eof_malformed_and_stall() {
    let plan = FaultPlan::default()
        .on(0, Fault::Close { after: 3, code: 1008 })
        .on(1, Fault::Reset { after: 2 })
        .on(2, Fault::Eof { after: 2 })
        .on(3, Fault::Malformed { every: 2 })
        .on(4, Fault::Stall { after: 1 });
    let ex = start(plan);
    let path = "/stream?streams=btcusdt@aggTrade";
    smol::block_on(async {
        // 0: three frames, then a close frame with 1008.
        let mut ws = connect(&ex, path).await;
        for _ in 0..3 {
            assert_eq!(next_json(&mut ws).await["stream"], "btcusdt@aggTrade");
        }
        loop {
            match next_msg(&mut ws).await {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 1008);
                    break;
                }
                Some(Ok(Message::Ping(_))) => continue,
                other => panic!("expected close 1008, got {other:?}"),
            }
        }
        // 1: two frames, then an abrupt reset.
        let mut ws = connect(&ex, path).await;
        next_json(&mut ws).await;
        next_json(&mut ws).await;
        let end = loop {
            match next_msg(&mut ws).await {
                Some(Ok(Message::Ping(_))) => continue,
                other => break other,
            }
        };
        match end {
            Some(Err(tungstenite::Error::Io(e))) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            other => panic!("expected a reset, got {other:?}"),
        }
        // 2: two frames, then TCP EOF without close_notify.
        let mut ws = connect(&ex, path).await;
        next_json(&mut ws).await;
        next_json(&mut ws).await;
        let end = loop {
            match next_msg(&mut ws).await {
                Some(Ok(Message::Ping(_))) => continue,
                other => break other,
            }
        };
        assert!(matches!(end, Some(Err(_)) | None), "expected an abrupt end, got {end:?}");
        // 3: a malformed frame after every second market frame; the market frames keep coming.
        let mut ws = connect(&ex, path).await;
        let mut kinds = Vec::new();
        for _ in 0..6 {
            kinds.push(next_json(&mut ws).await.get("data").is_some_and(|d| d.get("p").is_some()));
        }
        assert_eq!(kinds, vec![true, true, false, true, true, false]);
        // 4: one frame, then silence: no data and no pong for our ping.
        let mut ws = connect(&ex, path).await;
        next_json(&mut ws).await;
        ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
        let silent = async {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Text(t)) => panic!("data after a stall: {t}"),
                    Ok(Message::Pong(_)) => panic!("pong after a stall"),
                    _ => {}
                }
            }
            false
        }
        .or(async {
            smol::Timer::after(Duration::from_millis(700)).await;
            true
        })
        .await;
        assert!(silent);
    });
    let infos = ex.connections();
    assert_eq!(infos[0].frames_sent, 3);
    assert!(infos[3].malformed_sent >= 2);
}

#[test]
fn cutoff_announces_server_shutdown_then_closes_1001_and_injection_works() {
    let ex = start(FaultPlan::default().on(0, Fault::Cutoff { after: Duration::from_millis(600) }));
    smol::block_on(async {
        let mut ws = connect(&ex, "/ws/btcusdt@aggTrade").await;
        let mut saw_shutdown = false;
        loop {
            match next_msg(&mut ws).await {
                Some(Ok(Message::Text(t))) => saw_shutdown |= t.contains(r#""e":"serverShutdown""#),
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 1001);
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("expected close 1001, got {other:?}"),
            }
        }
        assert!(saw_shutdown, "serverShutdown must precede the cutoff");

        // Runtime injection: a live connection gets a close with 1008 on demand.
        let mut ws = connect(&ex, "/ws/btcusdt@aggTrade").await;
        next_json(&mut ws).await;
        assert_eq!(ex.inject(Fault::Close { after: 0, code: 1008 }), 1);
        loop {
            match next_msg(&mut ws).await {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 1008);
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("expected close 1008, got {other:?}"),
            }
        }
    });
}

#[test]
fn slow_reads_delay_the_answers_to_requests() {
    let ex = start(FaultPlan::default().on(0, Fault::SlowReads { delay: Duration::from_millis(300) }));
    smol::block_on(async {
        let mut ws = connect(&ex, "/ws").await;
        let t0 = std::time::Instant::now();
        send(&mut ws, serde_json::json!({"method":"LIST_SUBSCRIPTIONS","id":1})).await;
        send(&mut ws, serde_json::json!({"method":"LIST_SUBSCRIPTIONS","id":2})).await;
        assert_eq!(next_json(&mut ws).await["id"], 1);
        assert_eq!(next_json(&mut ws).await["id"], 2);
        assert!(t0.elapsed() >= Duration::from_millis(300), "the second request was read without delay");
    });
}
