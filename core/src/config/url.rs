//! The base URLs of the configuration (`stream.url`, `rest.url`), taken apart without IO.
//!
//! Why keel parses them itself: validation must refuse what the adapters would refuse at once
//! (`keel config check` saying "ok" to a file that `keel stream` rejects on start is a bug), and
//! the core has no HTTP library. The rules are RFC 3986's, narrowed to what keel connects to: a
//! host name of letters, digits, `-`, `_` and `.` (or an IP address, IPv6 in brackets), a port
//! from 1 to 65535, and a path and query of URL characters, `%XX`-escaped where needed.

use thiserror::Error;

/// A URL's parts as keel uses them. Borrowed from the text; nothing is normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseUrl<'a> {
    /// Scheme as written, before `://` (`wss`, `https`).
    pub scheme: &'a str,
    /// Host as written; an IPv6 address without its brackets.
    pub host: &'a str,
    /// The port written after the host, if one was.
    pub port: Option<u16>,
    /// Everything after the host and port: path and query, possibly empty.
    pub path: &'a str,
}

impl BaseUrl<'_> {
    /// Whether the host is `name` (DNS names are case-insensitive; a trailing dot, the
    /// fully-qualified form, names the same host).
    pub fn host_is(&self, name: &str) -> bool {
        self.host.strip_suffix('.').unwrap_or(self.host).eq_ignore_ascii_case(name)
    }
}

/// Why a URL cannot be used. The messages never repeat the user info, which may be a credential.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// No `://` after a scheme.
    #[error("it has no scheme: write SCHEME://HOST[:PORT]")]
    NoScheme,
    /// Nothing between `://` (or the user info) and the port or path.
    #[error("the host is missing: write SCHEME://HOST[:PORT]")]
    NoHost,
    /// A character no host name holds (a space, a second `:`, a non-ASCII letter...).
    #[error(
        "the host {host:?} holds {ch:?}: a host name has only letters, digits, '-', '_' and '.' \
         (an internationalized name in its xn-- form), an IPv6 address goes in [brackets]"
    )]
    HostChar {
        /// The host as written.
        host: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// Two dots in a row, or a leading dot.
    #[error("the host {host:?} has an empty label (a leading dot or two dots in a row)")]
    HostLabel {
        /// The host as written.
        host: String,
    },
    /// `[...]` that does not hold an IPv6 address.
    #[error("[{host}] is not an IPv6 address (hex digits and ':', e.g. [::1])")]
    Ipv6 {
        /// What was between the brackets.
        host: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("the port {port:?} is not a number from 1 to 65535 (leave it out for 443)")]
    Port {
        /// The port as written.
        port: String,
    },
    /// A character the user info (before `@`) cannot hold unescaped; the user info itself is not shown.
    #[error("the user info (before '@') holds {ch:?}: percent-encode it")]
    UserinfoChar {
        /// The first character that is not allowed.
        ch: char,
    },
    /// A character a path or query cannot hold unescaped.
    #[error("the path holds {ch:?}, which a URL cannot hold as is: percent-encode it (%20 for a space)")]
    PathChar {
        /// The first character that is not allowed.
        ch: char,
    },
    /// A `%` that does not start a `%XX` escape.
    #[error("the path holds a '%' that is not followed by two hex digits (write %25 for a '%')")]
    Percent,
    /// A `#fragment`: never sent to a server, and keel appends its own path after the base.
    #[error("a '#' fragment cannot be part of a base URL (keel appends its own path to it): remove it")]
    Fragment,
}

/// RFC 3986 `unreserved` and `sub-delims`: what user info, path and query hold as is.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=".contains(c)
}

/// Checks that every `%` starts a `%XX` escape and every other character passes `ok`.
fn check_chars(s: &str, ok: impl Fn(char) -> bool, bad: impl Fn(char) -> UrlError) -> Result<(), UrlError> {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let hex = |c: Option<char>| c.is_some_and(|c| c.is_ascii_hexdigit());
            if !(hex(chars.next()) && hex(chars.next())) {
                return Err(UrlError::Percent);
            }
        } else if !ok(c) {
            return Err(bad(c));
        }
    }
    Ok(())
}

fn check_host_name(host: &str) -> Result<(), UrlError> {
    if let Some(ch) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(UrlError::HostChar { host: host.to_string(), ch });
    }
    // One trailing dot is the fully-qualified form; any other empty label is a typo.
    if host.strip_suffix('.').unwrap_or(host).split('.').any(str::is_empty) {
        return Err(UrlError::HostLabel { host: host.to_string() });
    }
    Ok(())
}

/// Splits `url` into scheme, host, port and path, checking the characters of each.
pub fn parse(url: &str) -> Result<BaseUrl<'_>, UrlError> {
    let (scheme, rest) = url.split_once("://").ok_or(UrlError::NoScheme)?;
    if scheme.is_empty() {
        return Err(UrlError::NoScheme);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if path.contains('#') {
        return Err(UrlError::Fragment);
    }
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            check_chars(userinfo, |c| plain(c) || c == ':', |ch| UrlError::UserinfoChar { ch })?;
            host_port
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (ip, after) = bracketed.split_once(']').ok_or_else(|| UrlError::Ipv6 { host: bracketed.to_string() })?;
        if ip.is_empty() || !ip.contains(':') || !ip.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return Err(UrlError::Ipv6 { host: ip.to_string() });
        }
        match after {
            "" => (ip, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => {
                    let ch = after.chars().next().unwrap_or(']');
                    return Err(UrlError::HostChar { host: format!("[{ip}]{after}"), ch });
                }
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    if !host_port.starts_with('[') {
        check_host_name(host)?;
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            // `parse` takes a leading '+'; a port is digits only.
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(UrlError::Port { port: p.to_string() }),
        },
    };
    check_chars(path, |c| plain(c) || matches!(c, ':' | '@' | '/' | '?'), |ch| UrlError::PathChar { ch })?;
    Ok(BaseUrl { scheme, host, port, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keel_connects_to_parse_into_their_parts() {
        let cases: &[(&str, BaseUrl<'_>)] = &[
            (
                "wss://stream.binance.com:9443",
                BaseUrl { scheme: "wss", host: "stream.binance.com", port: Some(9443), path: "" },
            ),
            ("https://api.binance.com", BaseUrl { scheme: "https", host: "api.binance.com", port: None, path: "" }),
            ("https://api.binance.com/", BaseUrl { scheme: "https", host: "api.binance.com", port: None, path: "/" }),
            ("wss://localhost:9443/", BaseUrl { scheme: "wss", host: "localhost", port: Some(9443), path: "/" }),
            ("wss://127.0.0.1:1", BaseUrl { scheme: "wss", host: "127.0.0.1", port: Some(1), path: "" }),
            ("wss://[::1]:65535", BaseUrl { scheme: "wss", host: "::1", port: Some(65535), path: "" }),
            ("wss://[::ffff:1.2.3.4]", BaseUrl { scheme: "wss", host: "::ffff:1.2.3.4", port: None, path: "" }),
            ("wss://sim.invalid.:9443", BaseUrl { scheme: "wss", host: "sim.invalid.", port: Some(9443), path: "" }),
            // User info and a listenKey-style path with a query: keel accepts them (and redacts them in logs).
            (
                "wss://keel:c0ffee%21@h:9/ws/Zq8V?signature=ab12",
                BaseUrl { scheme: "wss", host: "h", port: Some(9), path: "/ws/Zq8V?signature=ab12" },
            ),
        ];
        for (url, want) in cases {
            assert_eq!(parse(url).as_ref(), Ok(want), "{url}");
        }
        assert!(parse("wss://STREAM.Binance.com.:443").is_ok_and(|u| u.host_is("stream.binance.com")));
        assert!(parse("wss://stream.binance.community").is_ok_and(|u| !u.host_is("stream.binance.com")));
    }

    #[test]
    fn each_malformed_part_is_named() {
        let host = |h: &str, ch| UrlError::HostChar { host: h.into(), ch };
        let port = |p: &str| UrlError::Port { port: p.into() };
        let cases: &[(&str, UrlError)] = &[
            ("stream.binance.com:9443", UrlError::NoScheme),
            ("://h", UrlError::NoScheme),
            ("wss://", UrlError::NoHost),
            ("wss://:9443", UrlError::NoHost),
            ("wss://user@/x", UrlError::NoHost),
            ("wss://not a host:99999/", host("not a host", ' ')),
            ("wss://bücher.example", host("bücher.example", 'ü')),
            ("wss://a..b", UrlError::HostLabel { host: "a..b".into() }),
            ("wss://.a", UrlError::HostLabel { host: ".a".into() }),
            ("wss://h:99999", port("99999")),
            ("wss://h:0", port("0")),
            ("wss://h:", port("")),
            ("wss://h:+80", port("+80")),
            ("wss://h:80:81", port("80:81")),
            ("wss://h:https", port("https")),
            ("wss://[::1", UrlError::Ipv6 { host: "::1".into() }),
            ("wss://[zz]:1", UrlError::Ipv6 { host: "zz".into() }),
            ("wss://[::1]x", host("[::1]x", 'x')),
            ("wss://us er@h", UrlError::UserinfoChar { ch: ' ' }),
            ("wss://h/a b", UrlError::PathChar { ch: ' ' }),
            ("wss://h/a\"b", UrlError::PathChar { ch: '"' }),
            ("wss://h/%zz", UrlError::Percent),
            ("wss://h/a%2", UrlError::Percent),
            ("wss://h/#top", UrlError::Fragment),
            ("wss://h#top", UrlError::Fragment),
        ];
        for (url, want) in cases {
            assert_eq!(parse(url).as_ref(), Err(want), "{url}");
        }
    }

    #[test]
    fn errors_never_show_the_user_info() {
        let err = parse("wss://keel:s3cret with space@h").unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
