//! Redaction of secrets in URLs before they reach logs, error messages and stats.
//!
//! Binance user-data streams put a listenKey in the path (`/ws/<listenKey>`), signed requests put
//! `signature` and an API key in the query, and a URL may carry `user:password@`. keel shows URLs
//! in several places (the start line, `opening`, transport failures, config errors); each goes
//! through [`redact_url`] (one URL) or [`redact_text`] (URLs inside a message), which keep what an
//! operator needs to debug (scheme, host, port, the known endpoint segments and stream names) and
//! replace everything else with [`REDACTED`].
//!
//! The rule is an allow-list: a path segment survives only if it is a known endpoint segment or a
//! stream name (it contains `@`, like `btcusdt@aggTrade`), so a secret in an unexpected place is
//! hidden too. Query values survive unless their key looks like a credential.

use crate::classify::TransportError;

/// What a redacted part is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Path segments that carry no secret: Binance stream endpoints, the REST market-data endpoints
/// keel calls and their prefixes, and keel's own `/metrics`.
const KNOWN_SEGMENTS: [&str; 16] = [
    "ws",
    "stream",
    "ws-api",
    "api",
    "v1",
    "v3",
    "market",
    "aggTrades",
    "depth",
    "trades",
    "klines",
    "exchangeInfo",
    "ping",
    "time",
    "userDataStream",
    "metrics",
];

/// Query keys (compared in lower case, as substrings) whose values are credentials.
const SECRET_KEYS: [&str; 7] = ["key", "signature", "secret", "token", "password", "passwd", "auth"];

/// What starts a URL in a message, and where in the marker the URL begins: the schemes, and the
/// request line of an HTTP/WebSocket handshake as libraries log it (`GET /ws/<key> HTTP/1.1`).
const MARKERS: [(&str, usize); 5] = [("wss://", 0), ("ws://", 0), ("https://", 0), ("http://", 0), ("get /", 4)];

/// A Binance stream name (`btcusdt@aggTrade`, `!miniTicker@arr`, `btcusdt@depth@100ms`).
fn is_stream_name(seg: &str) -> bool {
    seg.contains('@') && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '_' | '!' | '.' | '-'))
}

fn keep_segment(seg: &str) -> bool {
    seg.is_empty() || KNOWN_SEGMENTS.contains(&seg) || is_stream_name(seg)
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| k.contains(s))
}

/// `url` with its userinfo, unknown path segments, credential-like query values and fragment
/// replaced by [`REDACTED`]; scheme, host, port, endpoint segments and stream names are kept.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(i) => {
            out.push_str(REDACTED);
            out.push_str(&authority[i..]);
        }
        None => out.push_str(authority),
    }
    let segments: Vec<&str> =
        path.split('/').skip(1).map(|seg| if keep_segment(seg) { seg } else { REDACTED }).collect();
    if !path.is_empty() {
        out.push('/');
        out.push_str(&segments.join("/"));
    }
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_key(k) => format!("{k}={REDACTED}"),
                Some((k, v)) if k == "streams" => {
                    let names: Vec<&str> = v.split('/').map(|s| if keep_segment(s) { s } else { REDACTED }).collect();
                    format!("{k}={}", names.join("/"))
                }
                Some((k, v)) => format!("{k}={v}"),
                // A bare value (`?abc123`) may be a key on its own.
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if fragment.is_some_and(|f| !f.is_empty()) {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

/// `text` with every `ws://`, `wss://`, `http://` and `https://` URL in it, and the target of a
/// `GET /...` request line, passed through [`redact_url`]. A URL ends at whitespace, a control
/// character, a quote, `<`, `>`, `(`, `)` or `,`; trailing `:`, `.`, `;`, `!` and `?` are left
/// outside it.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(start) = MARKERS.iter().filter_map(|(m, at)| lower.find(m).map(|i| i + at)).min() else { break };
        out.push_str(&rest[..start]);
        let url_len = rest[start..]
            .find(|c: char| {
                c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>' | '(' | ')' | ',' | '`')
            })
            .unwrap_or(rest.len() - start);
        // Sentence punctuation after a URL (`at wss://h/x: refused`) is not part of it.
        let url_len = rest[start..start + url_len].trim_end_matches([':', '.', ';', '!', '?']).len();
        out.push_str(&redact_url(&rest[start..start + url_len]));
        rest = &rest[start + url_len..];
    }
    out.push_str(rest);
    out
}

/// `error` with [`redact_text`] applied to every message it carries (transport errors quote URLs).
pub fn redact_error(error: &TransportError) -> TransportError {
    use TransportError as E;
    let r = |s: &String| redact_text(s);
    match error {
        E::Dns(s) => E::Dns(r(s)),
        E::Refused(s) => E::Refused(r(s)),
        E::Reset(s) => E::Reset(r(s)),
        E::Timeout(s) => E::Timeout(r(s)),
        E::TlsHandshake(s) => E::TlsHandshake(r(s)),
        E::CertificateRejected(s) => E::CertificateRejected(r(s)),
        E::UnexpectedEof(s) => E::UnexpectedEof(r(s)),
        E::BadRecordMac(s) => E::BadRecordMac(r(s)),
        E::Protocol(s) => E::Protocol(r(s)),
        E::ServerClose { code, reason } => E::ServerClose { code: *code, reason: r(reason) },
        E::InvalidUrl(s) => E::InvalidUrl(r(s)),
        E::Io(s) => E::Io(r(s)),
        E::HttpStatus { .. } | E::MessageTooLarge { .. } => error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6381qwv3a0dc4sd9aa8b";

    #[test]
    fn urls_keep_what_helps_and_hide_what_may_be_secret() {
        let table = [
            // (input, redacted)
            ("wss://stream.binance.com:9443", "wss://stream.binance.com:9443"),
            (
                "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m",
                "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m",
            ),
            (
                "wss://stream.binance.com:9443/ws/btcusdt@depth@100ms",
                "wss://stream.binance.com:9443/ws/btcusdt@depth@100ms",
            ),
            (&format!("wss://stream.binance.com:9443/ws/{KEY}"), "wss://stream.binance.com:9443/ws/<redacted>"),
            (
                &format!("wss://h:1/ws/{KEY}/stream?streams=btcusdt@trade"),
                "wss://h:1/ws/<redacted>/stream?streams=btcusdt@trade",
            ),
            (
                &format!("https://api.binance.com/api/v3/order?symbol=BTCUSDT&timestamp=1&signature={KEY}"),
                "https://api.binance.com/api/v3/<redacted>?symbol=BTCUSDT&timestamp=1&signature=<redacted>",
            ),
            ("wss://h/ws?listenKey=abc&apiKey=def&x=1", "wss://h/ws?listenKey=<redacted>&apiKey=<redacted>&x=1"),
            ("wss://user:pass@h:9443/ws", "wss://<redacted>@h:9443/ws"),
            ("wss://h/stream?streams=btcusdt@trade/sekrit", "wss://h/stream?streams=btcusdt@trade/<redacted>"),
            ("wss://h/ws?abc123", "wss://h/ws?<redacted>"),
            ("wss://h/ws#frag", "wss://h/ws#<redacted>"),
            ("wss://h/", "wss://h/"),
            ("http://127.0.0.1:9898/metrics", "http://127.0.0.1:9898/metrics"),
            (
                "https://api.binance.com/api/v3/aggTrades?symbol=BTCUSDT&fromId=5&limit=1000",
                "https://api.binance.com/api/v3/aggTrades?symbol=BTCUSDT&fromId=5&limit=1000",
            ),
            ("https://h/api/v3/userDataStream?listenKey=abc", "https://h/api/v3/userDataStream?listenKey=<redacted>"),
        ];
        for (input, expected) in table {
            assert_eq!(redact_url(input), expected, "{input}");
        }
    }

    #[test]
    fn urls_inside_messages_are_redacted_and_the_rest_is_kept() {
        let text = format!(
            "WebSocket upgrade at wss://h:1/ws/{KEY}/stream?streams=a@trade: HTTP error: 404 (see \"ws://x/{KEY}\")"
        );
        let got = redact_text(&text);
        assert!(!got.contains(KEY), "{got}");
        assert_eq!(
            got,
            "WebSocket upgrade at wss://h:1/ws/<redacted>/stream?streams=a@trade: HTTP error: 404 (see \"ws://x/<redacted>\")"
        );
        assert_eq!(redact_text("no url here"), "no url here");
        let request = format!("Request: \"GET /ws/{KEY}?signature=x HTTP/1.1\\r\\nHost: h:1\\r\\n\"");
        assert_eq!(
            redact_text(&request),
            "Request: \"GET /ws/<redacted>?signature=<redacted> HTTP/1.1\\r\\nHost: h:1\\r\\n\""
        );
        // A terminal colour code after a URL is not part of it.
        assert_eq!(redact_text("url=wss://h/ws/abc\x1b[0m x"), "url=wss://h/ws/<redacted>\x1b[0m x");
        // Idempotent: redacting twice changes nothing more.
        assert_eq!(redact_text(&got), got);
    }

    #[test]
    fn errors_lose_the_secret_but_keep_their_kind() {
        let e = TransportError::InvalidUrl(format!("ws://h/ws/{KEY}: only wss:// is supported"));
        assert_eq!(
            redact_error(&e),
            TransportError::InvalidUrl("ws://h/ws/<redacted>: only wss:// is supported".into())
        );
        let e = TransportError::HttpStatus { status: 429, retry_after: None };
        assert_eq!(redact_error(&e), e);
    }
}
