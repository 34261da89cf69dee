//! `--metrics-addr`: a Prometheus endpoint (`GET /metrics`) for `keel stream` and `keel train`.
//!
//! The loops that own the core machines publish snapshots into a shared [`Metrics`] handle (a clone
//! of the connection's [`ConnectionStats`], or the trainer's [`TrainingSnapshot`]); every scrape
//! encodes the latest snapshots. Nothing is counted twice and nothing is counted here: the core's
//! stats are the single source of truth, the endpoint only renames them to Prometheus conventions
//! (`keel_` prefix, `_total` counters, seconds) and adds the ages that need a clock.
//!
//! Connection series carry a `connection` label (`s0`, `s1`, ...: one per connection of a run that
//! splits its streams, `s0` alone otherwise), so that one connection down among eight shows. The
//! Prometheus convention is followed: the parts are exported, not their total under the same name
//! (a total beside its parts double-counts in every `sum`); a run's total is
//! `sum without (connection) (...)`, and `min(keel_connection_up)` is 0 when any connection is down.
//!
//! The encoding is `prometheus-client`'s (OpenMetrics text, which Prometheus scrapes natively); the
//! HTTP/1 server is hyper 1 driven by smol through `smol-hyper`, on its own thread so that the
//! stream loop and the (blocking) trainer only ever take a mutex for a clone.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use keel_core::patterns::PatternKind;
use keel_core::recovery::{BACKFILL_KINDS, KindStats, RecoveryStats};
use keel_core::stats::connection::ConnectionStats;
use keel_core::stats::training::TrainingStats;
use keel_core::time::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The content type of the OpenMetrics text format that [`Metrics::render`] produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the trainer publishes: the scaler's stats plus where the run is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingSnapshot {
    /// The loss scaler and monitor statistics (`ScaleDriver::stats`).
    pub stats: TrainingStats,
    /// The current epoch (0-based, as in the logs).
    pub epoch: u32,
    /// Optimizer steps attempted so far (applied + skipped).
    pub step: u64,
    /// The loss of the last step (unscaled; NaN is passed on as NaN).
    pub loss: Option<f64>,
}

#[derive(Debug)]
struct ConnectionSnapshot {
    /// Each connection's label value (`s0`, `s1`, ...) and stats, in order.
    connections: Vec<(String, ConnectionStats)>,
    /// The machine time the stats are as of (`stats_at(now)`), for the last message age.
    now: Timestamp,
    /// When it was published, so that ages keep growing while the loop is quiet.
    taken: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    connection: Mutex<Option<ConnectionSnapshot>>,
    recovery: Mutex<Option<RecoveryStats>>,
    training: Mutex<Option<TrainingSnapshot>>,
}

/// The shared snapshot handle: clone it into the loop that publishes and into the server.
///
/// A poisoned mutex (a publisher panicked) is not a reason to stop serving: the last snapshot is
/// still the best information there is, so locks ignore poisoning.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    shared: Arc<Shared>,
}

/// The `connection` label of connection `index`: `s0`, `s1`, ... (a one-connection run is `s0`).
pub fn connection_label(index: usize) -> String {
    format!("s{index}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// An empty handle: no metric families until something is published.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes a one-connection run's stats as of the machine time `now` (use `conn.stats_at(now)`):
    /// [`Self::set_connections`] with that one connection, `s0`.
    pub fn set_connection(&self, stats: ConnectionStats, now: Timestamp) {
        self.set_connections(vec![stats], now);
    }

    /// Publishes every connection's stats as of the machine time `now`, in the order of the split
    /// (`keel_core::shard`): connection `i` is labelled `connection="s{i}"`, the name its log lines
    /// use (`s1#3` is connection 1's transport 3) and its `index` in `--stats-json`.
    pub fn set_connections(&self, stats: Vec<ConnectionStats>, now: Timestamp) {
        let connections = stats.into_iter().enumerate().map(|(i, s)| (connection_label(i), s)).collect();
        *lock(&self.shared.connection) = Some(ConnectionSnapshot { connections, now, taken: Instant::now() });
    }

    /// Publishes the zero-gap recovery's counters (backfill, books, REST).
    pub fn set_recovery(&self, stats: RecoveryStats) {
        *lock(&self.shared.recovery) = Some(stats);
    }

    /// Publishes the trainer's state.
    pub fn set_training(&self, snapshot: TrainingSnapshot) {
        *lock(&self.shared.training) = Some(snapshot);
    }

    /// The latest snapshots in the OpenMetrics text format (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a collector.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!("metrics encoding failed: {e}");
        }
        out
    }
}

/// Encodes one family of one sample.
fn one(enc: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    one(enc, name, help, ConstCounter::new(v))
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    one(enc, name, help, ConstGauge::new(v))
}

/// A labelled family; `label` is the label name, each row is (label value, sample).
fn family<'a, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, M)>,
    kind: M,
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, kind.metric_type())?;
    for (value, metric) in rows {
        let labels = [(label, value)];
        metric.encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn encode_recovery(enc: &mut DescriptorEncoder, r: &RecoveryStats) -> std::fmt::Result {
    // By kind (`aggTrade`, `trade`, `kline`), every kind always present (0 when unseen).
    let rows = |f: fn(&KindStats) -> u64| -> Vec<(&str, ConstCounter<u64>)> {
        BACKFILL_KINDS.iter().map(|k| (*k, ConstCounter::new(f(&r.kind(k))))).collect()
    };
    family(
        enc,
        "keel_backfilled_trades",
        "Events fetched over REST to close gaps, and delivered, by kind: aggTrade, trade, kline (closed klines).",
        "kind",
        rows(|k| k.backfilled),
        ConstCounter::new(0),
    )?;
    family(
        enc,
        "keel_backfill_requests",
        "Backfill requests sent (GET /api/v3/aggTrades, historicalTrades, klines), by kind.",
        "kind",
        rows(|k| k.requests),
        ConstCounter::new(0),
    )?;
    family(
        enc,
        "keel_backfill_abandoned_ids",
        "Ids (closed klines for kind kline) reported lost (REST gave up, Binance no longer had them, hold-back full, backfill off), by kind.",
        "kind",
        rows(|k| k.abandoned),
        ConstCounter::new(0),
    )?;
    gauge(
        enc,
        "keel_backfill_held_events",
        "Live events (aggTrades, trades, klines) held back behind a gap being fetched.",
        r.held_events as f64,
    )?;
    counter(enc, "keel_book_snapshots", "Order-book snapshots requested (GET /api/v3/depth).", r.book_snapshots)?;
    counter(
        enc,
        "keel_book_resyncs",
        "Order books discarded on a diff gap and resynced (one symbol each).",
        r.book_resyncs,
    )?;
    counter(
        enc,
        "keel_rest_rate_limited",
        "REST answers 429 or 418 (requests then wait Retry-After).",
        r.rest_rate_limited,
    )?;
    counter(enc, "keel_rest_failures", "REST requests failed (network, other status, bad body).", r.rest_failures)?;
    gauge(
        enc,
        "keel_rest_weight_used_last_minute",
        "REST request weight spent in the last 60 s (Binance allows 6000 per IP).",
        r.weight_used_last_minute as f64,
    )
}

/// The error classes of `keel_core::classify::ErrorClass::name`, always exported (0 when unseen)
/// so that alert rules and `rate()` have a series from the start.
const CLASSES: [&str; 3] = ["transient", "rate_limited", "fatal"];

/// The label that tells the connections of a split run apart.
const CONNECTION: &str = "connection";

/// One sample of a per-connection family: the connection's label value, an optional second label
/// (name, value), and the sample.
type Row<M> = (String, Option<(&'static str, String)>, M);

/// A per-connection family: every connection's samples under one descriptor (OpenMetrics wants a
/// family's samples together). `always`: emit the descriptor even without samples (a family whose
/// series appear later, so that its help and type are known from the start).
fn per_connection<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    always: bool,
    rows: Vec<Row<M>>,
) -> std::fmt::Result {
    if rows.is_empty() && !always {
        return Ok(());
    }
    let mut fam = enc.encode_descriptor(name, help, None, kind)?;
    for (connection, extra, metric) in rows {
        let mut labels = vec![(CONNECTION, connection.as_str())];
        if let Some((key, value)) = &extra {
            labels.push((key, value.as_str()));
        }
        metric.encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The connections of the snapshot, one row each, as `f` makes it (`None`: no sample).
fn rows<M>(snap: &ConnectionSnapshot, f: impl Fn(&ConnectionStats) -> Option<M>) -> Vec<Row<M>> {
    snap.connections.iter().filter_map(|(label, s)| f(s).map(|m| (label.clone(), None, m))).collect()
}

/// The connections of the snapshot, several rows each, labelled `key` = the first element of each
/// pair `f` returns.
fn rows_by<M>(
    snap: &ConnectionSnapshot,
    key: &'static str,
    f: impl Fn(&ConnectionStats) -> Vec<(String, M)>,
) -> Vec<Row<M>> {
    snap.connections
        .iter()
        .flat_map(|(label, s)| f(s).into_iter().map(|(value, m)| (label.clone(), Some((key, value)), m)))
        .collect()
}

fn counters(
    enc: &mut DescriptorEncoder,
    snap: &ConnectionSnapshot,
    name: &str,
    help: &str,
    f: fn(&ConnectionStats) -> u64,
) -> std::fmt::Result {
    per_connection(enc, name, help, MetricType::Counter, true, rows(snap, |s| Some(ConstCounter::new(f(s)))))
}

fn gauges(
    enc: &mut DescriptorEncoder,
    snap: &ConnectionSnapshot,
    name: &str,
    help: &str,
    f: impl Fn(&ConnectionStats) -> Option<f64>,
) -> std::fmt::Result {
    per_connection(enc, name, help, MetricType::Gauge, false, rows(snap, |s| f(s).map(ConstGauge::new)))
}

fn encode_connection(enc: &mut DescriptorEncoder, snap: &ConnectionSnapshot) -> std::fmt::Result {
    let since = snap.taken.elapsed();
    let seconds = |f: fn(&ConnectionStats) -> u64| move |s: &ConnectionStats| Some(ConstCounter::new(secs(f(s))));
    let (counter_kind, gauge_kind) = (MetricType::Counter, MetricType::Gauge);
    let uptime = rows(snap, seconds(|s| s.uptime_ms));
    per_connection(enc, "keel_connection_uptime_seconds", "Time with a live transport.", counter_kind, true, uptime)?;
    let downtime = rows(snap, seconds(|s| s.downtime_ms));
    per_connection(
        enc,
        "keel_connection_downtime_seconds",
        "Time without a live transport.",
        counter_kind,
        true,
        downtime,
    )?;
    gauges(enc, snap, "keel_connection_up", "1 while the connection has a live transport, else 0.", |s| {
        Some(if s.connects > 0 && s.current_outage_ms == 0 { 1.0 } else { 0.0 })
    })?;
    gauges(enc, snap, "keel_connection_current_outage_seconds", "Length of the current outage (0 when live).", |s| {
        Some(secs(s.current_outage_ms))
    })?;
    gauges(enc, snap, "keel_connection_longest_outage_seconds", "Longest outage so far.", |s| {
        Some(secs(s.longest_outage_ms))
    })?;
    counters(enc, snap, "keel_connection_attempts", "Transports opened (connect attempts).", |s| s.connect_attempts)?;
    counters(enc, snap, "keel_connection_connects", "Attempts that reached Opened.", |s| s.connects)?;
    counters(enc, snap, "keel_connection_reconnects", "Connects after the first one.", |s| s.reconnects)?;
    let by_class = rows_by(snap, "class", |s| {
        CLASSES
            .iter()
            .map(|c| (c.to_string(), ConstCounter::new(s.failures_by_class.get(*c).copied().unwrap_or(0))))
            .chain(
                s.failures_by_class
                    .iter()
                    .filter(|(k, _)| !CLASSES.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), ConstCounter::new(*v))),
            )
            .collect()
    });
    per_connection(
        enc,
        "keel_connection_failures",
        "Failed attempts and lost transports (each is followed by a reconnect), by error class.",
        counter_kind,
        true,
        by_class,
    )?;
    let by_error = rows_by(snap, "error", |s| {
        s.failures_by_error.iter().map(|(k, v)| (k.clone(), ConstCounter::new(*v))).collect()
    });
    per_connection(
        enc,
        "keel_connection_errors",
        "Failed attempts and lost transports by error kind (reset, timeout, server_close_1008, http_429...).",
        counter_kind,
        true,
        by_error,
    )?;
    gauges(
        enc,
        snap,
        "keel_connection_success_ratio",
        "connects / connect attempts (0 before the first attempt).",
        |s| Some(s.success_rate),
    )?;
    counters(enc, snap, "keel_connection_heartbeat_timeouts", "Transports declared dead by the heartbeat.", |s| {
        s.heartbeat_timeouts
    })?;
    counters(enc, snap, "keel_connection_stalls", "Stall actions (resubscribes and stall reconnects).", |s| s.stalls)?;
    counters(enc, snap, "keel_connection_rollovers", "Planned reconnects (24 h cutoff, serverShutdown).", |s| {
        s.rollovers
    })?;
    counters(enc, snap, "keel_connection_gaps", "Sequence gaps detected.", |s| s.gaps)?;
    counters(enc, snap, "keel_connection_missing_ids", "Ids missing in all gaps together.", |s| s.missing_ids)?;
    counters(enc, snap, "keel_connection_duplicates", "Market events dropped as duplicates.", |s| s.duplicates)?;
    counters(
        enc,
        snap,
        "keel_sequence_restarts",
        "Streams whose server restarted its id numbering (detected, tracking started over).",
        |s| s.sequence_restarts,
    )?;
    counters(enc, snap, "keel_connection_frames", "Text frames received.", |s| s.messages)?;
    counters(enc, snap, "keel_connection_malformed_frames", "Frames that did not decode.", |s| s.malformed_frames)?;
    counters(enc, snap, "keel_connection_server_errors", "Error replies from the server.", |s| s.server_errors)?;
    counters(enc, snap, "keel_connection_unmatched_pongs", "Pongs not matching the outstanding ping.", |s| {
        s.unmatched_pongs
    })?;
    counters(enc, snap, "keel_connection_market_events", "Fresh market events passed on (all streams).", |s| {
        s.market_events
    })?;
    let by_stream = rows_by(snap, "stream", |s| {
        s.messages_by_stream.iter().map(|(k, v)| (k.to_string(), ConstCounter::new(*v))).collect()
    });
    per_connection(enc, "keel_connection_messages", "Fresh market events by stream.", counter_kind, true, by_stream)?;
    gauges(
        enc,
        snap,
        "keel_connection_backoff_seconds",
        "Remaining wait before the next reconnect (0 when not waiting).",
        |s| {
            let left = Duration::from_millis(s.current_backoff_ms).saturating_sub(since);
            Some(if s.current_backoff_ms == 0 { 0.0 } else { left.as_secs_f64() })
        },
    )?;
    gauges(enc, snap, "keel_connection_consecutive_failures", "Consecutive failures counted by the backoff.", |s| {
        Some(f64::from(s.consecutive_failures))
    })?;
    gauges(enc, snap, "keel_connection_last_message_age_seconds", "Time since the last text frame.", |s| {
        let at = s.last_message_at_ms?;
        Some((Duration::from_millis(snap.now.as_millis().saturating_sub(at)) + since).as_secs_f64())
    })?;
    gauges(enc, snap, "keel_connection_rtt_seconds", "Round-trip time of the last matched pong.", |s| {
        s.last_rtt_ms.map(secs)
    })?;
    let patterns = rows_by(snap, "kind", |s| {
        s.patterns
            .iter()
            .map(|p| {
                let kind = match p.kind {
                    PatternKind::FixedUptime { .. } => "fixed_uptime",
                    PatternKind::TimeOfDay { .. } => "time_of_day",
                    PatternKind::Storm { .. } => "storm",
                };
                (kind.to_string(), ConstGauge::new(p.count as f64))
            })
            .collect()
    });
    per_connection(
        enc,
        "keel_connection_disconnect_pattern_drops",
        "Recent disconnects fitting a detected pattern (see the logs for the cause and the fix).",
        gauge_kind,
        true,
        patterns,
    )?;
    gauges(
        enc,
        snap,
        "keel_connection_disconnect_interval_seconds",
        "Typical uptime before a disconnect when they come at a fixed interval.",
        |s| {
            s.patterns.iter().find_map(|p| match p.kind {
                PatternKind::FixedUptime { every_ms } => Some(secs(every_ms)),
                _ => None,
            })
        },
    )?;
    // Of the stream loop, not of one connection: unlabelled.
    gauge(
        enc,
        "keel_connection_stats_age_seconds",
        "Time since the stream loop last published its stats.",
        since.as_secs_f64(),
    )
}

fn encode_training(enc: &mut DescriptorEncoder, t: &TrainingSnapshot) -> std::fmt::Result {
    let s = &t.stats;
    gauge(enc, "keel_training_loss_scale", "Current loss scale.", s.current_scale)?;
    gauge(enc, "keel_training_loss_scale_min", "Lowest loss scale so far.", s.min_scale)?;
    gauge(enc, "keel_training_loss_scale_max", "Highest loss scale so far.", s.max_scale)?;
    counter(enc, "keel_training_steps", "Steps recorded (applied + skipped).", s.steps)?;
    counter(enc, "keel_training_applied_steps", "Steps that reached the optimizer.", s.applied)?;
    counter(enc, "keel_training_skipped_steps", "Steps skipped for inf/NaN gradients.", s.skipped)?;
    counter(enc, "keel_training_overflows", "Steps whose gradients held inf/NaN.", s.overflows)?;
    gauge(enc, "keel_training_overflow_ratio", "overflows / steps over the whole run.", s.overflow_rate)?;
    gauge(
        enc,
        "keel_training_longest_overflow_run",
        "Longest run of consecutive overflows.",
        s.longest_overflow_run as f64,
    )?;
    counter(enc, "keel_training_scale_resets", "Loss scale resets asked for by the monitor.", s.resets)?;
    counter(enc, "keel_training_scale_warnings", "Times the scale rose above the warning threshold.", s.warnings)?;
    counter(enc, "keel_training_anomalous_epochs", "Epochs judged anomalous by the monitor.", s.anomalous_epochs)?;
    gauge(enc, "keel_training_epoch", "Current epoch (0-based).", f64::from(t.epoch))?;
    gauge(enc, "keel_training_step", "Current optimizer step.", t.step as f64)?;
    if let Some(loss) = t.loss {
        gauge(enc, "keel_training_loss", "Loss of the last step (NaN when it was NaN).", loss)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        if let Some(snap) = lock(&self.shared.connection).as_ref() {
            encode_connection(&mut enc, snap)?;
        }
        if let Some(r) = lock(&self.shared.recovery).as_ref() {
            encode_recovery(&mut enc, r)?;
        }
        if let Some(t) = lock(&self.shared.training).as_ref() {
            encode_training(&mut enc, t)?;
        }
        Ok(())
    }
}

/// A running endpoint; dropping it stops accepting connections.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    _stop: smol::channel::Sender<()>,
}

impl MetricsServer {
    /// The bound address (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` now (so a taken port is an error at start-up, not later) and serves `/metrics` from
/// `metrics` on a background thread until the returned handle is dropped.
pub fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<MetricsServer> {
    use anyhow::Context;
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on --metrics-addr {addr} (is the port taken? pick another)"))?;
    let local = std_listener.local_addr()?;
    let listener = smol::net::TcpListener::try_from(std_listener)?;
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    std::thread::Builder::new().name("keel-metrics".into()).spawn(move || {
        let ex = smol::LocalExecutor::new();
        smol::block_on(ex.run(smol::future::or(
            async {
                // Err only when every sender is gone: the handle was dropped.
                let _ = stopped.recv().await;
            },
            accept_loop(&ex, listener, metrics),
        )))
    })?;
    tracing::info!(addr = %local, "metrics endpoint listening on http://{local}/metrics");
    Ok(MetricsServer { addr: local, _stop: stop })
}

/// Parses `--metrics-addr`: `IP:PORT`, or `HOST:PORT` resolved now (`localhost:9898`, which
/// `SocketAddr` alone refuses with "invalid socket address syntax").
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let usage = "give IP:PORT or HOST:PORT to listen on, e.g. 127.0.0.1:9898 or localhost:9898";
    if !text.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
        return Err(format!("{text:?} is not an address: {usage}"));
    }
    let all: Vec<SocketAddr> =
        text.to_socket_addrs().map_err(|e| format!("cannot resolve {text:?}: {e}; {usage}"))?.collect();
    // IPv4 first: `localhost` often resolves to ::1 too, and scrapers mostly dial 127.0.0.1.
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address; {usage}"))
}

/// [`serve`] with a fresh handle: what `--metrics-addr` does. Keep the server alive as long as the
/// handle is published into.
pub fn serve_new(addr: SocketAddr) -> anyhow::Result<(Metrics, MetricsServer)> {
    let metrics = Metrics::new();
    let server = serve(addr, metrics.clone())?;
    Ok((metrics, server))
}

async fn accept_loop(ex: &smol::LocalExecutor<'_>, listener: smol::net::TcpListener, metrics: Metrics) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("metrics endpoint: accept failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        ex.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(smol_hyper::rt::SmolTimer::new())
                // A scraper that never finishes its request headers must not hold a task forever.
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(smol_hyper::rt::FuturesIo::new(stream), service)
                .await;
            if let Err(e) = conn {
                tracing::debug!("metrics endpoint: connection ended: {e}");
            }
        })
        .detach();
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.render()),
        (_, "/metrics") => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET /metrics is served\n".to_string())
        }
        (_, path) => {
            (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", format!("no {path} here: metrics are at /metrics\n"))
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_addresses_take_ips_and_host_names() {
        use super::parse_addr;
        assert_eq!(parse_addr("127.0.0.1:9898").unwrap().to_string(), "127.0.0.1:9898");
        assert_eq!(parse_addr("[::1]:9898").unwrap().to_string(), "[::1]:9898");
        assert_eq!(parse_addr("localhost:9898").unwrap().to_string(), "127.0.0.1:9898");
        for bad in ["9898", "localhost", ":9898", "localhost:99999", "localhost:x"] {
            let e = parse_addr(bad).unwrap_err();
            assert!(e.contains("is not an address") && e.contains("e.g. 127.0.0.1:9898"), "{bad}: {e}");
        }
    }

    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn empty_handle_renders_only_eof() {
        assert_eq!(Metrics::new().render(), "# EOF\n");
    }

    #[test]
    fn connection_snapshot_is_renamed_to_prometheus_conventions() {
        let m = Metrics::new();
        let stats = ConnectionStats {
            connects: 3,
            reconnects: 2,
            uptime_ms: 1500,
            current_backoff_ms: 0,
            failures_by_class: BTreeMap::from([("transient".to_string(), 2)]),
            messages_by_stream: BTreeMap::from([("btcusdt@trade".into(), 7)]),
            last_message_at_ms: Some(1000),
            ..ConnectionStats::default()
        };
        m.set_connection(stats, Timestamp::from_millis(3000));
        let text = m.render();
        for line in [
            "# TYPE keel_connection_connects counter",
            "keel_connection_connects_total{connection=\"s0\"} 3",
            "keel_connection_reconnects_total{connection=\"s0\"} 2",
            "keel_connection_uptime_seconds_total{connection=\"s0\"} 1.5",
            "keel_connection_failures_total{connection=\"s0\",class=\"transient\"} 2",
            "keel_connection_failures_total{connection=\"s0\",class=\"fatal\"} 0",
            "keel_connection_messages_total{connection=\"s0\",stream=\"btcusdt@trade\"} 7",
            "keel_connection_up{connection=\"s0\"} 1.0",
            "keel_connection_backoff_seconds{connection=\"s0\"} 0.0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("keel_connection_last_message_age_seconds{connection=\"s0\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0);
        assert!((2.0..3.0).contains(&age), "age {age} should be 2 s plus the time since publishing");
        assert!(!text.contains("keel_training_"), "no trainer published: {text}");
        assert!(!text.contains("keel_connection_rtt_seconds"), "no pong yet, no rtt family: {text}");
        // Of the loop, not of a connection: unlabelled.
        assert!(text.lines().any(|l| l.starts_with("keel_connection_stats_age_seconds 0")), "{text}");
    }

    #[test]
    fn each_connection_of_a_split_run_has_its_own_series_under_one_family() {
        let m = Metrics::new();
        let live = ConnectionStats { connects: 1, last_rtt_ms: Some(20), ..ConnectionStats::default() };
        let down = ConnectionStats {
            connects: 2,
            reconnects: 1,
            current_outage_ms: 4000,
            current_backoff_ms: 60_000,
            failures_by_class: BTreeMap::from([("transient".to_string(), 3)]),
            ..ConnectionStats::default()
        };
        m.set_connections(vec![live, down], Timestamp::from_millis(5000));
        let text = m.render();
        for line in [
            "keel_connection_up{connection=\"s0\"} 1.0",
            "keel_connection_up{connection=\"s1\"} 0.0",
            "keel_connection_reconnects_total{connection=\"s0\"} 0",
            "keel_connection_reconnects_total{connection=\"s1\"} 1",
            "keel_connection_failures_total{connection=\"s0\",class=\"transient\"} 0",
            "keel_connection_failures_total{connection=\"s1\",class=\"transient\"} 3",
            "keel_connection_current_outage_seconds{connection=\"s1\"} 4.0",
            "keel_connection_rtt_seconds{connection=\"s0\"} 0.02",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // One descriptor per family, its samples together; s1 has no rtt, so no sample.
        assert_eq!(text.matches("# TYPE keel_connection_up gauge").count(), 1);
        assert!(!text.contains("keel_connection_rtt_seconds{connection=\"s1\"}"), "{text}");
        let backoff: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("keel_connection_backoff_seconds{connection=\"s1\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0);
        assert!((59.0..=60.0).contains(&backoff), "s1 backoff {backoff}");
    }

    #[test]
    fn training_snapshot_exports_scale_and_nan_loss() {
        let m = Metrics::new();
        m.set_training(TrainingSnapshot {
            stats: TrainingStats {
                steps: 10,
                overflows: 2,
                skipped: 2,
                overflow_rate: 0.2,
                current_scale: 1024.0,
                ..TrainingStats::default()
            },
            epoch: 1,
            step: 10,
            loss: Some(f64::NAN),
        });
        let text = m.render();
        for line in [
            "keel_training_loss_scale 1024.0",
            "keel_training_overflows_total 2",
            "keel_training_skipped_steps_total 2",
            "keel_training_overflow_ratio 0.2",
            "keel_training_epoch 1.0",
            "keel_training_loss NaN",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("keel_connection_"), "no stream loop published: {text}");
    }
}
