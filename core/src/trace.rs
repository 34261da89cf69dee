//! Traces: what a [`Connection`] was fed and what it answered, one RON value per line, and a
//! replay that feeds the same inputs into a fresh machine and compares the outputs.
//!
//! The machine is deterministic (time and the jitter seed are inputs), so a trace recorded by the
//! adapter (`keel stream --trace FILE`) reproduces in the simulator (`keel-sim replay FILE`) output
//! for output. A mismatch means either the machine changed since the recording or it was not
//! deterministic; the error names the line.
//!
//! Format: a `Start` record first (`StartPooled` for a machine of a split run, which shares its
//! attempt budget and is granted its attempts by `Input(AttemptGranted)` records), then
//! `Input`/`Timeout` records, each followed by the `Output` records drained after it:
//!
//! ```text
//! Start(config:(stream:(url:"wss://stream.binance.com:9443",..),..),seed:99,now:0)
//! Output(output:Open(id:(1),url:"wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade"))
//! Input(now:5,input:Failed(id:(1),error:Reset("peer")))
//! Output(output:Event(Disconnected(id:(1),error:Reset("peer"),class:Transient,diagnosis:"..",retry_in:(secs:0,nanos:631000000))))
//! Timeout(now:636)
//! Output(output:Open(id:(2),url:".."))
//! Input(now:686,input:Opened(id:(2)))
//! Output(output:Event(Connected(id:(2),attempt:2)))
//! ```
//!
//! Outputs are compared as one ordered sequence, so a trace stays valid when the adapter drained
//! after several inputs instead of after each.
//!
//! Blank lines and lines starting with `//` are skipped. [`TracedConnection`] wraps a machine and
//! records everything, so that an adapter only has to write out [`TracedConnection::take_records`].

use crate::config::Config;
use crate::connection::{Connection, Input, Output};
use crate::stats::connection::ConnectionStats;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use thiserror::Error;

/// One line of a trace.
// `Start` (with the whole Config) comes once per trace; boxing it would change the API for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceRecord {
    /// The machine was created (`Connection::new(&config, seed, now)`).
    Start {
        /// The configuration it was created with.
        config: Config,
        /// The jitter seed.
        seed: u64,
        /// The creation time.
        now: Timestamp,
    },
    /// The machine was created as one connection of a run that shares one attempt budget
    /// (`Connection::new_pooled(&config, seed, now)`): its grants are `Input(AttemptGranted)` records.
    StartPooled {
        /// The configuration it was created with.
        config: Config,
        /// The jitter seed.
        seed: u64,
        /// The creation time.
        now: Timestamp,
    },
    /// `handle_input(input, now)`.
    Input {
        /// When.
        now: Timestamp,
        /// What.
        input: Input,
    },
    /// `handle_timeout(now)`.
    Timeout {
        /// When.
        now: Timestamp,
    },
    /// An output returned by `poll_output()`, in order.
    Output {
        /// The output.
        output: Output,
    },
}

impl TraceRecord {
    /// The record as one line of RON (no newline; strings with newlines are escaped).
    pub fn to_line(&self) -> String {
        // Records hold only plain data; serialization cannot fail in practice. Fall back to a
        // comment line (skipped by the parser) rather than panic.
        ron::to_string(self).unwrap_or_else(|e| format!("// unserializable record: {e}"))
    }

    /// Parses one line written by [`Self::to_line`].
    pub fn from_line(line: &str) -> Result<TraceRecord, String> {
        ron::from_str(line).map_err(|e| e.to_string())
    }
}

/// Why a trace could not be read or did not replay.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TraceError {
    /// A line is not a trace record.
    #[error("trace line {line}: not a trace record ({message}); was the file written by `keel stream --trace`?")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// The trace does not begin with a `Start` record.
    #[error("trace line {line}: expected a Start record first, found {found}")]
    NoStart {
        /// 1-based line number (of the record found instead).
        line: usize,
        /// The kind of record found.
        found: &'static str,
    },
    /// A second `Start` record.
    #[error("trace line {line}: a second Start record; split the file into one trace per machine")]
    DoubleStart {
        /// 1-based line number.
        line: usize,
    },
    /// The replayed machine produced a different output than recorded.
    #[error("trace line {line}: recorded output {expected}, but the replay produced {got}")]
    Mismatch {
        /// 1-based line number of the recorded output.
        line: usize,
        /// The recorded output (RON).
        expected: String,
        /// What the replay produced instead (RON), or `nothing`.
        got: String,
    },
    /// The replay produced outputs after the last recorded one (a trace cut off mid-drain, or a
    /// machine that now does more).
    #[error("the replay produced {} output(s) the trace does not have, first: {first}", .count)]
    Extra {
        /// How many.
        count: usize,
        /// The first of them (RON).
        first: String,
    },
    /// The trace is empty.
    #[error("the trace is empty")]
    Empty,
}

fn kind(record: &TraceRecord) -> &'static str {
    match record {
        TraceRecord::Start { .. } => "Start",
        TraceRecord::StartPooled { .. } => "StartPooled",
        TraceRecord::Input { .. } => "Input",
        TraceRecord::Timeout { .. } => "Timeout",
        TraceRecord::Output { .. } => "Output",
    }
}

fn ron_of(output: &Output) -> String {
    ron::to_string(output).unwrap_or_else(|_| format!("{output:?}"))
}

/// Parses a whole trace file; each record keeps its 1-based line number.
pub fn parse(text: &str) -> Result<Vec<(usize, TraceRecord)>, TraceError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        let record = TraceRecord::from_line(trimmed).map_err(|message| TraceError::Parse { line: i + 1, message })?;
        records.push((i + 1, record));
    }
    Ok(records)
}

/// What a successful replay went through.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySummary {
    /// `Input` records fed.
    pub inputs: usize,
    /// `Timeout` records fed.
    pub timeouts: usize,
    /// Outputs compared (all equal).
    pub outputs: usize,
    /// The replayed machine's stats at the end.
    pub stats: ConnectionStats,
}

/// Replays records (with their line numbers, as [`parse`] returns them) into a fresh machine and
/// compares every output. Strict: a missing, different or extra output is an error.
pub fn replay(records: &[(usize, TraceRecord)]) -> Result<ReplaySummary, TraceError> {
    let mut iter = records.iter();
    let (mut conn, mut pending) = match iter.next() {
        None => return Err(TraceError::Empty),
        Some((
            _,
            start @ (TraceRecord::Start { config, seed, now } | TraceRecord::StartPooled { config, seed, now }),
        )) => {
            let mut conn = match start {
                TraceRecord::StartPooled { .. } => Connection::new_pooled(config, *seed, *now),
                _ => Connection::new(config, *seed, *now),
            };
            let pending: VecDeque<Output> = std::iter::from_fn(|| conn.poll_output()).collect();
            (conn, pending)
        }
        Some((line, other)) => return Err(TraceError::NoStart { line: *line, found: kind(other) }),
    };
    let mut summary = ReplaySummary { inputs: 0, timeouts: 0, outputs: 0, stats: ConnectionStats::default() };
    for (line, record) in iter {
        match record {
            TraceRecord::Start { .. } | TraceRecord::StartPooled { .. } => {
                return Err(TraceError::DoubleStart { line: *line });
            }
            TraceRecord::Input { now, input } => {
                conn.handle_input(input.clone(), *now);
                pending.extend(std::iter::from_fn(|| conn.poll_output()));
                summary.inputs += 1;
            }
            TraceRecord::Timeout { now } => {
                conn.handle_timeout(*now);
                pending.extend(std::iter::from_fn(|| conn.poll_output()));
                summary.timeouts += 1;
            }
            TraceRecord::Output { output } => match pending.pop_front() {
                Some(got) if &got == output => summary.outputs += 1,
                got => {
                    return Err(TraceError::Mismatch {
                        line: *line,
                        expected: ron_of(output),
                        got: got.as_ref().map_or_else(|| "nothing".to_string(), ron_of),
                    });
                }
            },
        }
    }
    if let Some(first) = pending.front() {
        return Err(TraceError::Extra { count: pending.len(), first: ron_of(first) });
    }
    summary.stats = conn.stats().clone();
    Ok(summary)
}

/// Parses and replays a trace file's text.
pub fn replay_text(text: &str) -> Result<ReplaySummary, TraceError> {
    replay(&parse(text)?)
}

/// A [`Connection`] that records its own trace: use it exactly like the machine, and write out
/// [`Self::take_records`] (e.g. after each drain) with [`TraceRecord::to_line`].
#[derive(Debug, Clone)]
pub struct TracedConnection {
    conn: Connection,
    records: Vec<TraceRecord>,
}

impl TracedConnection {
    /// `Connection::new`, recorded.
    pub fn new(config: &Config, seed: u64, now: Timestamp) -> Self {
        TracedConnection {
            conn: Connection::new(config, seed, now),
            records: vec![TraceRecord::Start { config: config.clone(), seed, now }],
        }
    }

    /// `Connection::new_pooled`, recorded (a `StartPooled` record).
    pub fn new_pooled(config: &Config, seed: u64, now: Timestamp) -> Self {
        TracedConnection {
            conn: Connection::new_pooled(config, seed, now),
            records: vec![TraceRecord::StartPooled { config: config.clone(), seed, now }],
        }
    }

    /// `Connection::handle_input`, recorded.
    pub fn handle_input(&mut self, input: Input, now: Timestamp) {
        self.records.push(TraceRecord::Input { now, input: input.clone() });
        self.conn.handle_input(input, now);
    }

    /// `Connection::handle_timeout`, recorded.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.records.push(TraceRecord::Timeout { now });
        self.conn.handle_timeout(now);
    }

    /// `Connection::poll_output`, recorded.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.conn.poll_output()?;
        self.records.push(TraceRecord::Output { output: output.clone() });
        Some(output)
    }

    /// The records since the last call.
    pub fn take_records(&mut self) -> Vec<TraceRecord> {
        std::mem::take(&mut self.records)
    }

    /// `Connection::set_wall_clock_offset` (affects only stats, so it is not recorded).
    pub fn set_wall_clock_offset(&mut self, offset_ms: u64) {
        self.conn.set_wall_clock_offset(offset_ms);
    }

    /// The wrapped machine, for its queries (`poll_timeout`, `stats`, `is_live`...).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::TransportError;
    use crate::connection::TransportId;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    const AGG: &str = r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BTCUSDT","a":5,"p":"0.001","q":"100","f":5,"l":5,"T":1672515782136,"m":true,"M":true}}"#;

    /// A short session: fail, reconnect, data, a gap, a server ping, a heartbeat round, shutdown.
    fn session() -> String {
        let mut c = TracedConnection::new(&Config::default(), 99, t(0));
        let mut lines = Vec::new();
        let mut drain = |c: &mut TracedConnection| {
            while c.poll_output().is_some() {}
            lines.extend(c.take_records().iter().map(TraceRecord::to_line));
        };
        drain(&mut c);
        let id1 = TransportId(1);
        c.handle_input(Input::Failed { id: id1, error: TransportError::Reset("peer".into()) }, t(5));
        drain(&mut c);
        let next = c.connection().poll_timeout().unwrap();
        c.handle_timeout(next);
        drain(&mut c);
        let id2 = TransportId(2);
        let now = next.as_millis();
        c.handle_input(Input::Opened { id: id2 }, t(now + 50));
        c.handle_input(Input::Text { id: id2, text: AGG.into() }, t(now + 60));
        c.handle_input(
            Input::Text { id: id2, text: AGG.replace("\"a\":5", "\"a\":9").replace(":5,", ":9,") },
            t(now + 70),
        );
        c.handle_input(Input::Text { id: id2, text: "garbage\nwith a newline".into() }, t(now + 80));
        c.handle_input(Input::Ping { id: id2, payload: vec![0, 255, 10] }, t(now + 90));
        drain(&mut c);
        let next = c.connection().poll_timeout().unwrap();
        c.handle_timeout(next);
        drain(&mut c);
        c.handle_input(Input::Shutdown, next + std::time::Duration::from_secs(1));
        drain(&mut c);
        lines.join("\n")
    }

    #[test]
    fn a_recorded_session_replays_exactly() {
        let text = session();
        if std::env::var_os("KEEL_PRINT_TRACE").is_some() {
            println!("{text}");
        }
        assert!(text.lines().count() > 15, "{text}");
        assert!(text.lines().next().unwrap().starts_with("Start("));
        let summary = replay_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!((summary.inputs, summary.timeouts), (7, 2));
        assert!(summary.outputs >= 10, "{summary:?}");
        assert_eq!((summary.stats.gaps, summary.stats.malformed_frames), (1, 1));
    }

    #[test]
    fn a_changed_output_is_reported_with_its_line() {
        let text = session();
        let lines: Vec<&str> = text.lines().collect();
        let victim = lines.iter().position(|l| l.contains("Connected")).unwrap();
        let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        changed[victim] = changed[victim].replace("attempt:2", "attempt:3");
        assert_ne!(changed[victim], lines[victim], "the test must actually change the line");
        match replay_text(&changed.join("\n")) {
            Err(TraceError::Mismatch { line, expected, got }) => {
                assert_eq!(line, victim + 1);
                assert!(expected.contains("attempt:3") && got.contains("attempt:2"), "{expected} / {got}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn missing_and_extra_outputs_are_errors() {
        let text = session();
        let lines: Vec<&str> = text.lines().collect();
        // Drop the last line (an output): the replay has one extra.
        let cut = lines[..lines.len() - 1].join("\n");
        assert!(matches!(replay_text(&cut), Err(TraceError::Extra { count: 1, .. })), "{:?}", replay_text(&cut));
        // A different seed changes the jitter, hence the outputs.
        let reseeded = text.replacen("seed:99", "seed:98", 1);
        assert_ne!(reseeded, text);
        assert!(matches!(replay_text(&reseeded), Err(TraceError::Mismatch { .. })));
    }

    #[test]
    fn bad_files_are_named_errors() {
        assert_eq!(replay_text(""), Err(TraceError::Empty));
        assert!(matches!(replay_text("// comment\n\nnonsense"), Err(TraceError::Parse { line: 3, .. })));
        assert!(matches!(replay_text("Timeout(now:5)"), Err(TraceError::NoStart { line: 1, found: "Timeout" })));
        let start = TraceRecord::Start { config: Config::default(), seed: 1, now: t(0) }.to_line();
        let twice = format!("{start}\n{start}");
        assert_eq!(replay_text(&twice), Err(TraceError::DoubleStart { line: 2 }));
    }

    #[test]
    fn every_record_kind_round_trips_through_a_line() {
        for line in session().lines() {
            let record = TraceRecord::from_line(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(record.to_line(), line);
        }
    }
}
