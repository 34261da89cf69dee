//! Kline interval arithmetic: the open time of the kline after (or before) a given one, and how many
//! klines a range of open times holds, so that a kline stream can be sequenced by open time.
//!
//! Binance's intervals 1s..1d, 3d and 1w have a fixed length; 1M is a calendar month (28 to 31 days).
//! Streams with a UTC offset (`btcusdt@kline_1d@+08:00`) open their intervals at local midnight of
//! that offset: fixed intervals just step by their length from an observed open time, and months start
//! on the 1st at 00:00 local time, i.e. `offset` before 00:00 UTC.

use serde::{Deserialize, Serialize};

const SECOND: u64 = 1000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Why a kline stream's interval cannot be sequenced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    /// The stream name is not `<symbol>@kline_<interval>[@<offset>]`.
    #[error("stream {0:?} is not a kline stream (<symbol>@kline_<interval>)")]
    NotKline(String),
    /// An interval Binance does not offer.
    #[error("stream {0:?}: unknown kline interval (1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M)")]
    BadInterval(String),
    /// A UTC offset that is not `+HH:MM` / `-HH:MM` within -12:00..=+14:00.
    #[error("stream {0:?}: the UTC offset must be +HH:MM or -HH:MM between -12:00 and +14:00 (e.g. @+08:00)")]
    BadOffset(String),
}

/// The length of an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Span {
    /// A fixed number of milliseconds.
    Fixed(u64),
    /// A calendar month.
    Month,
}

/// A kline stream's interval, with its UTC offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KlineInterval {
    text: String,
    span: Span,
    /// Local time minus UTC, in ms.
    offset_ms: i64,
    /// The offset as the stream names it (`+08:00`), passed to REST as `timeZone`.
    time_zone: Option<String>,
}

impl KlineInterval {
    /// The interval of `btcusdt@kline_1m`, `btcusdt@kline_1M@+08:00`, ...
    pub fn of_stream(stream: &str) -> Result<KlineInterval, IntervalError> {
        let rest = stream
            .split_once("@kline_")
            .map(|(_, rest)| rest)
            .ok_or_else(|| IntervalError::NotKline(stream.to_owned()))?;
        let (text, tz) = match rest.split_once('@') {
            Some((text, tz)) => (text, Some(tz)),
            None => (rest, None),
        };
        let span = match text {
            "1s" => Span::Fixed(SECOND),
            "1m" => Span::Fixed(MINUTE),
            "3m" => Span::Fixed(3 * MINUTE),
            "5m" => Span::Fixed(5 * MINUTE),
            "15m" => Span::Fixed(15 * MINUTE),
            "30m" => Span::Fixed(30 * MINUTE),
            "1h" => Span::Fixed(HOUR),
            "2h" => Span::Fixed(2 * HOUR),
            "4h" => Span::Fixed(4 * HOUR),
            "6h" => Span::Fixed(6 * HOUR),
            "8h" => Span::Fixed(8 * HOUR),
            "12h" => Span::Fixed(12 * HOUR),
            "1d" => Span::Fixed(DAY),
            "3d" => Span::Fixed(3 * DAY),
            "1w" => Span::Fixed(7 * DAY),
            "1M" => Span::Month,
            _ => return Err(IntervalError::BadInterval(stream.to_owned())),
        };
        let offset_ms = match tz {
            None => 0,
            Some(tz) => parse_offset(tz).ok_or_else(|| IntervalError::BadOffset(stream.to_owned()))?,
        };
        Ok(KlineInterval { text: text.to_owned(), span, offset_ms, time_zone: tz.map(str::to_owned) })
    }

    /// Binance's name of the interval (`1m`).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The stream's UTC offset as named (`+08:00`), if any.
    pub fn time_zone(&self) -> Option<&str> {
        self.time_zone.as_deref()
    }

    /// The open time of the kline after the one opening at `open`.
    pub fn next(&self, open: u64) -> u64 {
        match self.span {
            Span::Fixed(ms) => open.saturating_add(ms),
            Span::Month => self.month_start(self.month_of(open) + 1),
        }
    }

    /// The open time of the kline before the one opening at `open` (0 at the origin).
    pub fn prev(&self, open: u64) -> u64 {
        match self.span {
            Span::Fixed(ms) => open.saturating_sub(ms),
            Span::Month => self.month_start(self.month_of(open.saturating_sub(1))),
        }
    }

    /// How many klines open in `first..=last` (both open times of this interval; 0 when `last < first`).
    pub fn count(&self, first: u64, last: u64) -> u64 {
        if last < first {
            return 0;
        }
        match self.span {
            Span::Fixed(ms) => (last - first) / ms + 1,
            Span::Month => (self.month_of(last) - self.month_of(first)).unsigned_abs() + 1,
        }
    }

    /// Months since year 0 of the local time of `t` (UTC ms).
    fn month_of(&self, t: u64) -> i64 {
        let local = t as i64 + self.offset_ms;
        let (y, m, _) = civil_from_days(local.div_euclid(DAY as i64));
        y * 12 + i64::from(m) - 1
    }

    /// The UTC ms of 00:00 local time on the 1st of month `month` (as from [`Self::month_of`]).
    fn month_start(&self, month: i64) -> u64 {
        let (y, m) = (month.div_euclid(12), month.rem_euclid(12) as u32 + 1);
        let local = days_from_civil(y, m, 1) * DAY as i64;
        (local - self.offset_ms).max(0) as u64
    }
}

/// `+08:00`, `-05:30`, `+8` -> ms east of UTC.
fn parse_offset(tz: &str) -> Option<i64> {
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    if h.is_empty() || h.len() > 2 || m.len() > 2 || !(h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit())) {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = sign * (h * 60 + m);
    (m < 60 && (-12 * 60..=14 * 60).contains(&minutes)).then_some(minutes * MINUTE as i64)
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) -> days since 1970-01-01 (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    /// 2024-01-01T00:00:00Z in ms.
    const JAN_2024: u64 = 1_704_067_200_000;

    fn iv(stream: &str) -> KlineInterval {
        KlineInterval::of_stream(stream).unwrap()
    }

    #[test]
    fn fixed_intervals_step_by_their_length() {
        let table = [
            ("x@kline_1s", 1_000),
            ("x@kline_1m", 60_000),
            ("x@kline_15m", 900_000),
            ("x@kline_4h", 14_400_000),
            ("x@kline_1d", 86_400_000),
            ("x@kline_3d", 259_200_000),
            ("x@kline_1w", 604_800_000),
            ("x@kline_1h@+08:00", 3_600_000),
        ];
        for (stream, ms) in table {
            let i = iv(stream);
            assert_eq!((i.next(JAN_2024), i.prev(JAN_2024)), (JAN_2024 + ms, JAN_2024 - ms), "{stream}");
            assert_eq!(i.count(JAN_2024, JAN_2024 + 4 * ms), 5, "{stream}");
            assert_eq!(i.count(JAN_2024 + ms, JAN_2024), 0, "{stream}");
        }
        assert_eq!(iv("x@kline_1h@+08:00").time_zone(), Some("+08:00"));
        assert_eq!(iv("x@kline_1m").text(), "1m");
    }

    #[test]
    fn months_follow_the_calendar() {
        let i = iv("x@kline_1M");
        let day = 86_400_000;
        // Jan 31 days, Feb 2024 29 (leap year), Mar 31, ... Dec 31, Feb 2025 28.
        let lengths = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, 28];
        let mut open = JAN_2024;
        for (n, days) in lengths.iter().enumerate() {
            let next = i.next(open);
            assert_eq!(next - open, days * day, "month #{n}");
            assert_eq!(i.prev(next), open, "month #{n}");
            open = next;
        }
        assert_eq!(i.count(JAN_2024, open), 15);
        assert_eq!(i.count(JAN_2024, JAN_2024), 1);
        // 2023-12-01 before 2024-01-01, and 1970 at the origin.
        assert_eq!(i.prev(JAN_2024), JAN_2024 - 31 * day);
        assert_eq!((i.next(0), i.prev(0)), (31 * day, 0));
        // +08:00: months start at 16:00 UTC on the last day of the month before.
        let local = iv("x@kline_1M@+08:00");
        let jan_local = JAN_2024 - 8 * 3_600_000;
        assert_eq!(local.next(jan_local), jan_local + 31 * day);
        assert_eq!(local.prev(jan_local), jan_local - 31 * day);
        let west = iv("x@kline_1M@-05:30");
        let jan_west = JAN_2024 + 5 * 3_600_000 + 30 * 60_000;
        assert_eq!(west.next(jan_west), jan_west + 31 * day);
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let table = [
            ("x@trade", IntervalError::NotKline("x@trade".into())),
            ("x@kline_7m", IntervalError::BadInterval("x@kline_7m".into())),
            ("x@kline_1h@08:00", IntervalError::BadOffset("x@kline_1h@08:00".into())),
            ("x@kline_1h@+15:00", IntervalError::BadOffset("x@kline_1h@+15:00".into())),
            ("x@kline_1h@+08:75", IntervalError::BadOffset("x@kline_1h@+08:75".into())),
        ];
        for (stream, e) in table {
            assert_eq!(KlineInterval::of_stream(stream), Err(e.clone()), "{stream}");
            assert!(e.to_string().contains(stream));
        }
    }

    quickcheck! {
        /// For any day from 1970 to ~2250 and any interval: next and prev are inverse, next is
        /// later, and a range from an open to k steps later holds k + 1 klines.
        fn next_prev_and_count_agree(day: u32, which: u8, steps: u8) -> bool {
            let names = ["x@kline_1s", "x@kline_1h", "x@kline_1d", "x@kline_1w", "x@kline_1M", "x@kline_1M@+08:00"];
            let i = iv(names[usize::from(which) % names.len()]);
            let start = i.next(i.prev(u64::from(day % 100_000) * DAY + DAY * 40));
            let mut open = start;
            for _ in 0..steps % 40 {
                let next = i.next(open);
                if next <= open || i.prev(next) != open {
                    return false;
                }
                open = next;
            }
            i.count(start, open) == u64::from(steps % 40) + 1
        }
    }

    #[test]
    fn civil_round_trips() {
        for days in [-1, 0, 59, 365, 11_016, 19_723, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }
}
