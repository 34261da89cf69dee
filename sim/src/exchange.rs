//! The model exchange's market: streams whose events are Binance frames, so that the real decoder
//! in `keel_core::protocol` runs on them.
//!
//! aggTrade ids advance with market time whether or not anyone is connected (that is what makes a
//! reconnect show a gap), and every field of a trade is a pure function of its id, so the checker
//! can verify a delivered event without storing what was sent.

/// What a market stream produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `<symbol>@aggTrade`: sequenced by `a` (and `f`/`l`).
    AggTrade,
    /// `<symbol>@kline_1m`: unsequenced.
    Kline,
}

/// One stream of the model market.
#[derive(Debug, Clone)]
pub struct Market {
    /// Binance stream name, e.g. `btcusdt@aggTrade`.
    pub stream: String,
    /// Upper-case symbol as it appears in `s`.
    pub symbol: String,
    /// Event type.
    pub kind: StreamKind,
    /// The id the next aggTrade gets.
    pub next_id: u64,
    /// When the next event happens.
    pub next_at: u64,
    /// No events before this (a quiet market).
    pub quiet_until: u64,
}

impl Market {
    /// A market for `stream` whose first event happens at `first_at`; `None` for streams the model
    /// does not produce.
    pub fn new(stream: &str, first_id: u64, first_at: u64) -> Option<Market> {
        let (symbol, kind) = stream.split_once('@')?;
        let kind = match kind {
            "aggTrade" => StreamKind::AggTrade,
            "kline_1m" => StreamKind::Kline,
            _ => return None,
        };
        Some(Market {
            stream: stream.to_string(),
            symbol: symbol.to_ascii_uppercase(),
            kind,
            next_id: first_id,
            next_at: first_at,
            quiet_until: 0,
        })
    }

    /// The combined-stream frame of the event happening now (epoch time `epoch_ms`), and its id
    /// for sequenced streams. Advances the id.
    pub fn next_frame(&mut self, epoch_ms: u64) -> (String, Option<u64>) {
        match self.kind {
            StreamKind::AggTrade => {
                let a = self.next_id;
                self.next_id += 1;
                // Written by hand rather than with format!: this is the simulator's hottest line.
                // The unit test pins the exact text. f/l continue across aggTrades: f = 3a,
                // l = 3a + 2, so f == previous l + 1.
                let mut f = String::with_capacity(96 + 2 * self.stream.len());
                f.push_str(r#"{"stream":""#);
                f.push_str(&self.stream);
                f.push_str(r#"","data":{"e":"aggTrade","E":"#);
                push_u64(&mut f, epoch_ms);
                f.push_str(r#","s":""#);
                f.push_str(&self.symbol);
                f.push_str(r#"","a":"#);
                push_u64(&mut f, a);
                f.push_str(r#","p":""#);
                push_u64(&mut f, 30_000 + a % 997);
                f.push('.');
                push_padded(&mut f, a % 100, 2);
                f.push_str(r#"","q":"0."#);
                push_padded(&mut f, 1 + a % 999, 3);
                f.push_str(r#"","f":"#);
                push_u64(&mut f, 3 * a);
                f.push_str(r#","l":"#);
                push_u64(&mut f, 3 * a + 2);
                f.push_str(r#","T":"#);
                push_u64(&mut f, epoch_ms);
                f.push_str(if a.is_multiple_of(2) { r#","m":true,"M":true}}"# } else { r#","m":false,"M":true}}"# });
                (f, Some(a))
            }
            StreamKind::Kline => {
                let open = epoch_ms / 60_000 * 60_000;
                let frame = format!(
                    r#"{{"stream":"{}","data":{{"e":"kline","E":{epoch_ms},"s":"{s}","k":{{"t":{open},"T":{close},"s":"{s}","i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":false,"q":"1.0000","V":"500","Q":"0.500","B":"0"}}}}}}"#,
                    self.stream,
                    s = self.symbol,
                    close = open + 59_999,
                );
                (frame, None)
            }
        }
    }
}

/// Appends the decimal digits of `n`.
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(buf[i..].iter().map(|&b| b as char));
}

/// Appends `n` left-padded with zeros to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = String::new();
    push_u64(&mut digits, n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(&digits);
}

/// Price and quantity of aggTrade `a`, as the decimal strings Binance sends.
pub fn agg_trade_fields(a: u64) -> (String, String) {
    (format!("{}.{:02}", 30_000 + a % 997, a % 100), format!("0.{:03}", 1 + a % 999))
}

/// Malformed frames a real feed has produced: truncations, junk, unknown events, wrong types.
pub fn malformed_frame(which: u64, stream: &str) -> String {
    match which % 6 {
        0 => format!(r#"{{"stream":"{stream}","data":{{"e":"aggTrade","E":1"#),
        1 => "not json at all".to_string(),
        2 => format!(r#"{{"stream":"{stream}","data":{{"e":"mysteryEvent","E":1}}}}"#),
        3 => format!(r#"{{"stream":"{stream}","data":{{"e":"aggTrade","E":1,"s":"X","a":"seven"}}}}"#),
        4 => String::new(),
        _ => "\u{fffd}\u{0}{[".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agg_trade_frames_continue_ids_and_trade_ids() {
        let mut m = Market::new("btcusdt@aggTrade", 41, 0).unwrap();
        let (f1, a1) = m.next_frame(1_700_000_000_000);
        let (f2, a2) = m.next_frame(1_700_000_000_500);
        assert_eq!((a1, a2), (Some(41), Some(42)));
        assert_eq!(
            f1,
            r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1700000000000,"s":"BTCUSDT","a":41,"p":"30041.41","q":"0.042","f":123,"l":125,"T":1700000000000,"m":false,"M":true}}"#
        );
        assert!(f2.contains(r#""a":42"#) && f2.contains(r#""f":126"#) && f2.contains(r#""l":128"#));
        let v: serde_json::Value = serde_json::from_str(&f2).unwrap();
        assert_eq!(v["data"]["p"], "30042.42");
    }

    #[test]
    fn hand_written_frames_equal_format() {
        for a in [0u64, 1, 9, 10, 99, 100, 996, 997, 12_345, 1 << 40, u64::MAX / 4] {
            let mut m = Market::new("ethusdt@aggTrade", a, 0).unwrap();
            let (frame, _) = m.next_frame(1_700_000_000_123);
            let (p, q) = agg_trade_fields(a);
            let expected = format!(
                r#"{{"stream":"ethusdt@aggTrade","data":{{"e":"aggTrade","E":1700000000123,"s":"ETHUSDT","a":{a},"p":"{p}","q":"{q}","f":{},"l":{},"T":1700000000123,"m":{},"M":true}}}}"#,
                3 * a,
                3 * a + 2,
                a % 2 == 0
            );
            assert_eq!(frame, expected);
        }
    }

    #[test]
    fn klines_are_valid_json_and_unsequenced() {
        let mut m = Market::new("ethusdt@kline_1m", 0, 0).unwrap();
        let (f, id) = m.next_frame(125_000);
        assert_eq!(id, None);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["data"]["k"]["t"], 120_000);
        assert_eq!(v["data"]["s"], "ETHUSDT");
        assert!(Market::new("btcusdt@depth", 0, 0).is_none());
    }

    #[test]
    fn malformed_frames_are_not_valid_events() {
        for i in 0..6 {
            let f = malformed_frame(i, "btcusdt@aggTrade");
            let ok = serde_json::from_str::<serde_json::Value>(&f)
                .map(|v| v["data"]["a"].is_u64() && v["data"]["e"] == "aggTrade")
                .unwrap_or(false);
            assert!(!ok, "{f}");
        }
    }
}
