//! Binance's wire format for frames, written by hand (no intermediate `Value`): the embedded exchange
//! and the simulator use it to speak exactly what [`super::decode`] reads, and the tests use it for
//! round trips.

use super::{Decimal, Frame, Level, MarketEvent, MiniTicker, ResponseResult, Ticker, TickerWindow};
use std::fmt::Write;

/// Appends `s` as a JSON string literal.
pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn key(out: &mut String, first: bool, name: &str) {
    if !first {
        out.push(',');
    }
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
}

fn str_field(out: &mut String, first: bool, name: &str, value: &str) {
    key(out, first, name);
    push_json_str(out, value);
}

fn num_field(out: &mut String, name: &str, value: impl std::fmt::Display) {
    key(out, false, name);
    let _ = write!(out, "{value}");
}

fn dec_field(out: &mut String, name: &str, value: Decimal) {
    key(out, false, name);
    let _ = write!(out, "\"{value}\"");
}

fn levels_field(out: &mut String, first: bool, name: &str, levels: &[Level]) {
    key(out, first, name);
    out.push('[');
    for (i, (price, qty)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[\"{price}\",\"{qty}\"]");
    }
    out.push(']');
}

/// The raw event as Binance sends it on `/ws/<stream>` (fields in Binance's order); an all-market
/// array as the JSON array of its elements.
pub fn encode_event(event: &MarketEvent) -> String {
    let elements: Vec<String> = match event {
        MarketEvent::Tickers(v) => v.iter().map(|t| element(|out| ticker_fields(out, t))).collect(),
        MarketEvent::MiniTickers(v) => v.iter().map(|t| element(|out| mini_ticker_fields(out, t))).collect(),
        _ => return encode_object(event),
    };
    format!("[{}]", elements.join(","))
}

/// One object written by `fields`.
fn element(fields: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    fields(&mut out);
    out.push('}');
    out
}

/// A ticker's fields (a single `@ticker` event or an element of `!ticker@arr`).
fn ticker_fields(out: &mut String, t: &Ticker) {
    str_field(out, true, "e", t.window.event_type());
    num_field(out, "E", t.event_time);
    str_field(out, false, "s", &t.symbol);
    dec_field(out, "p", t.price_change);
    dec_field(out, "P", t.price_change_percent);
    // Binance orders the two layouts differently (web-socket-streams.md).
    match &t.window {
        TickerWindow::Rolling24h(x) => {
            dec_field(out, "w", t.weighted_avg_price);
            dec_field(out, "x", x.prev_price);
            dec_field(out, "c", t.last_price);
            dec_field(out, "Q", x.last_quantity);
            dec_field(out, "b", x.best_bid_price);
            dec_field(out, "B", x.best_bid_qty);
            dec_field(out, "a", x.best_ask_price);
            dec_field(out, "A", x.best_ask_qty);
            dec_field(out, "o", t.open);
            dec_field(out, "h", t.high);
            dec_field(out, "l", t.low);
        }
        TickerWindow::Rolling1h | TickerWindow::Rolling4h | TickerWindow::Rolling1d => {
            dec_field(out, "o", t.open);
            dec_field(out, "h", t.high);
            dec_field(out, "l", t.low);
            dec_field(out, "c", t.last_price);
            dec_field(out, "w", t.weighted_avg_price);
        }
    }
    dec_field(out, "v", t.volume);
    dec_field(out, "q", t.quote_volume);
    num_field(out, "O", t.open_time);
    num_field(out, "C", t.close_time);
    num_field(out, "F", t.first_trade_id);
    num_field(out, "L", t.last_trade_id);
    num_field(out, "n", t.trades);
}

/// A mini ticker's fields.
fn mini_ticker_fields(out: &mut String, t: &MiniTicker) {
    str_field(out, true, "e", "24hrMiniTicker");
    num_field(out, "E", t.event_time);
    str_field(out, false, "s", &t.symbol);
    dec_field(out, "c", t.close);
    dec_field(out, "o", t.open);
    dec_field(out, "h", t.high);
    dec_field(out, "l", t.low);
    dec_field(out, "v", t.volume);
    dec_field(out, "q", t.quote_volume);
}

/// [`encode_event`] of an event that is one JSON object.
fn encode_object(event: &MarketEvent) -> String {
    let mut out = String::with_capacity(192);
    out.push('{');
    match event {
        MarketEvent::AggTrade(t) => {
            str_field(&mut out, true, "e", "aggTrade");
            num_field(&mut out, "E", t.event_time);
            str_field(&mut out, false, "s", &t.symbol);
            num_field(&mut out, "a", t.agg_id);
            dec_field(&mut out, "p", t.price);
            dec_field(&mut out, "q", t.quantity);
            num_field(&mut out, "f", t.first_trade_id);
            num_field(&mut out, "l", t.last_trade_id);
            num_field(&mut out, "T", t.trade_time);
            num_field(&mut out, "m", t.buyer_is_maker);
            num_field(&mut out, "M", true);
        }
        MarketEvent::Trade(t) => {
            str_field(&mut out, true, "e", "trade");
            num_field(&mut out, "E", t.event_time);
            str_field(&mut out, false, "s", &t.symbol);
            num_field(&mut out, "t", t.trade_id);
            dec_field(&mut out, "p", t.price);
            dec_field(&mut out, "q", t.quantity);
            num_field(&mut out, "T", t.trade_time);
            num_field(&mut out, "m", t.buyer_is_maker);
            num_field(&mut out, "M", true);
        }
        MarketEvent::Kline(k) => {
            str_field(&mut out, true, "e", "kline");
            num_field(&mut out, "E", k.event_time);
            str_field(&mut out, false, "s", &k.symbol);
            key(&mut out, false, "k");
            out.push('{');
            key(&mut out, true, "t");
            let _ = write!(out, "{}", k.open_time);
            num_field(&mut out, "T", k.close_time);
            str_field(&mut out, false, "s", &k.symbol);
            str_field(&mut out, false, "i", &k.interval);
            num_field(&mut out, "f", k.first_trade_id);
            num_field(&mut out, "L", k.last_trade_id);
            dec_field(&mut out, "o", k.open);
            dec_field(&mut out, "c", k.close);
            dec_field(&mut out, "h", k.high);
            dec_field(&mut out, "l", k.low);
            dec_field(&mut out, "v", k.volume);
            num_field(&mut out, "n", k.trades);
            num_field(&mut out, "x", k.is_closed);
            dec_field(&mut out, "q", k.quote_volume);
            dec_field(&mut out, "V", k.taker_buy_volume);
            dec_field(&mut out, "Q", k.taker_buy_quote_volume);
            str_field(&mut out, false, "B", "0");
            out.push('}');
        }
        MarketEvent::Depth(d) => {
            str_field(&mut out, true, "e", "depthUpdate");
            num_field(&mut out, "E", d.event_time);
            str_field(&mut out, false, "s", &d.symbol);
            num_field(&mut out, "U", d.first_update_id);
            num_field(&mut out, "u", d.final_update_id);
            levels_field(&mut out, false, "b", d.bids());
            levels_field(&mut out, false, "a", d.asks());
        }
        MarketEvent::BookTicker(b) => {
            key(&mut out, true, "u");
            let _ = write!(out, "{}", b.update_id);
            if let Some(e) = b.event_time {
                num_field(&mut out, "E", e);
            }
            str_field(&mut out, false, "s", &b.symbol);
            dec_field(&mut out, "b", b.best_bid_price);
            dec_field(&mut out, "B", b.best_bid_qty);
            dec_field(&mut out, "a", b.best_ask_price);
            dec_field(&mut out, "A", b.best_ask_qty);
        }
        MarketEvent::PartialDepth(d) => {
            key(&mut out, true, "lastUpdateId");
            let _ = write!(out, "{}", d.last_update_id);
            levels_field(&mut out, false, "bids", &d.bids);
            levels_field(&mut out, false, "asks", &d.asks);
        }
        MarketEvent::Ticker(t) => ticker_fields(&mut out, t),
        MarketEvent::MiniTicker(t) => mini_ticker_fields(&mut out, t),
        // Written by `encode_event` as arrays of the above.
        MarketEvent::Tickers(_) | MarketEvent::MiniTickers(_) => {}
    }
    out.push('}');
    out
}

/// Any frame as the server sends it: market events in the combined-stream envelope
/// (`{"stream":..,"data":..}`), replies, error replies, `serverShutdown`.
pub fn encode_frame(frame: &Frame) -> String {
    match frame {
        Frame::Market { stream, event } => {
            let data = encode_event(event);
            let mut out = String::with_capacity(data.len() + stream.len() + 24);
            out.push('{');
            str_field(&mut out, true, "stream", stream);
            key(&mut out, false, "data");
            out.push_str(&data);
            out.push('}');
            out
        }
        Frame::Response { id, result } => {
            let mut out = String::from("{\"result\":");
            match result {
                ResponseResult::Null => out.push_str("null"),
                ResponseResult::Bool(b) => {
                    let _ = write!(out, "{b}");
                }
                ResponseResult::Streams(streams) => {
                    out.push('[');
                    for (i, s) in streams.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        push_json_str(&mut out, s);
                    }
                    out.push(']');
                }
            }
            num_field(&mut out, "id", id);
            out.push('}');
            out
        }
        Frame::Error { id, code, msg } => {
            let mut out = String::from("{\"error\":{\"code\":");
            let _ = write!(out, "{code}");
            str_field(&mut out, false, "msg", msg);
            out.push('}');
            match id {
                Some(id) => num_field(&mut out, "id", id),
                None => out.push_str(",\"id\":null"),
            }
            out.push('}');
            out
        }
        Frame::ServerShutdown { event_time } => {
            let mut out = String::from("{\"e\":\"serverShutdown\"");
            num_field(&mut out, "E", event_time);
            out.push('}');
            out
        }
    }
}
