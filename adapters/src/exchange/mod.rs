//! `keel exchange`: the embedded Binance-like TLS WebSocket server with fault injection.
//!
//! It serves Binance's spot stream format on 127.0.0.1 over real TLS (a CA and a `localhost` leaf
//! generated at every start): `/ws/<stream>` (raw events) and `/stream?streams=a/b` (combined
//! envelope), SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS with ids and Binance's error replies,
//! server pings (every 20 s by default, a client silent for 60 s after one is dropped), and a seeded
//! random-walk market whose sequence ids advance on the exchange's clock whether anyone listens or
//! not. Faults come from a per-connection plan ([`FaultPlan`]) and from runtime injection through
//! the [`ExchangeHandle`]; the handle also tells tests which ids went out on which connection.
//!
//! A second port serves Binance's REST market data over HTTPS (same certificate):
//! `GET /api/v3/aggTrades?symbol=&fromId=&limit=` and `GET /api/v3/depth?symbol=&limit=`, answered
//! from the same market as the streams (see `rest`); [`ExchangeHandle::rest_url`] is its base URL.
//!
//! ```no_run
//! let ex = keel::exchange::Exchange::start(keel::exchange::ExchangeConfig::default()).unwrap();
//! println!("{} trusts {}", ex.url(), ex.ca_pem().len());
//! ex.shutdown();
//! ```

mod cert;
mod fault;
mod market;
mod rest;
mod server;

pub use cert::{GeneratedCerts, generate as generate_certs};
pub use fault::{FAULT_SPECS, Fault, FaultParseError, FaultPlan, REST_FAULT_SPECS, RestFault};
pub use market::{
    AggRecord, DEFAULT_AGG_HISTORY, DepthSnapshot, Market, Produced, StreamKind, StreamNameError, parse_stream,
};
pub use rest::{AGG_TRADES_MAX_LIMIT, AGG_TRADES_WEIGHT, DEPTH_MAX_LIMIT, RestRequestInfo, depth_weight};

use anyhow::Context;
use clap::Args;
use server::{ConnMsg, Shared, lock};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the exchange behaves.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// Seed of the market's random walk (same seed, same prices and id origins).
    pub seed: u64,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Symbols trading from the start (others start when first subscribed).
    pub symbols: Vec<String>,
    /// Market tick: every tick each symbol trades once (aggTrade, trades, depth, bookTicker, klines).
    pub tick: Duration,
    /// Server ping period (Binance: 20 s).
    pub ping_interval: Duration,
    /// A client that does not answer a ping within this is dropped (Binance: 60 s).
    pub pong_deadline: Duration,
    /// Exchange clock speed: 60 makes a 1m kline close every real second.
    pub clock_speed: u32,
    /// Faults per connection number.
    pub faults: FaultPlan,
    /// How long a stalled socket is held open before it is dropped.
    pub stall_hold: Duration,
    /// Batches queued for a client before it is dropped as too slow.
    pub max_queue: usize,
    /// Port of the REST server on 127.0.0.1; 0 picks a free one.
    pub rest_port: u16,
    /// REST request weight allowed per minute (Binance: 6000 per IP); past it, 429 with Retry-After.
    pub rest_weight_limit: u32,
    /// aggTrades kept per symbol for `/api/v3/aggTrades`.
    pub agg_history: usize,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            seed: 1,
            port: 0,
            symbols: vec!["btcusdt".to_string(), "ethusdt".to_string()],
            tick: Duration::from_millis(100),
            ping_interval: Duration::from_secs(20),
            pong_deadline: Duration::from_secs(60),
            clock_speed: 1,
            faults: FaultPlan::default(),
            stall_hold: Duration::from_secs(120),
            max_queue: 10_000,
            rest_port: 0,
            rest_weight_limit: 6000,
            agg_history: DEFAULT_AGG_HISTORY,
        }
    }
}

/// What the exchange knows about one connection (rejected upgrades included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Connection number in accept order, from 0.
    pub index: u64,
    /// The request URI of the upgrade (empty when TLS failed).
    pub path: String,
    /// The faults this connection got.
    pub faults: Vec<Fault>,
    /// The HTTP status of a rejected upgrade: a [`Fault::RejectUpgrade`]'s, or the route's own
    /// refusal (404 unknown path, 400 bad stream name or more than 1024 streams).
    pub rejected: Option<u16>,
    /// Market frames sent.
    pub frames_sent: u64,
    /// Malformed frames sent.
    pub malformed_sent: u64,
    /// Current (or last) subscriptions.
    pub subscriptions: Vec<String>,
    /// How it ended, once it did.
    pub ended: Option<String>,
    /// When it was accepted, in ms since the exchange started (real time, not the market clock).
    pub accepted_ms: u64,
    /// Depth diffs not sent because of [`Fault::DropDepth`]: (stream, U, u).
    pub dropped_depth: Vec<(String, u64, u64)>,
}

/// The embedded exchange.
pub struct Exchange;

impl Exchange {
    /// Generates the certificates, binds 127.0.0.1 and starts serving on smol's global executor.
    pub fn start(cfg: ExchangeConfig) -> anyhow::Result<ExchangeHandle> {
        let certs =
            cert::generate("keel embedded exchange CA").context("cannot generate the exchange's certificates")?;
        let identity = native_tls::Identity::from_pkcs8(certs.leaf_pem.as_bytes(), certs.leaf_key_pem.as_bytes())
            .context("cannot load the generated leaf certificate into native-tls")?;
        let acceptor = native_tls::TlsAcceptor::builder(identity)
            .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
            .build()
            .context("cannot build the TLS acceptor")?;
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", cfg.port)).with_context(|| {
            format!("cannot listen on 127.0.0.1:{} (--port; another --port, or 0 for a free one)", cfg.port)
        })?;
        let addr = std_listener.local_addr()?;
        let listener = smol::net::TcpListener::try_from(std_listener).context("cannot register the listener")?;
        let std_rest = std::net::TcpListener::bind(("127.0.0.1", cfg.rest_port)).with_context(|| {
            format!("cannot listen on 127.0.0.1:{} for REST (--rest-port; another, or 0 for a free one)", cfg.rest_port)
        })?;
        let rest_addr = std_rest.local_addr()?;
        let rest_listener = smol::net::TcpListener::try_from(std_rest).context("cannot register the REST listener")?;
        let (shutdown_tx, shutdown_rx) = smol::channel::bounded::<()>(1);
        let shared = Arc::new(Shared {
            market: Mutex::new(Market::with_history(cfg.seed, &cfg.symbols, cfg.agg_history)),
            clock: server::Clock::new(cfg.clock_speed),
            cfg,
            acceptor: acceptor.into(),
            conns: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            next_faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(server::Log::default()),
            rest: Mutex::new(rest::RestState::default()),
            shutdown_rx,
        });
        let tasks = vec![
            smol::spawn(server::accept_loop(shared.clone(), listener)),
            smol::spawn(server::ticker(shared.clone())),
            smol::spawn(rest::accept_loop(shared.clone(), rest_listener)),
        ];
        tracing::info!(
            "exchange: listening on wss://localhost:{}, REST on https://localhost:{}",
            addr.port(),
            rest_addr.port()
        );
        Ok(ExchangeHandle { addr, rest_addr, certs, shared, tasks, shutdown_tx: Some(shutdown_tx) })
    }
}

/// A running exchange; dropping it shuts it down.
pub struct ExchangeHandle {
    addr: SocketAddr,
    rest_addr: SocketAddr,
    certs: GeneratedCerts,
    shared: Arc<Shared>,
    tasks: Vec<smol::Task<()>>,
    shutdown_tx: Option<smol::channel::Sender<()>>,
}

impl ExchangeHandle {
    /// `wss://localhost:PORT`: the base URL clients use (host name verified against the leaf).
    pub fn url(&self) -> String {
        format!("wss://localhost:{}", self.addr.port())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT`: the REST base URL (`rest.url`, `--rest-url`), same CA as [`Self::url`].
    pub fn rest_url(&self) -> String {
        format!("https://localhost:{}", self.rest_addr.port())
    }

    /// The bound address of the REST server.
    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr
    }

    /// Gives the next REST requests these faults, one per request, in order.
    pub fn rest_fault_next(&self, faults: Vec<RestFault>) {
        lock(&self.shared.rest).faults.extend(faults);
    }

    /// Every REST request answered so far, in order.
    pub fn rest_requests(&self) -> Vec<RestRequestInfo> {
        lock(&self.shared.rest).log.clone()
    }

    /// The current book of `symbol` (upper case, e.g. `BTCUSDT`), best `limit` levels per side:
    /// what `/api/v3/depth` would answer now.
    pub fn depth(&self, symbol: &str, limit: usize) -> Option<DepthSnapshot> {
        lock(&self.shared.market).depth(symbol, limit)
    }

    /// The aggTrades of `symbol` (upper case) the market still keeps from `from_id` on, at most `limit`.
    pub fn agg_trades(&self, symbol: &str, from_id: u64, limit: usize) -> Vec<AggRecord> {
        lock(&self.shared.market).agg_trades(symbol, Some(from_id), limit).unwrap_or_default()
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// Writes the CA PEM to `path`.
    pub fn write_ca(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, &self.certs.ca_pem).with_context(|| format!("cannot write the CA to {}", path.display()))
    }

    /// A client config aimed at this exchange: its stream and REST URLs, its CA (written to `ca`),
    /// `streams` recorded under `out_dir`; defaults elsewhere. Both URLs are set together so that a
    /// client's backfill can never reach the real Binance by accident.
    pub fn client_config(
        &self,
        ca: &Path,
        out_dir: &Path,
        streams: &[&str],
    ) -> anyhow::Result<keel_core::config::Config> {
        self.write_ca(ca)?;
        let mut cfg = keel_core::config::Config::default();
        cfg.stream.url = self.url();
        cfg.rest.url = self.rest_url();
        cfg.stream.streams = streams.iter().map(|s| s.to_string()).collect();
        cfg.stream.out_dir = out_dir.display().to_string();
        cfg.tls.ca_file = Some(ca.display().to_string());
        Ok(cfg)
    }

    /// Gives the next accepted connections these faults (one entry per connection), before the plan.
    pub fn fault_next(&self, faults: Vec<Fault>) {
        lock(&self.shared.next_faults).push_back(faults);
    }

    /// Applies `fault` now to every open connection (`after` counts from now). Returns how many got it.
    pub fn inject(&self, fault: Fault) -> usize {
        let conns: Vec<_> = lock(&self.shared.conns).values().cloned().collect();
        conns.iter().filter(|tx| tx.try_send(ConnMsg::Inject(fault.clone())).is_ok()).count()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        lock(&self.shared.log).connections.values().cloned().collect()
    }

    /// Connections currently open and serving.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// The first and last sequence number the market produced on `stream` since start.
    pub fn produced(&self, stream: &str) -> Option<(u64, u64)> {
        lock(&self.shared.log).produced.get(stream).copied()
    }

    /// Per connection: the first and last sequence number sent on `stream`, and how many frames.
    pub fn sent(&self, stream: &str) -> BTreeMap<u64, (u64, u64, u64)> {
        lock(&self.shared.log).sent.get(stream).cloned().unwrap_or_default()
    }

    /// Sequence ranges of `stream` that went out on no connection, between the first and the last
    /// one that did: exactly the gaps a single client following the stream must report.
    pub fn skipped(&self, stream: &str) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = self.sent(stream).values().map(|r| (r.0, r.1)).collect();
        ranges.sort();
        let mut holes = Vec::new();
        let mut covered: Option<u64> = None;
        for (lo, hi) in ranges {
            if let Some(c) = covered.filter(|c| lo > c + 1) {
                holes.push((c + 1, lo - 1));
            }
            covered = Some(covered.map_or(hi, |c| c.max(hi)));
        }
        holes
    }

    /// Closes every connection with 1001 and stops serving.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let conns: Vec<_> = lock(&self.shared.conns).values().cloned().collect();
            for c in conns {
                let _ = c.try_send(ConnMsg::Shutdown);
            }
            drop(tx);
            self.tasks.clear();
        }
    }
}

impl Drop for ExchangeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Flags of `keel exchange`.
#[derive(Debug, Clone, Args)]
pub struct ExchangeArgs {
    /// Port on 127.0.0.1 (0 picks a free one and prints it).
    #[arg(long, default_value_t = 9443)]
    pub port: u16,
    /// Directory where the CA certificate is written as `ca.pem`, for clients' --ca-file; a path
    /// ending in .pem, .crt or .cer is the certificate file itself.
    #[arg(long, default_value = ".")]
    pub cert_out: PathBuf,
    /// Market seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Symbols trading from the start, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "btcusdt,ethusdt")]
    pub symbols: Vec<String>,
    /// Market tick in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,
    /// Server ping period in milliseconds (Binance: 20000).
    #[arg(long, default_value_t = 20_000)]
    pub ping_interval_ms: u64,
    /// Drop a client that does not answer a ping within this many milliseconds (Binance: 60000).
    #[arg(long, default_value_t = 60_000)]
    pub pong_deadline_ms: u64,
    /// Clock speed for event times and klines (60: a 1m candle per second).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clock_speed: u32,
    // A fault per connection or for all; the help is built from FAULT_SPECS, the parser's own list.
    #[arg(long = "fault", help = fault_help())]
    pub faults: Vec<String>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Port of the HTTPS REST server on 127.0.0.1 (0 picks a free one and prints it).
    #[arg(long, default_value_t = 0)]
    pub rest_port: u16,
    // REST faults in request order; the help is built from REST_FAULT_SPECS.
    #[arg(long = "rest-fault", help = format!("A REST fault for the next request, in order: {REST_FAULT_SPECS}. Repeatable"))]
    pub rest_faults: Vec<String>,
}

/// The help of `--fault`, listing every spelling the parser accepts.
fn fault_help() -> String {
    format!(
        "A fault: `K=SPEC` for connection K (0-based), `*=SPEC` or `SPEC` for every connection. SPEC: {FAULT_SPECS} \
         (N counts market frames sent). Repeatable"
    )
}

/// Where `--cert-out` puts the CA: into the directory as `ca.pem`, or at the path itself when it
/// names a certificate file. `--cert-out ca.pem` used to make a directory `ca.pem/` holding `ca.pem`.
fn ca_file_of(cert_out: &Path) -> PathBuf {
    let is_cert_file = cert_out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["pem", "crt", "cer"].iter().any(|x| e.eq_ignore_ascii_case(x)));
    if is_cert_file { cert_out.to_path_buf() } else { cert_out.join("ca.pem") }
}

/// Runs `keel exchange`.
pub fn run(args: ExchangeArgs) -> anyhow::Result<ExitCode> {
    let mut plan = FaultPlan::default();
    for f in &args.faults {
        plan.add_spec(f)?;
    }
    for s in &args.symbols {
        parse_stream(&format!("{s}@trade")).map_err(|e| anyhow::anyhow!("invalid --symbols entry {s:?}: {e}"))?;
    }
    if args.tick_ms == 0 || args.ping_interval_ms == 0 || args.pong_deadline_ms == 0 {
        anyhow::bail!("--tick-ms, --ping-interval-ms and --pong-deadline-ms must be > 0");
    }
    let cfg = ExchangeConfig {
        seed: args.seed,
        port: args.port,
        symbols: args.symbols.clone(),
        tick: Duration::from_millis(args.tick_ms),
        ping_interval: Duration::from_millis(args.ping_interval_ms),
        pong_deadline: Duration::from_millis(args.pong_deadline_ms),
        clock_speed: args.clock_speed,
        faults: plan,
        rest_port: args.rest_port,
        ..ExchangeConfig::default()
    };
    let rest_faults = args.rest_faults.iter().map(|f| f.parse::<RestFault>()).collect::<Result<Vec<_>, _>>()?;
    // The CA's place is checked before the exchange listens: it logged "listening" and then failed.
    let ca_path = ca_file_of(&args.cert_out);
    std::fs::create_dir_all(ca_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
        .and_then(|()| std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&ca_path))
        .with_context(|| {
            format!(
                "cannot write {} (--cert-out {}: pick a writable directory)",
                ca_path.display(),
                args.cert_out.display()
            )
        })?;
    let ex = Exchange::start(cfg)?;
    ex.rest_fault_next(rest_faults);
    ex.write_ca(&ca_path)?;
    // A closed stdout (a script that read the REST line and went on, `| head -2`) must not stop the
    // server: `println!` would panic on the broken pipe and take the exchange down with it.
    let say = |line: String| {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    say(format!("exchange listening on {} (CA: {})", ex.url(), ca_path.display()));
    say(format!("REST on {} (GET /api/v3/aggTrades, /api/v3/depth)", ex.rest_url()));
    say(format!(
        "try: keel stream --url {} --rest-url {} --ca-file {} --streams btcusdt@aggTrade,btcusdt@depth",
        ex.url(),
        ex.rest_url(),
        ca_path.display()
    ));
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("cannot install the Ctrl-C handler")?;
    match args.duration {
        Some(secs) => {
            let _ = stop_rx.recv_timeout(Duration::from_secs(secs));
        }
        None => {
            let _ = stop_rx.recv();
        }
    }
    let conns = ex.connections();
    ex.shutdown();
    say(format!("exchange stopped after {} connections", conns.len()));
    Ok(ExitCode::SUCCESS)
}
