//! keel's configuration: the RON schema, its defaults and its validation.
//!
//! The keys are a public contract (DESIGN.md). Every struct is `#[serde(default)]` so that a file
//! written before a section or field existed still loads with today's defaults, and
//! `deny_unknown_fields` so that a typo is an error naming the key instead of a silently ignored
//! setting. Parsing lives here because it is pure (text in, value out); reading the file is the
//! adapter's job.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

mod caution;
mod explain;
pub mod reference;
pub mod url;

pub use caution::Caution;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What to stream and where to write it.
    pub stream: StreamConfig,
    /// Reconnect policy.
    pub reconnect: ReconnectConfig,
    /// Client-side liveness checks.
    pub heartbeat: HeartbeatConfig,
    /// TLS settings of the WebSocket client (and of the REST client).
    pub tls: TlsConfig,
    /// Binance's REST API: backfill of aggTrades, trades and closed klines, and order-book snapshots (issue 9).
    pub rest: RestConfig,
    /// Dynamic loss scaling.
    pub scaler: ScalerConfig,
    /// Informer model and optimizer.
    pub train: TrainConfig,
}

/// Upper bound of `stream.max_connections`: Binance allows 300 connection attempts per 5 minutes per
/// IP, and a connection that keeps failing at the default backoff cap (`reconnect.max_delay_ms`,
/// 60 s) makes 5 attempts per 5 minutes, so 60 of them use the whole allowance.
pub const MAX_CONNECTIONS: u32 = 60;

/// `stream`: the feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Base URL; the combined-stream path `/stream?streams=..` is appended by the connection.
    pub url: String,
    /// Stream names as Binance spells them, e.g. `btcusdt@aggTrade`.
    pub streams: Vec<String>,
    /// Directory for recorded events (one file per stream and UTC day).
    pub out_dir: String,
    /// Largest accepted WebSocket message; larger ones close the transport.
    pub max_message_bytes: u64,
    /// A subscribed stream with no event for this long is resubscribed, then reconnected.
    pub stall_after_ms: u64,
    /// Open a replacement connection this long after connecting (Binance cuts at 24 h).
    pub rollover_after_ms: u64,
    /// Outgoing control messages (pings, pongs, SUBSCRIBE...) per second per connection.
    /// Binance disconnects a client above 5.
    pub max_control_per_second: u32,
    /// Streams per connection; Binance allows 1024. More streams are split over several
    /// connections of at most this many each (see `shard`).
    pub max_streams_per_connection: u32,
    /// At most this many connections at once (each its own shard of `streams`). Bounds what one
    /// process asks of Binance's per-IP limits (300 connection attempts per 5 minutes).
    pub max_connections: u32,
    /// An id more than this far below the last one seen on its stream is a candidate numbering
    /// restart (the server restarted its ids), not a duplicate; see `gaps`.
    pub restart_distance: u64,
    /// Consecutive candidates on one connection that confirm a numbering restart (the first event of
    /// a new connection confirms at once). Candidates are held, not dropped, until confirmed or refuted.
    pub restart_confirm: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            url: "wss://stream.binance.com:9443".to_string(),
            streams: vec!["btcusdt@aggTrade".to_string(), "btcusdt@kline_1m".to_string()],
            out_dir: "data".to_string(),
            max_message_bytes: 1 << 20,
            stall_after_ms: 120_000,
            rollover_after_ms: 23 * 3_600_000 + 30 * 60_000,
            max_control_per_second: 5,
            max_streams_per_connection: 1024,
            max_connections: 8,
            restart_distance: 1000,
            restart_confirm: 3,
        }
    }
}

/// `reconnect`: exponential backoff with jitter and an attempt budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectConfig {
    /// Delay before the first retry of an outage.
    pub initial_delay_ms: u64,
    /// Each further failure multiplies the delay by this.
    pub multiplier: f64,
    /// Cap on the delay (before jitter).
    pub max_delay_ms: u64,
    /// Fraction of each delay that is randomized: the delay is drawn from `[d*(1-jitter), d]`.
    pub jitter: f64,
    /// Give up after this many failures in a row. A rate-limited failure (HTTP 429/418, a 1008
    /// close) counts but never gives up: keel waits as told, since a restarted process would
    /// connect into the ban.
    pub max_consecutive_failures: u32,
    /// A connection must stay up this long before the failure count resets; a server that
    /// accepts and drops at once must not reset the backoff (the reconnect-storm bug).
    pub stable_after_ms: u64,
    /// At most this many connection attempts in any `attempt_window_ms` (Binance: 300 per 5 min per IP).
    pub max_attempts_per_window: u32,
    /// The window of the attempt budget.
    pub attempt_window_ms: u64,
    /// Minimum wait after a rate-limit signal (close 1008, HTTP 429) that names no wait; HTTP 418
    /// (an IP ban) waits five times this. Binance extends bans for clients that come back sooner.
    pub rate_limit_floor_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_delay_ms: 1_000,
            multiplier: 2.0,
            max_delay_ms: 60_000,
            jitter: 0.5,
            max_consecutive_failures: 100,
            stable_after_ms: 30_000,
            max_attempts_per_window: 300,
            attempt_window_ms: 300_000,
            rate_limit_floor_ms: 60_000,
        }
    }
}

/// `heartbeat`: the client's own ping/pong liveness check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Send a ping after this long without one.
    pub ping_interval_ms: u64,
    /// The connection is dead when no pong (nor any other frame) arrives this long after a ping.
    pub pong_timeout_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { ping_interval_ms: 30_000, pong_timeout_ms: 10_000 }
    }
}

/// A TLS protocol version keel accepts as a minimum. SSLv2/3 and TLS 1.0/1.1 are not
/// representable: they are broken, and Binance does not need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TryFrom<String> for TlsVersion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            other => Err(format!(
                "tls.min_version: \"{other}\" is not allowed; use \"1.2\" or \"1.3\" (SSLv2/3 and TLS 1.0/1.1 are refused)"
            )),
        }
    }
}

impl From<TlsVersion> for String {
    fn from(v: TlsVersion) -> String {
        match v {
            TlsVersion::Tls12 => "1.2".to_string(),
            TlsVersion::Tls13 => "1.3".to_string(),
        }
    }
}

/// `tls`: the client's TLS settings. Certificates and host names are always verified; there is
/// deliberately no switch to turn that off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// TCP connect + TLS handshake + WebSocket upgrade must finish within this.
    pub handshake_timeout_ms: u64,
    /// Lowest TLS version offered.
    pub min_version: TlsVersion,
    /// An extra trusted root (PEM), for the embedded exchange or a private endpoint.
    pub ca_file: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig { handshake_timeout_ms: 30_000, min_version: TlsVersion::Tls12, ca_file: None }
    }
}

/// Binance's allowed `limit` values of `GET /api/v3/depth`.
pub const BOOK_DEPTH_LIMITS: [u16; 8] = [5, 10, 20, 50, 100, 500, 1000, 5000];

/// Binance's request weight budget per IP and minute (`REQUEST_WEIGHT` in `/api/v3/exchangeInfo`).
pub const BINANCE_WEIGHT_PER_MINUTE: u32 = 6000;

/// Hosts of Binance's production spot streams, whose ids are the ids that `api.binance.com` (the
/// default `rest.url`) serves: `stream.binance.com` (ports 9443 and 443) and the market-data-only
/// `data-stream.binance.vision`, the two base endpoints Binance's spot WebSocket documentation names.
/// Deliberately not here, since their ids are not `api.binance.com`'s: the spot testnet
/// (`stream.testnet.binance.vision`, REST at `testnet.binance.vision`), Binance.US (`stream.binance.us`,
/// `api.binance.us`), the futures streams (`fstream.binance.com`, `fapi.binance.com`), and any other
/// server (`keel exchange`, a relay, another venue). Any port is accepted.
pub const BINANCE_STREAM_HOSTS: [&str; 2] = ["stream.binance.com", "data-stream.binance.vision"];

/// Host of the default `rest.url`: Binance's production spot REST API.
pub const BINANCE_REST_HOST: &str = "api.binance.com";

/// `rest`: Binance's REST API, used to close aggTrade, trade and kline gaps and to fetch order-book snapshots. The
/// `tls` settings apply to it as well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestConfig {
    /// Base URL of the REST API (`/api/v3/...` is appended).
    pub url: String,
    /// keel's share of Binance's request weight per minute (6000 per IP, shared with anything else
    /// running from the same address).
    pub weight_per_minute: u32,
    /// Fetch missing aggTrade and trade ids and closed klines over REST; when off, gaps are reported as abandoned at once.
    pub backfill: bool,
    /// `limit` of order-book snapshots (`/api/v3/depth`); weights: <=100: 5, <=500: 25, <=1000: 50, 5000: 250.
    pub book_depth_limit: u16,
    /// Live events held back per stream while a gap before them is backfilled; when full, the gap is
    /// abandoned and the held events released.
    pub max_held_events: u32,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            url: "https://api.binance.com".to_string(),
            weight_per_minute: 1200,
            backfill: true,
            book_depth_limit: 1000,
            max_held_events: 100_000,
        }
    }
}

/// A loss scale that is either sized from the model (`Auto`) or given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum ScaleChoice {
    /// Derived from the parameter count (`init_scale_for`).
    #[default]
    Auto,
    /// This exact value.
    Fixed(f64),
}

/// `scaler`: dynamic loss scaling and its monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalerConfig {
    /// Starting scale.
    pub init_scale: ScaleChoice,
    /// Multiply the scale by this after `growth_interval` clean steps.
    pub growth_factor: f64,
    /// Multiply the scale by this on overflow.
    pub backoff_factor: f64,
    /// Clean steps between growths.
    pub growth_interval: u32,
    /// The scale never goes below this.
    pub min_scale: f64,
    /// The scale never goes above this.
    pub max_scale: f64,
    /// Back off only after this many overflows (1 = every overflow, as PyTorch does).
    pub hysteresis: u32,
    /// Warn when the scale exceeds this (the original blow-up passed 100 000 before NaN).
    pub warn_threshold: f64,
    /// This many overflows in a row reset the scale.
    pub max_consecutive_overflows: u32,
    /// Where a reset jumps down to; never up.
    pub reset_scale: ScaleChoice,
    /// This many anomalous epochs in a row reset the scale.
    pub anomalous_epochs_before_reset: u32,
    /// An epoch whose overflow rate exceeds this is anomalous.
    pub anomalous_overflow_rate: f64,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            init_scale: ScaleChoice::Auto,
            growth_factor: 1.2,
            backoff_factor: 0.5,
            growth_interval: 2000,
            min_scale: 1.0,
            max_scale: 16_777_216.0,
            hysteresis: 1,
            warn_threshold: 100_000.0,
            max_consecutive_overflows: 5,
            reset_scale: ScaleChoice::Auto,
            anomalous_epochs_before_reset: 3,
            anomalous_overflow_rate: 0.05,
        }
    }
}

/// Floating-point type of the forward and backward pass (master weights are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ComputeDtype {
    /// Full precision; the scaler may be disabled.
    F32,
    /// Half precision: needs loss scaling.
    #[default]
    F16,
    /// bfloat16: GPU only (candle's CPU matmul has no bf16).
    Bf16,
}

/// Which columns are inputs and outputs (Informer's `--features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Features {
    /// Many inputs, many outputs.
    M,
    /// The target only.
    S,
    /// Many inputs, the target as output.
    #[default]
    MS,
}

/// `train`: the Informer model and its optimizer (defaults from the paper's reference code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Encoder input length.
    pub seq_len: u32,
    /// Known steps fed to the decoder.
    pub label_len: u32,
    /// Steps forecast.
    pub pred_len: u32,
    /// Model width.
    pub d_model: u32,
    /// Attention heads; must divide `d_model`.
    pub n_heads: u32,
    /// Encoder layers.
    pub e_layers: u32,
    /// Decoder layers.
    pub d_layers: u32,
    /// Feed-forward width.
    pub d_ff: u32,
    /// Dropout probability.
    pub dropout: f64,
    /// ProbSparse sampling factor c.
    pub factor: u32,
    /// Adam learning rate (halved every epoch).
    pub learning_rate: f64,
    /// Windows per batch.
    pub batch_size: u32,
    /// Upper bound on epochs.
    pub epochs: u32,
    /// Early stopping: epochs without validation improvement.
    pub patience: u32,
    /// Global gradient-norm clip; 0 disables clipping.
    pub clip_grad_norm: f64,
    /// Forward/backward dtype.
    pub dtype: ComputeDtype,
    /// Column to forecast.
    pub target: String,
    /// Input/output columns.
    pub features: Features,
    /// Seed of weight init, dropout and shuffling.
    pub seed: u64,
    /// Write a resumable checkpoint after every this many epochs (the last epoch always writes one).
    pub checkpoint_every: u32,
    /// Normalize each input window by its own level (last value) and spread, and put them back on
    /// the forecast (reversible instance normalization): prices drift out of the range the global
    /// standardization was fitted on, and a model that only saw the training range forecasts far off.
    pub instance_norm: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seq_len: 96,
            label_len: 48,
            pred_len: 24,
            d_model: 512,
            n_heads: 8,
            e_layers: 2,
            d_layers: 1,
            d_ff: 2048,
            dropout: 0.05,
            factor: 5,
            learning_rate: 1e-4,
            batch_size: 32,
            epochs: 6,
            patience: 3,
            clip_grad_norm: 1.0,
            dtype: ComputeDtype::F16,
            target: "Close".to_string(),
            features: Features::MS,
            seed: 2021,
            checkpoint_every: 1,
            instance_norm: true,
        }
    }
}

/// One value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field} = {value} is invalid: must be {allowed}")]
pub struct FieldError {
    /// Dotted path of the key, e.g. `reconnect.jitter`.
    pub field: &'static str,
    /// The offending value as written.
    pub value: String,
    /// The rule, e.g. `between 0 and 1`.
    pub allowed: String,
}

/// Everything wrong with a configuration, so that one `keel config check` shows it all.
#[derive(Debug, Clone, PartialEq, Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// The errors one per line, each about a key that a command-line flag set led by that flag
    /// (`--url (stream.url) = ... is invalid: ...`): the user typed the flag, not the key. `flags`
    /// holds (key, flag, whether the flag was passed).
    pub fn naming_flags(&self, flags: &[(&str, &str, bool)]) -> String {
        let line = |e: &FieldError| match flags.iter().find(|(key, _, passed)| *passed && *key == e.field) {
            Some((_, flag, _)) => format!("{flag} ({}) = {} is invalid: must be {}", e.field, e.value, e.allowed),
            None => e.to_string(),
        };
        self.0.iter().map(line).collect::<Vec<_>>().join("\n")
    }
}

impl fmt::Display for ValidationErrors {
    /// One error per line, each under its key (no flag was passed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.naming_flags(&[]))
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    /// The text holds nothing but whitespace and comments (a truncated or never-written file).
    #[error(
        "the config file is empty: write `()` to take every default, or start from what `keel config default` prints"
    )]
    Empty,
    /// The text is not valid RON for this schema (syntax, type, or an unknown key).
    #[error("config is not valid at line {line}:{column}{}: {message}", in_key(.key.as_deref()))]
    Parse {
        /// The key path the error is in, as the file spells it (`heartbeat.ping_interval_ms`,
        /// `stream.streams[1]`), when the parser got that far.
        key: Option<String>,
        /// What is wrong and how to write it instead.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The text parsed but values are out of range.
    #[error("{0}")]
    Invalid(ValidationErrors),
}

fn in_key(key: Option<&str>) -> String {
    key.map(|k| format!(", key {k}")).unwrap_or_default()
}

impl Config {
    /// Parses RON text and validates it. A parse error names the key path, the line and column,
    /// and how to write the value (see `explain`).
    pub fn from_ron(text: &str) -> Result<Config, ConfigError> {
        let cfg = Config::parse_ron(text)?;
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok(cfg)
    }

    /// Parses RON text without checking ranges, for a checker that reports every problem of a file
    /// at once (out-of-range values and unusable paths together) instead of stopping at the first
    /// kind. Anything that runs on the configuration takes `from_ron`: a value out of range here
    /// (a zero interval, an unparseable URL) is not safe to use.
    pub fn parse_ron(text: &str) -> Result<Config, ConfigError> {
        explain::parse(text)
    }

    /// The configuration as pretty RON (what `keel config default` prints).
    pub fn to_ron(&self) -> String {
        let pretty = ron::ser::PrettyConfig::new().struct_names(false);
        // Serializing plain structs of strings and numbers cannot fail; fall back to Debug rather
        // than panic if a future field type ever makes it fail.
        ron::ser::to_string_pretty(self, pretty).unwrap_or_else(|e| format!("/* {e} */ {self:?}"))
    }

    /// Checks every value against its allowed range and returns all violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::default();
        let s = &self.stream;
        check_url(&mut v, "stream.url", &s.url, "wss", true);
        if let Some(why) = endpoint_in_stream_url(&s.url) {
            v.check(false, "stream.url", &crate::redact::redact_url(&s.url), &why);
        }
        v.check(!s.streams.is_empty(), "stream.streams", &format!("{:?}", s.streams), "at least one stream name");
        for name in &s.streams {
            // The decoder's own list, so that a stream keel cannot decode (say `@avgPrice`) fails here
            // instead of counting every one of its frames as malformed.
            if let Err(e) = crate::protocol::check_stream_name(name) {
                v.check(false, "stream.streams", name, &format!("a stream keel decodes: {e}"));
            }
        }
        let mut unique = s.streams.clone();
        unique.sort();
        unique.dedup();
        v.check(
            unique.len() == s.streams.len(),
            "stream.streams",
            &format!("{:?}", s.streams),
            "no stream listed twice",
        );
        let capacity = u64::from(s.max_streams_per_connection) * u64::from(s.max_connections);
        v.check(
            s.streams.len() as u64 <= capacity,
            "stream.streams",
            &format!("{} streams", s.streams.len()),
            &format!(
                "at most stream.max_streams_per_connection ({}) x stream.max_connections ({}) = {capacity} streams: \
                 raise stream.max_connections (up to {MAX_CONNECTIONS}) or run several keel processes (from \
                 different IPs) with fewer streams each",
                s.max_streams_per_connection, s.max_connections
            ),
        );
        v.check(!s.out_dir.is_empty(), "stream.out_dir", &s.out_dir, "a non-empty directory path");
        v.check(s.max_message_bytes > 0, "stream.max_message_bytes", &s.max_message_bytes, "> 0");
        v.check(
            s.stall_after_ms > self.heartbeat.ping_interval_ms,
            "stream.stall_after_ms",
            &s.stall_after_ms,
            &format!("> heartbeat.ping_interval_ms ({})", self.heartbeat.ping_interval_ms),
        );
        v.check(
            s.rollover_after_ms > 0 && s.rollover_after_ms < 24 * 3_600_000,
            "stream.rollover_after_ms",
            &s.rollover_after_ms,
            "> 0 and < 86400000 (Binance cuts connections at 24 h)",
        );
        v.check(
            (1..=5).contains(&s.max_control_per_second),
            "stream.max_control_per_second",
            &s.max_control_per_second,
            "between 1 and 5 (Binance disconnects above 5 per second)",
        );
        v.check(
            (1..=1024).contains(&s.max_streams_per_connection),
            "stream.max_streams_per_connection",
            &s.max_streams_per_connection,
            "between 1 and 1024 (Binance's limit)",
        );
        v.check(
            (1..=MAX_CONNECTIONS).contains(&s.max_connections),
            "stream.max_connections",
            &s.max_connections,
            &format!(
                "between 1 and {MAX_CONNECTIONS} (Binance allows 300 connection attempts per 5 minutes per IP; \
                 {MAX_CONNECTIONS} connections all failing at the default 60 s backoff cap already make 300)"
            ),
        );
        v.check(
            s.restart_distance > 0,
            "stream.restart_distance",
            &s.restart_distance,
            "> 0 (ids this close below the last one are replays or late frames, dropped as duplicates)",
        );
        v.check(
            (1..=1000).contains(&s.restart_confirm),
            "stream.restart_confirm",
            &s.restart_confirm,
            "between 1 and 1000 (candidate events are held in memory until confirmed)",
        );

        let r = &self.reconnect;
        v.check(r.initial_delay_ms > 0, "reconnect.initial_delay_ms", &r.initial_delay_ms, "> 0");
        v.check(r.multiplier.is_finite() && r.multiplier >= 1.0, "reconnect.multiplier", &r.multiplier, ">= 1.0");
        v.check(
            r.max_delay_ms >= r.initial_delay_ms,
            "reconnect.max_delay_ms",
            &r.max_delay_ms,
            &format!(">= reconnect.initial_delay_ms ({})", r.initial_delay_ms),
        );
        v.check((0.0..=1.0).contains(&r.jitter), "reconnect.jitter", &r.jitter, "between 0.0 and 1.0");
        v.check(
            r.max_consecutive_failures > 0,
            "reconnect.max_consecutive_failures",
            &r.max_consecutive_failures,
            "> 0",
        );
        v.check(r.stable_after_ms > 0, "reconnect.stable_after_ms", &r.stable_after_ms, "> 0");
        v.check(
            (1..=300).contains(&r.max_attempts_per_window),
            "reconnect.max_attempts_per_window",
            &r.max_attempts_per_window,
            "between 1 and 300 (Binance allows 300 connections per 5 minutes per IP)",
        );
        v.check(
            r.attempt_window_ms >= 300_000,
            "reconnect.attempt_window_ms",
            &r.attempt_window_ms,
            ">= 300000 (Binance's window is 5 minutes)",
        );
        v.check(r.rate_limit_floor_ms > 0, "reconnect.rate_limit_floor_ms", &r.rate_limit_floor_ms, "> 0");

        let h = &self.heartbeat;
        v.check(h.ping_interval_ms > 0, "heartbeat.ping_interval_ms", &h.ping_interval_ms, "> 0");
        v.check(h.pong_timeout_ms > 0, "heartbeat.pong_timeout_ms", &h.pong_timeout_ms, "> 0");
        v.check(
            h.pong_timeout_ms < h.ping_interval_ms,
            "heartbeat.pong_timeout_ms",
            &h.pong_timeout_ms,
            &format!("< heartbeat.ping_interval_ms ({})", h.ping_interval_ms),
        );

        let t = &self.tls;
        v.check(t.handshake_timeout_ms > 0, "tls.handshake_timeout_ms", &t.handshake_timeout_ms, "> 0");
        if let Some(ca) = &t.ca_file {
            v.check(!ca.is_empty(), "tls.ca_file", ca, "a path to a PEM or DER certificate file, or None");
        }

        let r = &self.rest;
        check_url(&mut v, "rest.url", &r.url, "https", false);
        v.check(
            r.weight_per_minute > 0 && r.weight_per_minute <= BINANCE_WEIGHT_PER_MINUTE,
            "rest.weight_per_minute",
            &r.weight_per_minute,
            "between 1 and 6000 (Binance allows 6000 request weight per minute per IP)",
        );
        v.check(
            BOOK_DEPTH_LIMITS.contains(&r.book_depth_limit),
            "rest.book_depth_limit",
            &r.book_depth_limit,
            "one of 5, 10, 20, 50, 100, 500, 1000, 5000 (Binance's allowed depth limits)",
        );
        v.check(r.max_held_events > 0, "rest.max_held_events", &r.max_held_events, "> 0");
        self.check_rest_serves_the_stream(&mut v);

        let c = &self.scaler;
        let positive_scale = |x: &ScaleChoice| match x {
            ScaleChoice::Auto => true,
            ScaleChoice::Fixed(s) => s.is_finite() && *s > 0.0,
        };
        v.check(
            positive_scale(&c.init_scale),
            "scaler.init_scale",
            &format!("{:?}", c.init_scale),
            "Auto or Fixed(x) with x finite and > 0",
        );
        v.check(
            c.growth_factor.is_finite() && c.growth_factor > 1.0,
            "scaler.growth_factor",
            &c.growth_factor,
            "> 1.0",
        );
        v.check(
            c.backoff_factor > 0.0 && c.backoff_factor < 1.0,
            "scaler.backoff_factor",
            &c.backoff_factor,
            "> 0.0 and < 1.0",
        );
        v.check(c.growth_interval > 0, "scaler.growth_interval", &c.growth_interval, "> 0");
        v.check(c.min_scale.is_finite() && c.min_scale > 0.0, "scaler.min_scale", &c.min_scale, "finite and > 0");
        v.check(c.max_scale.is_finite() && c.max_scale > 0.0, "scaler.max_scale", &c.max_scale, "finite and > 0");
        v.check(
            c.max_scale >= c.min_scale,
            "scaler.max_scale",
            &c.max_scale,
            &format!(">= scaler.min_scale ({})", c.min_scale),
        );
        v.check(c.hysteresis > 0, "scaler.hysteresis", &c.hysteresis, "> 0 (1 = back off on every overflow)");
        v.check(
            c.warn_threshold.is_finite() && c.warn_threshold > 0.0,
            "scaler.warn_threshold",
            &c.warn_threshold,
            "finite and > 0",
        );
        v.check(
            c.max_consecutive_overflows > 0,
            "scaler.max_consecutive_overflows",
            &c.max_consecutive_overflows,
            "> 0",
        );
        v.check(
            positive_scale(&c.reset_scale),
            "scaler.reset_scale",
            &format!("{:?}", c.reset_scale),
            "Auto or Fixed(x) with x finite and > 0",
        );
        v.check(
            c.anomalous_epochs_before_reset > 0,
            "scaler.anomalous_epochs_before_reset",
            &c.anomalous_epochs_before_reset,
            "> 0",
        );
        v.check(
            c.anomalous_overflow_rate > 0.0 && c.anomalous_overflow_rate <= 1.0,
            "scaler.anomalous_overflow_rate",
            &c.anomalous_overflow_rate,
            "> 0.0 and <= 1.0",
        );

        let m = &self.train;
        v.check(m.seq_len > 0, "train.seq_len", &m.seq_len, "> 0");
        v.check(
            m.label_len <= m.seq_len,
            "train.label_len",
            &m.label_len,
            &format!("<= train.seq_len ({})", m.seq_len),
        );
        v.check(m.pred_len > 0, "train.pred_len", &m.pred_len, "> 0");
        v.check(m.d_model > 0, "train.d_model", &m.d_model, "> 0");
        v.check(
            m.n_heads > 0 && m.d_model.is_multiple_of(m.n_heads.max(1)),
            "train.n_heads",
            &m.n_heads,
            &format!("> 0 and a divisor of train.d_model ({})", m.d_model),
        );
        v.check(m.e_layers > 0, "train.e_layers", &m.e_layers, "> 0");
        v.check(m.d_layers > 0, "train.d_layers", &m.d_layers, "> 0");
        v.check(m.d_ff > 0, "train.d_ff", &m.d_ff, "> 0");
        v.check((0.0..1.0).contains(&m.dropout), "train.dropout", &m.dropout, ">= 0.0 and < 1.0");
        v.check(m.factor > 0, "train.factor", &m.factor, "> 0");
        v.check(
            m.learning_rate.is_finite() && m.learning_rate > 0.0,
            "train.learning_rate",
            &m.learning_rate,
            "finite and > 0",
        );
        v.check(m.batch_size > 0, "train.batch_size", &m.batch_size, "> 0");
        v.check(m.epochs > 0, "train.epochs", &m.epochs, "> 0");
        v.check(m.patience > 0, "train.patience", &m.patience, "> 0");
        v.check(
            m.clip_grad_norm.is_finite() && m.clip_grad_norm >= 0.0,
            "train.clip_grad_norm",
            &m.clip_grad_norm,
            ">= 0.0 (0 disables clipping)",
        );
        v.check(!m.target.is_empty(), "train.target", &m.target, "a column name of the data file");
        v.check(
            m.checkpoint_every > 0,
            "train.checkpoint_every",
            &m.checkpoint_every,
            "> 0 (1 = after every epoch; the last epoch always writes one)",
        );
        v.finish()
    }

    /// `rest.url` must be the REST API of the server `stream.url` points at. The default `rest.url`
    /// is Binance's; with `stream.url` at another server (`--url wss://localhost:9443`) its trades,
    /// trade ids and klines missed in a gap would be fetched from Binance and recorded under the
    /// other server's ids, and its order books synced from Binance's snapshots. So when REST is
    /// used (`rest.backfill`, or a diff-depth stream, whose book needs snapshots whatever
    /// `rest.backfill` says), `stream.url` is not a Binance production stream host
    /// ([`BINANCE_STREAM_HOSTS`]) and `rest.url` is still Binance's ([`BINANCE_REST_HOST`]), the
    /// configuration is refused. A `rest.url` set to any other host is trusted to match.
    fn check_rest_serves_the_stream(&self, v: &mut Validator) {
        let (s, r) = (&self.stream, &self.rest);
        let Ok(stream) = url::parse(&s.url) else { return };
        let rest_is_binance = url::parse(&r.url).is_ok_and(|u| u.host_is(BINANCE_REST_HOST));
        if !rest_is_binance || BINANCE_STREAM_HOSTS.iter().any(|h| stream.host_is(h)) {
            return;
        }
        let depth: Vec<&str> = s.streams.iter().map(String::as_str).filter(|n| is_diff_depth(n)).collect();
        let mut harm = Vec::new();
        if r.backfill {
            harm.push(
                "rest.backfill (true) would fetch the trades and klines missed in a gap from Binance and record \
                 them under that server's ids"
                    .to_string(),
            );
        }
        if !depth.is_empty() {
            harm.push(format!("the order books of {} would be synced from Binance's snapshots", depth.join(", ")));
        }
        if harm.is_empty() {
            return;
        }
        let mut fix = "set --rest-url (rest.url) to that server's REST API, https://HOST:PORT (`keel exchange` \
                       prints its REST URL; --rest-port fixes the port)"
            .to_string();
        if depth.is_empty() {
            fix.push_str(", or set rest.backfill: false (gaps are then reported as abandoned)");
        }
        v.check(
            false,
            "rest.url",
            &crate::redact::redact_url(&r.url),
            &format!(
                "the REST API of the server that --url (stream.url) points at: stream.url = {} is not a Binance \
                 production stream host ({}), and {}; {fix}",
                crate::redact::redact_url(&s.url),
                BINANCE_STREAM_HOSTS.join(", "),
                harm.join(", and ")
            ),
        );
    }
}

/// Checks `url` as the adapters will use it, so that `keel config check` refuses what `keel stream`
/// would refuse on start: the scheme (TLS is mandatory), then host characters, a port from 1 to
/// 65535 and the path (see [`url::parse`]). `rest.url` takes no path or query (`allow_path`
/// false): the REST client appends `/api/v3/...` to the bare host and refuses anything more. The
/// value is shown redacted: a URL may carry a credential.
fn check_url(v: &mut Validator, field: &'static str, text: &str, scheme: &str, allow_path: bool) {
    let shown = crate::redact::redact_url(text);
    let form = if allow_path { format!("{scheme}://HOST[:PORT][/PATH]") } else { format!("{scheme}://HOST[:PORT]") };
    let plain = if scheme == "wss" { "ws" } else { "http" };
    if !text.strip_prefix(scheme).is_some_and(|r| r.starts_with("://")) {
        let allowed = format!("a {scheme}:// URL, {form} (TLS is mandatory; plain {plain}:// is refused)");
        return v.check(false, field, &shown, &allowed);
    }
    match url::parse(text) {
        Err(e) => v.check(false, field, &shown, &format!("{form}: {e}")),
        Ok(u) if !allow_path && !matches!(u.path, "" | "/") => v.check(
            false,
            field,
            &shown,
            &format!("{form}, with no path or query: keel appends /api/v3/... itself; remove what follows the host"),
        ),
        Ok(_) => {}
    }
}

/// Why `url` is a Binance endpoint URL copied whole (`.../ws/btcusdt@trade`,
/// `.../stream?streams=a/b`) rather than the base keel appends `/stream?streams=...` to, if it is:
/// appended to, it makes a path the server does not serve, and the streams in it are silently not
/// the ones subscribed. A proxy's own path (`wss://proxy/binance`, even `wss://proxy/ws`) and a
/// listenKey path pass; `/ws` and `/stream` are refused on Binance's hosts only.
fn endpoint_in_stream_url(url: &str) -> Option<String> {
    let parsed = url::parse(url).ok()?;
    let (path, binance) = (parsed.path, parsed.host.to_ascii_lowercase().contains("binance"));
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut named: Vec<&str> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("streams="))
        .flat_map(|list| list.split('/'))
        .chain(path.rsplit('/').next().filter(|last| crate::protocol::check_stream_name(last).is_ok()))
        .collect();
    named.dedup();
    let endpoint = binance && matches!(path.trim_end_matches('/').rsplit('/').next(), Some("ws" | "stream"));
    if named.is_empty() && !endpoint {
        return None;
    }
    let streams = if named.is_empty() {
        String::new()
    } else {
        format!(" and list {} in stream.streams (--streams)", named.join(", "))
    };
    Some(format!(
        "the base URL only, wss://HOST[:PORT]: keel appends /stream?streams=... itself; remove the /ws or /stream \
         part and what follows it{streams}"
    ))
}

/// A diff-depth stream (`btcusdt@depth`, `@depth@100ms`, `@depth@1000ms`): its book starts from a
/// REST snapshot. The partial-depth streams (`@depth5`...) are snapshots themselves.
fn is_diff_depth(name: &str) -> bool {
    name.split_once('@').is_some_and(|(_, kind)| matches!(kind, "depth" | "depth@100ms" | "depth@1000ms"))
}

#[derive(Default)]
struct Validator(Vec<FieldError>);

impl Validator {
    fn check(&mut self, ok: bool, field: &'static str, value: &dyn fmt::Display, allowed: &str) {
        if !ok {
            self.0.push(FieldError { field, value: value.to_string(), allowed: allowed.to_string() });
        }
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(ValidationErrors(self.0)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of DESIGN.md, verbatim but for `train`, which it leaves open.
    const DESIGN_EXAMPLE: &str = r#"(
        stream: (
            url: "wss://stream.binance.com:9443",
            streams: ["btcusdt@aggTrade", "btcusdt@kline_1m"],
            out_dir: "data",
            max_message_bytes: 1048576,
            stall_after_ms: 120000,
        ),
        reconnect: (
            initial_delay_ms: 1000,
            multiplier: 2.0,
            max_delay_ms: 60000,
            jitter: 0.5,
            max_consecutive_failures: 100,
            stable_after_ms: 30000,
        ),
        heartbeat: (ping_interval_ms: 30000, pong_timeout_ms: 10000),
        tls: (handshake_timeout_ms: 30000, min_version: "1.2", ca_file: None),
        scaler: (
            init_scale: Auto,            // or Fixed(65536.0)
            growth_factor: 1.2,
            backoff_factor: 0.5,
            growth_interval: 2000,
            min_scale: 1.0,
            max_scale: 16777216.0,
            hysteresis: 1,
            warn_threshold: 100000.0,
            max_consecutive_overflows: 5,
            reset_scale: Auto,
            anomalous_epochs_before_reset: 3,
            anomalous_overflow_rate: 0.05,
        ),
        train: (seq_len: 96, label_len: 48, pred_len: 24, d_model: 512),
    )"#;

    #[test]
    fn design_example_loads_and_equals_defaults() {
        let cfg = Config::from_ron(DESIGN_EXAMPLE).expect("the documented example must load");
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let cfg = Config::default();
        cfg.validate().expect("defaults must validate");
        let text = cfg.to_ron();
        assert_eq!(Config::from_ron(&text).expect("printed defaults must load"), cfg);
    }

    #[test]
    fn old_file_without_newer_sections_loads_with_defaults() {
        let old = r#"(stream: (url: "wss://data-stream.binance.vision", streams: ["ethusdt@trade"]), reconnect: (initial_delay_ms: 500))"#;
        let cfg = Config::from_ron(old).expect("an old file must load");
        assert_eq!(cfg.stream.url, "wss://data-stream.binance.vision");
        assert_eq!(cfg.reconnect.initial_delay_ms, 500);
        assert_eq!(cfg.reconnect.max_delay_ms, 60_000);
        assert_eq!(cfg.scaler, ScalerConfig::default());
        assert_eq!(cfg.heartbeat, HeartbeatConfig::default());
        assert_eq!(Config::from_ron("()").expect("empty file"), Config::default());
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let err = Config::from_ron("(reconnect: (initial_dealy_ms: 5))").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("initial_dealy_ms"), "{text}");
        assert!(matches!(err, ConfigError::Parse { line: 1, .. }), "{err:?}");
        let err = Config::from_ron("(heartbeet: ())").unwrap_err();
        assert!(err.to_string().contains("heartbeet"), "{err}");
    }

    #[test]
    fn old_tls_versions_are_refused_with_the_reason() {
        let err = Config::from_ron(r#"(tls: (min_version: "1.0"))"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"1.0\"") && text.contains("1.2"), "{text}");
        let cfg = Config::from_ron(r#"(tls: (min_version: "1.3", ca_file: Some("ca.pem")))"#).unwrap();
        assert_eq!(cfg.tls.min_version, TlsVersion::Tls13);
        assert_eq!(cfg.tls.ca_file.as_deref(), Some("ca.pem"));
    }

    #[test]
    fn rest_section_parses_and_defaults() {
        let cfg = Config::from_ron(
            r#"(rest: (url: "https://127.0.0.1:9444", weight_per_minute: 6000, backfill: false, book_depth_limit: 5000, max_held_events: 1))"#,
        )
        .unwrap();
        assert_eq!(
            cfg.rest,
            RestConfig {
                url: "https://127.0.0.1:9444".into(),
                weight_per_minute: 6000,
                backfill: false,
                book_depth_limit: 5000,
                max_held_events: 1
            }
        );
        assert_eq!(Config::from_ron("(rest: ())").unwrap().rest, RestConfig::default());
    }

    #[test]
    fn fixed_scales_parse() {
        let cfg = Config::from_ron("(scaler: (init_scale: Fixed(65536.0), reset_scale: Fixed(1024.0)))").unwrap();
        assert_eq!(cfg.scaler.init_scale, ScaleChoice::Fixed(65536.0));
        assert_eq!(cfg.scaler.reset_scale, ScaleChoice::Fixed(1024.0));
    }

    /// More streams than one connection carries are fine up to `max_streams_per_connection x
    /// max_connections`; one more is refused with an error naming both keys and the fix.
    #[test]
    fn the_all_market_array_streams_are_accepted() {
        let c = Config::from_ron(
            r#"(stream: (streams: ["!miniTicker@arr", "!ticker@arr", "!ticker_1h@arr", "!ticker_4h@arr", "!ticker_1d@arr", "btcusdt@aggTrade"]))"#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn streams_beyond_one_connection_are_split_up_to_max_connections() {
        let names = ["a@trade", "b@trade", "c@trade", "d@trade", "e@trade", "f@trade", "g@trade"];
        let ron = |n: usize| {
            let list: Vec<String> = names[..n].iter().map(|s| format!("{s:?}")).collect();
            format!("(stream: (streams: [{}], max_streams_per_connection: 2, max_connections: 3))", list.join(", "))
        };
        let five = Config::from_ron(&ron(5)).unwrap();
        assert_eq!(five.validate(), Ok(()));
        assert_eq!(Config::from_ron(&ron(6)).unwrap().validate(), Ok(()));
        let seven = Config::from_ron(&ron(7)).unwrap_err().to_string();
        for needle in [
            "stream.streams",
            "7 streams",
            "stream.max_streams_per_connection (2)",
            "stream.max_connections (3)",
            "= 6 streams",
            "raise stream.max_connections (up to 60)",
        ] {
            assert!(seven.contains(needle), "{needle:?} missing from: {seven}");
        }
        assert_eq!(Config::default().stream.max_connections, 8);
        // 1024 x 60: the largest split keel makes.
        let mut big = Config::default();
        big.stream.max_connections = MAX_CONNECTIONS;
        big.stream.streams = (0..1024 * 60).map(|i| format!("s{i}@trade")).collect();
        assert_eq!(big.validate(), Ok(()));
        big.stream.streams.push("one@trade".into());
        assert!(big.validate().is_err());
    }

    /// `--url` at another server while `rest.url` is still Binance's: backfill would record Binance's
    /// trades under that server's ids. Refused, naming both keys, both values and the fixes.
    #[test]
    fn another_stream_server_needs_its_own_rest_url() {
        let err = Config::from_ron(r#"(stream: (url: "wss://localhost:9443"))"#).unwrap_err().to_string();
        for needle in [
            "rest.url = https://api.binance.com is invalid",
            "--url (stream.url)",
            "stream.url = wss://localhost:9443",
            "(stream.binance.com, data-stream.binance.vision)",
            "rest.backfill (true)",
            "set --rest-url (rest.url) to that server's REST API, https://HOST:PORT",
            "or set rest.backfill: false",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
        let ok = |text: &str| assert_eq!(Config::from_ron(text).map(|_| ()), Ok(()), "{text}");
        let refused = |text: &str| match Config::from_ron(text) {
            Err(ConfigError::Invalid(e)) if e.0.iter().any(|e| e.field == "rest.url") => e.to_string(),
            other => panic!("{text}: expected a rest.url error, got {other:?}"),
        };
        // That server's own REST API, or no backfill; Binance's production stream hosts, any port or case.
        ok(r#"(stream: (url: "wss://localhost:9443"), rest: (url: "https://localhost:9444"))"#);
        ok(r#"(stream: (url: "wss://localhost:9443"), rest: (backfill: false))"#);
        ok(r#"(stream: (url: "wss://localhost:9443", streams: ["btcusdt@depth5"]), rest: (backfill: false))"#);
        ok(r#"(stream: (url: "wss://stream.binance.com:443"))"#);
        ok(r#"(stream: (url: "wss://Stream.Binance.com.:9443"))"#);
        ok(r#"(stream: (url: "wss://data-stream.binance.vision"))"#);
        // The testnet has its own ids; Binance's REST written out in full is still Binance's.
        refused(r#"(stream: (url: "wss://stream.testnet.binance.vision"))"#);
        refused(r#"(stream: (url: "wss://localhost:9443"), rest: (url: "https://API.binance.com:443/"))"#);
        // A diff-depth book needs snapshots whatever rest.backfill says: only rest.url fixes it.
        let depth = refused(
            r#"(stream: (url: "wss://localhost:9443", streams: ["btcusdt@depth@100ms"]), rest: (backfill: false))"#,
        );
        assert!(depth.contains("order books of btcusdt@depth@100ms") && !depth.contains("rest.backfill"), "{depth}");
    }

    /// What `keel stream` refuses on start is refused here too, with the part that is wrong.
    #[test]
    fn urls_are_checked_part_by_part() {
        let message = |text: &str| match Config::from_ron(text) {
            Err(ConfigError::Invalid(e)) => e.to_string(),
            other => panic!("{text}: expected a validation error, got {other:?}"),
        };
        for (text, needles) in [
            (
                r#"(stream: (url: "wss://not a host:99999/"))"#,
                &[
                    "stream.url = wss://not a host:99999/ is invalid",
                    "wss://HOST[:PORT][/PATH]",
                    "\"not a host\" holds ' '",
                ][..],
            ),
            (
                r#"(stream: (url: "wss://h:99999"))"#,
                &["stream.url", "the port \"99999\" is not a number from 1 to 65535"],
            ),
            (r#"(stream: (url: "ws://h"))"#, &["stream.url = ws://h", "a wss:// URL", "plain ws:// is refused"]),
            (r#"(rest: (url: "https://h:9444/api"))"#, &["rest.url = https://h:9444/", "with no path or query"]),
            (r#"(rest: (url: "http://h"))"#, &["rest.url = http://h", "plain http:// is refused"]),
        ] {
            let text_of_error = message(text);
            for needle in needles {
                assert!(text_of_error.contains(needle), "{text}: {needle:?} missing from: {text_of_error}");
            }
        }
        // A credential in the URL stays out of the message.
        let secret = message(r#"(stream: (url: "wss://u:s3cret@h:0/ws/abcdefabcdef"))"#);
        assert!(!secret.contains("s3cret") && !secret.contains("abcdefabcdef"), "{secret}");
        // What keel connects to stays valid: a trailing slash, IPv6, user info and a path on the stream.
        for text in [
            r#"(stream: (url: "wss://stream.binance.com:9443/"), rest: (url: "https://api.binance.com/"))"#,
            r#"(stream: (url: "wss://[::1]:9443"), rest: (url: "https://[::1]:9444"))"#,
            r#"(stream: (url: "wss://u:p@localhost:9443/ws/k?x=1"), rest: (url: "https://localhost:9444"))"#,
        ] {
            assert_eq!(Config::from_ron(text).map(|_| ()), Ok(()), "{text}");
        }
    }

    /// Each input that does not parse, the key path and `line:column` its error must name, and the
    /// words of the fix. The internal type names (`HeartbeatConfig`, `ComputeDtype`...) never show.
    const PARSE_ERRORS: &[(&str, &str, &str, &[&str])] = &[
        (
            "(\n  heartbeat: (\n    ping_interval_ms: -5,\n  ),\n)",
            "heartbeat.ping_interval_ms",
            "3:23",
            &["-5 is out of range", "whole number from 0 to 18446744073709551615", "allowed: > 0", "default: 30000"],
        ),
        (
            "(heartbeat: (ping_interval_ms: \"30s\"))",
            "heartbeat.ping_interval_ms",
            "1:32",
            &["expected a whole number of milliseconds", "30 s = 30000", "found \"30s\""],
        ),
        (
            "(\n  heartbeat: (ping_intervall_ms: 5),\n)",
            "heartbeat.ping_intervall_ms",
            "2:15",
            &["unknown key `ping_intervall_ms` in section `heartbeat`", "did you mean `ping_interval_ms`?"],
        ),
        ("(heartbeet: ())", "heartbeet", "1:2", &["unknown section `heartbeet`", "did you mean `heartbeat`?"]),
        (
            "(train: (dtype: f16))",
            "train.dtype",
            "1:17",
            &["unknown value `f16`", "did you mean `F16`?", "F32, F16, Bf16"],
        ),
        ("(train: (features: Ms))", "train.features", "1:20", &["did you mean `MS`?", "M, S, MS"]),
        (
            "(tls: (ca_file: \"/x.pem\"))",
            "tls.ca_file",
            "1:17",
            &["written Some(...) or None", "write Some(\"/x.pem\")"],
        ),
        ("(scaler: (init_scale: 65536.0))", "scaler.init_scale", "1:23", &["write Fixed(65536.0)", "or Auto"]),
        ("(scaler: (reset_scale: 1024))", "scaler.reset_scale", "1:24", &["write Fixed(1024)"]),
        (
            "(scaler: (reset_scale: fixed(2.0)))",
            "scaler.reset_scale",
            "1:24",
            &["did you mean `Fixed`?", "Fixed(65536.0)"],
        ),
        ("(scaler: (init_scale: Fixed(\"big\")))", "scaler.init_scale", "1:29", &["Fixed(65536.0)"]),
        (
            "(heartbeat: (ping_interval_ms: 1.5, pong_timeout_ms: 3))",
            "heartbeat.ping_interval_ms",
            "1:32",
            &["expected a whole number of milliseconds, found 1.5: drop the fraction", "default: 30000"],
        ),
        ("(\n  train: (\n    epochs: 10.0,\n  ),\n)", "train.epochs", "3:13", &["whole number, found 10.0"]),
        ("(train: (seq_len: 96.))", "train.seq_len", "1:19", &["found 96.: drop the fraction"]),
        ("(scaler: (init_scale: -1.0))", "scaler.init_scale", "1:23", &["-1.0 is not a loss scale", "Fixed(65536.0)"]),
        ("(scaler: (reset_scale: \"Auto\"))", "scaler.reset_scale", "1:24", &["quoted: write Auto without quotes"]),
        ("(rest: (book_depth_limit: 70000))", "rest.book_depth_limit", "1:27", &["from 0 to 65535", "5, 10, 20"]),
        ("(rest: (backfill: yes))", "rest.backfill", "1:19", &["expected true or false, found yes"]),
        ("(stream: (streams: [\"a@trade\", 5]))", "stream.streams[1]", "1:32", &["expected a string in double quotes"]),
        ("(stream: 5)", "stream", "1:10", &["a section is written in parentheses", "stream: (key: value"]),
        ("(tls: (min_version: \"1.0\"))", "tls.min_version", "1:21", &["use \"1.2\" or \"1.3\""]),
        (
            "(heartbeat: (pong_timeout_ms: 5, pong_timeout_ms: 6))",
            "heartbeat.pong_timeout_ms",
            "1:34",
            &["`pong_timeout_ms` is set twice in section `heartbeat`; keep one"],
        ),
        ("(tls: (), tls: ())", "tls", "1:11", &["section `tls` is written twice"]),
    ];

    /// A Binance endpoint URL copied whole names the streams to move into stream.streams; a
    /// proxy's path and a listenKey path are left alone.
    #[test]
    fn a_copied_endpoint_url_is_refused_with_its_streams() {
        let why = |url: &str| endpoint_in_stream_url(url);
        let copied = why("wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@kline_1m").unwrap();
        assert!(copied.contains("keel appends /stream?streams=... itself"), "{copied}");
        assert!(copied.ends_with("list btcusdt@trade, ethusdt@kline_1m in stream.streams (--streams)"), "{copied}");
        let one = why("wss://stream.binance.com:9443/ws/btcusdt@depth@100ms").unwrap();
        assert!(one.ends_with("list btcusdt@depth@100ms in stream.streams (--streams)"), "{one}");
        assert!(why("wss://stream.binance.com:9443/ws/").unwrap().ends_with("and what follows it"));
        for fine in [
            "wss://stream.binance.com:9443",
            "wss://stream.binance.com:9443/",
            "wss://proxy.example/binance",
            "wss://proxy.example/ws",
            "wss://h:9/ws/Zq8VxY0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2yZ3aB4cD5eF6gH7iJ8kL9?signature=ab12",
        ] {
            assert_eq!(why(fine), None, "{fine}");
        }
    }

    #[test]
    fn errors_about_keys_a_flag_set_name_the_flag() {
        let mut c = Config::default();
        c.train.batch_size = 0;
        c.train.patience = 0;
        let e = c.validate().unwrap_err();
        let flags = [("train.batch_size", "--batch-size", true), ("train.patience", "--patience", false)];
        assert_eq!(
            e.naming_flags(&flags),
            "--batch-size (train.batch_size) = 0 is invalid: must be > 0\ntrain.patience = 0 is invalid: must be > 0"
        );
    }

    #[test]
    fn parse_errors_name_the_key_the_place_and_the_fix() {
        for (text, key, place, hints) in PARSE_ERRORS {
            let err = Config::from_ron(text).unwrap_err();
            assert!(matches!(&err, ConfigError::Parse { key: Some(k), .. } if k == key), "{text}: {err:?}");
            let shown = err.to_string();
            assert!(
                shown.contains(&format!("line {place}, key {key}: ")),
                "{text}: {place} {key} missing from: {shown}"
            );
            for hint in *hints {
                assert!(shown.contains(hint), "{text}: {hint:?} missing from: {shown}");
            }
            for internal in ["Config`", "ComputeDtype", "Features`", "ScaleChoice", "TlsVersion", "r#"] {
                assert!(!shown.contains(internal), "{text}: {internal} in: {shown}");
            }
        }
    }

    #[test]
    fn an_empty_file_says_so() {
        for text in ["", "  \n\t", "// keel.ron\n/* to do */\n"] {
            let err = Config::from_ron(text).unwrap_err();
            assert_eq!(err, ConfigError::Empty);
            assert!(err.to_string().contains("the config file is empty"), "{err}");
        }
        // Not a parenthesized file at all, or text after it: said without a key.
        let err = Config::from_ron("stream: ()").unwrap_err().to_string();
        assert!(err.contains("line 1:1: the file must be one `( ... )`"), "{err}");
        let err = Config::from_ron("() x").unwrap_err().to_string();
        assert!(err.contains("line 1:4: text after the closing `)`"), "{err}");
    }

    /// Each bad value, written as a RON fragment, and the field its error must name.
    const BAD_VALUES: &[(&str, &str)] = &[
        (r#"stream: (url: "http://x")"#, "stream.url"),
        (r#"stream: (url: "wss://stream.binance.com:9443/ws/btcusdt@trade")"#, "stream.url"),
        (r#"stream: (url: "wss://stream.binance.com:9443/stream?streams=btcusdt@trade")"#, "stream.url"),
        (r#"stream: (url: "wss://stream.binance.com:9443/ws")"#, "stream.url"),
        ("stream: (streams: [])", "stream.streams"),
        (r#"stream: (streams: ["BTCUSDT"])"#, "stream.streams"),
        (r#"stream: (streams: ["btcusdt@avgPrice"])"#, "stream.streams"),
        (r#"stream: (streams: ["!bookTicker"])"#, "stream.streams"),
        (r#"stream: (streams: ["!ticker_2h@arr"])"#, "stream.streams"),
        (r#"stream: (streams: ["btcusdt@kline_7m"])"#, "stream.streams"),
        (r#"stream: (streams: ["btcusdt@trade", "btcusdt@trade"])"#, "stream.streams"),
        (
            r#"stream: (streams: ["btcusdt@trade", "ethusdt@trade"], max_streams_per_connection: 1, max_connections: 1)"#,
            "stream.streams",
        ),
        ("stream: (max_connections: 0)", "stream.max_connections"),
        ("stream: (max_connections: 61)", "stream.max_connections"),
        (r#"stream: (out_dir: "")"#, "stream.out_dir"),
        ("stream: (max_message_bytes: 0)", "stream.max_message_bytes"),
        ("stream: (stall_after_ms: 1000)", "stream.stall_after_ms"),
        ("stream: (rollover_after_ms: 86400000)", "stream.rollover_after_ms"),
        ("stream: (max_control_per_second: 6)", "stream.max_control_per_second"),
        ("stream: (restart_distance: 0)", "stream.restart_distance"),
        ("stream: (restart_confirm: 0)", "stream.restart_confirm"),
        ("stream: (restart_confirm: 1001)", "stream.restart_confirm"),
        ("stream: (max_streams_per_connection: 1025)", "stream.max_streams_per_connection"),
        ("reconnect: (initial_delay_ms: 0)", "reconnect.initial_delay_ms"),
        ("reconnect: (multiplier: 0.5)", "reconnect.multiplier"),
        ("reconnect: (max_delay_ms: 10)", "reconnect.max_delay_ms"),
        ("reconnect: (jitter: 1.5)", "reconnect.jitter"),
        ("reconnect: (jitter: -0.1)", "reconnect.jitter"),
        ("reconnect: (max_consecutive_failures: 0)", "reconnect.max_consecutive_failures"),
        ("reconnect: (stable_after_ms: 0)", "reconnect.stable_after_ms"),
        ("reconnect: (max_attempts_per_window: 301)", "reconnect.max_attempts_per_window"),
        ("reconnect: (attempt_window_ms: 1000)", "reconnect.attempt_window_ms"),
        ("reconnect: (rate_limit_floor_ms: 0)", "reconnect.rate_limit_floor_ms"),
        ("heartbeat: (ping_interval_ms: 0)", "heartbeat.ping_interval_ms"),
        ("heartbeat: (pong_timeout_ms: 0)", "heartbeat.pong_timeout_ms"),
        ("heartbeat: (pong_timeout_ms: 30000)", "heartbeat.pong_timeout_ms"),
        ("tls: (handshake_timeout_ms: 0)", "tls.handshake_timeout_ms"),
        (r#"tls: (ca_file: Some(""))"#, "tls.ca_file"),
        (r#"rest: (url: "http://api.binance.com")"#, "rest.url"),
        (r#"rest: (url: "https://")"#, "rest.url"),
        (r#"rest: (url: "https://api.binance.com/api/v3")"#, "rest.url"),
        (r#"rest: (url: "https://api.binance.com:0")"#, "rest.url"),
        (r#"stream: (url: "wss://not a host:99999/")"#, "stream.url"),
        (r#"stream: (url: "wss://stream.binance.com:99999")"#, "stream.url"),
        (r#"stream: (url: "wss://stream.binance.com:9443/a b")"#, "stream.url"),
        (r#"stream: (url: "wss://localhost:9443")"#, "rest.url"),
        ("rest: (weight_per_minute: 0)", "rest.weight_per_minute"),
        ("rest: (weight_per_minute: 6001)", "rest.weight_per_minute"),
        ("rest: (book_depth_limit: 1001)", "rest.book_depth_limit"),
        ("rest: (max_held_events: 0)", "rest.max_held_events"),
        ("scaler: (init_scale: Fixed(0.0))", "scaler.init_scale"),
        ("scaler: (growth_factor: 1.0)", "scaler.growth_factor"),
        ("scaler: (backoff_factor: 1.0)", "scaler.backoff_factor"),
        ("scaler: (backoff_factor: 0.0)", "scaler.backoff_factor"),
        ("scaler: (growth_interval: 0)", "scaler.growth_interval"),
        ("scaler: (min_scale: 0.0)", "scaler.min_scale"),
        ("scaler: (max_scale: -1.0)", "scaler.max_scale"),
        ("scaler: (min_scale: 100.0, max_scale: 10.0)", "scaler.max_scale"),
        ("scaler: (hysteresis: 0)", "scaler.hysteresis"),
        ("scaler: (warn_threshold: 0.0)", "scaler.warn_threshold"),
        ("scaler: (max_consecutive_overflows: 0)", "scaler.max_consecutive_overflows"),
        ("scaler: (reset_scale: Fixed(-2.0))", "scaler.reset_scale"),
        ("scaler: (anomalous_epochs_before_reset: 0)", "scaler.anomalous_epochs_before_reset"),
        ("scaler: (anomalous_overflow_rate: 0.0)", "scaler.anomalous_overflow_rate"),
        ("train: (seq_len: 0)", "train.seq_len"),
        ("train: (label_len: 200)", "train.label_len"),
        ("train: (pred_len: 0)", "train.pred_len"),
        ("train: (d_model: 0)", "train.d_model"),
        ("train: (n_heads: 7)", "train.n_heads"),
        ("train: (e_layers: 0)", "train.e_layers"),
        ("train: (d_layers: 0)", "train.d_layers"),
        ("train: (d_ff: 0)", "train.d_ff"),
        ("train: (dropout: 1.0)", "train.dropout"),
        ("train: (factor: 0)", "train.factor"),
        ("train: (learning_rate: 0.0)", "train.learning_rate"),
        ("train: (batch_size: 0)", "train.batch_size"),
        ("train: (epochs: 0)", "train.epochs"),
        ("train: (patience: 0)", "train.patience"),
        ("train: (clip_grad_norm: -1.0)", "train.clip_grad_norm"),
        (r#"train: (target: "")"#, "train.target"),
        ("train: (checkpoint_every: 0)", "train.checkpoint_every"),
    ];

    #[test]
    fn every_bad_value_is_named_with_value_and_range() {
        for (fragment, field) in BAD_VALUES {
            let text = format!("({fragment})");
            match Config::from_ron(&text) {
                Err(ConfigError::Invalid(errors)) => {
                    let hit = errors.0.iter().find(|e| e.field == *field);
                    let hit = hit.unwrap_or_else(|| panic!("{text}: no error for {field} in {errors}"));
                    assert!(!hit.allowed.is_empty());
                    let shown = hit.to_string();
                    assert!(shown.contains(field) && shown.contains(&hit.value), "{shown}");
                }
                other => panic!("{text}: expected a validation error naming {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let err =
            Config::from_ron("(reconnect: (jitter: 2.0, multiplier: 0.1), scaler: (growth_interval: 0))").unwrap_err();
        let ConfigError::Invalid(errors) = err else { panic!("expected validation errors") };
        let fields: Vec<_> = errors.0.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["reconnect.multiplier", "reconnect.jitter", "scaler.growth_interval"]);
    }
}
