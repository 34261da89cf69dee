//! Decoding Binance REST bodies (pure): `/api/v3/aggTrades`, `/api/v3/depth`, and error bodies.
//!
//! - aggTrades: `[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,
//!   "m":true,"M":true}, ...]` -> `Vec<AggTrade>` (the stream's struct; the symbol comes from the
//!   request, `event_time` is `T` since REST has no event time).
//! - historicalTrades: `[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",
//!   "time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}, ...]` -> `Vec<Trade>` (`event_time`
//!   is `time`).
//! - klines: `[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",
//!   1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"], ...]` -> `Vec<Kline>`, all
//!   closed (`x: true`) as asked (keel asks only for intervals that are over); `event_time` is the close
//!   time, and the trade ids `f`/`L`, which REST does not give, are -1.
//! - depth: `{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[...]}` -> [`DepthSnapshot`].
//! - errors: `{"code":-1121,"msg":"Invalid symbol."}` -> [`RestDecodeError::Binance`].
//!
//! Every error names the item and the field that is wrong, since a REST body that does not decode is
//! retried, and the log line is all an operator has to go on.

use super::{AggTrade, Decimal, DecimalError, Kline, Level, Name, Trade};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An order-book snapshot from `GET /api/v3/depth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthSnapshot {
    /// `lastUpdateId`: the book includes every diff up to this update id.
    pub last_update_id: u64,
    /// Bids, best (highest) first as Binance sends them.
    pub bids: Vec<Level>,
    /// Asks, best (lowest) first.
    pub asks: Vec<Level>,
}

/// Why a REST body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestDecodeError {
    /// The body is not JSON (or is truncated).
    #[error("REST body is not JSON: {0}")]
    NotJson(String),
    /// The body is Binance's error object.
    #[error("Binance error {code}: {msg}")]
    Binance {
        /// Binance's error code, e.g. -1121.
        code: i64,
        /// Binance's message, e.g. `Invalid symbol.`.
        msg: String,
    },
    /// The body has the wrong JSON shape (an object where an array belongs, ...).
    #[error("{what} is {found}, expected {expected}")]
    Shape {
        /// Which body or item, e.g. `aggTrades body`, `aggTrade #3`.
        what: String,
        /// The JSON type found.
        found: &'static str,
        /// The JSON type wanted.
        expected: &'static str,
    },
    /// A required field is absent.
    #[error("{what} is missing field {field:?}")]
    MissingField {
        /// Which item, e.g. `aggTrade #3`.
        what: String,
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong type or an out-of-range value.
    #[error("field {field:?} of {what} is {found}, expected {expected}")]
    WrongType {
        /// Which item.
        what: String,
        /// The field.
        field: &'static str,
        /// What was there.
        found: String,
        /// What was wanted.
        expected: &'static str,
    },
    /// A price or quantity is not a decimal string.
    #[error("field {field:?} of {what}: {value:?} is not a decimal number ({reason})")]
    BadDecimal {
        /// Which item (e.g. `depth bids level #2`).
        what: String,
        /// The field.
        field: &'static str,
        /// The text.
        value: String,
        /// Why.
        reason: DecimalError,
    },
}

/// Decodes an aggTrades body; `symbol` is the request's (REST trades carry none).
pub fn decode_agg_trades(body: &str, symbol: &str) -> Result<Vec<AggTrade>, RestDecodeError> {
    let value = parse(body)?;
    let Value::Array(items) = value else {
        return Err(shape("aggTrades body", &value, "an array of trades"));
    };
    let symbol = Name::from(symbol);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("aggTrade #{i}");
            let Value::Object(o) = item else { return Err(shape(&what, item, "an object")) };
            let trade_time = uint(o, &what, "T")?;
            Ok(AggTrade {
                symbol: symbol.clone(),
                event_time: trade_time,
                agg_id: uint(o, &what, "a")?,
                price: decimal(o, &what, "p")?,
                quantity: decimal(o, &what, "q")?,
                first_trade_id: uint(o, &what, "f")?,
                last_trade_id: uint(o, &what, "l")?,
                trade_time,
                buyer_is_maker: boolean(o, &what, "m")?,
            })
        })
        .collect()
}

/// Decodes a historicalTrades body; `symbol` is the request's (REST trades carry none).
pub fn decode_trades(body: &str, symbol: &str) -> Result<Vec<Trade>, RestDecodeError> {
    let value = parse(body)?;
    let Value::Array(items) = value else {
        return Err(shape("historicalTrades body", &value, "an array of trades"));
    };
    let symbol = Name::from(symbol);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("trade #{i}");
            let Value::Object(o) = item else { return Err(shape(&what, item, "an object")) };
            let time = uint(o, &what, "time")?;
            Ok(Trade {
                symbol: symbol.clone(),
                event_time: time,
                trade_id: uint(o, &what, "id")?,
                price: decimal(o, &what, "price")?,
                quantity: decimal(o, &what, "qty")?,
                trade_time: time,
                buyer_is_maker: boolean(o, &what, "isBuyerMaker")?,
            })
        })
        .collect()
}

/// Decodes a klines body (arrays of 12 values); `symbol` and `interval` are the request's.
pub fn decode_klines(body: &str, symbol: &str, interval: &str) -> Result<Vec<Kline>, RestDecodeError> {
    let value = parse(body)?;
    let Value::Array(items) = value else {
        return Err(shape("klines body", &value, "an array of klines"));
    };
    let symbol = Name::from(symbol);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("kline #{i}");
            let Some(a) = item.as_array().filter(|a| a.len() >= 11) else {
                return Err(shape(&what, item, "an array of 12 values"));
            };
            let int = |at: usize, name: &'static str| {
                a[at].as_u64().ok_or_else(|| RestDecodeError::WrongType {
                    what: what.clone(),
                    field: name,
                    found: a[at].to_string(),
                    expected: "a non-negative integer",
                })
            };
            let dec = |at: usize, name: &'static str| decimal_value(&a[at], &what, name);
            let close_time = int(6, "close time")?;
            Ok(Kline {
                symbol: symbol.clone(),
                event_time: close_time,
                open_time: int(0, "open time")?,
                close_time,
                interval: interval.to_owned(),
                first_trade_id: -1,
                last_trade_id: -1,
                open: dec(1, "open")?,
                high: dec(2, "high")?,
                low: dec(3, "low")?,
                close: dec(4, "close")?,
                volume: dec(5, "volume")?,
                quote_volume: dec(7, "quote volume")?,
                trades: int(8, "number of trades")?,
                taker_buy_volume: dec(9, "taker buy base volume")?,
                taker_buy_quote_volume: dec(10, "taker buy quote volume")?,
                is_closed: true,
            })
        })
        .collect()
}

/// Decodes a depth snapshot body.
pub fn decode_depth(body: &str) -> Result<DepthSnapshot, RestDecodeError> {
    let value = parse(body)?;
    let Value::Object(o) = &value else {
        return Err(shape("depth body", &value, "an object"));
    };
    let what = "depth body";
    Ok(DepthSnapshot {
        last_update_id: uint(o, what, "lastUpdateId")?,
        bids: levels(o, "bids")?,
        asks: levels(o, "asks")?,
    })
}

/// Binance's error body (`{"code":-1121,"msg":"Invalid symbol."}`), if `body` is one.
pub fn decode_error_body(body: &str) -> Option<RestDecodeError> {
    let Ok(Value::Object(o)) = serde_json::from_str::<Value>(body) else { return None };
    binance_error(&o)
}

fn binance_error(o: &Map<String, Value>) -> Option<RestDecodeError> {
    let code = o.get("code")?.as_i64()?;
    let msg = o.get("msg").and_then(Value::as_str).unwrap_or("").to_owned();
    Some(RestDecodeError::Binance { code, msg })
}

fn parse(body: &str) -> Result<Value, RestDecodeError> {
    let value: Value = serde_json::from_str(body).map_err(|e| RestDecodeError::NotJson(e.to_string()))?;
    if let Value::Object(o) = &value
        && let Some(e) = binance_error(o)
    {
        return Err(e);
    }
    Ok(value)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shape(what: &str, v: &Value, expected: &'static str) -> RestDecodeError {
    RestDecodeError::Shape { what: what.to_owned(), found: type_name(v), expected }
}

fn field<'a>(o: &'a Map<String, Value>, what: &str, name: &'static str) -> Result<&'a Value, RestDecodeError> {
    o.get(name).ok_or_else(|| RestDecodeError::MissingField { what: what.to_owned(), field: name })
}

fn uint(o: &Map<String, Value>, what: &str, name: &'static str) -> Result<u64, RestDecodeError> {
    let v = field(o, what, name)?;
    v.as_u64().ok_or_else(|| RestDecodeError::WrongType {
        what: what.to_owned(),
        field: name,
        found: v.to_string(),
        expected: "a non-negative integer",
    })
}

fn boolean(o: &Map<String, Value>, what: &str, name: &'static str) -> Result<bool, RestDecodeError> {
    let v = field(o, what, name)?;
    v.as_bool().ok_or_else(|| RestDecodeError::WrongType {
        what: what.to_owned(),
        field: name,
        found: v.to_string(),
        expected: "true or false",
    })
}

fn decimal_value(v: &Value, what: &str, name: &'static str) -> Result<Decimal, RestDecodeError> {
    let Value::String(text) = v else {
        return Err(RestDecodeError::WrongType {
            what: what.to_owned(),
            field: name,
            found: v.to_string(),
            expected: "a decimal string",
        });
    };
    Decimal::parse(text).map_err(|reason| RestDecodeError::BadDecimal {
        what: what.to_owned(),
        field: name,
        value: text.clone(),
        reason,
    })
}

fn decimal(o: &Map<String, Value>, what: &str, name: &'static str) -> Result<Decimal, RestDecodeError> {
    decimal_value(field(o, what, name)?, what, name)
}

fn levels(o: &Map<String, Value>, name: &'static str) -> Result<Vec<Level>, RestDecodeError> {
    let v = field(o, "depth body", name)?;
    let Value::Array(items) = v else {
        return Err(RestDecodeError::WrongType {
            what: "depth body".into(),
            field: name,
            found: type_name(v).into(),
            expected: "an array of [price, qty] pairs",
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("depth {name} level #{i}");
            match item.as_array().map(Vec::as_slice) {
                Some([p, q, ..]) => Ok((decimal_value(p, &what, "price")?, decimal_value(q, &what, "qty")?)),
                _ => Err(shape(&what, item, "a [price, qty] pair")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn agg_trades_decode_like_the_docs_example() {
        let body = r#"[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true},
                       {"a":26130,"p":"0.01633200","q":"1.00000000","f":27782,"l":27784,"T":1498793709200,"m":false,"M":true}]"#;
        let trades = decode_agg_trades(body, "BNBBTC").unwrap();
        assert_eq!(
            trades[0],
            AggTrade {
                symbol: "BNBBTC".into(),
                event_time: 1498793709153,
                agg_id: 26129,
                price: d("0.01633102"),
                quantity: d("4.70443515"),
                first_trade_id: 27781,
                last_trade_id: 27781,
                trade_time: 1498793709153,
                buyer_is_maker: true,
            }
        );
        assert_eq!((trades[1].agg_id, trades[1].last_trade_id, trades[1].buyer_is_maker), (26130, 27784, false));
        assert_eq!(decode_agg_trades("[]", "X").unwrap(), vec![]);
    }

    #[test]
    fn trades_and_klines_decode_like_the_docs_examples() {
        let body = r#"[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]"#;
        assert_eq!(
            decode_trades(body, "BNBBTC").unwrap(),
            vec![Trade {
                symbol: "BNBBTC".into(),
                event_time: 1499865549590,
                trade_id: 28457,
                price: d("4.00000100"),
                quantity: d("12.00000000"),
                trade_time: 1499865549590,
                buyer_is_maker: true,
            }]
        );
        let body = r#"[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]]"#;
        let k = &decode_klines(body, "BNBBTC", "1w").unwrap()[0];
        assert_eq!(
            (k.open_time, k.close_time, k.event_time, k.trades),
            (1499040000000, 1499644799999, 1499644799999, 308)
        );
        assert_eq!((k.open, k.close, k.volume), (d("0.01634790"), d("0.01577100"), d("148976.11427815")));
        assert_eq!((k.taker_buy_volume, k.is_closed, k.interval.as_str()), (d("1756.87402397"), true, "1w"));
        assert_eq!(decode_trades("[]", "X").unwrap(), vec![]);
        let bad: &[(&str, &[&str])] = &[
            (r#"[{"price":"1","qty":"1","time":1,"isBuyerMaker":true}]"#, &["trade #0", "\"id\""]),
            (r#"{"id":1}"#, &["historicalTrades body", "an object"]),
        ];
        for (body, words) in bad {
            let e = decode_trades(body, "X").unwrap_err().to_string();
            assert!(words.iter().all(|w| e.contains(w)), "{body}: {e}");
        }
        let bad: &[(&str, &[&str])] = &[
            ("[[1,2]]", &["kline #0", "12 values"]),
            (r#"[[-1,"1","1","1","1","1",2,"1",3,"1","1","0"]]"#, &["kline #0", "open time", "-1"]),
            (r#"[[1,1.5,"1","1","1","1",2,"1",3,"1","1","0"]]"#, &["kline #0", "open", "decimal string"]),
        ];
        for (body, words) in bad {
            let e = decode_klines(body, "X", "1m").unwrap_err().to_string();
            assert!(words.iter().all(|w| e.contains(w)), "{body}: {e}");
        }
    }

    #[test]
    fn depth_decodes_like_the_docs_example() {
        let body =
            r#"{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}"#;
        assert_eq!(
            decode_depth(body).unwrap(),
            DepthSnapshot {
                last_update_id: 1027024,
                bids: vec![(d("4.00000000"), d("431.00000000"))],
                asks: vec![(d("4.00000200"), d("12.00000000"))],
            }
        );
    }

    /// Each bad body and words its error must contain.
    #[test]
    fn errors_name_the_field() {
        let agg: &[(&str, &[&str])] = &[
            (r#"{"code":-1121,"msg":"Invalid symbol."}"#, &["-1121", "Invalid symbol."]),
            ("[{", &["not JSON"]),
            (r#"{"a":1}"#, &["aggTrades body", "an object"]),
            ("[1]", &["aggTrade #0", "a number"]),
            (r#"[{"p":"1","q":"1","f":1,"l":1,"T":1,"m":true}]"#, &["aggTrade #0", "\"a\""]),
            (r#"[{"a":-1,"p":"1","q":"1","f":1,"l":1,"T":1,"m":true}]"#, &["\"a\"", "-1"]),
            (r#"[{"a":1,"p":1.5,"q":"1","f":1,"l":1,"T":1,"m":true}]"#, &["\"p\"", "decimal string"]),
            (r#"[{"a":1,"p":"1","q":"1e5","f":1,"l":1,"T":1,"m":true}]"#, &["\"q\"", "1e5"]),
            (r#"[{"a":1,"p":"1","q":"1","f":1,"l":1,"T":1,"m":"yes"}]"#, &["\"m\"", "true or false"]),
        ];
        for (body, words) in agg {
            let e = decode_agg_trades(body, "X").unwrap_err().to_string();
            assert!(words.iter().all(|w| e.contains(w)), "{body}: {e}");
        }
        let depth: &[(&str, &[&str])] = &[
            (r#"{"code":-1100,"msg":"Illegal characters"}"#, &["-1100", "Illegal characters"]),
            ("[]", &["depth body", "an array"]),
            (r#"{"bids":[],"asks":[]}"#, &["lastUpdateId"]),
            (r#"{"lastUpdateId":1,"asks":[]}"#, &["\"bids\""]),
            (r#"{"lastUpdateId":1,"bids":{},"asks":[]}"#, &["\"bids\"", "pairs"]),
            (r#"{"lastUpdateId":1,"bids":[],"asks":[["1"]]}"#, &["asks level #0", "pair"]),
            (r#"{"lastUpdateId":1,"bids":[["1","x"]],"asks":[]}"#, &["bids level #0", "qty", "\"x\""]),
        ];
        for (body, words) in depth {
            let e = decode_depth(body).unwrap_err().to_string();
            assert!(words.iter().all(|w| e.contains(w)), "{body}: {e}");
        }
        assert_eq!(decode_error_body("[]"), None);
        assert_eq!(
            decode_error_body(r#"{"code":-1003,"msg":"Too much request weight used"}"#),
            Some(RestDecodeError::Binance { code: -1003, msg: "Too much request weight used".into() })
        );
    }
}
