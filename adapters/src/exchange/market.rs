//! The exchange's market: a seeded random walk per symbol producing Binance spot stream events.
//!
//! Sequence numbers live here, not in connections: aggTrade `a`, trade `t`, depth `U`/`u` and
//! bookTicker `u` advance on the exchange's clock whether or not anyone listens, so a client that
//! was away sees exactly the ids it missed as a gap, as on Binance.
//!
//! Each symbol keeps a real order book (prices in ticks of 0.01, quantities in units of 1e-8, so
//! every level is exact): a `depthUpdate` is exactly the set of levels that changed in that tick
//! (absolute quantities, 0 removes the level) with `U` = previous `u` + 1, and the REST snapshot
//! (`/api/v3/depth`) is the same book with `lastUpdateId` = the last `u` produced. The last
//! [`DEFAULT_AGG_HISTORY`] aggTrades of each symbol are kept for `/api/v3/aggTrades`; the stream
//! and REST print them from the same integers, so a backfilled trade is byte-for-byte the live one.
//!
//! Tickers (`@ticker`, `@ticker_1h/4h/1d`, `@miniTicker`) are derived from the same trades: each symbol
//! with a ticker stream in use keeps one bucket per second of trading (open, high, low, close,
//! volume, quote volume, trade ids) for the last day, and once a second of exchange time the window
//! statistics are summed over the buckets inside it (so a window's edge is exact to the second).
//! Prices are in ticks and quantities in 1e-5 units as the trades print them, so `c` is exactly the
//! last trade's price and `L` its id.
//!
//! The all-market arrays (`!miniTicker@arr`, `!ticker@arr`, `!ticker_<1h|4h|1d>@arr`) carry, once a
//! second, the same ticker of every symbol of the market's universe: every symbol it trades (those of
//! `--symbols` and of every stream subscribed on the server so far) plus [`ALL_MARKET_DEFAULT`], added
//! when an array is first subscribed so that a lone `!miniTicker@arr` subscriber gets data. Every
//! symbol trades every tick, so each array holds every symbol (Binance's hold those that changed in
//! the last second).

use keel_core::rng::Rng;
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

/// aggTrades kept per symbol for REST backfill (older ones are gone, as a client asking too late
/// finds out from the first id it gets back).
pub const DEFAULT_AGG_HISTORY: usize = 200_000;
/// Levels kept per side of a book; the farthest are removed (with a 0 in the diff) beyond this.
const MAX_LEVELS: usize = 60;
const QTY_UNIT: u64 = 100_000_000;
/// Symbols that trade as soon as an all-market array is subscribed (see the module docs).
pub const ALL_MARKET_DEFAULT: [&str; 3] = ["btcusdt", "ethusdt", "bnbusdt"];

/// `12345` ticks -> `"123.45"`.
pub fn price_text(ticks: u64) -> String {
    format!("{}.{:02}", ticks / 100, ticks % 100)
}

/// `150000000` units -> `"1.50000000"` (Binance's 8 decimals).
pub fn qty_text(units: u64) -> String {
    format!("{}.{:08}", units / QTY_UNIT, units % QTY_UNIT)
}

/// One aggregate trade as the market produced it (and as REST returns it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggRecord {
    /// Aggregate trade id `a`.
    pub id: u64,
    /// Price in ticks of 0.01.
    pub price: u64,
    /// Quantity in units of 1e-5.
    pub qty: u64,
    /// First trade id `f`.
    pub first_trade: u64,
    /// Last trade id `l`.
    pub last_trade: u64,
    /// Trade time `T` (exchange clock, ms).
    pub time: u64,
    /// Buyer is the maker `m`.
    pub maker: bool,
}

impl AggRecord {
    fn price_text(&self) -> String {
        price_text(self.price)
    }
    fn qty_text(&self) -> String {
        format!("{}.{:05}", self.qty / 100_000, self.qty % 100_000)
    }

    /// The stream event (`/ws/<symbol>@aggTrade`), event time `E` = `T`.
    fn stream_json(&self, sym: &str) -> String {
        format!(
            r#"{{"e":"aggTrade","E":{t},"s":"{sym}","a":{a},"p":"{p}","q":"{q}","f":{f},"l":{l},"T":{t},"m":{m},"M":true}}"#,
            t = self.time,
            a = self.id,
            p = self.price_text(),
            q = self.qty_text(),
            f = self.first_trade,
            l = self.last_trade,
            m = self.maker
        )
    }

    /// One element of the `/api/v3/aggTrades` array, Binance's shape.
    pub fn rest_json(&self) -> String {
        format!(
            r#"{{"a":{a},"p":"{p}","q":"{q}","f":{f},"l":{l},"T":{t},"m":{m},"M":true}}"#,
            t = self.time,
            a = self.id,
            p = self.price_text(),
            q = self.qty_text(),
            f = self.first_trade,
            l = self.last_trade,
            m = self.maker
        )
    }
}

/// One trade (`@trade`) as the market produced it (and as `/api/v3/historicalTrades` returns it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeRecord {
    /// Trade id `t`.
    pub id: u64,
    /// Price in ticks of 0.01.
    pub price: u64,
    /// Quantity in units of 1e-5.
    pub qty: u64,
    /// Trade time `T` (exchange clock, ms).
    pub time: u64,
    /// Buyer is the maker `m`.
    pub maker: bool,
}

impl TradeRecord {
    fn qty_text(&self) -> String {
        format!("{}.{:05}", self.qty / 100_000, self.qty % 100_000)
    }

    /// The stream event (`/ws/<symbol>@trade`), event time `E` = `T`.
    fn stream_json(&self, sym: &str) -> String {
        format!(
            r#"{{"e":"trade","E":{t},"s":"{sym}","t":{id},"p":"{p}","q":"{q}","T":{t},"m":{m},"M":true}}"#,
            t = self.time,
            id = self.id,
            p = price_text(self.price),
            q = self.qty_text(),
            m = self.maker
        )
    }

    /// One element of the `/api/v3/historicalTrades` array, Binance's shape.
    pub fn rest_json(&self) -> String {
        let quote = self.price as u128 * self.qty as u128; // 1e-7 units
        format!(
            r#"{{"id":{id},"price":"{p}","qty":"{q}","quoteQty":"{}.{:07}","time":{t},"isBuyerMaker":{m},"isBestMatch":true}}"#,
            quote / 10_000_000,
            quote % 10_000_000,
            id = self.id,
            p = price_text(self.price),
            q = self.qty_text(),
            t = self.time,
            m = self.maker
        )
    }
}

/// A depth snapshot (`/api/v3/depth`): levels as exact decimal text, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepthSnapshot {
    /// The `u` of the last diff applied to this book.
    pub last_update_id: u64,
    /// Bids, highest price first: (price, quantity).
    pub bids: Vec<(String, String)>,
    /// Asks, lowest price first: (price, quantity).
    pub asks: Vec<(String, String)>,
}

impl DepthSnapshot {
    /// Binance's JSON shape: `{"lastUpdateId":..,"bids":[["p","q"],..],"asks":[..]}`.
    pub fn to_json(&self) -> String {
        let side = |levels: &[(String, String)]| {
            let items: Vec<String> = levels.iter().map(|(p, q)| format!(r#"["{p}","{q}"]"#)).collect();
            items.join(",")
        };
        format!(
            r#"{{"lastUpdateId":{},"bids":[{}],"asks":[{}]}}"#,
            self.last_update_id,
            side(&self.bids),
            side(&self.asks)
        )
    }
}

/// One side-pair of price levels: ticks -> quantity units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Book {
    bids: BTreeMap<u64, u64>,
    asks: BTreeMap<u64, u64>,
}

impl Book {
    /// One tick of book changes around `mid` (ticks): levels crossing the price are removed, the
    /// two bids below and the ask above (one [`level_spacing`] apart) get `near` quantities, one
    /// level `offset` spacings out on the
    /// bid (`bid`) or ask side is set to `qty` (0 removes it), and each side is trimmed to
    /// [`MAX_LEVELS`]. Returns the changed levels of each side with their new quantity (0 = gone).
    fn step(
        &mut self,
        mid: u64,
        near: [u64; 3],
        (bid, offset, qty): (bool, u64, u64),
    ) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>) {
        let before = self.clone();
        let mut cb = BTreeMap::new();
        let mut ca = BTreeMap::new();
        let mid = mid.max(3);
        let unit = level_spacing(mid);
        let crossing_bids: Vec<u64> = self.bids.range(mid..).map(|(p, _)| *p).collect();
        for p in crossing_bids {
            self.bids.remove(&p);
            cb.insert(p, 0);
        }
        let crossing_asks: Vec<u64> = self.asks.range(..=mid).map(|(p, _)| *p).collect();
        for p in crossing_asks {
            self.asks.remove(&p);
            ca.insert(p, 0);
        }
        for (p, q) in [(mid.saturating_sub(unit).max(1), near[0]), (mid.saturating_sub(2 * unit).max(1), near[1])] {
            self.bids.insert(p, q);
            cb.insert(p, q);
        }
        self.asks.insert(mid + unit, near[2]);
        ca.insert(mid + unit, near[2]);
        let (side, changes, p) = if bid {
            (&mut self.bids, &mut cb, mid.saturating_sub(offset * unit).max(1))
        } else {
            (&mut self.asks, &mut ca, mid + offset * unit)
        };
        if qty == 0 {
            if side.remove(&p).is_some() {
                changes.insert(p, 0);
            }
        } else {
            side.insert(p, qty);
            changes.insert(p, qty);
        }
        while self.bids.len() > MAX_LEVELS {
            if let Some((p, _)) = self.bids.pop_first() {
                cb.insert(p, 0);
            }
        }
        while self.asks.len() > MAX_LEVELS {
            if let Some((p, _)) = self.asks.pop_last() {
                ca.insert(p, 0);
            }
        }
        // Only real changes: a level set and removed within the tick, or set to what it was, is no change.
        cb.retain(|p, q| before.bids.get(p).copied().unwrap_or(0) != *q);
        ca.retain(|p, q| before.asks.get(p).copied().unwrap_or(0) != *q);
        (cb, ca)
    }
}

/// Distance between the levels the market places: 5 basis points of the price (in ticks), so that
/// the random walk (about that much per tick) moves through the book instead of jumping over it.
fn level_spacing(mid: u64) -> u64 {
    (mid / 2000).max(1)
}

fn levels_json(changes: &BTreeMap<u64, u64>, descending: bool) -> String {
    let items: Vec<String> = if descending {
        changes.iter().rev().map(|(p, q)| format!(r#"["{}","{}"]"#, price_text(*p), qty_text(*q))).collect()
    } else {
        changes.iter().map(|(p, q)| format!(r#"["{}","{}"]"#, price_text(*p), qty_text(*q))).collect()
    };
    items.join(",")
}

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
    "invalid stream name {name:?}: {why} (expected !miniTicker@arr|!ticker@arr|!ticker_<1h,4h,1d>@arr or <symbol>@aggTrade|trade|depth|depth@100ms|bookTicker|ticker|ticker_<1h,4h,1d>|miniTicker|kline_<1s,1m,3m,5m,15m,30m,1h,2h,4h,6h,8h,12h,1d>[@+08:00], symbol lowercase)"
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
    /// `@ticker` (24 h) and `@ticker_1h`/`_4h`/`_1d` (rolling windows).
    Ticker(TickerStream),
    /// `@miniTicker`.
    MiniTicker,
    /// `!miniTicker@arr`, `!ticker@arr`, `!ticker_<1h|4h|1d>@arr`: this ticker of every symbol, in one
    /// array (the symbol [`parse_stream`] returns is empty).
    AllMarket(TickerKind),
    /// `@kline_<interval>` (or Binance's UTC+8 `@kline_<interval>@+08:00`) with the interval in milliseconds.
    Kline {
        /// Interval text as in the stream name, e.g. `1m`, `1d@+08:00`.
        interval: String,
        /// Interval length.
        ms: u64,
        /// Local time minus UTC for the stream's `@+08:00`, else 0.
        offset_ms: i64,
    },
}

/// Splits and validates a stream name into (symbol, kind); an all-market array's symbol is empty.
pub fn parse_stream(name: &str) -> Result<(String, StreamKind), StreamNameError> {
    let err = |why: &str| StreamNameError { name: name.to_string(), why: why.to_string() };
    if name.starts_with('!') {
        let kind = match name {
            "!miniTicker@arr" => TickerKind::Mini,
            "!ticker@arr" => TickerKind::Window(TickerStream::Day),
            "!ticker_1h@arr" => TickerKind::Window(TickerStream::Rolling(HOUR_MS)),
            "!ticker_4h@arr" => TickerKind::Window(TickerStream::Rolling(4 * HOUR_MS)),
            "!ticker_1d@arr" => TickerKind::Window(TickerStream::Rolling(DAY_MS)),
            _ => return Err(err("unknown all-market stream")),
        };
        return Ok((String::new(), StreamKind::AllMarket(kind)));
    }
    let (symbol, kind) = name.split_once('@').ok_or_else(|| err("no '@'"))?;
    if symbol.len() < 2 || symbol.len() > 20 || !symbol.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(err("the symbol must be 2 to 20 lowercase letters or digits"));
    }
    let kind = match kind {
        "aggTrade" => StreamKind::AggTrade,
        "trade" => StreamKind::Trade,
        "depth" | "depth@100ms" | "depth@1000ms" => StreamKind::Depth,
        "bookTicker" => StreamKind::BookTicker,
        "ticker" => StreamKind::Ticker(TickerStream::Day),
        "ticker_1h" => StreamKind::Ticker(TickerStream::Rolling(HOUR_MS)),
        "ticker_4h" => StreamKind::Ticker(TickerStream::Rolling(4 * HOUR_MS)),
        "ticker_1d" => StreamKind::Ticker(TickerStream::Rolling(DAY_MS)),
        "miniTicker" => StreamKind::MiniTicker,
        k => {
            let interval = k.strip_prefix("kline_").ok_or_else(|| err("unknown stream kind"))?;
            // Binance's only time-zone kline streams are UTC+8 (`@kline_1d@+08:00`).
            let (text, offset_ms) = match interval.split_once('@') {
                Some((text, "+08:00")) => (text, 8 * HOUR_MS as i64),
                Some(_) => return Err(err("the only kline time zone is @+08:00")),
                None => (interval, 0),
            };
            let ms = interval_ms(text).ok_or_else(|| err("unknown kline interval"))?;
            StreamKind::Kline { interval: interval.to_string(), ms, offset_ms }
        }
    };
    Ok((symbol.to_string(), kind))
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A ticker of one symbol, as its own stream or as an element of an all-market array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TickerKind {
    /// `@ticker`, `@ticker_<1h|4h|1d>`.
    Window(TickerStream),
    /// `@miniTicker`.
    Mini,
}

impl TickerKind {
    /// The stream type after the `@` (`ticker_1h`, `miniTicker`).
    fn stream_type(self) -> &'static str {
        match self {
            TickerKind::Window(TickerStream::Day) => "ticker",
            TickerKind::Window(TickerStream::Rolling(HOUR_MS)) => "ticker_1h",
            TickerKind::Window(TickerStream::Rolling(ms)) if ms == 4 * HOUR_MS => "ticker_4h",
            TickerKind::Window(TickerStream::Rolling(_)) => "ticker_1d",
            TickerKind::Mini => "miniTicker",
        }
    }
}

/// Which ticker stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TickerStream {
    /// `@ticker`: the last 24 h, with the last quantity and the best bid and ask.
    Day,
    /// `@ticker_<1h|4h|1d>`: a window of this many ms whose open time starts on a minute.
    Rolling(u64),
}

/// One second of a symbol's trades (prices in ticks of 0.01, quantities in 1e-5 units).
#[derive(Debug, Clone, Copy)]
struct Second {
    /// The second (exchange ms / 1000).
    at: u64,
    open: u64,
    high: u64,
    low: u64,
    close: u64,
    /// The last trade's quantity.
    last_qty: u64,
    volume: u64,
    /// Sum of price x quantity: units of 1e-7.
    quote: u128,
    first_trade: u64,
    last_trade: u64,
}

/// The trades of the last day of a symbol that has ticker streams, and which of them are in use.
#[derive(Debug, Clone, Default)]
struct Tickers {
    streams: std::collections::BTreeSet<TickerStream>,
    mini: bool,
    /// The symbol is in the all-market arrays' universe (its statistics are kept for them).
    all_market: bool,
    /// Oldest first; nothing older than a day and a minute.
    seconds: VecDeque<Second>,
    /// The close of the last second dropped from `seconds` (the price before the oldest window).
    dropped_close: Option<u64>,
    /// Exchange time of the next ticker events (once a second, as on Binance).
    next_at: u64,
}

/// Statistics of the trades in a window.
struct WindowStats {
    open: u64,
    high: u64,
    low: u64,
    close: u64,
    last_qty: u64,
    volume: u64,
    quote: u128,
    first_trade: i64,
    last_trade: i64,
    trades: u64,
    /// The price of the last trade before the window (0 when there was none).
    prev_close: u64,
}

impl Tickers {
    fn in_use(&self) -> bool {
        self.mini || self.all_market || !self.streams.is_empty()
    }

    fn record(&mut self, now_ms: u64, trades: &[(u64, u64, u64)]) {
        let at = now_ms / 1000;
        for &(id, price, qty) in trades {
            match self.seconds.back_mut().filter(|s| s.at == at) {
                Some(s) => {
                    s.high = s.high.max(price);
                    s.low = s.low.min(price);
                    s.close = price;
                    s.last_qty = qty;
                    s.volume += qty;
                    s.quote += u128::from(price) * u128::from(qty);
                    s.last_trade = id;
                }
                None => self.seconds.push_back(Second {
                    at,
                    open: price,
                    high: price,
                    low: price,
                    close: price,
                    last_qty: qty,
                    volume: qty,
                    quote: u128::from(price) * u128::from(qty),
                    first_trade: id,
                    last_trade: id,
                }),
            }
        }
        // A day and two minutes covers the widest window (1d rolling: up to a minute more than a day).
        let keep_from = at.saturating_sub(DAY_MS / 1000 + 120);
        while let Some(s) = self.seconds.front().filter(|s| s.at < keep_from) {
            self.dropped_close = Some(s.close);
            self.seconds.pop_front();
        }
    }

    /// The trades of the seconds from `from_ms` on.
    fn stats(&self, from_ms: u64) -> WindowStats {
        let from = from_ms.div_ceil(1000);
        let start = self.seconds.partition_point(|s| s.at < from);
        let prev_close = match start {
            0 => self.dropped_close.unwrap_or(0),
            i => self.seconds[i - 1].close,
        };
        let mut w = WindowStats {
            open: 0,
            high: 0,
            low: 0,
            close: 0,
            last_qty: 0,
            volume: 0,
            quote: 0,
            first_trade: -1,
            last_trade: -1,
            trades: 0,
            prev_close,
        };
        for (i, s) in self.seconds.range(start..).enumerate() {
            if i == 0 {
                (w.open, w.high, w.low, w.first_trade) = (s.open, s.high, s.low, s.first_trade as i64);
            }
            w.high = w.high.max(s.high);
            w.low = w.low.min(s.low);
            (w.close, w.last_qty, w.last_trade) = (s.close, s.last_qty, s.last_trade as i64);
            w.volume += s.volume;
            w.quote += s.quote;
        }
        if w.last_trade >= 0 {
            // Trade ids are continuous per symbol.
            w.trades = (w.last_trade - w.first_trade + 1) as u64;
        }
        w
    }
}

/// Ticks as a signed price change: `-150` -> `"-1.50"`.
fn signed_price_text(ticks: i128) -> String {
    let sign = if ticks < 0 { "-" } else { "" };
    let abs = ticks.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// 1e-5 units -> `"0.04200"`.
fn qty5_text(units: u64) -> String {
    format!("{}.{:05}", units / 100_000, units % 100_000)
}

/// The ticker events of one symbol's own ticker streams at `now_ms`.
fn ticker_events(name: &str, sym: &str, t: &Tickers, book: &Book, now_ms: u64) -> Vec<Produced> {
    let kinds = t.streams.iter().map(|w| TickerKind::Window(*w)).chain(t.mini.then_some(TickerKind::Mini));
    kinds
        .map(|kind| Produced {
            stream: format!("{name}@{}", kind.stream_type()),
            json: ticker_json(kind, sym, t, book, now_ms),
            seq: None,
        })
        .collect()
}

/// One symbol's ticker of `kind` at `now_ms` as Binance prints it (field order of
/// web-socket-streams.md): a `@ticker...` event, or an element of an all-market array.
fn ticker_json(kind: TickerKind, sym: &str, t: &Tickers, book: &Book, now_ms: u64) -> String {
    let common = |w: &WindowStats| {
        let change = i128::from(w.close) - i128::from(w.open);
        // Percent of the open price with 3 decimals, rounded toward zero (Binance: "-0.697").
        let milli_pct = if w.open == 0 { 0 } else { change * 100_000 / i128::from(w.open) };
        let sign = if milli_pct < 0 { "-" } else { "" };
        let pct = format!("{sign}{}.{:03}", milli_pct.unsigned_abs() / 1000, milli_pct.unsigned_abs() % 1000);
        // The volume-weighted average with 8 decimals: quote (1e-7) / volume (1e-5) is in ticks (1e-2).
        let wavg = if w.volume == 0 { 0 } else { w.quote * 1_000_000 / u128::from(w.volume) };
        let wavg = format!("{}.{:08}", wavg / 100_000_000, wavg % 100_000_000);
        let quote = format!("{}.{:07}", w.quote / 10_000_000, w.quote % 10_000_000);
        (signed_price_text(change), pct, wavg, quote)
    };
    match kind {
        TickerKind::Window(TickerStream::Day) => {
            let open_time = now_ms.saturating_sub(DAY_MS);
            let w = t.stats(open_time);
            let (change, pct, wavg, quote) = common(&w);
            let (bb, bq) = book.bids.iter().next_back().map(|(p, q)| (*p, *q)).unwrap_or((0, 0));
            let (ba, aq) = book.asks.iter().next().map(|(p, q)| (*p, *q)).unwrap_or((0, 0));
            format!(
                r#"{{"e":"24hrTicker","E":{now_ms},"s":"{sym}","p":"{change}","P":"{pct}","w":"{wavg}","x":"{}","c":"{}","Q":"{}","b":"{}","B":"{}","a":"{}","A":"{}","o":"{}","h":"{}","l":"{}","v":"{}","q":"{quote}","O":{open_time},"C":{now_ms},"F":{},"L":{},"n":{}}}"#,
                price_text(w.prev_close),
                price_text(w.close),
                qty5_text(w.last_qty),
                price_text(bb),
                qty_text(bq),
                price_text(ba),
                qty_text(aq),
                price_text(w.open),
                price_text(w.high),
                price_text(w.low),
                qty5_text(w.volume),
                w.first_trade,
                w.last_trade,
                w.trades,
            )
        }
        TickerKind::Window(TickerStream::Rolling(ms)) => {
            // The open time starts on a minute, so the window is up to 59 999 ms wider (Binance's note).
            let from = now_ms.saturating_sub(ms);
            let open_time = from - from % 60_000;
            let w = t.stats(open_time);
            let (change, pct, wavg, quote) = common(&w);
            let e = match ms {
                HOUR_MS => "1hTicker",
                ms if ms == 4 * HOUR_MS => "4hTicker",
                _ => "1dTicker",
            };
            format!(
                r#"{{"e":"{e}","E":{now_ms},"s":"{sym}","p":"{change}","P":"{pct}","o":"{}","h":"{}","l":"{}","c":"{}","w":"{wavg}","v":"{}","q":"{quote}","O":{open_time},"C":{now_ms},"F":{},"L":{},"n":{}}}"#,
                price_text(w.open),
                price_text(w.high),
                price_text(w.low),
                price_text(w.close),
                qty5_text(w.volume),
                w.first_trade,
                w.last_trade,
                w.trades,
            )
        }
        TickerKind::Mini => {
            let w = t.stats(now_ms.saturating_sub(DAY_MS));
            let (_, _, _, quote) = common(&w);
            format!(
                r#"{{"e":"24hrMiniTicker","E":{now_ms},"s":"{sym}","c":"{}","o":"{}","h":"{}","l":"{}","v":"{}","q":"{quote}"}}"#,
                price_text(w.close),
                price_text(w.open),
                price_text(w.high),
                price_text(w.low),
                qty5_text(w.volume),
            )
        }
    }
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

/// One kline; the stream and `/api/v3/klines` print it with the same code, so a backfilled kline
/// has the text the live one had.
#[derive(Debug, Clone, PartialEq)]
pub struct Candle {
    open_time: u64,
    /// -1 for an interval without trades (as Binance).
    first_trade: i64,
    last_trade: i64,
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
    book: Book,
    /// The last aggTrades, oldest first, ids continuous.
    history: VecDeque<AggRecord>,
    /// The last trades (`@trade`), oldest first, ids continuous.
    trades: VecDeque<TradeRecord>,
    /// interval text -> its klines
    klines: BTreeMap<String, KlineSeries>,
    tickers: Tickers,
}

/// Closed klines kept per interval for `/api/v3/klines`.
pub const KLINE_HISTORY: usize = 5_000;

/// The klines of one interval: the one open now and the last closed ones.
#[derive(Debug, Clone)]
struct KlineSeries {
    ms: u64,
    /// Where intervals start: local midnight of the stream's time zone for 1d (Binance's timeZone moves
    /// the boundaries of day intervals; shorter ones are the same in every whole-hour zone), else 0.
    align_ms: i64,
    current: Option<Candle>,
    /// Closed klines, oldest first, open times continuous (intervals without a trade included).
    closed: VecDeque<Candle>,
}

impl KlineSeries {
    fn new(ms: u64, offset_ms: i64) -> KlineSeries {
        KlineSeries { ms, align_ms: if ms >= DAY_MS { offset_ms } else { 0 }, current: None, closed: VecDeque::new() }
    }

    /// The open time of the interval holding `now_ms` (UTC ms).
    fn open_time(&self, now_ms: u64) -> u64 {
        let local = now_ms as i64 + self.align_ms;
        (local - local.rem_euclid(self.ms as i64) - self.align_ms).max(0) as u64
    }

    fn close(&mut self, c: Candle) {
        if self.closed.len() >= KLINE_HISTORY {
            self.closed.pop_front();
        }
        self.closed.push_back(c);
    }
}

impl Symbol {
    fn remember(&mut self, rec: AggRecord, cap: usize) {
        if self.history.len() >= cap.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(rec);
    }
}

/// The market of every symbol served so far.
#[derive(Debug, Clone)]
pub struct Market {
    rng: Rng,
    symbols: BTreeMap<String, Symbol>,
    history_cap: usize,
    /// The all-market arrays subscribed so far, and the exchange time of their next frames.
    arrays: std::collections::BTreeSet<TickerKind>,
    arrays_next_at: u64,
}

impl Market {
    /// A market with `symbols` trading from the start; other symbols start when first asked for.
    pub fn new(seed: u64, symbols: &[String]) -> Market {
        Market::with_history(seed, symbols, DEFAULT_AGG_HISTORY)
    }

    /// [`Market::new`] keeping the last `history` aggTrades of each symbol for REST.
    pub fn with_history(seed: u64, symbols: &[String], history: usize) -> Market {
        let mut m = Market {
            rng: Rng::new(seed),
            symbols: BTreeMap::new(),
            history_cap: history.max(1),
            arrays: Default::default(),
            arrays_next_at: 0,
        };
        for s in symbols {
            m.symbol(s);
        }
        m
    }

    /// The market's key of an upper-case REST symbol (`BTCUSDT` -> `btcusdt`), if it trades.
    fn rest_key(&self, symbol: &str) -> Option<String> {
        if symbol.is_empty() || !symbol.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return None;
        }
        let key = symbol.to_ascii_lowercase();
        self.symbols.contains_key(&key).then_some(key)
    }

    /// `/api/v3/aggTrades`: up to `limit` trades of `symbol` (upper case) from `from_id` on, or the
    /// most recent `limit` without it. A `from_id` older than the history starts at the oldest kept
    /// trade (the caller sees from the first id that the rest is gone). None: unknown symbol.
    pub fn agg_trades(&self, symbol: &str, from_id: Option<u64>, limit: usize) -> Option<Vec<AggRecord>> {
        let s = self.symbols.get(&self.rest_key(symbol)?)?;
        let h = &s.history;
        let start = match (from_id, h.front()) {
            (_, None) => 0,
            (None, _) => h.len().saturating_sub(limit),
            (Some(id), Some(first)) => usize::try_from(id.saturating_sub(first.id)).unwrap_or(usize::MAX).min(h.len()),
        };
        Some(h.iter().skip(start).take(limit).copied().collect())
    }

    /// `/api/v3/historicalTrades`: up to `limit` trades of `symbol` (upper case) from `from_id` on, or
    /// the most recent `limit` without it; like [`Self::agg_trades`]. None: unknown symbol.
    pub fn historical_trades(&self, symbol: &str, from_id: Option<u64>, limit: usize) -> Option<Vec<TradeRecord>> {
        let s = self.symbols.get(&self.rest_key(symbol)?)?;
        let h = &s.trades;
        let start = match (from_id, h.front()) {
            (_, None) => 0,
            (None, _) => h.len().saturating_sub(limit),
            (Some(id), Some(first)) => usize::try_from(id.saturating_sub(first.id)).unwrap_or(usize::MAX).min(h.len()),
        };
        Some(h.iter().skip(start).take(limit).copied().collect())
    }

    /// `/api/v3/klines`: up to `limit` klines of `symbol` (upper case) and `interval` whose open time
    /// is in `start..=end` (each bound optional, UTC even with a time zone), oldest first, as Binance's
    /// 12-value arrays; the current (open) kline included when in range. Without `start`, the latest
    /// `limit`. `offset_ms` is the `timeZone` (ms east of UTC): it moves the intervals of 1d. None:
    /// unknown symbol. An interval (and zone) the exchange does not produce for the symbol has no klines.
    pub fn klines(
        &self,
        symbol: &str,
        interval: &str,
        offset_ms: i64,
        start: Option<u64>,
        end: Option<u64>,
        limit: usize,
    ) -> Option<Vec<String>> {
        let s = self.symbols.get(&self.rest_key(symbol)?)?;
        let Some(ms) = interval_ms(interval) else { return Some(Vec::new()) };
        // Any stream of that interval whose intervals start where the zone's do.
        let want = KlineSeries::new(ms, offset_ms).align_ms;
        let series = s.klines.iter().find(|(key, series)| {
            key.split('@').next() == Some(interval) && series.ms == ms && series.align_ms == want
        });
        let Some((_, series)) = series else { return Some(Vec::new()) };
        let in_range = |c: &&Candle| start.is_none_or(|t| c.open_time >= t) && end.is_none_or(|t| c.open_time <= t);
        let all: Vec<&Candle> = series.closed.iter().chain(series.current.iter()).filter(in_range).collect();
        let picked =
            if start.is_none() { &all[all.len().saturating_sub(limit)..] } else { &all[..all.len().min(limit)] };
        Some(picked.iter().map(|c| kline_rest_json(c, series.ms)).collect())
    }

    /// `/api/v3/depth`: the best `limit` levels per side of `symbol`'s book (upper case). None: unknown symbol.
    pub fn depth(&self, symbol: &str, limit: usize) -> Option<DepthSnapshot> {
        let s = self.symbols.get(&self.rest_key(symbol)?)?;
        let text = |(p, q): (&u64, &u64)| (price_text(*p), qty_text(*q));
        Some(DepthSnapshot {
            last_update_id: s.last_depth,
            bids: s.book.bids.iter().rev().take(limit).map(text).collect(),
            asks: s.book.asks.iter().take(limit).map(text).collect(),
        })
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
                book: Book::default(),
                history: VecDeque::new(),
                trades: VecDeque::new(),
                klines: BTreeMap::new(),
                // A symbol that starts while an all-market array is on joins its universe.
                tickers: Tickers { all_market: !self.arrays.is_empty(), ..Tickers::default() },
            };
            let mid = (s.price * 100.0).round() as u64;
            let unit = level_spacing(mid);
            let mut s = s;
            for i in 1..=20u64 {
                s.book.bids.insert(mid.saturating_sub(i * unit).max(1), 1 + self.rng.below(5 * QTY_UNIT));
                s.book.asks.insert(mid + i * unit, 1 + self.rng.below(5 * QTY_UNIT));
            }
            self.symbols.insert(name.to_string(), s);
        }
        // The entry was inserted just above when missing.
        self.symbols.get_mut(name).unwrap_or_else(|| unreachable!())
    }

    /// Validates `stream` and makes sure the market produces it from now on.
    pub fn ensure_stream(&mut self, stream: &str) -> Result<(), StreamNameError> {
        let (symbol, kind) = parse_stream(stream)?;
        if let StreamKind::AllMarket(kind) = kind {
            self.arrays.insert(kind);
            for name in ALL_MARKET_DEFAULT {
                self.symbol(name);
            }
            for s in self.symbols.values_mut() {
                s.tickers.all_market = true;
            }
            return Ok(());
        }
        let s = self.symbol(&symbol);
        match kind {
            StreamKind::Kline { interval, ms, offset_ms } => {
                s.klines.entry(interval).or_insert_with(|| KlineSeries::new(ms, offset_ms));
            }
            StreamKind::Ticker(t) => {
                s.tickers.streams.insert(t);
            }
            StreamKind::MiniTicker => s.tickers.mini = true,
            StreamKind::AggTrade | StreamKind::Trade | StreamKind::Depth | StreamKind::BookTicker => {}
            StreamKind::AllMarket(_) => {}
        }
        Ok(())
    }

    /// Every symbol's ids start again from 1 (aggTrade, trade, depth update, bookTicker), as after a
    /// restart of the exchange; the book itself is kept (a snapshot now carries the new ids) and the
    /// REST history of the old numbering is forgotten.
    pub fn restart_numbering(&mut self) {
        for s in self.symbols.values_mut() {
            s.next_agg = 1;
            s.next_trade = 1;
            s.last_depth = 0;
            s.next_book = 1;
            s.history.clear();
            s.trades.clear();
        }
    }

    /// The next aggTrade id of `symbol` (what the next produced event will carry).
    pub fn next_agg_id(&self, symbol: &str) -> Option<u64> {
        self.symbols.get(symbol).map(|s| s.next_agg)
    }

    /// One tick of trading at exchange time `now_ms`: for every symbol, one aggTrade of 1..=3
    /// trades, the trades, a depth update, a bookTicker, an update of every kline interval in use and,
    /// when a second has passed since the last ones, the tickers in use.
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
            // Book changes of this tick, drawn before the symbol is borrowed: quantities of the three
            // levels next to the price, and one more level further out (set or removed).
            let near: [u64; 3] = [0; 3].map(|_| 1 + self.rng.below(3 * QTY_UNIT));
            let far_bid = self.rng.chance(1, 2);
            let far_offset = 3 + self.rng.below(40);
            let far_qty = if self.rng.chance(1, 3) { 0 } else { 1 + self.rng.below(10 * QTY_UNIT) };
            let book_skip = 1 + self.rng.below(3);
            let cap = self.history_cap;
            let s = self.symbol(&name);
            let sym = s.upper.clone();
            let (first_t, last_t) = (s.next_trade, s.next_trade + n_trades - 1);
            s.next_trade += n_trades;
            let agg = s.next_agg;
            s.next_agg += 1;
            let total_qty: f64 = trades.iter().map(|t| (t.1 * 100_000.0).round() / 100_000.0).sum();
            let (last_price, _, last_maker) = trades[trades.len() - 1];
            let rec = AggRecord {
                id: agg,
                price: (last_price * 100.0).round() as u64,
                qty: (total_qty * 100_000.0).round() as u64,
                first_trade: first_t,
                last_trade: last_t,
                time: now_ms,
                maker: last_maker,
            };
            s.remember(rec, cap);
            out.push(Produced {
                stream: format!("{name}@aggTrade"),
                json: rec.stream_json(&sym),
                seq: Some((agg, agg)),
            });
            for (i, (p, q, m)) in trades.iter().enumerate() {
                let t = first_t + i as u64;
                let rec = TradeRecord {
                    id: t,
                    price: (p * 100.0).round() as u64,
                    qty: (q * 100_000.0).round() as u64,
                    time: now_ms,
                    maker: *m,
                };
                if s.trades.len() >= cap.max(1) {
                    s.trades.pop_front();
                }
                s.trades.push_back(rec);
                out.push(Produced { stream: format!("{name}@trade"), json: rec.stream_json(&sym), seq: Some((t, t)) });
            }
            let (bid_changes, ask_changes) =
                s.book.step((s.price * 100.0).round() as u64, near, (far_bid, far_offset, far_qty));
            // Binance's U..u spans the updates of the diff: one id per changed level here.
            let first_u = s.last_depth + 1;
            let last_u = s.last_depth + (bid_changes.len() + ask_changes.len()).max(1) as u64;
            s.last_depth = last_u;
            out.push(Produced {
                stream: format!("{name}@depth"),
                json: format!(
                    r#"{{"e":"depthUpdate","E":{now_ms},"s":"{sym}","U":{first_u},"u":{last_u},"b":[{}],"a":[{}]}}"#,
                    levels_json(&bid_changes, true),
                    levels_json(&ask_changes, false),
                ),
                seq: Some((first_u, last_u)),
            });
            let book = s.next_book;
            s.next_book += book_skip;
            let (bb, bq) = s.book.bids.iter().next_back().map(|(p, q)| (*p, *q)).unwrap_or((0, 0));
            let (ba, aq) = s.book.asks.iter().next().map(|(p, q)| (*p, *q)).unwrap_or((0, 0));
            out.push(Produced {
                stream: format!("{name}@bookTicker"),
                json: format!(
                    r#"{{"u":{book},"s":"{sym}","b":"{}","B":"{}","a":"{}","A":"{}"}}"#,
                    price_text(bb),
                    qty_text(bq),
                    price_text(ba),
                    qty_text(aq)
                ),
                seq: Some((book, book)),
            });
            for (interval, series) in s.klines.iter_mut() {
                let ms = series.ms;
                let open_time = series.open_time(now_ms);
                if let Some(c) = series.current.take_if(|c| c.open_time != open_time) {
                    // Binance's last update of a candle carries x=true.
                    out.push(kline_event(&name, &sym, interval, ms, &c, now_ms, true));
                    // Intervals that passed without a tick still have a kline on Binance (no trades,
                    // every price the last close): closed at once, so that open times stay continuous.
                    let mut empty_at = c.open_time + ms;
                    let last_close = c.close;
                    series.close(c);
                    let skipped = (open_time.saturating_sub(empty_at) / ms) as usize;
                    empty_at = open_time.saturating_sub(skipped.min(KLINE_HISTORY) as u64 * ms);
                    while empty_at < open_time {
                        let e = Candle {
                            open_time: empty_at,
                            first_trade: -1,
                            last_trade: -1,
                            open: last_close,
                            high: last_close,
                            low: last_close,
                            close: last_close,
                            volume: 0.0,
                            trades: 0,
                        };
                        out.push(kline_event(&name, &sym, interval, ms, &e, now_ms, true));
                        series.close(e);
                        empty_at += ms;
                    }
                }
                let c = series.current.get_or_insert_with(|| Candle {
                    open_time,
                    first_trade: first_t as i64,
                    last_trade: first_t as i64,
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
                c.last_trade = last_t as i64;
                out.push(kline_event(&name, &sym, interval, ms, c, now_ms, false));
            }
            if s.tickers.in_use() {
                // The prices and quantities exactly as the trade stream prints them.
                let ticks: Vec<(u64, u64, u64)> = trades
                    .iter()
                    .enumerate()
                    .map(|(i, (p, q, _))| {
                        (first_t + i as u64, (p * 100.0).round() as u64, (q * 100_000.0).round() as u64)
                    })
                    .collect();
                s.tickers.record(now_ms, &ticks);
                if now_ms >= s.tickers.next_at {
                    s.tickers.next_at = (now_ms / 1000 + 1) * 1000;
                    out.extend(ticker_events(&name, &sym, &s.tickers, &s.book, now_ms));
                }
            }
        }
        // After every symbol's trades of this tick, as the single tickers come after their symbol's.
        if !self.arrays.is_empty() && now_ms >= self.arrays_next_at {
            self.arrays_next_at = (now_ms / 1000 + 1) * 1000;
            for kind in &self.arrays {
                let elements: Vec<String> =
                    self.symbols.values().map(|s| ticker_json(*kind, &s.upper, &s.tickers, &s.book, now_ms)).collect();
                out.push(Produced {
                    stream: format!("!{}@arr", kind.stream_type()),
                    json: format!("[{}]", elements.join(",")),
                    seq: None,
                });
            }
        }
        out
    }

    /// `n` aggTrade events of `symbol` at once (benchmark blast), taking their ids from the market.
    pub fn blast_agg_trades(&mut self, symbol: &str, n: u64, now_ms: u64) -> Vec<Produced> {
        let cap = self.history_cap;
        let s = self.symbol(symbol);
        let sym = s.upper.clone();
        let (price, stream) = ((s.price * 100.0).round() as u64, format!("{symbol}@aggTrade"));
        (0..n)
            .map(|_| {
                let (agg, t) = (s.next_agg, s.next_trade);
                s.next_agg += 1;
                s.next_trade += 1;
                let rec =
                    AggRecord { id: agg, price, qty: 1000, first_trade: t, last_trade: t, time: now_ms, maker: false };
                s.remember(rec, cap);
                Produced { stream: stream.clone(), json: rec.stream_json(&sym), seq: Some((agg, agg)) }
            })
            .collect()
    }

    /// `n` depth diffs of `symbol` at once (benchmark blast): each changes the quantity of the two best
    /// bids and the best ask of the real book (so REST snapshots stay consistent with the stream),
    /// one `U..u` id per changed level, the size of an ordinary tick's diff.
    pub fn blast_depth(&mut self, symbol: &str, n: u64, now_ms: u64) -> Vec<Produced> {
        let s = self.symbol(symbol);
        let sym = s.upper.clone();
        let stream = format!("{symbol}@depth");
        (0..n)
            .map(|i| {
                // New quantities stay within 1 unit .. 5 BTC: never 0 (that would remove the level).
                let next = |q: u64| 1 + (q + 1 + i % 7 * QTY_UNIT / 10) % (5 * QTY_UNIT);
                let bid_changes: BTreeMap<u64, u64> =
                    s.book.bids.iter().rev().take(2).map(|(p, q)| (*p, next(*q))).collect();
                let ask_changes: BTreeMap<u64, u64> = s.book.asks.iter().take(1).map(|(p, q)| (*p, next(*q))).collect();
                s.book.bids.extend(&bid_changes);
                s.book.asks.extend(&ask_changes);
                let first_u = s.last_depth + 1;
                let last_u = s.last_depth + (bid_changes.len() + ask_changes.len()).max(1) as u64;
                s.last_depth = last_u;
                Produced {
                    stream: stream.clone(),
                    json: format!(
                        r#"{{"e":"depthUpdate","E":{now_ms},"s":"{sym}","U":{first_u},"u":{last_u},"b":[{}],"a":[{}]}}"#,
                        levels_json(&bid_changes, true),
                        levels_json(&ask_changes, false),
                    ),
                    seq: Some((first_u, last_u)),
                }
            })
            .collect()
    }
}

/// The prices and volumes of a kline as both the stream and REST print them.
fn kline_texts(c: &Candle) -> [String; 6] {
    [
        format!("{:.2}", c.open),
        format!("{:.2}", c.high),
        format!("{:.2}", c.low),
        format!("{:.2}", c.close),
        format!("{:.5}", c.volume),
        format!("{:.4}", c.volume * c.close),
    ]
}

/// One element of `/api/v3/klines`: `[openTime,"o","h","l","c","v",closeTime,"q",n,"V","Q","0"]`.
fn kline_rest_json(c: &Candle, ms: u64) -> String {
    let [o, h, l, cl, v, q] = kline_texts(c);
    format!(
        r#"[{},"{o}","{h}","{l}","{cl}","{v}",{},"{q}",{},"0","0","0"]"#,
        c.open_time,
        c.open_time + ms - 1,
        c.trades
    )
}

/// A kline event of the stream `<name>@kline_<interval>` (`interval` may carry `@+08:00`; `i` does not).
fn kline_event(name: &str, sym: &str, interval: &str, ms: u64, c: &Candle, now_ms: u64, closed: bool) -> Produced {
    let close_time = c.open_time + ms - 1;
    let stream = format!("{name}@kline_{interval}");
    let interval = interval.split('@').next().unwrap_or(interval);
    Produced {
        stream,
        json: {
            let [o, h, l, cl, v, q] = kline_texts(c);
            format!(
                r#"{{"e":"kline","E":{now_ms},"s":"{sym}","k":{{"t":{},"T":{close_time},"s":"{sym}","i":"{interval}","f":{},"L":{},"o":"{o}","c":"{cl}","h":"{h}","l":"{l}","v":"{v}","n":{},"x":{closed},"q":"{q}","V":"0","Q":"0","B":"0"}}}}"#,
                c.open_time, c.first_trade, c.last_trade, c.trades,
            )
        },
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
            StreamKind::Kline { interval: "1m".into(), ms: 60_000, offset_ms: 0 }
        );
        assert_eq!(parse_stream("btcusdt@depth@100ms").unwrap().1, StreamKind::Depth);
        assert_eq!(parse_stream("btcusdt@ticker").unwrap().1, StreamKind::Ticker(TickerStream::Day));
        assert_eq!(parse_stream("btcusdt@ticker_4h").unwrap().1, StreamKind::Ticker(TickerStream::Rolling(14_400_000)));
        assert_eq!(parse_stream("btcusdt@miniTicker").unwrap().1, StreamKind::MiniTicker);
        for bad in ["btcusdt", "BTCUSDT@trade", "btcusdt@kline_7m", "btcusdt@ticker!", "btcusdt@ticker_2h", "@trade"] {
            assert!(parse_stream(bad).is_err(), "{bad}");
        }
    }

    /// A decimal string in units of 10^-`scale` (`"1.50"`, 2 -> 150).
    fn units(v: &serde_json::Value, scale: u32) -> i128 {
        let d = keel_core::protocol::Decimal::parse(v.as_str().unwrap()).unwrap();
        let m = d.mantissa_wide() as i128 * 10i128.pow(scale - u32::from(d.scale()));
        if d.is_negative() { -m } else { m }
    }

    #[test]
    fn tickers_are_the_statistics_of_the_market_own_trades() {
        let mut m = Market::new(11, &syms());
        for s in ["btcusdt@aggTrade", "btcusdt@ticker", "btcusdt@ticker_1h", "btcusdt@miniTicker"] {
            m.ensure_stream(s).unwrap();
        }
        // (first trade id, price ticks, qty units of 1e-5) of every trade so far, from the aggTrades and trades.
        let mut trades: Vec<(i128, i128, i128)> = Vec::new();
        let mut seen = BTreeMap::<String, Vec<u64>>::new();
        let start = 1_700_000_000_000u64;
        for i in 0..35 {
            let now = start + i * 100;
            let batch = m.tick(now);
            for p in &batch {
                let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
                // Every frame decodes, on keel's fast path too (Binance's exact layout).
                let frame = keel_core::protocol::decode(&p.json).unwrap();
                assert!(matches!(frame, keel_core::protocol::Frame::Market { .. }), "{}", p.json);
                if p.stream == "btcusdt@trade" {
                    trades.push((v["t"].as_i64().unwrap().into(), units(&v["p"], 2), units(&v["q"], 5)));
                }
            }
            // Tickers come after the trades of their tick, once a second.
            for p in batch.iter().filter(|p| p.seq.is_none()) {
                seen.entry(p.stream.clone()).or_default().push(now);
                let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
                let price = |k: &str| units(&v[k], 2);
                let (last, first) = (trades.last().unwrap(), trades[0]);
                assert_eq!(price("c"), last.1, "last price = last trade's: {}", p.json);
                assert_eq!(price("o"), first.1, "{}", p.json);
                assert_eq!(price("h"), trades.iter().map(|t| t.1).max().unwrap());
                assert_eq!(price("l"), trades.iter().map(|t| t.1).min().unwrap());
                assert_eq!(units(&v["v"], 5), trades.iter().map(|t| t.2).sum::<i128>(), "{}", p.json);
                assert_eq!(units(&v["q"], 7), trades.iter().map(|t| t.1 * t.2).sum::<i128>());
                assert_eq!(v["E"], now);
                if p.stream == "btcusdt@miniTicker" {
                    continue;
                }
                assert_eq!(units(&v["p"], 2), last.1 - first.1);
                assert_eq!((v["F"].as_i64().unwrap() as i128, v["L"].as_i64().unwrap() as i128), (first.0, last.0));
                assert_eq!(v["n"].as_u64().unwrap() as usize, trades.len());
                assert_eq!(v["C"], now);
                let w = units(&v["w"], 8);
                let vwap = trades.iter().map(|t| t.1 * t.2).sum::<i128>() * 1_000_000
                    / trades.iter().map(|t| t.2).sum::<i128>();
                assert_eq!(w, vwap);
                if p.stream == "btcusdt@ticker" {
                    assert_eq!(v["e"], "24hrTicker");
                    assert_eq!(v["O"], now - 86_400_000);
                    assert_eq!(units(&v["Q"], 5), last.2);
                    assert_eq!(v["x"], "0.00", "no trade before the window");
                    assert_eq!(v["b"], price_text(*m.symbols["btcusdt"].book.bids.keys().next_back().unwrap()));
                } else {
                    assert_eq!(v["e"], "1hTicker");
                    let from = now - 3_600_000;
                    assert_eq!(v["O"], from - from % 60_000);
                }
            }
        }
        let once_a_second = vec![start, start + 1000, start + 2000, start + 3000];
        for s in ["btcusdt@ticker", "btcusdt@ticker_1h", "btcusdt@miniTicker"] {
            assert_eq!(seen.get(s), Some(&once_a_second), "{s}");
        }
    }

    #[test]
    fn all_market_arrays_hold_the_single_tickers_of_every_symbol() {
        use keel_core::protocol::{Frame, MarketEvent, decode_on_stream};
        let mut m = Market::new(5, &["solusdt".to_string()]);
        let streams = ["!miniTicker@arr", "!ticker_1h@arr", "!ticker@arr", "btcusdt@miniTicker", "btcusdt@ticker_1h"];
        for s in streams {
            m.ensure_stream(s).unwrap();
        }
        // The universe: the symbols traded so far plus the default list.
        assert_eq!(m.symbols.keys().cloned().collect::<Vec<_>>(), ["bnbusdt", "btcusdt", "ethusdt", "solusdt"]);
        let start = 1_700_000_000_000u64;
        let mut frames = BTreeMap::<String, Vec<(u64, String)>>::new();
        for i in 0..25 {
            let now = start + i * 100;
            for p in m.tick(now) {
                frames.entry(p.stream.clone()).or_default().push((now, p.json));
            }
        }
        // A symbol that starts later joins the arrays.
        m.ensure_stream("xrpusdt@trade").unwrap();
        let later: Vec<String> =
            m.tick(start + 3000).into_iter().filter(|p| p.stream == "!miniTicker@arr").map(|p| p.json).collect();
        assert_eq!(later.len(), 1);
        assert!(later[0].contains(r#""s":"XRPUSDT""#), "{}", later[0]);
        for s in ["!miniTicker@arr", "!ticker_1h@arr", "!ticker@arr"] {
            let times: Vec<u64> = frames[s].iter().map(|f| f.0).collect();
            assert_eq!(times, [start, start + 1000, start + 2000], "once a second: {s}");
        }
        for (array, single) in [("!miniTicker@arr", "btcusdt@miniTicker"), ("!ticker_1h@arr", "btcusdt@ticker_1h")] {
            for ((t, json), (t1, single_json)) in frames[array].iter().zip(&frames[single]) {
                assert_eq!(t, t1);
                // Decodes on keel's fast path, one element per symbol; BTCUSDT's is its single stream's event.
                let Ok(Frame::Market { event, .. }) = decode_on_stream(json, array) else { panic!("{json}") };
                let Ok(Frame::Market { event: one, .. }) = decode_on_stream(single_json, single) else { panic!() };
                let (symbols, btc): (Vec<String>, MarketEvent) = match event {
                    MarketEvent::MiniTickers(v) => (
                        v.iter().map(|e| e.symbol.to_string()).collect(),
                        MarketEvent::MiniTicker(Box::new(v[1].clone())),
                    ),
                    MarketEvent::Tickers(v) => {
                        (v.iter().map(|e| e.symbol.to_string()).collect(), MarketEvent::Ticker(Box::new(v[1].clone())))
                    }
                    other => panic!("{other:?}"),
                };
                assert_eq!(symbols, ["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"]);
                assert_eq!(btc, one);
                assert!(json.contains(&single_json[..]), "the same text: {json}");
            }
        }
        assert_eq!(
            parse_stream("!ticker_4h@arr").unwrap(),
            (String::new(), StreamKind::AllMarket(TickerKind::Window(TickerStream::Rolling(4 * HOUR_MS))))
        );
        for bad in ["!bookTicker", "!ticker_2h@arr", "!miniticker@arr"] {
            assert!(parse_stream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ticker_windows_drop_what_is_older_than_the_window() {
        let mut t = Tickers::default();
        // One trade a minute for a day and an hour: price = minute number.
        for minute in 0..(25 * 60u64) {
            t.record(minute * 60_000, &[(minute, 100 + minute, 10)]);
        }
        let now = (25 * 60 - 1) * 60_000 + 500;
        let day = t.stats(now - DAY_MS);
        // Trades at minutes 60..=1499: the one at exactly now - 24h rounds up into the window.
        assert_eq!((day.first_trade, day.last_trade, day.trades), (60, 1499, 1440));
        assert_eq!((day.open, day.close, day.low, day.high, day.prev_close), (160, 1599, 160, 1599, 159));
        let hour = t.stats(now - HOUR_MS);
        assert_eq!((hour.first_trade, hour.trades, hour.volume), (1440, 60, 600));
        assert_eq!(t.stats(now + 1).trades, 0);
        assert_eq!(t.stats(now + 1).first_trade, -1);
        // At most a day and two minutes kept.
        assert!(t.seconds.len() <= 24 * 60 + 3, "{}", t.seconds.len());
        assert!(t.dropped_close.is_some());
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

    /// Applies `levels` ([["p","q"],..]) to one side of a text book.
    fn apply(side: &mut BTreeMap<String, String>, levels: &serde_json::Value) {
        for l in levels.as_array().unwrap() {
            let (p, q) = (l[0].as_str().unwrap().to_string(), l[1].as_str().unwrap().to_string());
            if q.trim_end_matches('0').trim_end_matches('.').chars().all(|c| c == '0') {
                assert!(side.remove(&p).is_some(), "a 0 for level {p} that is not in the book");
            } else {
                side.insert(p, q);
            }
        }
    }

    #[test]
    fn depth_diffs_are_exactly_the_changes_of_the_book() {
        let mut m = Market::new(5, &syms());
        let snap = m.depth("BTCUSDT", 1000).unwrap();
        let mut bids: BTreeMap<String, String> = snap.bids.iter().cloned().collect();
        let mut asks: BTreeMap<String, String> = snap.asks.iter().cloned().collect();
        let mut last = snap.last_update_id;
        for i in 0..300 {
            for p in m.tick(1_000 + i * 100).into_iter().filter(|p| p.stream == "btcusdt@depth") {
                let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
                assert_eq!(v["U"].as_u64(), Some(last + 1), "continuous U/u");
                last = v["u"].as_u64().unwrap();
                apply(&mut bids, &v["b"]);
                apply(&mut asks, &v["a"]);
            }
            let now = m.depth("BTCUSDT", 1000).unwrap();
            assert_eq!(now.last_update_id, last);
            assert_eq!(now.bids.iter().cloned().collect::<BTreeMap<_, _>>(), bids, "tick {i}");
            assert_eq!(now.asks.iter().cloned().collect::<BTreeMap<_, _>>(), asks, "tick {i}");
            assert!(now.bids.len() <= MAX_LEVELS && now.asks.len() <= MAX_LEVELS);
            let best_bid: f64 = now.bids[0].0.parse().unwrap();
            let best_ask: f64 = now.asks[0].0.parse().unwrap();
            assert!(best_bid < best_ask, "the book is never crossed");
        }
        // limit takes the best levels, best first.
        let top = m.depth("BTCUSDT", 5).unwrap();
        assert_eq!(top.bids.len(), 5);
        assert!(top.bids[0].0.parse::<f64>().unwrap() > top.bids[4].0.parse::<f64>().unwrap());
        assert!(top.asks[0].0.parse::<f64>().unwrap() < top.asks[4].0.parse::<f64>().unwrap());
        assert!(m.depth("btcusdt", 5).is_none() && m.depth("XRPUSDT", 5).is_none());
    }

    #[test]
    fn a_numbering_restart_starts_every_sequence_at_1_and_keeps_the_book() {
        let mut m = Market::with_history(3, &syms(), 50);
        for i in 0..10 {
            m.tick(1_000 + i * 100);
        }
        let before = m.depth("BTCUSDT", 1000).unwrap();
        assert!(before.last_update_id > 9_000_000);
        m.restart_numbering();
        let after = m.depth("BTCUSDT", 1000).unwrap();
        assert_eq!((after.last_update_id, &after.bids, &after.asks), (0, &before.bids, &before.asks));
        assert!(m.agg_trades("BTCUSDT", None, 10).unwrap().is_empty(), "the old trades are forgotten");
        let seqs: BTreeMap<String, (u64, u64)> = m
            .tick(2_000)
            .into_iter()
            .filter_map(|p| p.seq.map(|s| (p.stream, s)))
            .filter(|(s, _)| s.starts_with("btc"))
            .collect();
        assert_eq!(seqs["btcusdt@aggTrade"], (1, 1));
        assert_eq!(seqs["btcusdt@depth"].0, 1);
        assert_eq!(seqs["btcusdt@bookTicker"], (1, 1));
        assert!(seqs["btcusdt@trade"].1 <= 3, "the last of this tick's 1..=3 trades");
        assert_eq!(ids_of(&m.agg_trades("BTCUSDT", Some(1), 10).unwrap()), vec![1]);
    }

    fn ids_of(r: &[AggRecord]) -> Vec<u64> {
        r.iter().map(|r| r.id).collect()
    }

    #[test]
    fn rest_agg_trades_are_the_streamed_ones() {
        let mut m = Market::with_history(9, &syms(), 50);
        let mut streamed = Vec::new();
        for i in 0..80 {
            for p in m.tick(2_000 + i * 100).into_iter().filter(|p| p.stream == "btcusdt@aggTrade") {
                let mut v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
                let o = v.as_object_mut().unwrap();
                for k in ["e", "E", "s"] {
                    o.remove(k);
                }
                streamed.push(v);
            }
        }
        let ids = |r: &[AggRecord]| r.iter().map(|r| r.id).collect::<Vec<_>>();
        let first = streamed[0]["a"].as_u64().unwrap();
        // Only the last 50 are kept: asking for older ones starts at the oldest kept.
        let got = m.agg_trades("BTCUSDT", Some(first), 10).unwrap();
        assert_eq!(ids(&got), (first + 30..first + 40).collect::<Vec<_>>());
        let got = m.agg_trades("BTCUSDT", Some(first + 70), 1000).unwrap();
        assert_eq!(ids(&got), (first + 70..first + 80).collect::<Vec<_>>());
        for (r, s) in got.iter().zip(&streamed[70..]) {
            assert_eq!(&serde_json::from_str::<serde_json::Value>(&r.rest_json()).unwrap(), s);
        }
        assert!(m.agg_trades("BTCUSDT", Some(first + 80), 10).unwrap().is_empty());
        assert_eq!(ids(&m.agg_trades("BTCUSDT", None, 3).unwrap()), vec![first + 77, first + 78, first + 79]);
        assert!(m.agg_trades("ETHUSDT", None, 3).is_none());
    }

    #[test]
    fn rest_trades_are_the_streamed_ones() {
        let mut m = Market::with_history(9, &syms(), 50);
        let mut streamed = Vec::new();
        for i in 0..40 {
            for p in m.tick(2_000 + i * 100).into_iter().filter(|p| p.stream == "btcusdt@trade") {
                streamed.push(serde_json::from_str::<serde_json::Value>(&p.json).unwrap());
            }
        }
        let last = streamed.last().unwrap()["t"].as_u64().unwrap();
        let from = last - 9;
        let got = m.historical_trades("BTCUSDT", Some(from), 1000).unwrap();
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), (from..=last).collect::<Vec<_>>());
        for (r, s) in got.iter().zip(&streamed[streamed.len() - 10..]) {
            let r: serde_json::Value = serde_json::from_str(&r.rest_json()).unwrap();
            // Binance's REST names for the stream's fields, same text.
            for (rest, stream) in [("id", "t"), ("price", "p"), ("qty", "q"), ("time", "T"), ("isBuyerMaker", "m")] {
                assert_eq!(r[rest], s[stream], "{rest} of {r}");
            }
            assert!(r["quoteQty"].is_string() && r["isBestMatch"] == true, "{r}");
        }
        // Only the last 50 are kept; None: the latest.
        assert_eq!(m.historical_trades("BTCUSDT", Some(0), 1).unwrap()[0].id, last - 49);
        assert_eq!(
            m.historical_trades("BTCUSDT", None, 2).unwrap().iter().map(|t| t.id).collect::<Vec<_>>(),
            [last - 1, last]
        );
        assert!(m.historical_trades("ETHUSDT", None, 3).is_none());
    }

    #[test]
    fn rest_klines_are_the_streamed_closed_ones_without_holes() {
        let mut m = Market::new(4, &syms());
        m.ensure_stream("btcusdt@kline_1s").unwrap();
        let mut closed = Vec::new();
        // Ticks at 10.0, 10.5, then none until 13.2 s: 11 and 12 have no trade, and still a kline each.
        for now in [10_000, 10_500, 13_200, 13_700, 14_100] {
            for p in m.tick(now).into_iter().filter(|p| p.stream == "btcusdt@kline_1s") {
                let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
                if v["k"]["x"] == true {
                    closed.push(v["k"].clone());
                }
            }
        }
        let opens: Vec<u64> = closed.iter().map(|k| k["t"].as_u64().unwrap()).collect();
        assert_eq!(opens, [10_000, 11_000, 12_000, 13_000]);
        assert_eq!(
            (closed[1]["n"].as_u64(), closed[1]["f"].as_i64(), closed[1]["o"].clone()),
            (Some(0), Some(-1), closed[0]["c"].clone())
        );
        let rest = m.klines("BTCUSDT", "1s", 0, Some(10_000), Some(13_000), 1000).unwrap();
        assert_eq!(rest.len(), 4);
        for (r, k) in rest.iter().zip(&closed) {
            let r: serde_json::Value = serde_json::from_str(r).unwrap();
            let a = r.as_array().unwrap();
            assert_eq!(a.len(), 12);
            let pairs = [(0, "t"), (1, "o"), (2, "h"), (3, "l"), (4, "c"), (5, "v"), (6, "T"), (7, "q"), (8, "n")];
            for (i, f) in pairs {
                assert_eq!(a[i], k[f], "field {f} of {r}");
            }
        }
        // The open kline is included when in range; limits and unknown intervals/symbols.
        assert_eq!(m.klines("BTCUSDT", "1s", 0, Some(13_000), None, 1000).unwrap().len(), 2);
        assert_eq!(m.klines("BTCUSDT", "1s", 0, Some(10_000), None, 2).unwrap().len(), 2);
        assert_eq!(m.klines("BTCUSDT", "1s", 0, None, None, 1).unwrap()[0].split(',').next(), Some("[14000"));
        assert!(m.klines("BTCUSDT", "1m", 0, None, None, 10).unwrap().is_empty());
        assert!(m.klines("ETHUSDT", "1s", 0, None, None, 10).is_none());
    }

    #[test]
    fn utc8_day_klines_open_at_local_midnight_and_rest_serves_them_by_time_zone() {
        const H: u64 = 3_600_000;
        // 2023-11-14 00:00 UTC; the +08:00 day holding it opened at 2023-11-13 16:00 UTC.
        let day0 = 1_699_920_000_000;
        let mut m = Market::new(4, &syms());
        for s in ["btcusdt@kline_1d@+08:00", "btcusdt@kline_1d", "btcusdt@kline_1s@+08:00"] {
            m.ensure_stream(s).unwrap();
        }
        for bad in ["btcusdt@kline_1d@+09:00", "btcusdt@kline_1d@+8", "btcusdt@kline_1d@"] {
            assert!(m.ensure_stream(bad).unwrap_err().to_string().contains("@+08:00"), "{bad}");
        }
        let mut closed: Vec<(String, String, u64)> = Vec::new();
        // 10:00 UTC (18:00 local), 17:00 (01:00 local, next local day), next day 01:00 (a UTC day
        // closes) and 17:00 (another local day).
        for now in [day0 + 10 * H, day0 + 17 * H, day0 + 25 * H, day0 + 41 * H] {
            for p in m.tick(now).into_iter().filter(|p| p.stream.contains("@kline_1d")) {
                let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
                assert_eq!(v["k"]["i"], "1d", "{}", p.json);
                if v["k"]["x"] == true {
                    closed.push((p.stream, now.to_string(), v["k"]["t"].as_u64().unwrap()));
                }
            }
        }
        let local = |t: u64| ("btcusdt@kline_1d@+08:00".to_string(), (t).to_string());
        let utc = |t: u64| ("btcusdt@kline_1d".to_string(), (t).to_string());
        let closed: Vec<((String, String), u64)> = closed.into_iter().map(|(s, at, t)| ((s, at), t)).collect();
        assert_eq!(
            closed,
            [(local(day0 + 17 * H), day0 - 8 * H), (utc(day0 + 25 * H), day0), (local(day0 + 41 * H), day0 + 16 * H)]
        );
        let opens = |tz: i64, start: Option<u64>| -> Vec<u64> {
            let rows = m.klines("BTCUSDT", "1d", tz, start, None, 10).unwrap();
            rows.iter().map(|r| r[1..].split(',').next().unwrap().parse().unwrap()).collect()
        };
        let tz8 = 8 * H as i64;
        // The zone's days (the open one included); startTime stays UTC.
        assert_eq!(opens(tz8, Some(0)), [day0 - 8 * H, day0 + 16 * H, day0 + 40 * H]);
        assert_eq!(opens(tz8, Some(day0)), [day0 + 16 * H, day0 + 40 * H]);
        assert_eq!(opens(0, Some(0)), [day0, day0 + 24 * H]);
        // A zone no stream has: no klines; below a day every whole-hour zone is UTC's grid.
        assert!(opens(5 * H as i64, Some(0)).is_empty());
        assert_eq!(m.klines("BTCUSDT", "1s", tz8, None, None, 1), m.klines("BTCUSDT", "1s", 0, None, None, 1));
        assert_eq!(m.klines("BTCUSDT", "1s", 0, None, None, 1).map(|k| k.len()), Some(1));
    }

    #[test]
    fn depth_blast_is_the_book_changing() {
        let mut m = Market::new(3, &syms());
        let _ = m.tick(1_000);
        let snap = m.depth("BTCUSDT", 1000).unwrap();
        let mut bids: BTreeMap<String, String> = snap.bids.iter().cloned().collect();
        let mut asks: BTreeMap<String, String> = snap.asks.iter().cloned().collect();
        let mut last = snap.last_update_id;
        let blast = m.blast_depth("btcusdt", 50, 1_100);
        assert_eq!(blast.len(), 50);
        for p in &blast {
            let v: serde_json::Value = serde_json::from_str(&p.json).unwrap();
            assert_eq!(v["U"].as_u64(), Some(last + 1), "continuous U/u");
            last = v["u"].as_u64().unwrap();
            assert_eq!(p.seq, Some((last - 2, last)), "one id per changed level");
            apply(&mut bids, &v["b"]);
            apply(&mut asks, &v["a"]);
        }
        let now = m.depth("BTCUSDT", 1000).unwrap();
        assert_eq!(now.last_update_id, last);
        assert_eq!(now.bids.iter().cloned().collect::<BTreeMap<_, _>>(), bids);
        assert_eq!(now.asks.iter().cloned().collect::<BTreeMap<_, _>>(), asks);
        let next = m.tick(1_200).into_iter().find(|p| p.stream == "btcusdt@depth").and_then(|p| p.seq).unwrap();
        assert_eq!(next.0, last + 1);
    }
}
