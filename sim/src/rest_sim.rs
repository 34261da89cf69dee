//! The model exchange's REST API (issue 9): `GET /api/v3/aggTrades` (and `historicalTrades` for
//! `@trade` streams) answered from the market's
//! history (every trade field is a pure function of its id, so history is free), with latency,
//! failures during network outages, and in some swarm profiles HTTP 429/418 and 5xx faults.
//!
//! Answers are built when they are delivered, from the market as it is then, as a real server
//! would. Faults stop when the network heals, so the liveness phase measures the recovery machine.

use crate::exchange::agg_trade_fields;
use crate::network::Network;
use crate::profile::Ratio;
use keel_core::rest::{RequestId, RestRequest, RestResponse};
use keel_core::rng::Rng;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// A seed's REST choices, drawn from their own generator so that the connection's test case
/// (everything drawn before issue 9) stays what it was.
#[derive(Debug, Clone, PartialEq)]
pub struct RestProfile {
    /// One-way latency of a REST answer.
    pub latency_ms: u64,
    /// Extra random latency, `[0, jitter_ms]` (answers may overtake each other).
    pub jitter_ms: u64,
    /// Chance an answer is HTTP 429 (with a Retry-After of 1 to 30 s).
    pub rate_limited: Option<Ratio>,
    /// Chance an answer is HTTP 418 (an IP ban; Retry-After 120 s).
    pub banned: Option<Ratio>,
    /// Chance an answer is HTTP 503.
    pub failed: Option<Ratio>,
    /// Chance an answer has fewer trades than asked (a partial page).
    pub partial: Option<Ratio>,
    /// `rest.max_held_events` of the client (small values exercise the abandon path).
    pub max_held_events: u32,
    /// `rest.weight_per_minute` of the client.
    pub weight_per_minute: u32,
    /// Subscribe `btcusdt@depth@100ms` too (the recovery machine keeps its book).
    pub depth: bool,
}

impl RestProfile {
    /// Draws the REST choices of `seed`.
    pub fn draw(seed: u64) -> RestProfile {
        let mut rng = Rng::new(seed ^ 0x0000_7E57_0000_0009);
        let mut maybe = |on: (u64, u64), den: (u64, u64)| {
            rng.chance(on.0, on.1).then(|| Ratio { num: 1, den: den.0 + rng.below(den.1 - den.0 + 1) })
        };
        let rate_limited = maybe((1, 3), (3, 30));
        let banned = maybe((1, 6), (20, 200));
        let failed = maybe((1, 3), (3, 30));
        let partial = maybe((1, 3), (2, 10));
        let latency_ms = [5, 50, 300, 3_000][rng.below(4) as usize];
        let jitter_ms = [0, 20, 500, 10_000][rng.below(4) as usize];
        let max_held_events = [1, 3, 100, 100_000][rng.below(4) as usize];
        let weight_per_minute = [8, 40, 1_200, 6_000][rng.below(4) as usize];
        let depth = rng.chance(1, 3);
        RestProfile {
            latency_ms,
            jitter_ms,
            rate_limited,
            banned,
            failed,
            partial,
            max_held_events,
            weight_per_minute,
            depth,
        }
    }
}

impl fmt::Display for RestProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rest={}ms+{}ms held<={} weight={}/min",
            self.latency_ms, self.jitter_ms, self.max_held_events, self.weight_per_minute
        )?;
        let show = |r: Option<Ratio>| r.map_or("off".to_string(), |r| r.to_string());
        write!(
            f,
            " rest429={} rest418={} rest503={} rest_partial={}",
            show(self.rate_limited),
            show(self.banned),
            show(self.failed),
            show(self.partial)
        )
    }
}

/// Answers REST requests after a latency; see the module docs.
#[derive(Debug)]
pub struct RestModel {
    profile: RestProfile,
    rng: Rng,
    healed: bool,
    seq: u64,
    /// `(due, seq) -> request`.
    pending: BTreeMap<(u64, u64), (RequestId, RestRequest)>,
    /// Answers given, by kind (`ok`, `429`, `418`, `503`, `outage`, `partial`).
    pub answers: BTreeMap<&'static str, u64>,
    /// `(sent, weight)` of the requests of the last 60 s, and their sum: the client promises at most
    /// `rest.weight_per_minute` in any 60 s (one heavier request alone in an empty window).
    spent: VecDeque<(u64, u32)>,
    used: u32,
    /// Requests that broke the client's own weight budget.
    pub violations: Vec<String>,
}

impl RestModel {
    /// A model with `profile`'s faults, seeded from `seed`.
    pub fn new(profile: &RestProfile, seed: u64) -> RestModel {
        RestModel {
            profile: profile.clone(),
            rng: Rng::new(seed ^ 0x0000_0A9E_0000_0007),
            healed: false,
            seq: 0,
            pending: BTreeMap::new(),
            answers: BTreeMap::new(),
            spent: VecDeque::new(),
            used: 0,
            violations: Vec::new(),
        }
    }

    /// No more faults from now on.
    pub fn heal(&mut self) {
        self.healed = true;
    }

    /// Forgets every request (the client process was restarted; the new one starts a fresh budget).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.spent.clear();
        self.used = 0;
    }

    /// Requests not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A request sent at `now`.
    pub fn send(&mut self, id: RequestId, request: RestRequest, now: u64) {
        // The sliding window of `keel_core::rest::WeightBudget`, watched from the server's side.
        while self.spent.front().is_some_and(|&(t, _)| now - t >= 60_000) {
            let (_, w) = self.spent.pop_front().unwrap_or_default();
            self.used -= w;
        }
        let weight = request.weight();
        if self.used > 0 && self.used + weight > self.profile.weight_per_minute {
            self.violations.push(format!(
                "{} (weight {weight}) sent with {} weight already spent in the last 60 s: over rest.weight_per_minute {}",
                request.path(),
                self.used,
                self.profile.weight_per_minute
            ));
        }
        self.spent.push_back((now, weight));
        self.used += weight;
        let jitter = if self.profile.jitter_ms > 0 { self.rng.below(self.profile.jitter_ms + 1) } else { 0 };
        self.seq += 1;
        self.pending.insert((now + 2 * self.profile.latency_ms + jitter, self.seq), (id, request));
    }

    /// When the next answer arrives.
    pub fn next_time(&self) -> Option<u64> {
        self.pending.keys().next().map(|k| k.0)
    }

    /// The next answer due at or before `now`, built from the market in `net` as it is now.
    pub fn pop_due(&mut self, now: u64, net: &Network) -> Option<(RequestId, RestResponse)> {
        let (&key, _) = self.pending.first_key_value()?;
        if key.0 > now {
            return None;
        }
        let (id, request) = self.pending.remove(&key)?;
        Some((id, self.answer(&request, net)))
    }

    fn draw(&mut self, ratio: Option<Ratio>) -> bool {
        !self.healed && ratio.is_some_and(|r| r.draw(&mut self.rng))
    }

    fn count(&mut self, kind: &'static str) {
        *self.answers.entry(kind).or_default() += 1;
    }

    fn answer(&mut self, request: &RestRequest, net: &Network) -> RestResponse {
        let http =
            |status: u16, retry_after: Option<Duration>, body: String| RestResponse::Http { status, retry_after, body };
        if net.in_outage() {
            self.count("outage");
            return RestResponse::Failed { error: "connection refused (network outage)".into() };
        }
        if self.draw(self.profile.rate_limited) {
            self.count("429");
            let secs = 1 + self.rng.below(30);
            let body = r#"{"code":-1003,"msg":"Too much request weight used; current limit is 6000 request weight per 1 MINUTE."}"#;
            return http(429, Some(Duration::from_secs(secs)), body.into());
        }
        if self.draw(self.profile.banned) {
            self.count("418");
            return http(
                418,
                Some(Duration::from_secs(120)),
                r#"{"code":-1003,"msg":"Way too much request weight used; IP banned."}"#.into(),
            );
        }
        if self.draw(self.profile.failed) {
            self.count("503");
            return http(503, None, "<html>Service Unavailable</html>".into());
        }
        match request {
            // Trades from `fromId` on, at most `limit`, as far as the market has come; both endpoints
            // alike (aggTrades by `a`, historicalTrades by `t`).
            RestRequest::AggTrades { symbol, from_id, limit }
            | RestRequest::HistoricalTrades { symbol, from_id, limit } => {
                let historical = matches!(request, RestRequest::HistoricalTrades { .. });
                let kind = if historical { "trade" } else { "aggTrade" };
                let stream = format!("{}@{kind}", symbol.to_ascii_lowercase());
                let Some(next) = net.next_id(&stream) else {
                    return http(400, None, r#"{"code":-1121,"msg":"Invalid symbol."}"#.into());
                };
                let mut n = u64::from(*limit);
                if self.draw(self.profile.partial) {
                    self.count("partial");
                    n = self.rng.below(n + 1);
                }
                self.count("ok");
                let end = from_id.saturating_add(n).min(next);
                // A trade's time as the stream sent it, where the market still knows it.
                let time = |id: u64| net.trade_time(&stream, id);
                let body =
                    if historical { trades_body(*from_id..end, time) } else { agg_trades_body(*from_id..end, time) };
                http(200, None, body)
            }
            RestRequest::Klines { interval, start_time, end_time, limit, .. } if interval == "1m" => {
                let mut n = u64::from(*limit);
                if self.draw(self.profile.partial) {
                    self.count("partial");
                    n = self.rng.below(n + 1);
                }
                self.count("ok");
                let first = start_time.div_ceil(60_000);
                let last = (end_time / 60_000).min(first + n.max(1) - 1);
                let opens = (first..=last).take(n as usize).map(|m| m * 60_000);
                http(200, None, klines_body(opens))
            }
            // The model exchange carries aggTrade, trade, kline_1m and depth streams only.
            RestRequest::Klines { .. } => http(
                400,
                None,
                r#"{"code":-1100,"msg":"the simulator serves aggTrades, historicalTrades, 1m klines and depth only"}"#
                    .into(),
            ),
            RestRequest::Depth { symbol, .. } => match net.depth_model(symbol) {
                Some(model) => {
                    self.count("ok");
                    http(200, None, model.snapshot_body())
                }
                None => http(400, None, r#"{"code":-1121,"msg":"Invalid symbol."}"#.into()),
            },
        }
    }
}

/// The `/api/v3/klines` body for the 1m klines opening at `opens`, closed, with the prices and volumes
/// the stream sends for every kline.
pub fn klines_body(opens: impl Iterator<Item = u64>) -> String {
    let items: Vec<String> = opens
        .map(|t| {
            format!(r#"[{t},"0.0010","0.0025","0.0015","0.0020","1000",{},"1.0000",100,"500","0.500","0"]"#, t + 59_999)
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The `/api/v3/aggTrades` body for `ids`, with the same fields the stream sends for them; `T` is
/// `time(id)`, the time the stream sent, or the id where it is not known (older than the market's
/// recent window: earlier than any trade the stream sent since).
pub fn agg_trades_body(ids: std::ops::Range<u64>, time: impl Fn(u64) -> Option<u64>) -> String {
    let mut body = String::from("[");
    for a in ids {
        if body.len() > 1 {
            body.push(',');
        }
        let (p, q) = agg_trade_fields(a);
        body.push_str(&format!(
            r#"{{"a":{a},"p":"{p}","q":"{q}","f":{},"l":{},"T":{},"m":{},"M":true}}"#,
            3 * a,
            3 * a + 2,
            time(a).unwrap_or(a),
            a.is_multiple_of(2)
        ));
    }
    body.push(']');
    body
}

/// The `/api/v3/historicalTrades` body for trade ids `ids`, with the fields the `@trade` stream sends
/// for them (and Binance's `quoteQty` = price x qty, `isBestMatch`).
pub fn trades_body(ids: std::ops::Range<u64>, time: impl Fn(u64) -> Option<u64>) -> String {
    let mut body = String::from("[");
    for t in ids {
        if body.len() > 1 {
            body.push(',');
        }
        let (p, q) = agg_trade_fields(t);
        let ((pm, _), (qm, _), maker) = crate::exchange::trade_fields(t);
        let quote = u128::from(pm) * u128::from(qm);
        body.push_str(&format!(
            r#"{{"id":{t},"price":"{p}","qty":"{q}","quoteQty":"{}.{:05}","time":{},"isBuyerMaker":{maker},"isBestMatch":true}}"#,
            quote / 100_000,
            quote % 100_000,
            time(t).unwrap_or(t)
        ));
    }
    body.push(']');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_to_the_stream_fields() {
        let trades =
            keel_core::protocol::rest::decode_agg_trades(&agg_trades_body(41..43, |_| None), "BTCUSDT").unwrap();
        assert_eq!(trades.len(), 2);
        assert_eq!((trades[0].agg_id, trades[0].first_trade_id, trades[0].last_trade_id), (41, 123, 125));
        assert_eq!((trades[0].price.to_string(), trades[0].quantity.to_string()), ("30041.41".into(), "0.042".into()));
        assert!(trades[1].buyer_is_maker);
        assert_eq!(agg_trades_body(5..5, |_| None), "[]");
        let trades = keel_core::protocol::rest::decode_trades(&trades_body(41..43, |_| None), "BTCUSDT").unwrap();
        assert_eq!(trades.len(), 2);
        assert_eq!((trades[0].trade_id, trades[0].trade_time), (41, 41));
        assert_eq!((trades[0].price.to_string(), trades[0].quantity.to_string()), ("30041.41".into(), "0.042".into()));
        assert!(!trades[0].buyer_is_maker && trades[1].buyer_is_maker);
        assert_eq!(
            trades_body(7..8, |_| None),
            r#"[{"id":7,"price":"30007.07","qty":"0.008","quoteQty":"240.05656","time":7,"isBuyerMaker":false,"isBestMatch":true}]"#
        );
        assert_eq!(trades_body(5..5, |_| None), "[]");
    }

    #[test]
    fn requests_over_the_weight_budget_are_violations() {
        let mut profile = RestProfile::draw(1);
        profile.weight_per_minute = 40;
        let mut m = RestModel::new(&profile, 1);
        let trades = |from_id| RestRequest::HistoricalTrades { symbol: "BTCUSDT".into(), from_id, limit: 10 };
        let agg = |from_id| RestRequest::AggTrades { symbol: "BTCUSDT".into(), from_id, limit: 10 };
        // 25 into an empty window, then 4 at 0, 1 and 2 s (37 <= 40); at 60 s the two sent at 0 are
        // out of the window: 8 + 25 = 33 <= 40.
        m.send(RequestId(1), trades(1), 0);
        for i in 0..3 {
            m.send(RequestId(2 + i), agg(i), 1_000 * i);
        }
        m.send(RequestId(9), trades(2), 60_000);
        assert!(m.violations.is_empty(), "{:?}", m.violations);
        // At 61.5 s: 4 (2 s) + 25 (60 s) in the window, and 25 more is over 40.
        m.send(RequestId(10), trades(3), 61_500);
        assert_eq!(m.violations.len(), 1, "{:?}", m.violations);
        assert!(m.violations[0].contains("/api/v3/historicalTrades?symbol=BTCUSDT&fromId=3"), "{}", m.violations[0]);
        assert!(m.violations[0].contains("29 weight already spent"), "{}", m.violations[0]);
        // A heavier request than the whole budget is fine alone in an empty window; a restarted
        // client starts a fresh budget.
        m.clear();
        profile.weight_per_minute = 8;
        let mut small = RestModel::new(&profile, 1);
        small.send(RequestId(1), trades(1), 0);
        small.send(RequestId(2), trades(2), 60_000);
        assert!(small.violations.is_empty(), "{:?}", small.violations);
        small.send(RequestId(3), agg(1), 60_001);
        assert_eq!(small.violations.len(), 1);
        m.send(RequestId(11), trades(4), 61_600);
        assert_eq!(m.violations.len(), 1);
    }

    #[test]
    fn profiles_are_deterministic_and_vary() {
        assert_eq!(RestProfile::draw(7), RestProfile::draw(7));
        let on = (0..200).filter(|&s| RestProfile::draw(s).rate_limited.is_some()).count();
        assert!(on > 20 && on < 180, "{on}");
    }
}
