//! Faults the embedded exchange injects on demand, and their command-line spelling.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// One misbehaviour of the exchange on one connection. `after` counts market-data frames sent on
/// that connection (from the moment the fault was applied, for runtime injection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Abrupt TCP reset (RST, SO_LINGER 0) after `after` frames: the client sees "connection reset".
    /// The RST waits (250 ms at most) until the client's kernel has acknowledged those frames, so that
    /// every frame the exchange logs as sent could be read.
    Reset {
        /// Frames before the reset.
        after: u64,
    },
    /// TCP closed without a TLS close_notify after `after` frames ("EOF occurred in violation of protocol").
    Eof {
        /// Frames before the EOF.
        after: u64,
    },
    /// After `after` frames the socket stays open but nothing is written or read: no data, no pongs.
    Stall {
        /// Frames before the stall.
        after: u64,
    },
    /// Close frame with `code` after `after` frames (1001 going away, 1008 policy violation...).
    Close {
        /// Frames before the close.
        after: u64,
        /// RFC 6455 close code.
        code: u16,
    },
    /// A malformed text frame is inserted after every `every` market frames (no market frame is lost).
    Malformed {
        /// Period in market frames.
        every: u64,
    },
    /// The WebSocket upgrade is answered with this HTTP status (429, 418...) and maybe a Retry-After.
    RejectUpgrade {
        /// HTTP status code.
        status: u16,
        /// Retry-After in seconds, when sent.
        retry_after_secs: Option<u64>,
    },
    /// Binance's 24-hour cutoff, shortened: `{"e":"serverShutdown"}`, then close 1001 after `after`.
    Cutoff {
        /// Lifetime of the connection.
        after: Duration,
    },
    /// The server reads the client's frames slowly: it sleeps `delay` before each read.
    SlowReads {
        /// Sleep before each read.
        delay: Duration,
    },
    /// One text frame of `bytes` bytes after `after` frames (tests the client's max_message_bytes).
    Oversize {
        /// Frames before the big one.
        after: u64,
        /// Its size.
        bytes: u64,
    },
    /// Benchmark mode: `frames` pre-encoded frames as fast as the socket takes them, then normal: depth
    /// updates when the connection's first subscribed stream is a depth stream, aggTrades otherwise.
    Blast {
        /// Number of frames.
        frames: u64,
    },
    /// The first depth diff due after `after` frames is not sent (the market's book still applies
    /// it): the client sees `U` > its last `u` + 1 and must resync that symbol's book.
    DropDepth {
        /// Frames before the dropped diff.
        after: u64,
    },
    /// After `after` frames the exchange restarts its numbering, as a restarted process or a venue
    /// after maintenance would: aggTrade, trade, depth and bookTicker ids start again from 1 for every
    /// symbol (the market is shared, so every connection sees it), and REST forgets the old trades.
    Restart {
        /// Frames before the restart.
        after: u64,
    },
}

/// Every spelling [`Fault`]'s parser accepts, one per kind: the one list that `keel exchange --help`
/// and the parse error show (two hand-kept lists had drifted: the help lacked dropdepth and restart).
pub const FAULT_SPECS: &str = "reset:N, eof:N, stall:N, close:CODE:N, malformed:EVERY, \
                               reject:STATUS[:RETRY_AFTER_SECS], cutoff:MS, slow:MS, blast:FRAMES, oversize:N:BYTES, \
                               dropdepth:N, restart:N";

/// Every spelling [`RestFault`]'s parser accepts (the help of `--rest-fault` and its parse error).
pub const REST_FAULT_SPECS: &str = "429[:RETRY_AFTER_SECS], 418[:RETRY_AFTER_SECS], 500, slow:MS";

/// A fault spelling that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid fault {spec:?}: {why}; expected one of {expected}")]
pub struct FaultParseError {
    /// The text given.
    pub spec: String,
    /// What was wrong with it.
    pub why: String,
    /// The accepted spellings of its kind of fault ([`FAULT_SPECS`] or [`REST_FAULT_SPECS`]).
    pub expected: &'static str,
}

/// The largest `oversize` padding the exchange builds.
const MAX_OVERSIZE_BYTES: u64 = 1 << 30;

impl FromStr for Fault {
    type Err = FaultParseError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| FaultParseError { spec: spec.to_string(), why: why.to_string(), expected: FAULT_SPECS };
        let parts: Vec<&str> = spec.split(':').collect();
        let num = |i: usize| -> Result<u64, FaultParseError> {
            let p = parts.get(i).ok_or_else(|| err("missing number"))?;
            p.parse::<u64>().map_err(|_| err(&format!("{p:?} is not a non-negative integer")))
        };
        let fault = match parts[0] {
            "reset" if parts.len() == 2 => Fault::Reset { after: num(1)? },
            "eof" if parts.len() == 2 => Fault::Eof { after: num(1)? },
            "stall" if parts.len() == 2 => Fault::Stall { after: num(1)? },
            "close" if parts.len() == 3 => {
                let code = num(1)?;
                let code = u16::try_from(code).ok().filter(|c| (1000..5000).contains(c));
                Fault::Close { code: code.ok_or_else(|| err("close code must be in 1000..5000"))?, after: num(2)? }
            }
            "malformed" if parts.len() == 2 => {
                Fault::Malformed { every: Some(num(1)?).filter(|n| *n > 0).ok_or_else(|| err("EVERY must be > 0"))? }
            }
            "reject" if parts.len() == 2 || parts.len() == 3 => {
                let status = u16::try_from(num(1)?).ok().filter(|s| (400..600).contains(s));
                let status = status.ok_or_else(|| err("status must be an HTTP error status (400..600)"))?;
                let retry_after_secs = if parts.len() == 3 { Some(num(2)?) } else { None };
                Fault::RejectUpgrade { status, retry_after_secs }
            }
            "cutoff" if parts.len() == 2 => Fault::Cutoff { after: Duration::from_millis(num(1)?) },
            "slow" if parts.len() == 2 => Fault::SlowReads { delay: Duration::from_millis(num(1)?) },
            "blast" if parts.len() == 2 => {
                Fault::Blast { frames: Some(num(1)?).filter(|n| *n > 0).ok_or_else(|| err("FRAMES must be > 0"))? }
            }
            "oversize" if parts.len() == 3 => {
                // The padding is built in memory: past 1 GiB it aborts the exchange instead of testing
                // the client's limit (stream.max_message_bytes, 1 MiB by default).
                let bytes = Some(num(2)?)
                    .filter(|n| (1..=MAX_OVERSIZE_BYTES).contains(n))
                    .ok_or_else(|| err(&format!("BYTES must be between 1 and {MAX_OVERSIZE_BYTES} (1 GiB)")))?;
                Fault::Oversize { after: num(1)?, bytes }
            }
            "dropdepth" if parts.len() == 2 => Fault::DropDepth { after: num(1)? },
            "restart" if parts.len() == 2 => Fault::Restart { after: num(1)? },
            _ => return Err(err("unknown kind or wrong number of fields")),
        };
        Ok(fault)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Reset { after } => write!(f, "reset:{after}"),
            Fault::Eof { after } => write!(f, "eof:{after}"),
            Fault::Stall { after } => write!(f, "stall:{after}"),
            Fault::Close { after, code } => write!(f, "close:{code}:{after}"),
            Fault::Malformed { every } => write!(f, "malformed:{every}"),
            Fault::RejectUpgrade { status, retry_after_secs: None } => write!(f, "reject:{status}"),
            Fault::RejectUpgrade { status, retry_after_secs: Some(s) } => write!(f, "reject:{status}:{s}"),
            Fault::Cutoff { after } => write!(f, "cutoff:{}", after.as_millis()),
            Fault::SlowReads { delay } => write!(f, "slow:{}", delay.as_millis()),
            Fault::Blast { frames } => write!(f, "blast:{frames}"),
            Fault::Oversize { after, bytes } => write!(f, "oversize:{after}:{bytes}"),
            Fault::DropDepth { after } => write!(f, "dropdepth:{after}"),
            Fault::Restart { after } => write!(f, "restart:{after}"),
        }
    }
}

/// One misbehaviour of the exchange's REST server, applied to one request (queued with
/// `ExchangeHandle::rest_fault_next`, taken in order, one per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestFault {
    /// HTTP 429 (Binance: request weight exceeded), with `Retry-After` in seconds when set.
    RateLimited {
        /// Retry-After in seconds.
        retry_after_secs: Option<u64>,
    },
    /// HTTP 418 (Binance: IP auto-banned for ignoring 429s), with `Retry-After` when set.
    Banned {
        /// Retry-After in seconds.
        retry_after_secs: Option<u64>,
    },
    /// HTTP 500 with Binance's unknown-error body.
    ServerError,
    /// The answer is delayed by `delay` (then served normally).
    Slow {
        /// The delay.
        delay: Duration,
    },
}

impl FromStr for RestFault {
    type Err = FaultParseError;

    /// `429[:SECS]`, `418[:SECS]`, `500`, `slow:MS`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| FaultParseError {
            spec: spec.to_string(),
            why: format!("{why} (a REST fault)"),
            expected: REST_FAULT_SPECS,
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let num = |i: usize| -> Result<Option<u64>, FaultParseError> {
            parts
                .get(i)
                .map(|p| p.parse::<u64>().map_err(|_| err(&format!("{p:?} is not a non-negative integer"))))
                .transpose()
        };
        match (parts[0], parts.len()) {
            ("429", 1 | 2) => Ok(RestFault::RateLimited { retry_after_secs: num(1)? }),
            ("418", 1 | 2) => Ok(RestFault::Banned { retry_after_secs: num(1)? }),
            ("500", 1) => Ok(RestFault::ServerError),
            ("slow", 2) => Ok(RestFault::Slow { delay: Duration::from_millis(num(1)?.unwrap_or(0)) }),
            _ => Err(err("unknown kind or wrong number of fields")),
        }
    }
}

impl fmt::Display for RestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestFault::RateLimited { retry_after_secs: None } => write!(f, "429"),
            RestFault::RateLimited { retry_after_secs: Some(s) } => write!(f, "429:{s}"),
            RestFault::Banned { retry_after_secs: None } => write!(f, "418"),
            RestFault::Banned { retry_after_secs: Some(s) } => write!(f, "418:{s}"),
            RestFault::ServerError => write!(f, "500"),
            RestFault::Slow { delay } => write!(f, "slow:{}", delay.as_millis()),
        }
    }
}

/// Which connection gets which faults: connection k (0-based, in accept order, rejected upgrades
/// included) gets `per_connection[k]` if present, else `every_connection`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Faults for specific connection numbers.
    pub per_connection: BTreeMap<u64, Vec<Fault>>,
    /// Faults for every connection not named in `per_connection`.
    pub every_connection: Vec<Fault>,
}

impl FaultPlan {
    /// The faults of connection `k`.
    pub fn faults_for(&self, k: u64) -> Vec<Fault> {
        self.per_connection.get(&k).cloned().unwrap_or_else(|| self.every_connection.clone())
    }

    /// Adds `fault` to connection `k`.
    pub fn on(mut self, k: u64, fault: Fault) -> Self {
        self.per_connection.entry(k).or_default().push(fault);
        self
    }

    /// Parses `K=SPEC` (connection K) or `*=SPEC` / `SPEC` (every connection) and adds it.
    pub fn add_spec(&mut self, text: &str) -> Result<(), FaultParseError> {
        match text.split_once('=') {
            Some(("*", spec)) => self.every_connection.push(spec.parse()?),
            Some((k, spec)) => {
                let k = k.parse::<u64>().map_err(|_| FaultParseError {
                    spec: text.to_string(),
                    why: format!("{k:?} is not a connection number (0-based) or *"),
                    expected: FAULT_SPECS,
                })?;
                self.per_connection.entry(k).or_default().push(spec.parse()?);
            }
            None => self.every_connection.push(text.parse()?),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        let table = [
            ("reset:100", Fault::Reset { after: 100 }),
            ("eof:3", Fault::Eof { after: 3 }),
            ("stall:0", Fault::Stall { after: 0 }),
            ("close:1008:5", Fault::Close { after: 5, code: 1008 }),
            ("malformed:10", Fault::Malformed { every: 10 }),
            ("reject:429", Fault::RejectUpgrade { status: 429, retry_after_secs: None }),
            ("reject:418:120", Fault::RejectUpgrade { status: 418, retry_after_secs: Some(120) }),
            ("cutoff:5000", Fault::Cutoff { after: Duration::from_secs(5) }),
            ("slow:250", Fault::SlowReads { delay: Duration::from_millis(250) }),
            ("blast:1000", Fault::Blast { frames: 1000 }),
            ("oversize:5:2000000", Fault::Oversize { after: 5, bytes: 2_000_000 }),
            ("dropdepth:7", Fault::DropDepth { after: 7 }),
            ("restart:40", Fault::Restart { after: 40 }),
        ];
        for (text, fault) in table {
            assert_eq!(text.parse::<Fault>().unwrap(), fault, "{text}");
            assert_eq!(fault.to_string(), text);
        }
    }

    /// A spelling of `FAULT_SPECS` / `REST_FAULT_SPECS` with numbers for its placeholders.
    fn example(spec: &str) -> String {
        let spec = spec.replace("[:RETRY_AFTER_SECS]", ":7");
        spec.split(':')
            .map(|p| match p {
                "N" | "MS" | "FRAMES" | "BYTES" | "EVERY" => "3",
                "CODE" => "1008",
                "STATUS" => "429",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The spelled kind of every variant (a new variant does not compile until it is named here).
    fn kind(f: &Fault) -> &'static str {
        match f {
            Fault::Reset { .. } => "reset",
            Fault::Eof { .. } => "eof",
            Fault::Stall { .. } => "stall",
            Fault::Close { .. } => "close",
            Fault::Malformed { .. } => "malformed",
            Fault::RejectUpgrade { .. } => "reject",
            Fault::Cutoff { .. } => "cutoff",
            Fault::SlowReads { .. } => "slow",
            Fault::Blast { .. } => "blast",
            Fault::Oversize { .. } => "oversize",
            Fault::DropDepth { .. } => "dropdepth",
            Fault::Restart { .. } => "restart",
        }
    }

    #[test]
    fn the_listed_spellings_are_exactly_what_the_parsers_accept() {
        let listed: Vec<&str> = FAULT_SPECS.split(", ").collect();
        let mut kinds = Vec::new();
        for spec in &listed {
            let fault = example(spec).parse::<Fault>().unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(fault.to_string().split(':').next(), Some(kind(&fault)), "{spec}");
            kinds.push(kind(&fault));
        }
        // Every kind (the table of spellings_round_trip has one of each) is listed.
        for text in ["reset:1", "eof:1", "stall:1", "close:1000:1", "malformed:1", "reject:429", "cutoff:1", "slow:1"]
            .into_iter()
            .chain(["blast:1", "oversize:1:1", "dropdepth:1", "restart:1"])
        {
            let k = kind(&text.parse::<Fault>().unwrap());
            assert!(kinds.contains(&k), "{k} is accepted but not in FAULT_SPECS");
        }
        assert_eq!(kinds.len(), 12, "one spelling per kind");
        for spec in REST_FAULT_SPECS.split(", ") {
            example(spec).parse::<RestFault>().unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
    }

    #[test]
    fn bad_spellings_say_what_is_wrong() {
        for (text, why) in [
            ("reset", "unknown kind"),
            ("reset:x", "not a non-negative integer"),
            ("close:99:1", "close code"),
            ("reject:200", "HTTP error status"),
            ("malformed:0", "> 0"),
            ("blast:0", "FRAMES must be > 0"),
            ("oversize:3:0", "BYTES must be between 1 and 1073741824"),
            ("oversize:3:18446744073709551615", "BYTES must be between 1 and 1073741824"),
            ("explode:1", "unknown kind"),
            ("restart", "unknown kind"),
            ("restart:-1", "not a non-negative integer"),
        ] {
            let e = text.parse::<Fault>().unwrap_err();
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn rest_fault_spellings_round_trip() {
        let table = [
            ("429", RestFault::RateLimited { retry_after_secs: None }),
            ("429:3", RestFault::RateLimited { retry_after_secs: Some(3) }),
            ("418:120", RestFault::Banned { retry_after_secs: Some(120) }),
            ("500", RestFault::ServerError),
            ("slow:250", RestFault::Slow { delay: Duration::from_millis(250) }),
        ];
        for (text, fault) in table {
            assert_eq!(text.parse::<RestFault>().unwrap(), fault, "{text}");
            assert_eq!(fault.to_string(), text);
        }
        for bad in ["404", "429:x", "slow", "500:1"] {
            let e = bad.parse::<RestFault>().unwrap_err().to_string();
            assert!(e.contains(REST_FAULT_SPECS), "{bad}: {e}");
            assert!(!e.contains("reset:N"), "a REST fault's error lists the REST forms only: {e}");
        }
    }

    #[test]
    fn plan_picks_per_connection_first() {
        let mut plan = FaultPlan::default();
        plan.add_spec("0=reject:429:1").unwrap();
        plan.add_spec("*=malformed:5").unwrap();
        plan.add_spec("2=reset:10").unwrap();
        assert_eq!(plan.faults_for(0), vec![Fault::RejectUpgrade { status: 429, retry_after_secs: Some(1) }]);
        assert_eq!(plan.faults_for(1), vec![Fault::Malformed { every: 5 }]);
        assert_eq!(plan.faults_for(2), vec![Fault::Reset { after: 10 }]);
        assert!(plan.add_spec("x=reset:1").is_err());
    }
}
