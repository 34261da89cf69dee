//! The fast path of [`super::decode`] for the frames that make up nearly all traffic: a market
//! event exactly as Binance formats it, `{"stream":"<name>","data":{...}}` or `{"e":"<type>",...}`.
//!
//! The event type is read off the stream name (or the leading `"e"`) without parsing, then serde
//! fills a plain typed struct for that one event type. Anything unusual (other key order, escapes
//! in the stream name, a missing or mistyped field) returns `None` and the general path in `super`
//! decodes the frame and names what is wrong. The contract, checked by a property test: whenever
//! this returns `Some(frame)`, the general path returns `Ok(frame)` for the same text (up to frames
//! that repeat a key which the event type does not use, which only the general path rejects).

use super::raw::Val;
use super::{
    AggTrade, BookTicker, Decimal, DepthUpdate, Frame, Kline, Level, MarketEvent, PartialDepth, Trade, stream_name,
    symbol_of,
};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Clone, Copy)]
enum Kind {
    AggTrade,
    Trade,
    Kline,
    Depth,
    BookTicker,
    PartialDepth,
}

/// The event type a stream carries, from its name (`btcusdt@depth5@100ms` -> partial depth).
fn kind_of_stream(stream: &str) -> Option<Kind> {
    let (_, rest) = stream.split_once('@')?;
    let name = rest.split('@').next()?;
    Some(match name {
        "aggTrade" => Kind::AggTrade,
        "trade" => Kind::Trade,
        "bookTicker" => Kind::BookTicker,
        "depth" => Kind::Depth,
        "depth5" | "depth10" | "depth20" => Kind::PartialDepth,
        _ if name.starts_with("kline_") => Kind::Kline,
        _ => return None,
    })
}

fn kind_of_event(e: &str) -> Option<Kind> {
    Some(match e {
        "aggTrade" => Kind::AggTrade,
        "trade" => Kind::Trade,
        "kline" => Kind::Kline,
        "depthUpdate" => Kind::Depth,
        _ => return None,
    })
}

/// The text between the quotes opened at the start of `rest`, if it has no escapes.
fn plain_string(rest: &str) -> Option<&str> {
    let end = rest.find('"')?;
    let s = &rest[..end];
    (!s.contains('\\')).then_some(s)
}

pub(super) fn try_decode(text: &str) -> Option<Frame> {
    if let Some(rest) = text.strip_prefix("{\"stream\":\"") {
        let stream = plain_string(rest)?;
        let kind = kind_of_stream(stream)?;
        let event = match kind {
            Kind::AggTrade => serde_json::from_str::<Envelope<'_, Agg<'_>>>(text).ok()?.data.event()?,
            Kind::Trade => serde_json::from_str::<Envelope<'_, Trd<'_>>>(text).ok()?.data.event()?,
            Kind::Kline => serde_json::from_str::<Envelope<'_, Kln<'_>>>(text).ok()?.data.event()?,
            Kind::Depth => serde_json::from_str::<Envelope<'_, Dpt<'_>>>(text).ok()?.data.event()?,
            Kind::BookTicker => serde_json::from_str::<Envelope<'_, Book<'_>>>(text).ok()?.data.event()?,
            Kind::PartialDepth => serde_json::from_str::<Envelope<'_, Partial<'_>>>(text).ok()?.data.event(stream)?,
        };
        return Some(Frame::Market { stream: stream.to_owned(), event });
    }
    if let Some(rest) = text.strip_prefix("{\"e\":\"") {
        // The general path reads a frame with any of these keys as an envelope, reply or error reply
        // first; leave such oddities (and escaped keys, which might spell them) to it.
        const OTHER_KEYS: [&str; 5] = ["\"stream\"", "\"data\"", "\"result\"", "\"error\"", "\"code\""];
        if text.contains('\\') || OTHER_KEYS.iter().any(|k| text.contains(k)) {
            return None;
        }
        let event = match kind_of_event(plain_string(rest)?)? {
            Kind::AggTrade => serde_json::from_str::<Agg<'_>>(text).ok()?.event()?,
            Kind::Trade => serde_json::from_str::<Trd<'_>>(text).ok()?.event()?,
            Kind::Kline => serde_json::from_str::<Kln<'_>>(text).ok()?.event()?,
            Kind::Depth => serde_json::from_str::<Dpt<'_>>(text).ok()?.event()?,
            Kind::BookTicker | Kind::PartialDepth => return None,
        };
        return Some(Frame::Market { stream: stream_name(&event), event });
    }
    None
}

#[derive(Deserialize)]
struct Envelope<'a, T> {
    // Checked by the caller; present here so that a duplicate "stream" key fails as in the general path.
    #[serde(borrow, rename = "stream")]
    _stream: Cow<'a, str>,
    data: T,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Agg<'a> {
    #[serde(borrow)]
    e: Cow<'a, str>,
    E: u64,
    #[serde(borrow)]
    s: Cow<'a, str>,
    a: u64,
    p: Decimal,
    q: Decimal,
    f: u64,
    l: u64,
    T: u64,
    m: bool,
}

impl Agg<'_> {
    fn event(self) -> Option<MarketEvent> {
        (self.e == "aggTrade").then(|| {
            MarketEvent::AggTrade(AggTrade {
                symbol: self.s.into_owned(),
                event_time: self.E,
                agg_id: self.a,
                price: self.p,
                quantity: self.q,
                first_trade_id: self.f,
                last_trade_id: self.l,
                trade_time: self.T,
                buyer_is_maker: self.m,
            })
        })
    }
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Trd<'a> {
    #[serde(borrow)]
    e: Cow<'a, str>,
    E: u64,
    #[serde(borrow)]
    s: Cow<'a, str>,
    t: u64,
    p: Decimal,
    q: Decimal,
    T: u64,
    m: bool,
}

impl Trd<'_> {
    fn event(self) -> Option<MarketEvent> {
        (self.e == "trade").then(|| {
            MarketEvent::Trade(Trade {
                symbol: self.s.into_owned(),
                event_time: self.E,
                trade_id: self.t,
                price: self.p,
                quantity: self.q,
                trade_time: self.T,
                buyer_is_maker: self.m,
            })
        })
    }
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Kln<'a> {
    #[serde(borrow)]
    e: Cow<'a, str>,
    E: u64,
    #[serde(borrow)]
    s: Cow<'a, str>,
    #[serde(borrow)]
    k: KlnBody<'a>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct KlnBody<'a> {
    t: u64,
    T: u64,
    #[serde(borrow)]
    i: Cow<'a, str>,
    f: i64,
    L: i64,
    o: Decimal,
    c: Decimal,
    h: Decimal,
    l: Decimal,
    v: Decimal,
    n: u64,
    x: bool,
    q: Decimal,
    V: Decimal,
    Q: Decimal,
}

impl Kln<'_> {
    fn event(self) -> Option<MarketEvent> {
        let k = self.k;
        (self.e == "kline").then(|| {
            MarketEvent::Kline(Kline {
                symbol: self.s.into_owned(),
                event_time: self.E,
                open_time: k.t,
                close_time: k.T,
                interval: k.i.into_owned(),
                first_trade_id: k.f,
                last_trade_id: k.L,
                open: k.o,
                high: k.h,
                low: k.l,
                close: k.c,
                volume: k.v,
                quote_volume: k.q,
                taker_buy_volume: k.V,
                taker_buy_quote_volume: k.Q,
                trades: k.n,
                is_closed: k.x,
            })
        })
    }
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Dpt<'a> {
    #[serde(borrow)]
    e: Cow<'a, str>,
    E: u64,
    #[serde(borrow)]
    s: Cow<'a, str>,
    U: u64,
    u: u64,
    b: Vec<Level>,
    a: Vec<Level>,
}

impl Dpt<'_> {
    fn event(self) -> Option<MarketEvent> {
        (self.e == "depthUpdate").then(|| {
            MarketEvent::Depth(DepthUpdate {
                symbol: self.s.into_owned(),
                event_time: self.E,
                first_update_id: self.U,
                final_update_id: self.u,
                bids: self.b,
                asks: self.a,
            })
        })
    }
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Book<'a> {
    #[serde(default, borrow)]
    e: Val<'a>,
    /// Must be absent: with it, the general path reads a partial depth frame.
    #[serde(default, borrow, rename = "lastUpdateId")]
    last_update_id: Val<'a>,
    #[serde(default)]
    E: Option<u64>,
    #[serde(borrow)]
    s: Cow<'a, str>,
    u: u64,
    b: Decimal,
    B: Decimal,
    a: Decimal,
    A: Decimal,
}

impl Book<'_> {
    fn event(self) -> Option<MarketEvent> {
        let plain = match &self.e {
            Val::Absent => self.last_update_id.is_absent(),
            Val::Str(e) => e == "bookTicker",
            _ => false,
        };
        plain.then(|| {
            MarketEvent::BookTicker(BookTicker {
                symbol: self.s.into_owned(),
                update_id: self.u,
                best_bid_price: self.b,
                best_bid_qty: self.B,
                best_ask_price: self.a,
                best_ask_qty: self.A,
                event_time: self.E,
            })
        })
    }
}

#[derive(Deserialize)]
struct Partial<'a> {
    /// Must be absent: with it, the general path reads the event type from it.
    #[serde(default, borrow)]
    e: Val<'a>,
    #[serde(rename = "lastUpdateId")]
    last_update_id: u64,
    bids: Vec<Level>,
    asks: Vec<Level>,
}

impl Partial<'_> {
    fn event(self, stream: &str) -> Option<MarketEvent> {
        self.e.is_absent().then(|| {
            MarketEvent::PartialDepth(PartialDepth {
                symbol: symbol_of(stream),
                last_update_id: self.last_update_id,
                bids: self.bids,
                asks: self.asks,
            })
        })
    }
}
