//! One sequenced stream's hold-back queue (aggTrade ids `a`, trade ids `t`, closed klines by open
//! time): which keys are missing, which live events wait behind them, and what REST request closes the
//! front gap next (issue 9, item 2; `@trade` and klines since the backfill work).
//!
//! The queue is empty (live events pass straight through) or starts with a gap; live events behind
//! a gap are held until it is filled or abandoned, so events come out in key order. Every key from
//! the first one seen on is either delivered or abandoned, exactly once: `expect` (the next key not yet
//! delivered, queued, held or given up) only grows, and anything below it is a duplicate.
//!
//! The three kinds differ only in [`Kind`]: how a key is read from an event, what the key after one
//! is (`id + 1`, or the next interval's open time), and which request fetches a range. A kline's key
//! is its open time and only its closed update (`x: true`) completes it; running updates of the
//! current interval (`x: false`) pass (or wait behind a gap) and do not move `expect`, and a running
//! update of an interval already closed is dropped as stale.

use super::interval::KlineInterval;
use super::{RecoveryOutput, RecoveryStats};
use crate::protocol::rest::{RestDecodeError, decode_agg_trades, decode_klines, decode_trades};
use crate::protocol::{MarketEvent, Name};
use crate::rest::{AGG_TRADES_LIMIT, HISTORICAL_TRADES_LIMIT, KLINES_LIMIT, RestRequest};
use crate::time::Timestamp;
use std::collections::VecDeque;
use std::time::Duration;

/// What a sequenced stream carries, and so how its keys step and how a gap is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    /// `<symbol>@aggTrade`: key `a`, fetched with `GET /api/v3/aggTrades`.
    AggTrade,
    /// `<symbol>@trade`: key `t`, fetched with `GET /api/v3/historicalTrades`.
    Trade,
    /// `<symbol>@kline_<interval>`: key = open time of a closed kline, fetched with `GET /api/v3/klines`.
    Kline(KlineInterval),
}

/// The time of a trade event (aggTrade or trade `T`), which REST answers carry too.
fn trade_time(event: &MarketEvent) -> Option<u64> {
    match event {
        MarketEvent::AggTrade(t) => Some(t.trade_time),
        MarketEvent::Trade(t) => Some(t.trade_time),
        _ => None,
    }
}

impl Kind {
    /// The kind of `stream` by its name, if it is sequenced here (a kline stream whose interval or
    /// offset cannot be read is not: its klines pass through unsequenced, as before).
    pub(super) fn of_stream(stream: &str) -> Option<Kind> {
        if stream.ends_with("@aggTrade") {
            Some(Kind::AggTrade)
        } else if stream.ends_with("@trade") {
            Some(Kind::Trade)
        } else if stream.contains("@kline_") {
            KlineInterval::of_stream(stream).ok().map(Kind::Kline)
        } else {
            None
        }
    }

    /// The label of the kind in stats and metrics.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Kind::AggTrade => "aggTrade",
            Kind::Trade => "trade",
            Kind::Kline(_) => "kline",
        }
    }

    /// The event's key, and whether it completes that key (false only for a running kline update).
    fn key(&self, event: &MarketEvent) -> Option<(u64, bool)> {
        match (self, event) {
            (Kind::AggTrade, MarketEvent::AggTrade(t)) => Some((t.agg_id, true)),
            (Kind::Trade, MarketEvent::Trade(t)) => Some((t.trade_id, true)),
            (Kind::Kline(_), MarketEvent::Kline(k)) => Some((k.open_time, k.is_closed)),
            _ => None,
        }
    }

    fn next(&self, key: u64) -> u64 {
        match self {
            Kind::Kline(i) => i.next(key),
            _ => key.saturating_add(1),
        }
    }

    fn prev(&self, key: u64) -> u64 {
        match self {
            Kind::Kline(i) => i.prev(key),
            _ => key.saturating_sub(1),
        }
    }

    /// Keys in `first..=last`.
    fn count(&self, first: u64, last: u64) -> u64 {
        match self {
            Kind::Kline(i) => i.count(first, last),
            _ => (last + 1).saturating_sub(first),
        }
    }

    /// The request for keys `from..=last` of `symbol` (at most the endpoint's limit).
    fn request(&self, symbol: &str, from: u64, last: u64) -> RestRequest {
        let n = self.count(from, last);
        let symbol = symbol.to_owned();
        match self {
            Kind::AggTrade => {
                RestRequest::AggTrades { symbol, from_id: from, limit: n.clamp(1, u64::from(AGG_TRADES_LIMIT)) as u16 }
            }
            Kind::Trade => RestRequest::HistoricalTrades {
                symbol,
                from_id: from,
                limit: n.clamp(1, u64::from(HISTORICAL_TRADES_LIMIT)) as u16,
            },
            Kind::Kline(i) => RestRequest::Klines {
                symbol,
                interval: i.text().to_owned(),
                start_time: from,
                end_time: last,
                limit: n.clamp(1, u64::from(KLINES_LIMIT)) as u16,
                time_zone: i.time_zone().map(str::to_owned),
            },
        }
    }

    /// Binance's weight of one request of this kind.
    pub(super) fn weight(&self) -> u32 {
        match self {
            Kind::AggTrade => crate::rest::AGG_TRADES_WEIGHT,
            Kind::Trade => crate::rest::HISTORICAL_TRADES_WEIGHT,
            Kind::Kline(_) => crate::rest::KLINES_WEIGHT,
        }
    }

    /// Decodes a 200 answer to [`Self::request`].
    pub(super) fn decode(&self, body: &str, symbol: &str) -> Result<Vec<MarketEvent>, RestDecodeError> {
        Ok(match self {
            Kind::AggTrade => decode_agg_trades(body, symbol)?.into_iter().map(MarketEvent::AggTrade).collect(),
            Kind::Trade => decode_trades(body, symbol)?.into_iter().map(MarketEvent::Trade).collect(),
            Kind::Kline(i) => {
                decode_klines(body, symbol, i.text())?.into_iter().map(|k| MarketEvent::Kline(Box::new(k))).collect()
            }
        })
    }
}

/// Failed REST attempts (network errors, 5xx, empty answers) for one gap before it is abandoned.
pub const MAX_BACKFILL_FAILURES: u32 = 8;
/// Pause after the first failure; doubles up to [`MAX_RETRY_PAUSE`].
pub const FIRST_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between retries.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// A missing range being filled.
#[derive(Debug, Clone)]
struct Fill {
    /// Distinguishes this gap from an earlier one at the same keys, so a late answer cannot apply twice.
    serial: u64,
    /// The first key of the gap as reported.
    first: u64,
    /// The last missing key.
    last: u64,
    /// The next key to fetch: everything below it is delivered or abandoned.
    next: u64,
    /// Events fetched so far.
    fetched: u64,
    /// The trade time of the last event fetched (0: none, or a kline).
    fetched_time: u64,
    /// Failures in a row.
    failures: u32,
    /// Not before this (after a failure).
    retry_at: Option<Timestamp>,
    /// A request for it is out.
    in_flight: bool,
    /// The gap since an earlier run's recording ([`SeqStream::resume`]): that recording's last trade
    /// time. A fetched trade older than it is of another numbering (0: no such floor).
    not_before: u64,
}

#[derive(Debug, Clone)]
enum Item {
    Gap(Fill),
    Live(MarketEvent),
}

/// One sequenced stream; see the module docs.
#[derive(Debug, Clone)]
pub(super) struct SeqStream {
    stream: Name,
    symbol: String,
    pub(super) kind: Kind,
    /// The next key not yet delivered, held, queued as missing or given up (`None` before the first event).
    expect: Option<u64>,
    queue: VecDeque<Item>,
    held: usize,
    /// The last missing key of the gap queued last. Gaps leave the queue from the front only, so
    /// while any gap is queued this one is: `want` reads it instead of scanning the held events.
    last_gap_end: u64,
    /// After a numbering restart whose first key lay inside a gap already partly fetched: keys
    /// `.0...1` with a trade time at or before `.2` were delivered as backfill (see [`Self::restart`]).
    fetched_ahead: Option<(u64, u64, u64)>,
    /// Resumed from an earlier run's recording ([`Self::resume`]) and no live key at or past `expect`
    /// seen yet: the recorded last key and its trade time (0 for klines, whose keys are times).
    resumed: Option<(u64, u64)>,
}

/// What an answer to a backfill request said.
pub(super) enum Answer {
    /// Events decoded from a 200.
    Events(Vec<MarketEvent>),
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

impl SeqStream {
    pub(super) fn new(stream: &str, symbol: &str, kind: Kind) -> Self {
        SeqStream {
            stream: stream.into(),
            symbol: symbol.to_owned(),
            kind,
            expect: None,
            queue: VecDeque::new(),
            held: 0,
            last_gap_end: 0,
            fetched_ahead: None,
            resumed: None,
        }
    }

    /// An earlier run recorded this stream up to `last` (see [`super::Recorded`]): what follows it is
    /// expected next, so that the keys missed while keel was not running are fetched like any gap,
    /// and live keys at or below it (already in the recording) are not delivered twice. Only before
    /// the first event; later it would move `expect` under events already handed on.
    pub(super) fn resume(&mut self, last: &super::Recorded) -> bool {
        if self.expect.is_some() || !self.queue.is_empty() {
            return false;
        }
        self.expect = Some(if last.complete { self.kind.next(last.key) } else { last.key });
        self.resumed = Some((last.key, last.trade_time));
        true
    }

    /// The symbol REST is asked about (upper case).
    pub(super) fn symbol(&self) -> &str {
        &self.symbol
    }

    fn abandoned(&self, first: u64, last: u64, cx: &mut Ctx<'_>) {
        let n = self.kind.count(first, last);
        cx.stats.abandoned_ids += n;
        cx.stats.kind_mut(self.kind.label()).abandoned += n;
    }

    /// A live event: deliver, or hold behind a gap; a key beyond `expect` opens a gap first
    /// (whether or not the connection reported it).
    pub(super) fn on_event(&mut self, event: MarketEvent, now: Timestamp, cx: &mut Ctx<'_>) {
        let Some((key, complete)) = self.kind.key(&event) else { return };
        if let Some((first, end, time)) = self.fetched_ahead {
            if key >= end {
                self.fetched_ahead = None;
            } else if key >= first && trade_time(&event).is_some_and(|t| t <= time) {
                return; // the same trade, delivered as backfill before the restart was known
            }
        }
        if self.symbol.is_empty() {
            self.symbol = event.symbol().to_string();
        }
        let mut resumed_floor = None;
        if let (Some((recorded, recorded_time)), Some(expect)) = (self.resumed, self.expect) {
            if key >= expect {
                self.resumed = None;
                resumed_floor = Some(recorded_time);
            } else if trade_time(&event).is_some_and(|t| t > recorded_time) {
                // A lower id traded after the recording's last one: the server numbers afresh since
                // that run (an exchange restarted). Taken as already recorded, every event would be
                // dropped until the ids pass the old ones: a silent feed.
                self.resumed = None;
                self.expect = None;
                cx.out.push_back(RecoveryOutput::ResumeDiscarded {
                    stream: self.stream.to_string(),
                    recorded,
                    first: key,
                });
            }
        }
        if let Some(expect) = self.expect {
            if key < expect {
                return; // already delivered, held or given up (or a stale running kline): never twice
            }
            if key > expect {
                self.on_gap(expect, self.kind.prev(key), now, cx);
                // The queue was empty at the resume: a gap at its back is the one since the recording.
                if let (Some(floor), Some(Item::Gap(g))) = (resumed_floor, self.queue.back_mut()) {
                    g.not_before = floor;
                }
            }
        }
        self.expect = Some(if complete { self.kind.next(key) } else { key });
        if self.queue.is_empty() {
            cx.out.push_back(RecoveryOutput::Deliver { stream: self.stream.clone(), event, backfilled: false });
            return;
        }
        self.queue.push_back(Item::Live(event));
        self.held += 1;
        cx.stats.held_events += 1;
        while self.held > cx.max_held && self.front_gap().is_some() {
            let reason = format!("hold-back buffer full ({} live events held; rest.max_held_events)", self.held);
            self.abandon_front(&reason, cx);
        }
    }

    /// Keys `first..=last` are missing (reported by the connection, or implied by a live key).
    pub(super) fn on_gap(&mut self, first: u64, last: u64, _now: Timestamp, cx: &mut Ctx<'_>) {
        let first = match self.expect {
            Some(expect) => first.max(expect),
            None => first,
        };
        if first > last {
            return;
        }
        self.expect = Some(self.kind.next(last));
        if !cx.backfill {
            self.abandoned(first, last, cx);
            cx.out.push_back(RecoveryOutput::Abandoned {
                stream: self.stream.to_string(),
                first,
                last,
                reason: "backfill is off (rest.backfill: false)".into(),
            });
            return;
        }
        *cx.serial += 1;
        self.last_gap_end = last;
        self.queue.push_back(Item::Gap(Fill {
            serial: *cx.serial,
            first,
            last,
            next: first,
            fetched: 0,
            fetched_time: 0,
            failures: 0,
            retry_at: None,
            in_flight: false,
            not_before: 0,
        }));
    }

    fn front_gap(&mut self) -> Option<&mut Fill> {
        match self.queue.front_mut() {
            Some(Item::Gap(g)) => Some(g),
            _ => None,
        }
    }

    /// The request that would fill the front gap now, with the gap's serial and the first key asked
    /// for; `None` when there is no gap, one is out, or it waits for a retry time.
    pub(super) fn want(&self, now: Timestamp) -> Option<(u64, u64, RestRequest)> {
        let Some(Item::Gap(g)) = self.queue.front() else { return None };
        if g.in_flight || g.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        // A request costs the same weight whatever its limit, so it reaches on into the gaps queued
        // behind the front one (the held live keys between them come back too, and are skipped): a
        // stream that keeps losing a few keys at a time must not spend a request on each gap, or a
        // small `rest.weight_per_minute` falls behind for good (simulator seed 300270).
        Some((g.serial, g.next, self.kind.request(&self.symbol, g.next, self.last_gap_end)))
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

    /// The answer to the request for gap `serial` from key `from`. Answers for a gap that is gone
    /// (abandoned meanwhile) are ignored.
    pub(super) fn on_answer(&mut self, serial: u64, from: u64, answer: Answer, now: Timestamp, cx: &mut Ctx<'_>) {
        let stream = self.stream.clone();
        let kind = self.kind.clone();
        let label = kind.label();
        let Some(g) = self.front_gap() else { return };
        if g.serial != serial || g.next != from || !g.in_flight {
            return;
        }
        g.in_flight = false;
        let events = match answer {
            Answer::RateLimited => return,
            Answer::Failed(why) => {
                self.failed(&why, now, cx);
                return;
            }
            Answer::Events(events) => events,
        };
        let mut delivered_any = false;
        let mut beyond = false;
        for event in events {
            let Some((key, true)) = kind.key(&event) else { continue };
            // The answer goes on past a gap it completed: it reached into the next one (see `want`).
            if self.front_gap().is_some_and(|g| g.next > g.last && key > g.last) {
                self.complete_front(cx);
            }
            let Some(g) = self.front_gap() else { break };
            if key > g.last {
                beyond = true;
            }
            if key < g.next || key > g.last {
                continue; // outside what is missing: earlier keys are done, later ones come live
            }
            if trade_time(&event).is_some_and(|t| t < g.not_before) {
                // The ids after the recording's last one traded before it: the recording is of another
                // numbering (another server, or one renumbered since). Fetching on would write old
                // trades of a different market into the files.
                self.abandon_front(
                    "the trades after the recording's last id traded before it: the recording is of another \
                     numbering (another server?); not backfilled",
                    cx,
                );
                return;
            }
            if key > g.next {
                // Binance answered from a later key: the ones in between do not exist (any more).
                let (first, last) = (g.next, kind.prev(key));
                g.next = key;
                let n = kind.count(first, last);
                cx.stats.abandoned_ids += n;
                cx.stats.kind_mut(label).abandoned += n;
                cx.out.push_back(RecoveryOutput::Abandoned {
                    stream: stream.to_string(),
                    first,
                    last,
                    reason: format!(
                        "Binance returned nothing for these keys (its answer from {first} started at {key})"
                    ),
                });
            }
            g.next = kind.next(key);
            g.fetched += 1;
            g.fetched_time = trade_time(&event).unwrap_or(0);
            g.failures = 0;
            g.retry_at = None;
            delivered_any = true;
            cx.stats.backfilled_trades += 1;
            cx.stats.kind_mut(label).backfilled += 1;
            cx.out.push_back(RecoveryOutput::Deliver { stream: stream.clone(), event, backfilled: true });
        }
        let Some(g) = self.front_gap() else { return };
        if g.next > g.last {
            self.complete_front(cx);
        } else if g.serial != serial {
            // The gap asked for is closed; this later one is asked for next.
        } else if !delivered_any {
            if beyond {
                // Events after the gap exist but none inside it: the missing keys are gone.
                self.abandon_front("Binance has nothing for these keys", cx);
            } else {
                // An empty answer: REST may lag the stream by a moment; retry, then give up.
                let why = format!("nothing from {}", g.next);
                self.failed(&why, now, cx);
            }
        }
    }

    /// The front gap is filled: reports it and releases the live events held behind it.
    fn complete_front(&mut self, cx: &mut Ctx<'_>) {
        let Some(Item::Gap(g)) = self.queue.pop_front() else { return };
        cx.out.push_back(RecoveryOutput::Backfilled {
            stream: self.stream.to_string(),
            first: g.first,
            last: g.last,
            count: g.fetched,
        });
        self.drain(cx);
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
                last: self.kind.prev(g.next),
                count: g.fetched,
            });
        }
        self.abandoned(g.next, g.last, cx);
        cx.out.push_back(RecoveryOutput::Abandoned {
            stream: self.stream.to_string(),
            first: g.next,
            last: g.last,
            reason: reason.to_owned(),
        });
        self.drain(cx);
    }

    /// The run stops: every open gap is abandoned with `reason` and every held live event is
    /// delivered, so that nothing received is lost with the hold-back buffer.
    pub(super) fn finish(&mut self, reason: &str, cx: &mut Ctx<'_>) {
        while self.front_gap().is_some() {
            self.abandon_front(reason, cx);
        }
    }

    /// The server restarted its numbering at key `first`: open gaps are abandoned with `reason`,
    /// held events are delivered, and the next key starts the stream over.
    ///
    /// A restart whose first key lies inside a gap already fetched past it means the gap was none:
    /// the new numbering's first frame arrived before the old numbering's last one (keel-sim seed
    /// 607188), which read as a jump forward, and REST, serving the new numbering, filled the "gap"
    /// with the new numbering's trades. Those come again live after the restart; they are dropped
    /// by key and trade time (a real trade of the new numbering with a key the old one was fetched
    /// at happened after the old one's trades, so its time is later).
    pub(super) fn restart(&mut self, first: u64, reason: &str, cx: &mut Ctx<'_>) {
        self.fetched_ahead = self.queue.iter().find_map(|item| match item {
            Item::Gap(g) if g.first <= first && first < g.next && g.fetched_time > 0 => {
                Some((first, g.next, g.fetched_time))
            }
            _ => None,
        });
        self.finish(reason, cx);
        self.expect = None;
        // The recording's end belongs to the old numbering too: kept, it would judge the new one's keys.
        self.resumed = None;
    }

    /// Delivers held live events up to the next gap.
    fn drain(&mut self, cx: &mut Ctx<'_>) {
        while let Some(Item::Live(_)) = self.queue.front() {
            let Some(Item::Live(event)) = self.queue.pop_front() else { break };
            self.held -= 1;
            cx.stats.held_events -= 1;
            cx.out.push_back(RecoveryOutput::Deliver { stream: self.stream.clone(), event, backfilled: false });
        }
    }
}
