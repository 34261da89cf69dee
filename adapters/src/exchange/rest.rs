//! The exchange's REST server: Binance's `GET /api/v3/aggTrades`, `GET /api/v3/historicalTrades`,
//! `GET /api/v3/klines` and `GET /api/v3/depth` over
//! HTTPS on a second 127.0.0.1 port, with the same certificate as the streams and answered from the
//! same market state (one mutex), so a backfill returns exactly the trades the streams carried and a
//! depth snapshot is the book the diffs are changes of.
//!
//! Like Binance it counts request weight in a sliding minute (`X-MBX-USED-WEIGHT-1M` on every
//! answer, 429 with `Retry-After` past the limit), answers bad parameters with Binance's error
//! bodies (`{"code":-1121,"msg":"Invalid symbol."}`), and misbehaves on demand ([`RestFault`]).

use super::fault::RestFault;
use super::server::{Shared, lock};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response};
use smol::future::FutureExt;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Binance's weight of `GET /api/v3/aggTrades`.
pub const AGG_TRADES_WEIGHT: u32 = 4;
/// Binance's largest `limit` for `/api/v3/aggTrades` (default 500).
pub const AGG_TRADES_MAX_LIMIT: usize = 1000;
/// Binance's weight of `GET /api/v3/historicalTrades` (security type NONE: no API key).
pub const HISTORICAL_TRADES_WEIGHT: u32 = 25;
/// Binance's weight of `GET /api/v3/klines`.
pub const KLINES_WEIGHT: u32 = 2;
/// Binance's largest `limit` for `/api/v3/historicalTrades` and `/api/v3/klines` (default 500).
pub const MAX_LIMIT: usize = 1000;
/// Binance's largest `limit` for `/api/v3/depth` (larger ones are cut to it; default 100).
pub const DEPTH_MAX_LIMIT: usize = 5000;
const WINDOW: Duration = Duration::from_secs(60);

/// Binance's weight of `GET /api/v3/depth` for a `limit`: 1-100: 5, 101-500: 25, 501-1000: 50, 1001-5000: 250.
pub fn depth_weight(limit: usize) -> u32 {
    match limit {
        0..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
    }
}

/// Binance's `timeZone` of `/api/v3/klines` in ms east of UTC: hours and minutes (`-1:00`, `05:45`,
/// `+08:00`) or hours only (`0`, `8`, `+8`), "strictly [-12:00 to +14:00] inclusive" (rest-api.md).
/// `Err` with Binance's error body text when it is not one.
pub fn parse_time_zone(tz: &str) -> Result<i64, (i64, String)> {
    let illegal = || {
        (-1100, "Illegal characters found in parameter 'timeZone'; legal range is '[-12:00 to +14:00]'.".to_string())
    };
    let (sign, rest) = match tz.as_bytes().first() {
        Some(b'+') => (1, &tz[1..]),
        Some(b'-') => (-1, &tz[1..]),
        _ => (1, tz),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "00"));
    let digits =
        |t: &str, n: std::ops::RangeInclusive<usize>| n.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(illegal());
    }
    let (h, m): (i64, i64) = (h.parse().map_err(|_| illegal())?, m.parse().map_err(|_| illegal())?);
    let minutes = sign * (h * 60 + m);
    if m >= 60 || !(-12 * 60..=14 * 60).contains(&minutes) {
        return Err((-1130, "Data sent for parameter 'timeZone' is not valid.".to_string()));
    }
    Ok(minutes * 60_000)
}

/// `%2B08%3A00` -> `+08:00` (a query value as sent; `+` must be escaped there, as keel does).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One REST request the exchange answered (for tests: what was asked, when, and the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestRequestInfo {
    /// When it arrived, in ms since the exchange started (real time).
    pub at_ms: u64,
    /// Path and query, e.g. `/api/v3/depth?symbol=BTCUSDT&limit=1000`.
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
    /// `X-MBX-USED-WEIGHT-1M` after it.
    pub used_weight: u32,
}

/// REST state shared by every HTTPS connection.
#[derive(Debug, Default)]
pub(crate) struct RestState {
    pub(crate) faults: VecDeque<RestFault>,
    window: VecDeque<(Instant, u32)>,
    pub(crate) log: Vec<RestRequestInfo>,
}

impl RestState {
    fn used(&mut self, now: Instant) -> u32 {
        while self.window.front().is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW) {
            self.window.pop_front();
        }
        self.window.iter().map(|(_, w)| w).sum()
    }
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: smol::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                smol::spawn(serve(shared.clone(), tcp)).detach();
            }
            Err(e) => {
                tracing::warn!("exchange REST: accept failed: {e}");
                smol::Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(shared: Arc<Shared>, tcp: smol::net::TcpStream) {
    let stop = shared.shutdown_rx.clone();
    let work = async {
        let tls = match shared.acceptor.accept(tcp).await {
            Ok(t) => t,
            Err(e) => return tracing::debug!("exchange REST: TLS handshake failed: {e}"),
        };
        let svc_shared = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = svc_shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, &req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(smol_hyper::rt::SmolTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(smol_hyper::rt::FuturesIo::new(tls), service)
            .await;
        if let Err(e) = conn {
            tracing::debug!("exchange REST: connection ended: {e}");
        }
    };
    // Closed (never sent on) at shutdown: keep-alive connections end with the exchange.
    work.or(async {
        let _ = stop.recv().await;
    })
    .await;
}

/// An answer before it becomes a hyper response.
struct Answer {
    status: u16,
    body: String,
    retry_after: Option<u64>,
}

fn error(status: u16, code: i64, msg: &str) -> Answer {
    Answer { status, body: serde_json::json!({"code": code, "msg": msg}).to_string(), retry_after: None }
}

async fn handle<B>(shared: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let fault = lock(&shared.rest).faults.pop_front();
    if let Some(RestFault::Slow { delay }) = &fault {
        smol::Timer::after(*delay).await;
    }
    let params: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let weight = match req.uri().path() {
        "/api/v3/aggTrades" => AGG_TRADES_WEIGHT,
        "/api/v3/historicalTrades" => HISTORICAL_TRADES_WEIGHT,
        "/api/v3/klines" => KLINES_WEIGHT,
        "/api/v3/depth" => {
            let limit = params.iter().find(|(k, _)| k == "limit").and_then(|(_, v)| v.parse::<usize>().ok());
            depth_weight(limit.unwrap_or(100).min(DEPTH_MAX_LIMIT))
        }
        _ => 1,
    };
    let limit = shared.cfg.rest_weight_limit;
    let (answer, used) = {
        let mut rest = lock(&shared.rest);
        let used = rest.used(arrived);
        let answer = match fault {
            Some(RestFault::RateLimited { retry_after_secs }) => Some(Answer {
                retry_after: retry_after_secs,
                ..error(
                    429,
                    -1003,
                    "Too many requests; current limit of IP(127.0.0.1) is exceeded. Please use WebSocket Streams for live updates to avoid polling the API.",
                )
            }),
            Some(RestFault::Banned { retry_after_secs }) => Some(Answer {
                retry_after: retry_after_secs,
                ..error(
                    418,
                    -1003,
                    "Way too many requests; IP(127.0.0.1) banned. Please use WebSocket Streams for live updates to avoid bans.",
                )
            }),
            Some(RestFault::ServerError) => {
                Some(error(500, -1000, "An unknown error occurred while processing the request."))
            }
            Some(RestFault::Slow { .. }) | None => None,
        };
        match answer {
            Some(a) => (Some(a), used),
            None if used + weight > limit => {
                // Binance: past the per-minute weight, 429 with the seconds until the window allows it.
                let mut freed = used;
                let mut wait = WINDOW;
                for (t, w) in &rest.window {
                    freed -= w;
                    if freed + weight <= limit {
                        wait = WINDOW.saturating_sub(arrived.duration_since(*t));
                        break;
                    }
                }
                let msg = format!(
                    "Too much request weight used; current limit is {limit} request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
                );
                (
                    Some(Answer {
                        retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                        ..error(429, -1003, &msg)
                    }),
                    used,
                )
            }
            None => {
                rest.window.push_back((arrived, weight));
                (None, used + weight)
            }
        }
    };
    let answer = match answer {
        Some(a) => a,
        None => route(shared, req.method(), req.uri().path(), &params),
    };
    let at_ms = arrived.duration_since(shared.clock.start()).as_millis() as u64;
    lock(&shared.rest).log.push(RestRequestInfo { at_ms, path, status: answer.status, used_weight: used });
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(answer.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json;charset=UTF-8"));
    h.insert("x-mbx-used-weight-1m", used.into());
    if let Some(s) = answer.retry_after {
        h.insert(hyper::header::RETRY_AFTER, s.into());
    }
    resp
}

fn route(shared: &Shared, method: &Method, path: &str, params: &[(String, String)]) -> Answer {
    if method != Method::GET {
        return error(405, -1000, &format!("{method} {path}: only GET is served"));
    }
    let allowed: &[&str] = match path {
        "/api/v3/aggTrades" => &["symbol", "fromId", "limit"],
        "/api/v3/historicalTrades" => &["symbol", "fromId", "limit"],
        "/api/v3/klines" => &["symbol", "interval", "startTime", "endTime", "limit", "timeZone"],
        "/api/v3/depth" => &["symbol", "limit"],
        "/api/v3/ping" => &[],
        _ => {
            return error(
                404,
                -1000,
                &format!(
                    "unknown endpoint {path}: the embedded exchange serves /api/v3/aggTrades, /api/v3/historicalTrades, /api/v3/klines, /api/v3/depth and /api/v3/ping"
                ),
            );
        }
    };
    if let Some((k, _)) = params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return error(
            400,
            -1104,
            &format!(
                "Not all sent parameters were read; parameter '{k}' is not supported here (supported: {}).",
                allowed.join(", ")
            ),
        );
    }
    let get = |name: &str| params.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str());
    let number = |name: &str| -> Result<Option<u64>, Answer> {
        get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    error(
                        400,
                        -1100,
                        &format!("Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."),
                    )
                })
            })
            .transpose()
    };
    let ok = |body: String| Answer { status: 200, body, retry_after: None };
    if path == "/api/v3/ping" {
        return ok("{}".to_string());
    }
    let Some(symbol) = get("symbol") else {
        return error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.");
    };
    let limit = match number("limit") {
        Ok(l) => l,
        Err(a) => return a,
    };
    let market = lock(&shared.market);
    if path == "/api/v3/historicalTrades" {
        let from_id = match number("fromId") {
            Ok(f) => f,
            Err(a) => return a,
        };
        let limit = limit.unwrap_or(500) as usize;
        if limit == 0 || limit > MAX_LIMIT {
            return error(400, -1130, "Data sent for parameter 'limit' is not valid.");
        }
        return match market.historical_trades(symbol, from_id, limit) {
            None => error(400, -1121, "Invalid symbol."),
            Some(trades) => {
                let items: Vec<String> = trades.iter().map(|t| t.rest_json()).collect();
                ok(format!("[{}]", items.join(",")))
            }
        };
    }
    if path == "/api/v3/klines" {
        let Some(interval) = get("interval") else {
            return error(400, -1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.");
        };
        if super::market::parse_stream(&format!("x0@kline_{interval}")).is_err() {
            return error(400, -1120, "Invalid interval.");
        }
        // Binance: the intervals are those of the time zone (local midnight for 1d); startTime and
        // endTime stay UTC.
        let offset_ms = match get("timeZone").map(percent_decode).map(|tz| parse_time_zone(&tz)) {
            None => 0,
            Some(Ok(ms)) => ms,
            Some(Err((code, msg))) => return error(400, code, &msg),
        };
        let (start, end) = match (number("startTime"), number("endTime")) {
            (Ok(s), Ok(e)) => (s, e),
            (Err(a), _) | (_, Err(a)) => return a,
        };
        if let (Some(s), Some(e)) = (start, end)
            && s > e
        {
            return error(400, -1023, "Start time is greater than end time.");
        }
        let limit = limit.unwrap_or(500) as usize;
        if limit == 0 || limit > MAX_LIMIT {
            return error(400, -1130, "Data sent for parameter 'limit' is not valid.");
        }
        return match market.klines(symbol, interval, offset_ms, start, end, limit) {
            None => error(400, -1121, "Invalid symbol."),
            Some(items) => ok(format!("[{}]", items.join(","))),
        };
    }
    if path == "/api/v3/aggTrades" {
        let from_id = match number("fromId") {
            Ok(f) => f,
            Err(a) => return a,
        };
        let limit = limit.unwrap_or(500) as usize;
        if limit == 0 || limit > AGG_TRADES_MAX_LIMIT {
            return error(400, -1130, "Data sent for parameter 'limit' is not valid.");
        }
        match market.agg_trades(symbol, from_id, limit) {
            None => error(400, -1121, "Invalid symbol."),
            Some(trades) => {
                let items: Vec<String> = trades.iter().map(|t| t.rest_json()).collect();
                ok(format!("[{}]", items.join(",")))
            }
        }
    } else {
        let limit = limit.unwrap_or(100) as usize;
        if limit == 0 {
            return error(400, -1130, "Data sent for parameter 'limit' is not valid.");
        }
        match market.depth(symbol, limit.min(DEPTH_MAX_LIMIT)) {
            None => error(400, -1121, "Invalid symbol."),
            Some(snap) => ok(snap.to_json()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zones_are_binances_forms_within_minus_12_and_plus_14() {
        const M: i64 = 60_000;
        let ok = [
            ("0", 0),
            ("8", 8 * 60 * M),
            ("+8", 8 * 60 * M),
            ("+08:00", 8 * 60 * M),
            ("-1:00", -60 * M),
            ("05:45", 345 * M),
            ("-12:00", -720 * M),
            ("+14:00", 840 * M),
        ];
        for (tz, ms) in ok {
            assert_eq!(parse_time_zone(tz), Ok(ms), "{tz}");
        }
        for tz in ["+14:01", "-12:30", "15", "08:60"] {
            assert_eq!(parse_time_zone(tz).map_err(|e| e.0), Err(-1130), "{tz}");
        }
        for tz in ["", "+", "8:5", "abc", "+08:00:00", "123", "UTC", "+8h"] {
            let e = parse_time_zone(tz).unwrap_err();
            assert_eq!(e.0, -1100, "{tz}");
            assert!(e.1.contains("'timeZone'") && e.1.contains("[-12:00 to +14:00]"), "{}", e.1);
        }
        assert_eq!(percent_decode("%2B08%3A00"), "+08:00");
        assert_eq!(percent_decode("-1:00"), "-1:00");
        assert_eq!(percent_decode("%zz%2"), "%zz%2");
    }
}
