//! The recorder: decoded market events to `<out>/<stream>/<YYYY-MM-DD>.csv` (see
//! /work/briefs/recording-format.md, the contract with `keel train`'s kline loader).
//!
//! Append-only: a restarted run appends and writes the header only into a new or empty file.
//! Rows are buffered and flushed by [`Recorder::flush`], which the stream loop calls at least every
//! second and at shutdown, so a crash loses at most the last second.

use chrono::{DateTime, Utc};
use keel_core::protocol::{Level, MarketEvent};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A recording file could not be written.
#[derive(Debug, Error)]
pub enum RecorderError {
    /// Creating the directory or opening the file failed.
    #[error("cannot open recording file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing or flushing failed (disk full, permissions...).
    #[error("cannot write recording file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stream name cannot be a directory name.
    #[error("stream name {0:?} cannot be used as a directory name (contains '/', '\\' or '..')")]
    BadStreamName(String),
}

/// The CSV header of an event kind.
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
    }
}

fn levels(out: &mut String, levels: &[Level]) {
    for (i, (p, q)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let _ = write!(out, "{p}:{q}");
    }
}

/// One CSV row (without the newline) for `event`, in the documented column order.
pub fn row(event: &MarketEvent) -> String {
    let b = |v: bool| if v { 1 } else { 0 };
    let mut s = String::with_capacity(96);
    let _ = match event {
        MarketEvent::AggTrade(e) => write!(
            s,
            "{},{},{},{},{},{},{},{}",
            e.event_time,
            e.agg_id,
            e.price,
            e.quantity,
            e.first_trade_id,
            e.last_trade_id,
            e.trade_time,
            b(e.buyer_is_maker)
        ),
        MarketEvent::Trade(e) => write!(
            s,
            "{},{},{},{},{},{}",
            e.event_time,
            e.trade_id,
            e.price,
            e.quantity,
            e.trade_time,
            b(e.buyer_is_maker)
        ),
        MarketEvent::Kline(k) => write!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{}",
            k.event_time,
            k.open_time,
            k.close_time,
            k.interval,
            k.open,
            k.high,
            k.low,
            k.close,
            k.volume,
            k.trades,
            b(k.is_closed)
        ),
        MarketEvent::Depth(d) => {
            let _ = write!(s, "{},{},{},", d.event_time, d.first_update_id, d.final_update_id);
            levels(&mut s, &d.bids);
            s.push(',');
            levels(&mut s, &d.asks);
            Ok(())
        }
        MarketEvent::BookTicker(t) => {
            write!(s, "{},{},{},{},{}", t.update_id, t.best_bid_price, t.best_bid_qty, t.best_ask_price, t.best_ask_qty)
        }
        MarketEvent::PartialDepth(d) => {
            let _ = write!(s, "{},", d.last_update_id);
            levels(&mut s, &d.bids);
            s.push(',');
            levels(&mut s, &d.asks);
            Ok(())
        }
    };
    s
}

/// The UTC day (`YYYY-MM-DD`) of a time in ms since the Unix epoch.
pub fn utc_day(ms: u64) -> String {
    let dt = DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default();
    dt.format("%Y-%m-%d").to_string()
}

struct OpenFile {
    day: String,
    path: PathBuf,
    writer: BufWriter<File>,
}

/// Writes events to one append-only CSV file per stream and UTC day.
pub struct Recorder {
    dir: PathBuf,
    files: BTreeMap<String, OpenFile>,
    rows: u64,
    paths: Vec<PathBuf>,
}

impl Recorder {
    /// A recorder writing under `dir` (created on the first event).
    pub fn new(dir: &Path) -> Recorder {
        Recorder { dir: dir.to_path_buf(), files: BTreeMap::new(), rows: 0, paths: Vec::new() }
    }

    /// Appends `event` of `stream`. The file's day is the event's time, or `received_ms` for
    /// events without one (spot bookTicker, partial depth).
    pub fn record(&mut self, stream: &str, event: &MarketEvent, received_ms: u64) -> Result<(), RecorderError> {
        if stream.is_empty() || stream.contains(['/', '\\']) || stream.contains("..") {
            return Err(RecorderError::BadStreamName(stream.to_string()));
        }
        let t = match event.event_time() {
            0 => received_ms,
            t => t,
        };
        let day = utc_day(t);
        if self.files.get(stream).is_none_or(|f| f.day != day) {
            if let Some(mut old) = self.files.remove(stream) {
                old.writer.flush().map_err(|source| RecorderError::Write { path: old.path.clone(), source })?;
            }
            let f = self.open(stream, &day, event)?;
            self.files.insert(stream.to_string(), f);
        }
        let Some(f) = self.files.get_mut(stream) else { unreachable!("inserted above") };
        let mut line = row(event);
        line.push('\n');
        f.writer.write_all(line.as_bytes()).map_err(|source| RecorderError::Write { path: f.path.clone(), source })?;
        self.rows += 1;
        Ok(())
    }

    fn open(&mut self, stream: &str, day: &str, event: &MarketEvent) -> Result<OpenFile, RecorderError> {
        let dir = self.dir.join(stream);
        std::fs::create_dir_all(&dir).map_err(|source| RecorderError::Open { path: dir.clone(), source })?;
        let path = dir.join(format!("{day}.csv"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| RecorderError::Open { path: path.clone(), source })?;
        let len = file.metadata().map_err(|source| RecorderError::Open { path: path.clone(), source })?.len();
        let mut writer = BufWriter::with_capacity(64 * 1024, file);
        if len == 0 {
            writeln!(writer, "{}", header(event))
                .map_err(|source| RecorderError::Write { path: path.clone(), source })?;
        }
        if !self.paths.contains(&path) {
            self.paths.push(path.clone());
        }
        Ok(OpenFile { day: day.to_string(), path, writer })
    }

    /// Writes every buffered row to its file.
    pub fn flush(&mut self) -> Result<(), RecorderError> {
        for f in self.files.values_mut() {
            f.writer.flush().map_err(|source| RecorderError::Write { path: f.path.clone(), source })?;
        }
        Ok(())
    }

    /// Rows written (buffered or flushed).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Every file written to, in the order first opened.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("recorder: {e}");
        }
    }
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

    #[test]
    fn rows_follow_the_documented_columns() {
        let table = [
            (AGG, "1672515782136,12345,0.00100000,100,100,105,1672515782136,1"),
            (KLINE, "1672515782136,1672515780000,1672515839999,1m,0.0010,0.0025,0.0015,0.0020,1000,100,0"),
            (DEPTH, "1672515782136,157,160,0.0024:10;0.0023:5,0.0026:100"),
            (BOOK, "400900217,25.35190000,31.21000000,25.36520000,40.66000000"),
        ];
        for (json, expected) in table {
            let e = event(json);
            assert_eq!(row(&e), expected);
            assert_eq!(header(&e).split(',').count(), expected.split(',').count(), "{json}");
        }
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
}
