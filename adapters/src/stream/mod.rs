//! `keel stream`: the smol WebSocket client driving `keel_core::connection::Connection`.
//!
//! The adapter is thin. Every decision (when to reconnect, when a transport is dead, what to
//! subscribe) is the core's; this module reads the clock, opens sockets, moves frames and writes
//! what the core passes on. The loop:
//!
//! 1. drain `poll_output()` (of every shard's machine, see below): `Open` spawns a transport task (TCP + TLS + upgrade), `Send`/`Close`
//!    go to that task, `Event::Market` goes to the [`recorder`], gaps and notices to logs and the
//!    report, `GaveUp` ends the run;
//! 2. sleep until `poll_timeout()`, the next transport event, the recorder flush (every second),
//!    the status line, the end of `--duration`, or Ctrl-C/SIGTERM, whichever is first;
//! 3. feed what happened with `handle_input(.., now)` / `handle_timeout(now)`.
//!
//! Throughput: the transport tasks run on the loop's own thread (a local executor), and hand text
//! frames over in batches (every frame already buffered when one arrives); the loop feeds up to
//! `FRAMES_PER_POLL` (64) frames of a batch to the core before it looks at deadlines and the other
//! sources again, and a transport reads on only when its batch is done. One frame therefore costs
//! the core's `handle_input` plus a few queue moves, not a wake-up and a timer (docs/BENCHMARKS.md,
//! figure 4).
//!
//! More streams than one connection carries (Binance: 1024) are split by `keel_core::shard` into
//! shards, one `Connection` each, all driven by this one loop: transport events carry their shard's
//! index, so a frame reaches its machine by indexing a `Vec` (no lookup by name on the hot path), and
//! only the machine just fed is drained. One recorder and one recovery serve all shards (their
//! streams are disjoint; one REST client keeps them within one weight budget). A shard that gives up
//! ends the run: the others are shut down cleanly and the give-up names the shard and its streams.
//! A run whose streams fit on one connection is exactly the single-machine loop it always was.
//!
//! Server pings: tungstenite answers them itself with the same payload (RFC 6455) as soon as it
//! reads them, so the core's `Send{Pong}` is already on the wire and is not sent a second time
//! (Binance counts pongs against its 5 messages per second).

pub mod recorder;
pub mod transport;

use anyhow::Context;
use async_tungstenite::tungstenite::Utf8Bytes;
use clap::Args;
use keel_core::classify::{ErrorClass, TransportError, classify_error};
use keel_core::config::Config;
use keel_core::connection::{Connection, Event, GiveUp, Input, Output, TransportId, WsMessage};
use keel_core::gaps::{Gap, Restart};
use keel_core::protocol::Name;
use keel_core::recovery::{Recovery, RecoveryOutput, RecoveryStats};
use keel_core::redact::redact_url;
use keel_core::rest::{RequestId, RestRequest, RestResponse};
use keel_core::shard::{AttemptPool, ShardPlan};
use keel_core::stats::connection::ConnectionStats;
use keel_core::time::Timestamp;
use keel_core::trace::{TraceRecord, TracedConnection};
use recorder::{Recorder, RecorderError};
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use transport::{Command, SettingsError, TransportEvent, TransportSettings};

/// How a run is bounded and observed (everything that is not in [`Config`]).
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Seed of the core's jitter.
    pub seed: u64,
    /// Stop cleanly after this long.
    pub duration: Option<Duration>,
    /// Stop cleanly after this many market events were passed on.
    pub max_messages: Option<u64>,
    /// Stop cleanly when this channel yields or closes (Ctrl-C, tests).
    pub stop: Option<Receiver<()>>,
    /// Write market events under `stream.out_dir`.
    pub record: bool,
    /// Print a status line this often (on stderr when it is a terminal, as a log line otherwise).
    pub status_every: Option<Duration>,
    /// Write every core input and output to this file (RON lines, replayable by `keel-sim replay`).
    pub trace: Option<PathBuf>,
    /// Publish each connection's stats here about once a second (`--metrics-addr`).
    pub metrics: Option<crate::metrics::Metrics>,
}

/// Why the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopCause {
    /// `--duration` elapsed.
    Duration,
    /// `--max-messages` reached.
    MaxMessages,
    /// Ctrl-C, SIGTERM, or the stop channel.
    #[default]
    Signal,
    /// The core gave up (fatal error or too many failures).
    GaveUp,
    /// A recording or trace file could not be written (see [`StreamReport::write_error`]).
    WriteFailed,
}

/// One lost or refused transport, as the core reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Disconnect {
    /// Its connection (the shard of the streams; 0 when they fit on one).
    pub shard: usize,
    /// The transport.
    pub id: TransportId,
    /// What went wrong.
    pub error: TransportError,
    /// Its class.
    pub class: ErrorClass,
    /// The wait before the next attempt.
    pub retry_in: Duration,
}

/// One connection of a run: one shard of the streams, its own machine.
#[derive(Debug, Clone)]
pub struct ConnectionReport {
    /// Its index (0-based, in the order of the split).
    pub index: usize,
    /// Its name in logs (`s1`; `none` in a one-connection run, whose transports are `#N`).
    pub name: String,
    /// Its streams.
    pub streams: Vec<String>,
    /// Its machine's counters at the end.
    pub stats: ConnectionStats,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    /// The core's counters at the end, of all connections together ([`ConnectionStats::merged`]:
    /// counters summed, the worst gauges kept); exactly the machine's own in a one-connection run.
    pub stats: ConnectionStats,
    /// Each connection (one per shard of the streams, see `keel_core::shard`), in order.
    pub connections: Vec<ConnectionReport>,
    /// Every gap the core reported, in order.
    pub gaps: Vec<Gap>,
    /// Every disconnection the core reported, in order.
    pub disconnects: Vec<Disconnect>,
    /// URLs of every transport opened, in order.
    pub opened: Vec<String>,
    /// Market events passed on by the core, per stream.
    pub market_events: BTreeMap<Name, u64>,
    /// Rows written by the recorder (without [`StreamReport::rows_lost`]).
    pub rows_written: u64,
    /// Rows a file that failed may not hold: those given to it since its last successful flush
    /// (at most a second's; some may have reached it).
    pub rows_lost: u64,
    /// Files written to.
    pub files: Vec<PathBuf>,
    /// Set when the core gave up.
    pub gave_up: Option<GiveUp>,
    /// Why the run ended.
    pub cause: StopCause,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The zero-gap recovery's counters at the end (backfill, books, REST).
    pub recovery: RecoveryStats,
    /// What the recovery reported, in order: every Backfilled, Abandoned, BookSynced and BookResync.
    pub recovery_log: Vec<RecoveryOutput>,
    /// Events passed on that were fetched over REST (recorded like live ones), per stream.
    pub backfilled_events: BTreeMap<Name, u64>,
    /// Best bid and ask (price, quantity as text) of each synced book at the end, by symbol.
    pub books: BTreeMap<String, BookTop>,
    /// Every numbering restart the core detected, in order.
    pub restarts: Vec<Restart>,
    /// The streams that continued where an earlier run's recording ended (see `recorder::recorded_end`).
    pub resumed: Vec<String>,
    /// A connection attempt still under way when the run was stopped (TCP connect, TLS handshake
    /// or WebSocket upgrade unanswered), and how long it had been waiting; the longest of them.
    pub pending_attempt: Option<Duration>,
    /// The first recording or trace write that failed (disk full, a failing mount), as `{:#}`
    /// prints it. The run ended there, cleanly: its connections closed, this report kept.
    pub write_error: Option<String>,
    /// Market events passed on after recording failed, which no file holds.
    pub unrecorded: u64,
}

/// The top of one synced order book.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BookTop {
    /// `lastUpdateId` of the last diff applied.
    pub last_update_id: u64,
    /// Best bid (price, quantity).
    pub best_bid: Option<(String, String)>,
    /// Best ask (price, quantity).
    pub best_ask: Option<(String, String)>,
}

impl StreamReport {
    /// `--stats-json`: the counters of all connections together (top level, as before), `"recovery"`,
    /// `"connections"`: each connection's `index`, `streams` and own counters, and `"resumed_streams"`:
    /// the streams that continued an earlier run's recording.
    pub fn stats_json(&self) -> String {
        let mut v = serde_json::to_value(&self.stats).unwrap_or(serde_json::Value::Null);
        if let (Some(o), Ok(r)) = (v.as_object_mut(), serde_json::to_value(&self.recovery)) {
            o.insert("recovery".into(), r);
        }
        let connections: Vec<serde_json::Value> = self
            .connections
            .iter()
            .map(|c| {
                let mut stats = serde_json::to_value(&c.stats).unwrap_or(serde_json::Value::Null);
                if let Some(o) = stats.as_object_mut() {
                    o.insert("index".into(), c.index.into());
                    o.insert("streams".into(), c.streams.clone().into());
                }
                stats
            })
            .collect();
        if let Some(o) = v.as_object_mut() {
            o.insert("connections".into(), connections.into());
            o.insert("resumed_streams".into(), self.resumed.clone().into());
        }
        serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// A run that could not start or could not write.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS settings cannot be used.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Recording failed (disk full, permissions). Mid-run it does not end [`stream`] with an error:
    /// the run stops cleanly and keeps it in [`StreamReport::write_error`].
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    /// The REST client cannot be built (bad `rest.url`, unusable TLS settings).
    #[error(transparent)]
    Rest(#[from] crate::rest::RestClientError),
    /// The trace file could not be written. (The OS error is the source: `{:#}` prints it once.)
    #[error("cannot write the trace file {path} (--trace; pick a writable path)")]
    Trace {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output directory cannot be created or written to (checked before connecting).
    #[error(
        "cannot record into {path} (--out / stream.out_dir): it must be a directory keel can create and write; \
         pick another with --out, or pass --no-record"
    )]
    OutDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--stats-json` file cannot be written (checked before connecting, and at the end).
    #[error("cannot write --stats-json {path} (pick a writable path, or leave --stats-json out)")]
    StatsJson {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The machine, traced or not (tracing clones every input, so it is on only when asked).
enum Machine {
    Plain(Box<Connection>),
    Traced(Box<TracedConnection>, std::io::BufWriter<std::fs::File>, PathBuf),
}

impl Machine {
    fn conn(&self) -> &Connection {
        match self {
            Machine::Plain(c) => c,
            Machine::Traced(t, _, _) => t.connection(),
        }
    }
    fn handle_input(&mut self, input: Input, now: Timestamp) {
        match self {
            Machine::Plain(c) => c.handle_input(input, now),
            Machine::Traced(t, _, _) => t.handle_input(input, now),
        }
    }
    /// A text frame, read in place (traced: copied into the trace's `Input::Text`).
    fn handle_text(&mut self, id: TransportId, text: &str, now: Timestamp) {
        match self {
            Machine::Plain(c) => c.handle_text(id, text, now),
            Machine::Traced(t, _, _) => t.handle_input(Input::Text { id, text: text.to_owned() }, now),
        }
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        match self {
            Machine::Plain(c) => c.handle_timeout(now),
            Machine::Traced(t, _, _) => t.handle_timeout(now),
        }
    }
    fn poll_output(&mut self) -> Option<Output> {
        match self {
            Machine::Plain(c) => c.poll_output(),
            Machine::Traced(t, _, _) => t.poll_output(),
        }
    }
    fn write_trace(&mut self) -> Result<(), StreamError> {
        if let Machine::Traced(t, w, path) = self {
            for r in t.take_records() {
                writeln!(w, "{}", r.to_line())
                    .and_then(|_| if matches!(r, TraceRecord::Start { .. }) { w.flush() } else { Ok(()) })
                    .map_err(|source| StreamError::Trace { path: path.clone(), source })?;
            }
        }
        Ok(())
    }
    fn flush_trace(&mut self) -> Result<(), StreamError> {
        if let Machine::Traced(_, w, path) = self {
            w.flush().map_err(|source| StreamError::Trace { path: path.clone(), source })?;
        }
        Ok(())
    }
}

struct Transport {
    commands: Sender<Command>,
    /// Hands each batch's emptied `Vec` back; the transport reads on only then (see [`TransportEvent::Texts`]).
    recycle: Sender<Vec<Utf8Bytes>>,
    task: smol::Task<()>,
    /// The machine's attempt number when it opened this transport.
    attempt: u32,
    /// When it was opened.
    started: Instant,
    /// It reported `Opened` (TCP, TLS and the upgrade done).
    live: bool,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A batch of text frames from one transport, worked through one frame per loop turn.
struct Inbox {
    key: Key,
    frames: Vec<Utf8Bytes>,
    next: usize,
}

/// Frames the loop takes from an inbox before it polls REST answers, the stop signal and the
/// transports again (timers are checked before every frame).
const FRAMES_PER_POLL: u32 = 64;

/// Streams until the duration, the message count, a stop signal, or the core gives up.
///
/// Everything runs on the calling thread: the transports are tasks of a local executor driven by
/// this future, so a frame goes from the socket to the core without crossing threads, and the
/// transports read only while the loop is idle (CPU per message rather than parallelism; a second
/// thread cost more in wake-ups and queueing than it saved, see docs/BENCHMARKS.md figure 4).
pub async fn stream(cfg: Config, opts: StreamOptions) -> Result<StreamReport, StreamError> {
    let ex = smol::LocalExecutor::new();
    ex.run(stream_on(&ex, cfg, opts)).await
}

/// Key of a transport in the loop: its shard (an index into the loop's shards, so an event reaches
/// its machine without a lookup by name) and that machine's own transport id.
type Key = (usize, TransportId);

/// One connection of the run: a machine over one shard of the streams, and its transports.
struct Shard {
    machine: Machine,
    transports: BTreeMap<TransportId, Transport>,
    /// The transport a give-up is about (the core's GiveUp carries no id).
    last_opened: Option<TransportId>,
    /// Its streams, for the report and a give-up message.
    streams: Vec<String>,
}

/// The machine of one shard, traced to `trace` (shard 0) or `trace.N` (shard N) when asked: each
/// trace starts with its shard's config and seed, so `keel-sim replay` replays each on its own.
/// `pooled`: the shards share one attempt budget (a split run), so the machine waits for grants,
/// which its trace records.
fn shard_machine(
    plan: &ShardPlan,
    trace: Option<&PathBuf>,
    now: Timestamp,
    pooled: bool,
) -> Result<Machine, StreamError> {
    let new = if pooled { Connection::new_pooled } else { Connection::new };
    Ok(match trace {
        None => Machine::Plain(Box::new(new(&plan.config, plan.seed, now))),
        Some(path) => {
            let path = if plan.index == 0 {
                path.clone()
            } else {
                let mut p = path.clone().into_os_string();
                p.push(format!(".{}", plan.index));
                PathBuf::from(p)
            };
            let file =
                std::fs::File::create(&path).map_err(|source| StreamError::Trace { path: path.clone(), source })?;
            let traced = if pooled {
                TracedConnection::new_pooled(&plan.config, plan.seed, now)
            } else {
                TracedConnection::new(&plan.config, plan.seed, now)
            };
            Machine::Traced(Box::new(traced), std::io::BufWriter::new(file), path)
        }
    })
}

/// `a, b, c` or, for long lists, the first few and how many more.
fn stream_list(streams: &[String]) -> String {
    const SHOWN: usize = 6;
    let mut text = streams.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if streams.len() > SHOWN {
        text.push_str(&format!(" and {} more", streams.len() - SHOWN));
    }
    text
}

/// Which machines have outputs to drain: after a frame or a transport event only the one fed.
#[derive(Clone, Copy)]
enum Fed {
    None,
    One(usize),
    All,
}

async fn stream_on(
    ex: &smol::LocalExecutor<'_>,
    cfg: Config,
    opts: StreamOptions,
) -> Result<StreamReport, StreamError> {
    cfg.validate().map_err(|e| StreamError::Config(e.to_string()))?;
    // Legal but probably unintended (an hour-long backoff cap, a floor of u64::MAX): said once on
    // start, so that a feed that then sits silent for hours has its reason at the top of the log.
    for c in cfg.cautions() {
        tracing::warn!(key = c.field, "configuration caution: {c}");
    }
    let settings = TransportSettings::from_config(&cfg)?;
    let mut recorder = opts.record.then(|| Recorder::new(Path::new(&cfg.stream.out_dir)));
    let start = Instant::now();
    let now = || Timestamp::from_millis(start.elapsed().as_millis() as u64);
    // One machine per shard of the streams (one shard when they fit on one connection).
    let plans = keel_core::shard::plan(&cfg, opts.seed);
    let split = plans.len() > 1;
    // Binance's connection-attempt limit is per IP: the shards of a split run share one budget
    // (keel_core::shard::AttemptPool); a one-connection run keeps its machine's own, as always.
    let mut pool = split.then(|| AttemptPool::new(&cfg.reconnect));
    // Whether the pool had waiting connections it could not grant, for the log.
    let mut pool_full = false;
    let mut shards: Vec<Shard> = Vec::with_capacity(plans.len());
    for plan in &plans {
        shards.push(Shard {
            machine: shard_machine(plan, opts.trace.as_ref(), now(), split)?,
            transports: BTreeMap::new(),
            last_opened: None,
            streams: plan.config.stream.streams.clone(),
        });
    }
    if split {
        for (si, s) in shards.iter().enumerate() {
            tracing::info!(
                conn = conn_name(true, si, None),
                streams = s.streams.len(),
                "connection carries {}",
                stream_list(&s.streams)
            );
        }
    }
    let (events_tx, events_rx) = smol::channel::unbounded::<(Key, TransportEvent)>();
    let mut closing: Vec<smol::Task<()>> = Vec::new();
    let mut report = StreamReport::default();
    // Zero gap: every market event and gap of every shard goes through one recovery machine (the
    // shards' streams are disjoint); its REST requests go to one worker task holding one kept-alive
    // HTTPS connection (opened on the first request), so all shards share one REST weight budget
    // (Binance counts weight per IP).
    let mut recovery = Recovery::new(&cfg, now());
    if opts.record {
        report.resumed = resume_from_recordings(&cfg, &mut recovery);
    }
    let rest_client = crate::rest::RestClient::new(
        &cfg.rest.url,
        settings.clone(),
        Duration::from_millis(cfg.tls.handshake_timeout_ms),
        crate::rest::DEFAULT_REQUEST_TIMEOUT,
    )?;
    let (rest_tx, rest_requests) = smol::channel::unbounded::<(RequestId, RestRequest)>();
    let (rest_responses, rest_rx) = smol::channel::unbounded::<(RequestId, RestResponse)>();
    let _rest_task = smol::spawn(crate::rest::worker(rest_client, rest_requests, rest_responses));
    let book_symbols: Vec<String> = cfg
        .stream
        .streams
        .iter()
        .filter(|s| s.contains("@depth"))
        .filter_map(|s| s.split('@').next())
        .map(str::to_ascii_uppercase)
        .collect();
    // A duration past the clock's range (library callers are not checked like --duration) never ends the run.
    let end_at = opts.duration.and_then(|d| start.checked_add(d));
    let mut stopping: Option<Instant> = None;
    let mut next_flush = start + Duration::from_secs(1);
    let status_every = opts.status_every.unwrap_or(Duration::from_secs(5));
    let mut next_status = start + status_every;
    let mut last_status = (start, 0u64);
    let terminal = std::io::stderr().is_terminal();
    let mut total_market = 0u64;
    let stop_rx = opts.stop.clone();
    // The batch being worked through, and how many of its frames may still skip the full poll.
    let mut inbox: Option<Inbox> = None;
    let mut budget = FRAMES_PER_POLL;
    // One timer, moved only when the next deadline moves (not re-created on every frame).
    let mut timer = smol::Timer::never();
    let mut armed: Option<Instant> = None;
    let mut last_was_timer = false;
    // The core's clock as of the last wake-up: one clock read per frame.
    let mut clock = now();
    let mut fed = Fed::All;
    // A trace write that failed while the shards were borrowed, handled after them.
    let mut trace_failed: Option<StreamError> = None;
    let shutdown_all = |shards: &mut Vec<Shard>, at: Timestamp| {
        for s in shards.iter_mut() {
            s.machine.handle_input(Input::Shutdown, at);
        }
    };

    loop {
        // 1. Do what the machines ask (only the one fed since the last turn, unless a timer or a
        // stop touched them all).
        let range = match fed {
            Fed::None => 0..0,
            Fed::One(i) => i..i + 1,
            Fed::All => 0..shards.len(),
        };
        let mut gave_up_now = false;
        // Machines stop only when fed, so the run can have ended only if one just fed stopped.
        let mut stopped_now = false;
        for si in range {
            let shard = &mut shards[si];
            while let Some(out) = shard.machine.poll_output() {
                match out {
                    Output::Open { id, url } => {
                        let (cmd_tx, cmd_rx) = smol::channel::unbounded();
                        let (recycle, recycle_rx) = smol::channel::bounded(1);
                        let c = shard.machine.conn();
                        let (state, attempt) = (c.state_name(), c.attempt());
                        shard.last_opened = Some(id);
                        tracing::debug!(
                            conn = conn_name(split, si, Some(id)),
                            state,
                            attempt,
                            class = "none",
                            t_ms = now().as_millis(),
                            url = redact_url(&url),
                            "opening"
                        );
                        report.opened.push(url.clone());
                        let run =
                            transport::run((si, id), url, settings.clone(), events_tx.clone(), cmd_rx, recycle_rx);
                        let task = ex.spawn(run);
                        shard.transports.insert(
                            id,
                            Transport {
                                commands: cmd_tx,
                                recycle,
                                task,
                                attempt,
                                started: Instant::now(),
                                live: false,
                            },
                        );
                    }
                    Output::Send { id, message } => {
                        if matches!(message, WsMessage::Pong(_)) {
                            continue; // already answered by tungstenite, see the module docs
                        }
                        if let Some(t) = shard.transports.get(&id) {
                            let _ = t.commands.try_send(Command::Send(message));
                        }
                    }
                    Output::Close { id, code, reason } => {
                        if let Some(t) = shard.transports.remove(&id) {
                            if !t.live {
                                // Still connecting (TCP, TLS or the upgrade): no close frame can go out
                                // yet, so dropping the task cancels the attempt at once. Waiting for it
                                // held the end of a run up to 2 s past --duration when a server accepted
                                // TCP and never answered the handshake.
                                if stopping.is_some() {
                                    let pending = t.started.elapsed();
                                    report.pending_attempt = report.pending_attempt.max(Some(pending));
                                }
                                drop(t);
                                continue;
                            }
                            let _ = t.commands.try_send(Command::Close { code, reason });
                            // A transport that stops reading its commands (a stalled write) must not hold the end: bound the close.
                            let task = t.task;
                            closing.push(ex.spawn(async move {
                                task.or(async {
                                    smol::Timer::after(Duration::from_secs(2)).await;
                                })
                                .await
                            }));
                        }
                    }
                    Output::Event(Event::Market { stream, event, .. }) => {
                        recovery.handle_event(stream, event, clock);
                    }
                    Output::Event(ev) => {
                        if let Event::SequenceRestarted { stream, last, first } = &ev {
                            recovery.handle_restart(stream, *last, *first, clock);
                        }
                        log_event(&ev, shard.machine.conn(), split, si, &mut report)
                    }
                    Output::Gap(g) => {
                        let c = shard.machine.conn();
                        tracing::warn!(
                            conn = conn_name(split, si, c.current_transport()),
                            state = c.state_name(),
                            attempt = c.attempt(),
                            class = "none",
                            stream = %g.stream,
                            first = g.first_missing,
                            last = g.last_missing,
                            missing = g.missing(),
                            kind = ?g.kind,
                            "gap: ids missing on the stream"
                        );
                        recovery.handle_gap(&g, clock);
                        report.gaps.push(g);
                    }
                    Output::GaveUp(mut g) => {
                        let c = shard.machine.conn();
                        if split {
                            // One connection giving up ends the run (see the module docs): say which.
                            g.reason = format!(
                                "connection {} of {} (streams {}): {}",
                                conn_name(true, si, None),
                                plans.len(),
                                stream_list(&shard.streams),
                                g.reason
                            );
                        }
                        tracing::error!(
                            conn = conn_name(split, si, shard.last_opened),
                            state = c.state_name(),
                            attempt = g.failures,
                            class = g.class.name(),
                            failures = g.failures,
                            "giving up: {}",
                            g.reason
                        );
                        if report.gave_up.is_none() {
                            report.gave_up = Some(g);
                        }
                        gave_up_now = true;
                    }
                }
            }
            if let Err(e) = shard.machine.write_trace() {
                trace_failed.get_or_insert(e);
            }
            stopped_now |= shard.machine.conn().is_stopped();
            if let Some(p) = pool.as_mut() {
                p.handle_wants(si, shard.machine.conn().wants_attempt());
            }
        }
        if let Some(e) = trace_failed.take() {
            write_failed(e, &mut report, &mut recorder, &mut stopping, &mut shards, now());
            fed = Fed::All;
            continue;
        }
        // 1a. Split run: the shared attempt budget grants what it can now; a granted machine has an
        // Open to drain.
        if let Some(p) = pool.as_mut().filter(|p| p.waiting() > 0) {
            let at = now();
            let mut granted = false;
            while let Some(si) = p.poll_grant(at) {
                shards[si].machine.handle_input(Input::AttemptGranted, at);
                granted = true;
            }
            if p.waiting() > 0 && !pool_full {
                tracing::warn!(
                    waiting = p.waiting(),
                    used = p.used(at),
                    "connection attempt budget spent (reconnect.max_attempts_per_window per IP, shared by all \
                     connections): {} connection(s) wait until it has room",
                    p.waiting()
                );
            }
            pool_full = p.waiting() > 0;
            if granted {
                fed = Fed::All;
                continue;
            }
        }
        if gave_up_now && stopping.is_none() && split {
            tracing::warn!("one connection gave up: closing the others and ending the run");
            stopping = Some(Instant::now());
            shutdown_all(&mut shards, now());
            fed = Fed::All;
            continue;
        }
        // 1b. What the recovery asks (REST requests) and passes on (events in order, reports).
        while let Some(req) = recovery.poll_request(clock) {
            tracing::debug!(request = %req.0, path = %req.1.path(), weight = req.1.weight(), "rest: requesting");
            let _ = rest_tx.try_send(req);
        }
        let mut failed_now = false;
        while let Some(out) = recovery.poll_output() {
            if let Err(e) = pass_on(out, &mut report, &mut recorder, &mut total_market) {
                write_failed(e.into(), &mut report, &mut recorder, &mut stopping, &mut shards, now());
                failed_now = true;
            }
        }
        if failed_now {
            // The shutdown's closes to hand out.
            fed = Fed::All;
            continue;
        }
        if stopped_now && shards.iter().all(|s| s.machine.conn().is_stopped()) {
            break;
        }
        if stopping.is_some_and(|s| s.elapsed() > Duration::from_secs(3)) {
            tracing::warn!("the core did not stop within 3 s of the shutdown request; stopping anyway");
            break;
        }
        if stopping.is_none() && opts.max_messages.is_some_and(|m| total_market >= m) {
            report.cause = StopCause::MaxMessages;
            stopping = Some(Instant::now());
            shutdown_all(&mut shards, now());
            fed = Fed::All;
            continue;
        }

        // 2. Sleep until something happens, or take the next frame of the batch in hand.
        enum Wake {
            Rest((RequestId, RestResponse)),
            Transport(Option<(Key, TransportEvent)>),
            Frame(Key, Utf8Bytes),
            Timer,
            Stop,
        }
        // A finished batch goes back to its transport, which then reads on.
        if let Some(b) = inbox.take_if(|b| b.next >= b.frames.len())
            && let Some(t) = shards[b.key.0].transports.get(&b.key.1)
        {
            let mut frames = b.frames;
            frames.clear();
            let _ = t.recycle.try_send(frames);
        }
        let (mut core_at, mut recovery_at) = (None, None);
        // Read at every full poll; the frames in between keep it (they were read from the socket
        // together, tens of µs ago at most, and the core counts in ms).
        let mut t = None;
        let wake = match inbox.as_mut().filter(|_| budget > 0) {
            // Up to FRAMES_PER_POLL frames of a batch go straight to the core; deadlines wait that long
            // at most (tens of µs: they are in ms).
            Some(b) => {
                budget -= 1;
                b.next += 1;
                Wake::Frame(b.key, std::mem::take(&mut b.frames[b.next - 1]))
            }
            None => {
                budget = FRAMES_PER_POLL;
                let now_at = *t.insert(Instant::now());
                core_at = shards
                    .iter()
                    .filter_map(|s| s.machine.conn().poll_timeout())
                    .min()
                    .map(|t| start + Duration::from_millis(t.as_millis()));
                recovery_at = recovery.poll_timeout().map(|t| start + Duration::from_millis(t.as_millis()));
                let pool_at = pool
                    .as_ref()
                    .and_then(AttemptPool::poll_timeout)
                    .map(|t| start + Duration::from_millis(t.as_millis()));
                let mut wake_at = next_flush.min(next_status);
                for d in [core_at, recovery_at, pool_at, end_at.filter(|_| stopping.is_none())].into_iter().flatten() {
                    wake_at = wake_at.min(d);
                }
                if now_at >= wake_at && !last_was_timer {
                    // Due deadlines before the frames, but never twice in a row: frames always progress.
                    Wake::Timer
                } else {
                    if armed != Some(wake_at) {
                        timer.set_at(wake_at);
                        armed = Some(wake_at);
                    }
                    // REST answers and the stop signal first: they are rare, and a busy feed must not
                    // starve them.
                    async {
                        match rest_rx.recv().await {
                            Ok(r) => Wake::Rest(r),
                            Err(_) => std::future::pending().await,
                        }
                    }
                    .or(async {
                        match (&stop_rx, stopping) {
                            (Some(rx), None) => {
                                let _ = rx.recv().await;
                                Wake::Stop
                            }
                            _ => std::future::pending().await,
                        }
                    })
                    .or(async {
                        match inbox.as_mut() {
                            Some(b) => {
                                b.next += 1;
                                Wake::Frame(b.key, std::mem::take(&mut b.frames[b.next - 1]))
                            }
                            None => Wake::Transport(events_rx.recv().await.ok()),
                        }
                    })
                    .or(async {
                        (&mut timer).await;
                        Wake::Timer
                    })
                    .await
                }
            }
        };
        last_was_timer = matches!(wake, Wake::Timer);
        if last_was_timer {
            // Fired or not, it is re-armed from the deadlines on the next full poll.
            armed = None;
        }
        if let Some(polled_at) = t {
            // After a wait, the time it ended.
            let t = if matches!(wake, Wake::Frame(..)) { polled_at } else { Instant::now() };
            clock = Timestamp::from_millis(t.duration_since(start).as_millis() as u64);
            // 3. Feed what happened. The recovery's deadline (a Retry-After, the weight budget, a retry
            // pause) is checked on every full poll, so a busy feed cannot starve it behind transport events.
            if recovery_at.is_some_and(|c| t >= c) {
                recovery.handle_timeout(clock);
            }
        }
        match wake {
            Wake::Rest((id, response)) => {
                recovery.handle_response(id, response, clock);
                fed = Fed::None;
            }
            Wake::Frame((si, id), text) => {
                shards[si].machine.handle_text(id, &text, clock);
                fed = Fed::One(si);
            }
            Wake::Transport(Some(((si, id), ev))) => {
                fed = Fed::One(si);
                let shard = &mut shards[si];
                let input = match ev {
                    TransportEvent::Opened => {
                        if let Some(t) = shard.transports.get_mut(&id) {
                            t.live = true;
                        }
                        Input::Opened { id }
                    }
                    TransportEvent::Failed(f) => {
                        let attempt = shard.transports.remove(&id).map_or(0, |t| t.attempt);
                        tracing::warn!(
                            conn = conn_name(split, si, Some(id)),
                            state = shard.machine.conn().state_name(),
                            attempt,
                            class = classify_error(&f.error).class.name(),
                            t_ms = now().as_millis(),
                            live = shard.machine.conn().is_live(),
                            "transport failed: {}",
                            f.chain
                        );
                        Input::Failed { id, error: f.error }
                    }
                    TransportEvent::Closed { code, reason } => {
                        let attempt = shard.transports.remove(&id).map_or(0, |t| t.attempt);
                        let error = TransportError::ServerClose { code: code.unwrap_or(1005), reason: reason.clone() };
                        tracing::info!(
                            conn = conn_name(split, si, Some(id)),
                            state = shard.machine.conn().state_name(),
                            attempt,
                            class = classify_error(&error).class.name(),
                            t_ms = now().as_millis(),
                            ?code,
                            %reason,
                            "server closed the transport"
                        );
                        Input::Closed { id, code, reason }
                    }
                    TransportEvent::Texts(frames) => {
                        inbox = Some(Inbox { key: (si, id), frames, next: 0 });
                        continue;
                    }
                    TransportEvent::Ping(payload) => Input::Ping { id, payload },
                    TransportEvent::Pong(payload) => Input::Pong { id, payload },
                };
                shard.machine.handle_input(input, now());
            }
            Wake::Transport(None) => unreachable!("the loop holds a sender"),
            Wake::Stop => {
                tracing::info!("stop requested: closing cleanly");
                report.cause = StopCause::Signal;
                stopping = Some(Instant::now());
                shutdown_all(&mut shards, now());
                fed = Fed::All;
            }
            Wake::Timer => {
                fed = Fed::All;
                let t = Instant::now();
                if core_at.is_some_and(|c| t >= c) {
                    let at = now();
                    for s in &mut shards {
                        if s.machine.conn().poll_timeout().is_some_and(|d| at >= d) {
                            s.machine.handle_timeout(at);
                        }
                    }
                }
                if t >= next_flush {
                    next_flush = t + Duration::from_secs(1);
                    if let Some(Err(e)) = recorder.as_mut().map(Recorder::flush) {
                        write_failed(e.into(), &mut report, &mut recorder, &mut stopping, &mut shards, now());
                    }
                    for s in &mut shards {
                        if let Err(e) = s.machine.flush_trace() {
                            trace_failed.get_or_insert(e);
                        }
                    }
                    if let Some(m) = &opts.metrics {
                        let at = now();
                        m.set_connections(shards.iter().map(|s| s.machine.conn().stats_at(at)).collect(), at);
                        m.set_recovery(recovery.stats().clone());
                    }
                }
                if t >= next_status {
                    next_status = t + status_every;
                    let parts: Vec<ConnectionStats> = shards.iter().map(|s| s.machine.conn().stats().clone()).collect();
                    let stats = ConnectionStats::merged(&parts);
                    let rate = (stats.messages - last_status.1) as f64 / t.duration_since(last_status.0).as_secs_f64();
                    last_status = (t, stats.messages);
                    let rs = recovery.stats();
                    let live = shards.iter().filter(|s| s.machine.conn().is_live()).count();
                    let state = match (live == shards.len(), split) {
                        (true, false) => "live".to_string(),
                        (false, false) => "down".to_string(),
                        (_, true) => format!("{live}/{} connections live", shards.len()),
                    };
                    let mut line = format!(
                        "keel stream: {} | {:.0} msg/s | {} events | {} reconnects | {} gaps ({} ids) | {} backfilled, {} abandoned, {} held | {} malformed | last error: {}",
                        state,
                        rate,
                        stats.market_events,
                        stats.reconnects,
                        stats.gaps,
                        stats.missing_ids,
                        rs.backfilled_trades,
                        rs.abandoned_ids,
                        rs.held_events,
                        stats.malformed_frames,
                        stats.last_error.as_deref().unwrap_or("none")
                    );
                    for (symbol, top) in book_tops(&recovery, &book_symbols) {
                        let side =
                            |s: &Option<(String, String)>| s.as_ref().map_or("-".to_string(), |(p, _)| p.clone());
                        line.push_str(&format!(" | {symbol} {} / {}", side(&top.best_bid), side(&top.best_ask)));
                    }
                    if terminal {
                        eprintln!("{line}");
                    } else {
                        tracing::info!("{line}");
                    }
                }
                if stopping.is_none() && end_at.is_some_and(|e| t >= e) {
                    report.cause = StopCause::Duration;
                    stopping = Some(Instant::now());
                    shutdown_all(&mut shards, now());
                }
            }
        }
    }

    if report.gave_up.is_some() {
        report.cause = StopCause::GaveUp;
    }
    // Let the close frames go out (each bounded), then drop whatever is left.
    for t in closing {
        t.await;
    }
    for s in &mut shards {
        s.transports.clear();
    }
    // Live trades held behind a gap still being backfilled are received data: record them (the gap
    // itself is reported abandoned) rather than drop them with the buffer.
    recovery.handle_shutdown(now());
    while let Some(out) = recovery.poll_output() {
        if let Err(e) = pass_on(out, &mut report, &mut recorder, &mut total_market) {
            write_failed(e.into(), &mut report, &mut recorder, &mut stopping, &mut shards, now());
        }
    }
    if let Some(Err(e)) = recorder.as_mut().map(Recorder::flush) {
        write_failed(e.into(), &mut report, &mut recorder, &mut stopping, &mut shards, now());
    }
    if let Some(r) = &recorder {
        report.rows_written = r.rows();
        report.files = r.paths().to_vec();
    }
    for s in &mut shards {
        if let Err(e) = s.machine.write_trace().and_then(|()| s.machine.flush_trace()) {
            trace_failed.get_or_insert(e);
        }
    }
    if let Some(e) = trace_failed.take() {
        write_failed(e, &mut report, &mut recorder, &mut stopping, &mut shards, now());
    }
    report.connections = shards
        .iter()
        .enumerate()
        .map(|(index, s)| ConnectionReport {
            index,
            name: conn_name(split, index, None),
            streams: s.streams.clone(),
            stats: s.machine.conn().stats().clone(),
        })
        .collect();
    let parts: Vec<ConnectionStats> = report.connections.iter().map(|c| c.stats.clone()).collect();
    report.stats = ConnectionStats::merged(&parts);
    // Each connection on its own (`connection` label), see crate::metrics.
    report.recovery = recovery.stats().clone();
    report.books = book_tops(&recovery, &book_symbols);
    if let Some(m) = &opts.metrics {
        m.set_recovery(report.recovery.clone());
    }
    if let Some(m) = &opts.metrics {
        m.set_connections(parts, now());
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Ends a run whose recording or trace could not be written, as a stop request would: the
/// connections close cleanly and the report is kept, so the summary, `--stats-json` and the rows
/// already written survive a full disk. Only the first failure is kept; a failed recorder is
/// dropped (what it holds of the files that can still be written goes out as it drops), and
/// later events are counted in [`StreamReport::unrecorded`] rather than lost silently.
fn write_failed(
    e: StreamError,
    report: &mut StreamReport,
    recorder: &mut Option<Recorder>,
    stopping: &mut Option<Instant>,
    shards: &mut [Shard],
    at: Timestamp,
) {
    if matches!(e, StreamError::Recorder(_))
        && let Some(r) = recorder.take()
    {
        let rows = r.rows();
        report.files = r.paths().to_vec();
        // Every other file's rows out now; the failed one's error is already in hand.
        let (lost, _) = r.close();
        report.rows_written = rows - lost;
        report.rows_lost = lost;
    }
    if report.write_error.is_some() {
        return;
    }
    let text = format!("{:#}", anyhow::Error::from(e));
    tracing::error!("{text}: ending the run");
    report.write_error = Some(text);
    if stopping.is_none() {
        report.cause = StopCause::WriteFailed;
        *stopping = Some(Instant::now());
        for s in shards.iter_mut() {
            s.machine.handle_input(Input::Shutdown, at);
        }
    }
}

/// The `conn` field of connection log lines: the transport id (`#3`), prefixed by its connection
/// when the streams are split (`s1#3`: connection 1's transport 3; `s1`: connection 1 itself), or
/// `none`.
fn conn_name(split: bool, shard: usize, id: Option<TransportId>) -> String {
    match (split, id) {
        (false, None) => "none".to_string(),
        (false, Some(id)) => id.to_string(),
        (true, None) => format!("s{shard}"),
        (true, Some(id)) => format!("s{shard}{id}"),
    }
}

/// Best bid/ask of every synced book among `symbols`.
fn book_tops(recovery: &Recovery, symbols: &[String]) -> BTreeMap<String, BookTop> {
    let text = |l: Option<(keel_core::protocol::Decimal, keel_core::protocol::Decimal)>| {
        l.map(|(p, q)| (p.to_string(), q.to_string()))
    };
    symbols
        .iter()
        .filter_map(|s| {
            let b = recovery.book(s)?;
            Some((
                s.clone(),
                BookTop {
                    last_update_id: b.last_update_id(),
                    best_bid: text(b.best_bid()),
                    best_ask: text(b.best_ask()),
                },
            ))
        })
        .collect()
}

/// One recovery output: a delivered event is counted and recorded, anything else logged and kept.
fn pass_on(
    out: RecoveryOutput,
    report: &mut StreamReport,
    recorder: &mut Option<Recorder>,
    total_market: &mut u64,
) -> Result<(), RecorderError> {
    match out {
        RecoveryOutput::Deliver { stream, event, backfilled } => {
            *total_market += 1;
            count(&mut report.market_events, &stream);
            if backfilled {
                count(&mut report.backfilled_events, &stream);
            }
            match recorder {
                Some(r) => {
                    // The wall clock only for events without a time of their own (it picks their file's day).
                    let received_ms = if event.event_time() == 0 { wall_ms() } else { 0 };
                    r.record(&stream, &event, received_ms)?;
                }
                // Recording failed earlier in the run (a run without recording has no error).
                None if report.write_error.is_some() => report.unrecorded += 1,
                None => {}
            }
        }
        other => {
            log_recovery(&other);
            report.recovery_log.push(other);
        }
    }
    Ok(())
}

/// Adds one to `stream`'s counter. Keyed by the connection's shared names: found by pointer, and
/// the text is never copied.
fn count(counts: &mut BTreeMap<Name, u64>, stream: &Name) {
    match counts.get_mut(stream) {
        Some(n) => *n += 1,
        None => {
            counts.insert(stream.clone(), 1);
        }
    }
}

/// Continues each sequenced stream (aggTrade, trade, kline) where its recording under
/// `stream.out_dir` ends, so that what traded while keel was not running is backfilled over REST
/// and the files have no hole between runs (a restarted run used to start from the live ids and
/// report no gap). A recording that cannot be read is left out with a warning: the run goes on as
/// a fresh one for that stream.
fn resume_from_recordings(cfg: &Config, recovery: &mut Recovery) -> Vec<String> {
    let dir = Path::new(&cfg.stream.out_dir);
    let mut resumed = Vec::new();
    for stream in &cfg.stream.streams {
        match recorder::recorded_end(dir, stream) {
            Ok(Some(last)) => {
                if recovery.resume(stream, last) {
                    resumed.push(stream.clone());
                    tracing::info!(
                        %stream,
                        last = last.key,
                        complete = last.complete,
                        "resuming after the recording's last row: what was missed since is backfilled"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%stream, "not resuming from the recording ({e}): starting from the live feed"),
        }
    }
    resumed
}

/// Logs what the recovery reports (Deliver is recorded, not logged).
fn log_recovery(out: &RecoveryOutput) {
    match out {
        RecoveryOutput::Deliver { .. } => {}
        RecoveryOutput::Backfilled { stream, first, last, count } => {
            tracing::info!(%stream, first, last, count, "backfilled: gap closed over REST")
        }
        RecoveryOutput::Abandoned { stream, first, last, reason } => {
            // Klines are abandoned by open time: count them in klines, not milliseconds.
            let lost = keel_core::recovery::KlineInterval::of_stream(stream)
                .map_or(last - first + 1, |interval| interval.count(*first, *last));
            tracing::warn!(%stream, first, last, lost, "abandoned: ids lost: {reason}")
        }
        RecoveryOutput::BookSynced { symbol, last_update_id } => {
            tracing::info!(%symbol, last_update_id, "book synced from a snapshot")
        }
        RecoveryOutput::BookResync { symbol, reason } => {
            tracing::warn!(%symbol, "book discarded, resyncing this symbol: {reason}")
        }
        RecoveryOutput::ResumeDiscarded { stream, recorded, first } => tracing::warn!(
            %stream,
            recorded,
            first,
            "ids start over since the recording (its last id {recorded}, now {first}, traded later): \
             the server renumbered, nothing is fetched across"
        ),
    }
}

/// Logs a core event with the fields every connection line carries: `conn`, `state` and `attempt`
/// (the machine's, after the event; `waiting`: the next attempt), `class` (`none` without an error).
fn log_event(ev: &Event, c: &Connection, split: bool, shard: usize, report: &mut StreamReport) {
    let (state, attempt, current) = (c.state_name(), c.attempt(), conn_name(split, shard, c.current_transport()));
    let name = |id: &TransportId| conn_name(split, shard, Some(*id));
    match ev {
        Event::Market { .. } => {}
        Event::Connected { id, attempt } => {
            tracing::info!(conn = name(id), state, attempt, class = "none", "connected")
        }
        Event::Disconnected { id, error, class, diagnosis, retry_in } => {
            // The error's source chain was logged once when the transport failed; here only the decision.
            tracing::warn!(
                conn = name(id),
                state,
                attempt,
                class = class.name(),
                retry_in_ms = retry_in.as_millis() as u64,
                "disconnected: {diagnosis}"
            );
            report.disconnects.push(Disconnect {
                shard,
                id: *id,
                error: error.clone(),
                class: *class,
                retry_in: *retry_in,
            });
        }
        Event::HeartbeatTimeout { id } => tracing::warn!(
            conn = name(id),
            state,
            attempt,
            class = ErrorClass::Transient.name(),
            "heartbeat timeout: no frame after our ping"
        ),
        Event::StreamStalled { stream, action } => {
            tracing::warn!(conn = current, state, attempt, class = "none", %stream, ?action, "stream stalled")
        }
        Event::Malformed { id, error } => {
            tracing::debug!(conn = name(id), state, attempt, class = "none", "malformed frame (counted): {error}")
        }
        Event::ServerError { code, msg } => {
            tracing::warn!(conn = current, state, attempt, class = "none", code, "server error reply: {msg}")
        }
        Event::Rollover { id, reason } => {
            tracing::info!(conn = name(id), state, attempt, class = "none", ?reason, "rollover")
        }
        Event::SequenceRestarted { stream, last, first } => {
            tracing::warn!(
                conn = current,
                state,
                attempt,
                class = "none",
                %stream,
                last,
                first,
                "sequence restarted: the server started its ids over; tracking and recovery of the stream start over"
            );
            report.restarts.push(Restart { stream: stream.clone(), last: *last, first: *first });
        }
    }
}

/// Flags of `keel stream` (each overrides the config file).
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9898).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Config file (RON); defaults apply to everything it leaves out.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base URL (`wss://host:port`), e.g. the embedded exchange's.
    #[arg(long)]
    pub url: Option<String>,
    /// Streams, comma-separated (e.g. `btcusdt@aggTrade,btcusdt@kline_1m`).
    #[arg(long, value_delimiter = ',')]
    pub streams: Option<Vec<String>>,
    /// REST base URL (`https://host[:port]`) for backfill and book snapshots (rest.url), e.g. the
    /// embedded exchange's.
    #[arg(long)]
    pub rest_url: Option<String>,
    /// An extra trusted root certificate (PEM), e.g. the embedded exchange's `ca.pem`.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Output directory for the recorded files.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop cleanly after this many seconds (> 0).
    // Negative numbers are parsed, so that `--duration -1` gets keel's range message, not clap's
    // "unexpected argument '-1'".
    #[arg(long, allow_negative_numbers = true)]
    pub duration: Option<f64>,
    /// Stop cleanly after this many market events (>= 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_messages: Option<u64>,
    /// Write the connection stats as JSON to this file at exit.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Record every core input and output to this file (RON lines) for `keel-sim replay`.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Seed of the reconnect jitter (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not write market data to disk.
    #[arg(long)]
    pub no_record: bool,
}

/// The config file (or defaults) with the flags applied.
pub fn config_from_args(args: &StreamArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
            Config::from_ron(&text).with_context(|| format!("config {}", p.display()))?
        }
        None => Config::default(),
    };
    if let Some(u) = &args.url {
        cfg.stream.url = u.trim_end_matches('/').to_string();
    }
    if let Some(s) = &args.streams {
        cfg.stream.streams = s.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    }
    if let Some(u) = &args.rest_url {
        cfg.rest.url = u.trim_end_matches('/').to_string();
    }
    if let Some(c) = &args.ca_file {
        cfg.tls.ca_file = Some(c.display().to_string());
    }
    if let Some(o) = &args.out {
        cfg.stream.out_dir = o.display().to_string();
    }
    // The user typed the flag, not the key: an error about a key a flag set names the flag.
    let passed = [
        ("stream.url", "--url", args.url.is_some()),
        ("stream.streams", "--streams", args.streams.is_some()),
        ("rest.url", "--rest-url", args.rest_url.is_some()),
        ("tls.ca_file", "--ca-file", args.ca_file.is_some()),
        ("stream.out_dir", "--out", args.out.is_some()),
    ];
    cfg.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {}", e.naming_flags(&passed)))?;
    Ok(cfg)
}

/// Creates the output directory and checks that a file can be created in it, before connecting: a
/// run that streamed for an hour and only then found it could not write had lost the hour.
pub fn check_out_dir(dir: &Path) -> Result<(), StreamError> {
    let err = |source| StreamError::OutDir { path: dir.to_path_buf(), source };
    if dir.exists() && !dir.is_dir() {
        return Err(err(std::io::Error::other("it exists and is not a directory")));
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".keel-write-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Checks before connecting that `path` (`--stats-json`) can be written: opened for writing without
/// truncating what it holds, and removed again if this created it (an empty stats file left by a run
/// that then failed would read as a run with no stats).
pub fn check_stats_path(path: &Path) -> Result<(), StreamError> {
    crate::probe::writable_file(path).map_err(|source| StreamError::StatsJson { path: path.to_path_buf(), source })
}

/// The last line of a run that never had a live connection: where it tried, for how long, and the
/// last thing that went wrong (or the attempt still waiting for an answer when the run ended).
fn never_connected(url: &str, report: &StreamReport, handshake_timeout_ms: u64) -> String {
    let last = match (&report.stats.last_error, report.pending_attempt) {
        (Some(e), _) => e.clone(),
        (None, Some(waited)) => format!(
            "none: the connection attempt had no answer after {:.1} s (a server that accepts TCP but does not \
             answer TLS or the WebSocket upgrade, or a filtered port; keel abandons an attempt after \
             tls.handshake_timeout_ms = {handshake_timeout_ms})",
            waited.as_secs_f64()
        ),
        (None, None) => "none".to_string(),
    };
    format!("never connected to {} in {:.1} s; last error: {last}", redact_url(url), report.elapsed.as_secs_f64())
}

/// The summary line printed at the end of every run.
fn summary(report: &StreamReport) -> String {
    let s = &report.stats;
    let r = &report.recovery;
    let mut line = format!(
        "keel stream: {} market events, {} rows in {} files, {} reconnects{}{}, {} gaps ({} ids missing: {} backfilled over REST, {} abandoned), {} book resyncs, {} malformed, {:.1}s",
        s.market_events,
        report.rows_written,
        report.files.len(),
        s.reconnects,
        // "0 reconnects" alone read as a quiet run when every attempt had failed.
        match s.failures {
            0 => String::new(),
            1 => " (1 failure)".to_string(),
            n => format!(" ({n} failures)"),
        },
        // The gap since the recording is backfilled but is no gap of this run's connections: without
        // this, "0 gaps (0 ids missing: 215 backfilled)" did not add up.
        match report.resumed.len() {
            0 => String::new(),
            n => format!(", {n} stream(s) resumed from the recording"),
        },
        s.gaps,
        s.missing_ids,
        r.backfilled_trades,
        r.abandoned_ids,
        r.book_resyncs,
        s.malformed_frames,
        report.elapsed.as_secs_f64()
    );
    if let Some(e) = &s.last_error {
        line.push_str(&format!(", last error: {e}"));
    }
    line
}

/// `--duration` as a `Duration`. Checked here rather than by clap so that `-1` gets keel's
/// message; a value past what `Duration` holds (~5.8e11 years) would otherwise panic.
fn duration_arg(secs: f64) -> anyhow::Result<Duration> {
    if secs.is_nan() || secs <= 0.0 {
        anyhow::bail!("--duration must be > 0 seconds, got {secs}");
    }
    // The monotonic clock counts less far than `Duration` does (1e19 s fits one, not the other).
    Duration::try_from_secs_f64(secs).ok().filter(|d| Instant::now().checked_add(*d).is_some()).ok_or_else(|| {
        anyhow::anyhow!("--duration {secs} s is too long to count; leave --duration out to stream until Ctrl-C")
    })
}

/// Runs `keel stream`. Exit codes: 0 clean stop, 2 certificate rejected, 1 anything else (a run
/// that never connected, a recording, trace or `--stats-json` file that could not be written).
pub fn run(args: StreamArgs) -> anyhow::Result<ExitCode> {
    let duration = args.duration.map(duration_arg).transpose()?;
    let cfg = config_from_args(&args)?;
    // Every path is checked before connecting (see check_out_dir).
    if !args.no_record {
        check_out_dir(Path::new(&cfg.stream.out_dir))?;
    }
    if let Some(parent) = args.trace.as_deref().and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|source| StreamError::Trace { path: args.trace.clone().unwrap_or_default(), source })?;
    }
    if let Some(p) = &args.stats_json {
        check_stats_path(p)?;
    }
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    // ctrlc's `termination` feature covers SIGTERM too.
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;
    // The server lives until `run` returns; the stream loop publishes into the shared handle.
    let metrics = args.metrics_addr.map(crate::metrics::serve_new).transpose()?;
    let seed = args.seed.unwrap_or_else(|| wall_ms() ^ u64::from(std::process::id()));
    let opts = StreamOptions {
        seed,
        duration,
        max_messages: args.max_messages,
        stop: Some(stop_rx),
        record: !args.no_record,
        status_every: Some(Duration::from_secs(5)),
        trace: args.trace.clone(),
        metrics: metrics.as_ref().map(|(m, _)| m.clone()),
    };
    // The first few names and a count: a split run's list can hold tens of thousands of characters.
    tracing::info!(
        url = redact_url(&cfg.stream.url),
        streams = %stream_list(&cfg.stream.streams),
        stream_count = cfg.stream.streams.len(),
        out = %cfg.stream.out_dir,
        "keel stream starting"
    );
    let (url, ca_file, handshake_timeout_ms) =
        (cfg.stream.url.clone(), cfg.tls.ca_file.clone(), cfg.tls.handshake_timeout_ms);
    let report = smol::block_on(stream(cfg, opts))?;
    // The summary and the exit code survive a stats file that cannot be written: the error is
    // reported after the summary, and a rejected certificate keeps its 2.
    let stats_error = args.stats_json.as_ref().and_then(|p| {
        std::fs::write(p, report.stats_json()).err().map(|source| StreamError::StatsJson { path: p.clone(), source })
    });
    let stats_error = stats_error.map(|e| format!("{:#}", anyhow::Error::from(e)));
    let (lines, code) = outcome(&report, stats_error, &url, ca_file.as_deref(), handshake_timeout_ms);
    for line in lines {
        eprintln!("{line}");
    }
    Ok(ExitCode::from(code))
}

/// What the end of a run prints (the summary first, always) and its exit code: 2 for a rejected
/// certificate, whatever else failed; 1 for a run that gave up, never connected, could not write a
/// recording or trace file (the run stopped there), or could not write its `--stats-json`
/// (`stats_error`); 0 otherwise.
fn outcome(
    report: &StreamReport,
    stats_error: Option<String>,
    url: &str,
    ca_file: Option<&str>,
    handshake_timeout_ms: u64,
) -> (Vec<String>, u8) {
    let mut lines = vec![summary(report)];
    let mut code = 0u8;
    if let Some(e) = &report.write_error {
        lines.push(format!("keel: error: {e}"));
        let mut after = "keel: the run was stopped there".to_string();
        if report.rows_lost > 0 {
            after.push_str(&format!(
                "; up to {} rows given to the file that failed may be missing from it (its last second)",
                report.rows_lost
            ));
        }
        if report.unrecorded > 0 {
            after.push_str(&format!("; {} market events received after the failure are in no file", report.unrecorded));
        }
        after.push_str("; every other row is in its file");
        lines.push(after);
        code = 1;
    }
    if let Some(e) = stats_error {
        lines.push(format!("keel: error: {e}"));
        code = 1;
    }
    match &report.gave_up {
        None if report.stats.connects == 0 => {
            lines.push(format!("keel: error: {}", never_connected(url, report, handshake_timeout_ms)));
            code = code.max(1);
        }
        None => {}
        Some(GiveUp { error: TransportError::CertificateRejected(why), .. }) => {
            lines.push(format!("keel: error: the server certificate was rejected: {why}"));
            lines.push(format!(
                "keel: not retrying (keel never disables verification): {}",
                keel_core::classify::certificate_advice(why, ca_file)
            ));
            code = 2;
        }
        Some(g) => {
            lines.push(format!("keel: error: gave up after {} consecutive failures: {}", g.failures, g.reason));
            code = code.max(1);
        }
    }
    (lines, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_stats_write_keeps_the_summary_and_a_certificate_s_exit_code() {
        let rejected = TransportError::CertificateRejected("unable to get local issuer certificate".into());
        let report = StreamReport {
            gave_up: Some(GiveUp {
                error: rejected.clone(),
                class: ErrorClass::Fatal,
                failures: 1,
                reason: "fatal".into(),
            }),
            ..StreamReport::default()
        };
        let write_error = Some("cannot write --stats-json out/stats.json: Is a directory (os error 21)".to_string());
        let (lines, code) = outcome(&report, write_error.clone(), "wss://localhost:9443", Some("other/ca.pem"), 30_000);
        assert_eq!(code, 2, "{lines:?}");
        assert!(lines[0].starts_with("keel stream: 0 market events"), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("cannot write --stats-json")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("the CA in other/ca.pem")), "{lines:?}");
        let connected = StreamReport {
            stats: ConnectionStats { connects: 1, ..ConnectionStats::default() },
            ..StreamReport::default()
        };
        assert_eq!(outcome(&connected, write_error, "wss://x", None, 30_000).1, 1);
        assert_eq!(outcome(&connected, None, "wss://x", None, 30_000).1, 0);
    }

    #[test]
    fn the_stats_path_check_leaves_no_file_and_no_change_behind() {
        let dir = std::env::temp_dir().join(format!("keel-stats-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let new = dir.join("new.json");
        check_stats_path(&new).unwrap();
        assert!(!new.exists(), "an empty stats file would read as a run without stats");
        let old = dir.join("old.json");
        std::fs::write(&old, "{\"kept\": 1}").unwrap();
        check_stats_path(&old).unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "{\"kept\": 1}");
        let err = check_stats_path(&dir).unwrap_err();
        assert!(err.to_string().contains("--stats-json"), "{err}");
        assert!(check_out_dir(&old).is_err(), "a file is not an output directory");
        check_out_dir(&dir.join("a/b")).unwrap();
        assert_eq!(std::fs::read_dir(dir.join("a/b")).unwrap().count(), 0, "the probe file is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_run_that_never_connected_fails_and_says_why() {
        let refused = StreamReport {
            stats: ConnectionStats {
                last_error: Some("connection refused: x".into()),
                failures: 4,
                ..ConnectionStats::default()
            },
            elapsed: Duration::from_millis(4_020),
            ..StreamReport::default()
        };
        let (lines, code) = outcome(&refused, None, "wss://localhost:1", None, 30_000);
        assert_eq!(code, 1);
        assert!(lines[0].ends_with(", last error: connection refused: x"), "{lines:?}");
        assert!(lines[0].contains(" 0 reconnects (4 failures), "), "failed attempts are not a quiet run: {lines:?}");
        assert_eq!(
            lines[1],
            "keel: error: never connected to wss://localhost:1 in 4.0 s; last error: connection refused: x"
        );
        let silent = StreamReport { pending_attempt: Some(Duration::from_millis(3_990)), ..StreamReport::default() };
        let (lines, code) = outcome(&silent, None, "wss://localhost:2", None, 30_000);
        assert_eq!(code, 1);
        assert!(lines[1].contains("no answer after 4.0 s") && lines[1].contains("tls.handshake_timeout_ms = 30000"));
    }

    #[test]
    fn a_failed_write_follows_the_summary_with_what_the_files_lack() {
        let report = StreamReport {
            stats: ConnectionStats { connects: 1, market_events: 90, ..ConnectionStats::default() },
            write_error: Some(
                "cannot write recording file d/x.csv (...): No space left on device (os error 28)".into(),
            ),
            unrecorded: 7,
            rows_lost: 12,
            cause: StopCause::WriteFailed,
            ..StreamReport::default()
        };
        let (lines, code) = outcome(&report, None, "wss://h", None, 30_000);
        assert_eq!(code, 1);
        assert!(lines[0].starts_with("keel stream: 90 market events") && !lines[0].contains("failures"), "{lines:?}");
        assert_eq!(lines[1], format!("keel: error: {}", report.write_error.as_deref().unwrap_or_default()));
        assert_eq!(
            lines[2],
            "keel: the run was stopped there; up to 12 rows given to the file that failed may be missing from it \
             (its last second); 7 market events received after the failure are in no file; every other row is in \
             its file"
        );
        // A rejected certificate still says so, and keeps its 2.
        let rejected = StreamReport {
            gave_up: Some(GiveUp {
                error: TransportError::CertificateRejected("x".into()),
                class: ErrorClass::Fatal,
                failures: 1,
                reason: "x".into(),
            }),
            ..report
        };
        let (_, code) = outcome(&rejected, None, "wss://h", None, 30_000);
        assert_eq!(code, 2);
    }

    #[test]
    fn a_long_stream_list_is_shown_as_its_first_names_and_a_count() {
        let names: Vec<String> = (0..1100).map(|i| format!("s{i}usdt@aggTrade")).collect();
        assert_eq!(
            stream_list(&names),
            "s0usdt@aggTrade, s1usdt@aggTrade, s2usdt@aggTrade, s3usdt@aggTrade, s4usdt@aggTrade, s5usdt@aggTrade \
             and 1094 more"
        );
        assert_eq!(stream_list(&names[..2]), "s0usdt@aggTrade, s1usdt@aggTrade");
        assert_eq!(stream_list(&names[..6]).matches(", ").count(), 5);
    }
}
