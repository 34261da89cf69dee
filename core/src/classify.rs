//! What went wrong with a transport, and what to do about it.
//!
//! Adapters map every IO error onto [`TransportError`] (keeping the text of the source chain);
//! [`classify_error`] turns it into the one decision the connection needs: retry with backoff,
//! wait for a rate limit, or stop. The diagnosis is a line a user can act on.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// Rate-limit waits are at least this long when the server names no time: Binance bans for
/// minutes after a 429, and reconnecting sooner extends the ban.
pub const RATE_LIMIT_FLOOR: Duration = Duration::from_secs(60);

/// Everything that can go wrong while connecting or on an open transport.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum TransportError {
    /// The host name did not resolve.
    #[error("DNS lookup failed: {0}")]
    Dns(String),
    /// Nothing listens at the address, or a firewall refused.
    #[error("connection refused: {0}")]
    Refused(String),
    /// The peer or a middlebox reset the TCP connection.
    #[error("connection reset: {0}")]
    Reset(String),
    /// Connect, handshake or upgrade did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The TLS handshake failed for a reason other than the certificate.
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),
    /// The server's certificate or host name did not verify.
    #[error("server certificate rejected: {0}")]
    CertificateRejected(String),
    /// The peer closed the TCP stream without a TLS close_notify ("EOF occurred in violation of protocol").
    #[error("unexpected EOF (TLS stream ended without close_notify): {0}")]
    UnexpectedEof(String),
    /// A TLS record failed its integrity check ("bad record MAC"): corruption on the path.
    #[error("TLS bad record MAC: {0}")]
    BadRecordMac(String),
    /// The WebSocket protocol was violated (bad frame, bad upgrade response...).
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
    /// The server sent a close frame.
    #[error("server closed with code {code}: {reason}")]
    ServerClose {
        /// RFC 6455 close code (1000 normal, 1001 going away, 1006 abnormal, 1008 policy).
        code: u16,
        /// The close reason, possibly empty.
        reason: String,
    },
    /// The WebSocket upgrade was answered with this HTTP status.
    #[error("HTTP {status} on WebSocket upgrade")]
    HttpStatus {
        /// The status code.
        status: u16,
        /// The server's Retry-After, when it sent one.
        retry_after: Option<Duration>,
    },
    /// A message exceeded the configured maximum size.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Size of the offending message (or the part read before giving up).
        size: u64,
        /// `stream.max_message_bytes`.
        max: u64,
    },
    /// The URL cannot be connected to at all.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Any other IO error.
    #[error("I/O error: {0}")]
    Io(String),
}

/// What the connection does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Retry after the backoff delay.
    Transient,
    /// Wait at least this long before the next attempt (the server asked, or a floor).
    RateLimited {
        /// The minimum wait.
        wait: Duration,
    },
    /// Retrying cannot help: stop and tell the user.
    Fatal,
}

impl ErrorClass {
    /// A short stable name for logs, stats and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::RateLimited { .. } => "rate_limited",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// The class of an error and a one-line diagnosis a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    /// What to do.
    pub class: ErrorClass,
    /// Why it probably happened and what to change, in one line.
    pub diagnosis: String,
}

/// Classifies a transport error with the default rate-limit floor ([`RATE_LIMIT_FLOOR`]).
pub fn classify_error(error: &TransportError) -> Classified {
    classify_error_with_floor(error, RATE_LIMIT_FLOOR)
}

/// Classifies a transport error; `floor` is the wait after a rate-limit signal that names none
/// (`reconnect.rate_limit_floor_ms`), and a ban (HTTP 418) waits at least five times it.
pub fn classify_error_with_floor(error: &TransportError, floor: Duration) -> Classified {
    use TransportError as E;
    let (class, diagnosis): (ErrorClass, String) = match error {
        E::Dns(_) => (ErrorClass::Transient, "DNS lookup failed: check the host name in stream.url and the resolver; retrying with backoff".into()),
        E::Refused(_) => (ErrorClass::Transient, "connection refused: the endpoint is down or a firewall blocks the port; retrying with backoff".into()),
        E::Reset(_) => (ErrorClass::Transient, "connection reset by the peer or a middlebox (proxy, NAT); retrying with backoff".into()),
        E::Timeout(text) => (ErrorClass::Transient, timeout_diagnosis(text).into()),
        // Not retried as fatal: a proxy or a port being switched over may answer in clear for a while.
        E::TlsHandshake(text) if answered_without_tls(text) => (ErrorClass::Transient, "the server did not answer TLS: the port may serve plain HTTP (ws://), or it is the wrong port; check the port in --url / stream.url; retrying with backoff".into()),
        E::TlsHandshake(_) => (ErrorClass::Transient, "TLS handshake failed: a proxy may intercept TLS, or the server refused our TLS version; retrying with backoff".into()),
        // The reason is in the error itself, which every message prints next to this.
        E::CertificateRejected(why) => {
            (ErrorClass::Fatal, format!("keel never disables verification: {}", certificate_advice(why, None)))
        }
        E::UnexpectedEof(_) => (ErrorClass::Transient, "TLS stream ended without close_notify (\"EOF occurred in violation of protocol\"): the server or a middlebox dropped the connection; retrying with backoff".into()),
        E::BadRecordMac(_) => (ErrorClass::Transient, "TLS bad record MAC: data was corrupted in transit (faulty NIC, proxy or middlebox); retrying on a fresh connection".into()),
        E::Protocol(_) => (ErrorClass::Transient, "WebSocket protocol error: the frame stream is corrupt; retrying on a fresh connection".into()),
        E::ServerClose { code: 1008, .. } => (ErrorClass::RateLimited { wait: floor }, "server closed with 1008 (policy violation / too many requests): too many messages or connections; waiting before reconnecting, lower the request rate".into()),
        E::ServerClose { code: 1000 | 1001, .. } => (ErrorClass::Transient, "server closed the connection (going away or 24 h limit); reconnecting".into()),
        E::ServerClose { code, .. } => (ErrorClass::Transient, format!("server closed with code {code}; reconnecting with backoff")),
        E::HttpStatus { status: 429, retry_after } => (
            ErrorClass::RateLimited { wait: retry_after.unwrap_or(floor).max(Duration::from_millis(1)) },
            "HTTP 429: Binance's connection or request limit was hit (300 connections per 5 minutes per IP); waiting as asked before reconnecting".into(),
        ),
        E::HttpStatus { status: 418, retry_after } => (
            ErrorClass::RateLimited { wait: retry_after.unwrap_or(floor * 5).max(floor) },
            "HTTP 418: this IP is banned for ignoring 429s; waiting the ban out (reconnecting sooner extends it)".into(),
        ),
        E::HttpStatus { status: 403, .. } => (ErrorClass::Fatal, "HTTP 403: the endpoint refuses this client (WAF rule or blocked IP); retrying will not help".into()),
        E::HttpStatus { status: 451, .. } => (ErrorClass::Fatal, "HTTP 451: the service is unavailable from this location for legal reasons; use an endpoint allowed in your region".into()),
        E::HttpStatus { status: 404 | 400, .. } => (ErrorClass::Fatal, "HTTP 4xx on upgrade: the URL or stream names are wrong; check stream.url and stream.streams".into()),
        E::HttpStatus { status, .. } if *status >= 500 => (ErrorClass::Transient, format!("HTTP {status}: the server is failing; retrying with backoff")),
        E::HttpStatus { status, .. } => (ErrorClass::Transient, format!("HTTP {status} on upgrade; retrying with backoff")),
        E::MessageTooLarge { max, .. } => (ErrorClass::Transient, format!("a message exceeded {max} bytes: raise stream.max_message_bytes if the stream is legitimately large; reconnecting")),
        E::InvalidUrl(_) => (ErrorClass::Fatal, "the URL is invalid: fix stream.url (wss://host:port)".into()),
        E::Io(_) => (ErrorClass::Transient, "I/O error on the transport; retrying with backoff".into()),
    };
    Classified { class, diagnosis }
}

/// Whether a TLS library's error text says the peer answered with something that is not TLS (a
/// plain HTTP server, an SSH banner...): OpenSSL's "wrong version number" (its record layer read
/// "HTTP/1.1" as a version), "packet length too long", "unknown protocol", "http request".
pub fn answered_without_tls(text: &str) -> bool {
    let l = text.to_ascii_lowercase();
    ["wrong version number", "packet length too long", "unknown protocol", "http request"].iter().any(|s| l.contains(s))
}

/// The limits whose expiry the core reports as [`TransportError::Timeout`]. The core names the key
/// in the error text, so that the diagnosis can give the advice that fits the limit: a silent
/// connection is not fixed by a longer handshake timeout.
pub(crate) const HANDSHAKE_TIMEOUT_KEY: &str = "tls.handshake_timeout_ms";
/// See [`HANDSHAKE_TIMEOUT_KEY`].
pub(crate) const PONG_TIMEOUT_KEY: &str = "heartbeat.pong_timeout_ms";
/// See [`HANDSHAKE_TIMEOUT_KEY`].
pub(crate) const STALL_KEY: &str = "stream.stall_after_ms";

/// The diagnosis of a timeout, by the limit its text names; a timeout from the operating system
/// (a TCP connect or keepalive timing out) names none.
fn timeout_diagnosis(text: &str) -> &'static str {
    if text.contains(PONG_TIMEOUT_KEY) {
        "heartbeat timeout: the connection died silently (neither data nor a pong came back; a NAT or proxy dropped it, or the server hung); reconnecting with backoff"
    } else if text.contains(STALL_KEY) {
        "stream stalled: the connection answers but a subscribed stream stopped, even after resubscribing; reconnecting; raise stream.stall_after_ms for a stream that is quiet by nature"
    } else if text.contains(HANDSHAKE_TIMEOUT_KEY) {
        "timed out connecting: the network is slow or the server does not answer; retrying with backoff; raise tls.handshake_timeout_ms if this persists on a slow link"
    } else {
        "timed out: the network is slow or the server does not answer; retrying with backoff"
    }
}

/// What to do about a rejected server certificate, from the TLS library's reason `why` and the
/// extra CA file the run trusted (`--ca-file` / `tls.ca_file`), if any. Advising "pass its CA with
/// --ca-file" to someone who just did is no help: with a file, an unknown issuer means that file
/// holds another CA.
pub fn certificate_advice(why: &str, ca_file: Option<&str>) -> String {
    let l = why.to_ascii_lowercase();
    let unknown_issuer =
        ["unable to get local issuer", "self-signed", "self signed", "unknown ca", "unable to get issuer"]
            .iter()
            .any(|s| l.contains(s));
    match (unknown_issuer, ca_file) {
        (true, Some(file)) => format!(
            "the CA in {file} (--ca-file / tls.ca_file) did not sign this server's certificate: pass the CA that \
             issued it (the embedded exchange writes a new ca.pem at every start)"
        ),
        // Without the run's settings (the core's diagnosis), a CA file may or may not have been given.
        (true, None) => {
            "no trusted CA signed it: for a private or test endpoint pass the CA that did with --ca-file / \
                         tls.ca_file (if one was passed, it holds another CA)"
                .to_string()
        }
        (false, _) if l.contains("mismatch") => {
            "the certificate does not name the host in --url / stream.url: connect by the name it was issued for".into()
        }
        (false, _) if l.contains("expired") || l.contains("not yet valid") => {
            "the certificate is outside its validity period (or this machine's clock is wrong)".into()
        }
        (false, _) => "for a private or test endpoint pass its CA with --ca-file / tls.ca_file".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(e: TransportError) -> ErrorClass {
        classify_error(&e).class
    }

    /// A timeout from the operating system names no keel limit, so the advice names none either.
    #[test]
    fn a_timeout_is_advised_by_the_limit_it_names() {
        let diagnosis = |text: &str| classify_error(&TransportError::Timeout(text.into())).diagnosis;
        assert!(diagnosis("Connection timed out (os error 110)").ends_with("retrying with backoff"));
        assert!(diagnosis("... (tls.handshake_timeout_ms)").contains("raise tls.handshake_timeout_ms"));
        assert!(diagnosis("... (heartbeat.pong_timeout_ms)").starts_with("heartbeat timeout"));
        assert!(diagnosis("... (stream.stall_after_ms)").starts_with("stream stalled"));
    }

    #[test]
    fn table_of_classes() {
        let s = || "x".to_string();
        let table: Vec<(TransportError, ErrorClass)> = vec![
            (TransportError::Dns(s()), ErrorClass::Transient),
            (TransportError::Refused(s()), ErrorClass::Transient),
            (TransportError::Reset(s()), ErrorClass::Transient),
            (TransportError::Timeout(s()), ErrorClass::Transient),
            (TransportError::TlsHandshake(s()), ErrorClass::Transient),
            (TransportError::CertificateRejected(s()), ErrorClass::Fatal),
            (TransportError::UnexpectedEof(s()), ErrorClass::Transient),
            (TransportError::BadRecordMac(s()), ErrorClass::Transient),
            (TransportError::Protocol(s()), ErrorClass::Transient),
            (TransportError::ServerClose { code: 1000, reason: s() }, ErrorClass::Transient),
            (TransportError::ServerClose { code: 1001, reason: s() }, ErrorClass::Transient),
            (TransportError::ServerClose { code: 1006, reason: s() }, ErrorClass::Transient),
            (
                TransportError::ServerClose { code: 1008, reason: s() },
                ErrorClass::RateLimited { wait: RATE_LIMIT_FLOOR },
            ),
            (
                TransportError::HttpStatus { status: 429, retry_after: Some(Duration::from_secs(7)) },
                ErrorClass::RateLimited { wait: Duration::from_secs(7) },
            ),
            (
                TransportError::HttpStatus { status: 429, retry_after: None },
                ErrorClass::RateLimited { wait: RATE_LIMIT_FLOOR },
            ),
            (
                TransportError::HttpStatus { status: 418, retry_after: Some(Duration::from_secs(600)) },
                ErrorClass::RateLimited { wait: Duration::from_secs(600) },
            ),
            (
                TransportError::HttpStatus { status: 418, retry_after: None },
                ErrorClass::RateLimited { wait: RATE_LIMIT_FLOOR * 5 },
            ),
            (TransportError::HttpStatus { status: 403, retry_after: None }, ErrorClass::Fatal),
            (TransportError::HttpStatus { status: 451, retry_after: None }, ErrorClass::Fatal),
            (TransportError::HttpStatus { status: 503, retry_after: None }, ErrorClass::Transient),
            (TransportError::MessageTooLarge { size: 2, max: 1 }, ErrorClass::Transient),
            (TransportError::InvalidUrl(s()), ErrorClass::Fatal),
            (TransportError::Io(s()), ErrorClass::Transient),
        ];
        for (error, expected) in table {
            assert_eq!(class(error.clone()), expected, "{error}");
            assert!(!classify_error(&error).diagnosis.is_empty());
        }
    }

    #[test]
    fn the_floor_is_configurable() {
        let floor = Duration::from_millis(200);
        let c = |e| classify_error_with_floor(&e, floor).class;
        assert_eq!(
            c(TransportError::ServerClose { code: 1008, reason: String::new() }),
            ErrorClass::RateLimited { wait: floor }
        );
        assert_eq!(
            c(TransportError::HttpStatus { status: 429, retry_after: None }),
            ErrorClass::RateLimited { wait: floor }
        );
        assert_eq!(
            c(TransportError::HttpStatus { status: 418, retry_after: None }),
            ErrorClass::RateLimited { wait: floor * 5 }
        );
    }

    #[test]
    fn a_418_never_waits_less_than_the_floor() {
        let e = TransportError::HttpStatus { status: 418, retry_after: Some(Duration::from_secs(1)) };
        assert_eq!(class(e), ErrorClass::RateLimited { wait: RATE_LIMIT_FLOOR });
    }

    #[test]
    fn certificate_diagnosis_names_the_fix_and_not_the_reason_again() {
        let why = "error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed: \
                   (unable to get local issuer certificate)";
        let e = TransportError::CertificateRejected(why.into());
        let d = classify_error(&e).diagnosis;
        assert!(d.contains("--ca-file"), "{d}");
        // The error is printed next to its diagnosis: the reason must not appear a second time.
        assert_eq!(format!("{e}; {d}").matches("0A000086").count(), 1, "{d}");
    }

    #[test]
    fn certificate_advice_with_a_ca_file_blames_that_file() {
        let table = [
            ("unable to get local issuer certificate", Some("certs/other.pem"), "the CA in certs/other.pem"),
            ("self-signed certificate in certificate chain", Some("x.pem"), "the CA in x.pem"),
            ("unable to get local issuer certificate", None, "pass the CA that did with --ca-file"),
            ("hostname mismatch", Some("x.pem"), "does not name the host"),
            ("certificate has expired", None, "validity period"),
        ];
        for (why, file, expected) in table {
            let advice = certificate_advice(why, file);
            assert!(advice.contains(expected), "{why} {file:?}: {advice}");
            if file.is_some() && expected.starts_with("the CA in") {
                assert!(!advice.contains("pass its CA with --ca-file"), "{advice}");
            }
        }
    }

    #[test]
    fn an_answer_that_is_not_tls_is_named_as_such() {
        let openssl3 = "the server at localhost:8080 did not answer TLS (error:0A00010B:SSL routines:ssl3_get_record:wrong version number)";
        let d = classify_error(&TransportError::TlsHandshake(openssl3.into())).diagnosis;
        assert!(d.contains("did not answer TLS") && d.contains("plain HTTP") && d.contains("--url"), "{d}");
        assert!(!d.contains("proxy may intercept"), "{d}");
        for text in ["SSL routines:ssl3_get_record:packet length too long", "tls_get_more_records:http request"] {
            assert!(answered_without_tls(text), "{text}");
        }
        let other = classify_error(&TransportError::TlsHandshake("handshake failure".into())).diagnosis;
        assert!(other.contains("proxy may intercept"), "{other}");
    }
}
