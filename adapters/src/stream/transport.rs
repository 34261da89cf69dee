//! One transport: TCP connect, TLS (always verified), WebSocket upgrade, then frames both ways.
//!
//! Every failure is mapped onto the core's [`TransportError`] together with the full text of its
//! source chain; the stream loop logs that chain once, with the transport id and attempt.

use crate::tls::{TlsConnector, TlsStream};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use futures_util::StreamExt;
use keel_core::classify::TransportError;
use keel_core::config::{Config, TlsVersion};
use keel_core::connection::WsMessage;
use keel_core::redact::{redact_error, redact_text};
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;
use smol::net::TcpStream;
use std::error::Error as StdError;
use std::time::Duration;

/// The client side of a connected WebSocket.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// TLS and WebSocket settings shared by every transport of a run.
#[derive(Clone)]
pub struct TransportSettings {
    /// Built once per run: building it loads the system trust store (41 ms on OpenSSL).
    connector: std::sync::Arc<TlsConnector>,
    ws_config: WebSocketConfig,
    /// `tls.handshake_timeout_ms`: the core abandons an attempt after it; named in the slow-step warning.
    handshake_timeout: Duration,
}

/// Settings that cannot be used (unreadable CA file, bad PEM).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// The CA file could not be read.
    #[error("cannot read the CA file {path} (--ca-file / tls.ca_file): {why}")]
    CaUnreadable {
        /// The path.
        path: String,
        /// Why.
        why: String,
    },
    /// The CA file holds no usable certificate, PEM or DER.
    #[error("the CA file {path} (--ca-file / tls.ca_file) holds no valid PEM or DER certificate: {why}")]
    CaInvalid {
        /// The path.
        path: String,
        /// Why.
        why: String,
    },
    /// The TLS library refused the settings (tls.min_version, tls.ca_file) or could not load the system trust store.
    #[error("cannot build the TLS client from tls.min_version / tls.ca_file: {why}")]
    TlsBuild {
        /// The TLS library's reason.
        why: String,
    },
}

/// The certificates of a CA file: PEM (one or more), or one DER certificate, as `openssl x509
/// -outform der` and Windows' certificate export write it.
fn ca_certificates(bytes: &[u8]) -> Result<Vec<native_tls::Certificate>, String> {
    match native_tls::Certificate::stack_from_pem(bytes) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        // A DER certificate is an ASN.1 SEQUENCE: its first byte is 0x30.
        _ if bytes.first() == Some(&0x30) => native_tls::Certificate::from_der(bytes)
            .map(|c| vec![c])
            .map_err(|e| format!("not PEM, and not a DER certificate either: {e}")),
        Ok(_) => Err("no certificate in the file".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl TransportSettings {
    /// Builds the TLS connector (minimum version, extra root from `tls.ca_file`; host names and
    /// certificates always verified) and the WebSocket limits from `config`. The connector is built
    /// here, once: every transport and the REST client of the run share it.
    pub fn from_config(config: &Config) -> Result<TransportSettings, SettingsError> {
        let min = match config.tls.min_version {
            TlsVersion::Tls12 => native_tls::Protocol::Tlsv12,
            TlsVersion::Tls13 => native_tls::Protocol::Tlsv13,
        };
        let mut builder = native_tls::TlsConnector::builder();
        builder.min_protocol_version(Some(min));
        if let Some(path) = &config.tls.ca_file {
            let bytes = std::fs::read(path)
                .map_err(|e| SettingsError::CaUnreadable { path: path.clone(), why: e.to_string() })?;
            let certs = ca_certificates(&bytes).map_err(|why| SettingsError::CaInvalid { path: path.clone(), why })?;
            for c in certs {
                builder.add_root_certificate(c);
            }
        }
        let max = usize::try_from(config.stream.max_message_bytes).unwrap_or(usize::MAX);
        let ws_config = WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max));
        let connector = TlsConnector::build(&builder).map_err(|e| SettingsError::TlsBuild { why: chain(&e) })?;
        Ok(TransportSettings {
            connector: std::sync::Arc::new(connector),
            ws_config,
            handshake_timeout: Duration::from_millis(config.tls.handshake_timeout_ms),
        })
    }

    /// The TLS connector (verification always on), shared with the REST client so that REST uses
    /// exactly the stream's trust roots and minimum version.
    pub fn tls_connector(&self) -> std::sync::Arc<TlsConnector> {
        self.connector.clone()
    }
}

/// A transport error with the text of its whole source chain, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The core's view of the error.
    pub error: TransportError,
    /// `error: source: source...`, as the libraries reported it.
    pub chain: String,
}

/// `e: its source: its source...`.
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Maps TLS library text (OpenSSL's reason strings) to a class, or None when it says nothing specific.
fn from_tls_text(text: &str) -> Option<TransportError> {
    let l = text.to_ascii_lowercase();
    if l.contains("certificate verify failed")
        || l.contains("hostname mismatch")
        || l.contains("certificate has expired")
        || l.contains("self-signed certificate")
        || l.contains("self signed certificate")
        || l.contains("unable to get local issuer certificate")
        || l.contains("ip address mismatch")
    {
        return Some(TransportError::CertificateRejected(text.to_string()));
    }
    if l.contains("unexpected eof") {
        return Some(TransportError::UnexpectedEof(text.to_string()));
    }
    if l.contains("bad record mac") || l.contains("decryption failed or bad record mac") {
        return Some(TransportError::BadRecordMac(text.to_string()));
    }
    None
}

/// Maps an IO error (which may carry a TLS error inside) to a [`TransportError`].
pub fn map_io(e: &std::io::Error) -> TransportError {
    use std::io::ErrorKind as K;
    let text = chain(e);
    if let Some(t) = from_tls_text(&text) {
        return t;
    }
    match e.kind() {
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => TransportError::Reset(text),
        K::ConnectionRefused => TransportError::Refused(text),
        K::TimedOut => TransportError::Timeout(text),
        K::UnexpectedEof => TransportError::UnexpectedEof(text),
        _ => TransportError::Io(text),
    }
}

/// Maps a TLS handshake error with `host:port`. An answer that is not TLS at all (OpenSSL's "wrong
/// version number" when a plain HTTP server answers) says so and names the server, instead of
/// leaving the user to decode OpenSSL's record-layer complaint.
pub fn map_tls(e: &native_tls::Error, host: &str, port: u16) -> TransportError {
    let text = chain(e);
    from_tls_text(&text).unwrap_or_else(|| {
        if keel_core::classify::answered_without_tls(&text) {
            TransportError::TlsHandshake(format!("the server at {host}:{port} did not answer TLS ({text})"))
        } else {
            TransportError::TlsHandshake(text)
        }
    })
}

/// Maps a tungstenite error (upgrade or an open socket).
pub fn map_ws(e: &tungstenite::Error) -> TransportError {
    use tungstenite::Error as W;
    match e {
        W::Http(resp) => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            TransportError::HttpStatus { status: resp.status().as_u16(), retry_after }
        }
        W::Io(io) => map_io(io),
        W::Tls(t) => {
            let text = chain(t);
            from_tls_text(&text).unwrap_or(TransportError::TlsHandshake(text))
        }
        W::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            TransportError::MessageTooLarge { size: *size as u64, max: *max_size as u64 }
        }
        W::Capacity(c) => TransportError::Protocol(format!("capacity exceeded: {c}")),
        W::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            TransportError::Reset("the stream ended without a WebSocket close frame".into())
        }
        W::Url(u) => TransportError::InvalidUrl(u.to_string()),
        W::ConnectionClosed | W::AlreadyClosed => TransportError::Io(e.to_string()),
        other => TransportError::Protocol(chain(other)),
    }
}

/// Host and port of a `wss://` URL; anything else is an invalid URL (keel never speaks plain `ws://`).
pub fn host_port(url: &str) -> Result<(String, u16), TransportError> {
    let req = url.into_client_request().map_err(|e| TransportError::InvalidUrl(format!("{url}: {e}")))?;
    let uri = req.uri();
    if uri.scheme_str() != Some("wss") {
        return Err(TransportError::InvalidUrl(format!("{url}: only wss:// is supported (TLS is mandatory)")));
    }
    let host = uri.host().ok_or_else(|| TransportError::InvalidUrl(format!("{url}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// TCP connect, TLS handshake (host name and chain verified), WebSocket upgrade.
pub async fn connect(url: &str, settings: &TransportSettings) -> Result<Ws, Failure> {
    let fail = |error: TransportError, chain: String| Failure { error, chain };
    let (host, port) = host_port(url).map_err(|e| fail(e.clone(), e.to_string()))?;
    let addrs = smol::net::resolve((host.as_str(), port))
        .await
        .map_err(|e| fail(TransportError::Dns(format!("{host}: {e}")), format!("resolving {host}: {}", chain(&e))))?;
    if addrs.is_empty() {
        return Err(fail(TransportError::Dns(format!("{host}: no address")), format!("{host} resolved to nothing")));
    }
    let slow = slow_after(settings.handshake_timeout);
    let limit = settings.handshake_timeout.as_millis();
    let tcp = warn_if_slow(TcpStream::connect(&addrs[..]), slow, || {
        tracing::warn!(
            "TCP connect to {host}:{port}: no answer after {:.1} s, still waiting (a firewall dropping packets, \
             or the wrong host); the attempt is abandoned after tls.handshake_timeout_ms = {limit}",
            slow.as_secs_f64()
        )
    })
    .await
    .map_err(|e| fail(map_io(&e), format!("TCP connect to {host}:{port}: {}", chain(&e))))?;
    let _ = tcp.set_nodelay(true);
    let tls = warn_if_slow(settings.connector.connect(host.as_str(), tcp), slow, || {
        tracing::warn!(
            "TLS handshake with {host}:{port}: the server accepted TCP but has not answered TLS after {:.1} s, \
             still waiting (a port that does not speak TLS, or an overloaded server); the attempt is abandoned \
             after tls.handshake_timeout_ms = {limit}",
            slow.as_secs_f64()
        )
    })
    .await
    .map_err(|e| fail(map_tls(&e, &host, port), format!("TLS handshake with {host}:{port}: {}", chain(&e))))?;
    let upgrade = async_tungstenite::client_async_with_config(url, tls, Some(settings.ws_config));
    let (ws, _resp) = warn_if_slow(upgrade, slow, || {
        tracing::warn!(
            "WebSocket upgrade at {}: no HTTP answer after {:.1} s, still waiting; the attempt is abandoned after \
             tls.handshake_timeout_ms = {limit}",
            redact_text(url),
            slow.as_secs_f64()
        )
    })
    .await
    .map_err(|e| fail(map_ws(&e), format!("WebSocket upgrade at {url}: {}", chain(&e))))?;
    Ok(ws)
}

/// How long one step of connecting (TCP, TLS, upgrade) may take before it is logged as slow: 3 s, or
/// half of `tls.handshake_timeout_ms` when that is shorter. Without it a server that accepts TCP and
/// never answers left nothing in the log until the timeout (30 s by default), however long the run.
pub fn slow_after(handshake_timeout: Duration) -> Duration {
    (handshake_timeout / 2).min(Duration::from_secs(3))
}

/// Awaits `step`, calling `warn` once if it has not finished after `after` (it is not cut: the core
/// owns the deadline, `tls.handshake_timeout_ms`).
pub async fn warn_if_slow<T>(step: impl std::future::Future<Output = T>, after: Duration, warn: impl FnOnce()) -> T {
    let mut step = std::pin::pin!(step);
    let early = async { Some(step.as_mut().await) }
        .or(async {
            smol::Timer::after(after).await;
            None
        })
        .await;
    match early {
        Some(done) => done,
        None => {
            warn();
            step.await
        }
    }
}

/// What a transport task reports to the stream loop.
#[derive(Debug)]
pub enum TransportEvent {
    /// Connected and upgraded.
    Opened,
    /// Connecting failed or the open transport broke.
    Failed(Failure),
    /// The server sent a close frame.
    Closed {
        /// Its code.
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// Text frames read back to back, in order (1 to [`MAX_BATCH`]). The stream loop hands the
    /// emptied `Vec` back on the transport's `recycle` channel; until then the transport reads no
    /// further (one batch in flight: the socket buffers the rest, and no queue grows without bound).
    /// Each frame is tungstenite's own payload (a slice of its read buffer, already checked UTF-8),
    /// not a copy: the core reads it in place (`Connection::handle_text`).
    Texts(Vec<Utf8Bytes>),
    /// A server ping (tungstenite has already queued the pong with the same payload).
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
}

/// What the stream loop tells a transport task.
#[derive(Debug)]
pub enum Command {
    /// Send a message.
    Send(WsMessage),
    /// Send a close frame and end.
    Close {
        /// Close code.
        code: u16,
        /// Reason.
        reason: String,
    },
}

/// Most text frames in one [`TransportEvent::Texts`]: bounds how long the stream loop works through
/// one batch before it looks at its timers, REST answers and the stop signal again.
pub const MAX_BATCH: usize = 256;

/// Runs transport `id`: connects to `url`, then moves frames until it fails, is closed, or is told to close.
/// Its events go out tagged with `id` (the stream loop's key: the shard and the machine's transport id).
///
/// Frames that are already buffered (decrypted by TLS, or still in the socket) when one arrives are
/// read at once into the same batch: one wake-up and one channel message per batch, not per frame.
pub async fn run<K: Copy>(
    id: K,
    url: String,
    settings: TransportSettings,
    events: Sender<(K, TransportEvent)>,
    commands: Receiver<Command>,
    recycle: Receiver<Vec<Utf8Bytes>>,
) {
    let report = |ev: TransportEvent| {
        // Errors quote URLs (a listenKey in the path): they leave the transport redacted, so that
        // logs, stats and traces never see the secret.
        let ev = match ev {
            TransportEvent::Failed(f) => {
                TransportEvent::Failed(Failure { error: redact_error(&f.error), chain: redact_text(&f.chain) })
            }
            TransportEvent::Closed { code, reason } => TransportEvent::Closed { code, reason: redact_text(&reason) },
            other => other,
        };
        let events = events.clone();
        async move {
            let _ = events.send((id, ev)).await;
        }
    };
    let mut ws = match connect(&url, &settings).await {
        Ok(ws) => ws,
        Err(f) => return report(TransportEvent::Failed(f)).await,
    };
    report(TransportEvent::Opened).await;
    enum Wake {
        Read(Option<Result<Message, tungstenite::Error>>),
        Cmd(Option<Command>),
        /// The stream loop handed a batch's `Vec` back (`None`: it dropped this transport).
        Back(Option<Vec<Utf8Bytes>>),
    }
    // A batch is out and its `Vec` not back yet: read nothing (commands are still served).
    let mut in_flight = false;
    // What ended the last batch (a non-text message, an error, the end), handled before reading on.
    let mut carry: Option<Wake> = None;
    let mut spare: Option<Vec<Utf8Bytes>> = None;
    loop {
        // Commands first: after a Close, frames still arriving are of no use.
        let wake = if in_flight {
            async { Wake::Cmd(commands.recv().await.ok()) }.or(async { Wake::Back(recycle.recv().await.ok()) }).await
        } else if let Some(w) = carry.take() {
            w
        } else {
            async { Wake::Cmd(commands.recv().await.ok()) }.or(async { Wake::Read(ws.next().await) }).await
        };
        match wake {
            Wake::Back(v) => {
                in_flight = false;
                spare = v;
            }
            Wake::Read(Some(Ok(msg))) => match msg {
                Message::Text(t) => {
                    let mut batch = spare.take().unwrap_or_else(|| Vec::with_capacity(MAX_BATCH));
                    batch.push(t);
                    while batch.len() < MAX_BATCH {
                        match futures_util::FutureExt::now_or_never(ws.next()) {
                            Some(Some(Ok(Message::Text(t)))) => batch.push(t),
                            Some(other) => {
                                carry = Some(Wake::Read(other));
                                break;
                            }
                            None => break,
                        }
                    }
                    in_flight = true;
                    report(TransportEvent::Texts(batch)).await
                }
                Message::Ping(p) => {
                    // tungstenite queued the pong with the same payload; make sure it goes out now.
                    let _ = futures_util::SinkExt::flush(&mut ws).await;
                    report(TransportEvent::Ping(p.to_vec())).await
                }
                Message::Pong(p) => report(TransportEvent::Pong(p.to_vec())).await,
                Message::Close(frame) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_string()),
                        None => (None, String::new()),
                    };
                    report(TransportEvent::Closed { code, reason }).await;
                    // tungstenite answers the close; read until the server ends the stream (bounded).
                    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                    drain
                        .or(async {
                            smol::Timer::after(Duration::from_secs(1)).await;
                        })
                        .await;
                    return;
                }
                Message::Binary(_) | Message::Frame(_) => {}
            },
            Wake::Read(Some(Err(e))) => {
                let error = map_ws(&e);
                return report(TransportEvent::Failed(Failure { error, chain: chain(&e) })).await;
            }
            Wake::Read(None) => {
                let error = TransportError::Reset("the stream ended without a WebSocket close frame".into());
                return report(TransportEvent::Failed(Failure { chain: error.to_string(), error })).await;
            }
            Wake::Cmd(Some(Command::Send(m))) => {
                let msg = match m {
                    WsMessage::Text(t) => Message::text(t),
                    WsMessage::Ping(p) => Message::Ping(p.into()),
                    WsMessage::Pong(p) => Message::Pong(p.into()),
                };
                if let Err(e) = ws.send(msg).await {
                    // A write can meet a reset before the read side does (a batch in flight, a
                    // heartbeat ping due): frames that arrived ahead of the reset still sit in the
                    // socket and in TLS. They go out before the failure, or a reset would lose more
                    // than it did, and gap recovery would fetch again what was here all along.
                    let readable = match carry.take() {
                        None | Some(Wake::Read(Some(Ok(_)))) => true,
                        Some(_) => false,
                    };
                    if readable {
                        for batch in read_buffered(&mut ws, spare.take()) {
                            report(TransportEvent::Texts(batch)).await;
                        }
                    }
                    let error = map_ws(&e);
                    return report(TransportEvent::Failed(Failure { error, chain: chain(&e) })).await;
                }
            }
            Wake::Cmd(Some(Command::Close { code, reason })) => {
                let frame = CloseFrame { code: code.into(), reason: reason.into() };
                let close = async {
                    let _ = ws.close(Some(frame)).await;
                    while let Some(Ok(_)) = ws.next().await {}
                };
                close
                    .or(async {
                        smol::Timer::after(Duration::from_secs(1)).await;
                    })
                    .await;
                return;
            }
            // The stream loop dropped us: nothing to report to.
            Wake::Cmd(None) => return,
        }
    }
}

/// Most frames read back after a failed write: what a socket's receive buffer holds at most, with room.
const MAX_BUFFERED: usize = 64 * MAX_BATCH;

/// The text frames already here (decrypted in TLS, or waiting in the socket), read without waiting,
/// in batches of at most [`MAX_BATCH`]. Stops at the first read that would wait, fails, ends or
/// closes; pings and pongs are skipped (the transport is broken, nobody will answer them).
fn read_buffered<S>(ws: &mut WebSocketStream<S>, spare: Option<Vec<Utf8Bytes>>) -> Vec<Vec<Utf8Bytes>>
where
    S: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin,
{
    let mut batches = Vec::new();
    let mut batch = spare.unwrap_or_default();
    let mut read = 0;
    while read < MAX_BUFFERED {
        match futures_util::FutureExt::now_or_never(ws.next()) {
            Some(Some(Ok(Message::Text(t)))) => {
                read += 1;
                batch.push(t);
                if batch.len() == MAX_BATCH {
                    batches.push(std::mem::take(&mut batch));
                }
            }
            Some(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_)))) => {}
            Some(Some(Ok(Message::Close(_)) | Err(_)) | None) | None => break,
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn io_errors_map_to_their_class() {
        let table = [
            (io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer"), "Reset"),
            (io::Error::new(io::ErrorKind::ConnectionRefused, "refused"), "Refused"),
            (io::Error::new(io::ErrorKind::TimedOut, "slow"), "Timeout"),
            (io::Error::other("error:0A000126:SSL routines::unexpected eof while reading"), "UnexpectedEof"),
            (io::Error::other("error:0A000119:SSL routines::decryption failed or bad record mac"), "BadRecordMac"),
            (
                io::Error::other("certificate verify failed: unable to get local issuer certificate"),
                "CertificateRejected",
            ),
            (io::Error::other("something else"), "Io"),
        ];
        for (e, name) in table {
            let mapped = format!("{:?}", map_io(&e));
            assert!(mapped.starts_with(name), "{e} -> {mapped}");
        }
    }

    #[test]
    fn a_slow_step_is_warned_about_once_and_still_awaited() {
        let warned = std::cell::Cell::new(0);
        let slow = async {
            smol::Timer::after(Duration::from_millis(60)).await;
            7
        };
        let v = smol::block_on(warn_if_slow(slow, Duration::from_millis(10), || warned.set(warned.get() + 1)));
        assert_eq!((v, warned.get()), (7, 1));
        let v = smol::block_on(warn_if_slow(async { 8 }, Duration::from_millis(10), || warned.set(warned.get() + 1)));
        assert_eq!((v, warned.get()), (8, 1), "a quick step is not warned about");
        assert_eq!(slow_after(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(slow_after(Duration::from_secs(2)), Duration::from_secs(1));
    }

    #[test]
    fn http_rejections_keep_status_and_retry_after() {
        let resp = tungstenite::http::Response::builder().status(429).header("Retry-After", "7").body(None).unwrap();
        assert_eq!(
            map_ws(&tungstenite::Error::Http(Box::new(resp))),
            TransportError::HttpStatus { status: 429, retry_after: Some(Duration::from_secs(7)) }
        );
        let too_big = tungstenite::Error::Capacity(CapacityError::MessageTooLong { size: 20, max_size: 10 });
        assert_eq!(map_ws(&too_big), TransportError::MessageTooLarge { size: 20, max: 10 });
    }

    /// A write that meets the server's reset must not cost the frames that arrived ahead of it.
    /// The first batch is held (so the transport reads nothing more) until the exchange has sent its
    /// frames and reset the connection; then a ping is sent, which fails on the reset socket. Every
    /// frame the exchange sent must still come out, before the failure. Real TLS on 127.0.0.1.
    #[test]
    fn frames_that_arrived_before_a_reset_survive_a_failed_write() {
        use crate::exchange::{Exchange, ExchangeConfig, Fault, FaultPlan};
        const SENT: u64 = 50;
        let ex = Exchange::start(ExchangeConfig {
            // 500 ms of frames: the first batch is read long before the last frame is sent.
            tick: Duration::from_millis(10),
            faults: FaultPlan::default().on(0, Fault::Reset { after: SENT }),
            ..ExchangeConfig::default()
        })
        .unwrap();
        let dir = std::env::temp_dir().join(format!("keel-transport-reset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = ex.client_config(&dir.join("ca.pem"), &dir.join("data"), &["btcusdt@aggTrade"]).unwrap();
        let settings = TransportSettings::from_config(&cfg).unwrap();
        let url = format!("{}/stream?streams=btcusdt@aggTrade", ex.url());
        let (events_tx, events) = smol::channel::unbounded();
        let (commands_tx, commands) = smol::channel::unbounded();
        let (_recycle_tx, recycle) = smol::channel::bounded(1);
        let task = smol::spawn(run(0u8, url, settings, events_tx, commands, recycle));
        smol::block_on(async {
            let next = || async {
                events
                    .recv()
                    .or(async {
                        smol::Timer::after(Duration::from_secs(10)).await;
                        panic!("no transport event within 10 s")
                    })
                    .await
                    .unwrap()
                    .1
            };
            assert!(matches!(next().await, TransportEvent::Opened));
            let mut frames = 0;
            match next().await {
                TransportEvent::Texts(batch) => frames += batch.len() as u64,
                other => panic!("expected the first frames, got {other:?}"),
            }
            assert!(frames < SENT, "the first batch already held every frame: the test proves nothing");
            // The batch is not handed back: the transport reads no further. Wait for the reset.
            let reset = async {
                while ex.connections().first().is_none_or(|c| c.ended.is_none()) {
                    smol::Timer::after(Duration::from_millis(5)).await;
                }
            };
            reset
                .or(async {
                    smol::Timer::after(Duration::from_secs(10)).await;
                    panic!("the exchange did not reset the connection")
                })
                .await;
            assert_eq!(ex.connections()[0].frames_sent, SENT);
            smol::Timer::after(Duration::from_millis(50)).await;
            commands_tx.send(Command::Send(WsMessage::Ping(b"1".to_vec()))).await.unwrap();
            loop {
                match next().await {
                    TransportEvent::Texts(batch) => frames += batch.len() as u64,
                    TransportEvent::Failed(f) => {
                        assert!(matches!(f.error, TransportError::Reset(_)), "{f:?}");
                        break;
                    }
                    TransportEvent::Ping(_) | TransportEvent::Pong(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(frames, SENT, "frames the exchange sent before its reset were lost");
        });
        smol::block_on(task);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_wss_urls_are_accepted() {
        assert_eq!(
            host_port("wss://stream.binance.com:9443/stream?streams=a").unwrap(),
            ("stream.binance.com".into(), 9443)
        );
        assert_eq!(host_port("wss://localhost/ws").unwrap(), ("localhost".into(), 443));
        assert!(matches!(host_port("ws://localhost:1/ws"), Err(TransportError::InvalidUrl(_))));
        assert!(matches!(host_port("not a url"), Err(TransportError::InvalidUrl(_))));
    }
}
