//! One aggTrade stream's hold-back queue: which ids are missing, which live trades wait behind them,
//! and what REST request closes the front gap next (issue 9, item 2).
//!
//! The queue is empty (live trades pass straight through) or starts with a gap; live trades behind
//! a gap are held until it is filled or abandoned, so trades come out in id order. Every id from
//! the first one seen on is either delivered or abandoned, exactly once: the `tail` (the highest id
//! delivered, queued or held) only grows, and anything at or below it is a duplicate.

use super::{RecoveryOutput, RecoveryStats};
use crate::protocol::{AggTrade, MarketEvent, Name};
use crate::rest::{AGG_TRADES_LIMIT, RestRequest};
use crate::time::Timestamp;
use std::collections::VecDeque;
use std::time::Duration;

/// Failed REST attempts (network errors, 5xx, empty answers) for one gap before it is abandoned.
pub const MAX_BACKFILL_FAILURES: u32 = 8;
/// Pause after the first failure; doubles up to [`MAX_RETRY_PAUSE`].
pub const FIRST_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between retries.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// A missing range being filled.
#[derive(Debug, Clone)]
struct Fill {
    /// Distinguishes this gap from an earlier one at the same ids, so a late answer cannot apply twice.
    serial: u64,
    /// The first id of the gap as reported.
    first: u64,
    /// The last missing id.
    last: u64,
    /// The next id to fetch: everything below it is delivered or abandoned.
    next: u64,
    /// Trades fetched so far.
    fetched: u64,
    /// Failures in a row.
    failures: u32,
    /// Not before this (after a failure).
    retry_at: Option<Timestamp>,
    /// A request for it is out.
    in_flight: bool,
}

#[derive(Debug, Clone)]
enum Item {
    Gap(Fill),
    Live(MarketEvent),
}

/// One aggTrade stream; see the module docs.
#[derive(Debug, Clone)]
pub(super) struct TradeStream {
    stream: Name,
    symbol: String,
    tail: Option<u64>,
    queue: VecDeque<Item>,
    held: usize,
}

/// What an answer to a backfill request said.
pub(super) enum Answer<'a> {
    /// Trades decoded from a 200.
    Trades(&'a [AggTrade]),
    /// No usable answer (network error, other status, undecodable body): retry after a pause.
    Failed(String),
    /// 429/418: the request is simply not answered; the gate pauses everything.
    RateLimited,
}

/// Context the stream needs from the machine for one operation.
pub(super) struct Ctx<'a> {
    pub out: &'a mut VecDeque<RecoveryOutput>,
    pub stats: &'a mut RecoveryStats,
    pub backfill: bool,
    pub max_held: usize,
    pub serial: &'a mut u64,
}

fn agg_id(event: &MarketEvent) -> Option<u64> {
    match event {
        MarketEvent::AggTrade(t) => Some(t.agg_id),
        _ => None,
    }
}

impl TradeStream {
    pub(super) fn new(stream: &str, symbol: &str) -> Self {
        TradeStream { stream: stream.into(), symbol: symbol.to_owned(), tail: None, queue: VecDeque::new(), held: 0 }
    }

    /// A live aggTrade: deliver, or hold behind a gap; an id beyond `tail + 1` opens a gap first
    /// (whether or not the connection reported it).
    pub(super) fn on_event(&mut self, event: MarketEvent, now: Timestamp, cx: &mut Ctx<'_>) {
        let Some(id) = agg_id(&event) else { return };
        if let MarketEvent::AggTrade(t) = &event
            && self.symbol.is_empty()
        {
            self.symbol = t.symbol.to_string();
        }
        if let Some(tail) = self.tail {
            if id <= tail {
                return; // already delivered, held or given up: never twice
            }
            if id > tail + 1 {
                self.on_gap(tail + 1, id - 1, now, cx);
            }
        }
        self.tail = Some(id);
        if self.queue.is_empty() {
            cx.out.push_back(RecoveryOutput::Deliver { stream: self.stream.clone(), event, backfilled: false });
            return;
        }
        self.queue.push_back(Item::Live(event));
        self.held += 1;
        cx.stats.held_events += 1;
        while self.held > cx.max_held && self.front_gap().is_some() {
            let reason = format!("hold-back buffer full ({} live trades held; rest.max_held_events)", self.held);
            self.abandon_front(&reason, cx);
        }
    }

    /// Ids `first..=last` are missing (reported by the connection, or implied by a live id).
    pub(super) fn on_gap(&mut self, first: u64, last: u64, _now: Timestamp, cx: &mut Ctx<'_>) {
        let first = match self.tail {
            Some(tail) => first.max(tail.saturating_add(1)),
            None => first,
        };
        if first > last {
            return;
        }
        self.tail = Some(last);
        if !cx.backfill {
            cx.stats.abandoned_ids += last - first + 1;
            cx.out.push_back(RecoveryOutput::Abandoned {
                stream: self.stream.to_string(),
                first,
                last,
                reason: "backfill is off (rest.backfill: false)".into(),
            });
            return;
        }
        *cx.serial += 1;
        self.queue.push_back(Item::Gap(Fill {
            serial: *cx.serial,
            first,
            last,
            next: first,
            fetched: 0,
            failures: 0,
            retry_at: None,
            in_flight: false,
        }));
    }

    fn front_gap(&mut self) -> Option<&mut Fill> {
        match self.queue.front_mut() {
            Some(Item::Gap(g)) => Some(g),
            _ => None,
        }
    }

    /// The request that would fill the front gap now, with the gap's serial; `None` when there is no
    /// gap, one is out, or it waits for a retry time.
    pub(super) fn want(&self, now: Timestamp) -> Option<(u64, RestRequest)> {
        let Some(Item::Gap(g)) = self.queue.front() else { return None };
        if g.in_flight || g.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        let limit = (g.last - g.next + 1).min(u64::from(AGG_TRADES_LIMIT)) as u16;
        Some((g.serial, RestRequest::AggTrades { symbol: self.symbol.clone(), from_id: g.next, limit }))
    }

    /// When [`Self::want`] will ask for something (`None`: nothing to ask, or waiting for an answer).
    pub(super) fn wants_at(&self) -> Option<Timestamp> {
        let Some(Item::Gap(g)) = self.queue.front() else { return None };
        if g.in_flight {
            return None;
        }
        Some(g.retry_at.unwrap_or(Timestamp::ZERO))
    }

    /// The request for the gap `serial` went out.
    pub(super) fn sent(&mut self, serial: u64) {
        if let Some(g) = self.front_gap()
            && g.serial == serial
        {
            g.in_flight = true;
        }
    }

    /// The answer to the request for gap `serial` from `from_id`. Answers for a gap that is gone
    /// (abandoned meanwhile) are ignored.
    pub(super) fn on_answer(
        &mut self,
        serial: u64,
        from_id: u64,
        answer: Answer<'_>,
        now: Timestamp,
        cx: &mut Ctx<'_>,
    ) {
        let stream = self.stream.clone();
        let Some(g) = self.front_gap() else { return };
        if g.serial != serial || g.next != from_id || !g.in_flight {
            return;
        }
        g.in_flight = false;
        let trades = match answer {
            Answer::RateLimited => return,
            Answer::Failed(why) => {
                self.failed(&why, now, cx);
                return;
            }
            Answer::Trades(trades) => trades,
        };
        let mut delivered_any = false;
        for t in trades {
            let Some(g) = self.front_gap() else { break };
            if t.agg_id < g.next || t.agg_id > g.last {
                continue; // outside what is missing: earlier ids are done, later ones come live
            }
            if t.agg_id > g.next {
                // Binance answered from a later id: the ids in between do not exist (any more).
                let (first, last) = (g.next, t.agg_id - 1);
                g.next = t.agg_id;
                cx.stats.abandoned_ids += last - first + 1;
                cx.out.push_back(RecoveryOutput::Abandoned {
                    stream: stream.to_string(),
                    first,
                    last,
                    reason: format!(
                        "Binance returned no trades for these ids (its answer to fromId={first} started at {})",
                        t.agg_id
                    ),
                });
            }
            g.next = t.agg_id + 1;
            g.fetched += 1;
            g.failures = 0;
            g.retry_at = None;
            delivered_any = true;
            cx.stats.backfilled_trades += 1;
            cx.out.push_back(RecoveryOutput::Deliver {
                stream: stream.clone(),
                event: MarketEvent::AggTrade(t.clone()),
                backfilled: true,
            });
        }
        let Some(g) = self.front_gap() else { return };
        if g.next > g.last {
            let (first, last, count) = (g.first, g.last, g.fetched);
            self.queue.pop_front();
            cx.out.push_back(RecoveryOutput::Backfilled { stream: stream.to_string(), first, last, count });
            self.drain(cx);
        } else if !delivered_any {
            if trades.iter().any(|t| t.agg_id > g.last) {
                // Trades after the gap exist but none inside it: the missing ids are gone.
                self.abandon_front("Binance has no trades for these ids", cx);
            } else {
                // An empty answer: REST may lag the stream by a moment; retry, then give up.
                let why = format!("no trades from fromId={}", g.next);
                self.failed(&why, now, cx);
            }
        }
    }

    fn failed(&mut self, why: &str, now: Timestamp, cx: &mut Ctx<'_>) {
        let Some(g) = self.front_gap() else { return };
        g.failures += 1;
        if g.failures >= MAX_BACKFILL_FAILURES {
            let reason = format!("REST gave up after {} failed attempts (last: {why})", g.failures);
            self.abandon_front(&reason, cx);
            return;
        }
        let pause = FIRST_RETRY_PAUSE.saturating_mul(1 << (g.failures - 1).min(16)).min(MAX_RETRY_PAUSE);
        g.retry_at = Some(now + pause);
    }

    /// Gives up the rest of the front gap, reports it (and what was fetched of it), releases what was held.
    fn abandon_front(&mut self, reason: &str, cx: &mut Ctx<'_>) {
        let Some(Item::Gap(g)) = self.queue.pop_front() else { return };
        if g.fetched > 0 {
            cx.out.push_back(RecoveryOutput::Backfilled {
                stream: self.stream.to_string(),
                first: g.first,
                last: g.next - 1,
                count: g.fetched,
            });
        }
        cx.stats.abandoned_ids += g.last - g.next + 1;
        cx.out.push_back(RecoveryOutput::Abandoned {
            stream: self.stream.to_string(),
            first: g.next,
            last: g.last,
            reason: reason.to_owned(),
        });
        self.drain(cx);
    }

    /// The run stops: every open gap is abandoned with `reason` and every held live trade is
    /// delivered, so that nothing received is lost with the hold-back buffer.
    pub(super) fn finish(&mut self, reason: &str, cx: &mut Ctx<'_>) {
        while self.front_gap().is_some() {
            self.abandon_front(reason, cx);
        }
    }

    /// The server restarted its numbering: open gaps are abandoned with `reason`, held trades are
    /// delivered, and the next id starts the stream over.
    pub(super) fn restart(&mut self, reason: &str, cx: &mut Ctx<'_>) {
        self.finish(reason, cx);
        self.tail = None;
    }

    /// Delivers held live trades up to the next gap.
    fn drain(&mut self, cx: &mut Ctx<'_>) {
        while let Some(Item::Live(_)) = self.queue.front() {
            let Some(Item::Live(event)) = self.queue.pop_front() else { break };
            self.held -= 1;
            cx.stats.held_events -= 1;
            cx.out.push_back(RecoveryOutput::Deliver { stream: self.stream.clone(), event, backfilled: false });
        }
    }
}
