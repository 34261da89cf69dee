//! The exchange's sockets: TLS accept, WebSocket upgrade, one task per connection, the market ticker.

use super::fault::Fault;
use super::market::{Market, Produced, StreamKind, parse_stream};
use super::{ConnectionInfo, ExchangeConfig};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Bytes, Message};
use futures_util::{SinkExt, StreamExt};
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;
use smol::net::TcpStream;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The exchange's clock: wall time at start, then accelerated by `speed` (klines close `speed`
/// times faster; every event time uses this clock).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
    base_ms: u64,
    speed: u32,
}

impl Clock {
    pub(crate) fn new(speed: u32) -> Clock {
        let base_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Clock { start: Instant::now(), base_ms, speed: speed.max(1) }
    }

    /// When the exchange started (real time).
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64 * u64::from(self.speed)
    }
}

/// Per stream: which sequence ranges went out on which connection.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// stream -> (first, last) sequence produced by the market.
    pub(crate) produced: BTreeMap<String, (u64, u64)>,
    /// stream -> connection -> (first, last, frames) sent.
    pub(crate) sent: BTreeMap<String, BTreeMap<u64, (u64, u64, u64)>>,
    pub(crate) connections: BTreeMap<u64, ConnectionInfo>,
}

pub(crate) enum ConnMsg {
    Batch(Arc<Vec<Produced>>),
    Inject(Fault),
    Shutdown,
}

pub(crate) struct Shared {
    pub(crate) cfg: ExchangeConfig,
    pub(crate) acceptor: async_native_tls::TlsAcceptor,
    pub(crate) market: Mutex<Market>,
    pub(crate) clock: Clock,
    pub(crate) conns: Mutex<BTreeMap<u64, Sender<ConnMsg>>>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) next_faults: Mutex<VecDeque<Vec<Fault>>>,
    pub(crate) log: Mutex<Log>,
    pub(crate) rest: Mutex<super::rest::RestState>,
    /// Closed (never sent on) when the exchange shuts down: stalled connections wait on it.
    pub(crate) shutdown_rx: Receiver<()>,
}

/// Locks a mutex, recovering the data if a connection task panicked while holding it: the exchange
/// is a test fixture and must keep serving the others.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: smol::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let k = shared.next_conn.fetch_add(1, Ordering::SeqCst);
                tracing::debug!(conn = k, %peer, "exchange: accepted");
                smol::spawn(serve(shared.clone(), tcp, k)).detach();
            }
            Err(e) => {
                tracing::warn!("exchange: accept failed: {e}");
                smol::Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) async fn ticker(shared: Arc<Shared>) {
    let mut timer = smol::Timer::interval(shared.cfg.tick);
    loop {
        timer.next().await;
        let now_ms = shared.clock.now_ms();
        let batch = lock(&shared.market).tick(now_ms);
        {
            let mut log = lock(&shared.log);
            for p in &batch {
                if let Some((lo, hi)) = p.seq {
                    log.produced.entry(p.stream.clone()).and_modify(|r| r.1 = hi).or_insert((lo, hi));
                }
            }
        }
        let batch = Arc::new(batch);
        let conns: Vec<(u64, Sender<ConnMsg>)> = lock(&shared.conns).iter().map(|(k, s)| (*k, s.clone())).collect();
        for (k, tx) in conns {
            // Binance drops consumers that cannot keep up; so does the exchange.
            if tx.len() > shared.cfg.max_queue {
                tracing::info!(conn = k, "exchange: client too slow ({} batches queued); dropping it", tx.len());
                tx.close();
                lock(&shared.conns).remove(&k);
            } else {
                let _ = tx.try_send(ConnMsg::Batch(batch.clone()));
            }
        }
    }
}

/// What the upgrade request asked for.
struct Route {
    combined: bool,
    streams: Vec<String>,
}

fn route(req: &Request) -> Result<Route, (u16, String)> {
    let path = req.uri().path();
    let (combined, streams): (bool, Vec<String>) = if path == "/stream" {
        let streams = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("streams="))
            .map(|s| s.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        (true, streams)
    } else if path == "/ws" || path.starts_with("/ws/") {
        (false, path.trim_start_matches("/ws").split('/').filter(|s| !s.is_empty()).map(str::to_string).collect())
    } else {
        return Err((404, format!("unknown path {path}; use /ws/<stream> or /stream?streams=a/b")));
    };
    for s in &streams {
        parse_stream(s).map_err(|e| (400, e.to_string()))?;
    }
    if streams.len() > 1024 {
        return Err((400, "more than 1024 streams on one connection".to_string()));
    }
    Ok(Route { combined, streams })
}

fn error_response(status: u16, retry_after: Option<u64>, body: String) -> ErrorResponse {
    let mut b = http::Response::builder().status(status);
    if let Some(s) = retry_after {
        b = b.header("Retry-After", s.to_string());
    }
    b.body(Some(body)).unwrap_or_else(|_| {
        let mut r = http::Response::new(None);
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Faults armed on one connection, with thresholds in frames sent.
#[derive(Default)]
struct Armed {
    reset_at: Option<u64>,
    eof_at: Option<u64>,
    stall_at: Option<u64>,
    close_at: Option<(u64, u16)>,
    malformed_every: Option<u64>,
    /// (when serverShutdown is sent, when the connection is closed)
    cutoff: Option<(Instant, Instant)>,
    slow_reads: Option<Duration>,
    blast: Option<u64>,
    oversize: Option<(u64, u64)>,
    drop_depth_at: Option<u64>,
    restart_at: Option<u64>,
}

impl Armed {
    fn arm(&mut self, fault: &Fault, sent: u64) {
        match fault {
            Fault::Reset { after } => self.reset_at = Some(sent.saturating_add(*after)),
            Fault::Eof { after } => self.eof_at = Some(sent.saturating_add(*after)),
            Fault::Stall { after } => self.stall_at = Some(sent.saturating_add(*after)),
            Fault::Close { after, code } => self.close_at = Some((sent.saturating_add(*after), *code)),
            Fault::Malformed { every } => self.malformed_every = Some((*every).max(1)),
            Fault::Cutoff { after } => {
                // serverShutdown goes out a little before the cutoff, as Binance announces it.
                // A cutoff past what the clock can count (a library caller's `Duration::MAX`) never
                // comes; `Instant + Duration` would panic on it.
                let now = Instant::now();
                self.cutoff =
                    now.checked_add(*after).map(|close| (close - (*after / 2).min(Duration::from_secs(1)), close));
            }
            Fault::SlowReads { delay } => self.slow_reads = Some(*delay),
            Fault::Blast { frames } => self.blast = Some(*frames),
            Fault::Oversize { after, bytes } => self.oversize = Some((sent.saturating_add(*after), *bytes)),
            Fault::DropDepth { after } => self.drop_depth_at = Some(sent.saturating_add(*after)),
            Fault::Restart { after } => self.restart_at = Some(sent.saturating_add(*after)),
            Fault::RejectUpgrade { .. } => {}
        }
    }

    /// The fault due now that `sent` frames went out, if any.
    fn due(&self, sent: u64) -> Option<Ending> {
        if self.reset_at.is_some_and(|n| sent >= n) {
            return Some(Ending::Reset);
        }
        if self.eof_at.is_some_and(|n| sent >= n) {
            return Some(Ending::Eof);
        }
        if self.stall_at.is_some_and(|n| sent >= n) {
            return Some(Ending::Stall);
        }
        if let Some((n, code)) = self.close_at.filter(|(n, _)| sent >= *n) {
            let _ = n;
            return Some(Ending::Close(code, "fault injected by the exchange".to_string()));
        }
        None
    }
}

/// How a connection ends.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    Reset,
    Eof,
    Stall,
    Close(u16, String),
    ClientGone(String),
    PongTimeout,
    TooSlow,
}

const MALFORMED: [&str; 4] = [
    r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":17"#,
    "this is not json",
    r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT"}}"#,
    r#"{"e":"mysteryEvent","E":1}"#,
];

struct Conn {
    k: u64,
    combined: bool,
    subs: BTreeSet<String>,
    sent: u64,
    malformed: u64,
    /// stream -> (first, last, frames) since the last flush to the shared log.
    ranges: BTreeMap<String, (u64, u64, u64)>,
}

impl Conn {
    fn encode(&self, p: &Produced) -> String {
        if self.combined { format!(r#"{{"stream":"{}","data":{}}}"#, p.stream, p.json) } else { p.json.clone() }
    }

    fn note_sent(&mut self, p: &Produced) {
        self.sent += 1;
        if let Some((lo, hi)) = p.seq {
            self.ranges.entry(p.stream.clone()).and_modify(|r| (r.1, r.2) = (hi, r.2 + 1)).or_insert((lo, hi, 1));
        }
    }

    fn publish(&mut self, shared: &Shared) {
        let mut log = lock(&shared.log);
        for (stream, (lo, hi, n)) in std::mem::take(&mut self.ranges) {
            log.sent
                .entry(stream)
                .or_default()
                .entry(self.k)
                .and_modify(|r| (r.1, r.2) = (hi, r.2 + n))
                .or_insert((lo, hi, n));
        }
        if let Some(info) = log.connections.get_mut(&self.k) {
            info.frames_sent = self.sent;
            info.malformed_sent = self.malformed;
            info.subscriptions = self.subs.iter().cloned().collect();
        }
    }
}

/// Bytes written to `tcp` that its peer has not acknowledged yet (`SIOCOUTQ`), None if the kernel will not say.
fn unacked_bytes(tcp: &TcpStream) -> Option<i32> {
    use std::os::unix::io::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) on a TCP socket fd we own writes one c_int.
    let rc = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n)
}

fn set_linger_zero(tcp: &TcpStream) {
    use std::os::unix::io::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket fd we own, with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!("exchange: SO_LINGER failed: {}", std::io::Error::last_os_error());
    }
}

async fn serve(shared: Arc<Shared>, tcp: TcpStream, k: u64) {
    let faults = lock(&shared.next_faults).pop_front().unwrap_or_else(|| shared.cfg.faults.faults_for(k));
    lock(&shared.log).connections.insert(
        k,
        ConnectionInfo {
            index: k,
            faults: faults.clone(),
            accepted_ms: shared.clock.start.elapsed().as_millis() as u64,
            ..ConnectionInfo::default()
        },
    );
    let ending = serve_inner(&shared, tcp, k, faults).await;
    lock(&shared.conns).remove(&k);
    tracing::debug!(conn = k, "exchange: connection ended: {ending:?}");
    if let Some(info) = lock(&shared.log).connections.get_mut(&k) {
        info.ended = Some(format!("{ending:?}"));
    }
}

#[allow(clippy::result_large_err)] // the error type is tungstenite's callback contract
async fn serve_inner(shared: &Arc<Shared>, tcp: TcpStream, k: u64, faults: Vec<Fault>) -> Ending {
    let raw = tcp.clone();
    let tls = match shared.acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(e) => return Ending::ClientGone(format!("TLS handshake failed: {e}")),
    };
    let reject = faults.iter().find_map(|f| match f {
        Fault::RejectUpgrade { status, retry_after_secs } => Some((*status, *retry_after_secs)),
        _ => None,
    });
    let mut routed: Option<Route> = None;
    let mut path = String::new();
    // The status of a refused upgrade: a fault's, or the route's own (404 unknown path, 400 bad stream
    // name or more than 1024 streams, as Binance answers).
    let mut refused: Option<u16> = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().to_string();
        if let Some((status, retry)) = reject {
            refused = Some(status);
            return Err(error_response(status, retry, "rejected by a fault of the embedded exchange".into()));
        }
        match route(req) {
            Ok(r) => {
                routed = Some(r);
                Ok(resp)
            }
            Err((status, why)) => {
                refused = Some(status);
                Err(error_response(status, None, why))
            }
        }
    };
    let ws = async_tungstenite::accept_hdr_async(tls, callback).await;
    if let Some(info) = lock(&shared.log).connections.get_mut(&k) {
        info.path = path.clone();
        info.rejected = refused;
    }
    if let Some(status) = refused {
        tracing::debug!(conn = k, status, "exchange: upgrade rejected");
    }
    let mut ws = match (ws, routed) {
        (Ok(ws), Some(route)) => (ws, route),
        (Ok(_), None) => return Ending::ClientGone("upgrade without a route".into()),
        (Err(e), _) => return Ending::ClientGone(format!("upgrade failed or rejected: {e}")),
    };
    let route = std::mem::replace(&mut ws.1, Route { combined: false, streams: vec![] });
    let mut ws = ws.0;
    {
        let mut m = lock(&shared.market);
        for s in &route.streams {
            let _ = m.ensure_stream(s);
        }
    }
    let mut conn = Conn {
        k,
        combined: route.combined,
        subs: route.streams.into_iter().collect(),
        sent: 0,
        malformed: 0,
        ranges: BTreeMap::new(),
    };
    let mut armed = Armed::default();
    for f in &faults {
        armed.arm(f, 0);
    }
    let (tx, rx) = smol::channel::unbounded();
    lock(&shared.conns).insert(k, tx);
    conn.publish(shared);
    let ending = run_connection(shared, &mut ws, &rx, &mut conn, &mut armed).await;
    conn.publish(shared);
    lock(&shared.conns).remove(&k);
    match &ending {
        Ending::Reset => {
            // The frames counted as sent reach the client before the RST: a reset with linger 0
            // discards what the kernel still holds, and the log (`skipped`) would call frames sent
            // that no client could read. Bounded: a client that reads nothing gets its reset anyway.
            let deadline = Instant::now() + Duration::from_millis(250);
            while unacked_bytes(&raw).is_some_and(|n| n > 0) && Instant::now() < deadline {
                smol::Timer::after(Duration::from_millis(1)).await;
            }
            set_linger_zero(&raw)
        }
        Ending::Eof | Ending::PongTimeout | Ending::TooSlow => {
            let _ = raw.shutdown(std::net::Shutdown::Both);
        }
        Ending::Stall => {
            // Socket open, nothing read or written (so no pongs either) until the hold ends.
            let hold = async {
                smol::Timer::after(shared.cfg.stall_hold).await;
            };
            hold.or(async {
                let _ = shared.shutdown_rx.recv().await;
            })
            .await;
        }
        Ending::Close(code, reason) => {
            let frame = CloseFrame { code: CloseCode::from(*code), reason: reason.clone().into() };
            let _ = ws.close(Some(frame)).await;
            // Wait (briefly) for the client's answering close so that it reads ours first.
            let drain = async { while let Some(Ok(_)) = ws.next().await {} };
            drain
                .or(async {
                    smol::Timer::after(Duration::from_secs(2)).await;
                })
                .await;
        }
        Ending::ClientGone(_) => {}
    }
    drop(ws);
    ending
}

/// Frames of a blast produced and encoded at a time.
const BLAST_CHUNK: u64 = 1024;

enum Wake {
    Read(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Chan(Option<ConnMsg>),
    Timer,
}

async fn run_connection<S>(
    shared: &Arc<Shared>,
    ws: &mut WebSocketStream<S>,
    rx: &Receiver<ConnMsg>,
    conn: &mut Conn,
    armed: &mut Armed,
) -> Ending
where
    S: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin,
{
    if let Some(n) = armed.blast.take() {
        // Blast the connection's first subscribed stream: depth updates for a depth stream, aggTrades
        // otherwise. Frames are produced and encoded in chunks so that the first one goes out at once
        // (a client timing the blast does not wait for a million frames to be formatted first).
        let first = conn.subs.iter().next().and_then(|s| parse_stream(s).ok());
        let (symbol, depth) = match first {
            // An all-market array (no symbol) blasts aggTrades of the default symbol.
            Some((symbol, kind)) if !symbol.is_empty() => (symbol, kind == StreamKind::Depth),
            Some(_) => ("btcusdt".to_string(), false),
            None => ("btcusdt".to_string(), false),
        };
        let now_ms = shared.clock.now_ms();
        let mut left = n;
        while left > 0 {
            let chunk = left.min(BLAST_CHUNK);
            left -= chunk;
            let frames = {
                let mut market = lock(&shared.market);
                if depth {
                    market.blast_depth(&symbol, chunk, now_ms)
                } else {
                    market.blast_agg_trades(&symbol, chunk, now_ms)
                }
            };
            for p in &frames {
                if let Err(e) = ws.feed(Message::text(conn.encode(p))).await {
                    return Ending::ClientGone(format!("blast write failed: {e}"));
                }
                conn.note_sent(p);
            }
        }
        if let Err(e) = ws.flush().await {
            return Ending::ClientGone(format!("blast flush failed: {e}"));
        }
        conn.publish(shared);
    }
    let mut next_ping = Instant::now() + shared.cfg.ping_interval;
    let mut ping_outstanding: Option<Instant> = None;
    let mut read_at = Instant::now();
    let mut shutdown_sent = false;
    loop {
        let pong_deadline = ping_outstanding.map(|t| t + shared.cfg.pong_deadline);
        let notice = armed.cutoff.map(|(notice, close)| if shutdown_sent { close } else { notice });
        let wake_at = [Some(next_ping), pong_deadline, notice].into_iter().flatten().min().unwrap_or(next_ping);
        let wake = {
            let read = async {
                smol::Timer::at(read_at).await;
                Wake::Read(ws.next().await)
            };
            let chan = async { Wake::Chan(rx.recv().await.ok()) };
            let timer = async {
                smol::Timer::at(wake_at).await;
                Wake::Timer
            };
            read.or(chan).or(timer).await
        };
        match wake {
            Wake::Read(None) => return Ending::ClientGone("client closed".into()),
            Wake::Read(Some(Err(e))) => return Ending::ClientGone(format!("read failed: {e}")),
            Wake::Read(Some(Ok(msg))) => {
                if let Some(d) = armed.slow_reads {
                    read_at = Instant::now() + d;
                }
                match msg {
                    Message::Text(t) => {
                        let reply = answer_request(shared, conn, t.as_str());
                        if let Err(e) = ws.send(Message::text(reply)).await {
                            return Ending::ClientGone(format!("write failed: {e}"));
                        }
                        conn.publish(shared);
                    }
                    Message::Pong(_) => ping_outstanding = None,
                    // tungstenite queues the pong answering a ping itself; it goes out on the next write/flush.
                    Message::Ping(_) => {
                        let _ = ws.flush().await;
                    }
                    Message::Close(_) => return Ending::ClientGone("client sent close".into()),
                    Message::Binary(_) | Message::Frame(_) => {}
                }
            }
            Wake::Chan(None) => return Ending::TooSlow,
            Wake::Chan(Some(ConnMsg::Shutdown)) => return Ending::Close(1001, "exchange shutting down".into()),
            Wake::Chan(Some(ConnMsg::Inject(f))) => {
                armed.arm(&f, conn.sent);
                if let Some(end) = armed.due(conn.sent) {
                    return end;
                }
            }
            Wake::Chan(Some(ConnMsg::Batch(batch))) => {
                for p in batch.iter() {
                    // The market makes one diff stream per symbol; `@depth@100ms` and `@depth@1000ms`
                    // subscribers get it under their own name (Binance's update speeds).
                    let relabeled;
                    let p = if conn.subs.contains(&p.stream) {
                        p
                    } else if let Some(name) = p
                        .stream
                        .ends_with("@depth")
                        .then(|| {
                            ["@100ms", "@1000ms"]
                                .iter()
                                .map(|v| format!("{}{v}", p.stream))
                                .find(|n| conn.subs.contains(n))
                        })
                        .flatten()
                    {
                        relabeled = Produced { stream: name, ..p.clone() };
                        &relabeled
                    } else {
                        continue;
                    };
                    if p.stream.contains("@depth") && armed.drop_depth_at.is_some_and(|n| conn.sent >= n) {
                        armed.drop_depth_at = None;
                        if let (Some((lo, hi)), Some(info)) = (p.seq, lock(&shared.log).connections.get_mut(&conn.k)) {
                            info.dropped_depth.push((p.stream.clone(), lo, hi));
                        }
                        tracing::debug!(conn = conn.k, stream = %p.stream, seq = ?p.seq, "exchange: depth diff dropped (fault)");
                        continue;
                    }
                    let text = conn.encode(p);
                    if let Err(e) = ws.feed(Message::text(text)).await {
                        return Ending::ClientGone(format!("write failed: {e}"));
                    }
                    conn.note_sent(p);
                    if armed.restart_at.is_some_and(|n| conn.sent >= n) {
                        armed.restart_at = None;
                        lock(&shared.market).restart_numbering();
                        lock(&shared.log).produced.clear();
                        tracing::info!(conn = conn.k, "exchange: ids start again from 1 (restart fault)");
                    }
                    if armed.malformed_every.is_some_and(|e| conn.sent.is_multiple_of(e)) {
                        let bad = MALFORMED[(conn.malformed % MALFORMED.len() as u64) as usize];
                        if let Err(e) = ws.feed(Message::text(bad)).await {
                            return Ending::ClientGone(format!("write failed: {e}"));
                        }
                        conn.malformed += 1;
                    }
                    if let Some((_, bytes)) = armed.oversize.filter(|(at, _)| conn.sent >= *at) {
                        armed.oversize = None;
                        let big = format!(r#"{{"e":"padding","x":"{}"}}"#, "x".repeat(bytes as usize));
                        if let Err(e) = ws.feed(Message::text(big)).await {
                            return Ending::ClientGone(format!("write failed: {e}"));
                        }
                    }
                    if let Some(end) = armed.due(conn.sent) {
                        let _ = ws.flush().await;
                        conn.publish(shared);
                        return end;
                    }
                }
                if let Err(e) = ws.flush().await {
                    return Ending::ClientGone(format!("flush failed: {e}"));
                }
                conn.publish(shared);
            }
            Wake::Timer => {
                let now = Instant::now();
                if pong_deadline.is_some_and(|d| now >= d) {
                    // Binance disconnects a client that does not answer its ping within 60 s.
                    return Ending::PongTimeout;
                }
                if let Some((_, cutoff)) = armed.cutoff {
                    if now >= cutoff && shutdown_sent {
                        return Ending::Close(1001, "connection lifetime reached (24 h limit)".into());
                    }
                    if !shutdown_sent && notice.is_some_and(|n| now >= n) {
                        let text = format!(r#"{{"e":"serverShutdown","E":{}}}"#, shared.clock.now_ms());
                        if let Err(e) = ws.send(Message::text(text)).await {
                            return Ending::ClientGone(format!("write failed: {e}"));
                        }
                        shutdown_sent = true;
                    }
                }
                if now >= next_ping {
                    next_ping = now + shared.cfg.ping_interval;
                    let payload = Bytes::from(shared.clock.now_ms().to_string().into_bytes());
                    if let Err(e) = ws.send(Message::Ping(payload)).await {
                        return Ending::ClientGone(format!("ping failed: {e}"));
                    }
                    ping_outstanding.get_or_insert(now);
                }
            }
        }
    }
}

/// Answers one client request (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS) the way Binance does,
/// including its error replies: code 3 invalid JSON, 2 invalid request, 1 invalid value type, 0 unknown property.
fn answer_request(shared: &Shared, conn: &mut Conn, text: &str) -> String {
    let err = |code: i64, msg: &str, id: &serde_json::Value| {
        serde_json::json!({"error": {"code": code, "msg": msg}, "id": id}).to_string()
    };
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return err(3, &format!("Invalid JSON: {e}"), &serde_json::Value::Null),
    };
    let id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
    if !(id.is_u64() || id.is_string() || id.is_null()) {
        return err(1, "Invalid value type: expected u64 or string for id", &serde_json::Value::Null);
    }
    let Some(method) = v.get("method").and_then(|m| m.as_str()) else {
        return err(2, "Invalid request: method name must be a string", &id);
    };
    let params: Vec<String> = match v.get("params") {
        None => Vec::new(),
        Some(serde_json::Value::Array(a)) => {
            let names: Option<Vec<String>> = a.iter().map(|p| p.as_str().map(str::to_string)).collect();
            match names {
                Some(n) => n,
                None => return err(1, "Invalid value type: expected stream names as strings in params", &id),
            }
        }
        Some(_) => return err(1, "Invalid value type: params must be an array", &id),
    };
    match method {
        "SUBSCRIBE" => {
            for p in &params {
                if let Err(e) = lock(&shared.market).ensure_stream(p) {
                    return err(2, &format!("Invalid request: {e}"), &id);
                }
            }
            if conn.subs.len() + params.len() > 1024 {
                return err(2, "Invalid request: more than 1024 streams on one connection", &id);
            }
            conn.subs.extend(params);
            serde_json::json!({"result": null, "id": id}).to_string()
        }
        "UNSUBSCRIBE" => {
            for p in &params {
                conn.subs.remove(p);
            }
            serde_json::json!({"result": null, "id": id}).to_string()
        }
        "LIST_SUBSCRIPTIONS" => {
            let list: Vec<&String> = conn.subs.iter().collect();
            serde_json::json!({"result": list, "id": id}).to_string()
        }
        other => err(0, &format!("Unknown property: method {other:?}"), &id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_past_the_counters_never_fire_instead_of_wrapping_or_panicking() {
        // `reset:18446744073709551615` armed after 5 frames wrapped to 4 in release (a reset at once)
        // and overflowed in debug; a cutoff of `Duration::MAX` panicked in `Instant + Duration`.
        let mut armed = Armed::default();
        for fault in [
            Fault::Reset { after: u64::MAX },
            Fault::Oversize { after: u64::MAX, bytes: 1 },
            Fault::Cutoff { after: Duration::MAX },
        ] {
            armed.arm(&fault, 5);
        }
        assert_eq!(armed.reset_at, Some(u64::MAX));
        assert_eq!(armed.oversize, Some((u64::MAX, 1)));
        assert!(armed.cutoff.is_none());
        armed.arm(&Fault::Cutoff { after: Duration::from_millis(3000) }, 0);
        let (notice, close) = armed.cutoff.expect("armed");
        assert_eq!(close - notice, Duration::from_secs(1), "serverShutdown one second before the close");
    }
}
