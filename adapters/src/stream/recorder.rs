//! The recorder: decoded market events to `<out>/<stream>/<YYYY-MM-DD>.csv` (see
//! /work/briefs/recording-format.md, the contract with `keel train`'s kline loader).
//!
//! An all-market array (`!miniTicker@arr`, `!ticker_1h@arr`, ...) is written one row per element into
//! the array stream's own file (`<out>/!miniTicker@arr/<day>.csv`), with a `symbol` column first and
//! then the columns of the single ticker of its kind.
//!
//! Append-only: a restarted run appends and writes the header only into a new or empty file.
//! Rows are buffered and flushed by [`Recorder::flush`], which the stream loop calls at least every
//! second and at shutdown, so a crash loses at most the last second.

use chrono::{DateTime, Utc};
use keel_core::protocol::{Decimal, Level, MarketEvent, MiniTicker, Ticker, TickerWindow};
use keel_core::recovery::Recorded;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A recording file could not be written. The OS error is the `source`, not part of the message:
/// `keel: error: {:#}` prints the chain, and a message that quoted it too printed it twice.
#[derive(Debug, Error)]
pub enum RecorderError {
    /// Creating a stream's directory under the output directory failed.
    #[error("cannot create the recording directory {path} (under --out / stream.out_dir; pick a writable one)")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Opening or checking the file failed.
    #[error("cannot open recording file {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing or flushing failed (disk full, permissions...).
    #[error(
        "cannot write recording file {path} (free space where it is, or pick another --out; a restarted run \
         appends to it)"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An existing file's first line is not the header this stream writes: appending would mix two
    /// layouts in one file (another stream kind, another program, an older format).
    #[error(
        "recording file {path} starts with the header {found:?}, not this stream's {expected:?}: refusing to append \
         rows of another layout; move the file away or pick another --out"
    )]
    HeaderMismatch {
        /// The file.
        path: PathBuf,
        /// Its first line (cut to 200 characters).
        found: String,
        /// The header this stream writes.
        expected: &'static str,
    },
    /// A stream name cannot be a directory name.
    #[error("stream name {0:?} cannot be used as a directory name (contains '/', '\\' or '..')")]
    BadStreamName(String),
}

// The ticker columns, in Binance's field order for each (web-socket-streams.md); an array's rows put
// `symbol` before them.
macro_rules! ticker_24h_columns {
    () => {
        "event_time,price_change,price_change_percent,weighted_avg_price,prev_price,last_price,last_qty,\
         bid_price,bid_qty,ask_price,ask_qty,open,high,low,volume,quote_volume,open_time,close_time,\
         first_trade_id,last_trade_id,trades"
    };
}
macro_rules! ticker_rolling_columns {
    () => {
        "event_time,price_change,price_change_percent,open,high,low,last_price,weighted_avg_price,volume,\
         quote_volume,open_time,close_time,first_trade_id,last_trade_id,trades"
    };
}
macro_rules! mini_ticker_columns {
    () => {
        "event_time,close,open,high,low,volume,quote_volume"
    };
}

/// The header of a ticker of `window`; `array`: as an element of an all-market array (a `symbol` column first).
fn ticker_header(window: &TickerWindow, array: bool) -> &'static str {
    match (window, array) {
        (TickerWindow::Rolling24h(_), false) => ticker_24h_columns!(),
        (TickerWindow::Rolling24h(_), true) => concat!("symbol,", ticker_24h_columns!()),
        (_, false) => ticker_rolling_columns!(),
        (_, true) => concat!("symbol,", ticker_rolling_columns!()),
    }
}

/// The CSV header of an event kind (of an all-market array: of its rows, one per element; an empty
/// ticker array, which writes no row, gets the rolling-window one).
pub fn header(event: &MarketEvent) -> &'static str {
    match event {
        MarketEvent::AggTrade(_) => {
            "event_time,agg_id,price,quantity,first_trade_id,last_trade_id,trade_time,buyer_is_maker"
        }
        MarketEvent::Trade(_) => "event_time,trade_id,price,quantity,trade_time,buyer_is_maker",
        MarketEvent::Kline(_) => "event_time,open_time,close_time,interval,open,high,low,close,volume,trades,is_closed",
        MarketEvent::Depth(_) => "event_time,first_update_id,final_update_id,bids,asks",
        MarketEvent::BookTicker(_) => "update_id,bid_price,bid_qty,ask_price,ask_qty",
        MarketEvent::PartialDepth(_) => "last_update_id,bids,asks",
        MarketEvent::Ticker(t) => ticker_header(&t.window, false),
        MarketEvent::MiniTicker(_) => mini_ticker_columns!(),
        MarketEvent::Tickers(v) => ticker_header(v.first().map_or(&TickerWindow::Rolling1h, |t| &t.window), true),
        MarketEvent::MiniTickers(_) => concat!("symbol,", mini_ticker_columns!()),
    }
}

/// Appends `v` in decimal (the recorder writes millions of these; `write!` costs several times more).
fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Appends `d` exactly as its `Display` writes it (the text Binance sent), without the u128
/// divisions of the general path when the digits fit in a u64 (every price and quantity does).
fn push_decimal(out: &mut String, d: Decimal) {
    let Ok(mut m) = u64::try_from(d.mantissa_wide()) else {
        let _ = write!(out, "{d}");
        return;
    };
    let scale = usize::from(d.scale());
    // At least scale + 1 digits: "0.0010" is mantissa 10 at scale 4.
    let mut buf = [b'0'; 40];
    let mut i = buf.len();
    while m > 0 || buf.len() - i <= scale {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    if d.is_negative() {
        out.push('-');
    }
    let digits = std::str::from_utf8(&buf[i..]).unwrap_or_default();
    let (int, frac) = digits.split_at(digits.len() - scale);
    out.push_str(int);
    if scale > 0 {
        out.push('.');
        out.push_str(frac);
    }
}

fn levels(out: &mut String, levels: &[Level]) {
    for (i, (p, q)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        push_decimal(out, *p);
        out.push(':');
        push_decimal(out, *q);
    }
}

/// One CSV row (without the newline) for `event`, in the documented column order; an all-market
/// array's rows, one per element, separated by newlines.
pub fn row(event: &MarketEvent) -> String {
    let mut s = String::with_capacity(96);
    write_row(&mut s, event);
    s
}

/// A field of a row.
#[derive(Clone, Copy)]
enum F<'a> {
    U(u64),
    I(i64),
    D(Decimal),
    S(&'a str),
}

/// Appends `fs`, comma-separated.
fn fields(s: &mut String, fs: &[F<'_>]) {
    for (i, f) in fs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match f {
            F::U(v) => push_u64(s, *v),
            F::I(v) => {
                if *v < 0 {
                    s.push('-');
                }
                push_u64(s, v.unsigned_abs());
            }
            F::D(d) => push_decimal(s, *d),
            F::S(t) => s.push_str(t),
        }
    }
}

/// Appends the row of `event` (without the newline) to `s`.
fn write_row(s: &mut String, event: &MarketEvent) {
    let b = |v: bool| if v { "1" } else { "0" };
    match event {
        MarketEvent::AggTrade(e) => fields(
            s,
            &[
                F::U(e.event_time),
                F::U(e.agg_id),
                F::D(e.price),
                F::D(e.quantity),
                F::U(e.first_trade_id),
                F::U(e.last_trade_id),
                F::U(e.trade_time),
                F::S(b(e.buyer_is_maker)),
            ],
        ),
        MarketEvent::Trade(e) => fields(
            s,
            &[
                F::U(e.event_time),
                F::U(e.trade_id),
                F::D(e.price),
                F::D(e.quantity),
                F::U(e.trade_time),
                F::S(b(e.buyer_is_maker)),
            ],
        ),
        MarketEvent::Kline(k) => fields(
            s,
            &[
                F::U(k.event_time),
                F::U(k.open_time),
                F::U(k.close_time),
                F::S(&k.interval),
                F::D(k.open),
                F::D(k.high),
                F::D(k.low),
                F::D(k.close),
                F::D(k.volume),
                F::U(k.trades),
                F::S(b(k.is_closed)),
            ],
        ),
        MarketEvent::Depth(d) => {
            fields(s, &[F::U(d.event_time), F::U(d.first_update_id), F::U(d.final_update_id), F::S("")]);
            levels(s, d.bids());
            s.push(',');
            levels(s, d.asks());
        }
        MarketEvent::BookTicker(t) => fields(
            s,
            &[
                F::U(t.update_id),
                F::D(t.best_bid_price),
                F::D(t.best_bid_qty),
                F::D(t.best_ask_price),
                F::D(t.best_ask_qty),
            ],
        ),
        MarketEvent::PartialDepth(d) => {
            fields(s, &[F::U(d.last_update_id), F::S("")]);
            levels(s, &d.bids);
            s.push(',');
            levels(s, &d.asks);
        }
        MarketEvent::Ticker(t) => ticker_row(s, t),
        MarketEvent::MiniTicker(t) => mini_ticker_row(s, t),
        MarketEvent::Tickers(v) => {
            for (i, t) in v.iter().enumerate() {
                if i > 0 {
                    s.push('\n');
                }
                array_row(s, &t.symbol, |s| ticker_row(s, t));
            }
        }
        MarketEvent::MiniTickers(v) => {
            for (i, t) in v.iter().enumerate() {
                if i > 0 {
                    s.push('\n');
                }
                array_row(s, &t.symbol, |s| mini_ticker_row(s, t));
            }
        }
    }
}

/// An element of an all-market array: its symbol, then the columns of its single kind.
fn array_row(s: &mut String, symbol: &str, columns: impl FnOnce(&mut String)) {
    s.push_str(symbol);
    s.push(',');
    columns(s);
}

fn ticker_row(s: &mut String, t: &Ticker) {
    // The two layouts share their first three and last seven columns.
    let mut all = [F::U(0); 21];
    all[..3].copy_from_slice(&[F::U(t.event_time), F::D(t.price_change), F::D(t.price_change_percent)]);
    let middle: &[F<'_>] = match &t.window {
        TickerWindow::Rolling24h(x) => &[
            F::D(t.weighted_avg_price),
            F::D(x.prev_price),
            F::D(t.last_price),
            F::D(x.last_quantity),
            F::D(x.best_bid_price),
            F::D(x.best_bid_qty),
            F::D(x.best_ask_price),
            F::D(x.best_ask_qty),
            F::D(t.open),
            F::D(t.high),
            F::D(t.low),
        ],
        TickerWindow::Rolling1h | TickerWindow::Rolling4h | TickerWindow::Rolling1d => {
            &[F::D(t.open), F::D(t.high), F::D(t.low), F::D(t.last_price), F::D(t.weighted_avg_price)]
        }
    };
    let end = 3 + middle.len();
    all[3..end].copy_from_slice(middle);
    all[end..end + 7].copy_from_slice(&[
        F::D(t.volume),
        F::D(t.quote_volume),
        F::U(t.open_time),
        F::U(t.close_time),
        F::I(t.first_trade_id),
        F::I(t.last_trade_id),
        F::U(t.trades),
    ]);
    fields(s, &all[..end + 7]);
}

fn mini_ticker_row(s: &mut String, t: &MiniTicker) {
    fields(
        s,
        &[
            F::U(t.event_time),
            F::D(t.close),
            F::D(t.open),
            F::D(t.high),
            F::D(t.low),
            F::D(t.volume),
            F::D(t.quote_volume),
        ],
    );
}

/// The UTC day (`YYYY-MM-DD`) of a time in ms since the Unix epoch.
pub fn utc_day(ms: u64) -> String {
    let dt = DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default();
    dt.format("%Y-%m-%d").to_string()
}

/// Milliseconds in a UTC day (Unix time has no leap seconds).
const DAY_MS: u64 = 86_400_000;

struct OpenFile {
    /// The first ms of the file's UTC day: rows with a time in [day_start, day_start + DAY_MS) go here.
    day_start: u64,
    path: PathBuf,
    writer: BufWriter<File>,
    /// Rows appended since the last flush that succeeded: those a failing file may not hold.
    unflushed: u64,
}

/// Writes events to one append-only CSV file per stream and UTC day.
pub struct Recorder {
    dir: PathBuf,
    files: BTreeMap<String, OpenFile>,
    rows: u64,
    /// Rows of files given up on whose last flush failed (see [`Recorder::close`]).
    lost: u64,
    paths: Vec<PathBuf>,
    /// The row being written, reused (no allocation per row).
    line: String,
}

impl Recorder {
    /// A recorder writing under `dir` (created on the first event).
    pub fn new(dir: &Path) -> Recorder {
        Recorder {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            rows: 0,
            lost: 0,
            paths: Vec::new(),
            line: String::new(),
        }
    }

    /// Appends `event` of `stream`. The file's day is the event's time, or `received_ms` for
    /// events without one (spot bookTicker, partial depth). An all-market array writes a row per
    /// element (none for an empty one), each into the file of its own event time's day.
    pub fn record(&mut self, stream: &str, event: &MarketEvent, received_ms: u64) -> Result<(), RecorderError> {
        match event {
            MarketEvent::Tickers(v) => {
                for t in v {
                    let header = ticker_header(&t.window, true);
                    self.append(stream, t.event_time, received_ms, header, |s| {
                        array_row(s, &t.symbol, |s| ticker_row(s, t))
                    })?;
                }
                Ok(())
            }
            MarketEvent::MiniTickers(v) => {
                let header = header(event);
                for t in v {
                    self.append(stream, t.event_time, received_ms, header, |s| {
                        array_row(s, &t.symbol, |s| mini_ticker_row(s, t))
                    })?;
                }
                Ok(())
            }
            _ => self.append(stream, event.event_time(), received_ms, header(event), |s| write_row(s, event)),
        }
    }

    /// Appends one row (written by `write`) to `stream`'s file of the day of `time` (`received_ms`
    /// when 0), opening it with `header` when new.
    fn append(
        &mut self,
        stream: &str,
        time: u64,
        received_ms: u64,
        header: &'static str,
        write: impl FnOnce(&mut String),
    ) -> Result<(), RecorderError> {
        let t = match time {
            0 => received_ms,
            t => t,
        };
        // The day (and the stream name) are checked only when a file is opened: a row of the same
        // day as the last costs one map lookup and a range check.
        if !self.files.get(stream).is_some_and(|f| (f.day_start..f.day_start + DAY_MS).contains(&t)) {
            if stream.is_empty() || stream.contains(['/', '\\']) || stream.contains("..") {
                return Err(RecorderError::BadStreamName(stream.to_string()));
            }
            if let Some(mut old) = self.files.remove(stream)
                && let Err(source) = old.writer.flush()
            {
                // The day is over for this file: what it could not take is lost with it.
                self.lost += old.unflushed;
                return Err(RecorderError::Write { path: old.path, source });
            }
            let f = self.open(stream, t, header)?;
            self.files.insert(stream.to_string(), f);
        }
        let Some(f) = self.files.get_mut(stream) else { unreachable!("inserted above") };
        self.line.clear();
        write(&mut self.line);
        self.line.push('\n');
        f.writer
            .write_all(self.line.as_bytes())
            .map_err(|source| RecorderError::Write { path: f.path.clone(), source })?;
        f.unflushed += 1;
        self.rows += 1;
        Ok(())
    }

    fn open(&mut self, stream: &str, t: u64, header: &'static str) -> Result<OpenFile, RecorderError> {
        let day = utc_day(t);
        let dir = self.dir.join(stream);
        std::fs::create_dir_all(&dir).map_err(|source| RecorderError::Dir { path: dir.clone(), source })?;
        let path = dir.join(format!("{day}.csv"));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|source| RecorderError::Open { path: path.clone(), source })?;
        let len = file.metadata().map_err(|source| RecorderError::Open { path: path.clone(), source })?.len();
        let write_header = len == 0 || prepare_existing(&mut file, &path, header, len)?;
        let mut writer = BufWriter::with_capacity(64 * 1024, file);
        if write_header {
            writeln!(writer, "{header}").map_err(|source| RecorderError::Write { path: path.clone(), source })?;
        }
        if !self.paths.contains(&path) {
            self.paths.push(path.clone());
        }
        Ok(OpenFile { day_start: t - t % DAY_MS, path, writer, unflushed: 0 })
    }

    /// Writes every buffered row to its file. Every file is tried, so one that cannot be written
    /// (a full disk, a file on a failing mount) does not keep the others' rows in memory; the
    /// first error is returned.
    pub fn flush(&mut self) -> Result<(), RecorderError> {
        let mut first = None;
        for f in self.files.values_mut() {
            match f.writer.flush() {
                Ok(()) => f.unflushed = 0,
                Err(source) => {
                    first.get_or_insert(RecorderError::Write { path: f.path.clone(), source });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Flushes every file and closes them all: the rows that may be missing from their files
    /// (those appended to a file since its last successful flush, when its last flush failed;
    /// some of them may have reached it), and the first error. Dropping a recorder flushes too,
    /// but can only log what failed.
    pub fn close(mut self) -> (u64, Result<(), RecorderError>) {
        let flushed = self.flush();
        let lost = self.lost + self.files.values().map(|f| f.unflushed).sum::<u64>();
        // A buffer that could not be written is dropped with its writer (which tries it once more,
        // silently), so the drop below has nothing left to flush or log.
        self.files.clear();
        (lost, flushed)
    }

    /// Rows appended (buffered or flushed; see [`Recorder::close`] for those a failed file lost).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Every file written to, in the order first opened.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

/// The longest first line read to compare with the header (headers are under 400 bytes).
const FIRST_LINE_MAX: u64 = 64 * 1024;

/// Checks a non-empty file before rows are appended to it; `true`: it held only a partial header
/// (set aside), so the header must be written.
///
/// A run killed mid-row leaves a last line without its newline; appending to it would glue the
/// next row onto it (`3` + `1796614694941,...`), corrupting a row and hiding the cut. Rows already
/// written are never touched: the partial tail moves to `<file>.partial` (appended, one cut per
/// line, written before the file is shortened so nothing is lost if we die in between) and
/// recording goes on after the last complete row. A file whose header is not this stream's is
/// refused rather than appended to.
fn prepare_existing(file: &mut File, path: &Path, header: &'static str, len: u64) -> Result<bool, RecorderError> {
    let open_err = |source| RecorderError::Open { path: path.to_path_buf(), source };
    let head = read_at(file, 0, len.min(FIRST_LINE_MAX)).map_err(open_err)?;
    let mismatch = |found: &[u8]| RecorderError::HeaderMismatch {
        path: path.to_path_buf(),
        found: String::from_utf8_lossy(found).chars().take(200).collect(),
        expected: header,
    };
    match head.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let first = head[..i].strip_suffix(b"\r").unwrap_or(&head[..i]);
            if first != header.as_bytes() {
                return Err(mismatch(first));
            }
        }
        // No complete first line: a header cut short by a crash is set aside like a partial row.
        None if len == head.len() as u64 && header.as_bytes().starts_with(&head) => {
            set_aside(file, path, 0, head).map_err(open_err)?;
            return Ok(true);
        }
        None => return Err(mismatch(&head)),
    }
    if read_at(file, len - 1, 1).map_err(open_err)? == b"\n" {
        return Ok(false);
    }
    // The first line ends with a newline, so one is found before it.
    let cut = last_newline_before(file, len).map_err(open_err)?.map_or(0, |i| i + 1);
    let tail = read_at(file, cut, len - cut).map_err(open_err)?;
    set_aside(file, path, cut, tail).map_err(open_err)?;
    Ok(false)
}

/// The offset of the last newline in `file` before `end`, read backwards 8 KiB at a time (rows are
/// short; a file is not read whole to find its end).
fn last_newline_before(file: &mut File, mut end: u64) -> std::io::Result<Option<u64>> {
    while end > 0 {
        let start = end.saturating_sub(8 * 1024);
        let chunk = read_at(file, start, end - start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// `len` bytes of `file` from `offset`.
fn read_at(file: &mut File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    Read::by_ref(file).take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The sidecar that keeps the partial rows cut from `path`: `<path>.partial` (not `.csv`, so loaders
/// that read `*.csv` never see it).
pub fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Appends `tail` (the bytes of `path` from `cut` on) as one line to the sidecar, then cuts it from
/// `file`.
fn set_aside(file: &mut File, path: &Path, cut: u64, mut tail: Vec<u8>) -> std::io::Result<()> {
    let sidecar = partial_path(path);
    let bytes = tail.len();
    tail.push(b'\n');
    let mut side = OpenOptions::new().create(true).append(true).open(&sidecar)?;
    side.write_all(&tail)?;
    side.sync_all()?;
    file.set_len(cut)?;
    tracing::warn!(
        file = %path.display(),
        partial = %sidecar.display(),
        bytes,
        "recording file ended in a partial row (a run killed mid-write?): moved it to the .partial file and \
         appending after the last complete row"
    );
    Ok(())
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("recorder: {}", super::transport::chain(&e));
        }
    }
}

/// Where an earlier run's recording of `stream` under `dir` ends: the last complete row of its latest
/// day file, for [`keel_core::recovery::Recovery::resume`]. `Ok(None)`: nothing to resume from (no
/// recording yet, or a stream that is not sequenced by id or kline open time). A partial last row
/// (a run killed mid-write) is skipped, as the recorder will set it aside; a day file holding only
/// its header gives way to the day before.
pub fn recorded_end(dir: &Path, stream: &str) -> Result<Option<Recorded>, String> {
    // (key column, trade-time column) by the header's names: the layout is the recorder's own.
    let (key_col, time_col) = if stream.ends_with("@aggTrade") {
        ("agg_id", Some("trade_time"))
    } else if stream.ends_with("@trade") {
        ("trade_id", Some("trade_time"))
    } else if stream.contains("@kline_") {
        ("open_time", None)
    } else {
        return Ok(None);
    };
    let sdir = dir.join(stream);
    let mut days: Vec<PathBuf> = match std::fs::read_dir(&sdir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_day_file))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot list {}: {e}", sdir.display())),
    };
    days.sort();
    for path in days.iter().rev() {
        let (header, last) = match header_and_last_row(path) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let names: Vec<&str> = header.split(',').collect();
        let cells: Vec<&str> = last.split(',').collect();
        let cell = |name: &str| -> Result<u64, String> {
            let i =
                names.iter().position(|n| *n == name).ok_or_else(|| format!("{}: no {name} column", path.display()))?;
            let text = cells.get(i).copied().unwrap_or("");
            text.parse::<u64>().map_err(|_| format!("{}: last row's {name} is {text:?}, not a number", path.display()))
        };
        let key = cell(key_col)?;
        let (complete, trade_time) = match time_col {
            Some(col) => (true, cell(col)?),
            None => {
                let i = names.iter().position(|n| *n == "is_closed");
                (i.and_then(|i| cells.get(i)).is_some_and(|c| *c == "1"), 0)
            }
        };
        return Ok(Some(Recorded { key, complete, trade_time }));
    }
    Ok(None)
}

/// `YYYY-MM-DD.csv`.
fn is_day_file(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 14
        && name.ends_with(".csv")
        && b[..10].iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
}

/// The header and the last complete row of a recording file; None when it has no complete row.
fn header_and_last_row(path: &Path) -> std::io::Result<Option<(String, String)>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let head = read_at(&mut file, 0, len.min(FIRST_LINE_MAX))?;
    let Some(header_end) = head.iter().position(|&b| b == b'\n') else { return Ok(None) };
    let header = String::from_utf8_lossy(&head[..header_end]).trim_end_matches('\r').to_string();
    // Complete rows end with a newline; anything after the last one is a partial row.
    let last_newline = last_newline_before(&mut file, len)?.unwrap_or(0);
    if last_newline <= header_end as u64 {
        return Ok(None);
    }
    // The row before that newline: back to the newline before it (the header's, at the latest).
    let row_start = last_newline_before(&mut file, last_newline)?.map_or(0, |i| i + 1);
    let row = read_at(&mut file, row_start, last_newline - row_start)?;
    Ok(Some((header, String::from_utf8_lossy(&row).trim_end_matches('\r').to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::protocol::{Frame, decode};

    fn event(json: &str) -> MarketEvent {
        match decode(json).unwrap() {
            Frame::Market { event, .. } => event,
            other => panic!("{other:?}"),
        }
    }

    const AGG: &str = r#"{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.00100000","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}"#;
    const KLINE: &str = r#"{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,"s":"BNBBTC","i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,"x":false,"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}"#;
    const DEPTH: &str = r#"{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"],["0.0023","5"]],"a":[["0.0026","100"]]}"#;
    const BOOK: &str =
        r#"{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#;

    const TICKER: &str = r#"{"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00","w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10","a":"0.0026","A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18","O":0,"C":86400000,"F":0,"L":18150,"n":18151}"#;
    const TICKER_1H: &str = r#"{"e":"1hTicker","E":1672515782136,"s":"BNBBTC","p":"-0.0015","P":"-60.00","o":"0.0010","h":"0.0025","l":"0.0010","c":"0.0004","w":"0.0018","v":"10000","q":"18","O":0,"C":1675216573749,"F":-1,"L":-1,"n":0}"#;
    const MINI: &str = r#"{"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18"}"#;

    #[test]
    fn a_recording_ends_at_its_last_complete_row_of_its_latest_day() {
        let dir = std::env::temp_dir().join(format!("keel-rec-end-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rec = Recorder::new(&dir);
        rec.record("bnbbtc@aggTrade", &event(AGG), 0).unwrap();
        rec.record("bnbbtc@kline_1m", &event(KLINE), 0).unwrap();
        rec.record("bnbbtc@depth", &event(DEPTH), 0).unwrap();
        rec.flush().unwrap();
        let end = |stream: &str| recorded_end(&dir, stream).unwrap();
        let agg = Recorded { key: 12345, complete: true, trade_time: 1672515782136 };
        assert_eq!(end("bnbbtc@aggTrade"), Some(agg));
        // A running kline (x: false): its close is still wanted.
        assert_eq!(end("bnbbtc@kline_1m"), Some(Recorded { key: 1672515780000, complete: false, trade_time: 0 }));
        assert_eq!(end("bnbbtc@depth"), None, "depth books resync from snapshots; nothing to resume");
        assert_eq!(end("ethbtc@aggTrade"), None, "never recorded");
        // A partial last row (a run killed mid-write) is not where the recording ends.
        let day = dir.join("bnbbtc@aggTrade/2022-12-31.csv");
        std::fs::OpenOptions::new().append(true).open(&day).unwrap().write_all(b"1672515782999,99999,0.0").unwrap();
        assert_eq!(end("bnbbtc@aggTrade"), Some(agg));
        // A newer day holding only its header gives way to the day before; other files are not days.
        std::fs::write(dir.join("bnbbtc@aggTrade/2023-01-01.csv"), format!("{}\n", header(&event(AGG)))).unwrap();
        std::fs::write(dir.join("bnbbtc@aggTrade/notes.csv"), "x\n1\n").unwrap();
        assert_eq!(end("bnbbtc@aggTrade"), Some(agg));
        // A last row that does not parse is an error naming the file, not a guess.
        std::fs::write(
            dir.join("bnbbtc@aggTrade/2023-01-02.csv"),
            format!("{}\n1,x,2,3,4,5,6,1\n", header(&event(AGG))),
        )
        .unwrap();
        let e = recorded_end(&dir, "bnbbtc@aggTrade").unwrap_err();
        assert!(e.contains("2023-01-02.csv") && e.contains("agg_id is \"x\""), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_follow_the_documented_columns() {
        let table = [
            (AGG, "1672515782136,12345,0.00100000,100,100,105,1672515782136,1"),
            (KLINE, "1672515782136,1672515780000,1672515839999,1m,0.0010,0.0025,0.0015,0.0020,1000,100,0"),
            (DEPTH, "1672515782136,157,160,0.0024:10;0.0023:5,0.0026:100"),
            (BOOK, "400900217,25.35190000,31.21000000,25.36520000,40.66000000"),
            (
                TICKER,
                "1672515782136,0.0015,250.00,0.0018,0.0009,0.0025,10,0.0024,10,0.0026,100,0.0010,0.0025,0.0010,\
                 10000,18,0,86400000,0,18150,18151",
            ),
            (
                TICKER_1H,
                "1672515782136,-0.0015,-60.00,0.0010,0.0025,0.0010,0.0004,0.0018,10000,18,0,1675216573749,-1,-1,0",
            ),
            (MINI, "1672515782136,0.0025,0.0010,0.0025,0.0010,10000,18"),
        ];
        for (json, expected) in table {
            let e = event(json);
            assert_eq!(row(&e), expected);
            assert_eq!(header(&e).split(',').count(), expected.split(',').count(), "{json}");
        }
    }

    #[test]
    fn decimals_and_integers_are_written_as_display_writes_them() {
        let table = [
            "0",
            "0.0",
            "-0.0",
            "0.00100000",
            "100",
            "25.35190000",
            "-1.5",
            "0.000000000000000001",
            "18446744073709551615",
            "184467440737.09551616",
            "79228162514264337593543950335",
        ];
        for text in table {
            let d = Decimal::parse(text).unwrap();
            let mut s = String::new();
            push_decimal(&mut s, d);
            assert_eq!(s, text);
            assert_eq!(s, d.to_string());
        }
        for v in [0, 7, 10, 1_672_515_782_136, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, v);
            assert_eq!(s, v.to_string());
        }
    }

    quickcheck::quickcheck! {
        fn push_decimal_matches_display(lo: u64, hi: u32, scale: u8, negative: bool) -> bool {
            let mantissa = (u128::from(hi % 1024) << 64) | u128::from(lo);
            match Decimal::new(mantissa, scale % 19, negative) {
                Some(d) => {
                    let mut s = String::new();
                    push_decimal(&mut s, d);
                    s == d.to_string()
                }
                None => true,
            }
        }
    }

    #[test]
    fn an_all_market_array_writes_a_row_per_element_with_its_symbol() {
        let mini_arr = format!("[{MINI},{}]", MINI.replace("BNBBTC", "ETHUSDT"));
        let hour_arr = format!("[{TICKER_1H}]");
        let dir = std::env::temp_dir().join(format!("keel-recorder-arr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Recorder::new(&dir);
        let decode_on = |stream: &str, data: &str| match decode(&format!(r#"{{"stream":"{stream}","data":{data}}}"#)) {
            Ok(Frame::Market { event, .. }) => event,
            other => panic!("{other:?}"),
        };
        r.record("!miniTicker@arr", &decode_on("!miniTicker@arr", &mini_arr), 0).unwrap();
        r.record("!miniTicker@arr", &decode_on("!miniTicker@arr", "[]"), 0).unwrap();
        r.record("!ticker_1h@arr", &decode_on("!ticker_1h@arr", &hour_arr), 0).unwrap();
        r.record("!ticker_4h@arr", &decode_on("!ticker_4h@arr", "[]"), 0).unwrap();
        assert_eq!(r.rows(), 3, "one per element, none for an empty array");
        drop(r);
        let read = |stream: &str| std::fs::read_to_string(dir.join(stream).join("2022-12-31.csv")).unwrap();
        assert_eq!(
            read("!miniTicker@arr"),
            "symbol,event_time,close,open,high,low,volume,quote_volume\n\
             BNBBTC,1672515782136,0.0025,0.0010,0.0025,0.0010,10000,18\n\
             ETHUSDT,1672515782136,0.0025,0.0010,0.0025,0.0010,10000,18\n"
        );
        let single = event(TICKER_1H);
        assert_eq!(read("!ticker_1h@arr"), format!("symbol,{}\nBNBBTC,{}\n", header(&single), row(&single)));
        assert!(!dir.join("!ticker_4h@arr").exists(), "an empty array opens no file");
        let arr = decode_on("!miniTicker@arr", &mini_arr);
        assert_eq!(row(&arr).lines().count(), 2);
        assert_eq!(header(&arr).split(',').count(), row(&arr).lines().next().unwrap().split(',').count());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_utc_day_opens_a_new_file() {
        let dir = std::env::temp_dir().join(format!("keel-recorder-day-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Recorder::new(&dir);
        let book = event(BOOK);
        // bookTicker has no event time: the time of receipt picks the day.
        let midnight = 1_700_006_400_000; // 2023-11-15T00:00:00Z
        for t in [midnight - 1, midnight, midnight + DAY_MS - 1, midnight - 2] {
            r.record("bnbusdt@bookTicker", &book, t).unwrap();
        }
        drop(r);
        let rows = |day: &str| {
            let text = std::fs::read_to_string(dir.join(format!("bnbusdt@bookTicker/{day}.csv"))).unwrap();
            text.lines().count() - 1
        };
        assert_eq!((rows("2023-11-14"), rows("2023-11-15")), (2, 2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_per_stream_and_day_append_with_one_header() {
        let dir = std::env::temp_dir().join(format!("keel-recorder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let e = event(AGG);
        for _ in 0..2 {
            let mut r = Recorder::new(&dir);
            r.record("bnbbtc@aggTrade", &e, 0).unwrap();
            r.record("bnbbtc@aggTrade", &e, 0).unwrap();
            r.record("bnbusdt@bookTicker", &event(BOOK), 1_700_000_000_000).unwrap();
            assert_eq!(r.rows(), 3);
            // Dropping flushes.
        }
        let agg = std::fs::read_to_string(dir.join("bnbbtc@aggTrade/2022-12-31.csv")).unwrap();
        let lines: Vec<&str> = agg.lines().collect();
        assert_eq!(lines.len(), 5, "one header, then four rows over two runs: {agg}");
        assert_eq!(lines[0], header(&e));
        assert!(dir.join("bnbusdt@bookTicker/2023-11-14.csv").exists(), "no E: day of receipt");
        assert!(Recorder::new(&dir).record("../x", &e, 0).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file of `bnbbtc@aggTrade` on AGG's day holding `text`, and a recorder over its directory.
    fn existing(name: &str, text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("keel-recorder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bnbbtc@aggTrade")).unwrap();
        let file = dir.join("bnbbtc@aggTrade/2022-12-31.csv");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    #[test]
    fn a_partial_last_row_is_set_aside_and_complete_rows_are_kept() {
        let e = event(AGG);
        let (head, new) = (header(&e), row(&e));
        let table = [
            // (file before, file after, sidecar after)
            (format!("{head}\n1,2\n3"), format!("{head}\n1,2\n{new}\n"), Some("3\n".to_string())),
            (format!("{head}\n3"), format!("{head}\n{new}\n"), Some("3\n".to_string())),
            (format!("{head}\n1,2\n"), format!("{head}\n1,2\n{new}\n"), None),
            (format!("{head}\r\n1,2\n"), format!("{head}\r\n1,2\n{new}\n"), None),
            // A header cut short: set aside, then written whole.
            ("event_time,agg".to_string(), format!("{head}\n{new}\n"), Some("event_time,agg\n".to_string())),
        ];
        for (i, (before, after, sidecar)) in table.into_iter().enumerate() {
            let (dir, file) = existing(&format!("partial{i}"), &before);
            let mut r = Recorder::new(&dir);
            r.record("bnbbtc@aggTrade", &e, 0).unwrap();
            drop(r);
            assert_eq!(std::fs::read_to_string(&file).unwrap(), after, "{before:?}");
            assert_eq!(std::fs::read_to_string(partial_path(&file)).ok(), sidecar, "{before:?}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_long_partial_row_is_found_across_read_chunks() {
        let e = event(AGG);
        let long = "9".repeat(20_000);
        let (dir, file) = existing("long", &format!("{}\n1,2\n{long}", header(&e)));
        Recorder::new(&dir).record("bnbbtc@aggTrade", &e, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{}\n1,2\n{}\n", header(&e), row(&e)));
        assert_eq!(std::fs::read_to_string(partial_path(&file)).unwrap(), format!("{long}\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_with_another_header_is_refused_and_left_as_it_was() {
        let e = event(AGG);
        for (i, before) in ["foo,bar\n1,2\n3", "foo", &format!("{}\n1", header(&event(KLINE)))].into_iter().enumerate()
        {
            let (dir, file) = existing(&format!("mismatch{i}"), before);
            let mut r = Recorder::new(&dir);
            let err = r.record("bnbbtc@aggTrade", &e, 0).unwrap_err();
            assert!(matches!(err, RecorderError::HeaderMismatch { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&file.display().to_string()) && text.contains("--out"), "{text}");
            drop(r);
            assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
            assert!(!partial_path(&file).exists());
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// `/dev/full` takes the open and refuses every write with ENOSPC: a real full disk.
    #[test]
    fn a_file_that_cannot_be_written_does_not_keep_the_other_files_rows_unwritten() {
        let e = event(AGG);
        let dir = std::env::temp_dir().join(format!("keel-recorder-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a@aggTrade")).unwrap();
        let full = dir.join("a@aggTrade/2022-12-31.csv");
        std::os::unix::fs::symlink("/dev/full", &full).unwrap();
        let mut r = Recorder::new(&dir);
        // `a` sorts first, so an early return would have skipped `b`.
        r.record("a@aggTrade", &e, 0).unwrap();
        r.record("b@aggTrade", &e, 0).unwrap();
        let err = r.flush().unwrap_err();
        assert!(
            matches!(&err, RecorderError::Write { path, source } if *path == full && source.raw_os_error() == Some(28)),
            "{err:?}"
        );
        let b = std::fs::read_to_string(dir.join("b@aggTrade/2022-12-31.csv")).unwrap();
        assert_eq!(b, format!("{}\n{}\n", header(&e), row(&e)), "the other file was flushed");
        // Two more rows for each: `b`'s go out at the close, `a`'s three are counted lost.
        for _ in 0..2 {
            r.record("a@aggTrade", &e, 0).unwrap();
            r.record("b@aggTrade", &e, 0).unwrap();
        }
        assert_eq!(r.rows(), 6);
        let (lost, closed) = r.close();
        assert_eq!(lost, 3);
        assert!(matches!(closed, Err(RecorderError::Write { path, .. }) if path == full));
        let b = std::fs::read_to_string(dir.join("b@aggTrade/2022-12-31.csv")).unwrap();
        assert_eq!(b.lines().count(), 4, "{b}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn messages_leave_the_os_error_to_the_source_chain() {
        let source = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let path = PathBuf::from("ro/x");
        for e in [
            RecorderError::Dir { path: path.clone(), source: source() },
            RecorderError::Open { path: path.clone(), source: source() },
            RecorderError::Write { path: path.clone(), source: source() },
        ] {
            // What `keel: error: {:#}` prints.
            let chain = format!("{:#}", anyhow::Error::from(e));
            assert_eq!(chain.matches("permission denied").count(), 1, "{chain}");
        }
    }
}
