//! Binance spot market-data stream frames: decoding what the server sends, encoding what the client
//! (or keel's embedded exchange) sends.
//!
//! Inbound text frames are one of:
//! - a market event, raw (`/ws/<stream>`) or in the combined-stream envelope
//!   `{"stream":"btcusdt@aggTrade","data":{...}}` (`/stream?streams=a/b`): aggTrade, trade, kline,
//!   depthUpdate, bookTicker (which has no `"e"` field), partial depth (`@depth5`, no `"e"` either),
//!   the tickers (`24hrTicker`, `1hTicker`/`4hTicker`/`1dTicker`) and the mini ticker (`24hrMiniTicker`);
//! - an all-market array (`!miniTicker@arr`, `!ticker@arr`, `!ticker_<1h|4h|1d>@arr`): a JSON array of
//!   those tickers, one per symbol that changed in the last second, raw (`[{...},{...}]`) or as the
//!   envelope's `data` (`{"stream":"!miniTicker@arr","data":[{...}]}`); one frame is one
//!   [`MarketEvent::Tickers`] / [`MarketEvent::MiniTickers`];
//! - a reply to a request: `{"result":null,"id":1}`, `{"result":["btcusdt@aggTrade"],"id":3}`;
//! - an error reply: `{"error":{"code":2,"msg":"Invalid request"},"id":1}` (codes 0-3, see [`error_code`]);
//! - `{"e":"serverShutdown","E":...}`, sent shortly before Binance cuts the connection.
//!
//! [`decode`] never panics: anything else is a [`DecodeError`] naming what was wrong, which the
//! connection counts and reports without dropping the connection (a malformed frame is not fatal).
//!
//! Prices and quantities stay exact ([`Decimal`]); `to_f64()` is for whoever computes with them.
//!
//! Performance: frames laid out exactly as Binance sends them take a hand-written single-pass
//! scanner (`fast.rs`: keys matched in Binance's order, numbers and decimals parsed straight from
//! the bytes); with a connection's table of names ([`decode_with`], [`Names`]) an aggTrade frame in
//! the combined envelope allocates nothing (its stream name and symbol are shared [`Name`]s), a depth
//! diff only its list of levels (bids and asks share one allocation). Anything else takes the general path: one serde pass into a borrowed, flat struct (no
//! `serde_json::Value` tree), then a typed conversion that names what is wrong. Properties in
//! `tests.rs` hold the two paths to the same result. The cost is measured by `cargo bench -p
//! keel-core --bench core` and `bench/run instr` (docs/BENCHMARKS.md), not by tests.

mod decimal;
mod encode;
mod fast;
mod name;
mod raw;
mod request;
pub mod rest;
mod streams;

pub use decimal::{Decimal, DecimalError, MAX_MANTISSA, MAX_SCALE};
pub use encode::{encode_event, encode_frame};
pub use name::{MAX_NAMES, Name, NameKey, Names};
pub use request::{Request, RequestError, decode_request, encode_request};
pub use streams::{StreamNameError, check_stream_name, combined_stream_url, stream_name};

use crate::gaps::Sequence;
use raw::{Data, Nested, RawFrame, RawKline, Val};
use serde::{Deserialize, Serialize};

/// A price level: `(price, quantity)`.
pub type Level = (Decimal, Decimal);

/// An aggregate trade (`<symbol>@aggTrade`): trades at one price from one taker order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggTrade {
    /// `s`, upper case as Binance sends it (`BTCUSDT`).
    pub symbol: Name,
    /// `E`, ms since the Unix epoch.
    pub event_time: u64,
    /// `a`: continuous per symbol.
    pub agg_id: u64,
    /// `p`
    pub price: Decimal,
    /// `q`
    pub quantity: Decimal,
    /// `f`
    pub first_trade_id: u64,
    /// `l`
    pub last_trade_id: u64,
    /// `T`
    pub trade_time: u64,
    /// `m`: the buyer was the maker (the taker sold).
    pub buyer_is_maker: bool,
}

/// A single trade (`<symbol>@trade`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub symbol: Name,
    pub event_time: u64,
    /// `t`: continuous per symbol.
    pub trade_id: u64,
    pub price: Decimal,
    pub quantity: Decimal,
    pub trade_time: u64,
    pub buyer_is_maker: bool,
}

/// A candlestick update (`<symbol>@kline_<interval>`); sent repeatedly while the interval is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kline {
    pub symbol: Name,
    pub event_time: u64,
    /// `k.t`
    pub open_time: u64,
    /// `k.T`
    pub close_time: u64,
    /// `k.i`, e.g. `1m`.
    pub interval: String,
    /// `k.f`; -1 when the interval had no trade yet.
    pub first_trade_id: i64,
    /// `k.L`; -1 when the interval had no trade yet.
    pub last_trade_id: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    /// `k.v`: base asset volume.
    pub volume: Decimal,
    /// `k.q`: quote asset volume.
    pub quote_volume: Decimal,
    /// `k.V`: taker buy base asset volume.
    pub taker_buy_volume: Decimal,
    /// `k.Q`: taker buy quote asset volume.
    pub taker_buy_quote_volume: Decimal,
    /// `k.n`: number of trades.
    pub trades: u64,
    /// `k.x`: this is the final update of the interval.
    pub is_closed: bool,
}

/// A diff of the order book (`<symbol>@depth`, `@depth@100ms`). Its levels are read with
/// [`Self::bids`] and [`Self::asks`].
///
/// Both lists live in one allocation (the bids, then the asks): a diff is decoded, passed on and
/// dropped per message, and a second `Vec` cost one more `malloc` and `free` each time
/// (docs/BENCHMARKS.md figure 4). It (de)serializes and prints as the two lists.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "DepthUpdateRepr", from = "DepthUpdateRepr")]
pub struct DepthUpdate {
    pub symbol: Name,
    pub event_time: u64,
    /// `U`
    pub first_update_id: u64,
    /// `u`
    pub final_update_id: u64,
    /// `b` then `a`; quantity 0 removes the level.
    levels: Vec<Level>,
    /// How many of `levels` are bids (at most `levels.len()`).
    bids: usize,
}

impl DepthUpdate {
    /// A diff with these bids (`b`) and asks (`a`).
    pub fn new(
        symbol: impl Into<Name>,
        event_time: u64,
        first_update_id: u64,
        final_update_id: u64,
        bids: Vec<Level>,
        asks: Vec<Level>,
    ) -> DepthUpdate {
        let split = bids.len();
        let mut levels = bids;
        levels.extend(asks);
        DepthUpdate { symbol: symbol.into(), event_time, first_update_id, final_update_id, levels, bids: split }
    }

    /// `levels` holds the bids, then the asks; the first `bids` of them are bids (the decoder fills
    /// one list in frame order).
    pub(crate) fn from_levels(
        symbol: Name,
        event_time: u64,
        first_update_id: u64,
        final_update_id: u64,
        levels: Vec<Level>,
        bids: usize,
    ) -> DepthUpdate {
        let bids = bids.min(levels.len());
        DepthUpdate { symbol, event_time, first_update_id, final_update_id, levels, bids }
    }

    /// `b`: the bid levels as sent (quantity 0 removes the level).
    pub fn bids(&self) -> &[Level] {
        &self.levels[..self.bids]
    }

    /// `a`: the ask levels as sent.
    pub fn asks(&self) -> &[Level] {
        &self.levels[self.bids..]
    }
}

impl std::fmt::Debug for DepthUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepthUpdate")
            .field("symbol", &self.symbol)
            .field("event_time", &self.event_time)
            .field("first_update_id", &self.first_update_id)
            .field("final_update_id", &self.final_update_id)
            .field("bids", &self.bids())
            .field("asks", &self.asks())
            .finish()
    }
}

/// [`DepthUpdate`]'s serialized shape: the two lists as before they shared an allocation.
#[derive(Serialize, Deserialize)]
#[serde(rename = "DepthUpdate")]
struct DepthUpdateRepr {
    symbol: Name,
    event_time: u64,
    first_update_id: u64,
    final_update_id: u64,
    bids: Vec<Level>,
    asks: Vec<Level>,
}

impl From<DepthUpdate> for DepthUpdateRepr {
    fn from(d: DepthUpdate) -> DepthUpdateRepr {
        let mut bids = d.levels;
        let asks = bids.split_off(d.bids);
        DepthUpdateRepr {
            symbol: d.symbol,
            event_time: d.event_time,
            first_update_id: d.first_update_id,
            final_update_id: d.final_update_id,
            bids,
            asks,
        }
    }
}

impl From<DepthUpdateRepr> for DepthUpdate {
    fn from(r: DepthUpdateRepr) -> DepthUpdate {
        DepthUpdate::new(r.symbol, r.event_time, r.first_update_id, r.final_update_id, r.bids, r.asks)
    }
}

/// Best bid and ask (`<symbol>@bookTicker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookTicker {
    pub symbol: Name,
    /// `u`: increases, but skips ids by design.
    pub update_id: u64,
    /// `b`
    pub best_bid_price: Decimal,
    /// `B`
    pub best_bid_qty: Decimal,
    /// `a`
    pub best_ask_price: Decimal,
    /// `A`
    pub best_ask_qty: Decimal,
    /// `E`: spot bookTicker frames have none (futures ones do).
    pub event_time: Option<u64>,
}

/// Top levels of the book (`<symbol>@depth5`, `@depth10`, `@depth20`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDepth {
    /// Not in the frame: taken from the stream name (`bnbbtc@depth5` -> `BNBBTC`); empty for a raw
    /// frame decoded without a stream name.
    pub symbol: Name,
    /// `lastUpdateId`
    pub last_update_id: u64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// The window a [`Ticker`] covers, and what only the 24 h ticker carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TickerWindow {
    /// `<symbol>@ticker` (event `24hrTicker`): the last 24 h, rolling (not the UTC day).
    Rolling24h(TickerExtras),
    /// `<symbol>@ticker_1h` (event `1hTicker`).
    Rolling1h,
    /// `<symbol>@ticker_4h` (event `4hTicker`).
    Rolling4h,
    /// `<symbol>@ticker_1d` (event `1dTicker`): unlike `@ticker`, the open time `O` starts on a
    /// minute, so the window may be up to 59 999 ms wider than a day.
    Rolling1d,
}

impl TickerWindow {
    /// The event type Binance sends in `"e"`.
    pub fn event_type(&self) -> &'static str {
        match self {
            TickerWindow::Rolling24h(_) => "24hrTicker",
            TickerWindow::Rolling1h => "1hTicker",
            TickerWindow::Rolling4h => "4hTicker",
            TickerWindow::Rolling1d => "1dTicker",
        }
    }

    /// The stream type after the `@` (`ticker`, `ticker_1h`, ...).
    pub fn stream_type(&self) -> &'static str {
        match self {
            TickerWindow::Rolling24h(_) => "ticker",
            TickerWindow::Rolling1h => "ticker_1h",
            TickerWindow::Rolling4h => "ticker_4h",
            TickerWindow::Rolling1d => "ticker_1d",
        }
    }
}

/// The fields of a 24 h ticker (`@ticker`) that the rolling-window tickers (`@ticker_1h` ...) lack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickerExtras {
    /// `x`: the price of the last trade before the window (trade `F - 1`).
    pub prev_price: Decimal,
    /// `Q`: the last trade's quantity.
    pub last_quantity: Decimal,
    /// `b`
    pub best_bid_price: Decimal,
    /// `B`
    pub best_bid_qty: Decimal,
    /// `a`
    pub best_ask_price: Decimal,
    /// `A`
    pub best_ask_qty: Decimal,
}

/// Rolling-window statistics of one symbol, sent every second: `<symbol>@ticker` (24 h) and
/// `<symbol>@ticker_<1h|4h|1d>`. A snapshot, not a numbered update: it has no sequence id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticker {
    pub symbol: Name,
    pub event_time: u64,
    /// From the event type; the 24 h window carries a few more fields.
    pub window: TickerWindow,
    /// `p`: last price minus open price.
    pub price_change: Decimal,
    /// `P`: the change in percent of the open price.
    pub price_change_percent: Decimal,
    /// `w`: volume-weighted average price over the window.
    pub weighted_avg_price: Decimal,
    /// `c`
    pub last_price: Decimal,
    /// `o`
    pub open: Decimal,
    /// `h`
    pub high: Decimal,
    /// `l`
    pub low: Decimal,
    /// `v`: base asset volume.
    pub volume: Decimal,
    /// `q`: quote asset volume.
    pub quote_volume: Decimal,
    /// `O`: statistics open time.
    pub open_time: u64,
    /// `C`: statistics close time.
    pub close_time: u64,
    /// `F`; -1 when the window had no trade.
    pub first_trade_id: i64,
    /// `L`; -1 when the window had no trade.
    pub last_trade_id: i64,
    /// `n`: number of trades.
    pub trades: u64,
}

/// The 24 h rolling-window mini ticker (`<symbol>@miniTicker`, event `24hrMiniTicker`), every second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiniTicker {
    pub symbol: Name,
    pub event_time: u64,
    /// `c`: last price.
    pub close: Decimal,
    /// `o`
    pub open: Decimal,
    /// `h`
    pub high: Decimal,
    /// `l`
    pub low: Decimal,
    /// `v`: base asset volume.
    pub volume: Decimal,
    /// `q`: quote asset volume.
    pub quote_volume: Decimal,
}

/// One decoded market data event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarketEvent {
    AggTrade(AggTrade),
    Trade(Trade),
    /// Boxed: a kline is twice the size of the other events, and every event is moved through
    /// several queues on its way out (decoder, connection, recovery, the adapter), so an unboxed
    /// kline made every aggTrade pay for copying ~240 bytes at each hop.
    Kline(Box<Kline>),
    Depth(DepthUpdate),
    BookTicker(BookTicker),
    PartialDepth(PartialDepth),
    /// Boxed like a kline: a ticker is the biggest event (up to 17 decimals), once a second.
    Ticker(Box<Ticker>),
    /// Boxed: six decimals would make it the largest unboxed event, and it comes once a second.
    MiniTicker(Box<MiniTicker>),
    /// An all-market ticker array (`!ticker@arr`, `!ticker_<1h|4h|1d>@arr`): the tickers of every symbol
    /// that changed in the last second, all of the stream's window, in the frame's order (possibly none).
    /// A `Vec` is already a pointer: the event does not grow.
    Tickers(Vec<Ticker>),
    /// The all-market mini ticker array (`!miniTicker@arr`), like [`Self::Tickers`].
    MiniTickers(Vec<MiniTicker>),
}

impl MarketEvent {
    /// The symbol, upper case (`BTCUSDT`); empty for an all-market array, whose elements have one each.
    pub fn symbol(&self) -> &str {
        match self {
            MarketEvent::AggTrade(e) => &e.symbol,
            MarketEvent::Trade(e) => &e.symbol,
            MarketEvent::Kline(e) => &e.symbol,
            MarketEvent::Depth(e) => &e.symbol,
            MarketEvent::BookTicker(e) => &e.symbol,
            MarketEvent::PartialDepth(e) => &e.symbol,
            MarketEvent::Ticker(e) => &e.symbol,
            MarketEvent::MiniTicker(e) => &e.symbol,
            MarketEvent::Tickers(_) | MarketEvent::MiniTickers(_) => "",
        }
    }

    /// The sequence numbers the gap tracker checks.
    pub fn sequence(&self) -> Sequence {
        match self {
            MarketEvent::AggTrade(e) => {
                Sequence::AggTrade { id: e.agg_id, first_trade: e.first_trade_id, last_trade: e.last_trade_id }
            }
            MarketEvent::Trade(e) => Sequence::Trade { id: e.trade_id },
            MarketEvent::Kline(_) => Sequence::Unsequenced,
            MarketEvent::Depth(e) => Sequence::Depth { first: e.first_update_id, last: e.final_update_id },
            MarketEvent::BookTicker(e) => Sequence::BookTicker { id: e.update_id },
            MarketEvent::PartialDepth(e) => Sequence::Snapshot { id: e.last_update_id },
            // A snapshot of its window, like a kline: nothing to count, nothing can be missed.
            MarketEvent::Ticker(_) | MarketEvent::MiniTicker(_) => Sequence::Unsequenced,
            // Snapshots too; a second with no change at all sends no array, and nothing is lost by it.
            MarketEvent::Tickers(_) | MarketEvent::MiniTickers(_) => Sequence::Unsequenced,
        }
    }

    /// `E`, ms since the Unix epoch; 0 for frames that carry none (spot bookTicker, partial depth, an
    /// empty array). An array's is its latest element's (Binance gives all elements the same).
    pub fn event_time(&self) -> u64 {
        match self {
            MarketEvent::AggTrade(e) => e.event_time,
            MarketEvent::Trade(e) => e.event_time,
            MarketEvent::Kline(e) => e.event_time,
            MarketEvent::Depth(e) => e.event_time,
            MarketEvent::BookTicker(e) => e.event_time.unwrap_or(0),
            MarketEvent::PartialDepth(_) => 0,
            MarketEvent::Ticker(e) => e.event_time,
            MarketEvent::MiniTicker(e) => e.event_time,
            MarketEvent::Tickers(v) => v.iter().map(|e| e.event_time).max().unwrap_or(0),
            MarketEvent::MiniTickers(v) => v.iter().map(|e| e.event_time).max().unwrap_or(0),
        }
    }

    /// A short name of the event kind, as in Binance's `"e"` field (`aggTrade`, ..., `24hrTicker`,
    /// `1hTicker`, `24hrMiniTicker`; `bookTicker` and `partialDepth` for the two kinds without one; an
    /// array is its elements' type with `[]`: `24hrMiniTicker[]`, `1hTicker[]` (an empty ticker array,
    /// whose window only its stream name tells, `24hrTicker[]`).
    pub fn kind(&self) -> &'static str {
        match self {
            MarketEvent::AggTrade(_) => "aggTrade",
            MarketEvent::Trade(_) => "trade",
            MarketEvent::Kline(_) => "kline",
            MarketEvent::Depth(_) => "depthUpdate",
            MarketEvent::BookTicker(_) => "bookTicker",
            MarketEvent::PartialDepth(_) => "partialDepth",
            MarketEvent::Ticker(t) => t.window.event_type(),
            MarketEvent::MiniTicker(_) => "24hrMiniTicker",
            MarketEvent::Tickers(v) => match v.first().map(|t| &t.window) {
                Some(TickerWindow::Rolling1h) => "1hTicker[]",
                Some(TickerWindow::Rolling4h) => "4hTicker[]",
                Some(TickerWindow::Rolling1d) => "1dTicker[]",
                Some(TickerWindow::Rolling24h(_)) | None => "24hrTicker[]",
            },
            MarketEvent::MiniTickers(_) => "24hrMiniTicker[]",
        }
    }
}

/// The all-market array streams: every symbol's ticker in one stream (Binance:
/// web-socket-streams.md, "All Market Mini Tickers Stream", "All Market Tickers Stream" (deprecated by
/// Binance, still served), "All Market Rolling Window Statistics Streams").
pub const ARRAY_STREAMS: [&str; 5] =
    ["!miniTicker@arr", "!ticker@arr", "!ticker_1h@arr", "!ticker_4h@arr", "!ticker_1d@arr"];

/// The event type (`"e"`) of the elements of all-market array stream `stream` (`!ticker_1h@arr` ->
/// `1hTicker`); `None` for any other stream.
pub fn array_element_type(stream: &str) -> Option<&'static str> {
    Some(match stream {
        "!miniTicker@arr" => "24hrMiniTicker",
        "!ticker@arr" => "24hrTicker",
        "!ticker_1h@arr" => "1hTicker",
        "!ticker_4h@arr" => "4hTicker",
        "!ticker_1d@arr" => "1dTicker",
        _ => return None,
    })
}

/// The array stream whose elements have event type `e` (the inverse of [`array_element_type`]).
fn array_stream_of(e: &str) -> Option<&'static str> {
    ARRAY_STREAMS.into_iter().find(|s| array_element_type(s) == Some(e))
}

/// The `result` of a reply to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseResult {
    /// `null`: SUBSCRIBE / UNSUBSCRIBE / SET_PROPERTY succeeded.
    Null,
    /// The active subscriptions (reply to LIST_SUBSCRIPTIONS).
    Streams(Vec<String>),
    /// A property value (reply to GET_PROPERTY `combined`).
    Bool(bool),
}

/// One decoded text frame.
// Market frames are nearly all the traffic; boxing the event would add an allocation to each of them
// to shrink the rare replies.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// A market event; `stream` is the envelope's stream name, or [`stream_name`] of a raw event.
    Market { stream: Name, event: MarketEvent },
    /// A successful reply to the request with this id.
    Response { id: u64, result: ResponseResult },
    /// An error reply; `id` is absent when the server could not read the request's id.
    Error { id: Option<u64>, code: i64, msg: String },
    /// The server will close this connection soon (maintenance or the 24 h limit): reconnect now.
    ServerShutdown { event_time: u64 },
}

/// Binance's error codes in error replies.
pub mod error_code {
    /// Unknown property (SET_PROPERTY / GET_PROPERTY).
    pub const UNKNOWN_PROPERTY: i64 = 0;
    /// A value had the wrong type.
    pub const INVALID_VALUE_TYPE: i64 = 1;
    /// The request is malformed (bad method, id, params).
    pub const INVALID_REQUEST: i64 = 2;
    /// The request was not JSON.
    pub const INVALID_JSON: i64 = 3;
}

/// Why a text frame could not be decoded. Counted by the connection, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame was empty or whitespace only.
    #[error("empty frame")]
    Empty,
    /// The frame is not JSON (or is truncated JSON).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The frame is JSON but not an object.
    #[error("frame is {0}, expected a JSON object")]
    NotAnObject(&'static str),
    /// JSON that serde rejected for a structural reason (a duplicated key, nesting too deep).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// An `"e"` event type keel does not decode.
    #[error(
        "unknown event type {0:?} (keel decodes aggTrade, trade, kline, depthUpdate, bookTicker, 24hrTicker, \
         1hTicker, 4hTicker, 1dTicker, 24hrMiniTicker, serverShutdown)"
    )]
    UnknownEvent(String),
    /// An object that is no frame kind keel knows (no `e`, `stream`, `result`, `error`, bookTicker or
    /// partial depth fields).
    #[error(
        "unrecognized frame: none of \"e\", \"stream\"/\"data\", \"result\", \"error\", bookTicker or partial depth fields"
    )]
    Unrecognized,
    /// A field the frame kind requires is absent.
    #[error("{kind} frame is missing field {field:?}")]
    MissingField { kind: &'static str, field: &'static str },
    /// A field has the wrong JSON type.
    #[error("field {field:?} of a {kind} frame is {found}, expected {expected}")]
    WrongType { kind: &'static str, field: &'static str, expected: &'static str, found: &'static str },
    /// A price or quantity string is not a plain decimal number.
    #[error("field {field:?} of a {kind} frame: {value:?} is not a decimal number ({reason})")]
    BadDecimal { kind: &'static str, field: &'static str, value: String, reason: DecimalError },
    /// A bids/asks array is not a list of `[price, qty]` decimal-string pairs.
    #[error("field {field:?} of a {kind} frame is not a list of [price, qty] pairs: {reason}")]
    BadLevels { kind: &'static str, field: &'static str, reason: String },
    /// An element of an all-market array (`!miniTicker@arr`, ...) is malformed; `index` counts from 0.
    #[error("element {index} of the all-market array: {error}")]
    ArrayElement { index: usize, error: Box<DecodeError> },
    /// An event of another type than its stream carries (a `1hTicker` in `!ticker_4h@arr`).
    #[error("event type {found:?} where the stream carries {expected:?}")]
    WrongEvent { expected: &'static str, found: String },
}

impl DecodeError {
    /// A stable short label for counting errors by kind (`not_json`, `missing_field`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotAnObject(_) => "not_an_object",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownEvent(_) => "unknown_event",
            DecodeError::Unrecognized => "unrecognized",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::BadDecimal { .. } => "bad_decimal",
            DecodeError::BadLevels { .. } => "bad_levels",
            // Counted as what was wrong with the element.
            DecodeError::ArrayElement { error, .. } => error.label(),
            DecodeError::WrongEvent { .. } => "wrong_event",
        }
    }
}

/// Decodes one text frame from a Binance stream connection (raw or combined).
pub fn decode(text: &str) -> Result<Frame, DecodeError> {
    decode_with(text, &mut Names::unshared())
}

/// As [`decode`], taking stream names and symbols from `names` (and adding new ones to it): a
/// connection keeps one [`Names`] so that its events share one allocation per stream name and symbol
/// instead of allocating two strings per event. The frame decoded is the same.
pub fn decode_with(text: &str, names: &mut Names) -> Result<Frame, DecodeError> {
    match fast::try_decode_on(text, None, names) {
        Some(frame) => Ok(frame),
        None => decode_general(text),
    }
}

/// The general path: every frame kind, and an error naming the field for anything malformed.
fn decode_general(text: &str) -> Result<Frame, DecodeError> {
    if is_array_text(text) {
        return bare_array(text, None);
    }
    frame(parse(text)?)
}

/// The frame is a JSON array (a raw all-market array, or junk).
fn is_array_text(text: &str) -> bool {
    text.trim_start().starts_with('[')
}

/// A raw all-market array (`/ws/!miniTicker@arr` sends the bare array). The element type comes from
/// `stream` when the caller knows it (the only way to tell an empty array's stream), else from the
/// first element. Any other array is what it was before keel read arrays: not an object.
fn bare_array(text: &str, stream: Option<&str>) -> Result<Frame, DecodeError> {
    let elements = serde_json::from_str::<Vec<Nested<RawFrame<'_>>>>(text).map_err(json_error)?;
    let not_an_object = DecodeError::NotAnObject("an array");
    let want = match (stream, elements.first()) {
        (Some(stream), _) => array_element_type(stream),
        (None, Some(Nested::Value(RawFrame { e: Val::Str(e), .. }))) => array_stream_of(e).and_then(array_element_type),
        (None, _) => None,
    }
    .ok_or(not_an_object)?;
    let stream = match stream {
        Some(stream) => Name::from(stream),
        None => Name::from(array_stream_of(want).unwrap_or_default()),
    };
    Ok(Frame::Market { stream, event: market_array(elements, want)? })
}

/// The elements of an all-market array whose elements must all be of event type `want` (from
/// [`array_element_type`]); an error names the first bad element's index and what is wrong with it.
fn market_array(elements: Vec<Nested<RawFrame<'_>>>, want: &'static str) -> Result<MarketEvent, DecodeError> {
    let mini = want == "24hrMiniTicker";
    let (mut tickers, mut minis) = (Vec::new(), Vec::new());
    if mini {
        minis.reserve_exact(elements.len());
    } else {
        tickers.reserve_exact(elements.len());
    }
    for (index, element) in elements.into_iter().enumerate() {
        let at = |error| DecodeError::ArrayElement { index, error: Box::new(error) };
        let raw = match element {
            Nested::Value(raw) => raw,
            Nested::Wrong(found) => return Err(at(DecodeError::NotAnObject(found))),
            Nested::Absent => return Err(at(DecodeError::NotAnObject("absent"))),
        };
        match &raw.e {
            Val::Str(e) if e == want => {}
            Val::Str(e) => {
                return Err(at(DecodeError::WrongEvent { expected: want, found: e.chars().take(64).collect() }));
            }
            other => return Err(at(missing_or_wrong(want, "e", "an event type string", other))),
        }
        if mini {
            minis.push(mini_ticker_fields(raw).map_err(at)?);
        } else {
            tickers.push(ticker_fields(raw, want).map_err(at)?);
        }
    }
    Ok(if mini { MarketEvent::MiniTickers(minis) } else { MarketEvent::Tickers(tickers) })
}

/// serde_json's error as ours: a structural one (duplicate key) is malformed, the rest is not JSON.
fn json_error(e: serde_json::Error) -> DecodeError {
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::Malformed(e.to_string()),
        _ => DecodeError::NotJson(e.to_string()),
    }
}

/// Decodes a frame from a raw connection (`/ws/<stream>`) whose stream name the caller knows: the
/// event is attributed to `stream` (rather than to [`stream_name`]'s guess) and a partial depth frame
/// gets its symbol from it.
pub fn decode_on_stream(text: &str, stream: &str) -> Result<Frame, DecodeError> {
    if let Some(frame) = fast::try_decode_on(text, Some(stream), &mut Names::unshared()) {
        return Ok(frame);
    }
    if is_array_text(text) {
        return bare_array(text, Some(stream));
    }
    let raw = parse(text)?;
    if is_market(&raw) && raw.stream.is_absent() && matches!(raw.data, Data::Absent) {
        let event = market(raw, Some(stream))?;
        return Ok(Frame::Market { stream: stream.into(), event });
    }
    frame(raw)
}

/// Text -> the flat borrowed view, mapping serde's errors to ours.
fn parse(text: &str) -> Result<RawFrame<'_>, DecodeError> {
    let trimmed = text.trim_start();
    match trimmed.as_bytes().first() {
        None => return Err(DecodeError::Empty),
        Some(b'{') => {}
        Some(_) => {
            // Say what it is if it is JSON at all.
            return match serde_json::from_str::<serde::de::IgnoredAny>(trimmed) {
                Err(e) => Err(DecodeError::NotJson(e.to_string())),
                Ok(_) => Err(DecodeError::NotAnObject(match trimmed.as_bytes()[0] {
                    b'[' => "an array",
                    b'"' => "a string",
                    b'n' => "null",
                    b't' | b'f' => "a boolean",
                    _ => "a number",
                })),
            };
        }
    }
    serde_json::from_str::<RawFrame<'_>>(text).map_err(json_error)
}

fn is_market(raw: &RawFrame<'_>) -> bool {
    (!raw.e.is_absent() && !matches!(&raw.e, Val::Str(e) if e == "serverShutdown"))
        || (!raw.u.is_absent() && !raw.b.is_absent())
        || !raw.last_update_id.is_absent()
}

fn frame(mut raw: RawFrame<'_>) -> Result<Frame, DecodeError> {
    // Combined-stream envelope.
    if !raw.stream.is_absent() || !matches!(raw.data, Data::Absent) {
        const KIND: &str = "combined stream envelope";
        let stream = string(KIND, "stream", std::mem::take(&mut raw.stream))?;
        let wrong = |found| DecodeError::WrongType { kind: KIND, field: "data", expected: "an object", found };
        let event = match std::mem::take(&mut raw.data) {
            Data::Object(data) => market(*data, Some(&stream))?,
            // The stream name says what the array holds: an empty one is valid too.
            Data::Array(elements) => match array_element_type(&stream) {
                Some(want) => market_array(elements, want)?,
                None => return Err(wrong("an array")),
            },
            Data::Absent => return Err(DecodeError::MissingField { kind: KIND, field: "data" }),
            Data::Wrong(found) => return Err(wrong(found)),
        };
        return Ok(Frame::Market { stream: stream.into(), event });
    }
    // Error reply, nested (`{"error":{...},"id":1}`) or flat (`{"code":2,"msg":"..","id":1}`).
    if !matches!(raw.error, Nested::Absent) || (!raw.code.is_absent() && !raw.msg.is_absent()) {
        const KIND: &str = "error reply";
        let id = optional_u64(KIND, "id", std::mem::take(&mut raw.id))?;
        let (code, msg) = match std::mem::take(&mut raw.error) {
            Nested::Value(err) => (err.code, err.msg),
            Nested::Absent => (std::mem::take(&mut raw.code), std::mem::take(&mut raw.msg)),
            Nested::Wrong(found) => {
                return Err(DecodeError::WrongType { kind: KIND, field: "error", expected: "an object", found });
            }
        };
        return Ok(Frame::Error { id, code: int(KIND, "code", code)?, msg: string(KIND, "msg", msg)? });
    }
    if !raw.result.is_absent() {
        const KIND: &str = "response";
        let id = u64_field(KIND, "id", std::mem::take(&mut raw.id))?;
        let result = match std::mem::take(&mut raw.result) {
            Val::Null => ResponseResult::Null,
            Val::Bool(b) => ResponseResult::Bool(b),
            Val::Strings(s) => ResponseResult::Streams(s),
            Val::Levels(l) if l.is_empty() => ResponseResult::Streams(Vec::new()),
            other => {
                return Err(DecodeError::WrongType {
                    kind: KIND,
                    field: "result",
                    expected: "null, a boolean or a list of stream names",
                    found: other.json_type(),
                });
            }
        };
        return Ok(Frame::Response { id, result });
    }
    if let Val::Str(e) = &raw.e
        && e == "serverShutdown"
    {
        let event_time = u64_field("serverShutdown", "E", std::mem::take(&mut raw.E))?;
        return Ok(Frame::ServerShutdown { event_time });
    }
    if is_market(&raw) {
        let event = market(raw, None)?;
        return Ok(Frame::Market { stream: stream_name(&event).into(), event });
    }
    Err(DecodeError::Unrecognized)
}

/// The symbol part of a stream name, upper case (`bnbbtc@depth5` -> `BNBBTC`).
fn symbol_of(stream: &str) -> Name {
    stream.split('@').next().unwrap_or("").to_ascii_uppercase().into()
}

/// The market event in `raw` (the `data` of an envelope, or a raw frame).
fn market(raw: RawFrame<'_>, stream: Option<&str>) -> Result<MarketEvent, DecodeError> {
    let kind = match &raw.e {
        Val::Str(e) => match e.as_ref() {
            "aggTrade" => agg_trade,
            "trade" => trade,
            "kline" => kline,
            "depthUpdate" => depth,
            "bookTicker" => book_ticker,
            "24hrTicker" => return ticker(raw, "24hrTicker"),
            "1hTicker" => return ticker(raw, "1hTicker"),
            "4hTicker" => return ticker(raw, "4hTicker"),
            "1dTicker" => return ticker(raw, "1dTicker"),
            "24hrMiniTicker" => mini_ticker,
            other => return Err(DecodeError::UnknownEvent(other.chars().take(64).collect())),
        },
        Val::Absent if !raw.last_update_id.is_absent() => return partial_depth(raw, stream),
        Val::Absent if !raw.u.is_absent() => book_ticker,
        Val::Absent => return Err(DecodeError::Unrecognized),
        other => {
            return Err(DecodeError::WrongType {
                kind: "market event",
                field: "e",
                expected: "an event type string",
                found: other.json_type(),
            });
        }
    };
    kind(raw)
}

fn agg_trade(r: RawFrame<'_>) -> Result<MarketEvent, DecodeError> {
    const K: &str = "aggTrade";
    Ok(MarketEvent::AggTrade(AggTrade {
        symbol: string(K, "s", r.s)?.into(),
        event_time: u64_field(K, "E", r.E)?,
        agg_id: u64_field(K, "a", r.a)?,
        price: decimal(K, "p", &r.p)?,
        quantity: decimal(K, "q", &r.q)?,
        first_trade_id: u64_field(K, "f", r.f)?,
        last_trade_id: u64_field(K, "l", r.l)?,
        trade_time: u64_field(K, "T", r.T)?,
        buyer_is_maker: boolean(K, "m", r.m)?,
    }))
}

fn trade(r: RawFrame<'_>) -> Result<MarketEvent, DecodeError> {
    const K: &str = "trade";
    Ok(MarketEvent::Trade(Trade {
        symbol: string(K, "s", r.s)?.into(),
        event_time: u64_field(K, "E", r.E)?,
        trade_id: u64_field(K, "t", r.t)?,
        price: decimal(K, "p", &r.p)?,
        quantity: decimal(K, "q", &r.q)?,
        trade_time: u64_field(K, "T", r.T)?,
        buyer_is_maker: boolean(K, "m", r.m)?,
    }))
}

fn kline(r: RawFrame<'_>) -> Result<MarketEvent, DecodeError> {
    const K: &str = "kline";
    let symbol = string(K, "s", r.s)?.into();
    let event_time = u64_field(K, "E", r.E)?;
    let k: RawKline<'_> = match r.k {
        Nested::Value(k) => k,
        Nested::Absent => return Err(DecodeError::MissingField { kind: K, field: "k" }),
        Nested::Wrong(found) => {
            return Err(DecodeError::WrongType { kind: K, field: "k", expected: "an object", found });
        }
    };
    Ok(MarketEvent::Kline(Box::new(Kline {
        symbol,
        event_time,
        open_time: u64_field(K, "k.t", k.t)?,
        close_time: u64_field(K, "k.T", k.T)?,
        interval: string(K, "k.i", k.i)?,
        first_trade_id: int(K, "k.f", k.f)?,
        last_trade_id: int(K, "k.L", k.L)?,
        open: decimal(K, "k.o", &k.o)?,
        high: decimal(K, "k.h", &k.h)?,
        low: decimal(K, "k.l", &k.l)?,
        close: decimal(K, "k.c", &k.c)?,
        volume: decimal(K, "k.v", &k.v)?,
        quote_volume: decimal(K, "k.q", &k.q)?,
        taker_buy_volume: decimal(K, "k.V", &k.V)?,
        taker_buy_quote_volume: decimal(K, "k.Q", &k.Q)?,
        trades: u64_field(K, "k.n", k.n)?,
        is_closed: boolean(K, "k.x", k.x)?,
    })))
}

fn depth(r: RawFrame<'_>) -> Result<MarketEvent, DecodeError> {
    const K: &str = "depthUpdate";
    Ok(MarketEvent::Depth(DepthUpdate::new(
        string(K, "s", r.s)?,
        u64_field(K, "E", r.E)?,
        u64_field(K, "U", r.U)?,
        u64_field(K, "u", r.u)?,
        levels(K, "b", r.b)?,
        levels(K, "a", r.a)?,
    )))
}

fn book_ticker(r: RawFrame<'_>) -> Result<MarketEvent, DecodeError> {
    const K: &str = "bookTicker";
    Ok(MarketEvent::BookTicker(BookTicker {
        symbol: string(K, "s", r.s)?.into(),
        update_id: u64_field(K, "u", r.u)?,
        best_bid_price: decimal(K, "b", &r.b)?,
        best_bid_qty: decimal(K, "B", &r.B)?,
        best_ask_price: decimal(K, "a", &r.a)?,
        best_ask_qty: decimal(K, "A", &r.A)?,
        event_time: optional_u64(K, "E", r.E)?,
    }))
}

/// A ticker of event type `k` (`24hrTicker`, `1hTicker`, `4hTicker`, `1dTicker`). The fields only the 24 h
/// ticker has are read only for it (in a rolling-window ticker they are ignored like any unknown key).
fn ticker(r: RawFrame<'_>, k: &'static str) -> Result<MarketEvent, DecodeError> {
    ticker_fields(r, k).map(|t| MarketEvent::Ticker(Box::new(t)))
}

/// [`ticker`]'s fields (also an element of an all-market array).
fn ticker_fields(r: RawFrame<'_>, k: &'static str) -> Result<Ticker, DecodeError> {
    let symbol = string(k, "s", r.s)?.into();
    let event_time = u64_field(k, "E", r.E)?;
    let price_change = decimal(k, "p", &r.p)?;
    let price_change_percent = decimal(k, "P", &r.P)?;
    let weighted_avg_price = decimal(k, "w", &r.w)?;
    let window = match k {
        "1hTicker" => TickerWindow::Rolling1h,
        "4hTicker" => TickerWindow::Rolling4h,
        "1dTicker" => TickerWindow::Rolling1d,
        _ => TickerWindow::Rolling24h(TickerExtras {
            prev_price: decimal(k, "x", &r.x)?,
            last_quantity: decimal(k, "Q", &r.Q)?,
            best_bid_price: decimal(k, "b", &r.b)?,
            best_bid_qty: decimal(k, "B", &r.B)?,
            best_ask_price: decimal(k, "a", &r.a)?,
            best_ask_qty: decimal(k, "A", &r.A)?,
        }),
    };
    Ok(Ticker {
        symbol,
        event_time,
        window,
        price_change,
        price_change_percent,
        weighted_avg_price,
        last_price: decimal(k, "c", &r.c)?,
        open: decimal(k, "o", &r.o)?,
        high: decimal(k, "h", &r.h)?,
        low: decimal(k, "l", &r.l)?,
        volume: decimal(k, "v", &r.v)?,
        quote_volume: decimal(k, "q", &r.q)?,
        open_time: u64_field(k, "O", r.O)?,
        close_time: u64_field(k, "C", r.C)?,
        first_trade_id: int(k, "F", r.F)?,
        last_trade_id: int(k, "L", r.L)?,
        trades: u64_field(k, "n", r.n)?,
    })
}

fn mini_ticker(r: RawFrame<'_>) -> Result<MarketEvent, DecodeError> {
    mini_ticker_fields(r).map(|t| MarketEvent::MiniTicker(Box::new(t)))
}

/// [`mini_ticker`]'s fields (also an element of `!miniTicker@arr`).
fn mini_ticker_fields(r: RawFrame<'_>) -> Result<MiniTicker, DecodeError> {
    const K: &str = "24hrMiniTicker";
    Ok(MiniTicker {
        symbol: string(K, "s", r.s)?.into(),
        event_time: u64_field(K, "E", r.E)?,
        close: decimal(K, "c", &r.c)?,
        open: decimal(K, "o", &r.o)?,
        high: decimal(K, "h", &r.h)?,
        low: decimal(K, "l", &r.l)?,
        volume: decimal(K, "v", &r.v)?,
        quote_volume: decimal(K, "q", &r.q)?,
    })
}

fn partial_depth(r: RawFrame<'_>, stream: Option<&str>) -> Result<MarketEvent, DecodeError> {
    const K: &str = "partial depth";
    Ok(MarketEvent::PartialDepth(PartialDepth {
        symbol: stream.map(symbol_of).unwrap_or_default(),
        last_update_id: u64_field(K, "lastUpdateId", r.last_update_id)?,
        bids: levels(K, "bids", r.bids)?,
        asks: levels(K, "asks", r.asks)?,
    }))
}

fn missing_or_wrong(kind: &'static str, field: &'static str, expected: &'static str, v: &Val<'_>) -> DecodeError {
    match v {
        Val::Absent => DecodeError::MissingField { kind, field },
        other => DecodeError::WrongType { kind, field, expected, found: other.json_type() },
    }
}

fn u64_field(kind: &'static str, field: &'static str, v: Val<'_>) -> Result<u64, DecodeError> {
    match v {
        Val::U64(n) => Ok(n),
        other => Err(missing_or_wrong(kind, field, "an unsigned integer", &other)),
    }
}

fn optional_u64(kind: &'static str, field: &'static str, v: Val<'_>) -> Result<Option<u64>, DecodeError> {
    match v {
        Val::Absent | Val::Null => Ok(None),
        other => u64_field(kind, field, other).map(Some),
    }
}

fn int(kind: &'static str, field: &'static str, v: Val<'_>) -> Result<i64, DecodeError> {
    match v {
        Val::I64(n) => Ok(n),
        Val::U64(n) => i64::try_from(n).map_err(|_| DecodeError::WrongType {
            kind,
            field,
            expected: "an integer within i64",
            found: "a larger integer",
        }),
        other => Err(missing_or_wrong(kind, field, "an integer", &other)),
    }
}

fn boolean(kind: &'static str, field: &'static str, v: Val<'_>) -> Result<bool, DecodeError> {
    match v {
        Val::Bool(b) => Ok(b),
        other => Err(missing_or_wrong(kind, field, "a boolean", &other)),
    }
}

fn string(kind: &'static str, field: &'static str, v: Val<'_>) -> Result<String, DecodeError> {
    match v {
        Val::Str(s) => Ok(s.into_owned()),
        other => Err(missing_or_wrong(kind, field, "a string", &other)),
    }
}

fn decimal(kind: &'static str, field: &'static str, v: &Val<'_>) -> Result<Decimal, DecodeError> {
    match v {
        Val::Str(s) => Decimal::parse(s).map_err(|reason| DecodeError::BadDecimal {
            kind,
            field,
            value: s.chars().take(64).collect(),
            reason,
        }),
        other => Err(missing_or_wrong(kind, field, "a decimal string", other)),
    }
}

fn levels(kind: &'static str, field: &'static str, v: Val<'_>) -> Result<Vec<Level>, DecodeError> {
    match v {
        Val::Levels(l) => Ok(l),
        Val::BadArray(reason) => Err(DecodeError::BadLevels { kind, field, reason }),
        Val::Strings(_) => {
            Err(DecodeError::BadLevels { kind, field, reason: "a list of strings, expected [price, qty] pairs".into() })
        }
        other => Err(missing_or_wrong(kind, field, "a list of [price, qty] pairs", &other)),
    }
}

#[cfg(test)]
mod tests;
