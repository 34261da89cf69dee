//! The model exchange's market: streams whose events are Binance frames, so that the real decoder
//! in `keel_core::protocol` runs on them.
//!
//! aggTrade ids advance with market time whether or not anyone is connected (that is what makes a
//! reconnect show a gap), and every field of a trade is a pure function of its id, so the checker
//! can verify a delivered event without storing what was sent.
//!
//! A depth stream (`<symbol>@depth@100ms`) keeps a model order book: each diff (continuous `U`/`u`)
//! sets a few levels, its content a pure function of its update id; the book's recent states are
//! kept by update id so that the checker can compare the client's book with the model's at the
//! client's `last_update_id`, and REST snapshots are served from the current state.

use std::collections::VecDeque;

/// What a market stream produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `<symbol>@aggTrade`: sequenced by `a` (and `f`/`l`).
    AggTrade,
    /// `<symbol>@trade`: sequenced by `t`; its fields are the same functions of `t` as an aggTrade's
    /// of `a` ([`trade_fields`]).
    Trade,
    /// `<symbol>@kline_1m`: sequenced by the recovery machine by open time (closed klines only).
    Kline,
    /// `<symbol>@depth` / `@depth@100ms`: diffs of the model book, sequenced by `U`/`u`.
    Depth,
    /// `<symbol>@ticker` (24hrTicker): unsequenced; its `L` counts the stream's tickers and its
    /// last price is [`ticker_price`] of that count, so the checker can verify what arrived.
    Ticker,
    /// `<symbol>@miniTicker` (24hrMiniTicker): unsequenced; its volume is the count, its close
    /// [`ticker_price`] of it.
    MiniTicker,
}

impl StreamKind {
    /// A stream of trades numbered one by one (aggTrade `a`, trade `t`): ids advance while no one
    /// listens, faults lose, duplicate, reorder and restart them, and the checker demands each id once.
    pub fn is_trades(self) -> bool {
        matches!(self, StreamKind::AggTrade | StreamKind::Trade)
    }
}

/// Trades (aggTrade or trade) whose time and id a market remembers.
pub const RECENT_IDS: usize = 1024;

/// Model book states kept for the checker (the client's book is at most a few diffs behind).
pub const BOOK_HISTORY: usize = 256;

/// Levels per side of the model book.
pub const LEVELS: usize = 10;

/// A model order book: level -> quantity in thousandths. Bid level `i` is price `30000 - i`, ask
/// level `i` is `30000 + i` (1..=10 each side). Fixed arrays rather than maps: the model keeps a
/// copy per diff for the checker ([`BOOK_HISTORY`]), and copying two arrays is a `memcpy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BookState {
    /// Quantity of bid level `i + 1` (0: no such level).
    bids: [u64; LEVELS],
    /// Quantity of ask level `i + 1` (0: no such level).
    asks: [u64; LEVELS],
}

impl BookState {
    /// `(level, quantity)` of the bids, best (level 1) first.
    pub fn bids(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        levels(&self.bids)
    }

    /// `(level, quantity)` of the asks, best (level 1) first.
    pub fn asks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        levels(&self.asks)
    }

    /// Sets `level` (1..=[`LEVELS`]) of one side to `q` (0 removes it).
    fn set(&mut self, ask: bool, level: u64, q: u64) {
        let side = if ask { &mut self.asks } else { &mut self.bids };
        if let Some(slot) = (level as usize).checked_sub(1).and_then(|i| side.get_mut(i)) {
            *slot = q;
        }
    }
}

fn levels(side: &[u64; LEVELS]) -> impl Iterator<Item = (u64, u64)> + '_ {
    side.iter().enumerate().filter(|(_, q)| **q != 0).map(|(i, &q)| (i as u64 + 1, q))
}

/// The model book of one depth stream and its recent history.
#[derive(Debug, Clone)]
pub struct DepthModel {
    /// `u` of the last diff (the book's update id).
    pub last_id: u64,
    /// The current book.
    pub state: BookState,
    /// `(update id, book)` of the last [`BOOK_HISTORY`] states.
    pub history: VecDeque<(u64, BookState)>,
}

fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl DepthModel {
    fn new(first_id: u64) -> DepthModel {
        let mut state = BookState::default();
        for level in 1..=5 {
            state.set(false, level, 100 * level);
            state.set(true, level, 90 * level);
        }
        let mut history = VecDeque::new();
        history.push_back((first_id, state.clone()));
        DepthModel { last_id: first_id, state, history }
    }

    /// The next diff: `(U, u, bid changes, ask changes)`, applied to the model.
    #[allow(clippy::type_complexity)]
    fn step(&mut self) -> (u64, u64, Vec<(u64, u64)>, Vec<(u64, u64)>) {
        let first = self.last_id + 1;
        let h = mix64(first);
        let last = first + h % 3; // one diff may cover several update ids
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        for k in 0..1 + (h >> 2) % 3 {
            let r = mix64(h ^ (k + 1));
            let ask = r & 1 == 1;
            let level = 1 + (r >> 1) % LEVELS as u64;
            let q = if (r >> 8).is_multiple_of(4) { 0 } else { 1 + (r >> 12) % 5_000 };
            self.state.set(ask, level, q);
            let list = if ask { &mut asks } else { &mut bids };
            list.retain(|&(l, _)| l != level);
            list.push((level, q));
        }
        self.last_id = last;
        if self.history.len() == BOOK_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((last, self.state.clone()));
        (first, last, bids, asks)
    }

    /// The book as it was at update id `id`, if still in the history.
    pub fn at(&self, id: u64) -> Option<&BookState> {
        let i = self.history.partition_point(|(u, _)| *u < id);
        self.history.get(i).filter(|(u, _)| *u == id).map(|(_, b)| b)
    }

    /// The `/api/v3/depth` body of the current book (best levels first).
    pub fn snapshot_body(&self) -> String {
        self.state.body(self.last_id)
    }
}

impl BookState {
    /// The `/api/v3/depth` body of this book at update id `id` (best levels first).
    pub fn body(&self, id: u64) -> String {
        let mut out = String::with_capacity(64 + 24 * 2 * LEVELS);
        out.push_str(r#"{"lastUpdateId":"#);
        push_u64(&mut out, id);
        out.push_str(r#","bids":["#);
        push_levels(&mut out, false, self.bids());
        out.push_str(r#"],"asks":["#);
        push_levels(&mut out, true, self.asks());
        out.push_str("]}");
        out
    }
}

/// Appends `["price","qty"]` pairs, comma-separated.
fn push_levels(out: &mut String, ask: bool, levels: impl Iterator<Item = (u64, u64)>) {
    for (i, (level, q)) in levels.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("[\"");
        push_u64(out, if ask { 30_000 + level } else { 30_000 - level });
        out.push_str(".00\",\"");
        push_u64(out, q / 1000);
        out.push('.');
        push_padded(out, q % 1000, 3);
        out.push_str("\"]");
    }
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
    /// The id the next trade (aggTrade `a`, trade `t`) or depth diff gets.
    pub next_id: u64,
    /// The first id of the current numbering (the ids restart far below it on an `IdRestart`).
    pub first_id: u64,
    /// `(time, id)` of the last [`RECENT_IDS`] trades, oldest first (for the restart liveness check).
    pub recent: VecDeque<(u64, u64)>,
    /// When the next event happens.
    pub next_at: u64,
    /// No events before this (a quiet market).
    pub quiet_until: u64,
    /// The model book of a depth stream.
    pub book: Option<DepthModel>,
}

impl Market {
    /// A market for `stream` whose first event happens at `first_at`; `None` for streams the model
    /// does not produce.
    pub fn new(stream: &str, first_id: u64, first_at: u64) -> Option<Market> {
        let (symbol, kind) = stream.split_once('@')?;
        let kind = match kind {
            "aggTrade" => StreamKind::AggTrade,
            "trade" => StreamKind::Trade,
            "kline_1m" => StreamKind::Kline,
            "depth" | "depth@100ms" => StreamKind::Depth,
            "ticker" => StreamKind::Ticker,
            "miniTicker" => StreamKind::MiniTicker,
            _ => return None,
        };
        Some(Market {
            stream: stream.to_string(),
            symbol: symbol.to_ascii_uppercase(),
            kind,
            next_id: first_id,
            first_id,
            recent: VecDeque::new(),
            next_at: first_at,
            quiet_until: 0,
            book: (kind == StreamKind::Depth).then(|| DepthModel::new(first_id)),
        })
    }

    /// The ids start again at `first` (a trade stream; the caller picks it far below the current
    /// numbering's first id, so that every numbering's ids are disjoint).
    pub fn restart_numbering(&mut self, first: u64) {
        self.first_id = first;
        self.next_id = first;
    }

    /// `{"stream":"<stream>","data":{"e":"<event>","E":<epoch_ms>,"s":"<SYMBOL>`, with room for `rest` more bytes.
    fn frame_head(&self, event: &str, epoch_ms: u64, rest: usize) -> String {
        let mut f = String::with_capacity(48 + self.stream.len() + self.symbol.len() + rest);
        f.push_str(r#"{"stream":""#);
        f.push_str(&self.stream);
        f.push_str(r#"","data":{"e":""#);
        f.push_str(event);
        f.push_str(r#"","E":"#);
        push_u64(&mut f, epoch_ms);
        f.push_str(r#","s":""#);
        f.push_str(&self.symbol);
        f
    }

    /// The first sequence id the next event carries (a trade's id, a depth diff's `U`; its last is
    /// what [`Self::next_frame`] returns), or `None` for streams without one.
    pub fn next_seq(&self) -> Option<u64> {
        match self.kind {
            StreamKind::AggTrade | StreamKind::Trade => Some(self.next_id),
            StreamKind::Depth => self.book.as_ref().map(|b| b.last_id + 1),
            StreamKind::Ticker | StreamKind::MiniTicker | StreamKind::Kline => None,
        }
    }

    /// The event happening now, with no listener: advances the ids (and the model book) exactly as
    /// [`Self::next_frame`] does, without writing the frame. Returns the same id.
    pub fn skip_event(&mut self) -> Option<u64> {
        match self.kind {
            StreamKind::AggTrade | StreamKind::Trade => {
                let a = self.next_id;
                self.next_id += 1;
                Some(a)
            }
            StreamKind::Depth => self.book.as_mut().map(|book| book.step().1),
            StreamKind::Ticker | StreamKind::MiniTicker => {
                // The count goes on while no one listens, as the statistics would.
                self.next_id += 1;
                None
            }
            StreamKind::Kline => None,
        }
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
                let mut f = self.frame_head("aggTrade", epoch_ms, 96);
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
            StreamKind::Trade => {
                let t = self.next_id;
                self.next_id += 1;
                // Binance's trade event (the protocol's sample frame), fields as for an aggTrade.
                let mut f = self.frame_head("trade", epoch_ms, 80);
                f.push_str(r#"","t":"#);
                push_u64(&mut f, t);
                f.push_str(r#","p":""#);
                push_u64(&mut f, 30_000 + t % 997);
                f.push('.');
                push_padded(&mut f, t % 100, 2);
                f.push_str(r#"","q":"0."#);
                push_padded(&mut f, 1 + t % 999, 3);
                f.push_str(r#"","T":"#);
                push_u64(&mut f, epoch_ms);
                f.push_str(if t.is_multiple_of(2) { r#","m":true,"M":true}}"# } else { r#","m":false,"M":true}}"# });
                (f, Some(t))
            }
            StreamKind::Depth => {
                let Some(book) = self.book.as_mut() else { return (String::new(), None) };
                let (first, last, bids, asks) = book.step();
                let mut frame = self.frame_head("depthUpdate", epoch_ms, 80 + 24 * (bids.len() + asks.len()));
                frame.push_str(r#"","U":"#);
                push_u64(&mut frame, first);
                frame.push_str(r#","u":"#);
                push_u64(&mut frame, last);
                frame.push_str(r#","b":["#);
                push_levels(&mut frame, false, bids.into_iter());
                frame.push_str(r#"],"a":["#);
                push_levels(&mut frame, true, asks.into_iter());
                frame.push_str("]}}");
                (frame, Some(last))
            }
            StreamKind::Kline => {
                let open = epoch_ms / 60_000 * 60_000;
                let frame = format!(
                    r#"{{"stream":"{}","data":{{"e":"kline","E":{epoch_ms},"s":"{s}","k":{{"t":{open},"T":{close},"s":"{s}","i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":{closed},"q":"1.0000","V":"500","Q":"0.500","B":"0"}}}}}}"#,
                    self.stream,
                    s = self.symbol,
                    close = open + 59_999,
                    // The updates of the interval's last second are its final ones (Binance sends one
                    // with x=true at the close); a minute without one is found by its open time and
                    // backfilled over REST.
                    closed = epoch_ms % 60_000 >= 59_000,
                );
                (frame, None)
            }
            StreamKind::Ticker => {
                let n = self.next_id;
                self.next_id += 1;
                let price = ticker_price(n);
                let frame = format!(
                    r#"{{"stream":"{}","data":{{"e":"24hrTicker","E":{epoch_ms},"s":"{s}","p":"-1.50","P":"-0.005","w":"{price}","x":"{price}","c":"{price}","Q":"0.010","b":"{price}","B":"1.000","a":"{price}","A":"2.000","o":"{price}","h":"{price}","l":"{price}","v":"{n}.0","q":"{n}.00","O":{open},"C":{epoch_ms},"F":-1,"L":{n},"n":{n}}}}}"#,
                    self.stream,
                    s = self.symbol,
                    open = epoch_ms.saturating_sub(86_400_000),
                );
                (frame, None)
            }
            StreamKind::MiniTicker => {
                let n = self.next_id;
                self.next_id += 1;
                let price = ticker_price(n);
                let frame = format!(
                    r#"{{"stream":"{}","data":{{"e":"24hrMiniTicker","E":{epoch_ms},"s":"{s}","c":"{price}","o":"{price}","h":"{price}","l":"{price}","v":"{n}","q":"{n}.00"}}}}"#,
                    self.stream,
                    s = self.symbol,
                );
                (frame, None)
            }
        }
    }
}

/// The last price of the `n`th ticker of a stream.
pub fn ticker_price(n: u64) -> String {
    format!("{}.{:02}", 30_000 + n % 991, n % 97)
}

/// Appends the decimal digits of `n`.
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `n` left-padded with zeros to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Price and quantity of aggTrade `a` (or trade `t`), as the decimal strings Binance sends.
pub fn agg_trade_fields(a: u64) -> (String, String) {
    (format!("{}.{:02}", 30_000 + a % 997, a % 100), format!("0.{:03}", 1 + a % 999))
}

/// A trade's price and quantity as (mantissa, scale), and whether the buyer was the maker.
pub type TradeFields = ((u64, u8), (u64, u8), bool);

/// What the checker demands of trade `id` (aggTrade `a`, trade `t`) as decoded: price and quantity as
/// (mantissa, scale), and the maker side; [`agg_trade_fields`] wrote them.
pub fn trade_fields(id: u64) -> TradeFields {
    (((30_000 + id % 997) * 100 + id % 100, 2), (1 + id % 999, 3), id.is_multiple_of(2))
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
    fn ticker_frames_decode_and_carry_their_count() {
        use keel_core::protocol::{Frame, MarketEvent, decode};
        for stream in ["btcusdt@ticker", "ethusdt@miniTicker"] {
            let mut m = Market::new(stream, 7, 0).unwrap();
            assert_eq!(m.skip_event(), None);
            let (frame, id) = m.next_frame(1_700_000_000_000);
            assert_eq!(id, None, "unsequenced");
            let Ok(Frame::Market { stream: s, event }) = decode(&frame) else { panic!("{frame}") };
            assert_eq!(s, stream);
            let (count, price) = match event {
                MarketEvent::Ticker(t) => (t.last_trade_id as u64, t.last_price),
                MarketEvent::MiniTicker(t) => (t.volume.to_string().parse().unwrap(), t.close),
                other => panic!("{other:?}"),
            };
            assert_eq!((count, price.to_string()), (8, ticker_price(8)), "{frame}");
        }
    }

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
    fn trade_frames_are_binance_trades_with_the_fields_of_their_id() {
        use keel_core::protocol::{Frame, MarketEvent, decode};
        let mut m = Market::new("btcusdt@trade", 41, 0).unwrap();
        assert_eq!(m.kind, StreamKind::Trade);
        let (f1, t1) = m.next_frame(1_700_000_000_000);
        assert_eq!(t1, Some(41));
        assert_eq!(
            f1,
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":41,"p":"30041.41","q":"0.042","T":1700000000000,"m":false,"M":true}}"#
        );
        assert_eq!(m.skip_event(), Some(42));
        for t in [43u64, 99, 100, 997, 12_345, 1 << 40] {
            m.next_id = t;
            let (frame, id) = m.next_frame(1_700_000_000_123);
            let Ok(Frame::Market { stream, event: MarketEvent::Trade(trade) }) = decode(&frame) else {
                panic!("{frame}")
            };
            assert_eq!((stream.as_str(), id, trade.trade_id), ("btcusdt@trade", Some(t), t));
            let fields =
                ((trade.price.mantissa(), trade.price.scale()), (trade.quantity.mantissa(), trade.quantity.scale()));
            assert_eq!((fields.0, fields.1, trade.buyer_is_maker), trade_fields(t), "{frame}");
        }
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
    fn skipped_events_advance_like_written_ones() {
        for stream in ["btcusdt@aggTrade", "btcusdt@trade", "btcusdt@depth@100ms", "btcusdt@kline_1m"] {
            let (mut written, mut skipped) =
                (Market::new(stream, 500, 0).unwrap(), Market::new(stream, 500, 0).unwrap());
            for i in 0..50 {
                let (_, id) = written.next_frame(i);
                assert_eq!(skipped.skip_event(), id, "{stream} event {i}");
            }
            assert_eq!(written.next_frame(99), skipped.next_frame(99), "{stream}");
            assert_eq!(written.book.map(|b| b.state), skipped.book.map(|b| b.state));
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
        assert!(Market::new("btcusdt@depth5", 0, 0).is_none());
    }

    #[test]
    fn depth_diffs_continue_and_rebuild_the_model_book() {
        use keel_core::protocol::{Frame, MarketEvent, decode};
        use keel_core::recovery::OrderBook;
        let mut m = Market::new("btcusdt@depth@100ms", 1_000, 0).unwrap();
        let first = keel_core::protocol::rest::decode_depth(&m.book.as_ref().unwrap().snapshot_body()).unwrap();
        let mut book = OrderBook::from_snapshot(&first);
        let mut prev = 1_000;
        for i in 0..300 {
            let (frame, id) = m.next_frame(i);
            let Ok(Frame::Market { event: MarketEvent::Depth(d), .. }) = decode(&frame) else { panic!("{frame}") };
            assert_eq!((d.first_update_id, Some(d.final_update_id)), (prev + 1, id));
            prev = d.final_update_id;
            book.apply(&d);
            let model = m.book.as_ref().unwrap();
            let snap = keel_core::protocol::rest::decode_depth(&model.snapshot_body()).unwrap();
            assert_eq!(book, OrderBook::from_snapshot(&snap), "after diff {i}");
            assert!(model.at(prev).is_some());
        }
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
