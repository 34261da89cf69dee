//! Stream names: which ones keel decodes ([`check_stream_name`], with a corrected spelling when only
//! letter case is wrong), the name an event came from ([`stream_name`]), and the combined-stream URL.

use super::{ARRAY_STREAMS, MarketEvent};

/// The stream name a raw event most likely came from (`btcusdt@aggTrade`, `btcusdt@kline_1m`,
/// `btcusdt@depth`, `btcusdt@bookTicker`, `btcusdt@depth5`, `btcusdt@ticker`, `btcusdt@ticker_1h`,
/// `btcusdt@miniTicker`, `!miniTicker@arr`, `!ticker_1h@arr`). Update-speed suffixes (`@100ms`) are not
/// in the event and cannot be recovered; a partial depth's level count is taken from its longest side;
/// an empty ticker array is taken for `!ticker@arr` (only the stream name tells its window).
pub fn stream_name(event: &MarketEvent) -> String {
    let symbol = event.symbol().to_ascii_lowercase();
    match event {
        MarketEvent::AggTrade(_) => format!("{symbol}@aggTrade"),
        MarketEvent::Trade(_) => format!("{symbol}@trade"),
        MarketEvent::Kline(k) => format!("{symbol}@kline_{}", k.interval),
        MarketEvent::Depth(_) => format!("{symbol}@depth"),
        MarketEvent::BookTicker(_) => format!("{symbol}@bookTicker"),
        MarketEvent::PartialDepth(d) => format!("{symbol}@depth{}", d.bids.len().max(d.asks.len())),
        MarketEvent::Ticker(t) => format!("{symbol}@{}", t.window.stream_type()),
        MarketEvent::MiniTicker(_) => format!("{symbol}@miniTicker"),
        MarketEvent::Tickers(v) => format!("!{}@arr", v.first().map_or("ticker", |t| t.window.stream_type())),
        MarketEvent::MiniTickers(_) => "!miniTicker@arr".to_string(),
    }
}

/// Why a stream name is not one keel can decode. Each message ends with the corrected name when the
/// only fault is letter case (`BTCUSDT@aggtrade`), the commonest slip when names are copied from REST
/// symbols or typed by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamNameError {
    /// No `@` between symbol and stream type.
    #[error("stream {0:?} has no '@' (expected <symbol>@<type>, e.g. btcusdt@aggTrade)")]
    NoAt(String),
    /// The symbol part is empty or not lower-case letters and digits (Binance stream names are lower case).
    #[error("stream {0:?}: the symbol must be lower-case letters and digits (e.g. btcusdt){hint}", hint = CaseHint(.0))]
    BadSymbol(String),
    /// A stream type keel does not decode.
    #[error(
        "stream {0:?}: unsupported type{hint} (keel decodes aggTrade, trade, kline_<interval>, depth, depth@100ms, \
         depth5/10/20[@100ms], bookTicker, ticker, ticker_1h/4h/1d, miniTicker, and the all-market arrays \
         !miniTicker@arr, !ticker@arr, !ticker_1h@arr, !ticker_4h@arr, !ticker_1d@arr)",
        hint = CaseHint(.0)
    )]
    UnsupportedType(String),
    /// A kline interval Binance does not offer.
    #[error("stream {0:?}: unknown kline interval (1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M){hint}", hint = CaseHint(.0))]
    BadInterval(String),
}

/// `; did you mean "btcusdt@aggTrade"?` when [`case_fix`] finds a name keel decodes, else nothing.
struct CaseHint<'a>(&'a str);

impl std::fmt::Display for CaseHint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match case_fix(self.0) {
            Some(fixed) => write!(f, "; did you mean {fixed:?}?"),
            None => Ok(()),
        }
    }
}

/// `name` with its symbol lower-cased and each word of its type in Binance's spelling, if that is a
/// different name keel decodes. Kline intervals keep their case: `1m` is a minute, `1M` a month, so
/// `kline_1H` is not guessed at.
fn case_fix(name: &str) -> Option<String> {
    // The words of the symbol streams' types; the all-market arrays are matched whole below.
    const WORDS: [&str; 14] = [
        "aggTrade",
        "trade",
        "bookTicker",
        "depth",
        "depth5",
        "depth10",
        "depth20",
        "100ms",
        "1000ms",
        "ticker",
        "ticker_1h",
        "ticker_4h",
        "ticker_1d",
        "miniTicker",
    ];
    let fix_word = |word: &str| -> String {
        if let Some(known) = WORDS.iter().find(|w| w.eq_ignore_ascii_case(word)) {
            return (*known).to_owned();
        }
        match word.get(..6) {
            Some(prefix) if prefix.eq_ignore_ascii_case("kline_") => format!("kline_{}", &word[6..]),
            _ => word.to_owned(),
        }
    };
    let fixed = if name.starts_with('!') {
        ARRAY_STREAMS.iter().find(|a| a.eq_ignore_ascii_case(name))?.to_string()
    } else {
        let (symbol, kind) = name.split_once('@')?;
        let kind: Vec<String> = kind.split('@').map(fix_word).collect();
        format!("{}@{}", symbol.to_ascii_lowercase(), kind.join("@"))
    };
    (fixed != name && check_stream_name(&fixed).is_ok()).then_some(fixed)
}

/// Checks that `name` is a stream keel decodes (`btcusdt@aggTrade`, `btcusdt@kline_1m`,
/// `btcusdt@depth@100ms`, `btcusdt@depth5`, `btcusdt@ticker_1h`, ..., and the [`ARRAY_STREAMS`]), so
/// that a configuration naming, say, `@avgPrice` fails up front instead of counting every frame as malformed.
pub fn check_stream_name(name: &str) -> Result<(), StreamNameError> {
    // The all-market streams have no symbol; nothing else may start with '!' (Binance's old
    // `!bookTicker` is gone since 2022-12-07).
    if name.starts_with('!') {
        return if ARRAY_STREAMS.contains(&name) {
            Ok(())
        } else {
            Err(StreamNameError::UnsupportedType(name.to_owned()))
        };
    }
    const INTERVALS: [&str; 16] =
        ["1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"];
    let (symbol, kind) = name.split_once('@').ok_or_else(|| StreamNameError::NoAt(name.to_owned()))?;
    if symbol.is_empty() || !symbol.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(StreamNameError::BadSymbol(name.to_owned()));
    }
    let supported = match kind {
        "aggTrade" | "trade" | "bookTicker" | "depth" | "depth@100ms" | "depth@1000ms" => true,
        "ticker" | "ticker_1h" | "ticker_4h" | "ticker_1d" | "miniTicker" => true,
        _ => match kind.strip_prefix("kline_") {
            Some(rest) => {
                // An optional UTC offset: kline_1h@+08:00.
                let interval = rest.split_once('@').map_or(rest, |(interval, _)| interval);
                if !INTERVALS.contains(&interval) {
                    return Err(StreamNameError::BadInterval(name.to_owned()));
                }
                true
            }
            None => {
                let base = kind.strip_suffix("@100ms").or_else(|| kind.strip_suffix("@1000ms")).unwrap_or(kind);
                matches!(base, "depth5" | "depth10" | "depth20")
            }
        },
    };
    if supported { Ok(()) } else { Err(StreamNameError::UnsupportedType(name.to_owned())) }
}

/// `base + "/stream?streams=a/b"` (a trailing `/` on `base` is dropped).
pub fn combined_stream_url(base: &str, streams: &[String]) -> String {
    format!("{}/stream?streams={}", base.trim_end_matches('/'), streams.join("/"))
}
