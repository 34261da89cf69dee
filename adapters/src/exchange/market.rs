//! The exchange's market: a seeded random walk per symbol producing Binance spot stream events.
//!
//! Sequence numbers live here, not in connections: aggTrade `a`, trade `t`, depth `U`/`u` and
//! bookTicker `u` advance on the exchange's clock whether or not anyone listens, so a client that
//! was away sees exactly the ids it missed as a gap, as on Binance.

use keel_core::rng::Rng;
use std::collections::BTreeMap;
use thiserror::Error;

/// One event produced by the market, already serialized as Binance sends it on `/ws/<stream>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    /// Stream name, e.g. `btcusdt@aggTrade`.
    pub stream: String,
    /// The raw event JSON (the `data` of the combined envelope).
    pub json: String,
    /// The first and last sequence number the event covers (aggTrade `a`, trade `t`, depth `U..u`,
    /// bookTicker `u`); None for klines, which carry no sequence.
    pub seq: Option<(u64, u64)>,
}

/// A stream name the exchange does not serve.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid stream name {name:?}: {why} (expected <symbol>@aggTrade|trade|depth|depth@100ms|bookTicker|kline_<1s,1m,3m,5m,15m,30m,1h,2h,4h,6h,8h,12h,1d>, symbol lowercase)"
)]
pub struct StreamNameError {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub why: String,
}

/// The kinds of stream the exchange serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamKind {
    /// `@aggTrade`.
    AggTrade,
    /// `@trade`.
    Trade,
    /// `@depth`, `@depth@100ms`, `@depth@1000ms`.
    Depth,
    /// `@bookTicker`.
    BookTicker,
    /// `@kline_<interval>` with the interval in milliseconds.
    Kline {
        /// Interval text, e.g. `1m`.
        interval: String,
        /// Interval length.
        ms: u64,
    },
}

/// Splits and validates a stream name into (symbol, kind).
pub fn parse_stream(name: &str) -> Result<(String, StreamKind), StreamNameError> {
    let err = |why: &str| StreamNameError { name: name.to_string(), why: why.to_string() };
    let (symbol, kind) = name.split_once('@').ok_or_else(|| err("no '@'"))?;
    if symbol.len() < 2 || symbol.len() > 20 || !symbol.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(err("the symbol must be 2 to 20 lowercase letters or digits"));
    }
    let kind = match kind {
        "aggTrade" => StreamKind::AggTrade,
        "trade" => StreamKind::Trade,
        "depth" | "depth@100ms" | "depth@1000ms" => StreamKind::Depth,
        "bookTicker" => StreamKind::BookTicker,
        k => {
            let interval = k.strip_prefix("kline_").ok_or_else(|| err("unknown stream kind"))?;
            let ms = interval_ms(interval).ok_or_else(|| err("unknown kline interval"))?;
            StreamKind::Kline { interval: interval.to_string(), ms }
        }
    };
    Ok((symbol.to_string(), kind))
}

fn interval_ms(interval: &str) -> Option<u64> {
    const S: u64 = 1000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    Some(match interval {
        "1s" => S,
        "1m" => M,
        "3m" => 3 * M,
        "5m" => 5 * M,
        "15m" => 15 * M,
        "30m" => 30 * M,
        "1h" => H,
        "2h" => 2 * H,
        "4h" => 4 * H,
        "6h" => 6 * H,
        "8h" => 8 * H,
        "12h" => 12 * H,
        "1d" => 24 * H,
        _ => return None,
    })
}

#[derive(Debug, Clone)]
struct Candle {
    open_time: u64,
    first_trade: u64,
    last_trade: u64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    trades: u64,
}

#[derive(Debug, Clone)]
struct Symbol {
    upper: String,
    price: f64,
    next_agg: u64,
    next_trade: u64,
    last_depth: u64,
    next_book: u64,
    /// interval text -> (interval ms, current candle)
    klines: BTreeMap<String, (u64, Option<Candle>)>,
}

/// The market of every symbol served so far.
#[derive(Debug, Clone)]
pub struct Market {
    rng: Rng,
    symbols: BTreeMap<String, Symbol>,
}

impl Market {
    /// A market with `symbols` trading from the start; other symbols start when first asked for.
    pub fn new(seed: u64, symbols: &[String]) -> Market {
        let mut m = Market { rng: Rng::new(seed), symbols: BTreeMap::new() };
        for s in symbols {
            m.symbol(s);
        }
        m
    }

    fn symbol(&mut self, name: &str) -> &mut Symbol {
        if !self.symbols.contains_key(name) {
            let base = match name {
                n if n.starts_with("btc") => 60_000.0,
                n if n.starts_with("eth") => 3_000.0,
                _ => 100.0,
            };
            let s = Symbol {
                upper: name.to_ascii_uppercase(),
                price: base * (0.9 + 0.2 * self.rng.next_f64()),
                next_agg: 1_000_000 + self.rng.below(1_000_000),
                next_trade: 5_000_000 + self.rng.below(1_000_000),
                last_depth: 9_000_000 + self.rng.below(1_000_000),
                next_book: 40_000_000 + self.rng.below(1_000_000),
                klines: BTreeMap::new(),
            };
            self.symbols.insert(name.to_string(), s);
        }
        // The entry was inserted just above when missing.
        self.symbols.get_mut(name).unwrap_or_else(|| unreachable!())
    }

    /// Validates `stream` and makes sure the market produces it from now on.
    pub fn ensure_stream(&mut self, stream: &str) -> Result<(), StreamNameError> {
        let (symbol, kind) = parse_stream(stream)?;
        let s = self.symbol(&symbol);
        if let StreamKind::Kline { interval, ms } = kind {
            s.klines.entry(interval).or_insert((ms, None));
        }
        Ok(())
    }

    /// The next aggTrade id of `symbol` (what the next produced event will carry).
    pub fn next_agg_id(&self, symbol: &str) -> Option<u64> {
        self.symbols.get(symbol).map(|s| s.next_agg)
    }

    /// One tick of trading at exchange time `now_ms`: for every symbol, one aggTrade of 1..=3
    /// trades, the trades, a depth update, a bookTicker and an update of every kline interval in use.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Produced> {
        let mut out = Vec::new();
        let names: Vec<String> = self.symbols.keys().cloned().collect();
        for name in names {
            let n_trades = 1 + self.rng.below(3);
            let mut trades = Vec::new();
            for _ in 0..n_trades {
                let step = (self.rng.next_f64() - 0.5) * 0.002;
                let qty = 0.001 + self.rng.next_f64() * 0.5;
                let maker = self.rng.chance(1, 2);
                let s = self.symbol(&name);
                s.price = (s.price * (1.0 + step)).max(0.01);
                trades.push((s.price, qty, maker));
            }
            let depth_extra = self.rng.below(3);
            let book_skip = 1 + self.rng.below(3);
            let s = self.symbol(&name);
            let sym = s.upper.clone();
            let (first_t, last_t) = (s.next_trade, s.next_trade + n_trades - 1);
            s.next_trade += n_trades;
            let agg = s.next_agg;
            s.next_agg += 1;
            let total_qty: f64 = trades.iter().map(|t| t.1).sum();
            let (last_price, _, last_maker) = trades[trades.len() - 1];
            out.push(Produced {
                stream: format!("{name}@aggTrade"),
                json: format!(
                    r#"{{"e":"aggTrade","E":{now_ms},"s":"{sym}","a":{agg},"p":"{last_price:.2}","q":"{total_qty:.5}","f":{first_t},"l":{last_t},"T":{now_ms},"m":{last_maker},"M":true}}"#
                ),
                seq: Some((agg, agg)),
            });
            for (i, (p, q, m)) in trades.iter().enumerate() {
                let t = first_t + i as u64;
                out.push(Produced {
                    stream: format!("{name}@trade"),
                    json: format!(
                        r#"{{"e":"trade","E":{now_ms},"s":"{sym}","t":{t},"p":"{p:.2}","q":"{q:.5}","T":{now_ms},"m":{m},"M":true}}"#
                    ),
                    seq: Some((t, t)),
                });
            }
            let first_u = s.last_depth + 1;
            let last_u = first_u + depth_extra;
            s.last_depth = last_u;
            let px = s.price;
            out.push(Produced {
                stream: format!("{name}@depth"),
                json: format!(
                    r#"{{"e":"depthUpdate","E":{now_ms},"s":"{sym}","U":{first_u},"u":{last_u},"b":[["{:.2}","{:.4}"],["{:.2}","{:.4}"]],"a":[["{:.2}","{:.4}"]]}}"#,
                    px - 0.01,
                    total_qty,
                    px - 0.02,
                    total_qty * 2.0,
                    px + 0.01,
                    total_qty
                ),
                seq: Some((first_u, last_u)),
            });
            let book = s.next_book;
            s.next_book += book_skip;
            out.push(Produced {
                stream: format!("{name}@bookTicker"),
                json: format!(
                    r#"{{"u":{book},"s":"{sym}","b":"{:.2}","B":"{total_qty:.5}","a":"{:.2}","A":"{total_qty:.5}"}}"#,
                    px - 0.01,
                    px + 0.01
                ),
                seq: Some((book, book)),
            });
            for (interval, (ms, candle)) in s.klines.iter_mut() {
                let open_time = now_ms - now_ms % *ms;
                if let Some(c) = candle.as_ref().filter(|c| c.open_time != open_time) {
                    // Binance's last update of a candle carries x=true.
                    out.push(kline_event(&name, &sym, interval, *ms, c, now_ms, true));
                    *candle = None;
                }
                let c = candle.get_or_insert_with(|| Candle {
                    open_time,
                    first_trade: first_t,
                    last_trade: first_t,
                    open: trades[0].0,
                    high: trades[0].0,
                    low: trades[0].0,
                    close: trades[0].0,
                    volume: 0.0,
                    trades: 0,
                });
                for (p, q, _) in &trades {
                    c.high = c.high.max(*p);
                    c.low = c.low.min(*p);
                    c.close = *p;
                    c.volume += q;
                }
                c.trades += n_trades;
                c.last_trade = last_t;
                out.push(kline_event(&name, &sym, interval, *ms, c, now_ms, false));
            }
        }
        out
    }

    /// `n` aggTrade events of `symbol` at once (benchmark blast), taking their ids from the market.
    pub fn blast_agg_trades(&mut self, symbol: &str, n: u64, now_ms: u64) -> Vec<Produced> {
        let s = self.symbol(symbol);
        let sym = s.upper.clone();
        let (price, stream) = (s.price, format!("{symbol}@aggTrade"));
        (0..n)
            .map(|_| {
                let (agg, t) = (s.next_agg, s.next_trade);
                s.next_agg += 1;
                s.next_trade += 1;
                Produced {
                    stream: stream.clone(),
                    json: format!(
                        r#"{{"e":"aggTrade","E":{now_ms},"s":"{sym}","a":{agg},"p":"{price:.2}","q":"0.01000","f":{t},"l":{t},"T":{now_ms},"m":false,"M":true}}"#
                    ),
                    seq: Some((agg, agg)),
                }
            })
            .collect()
    }
}

fn kline_event(name: &str, sym: &str, interval: &str, ms: u64, c: &Candle, now_ms: u64, closed: bool) -> Produced {
    let close_time = c.open_time + ms - 1;
    Produced {
        stream: format!("{name}@kline_{interval}"),
        json: format!(
            r#"{{"e":"kline","E":{now_ms},"s":"{sym}","k":{{"t":{},"T":{close_time},"s":"{sym}","i":"{interval}","f":{},"L":{},"o":"{:.2}","c":"{:.2}","h":"{:.2}","l":"{:.2}","v":"{:.5}","n":{},"x":{closed},"q":"{:.4}","V":"0","Q":"0","B":"0"}}}}"#,
            c.open_time,
            c.first_trade,
            c.last_trade,
            c.open,
            c.close,
            c.high,
            c.low,
            c.volume,
            c.trades,
            c.volume * c.close
        ),
        seq: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms() -> Vec<String> {
        vec!["btcusdt".to_string()]
    }

    #[test]
    fn stream_names_are_validated() {
        assert_eq!(parse_stream("btcusdt@aggTrade").unwrap(), ("btcusdt".into(), StreamKind::AggTrade));
        assert_eq!(
            parse_stream("ethusdt@kline_1m").unwrap().1,
            StreamKind::Kline { interval: "1m".into(), ms: 60_000 }
        );
        assert_eq!(parse_stream("btcusdt@depth@100ms").unwrap().1, StreamKind::Depth);
        for bad in ["btcusdt", "BTCUSDT@trade", "btcusdt@kline_7m", "btcusdt@ticker!", "@trade"] {
            assert!(parse_stream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_continuous_and_the_walk_is_seeded() {
        let mut a = Market::new(7, &syms());
        let mut b = Market::new(7, &syms());
        let first = a.next_agg_id("btcusdt").unwrap();
        let mut last_agg = first - 1;
        let mut last_trade = None;
        let mut last_depth = None;
        for i in 0..50 {
            let ta = a.tick(1_000 + i * 100);
            assert_eq!(ta, b.tick(1_000 + i * 100));
            for p in ta {
                let (lo, hi) = p.seq.unwrap();
                match p.stream.as_str() {
                    "btcusdt@aggTrade" => {
                        assert_eq!(lo, last_agg + 1);
                        last_agg = hi;
                        let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
                        assert_eq!(v["a"], lo);
                    }
                    "btcusdt@trade" => {
                        if let Some(t) = last_trade {
                            assert_eq!(lo, t + 1);
                        }
                        last_trade = Some(hi);
                    }
                    "btcusdt@depth" => {
                        if let Some(u) = last_depth {
                            assert_eq!(lo, u + 1);
                        }
                        last_depth = Some(hi);
                    }
                    "btcusdt@bookTicker" => {}
                    other => panic!("unexpected stream {other}"),
                }
            }
        }
        assert_eq!(last_agg, first + 49);
        assert_eq!(a.next_agg_id("btcusdt"), Some(first + 50));
    }

    #[test]
    fn klines_close_when_the_interval_ends() {
        let mut m = Market::new(1, &syms());
        m.ensure_stream("btcusdt@kline_1s").unwrap();
        let klines = |ps: Vec<Produced>| -> Vec<serde_json::Value> {
            ps.into_iter()
                .filter(|p| p.stream == "btcusdt@kline_1s")
                .map(|p| serde_json::from_str(&p.json).unwrap())
                .collect()
        };
        let k1 = klines(m.tick(10_000));
        assert_eq!(k1.len(), 1);
        assert_eq!((k1[0]["k"]["t"].as_u64(), k1[0]["k"]["x"].as_bool()), (Some(10_000), Some(false)));
        assert_eq!(klines(m.tick(10_500)).len(), 1);
        let k3 = klines(m.tick(11_000));
        // The closing update of the 10 s candle, then the first update of the 11 s one.
        assert_eq!(k3.len(), 2);
        assert_eq!((k3[0]["k"]["t"].as_u64(), k3[0]["k"]["x"].as_bool()), (Some(10_000), Some(true)));
        assert_eq!(k3[0]["k"]["T"].as_u64(), Some(10_999));
        assert_eq!((k3[1]["k"]["t"].as_u64(), k3[1]["k"]["x"].as_bool()), (Some(11_000), Some(false)));
    }

    #[test]
    fn blast_takes_ids_from_the_market() {
        let mut m = Market::new(3, &syms());
        let first = m.next_agg_id("btcusdt").unwrap();
        let blast = m.blast_agg_trades("btcusdt", 10, 5);
        assert_eq!(blast.len(), 10);
        assert_eq!(blast[9].seq, Some((first + 9, first + 9)));
        let next = m.tick(6).into_iter().find(|p| p.stream == "btcusdt@aggTrade").unwrap();
        assert_eq!(next.seq, Some((first + 10, first + 10)));
    }
}
