//! Binance's REST API as the core sees it: the requests it decides to make, the responses the adapter
//! reports, how those are classified, and the request-weight budget (issue 9).
//!
//! The adapter moves bytes (an HTTP client over the `tls` settings); the core decides what to fetch
//! and when ([`crate::recovery::Recovery`]). Binance limits REST use per IP by *request weight*:
//! 6000 per minute, shared with everything else on the address, so keel spends only its configured
//! share (`rest.weight_per_minute`) through one [`WeightBudget`]. On HTTP 429 all requests wait
//! `Retry-After` (or 60 s); on 418 (the IP is banned for having ignored 429s) they wait at least
//! 5 minutes, doubling on each repeat, because Binance extends bans for clients that come back early.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// Binance's request weight of `GET /api/v3/aggTrades`.
pub const AGG_TRADES_WEIGHT: u32 = 4;
/// Most trades one `aggTrades` request returns (Binance's maximum `limit`).
pub const AGG_TRADES_LIMIT: u16 = 1000;
/// Binance's request weight of `GET /api/v3/historicalTrades` (security type NONE since 2023: no API key).
pub const HISTORICAL_TRADES_WEIGHT: u32 = 25;
/// Most trades one `historicalTrades` request returns (Binance's maximum `limit`).
pub const HISTORICAL_TRADES_LIMIT: u16 = 1000;
/// Binance's request weight of `GET /api/v3/klines`.
pub const KLINES_WEIGHT: u32 = 2;
/// Most klines one `klines` request returns (Binance's maximum `limit`).
pub const KLINES_LIMIT: u16 = 1000;
/// The sliding window of the weight budget (Binance counts weight per minute).
pub const WEIGHT_WINDOW: Duration = Duration::from_secs(60);
/// Wait after a 429 without `Retry-After`.
pub const RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Shortest wait after a 418 (IP ban); doubles with each further 418.
pub const BAN_WAIT: Duration = Duration::from_secs(300);

/// Identifies one request, so that its response can be matched to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rest#{}", self.0)
    }
}

/// One REST request the core wants made (`GET`, no body, no authentication).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestRequest {
    /// `GET /api/v3/aggTrades?symbol=BTCUSDT&fromId=..&limit=..`: aggregate trades from `from_id` on.
    AggTrades {
        /// Upper-case symbol (`BTCUSDT`).
        symbol: String,
        /// The first aggregate trade id wanted.
        from_id: u64,
        /// How many (1..=1000).
        limit: u16,
    },
    /// `GET /api/v3/historicalTrades?symbol=BTCUSDT&fromId=..&limit=..`: trades (`@trade` ids `t`)
    /// from `from_id` on.
    HistoricalTrades {
        /// Upper-case symbol (`BTCUSDT`).
        symbol: String,
        /// The first trade id wanted.
        from_id: u64,
        /// How many (1..=1000).
        limit: u16,
    },
    /// `GET /api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=..&endTime=..&limit=..[&timeZone=..]`:
    /// the klines whose open time is in `start_time..=end_time`.
    Klines {
        /// Upper-case symbol (`BTCUSDT`).
        symbol: String,
        /// Binance's interval text (`1s`, `1m`, .. `1M`).
        interval: String,
        /// Open time of the first kline wanted (ms since the Unix epoch).
        start_time: u64,
        /// Open time of the last kline wanted.
        end_time: u64,
        /// How many (1..=1000).
        limit: u16,
        /// The stream's UTC offset (`+08:00` for `@kline_1d@+08:00`), if any.
        time_zone: Option<String>,
    },
    /// `GET /api/v3/depth?symbol=BTCUSDT&limit=..`: an order-book snapshot.
    Depth {
        /// Upper-case symbol (`BTCUSDT`).
        symbol: String,
        /// Levels per side (5, 10, 20, 50, 100, 500, 1000 or 5000).
        limit: u16,
    },
}

impl RestRequest {
    /// Path and query to append to `rest.url`, e.g. `/api/v3/aggTrades?symbol=BTCUSDT&fromId=5&limit=1000`.
    pub fn path(&self) -> String {
        match self {
            RestRequest::AggTrades { symbol, from_id, limit } => {
                format!("/api/v3/aggTrades?symbol={symbol}&fromId={from_id}&limit={limit}")
            }
            RestRequest::HistoricalTrades { symbol, from_id, limit } => {
                format!("/api/v3/historicalTrades?symbol={symbol}&fromId={from_id}&limit={limit}")
            }
            RestRequest::Klines { symbol, interval, start_time, end_time, limit, time_zone } => {
                let mut path = format!(
                    "/api/v3/klines?symbol={symbol}&interval={interval}&startTime={start_time}&endTime={end_time}&limit={limit}"
                );
                if let Some(tz) = time_zone {
                    // `+` must be escaped in a query string (it would read as a space).
                    path.push_str("&timeZone=");
                    path.push_str(&tz.replace('+', "%2B").replace(':', "%3A"));
                }
                path
            }
            RestRequest::Depth { symbol, limit } => format!("/api/v3/depth?symbol={symbol}&limit={limit}"),
        }
    }

    /// Binance's request weight of this request.
    pub fn weight(&self) -> u32 {
        match self {
            RestRequest::AggTrades { .. } => AGG_TRADES_WEIGHT,
            RestRequest::HistoricalTrades { .. } => HISTORICAL_TRADES_WEIGHT,
            RestRequest::Klines { .. } => KLINES_WEIGHT,
            RestRequest::Depth { limit, .. } => depth_weight(*limit),
        }
    }

    /// The symbol asked about.
    pub fn symbol(&self) -> &str {
        match self {
            RestRequest::AggTrades { symbol, .. }
            | RestRequest::HistoricalTrades { symbol, .. }
            | RestRequest::Klines { symbol, .. }
            | RestRequest::Depth { symbol, .. } => symbol,
        }
    }
}

/// Binance's weight of `/api/v3/depth` by `limit`: 1-100: 5, 101-500: 25, 501-1000: 50, 1001-5000: 250.
pub fn depth_weight(limit: u16) -> u32 {
    match limit {
        0..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
    }
}

/// What the adapter saw of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestResponse {
    /// An HTTP response (any status), with `Retry-After` if present and the body as text.
    Http {
        /// HTTP status code.
        status: u16,
        /// The `Retry-After` header, if any.
        retry_after: Option<Duration>,
        /// The body.
        body: String,
    },
    /// No HTTP response: connect, TLS or IO error, or a timeout, as text.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// A response classified: what the core does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified<'a> {
    /// HTTP 200: decode the body.
    Ok(&'a str),
    /// HTTP 429 or 418: every request waits `wait` (already including the ban doubling).
    RateLimited {
        /// 429 or 418.
        status: u16,
        /// `Retry-After` as sent.
        retry_after: Option<Duration>,
    },
    /// Anything else (other status, network error): retry this request after a short pause.
    Failed(String),
}

impl RestResponse {
    /// Sorts the response into success, rate limit or failure (with a reason naming Binance's error
    /// code and message when the body has them).
    pub fn classify(&self) -> Classified<'_> {
        match self {
            RestResponse::Http { status: 200, body, .. } => Classified::Ok(body),
            RestResponse::Http { status: status @ (429 | 418), retry_after, .. } => {
                Classified::RateLimited { status: *status, retry_after: *retry_after }
            }
            RestResponse::Http { status, body, .. } => {
                let detail = match crate::protocol::rest::decode_error_body(body) {
                    Some(e) => e.to_string(),
                    None => {
                        let short: String = body.chars().take(200).collect();
                        format!("body {short:?}")
                    }
                };
                Classified::Failed(format!("HTTP {status}: {detail}"))
            }
            RestResponse::Failed { error } => Classified::Failed(error.clone()),
        }
    }
}

/// A sliding 60 s window of request weight spent: requests wait until their weight fits.
#[derive(Debug, Clone)]
pub struct WeightBudget {
    per_minute: u32,
    spent: VecDeque<(Timestamp, u32)>,
    used: u32,
}

impl WeightBudget {
    /// A budget of `per_minute` weight in any 60 s window.
    pub fn new(per_minute: u32) -> Self {
        WeightBudget { per_minute: per_minute.max(1), spent: VecDeque::new(), used: 0 }
    }

    /// Weight spent in the 60 s before `now`.
    pub fn used(&mut self, now: Timestamp) -> u32 {
        self.expire(now);
        self.used
    }

    /// Whether `weight` fits at `now`. A request heavier than the whole budget fits only in an
    /// empty window (so that it is possible at all, and spends the whole minute).
    pub fn fits(&mut self, weight: u32, now: Timestamp) -> bool {
        self.expire(now);
        self.used == 0 || self.used.saturating_add(weight) <= self.per_minute
    }

    /// Spends `weight` at `now` if it fits; returns whether it did.
    pub fn try_spend(&mut self, weight: u32, now: Timestamp) -> bool {
        if !self.fits(weight, now) {
            return false;
        }
        self.spent.push_back((now, weight));
        self.used = self.used.saturating_add(weight);
        true
    }

    /// The earliest time `weight` fits, if nothing else is spent meanwhile: the origin when it fits
    /// already (by the entries not yet expired at the last call; a time in the past means now).
    pub fn next_fit(&self, weight: u32) -> Timestamp {
        let fits = |used: u32| used == 0 || used.saturating_add(weight) <= self.per_minute;
        let mut used = self.used;
        if fits(used) {
            return Timestamp::ZERO;
        }
        for (t, w) in &self.spent {
            used -= w;
            if fits(used) {
                return *t + WEIGHT_WINDOW;
            }
        }
        Timestamp::ZERO
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some(&(t, w)) = self.spent.front() {
            if now.saturating_since(t) < WEIGHT_WINDOW {
                break;
            }
            self.spent.pop_front();
            self.used -= w;
        }
    }
}

/// The IP-wide pause after 429/418 (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RateGate {
    blocked_until: Option<Timestamp>,
    bans: u32,
}

impl RateGate {
    /// Whether requests may go out at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.blocked_until.is_none_or(|b| now >= b)
    }

    /// When requests may go out again, if they are paused.
    pub fn blocked_until(&self) -> Option<Timestamp> {
        self.blocked_until
    }

    /// A 429 (`status` 429) or 418 at `now`.
    pub fn rate_limited(&mut self, status: u16, retry_after: Option<Duration>, now: Timestamp) {
        let wait = if status == 418 {
            self.bans = self.bans.saturating_add(1);
            let doubled = BAN_WAIT.saturating_mul(1 << (self.bans - 1).min(6));
            retry_after.unwrap_or(doubled).max(doubled)
        } else {
            retry_after.unwrap_or(RATE_LIMIT_WAIT)
        };
        let until = now + wait;
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// A request succeeded: the ban doubling starts over.
    pub fn succeeded(&mut self) {
        self.bans = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn paths_and_weights() {
        let r = RestRequest::AggTrades { symbol: "BTCUSDT".into(), from_id: 5, limit: 1000 };
        assert_eq!(r.path(), "/api/v3/aggTrades?symbol=BTCUSDT&fromId=5&limit=1000");
        assert_eq!(r.weight(), 4);
        let r = RestRequest::HistoricalTrades { symbol: "BTCUSDT".into(), from_id: 7, limit: 3 };
        assert_eq!(r.path(), "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=7&limit=3");
        assert_eq!(r.weight(), 25);
        let mut r = RestRequest::Klines {
            symbol: "BTCUSDT".into(),
            interval: "1m".into(),
            start_time: 60_000,
            end_time: 120_000,
            limit: 2,
            time_zone: None,
        };
        assert_eq!(r.path(), "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=60000&endTime=120000&limit=2");
        assert_eq!(r.weight(), 2);
        if let RestRequest::Klines { time_zone, .. } = &mut r {
            *time_zone = Some("+08:00".into());
        }
        assert!(r.path().ends_with("&limit=2&timeZone=%2B08%3A00"), "{}", r.path());
        let table = [(5, 5), (100, 5), (500, 25), (1000, 50), (5000, 250)];
        for (limit, weight) in table {
            let r = RestRequest::Depth { symbol: "ETHUSDT".into(), limit };
            assert_eq!(r.weight(), weight, "limit {limit}");
            assert_eq!(r.path(), format!("/api/v3/depth?symbol=ETHUSDT&limit={limit}"));
        }
    }

    #[test]
    fn classification() {
        let http = |status, body: &str| RestResponse::Http { status, retry_after: None, body: body.into() };
        assert_eq!(http(200, "[]").classify(), Classified::Ok("[]"));
        assert_eq!(http(429, "").classify(), Classified::RateLimited { status: 429, retry_after: None });
        assert_eq!(http(418, "").classify(), Classified::RateLimited { status: 418, retry_after: None });
        let Classified::Failed(why) = http(400, r#"{"code":-1121,"msg":"Invalid symbol."}"#).classify() else {
            panic!("400 is a failure")
        };
        assert!(why.contains("400") && why.contains("-1121") && why.contains("Invalid symbol."), "{why}");
        let Classified::Failed(why) = http(502, "<html>bad gateway</html>").classify() else { panic!() };
        assert!(why.contains("502") && why.contains("bad gateway"), "{why}");
        let failed = RestResponse::Failed { error: "connection reset".into() };
        assert_eq!(failed.classify(), Classified::Failed("connection reset".into()));
    }

    #[test]
    fn the_budget_slides_over_60_seconds() {
        let mut b = WeightBudget::new(10);
        assert!(b.try_spend(4, t(0)));
        assert!(b.try_spend(4, t(1_000)));
        assert!(!b.try_spend(4, t(2_000)));
        assert_eq!(b.next_fit(4), t(60_000));
        assert_eq!(b.next_fit(2), Timestamp::ZERO);
        assert_eq!(b.used(t(59_999)), 8);
        assert_eq!(b.used(t(60_000)), 4);
        assert!(b.try_spend(4, t(60_000)));
        assert_eq!(b.next_fit(8), t(120_000));
        // Heavier than the whole budget: only in an empty window.
        assert!(!b.try_spend(250, t(100_000)));
        assert_eq!(b.next_fit(250), t(120_000));
        assert!(b.try_spend(250, t(120_000)));
        assert!(!b.fits(1, t(179_999)));
        assert!(b.fits(1, t(180_000)));
    }

    #[test]
    fn rate_limits_wait_and_bans_double() {
        let mut g = RateGate::default();
        assert!(g.is_open(t(0)));
        g.rate_limited(429, Some(Duration::from_secs(7)), t(0));
        assert_eq!((g.is_open(t(6_999)), g.is_open(t(7_000))), (false, true));
        g.rate_limited(429, None, t(7_000));
        assert_eq!(g.blocked_until(), Some(t(67_000)));
        g.rate_limited(418, None, t(67_000));
        assert_eq!(g.blocked_until(), Some(t(367_000)));
        g.rate_limited(418, Some(Duration::from_secs(1)), t(367_000));
        assert_eq!(g.blocked_until(), Some(t(967_000)));
        g.succeeded();
        g.rate_limited(418, Some(Duration::from_secs(900)), t(1_000_000));
        assert_eq!(g.blocked_until(), Some(t(1_900_000)));
    }
}
