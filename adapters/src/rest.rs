//! The REST client: `GET` over HTTPS for the core's backfill and book snapshots (issue 9).
//!
//! hyper 1's HTTP/1 client connection over native-tls ([`crate::tls`]), driven by smol through
//! smol-hyper, with the SAME TLS settings as the stream (`tls.ca_file`, `tls.min_version`,
//! `tls.handshake_timeout_ms`: the connector is built once by [`TransportSettings`] and shared).
//! One connection is kept alive and reused; a closed or broken one is replaced on the next request
//! (a GET on a reused connection that breaks before any answer is retried once on a fresh one: the
//! server may have closed it while idle).
//! Every request has a deadline. The client decides nothing: it returns what it saw (status,
//! `Retry-After`, body, or the error as text) and the core classifies it. It never panics.

use crate::stream::transport::{SettingsError, TransportSettings, chain};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use keel_core::config::Config;
use keel_core::rest::{RequestId, RestRequest, RestResponse};
use smol::future::FutureExt;
use std::future::Future;
use std::time::Duration;

/// Bodies larger than this are refused (a 5000-level depth snapshot is about 0.3 MB).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default deadline of one request (connect + TLS + answer), when not given.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` in seconds (Binance sends it with 429 and 418), if present and numeric.
    pub retry_after: Option<Duration>,
    /// `X-MBX-USED-WEIGHT-1M`, if present.
    pub used_weight: Option<u32>,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestClientError {
    /// `rest.url` / `--rest-url` is not an `https://host[:port]` URL.
    #[error("invalid REST URL {url:?} (rest.url / --rest-url): {why}; expected https://host[:port]")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The TLS settings cannot be used.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// DNS or TCP connect failed.
    #[error("cannot connect to {addr}: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// The error chain.
        why: String,
    },
    /// The server's certificate was not trusted (never retried blindly, never bypassed).
    #[error(
        "TLS: the certificate of {addr} was rejected: {why}; for a private or test endpoint pass its CA with --ca-file or tls.ca_file"
    )]
    Certificate {
        /// host:port.
        addr: String,
        /// The TLS library's reason.
        why: String,
    },
    /// Another TLS handshake failure.
    #[error("TLS handshake with {addr} failed: {why}")]
    Tls {
        /// host:port.
        addr: String,
        /// The error chain.
        why: String,
    },
    /// A deadline passed.
    #[error("{what} took longer than {after:?}")]
    Timeout {
        /// What was being done.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// The HTTP exchange failed (connection closed, malformed answer, body too large).
    #[error("HTTP GET {path} failed: {why}")]
    Http {
        /// The path asked for.
        path: String,
        /// The error chain.
        why: String,
    },
}

/// A kept-alive HTTPS connection to one REST base URL.
pub struct RestClient {
    base: String,
    host: String,
    port: u16,
    settings: TransportSettings,
    handshake_timeout: Duration,
    request_timeout: Duration,
    conn: Option<Conn>,
    connects: u64,
}

struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    /// Drives the connection; dropping it closes the socket.
    _task: smol::Task<()>,
}

/// Host and port of an `https://` URL (no path, query or user info).
pub fn parse_base(url: &str) -> Result<(String, u16), RestClientError> {
    // The URL may carry credentials (userinfo): only its redacted form goes into errors and logs.
    let bad = |why: &str| RestClientError::InvalidUrl { url: keel_core::redact::redact_url(url), why: why.to_string() };
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("only https:// is supported (TLS is mandatory)"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(bad("the base URL takes no path or query (keel appends /api/v3/...)"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

async fn deadline<T>(
    after: Duration,
    what: impl Into<String>,
    fut: impl Future<Output = Result<T, RestClientError>>,
) -> Result<T, RestClientError> {
    let what = what.into();
    fut.or(async move {
        smol::Timer::after(after).await;
        Err(RestClientError::Timeout { what, after })
    })
    .await
}

impl RestClient {
    /// A client for `base_url` (`https://host[:port]`) with the stream's TLS settings and deadlines.
    pub fn new(
        base_url: &str,
        settings: TransportSettings,
        handshake_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<RestClient, RestClientError> {
        let (host, port) = parse_base(base_url)?;
        Ok(RestClient {
            base: keel_core::redact::redact_url(base_url.trim_end_matches('/')),
            host,
            port,
            settings,
            handshake_timeout,
            request_timeout,
            conn: None,
            connects: 0,
        })
    }

    /// A client for `base_url` with the TLS settings of `config` (`tls.*`) and the default request deadline.
    pub fn from_config(base_url: &str, config: &Config) -> Result<RestClient, RestClientError> {
        let settings = TransportSettings::from_config(config)?;
        let handshake = Duration::from_millis(config.tls.handshake_timeout_ms);
        RestClient::new(base_url, settings, handshake, DEFAULT_REQUEST_TIMEOUT)
    }

    /// The base URL (redacted: for logs).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// How many connections were opened so far (1 while the first one stays alive).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    async fn connect(&mut self) -> Result<(), RestClientError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = deadline(self.handshake_timeout, format!("TCP connect to {addr}"), async {
            smol::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| RestClientError::Connect { addr: addr.clone(), why: chain(&e) })
        })
        .await?;
        let _ = tcp.set_nodelay(true);
        let connector = self.settings.tls_connector();
        let tls = deadline(self.handshake_timeout, format!("TLS handshake with {addr}"), async {
            connector.connect(self.host.as_str(), tcp).await.map_err(|e| {
                let why = chain(&e);
                let l = why.to_ascii_lowercase();
                if l.contains("certificate")
                    && (l.contains("verify") || l.contains("mismatch") || l.contains("expired"))
                {
                    RestClientError::Certificate { addr: addr.clone(), why }
                } else {
                    RestClientError::Tls { addr: addr.clone(), why }
                }
            })
        })
        .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(tls))
            .await
            .map_err(|e| RestClientError::Http { path: String::new(), why: chain(&e) })?;
        let task = smol::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("rest: connection ended: {}", chain(&e));
            }
        });
        self.connects += 1;
        tracing::debug!(addr = %addr, connects = self.connects, "rest: connected");
        self.conn = Some(Conn { sender, _task: task });
        Ok(())
    }

    /// `GET base_url + path` (path and query, e.g. `/api/v3/depth?symbol=BTCUSDT&limit=1000`) within
    /// the request deadline.
    pub async fn get(&mut self, path: &str) -> Result<Reply, RestClientError> {
        let timeout = self.request_timeout;
        let what = format!("GET {}{path}", self.base);
        deadline(timeout, what, self.get_inner(path)).await.inspect_err(|_| {
            // A request cut off mid-way leaves the connection in an unknown state: start afresh.
            self.conn = None;
        })
    }

    async fn get_inner(&mut self, path: &str) -> Result<Reply, RestClientError> {
        let reused = self.conn.as_ref().is_some_and(|c| !c.sender.is_closed());
        match self.try_get(path).await {
            Err(RestClientError::Http { why, .. }) if reused => {
                tracing::debug!("rest: kept-alive connection failed ({why}); retrying {path} on a new one");
                self.conn = None;
                self.try_get(path).await
            }
            other => other,
        }
    }

    async fn try_get(&mut self, path: &str) -> Result<Reply, RestClientError> {
        let http_err =
            |e: &(dyn std::error::Error + 'static)| RestClientError::Http { path: path.to_string(), why: chain(e) };
        if self.conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
            self.conn = None;
            self.connect().await?;
        }
        let Some(sender) = self.conn.as_mut().map(|c| &mut c.sender) else {
            return Err(RestClientError::Http { path: path.to_string(), why: "no connection".into() });
        };
        if let Err(e) = sender.ready().await {
            self.conn = None;
            return Err(http_err(&e));
        }
        let authority = if self.port == 443 { self.host.clone() } else { format!("{}:{}", self.host, self.port) };
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, concat!("keel/", env!("CARGO_PKG_VERSION")))
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| http_err(&e))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(http_err(&e));
            }
        };
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
        let used_weight = header("x-mbx-used-weight-1m").and_then(|v| v.parse::<u32>().ok());
        let body = match Limited::new(resp.into_body(), MAX_BODY_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.conn = None;
                return Err(RestClientError::Http { path: path.to_string(), why: e.to_string() });
            }
        };
        Ok(Reply { status, retry_after, used_weight, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

impl RestClient {
    /// Makes the core's request and returns what was seen, as the core wants it (never an error:
    /// a failure is [`RestResponse::Failed`] with the reason as text).
    pub async fn send(&mut self, request: &RestRequest) -> RestResponse {
        match self.get(&request.path()).await {
            Ok(r) => RestResponse::Http { status: r.status, retry_after: r.retry_after, body: r.body },
            Err(e) => RestResponse::Failed { error: e.to_string() },
        }
    }
}

/// Runs `client` as a task: each `(id, request)` received is sent (one at a time, on the one kept
/// connection) and `(id, response)` goes back, until either channel closes.
pub async fn worker(
    mut client: RestClient,
    requests: smol::channel::Receiver<(RequestId, RestRequest)>,
    responses: smol::channel::Sender<(RequestId, RestResponse)>,
) {
    while let Ok((id, request)) = requests.recv().await {
        let started = std::time::Instant::now();
        let response = client.send(&request).await;
        match &response {
            RestResponse::Http { status, retry_after, body } => tracing::debug!(
                request = %id,
                path = %request.path(),
                status,
                retry_after_s = retry_after.map(|d| d.as_secs()),
                bytes = body.len(),
                ms = started.elapsed().as_millis() as u64,
                "rest: answered"
            ),
            RestResponse::Failed { error } => {
                tracing::warn!(request = %id, path = %request.path(), "rest: request failed: {error}")
            }
        }
        if responses.send((id, response)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_base_urls() {
        assert_eq!(parse_base("https://api.binance.com").unwrap(), ("api.binance.com".into(), 443));
        assert_eq!(parse_base("https://localhost:9444/").unwrap(), ("localhost".into(), 9444));
        for (bad, why) in [
            ("http://api.binance.com", "only https://"),
            ("https://api.binance.com/api/v3", "no path"),
            ("not a url", "expected https://"),
        ] {
            let e = parse_base(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("rest.url"), "{bad}: {e}");
        }
    }
}
