//! The fast path of [`super::decode`] for the frames that make up nearly all traffic: a market
//! event laid out exactly as Binance sends it, raw (`{"e":"aggTrade",...}`, `{"u":...}` for
//! bookTicker, `{"lastUpdateId":...}` for partial depth) or in the combined-stream envelope
//! `{"stream":"<name>","data":{...}}`.
//!
//! A single pass over the bytes reads the keys in Binance's order, parsing integers, booleans and
//! decimal strings (into [`Decimal`], no intermediate text) as it goes; no serde, no allocation but
//! depth levels, a kline's interval and the box of a kline or ticker (stream names and symbols come from the caller's [`Names`]). The event type comes from
//! the data (its `"e"`, or the first key of the two kinds without one), as on the general path; the
//! stream name is only carried along.
//!
//! Anything else (whitespace, another key order, an escape in a string, an unknown key, a number
//! written as `1.0` or `-0`, a field of the wrong type, more than 19 digits) returns `None` and the
//! general path in `super` decodes the frame or names what is wrong. The contract, checked by
//! properties in `tests.rs`: whenever this returns `Some(frame)`, the general path returns
//! `Ok(frame)` for the same text. Because every key is read in a fixed order and each appears once,
//! a frame the fast path takes has no duplicate key.

use super::{
    AggTrade, BookTicker, Decimal, DepthUpdate, Frame, Kline, Level, MarketEvent, MiniTicker, Name, Names,
    PartialDepth, Ticker, TickerExtras, TickerWindow, Trade, array_element_type, array_stream_of, stream_name,
    symbol_of,
};

/// [`try_decode_on`] with a table of names of its own, for tests.
#[cfg(test)]
pub(super) fn try_decode(text: &str) -> Option<Frame> {
    try_decode_on(text, None, &mut Names::new())
}

/// Decodes `text` if it is a market frame in Binance's exact layout; `None` means "ask the general path".
/// A raw frame (no envelope) is attributed to `known` when given (a `/ws/<stream>` connection), and a
/// raw partial depth frame takes its symbol from it. An envelope's own stream name always wins, as on
/// the general path. Stream names and symbols come from `names` (no allocation once they are in it).
pub(super) fn try_decode_on(text: &str, known: Option<&str>, names: &mut Names) -> Option<Frame> {
    let mut s = Scan { text, b: text.as_bytes(), i: 0 };
    if s.lit(b"{\"stream\":") {
        let stream = s.string()?;
        s.expect(b",\"data\":")?;
        let data = s.i;
        // The common events first; an all-market array only when the data is none of them.
        let event = match s.event(Some(stream), names) {
            Some(event) => event,
            None => {
                s.i = data;
                s.array(array_element_type(stream)?, names)?
            }
        };
        s.byte(b'}')?;
        s.end()?;
        return Some(Frame::Market { stream: names.get(stream), event });
    }
    let Some(event) = s.event(known, names) else {
        // Not an event object: maybe an all-market array.
        s.i = 0;
        return if s.peek() == Some(b'[') { bare_array(&mut s, known, names) } else { None };
    };
    s.end()?;
    let stream = match known {
        Some(known) => names.get(known),
        None => stream_name(&event).into(),
    };
    Some(Frame::Market { stream, event })
}

/// A raw all-market array: its element type from the stream the caller knows, else from the first
/// element (an empty array of an unknown stream is left to the general path, which refuses it).
#[inline(never)]
fn bare_array(s: &mut Scan<'_>, known: Option<&str>, names: &mut Names) -> Option<Frame> {
    let want = match known {
        Some(known) => array_element_type(known)?,
        None => {
            let rest = s.text.get(s.i..)?.strip_prefix("[{\"e\":\"")?;
            let (e, _) = rest.split_once('"')?;
            array_stream_of(e).and_then(array_element_type)?
        }
    };
    let event = s.array(want, names)?;
    s.end()?;
    let stream = match known {
        Some(known) => names.get(known),
        None => stream_name(&event).into(),
    };
    Some(Frame::Market { stream, event })
}

/// A cursor over the frame's bytes. Every method either consumes exactly what it parsed and returns
/// `Some`, or returns `None` (the whole fast path is abandoned then, so the position no longer matters).
struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// Consumes `l` if the input continues with it. The length is a constant in each use, so the
    /// comparison compiles to a few word compares instead of a `memcmp` call.
    #[inline(always)]
    fn lit<const N: usize>(&mut self, l: &[u8; N]) -> bool {
        let matched = match self.b.get(self.i..self.i + N) {
            Some(s) => s == l,
            None => false,
        };
        if matched {
            self.i += N;
        }
        matched
    }

    #[inline(always)]
    fn expect<const N: usize>(&mut self, l: &[u8; N]) -> Option<()> {
        self.lit(l).then_some(())
    }

    #[inline]
    fn byte(&mut self, c: u8) -> Option<()> {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn end(&self) -> Option<()> {
        (self.i == self.b.len()).then_some(())
    }

    /// The next 8 bytes as a little-endian word, when there are 8 left.
    #[inline]
    fn word(&self) -> Option<u64> {
        let chunk: [u8; 8] = self.b.get(self.i..self.i + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(chunk))
    }

    /// Consumes a run of ASCII digits: their value (wrapped on overflow: callers check the count)
    /// and how many there were. Eight bytes at a time where the input has them.
    #[inline]
    fn digits(&mut self) -> (u64, usize) {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(w) = self.word() {
            let n = leading_digits(w);
            if n == 0 {
                return (v, self.i - start);
            }
            v = v.wrapping_mul(POW10[n]).wrapping_add(eight_digits(w, n));
            self.i += n;
            if n < 8 {
                return (v, self.i - start);
            }
        }
        while let Some(&c) = self.b.get(self.i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v.wrapping_mul(10).wrapping_add(u64::from(d));
            self.i += 1;
        }
        (v, self.i - start)
    }

    /// A JSON string without escapes or control characters, quotes included; its content.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let start = self.i;
        // Eight bytes at a time to the first quote, backslash or control character.
        while let Some(w) = self.word() {
            let special = special_bytes(w);
            if special != 0 {
                self.i += (special.trailing_zeros() / 8) as usize;
                break;
            }
            self.i += 8;
        }
        loop {
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let s = self.text.get(start..self.i)?;
        self.i += 1;
        Some(s)
    }

    /// A non-negative JSON integer that fits a u64 (serde_json reads larger ones as floats).
    #[inline]
    fn u64(&mut self) -> Option<u64> {
        let start = self.i;
        let (v, n) = self.digits();
        match n {
            0 => None,
            // A leading zero is not JSON.
            _ if n > 1 && self.b[start] == b'0' => None,
            1..=19 => Some(v),
            20 => self.text.get(start..self.i)?.parse().ok(),
            _ => None,
        }
    }

    /// A JSON integer within i64. `-0` is left to the general path (serde_json may read it as a float).
    fn i64(&mut self) -> Option<i64> {
        if self.byte(b'-').is_some() {
            let m = self.u64()?;
            if m == 0 || m > 1 << 63 {
                return None;
            }
            Some(0i64.wrapping_sub(m as i64))
        } else {
            i64::try_from(self.u64()?).ok()
        }
    }

    fn bool(&mut self) -> Option<bool> {
        if self.lit(b"true") {
            Some(true)
        } else if self.lit(b"false") {
            Some(false)
        } else {
            None
        }
    }

    /// A decimal string (`"0.00150000"`), parsed as [`Decimal::parse`] would parse its content.
    #[inline]
    fn decimal(&mut self) -> Option<Decimal> {
        // Nearly every price and quantity is `"<1 to 7 digits>.<1 to 8 digits>"`: two words, read once each.
        if let Some(d) = self.plain_decimal() {
            return Some(d);
        }
        self.any_decimal()
    }

    /// `"<1 to 7 digits>.<1 to 8 digits>"` with no leading zero (Binance's shape): the integer digits
    /// and the dot from the first word after the quote, the fraction and the closing quote from the
    /// next one. `None` (nothing consumed) for any other shape, which [`Self::any_decimal`] reads.
    #[inline(always)]
    fn plain_decimal(&mut self) -> Option<Decimal> {
        let at = self.i;
        let chunk: &[u8; 9] = self.b.get(at..at + 9)?.try_into().ok()?;
        let (first, rest) = chunk.split_first()?;
        if *first != b'"' {
            return None;
        }
        let w1 = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let n1 = leading_digits(w1);
        // 1 to 7 digits, then the dot; a leading zero only alone ("0.5").
        if n1 == 0 || n1 == 8 || rest[n1] != b'.' || (n1 > 1 && rest[0] == b'0') {
            return None;
        }
        let frac_at = at + 1 + n1 + 1;
        let w2 = u64::from_le_bytes(self.b.get(frac_at..frac_at + 8)?.try_into().ok()?);
        let n2 = leading_digits(w2);
        if n2 == 0 || *self.b.get(frac_at + n2)? != b'"' {
            return None;
        }
        // At most 7 + 8 digits: no overflow.
        let mantissa = eight_digits(w1, n1) * POW10[n2] + eight_digits(w2, n2);
        self.i = frac_at + n2 + 1;
        Decimal::new(u128::from(mantissa), n2 as u8, false)
    }

    /// Any decimal string [`Decimal::parse`] accepts (sign, long integer part, up to its limits).
    #[inline(never)]
    fn any_decimal(&mut self) -> Option<Decimal> {
        self.byte(b'"')?;
        let start = self.i;
        let negative = self.byte(b'-').is_some();
        let int_start = self.i;
        let (int, int_digits) = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.b[int_start] == b'0') {
            return None;
        }
        let (mut mantissa, mut scale) = (int, 0usize);
        if self.byte(b'.').is_some() {
            let (frac, frac_digits) = self.digits();
            if frac_digits == 0 {
                return None;
            }
            scale = frac_digits;
            if int_digits + frac_digits <= 19 {
                // Cannot overflow: 19 digits are below 10^19 < 2^64.
                mantissa = int.wrapping_mul(POW10[frac_digits]).wrapping_add(frac);
            }
        }
        let end = self.i;
        self.byte(b'"')?;
        if int_digits + scale <= 19 {
            Decimal::new(u128::from(mantissa), u8::try_from(scale).ok()?, negative)
        } else {
            // Wide values (huge kline volumes) are rare: the careful parser.
            Decimal::parse(self.text.get(start..end)?).ok()
        }
    }

    /// `[["price","qty"],...]`, possibly empty.
    fn levels(&mut self) -> Option<Vec<Level>> {
        let mut levels = Vec::new();
        self.levels_into(&mut levels)?;
        Some(levels)
    }

    /// [`Self::levels`], appended to `levels`. The first level reserves room for what the rest of
    /// the frame can hold (a level as Binance writes it takes 24 bytes or more), so a diff's bids and
    /// asks usually fill one allocation without growing it.
    fn levels_into(&mut self, levels: &mut Vec<Level>) -> Option<()> {
        self.byte(b'[')?;
        if self.byte(b']').is_some() {
            return Some(());
        }
        if levels.capacity() == 0 {
            levels.reserve(((self.b.len() - self.i) / 24).max(4));
        }
        loop {
            self.byte(b'[')?;
            let price = self.decimal()?;
            self.byte(b',')?;
            let qty = self.decimal()?;
            self.byte(b']')?;
            levels.push((price, qty));
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `[<event>,...]`: an all-market array whose elements are all of event type `want`
    /// ([`array_element_type`]). Each element is read as a single event is, then unboxed: one frame a
    /// second does not need a second scanner.
    #[inline(never)]
    fn array(&mut self, want: &'static str, names: &mut Names) -> Option<MarketEvent> {
        self.byte(b'[')?;
        let (mut tickers, mut minis) = (Vec::new(), Vec::new());
        if self.byte(b']').is_none() {
            loop {
                match self.event(None, names)? {
                    MarketEvent::Ticker(t) if t.window.event_type() == want => tickers.push(*t),
                    MarketEvent::MiniTicker(t) if want == "24hrMiniTicker" => minis.push(*t),
                    _ => return None,
                }
                match self.peek()? {
                    b',' => self.i += 1,
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        Some(if want == "24hrMiniTicker" { MarketEvent::MiniTickers(minis) } else { MarketEvent::Tickers(tickers) })
    }

    /// The event object; `stream` names a partial depth frame's symbol.
    fn event(&mut self, stream: Option<&str>, names: &mut Names) -> Option<MarketEvent> {
        if self.lit(b"{\"e\":\"") {
            // The event type and the key after it as one constant-length compare each (no loop, no memcmp).
            let kind = if self.lit(b"aggTrade\",\"E\":") {
                Kind::AggTrade
            } else if self.lit(b"depthUpdate\",\"E\":") {
                Kind::Depth
            } else if self.lit(b"trade\",\"E\":") {
                Kind::Trade
            } else if self.lit(b"kline\",\"E\":") {
                Kind::Kline
            } else if self.lit(b"24hrTicker\",\"E\":") {
                Kind::Ticker(Window::Day)
            } else if self.lit(b"24hrMiniTicker\",\"E\":") {
                Kind::MiniTicker
            } else if self.lit(b"1hTicker\",\"E\":") {
                Kind::Ticker(Window::Rolling1h)
            } else if self.lit(b"4hTicker\",\"E\":") {
                Kind::Ticker(Window::Rolling4h)
            } else if self.lit(b"1dTicker\",\"E\":") {
                Kind::Ticker(Window::Rolling1d)
            } else {
                return None;
            };
            let event_time = self.u64()?;
            self.expect(b",\"s\":")?;
            let symbol = names.get(self.string()?);
            let event = match kind {
                Kind::AggTrade => self.agg_trade(event_time, symbol)?,
                Kind::Trade => self.trade(event_time, symbol)?,
                Kind::Depth => self.depth(event_time, symbol)?,
                Kind::Kline => self.kline(event_time, symbol)?,
                Kind::Ticker(window) => self.ticker(event_time, symbol, window)?,
                Kind::MiniTicker => self.mini_ticker(event_time, symbol)?,
            };
            self.extra_fields(&FRAME_KEYS)?;
            self.byte(b'}')?;
            Some(event)
        } else if self.lit(b"{\"u\":") {
            self.book_ticker(names)
        } else if self.lit(b"{\"lastUpdateId\":") {
            self.partial_depth(stream)
        } else {
            None
        }
    }

    /// Binance's trailing `"M":<bool>` ("ignore"), which keel does not keep.
    fn optional_m(&mut self) -> Option<()> {
        if self.lit(b",\"M\":") {
            self.bool()?;
        }
        Some(())
    }

    /// Skips trailing `,"key":value` pairs that the general path ignores too (a field Binance may add
    /// one day), up to the closing `}` (not consumed). A key the general path reads (`known`) could
    /// change how it reads the frame, and a nested or fractional value is not worth checking here:
    /// both send the frame to the general path.
    #[inline(always)]
    fn extra_fields(&mut self, known: &[&str]) -> Option<()> {
        if self.peek() == Some(b',') { self.skip_extra_fields(known) } else { Some(()) }
    }

    #[cold]
    #[inline(never)]
    fn skip_extra_fields(&mut self, known: &[&str]) -> Option<()> {
        while self.byte(b',').is_some() {
            let key = self.string()?;
            if known.contains(&key) {
                return None;
            }
            self.byte(b':')?;
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b't' => self.expect(b"true")?,
                b'f' => self.expect(b"false")?,
                b'n' => self.expect(b"null")?,
                b'-' => {
                    self.i += 1;
                    self.u64()?;
                }
                b'0'..=b'9' => {
                    self.u64()?;
                }
                _ => return None,
            }
        }
        Some(())
    }

    fn agg_trade(&mut self, event_time: u64, symbol: Name) -> Option<MarketEvent> {
        self.expect(b",\"a\":")?;
        let agg_id = self.u64()?;
        self.expect(b",\"p\":")?;
        let price = self.decimal()?;
        self.expect(b",\"q\":")?;
        let quantity = self.decimal()?;
        self.expect(b",\"f\":")?;
        let first_trade_id = self.u64()?;
        self.expect(b",\"l\":")?;
        let last_trade_id = self.u64()?;
        self.expect(b",\"T\":")?;
        let trade_time = self.u64()?;
        self.expect(b",\"m\":")?;
        let buyer_is_maker = self.bool()?;
        self.optional_m()?;
        Some(MarketEvent::AggTrade(AggTrade {
            symbol,
            event_time,
            agg_id,
            price,
            quantity,
            first_trade_id,
            last_trade_id,
            trade_time,
            buyer_is_maker,
        }))
    }

    fn trade(&mut self, event_time: u64, symbol: Name) -> Option<MarketEvent> {
        self.expect(b",\"t\":")?;
        let trade_id = self.u64()?;
        self.expect(b",\"p\":")?;
        let price = self.decimal()?;
        self.expect(b",\"q\":")?;
        let quantity = self.decimal()?;
        // Buyer and seller order ids, which older trade frames carry and keel does not keep.
        if self.lit(b",\"b\":") {
            self.u64()?;
            self.expect(b",\"a\":")?;
            self.u64()?;
        }
        self.expect(b",\"T\":")?;
        let trade_time = self.u64()?;
        self.expect(b",\"m\":")?;
        let buyer_is_maker = self.bool()?;
        self.optional_m()?;
        Some(MarketEvent::Trade(Trade { symbol, event_time, trade_id, price, quantity, trade_time, buyer_is_maker }))
    }

    fn depth(&mut self, event_time: u64, symbol: Name) -> Option<MarketEvent> {
        self.expect(b",\"U\":")?;
        let first_update_id = self.u64()?;
        self.expect(b",\"u\":")?;
        let final_update_id = self.u64()?;
        // The bids and then the asks in one list: one allocation per diff.
        let mut levels = Vec::new();
        self.expect(b",\"b\":")?;
        self.levels_into(&mut levels)?;
        let bids = levels.len();
        self.expect(b",\"a\":")?;
        self.levels_into(&mut levels)?;
        Some(MarketEvent::Depth(DepthUpdate::from_levels(
            symbol,
            event_time,
            first_update_id,
            final_update_id,
            levels,
            bids,
        )))
    }

    fn kline(&mut self, event_time: u64, symbol: Name) -> Option<MarketEvent> {
        self.expect(b",\"k\":{\"t\":")?;
        let open_time = self.u64()?;
        self.expect(b",\"T\":")?;
        let close_time = self.u64()?;
        self.expect(b",\"s\":")?;
        self.string()?;
        self.expect(b",\"i\":")?;
        let interval = self.string()?;
        self.expect(b",\"f\":")?;
        let first_trade_id = self.i64()?;
        self.expect(b",\"L\":")?;
        let last_trade_id = self.i64()?;
        self.expect(b",\"o\":")?;
        let open = self.decimal()?;
        self.expect(b",\"c\":")?;
        let close = self.decimal()?;
        self.expect(b",\"h\":")?;
        let high = self.decimal()?;
        self.expect(b",\"l\":")?;
        let low = self.decimal()?;
        self.expect(b",\"v\":")?;
        let volume = self.decimal()?;
        self.expect(b",\"n\":")?;
        let trades = self.u64()?;
        self.expect(b",\"x\":")?;
        let is_closed = self.bool()?;
        self.expect(b",\"q\":")?;
        let quote_volume = self.decimal()?;
        self.expect(b",\"V\":")?;
        let taker_buy_volume = self.decimal()?;
        self.expect(b",\"Q\":")?;
        let taker_buy_quote_volume = self.decimal()?;
        // Binance's "B" ("ignore") and anything else the general path skips as well.
        self.extra_fields(&KLINE_KEYS)?;
        self.byte(b'}')?;
        Some(MarketEvent::Kline(Box::new(Kline {
            symbol,
            event_time,
            open_time,
            close_time,
            interval: interval.to_owned(),
            first_trade_id,
            last_trade_id,
            open,
            high,
            low,
            close,
            volume,
            quote_volume,
            taker_buy_volume,
            taker_buy_quote_volume,
            trades,
            is_closed,
        })))
    }

    /// A ticker after its `"s"`, in Binance's order, which differs between the 24 h ticker
    /// (`p P w x c Q b B a A o h l`) and the rolling-window ones (`p P o h l c w`); both end `v q O C F L n`.
    fn ticker(&mut self, event_time: u64, symbol: Name, which: Window) -> Option<MarketEvent> {
        self.expect(b",\"p\":")?;
        let price_change = self.decimal()?;
        self.expect(b",\"P\":")?;
        let price_change_percent = self.decimal()?;
        let (window, weighted_avg_price, last_price, open, high, low);
        if let Window::Day = which {
            self.expect(b",\"w\":")?;
            weighted_avg_price = self.decimal()?;
            self.expect(b",\"x\":")?;
            let prev_price = self.decimal()?;
            self.expect(b",\"c\":")?;
            last_price = self.decimal()?;
            self.expect(b",\"Q\":")?;
            let last_quantity = self.decimal()?;
            self.expect(b",\"b\":")?;
            let best_bid_price = self.decimal()?;
            self.expect(b",\"B\":")?;
            let best_bid_qty = self.decimal()?;
            self.expect(b",\"a\":")?;
            let best_ask_price = self.decimal()?;
            self.expect(b",\"A\":")?;
            let best_ask_qty = self.decimal()?;
            self.expect(b",\"o\":")?;
            open = self.decimal()?;
            self.expect(b",\"h\":")?;
            high = self.decimal()?;
            self.expect(b",\"l\":")?;
            low = self.decimal()?;
            window = TickerWindow::Rolling24h(TickerExtras {
                prev_price,
                last_quantity,
                best_bid_price,
                best_bid_qty,
                best_ask_price,
                best_ask_qty,
            });
        } else {
            self.expect(b",\"o\":")?;
            open = self.decimal()?;
            self.expect(b",\"h\":")?;
            high = self.decimal()?;
            self.expect(b",\"l\":")?;
            low = self.decimal()?;
            self.expect(b",\"c\":")?;
            last_price = self.decimal()?;
            self.expect(b",\"w\":")?;
            weighted_avg_price = self.decimal()?;
            window = match which {
                Window::Rolling1h => TickerWindow::Rolling1h,
                Window::Rolling4h => TickerWindow::Rolling4h,
                Window::Day | Window::Rolling1d => TickerWindow::Rolling1d,
            };
        }
        self.expect(b",\"v\":")?;
        let volume = self.decimal()?;
        self.expect(b",\"q\":")?;
        let quote_volume = self.decimal()?;
        self.expect(b",\"O\":")?;
        let open_time = self.u64()?;
        self.expect(b",\"C\":")?;
        let close_time = self.u64()?;
        self.expect(b",\"F\":")?;
        let first_trade_id = self.i64()?;
        self.expect(b",\"L\":")?;
        let last_trade_id = self.i64()?;
        self.expect(b",\"n\":")?;
        let trades = self.u64()?;
        Some(MarketEvent::Ticker(Box::new(Ticker {
            symbol,
            event_time,
            window,
            price_change,
            price_change_percent,
            weighted_avg_price,
            last_price,
            open,
            high,
            low,
            volume,
            quote_volume,
            open_time,
            close_time,
            first_trade_id,
            last_trade_id,
            trades,
        })))
    }

    /// A mini ticker after its `"s"`: `c o h l v q`.
    fn mini_ticker(&mut self, event_time: u64, symbol: Name) -> Option<MarketEvent> {
        self.expect(b",\"c\":")?;
        let close = self.decimal()?;
        self.expect(b",\"o\":")?;
        let open = self.decimal()?;
        self.expect(b",\"h\":")?;
        let high = self.decimal()?;
        self.expect(b",\"l\":")?;
        let low = self.decimal()?;
        self.expect(b",\"v\":")?;
        let volume = self.decimal()?;
        self.expect(b",\"q\":")?;
        let quote_volume = self.decimal()?;
        Some(MarketEvent::MiniTicker(Box::new(MiniTicker {
            symbol,
            event_time,
            close,
            open,
            high,
            low,
            volume,
            quote_volume,
        })))
    }

    /// After `{"u":`. Spot frames have no `E`; keel's encoder writes it after `u` when present.
    fn book_ticker(&mut self, names: &mut Names) -> Option<MarketEvent> {
        let update_id = self.u64()?;
        let event_time = if self.lit(b",\"E\":") { Some(self.u64()?) } else { None };
        self.expect(b",\"s\":")?;
        let symbol = names.get(self.string()?);
        self.expect(b",\"b\":")?;
        let best_bid_price = self.decimal()?;
        self.expect(b",\"B\":")?;
        let best_bid_qty = self.decimal()?;
        self.expect(b",\"a\":")?;
        let best_ask_price = self.decimal()?;
        self.expect(b",\"A\":")?;
        let best_ask_qty = self.decimal()?;
        self.extra_fields(&FRAME_KEYS)?;
        self.byte(b'}')?;
        Some(MarketEvent::BookTicker(BookTicker {
            symbol,
            update_id,
            best_bid_price,
            best_bid_qty,
            best_ask_price,
            best_ask_qty,
            event_time,
        }))
    }

    /// After `{"lastUpdateId":`.
    fn partial_depth(&mut self, stream: Option<&str>) -> Option<MarketEvent> {
        let last_update_id = self.u64()?;
        self.expect(b",\"bids\":")?;
        let bids = self.levels()?;
        self.expect(b",\"asks\":")?;
        let asks = self.levels()?;
        self.extra_fields(&FRAME_KEYS)?;
        self.byte(b'}')?;
        Some(MarketEvent::PartialDepth(PartialDepth {
            symbol: stream.map(symbol_of).unwrap_or_default(),
            last_update_id,
            bids,
            asks,
        }))
    }
}

/// The event types the fast path reads (`"e"`).
#[derive(Clone, Copy)]
enum Kind {
    AggTrade,
    Trade,
    Depth,
    Kline,
    Ticker(Window),
    MiniTicker,
}

/// Which ticker (`24hrTicker`, `1hTicker`, ...): the 24 h one has more fields, in another order.
#[derive(Clone, Copy)]
enum Window {
    Day,
    Rolling1h,
    Rolling4h,
    Rolling1d,
}

/// The keys `raw::RawFrame` reads (top level of a frame and of an event).
const FRAME_KEYS: [&str; 40] = [
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
    "result",
    "id",
    "code",
    "msg",
    "k",
    "data",
    "error",
];

/// The keys `raw::RawKline` reads (a kline's `"k"` object).
const KLINE_KEYS: [&str; 16] = ["t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q"];

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// How many of the 8 bytes of `w` (little-endian: the first byte is the lowest) are ASCII digits
/// before the first non-digit.
#[inline]
fn leading_digits(w: u64) -> usize {
    // A byte is a digit iff its high nibble is 3 and adding 6 keeps it 3. The input is UTF-8, which
    // has no byte above 0xF4, so adding 6 never carries into the next byte.
    const NIBBLES: u64 = 0xF0 * ONES;
    let t = (w & NIBBLES) | ((w.wrapping_add(6 * ONES) & NIBBLES) >> 4);
    let non_digits = t ^ (0x33 * ONES);
    if non_digits == 0 { 8 } else { (non_digits.trailing_zeros() / 8) as usize }
}

/// The value of the first `n` (1..=8) bytes of `w`, all ASCII digits.
#[inline]
fn eight_digits(w: u64, n: usize) -> u64 {
    // Move the n digits to the top and fill below with '0's: leading zeros do not change the value.
    let w = if n == 8 { w } else { (w << (64 - 8 * n)) | ((0x30 * ONES) >> (8 * n)) };
    // Pairs, then quads, then the eight (the first digit is the most significant); Lemire's
    // multiply-and-shift digit combining.
    let w = (w & (0x0F * ONES)).wrapping_mul(10 * 256 + 1) >> 8;
    let w = (w & 0x00FF_00FF_00FF_00FF).wrapping_mul(100 * 65_536 + 1) >> 16;
    (w & 0x0000_FFFF_0000_FFFF).wrapping_mul(10_000 * (1 << 32) + 1) >> 32
}

/// Bit 7 of each byte of `w` that is a quote, a backslash or a control character (the lowest set
/// bit marks the first such byte exactly; bits above it may be false alarms).
#[inline]
fn special_bytes(w: u64) -> u64 {
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero_byte(w ^ (u64::from(b'"') * ONES))
        | zero_byte(w ^ (u64::from(b'\\') * ONES))
        | (w.wrapping_sub(0x20 * ONES) & !w & HIGH)
}

const POW10: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, quickcheck};

    /// Text rich in digits, quotes, backslashes and control characters, with some multi-byte characters:
    /// what the word-at-a-time scans must get right at every offset.
    #[derive(Debug, Clone)]
    struct Text(String);

    impl Arbitrary for Text {
        fn arbitrary(g: &mut Gen) -> Self {
            let pool = ['0', '1', '5', '9', '/', ':', '.', '"', '\\', '\u{1f}', '\u{7f}', 'a', 'é', '€', '😀', ' '];
            let len = usize::arbitrary(g) % 40;
            Text((0..len).map(|_| *g.choose(&pool).unwrap_or(&'0')).collect())
        }
    }

    /// A decimal-looking string: an optional sign, 0 to 9 integer digits (leading zeros included), an
    /// optional dot and 0 to 10 fraction digits, a closing quote or not, and some text after it.
    #[derive(Debug, Clone)]
    struct DecimalText(String);

    impl Arbitrary for DecimalText {
        fn arbitrary(g: &mut Gen) -> Self {
            let digits = |g: &mut Gen, max: usize| -> String {
                let n = usize::arbitrary(g) % (max + 1);
                (0..n).map(|_| char::from(b'0' + u8::arbitrary(g) % 10)).collect()
            };
            let mut s = String::from("\"");
            if u8::arbitrary(g) % 8 == 0 {
                s.push('-');
            }
            s.push_str(&digits(g, 9));
            if u8::arbitrary(g) % 8 != 0 {
                s.push('.');
                s.push_str(&digits(g, 10));
            }
            if u8::arbitrary(g) % 8 != 0 {
                s.push('"');
            }
            s.push_str(&Text::arbitrary(g).0);
            DecimalText(s)
        }
    }

    fn naive_digits(b: &[u8]) -> (u64, usize) {
        let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
        (b[..n].iter().fold(0u64, |v, c| v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'))), n)
    }

    fn naive_string(b: &[u8]) -> Option<usize> {
        let end = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        (b[end] == b'"').then_some(end)
    }

    #[test]
    fn word_helpers_table() {
        let w = |s: &[u8; 8]| u64::from_le_bytes(*s);
        assert_eq!(leading_digits(w(b"12345678")), 8);
        assert_eq!(leading_digits(w(b"123,5678")), 3);
        assert_eq!(leading_digits(w(b"\"2345678")), 0);
        assert_eq!(eight_digits(w(b"12345678"), 8), 12_345_678);
        assert_eq!(eight_digits(w(b"00012,xx"), 5), 12);
        assert_eq!(eight_digits(w(b"9xxxxxxx"), 1), 9);
        assert_eq!(special_bytes(w(b"abcdefgh")), 0);
        assert_eq!(special_bytes(w(b"abc\"efgh")).trailing_zeros() / 8, 3);
        assert_eq!(special_bytes(w(b"a\\c\"efgh")).trailing_zeros() / 8, 1);
        assert_eq!(special_bytes(w(b"abcdef\x01h")).trailing_zeros() / 8, 6);
    }

    #[test]
    fn plain_decimal_table() {
        let plain = |t: &str| {
            let mut s = Scan { text: t, b: t.as_bytes(), i: 0 };
            s.plain_decimal().map(|d| (d.to_string(), s.i))
        };
        let some = |d: &str, i: usize| Some((d.to_string(), i));
        assert_eq!(plain(r#""43210.12000000"],"#), some("43210.12000000", 16));
        assert_eq!(plain(r#""0.00150000","1""#), some("0.00150000", 12));
        assert_eq!(plain(r#""1234567.5"}         "#), some("1234567.5", 11));
        // Other shapes go to the general reader: 8 integer digits, 9 fraction digits, a sign, no
        // fraction, a leading zero, too little text left to read a word.
        assert_eq!(plain(r#""12345678.5"}   "#), None);
        assert_eq!(plain(r#""1.123456789"}  "#), None);
        assert_eq!(plain(r#""-1.5"}         "#), None);
        assert_eq!(plain(r#""15"}           "#), None);
        assert_eq!(plain(r#""01.5"}         "#), None);
        assert_eq!(plain(r#""1.5""#), None);
    }

    quickcheck! {
        fn digits_match_a_byte_loop(text: Text, skip: usize) -> bool {
            let text = text.0;
            let at = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).nth(skip % (text.chars().count() + 1)).unwrap_or(0);
            let mut s = Scan { text: &text, b: text.as_bytes(), i: at };
            let got = s.digits();
            got == naive_digits(&text.as_bytes()[at..]) && s.i == at + got.1
        }

        fn plain_decimals_match_the_general_reader(text: DecimalText) -> bool {
            let text = text.0;
            let mut plain = Scan { text: &text, b: text.as_bytes(), i: 0 };
            let mut any = Scan { text: &text, b: text.as_bytes(), i: 0 };
            match plain.plain_decimal() {
                // Declined: nothing consumed (the general reader starts from the same place).
                None => plain.i == 0,
                Some(d) => any.any_decimal() == Some(d) && plain.i == any.i,
            }
        }

        fn strings_match_a_byte_loop(text: Text) -> bool {
            let quoted = format!("\"{}", text.0);
            let mut s = Scan { text: &quoted, b: quoted.as_bytes(), i: 0 };
            match (s.string(), naive_string(&quoted.as_bytes()[1..])) {
                (Some(got), Some(end)) => got == &quoted[1..1 + end] && s.i == end + 2,
                (None, None) => true,
                _ => false,
            }
        }
    }
}
