//! Seeded runs of the real [`Connection`] against the model network and exchange, in virtual time.
//!
//! The loop jumps straight to the earliest of the machine's `poll_timeout()`, the network's next
//! event or delivery, the next invariant deadline and the end of the safety phase: no sleeping, no
//! wall clock, so a simulated day takes milliseconds. The run has two phases (TigerBeetle's VOPR):
//! a safety phase with the seed's faults, then a liveness phase with the network healed, in which
//! the machine must be live again within `max_delay + handshake_timeout` (or, when a rate-limit
//! wait is already running, that wait + handshake timeout), plus a few network round trips. The invariants of issue 4 are checked after every
//! step by `Checker`, from what the machine emitted and what the model knows it sent.
//!
//! A machine that gave up (fatal error, or too many failures through a long outage) is checked to
//! have done so for a reason, then replaced by a fresh one when the network is back, the way an
//! operator or a supervisor restarts the process; its transport ids are kept apart by an
//! incarnation number in the upper bits.

use crate::exchange::{TradeFields, agg_trade_fields, trade_fields};
use crate::network::{FromClient, Network, Tid, ToClient};
use crate::profile::FaultProfile;
use crate::rest_sim::RestModel;
use crate::scaler_sim::mix;
use keel_core::classify::{ErrorClass, classify_error};
use keel_core::connection::{Connection, Event, Input, Output, StopReason, TransportId, WsMessage};
use keel_core::gaps::{GapKind, Sequence};
use keel_core::protocol::{self, Decimal, Frame, MarketEvent, Name};
use keel_core::recovery::{OrderBook, Recorded, Recovery, RecoveryOutput};
use keel_core::time::Timestamp;
use keel_core::trace::TraceRecord;
use std::collections::{BTreeMap, VecDeque};

/// Transports one machine may hold at once (a make-before-break rollover needs two).
pub const MAX_TRANSPORTS: usize = 2;
/// Events kept for a failure report.
const TAIL: usize = 120;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnFailure {
    /// The invariant and what was seen.
    pub invariant: String,
    /// Simulated time.
    pub at: Timestamp,
    /// The last inputs and outputs before it (only filled when the run was asked to keep them).
    pub recent: Vec<String>,
}

/// What a run that kept every invariant did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnSummary {
    /// Simulated milliseconds.
    pub simulated_ms: u64,
    /// Steps of the event loop.
    pub steps: u64,
    /// `Open` outputs.
    pub attempts: u64,
    /// `Connected` events.
    pub connects: u64,
    /// Market events delivered.
    pub market_events: u64,
    /// Gaps reported.
    pub gaps: u64,
    /// Machines that gave up (and were restarted).
    pub gave_up: u64,
    /// Heartbeat timeouts, stall actions and rollovers the machine reported.
    pub heartbeat_timeouts: u64,
    /// Stall actions (resubscribe or reconnect).
    pub stalls: u64,
    /// Planned reconnects (scheduled or serverShutdown).
    pub rollovers: u64,
    /// Faults the model injected, as `name=count`.
    pub faults: String,
    /// Hash of every output.
    pub hash: u64,
    /// Trades and closed klines the recovery machine fetched over REST and delivered.
    pub backfilled: u64,
    /// Keys (trade ids, kline intervals) it reported lost.
    pub abandoned_ids: u64,
    /// Of `backfilled`: trades of `@trade` streams (fetched with historicalTrades).
    pub trade_backfilled: u64,
    /// Of `abandoned_ids`: trade ids of `@trade` streams.
    pub trade_abandoned: u64,
    /// REST answers by kind, as `kind=count`.
    pub rest: String,
    /// Order books synced (first syncs and resyncs).
    pub book_syncs: u64,
    /// Order books discarded for a diff gap.
    pub book_resyncs: u64,
    /// Numbering restarts the machine reported (`Event::SequenceRestarted`).
    pub id_restarts: u64,
    /// Streams a restarted process resumed from the recording, and resumes discarded (a new numbering).
    pub resumes: u64,
    pub resumes_discarded: u64,
}

/// The distance between consecutive keys of `stream`: 60 000 ms of open time on the model's 1m kline
/// streams, 1 for ids.
fn kline_step(stream: &str) -> u64 {
    if stream.contains("@kline_") { 60_000 } else { 1 }
}

/// The id of a trade event (aggTrade `a`, trade `t`), and its decoded (price, quantity, maker side) to
/// compare with [`trade_fields`]; `None` for every other event.
fn trade_id(event: &MarketEvent) -> Option<(u64, TradeFields)> {
    let (id, price, qty, maker) = match event {
        MarketEvent::AggTrade(t) => (t.agg_id, t.price, t.quantity, t.buyer_is_maker),
        MarketEvent::Trade(t) => (t.trade_id, t.price, t.quantity, t.buyer_is_maker),
        _ => return None,
    };
    Some((id, ((price.mantissa(), price.scale()), (qty.mantissa(), qty.scale()), maker)))
}

/// The numbering whose every id the checker demands on `stream`, once, in order, or reported missing:
/// aggTrade ids on `@aggTrade` streams, trade ids on `@trade` streams (an aggTrade stream's trade-id
/// gaps, `f`/`l` jumps, cannot happen in the model: `f` = 3a).
fn covered_kind(stream: &str) -> Option<GapKind> {
    if stream.ends_with("@aggTrade") {
        Some(GapKind::AggTradeId)
    } else if stream.ends_with("@trade") {
        Some(GapKind::TradeId)
    } else {
        None
    }
}

/// What the checker remembers of the recovery machine (issue 9): per trade stream (aggTrade, trade), the last id
/// it delivered or abandoned (each next one must continue it: in order, each id once, no hole; per
/// kline stream the same for closed klines by open time),
/// and the last id the connection delivered live.
#[derive(Debug, Default)]
struct RecCheck {
    end: BTreeMap<Name, u64>,
    live: BTreeMap<Name, u64>,
    /// Per depth symbol: the book's update id last compared with the model (`None`: not synced).
    book: BTreeMap<String, Option<u64>>,
    /// Per (restarted stream, first id of a numbering): the trades of that numbering delivered once
    /// the stream had restarted. `end` starts over at each restart, so it cannot see a trade of the
    /// new numbering delivered before the restart was reported and again after it (seed 607188).
    numbered: BTreeMap<(Name, u64), Coverage>,
    /// Per sequenced stream, the last event delivered: what the recording ends with, which a
    /// restarted process resumes from (as `keel stream` does from its files).
    recorded: BTreeMap<Name, Recorded>,
}

/// The client's-eye state of one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `Open` emitted at this time; no `Opened` yet.
    Connecting { since: u64 },
    /// `Opened` delivered; the last frame of any kind arrived at `last_inbound`.
    Open { last_inbound: u64 },
}

/// Ids delivered or reported missing on one stream, as disjoint sorted ranges.
#[derive(Debug, Clone, Default)]
struct Coverage {
    ranges: Vec<(u64, u64)>,
}

impl Coverage {
    /// Adds `lo..=hi`; `Err` with the overlapping range if any id was already covered.
    fn add(&mut self, lo: u64, hi: u64) -> Result<(), (u64, u64)> {
        let pos = self.ranges.partition_point(|&(_, h)| h < lo);
        if let Some(&(l, h)) = self.ranges.get(pos)
            && l <= hi
        {
            return Err((l, h));
        }
        self.ranges.insert(pos, (lo, hi));
        // Merge with neighbours that touch.
        let mut i = pos.saturating_sub(1);
        while i + 1 < self.ranges.len() {
            if self.ranges[i].1 + 1 == self.ranges[i + 1].0 {
                self.ranges[i].1 = self.ranges[i + 1].1;
                self.ranges.remove(i + 1);
            } else if i > pos {
                break;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

/// Everything the invariants need to remember about one machine's life.
#[derive(Debug, Default)]
struct Machine {
    /// Transport id offset of this incarnation.
    base: u64,
    transports: BTreeMap<u64, Side>,
    /// Ids ever opened (never reused).
    used: std::collections::BTreeSet<u64>,
    /// Earliest time the next `Open` may come, and the latest, after a `Disconnected`.
    next_open: Option<(u64, u64)>,
    coverage: BTreeMap<Name, Coverage>,
    opens: u64,
    connects: u64,
    gaps: u64,
    markets: u64,
    /// HeartbeatTimeout, StreamStalled, Rollover and Malformed events seen.
    heartbeat_timeouts: u64,
    stalls: u64,
    rollovers: u64,
    malformed: u64,
    gave_up: bool,
    started: u64,
    /// While a make-before-break rollover runs: the faults injected when it started (`None`: the old
    /// transport was already half-open then, so the rollover is not fault-free), and the new transport.
    rolling: Option<(Option<u64>, Option<u64>)>,
    /// When the last rollover began.
    rolling_since: u64,
    /// A gap reported during a fault-free rollover, until the event that revealed it shows its transport.
    suspect_gap: Option<String>,
    /// Numbering restarts reported per stream.
    id_restarts: BTreeMap<String, usize>,
    /// Per (stream, first id of a numbering that followed a restart): the lowest trade id of that
    /// numbering handed to this machine. The restart it reports must start there: an event the machine
    /// was handed and never passed on, without a gap, is lost.
    handed_min: BTreeMap<(String, u64), u64>,
}

/// One seed's connection run.
pub struct ConnSim<'p> {
    profile: &'p FaultProfile,
    now: u64,
    end: u64,
    heal_at: u64,
    healed: bool,
    /// Must be live by then (set at the heal, or at a restart in the liveness phase).
    live_by: Option<u64>,
    live_since_heal: bool,
    /// When `live_since_heal` became true.
    live_after_heal: Option<u64>,
    conn: Connection,
    net: Network,
    m: Machine,
    incarnation: u64,
    /// Attempt times over the whole run (Binance's budget is per IP, not per process).
    attempt_times: VecDeque<u64>,
    restart_at: Option<u64>,
    tail: Option<VecDeque<String>>,
    /// While the recovery settles after the run, the time its steps run at. The connection's clock
    /// (`now`) stays at the end, but a failure report must date the REST answers it lists.
    settle_now: Option<u64>,
    /// The first machine's trace, when asked for (`keel-sim run --trace`); a restarted machine
    /// is not recorded, since a trace holds one machine.
    trace: Option<Vec<TraceRecord>>,
    trace_closed: bool,
    summary: ConnSummary,
    /// The recovery machine beside the connection, its REST model and what the checker knows.
    rec: Recovery,
    rest: RestModel,
    rc: RecCheck,
}

fn tid(id: TransportId, base: u64) -> Tid {
    base + id.0
}

impl<'p> ConnSim<'p> {
    /// A run of `hours` simulated hours; `keep_tail` records the last events for a failure report.
    pub fn new(profile: &'p FaultProfile, hours: f64, keep_tail: bool) -> Self {
        let start = profile.clock_start_ms;
        let total = (hours * 3_600_000.0) as u64;
        // The liveness phase: the last hour, or the last quarter of a short run.
        let liveness = (total / 4).min(3_600_000);
        let conn = Connection::new(&profile.config, profile.machine_seed, Timestamp::from_millis(start));
        ConnSim {
            rec: Recovery::new(&profile.config, Timestamp::from_millis(start)),
            rest: RestModel::new(&profile.rest, profile.seed),
            rc: RecCheck::default(),
            profile,
            now: start,
            end: start.saturating_add(total),
            heal_at: start.saturating_add(total) - liveness,
            healed: false,
            live_by: None,
            live_since_heal: false,
            live_after_heal: None,
            conn,
            net: Network::new(profile, start),
            m: Machine { started: start, ..Machine::default() },
            incarnation: 0,
            attempt_times: VecDeque::new(),
            restart_at: None,
            tail: keep_tail.then(VecDeque::new),
            settle_now: None,
            trace: None,
            trace_closed: false,
            summary: ConnSummary { hash: 0xcbf2_9ce4_8422_2325, ..ConnSummary::default() },
        }
    }

    /// Records the first machine's trace (its `Start` record is written now).
    pub fn with_trace(mut self) -> Self {
        let p = self.profile;
        let mut records = vec![TraceRecord::Start {
            config: p.config.clone(),
            seed: p.machine_seed,
            now: Timestamp::from_millis(p.clock_start_ms),
        }];
        // The first Open is already waiting in the machine; drain() records it when run() starts.
        records.reserve(1024);
        self.trace = Some(records);
        self
    }

    /// The recorded trace (empty unless [`Self::with_trace`] was used).
    pub fn take_trace(&mut self) -> Vec<TraceRecord> {
        self.trace.take().unwrap_or_default()
    }

    fn record(&mut self, record: impl FnOnce() -> TraceRecord) {
        if let Some(t) = self.trace.as_mut().filter(|_| !self.trace_closed) {
            t.push(record());
        }
    }

    /// The time events are dated with in failure reports.
    fn clock(&self) -> u64 {
        self.settle_now.unwrap_or(self.now)
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        let rel = self.rel(self.clock());
        if let Some(tail) = &mut self.tail {
            if tail.len() == TAIL {
                tail.pop_front();
            }
            let mut line = format!("{rel} {}", text());
            if line.len() > 240 {
                let mut cut = 240;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push_str(" ...");
            }
            tail.push_back(line);
        }
    }

    /// Simulated time since the start of the run, as logs show it (`t=+12.345s`).
    fn rel(&self, t: u64) -> Timestamp {
        Timestamp::from_millis(t.saturating_sub(self.profile.clock_start_ms))
    }

    fn fail(&self, invariant: String) -> ConnFailure {
        ConnFailure {
            invariant,
            at: self.rel(self.clock()),
            recent: self.tail.as_ref().map(|t| t.iter().cloned().collect()).unwrap_or_default(),
        }
    }

    /// Runs to the end, checking every invariant after every step.
    pub fn run(&mut self) -> Result<ConnSummary, ConnFailure> {
        let cfg = &self.profile.config;
        let dead_after = cfg.heartbeat.ping_interval_ms + cfg.heartbeat.pong_timeout_ms;
        let handshake = cfg.tls.handshake_timeout_ms;
        let profile = self.profile;
        self.note(|| format!("machine 0 starts: {profile}"));
        self.drain()?;
        let mut same_time_steps = 0u32;
        loop {
            // 1. The next thing that happens: machine deadline, network, invariant deadline, phase change.
            let mut next = self.conn.poll_timeout().map(Timestamp::as_millis);
            let mut consider = |t: Option<u64>| {
                if let Some(t) = t {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            };
            consider(self.net.next_event_time());
            consider(self.deadline(dead_after, handshake));
            consider(self.live_by.map(|t| t + 1));
            consider(self.restart_at);
            consider(self.rec.poll_timeout().map(Timestamp::as_millis));
            consider(self.rest.next_time());
            if !self.healed {
                consider(Some(self.heal_at));
            }
            let Some(next) = next else { break };
            if next > self.end {
                break;
            }
            if next <= self.now {
                same_time_steps += 1;
                if same_time_steps > 100_000 {
                    return Err(self.fail("livelock: 100000 steps without time advancing".into()));
                }
            } else {
                same_time_steps = 0;
            }
            self.now = self.now.max(next);
            self.summary.steps += 1;

            // 2. Phase change: faults stop; the machine must recover in bounded time.
            if !self.healed && self.now >= self.heal_at {
                self.healed = true;
                self.net.heal(self.now);
                self.rest.heal();
                self.note(|| "network healed: liveness phase".into());
                let cfg = &self.profile.config;
                if !self.m.gave_up {
                    self.set_live_deadline(cfg.reconnect.max_delay_ms + handshake);
                } else {
                    self.restart_at = Some(self.now);
                }
            }
            if self.restart_at.is_some_and(|t| t <= self.now) {
                self.restart()?;
            }

            // 3. The network moves, then delivers what is due, one input at a time.
            self.net.advance(self.now);
            while let Some((id, msg)) = self.net.pop_delivery(self.now) {
                self.deliver(id, msg)?;
            }
            // 3b. REST answers, and the recovery machine's own deadlines.
            self.step_recovery(self.now)?;
            // 4. The machine's own deadlines.
            if self.conn.poll_timeout().is_some_and(|t| t.as_millis() <= self.now) {
                self.note(|| "handle_timeout".into());
                let now = Timestamp::from_millis(self.now);
                self.record(|| TraceRecord::Timeout { now });
                self.conn.handle_timeout(now);
                self.drain()?;
            }
            // A spurious wake-up (nothing due): the machine must do nothing.
            else if self.profile.spurious_timeouts {
                let due = self.conn.poll_timeout();
                let now = Timestamp::from_millis(self.now);
                self.record(|| TraceRecord::Timeout { now });
                self.conn.handle_timeout(now);
                if let Some(out) = self.conn.poll_output() {
                    return Err(self.fail(format!(
                        "a spurious handle_timeout at {} (poll_timeout was {:?}) produced {out:?}",
                        self.rel(self.now),
                        due.map(|t| self.rel(t.as_millis()))
                    )));
                }
                if self.conn.poll_timeout() != due {
                    return Err(self.fail(format!(
                        "a spurious handle_timeout moved poll_timeout from {due:?} to {:?}",
                        self.conn.poll_timeout()
                    )));
                }
            }
            // 5. Deadlines of the invariants.
            self.check_deadlines(dead_after, handshake)?;
        }
        self.now = self.end;
        self.finish()
    }

    /// The earliest time an invariant deadline expires (the loop wakes just after it to check).
    fn deadline(&self, dead_after: u64, handshake: u64) -> Option<u64> {
        self.m
            .transports
            .values()
            .map(|s| match *s {
                Side::Connecting { since } => since + handshake + 1,
                Side::Open { last_inbound } => last_inbound + dead_after + 1,
            })
            .min()
    }

    /// `n` one-way network trips at their longest (latency + jitter).
    fn trips(&self, n: u64) -> u64 {
        n * (self.profile.latency_ms + self.profile.latency_jitter_ms)
    }

    /// What a connection takes past its first attempt's start to come up: a few network trips (the
    /// reset of a dead transport, TCP + TLS + upgrade, Opened) and a millisecond of rounding.
    fn connect_trips(&self) -> u64 {
        self.trips(8) + 1
    }

    fn set_live_deadline(&mut self, budget: u64) {
        let p = self.profile;
        let trips = self.connect_trips();
        // A rate-limit wait already running (the exchange's Retry-After, or the floor the machine
        // applies after a 1008 close) legitimately delays the first attempt.
        let ban = self.net.ban_until().saturating_sub(self.now);
        let announced = self.m.next_open.map_or(0, |(earliest, _)| earliest.saturating_sub(self.now));
        let by = self.now + budget.max(ban.max(announced) + p.config.tls.handshake_timeout_ms) + trips;
        self.live_by = Some(by);
        self.live_since_heal = false;
    }

    /// A fresh machine replaces one that gave up (the operator restarts it).
    fn restart(&mut self) -> Result<(), ConnFailure> {
        self.restart_at = None;
        self.incarnation += 1;
        // A trace holds one machine: keep the first one's, record nothing of the new one.
        self.trace_closed = true;
        let seed = self.profile.machine_seed.wrapping_add(self.incarnation);
        let n = self.incarnation;
        self.note(|| format!("machine {n} starts (restart after giving up)"));
        self.conn = Connection::new(&self.profile.config, seed, Timestamp::from_millis(self.now));
        // The recovery machine lives in the same process: it restarts too, and what it held is gone.
        self.rec = Recovery::new(&self.profile.config, Timestamp::from_millis(self.now));
        self.rest.clear();
        // What was recorded survives the process: the new one resumes each stream after its last
        // delivered key, and the checker demands continuity from there (what was abandoned after it
        // is owed again: the new process fetches it anew).
        let recorded = std::mem::take(&mut self.rc.recorded);
        self.rc = RecCheck::default();
        for (stream, last) in recorded {
            if !self.rec.resume(stream.as_str(), last) {
                return Err(self.fail(format!("a fresh recovery machine refused to resume {stream} at {last:?}")));
            }
            let end = if last.complete { last.key } else { last.key.saturating_sub(kline_step(stream.as_str())) };
            self.note(|| format!("resume {stream} after {} (complete: {})", last.key, last.complete));
            self.summary.resumes += 1;
            self.rc.end.insert(stream.clone(), end);
            self.rc.recorded.insert(stream, last);
        }
        self.m = Machine { base: self.incarnation << 32, started: self.now, ..Machine::default() };
        if self.healed {
            let handshake = self.profile.config.tls.handshake_timeout_ms;
            self.set_live_deadline(handshake);
        }
        self.drain()
    }

    fn deliver(&mut self, id: Tid, msg: ToClient) -> Result<(), ConnFailure> {
        let local = id.wrapping_sub(self.m.base);
        if id < self.m.base || local >= 1 << 32 {
            return Ok(()); // a transport of a previous machine: its process is gone
        }
        let tid = TransportId(local);
        let now = self.now;
        if let Some(side) = self.m.transports.get_mut(&local) {
            match (side, &msg) {
                (side @ Side::Connecting { .. }, ToClient::Opened) => *side = Side::Open { last_inbound: now },
                (Side::Open { last_inbound }, _) => *last_inbound = now,
                _ => {}
            }
        }
        if matches!(msg, ToClient::Failed(_) | ToClient::Closed { .. }) {
            self.m.transports.remove(&local);
        }
        if let ToClient::Text(text) = &msg
            && self.net.any_id_restarts()
        {
            self.note_handed(text);
        }
        let input = match msg {
            ToClient::Opened => Input::Opened { id: tid },
            ToClient::Failed(error) => Input::Failed { id: tid, error },
            ToClient::Closed { code, reason } => Input::Closed { id: tid, code, reason },
            ToClient::Text(text) => Input::Text { id: tid, text },
            ToClient::Ping(payload) => Input::Ping { id: tid, payload },
            ToClient::Pong(payload) => Input::Pong { id: tid, payload },
        };
        self.note(|| format!("in  {input:?}"));
        self.record(|| TraceRecord::Input { now: Timestamp::from_millis(now), input: input.clone() });
        self.conn.handle_input(input, Timestamp::from_millis(now));
        self.drain()
    }

    /// Remembers the lowest id of each restarted numbering handed to the machine (only once a
    /// restart happened: this decodes the frame a second time).
    fn note_handed(&mut self, text: &str) {
        let Ok(Frame::Market { stream, event }) = protocol::decode(text) else {
            return;
        };
        let Some((id, _)) = trade_id(&event) else { return };
        if self.net.id_restarts(&stream) == 0 {
            return;
        }
        let Some(numbering) = self.net.numbering_of(&stream, id) else { return };
        let min = self.m.handed_min.entry((stream.to_string(), numbering)).or_insert(id);
        *min = (*min).min(id);
    }

    /// Applies every output of the machine and checks the invariants after the step.
    fn drain(&mut self) -> Result<(), ConnFailure> {
        while let Some(out) = self.conn.poll_output() {
            self.note(|| format!("out {out:?}"));
            self.record(|| TraceRecord::Output { output: out.clone() });
            digest(&mut self.summary.hash, self.now, &out);
            self.apply(out)?;
        }
        self.drain_recovery(self.now)?;
        self.check_step()
    }

    /// Delivers REST answers due at `now` and runs the recovery machine's deadline, checking each step.
    fn step_recovery(&mut self, now: u64) -> Result<(), ConnFailure> {
        while let Some((id, response)) = self.rest.pop_due(now, &self.net) {
            self.note(|| format!("rest {id} {response:?}"));
            self.rec.handle_response(id, response, Timestamp::from_millis(now));
            self.drain_recovery(now)?;
        }
        let t = Timestamp::from_millis(now);
        if self.rec.poll_timeout().is_some_and(|due| due <= t) {
            self.rec.handle_timeout(t);
            self.drain_recovery(now)?;
        } else if self.profile.spurious_timeouts {
            let due = self.rec.poll_timeout();
            self.rec.handle_timeout(t);
            let out = self.rec.poll_output();
            let request = self.rec.poll_request(t);
            if out.is_some() || request.is_some() || self.rec.poll_timeout() != due {
                return Err(self.fail(format!(
                    "a spurious Recovery::handle_timeout (poll_timeout {due:?}) produced {out:?} / {request:?}"
                )));
            }
        }
        Ok(())
    }

    /// Sends what the recovery machine asks and checks what it outputs: trade ids of each stream
    /// come out delivered or abandoned in order, each exactly once, with the exchange's fields.
    fn drain_recovery(&mut self, now: u64) -> Result<(), ConnFailure> {
        let t = Timestamp::from_millis(now);
        while let Some((id, request)) = self.rec.poll_request(t) {
            self.note(|| format!("rest {id} <- {}", request.path()));
            self.rest.send(id, request, now);
        }
        if let Some(v) = self.rest.violations.first() {
            return Err(self.fail(format!("the REST API saw the client break its weight budget: {v}")));
        }
        while let Some(out) = self.rec.poll_output() {
            // The recovery machine's outputs go into the run's hash too (--check-determinism).
            let (kind, a, b) = match &out {
                RecoveryOutput::Deliver { event, backfilled, .. } => {
                    let id = match event.sequence() {
                        Sequence::AggTrade { id, .. } | Sequence::Trade { id } => id,
                        Sequence::Depth { last, .. } => last,
                        _ => event.event_time(),
                    };
                    (9, id, u64::from(*backfilled))
                }
                RecoveryOutput::Backfilled { first, last, .. } => (10, *first, *last),
                RecoveryOutput::Abandoned { first, last, .. } => (11, *first, *last),
                RecoveryOutput::BookSynced { last_update_id, .. } => (12, *last_update_id, 0),
                RecoveryOutput::BookResync { .. } => (13, 0, 0),
                RecoveryOutput::ResumeDiscarded { stream, .. } => (14, self.net.id_restarts(stream) as u64, 0),
            };
            for x in [now, kind, a, b] {
                mix(&mut self.summary.hash, x);
            }
            let (stream, first, last) = match out {
                RecoveryOutput::Deliver { stream, event, backfilled } if trade_id(&event).is_some() => {
                    let Some((id, fields)) = trade_id(&event) else { continue };
                    let agg_ids = match &event {
                        MarketEvent::AggTrade(t) => (t.first_trade_id, t.last_trade_id) == (3 * id, 3 * id + 2),
                        _ => true,
                    };
                    if fields != trade_fields(id) || !agg_ids {
                        return Err(self.fail(format!("recovery delivered trade {id} on {stream} as {event:?}")));
                    }
                    if self.net.id_restarts(stream.as_str()) > 0
                        && let Some(numbering) = self.net.numbering_of(stream.as_str(), id)
                        && let Err((l, h)) =
                            self.rc.numbered.entry((stream.clone(), numbering)).or_default().add(id, id)
                    {
                        return Err(self.fail(format!(
                            "recovery delivered trade {id} on {stream} twice in its numbering (delivered: {l}..={h})"
                        )));
                    }
                    if backfilled {
                        self.summary.backfilled += 1;
                        if matches!(event, MarketEvent::Trade(_)) {
                            self.summary.trade_backfilled += 1;
                        }
                    }
                    let trade_time = match &event {
                        MarketEvent::AggTrade(t) => t.trade_time,
                        MarketEvent::Trade(t) => t.trade_time,
                        _ => 0,
                    };
                    self.rc.recorded.insert(stream.clone(), Recorded { key: id, complete: true, trade_time });
                    (stream, id, id)
                }
                RecoveryOutput::Deliver { stream, event: MarketEvent::Kline(k), backfilled } => {
                    let end = self.rc.end.get(stream.as_str()).copied();
                    let last = Recorded { key: k.open_time, complete: k.is_closed, trade_time: 0 };
                    self.rc.recorded.insert(stream.clone(), last);
                    if !k.is_closed {
                        // A running update: never of an interval already closed (delivered or abandoned).
                        if end.is_some_and(|end| k.open_time <= end) {
                            return Err(self.fail(format!(
                                "recovery delivered a running kline of {} on {stream} after that interval closed",
                                k.open_time
                            )));
                        }
                        continue;
                    }
                    if backfilled {
                        self.summary.backfilled += 1;
                    }
                    (stream, k.open_time, k.open_time)
                }
                RecoveryOutput::Abandoned { stream, first, last, reason } => {
                    self.note(|| format!("abandoned {stream} {first}..={last}: {reason}"));
                    self.summary.abandoned_ids += (last - first) / kline_step(&stream) + 1;
                    if covered_kind(&stream) == Some(GapKind::TradeId) {
                        self.summary.trade_abandoned += last - first + 1;
                    }
                    (Name::from(stream), first, last)
                }
                RecoveryOutput::BookSynced { .. } => {
                    self.summary.book_syncs += 1;
                    continue;
                }
                RecoveryOutput::BookResync { symbol, reason } => {
                    self.note(|| format!("book resync {symbol}: {reason}"));
                    self.summary.book_resyncs += 1;
                    continue;
                }
                RecoveryOutput::Backfilled { first, last, count, stream } => {
                    if count > last - first + 1 {
                        return Err(self.fail(format!("Backfilled {first}..={last} on {stream}: {count} trades")));
                    }
                    continue;
                }
                RecoveryOutput::ResumeDiscarded { stream, recorded, first } => {
                    // Only a new numbering since the recording may discard it; the stream starts over.
                    if self.net.id_restarts(&stream) == 0 {
                        return Err(self.fail(format!(
                            "recovery discarded the resume of {stream} (recorded {recorded}, live {first}) but its ids \
                             never restarted"
                        )));
                    }
                    self.note(|| format!("resume of {stream} discarded: recorded {recorded}, live {first}"));
                    self.summary.resumes_discarded += 1;
                    self.rc.end.remove(stream.as_str());
                    continue;
                }
                _ => continue,
            };
            // Keys step by one id, or by one interval of open time on a kline stream.
            let step = kline_step(stream.as_str());
            match self.rc.end.get_mut(stream.as_str()) {
                Some(end) if first != *end + step || last < first => {
                    let end = *end;
                    return Err(self.fail(format!(
                        "recovery output {first}..={last} on {stream} does not continue {end}: ids out of order, twice or skipped"
                    )));
                }
                Some(end) => *end = last,
                None => {
                    self.rc.end.insert(stream, last);
                }
            }
        }
        self.check_books()?;
        if let Some(due) = self.rec.poll_timeout()
            && due < t
        {
            return Err(self.fail(format!("Recovery::poll_timeout() {due} is past and nothing is due (a busy loop)")));
        }
        Ok(())
    }

    /// Whenever a book is synced, it equals the model's book at the book's update id.
    fn check_books(&mut self) -> Result<(), ConnFailure> {
        for (symbol, checked) in self.rc.book.iter_mut() {
            let Some(book) = self.rec.book(symbol) else {
                *checked = None;
                continue;
            };
            let id = book.last_update_id();
            if *checked == Some(id) {
                continue;
            }
            let model = self.net.depth_model(symbol).and_then(|m| m.at(id));
            if let Some(state) = model
                && same_book(book, state)
            {
                *checked = Some(id);
                continue;
            }
            let msg = format!("book of {symbol} at update id {id} is {book:?}, the model's is {model:?}");
            return Err(self.fail(msg));
        }
        Ok(())
    }

    /// After the run: REST answers keep coming (the network is healed) until the recovery machine
    /// has nothing left; then every id the connection delivered is delivered or abandoned.
    fn settle_recovery(&mut self) -> Result<(), ConnFailure> {
        let mut now = self.now;
        for _ in 0..100_000 {
            let next =
                [self.rec.poll_timeout().map(Timestamp::as_millis), self.rest.next_time()].into_iter().flatten().min();
            let Some(next) = next else { break };
            now = now.max(next);
            if now > self.end + 6 * 3_600_000 {
                break;
            }
            self.settle_now = Some(now);
            self.step_recovery(now)?;
        }
        let held = self.rec.stats().held_events;
        if held != 0 || self.rest.pending() != 0 {
            return Err(self.fail(format!(
                "recovery not settled at the end: {held} events held, {} REST requests open, stats {:?}",
                self.rest.pending(),
                self.rec.stats()
            )));
        }
        for (symbol, synced) in &self.rc.book {
            if synced.is_none() {
                return Err(self.fail(format!("the book of {symbol} is not synced at the end")));
            }
        }
        for (stream, &live) in &self.rc.live {
            if self.rc.end.get(stream) != Some(&live) {
                return Err(self.fail(format!(
                    "on {stream} the connection delivered up to {live} but the recovery machine accounted up to {:?}",
                    self.rc.end.get(stream)
                )));
            }
        }
        self.settle_now = None;
        Ok(())
    }

    fn apply(&mut self, out: Output) -> Result<(), ConnFailure> {
        let now = self.now;
        let cfg = &self.profile.config;
        if self.m.gave_up && !matches!(out, Output::Close { .. }) {
            return Err(self.fail(format!("output after GaveUp: {out:?} (only Close may follow)")));
        }
        match out {
            Output::Open { id, url } => {
                if !self.m.used.insert(id.0) {
                    return Err(self.fail(format!("transport id {id} reused")));
                }
                if let Some((earliest, latest)) = self.m.next_open.take()
                    && !(earliest..=latest).contains(&now)
                {
                    return Err(self.fail(format!(
                        "reconnect at {} but the announced delay put it in [{}, {}]",
                        self.rel(now),
                        self.rel(earliest),
                        self.rel(latest)
                    )));
                }
                self.m.transports.insert(id.0, Side::Connecting { since: now });
                if self.m.transports.len() > MAX_TRANSPORTS {
                    return Err(self.fail(format!(
                        "{} transports open or connecting, at most {MAX_TRANSPORTS}",
                        self.m.transports.len()
                    )));
                }
                let window = cfg.reconnect.attempt_window_ms;
                while self.attempt_times.front().is_some_and(|&t| t + window <= now) {
                    self.attempt_times.pop_front();
                }
                self.attempt_times.push_back(now);
                if self.attempt_times.len() > cfg.reconnect.max_attempts_per_window as usize {
                    return Err(self.fail(format!(
                        "{} connection attempts within {window} ms (limit {})",
                        self.attempt_times.len(),
                        cfg.reconnect.max_attempts_per_window
                    )));
                }
                if let Some((_, new @ None)) = &mut self.m.rolling {
                    *new = Some(id.0);
                }
                self.m.opens += 1;
                self.summary.attempts += 1;
                self.net.open(tid(id, self.m.base), &url, now);
            }
            Output::Send { id, message } => {
                if !matches!(self.m.transports.get(&id.0), Some(Side::Open { .. })) {
                    return Err(self.fail(format!("Send on transport {id}, which is not open: {message:?}")));
                }
                let msg = match message {
                    WsMessage::Text(t) => FromClient::Text(t),
                    WsMessage::Ping(p) => FromClient::Ping(p),
                    WsMessage::Pong(p) => FromClient::Pong(p),
                };
                self.net.send(tid(id, self.m.base), msg, now);
            }
            Output::Close { id, .. } => {
                self.m.transports.remove(&id.0);
                self.net.close(tid(id, self.m.base));
            }
            Output::Event(event) => {
                if let Event::SequenceRestarted { stream, last, first } = &event {
                    // What the recovery releases of the old numbering continues it; then it starts over.
                    self.rec.handle_restart(stream, *last, *first, Timestamp::from_millis(now));
                    self.drain_recovery(now)?;
                    self.rc.end.remove(stream.as_str());
                    self.rc.live.remove(stream.as_str());
                }
                if let Event::Market { stream, event, .. } = &event {
                    if let MarketEvent::Depth(d) = event
                        && !self.rc.book.contains_key(d.symbol.as_str())
                    {
                        self.rc.book.insert(d.symbol.to_string(), None);
                    }
                    if let Some((id, _)) = trade_id(event) {
                        match self.rc.live.get_mut(stream.as_str()) {
                            Some(live) => *live = id,
                            None => {
                                self.rc.live.insert(stream.clone(), id);
                            }
                        }
                    }
                }
                self.on_event(&event)?;
                // After the checks, so that the event moves into the recovery machine without a copy.
                if let Event::Market { stream, event, .. } = event {
                    self.rec.handle_event(&stream, event, Timestamp::from_millis(now));
                }
            }
            Output::Gap(gap) => {
                self.rec.handle_gap(&gap, Timestamp::from_millis(now));
                // A frame a fault dropped before the rollover started, with no later frame of its stream on the
                // old transport, is revealed by the new one (seed 19220): that gap is the fault's, not the rollover's.
                let covered = covered_kind(&gap.stream) == Some(gap.kind);
                // Trade ids and depth update ids a fault kept from the client, or produced while no transport
                // listened before the rollover began (seed 432418: during an earlier 1008 wait, revealed by
                // the new transport because the old one carried no later frame of the stream): not the
                // rollover's doing.
                let dropped =
                    self.net.missed_before(&gap.stream, gap.first_missing, gap.last_missing, self.m.rolling_since);
                if !dropped && self.m.rolling.is_some_and(|(faults, _)| faults == Some(self.injected())) {
                    self.m.suspect_gap = Some(format!("{gap:?}"));
                }
                self.m.gaps += 1;
                self.summary.gaps += 1;
                if covered {
                    let cov = self.m.coverage.entry(Name::from(&gap.stream)).or_default();
                    if let Err((l, h)) = cov.add(gap.first_missing, gap.last_missing) {
                        return Err(
                            self.fail(format!("gap {gap:?} overlaps ids {l}..={h} already delivered or reported"))
                        );
                    }
                }
            }
            Output::GaveUp(g) => {
                self.m.gave_up = true;
                self.summary.gave_up += 1;
                let class = classify_error(&g.error).class;
                let legit = match class {
                    ErrorClass::Fatal => self.net.fatal_sent,
                    _ => g.failures >= cfg.reconnect.max_consecutive_failures,
                };
                if !legit {
                    return Err(self.fail(format!("gave up without cause: {g:?}")));
                }
                if class == ErrorClass::Fatal && self.m.next_open.is_some() {
                    return Err(self.fail("a fatal error announced a retry".into()));
                }
                self.m.next_open = None;
                // Restart once the network works again (or at once in the liveness phase).
                self.restart_at = Some(if self.healed { now } else { now.max(self.heal_at.min(now + 3_600_000)) });
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: &Event) -> Result<(), ConnFailure> {
        let now = self.now;
        let cfg = &self.profile.config;
        match event {
            Event::Market { stream, event, id } => {
                // A gap revealed by the new transport of a fault-free rollover was caused by the rollover
                // (one revealed by the old transport predates it: an earlier outage or a lost frame).
                if let Some(gap) = self.m.suspect_gap.take()
                    && self.m.rolling.is_some_and(|(_, new)| new == Some(id.0))
                {
                    return Err(self.fail(format!("gap {gap} caused by a rollover with no fault injected during it")));
                }
                self.m.markets += 1;
                self.summary.market_events += 1;
                // A ticker carries its count (`L`, a mini ticker's volume) and the price made from it.
                let ticker = match &event {
                    MarketEvent::Ticker(t) => Some((u64::try_from(t.last_trade_id).ok(), t.last_price)),
                    MarketEvent::MiniTicker(t) => Some((t.volume.to_string().parse().ok(), t.close)),
                    _ => None,
                };
                if let Some((count, price)) = ticker
                    && count.is_none_or(|n| price.to_string() != crate::exchange::ticker_price(n))
                {
                    return Err(
                        self.fail(format!("ticker on {stream} decoded as {event:?}, its count and price disagree"))
                    );
                }
                // Every trade (aggTrade `a`, trade `t`) once: delivered, or in a reported gap.
                if let Some((id, fields)) = trade_id(event) {
                    if !self.net.was_produced(stream, id) {
                        let next = self.net.next_id(stream).unwrap_or(0);
                        return Err(self.fail(format!("trade {id} on {stream} was never produced (next is {next})")));
                    }
                    // Exact decimals: mantissa and scale of the strings `agg_trade_fields` wrote.
                    if fields != trade_fields(id) {
                        let sent = agg_trade_fields(id);
                        return Err(self.fail(format!("trade {id} on {stream} decoded as {event:?}, sent {sent:?}")));
                    }
                    let cov = self.m.coverage.entry(stream.clone()).or_default();
                    if let Err((l, h)) = cov.add(id, id) {
                        return Err(self.fail(format!(
                            "trade {id} on {stream} delivered twice (or after its gap {l}..={h} was reported)"
                        )));
                    }
                }
            }
            &Event::Connected { id, .. } => {
                self.m.connects += 1;
                self.summary.connects += 1;
                if !matches!(self.m.transports.get(&id.0), Some(Side::Open { .. })) {
                    return Err(self.fail(format!("Connected on transport {id}, which is not open")));
                }
                // `None`: the server already dropped the transport (its close is on the way).
                if let Some(subscribed) = self.net.subscriptions(tid(id, self.m.base)) {
                    let mut want: Vec<&String> = self.conn.desired_streams().iter().collect();
                    want.sort();
                    let mut have: Vec<&String> = subscribed.iter().collect();
                    have.sort();
                    if want != have {
                        return Err(self.fail(format!(
                            "after connecting {id} the exchange has {have:?} subscribed, desired {want:?}"
                        )));
                    }
                }
                if self.healed && now > self.heal_at + self.trips(2) {
                    self.live_since_heal = true;
                    self.live_after_heal.get_or_insert(now);
                }
            }
            &Event::Disconnected { class, retry_in, .. } => {
                let retry = retry_in.as_millis() as u64;
                let r = &cfg.reconnect;
                let floor = ((r.initial_delay_ms as f64) * (1.0 - r.jitter)).floor() as u64;
                // The attempt budget may push the next attempt later than the backoff.
                let limit = r.max_attempts_per_window as usize;
                let budget = if self.attempt_times.len() >= limit {
                    (self.attempt_times[self.attempt_times.len() - limit] + r.attempt_window_ms).saturating_sub(now)
                } else {
                    0
                };
                let (lo, hi) = match class {
                    ErrorClass::Transient => (floor.saturating_sub(1), r.max_delay_ms.max(budget)),
                    ErrorClass::RateLimited { wait } => {
                        let w = wait.as_millis() as u64;
                        (w, w.max(r.max_delay_ms).max(budget))
                    }
                    ErrorClass::Fatal => (0, u64::MAX),
                };
                if class != ErrorClass::Fatal && !(lo..=hi).contains(&retry) {
                    return Err(
                        self.fail(format!("retry_in {retry} ms outside [{lo}, {hi}] for a {} error", class.name()))
                    );
                }
                self.m.next_open = Some((now + retry, now + retry + 1));
                // A rate-limit close the exchange sent just before the heal, still in flight at it (no
                // fault is drawn after it), starts a wait the liveness deadline set at the heal could not
                // see (seed 647703: a 1008 close 31 ms after the heal, then the machine's 60 s floor).
                let p = self.profile;
                if matches!(class, ErrorClass::RateLimited { .. })
                    && self.healed
                    && self.live_by.is_some()
                    && now <= self.heal_at + self.trips(2)
                {
                    let by = now + retry + p.config.tls.handshake_timeout_ms + self.connect_trips();
                    self.live_by = self.live_by.max(Some(by));
                }
            }
            Event::SequenceRestarted { stream, last, first } => {
                let (last, first) = (*last, *first);
                // Never a false alarm: a replay, a duplicate or a reordered frame is not a restart.
                let seen = self.m.id_restarts.entry(stream.clone()).or_default();
                *seen += 1;
                let seen = *seen;
                let happened = self.net.id_restarts(stream);
                if seen > happened || first >= last {
                    return Err(self.fail(format!(
                        "numbering restart {seen} reported on {stream} ({last} -> {first}) but the exchange restarted it {happened} times"
                    )));
                }
                // The events of the new numbering the machine was handed before `first` went nowhere,
                // unless they were passed on before the restart was known (seed 607188: the new
                // numbering's first frame arrived first and was delivered, the old numbering's last one
                // behind it read as a gap up to it) or lie in a reported gap.
                if let Some(numbering) = self.net.numbering_of(stream, first)
                    && let Some(&min) = self.m.handed_min.get(&(stream.clone(), numbering))
                    && min < first
                    && !self
                        .m
                        .coverage
                        .get(stream.as_str())
                        .is_some_and(|c| c.ranges.iter().any(|&(l, h)| l <= min && first - 1 <= h))
                {
                    return Err(self.fail(format!(
                        "numbering restart on {stream} reported from {first}, but trades {min}..{first} of that \
                         numbering were handed to the machine before it and never delivered or reported"
                    )));
                }
                self.summary.id_restarts += 1;
                // Coverage is per numbering: the new one starts at the first id delivered after it.
                self.m.coverage.remove(stream.as_str());
            }
            Event::HeartbeatTimeout { .. } => {
                self.summary.heartbeat_timeouts += 1;
                self.m.heartbeat_timeouts += 1;
            }
            Event::StreamStalled { .. } => {
                self.summary.stalls += 1;
                self.m.stalls += 1;
            }
            Event::Rollover { id, .. } => {
                self.summary.rollovers += 1;
                self.m.rollovers += 1;
                // A half-open fault injected before the rollover still loses the old transport's frames
                // during it (seed 894: a frame sent to the silent old transport before the new one opened).
                let faults = (!self.net.is_half_open(tid(*id, self.m.base))).then(|| self.injected());
                self.m.rolling = Some((faults, None));
                self.m.rolling_since = now;
            }
            Event::Malformed { .. } => self.m.malformed += 1,
            Event::ServerError { .. } => {}
        }
        Ok(())
    }

    /// Faults the model injected so far, all kinds together.
    fn injected(&self) -> u64 {
        self.net.stats.injected.values().sum()
    }

    /// Checks that hold after every step.
    fn check_step(&mut self) -> Result<(), ConnFailure> {
        let now = self.now;
        if self.conn.standby_transport().is_none() {
            self.m.rolling = None;
        }
        if let Some(t) = self.conn.poll_timeout()
            && t.as_millis() < now
        {
            return Err(self.fail(format!("poll_timeout() {t} is in the past")));
        }
        if let Some(v) = self.net.violations.first() {
            return Err(self.fail(format!("the exchange saw the client break a rule: {v}")));
        }
        for (stream, cov) in &self.m.coverage {
            if cov.ranges.len() > 1 {
                return Err(self.fail(format!("ids missing on {stream} were never reported: covered {:?}", cov.ranges)));
            }
        }
        let s = self.conn.stats();
        let m = &self.m;
        let problem = if s.connect_attempts != m.opens {
            Some(format!("connect_attempts {} but {} Open outputs", s.connect_attempts, m.opens))
        } else if s.connects != m.connects || s.connects > s.connect_attempts {
            Some(format!(
                "connects {} but {} Connected events ({} attempts)",
                s.connects, m.connects, s.connect_attempts
            ))
        } else if s.reconnects != s.connects.saturating_sub(1) {
            Some(format!("reconnects {} but connects {}", s.reconnects, s.connects))
        } else if s.gaps != m.gaps {
            Some(format!("gaps {} but {} Gap outputs", s.gaps, m.gaps))
        } else if (s.heartbeat_timeouts, s.stalls, s.rollovers, s.malformed_frames)
            != (m.heartbeat_timeouts, m.stalls, m.rollovers, m.malformed)
        {
            Some(format!(
                "(heartbeat_timeouts, stalls, rollovers, malformed_frames) = {:?} but the events say {:?}",
                (s.heartbeat_timeouts, s.stalls, s.rollovers, s.malformed_frames),
                (m.heartbeat_timeouts, m.stalls, m.rollovers, m.malformed)
            ))
        } else if s.market_events != m.markets {
            Some(format!("market_events {} but {} Market events", s.market_events, m.markets))
        } else if !self.conn.is_stopped() && s.uptime_ms + s.downtime_ms != now - m.started {
            Some(format!("uptime {} + downtime {} != {} ms since start", s.uptime_ms, s.downtime_ms, now - m.started))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(self.fail(format!("stats do not add up: {p}")));
        }
        if self.healed && self.conn.is_live() && now > self.heal_at + self.trips(2) {
            self.live_since_heal = true;
            self.live_after_heal.get_or_insert(now);
        }
        Ok(())
    }

    fn check_deadlines(&mut self, dead_after: u64, handshake: u64) -> Result<(), ConnFailure> {
        let now = self.now;
        for (&id, side) in &self.m.transports {
            match *side {
                Side::Connecting { since } if now > since + handshake => {
                    return Err(self.fail(format!(
                        "transport #{id} still connecting {} ms after Open (handshake timeout {handshake} ms)",
                        now - since
                    )));
                }
                Side::Open { last_inbound } if now > last_inbound + dead_after => {
                    return Err(self.fail(format!(
                        "transport #{id} silent since {} and still open after ping interval + pong timeout ({dead_after} ms)",
                        self.rel(last_inbound)
                    )));
                }
                _ => {}
            }
        }
        if let Some(by) = self.live_by
            && now > by
        {
            if !self.live_since_heal && !self.conn.is_live() {
                return Err(self.fail(format!(
                    "not live again by {} after the network healed at {} (max delay + handshake timeout + rate-limit wait)",
                    self.rel(by),
                    self.rel(self.heal_at)
                )));
            }
            self.live_by = None;
        }
        Ok(())
    }

    /// Liveness after a numbering restart: once the machine is live in the fault-free phase, the
    /// feed must not go silent on a stream whose ids restarted. When several trades of the current
    /// numbering went out after it was live, the last one delivered must be of that numbering.
    fn check_restarted_streams_deliver(&self) -> Result<(), ConnFailure> {
        let Some(since) = self.live_after_heal else { return Ok(()) };
        if !self.conn.is_live() {
            return Ok(());
        }
        let after = since + self.profile.latency_ms + self.profile.latency_jitter_ms;
        for stream in self.conn.desired_streams() {
            let Some(m) = self.net.market(stream) else { continue };
            if self.net.id_restarts(stream) == 0 {
                continue;
            }
            let numbering = m.first_id..m.next_id;
            let sent = m.recent.iter().filter(|(at, id)| *at > after && numbering.contains(id)).count();
            let confirm = self.profile.config.stream.restart_confirm as usize;
            if sent < confirm + 2 {
                continue;
            }
            let last = self.rc.live.get(stream.as_str()).copied();
            if !last.is_some_and(|id| numbering.contains(&id)) {
                return Err(self.fail(format!(
                    "{stream} restarted its ids at {} and {sent} of them were sent since the machine was live, \
                     but the last one delivered is {last:?}: the feed went silent",
                    m.first_id
                )));
            }
        }
        Ok(())
    }

    /// End of the run: a clean shutdown must close everything and stop.
    fn finish(&mut self) -> Result<ConnSummary, ConnFailure> {
        self.settle_recovery()?;
        self.check_restarted_streams_deliver()?;
        let now = self.now;
        if let Some(by) = self.live_by
            && by < now
            && !self.live_since_heal
        {
            return Err(self.fail("not live again after the network healed".into()));
        }
        // After an hour without faults the live transport carries exactly the desired streams
        // (stall resubscribes included), as the exchange sees it.
        if self.conn.is_live()
            && let Some(id) = self.conn.current_transport()
            && let Some(subscribed) = self.net.subscriptions(tid(id, self.m.base))
        {
            let mut want: Vec<&String> = self.conn.desired_streams().iter().collect();
            want.sort();
            let mut have: Vec<&String> = subscribed.iter().collect();
            have.sort();
            if want != have {
                return Err(
                    self.fail(format!("at the end the exchange has {have:?} subscribed on {id}, desired {want:?}"))
                );
            }
        }
        self.note(|| "in  Shutdown".into());
        self.record(|| TraceRecord::Input { now: Timestamp::from_millis(now), input: Input::Shutdown });
        self.conn.handle_input(Input::Shutdown, Timestamp::from_millis(now));
        while let Some(out) = self.conn.poll_output() {
            self.note(|| format!("out {out:?}"));
            self.record(|| TraceRecord::Output { output: out.clone() });
            match out {
                Output::Close { id, .. } => {
                    self.m.transports.remove(&id.0);
                }
                other => return Err(self.fail(format!("output after Shutdown: {other:?} (only Close may follow)"))),
            }
        }
        if !self.m.transports.is_empty() {
            return Err(self.fail(format!("transports {:?} still open after Shutdown", self.m.transports.keys())));
        }
        if !self.m.gave_up && self.conn.stop_reason() != Some(StopReason::Shutdown) {
            return Err(self.fail(format!("stop reason {:?} after Shutdown", self.conn.stop_reason())));
        }
        if self.conn.poll_timeout().is_some() {
            return Err(self.fail("a stopped machine still asks for a timeout".into()));
        }
        let mut s = std::mem::take(&mut self.summary);
        s.simulated_ms = self.end - self.profile.clock_start_ms;
        s.faults = self.net.stats.injected.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        s.rest = self.rest.answers.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        Ok(s)
    }
}

/// Whether `book` has exactly the model's levels (prices and quantities as the exchange writes them).
fn same_book(book: &OrderBook, model: &crate::exchange::BookState) -> bool {
    let price = |ask: bool, level: u64| {
        Decimal::new(u128::from(if ask { 30_000 + level } else { 30_000 - level }) * 100, 2, false)
    };
    let qty = |q: u64| Decimal::new(u128::from(q), 3, false);
    let bids = model.bids().map(|(l, q)| (price(false, l), qty(q)));
    let asks = model.asks().map(|(l, q)| (price(true, l), qty(q)));
    book.bids().map(|(p, q)| (Some(p), Some(q))).eq(bids) && book.asks().map(|(p, q)| (Some(p), Some(q))).eq(asks)
}

/// Folds an output into the run's hash: its kind, transport, time and sequence number (cheap
/// enough to do always, precise enough that any divergence shows).
fn digest(hash: &mut u64, now: u64, out: &Output) {
    let (kind, a, b) = match out {
        Output::Open { id, url } => (1, id.0, url.len() as u64),
        Output::Send { id, message } => (
            2,
            id.0,
            match message {
                WsMessage::Text(t) => t.len() as u64,
                WsMessage::Ping(p) | WsMessage::Pong(p) => p.len() as u64 | 1 << 40,
            },
        ),
        Output::Close { id, code, .. } => (3, id.0, u64::from(*code)),
        Output::Event(Event::Market { id, event, .. }) => (
            4,
            id.0,
            match event.sequence() {
                Sequence::AggTrade { id, .. } | Sequence::Trade { id } => id,
                _ => event.event_time(),
            },
        ),
        Output::Event(Event::Disconnected { id, retry_in, .. }) => (5, id.0, retry_in.as_millis() as u64),
        Output::Event(e) => (
            6,
            match e {
                Event::Connected { id, .. } | Event::HeartbeatTimeout { id } | Event::Malformed { id, .. } => id.0,
                Event::Rollover { id, .. } => id.0 | 1 << 40,
                Event::StreamStalled { stream, .. } => stream.len() as u64 | 1 << 41,
                Event::ServerError { code, .. } => *code as u64 | 1 << 42,
                Event::SequenceRestarted { last, first, .. } => (last ^ first.rotate_left(21)) | 1 << 43,
                Event::Market { .. } | Event::Disconnected { .. } => 0,
            },
            0,
        ),
        Output::Gap(g) => (7, g.first_missing, g.last_missing),
        Output::GaveUp(g) => (8, u64::from(g.failures), 0),
    };
    mix(hash, now);
    mix(hash, kind);
    mix(hash, a);
    mix(hash, b);
}

/// Runs one seed's connection simulation; on failure, runs it again keeping the last events so
/// that the report shows what led to it (the run is deterministic, so the rerun fails the same way).
pub fn run(profile: &FaultProfile, hours: f64) -> Result<ConnSummary, ConnFailure> {
    match ConnSim::new(profile, hours, false).run() {
        Ok(s) => Ok(s),
        Err(_) => ConnSim::new(profile, hours, true).run(),
    }
}

/// Like [`run`], also returning the trace of the first machine (what `keel stream --trace` would
/// have written had it been the adapter), for `keel-sim replay`.
pub fn run_traced(profile: &FaultProfile, hours: f64) -> (Result<ConnSummary, ConnFailure>, Vec<TraceRecord>) {
    let mut sim = ConnSim::new(profile, hours, false).with_trace();
    let result = sim.run();
    (result, sim.take_trace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_of_seeded_runs_replay_exactly() {
        for seed in 0..12 {
            let profile = FaultProfile::draw(seed);
            let (result, records) = run_traced(&profile, 3.0);
            assert!(result.is_ok(), "seed {seed}: {:?}", result.err().map(|f| f.invariant));
            let numbered: Vec<(usize, TraceRecord)> =
                records.into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect();
            let summary = keel_core::trace::replay(&numbered).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(summary.outputs > 0);
        }
    }

    #[test]
    fn same_seed_same_hash_and_different_seeds_differ() {
        let a = run(&FaultProfile::draw(4), 2.0).unwrap();
        let b = run(&FaultProfile::draw(4), 2.0).unwrap();
        let c = run(&FaultProfile::draw(5), 2.0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.hash, c.hash);
    }

    /// Seeds with only id restarts (every ~30 min) and the frame faults that look like them.
    fn restart_profile(seed: u64) -> FaultProfile {
        use crate::profile::{Fault, Ratio};
        let mut p = FaultProfile::draw(seed);
        p.faults = vec![
            (Fault::IdRestart, Ratio { num: 1, den: 1_800 }),
            (Fault::Reorder, Ratio { num: 1, den: 20 }),
            (Fault::Duplicate, Ratio { num: 1, den: 20 }),
            (Fault::Reset, Ratio { num: 1, den: 1_200 }),
        ];
        p
    }

    #[test]
    fn id_restarts_are_detected_and_the_feed_carries_on() {
        let mut seen = 0;
        for seed in 0..8 {
            let s = run(&restart_profile(seed), 6.0).unwrap_or_else(|f| panic!("seed {seed}: {}", f.invariant));
            assert!(s.faults.contains("id_restart="), "seed {seed}: {}", s.faults);
            seen += s.id_restarts;
        }
        assert!(seen >= 8, "{seen} restarts detected over 8 seeds");
    }

    #[test]
    fn trade_streams_are_restarted_lost_and_backfilled_over_historical_trades() {
        use crate::profile::{Fault, Ratio};
        let (mut restarts, mut backfilled, mut gaps) = (0, 0, 0);
        for seed in 0..6 {
            let mut p = restart_profile(seed);
            p.config.stream.streams = vec!["btcusdt@trade".into()];
            p.config.rest.max_held_events = 100_000;
            p.faults.push((Fault::Lost, Ratio { num: 1, den: 30 }));
            let s = run(&p, 6.0).unwrap_or_else(|f| panic!("seed {seed}: {}", f.invariant));
            restarts += s.id_restarts;
            backfilled += s.trade_backfilled;
            gaps += s.gaps;
            assert_eq!(s.backfilled, s.trade_backfilled, "seed {seed}: only the trade stream backfills");
        }
        assert!(
            restarts >= 12 && gaps >= 60 && backfilled >= gaps,
            "{restarts} restarts, {gaps} gaps, {backfilled} backfilled"
        );
    }

    #[test]
    fn a_machine_blind_to_restarts_fails_the_liveness_check() {
        // Guards the invariant: with detection off, a restarted stream goes silent and is caught.
        let failed = (0..8).any(|seed| {
            let mut p = restart_profile(seed);
            p.config.stream.restart_distance = u64::MAX;
            run(&p, 6.0).is_err_and(|f| f.invariant.contains("the feed went silent"))
        });
        assert!(failed);
        // The same on a trade stream alone: the checker watches `t` as it watches `a`.
        let failed = (0..8).any(|seed| {
            let mut p = restart_profile(seed);
            p.config.stream.streams = vec!["btcusdt@trade".into()];
            p.config.stream.restart_distance = u64::MAX;
            run(&p, 6.0).is_err_and(|f| f.invariant.contains("btcusdt@trade restarted its ids"))
        });
        assert!(failed);
    }

    #[test]
    fn a_failure_while_the_recovery_settles_is_dated_after_the_run() {
        // REST answers take 5 to 7 h (2.5 h each way plus up to 2 h): those to the requests of
        // the 2 h run come while the recovery settles (up to 6 h after the end), some too late.
        // The failure and the REST answers listed before it happened after the run's end, and
        // must be dated so.
        use crate::profile::{Fault, Ratio};
        let mut p = restart_profile(3);
        p.faults.push((Fault::Lost, Ratio { num: 1, den: 30 }));
        p.rest.latency_ms = 9_000_000;
        p.rest.jitter_ms = 2 * 3_600_000;
        let end = Timestamp::from_millis(2 * 3_600_000);
        let f = run(&p, 2.0).expect_err("nothing can settle without REST answers");
        assert!(f.invariant.contains("recovery not settled"), "{}", f.invariant);
        assert!(f.at > end, "failure dated {} (the run ends at {end}): {}\n{:#?}", f.at, f.invariant, f.recent);
        let secs = |line: &str| -> f64 {
            let stamp = line.split(' ').next().unwrap_or_default();
            stamp.trim_start_matches("t=+").trim_end_matches('s').parse().unwrap_or_else(|_| panic!("{line}"))
        };
        let after: Vec<&String> = f.recent.iter().filter(|l| secs(l) > 7_200.0).collect();
        assert!(after.iter().any(|l| l.contains("rest ")), "no REST event dated after the end: {:#?}", f.recent);
        let times: Vec<f64> = f.recent.iter().map(|l| secs(l)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "events out of time order: {:#?}", f.recent);
    }

    #[test]
    fn coverage_merges_and_rejects_overlaps() {
        let mut c = Coverage::default();
        c.add(5, 5).unwrap();
        c.add(7, 9).unwrap();
        assert_eq!(c.ranges, vec![(5, 5), (7, 9)]);
        c.add(6, 6).unwrap();
        assert_eq!(c.ranges, vec![(5, 9)]);
        assert_eq!(c.add(9, 12), Err((5, 9)));
        assert_eq!(c.add(1, 5), Err((5, 9)));
        c.add(10, 10).unwrap();
        c.add(1, 4).unwrap();
        assert_eq!(c.ranges, vec![(1, 10)]);
    }
}
