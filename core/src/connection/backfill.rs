//! [`BackfillPlanner`]: which REST requests close a reported aggTrade gap (issue 9, item 2).
//!
//! Pure decision logic, no IO: the adapter feeds gaps ([`BackfillPlanner::handle_gap`]) and REST
//! outcomes, and sends what [`BackfillPlanner::poll_request`] returns
//! (`GET /api/v3/aggTrades?symbol=..&fromId=..&limit=1000`). One request is in flight at a time;
//! each costs [`AGG_TRADES_WEIGHT`] of a per-minute weight budget (Binance: 6000/min per IP, shared
//! with everything else, so keel's share is configurable). A 429 waits `Retry-After` (or 60 s); a 418
//! (IP banned after ignoring 429s) waits at least 5 minutes and doubles on each repeat.

use crate::time::Timestamp;
use std::collections::VecDeque;
use std::time::Duration;

/// Binance's request weight of `GET /api/v3/aggTrades`.
pub const AGG_TRADES_WEIGHT: u32 = 4;
/// Trades per request (Binance's maximum for `limit`).
pub const AGG_TRADES_LIMIT: u64 = 1000;
const WINDOW: Duration = Duration::from_secs(60);

/// One REST request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggTradesRequest {
    /// Upper-case symbol, e.g. `BTCUSDT`.
    pub symbol: String,
    /// The first aggregate trade id wanted.
    pub from_id: u64,
    /// How many trades (at most 1000).
    pub limit: u64,
}

impl AggTradesRequest {
    /// Path and query, e.g. `/api/v3/aggTrades?symbol=BTCUSDT&fromId=5&limit=1000`.
    pub fn path(&self) -> String {
        format!("/api/v3/aggTrades?symbol={}&fromId={}&limit={}", self.symbol, self.from_id, self.limit)
    }
}

/// How a request ended, as the adapter saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestOutcome {
    /// 200 with the aggregate trade ids received (in order; may be empty).
    Trades { last_id: Option<u64> },
    /// HTTP 429 (optionally with `Retry-After`) or 418 (IP ban).
    RateLimited { status: u16, retry_after: Option<Duration> },
    /// Any other failure (network, 5xx): retried after a short pause.
    Failed,
}

/// One missing range `first..=last` of a symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Missing {
    symbol: String,
    first: u64,
    last: u64,
}

/// Plans the REST requests that fill aggTrade gaps, within a weight budget; see the module docs.
#[derive(Debug, Clone)]
pub struct BackfillPlanner {
    weight_per_minute: u32,
    spent: VecDeque<(Timestamp, u32)>,
    queue: VecDeque<Missing>,
    in_flight: Option<AggTradesRequest>,
    blocked_until: Option<Timestamp>,
    bans: u32,
}

impl BackfillPlanner {
    /// A planner allowed `weight_per_minute` of request weight (at least one request's worth).
    pub fn new(weight_per_minute: u32) -> Self {
        BackfillPlanner {
            weight_per_minute: weight_per_minute.max(AGG_TRADES_WEIGHT),
            spent: VecDeque::new(),
            queue: VecDeque::new(),
            in_flight: None,
            blocked_until: None,
            bans: 0,
        }
    }

    /// A gap in aggTrade ids on `stream` (`btcusdt@aggTrade`): queue `first..=last` for its symbol.
    pub fn handle_gap(&mut self, stream: &str, first: u64, last: u64) {
        if first > last {
            return;
        }
        let symbol = stream.split('@').next().unwrap_or(stream).to_ascii_uppercase();
        self.queue.push_back(Missing { symbol, first, last });
    }

    /// The next request to send at `now`, if one is due and the budget allows it.
    #[must_use]
    pub fn poll_request(&mut self, now: Timestamp) -> Option<AggTradesRequest> {
        if self.in_flight.is_some() || self.blocked_until.is_some_and(|b| now < b) {
            return None;
        }
        self.expire(now);
        let used: u32 = self.spent.iter().map(|(_, w)| w).sum();
        if used + AGG_TRADES_WEIGHT > self.weight_per_minute {
            return None;
        }
        let m = self.queue.front()?;
        let limit = (m.last - m.first + 1).min(AGG_TRADES_LIMIT);
        let request = AggTradesRequest { symbol: m.symbol.clone(), from_id: m.first, limit };
        self.spent.push_back((now, AGG_TRADES_WEIGHT));
        self.in_flight = Some(request.clone());
        Some(request)
    }

    /// The outcome of the request in flight at `now`.
    pub fn handle_outcome(&mut self, outcome: RestOutcome, now: Timestamp) {
        let Some(request) = self.in_flight.take() else { return };
        match outcome {
            RestOutcome::Trades { last_id } => {
                self.bans = 0;
                let Some(front) = self.queue.front_mut() else { return };
                match last_id {
                    // Nothing more exists in that range (or Binance no longer has it): give it up.
                    None => {
                        self.queue.pop_front();
                    }
                    Some(id) if id >= front.last => {
                        self.queue.pop_front();
                    }
                    Some(id) => front.first = front.first.max(id + 1).max(request.from_id),
                }
            }
            RestOutcome::RateLimited { status: 418, retry_after } => {
                self.bans = self.bans.saturating_add(1);
                let doubled = Duration::from_secs(300).saturating_mul(1 << (self.bans - 1).min(6));
                self.blocked_until = Some(now + retry_after.unwrap_or(doubled).max(doubled));
            }
            RestOutcome::RateLimited { retry_after, .. } => {
                self.blocked_until = Some(now + retry_after.unwrap_or(WINDOW));
            }
            RestOutcome::Failed => self.blocked_until = Some(now + Duration::from_secs(1)),
        }
    }

    /// When [`Self::poll_request`] may next return something (`None`: nothing queued or waiting
    /// for the request in flight).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return None;
        }
        let mut at = self.blocked_until;
        let used: u32 = self.spent.iter().map(|(_, w)| w).sum();
        if used + AGG_TRADES_WEIGHT > self.weight_per_minute
            && let Some((oldest, _)) = self.spent.front()
        {
            let free = *oldest + WINDOW;
            at = Some(at.map_or(free, |a| a.max(free)));
        }
        at
    }

    /// Ids still to fetch, all ranges together.
    pub fn outstanding(&self) -> u64 {
        self.queue.iter().map(|m| m.last - m.first + 1).sum()
    }

    fn expire(&mut self, now: Timestamp) {
        while self.spent.front().is_some_and(|(t, _)| now.saturating_since(*t) >= WINDOW) {
            self.spent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_gap_becomes_requests_of_1000_until_closed() {
        let mut p = BackfillPlanner::new(6000);
        p.handle_gap("btcusdt@aggTrade", 100, 2_599);
        let r = p.poll_request(t(0)).unwrap();
        assert_eq!(r.path(), "/api/v3/aggTrades?symbol=BTCUSDT&fromId=100&limit=1000");
        assert_eq!(p.poll_request(t(0)), None, "one request in flight");
        p.handle_outcome(RestOutcome::Trades { last_id: Some(1_099) }, t(10));
        assert_eq!(p.poll_request(t(10)).unwrap().from_id, 1_100);
        p.handle_outcome(RestOutcome::Trades { last_id: Some(2_099) }, t(20));
        let r = p.poll_request(t(20)).unwrap();
        assert_eq!((r.from_id, r.limit), (2_100, 500));
        p.handle_outcome(RestOutcome::Trades { last_id: Some(2_599) }, t(30));
        assert_eq!((p.outstanding(), p.poll_request(t(30)), p.poll_timeout()), (0, None, None));
    }

    #[test]
    fn the_weight_budget_spaces_requests_out() {
        let mut p = BackfillPlanner::new(8);
        p.handle_gap("ethusdt@aggTrade", 1, 10_000);
        for at in [0, 1] {
            let r = p.poll_request(t(at)).unwrap();
            p.handle_outcome(RestOutcome::Trades { last_id: Some(r.from_id + 999) }, t(at));
        }
        assert_eq!(p.poll_request(t(2)), None);
        assert_eq!(p.poll_timeout(), Some(t(60_000)));
        assert_eq!(p.poll_request(t(60_000)).unwrap().from_id, 2_001);
    }

    #[test]
    fn rate_limits_back_off_and_bans_double() {
        let mut p = BackfillPlanner::new(6000);
        p.handle_gap("btcusdt@aggTrade", 1, 10);
        let _ = p.poll_request(t(0));
        p.handle_outcome(RestOutcome::RateLimited { status: 429, retry_after: Some(Duration::from_secs(7)) }, t(0));
        assert_eq!((p.poll_request(t(6_999)), p.poll_timeout()), (None, Some(t(7_000))));
        let _ = p.poll_request(t(7_000)).unwrap();
        p.handle_outcome(RestOutcome::RateLimited { status: 418, retry_after: None }, t(7_000));
        assert_eq!(p.poll_timeout(), Some(t(307_000)));
        let _ = p.poll_request(t(307_000)).unwrap();
        p.handle_outcome(
            RestOutcome::RateLimited { status: 418, retry_after: Some(Duration::from_secs(1)) },
            t(307_000),
        );
        assert_eq!(p.poll_timeout(), Some(t(907_000)));
        let r = p.poll_request(t(907_000)).unwrap();
        assert_eq!((r.from_id, r.limit), (1, 10));
    }

    #[test]
    fn an_empty_answer_gives_the_range_up_and_moves_on() {
        let mut p = BackfillPlanner::new(6000);
        p.handle_gap("btcusdt@aggTrade", 5, 6);
        p.handle_gap("ethusdt@aggTrade", 9, 9);
        let _ = p.poll_request(t(0));
        p.handle_outcome(RestOutcome::Trades { last_id: None }, t(0));
        assert_eq!(p.poll_request(t(0)).unwrap().symbol, "ETHUSDT");
    }
}
