//! Training data: Informer-layout CSV files and klines recorded by `keel stream`, validated before
//! any tensor is built, split chronologically 70/10/20, standardized with statistics of the
//! training part only (so nothing of the future leaks into training), with calendar features.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
use keel_core::config::Features;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Header of recorded kline files (docs: the recorder/loader contract).
pub const KLINE_HEADER: [&str; 11] = [
    "event_time",
    "open_time",
    "close_time",
    "interval",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trades",
    "is_closed",
];

/// Calendar features per step (minute, hour, weekday, day of month, day of year; Informer's `timeF`).
pub const N_TIME_FEATURES: usize = 5;

/// Why a data file cannot be trained on. Rows are 1-based data rows (the header is not a row);
/// `line` is the line in the file, for editors.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DataError {
    /// The file or directory could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// The OS or CSV reader's message.
        message: String,
    },
    /// The file holds nothing at all (not even a header): a truncated download or a file never written.
    #[error(
        "{path} is empty: a training CSV starts with a header, a date/time column then numeric columns \
         (date,Open,High,Low,Close,Volume)"
    )]
    EmptyFile {
        /// The file.
        path: String,
    },
    /// The header has fewer than two columns or an empty name.
    #[error("{path}: the header must be a date/time column followed by numeric feature columns, got {header:?}")]
    BadHeader {
        /// The file.
        path: String,
        /// What was found.
        header: Vec<String>,
    },
    /// A row has a different number of cells than the header.
    #[error("{path}: row {row} (line {line}) has {found} cells, the header has {expected}")]
    RowLength {
        /// The file.
        path: String,
        /// 1-based data row.
        row: usize,
        /// 1-based line.
        line: usize,
        /// Cells in the row.
        found: usize,
        /// Cells in the header.
        expected: usize,
    },
    /// A cell is empty.
    #[error("{path}: row {row} (line {line}), column \"{column}\" is empty; fill or drop the row")]
    EmptyCell {
        /// The file.
        path: String,
        /// 1-based data row.
        row: usize,
        /// 1-based line.
        line: usize,
        /// Column name.
        column: String,
    },
    /// A cell is not a number.
    #[error("{path}: row {row} (line {line}), column \"{column}\": \"{value}\" is not a number")]
    NotNumeric {
        /// The file.
        path: String,
        /// 1-based data row.
        row: usize,
        /// 1-based line.
        line: usize,
        /// Column name.
        column: String,
        /// The cell.
        value: String,
    },
    /// A cell is NaN or infinite.
    #[error(
        "{path}: row {row} (line {line}), column \"{column}\": \"{value}\" is not finite (NaN/Inf); clean the file"
    )]
    NotFinite {
        /// The file.
        path: String,
        /// 1-based data row.
        row: usize,
        /// 1-based line.
        line: usize,
        /// Column name.
        column: String,
        /// The cell.
        value: String,
    },
    /// The date/time cell is not understood.
    #[error(
        "{path}: row {row} (line {line}), column \"{column}\": \"{value}\" is not a date (use YYYY-MM-DD, \
         YYYY-MM-DD HH:MM:SS or milliseconds since the epoch)"
    )]
    BadDate {
        /// The file.
        path: String,
        /// 1-based data row.
        row: usize,
        /// 1-based line.
        line: usize,
        /// Column name.
        column: String,
        /// The cell.
        value: String,
    },
    /// Two header cells name the same column.
    #[error(
        "{path}: column \"{column}\" appears twice in the header (columns {first} and {second}); rename or drop one"
    )]
    DuplicateColumn {
        /// The file.
        path: String,
        /// The repeated name.
        column: String,
        /// 1-based position of its first appearance.
        first: usize,
        /// 1-based position of the repeat.
        second: usize,
    },
    /// A row's time is the time of the row before it.
    #[error(
        "{path}: line {line} repeats the time {value} of line {prev_line}{}; remove the duplicate rows (each time \
         may appear once)",
        more_rows(*.more)
    )]
    DuplicateTime {
        /// The file.
        path: String,
        /// 1-based line of the repeat.
        line: usize,
        /// The date cell.
        value: String,
        /// 1-based line of the row before it.
        prev_line: usize,
        /// Further rows whose time does not increase.
        more: usize,
    },
    /// A row's time is earlier than the time of the row before it.
    #[error(
        "{path}: line {line} ({value}) is earlier than line {prev_line} ({prev_value}){}; rows must be in \
         increasing time order (the 70/10/20 split and the calendar features assume it): sort the file by its date \
         column",
        more_rows(*.more)
    )]
    OutOfOrder {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// Its date cell.
        value: String,
        /// 1-based line of the row before it.
        prev_line: usize,
        /// That row's date cell.
        prev_value: String,
        /// Further rows whose time does not increase.
        more: usize,
    },
    /// A `keel stream` recording of a stream other than klines.
    #[error(
        "{path} is keel's recording of the {stream} stream; train, tune and predict take kline recordings (a \
         directory like <out>/btcusdt@kline_1m, or one file of it) or a CSV in Informer's layout"
    )]
    NotKlines {
        /// The file or directory.
        path: String,
        /// The stream, from the directory name.
        stream: String,
    },
    /// `keel stream`'s output directory (one directory per stream) instead of one stream's.
    #[error("{path} holds no .csv files: it is keel stream's output, one directory per stream; {hint}")]
    RecordingRoot {
        /// The directory.
        path: String,
        /// Which directory to give instead.
        hint: String,
    },
    /// The file has a header and no rows.
    #[error("{path} has a header but no data rows; give a file with data")]
    Empty {
        /// The file or directory.
        path: String,
    },
    /// Kline data in which no candle closed (only closed candles are used unless asked).
    #[error(
        "{path}: {rows} kline rows were read, all of still-open candles ({candles} candle(s) with is_closed = 0), and \
         training uses closed candles only; record until candles close (a 1m candle closes every minute), or pass \
         --include-open-candle to use the newest open candle too"
    )]
    OnlyOpenCandles {
        /// The file or directory.
        path: String,
        /// Rows read.
        rows: usize,
        /// Distinct open candles among them.
        candles: usize,
    },
    /// The target column does not exist.
    #[error("target column \"{target}\" is not in the data; columns are {columns:?} (use --target)")]
    UnknownTarget {
        /// Requested target.
        target: String,
        /// Available feature columns.
        columns: Vec<String>,
    },
    /// Too few rows for one training, validation and test window.
    #[error(
        "{rows} rows are too few for seq_len {seq_len} + pred_len {pred_len} with a 70/10/20 split: \
         need at least {needed}; use more data or shorter --seq-len/--pred-len"
    )]
    TooFewRows {
        /// Rows available.
        rows: usize,
        /// Rows needed.
        needed: usize,
        /// Encoder length.
        seq_len: usize,
        /// Forecast length.
        pred_len: usize,
    },
}

/// `, and N more rows out of order` when `more > 0`.
fn more_rows(more: usize) -> String {
    if more == 0 { String::new() } else { format!(" (and {more} more row(s) whose time does not increase)") }
}

/// A validated table: timestamps (ms since the epoch, UTC) and rows of finite numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Feature column names (the date column excluded).
    pub columns: Vec<String>,
    /// One timestamp per row.
    pub times_ms: Vec<i64>,
    /// Rows of `columns.len()` finite values.
    pub rows: Vec<Vec<f64>>,
}

/// Loads a CSV in Informer's layout, a recorded kline file, or a directory of recorded kline files
/// (`<out_dir>/<stream>/`, one file per day). Kline files are recognized by their header.
pub fn load(path: &Path, include_open_candle: bool) -> Result<Table, DataError> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(recording_root(path).unwrap_or_else(|| DataError::Io {
                path: path.display().to_string(),
                message: "no .csv files in it".into(),
            }));
        }
        if let Some(stream) = recorded_stream(path).filter(|s| !s.contains("@kline_")) {
            return Err(DataError::NotKlines { path: path.display().to_string(), stream });
        }
        let mut all = Vec::new();
        for f in &files {
            all.extend(read_kline_rows(f)?);
        }
        return klines_to_table(path, all, include_open_candle);
    }
    let header = read_header(path)?;
    if header.iter().map(String::as_str).eq(KLINE_HEADER.iter().copied()) {
        let rows = read_kline_rows(path)?;
        return klines_to_table(path, rows, include_open_candle);
    }
    // A day file of another recorded stream: its first column is a time, so it would otherwise be
    // read as an Informer CSV and fail on a missing target column or a boolean cell.
    if let Some(stream) = path.parent().and_then(recorded_stream).filter(|s| !s.contains("@kline_")) {
        return Err(DataError::NotKlines { path: path.display().to_string(), stream });
    }
    read_informer_csv(path)
}

/// The stream whose recordings `dir` holds, by its name (`keel stream` writes `<out>/<stream>/`);
/// only a name keel would subscribe to counts, so that `me@host/data.csv` stays an Informer CSV.
fn recorded_stream(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    keel_core::protocol::check_stream_name(name).is_ok().then(|| name.to_string())
}

/// Why `dir`, which holds no .csv files, is `keel stream`'s output directory, if it is one: its
/// subdirectories are named after streams.
fn recording_root(dir: &Path) -> Option<DataError> {
    let mut streams: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| recorded_stream(&p))
        .collect();
    streams.sort();
    let first = streams.first()?;
    let hint = match streams.iter().find(|s| s.contains("@kline_")) {
        Some(k) => format!("give a kline stream's directory, e.g. --data {}", dir.join(k).display()),
        None => {
            format!("it holds no kline stream ({first} ...): record one, e.g. keel stream --streams btcusdt@kline_1m")
        }
    };
    Some(DataError::RecordingRoot { path: dir.display().to_string(), hint })
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Io { path: path.display().to_string(), message: e.to_string() }
}

fn reader(path: &Path) -> Result<csv::Reader<std::fs::File>, DataError> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| io_err(path, e))
}

fn read_header(path: &Path) -> Result<Vec<String>, DataError> {
    let mut r = reader(path)?;
    let h = r.headers().map_err(|e| io_err(path, e))?;
    Ok(h.iter().map(str::to_string).collect())
}

/// The file's bytes and a CSV reader over them (with [`reader`]'s settings); the bytes give each
/// record its line ([`line_of`]).
fn read_all(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| io_err(path, e))
}

fn reader_of(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(bytes)
}

/// The 1-based line the record `rec` of `bytes` is on. Blank lines and quoted line breaks make it
/// differ from the row number + 1. The csv reader dates a record where the previous one ended,
/// before the blank lines it then skips: those are counted here from the record's byte offset
/// (a CRLF's `\n` is consumed with the next record, and counted the same way).
fn line_of(bytes: &[u8], rec: &csv::StringRecord, row: usize) -> usize {
    let Some(p) = rec.position() else { return row + 1 };
    let rest = bytes.get(p.byte() as usize..).unwrap_or_default();
    let blank = rest.iter().take_while(|&&b| b == b'\n' || b == b'\r').filter(|&&b| b == b'\n').count();
    p.line() as usize + blank
}

/// Parses a number cell, telling empty, non-numeric and non-finite cells apart.
fn parse_cell(path: &Path, row: usize, line: usize, column: &str, cell: &str) -> Result<f64, DataError> {
    let (p, column) = (path.display().to_string(), column.to_string());
    if cell.is_empty() {
        return Err(DataError::EmptyCell { path: p, row, line, column });
    }
    match cell.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(DataError::NotFinite { path: p, row, line, column, value: cell.into() }),
        Err(_) => Err(DataError::NotNumeric { path: p, row, line, column, value: cell.into() }),
    }
}

/// Parses a date cell: ISO date, ISO date-time (space or `T`, optional fraction/offset), or epoch ms.
pub fn parse_time(cell: &str) -> Option<i64> {
    if let Ok(ms) = cell.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(d) = NaiveDate::parse_from_str(cell, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%m/%d/%Y %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(cell, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    DateTime::parse_from_rfc3339(cell).ok().map(|t| t.timestamp_millis())
}

fn read_informer_csv(path: &Path) -> Result<Table, DataError> {
    let bytes = read_all(path)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::EmptyFile { path: path.display().to_string() });
    }
    let mut r = reader_of(&bytes);
    let header: Vec<String> = r.headers().map_err(|e| io_err(path, e))?.iter().map(str::to_string).collect();
    if header.len() < 2 || header.iter().any(String::is_empty) {
        return Err(DataError::BadHeader { path: path.display().to_string(), header });
    }
    for (j, name) in header.iter().enumerate() {
        if let Some(i) = header[..j].iter().position(|h| h == name) {
            return Err(DataError::DuplicateColumn {
                path: path.display().to_string(),
                column: name.clone(),
                first: i + 1,
                second: j + 1,
            });
        }
    }
    let columns = header[1..].to_vec();
    let (mut times_ms, mut rows) = (Vec::new(), Vec::new());
    // The previous row's (line, date cell), and the first row whose time does not increase.
    let mut prev: Option<(usize, String)> = None;
    let (mut disorder, mut more): (Option<DataError>, usize) = (None, 0);
    for (i, rec) in r.records().enumerate() {
        let row = i + 1;
        let rec = rec.map_err(|e| io_err(path, e))?;
        let line = line_of(&bytes, &rec, row);
        if rec.len() != header.len() {
            return Err(DataError::RowLength {
                path: path.display().to_string(),
                row,
                line,
                found: rec.len(),
                expected: header.len(),
            });
        }
        let date = &rec[0];
        let t = parse_time(date).ok_or_else(|| DataError::BadDate {
            path: path.display().to_string(),
            row,
            line,
            column: header[0].clone(),
            value: date.to_string(),
        })?;
        let mut values = Vec::with_capacity(columns.len());
        for (c, cell) in rec.iter().skip(1).enumerate() {
            values.push(parse_cell(path, row, line, &columns[c], cell)?);
        }
        if let (Some(&last), Some((prev_line, prev_value))) = (times_ms.last(), &prev)
            && t <= last
        {
            if disorder.is_some() {
                more += 1;
            } else {
                let (path, prev_line, value) = (path.display().to_string(), *prev_line, date.to_string());
                disorder = Some(if t == last {
                    DataError::DuplicateTime { path, line, value, prev_line, more: 0 }
                } else {
                    DataError::OutOfOrder { path, line, value, prev_line, prev_value: prev_value.clone(), more: 0 }
                });
            }
        }
        prev = Some((line, date.to_string()));
        times_ms.push(t);
        rows.push(values);
    }
    // The split takes the first 70 % as the past and windows assume steps forward in time.
    if let Some(mut e) = disorder {
        if let DataError::DuplicateTime { more: m, .. } | DataError::OutOfOrder { more: m, .. } = &mut e {
            *m = more;
        }
        return Err(e);
    }
    if rows.is_empty() {
        return Err(DataError::Empty { path: path.display().to_string() });
    }
    Ok(Table { columns, times_ms, rows })
}

/// One kline row as recorded: (open_time, is_closed, [open, high, low, close, volume]).
type KlineRow = (i64, bool, [f64; 5]);

fn read_kline_rows(path: &Path) -> Result<Vec<KlineRow>, DataError> {
    let header = read_header(path)?;
    if !header.iter().map(String::as_str).eq(KLINE_HEADER.iter().copied()) {
        return Err(DataError::BadHeader { path: path.display().to_string(), header });
    }
    let bytes = read_all(path)?;
    let mut r = reader_of(&bytes);
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let row = i + 1;
        let rec = rec.map_err(|e| io_err(path, e))?;
        let line = line_of(&bytes, &rec, row);
        if rec.len() != KLINE_HEADER.len() {
            return Err(DataError::RowLength {
                path: path.display().to_string(),
                row,
                line,
                found: rec.len(),
                expected: KLINE_HEADER.len(),
            });
        }
        let open_time = parse_cell(path, row, line, "open_time", &rec[1])?;
        let mut v = [0.0; 5];
        for (k, slot) in v.iter_mut().enumerate() {
            *slot = parse_cell(path, row, line, KLINE_HEADER[4 + k], &rec[4 + k])?;
        }
        let closed = parse_cell(path, row, line, "is_closed", &rec[10])? != 0.0;
        out.push((open_time as i64, closed, v));
    }
    Ok(out)
}

/// Keeps the last closed row per `open_time`, sorted; the still-open newest candle (no closed row,
/// newer than every closed one) is kept only when asked, from its last update. `path` (the file
/// or directory read) names the data when nothing is left: no rows at all, or open candles only
/// (a recording shorter than one candle), which would otherwise surface as "0 rows are too few".
fn klines_to_table(path: &Path, rows: Vec<KlineRow>, include_open_candle: bool) -> Result<Table, DataError> {
    let n_rows = rows.len();
    let mut closed: BTreeMap<i64, [f64; 5]> = BTreeMap::new();
    let mut open: BTreeMap<i64, [f64; 5]> = BTreeMap::new();
    for (t, is_closed, v) in rows {
        if is_closed {
            closed.insert(t, v);
        } else {
            open.insert(t, v);
        }
    }
    if include_open_candle {
        let newest_closed = closed.keys().next_back().copied().unwrap_or(i64::MIN);
        if let Some((&t, &v)) = open.iter().next_back()
            && t > newest_closed
        {
            closed.insert(t, v);
        }
    }
    let p = path.display().to_string();
    if n_rows == 0 {
        return Err(DataError::Empty { path: p });
    }
    if closed.is_empty() {
        return Err(DataError::OnlyOpenCandles { path: p, rows: n_rows, candles: open.len() });
    }
    Ok(Table {
        columns: ["open", "high", "low", "close", "volume"].iter().map(|s| s.to_string()).collect(),
        times_ms: closed.keys().copied().collect(),
        rows: closed.values().map(|v| v.to_vec()).collect(),
    })
}

/// Calendar features of a timestamp, each scaled to [-0.5, 0.5] (Informer's `timeF` encoding).
pub fn time_features(ms: i64) -> [f32; N_TIME_FEATURES] {
    let t = DateTime::from_timestamp_millis(ms).unwrap_or_default().naive_utc();
    [
        t.minute() as f32 / 59.0 - 0.5,
        t.hour() as f32 / 23.0 - 0.5,
        t.weekday().num_days_from_monday() as f32 / 6.0 - 0.5,
        (t.day() - 1) as f32 / 30.0 - 0.5,
        (t.ordinal() - 1) as f32 / 365.0 - 0.5,
    ]
}

/// Standardization statistics (fitted on the training part) and the column roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Input columns in model order (for MS and M the target is last, as in Informer).
    pub columns: Vec<String>,
    /// The target column.
    pub target: String,
    /// Which columns are inputs and outputs.
    pub features: Features,
    /// Mean per input column.
    pub mean: Vec<f64>,
    /// Standard deviation per input column (1 where a column is constant).
    pub std: Vec<f64>,
}

impl Normalization {
    /// Number of model inputs.
    pub fn c_in(&self) -> usize {
        self.columns.len()
    }

    /// Number of model outputs: every column for M, the target only for S and MS.
    pub fn c_out(&self) -> usize {
        match self.features {
            Features::M => self.columns.len(),
            Features::S | Features::MS => 1,
        }
    }

    /// Index of the first output column among the inputs.
    pub fn out_start(&self) -> usize {
        self.c_in() - self.c_out()
    }

    /// Undoes the standardization of an output value in output column `k`.
    pub fn denormalize(&self, k: usize, v: f64) -> f64 {
        let c = self.out_start() + k;
        v * self.std[c] + self.mean[c]
    }
}

/// Where column `name` is: the exact name first, then a unique case-insensitive match (`Close` for
/// recorded klines' `close`, a model trained on klines forecasting from an `Open,High,...` CSV).
pub fn column_index(columns: &[String], name: &str) -> Option<usize> {
    columns.iter().position(|c| c == name).or_else(|| {
        let mut m = columns.iter().enumerate().filter(|(_, c)| c.eq_ignore_ascii_case(name)).map(|(i, _)| i);
        match (m.next(), m.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        }
    })
}

/// Selects and orders columns for `features` and `target`: S keeps the target only, M and MS put it last.
pub fn select_columns(table: &Table, target: &str, features: Features) -> Result<(Vec<String>, Vec<usize>), DataError> {
    let ti = column_index(&table.columns, target)
        .ok_or_else(|| DataError::UnknownTarget { target: target.into(), columns: table.columns.clone() })?;
    let idx: Vec<usize> = match features {
        Features::S => vec![ti],
        Features::M | Features::MS => (0..table.columns.len()).filter(|&i| i != ti).chain([ti]).collect(),
    };
    Ok((idx.iter().map(|&i| table.columns[i].clone()).collect(), idx))
}

/// Window lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Encoder input length.
    pub seq_len: usize,
    /// Known steps given to the decoder.
    pub label_len: usize,
    /// Forecast length.
    pub pred_len: usize,
}

/// One chronological part of the data, standardized, with its calendar features.
#[derive(Debug, Clone)]
pub struct Split {
    /// Standardized rows (`c_in` values each).
    pub values: Vec<Vec<f32>>,
    /// Calendar features per row.
    pub marks: Vec<[f32; N_TIME_FEATURES]>,
    /// Timestamps per row.
    pub times_ms: Vec<i64>,
    /// Window lengths.
    pub w: Windows,
}

impl Split {
    /// Number of (input, forecast) windows.
    pub fn len(&self) -> usize {
        (self.values.len() + 1).saturating_sub(self.w.seq_len + self.w.pred_len)
    }

    /// `true` when the part holds no whole window.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The three parts plus the normalization fitted on the first.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// 70 %, fitted on.
    pub train: Split,
    /// 10 %, for early stopping.
    pub val: Split,
    /// 20 %, for the final report.
    pub test: Split,
    /// Statistics and column roles.
    pub norm: Normalization,
}

/// Minimum number of rows for one window in each part of a 70/10/20 split.
pub fn rows_needed(w: Windows) -> usize {
    // test needs pred_len rows of its own (its windows borrow seq_len rows from before it),
    // validation likewise, train needs seq_len + pred_len.
    let mut n = w.seq_len + w.pred_len;
    while !(n * 7 / 10 >= w.seq_len + w.pred_len && n / 5 >= w.pred_len && n - n * 7 / 10 - n / 5 >= w.pred_len) {
        n += 1;
    }
    n
}

/// Splits 70/10/20 as Informer does (validation and test windows start `seq_len` rows before
/// their part so every target step lies inside it), fitting the standardization on train only.
pub fn prepare(table: &Table, target: &str, features: Features, w: Windows) -> Result<Dataset, DataError> {
    let (columns, idx) = select_columns(table, target, features)?;
    let n = table.rows.len();
    let needed = rows_needed(w);
    if n < needed {
        return Err(DataError::TooFewRows { rows: n, needed, seq_len: w.seq_len, pred_len: w.pred_len });
    }
    let num_train = n * 7 / 10;
    let num_test = n / 5;
    let num_val = n - num_train - num_test;
    let c = idx.len();
    let mut mean = vec![0.0; c];
    let mut std = vec![0.0; c];
    for (k, &i) in idx.iter().enumerate() {
        let col = table.rows[..num_train].iter().map(|r| r[i]);
        mean[k] = col.clone().sum::<f64>() / num_train as f64;
        let var = col.map(|v| (v - mean[k]).powi(2)).sum::<f64>() / num_train as f64;
        std[k] = if var.sqrt() > 0.0 { var.sqrt() } else { 1.0 };
    }
    let part = |a: usize, b: usize| Split {
        values: table.rows[a..b]
            .iter()
            .map(|r| idx.iter().enumerate().map(|(k, &i)| ((r[i] - mean[k]) / std[k]) as f32).collect())
            .collect(),
        marks: table.times_ms[a..b].iter().map(|&t| time_features(t)).collect(),
        times_ms: table.times_ms[a..b].to_vec(),
        w,
    };
    let train = part(0, num_train);
    let val = part(num_train - w.seq_len, num_train + num_val);
    let test = part(n - num_test - w.seq_len, n);
    let target = columns[columns.len() - 1].clone();
    let norm = Normalization { columns, target, features, mean, std };
    Ok(Dataset { train, val, test, norm })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-data-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.csv");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_cells_are_named_by_row_and_column() {
        let cases = [
            ("nan", "date,a,b\n2020-01-01,1,2\n2020-01-02,NaN,2\n", "row 2 (line 3), column \"a\""),
            ("inf", "date,a,b\n2020-01-01,1,inf\n", "row 1 (line 2), column \"b\""),
            ("empty", "date,a,b\n2020-01-01,1,2\n2020-01-02,3,\n", "column \"b\" is empty"),
            ("text", "date,a,b\n2020-01-01,x1,2\n", "\"x1\" is not a number"),
            ("date", "date,a,b\nyesterday,1,2\n", "\"yesterday\" is not a date"),
            ("short", "date,a,b\n2020-01-01,1\n", "has 2 cells, the header has 3"),
        ];
        for (name, text, want) in cases {
            let e = load(&write(name, text), false).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn lines_count_blank_lines_and_quoted_line_breaks() {
        // Rows 1 and 2 are on lines 2 and 5 (two blank lines between); row 3 starts on line 6 and
        // its quoted cell spans two lines, so row 4 is on line 8. Also with CRLF line ends.
        let text = "date,a,b\n2020-01-01,1,0\n\n\n2020-01-02,2,0\n2020-01-03,\"3\n\",0\n2020-01-04,NaN,0\n";
        let e = load(&write("lines", text), false).unwrap_err().to_string();
        assert!(e.contains("row 4 (line 8), column \"a\""), "{e}");
        let e = load(&write("crlf", &text.replace('\n', "\r\n")), false).unwrap_err().to_string();
        assert!(e.contains("row 4 (line 8), column \"a\""), "{e}");
        let text = "date,a\n2020-01-01,1\n\n\n2020-01-02,2\n2020-01-03,3\n\n2020-01-04,NaN\n";
        let e = load(&write("blank", text), false).unwrap_err().to_string();
        assert!(e.contains("row 4 (line 8), column \"a\""), "{e}");
    }

    #[test]
    fn columns_match_exactly_then_by_a_unique_case_insensitive_name() {
        let cols = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let klines = cols(&["open", "high", "low", "close", "volume"]);
        assert_eq!(column_index(&klines, "Close"), Some(3));
        assert_eq!(column_index(&cols(&["Open", "Close", "OpenInt"]), "open"), Some(0));
        // Exact wins over a case-insensitive match; two case-insensitive matches are no match.
        assert_eq!(column_index(&cols(&["close", "Close"]), "Close"), Some(1));
        assert_eq!(column_index(&cols(&["close", "Close"]), "CLOSE"), None);
        assert_eq!(column_index(&klines, "trades"), None);
    }

    #[test]
    fn times_must_increase_and_column_names_be_unique() {
        let cases = [
            (
                "reversed",
                "date,a\n2020-01-03,1\n2020-01-02,2\n2020-01-01,3\n",
                "line 3 (2020-01-02) is earlier than line 2 (2020-01-03) (and 1 more row(s) whose time does not \
                 increase); rows must be in increasing time order",
            ),
            (
                "duplicate",
                "date,a\n2020-01-01,1\n2020-01-02,2\n\n2020-01-02,2\n2020-01-03,3\n",
                "line 5 repeats the time 2020-01-02 of line 3; remove the duplicate rows",
            ),
            ("header", "date,a,b,a\n2020-01-01,1,2,3\n", "column \"a\" appears twice in the header (columns 2 and 4)"),
            ("empty", "date,a\n", "has a header but no data rows"),
            ("nothing", "", "is empty: a training CSV starts with a header"),
            ("blank", "\n\n", "is empty: a training CSV starts with a header"),
        ];
        for (name, text, want) in cases {
            let p = write(name, text);
            let e = load(&p, false).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(&p.display().to_string()), "{name}: {e}");
        }
        // The same times a second apart are in order.
        let t = load(&write("seconds", "date,a\n2020-01-01 00:00:00,1\n2020-01-01 00:00:01,2\n"), false).unwrap();
        assert_eq!(t.times_ms[1] - t.times_ms[0], 1000);
    }

    /// keel stream's own layout, given at the wrong level or for the wrong stream, is named as such.
    #[test]
    fn recordings_of_other_streams_and_the_output_root_say_what_to_give() {
        let root = std::env::temp_dir().join(format!("keel-data-{}-rec", std::process::id()));
        let (agg, kline) = (root.join("btcusdt@aggTrade"), root.join("btcusdt@kline_1m"));
        for d in [&agg, &kline] {
            std::fs::create_dir_all(d).unwrap();
        }
        let day = agg.join("2026-12-07.csv");
        std::fs::write(&day, "event_time,agg_id,price,quantity,first_trade_id,last_trade_id,trade_time,buyer_is_maker\n1,2,3.5,1,2,2,1,true\n").unwrap();
        for p in [&agg, &day] {
            let e = load(p, false).unwrap_err().to_string();
            assert!(
                e.contains(
                    "is keel's recording of the btcusdt@aggTrade stream; train, tune and predict take kline recordings"
                ),
                "{e}"
            );
        }
        let e = load(&root, false).unwrap_err().to_string();
        assert!(e.contains("it is keel stream's output, one directory per stream"), "{e}");
        assert!(e.contains(&format!("e.g. --data {}", kline.display())), "{e}");
        std::fs::remove_dir_all(&kline).unwrap();
        let e = load(&root, false).unwrap_err().to_string();
        assert!(e.contains("it holds no kline stream (btcusdt@aggTrade ...)"), "{e}");
        // A CSV in a directory whose name only looks like a stream is read as Informer's layout.
        let other = root.join("me@host");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("x.csv"), "date,a,b\n2020-01-01,1,2\n").unwrap();
        assert_eq!(load(&other.join("x.csv"), false).unwrap().columns, ["a", "b"]);
        std::fs::remove_dir_all(&other).unwrap();
        // An empty directory of anything else keeps the plain message.
        std::fs::remove_dir_all(&agg).unwrap();
        assert!(load(&root, false).unwrap_err().to_string().contains("no .csv files in it"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn kline_data_without_a_closed_candle_says_so() {
        let h = KLINE_HEADER.join(",");
        let rows: String = (0..30)
            .map(|i| format!("{i},{},{},1m,1,2,0.5,1.5,10,3,0\n", i / 10 * 60_000, i / 10 * 60_000 + 59_999))
            .collect();
        let p = write("open", &format!("{h}\n{rows}"));
        let e = load(&p, false).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}: 30 kline rows were read, all of still-open candles (3 candle(s)", p.display())),
            "{e}"
        );
        assert!(e.contains("--include-open-candle"), "{e}");
        let e = load(p.parent().unwrap(), false).unwrap_err().to_string();
        assert!(e.contains("30 kline rows were read"), "{e}");
        let e = load(&write("kempty", &format!("{h}\n")), false).unwrap_err().to_string();
        assert!(e.contains("has a header but no data rows"), "{e}");
    }

    #[test]
    fn klines_keep_last_closed_row_per_open_time_sorted() {
        let h = KLINE_HEADER.join(",");
        let text = format!(
            "{h}\n\
             5,120000,179999,1m,9,9,9,9,9,1,0\n\
             6,60000,119999,1m,1,2,0.5,1.5,10,3,0\n\
             7,60000,119999,1m,1,2,0.5,1.6,11,4,1\n\
             8,60000,119999,1m,1,2,0.5,1.7,12,5,1\n\
             9,0,59999,1m,3,3,3,3,3,1,1\n\
             10,120000,179999,1m,9,9,9,8,9,2,0\n"
        );
        let p = write("kl", &text);
        let t = load(&p, false).unwrap();
        assert_eq!(t.times_ms, vec![0, 60000]);
        assert_eq!(t.rows[1], vec![1.0, 2.0, 0.5, 1.7, 12.0]);
        assert_eq!(t.columns, vec!["open", "high", "low", "close", "volume"]);
        let t = load(&p, true).unwrap();
        assert_eq!(t.times_ms, vec![0, 60000, 120000]);
        assert_eq!(t.rows[2][3], 8.0);
        // A directory of day files loads too.
        let t = load(p.parent().unwrap(), false).unwrap();
        assert_eq!(t.times_ms.len(), 2);
    }

    #[test]
    fn split_fits_normalization_on_train_only_and_orders_target_last() {
        let n = 100;
        let table = Table {
            columns: vec!["y".into(), "x".into()],
            times_ms: (0..n).map(|i| i as i64 * 86_400_000).collect(),
            rows: (0..n).map(|i| vec![i as f64, 1.0]).collect(),
        };
        let w = Windows { seq_len: 8, label_len: 4, pred_len: 2 };
        let d = prepare(&table, "y", Features::MS, w).unwrap();
        assert_eq!(d.norm.columns, vec!["x", "y"]);
        assert_eq!(d.norm.mean, vec![1.0, 34.5]); // rows 0..70 only
        assert_eq!(d.norm.std[0], 1.0); // constant column
        assert_eq!(d.train.values.len(), 70);
        assert_eq!(d.val.values.len(), 10 + 8);
        assert_eq!(d.test.values.len(), 20 + 8);
        assert_eq!(d.test.len(), 20 - 2 + 1);
        assert_eq!(d.norm.c_out(), 1);
        let e = prepare(&table, "z", Features::MS, w).unwrap_err();
        assert!(matches!(e, DataError::UnknownTarget { .. }));
        let short = Table { rows: table.rows[..12].to_vec(), times_ms: table.times_ms[..12].to_vec(), ..table };
        let e = prepare(&short, "y", Features::S, w).unwrap_err().to_string();
        assert!(e.contains("12 rows are too few") && e.contains("need at least 15"), "{e}");
        assert_eq!(rows_needed(w), 15);
    }

    #[test]
    fn time_features_are_in_range() {
        let f = time_features(parse_time("2024-12-31 23:59:00").unwrap());
        assert_eq!(f, [0.5, 0.5, 1.0 / 6.0 - 0.5, 0.5, 0.5]);
        assert!(time_features(0).iter().all(|v| (-0.5..=0.5).contains(v)));
    }
}
