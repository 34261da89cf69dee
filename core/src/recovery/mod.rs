//! [`Recovery`]: zero gap on top of the [`Connection`](crate::connection::Connection) (issue 9): aggTrade
//! and trade id gaps and missed closed klines are fetched over REST and delivered in order, and order
//! books are synced from snapshots.
//!
//! Sans-IO like the connection: the adapter feeds what the connection delivered and what REST
//! answered, and sends what [`Recovery::poll_request`] asks for. The run loop, beside the connection's:
//!
//! ```text
//! let mut rec = Recovery::new(&config, now);
//! // 1. For every Output of the Connection, in order:
//! //    Output::Event(Event::Market { stream, event }) => rec.handle_event(&stream, event, now),
//! //    Output::Gap(gap)                               => rec.handle_gap(&gap, now),
//! // 2. Send what it asks (each answer, later: rec.handle_response(id, response, now)):
//! while let Some((id, request)) = rec.poll_request(now) { rest_client.get(id, request.path()) }
//! // 3. Record / publish what comes out:
//! while let Some(out) = rec.poll_output() { .. }      // Deliver, Backfilled, Abandoned, BookSynced, BookResync
//! // 4. Wake at rec.poll_timeout() (with the connection's) and call rec.handle_timeout(now), then 2 and 3.
//! ```
//!
//! Rules it keeps:
//! - aggTrade events of a stream come out in id order: live trades behind a missing range are held
//!   (at most `rest.max_held_events` per stream) while `GET /api/v3/aggTrades` fetches it, up to
//!   1000 ids per request; a request reaches on into the gaps queued behind the first (its weight
//!   does not depend on its limit), and the held keys it brings back again are skipped. `@trade` streams the same by `t` with `GET /api/v3/historicalTrades`, and
//!   kline streams by the open time of their *closed* klines with `GET /api/v3/klines` (this machine
//!   sequences them: [`KlineInterval`]; running updates pass, or wait behind a gap, and a running
//!   update of a closed interval is dropped). Every key from the first one seen is delivered or reported
//!   [`RecoveryOutput::Abandoned`] exactly once. A gap is abandoned when backfill is off, when the
//!   hold-back buffer is full, when REST failed [`backfill::MAX_BACKFILL_FAILURES`] times in a row
//!   (pauses 1 s doubling to 30 s), or when Binance answers from a later id (the ids are gone).
//! - Every other event passes through at once, unchanged. Depth diffs (`<symbol>@depth[@100ms]`)
//!   also keep that symbol's [`OrderBook`] (Binance's "How to manage a local order book
//!   correctly"): diffs are buffered (at most `rest.max_held_events`) while `GET /api/v3/depth`
//!   fetches a snapshot; diffs with `u <= lastUpdateId` are dropped; the first applied one must
//!   straddle `lastUpdateId + 1` and every later one continue the previous (`U <= id + 1`), else the
//!   snapshot is fetched again; once synced ([`RecoveryOutput::BookSynced`]) a diff with
//!   `U > id + 1` discards that symbol's book only ([`RecoveryOutput::BookResync`]) and it syncs
//!   again. Snapshots go one at a time within the weight budget (at the default 1200/min and
//!   limit 1000, 24 a minute), so a mass reconnect cannot cause a 429 storm. Failed snapshots are
//!   retried after 1 s doubling to 30 s, never given up.
//! - REST spends at most `rest.weight_per_minute` of request weight in any 60 s
//!   ([`WeightBudget`]); after a 429 nothing is sent for `Retry-After` (or 60 s), after a 418 for at
//!   least 5 minutes, doubling ([`RateGate`]).

mod backfill;
pub mod book;
pub mod interval;

pub use backfill::{FIRST_RETRY_PAUSE, MAX_BACKFILL_FAILURES, MAX_RETRY_PAUSE};
pub use book::OrderBook;
use book::{BookCtx, BookSync};
pub use interval::{IntervalError, KlineInterval};

use crate::config::Config;
use crate::gaps::{Gap, GapKind};
use crate::protocol::rest::decode_depth;
use crate::protocol::{MarketEvent, Name};
use crate::rest::{Classified, RateGate, RequestId, RestRequest, RestResponse, WeightBudget, depth_weight};
use crate::time::Timestamp;
use backfill::{Answer, Ctx, Kind, SeqStream};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// What the adapter should do or know, from [`Recovery::poll_output`].
#[allow(clippy::large_enum_variant)] // Deliver is nearly all of the traffic; boxing it would allocate per event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryOutput {
    /// Pass this event on (record it). aggTrade events come out in id order, backfilled ones before
    /// newer live ones held behind the gap; every other stream passes through at once, unchanged.
    Deliver {
        /// The stream it belongs to (shared by the stream's events: cloning it is cheap).
        stream: Name,
        /// The event.
        event: MarketEvent,
        /// Fetched over REST rather than received live.
        backfilled: bool,
    },
    /// A gap was closed over REST: `count` trades fetched for `first..=last`.
    Backfilled {
        /// The aggTrade stream.
        stream: String,
        /// First id of the gap.
        first: u64,
        /// Last id of the gap.
        last: u64,
        /// Trades fetched (fewer than the range when part of it was abandoned).
        count: u64,
    },
    /// Ids `first..=last` could not be filled and are lost (REST gave up, Binance no longer has
    /// them, the hold-back buffer was full, backfill is off). Held events behind them are released.
    Abandoned {
        /// The aggTrade stream.
        stream: String,
        /// First lost id.
        first: u64,
        /// Last lost id.
        last: u64,
        /// Why, for the log.
        reason: String,
    },
    /// The book of `symbol` is synced from snapshot `last_update_id` (first sync or after a resync).
    BookSynced {
        /// Upper-case symbol.
        symbol: String,
        /// The snapshot's `lastUpdateId`.
        last_update_id: u64,
    },
    /// The book of `symbol` was discarded (a diff gap, or no diff straddling the snapshot) and will
    /// be resynced; only that symbol.
    BookResync {
        /// Upper-case symbol.
        symbol: String,
        /// Why, for the log.
        reason: String,
    },
    /// A stream resumed from an earlier run's recording ([`Recovery::resume`]) got a live id below
    /// the recorded last one but traded later: the server numbers afresh since that run. The
    /// recording's end is forgotten and the stream starts at `first` (nothing is fetched across).
    ResumeDiscarded {
        /// The stream.
        stream: String,
        /// The last id the recording holds.
        recorded: u64,
        /// The live id that showed the new numbering.
        first: u64,
    },
}

/// Where an earlier run's recording of a sequenced stream ends (its last complete row), for
/// [`Recovery::resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The last key: aggTrade `a`, trade `t`, or a kline's open time.
    pub key: u64,
    /// Whether that key is complete: always for trades; for a kline, whether the row was its close
    /// (a running update leaves the close of its interval still wanted).
    pub complete: bool,
    /// The trade time of that row (aggTrade/trade `T`, ms); 0 for klines.
    pub trade_time: u64,
}

/// Backfill counters of one kind of sequenced stream (`aggTrade`, `trade`, `kline`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStats {
    /// Events fetched over REST and delivered (aggTrades, trades, closed klines).
    pub backfilled: u64,
    /// Backfill requests sent (`aggTrades`, `historicalTrades`, `klines`).
    pub requests: u64,
    /// Keys reported lost (ids, or closed klines by open time).
    pub abandoned: u64,
}

/// The kinds of [`RecoveryStats::by_kind`], always present (0 when unseen) so that dashboards have
/// a series from the start.
pub const BACKFILL_KINDS: [&str; 3] = ["aggTrade", "trade", "kline"];

/// Counters of the recovery machine (next to `ConnectionStats` in `--stats-json` and the metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStats {
    /// Events fetched over REST and delivered, all kinds (aggTrades, trades, closed klines; the name
    /// is kept from when only aggTrades were backfilled).
    pub backfilled_trades: u64,
    /// Backfill requests sent, all kinds.
    pub backfill_requests: u64,
    /// Keys reported lost, all kinds (aggTrade and trade ids, closed klines).
    pub abandoned_ids: u64,
    /// The three counters above by kind: `aggTrade`, `trade`, `kline`.
    #[serde(default = "kinds_zero")]
    pub by_kind: BTreeMap<String, KindStats>,
    /// Live events held back right now, all streams.
    pub held_events: u64,
    /// Book snapshots requested.
    pub book_snapshots: u64,
    /// Books discarded and resynced.
    pub book_resyncs: u64,
    /// HTTP 429 and 418 answers.
    pub rest_rate_limited: u64,
    /// Other failed requests (network errors, other statuses, undecodable bodies).
    pub rest_failures: u64,
    /// Request weight spent in the last 60 s (as of the last call).
    pub weight_used_last_minute: u64,
}

fn kinds_zero() -> BTreeMap<String, KindStats> {
    BACKFILL_KINDS.iter().map(|k| (k.to_string(), KindStats::default())).collect()
}

impl Default for RecoveryStats {
    fn default() -> Self {
        RecoveryStats {
            backfilled_trades: 0,
            backfill_requests: 0,
            abandoned_ids: 0,
            by_kind: kinds_zero(),
            held_events: 0,
            book_snapshots: 0,
            book_resyncs: 0,
            rest_rate_limited: 0,
            rest_failures: 0,
            weight_used_last_minute: 0,
        }
    }
}

impl RecoveryStats {
    /// The counters of kind `label` (one of [`BACKFILL_KINDS`]).
    pub fn kind_mut(&mut self, label: &str) -> &mut KindStats {
        self.by_kind.entry(label.to_owned()).or_default()
    }

    /// The counters of kind `label` (zeros when it never counted).
    pub fn kind(&self, label: &str) -> KindStats {
        self.by_kind.get(label).cloned().unwrap_or_default()
    }
}

/// What a request in flight was for.
#[derive(Debug, Clone)]
enum Purpose {
    Backfill { stream: String, serial: u64, from: u64 },
    Snapshot { symbol: String, serial: u64 },
}

/// The recovery machine; see the module docs.
#[derive(Debug, Clone)]
pub struct Recovery {
    backfill: bool,
    max_held: usize,
    budget: WeightBudget,
    gate: RateGate,
    next_request: u64,
    serial: u64,
    in_flight: BTreeMap<RequestId, Purpose>,
    trades: BTreeMap<String, SeqStream>,
    books: BTreeMap<Name, BookSync>,
    depth_limit: u16,
    snapshot_in_flight: bool,
    out: VecDeque<RecoveryOutput>,
    stats: RecoveryStats,
}

/// `btcusdt@aggTrade` -> `BTCUSDT`.
fn symbol_of(stream: &str) -> String {
    stream.split('@').next().unwrap_or(stream).to_ascii_uppercase()
}

impl Recovery {
    /// A machine for `config.rest` and the sequenced streams (aggTrade, trade, kline) of `config.stream.streams`.
    pub fn new(config: &Config, _now: Timestamp) -> Recovery {
        let rest = &config.rest;
        let trades = config
            .stream
            .streams
            .iter()
            .filter_map(|s| Kind::of_stream(s).map(|kind| (s.clone(), SeqStream::new(s, &symbol_of(s), kind))))
            .collect();
        Recovery {
            backfill: rest.backfill,
            max_held: usize::try_from(rest.max_held_events).unwrap_or(usize::MAX).max(1),
            budget: WeightBudget::new(rest.weight_per_minute),
            gate: RateGate::default(),
            next_request: 0,
            serial: 0,
            in_flight: BTreeMap::new(),
            trades,
            books: BTreeMap::new(),
            depth_limit: rest.book_depth_limit,
            snapshot_in_flight: false,
            out: VecDeque::new(),
            stats: RecoveryStats::default(),
        }
    }

    fn ctx<'a>(
        out: &'a mut VecDeque<RecoveryOutput>,
        stats: &'a mut RecoveryStats,
        serial: &'a mut u64,
        backfill: bool,
        max_held: usize,
    ) -> Ctx<'a> {
        Ctx { out, stats, backfill, max_held, serial }
    }

    /// `stream` was recorded by an earlier run up to `last`: continue from there, so that the keys
    /// missed while keel was not running are backfilled like any gap and the recording has no hole
    /// between runs (call before the first event; returns whether it applies: false for a stream
    /// that is not sequenced here, or already has events). A live id below `last` with a later trade
    /// time means the server numbers afresh: [`RecoveryOutput::ResumeDiscarded`], and the stream
    /// starts over there.
    pub fn resume(&mut self, stream: &str, last: Recorded) -> bool {
        self.trades.get_mut(stream).is_some_and(|ts| ts.resume(&last))
    }

    /// An event the connection delivered on `stream` (call for each `Event::Market`, in order; pass
    /// the event's [`Name`] on, which costs no copy of the text).
    pub fn handle_event(&mut self, stream: impl Into<Name>, event: MarketEvent, now: Timestamp) {
        let stream: Name = stream.into();
        match &event {
            MarketEvent::AggTrade(_) | MarketEvent::Trade(_) | MarketEvent::Kline(_) => {
                if !self.trades.contains_key(stream.as_str()) {
                    let Some(kind) = Kind::of_stream(&stream) else {
                        self.out.push_back(RecoveryOutput::Deliver { stream, event, backfilled: false });
                        return;
                    };
                    self.trades.insert(stream.to_string(), SeqStream::new(&stream, event.symbol(), kind));
                }
                let Some(ts) = self.trades.get_mut(stream.as_str()) else { return };
                let mut cx = Self::ctx(&mut self.out, &mut self.stats, &mut self.serial, self.backfill, self.max_held);
                ts.on_event(event, now, &mut cx);
            }
            MarketEvent::Depth(diff) => {
                // The diff is delivered before what the book makes of it, but moved into the queue
                // only after the book has read it: no copy of its levels per event.
                let at = self.out.len();
                // By `Name`: the book's key is the decoder's shared symbol, found by pointer.
                let sync = match self.books.get_mut(&diff.symbol) {
                    Some(sync) => sync,
                    None => self
                        .books
                        .entry(diff.symbol.clone())
                        .or_insert_with(|| BookSync::new(&diff.symbol, &mut self.serial)),
                };
                let mut cx = BookCtx {
                    out: &mut self.out,
                    stats: &mut self.stats,
                    serial: &mut self.serial,
                    max_buffered: self.max_held,
                };
                sync.on_diff(diff, &mut cx);
                let deliver = RecoveryOutput::Deliver { stream, event, backfilled: false };
                if self.out.len() == at {
                    self.out.push_back(deliver);
                } else {
                    self.out.insert(at, deliver);
                }
            }
            _ => self.out.push_back(RecoveryOutput::Deliver { stream, event, backfilled: false }),
        }
    }

    /// A gap the connection reported (call for each `Output::Gap`, in order). aggTrade id gaps of
    /// `@aggTrade` streams and trade id gaps of `@trade` streams are backfilled; trade-id gaps inside
    /// continuous aggTrade ids cannot be, and are left to the log. (Kline streams have no gaps from the
    /// connection: this machine sequences them by open time itself.)
    pub fn handle_gap(&mut self, gap: &Gap, now: Timestamp) {
        let kind = match (gap.kind, Kind::of_stream(&gap.stream)) {
            (GapKind::AggTradeId, Some(kind @ Kind::AggTrade)) | (GapKind::TradeId, Some(kind @ Kind::Trade)) => kind,
            _ => return,
        };
        let ts = self
            .trades
            .entry(gap.stream.clone())
            .or_insert_with(|| SeqStream::new(&gap.stream, &symbol_of(&gap.stream), kind));
        let mut cx = Self::ctx(&mut self.out, &mut self.stats, &mut self.serial, self.backfill, self.max_held);
        ts.on_gap(gap.first_missing, gap.last_missing, now, &mut cx);
    }

    /// The server restarted the numbering of `stream` (call for each `Event::SequenceRestarted`, in
    /// order, before the events of the new numbering). An aggTrade or trade stream's gaps in the old numbering
    /// can no longer be fetched (`fromId` now means the new ids): they are reported
    /// [`RecoveryOutput::Abandoned`], the live trades held behind them are delivered, and the stream
    /// starts over at its next id. A depth stream's book is discarded ([`RecoveryOutput::BookResync`])
    /// and synced again from a fresh snapshot.
    pub fn handle_restart(&mut self, stream: &str, last: u64, first: u64, _now: Timestamp) {
        if let Some(ts) = self.trades.get_mut(stream) {
            let reason = format!(
                "the server restarted its {} ids (old numbering ended at {last}, new one starts at {first}): \
                 the old ids can no longer be fetched",
                ts.kind.label()
            );
            let mut cx = Self::ctx(&mut self.out, &mut self.stats, &mut self.serial, self.backfill, self.max_held);
            ts.restart(first, &reason, &mut cx);
            return;
        }
        let symbol = symbol_of(stream);
        if stream.contains("@depth") && self.books.remove(symbol.as_str()).is_some() {
            // An answer still out for the old book is ignored: the next diff makes a new one with a new serial.
            self.stats.book_resyncs += 1;
            let reason = format!(
                "the server restarted its update ids (old numbering ended at {last}, new one starts at {first})"
            );
            self.out.push_back(RecoveryOutput::BookResync { symbol, reason });
        }
    }

    /// The answer to request `id` (unknown ids are ignored).
    pub fn handle_response(&mut self, id: RequestId, response: RestResponse, now: Timestamp) {
        let Some(purpose) = self.in_flight.remove(&id) else { return };
        self.stats.weight_used_last_minute = u64::from(self.budget.used(now));
        let classified = response.classify();
        match &classified {
            Classified::RateLimited { status, retry_after } => {
                self.stats.rest_rate_limited += 1;
                self.gate.rate_limited(*status, *retry_after, now);
            }
            Classified::Failed(_) => self.stats.rest_failures += 1,
            Classified::Ok(_) => self.gate.succeeded(),
        }
        match purpose {
            Purpose::Backfill { stream, serial, from } => {
                let Some(ts) = self.trades.get_mut(&stream) else { return };
                let answer = match classified {
                    Classified::Ok(body) => match ts.kind.decode(body, ts.symbol()) {
                        Ok(events) => Answer::Events(events),
                        Err(e) => {
                            self.stats.rest_failures += 1;
                            Answer::Failed(e.to_string())
                        }
                    },
                    Classified::RateLimited { .. } => Answer::RateLimited,
                    Classified::Failed(why) => Answer::Failed(why),
                };
                let mut cx = Self::ctx(&mut self.out, &mut self.stats, &mut self.serial, self.backfill, self.max_held);
                ts.on_answer(serial, from, answer, now, &mut cx);
            }
            Purpose::Snapshot { symbol, serial } => {
                self.snapshot_in_flight = false;
                let Some(sync) = self.books.get_mut(symbol.as_str()) else { return };
                let snapshot = match classified {
                    Classified::Ok(body) => match decode_depth(body) {
                        Ok(snapshot) => Some(snapshot),
                        Err(_) => {
                            self.stats.rest_failures += 1;
                            None
                        }
                    },
                    _ => None,
                };
                let mut cx = BookCtx {
                    out: &mut self.out,
                    stats: &mut self.stats,
                    serial: &mut self.serial,
                    max_buffered: self.max_held,
                };
                sync.on_snapshot(serial, snapshot.as_ref(), now, &mut cx);
            }
        }
    }

    /// The run is stopping: call once, then drain [`Self::poll_output`] into the recorder. Gaps
    /// still being backfilled are reported [`RecoveryOutput::Abandoned`] and the live trades held
    /// behind them are delivered in order (received data is never dropped with the buffer);
    /// answers still out are ignored when they come.
    pub fn handle_shutdown(&mut self, _now: Timestamp) {
        self.in_flight.clear();
        self.snapshot_in_flight = false;
        let mut cx = Self::ctx(&mut self.out, &mut self.stats, &mut self.serial, self.backfill, self.max_held);
        for ts in self.trades.values_mut() {
            ts.finish("the run stopped before the gap was backfilled", &mut cx);
        }
    }

    /// Call when [`Self::poll_timeout`] is due. Requests that became possible are then returned by
    /// [`Self::poll_request`]; a spurious call does nothing.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.stats.weight_used_last_minute = u64::from(self.budget.used(now));
    }

    /// The next REST request to send at `now`, if one is due and fits the weight budget. Call until
    /// `None` after every `handle_*`. Backfill goes first (live trades wait behind it); snapshots go
    /// one at a time, so that many symbols resyncing at once are spread over the budget.
    #[must_use]
    pub fn poll_request(&mut self, now: Timestamp) -> Option<(RequestId, RestRequest)> {
        if !self.gate.is_open(now) {
            return None;
        }
        let id = RequestId(self.next_request);
        // The first stream whose request fits the budget: a heavy historicalTrades (25) that must
        // wait does not hold up a kline request (2) that fits now (poll_timeout counts on that).
        let budget = &mut self.budget;
        if let Some((stream, serial, from, request)) = self.trades.iter().find_map(|(name, ts)| {
            ts.want(now)
                .filter(|(_, _, r)| budget.fits(r.weight(), now))
                .map(|(serial, from, r)| (name.clone(), serial, from, r))
        }) {
            if !self.budget.try_spend(request.weight(), now) {
                return None;
            }
            self.in_flight.insert(id, Purpose::Backfill { stream: stream.clone(), serial, from });
            if let Some(ts) = self.trades.get_mut(&stream) {
                ts.sent(serial);
                self.stats.kind_mut(ts.kind.label()).requests += 1;
            }
            self.stats.backfill_requests += 1;
            return Some(self.sent(id, request, now));
        }
        if self.snapshot_in_flight {
            return None;
        }
        let (symbol, serial) =
            self.books.iter().find_map(|(symbol, b)| b.want(now).map(|serial| (symbol.to_string(), serial)))?;
        let request = RestRequest::Depth { symbol: symbol.clone(), limit: self.depth_limit };
        if !self.budget.try_spend(request.weight(), now) {
            return None;
        }
        if let Some(b) = self.books.get_mut(symbol.as_str()) {
            b.sent(serial);
        }
        self.snapshot_in_flight = true;
        self.in_flight.insert(id, Purpose::Snapshot { symbol, serial });
        self.stats.book_snapshots += 1;
        Some(self.sent(id, request, now))
    }

    fn sent(&mut self, id: RequestId, request: RestRequest, now: Timestamp) -> (RequestId, RestRequest) {
        self.next_request += 1;
        self.stats.weight_used_last_minute = u64::from(self.budget.used(now));
        (id, request)
    }

    /// The next thing to do or know.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<RecoveryOutput> {
        self.out.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next (a time in the past means now); `None` when
    /// nothing waits on time (only on answers or events).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let gate = self.gate.blocked_until().unwrap_or(Timestamp::ZERO);
        let trades = self
            .trades
            .values()
            .filter_map(|ts| ts.wants_at().map(|at| at.max(self.budget.next_fit(ts.kind.weight()))))
            .min();
        let trades = trades.map(|at| at.max(gate));
        let books =
            if self.snapshot_in_flight { None } else { self.books.values().filter_map(BookSync::wants_at).min() };
        let books = books.map(|at| at.max(self.budget.next_fit(depth_weight(self.depth_limit))).max(gate));
        match (trades, books) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The book of `symbol` (upper case), while it is synced.
    pub fn book(&self, symbol: &str) -> Option<&OrderBook> {
        self.books.get(symbol).and_then(BookSync::book)
    }

    /// The counters.
    pub fn stats(&self) -> &RecoveryStats {
        &self.stats
    }

    /// REST requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests;
