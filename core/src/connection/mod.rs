//! [`Connection`]: the lifecycle of a Binance market-data feed as a deterministic state machine.
//!
//! No IO, no clock: the adapter (or the simulator) feeds what happened with
//! [`Connection::handle_input`] / [`Connection::handle_timeout`], each carrying `now`, and does
//! what [`Connection::poll_output`] says. The run loop:
//!
//! ```text
//! let mut conn = Connection::new(&config, seed, now);
//! loop {
//!     // 1. Do everything the machine asks (the first Open comes right after new()).
//!     while let Some(out) = conn.poll_output() { adapter.apply(out) }   // Open, Send, Close, Event, Gap, GaveUp
//!     // 2. Sleep until the next deadline or the next transport event, whichever comes first.
//!     match adapter.wait(conn.poll_timeout()) {
//!         Woke::Input(input) => conn.handle_input(input, adapter.now()),
//!         Woke::Timeout => conn.handle_timeout(adapter.now()),   // a spurious call is a no-op
//!     }
//! }
//! ```
//!
//! Lifecycle: `Connecting -> Live -> (lost) -> Waiting -> Connecting ...`, ending in `Stopped`
//! after `Shutdown`, a fatal error, or `max_consecutive_failures` (reached by a failure that is not
//! a rate limit: a rate-limited one waits as told, so that a restart cannot connect into a ban). Rules it keeps:
//! - Every transport has a fresh [`TransportId`]; inputs for ids the machine no longer uses are
//!   ignored (a late `Opened` after a handshake timeout, frames of a transport being closed).
//! - The desired streams are in the URL of every `Open` (`/stream?streams=a/b`), so each
//!   reconnect subscribes exactly the desired set: nothing twice, nothing forgotten.
//! - `Close` is emitted for every transport the machine abandons on its own (handshake timeout,
//!   heartbeat timeout, stall, rollover, shutdown). After the adapter reported `Failed` or `Closed`
//!   the transport is gone, and no `Close` follows.
//! - Market events go through the [`GapTracker`] (which outlives transports, so ids lost during an
//!   outage show as a gap): duplicates are dropped and counted, gaps are emitted before the event
//!   that revealed them. Malformed frames are counted and reported, never fatal.
//! - A rollover (`stream.rollover_after_ms` after connecting, or Binance's `serverShutdown`
//!   notice) is make-before-break (issue 9): a second transport (new id, same URL, counted in the
//!   attempt budget, its own control limiter) opens beside the live one, which keeps delivering.
//!   The new one's market events are buffered until it has delivered on every subscribed stream
//!   and, on sequenced streams, the old one has delivered the new one's first id (an overlap, so
//!   nothing falls between them); then the old one is closed and the buffer goes through the
//!   [`GapTracker`], which drops what was already delivered. Unsequenced streams (klines) are
//!   delivered only from the active transport. The old one dying, or the cutoff (handshake timeout
//!   plus `stream.stall_after_ms` after the start), hands over early; if the old one dies before
//!   the new one opened, the machine waits for it as a normal attempt. If the new one fails (error,
//!   handshake or heartbeat timeout), the old one is closed too and the plain reconnect path runs
//!   (backoff, budget, give-up), accounting the new one's error. A `serverShutdown` on an unstable
//!   connection is treated as a failure, so a server repeating it cannot cause a reconnect storm.
//! - Control messages (pings, pongs, SUBSCRIBE) go through a [`ControlLimiter`] (Binance: at most
//!   5 per second per connection).
//!
//! - Connection attempts (first connect, reconnects, rollovers) stay within
//!   `reconnect.max_attempts_per_window` per `attempt_window_ms` (Binance: 300 per 5 minutes per
//!   IP), delayed, never dropped. A machine alone on its IP ([`Connection::new`]) keeps that budget
//!   itself; the machines of a split run ([`Connection::new_pooled`]) share one
//!   [`crate::shard::AttemptPool`] held by the driver, and wait for [`Input::AttemptGranted`]
//!   ([`Connection::wants_attempt`]) before each `Open`.
//! - More desired streams than `stream.max_streams_per_connection` (Binance: 1024) cannot be
//!   served by one transport: the machine gives up at once with an `InvalidUrl` error naming the
//!   setting, instead of letting Binance reject the connection. One machine is one connection; the
//!   adapter splits larger lists over several machines ([`crate::shard`]).
//!
//! Deviations from connection-api.md: `Event::Rollover` was added (a planned reconnect is not a
//! disconnection); `GiveUp` carries the error, its class and the failure count. Additions:
//! `is_stopped`, `stop_reason`, `subscriptions`, `current_transport`, `url`, `stats_at(now)`,
//! `set_wall_clock_offset` (time-of-day disconnect patterns), `disconnects`, `standby_transport`,
//! `new_pooled` + `wants_attempt` + `Input::AttemptGranted` (a budget shared by several machines).
//! During a rollover two transports are open, so `Send`, `Connected` and `HeartbeatTimeout` may
//! name the standby; `Event::Rollover` no longer implies a `Close` of the old transport right away.
//! Stats: `rollovers` counts rollovers started; a hand-over is no outage (no downtime), and ids
//! the new transport repeats are counted in `duplicates`.

use crate::backoff::{AttemptBudget, AttemptOutcome, Backoff, BackoffDecision};
use crate::classify::{
    ErrorClass, HANDSHAKE_TIMEOUT_KEY, PONG_TIMEOUT_KEY, STALL_KEY, TransportError, classify_error_with_floor,
};
use crate::config::{Config, HeartbeatConfig};
use crate::gaps::{Gap, GapTracker, RestartPolicy, Verdict};
use crate::heartbeat::{ControlLimiter, Heartbeat, HeartbeatAction, PongMatch, StallAction, StallDetector};
use crate::patterns::{self, DISCONNECT_LOG_LEN, Disconnect};
use crate::protocol::{self, Frame, MarketEvent, Name, Names, Request};
use crate::stats::connection::ConnectionStats;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// Close code for our own closes (RFC 6455: 1000 normal closure).
pub const CLOSE_NORMAL: u16 = 1000;

/// Identifies one transport (one TCP + TLS + WebSocket connection). Never reused within a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransportId(pub u64);

impl fmt::Display for TransportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What happened, reported by the adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// TCP connect + TLS handshake + WebSocket upgrade of transport `id` finished.
    Opened {
        /// The transport.
        id: TransportId,
    },
    /// Connecting failed, or an open transport broke (reset, EOF, TLS, protocol, too large...).
    Failed {
        /// The transport.
        id: TransportId,
        /// What went wrong.
        error: TransportError,
    },
    /// The server sent a close frame (code `None` when it had none), or the transport finished closing.
    Closed {
        /// The transport.
        id: TransportId,
        /// The close code.
        code: Option<u16>,
        /// The close reason, possibly empty.
        reason: String,
    },
    /// A text frame.
    Text {
        /// The transport.
        id: TransportId,
        /// The frame's text.
        text: String,
    },
    /// A WebSocket ping from the server (Binance: every 20 s, pong within 60 s, same payload).
    Ping {
        /// The transport.
        id: TransportId,
        /// The ping's payload, echoed in our pong.
        payload: Vec<u8>,
    },
    /// A WebSocket pong (answer to our ping).
    Pong {
        /// The transport.
        id: TransportId,
        /// The pong's payload.
        payload: Vec<u8>,
    },
    /// The user asked to stop: close every transport cleanly, then emit nothing more but `Close`s.
    Shutdown,
    /// A machine made with [`Connection::new_pooled`] may open the transport it waits to open
    /// ([`Connection::wants_attempt`]): the run's shared attempt budget has room for it. Ignored when
    /// the machine waits for nothing (and by a machine with its own budget).
    AttemptGranted,
}

/// A WebSocket message to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WsMessage {
    /// A text frame (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS requests).
    Text(String),
    /// A ping with this payload.
    Ping(Vec<u8>),
    /// A pong with this payload.
    Pong(Vec<u8>),
}

/// Why the machine closed a live transport and reconnected on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloverReason {
    /// `stream.rollover_after_ms` elapsed (ahead of Binance's 24 h cutoff).
    Scheduled,
    /// The server announced its shutdown (`{"e":"serverShutdown"}`).
    ServerShutdown,
}

/// Market data and lifecycle notices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A decoded market event, deduplicated, in order: what the recorder writes.
    Market {
        /// The transport it came from.
        id: TransportId,
        /// The stream name, e.g. `btcusdt@aggTrade` (shared by the stream's events: cloning it is cheap).
        stream: Name,
        /// The event.
        event: MarketEvent,
    },
    /// Transport `id` is open and subscribed to the desired streams.
    Connected {
        /// The transport.
        id: TransportId,
        /// Attempts in this outage, this one included (1 = connected at the first try).
        attempt: u32,
    },
    /// Transport `id` failed to connect or was lost; the next attempt is in `retry_in`.
    Disconnected {
        /// The transport.
        id: TransportId,
        /// What went wrong.
        error: TransportError,
        /// Its class.
        class: ErrorClass,
        /// One line a user can act on.
        diagnosis: String,
        /// Time until the next attempt (backoff, rate-limit wait and attempt budget included; a
        /// pooled machine's wait for its grant comes on top, see [`Connection::wants_attempt`]).
        retry_in: Duration,
    },
    /// No frame arrived within `pong_timeout` after our ping: transport `id` is closed.
    HeartbeatTimeout {
        /// The transport.
        id: TransportId,
    },
    /// A stream delivered nothing for `stream.stall_after_ms`.
    StreamStalled {
        /// The stream.
        stream: String,
        /// What the machine does about it.
        action: StallAction,
    },
    /// A frame did not decode (counted, never fatal).
    Malformed {
        /// The transport.
        id: TransportId,
        /// What was wrong with it.
        error: String,
    },
    /// Binance answered one of our requests with an error.
    ServerError {
        /// Binance's error code (0-3).
        code: i64,
        /// Its message.
        msg: String,
    },
    /// A planned reconnect: a new transport is opened beside `id`, which is closed after the hand-over.
    Rollover {
        /// The transport being replaced.
        id: TransportId,
        /// Why.
        reason: RolloverReason,
    },
    /// The server restarted the ids of `stream` (see `gaps`): the old numbering reached `last`, the
    /// new one starts at `first`. Tracking starts over; the events of the new numbering follow.
    SequenceRestarted {
        /// The stream.
        stream: String,
        /// The last id of the old numbering.
        last: u64,
        /// The first id of the new numbering.
        first: u64,
    },
}

/// Why the machine stopped for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GiveUp {
    /// One line for the user: what happened and what to change.
    pub reason: String,
    /// The error that ended it.
    pub error: TransportError,
    /// Its class (`Fatal`, or whatever the last of too many failures was).
    pub class: ErrorClass,
    /// Consecutive failures at the end.
    pub failures: u32,
}

/// What the adapter must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Open transport `id` to `url` (connect + TLS + upgrade), then report `Opened` or `Failed`.
    /// The machine enforces the handshake timeout itself (a late transport gets a `Close`).
    Open {
        /// The new transport.
        id: TransportId,
        /// `{stream.url}/stream?streams=a/b/c`.
        url: String,
    },
    /// Send a message on an open transport.
    Send {
        /// The transport.
        id: TransportId,
        /// The message.
        message: WsMessage,
    },
    /// Send a close frame (if open) and drop the transport.
    Close {
        /// The transport.
        id: TransportId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Market data and lifecycle notices.
    Event(Event),
    /// Sequence numbers missing on a stream.
    Gap(Gap),
    /// Terminal: the machine stopped (fatal error or too many consecutive failures).
    GaveUp(GiveUp),
}

/// Why the machine stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The user asked.
    Shutdown,
    /// A fatal error or too many failures.
    GaveUp,
}

/// Everything a live transport needs.
#[derive(Debug, Clone)]
struct Live {
    id: TransportId,
    /// The attempt that brought this transport up (1 after a rollover), for logs.
    attempt: u32,
    since: Timestamp,
    rollover_at: Timestamp,
    heartbeat: Heartbeat,
    stalls: StallDetector,
    control: ControlLimiter<WsMessage>,
    /// The streams this transport is subscribed to (those of its URL).
    subscribed: Vec<String>,
    /// The replacement transport while a make-before-break rollover runs.
    standby: Option<Box<Standby>>,
    /// Pooled: a rollover is due since this time and waits for [`Input::AttemptGranted`].
    rollover_wanted: Option<(Timestamp, RolloverReason)>,
}

/// The new transport of a make-before-break rollover, running beside the live one.
#[derive(Debug, Clone)]
struct Standby {
    id: TransportId,
    /// When the old transport is closed even if the new one has not delivered on every stream yet.
    cutoff: Timestamp,
    phase: StandbyPhase,
}

/// How far the new transport of a rollover got.
// `Standby` is boxed inside `Live` already; boxing `Open` again would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum StandbyPhase {
    /// `Open` emitted; the handshake must finish by `deadline`.
    Opening { deadline: Timestamp },
    /// Open and subscribed; its market events wait in `buffer` until the hand-over.
    Open {
        since: Timestamp,
        heartbeat: Heartbeat,
        control: ControlLimiter<WsMessage>,
        /// Market events received on the new transport, in arrival order.
        buffer: Vec<Buffered>,
        /// Per stream, the first sequence id the new transport delivered (`None`: unsequenced).
        first: Vec<(Name, Option<u64>)>,
    },
}

/// A market event a rollover's new transport delivered before the hand-over.
#[derive(Debug, Clone)]
struct Buffered {
    stream: Name,
    event: MarketEvent,
    /// Its id was a restart candidate when it arrived: far below what the old transport had delivered
    /// by then. Only an arrival-time comparison tells a restart from the overlap: by the hand-over the
    /// old transport may be minutes of ids ahead of a legitimately replayed event.
    restart_candidate: bool,
}

/// Events a standby may buffer before the hand-over is forced (bounds memory on a lagging old transport).
const STANDBY_BUFFER_MAX: usize = 100_000;

/// The earlier of two optional deadlines (`None` is "no deadline", not "now").
fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn first_id(event: &MarketEvent) -> Option<u64> {
    use crate::gaps::Sequence;
    match event.sequence() {
        Sequence::AggTrade { id, .. } | Sequence::Trade { id } => Some(id),
        Sequence::Depth { first, .. } => Some(first),
        Sequence::BookTicker { id } | Sequence::Snapshot { id } => Some(id),
        Sequence::Unsequenced => None,
    }
}

/// Puts held restart candidates in the order their numberings began: each numbering's ids ascending,
/// the numberings from the highest down. A numbering restart goes far below the last id (that is how
/// one is told from a duplicate), so of two numberings in one run the higher one began first, whatever
/// order their frames arrived in:
/// - a frame reordered across a restart would otherwise be passed on after its successor and dropped
///   as its duplicate, unreported (sim seed 411);
/// - a second restart inside the confirmation run (ids far below the run so far) must stay after the
///   first one's events (sim seed 459);
/// - the one frame of a numbering that lasted a single frame, reordered behind the first frame of the
///   numbering after it, must go first: passed on after it, it looked like a jump of millions of ids in
///   the newer numbering, reported as a gap, and the newer numbering's next frames as a second restart
///   (sim seed 416815).
///
/// Two ids are in one numbering when they are within the restart distance of each other, or when the
/// higher one arrived on a later transport: frames of two transports arrive in the order they were
/// sent, and a restart goes down, so a later transport's run far above an earlier one's is the same
/// numbering, grown while keel reconnected (sim seed 636102: 4 candidates held when an outage cut the
/// connection, the next connection's first frame 1 040 ids above them; taken for an older numbering,
/// it went first and the 4 were dropped behind it as duplicates).
fn sort_numbering_runs(held: &mut [(TransportId, MarketEvent)], policy: RestartPolicy) {
    // Ascending (stable: of two copies of an id, the one that came first stays first), then reversed;
    // reversing each numbering's run again makes it ascending and restores that order.
    held.sort_by_key(|(_, event)| first_id(event));
    held.reverse();
    let mut start = 0;
    for i in 1..=held.len() {
        let boundary = i == held.len()
            || held[i - 1].0 <= held[i].0
                && matches!(
                    (first_id(&held[i - 1].1), first_id(&held[i].1)),
                    (Some(above), Some(id)) if policy.far_below(above, id)
                );
        if boundary {
            held[start..i].reverse();
            start = i;
        }
    }
}

/// The refuted candidates that belong to a confirmed restart's numbering, which starts at `first`:
/// those below `first` and within the restart distance of it; the rest stay duplicates. An old
/// numbering's stray late frame is far above the new numbering (a restart goes far below), so it is not
/// taken. The ids between a revived candidate and `first` that never came (lost while the transport
/// died, seed 32087 of the simulator) are reported as a gap when the candidates are passed on.
fn revive(
    refuted: Vec<(TransportId, MarketEvent)>,
    first: u64,
    policy: RestartPolicy,
) -> Vec<(TransportId, MarketEvent)> {
    refuted
        .into_iter()
        .filter(|(_, event)| first_id(event).is_some_and(|id| id < first && !policy.far_below(first, id)))
        .collect()
}

/// The last id an event covers (depth: `u`), `None` without a sequence.
fn end_id(event: &MarketEvent) -> Option<u64> {
    use crate::gaps::Sequence;
    match event.sequence() {
        Sequence::Depth { last, .. } => Some(last),
        _ => first_id(event),
    }
}

/// Where the machine stands; each state holds only what it needs.
#[derive(Debug, Clone)]
enum State {
    /// Waiting for transport `id` to open.
    Connecting { id: TransportId, deadline: Timestamp, attempt: u32 },
    /// A transport is open and subscribed.
    Live(Box<Live>),
    /// Between attempts: the next one starts at `until`.
    Waiting { until: Timestamp, delay: Duration, attempt: u32 },
    /// Pooled: the backoff is over since `since`; the attempt waits for [`Input::AttemptGranted`].
    AwaitingGrant { since: Timestamp, delay: Duration, attempt: u32 },
    /// Nothing more will happen.
    Stopped { reason: StopReason },
}

/// Whether time currently counts as uptime, downtime, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    Stopped,
}

/// Time accounting of the stats, shared by `advance` and `stats_at`. It borrows the stats: `advance`
/// runs on every input, and moving the stats out and back (as an owned field) cost a default
/// `ConnectionStats` built and dropped per frame.
struct StatsClock<'a> {
    mode: Mode,
    last_now: Timestamp,
    outage_since: Option<Timestamp>,
    stats: &'a mut ConnectionStats,
}

impl StatsClock<'_> {
    fn advance(&mut self, now: Timestamp) -> Timestamp {
        let now = now.max(self.last_now);
        let elapsed = now.saturating_since(self.last_now).as_millis() as u64;
        match self.mode {
            Mode::Up => self.stats.uptime_ms += elapsed,
            Mode::Down => self.stats.downtime_ms += elapsed,
            Mode::Stopped => {}
        }
        if let Some(since) = self.outage_since {
            let outage = now.saturating_since(since).as_millis() as u64;
            self.stats.current_outage_ms = outage;
            self.stats.longest_outage_ms = self.stats.longest_outage_ms.max(outage);
        }
        self.last_now = now;
        now
    }
}

/// The connection lifecycle machine; see the module docs.
#[derive(Debug, Clone)]
pub struct Connection {
    base_url: String,
    desired: Vec<String>,
    heartbeat_config: HeartbeatConfig,
    handshake_timeout: Duration,
    rate_limit_floor: Duration,
    stall_after: Duration,
    rollover_after: Duration,
    max_control_per_second: u32,
    backoff: Backoff,
    /// The attempt budget of a machine alone on its IP; `None` for a pooled machine, whose driver
    /// grants attempts from the budget shared by all its connections ([`Self::new_pooled`]).
    budget: Option<AttemptBudget>,
    gaps: GapTracker,
    /// Per stream, events that may belong to a restarted numbering ([`Verdict::Suspect`]), in order.
    held: BTreeMap<Name, Vec<(TransportId, MarketEvent)>>,
    /// Per stream, the last candidates refuted by an event of the old numbering (counted as duplicates).
    /// A restart confirmed next whose ids continue them takes them back: the old numbering's last frame,
    /// reordered behind the new numbering's first, refutes it (sim seed 1223).
    refuted: BTreeMap<Name, Vec<(TransportId, MarketEvent)>>,
    state: State,
    outputs: VecDeque<Output>,
    next_transport: u64,
    next_request: u64,
    last_now: Timestamp,
    outage_since: Option<Timestamp>,
    disconnects: VecDeque<Disconnect>,
    wall_clock_offset_ms: Option<u64>,
    stats: ConnectionStats,
    /// The decoder's stream names and symbols: one allocation each per run, not two per event.
    names: Names,
}

impl Connection {
    /// A machine for `config`; `seed` feeds the jitter. The first `Open` is ready in
    /// [`Self::poll_output`] right away.
    pub fn new(config: &Config, seed: u64, now: Timestamp) -> Connection {
        Self::with_budget(config, seed, now, false)
    }

    /// A machine that shares its connection-attempt budget with other machines (the connections of
    /// a run that splits its streams, `crate::shard`; Binance's 300 attempts per 5 minutes are per
    /// IP). It keeps no budget of its own: whenever it is ready to open a transport (the first one,
    /// after a backoff, for a rollover) it waits in [`Self::wants_attempt`] until the driver feeds
    /// [`Input::AttemptGranted`], which the driver does when its [`crate::shard::AttemptPool`] has
    /// room. The grant is an input, so a trace records it and replays the machine exactly.
    /// `reconnect.max_attempts_per_window` is the pool's, not read here.
    pub fn new_pooled(config: &Config, seed: u64, now: Timestamp) -> Connection {
        Self::with_budget(config, seed, now, true)
    }

    fn with_budget(config: &Config, seed: u64, now: Timestamp, pooled: bool) -> Connection {
        let mut desired: Vec<String> = Vec::with_capacity(config.stream.streams.len());
        for s in &config.stream.streams {
            if !desired.contains(s) {
                desired.push(s.clone());
            }
        }
        let mut conn = Connection {
            base_url: config.stream.url.clone(),
            desired,
            heartbeat_config: config.heartbeat.clone(),
            handshake_timeout: Duration::from_millis(config.tls.handshake_timeout_ms),
            rate_limit_floor: Duration::from_millis(config.reconnect.rate_limit_floor_ms),
            stall_after: Duration::from_millis(config.stream.stall_after_ms),
            rollover_after: Duration::from_millis(config.stream.rollover_after_ms),
            max_control_per_second: config.stream.max_control_per_second,
            backoff: Backoff::new(&config.reconnect, seed),
            budget: (!pooled).then(|| AttemptBudget::from_config(&config.reconnect)),
            gaps: GapTracker::with_policy(RestartPolicy::from_config(&config.stream)),
            held: BTreeMap::new(),
            refuted: BTreeMap::new(),
            state: State::Waiting { until: now, delay: Duration::ZERO, attempt: 1 },
            outputs: VecDeque::new(),
            next_transport: 1,
            next_request: 1,
            last_now: now,
            outage_since: Some(now),
            disconnects: VecDeque::new(),
            wall_clock_offset_ms: None,
            stats: ConnectionStats::default(),
            names: Names::new(),
        };
        let max_streams = config.stream.max_streams_per_connection as usize;
        if conn.desired.len() > max_streams {
            let error = TransportError::InvalidUrl(format!(
                "{} streams requested but one connection carries at most {max_streams} \
                 (stream.max_streams_per_connection; Binance allows 1024): give each machine one shard \
                 of the streams (keel_core::shard::plan; `keel stream` does)",
                conn.desired.len()
            ));
            let class = ErrorClass::Fatal;
            let reason = format!("not connecting: {error}");
            conn.state = State::Stopped { reason: StopReason::GaveUp };
            conn.stats.last_error = Some(error.to_string());
            conn.emit(Output::GaveUp(GiveUp { reason, error, class, failures: 0 }));
            return conn;
        }
        conn.start_attempt(now, Duration::ZERO, 1);
        conn
    }

    /// Feeds what happened to a transport (or a shutdown request) at `now`.
    pub fn handle_input(&mut self, input: Input, now: Timestamp) {
        let now = self.advance(now);
        match input {
            Input::Shutdown => self.shutdown(now),
            Input::AttemptGranted => self.granted(now),
            Input::Opened { id } => {
                if let State::Connecting { id: current, attempt, .. } = self.state
                    && current == id
                {
                    self.go_live(id, attempt, now);
                } else if self.standby_id() == Some(id) {
                    self.standby_opened(now);
                }
            }
            Input::Failed { id, error } => {
                if self.current_id() == Some(id) {
                    self.lose(error, None, now);
                } else if self.standby_id() == Some(id) {
                    self.standby_failed(error, None, now);
                }
            }
            Input::Closed { id, code, reason } => {
                // 1005: "no status code was present" (RFC 6455 7.4.1).
                let error = TransportError::ServerClose { code: code.unwrap_or(1005), reason };
                if self.current_id() == Some(id) {
                    self.lose(error, None, now);
                } else if self.standby_id() == Some(id) {
                    self.standby_failed(error, None, now);
                }
            }
            Input::Text { id, text } => self.text(id, &text, now),
            Input::Ping { id, payload } => {
                if let Some(live) = self.live_mut(id) {
                    live.heartbeat.on_inbound(now);
                    live.control.push_pong(WsMessage::Pong(payload));
                } else if let Some((heartbeat, control)) = self.standby_open_mut(id) {
                    heartbeat.on_inbound(now);
                    control.push_pong(WsMessage::Pong(payload));
                }
            }
            Input::Pong { id, payload } => {
                let matched = if let Some(live) = self.live_mut(id) {
                    Some(live.heartbeat.on_pong(&payload, now))
                } else {
                    self.standby_open_mut(id).map(|(heartbeat, _)| heartbeat.on_pong(&payload, now))
                };
                match matched {
                    Some(PongMatch::Matched { rtt }) => self.stats.last_rtt_ms = Some(rtt.as_millis() as u64),
                    Some(PongMatch::Unmatched) => self.stats.unmatched_pongs += 1,
                    None => {}
                }
            }
        }
        self.flush_control(now);
    }

    /// The same as `handle_input(Input::Text { id, text }, now)`, for an adapter that holds the frame
    /// in its own buffer: the frame is only read, so it need not be copied into a `String` first
    /// (one allocation and copy per frame saved on the hot path; docs/BENCHMARKS.md figure 4).
    pub fn handle_text(&mut self, id: TransportId, text: &str, now: Timestamp) {
        let now = self.advance(now);
        self.text(id, text, now);
        self.flush_control(now);
    }

    fn text(&mut self, id: TransportId, text: &str, now: Timestamp) {
        if let Some(live) = self.live_mut(id) {
            live.heartbeat.on_inbound(now);
        } else if let Some((heartbeat, _)) = self.standby_open_mut(id) {
            heartbeat.on_inbound(now);
        } else {
            return;
        }
        self.stats.messages += 1;
        self.stats.last_message_at_ms = Some(now.as_millis());
        self.on_text(id, text, now);
    }

    /// Acts on the deadlines due at `now`. Call when [`Self::poll_timeout`] is reached; a spurious
    /// or early call is a harmless no-op.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.advance(now);
        match &mut self.state {
            State::Stopped { .. } | State::AwaitingGrant { .. } => {}
            State::Waiting { until, delay, attempt } => {
                if now >= *until {
                    let (delay, attempt) = (*delay, *attempt);
                    self.start_attempt(now, delay, attempt);
                }
            }
            State::Connecting { id, deadline, .. } => {
                if now >= *deadline {
                    let id = *id;
                    let ms = self.handshake_timeout.as_millis();
                    let error = TransportError::Timeout(format!(
                        "connect + TLS handshake + WebSocket upgrade did not finish within {ms} ms ({HANDSHAKE_TIMEOUT_KEY})"
                    ));
                    self.lose(error, Some((id, "handshake timeout")), now);
                }
            }
            State::Live(_) => self.live_timeouts(now),
        }
        self.flush_control(now);
    }

    /// The next output to apply, in order. Drain it after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next; `None` once stopped. Never earlier than
    /// the last `now` given to the machine.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let t = match &self.state {
            State::Stopped { .. } | State::AwaitingGrant { .. } => None,
            State::Waiting { until, .. } => Some(*until),
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Live(live) => {
                // Written out rather than as an iterator chain: this runs after every frame.
                let t = earliest(live.heartbeat.poll_timeout(), live.stalls.poll_timeout());
                let t = earliest(t, live.control.poll_timeout());
                match live.standby.as_deref() {
                    // While a rollover runs, the old transport is not rolled over again; a rollover
                    // waiting for its grant is not due again either.
                    None if live.rollover_wanted.is_some() => t,
                    None => earliest(t, Some(live.rollover_at)),
                    Some(Standby { phase: StandbyPhase::Opening { deadline }, .. }) => earliest(t, Some(*deadline)),
                    Some(Standby { cutoff, phase: StandbyPhase::Open { heartbeat, control, .. }, .. }) => {
                        let t = earliest(t, Some(*cutoff));
                        earliest(earliest(t, heartbeat.poll_timeout()), control.poll_timeout())
                    }
                }
            }
        };
        t.map(|t| t.max(self.last_now))
    }

    /// Statistics as of the last `now` given to the machine.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// A snapshot of the statistics with the time since the last call accounted up to `now` (for
    /// live displays and metrics between inputs); the machine itself is not changed.
    pub fn stats_at(&self, now: Timestamp) -> ConnectionStats {
        let mut stats = self.stats.clone();
        let mut clock = StatsClock {
            mode: self.mode(),
            last_now: self.last_now,
            outage_since: self.outage_since,
            stats: &mut stats,
        };
        clock.advance(now);
        stats
    }

    /// Whether a transport is open and subscribed.
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Live(_))
    }

    /// Whether the machine stopped (shutdown or gave up); only `Close` outputs may remain.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped { .. })
    }

    /// The state's name for logs and metrics: `connecting`, `live`, `waiting` or `stopped`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Connecting { .. } => "connecting",
            State::Live(_) => "live",
            State::Waiting { .. } | State::AwaitingGrant { .. } => "waiting",
            State::Stopped { .. } => "stopped",
        }
    }

    /// The consecutive attempt number, for logs: the attempt under way (`connecting`), the next one
    /// (`waiting`), the one that connected (`live`; 1 after a rollover), 0 once `stopped`.
    pub fn attempt(&self) -> u32 {
        match &self.state {
            State::Connecting { attempt, .. }
            | State::Waiting { attempt, .. }
            | State::AwaitingGrant { attempt, .. } => *attempt,
            State::Live(live) => live.attempt,
            State::Stopped { .. } => 0,
        }
    }

    /// A pooled machine ([`Self::new_pooled`]) waiting to open a transport (a connect after its
    /// backoff, or a rollover's new transport): since when it waits for [`Input::AttemptGranted`].
    /// `None` when it waits for no grant (always for a machine with its own budget). The driver
    /// checks it after draining the outputs of every `handle_*` call; [`Self::poll_timeout`] does not
    /// count the wait (the grant comes from outside).
    #[must_use]
    pub fn wants_attempt(&self) -> Option<Timestamp> {
        match &self.state {
            State::AwaitingGrant { since, .. } => Some(*since),
            State::Live(live) => live.rollover_wanted.map(|(since, _)| since),
            _ => None,
        }
    }

    /// Why the machine stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        match self.state {
            State::Stopped { reason } => Some(reason),
            _ => None,
        }
    }

    /// The streams the user wants, without duplicates, in configuration order.
    pub fn desired_streams(&self) -> &[String] {
        &self.desired
    }

    /// The streams the live transport is subscribed to (empty when not live).
    pub fn subscriptions(&self) -> &[String] {
        match &self.state {
            State::Live(live) => &live.subscribed,
            _ => &[],
        }
    }

    /// The transport the machine currently uses (connecting or live).
    pub fn current_transport(&self) -> Option<TransportId> {
        self.current_id()
    }

    /// The new transport of a make-before-break rollover in progress (connecting or open), if any.
    pub fn standby_transport(&self) -> Option<TransportId> {
        self.standby_id()
    }

    /// The URL every `Open` uses: the combined-stream endpoint with the desired streams.
    pub fn url(&self) -> String {
        protocol::combined_stream_url(&self.base_url, &self.desired)
    }

    /// Lets the disconnect-pattern analysis see wall-clock time of day: `offset_ms` plus a
    /// [`Timestamp`] is milliseconds since the Unix epoch. Affects only `stats().patterns`, never
    /// outputs (traces stay replayable without it).
    pub fn set_wall_clock_offset(&mut self, offset_ms: u64) {
        self.wall_clock_offset_ms = Some(offset_ms);
    }

    /// The last lost live transports (at most [`DISCONNECT_LOG_LEN`]), oldest first.
    pub fn disconnects(&self) -> impl Iterator<Item = &Disconnect> {
        self.disconnects.iter()
    }

    // ---- internals ----

    /// Whether time counts as up, down or not at all in the current state.
    fn mode(&self) -> Mode {
        match self.state {
            State::Live(_) => Mode::Up,
            State::Stopped { .. } => Mode::Stopped,
            State::Connecting { .. } | State::Waiting { .. } | State::AwaitingGrant { .. } => Mode::Down,
        }
    }

    /// Moves the clock to `now` (a clock stepping backwards is held at the last `now`) and
    /// accounts the elapsed time as up or down.
    fn advance(&mut self, now: Timestamp) -> Timestamp {
        let mode = self.mode();
        let mut clock =
            StatsClock { mode, last_now: self.last_now, outage_since: self.outage_since, stats: &mut self.stats };
        let now = clock.advance(now);
        self.last_now = now;
        now
    }

    fn current_id(&self) -> Option<TransportId> {
        match &self.state {
            State::Connecting { id, .. } => Some(*id),
            State::Live(live) => Some(live.id),
            State::Waiting { .. } | State::AwaitingGrant { .. } | State::Stopped { .. } => None,
        }
    }

    fn live_mut(&mut self, id: TransportId) -> Option<&mut Live> {
        match &mut self.state {
            State::Live(live) if live.id == id => Some(live),
            _ => None,
        }
    }

    fn emit(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    /// Opens a new transport now, or waits when the attempt budget is spent (pooled: waits for the
    /// driver's grant).
    fn start_attempt(&mut self, now: Timestamp, delay: Duration, attempt: u32) {
        let Some(budget) = &mut self.budget else {
            self.stats.current_backoff_ms = 0;
            self.state = State::AwaitingGrant { since: now, delay, attempt };
            return;
        };
        let allowed = budget.next_allowed(now);
        if allowed > now {
            self.state = State::Waiting { until: allowed, delay: delay + allowed.saturating_since(now), attempt };
            return;
        }
        budget.record(now);
        self.open_transport(now, delay, attempt);
    }

    /// Emits the `Open` of a new transport: the attempt's budget was checked (or granted).
    fn open_transport(&mut self, now: Timestamp, delay: Duration, attempt: u32) {
        let id = TransportId(self.next_transport);
        self.next_transport += 1;
        self.stats.history.start(now, delay);
        self.stats.connect_attempts += 1;
        self.stats.current_backoff_ms = 0;
        self.update_success_rate();
        let url = self.url();
        self.emit(Output::Open { id, url });
        self.state = State::Connecting { id, deadline: now + self.handshake_timeout, attempt };
    }

    /// The driver granted the attempt the machine waits for ([`Self::wants_attempt`]); the time
    /// waited for it counts into the attempt's delay.
    fn granted(&mut self, now: Timestamp) {
        match &mut self.state {
            State::AwaitingGrant { since, delay, attempt } => {
                let (delay, attempt) = (*delay + now.saturating_since(*since), *attempt);
                self.open_transport(now, delay, attempt);
            }
            State::Live(live) => {
                if let Some((_, reason)) = live.rollover_wanted.take() {
                    self.start_rollover(reason, now);
                }
            }
            State::Connecting { .. } | State::Waiting { .. } | State::Stopped { .. } => {}
        }
    }

    fn update_success_rate(&mut self) {
        self.stats.success_rate = if self.stats.connect_attempts == 0 {
            0.0
        } else {
            self.stats.connects as f64 / self.stats.connect_attempts as f64
        };
    }

    fn go_live(&mut self, id: TransportId, attempt: u32, now: Timestamp) {
        self.stats.connects += 1;
        if self.stats.connects > 1 {
            self.stats.reconnects += 1;
        }
        self.update_success_rate();
        self.stats.history.finish(AttemptOutcome::Connected);
        self.outage_since = None;
        self.stats.current_outage_ms = 0;
        self.gaps.new_connection();
        let subscribed = self.desired.clone();
        let names: Vec<Name> = subscribed.iter().map(|s| self.names.get(s)).collect();
        let live = Live {
            id,
            attempt,
            since: now,
            rollover_at: now + self.rollover_after,
            heartbeat: Heartbeat::new(&self.heartbeat_config, id.0, now),
            stalls: StallDetector::new(self.stall_after, &names, now),
            control: ControlLimiter::new(self.max_control_per_second),
            subscribed,
            standby: None,
            rollover_wanted: None,
        };
        self.state = State::Live(Box::new(live));
        self.emit(Output::Event(Event::Connected { id, attempt }));
    }

    /// The current transport failed or was lost (`close`: the machine closes it itself, with this
    /// reason). Counts the failure, then waits for the backoff or gives up.
    fn lose(&mut self, error: TransportError, close: Option<(TransportId, &str)>, now: Timestamp) {
        if let State::Live(live) = &self.state
            && live.standby.is_some()
        {
            // The old transport of a rollover died: the new one takes over (or is awaited).
            self.old_lost(close.map(|(_, reason)| reason), now);
            return;
        }
        let classified = classify_error_with_floor(&error, self.rate_limit_floor);
        let class = classified.class;
        let (id, next_attempt) = match &self.state {
            State::Connecting { id, attempt, .. } => {
                self.stats.history.finish(AttemptOutcome::Failed { error: error.clone(), class });
                (*id, attempt.saturating_add(1))
            }
            State::Live(live) => {
                let up_for = now.saturating_since(live.since);
                self.stats.history.finish(AttemptOutcome::Dropped {
                    up_for_ms: up_for.as_millis() as u64,
                    error: error.clone(),
                    class,
                });
                let id = live.id;
                // Only a connection that stayed up resets the failures (no reconnect storm).
                self.backoff.on_uptime(up_for);
                self.outage_since = Some(now);
                self.record_disconnect(now, up_for, class, &error);
                (id, 1)
            }
            State::Waiting { .. } | State::AwaitingGrant { .. } | State::Stopped { .. } => return,
        };
        if let Some((close_id, reason)) = close {
            self.emit(Output::Close { id: close_id, code: CLOSE_NORMAL, reason: reason.to_string() });
        }
        self.stats.failures += 1;
        *self.stats.failures_by_class.entry(class.name().to_string()).or_default() += 1;
        *self.stats.failures_by_error.entry(error_name(&error)).or_default() += 1;
        self.stats.last_error = Some(error.to_string());
        let decision = match class {
            ErrorClass::Fatal => BackoffDecision::GiveUp { failures: self.backoff.failures().saturating_add(1) },
            // A rate limit never ends the machine, even past `max_consecutive_failures`: the server
            // said when to come back, and a process that gave up here is restarted (by an operator or
            // a supervisor) knowing nothing of the wait, straight into the ban, which Binance answers
            // with longer ones (HTTP 418, from 2 minutes up to 3 days; simulator seed 118987). The
            // failure still counts, so the next failure of another kind gives up, after the wait.
            ErrorClass::RateLimited { wait } => match self.backoff.on_failure() {
                BackoffDecision::GiveUp { failures } => {
                    BackoffDecision::Retry { delay: self.backoff.base_delay(failures).max(wait), failures }
                }
                retry => retry,
            },
            _ => self.backoff.on_failure(),
        };
        self.stats.consecutive_failures = self.backoff.failures();
        match decision {
            BackoffDecision::GiveUp { failures } => {
                let reason = if class == ErrorClass::Fatal {
                    format!("fatal error, not retrying: {error}; {}", classified.diagnosis)
                } else {
                    format!(
                        "gave up after {failures} consecutive failures (reconnect.max_consecutive_failures); last: {error}; {}",
                        classified.diagnosis
                    )
                };
                self.stats.current_backoff_ms = 0;
                self.state = State::Stopped { reason: StopReason::GaveUp };
                self.emit(Output::GaveUp(GiveUp { reason, error, class, failures }));
            }
            BackoffDecision::Retry { delay, .. } => {
                let delay = match class {
                    ErrorClass::RateLimited { wait } => delay.max(wait),
                    _ => delay,
                };
                // Pooled, the pool's wait comes after this (see `wants_attempt`).
                let until = self.budget.as_ref().map_or(now + delay, |b| b.next_allowed(now + delay));
                let retry_in = until.saturating_since(now);
                self.stats.current_backoff_ms = retry_in.as_millis() as u64;
                self.state = State::Waiting { until, delay: retry_in, attempt: next_attempt };
                self.emit(Output::Event(Event::Disconnected {
                    id,
                    error,
                    class,
                    diagnosis: classified.diagnosis,
                    retry_in,
                }));
            }
        }
    }

    /// Closes the live transport on purpose and reconnects at once (or as a failure when the
    /// connection was not stable, see the module docs).
    fn rollover(&mut self, reason: RolloverReason, now: Timestamp) {
        let State::Live(live) = &self.state else { return };
        let (id, up_for) = (live.id, now.saturating_since(live.since));
        if reason == RolloverReason::ServerShutdown && up_for < self.backoff.stable_after() {
            let error = TransportError::ServerClose { code: 1001, reason: "serverShutdown notice".into() };
            self.lose(error, Some((id, "server shutdown")), now);
            return;
        }
        if live.standby.is_some() || live.rollover_wanted.is_some() {
            return;
        }
        let Some(budget) = &mut self.budget else {
            // Pooled: keep the old transport until the driver grants the new one's attempt.
            if let State::Live(live) = &mut self.state {
                live.rollover_wanted = Some((now, reason));
            }
            return;
        };
        let allowed = budget.next_allowed(now);
        if allowed > now {
            // The attempt budget is spent: keep the old transport and roll over when it allows.
            if let State::Live(live) = &mut self.state {
                live.rollover_at = allowed;
            }
            return;
        }
        budget.record(now);
        self.start_rollover(reason, now);
    }

    /// Starts the make-before-break rollover of the live transport: its attempt was budgeted.
    fn start_rollover(&mut self, reason: RolloverReason, now: Timestamp) {
        let State::Live(live) = &self.state else { return };
        let (id, up_for) = (live.id, now.saturating_since(live.since));
        self.stats.rollovers += 1;
        self.backoff.on_uptime(up_for);
        self.stats
            .history
            .finish(AttemptOutcome::Closed { up_for_ms: up_for.as_millis() as u64, reason: format!("{reason:?}") });
        self.emit(Output::Event(Event::Rollover { id, reason }));
        let new = TransportId(self.next_transport);
        self.next_transport += 1;
        self.stats.history.start(now, Duration::ZERO);
        self.stats.connect_attempts += 1;
        self.update_success_rate();
        let url = self.url();
        self.emit(Output::Open { id: new, url });
        let deadline = now + self.handshake_timeout;
        let cutoff = deadline + self.stall_after;
        if let State::Live(live) = &mut self.state {
            live.standby = Some(Box::new(Standby { id: new, cutoff, phase: StandbyPhase::Opening { deadline } }));
        }
    }

    /// The transport a rollover is replacing the live one with, if any.
    fn standby_id(&self) -> Option<TransportId> {
        match &self.state {
            State::Live(live) => live.standby.as_ref().map(|s| s.id),
            _ => None,
        }
    }

    /// The heartbeat and control limiter of the open standby `id`.
    fn standby_open_mut(&mut self, id: TransportId) -> Option<(&mut Heartbeat, &mut ControlLimiter<WsMessage>)> {
        match &mut self.state {
            State::Live(live) => match live.standby.as_deref_mut() {
                Some(Standby { id: sid, phase: StandbyPhase::Open { heartbeat, control, .. }, .. }) if *sid == id => {
                    Some((heartbeat, control))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The new transport of a rollover opened: it is counted as a connect and starts buffering.
    fn standby_opened(&mut self, now: Timestamp) {
        let config = self.heartbeat_config.clone();
        let per_second = self.max_control_per_second;
        let State::Live(live) = &mut self.state else { return };
        let Some(standby) = live.standby.as_deref_mut() else { return };
        if !matches!(standby.phase, StandbyPhase::Opening { .. }) {
            return;
        }
        let id = standby.id;
        standby.phase = StandbyPhase::Open {
            since: now,
            heartbeat: Heartbeat::new(&config, id.0, now),
            control: ControlLimiter::new(per_second),
            buffer: Vec::new(),
            first: Vec::new(),
        };
        self.stats.connects += 1;
        self.stats.reconnects += 1;
        self.update_success_rate();
        self.stats.history.finish(AttemptOutcome::Connected);
        self.emit(Output::Event(Event::Connected { id, attempt: 1 }));
        self.maybe_hand_over(now);
    }

    /// The new transport of a rollover failed: close the old one too and take the plain reconnect
    /// path (backoff, attempt budget, give-up rules), accounting the new transport's error.
    fn standby_failed(&mut self, error: TransportError, close: Option<&str>, now: Timestamp) {
        let State::Live(live) = &mut self.state else { return };
        let Some(standby) = live.standby.take() else { return };
        let old = live.id;
        if let Some(reason) = close {
            self.emit(Output::Close { id: standby.id, code: CLOSE_NORMAL, reason: reason.to_string() });
        }
        self.emit(Output::Close { id: old, code: CLOSE_NORMAL, reason: "rollover failed".into() });
        // The standby's attempt record is the latest one: `lose` accounts the failure on it.
        self.state = State::Connecting { id: standby.id, deadline: now, attempt: 1 };
        self.outage_since = Some(now);
        self.lose(error, None, now);
    }

    /// The old transport of a rollover died (or was given up by a timeout, `close` naming why).
    fn old_lost(&mut self, close: Option<&str>, now: Timestamp) {
        let State::Live(live) = &mut self.state else { return };
        let old = live.id;
        let opening = match live.standby.as_deref() {
            Some(Standby { id, phase: StandbyPhase::Opening { deadline }, .. }) => Some((*id, *deadline)),
            _ => None,
        };
        match opening {
            Some((id, deadline)) => {
                if let Some(reason) = close {
                    self.emit(Output::Close { id: old, code: CLOSE_NORMAL, reason: reason.to_string() });
                }
                // Not yet open: wait for it like any connection attempt.
                self.outage_since = Some(now);
                self.state = State::Connecting { id, deadline, attempt: 1 };
            }
            None => self.hand_over(close, now),
        }
    }

    /// Hands over when the open standby has delivered on every subscribed stream, overlapping what
    /// the old transport delivered on sequenced streams (so that nothing falls between them).
    fn maybe_hand_over(&mut self, now: Timestamp) {
        let State::Live(live) = &self.state else { return };
        let Some(Standby { phase: StandbyPhase::Open { buffer, first, .. }, .. }) = live.standby.as_deref() else {
            return;
        };
        let ready = buffer.len() >= STANDBY_BUFFER_MAX
            || live.subscribed.iter().all(|stream| match first.iter().find(|(s, _)| s == stream) {
                None => false,
                Some((_, None)) => true,
                // The old transport must have delivered the new one's first id. Nothing seen yet on the
                // stream is no proof: the old one may hold earlier ids in flight (found by the rollover
                // property: ids 1..=6 queued on the old transport were lost when the new one delivered 7
                // first). A quiet or dead old transport is bounded by the standby's cutoff.
                Some((_, Some(first))) => self.gaps.last_seen(stream).is_some_and(|last| last >= *first),
            });
        if ready {
            self.hand_over(Some("rollover"), now);
        }
    }

    /// Makes the open standby the live transport: closes the old one (when `close` says why), then
    /// delivers the buffered events once (sequenced ones through the gap tracker, which drops what
    /// the old transport already delivered; unsequenced ones only ever from the active transport).
    fn hand_over(&mut self, close: Option<&str>, now: Timestamp) {
        let State::Live(live) = &mut self.state else { return };
        let Some(standby) = live.standby.take() else { return };
        let StandbyPhase::Open { since, heartbeat, control, buffer, .. } = standby.phase else {
            live.standby = Some(standby);
            return;
        };
        let old = live.id;
        if let Some(reason) = close {
            self.emit(Output::Close { id: old, code: CLOSE_NORMAL, reason: reason.to_string() });
        }
        let subscribed = self.desired.clone();
        let names: Vec<Name> = subscribed.iter().map(|s| self.names.get(s)).collect();
        let id = standby.id;
        self.state = State::Live(Box::new(Live {
            id,
            attempt: 1,
            since,
            rollover_at: since + self.rollover_after,
            heartbeat,
            stalls: StallDetector::new(self.stall_after, &names, now),
            control,
            subscribed,
            standby: None,
            rollover_wanted: None,
        }));
        // The new transport's first event of a stream far below the last id is a numbering restart at
        // once, as on a reconnect (gaps module docs).
        self.gaps.new_connection();
        for Buffered { stream, event, restart_candidate } in buffer {
            if first_id(&event).is_none() {
                self.stats.duplicates += 1;
                continue;
            }
            self.deliver(id, stream, event, !restart_candidate, now);
        }
    }

    fn shutdown(&mut self, now: Timestamp) {
        match &self.state {
            State::Connecting { id, .. } => {
                let id = *id;
                self.stats.history.finish(AttemptOutcome::Abandoned);
                self.emit(Output::Close { id, code: CLOSE_NORMAL, reason: "shutdown".into() });
            }
            State::Live(live) => {
                let (id, up_for) = (live.id, now.saturating_since(live.since));
                let standby = live.standby.as_ref().map(|s| s.id);
                self.stats
                    .history
                    .finish(AttemptOutcome::Closed { up_for_ms: up_for.as_millis() as u64, reason: "shutdown".into() });
                self.emit(Output::Close { id, code: CLOSE_NORMAL, reason: "shutdown".into() });
                if let Some(standby) = standby {
                    self.emit(Output::Close { id: standby, code: CLOSE_NORMAL, reason: "shutdown".into() });
                }
            }
            State::Waiting { .. } | State::AwaitingGrant { .. } | State::Stopped { .. } => {}
        }
        if !self.is_stopped() {
            self.stats.current_backoff_ms = 0;
            self.state = State::Stopped { reason: StopReason::Shutdown };
        }
    }

    fn on_text(&mut self, id: TransportId, text: &str, now: Timestamp) {
        match protocol::decode_with(text, &mut self.names) {
            Ok(Frame::Market { stream, event }) => self.on_market(id, stream, event, now),
            Ok(Frame::Response { .. }) => {}
            Ok(Frame::Error { code, msg, .. }) => {
                self.stats.server_errors += 1;
                self.emit(Output::Event(Event::ServerError { code, msg }));
            }
            // A notice on the new transport of a running rollover changes nothing: it is replaced anyway
            // if it does not outlive the hand-over.
            Ok(Frame::ServerShutdown { .. }) if self.standby_id() != Some(id) => {
                self.rollover(RolloverReason::ServerShutdown, now)
            }
            Ok(Frame::ServerShutdown { .. }) => {}
            Err(e) => {
                self.stats.malformed_frames += 1;
                self.emit(Output::Event(Event::Malformed { id, error: e.to_string() }));
            }
        }
    }

    fn on_market(&mut self, id: TransportId, stream: Name, event: MarketEvent, now: Timestamp) {
        if let State::Live(live) = &mut self.state
            && let Some(Standby { id: sid, phase: StandbyPhase::Open { buffer, first, .. }, .. }) =
                live.standby.as_deref_mut()
            && *sid == id
        {
            if !first.iter().any(|(s, _)| *s == stream) {
                first.push((stream.clone(), first_id(&event)));
            }
            let policy = self.gaps.policy();
            // The tracker's own comparison: the event's last id (depth `u`) against the last one seen.
            let restart_candidate =
                end_id(&event).zip(self.gaps.last_seen(&stream)).is_some_and(|(id, last)| policy.far_below(last, id));
            buffer.push(Buffered { stream, event, restart_candidate });
            self.maybe_hand_over(now);
            return;
        }
        let rolling = self.standby_id().is_some();
        self.deliver(id, stream, event, false, now);
        if rolling {
            self.maybe_hand_over(now);
        }
    }

    /// Passes one market event of the active transport through the gap tracker (`replay`: the
    /// buffer of a make-before-break hand-over, where ids below the last one are the known overlap).
    fn deliver(&mut self, id: TransportId, stream: Name, event: MarketEvent, replay: bool, now: Timestamp) {
        if let Some(live) = self.live_mut(id) {
            live.stalls.on_event(&stream, now);
        }
        let verdict = if replay {
            self.gaps.observe_replay(&stream, event.sequence())
        } else {
            self.gaps.observe(&stream, event.sequence())
        };
        // The overlap of a hand-over says nothing about held candidates: only live events refute them.
        if !replay
            && !matches!(verdict, Verdict::Suspect | Verdict::Restarted(_))
            && !self.held.is_empty()
            && let Some(held) = self.held.remove(&stream)
        {
            // Refuted: what was held were late or replayed old ids after all (or see `refuted`).
            self.stats.duplicates += held.len() as u64;
            self.refuted.insert(stream.clone(), held);
        }
        match verdict {
            Verdict::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            Verdict::FreshAfterGap(gap) => {
                self.stats.gaps += 1;
                self.stats.missing_ids += gap.missing();
                self.emit(Output::Gap(gap));
            }
            Verdict::Fresh => {}
            Verdict::Suspect => {
                self.held.entry(stream).or_default().push((id, event));
                return;
            }
            Verdict::Restarted(r) => {
                self.stats.sequence_restarts += 1;
                self.purge_standby(&r);
                // The tracker forgot the stream: the held events and this one start the new numbering.
                let mut held = self.held.remove(&stream).unwrap_or_default();
                held.push((id, event));
                let revived = revive(self.refuted.remove(&stream).unwrap_or_default(), r.first, self.gaps.policy());
                self.stats.duplicates = self.stats.duplicates.saturating_sub(revived.len() as u64);
                held.splice(0..0, revived);
                sort_numbering_runs(&mut held, self.gaps.policy());
                // The restart is to the numbering that comes first: the tracker's run may hold a later one
                // too, and candidates held across a hand-over's replay are not in the tracker's run.
                let first = held.first().and_then(|(_, event)| first_id(event)).unwrap_or(r.first);
                self.emit(Output::Event(Event::SequenceRestarted { stream: r.stream, last: r.last, first }));
                for (held_id, held_event) in held {
                    self.deliver(held_id, stream.clone(), held_event, false, now);
                }
                return;
            }
        }
        self.stats.market_events += 1;
        match self.stats.messages_by_stream.get_mut(&stream) {
            Some(n) => *n += 1,
            None => {
                self.stats.messages_by_stream.insert(stream.clone(), 1);
            }
        }
        self.emit(Output::Event(Event::Market { id, stream, event }));
    }

    /// A restart was confirmed on the active transport while a rollover's new transport buffers: its
    /// buffered events of the old numbering (at or above the restart distance below the old last id) are
    /// dropped, or the hand-over would replay them after the restart as a huge gap in the new one.
    fn purge_standby(&mut self, r: &crate::gaps::Restart) {
        let distance = self.gaps.policy().distance;
        let State::Live(live) = &mut self.state else { return };
        let Some(Standby { phase: StandbyPhase::Open { buffer, first, .. }, .. }) = live.standby.as_deref_mut() else {
            return;
        };
        let old = |event: &MarketEvent| first_id(event).is_some_and(|id| id.saturating_add(distance) >= r.last);
        let before = buffer.len();
        buffer.retain(|b| b.stream != r.stream || !old(&b.event));
        self.stats.duplicates += (before - buffer.len()) as u64;
        first.retain(|(stream, _)| *stream != r.stream);
        if let Some(b) = buffer.iter().find(|b| b.stream == r.stream) {
            first.push((b.stream.clone(), first_id(&b.event)));
        }
    }

    fn live_timeouts(&mut self, now: Timestamp) {
        if !self.standby_timeouts(now) {
            return;
        }
        let (id, rollover_due) = match &self.state {
            State::Live(live) => {
                (live.id, live.standby.is_none() && live.rollover_wanted.is_none() && now >= live.rollover_at)
            }
            _ => return,
        };
        if rollover_due {
            self.rollover(RolloverReason::Scheduled, now);
            return;
        }
        loop {
            let Some(live) = self.live_mut(id) else { return };
            match live.heartbeat.handle_timeout(now) {
                None => break,
                Some(HeartbeatAction::SendPing(payload)) => live.control.push(WsMessage::Ping(payload)),
                Some(HeartbeatAction::Dead { silent_for }) => {
                    self.stats.heartbeat_timeouts += 1;
                    self.emit(Output::Event(Event::HeartbeatTimeout { id }));
                    let error = TransportError::Timeout(format!(
                        "no frame for {} ms, and no pong within {} ms of our ping ({PONG_TIMEOUT_KEY})",
                        silent_for.as_millis(),
                        self.heartbeat_config.pong_timeout_ms
                    ));
                    self.lose(error, Some((id, "heartbeat timeout")), now);
                    return;
                }
            }
        }
        let stalled = match self.live_mut(id) {
            Some(live) => live.stalls.handle_timeout(now),
            None => return,
        };
        for (stream, action) in stalled {
            self.stats.stalls += 1;
            self.emit(Output::Event(Event::StreamStalled { stream: stream.clone(), action }));
            match action {
                StallAction::Resubscribe => {
                    let unsubscribe = self.request(&Request::Unsubscribe(vec![stream.clone()]));
                    let subscribe = self.request(&Request::Subscribe(vec![stream]));
                    if let Some(live) = self.live_mut(id) {
                        live.control.push(WsMessage::Text(unsubscribe));
                        live.control.push(WsMessage::Text(subscribe));
                    }
                }
                StallAction::Reconnect => {
                    let ms = 2 * self.stall_after.as_millis();
                    let error = TransportError::Timeout(format!(
                        "stream {stream} delivered no event for {ms} ms, even after resubscribing ({STALL_KEY})"
                    ));
                    self.lose(error, Some((id, "stream stalled")), now);
                    return;
                }
            }
        }
    }

    /// The deadlines of a rollover's new transport; `false` when the state changed under the caller.
    fn standby_timeouts(&mut self, now: Timestamp) -> bool {
        let State::Live(live) = &mut self.state else { return false };
        let Some(standby) = live.standby.as_deref_mut() else { return true };
        let id = standby.id;
        match &mut standby.phase {
            StandbyPhase::Opening { deadline } => {
                if now >= *deadline {
                    let ms = self.handshake_timeout.as_millis();
                    let error = TransportError::Timeout(format!(
                        "connect + TLS handshake + WebSocket upgrade did not finish within {ms} ms ({HANDSHAKE_TIMEOUT_KEY})"
                    ));
                    self.standby_failed(error, Some("handshake timeout"), now);
                    return false;
                }
            }
            StandbyPhase::Open { heartbeat, control, .. } => {
                while let Some(action) = heartbeat.handle_timeout(now) {
                    match action {
                        HeartbeatAction::SendPing(payload) => control.push(WsMessage::Ping(payload)),
                        HeartbeatAction::Dead { silent_for } => {
                            self.stats.heartbeat_timeouts += 1;
                            self.emit(Output::Event(Event::HeartbeatTimeout { id }));
                            let error = TransportError::Timeout(format!(
                                "no frame for {} ms, and no pong within {} ms of our ping ({PONG_TIMEOUT_KEY})",
                                silent_for.as_millis(),
                                self.heartbeat_config.pong_timeout_ms
                            ));
                            self.standby_failed(error, Some("heartbeat timeout"), now);
                            return false;
                        }
                    }
                }
                if now >= standby.cutoff {
                    // Some stream stayed quiet on one side: switch anyway, the old one has had its time.
                    self.hand_over(Some("rollover"), now);
                    return false;
                }
            }
        }
        true
    }

    fn record_disconnect(&mut self, now: Timestamp, up_for: Duration, class: ErrorClass, error: &TransportError) {
        if self.disconnects.len() == DISCONNECT_LOG_LEN {
            self.disconnects.pop_front();
        }
        self.disconnects.push_back(Disconnect {
            at: now,
            up_for_ms: up_for.as_millis() as u64,
            class,
            error: error_name(error),
        });
        let drops: Vec<Disconnect> = self.disconnects.iter().cloned().collect();
        self.stats.patterns =
            patterns::analyze(&drops, self.wall_clock_offset_ms, self.backoff.stable_after().as_millis() as u64);
    }

    /// Encodes a request with a fresh id.
    fn request(&mut self, request: &Request) -> String {
        let id = self.next_request;
        self.next_request += 1;
        protocol::encode_request(request, id)
    }

    /// Moves the control messages the rate limit allows now into the outputs.
    fn flush_control(&mut self, now: Timestamp) {
        let State::Live(live) = &mut self.state else { return };
        let id = live.id;
        while let Some(message) = live.control.poll(now) {
            self.outputs.push_back(Output::Send { id, message });
        }
        if let Some(Standby { id, phase: StandbyPhase::Open { control, .. }, .. }) = live.standby.as_deref_mut() {
            while let Some(message) = control.poll(now) {
                self.outputs.push_back(Output::Send { id: *id, message });
            }
        }
    }
}

/// A short stable name of an error's kind, for stats keys and pattern reports.
pub fn error_name(error: &TransportError) -> String {
    use TransportError as E;
    match error {
        E::Dns(_) => "dns".into(),
        E::Refused(_) => "refused".into(),
        E::Reset(_) => "reset".into(),
        E::Timeout(_) => "timeout".into(),
        E::TlsHandshake(_) => "tls_handshake".into(),
        E::CertificateRejected(_) => "certificate_rejected".into(),
        E::UnexpectedEof(_) => "unexpected_eof".into(),
        E::BadRecordMac(_) => "bad_record_mac".into(),
        E::Protocol(_) => "protocol".into(),
        E::ServerClose { code, .. } => format!("server_close_{code}"),
        E::HttpStatus { status, .. } => format!("http_{status}"),
        E::MessageTooLarge { .. } => "message_too_large".into(),
        E::InvalidUrl(_) => "invalid_url".into(),
        E::Io(_) => "io".into(),
    }
}

#[cfg(test)]
mod tests;
