use super::*;
use quickcheck::{Arbitrary, Gen, quickcheck};

fn d(s: &str) -> Decimal {
    Decimal::parse(s).unwrap()
}

const AGG: &str = r#"{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}"#;
const TRADE: &str = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;
const KLINE: &str = r#"{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,"s":"BNBBTC","i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":false,"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}"#;
const DEPTH: &str = r#"{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}"#;
const BOOK: &str =
    r#"{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#;
const PARTIAL: &str = r#"{"lastUpdateId":160,"bids":[["0.0024","10"]],"asks":[["0.0026","100"]]}"#;
// The samples of Binance's web-socket-streams.md, compacted as the server sends them.
const TICKER: &str = r#"{"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00","w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10","a":"0.0026","A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18","O":0,"C":86400000,"F":0,"L":18150,"n":18151}"#;
const TICKER_1H: &str = r#"{"e":"1hTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00","o":"0.0010","h":"0.0025","l":"0.0010","c":"0.0025","w":"0.0018","v":"10000","q":"18","O":0,"C":1675216573749,"F":0,"L":18150,"n":18151}"#;
const MINI: &str = r#"{"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18"}"#;
/// `!miniTicker@arr` and `!ticker_1h@arr` frames of two symbols.
const MINI_ARR: &str = r#"[{"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18"},{"e":"24hrMiniTicker","E":1672515782136,"s":"ETHUSDT","c":"3012.55","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18"}]"#;
const TICKER_1H_ARR: &str = r#"[{"e":"1hTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00","o":"0.0010","h":"0.0025","l":"0.0010","c":"0.0025","w":"0.0018","v":"10000","q":"18","O":0,"C":1675216573749,"F":0,"L":18150,"n":18151},{"e":"1hTicker","E":1672515782136,"s":"ETHUSDT","p":"0.0015","P":"250.00","o":"0.0010","h":"0.0025","l":"0.0010","c":"0.0025","w":"0.0018","v":"10000","q":"18","O":0,"C":1675216573749,"F":-1,"L":-1,"n":0}]"#;

fn agg_event() -> AggTrade {
    AggTrade {
        symbol: "BNBBTC".into(),
        event_time: 1672515782136,
        agg_id: 12345,
        price: d("0.001"),
        quantity: d("100"),
        first_trade_id: 100,
        last_trade_id: 105,
        trade_time: 1672515782136,
        buyer_is_maker: true,
    }
}

fn combined(stream: &str, data: &str) -> String {
    format!(r#"{{"stream":"{stream}","data":{data}}}"#)
}

#[test]
fn agg_trade_raw_and_combined() {
    let want = MarketEvent::AggTrade(agg_event());
    assert_eq!(decode(AGG), Ok(Frame::Market { stream: "bnbbtc@aggTrade".into(), event: want.clone() }));
    assert_eq!(
        decode(&combined("bnbbtc@aggTrade", AGG)),
        Ok(Frame::Market { stream: "bnbbtc@aggTrade".into(), event: want.clone() })
    );
    assert_eq!(want.sequence(), Sequence::AggTrade { id: 12345, first_trade: 100, last_trade: 105 });
    assert_eq!(want.symbol(), "BNBBTC");
    assert_eq!(want.event_time(), 1672515782136);
}

#[test]
fn trade_frame() {
    let Ok(Frame::Market { stream, event: MarketEvent::Trade(t) }) = decode(TRADE) else {
        panic!("{:?}", decode(TRADE))
    };
    assert_eq!(stream, "bnbbtc@trade");
    assert_eq!(
        t,
        Trade {
            symbol: "BNBBTC".into(),
            event_time: 1672515782136,
            trade_id: 12345,
            price: d("0.001"),
            quantity: d("100"),
            trade_time: 1672515782136,
            buyer_is_maker: true,
        }
    );
}

#[test]
fn kline_frame() {
    let Ok(Frame::Market { stream, event }) = decode(&combined("bnbbtc@kline_1m", KLINE)) else { panic!() };
    assert_eq!(stream, "bnbbtc@kline_1m");
    assert_eq!(event.sequence(), Sequence::Unsequenced);
    let MarketEvent::Kline(k) = event else { panic!() };
    assert_eq!(
        *k,
        Kline {
            symbol: "BNBBTC".into(),
            event_time: 1672515782136,
            open_time: 1672515780000,
            close_time: 1672515839999,
            interval: "1m".into(),
            first_trade_id: 100,
            last_trade_id: 200,
            open: d("0.0010"),
            high: d("0.0025"),
            low: d("0.0015"),
            close: d("0.0020"),
            volume: d("1000"),
            quote_volume: d("1.0000"),
            taker_buy_volume: d("500"),
            taker_buy_quote_volume: d("0.500"),
            trades: 100,
            is_closed: false,
        }
    );
    assert_eq!(k.open.to_string(), "0.0010", "trailing zeros kept for the recorder");
    // An interval without trades has f = L = -1.
    let empty = KLINE.replace(r#""f":100,"L":200"#, r#""f":-1,"L":-1"#);
    let Ok(Frame::Market { event: MarketEvent::Kline(k), .. }) = decode(&empty) else { panic!() };
    assert_eq!((k.first_trade_id, k.last_trade_id), (-1, -1));
}

#[test]
fn depth_frame() {
    let Ok(Frame::Market { stream, event }) = decode(DEPTH) else { panic!() };
    assert_eq!(stream, "bnbbtc@depth");
    assert_eq!(event.sequence(), Sequence::Depth { first: 157, last: 160 });
    assert_eq!(
        event,
        MarketEvent::Depth(DepthUpdate::new(
            "BNBBTC",
            1672515782136,
            157,
            160,
            vec![(d("0.0024"), d("10"))],
            vec![(d("0.0026"), d("100"))],
        ))
    );
    let empty_sides = DEPTH.replace(r#"[["0.0024","10"]]"#, "[]");
    let Ok(Frame::Market { event: MarketEvent::Depth(u), .. }) = decode(&empty_sides) else { panic!() };
    assert_eq!((u.bids(), u.asks()), (&[][..], &[(d("0.0026"), d("100"))][..]));
}

#[test]
fn depth_update_reads_and_serializes_as_two_lists() {
    let (bids, asks) = (vec![(d("0.0024"), d("10")), (d("0.0023"), d("0"))], vec![(d("0.0026"), d("100"))]);
    let u = DepthUpdate::new("BNBBTC", 1, 157, 160, bids.clone(), asks.clone());
    assert_eq!((u.bids(), u.asks()), (&bids[..], &asks[..]));
    // The shape of the two-list struct it replaced: traces and recordings written before still read.
    let value = serde_json::to_value(&u).unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["asks", "bids", "event_time", "final_update_id", "first_update_id", "symbol"]);
    assert_eq!(value["bids"], serde_json::to_value(&bids).unwrap());
    assert_eq!(value["asks"], serde_json::to_value(&asks).unwrap());
    assert_eq!(serde_json::from_value::<DepthUpdate>(value).unwrap(), u);
    assert_eq!(ron::from_str::<DepthUpdate>(&ron::to_string(&u).unwrap()).unwrap(), u);
    let shown = format!("{u:?}");
    assert!(shown.contains("bids: [(") && shown.contains("asks: [(") && !shown.contains("levels"), "{shown}");
}

#[test]
fn book_ticker_has_no_e_field() {
    let want = MarketEvent::BookTicker(BookTicker {
        symbol: "BNBUSDT".into(),
        update_id: 400900217,
        best_bid_price: d("25.35190000"),
        best_bid_qty: d("31.21000000"),
        best_ask_price: d("25.36520000"),
        best_ask_qty: d("40.66000000"),
        event_time: None,
    });
    assert_eq!(decode(BOOK), Ok(Frame::Market { stream: "bnbusdt@bookTicker".into(), event: want.clone() }));
    assert_eq!(
        decode(&combined("bnbusdt@bookTicker", BOOK)),
        Ok(Frame::Market { stream: "bnbusdt@bookTicker".into(), event: want.clone() })
    );
    assert_eq!(want.sequence(), Sequence::BookTicker { id: 400900217 });
    assert_eq!(want.event_time(), 0);
    // Futures-style, with "e" and "E".
    let futures =
        r#"{"e":"bookTicker","u":5,"E":1700000000000,"T":1,"s":"BTCUSDT","b":"1.0","B":"2","a":"1.1","A":"3"}"#;
    let Ok(Frame::Market { event, .. }) = decode(futures) else { panic!() };
    assert_eq!(event.event_time(), 1700000000000);
}

fn ticker_event() -> Ticker {
    Ticker {
        symbol: "BNBBTC".into(),
        event_time: 1672515782136,
        window: TickerWindow::Rolling24h(TickerExtras {
            prev_price: d("0.0009"),
            last_quantity: d("10"),
            best_bid_price: d("0.0024"),
            best_bid_qty: d("10"),
            best_ask_price: d("0.0026"),
            best_ask_qty: d("100"),
        }),
        price_change: d("0.0015"),
        price_change_percent: d("250.00"),
        weighted_avg_price: d("0.0018"),
        last_price: d("0.0025"),
        open: d("0.0010"),
        high: d("0.0025"),
        low: d("0.0010"),
        volume: d("10000"),
        quote_volume: d("18"),
        open_time: 0,
        close_time: 86400000,
        first_trade_id: 0,
        last_trade_id: 18150,
        trades: 18151,
    }
}

#[test]
fn ticker_24h_from_binance_docs() {
    let want = MarketEvent::Ticker(Box::new(ticker_event()));
    for (text, stream) in [
        (TICKER.to_string(), "bnbbtc@ticker"),
        (combined("bnbbtc@ticker", TICKER), "bnbbtc@ticker"),
        (combined("x@ticker", TICKER), "x@ticker"),
    ] {
        assert_eq!(decode(&text), Ok(Frame::Market { stream: stream.into(), event: want.clone() }), "{text}");
        assert!(fast::try_decode(&text).is_some(), "the fast path reads Binance's layout: {text}");
        assert_eq!(decode_general(&text), decode(&text));
    }
    assert_eq!(want.sequence(), Sequence::Unsequenced);
    assert_eq!((want.kind(), want.symbol(), want.event_time()), ("24hrTicker", "BNBBTC", 1672515782136));
    assert_eq!(encode_event(&want), TICKER, "encoded in Binance's order");
}

#[test]
fn rolling_window_tickers_lack_the_24h_fields() {
    let mut t = ticker_event();
    t.window = TickerWindow::Rolling1h;
    t.close_time = 1675216573749;
    let want = MarketEvent::Ticker(Box::new(t));
    assert_eq!(decode(TICKER_1H), Ok(Frame::Market { stream: "bnbbtc@ticker_1h".into(), event: want.clone() }));
    assert!(fast::try_decode(TICKER_1H).is_some());
    assert_eq!(encode_event(&want), TICKER_1H);
    // The three windows: event type, stream name, kind.
    for (e, window, stream) in [
        ("1hTicker", TickerWindow::Rolling1h, "bnbbtc@ticker_1h"),
        ("4hTicker", TickerWindow::Rolling4h, "bnbbtc@ticker_4h"),
        ("1dTicker", TickerWindow::Rolling1d, "bnbbtc@ticker_1d"),
    ] {
        let text = TICKER_1H.replace("1hTicker", e);
        let Ok(Frame::Market { stream: s, event: MarketEvent::Ticker(t) }) = decode(&text) else { panic!("{text}") };
        assert_eq!((s.as_str(), &t.window, MarketEvent::Ticker(t.clone()).kind()), (stream, &window, e));
    }
    // No trade in the window: F and L are -1 (as in Binance's REST ticker).
    let empty = TICKER_1H.replace(r#""F":0,"L":18150,"n":18151"#, r#""F":-1,"L":-1,"n":0"#);
    let Ok(Frame::Market { event: MarketEvent::Ticker(t), .. }) = decode(&empty) else { panic!() };
    assert_eq!((t.first_trade_id, t.last_trade_id, t.trades), (-1, -1, 0));
    assert!(fast::try_decode(&empty).is_some());
    // A 24 h ticker without its own fields is malformed; a rolling one with them decodes (ignored).
    let short = TICKER_1H.replace("1hTicker", "24hrTicker");
    assert_eq!(decode(&short), Err(DecodeError::MissingField { kind: "24hrTicker", field: "x" }));
    let Ok(Frame::Market { event: MarketEvent::Ticker(t), .. }) = decode(&TICKER.replace("24hrTicker", "4hTicker"))
    else {
        panic!()
    };
    assert_eq!(t.window, TickerWindow::Rolling4h);
}

#[test]
fn mini_ticker_from_binance_docs() {
    let want = MarketEvent::MiniTicker(Box::new(MiniTicker {
        symbol: "BNBBTC".into(),
        event_time: 1672515782136,
        close: d("0.0025"),
        open: d("0.0010"),
        high: d("0.0025"),
        low: d("0.0010"),
        volume: d("10000"),
        quote_volume: d("18"),
    }));
    assert_eq!(decode(MINI), Ok(Frame::Market { stream: "bnbbtc@miniTicker".into(), event: want.clone() }));
    let text = combined("bnbbtc@miniTicker", MINI);
    assert_eq!(decode(&text), Ok(Frame::Market { stream: "bnbbtc@miniTicker".into(), event: want.clone() }));
    assert!(fast::try_decode(&text).is_some());
    assert_eq!((want.kind(), want.sequence()), ("24hrMiniTicker", Sequence::Unsequenced));
    assert_eq!(encode_event(&want), MINI);
}

#[test]
fn malformed_tickers_name_the_field() {
    let bad_decimal =
        |kind, field, value: &str, reason| DecodeError::BadDecimal { kind, field, value: value.into(), reason };
    let table: Vec<(String, DecodeError)> = vec![
        (TICKER.replace(r#""c":"0.0025","#, ""), DecodeError::MissingField { kind: "24hrTicker", field: "c" }),
        (
            TICKER.replace(r#""w":"0.0018""#, r#""w":0.0018"#),
            DecodeError::WrongType {
                kind: "24hrTicker",
                field: "w",
                expected: "a decimal string",
                found: "a fractional number",
            },
        ),
        (
            TICKER.replace(r#""P":"250.00""#, r#""P":"2.5e2""#),
            bad_decimal("24hrTicker", "P", "2.5e2", DecimalError::BadChar('e')),
        ),
        (
            TICKER.replace(r#""n":18151"#, r#""n":"18151""#),
            DecodeError::WrongType {
                kind: "24hrTicker",
                field: "n",
                expected: "an unsigned integer",
                found: "a string",
            },
        ),
        (
            TICKER_1H.replace(r#""F":0"#, r#""F":null"#),
            DecodeError::WrongType { kind: "1hTicker", field: "F", expected: "an integer", found: "null" },
        ),
        (TICKER_1H.replace(r#""O":0,"#, ""), DecodeError::MissingField { kind: "1hTicker", field: "O" }),
        (MINI.replace(r#""q":"18""#, r#""q":"""#), bad_decimal("24hrMiniTicker", "q", "", DecimalError::Empty)),
        (MINI.replace(r#","s":"BNBBTC""#, ""), DecodeError::MissingField { kind: "24hrMiniTicker", field: "s" }),
        (
            MINI.replace(r#""E":1672515782136"#, r#""E":-1"#),
            DecodeError::WrongType {
                kind: "24hrMiniTicker",
                field: "E",
                expected: "an unsigned integer",
                found: "an integer",
            },
        ),
        (TICKER.replace("24hrTicker", "2hTicker"), DecodeError::UnknownEvent("2hTicker".into())),
    ];
    for (text, want) in table {
        assert_eq!(fast::try_decode(&text), None, "{text}");
        assert_eq!(decode(&text), Err(want.clone()), "{text}");
        assert_eq!(decode(&combined("bnbbtc@ticker", &text)), Err(want), "in the envelope: {text}");
    }
}

#[test]
fn partial_depth_takes_symbol_from_stream() {
    let Ok(Frame::Market { stream, event }) = decode(&combined("bnbbtc@depth5", PARTIAL)) else { panic!() };
    assert_eq!(stream, "bnbbtc@depth5");
    assert_eq!(
        event,
        MarketEvent::PartialDepth(PartialDepth {
            symbol: "BNBBTC".into(),
            last_update_id: 160,
            bids: vec![(d("0.0024"), d("10"))],
            asks: vec![(d("0.0026"), d("100"))],
        })
    );
    assert_eq!(event.sequence(), Sequence::Snapshot { id: 160 });
    let Ok(Frame::Market { event: MarketEvent::PartialDepth(raw), .. }) = decode(PARTIAL) else { panic!() };
    assert_eq!(raw.symbol, "");
    let Ok(Frame::Market { stream, event }) = decode_on_stream(PARTIAL, "ethbtc@depth10") else { panic!() };
    assert_eq!((stream.as_str(), event.symbol()), ("ethbtc@depth10", "ETHBTC"));
}

#[test]
fn responses_errors_and_shutdown() {
    let table: Vec<(&str, Frame)> = vec![
        (r#"{"result":null,"id":1}"#, Frame::Response { id: 1, result: ResponseResult::Null }),
        (
            r#"{"result":["btcusdt@aggTrade","btcusdt@depth"],"id":3}"#,
            Frame::Response {
                id: 3,
                result: ResponseResult::Streams(vec!["btcusdt@aggTrade".into(), "btcusdt@depth".into()]),
            },
        ),
        (r#"{"result":[],"id":4}"#, Frame::Response { id: 4, result: ResponseResult::Streams(vec![]) }),
        (r#"{"result":true,"id":2}"#, Frame::Response { id: 2, result: ResponseResult::Bool(true) }),
        (
            r#"{"error":{"code":2,"msg":"Invalid request: unknown variant"},"id":7}"#,
            Frame::Error { id: Some(7), code: 2, msg: "Invalid request: unknown variant".into() },
        ),
        (
            r#"{"error":{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"},"id":null}"#,
            Frame::Error { id: None, code: 3, msg: "Invalid JSON: expected value at line 1 column 1".into() },
        ),
        (
            r#"{"code":0,"msg":"Unknown property","id":5}"#,
            Frame::Error { id: Some(5), code: 0, msg: "Unknown property".into() },
        ),
        (r#"{"e":"serverShutdown","E":1672515782136}"#, Frame::ServerShutdown { event_time: 1672515782136 }),
    ];
    for (text, want) in table {
        assert_eq!(decode(text), Ok(want), "{text}");
    }
}

#[test]
fn escaped_strings_are_unescaped() {
    let text = AGG.replace(r#""s":"BNBBTC""#, r#""s":"BNB\u0042TC""#);
    let Ok(Frame::Market { event, .. }) = decode(&text) else { panic!() };
    assert_eq!(event.symbol(), "BNBBTC");
}

#[test]
fn unknown_fields_are_ignored_and_order_does_not_matter() {
    let text = r#"{"M":true,"m":false,"T":2,"l":7,"f":7,"q":"1","p":"2","a":9,"s":"X","E":1,"e":"aggTrade","new":[1,{"a":2}]}"#;
    let Ok(Frame::Market { event, .. }) = decode(text) else { panic!("{:?}", decode(text)) };
    assert_eq!(event.sequence(), Sequence::AggTrade { id: 9, first_trade: 7, last_trade: 7 });
}

#[test]
fn malformed_frames_name_what_is_wrong() {
    use DecodeError::*;
    let agg_without = |field: &str| {
        let start = AGG.find(&format!("\"{field}\":")).unwrap();
        let end = start + AGG[start..].find(',').unwrap();
        format!("{}{}", &AGG[..start], &AGG[end + 1..])
    };
    let table: Vec<(String, DecodeError)> = vec![
        ("".into(), Empty),
        ("   \n".into(), Empty),
        ("[1,2]".into(), NotAnObject("an array")),
        ("42".into(), NotAnObject("a number")),
        ("null".into(), NotAnObject("null")),
        ("\"hi\"".into(), NotAnObject("a string")),
        ("{}".into(), Unrecognized),
        (r#"{"id":1}"#.into(), Unrecognized),
        (r#"{"e":"outboundAccountPosition","E":1}"#.into(), UnknownEvent("outboundAccountPosition".into())),
        (r#"{"e":5}"#.into(), WrongType { kind: "market event", field: "e", expected: "an event type string", found: "an integer" }),
        (agg_without("a"), MissingField { kind: "aggTrade", field: "a" }),
        (agg_without("s"), MissingField { kind: "aggTrade", field: "s" }),
        (agg_without("p"), MissingField { kind: "aggTrade", field: "p" }),
        (agg_without("m"), MissingField { kind: "aggTrade", field: "m" }),
        (
            AGG.replace(r#""a":12345"#, r#""a":"12345""#),
            WrongType { kind: "aggTrade", field: "a", expected: "an unsigned integer", found: "a string" },
        ),
        (
            AGG.replace(r#""a":12345"#, r#""a":-1"#),
            WrongType { kind: "aggTrade", field: "a", expected: "an unsigned integer", found: "an integer" },
        ),
        (
            AGG.replace(r#""a":12345"#, r#""a":1.5"#),
            WrongType { kind: "aggTrade", field: "a", expected: "an unsigned integer", found: "a fractional number" },
        ),
        (
            AGG.replace(r#""p":"0.001""#, r#""p":0.001"#),
            WrongType { kind: "aggTrade", field: "p", expected: "a decimal string", found: "a fractional number" },
        ),
        (
            AGG.replace(r#""p":"0.001""#, r#""p":"1e-3""#),
            BadDecimal { kind: "aggTrade", field: "p", value: "1e-3".into(), reason: DecimalError::BadChar('e') },
        ),
        (
            AGG.replace(r#""m":true"#, r#""m":"true""#),
            WrongType { kind: "aggTrade", field: "m", expected: "a boolean", found: "a string" },
        ),
        (
            AGG.replace(r#""E":1672515782136"#, r#""E":null"#),
            WrongType { kind: "aggTrade", field: "E", expected: "an unsigned integer", found: "null" },
        ),
        (KLINE.replace(r#","k":{"#, r#","kk":{"#), MissingField { kind: "kline", field: "k" }),
        (
            r#"{"e":"kline","E":1,"s":"X","k":[1]}"#.into(),
            WrongType { kind: "kline", field: "k", expected: "an object", found: "an array" },
        ),
        (KLINE.replace(r#""i":"1m","#, ""), MissingField { kind: "kline", field: "k.i" }),
        (
            KLINE.replace(r#""x":false"#, r#""x":0"#),
            WrongType { kind: "kline", field: "k.x", expected: "a boolean", found: "an integer" },
        ),
        (
            DEPTH.replace(r#"[["0.0024","10"]]"#, r#"[["0.0024"]]"#),
            BadLevels { kind: "depthUpdate", field: "b", reason: "element 0: quantity is missing (expected [price, qty])".into() },
        ),
        (
            DEPTH.replace(r#"[["0.0024","10"]]"#, r#"[["0.0024","10","x"]]"#),
            BadLevels {
                kind: "depthUpdate",
                field: "b",
                reason: "element 0: a level has more than two entries (expected [price, qty])".into(),
            },
        ),
        (
            DEPTH.replace(r#"[["0.0024","10"]]"#, r#"[["0.0024",10]]"#),
            BadLevels {
                kind: "depthUpdate",
                field: "b",
                reason: "element 0: quantity is an integer, expected a decimal string".into(),
            },
        ),
        (
            DEPTH.replace(r#"[["0.0024","10"]]"#, r#"[["0,0024","10"]]"#),
            BadLevels {
                kind: "depthUpdate",
                field: "b",
                reason: "element 0: price \"0,0024\" is not a decimal: unexpected character ',' (expected digits with an optional '.' and leading '-')".into(),
            },
        ),
        (
            DEPTH.replace(r#""b":[["0.0024","10"]]"#, r#""b":"0.0024""#),
            WrongType { kind: "depthUpdate", field: "b", expected: "a list of [price, qty] pairs", found: "a string" },
        ),
        (BOOK.replace(r#","A":"40.66000000""#, ""), MissingField { kind: "bookTicker", field: "A" }),
        (PARTIAL.replace(r#","asks":[["0.0026","100"]]"#, ""), MissingField { kind: "partial depth", field: "asks" }),
        (r#"{"stream":"x@trade"}"#.into(), MissingField { kind: "combined stream envelope", field: "data" }),
        (
            r#"{"stream":"x@trade","data":"oops"}"#.into(),
            WrongType { kind: "combined stream envelope", field: "data", expected: "an object", found: "a string" },
        ),
        (
            format!(r#"{{"stream":7,"data":{AGG}}}"#),
            WrongType { kind: "combined stream envelope", field: "stream", expected: "a string", found: "an integer" },
        ),
        (combined("x@foo", r#"{"e":"foo"}"#), UnknownEvent("foo".into())),
        (r#"{"result":null}"#.into(), MissingField { kind: "response", field: "id" }),
        (
            r#"{"result":{"a":1},"id":1}"#.into(),
            WrongType {
                kind: "response",
                field: "result",
                expected: "null, a boolean or a list of stream names",
                found: "an object",
            },
        ),
        (r#"{"error":{"msg":"x"},"id":1}"#.into(), MissingField { kind: "error reply", field: "code" }),
        (r#"{"e":"serverShutdown"}"#.into(), MissingField { kind: "serverShutdown", field: "E" }),
    ];
    for (text, want) in table {
        assert_eq!(decode(&text), Err(want), "{text}");
    }
    // Errors from the JSON parser itself: only the category is stable.
    for text in ["{", "{\"e\":", "not json", "{\"e\":\"trade\",}", "{'e':1}", "\u{feff}{}"] {
        assert_eq!(decode(text).map_err(|e| e.label()), Err("not_json"), "{text:?}");
    }
    assert_eq!(decode(r#"{"e":"trade","e":"trade"}"#).map_err(|e| e.label()), Err("malformed"));
    let deep = format!("{}{}", "{\"x\":[".repeat(200), "]}".repeat(200));
    assert!(decode(&deep).is_err());
}

#[test]
fn error_messages_read_well() {
    let table = [
        (DecodeError::MissingField { kind: "aggTrade", field: "a" }, r#"aggTrade frame is missing field "a""#),
        (
            DecodeError::UnknownEvent("x".into()),
            r#"unknown event type "x" (keel decodes aggTrade, trade, kline, depthUpdate, bookTicker, 24hrTicker, 1hTicker, 4hTicker, 1dTicker, 24hrMiniTicker, serverShutdown)"#,
        ),
        (
            DecodeError::WrongType { kind: "trade", field: "t", expected: "an unsigned integer", found: "a string" },
            r#"field "t" of a trade frame is a string, expected an unsigned integer"#,
        ),
    ];
    for (err, text) in table {
        assert_eq!(err.to_string(), text);
    }
}

#[test]
fn requests_encode_exactly() {
    let table = [
        (
            Request::Subscribe(vec!["btcusdt@aggTrade".into(), "btcusdt@depth".into()]),
            1,
            r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}"#,
        ),
        (
            Request::Unsubscribe(vec!["btcusdt@depth".into()]),
            312,
            r#"{"method":"UNSUBSCRIBE","params":["btcusdt@depth"],"id":312}"#,
        ),
        (Request::Subscribe(vec![]), 0, r#"{"method":"SUBSCRIBE","params":[],"id":0}"#),
        (Request::ListSubscriptions, 3, r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#),
        (Request::Subscribe(vec!["a\"b\\c".into()]), 9, r#"{"method":"SUBSCRIBE","params":["a\"b\\c"],"id":9}"#),
    ];
    for (request, id, want) in table {
        assert_eq!(encode_request(&request, id), want);
    }
}

#[test]
fn urls_and_stream_names() {
    let streams = vec!["btcusdt@aggTrade".to_string(), "btcusdt@kline_1m".to_string()];
    assert_eq!(
        combined_stream_url("wss://stream.binance.com:9443", &streams),
        "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m"
    );
    assert_eq!(combined_stream_url("wss://h/", &streams[..1]), "wss://h/stream?streams=btcusdt@aggTrade");
    let names: Vec<String> = [AGG, TRADE, KLINE, DEPTH, BOOK]
        .iter()
        .map(|t| match decode(t) {
            Ok(Frame::Market { event, .. }) => stream_name(&event),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["bnbbtc@aggTrade", "bnbbtc@trade", "bnbbtc@kline_1m", "bnbbtc@depth", "bnbusdt@bookTicker"]);
}

#[test]
fn encoder_writes_binance_frames() {
    assert_eq!(encode_event(&MarketEvent::AggTrade(agg_event())), AGG);
    for text in [AGG, TRADE, DEPTH, BOOK, PARTIAL] {
        let Ok(Frame::Market { event, .. }) = decode(text) else { panic!() };
        assert_eq!(encode_event(&event), text);
    }
    let Ok(Frame::Market { event, .. }) = decode(KLINE) else { panic!() };
    assert_eq!(encode_event(&event), KLINE.replace(r#""B":"123456""#, r#""B":"0""#));
    for text in [
        r#"{"result":null,"id":1}"#,
        r#"{"result":["a@b","c@d"],"id":3}"#,
        r#"{"result":true,"id":2}"#,
        r#"{"error":{"code":2,"msg":"Invalid request"},"id":7}"#,
        r#"{"error":{"code":3,"msg":"Invalid JSON"},"id":null}"#,
        r#"{"e":"serverShutdown","E":5}"#,
    ] {
        assert_eq!(encode_frame(&decode(text).unwrap()), text);
    }
    assert_eq!(encode_frame(&decode(&combined("bnbbtc@aggTrade", AGG)).unwrap()), combined("bnbbtc@aggTrade", AGG));
}

#[test]
fn market_events_serialize_for_traces() {
    let event = MarketEvent::AggTrade(agg_event());
    let ron_text = ron::to_string(&event).unwrap();
    assert!(ron_text.contains("\"0.001\""), "{ron_text}");
    assert_eq!(ron::from_str::<MarketEvent>(&ron_text).unwrap(), event);
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(serde_json::from_str::<MarketEvent>(&json).unwrap(), event);
}

// ---- properties ----

/// The fast path's contract (see `fast.rs`): what it accepts, the general path decodes identically.
fn paths_agree(fast: &Frame, general: &Result<Frame, DecodeError>) -> bool {
    general.as_ref() == Ok(fast)
}

#[derive(Debug, Clone)]
struct AnyFrame(Frame);

fn dec(g: &mut Gen) -> Decimal {
    // Binance uses 8 decimals; every scale keel accepts (0..=18) is generated.
    let scale = u8::arbitrary(g) % (MAX_SCALE + 1);
    // Mostly Binance-sized values, sometimes around the 19-digit boundary of the fast parser, sometimes the
    // full 96-bit range (huge kline volumes).
    let mantissa = match u8::arbitrary(g) % 8 {
        0 => u128::arbitrary(g) & decimal::MAX_MANTISSA,
        1 => u128::from(u64::arbitrary(g)),
        2 => u128::from(u64::arbitrary(g) % 10),
        _ => u128::from(u64::arbitrary(g) % 10_000_000_000_000),
    };
    Decimal::new(mantissa, scale, u8::arbitrary(g) % 16 == 0).unwrap_or_default()
}

/// Upper-case letters and digits, as Binance's symbols are (and as a partial depth frame's symbol, which is
/// taken from the lower-case stream name, must be to round-trip).
fn symbol(g: &mut Gen) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = 1 + usize::arbitrary(g) % 12;
    (0..len).map(|_| char::from(*g.choose(CHARS).unwrap_or(&b'X'))).collect()
}

/// Any u64, often near the boundaries of the digit-count checks.
fn id(g: &mut Gen) -> u64 {
    match u8::arbitrary(g) % 4 {
        0 => u64::MAX - u64::arbitrary(g) % 3,
        1 => u64::arbitrary(g) % 10,
        _ => u64::arbitrary(g),
    }
}

fn levels(g: &mut Gen) -> Vec<Level> {
    (0..usize::arbitrary(g) % 6).map(|_| (dec(g), dec(g))).collect()
}

fn any_window(g: &mut Gen) -> TickerWindow {
    match u8::arbitrary(g) % 4 {
        0 => TickerWindow::Rolling1h,
        1 => TickerWindow::Rolling4h,
        2 => TickerWindow::Rolling1d,
        _ => TickerWindow::Rolling24h(TickerExtras {
            prev_price: dec(g),
            last_quantity: dec(g),
            best_bid_price: dec(g),
            best_bid_qty: dec(g),
            best_ask_price: dec(g),
            best_ask_qty: dec(g),
        }),
    }
}

fn any_ticker(g: &mut Gen, symbol: String, window: TickerWindow) -> Ticker {
    Ticker {
        symbol: symbol.into(),
        event_time: id(g),
        window,
        price_change: dec(g),
        price_change_percent: dec(g),
        weighted_avg_price: dec(g),
        last_price: dec(g),
        open: dec(g),
        high: dec(g),
        low: dec(g),
        volume: dec(g),
        quote_volume: dec(g),
        open_time: id(g),
        close_time: id(g),
        // -1 (no trade in the window) as often as any other value.
        first_trade_id: if bool::arbitrary(g) { -1 } else { id(g) as i64 },
        last_trade_id: if bool::arbitrary(g) { -1 } else { id(g) as i64 },
        trades: id(g),
    }
}

fn any_mini_ticker(g: &mut Gen, symbol: String) -> MiniTicker {
    MiniTicker {
        symbol: symbol.into(),
        event_time: id(g),
        close: dec(g),
        open: dec(g),
        high: dec(g),
        low: dec(g),
        volume: dec(g),
        quote_volume: dec(g),
    }
}

/// An array event's elements (0 to 3; each ticker array of one window, the 24 h extras drawn per element).
fn any_array(g: &mut Gen, mini: bool) -> MarketEvent {
    let n = usize::arbitrary(g) % 4;
    if mini {
        return MarketEvent::MiniTickers(
            (0..n)
                .map(|_| {
                    let sym = symbol(g);
                    any_mini_ticker(g, sym)
                })
                .collect(),
        );
    }
    let window = any_window(g);
    MarketEvent::Tickers(
        (0..n)
            .map(|_| {
                let sym = symbol(g);
                let mut w = any_window(g);
                while matches!(w, TickerWindow::Rolling24h(_)) != matches!(window, TickerWindow::Rolling24h(_)) {
                    w = any_window(g);
                }
                if !matches!(window, TickerWindow::Rolling24h(_)) {
                    w = window.clone();
                }
                any_ticker(g, sym, w)
            })
            .collect(),
    )
}

/// How many texts a frame can add to a table of names: a stream name and a symbol, or one symbol
/// per element of an array.
fn texts_of(frame: &Frame) -> usize {
    match frame {
        Frame::Market { event: MarketEvent::Tickers(v), .. } => 1 + v.len(),
        Frame::Market { event: MarketEvent::MiniTickers(v), .. } => 1 + v.len(),
        _ => 2,
    }
}

/// An array event has no stream of its own to draw: its stream is its kind's.
fn is_array(event: &MarketEvent) -> bool {
    matches!(event, MarketEvent::Tickers(_) | MarketEvent::MiniTickers(_))
}

/// An empty array, whose raw frame only a known stream name can decode.
fn is_empty_array(event: &MarketEvent) -> bool {
    matches!(event, MarketEvent::Tickers(v) if v.is_empty())
        || matches!(event, MarketEvent::MiniTickers(v) if v.is_empty())
}

impl Arbitrary for AnyFrame {
    fn arbitrary(g: &mut Gen) -> Self {
        let sym = symbol(g);
        let event = match u8::arbitrary(g) % 10 {
            0 => MarketEvent::AggTrade(AggTrade {
                symbol: sym.into(),
                event_time: id(g),
                agg_id: id(g),
                price: dec(g),
                quantity: dec(g),
                first_trade_id: id(g),
                last_trade_id: id(g),
                trade_time: id(g),
                buyer_is_maker: bool::arbitrary(g),
            }),
            1 => MarketEvent::Trade(Trade {
                symbol: sym.into(),
                event_time: id(g),
                trade_id: id(g),
                price: dec(g),
                quantity: dec(g),
                trade_time: id(g),
                buyer_is_maker: bool::arbitrary(g),
            }),
            2 => MarketEvent::Kline(Box::new(Kline {
                symbol: sym.into(),
                event_time: id(g),
                open_time: id(g),
                close_time: id(g),
                interval: g.choose(&["1s", "1m", "1h", "1d"]).copied().unwrap_or("1m").to_string(),
                first_trade_id: id(g) as i64,
                last_trade_id: id(g) as i64,
                open: dec(g),
                high: dec(g),
                low: dec(g),
                close: dec(g),
                volume: dec(g),
                quote_volume: dec(g),
                taker_buy_volume: dec(g),
                taker_buy_quote_volume: dec(g),
                trades: id(g),
                is_closed: bool::arbitrary(g),
            })),
            3 => MarketEvent::Depth(DepthUpdate::new(sym, id(g), id(g), id(g), levels(g), levels(g))),
            4 => MarketEvent::BookTicker(BookTicker {
                symbol: sym.into(),
                update_id: id(g),
                best_bid_price: dec(g),
                best_bid_qty: dec(g),
                best_ask_price: dec(g),
                best_ask_qty: dec(g),
                event_time: Option::arbitrary(g),
            }),
            5 => MarketEvent::PartialDepth(PartialDepth {
                symbol: sym.into(),
                last_update_id: id(g),
                bids: levels(g),
                asks: levels(g),
            }),
            6 => {
                let window = any_window(g);
                MarketEvent::Ticker(Box::new(any_ticker(g, sym, window)))
            }
            7 => MarketEvent::MiniTicker(Box::new(any_mini_ticker(g, sym))),
            8 => any_array(g, false),
            _ => any_array(g, true),
        };
        let frame = match u8::arbitrary(g) % 8 {
            0 => Frame::Response {
                id: id(g),
                result: match u8::arbitrary(g) % 3 {
                    0 => ResponseResult::Null,
                    1 => ResponseResult::Bool(bool::arbitrary(g)),
                    _ => ResponseResult::Streams(Vec::<String>::arbitrary(g)),
                },
            },
            1 => Frame::Error { id: Option::arbitrary(g), code: id(g) as i64, msg: String::arbitrary(g) },
            2 => Frame::ServerShutdown { event_time: id(g) },
            _ => Frame::Market { stream: stream_name(&event).into(), event },
        };
        AnyFrame(frame)
    }
}

quickcheck! {
    fn decode_never_panics(text: String) -> bool {
        let _ = decode(&text);
        true
    }

    fn decode_never_panics_on_mutated_frames(cut: usize, insert: char, which: u8) -> bool {
        // Real frames with one character replaced or truncated: the nastiest near-misses.
        let base = [AGG, TRADE, KLINE, DEPTH, BOOK, PARTIAL, TICKER, TICKER_1H, MINI, MINI_ARR, TICKER_1H_ARR][usize::from(which) % 11];
        let chars: Vec<char> = base.chars().collect();
        let at = cut % chars.len();
        let mut replaced = chars.clone();
        replaced[at] = insert;
        let replaced: String = replaced.into_iter().collect();
        let truncated: String = chars[..at].iter().collect();
        let _ = decode(&replaced);
        decode(&truncated).is_err()
    }

    fn fast_path_agrees_with_general_path_on_mutations(cut: usize, insert: char, which: u8, envelope: bool) -> bool {
        let base = [AGG, TRADE, KLINE, DEPTH, BOOK, PARTIAL, TICKER, TICKER_1H, MINI, MINI_ARR, TICKER_1H_ARR][usize::from(which) % 11];
        let stream = ["x@aggTrade", "x@trade", "x@kline_1m", "x@depth", "x@bookTicker", "x@depth5", "x@ticker", "x@ticker_1h", "x@miniTicker", "!miniTicker@arr", "!ticker_1h@arr"][usize::from(which) % 11];
        let base = if envelope { combined(stream, base) } else { base.to_string() };
        let mut chars: Vec<char> = base.chars().collect();
        let at = cut % chars.len();
        chars[at] = insert;
        let text: String = chars.into_iter().collect();
        match fast::try_decode(&text) {
            Some(frame) => paths_agree(&frame, &decode_general(&text)),
            None => true,
        }
    }

    fn fast_path_takes_binance_formatted_market_frames(frame: AnyFrame) -> bool {
        // encode, then fast decode == general decode == the original, raw and in the envelope.
        let Frame::Market { event, .. } = &frame.0 else { return true };
        let combined_text = encode_frame(&frame.0);
        let raw_text = encode_event(event);
        let raw = fast::try_decode(&raw_text);
        let on_stream = fast::try_decode_on(&raw_text, Some("x@y"), &mut Names::new());
        (raw.is_some() || is_empty_array(event))
            && raw.as_ref().ok_or(()) == decode_general(&raw_text).as_ref().map_err(|_| ())
            && on_stream.as_ref().ok_or(()) == decode_on_stream(&raw_text, "x@y").as_ref().map_err(|_| ())
            && fast::try_decode(&combined_text).as_ref() == Some(&frame.0)
            && decode_general(&combined_text).as_ref() == Ok(&frame.0)
    }

    fn a_shared_table_of_names_decodes_the_same_frames(frames: Vec<AnyFrame>) -> bool {
        // A connection's table, used across frames of many streams and symbols: same frames as decode().
        let mut names = Names::new();
        frames.iter().all(|f| {
            let text = encode_frame(&f.0);
            decode_with(&text, &mut names) == decode(&text)
        }) && names.len() <= frames.iter().map(|f| texts_of(&f.0)).sum::<usize>()
    }

    fn fast_path_agrees_on_any_symbol_and_stream(frame: AnyFrame, symbol: String, stream: String) -> bool {
        // Quotes, backslashes, control characters and non-ASCII text in the strings: the fast path
        // declines what it cannot read plainly, and what it reads agrees with the general path.
        let Frame::Market { mut event, .. } = frame.0 else { return true };
        match &mut event {
            MarketEvent::AggTrade(e) => e.symbol = symbol.into(),
            MarketEvent::Trade(e) => e.symbol = symbol.into(),
            MarketEvent::Kline(e) => e.symbol = symbol.into(),
            MarketEvent::Depth(e) => e.symbol = symbol.into(),
            MarketEvent::BookTicker(e) => e.symbol = symbol.into(),
            MarketEvent::PartialDepth(_) => {}
            MarketEvent::Ticker(e) => e.symbol = symbol.into(),
            MarketEvent::MiniTicker(e) => e.symbol = symbol.into(),
            MarketEvent::Tickers(v) => v.iter_mut().for_each(|e| e.symbol = symbol.as_str().into()),
            MarketEvent::MiniTickers(v) => v.iter_mut().for_each(|e| e.symbol = symbol.as_str().into()),
        }
        // An array is valid only on its own stream.
        let stream = if is_array(&event) { stream_name(&event) } else { stream };
        let text = encode_frame(&Frame::Market { stream: stream.into(), event });
        let general = decode_general(&text);
        let ok = match fast::try_decode(&text) {
            Some(fast) => paths_agree(&fast, &general),
            None => decode(&text) == general,
        };
        ok && general.is_ok()
    }

    fn fields_binance_may_add_keep_the_fast_path(frame: AnyFrame, extras: Vec<(u8, u8)>, envelope: bool) -> bool {
        // Trailing fields the general path ignores (unknown keys with plain values) are skipped by the
        // fast path too; a key the general path reads, or a nested or fractional value, sends the frame
        // to the general path. Either way both agree.
        let Frame::Market { stream, event } = &frame.0 else { return true };
        if is_array(event) {
            return true; // its elements are the single tickers', which this covers
        }
        const KEYS: [&str; 8] = ["M", "x", "new", "Z", "X", "t", "id", "stream"];
        const VALUES: [&str; 10] = ["true", "false", "null", "\"s\"", "0", "-12", "123456789012", "1.5", "[1]", "{\"a\":1}"];
        let mut tail = String::new();
        let mut simple = true;
        for (k, v) in extras.iter().take(4) {
            let (key, value) = (KEYS[usize::from(*k) % KEYS.len()], VALUES[usize::from(*v) % VALUES.len()]);
            simple &= !["t", "id", "stream", "x"].contains(&key) && !["1.5", "[1]", "{\"a\":1}"].contains(&value);
            tail.push_str(&format!(",\"{key}\":{value}"));
        }
        let raw = encode_event(event);
        let raw = format!("{}{tail}}}", &raw[..raw.len() - 1]);
        let text = if envelope { format!("{{\"stream\":\"{stream}\",\"data\":{raw}}}") } else { raw };
        let general = decode_general(&text);
        match fast::try_decode(&text) {
            Some(fast) => paths_agree(&fast, &general),
            // Unknown keys with plain values must not cost the fast path.
            None => !simple && decode(&text) == general,
        }
    }

    fn mutated_generated_frames_never_panic_and_paths_agree(frame: AnyFrame, envelope: bool, at: usize, c: char, op: u8) -> bool {
        // One character replaced, deleted or inserted, or the frame cut short, anywhere in an encoded frame
        // of any kind: decoding never panics, and the fast path never accepts what the general path rejects
        // or decodes differently.
        let Frame::Market { event, .. } = &frame.0 else { return true };
        let text = if envelope { encode_frame(&frame.0) } else { encode_event(event) };
        let mut chars: Vec<char> = text.chars().collect();
        let at = at % chars.len();
        match op % 4 {
            0 => chars[at] = c,
            1 => {
                chars.remove(at);
            }
            2 => chars.insert(at, c),
            _ => chars.truncate(at),
        }
        let text: String = chars.into_iter().collect();
        let general = decode_general(&text);
        match fast::try_decode(&text) {
            Some(fast) => paths_agree(&fast, &general),
            None => decode(&text) == general,
        }
    }

    fn frames_round_trip(frame: AnyFrame) -> bool {
        let text = encode_frame(&frame.0);
        decode(&text) == Ok(frame.0.clone())
    }

    fn raw_events_round_trip(frame: AnyFrame) -> bool {
        match frame.0 {
            // A raw partial depth frame carries no symbol; everything else decodes to itself.
            // Nor does an empty array say which stream it is.
            Frame::Market { event, .. } if !matches!(event, MarketEvent::PartialDepth(_)) && !is_empty_array(&event) => {
                decode(&encode_event(&event)) == Ok(Frame::Market { stream: stream_name(&event).into(), event })
            }
            _ => true,
        }
    }

    fn requests_are_valid_json_with_their_params(streams: Vec<String>, id: u64) -> bool {
        let text = encode_request(&Request::Subscribe(streams.clone()), id);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["method"] == "SUBSCRIBE" && v["id"] == id && v["params"] == serde_json::json!(streams)
    }
}

/// A random JSON object built from the keys Binance frames use, with values of random types (and,
/// often, of the right type): reaches deep into both decoding paths, unlike random strings.
#[derive(Debug, Clone)]
struct JsonFrame(String);

const KEYS: [&str; 41] = [
    "e",
    "E",
    "s",
    "a",
    "p",
    "q",
    "f",
    "l",
    "T",
    "m",
    "M",
    "t",
    "U",
    "u",
    "b",
    "B",
    "A",
    "P",
    "w",
    "x",
    "c",
    "Q",
    "o",
    "h",
    "v",
    "O",
    "C",
    "F",
    "L",
    "n",
    "lastUpdateId",
    "bids",
    "asks",
    "stream",
    "data",
    "result",
    "id",
    "code",
    "msg",
    "k",
    "error",
];
const KLINE_KEYS: [&str; 16] = ["t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q"];

fn json_value(g: &mut Gen, depth: u8) -> String {
    let choice = u8::arbitrary(g) % if depth > 2 { 9 } else { 12 };
    match choice {
        0 => "null".into(),
        1 => bool::arbitrary(g).to_string(),
        2 => u64::arbitrary(g).to_string(),
        3 => i64::arbitrary(g).to_string(),
        4 => format!("{}.5", u16::arbitrary(g)),
        5 => format!("\"{}\"", dec(g)),
        6 => {
            let e = [
                "aggTrade",
                "trade",
                "kline",
                "depthUpdate",
                "bookTicker",
                "24hrTicker",
                "1hTicker",
                "24hrMiniTicker",
                "serverShutdown",
                "x",
                "",
            ];
            format!("\"{}\"", g.choose(&e).copied().unwrap_or(""))
        }
        7 => serde_json::to_string(&String::arbitrary(g)).unwrap(),
        8 => {
            let lv: Vec<String> =
                (0..usize::arbitrary(g) % 3).map(|_| format!("[\"{}\",\"{}\"]", dec(g), dec(g))).collect();
            format!("[{}]", lv.join(","))
        }
        9 => {
            let items: Vec<String> = (0..usize::arbitrary(g) % 3).map(|_| json_value(g, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        10 => json_object(g, depth + 1, &KLINE_KEYS),
        _ => json_object(g, depth + 1, &KEYS),
    }
}

fn json_object(g: &mut Gen, depth: u8, keys: &[&str]) -> String {
    let n = usize::arbitrary(g) % (keys.len() + 1);
    let fields: Vec<String> = (0..n)
        .map(|_| {
            let key = g.choose(keys).copied().unwrap_or("e");
            format!("\"{key}\":{}", json_value(g, depth))
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// The `(key, value text)` pairs of a flat-enough JSON object, in their order (the test frames above).
fn top_level_fields(object: &str) -> Vec<(String, String)> {
    let inner = &object[1..object.len() - 1];
    let (mut fields, mut depth, mut in_string, mut start) = (Vec::new(), 0i32, false, 0usize);
    let mut push = |part: &str| {
        let (k, v) = part.split_once(':').unwrap();
        fields.push((k.trim_matches('"').to_string(), v.to_string()));
    };
    for (i, c) in inner.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '[' | '{' if !in_string => depth += 1,
            ']' | '}' if !in_string => depth -= 1,
            ',' if !in_string && depth == 0 => {
                push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&inner[start..]);
    fields
}

impl Arbitrary for JsonFrame {
    fn arbitrary(g: &mut Gen) -> Self {
        let mut text = json_object(g, 0, &KEYS);
        // Often start like a real frame, so that the fast path is tried.
        match u8::arbitrary(g) % 5 {
            2 | 3 => {
                // A real frame with one or two fields removed, retyped, or added.
                let which = usize::from(u8::arbitrary(g)) % 9;
                let base = [AGG, TRADE, KLINE, DEPTH, BOOK, PARTIAL, TICKER, TICKER_1H, MINI][which];
                // Binance's key order: the fast path relies on it.
                let mut fields = top_level_fields(base);
                for _ in 0..1 + usize::from(bool::arbitrary(g)) {
                    let at = usize::arbitrary(g) % fields.len().max(1);
                    match u8::arbitrary(g) % 4 {
                        0 if !fields.is_empty() => {
                            fields.remove(at);
                        }
                        1 if !fields.is_empty() => fields[at].1 = json_value(g, 1),
                        2 => fields.push((g.choose(&KEYS).copied().unwrap_or("x").to_string(), json_value(g, 1))),
                        _ => {}
                    }
                }
                let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                text = format!("{{{}}}", body.join(","));
                if which >= 6 && bool::arbitrary(g) {
                    // An element of an all-market array, alone or after an intact one, raw or in the envelope.
                    let array = if bool::arbitrary(g) { format!("[{base},{text}]") } else { format!("[{text}]") };
                    let stream = ["!ticker@arr", "!ticker_1h@arr", "!miniTicker@arr"][which - 6];
                    text = if bool::arbitrary(g) {
                        format!("{{\"stream\":\"{stream}\",\"data\":{array}}}")
                    } else {
                        array
                    };
                } else if bool::arbitrary(g) {
                    let stream = [
                        "x@aggTrade",
                        "x@trade",
                        "x@kline_1m",
                        "x@depth",
                        "x@bookTicker",
                        "x@depth5",
                        "x@ticker",
                        "x@ticker_1h",
                        "x@miniTicker",
                    ][which];
                    text = format!("{{\"stream\":\"{stream}\",\"data\":{text}}}");
                }
            }
            0 => {
                let stream = g.choose(&[
                    "x@aggTrade",
                    "x@trade",
                    "x@kline_1m",
                    "x@depth",
                    "x@bookTicker",
                    "x@depth5",
                    "!miniTicker@arr",
                ]);
                // Array data now and then (valid only on an array stream).
                let data = if u8::arbitrary(g) % 4 == 0 { format!("[{text}]") } else { text };
                text = format!("{{\"stream\":\"{}\",\"data\":{}}}", stream.copied().unwrap_or("x@trade"), data);
            }
            1 => {
                let e = g
                    .choose(&["aggTrade", "trade", "kline", "depthUpdate", "24hrTicker", "4hTicker", "24hrMiniTicker"])
                    .copied()
                    .unwrap_or("trade");
                text = format!("{{\"e\":\"{e}\",{}", &text[1..]).replace(",}", "}");
            }
            _ => {}
        }
        JsonFrame(text)
    }
}

quickcheck! {
    fn structured_garbage_never_panics_and_paths_agree(frame: JsonFrame) -> bool {
        let general = decode_general(&frame.0);
        match fast::try_decode(&frame.0) {
            Some(fast) => paths_agree(&fast, &general),
            None => decode(&frame.0) == general,
        }
    }

    fn agg_trade_id_gaps_are_reported_in_trade_ids(trades_per_agg: Vec<(u8, u8)>) -> bool {
        // `a` is continuous; each aggregate covers 1..=4 trades and sometimes skips some trade ids.
        let mut t = crate::gaps::GapTracker::new();
        let mut next_trade = 100u64;
        for (i, (count, skip)) in trades_per_agg.into_iter().enumerate() {
            let skipped = u64::from(skip % 4 == 0) * u64::from(skip % 7 + 1);
            let first = next_trade + skipped;
            let last = first + u64::from(count % 4);
            next_trade = last + 1;
            let seq = Sequence::AggTrade { id: i as u64, first_trade: first, last_trade: last };
            let want = if i > 0 && skipped > 0 {
                crate::gaps::Verdict::FreshAfterGap(crate::gaps::Gap {
                    stream: "s".into(),
                    first_missing: first - skipped,
                    last_missing: first - 1,
                    kind: crate::gaps::GapKind::TradeId,
                })
            } else {
                crate::gaps::Verdict::Fresh
            };
            if t.observe("s", seq) != want {
                return false;
            }
        }
        true
    }
}

#[test]
fn structured_garbage_reaches_the_fast_path() {
    // Guards the generator above: the agreement property is only as good as its fast-path hits.
    let mut g = Gen::new(100);
    let (mut fast_hits, mut general_ok, n) = (0, 0, 3000);
    for _ in 0..n {
        let JsonFrame(text) = JsonFrame::arbitrary(&mut g);
        fast_hits += usize::from(fast::try_decode(&text).is_some());
        general_ok += usize::from(decode_general(&text).is_ok());
    }
    assert!(fast_hits > n / 20, "fast path taken {fast_hits} times of {n}");
    assert!(general_ok > fast_hits, "general {general_ok}, fast {fast_hits}");
}

#[test]
fn requests_decode_with_binance_error_codes() {
    let ok: Vec<(&str, Request, u64)> = vec![
        (
            r#"{"method":"SUBSCRIBE","params":["a@trade","b@depth"],"id":1}"#,
            Request::Subscribe(vec!["a@trade".into(), "b@depth".into()]),
            1,
        ),
        (r#"{"id":7,"params":["a@trade"],"method":"UNSUBSCRIBE"}"#, Request::Unsubscribe(vec!["a@trade".into()]), 7),
        (r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#, Request::ListSubscriptions, 3),
    ];
    for (text, request, id) in ok {
        assert_eq!(decode_request(text), Ok((request, id)), "{text}");
    }
    let err = |id: Option<u64>, code: i64, msg: &str| RequestError { id, code, msg: msg.into() };
    let bad: Vec<(&str, RequestError)> = vec![
        (r#"{"method":"SUBSCRIBE""#, err(None, 3, "Invalid JSON: EOF while parsing an object at line 1 column 21")),
        ("[1]", err(None, 2, "Invalid request: expected a JSON object")),
        (r#"{"method":"SUBSCRIBE","params":[]}"#, err(None, 2, "Invalid request: missing field `id`")),
        (
            r#"{"method":"SUBSCRIBE","params":[],"id":-1}"#,
            err(None, 2, "Invalid request: request ID must be an unsigned integer"),
        ),
        (
            r#"{"method":"SUBSCRIBE","params":[],"id":"x"}"#,
            err(None, 2, "Invalid request: request ID must be an unsigned integer"),
        ),
        (r#"{"params":[],"id":4}"#, err(Some(4), 2, "Invalid request: missing field `method`")),
        (r#"{"method":"SUBSCRIBE","id":4}"#, err(Some(4), 2, "Invalid request: missing field `params`")),
        (
            r#"{"method":"SUBSCRIBE","params":[1],"id":4}"#,
            err(Some(4), 2, "Invalid request: params must be stream names (strings)"),
        ),
        (
            r#"{"method":"SUBSCRIBE","params":"a@trade","id":4}"#,
            err(Some(4), 2, "Invalid request: params must be an array"),
        ),
        (
            r#"{"method":"FOO","id":5}"#,
            err(
                Some(5),
                2,
                "Invalid request: unknown variant `FOO`, expected one of SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS",
            ),
        ),
    ];
    for (text, want) in bad {
        assert_eq!(decode_request(text), Err(want), "{text}");
    }
    let reply = decode_request(r#"{"method":"FOO","id":5}"#).unwrap_err().to_frame();
    assert_eq!(decode(&encode_frame(&reply)), Ok(reply));
}

quickcheck! {
    fn requests_round_trip(streams: Vec<String>, id: u64, kind: u8) -> bool {
        let request = match kind % 3 {
            0 => Request::Subscribe(streams),
            1 => Request::Unsubscribe(streams),
            _ => Request::ListSubscriptions,
        };
        decode_request(&encode_request(&request, id)) == Ok((request, id))
    }
}

#[test]
fn stream_names_are_checked() {
    for ok in [
        "btcusdt@aggTrade",
        "btcusdt@trade",
        "btcusdt@kline_1m",
        "btcusdt@kline_1M",
        "btcusdt@kline_1h@+08:00",
        "btcusdt@depth",
        "btcusdt@depth@100ms",
        "btcusdt@depth5",
        "btcusdt@depth20@100ms",
        "1000shibusdt@bookTicker",
        "btcusdt@ticker",
        "btcusdt@ticker_1h",
        "btcusdt@ticker_4h",
        "btcusdt@ticker_1d",
        "btcusdt@miniTicker",
    ] {
        assert_eq!(check_stream_name(ok), Ok(()), "{ok}");
    }
    let table = [
        ("btcusdt", StreamNameError::NoAt("btcusdt".into())),
        ("BTCUSDT@trade", StreamNameError::BadSymbol("BTCUSDT@trade".into())),
        ("@trade", StreamNameError::BadSymbol("@trade".into())),
        ("btcusdt@avgPrice", StreamNameError::UnsupportedType("btcusdt@avgPrice".into())),
        ("btcusdt@ticker_2h", StreamNameError::UnsupportedType("btcusdt@ticker_2h".into())),
        ("btcusdt@miniticker", StreamNameError::UnsupportedType("btcusdt@miniticker".into())),
        ("btcusdt@aggtrade", StreamNameError::UnsupportedType("btcusdt@aggtrade".into())),
        ("btcusdt@depth7", StreamNameError::UnsupportedType("btcusdt@depth7".into())),
        ("btcusdt@kline_2m", StreamNameError::BadInterval("btcusdt@kline_2m".into())),
    ];
    for (name, err) in table {
        assert_eq!(check_stream_name(name), Err(err), "{name}");
    }
    assert!(check_stream_name("btcusdt@avgPrice").unwrap_err().to_string().contains("keel decodes aggTrade"));
}

#[test]
fn a_name_wrong_only_in_letter_case_gets_the_right_spelling() {
    for (name, fixed) in [
        ("BTCUSDT@aggTrade", "btcusdt@aggTrade"),
        ("btcusdt@aggtrade", "btcusdt@aggTrade"),
        ("BtcUsdt@BOOKTICKER", "btcusdt@bookTicker"),
        ("ethusdt@Depth20@100MS", "ethusdt@depth20@100ms"),
        ("btcusdt@KLINE_1m", "btcusdt@kline_1m"),
        ("btcusdt@Ticker_1H", "btcusdt@ticker_1h"),
        ("!MINITICKER@ARR", "!miniTicker@arr"),
        ("!Ticker_4h@arr", "!ticker_4h@arr"),
    ] {
        let message = check_stream_name(name).unwrap_err().to_string();
        assert!(message.contains(&format!("; did you mean {fixed:?}?")), "{message}");
        assert_eq!(check_stream_name(fixed), Ok(()), "{fixed}");
    }
    // No guess where case carries meaning (1M is a month), or where no spelling would do.
    for name in ["btcusdt@kline_1H", "btcusdt@avgPrice", "BTCUSDT@avgPrice", "btc-usdt@trade", "!bookTicker"] {
        let message = check_stream_name(name).unwrap_err().to_string();
        assert!(!message.contains("did you mean"), "{message}");
    }
}

#[test]
fn decode_on_stream_attributes_raw_frames_to_the_known_stream() {
    let Ok(Frame::Market { stream, event }) = decode_on_stream(AGG, "bnbbtc@aggTrade") else { panic!() };
    assert_eq!((stream.as_str(), event), ("bnbbtc@aggTrade", MarketEvent::AggTrade(agg_event())));
    let Ok(Frame::Market { stream, .. }) = decode_on_stream(BOOK, "bnbusdt@bookTicker") else { panic!() };
    assert_eq!(stream, "bnbusdt@bookTicker");
    // Non-market frames decode as usual.
    assert_eq!(
        decode_on_stream(r#"{"result":null,"id":1}"#, "x@trade"),
        Ok(Frame::Response { id: 1, result: ResponseResult::Null })
    );
    assert_eq!(decode_on_stream("", "x@trade"), Err(DecodeError::Empty));
}

#[test]
fn fast_path_takes_older_and_extended_layouts() {
    // Older trade frames carry buyer and seller order ids; a field Binance may add is skipped.
    let old_trade = TRADE.replace(r#""q":"100","#, r#""q":"100","b":88,"a":50,"#);
    let extended = AGG.replace(r#""M":true}"#, r#""M":true,"X":"new","N":-3,"Z":null}"#);
    let kline_extra = KLINE.replace(r#""B":"123456"}"#, r#""B":"123456","Z":1}"#);
    for text in [old_trade, extended, kline_extra] {
        let fast = fast::try_decode(&text);
        assert!(fast.is_some(), "{text}");
        assert_eq!(fast.as_ref().ok_or(()), decode_general(&text).as_ref().map_err(|_| ()), "{text}");
    }
    // Keys the general path reads, or values the fast path does not check, go to the general path.
    for text in [
        AGG.replace(r#""M":true}"#, r#""M":true,"t":5}"#),
        AGG.replace(r#""M":true}"#, r#""M":true,"x":1.5}"#),
        AGG.replace(r#""M":true}"#, r#""M":true,"x":[1]}"#),
        AGG.replace(r#""M":true}"#, r#""M":true,"\u0074":5}"#),
    ] {
        assert_eq!(fast::try_decode(&text), None, "{text}");
        assert!(decode(&text).is_ok(), "{text}");
    }
}

#[test]
fn market_events_stay_small_enough_to_move_cheaply() {
    // Every event is moved through several queues (decoder, connection, recovery, adapter); a
    // large variant makes every aggTrade pay for copying it. Kline is boxed for that reason.
    let size = std::mem::size_of::<MarketEvent>();
    assert!(size <= 120, "MarketEvent is {size} bytes: box the variant that grew");
    assert!(std::mem::size_of::<Kline>() > 200, "Kline is small now: it need not be boxed any more");
    // The tickers are boxed too: unboxed, either would be the largest variant.
    assert!(std::mem::size_of::<MiniTicker>() > size, "MiniTicker fits unboxed now");
    assert!(std::mem::size_of::<Ticker>() > 2 * size);
}

// ---- all-market arrays ----

/// `!miniTicker@arr` as Binance sends it: Binance's sample element, then a second symbol.
fn mini_array_text() -> String {
    let text = format!("[{MINI},{}]", MINI.replace("BNBBTC", "ETHUSDT").replace(r#""c":"0.0025""#, r#""c":"3012.55""#));
    assert_eq!(text, MINI_ARR);
    text
}

fn mini_event(symbol: &str, close: &str) -> MiniTicker {
    MiniTicker {
        symbol: symbol.into(),
        event_time: 1672515782136,
        close: d(close),
        open: d("0.0010"),
        high: d("0.0025"),
        low: d("0.0010"),
        volume: d("10000"),
        quote_volume: d("18"),
    }
}

#[test]
fn all_market_arrays_from_binance_docs() {
    let minis = MarketEvent::MiniTickers(vec![mini_event("BNBBTC", "0.0025"), mini_event("ETHUSDT", "3012.55")]);
    let mut hour = ticker_event();
    hour.window = TickerWindow::Rolling1h;
    hour.close_time = 1675216573749;
    let hours = MarketEvent::Tickers(vec![hour.clone(), Ticker { symbol: "ETHUSDT".into(), ..hour }]);
    let days = MarketEvent::Tickers(vec![ticker_event()]);
    let table = [
        ("!miniTicker@arr", mini_array_text(), minis),
        ("!ticker_1h@arr", format!("[{TICKER_1H},{}]", TICKER_1H.replace("BNBBTC", "ETHUSDT")), hours),
        ("!ticker@arr", format!("[{TICKER}]"), days),
    ];
    for (stream, data, want) in table {
        let frame = Frame::Market { stream: stream.into(), event: want.clone() };
        let text = combined(stream, &data);
        assert_eq!(decode(&text), Ok(frame.clone()), "{text}");
        assert_eq!(fast::try_decode(&text).as_ref(), Some(&frame), "the fast path reads Binance's layout: {text}");
        assert_eq!(decode_general(&text), Ok(frame.clone()));
        // Raw (`/ws/!miniTicker@arr`): the bare array, its stream known or told by the elements.
        assert_eq!(decode(&data), Ok(frame.clone()), "{data}");
        assert_eq!(decode_general(&data), Ok(frame.clone()), "{data}");
        assert_eq!(decode_on_stream(&data, stream), Ok(frame.clone()));
        assert_eq!((encode_event(&want), encode_frame(&frame)), (data.clone(), text));
        assert_eq!((want.symbol(), want.sequence(), want.event_time()), ("", Sequence::Unsequenced, 1672515782136));
        assert_eq!(stream_name(&want), stream);
    }
}

#[test]
fn an_empty_array_is_valid_where_the_stream_name_tells_its_kind() {
    for (stream, want, kind) in [
        ("!miniTicker@arr", MarketEvent::MiniTickers(Vec::new()), "24hrMiniTicker[]"),
        ("!ticker@arr", MarketEvent::Tickers(Vec::new()), "24hrTicker[]"),
        ("!ticker_4h@arr", MarketEvent::Tickers(Vec::new()), "24hrTicker[]"),
    ] {
        let frame = Frame::Market { stream: stream.into(), event: want.clone() };
        let text = combined(stream, "[]");
        assert_eq!(decode(&text), Ok(frame.clone()), "{text}");
        assert_eq!(fast::try_decode(&text).as_ref(), Some(&frame));
        assert_eq!(decode_on_stream("[]", stream), Ok(frame));
        assert_eq!((want.kind(), want.event_time()), (kind, 0));
    }
    // A bare empty array of no known stream could be any of them.
    assert_eq!(decode("[]"), Err(DecodeError::NotAnObject("an array")));
    assert_eq!(decode_on_stream("[]", "btcusdt@ticker"), Err(DecodeError::NotAnObject("an array")));
}

#[test]
fn malformed_array_elements_name_the_index_and_field() {
    let at = |index, error| DecodeError::ArrayElement { index, error: Box::new(error) };
    let second = MINI.replace("BNBBTC", "ETHUSDT");
    let table: Vec<(&str, String, DecodeError)> = vec![
        (
            "!miniTicker@arr",
            format!("[{MINI},{}]", second.replace(r#","c":"0.0025""#, "")),
            at(1, DecodeError::MissingField { kind: "24hrMiniTicker", field: "c" }),
        ),
        (
            "!miniTicker@arr",
            format!("[{MINI},{MINI},{}]", second.replace(r#""v":"10000""#, r#""v":"1e4""#)),
            at(
                2,
                DecodeError::BadDecimal {
                    kind: "24hrMiniTicker",
                    field: "v",
                    value: "1e4".into(),
                    reason: DecimalError::BadChar('e'),
                },
            ),
        ),
        (
            "!ticker_4h@arr",
            format!("[{TICKER_1H}]"),
            at(0, DecodeError::WrongEvent { expected: "4hTicker", found: "1hTicker".into() }),
        ),
        ("!ticker@arr", format!("[{TICKER},7]"), at(1, DecodeError::NotAnObject("an integer"))),
        (
            "!ticker@arr",
            format!("[{}]", TICKER.replace(r#""e":"24hrTicker","#, "")),
            at(0, DecodeError::MissingField { kind: "24hrTicker", field: "e" }),
        ),
        (
            "!ticker_1d@arr",
            format!("[{}]", TICKER_1H.replace("1hTicker", "1dTicker").replace(r#""L":18150"#, r#""L":"x""#)),
            at(0, DecodeError::WrongType { kind: "1dTicker", field: "L", expected: "an integer", found: "a string" }),
        ),
        // An array where the stream carries single events.
        (
            "btcusdt@miniTicker",
            format!("[{MINI}]"),
            DecodeError::WrongType {
                kind: "combined stream envelope",
                field: "data",
                expected: "an object",
                found: "an array",
            },
        ),
    ];
    for (stream, data, want) in table {
        let text = combined(stream, &data);
        assert_eq!(fast::try_decode(&text), None, "{text}");
        assert_eq!(decode(&text), Err(want.clone()), "{text}");
        if stream.starts_with('!') {
            assert_eq!(decode_on_stream(&data, stream), Err(want), "raw: {data}");
        }
    }
    // Without a stream, the first element tells the kind; a mixed array fails at the odd element.
    assert_eq!(
        decode(&format!("[{MINI},{TICKER}]")),
        Err(at(1, DecodeError::WrongEvent { expected: "24hrMiniTicker", found: "24hrTicker".into() }))
    );
    let message = decode(&combined("!miniTicker@arr", &format!("[{MINI},{{}}]"))).unwrap_err().to_string();
    assert_eq!(message, r#"element 1 of the all-market array: 24hrMiniTicker frame is missing field "e""#);
    assert_eq!(decode(&combined("!miniTicker@arr", "[{}]")).unwrap_err().label(), "missing_field");
}

#[test]
fn array_stream_names_are_checked() {
    for ok in ARRAY_STREAMS {
        assert_eq!(check_stream_name(ok), Ok(()), "{ok}");
        assert!(array_element_type(ok).is_some());
    }
    for bad in ["!bookTicker", "!miniticker@arr", "!ticker_2h@arr", "!ticker@arr@100ms", "!", "!btcusdt@ticker"] {
        assert_eq!(check_stream_name(bad), Err(StreamNameError::UnsupportedType(bad.into())), "{bad}");
    }
    assert!(check_stream_name("!x").unwrap_err().to_string().contains("!miniTicker@arr, !ticker@arr"));
}

#[test]
fn every_one_character_change_of_an_array_frame_keeps_the_paths_in_agreement() {
    // Exhaustive over positions (the properties above draw array frames only now and then).
    for (stream, data) in [("!miniTicker@arr", MINI_ARR), ("!ticker_1h@arr", TICKER_1H_ARR)] {
        for text in [data.to_string(), combined(stream, data)] {
            let chars: Vec<char> = text.chars().collect();
            for at in 0..chars.len() {
                for c in [None, Some('0'), Some('"'), Some(','), Some('['), Some(']'), Some('{'), Some('}'), Some('x')]
                {
                    let mut changed = chars.clone();
                    match c {
                        Some(c) => changed[at] = c,
                        None => {
                            changed.remove(at);
                        }
                    }
                    let changed: String = changed.into_iter().collect();
                    let general = decode_general(&changed);
                    if let Some(fast) = fast::try_decode(&changed) {
                        assert!(paths_agree(&fast, &general), "{changed}: fast {fast:?}, general {general:?}");
                    }
                }
            }
        }
    }
}
