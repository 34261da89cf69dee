//! Per-stream sequence tracking: which events are new, which are duplicates, and which ids went missing.
//!
//! Binance numbers most market events. keel checks, per stream name:
//! - aggTrade: `a` is continuous (`a == prev a + 1`), and the trade ids it covers are too
//!   (`f == prev l + 1`); a jump in `a` is reported in aggregate-trade ids, a jump in `f` alone in
//!   trade ids.
//! - trade: `t` is continuous.
//! - depthUpdate: `U == prev u + 1`; the missing range is `prev u + 1 ..= U - 1`. An update whose
//!   `U <= prev u < u` overlaps the last one (as the first update after a book snapshot does) and is fresh.
//! - bookTicker and partial depth (`@depth5`): the update id only increases; Binance skips ids by design
//!   there, so no gap is ever reported, only duplicates dropped.
//! - kline: no sequence; every kline is fresh (a kline is a running update of its interval).
//!
//! The first event seen on a stream is fresh. Tracking deliberately survives reconnects (the tracker
//! lives outside any one transport): that is how ids lost during an outage show up as a gap, and how
//! events replayed by a new transport (make-before-break) are recognised as duplicates.
//!
//! An id at or below the last one seen is a duplicate, even when it fills a gap reported earlier: a late,
//! reordered frame is dropped, so the events handed on are strictly increasing and the gap report stays
//! the single record of what is missing. If a server legitimately restarts its numbering, call
//! [`GapTracker::forget`] for that stream; otherwise everything would be dropped as duplicate until the
//! ids exceed the old ones.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash (rustc's hasher): a multiply and rotate per word. The streams are a handful of names from
/// our own configuration, so SipHash's flooding resistance buys nothing, and this lookup runs once per
/// market event.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The sequence numbers of one market event, as far as continuity goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sequence {
    /// aggTrade: aggregate id `a`, and the first (`f`) and last (`l`) trade ids it aggregates.
    AggTrade { id: u64, first_trade: u64, last_trade: u64 },
    /// trade: trade id `t`.
    Trade { id: u64 },
    /// depthUpdate: first (`U`) and final (`u`) update id of the diff.
    Depth { first: u64, last: u64 },
    /// bookTicker: order book update id `u`; increases but skips ids by design.
    BookTicker { id: u64 },
    /// Partial book depth (`@depth5/10/20`): `lastUpdateId`; increases but skips ids by design.
    Snapshot { id: u64 },
    /// No sequence number (kline).
    Unsequenced,
}

/// Which numbering a [`Gap`] counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GapKind {
    /// Aggregate trade ids (aggTrade `a`).
    AggTradeId,
    /// Trade ids (trade `t`, or aggTrade `f`/`l` when `a` itself was continuous).
    TradeId,
    /// Order book update ids (depthUpdate `U`/`u`).
    UpdateId,
}

/// Ids missing on one stream: `first_missing ..= last_missing`, counted in `kind` ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gap {
    pub stream: String,
    pub first_missing: u64,
    pub last_missing: u64,
    pub kind: GapKind,
}

impl Gap {
    /// How many ids are missing (at least 1).
    pub fn missing(&self) -> u64 {
        self.last_missing.saturating_sub(self.first_missing).saturating_add(1)
    }
}

/// What to do with an observed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// New and contiguous with the previous event (or the first on its stream): pass it on.
    Fresh,
    /// Seen before (its id is at or below the last one): the caller drops the event.
    Duplicate,
    /// New, but ids between the previous event and this one never arrived: pass it on and report the gap.
    FreshAfterGap(Gap),
}

impl Verdict {
    /// Whether the event should be passed on (anything but a duplicate).
    pub fn is_fresh(&self) -> bool {
        !matches!(self, Verdict::Duplicate)
    }
}

/// The last position seen on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    AggTrade { id: u64, last_trade: u64 },
    Trade { id: u64 },
    Depth { last: u64 },
    Increasing { id: u64 },
}

impl Last {
    fn of(seq: Sequence) -> Option<Last> {
        match seq {
            Sequence::AggTrade { id, last_trade, .. } => Some(Last::AggTrade { id, last_trade }),
            Sequence::Trade { id } => Some(Last::Trade { id }),
            Sequence::Depth { last, .. } => Some(Last::Depth { last }),
            Sequence::BookTicker { id } | Sequence::Snapshot { id } => Some(Last::Increasing { id }),
            Sequence::Unsequenced => None,
        }
    }

    fn id(self) -> u64 {
        match self {
            Last::AggTrade { id, .. } | Last::Trade { id } | Last::Increasing { id } => id,
            Last::Depth { last } => last,
        }
    }
}

/// Sequence state per stream name; see the module docs for the rules.
#[derive(Debug, Clone, Default)]
pub struct GapTracker {
    streams: HashMap<String, Last, BuildHasherDefault<FxHasher>>,
}

impl GapTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        GapTracker::default()
    }

    /// Classifies the next event on `stream` and remembers it if it is fresh.
    pub fn observe(&mut self, stream: &str, seq: Sequence) -> Verdict {
        let Some(next) = Last::of(seq) else {
            return Verdict::Fresh;
        };
        let Some(last) = self.streams.get_mut(stream) else {
            self.streams.insert(stream.to_owned(), next);
            return Verdict::Fresh;
        };
        let gap = |first_missing: u64, last_missing: u64, kind: GapKind| {
            Verdict::FreshAfterGap(Gap { stream: stream.to_owned(), first_missing, last_missing, kind })
        };
        let verdict = match (*last, seq) {
            (Last::AggTrade { id: prev, last_trade: prev_last }, Sequence::AggTrade { id, first_trade, .. }) => {
                if id <= prev {
                    return Verdict::Duplicate;
                } else if id > prev + 1 {
                    gap(prev + 1, id - 1, GapKind::AggTradeId)
                } else if first_trade > prev_last.saturating_add(1) {
                    gap(prev_last + 1, first_trade - 1, GapKind::TradeId)
                } else {
                    Verdict::Fresh
                }
            }
            (Last::Trade { id: prev }, Sequence::Trade { id }) => {
                if id <= prev {
                    return Verdict::Duplicate;
                } else if id > prev + 1 {
                    gap(prev + 1, id - 1, GapKind::TradeId)
                } else {
                    Verdict::Fresh
                }
            }
            (Last::Depth { last: prev }, Sequence::Depth { first, last: next_last }) => {
                if next_last <= prev {
                    return Verdict::Duplicate;
                } else if first > prev + 1 {
                    gap(prev + 1, first - 1, GapKind::UpdateId)
                } else {
                    Verdict::Fresh
                }
            }
            (Last::Increasing { id: prev }, Sequence::BookTicker { id } | Sequence::Snapshot { id }) => {
                if id <= prev {
                    return Verdict::Duplicate;
                }
                Verdict::Fresh
            }
            // The stream changed kind (a stream name reused for another event type): start over.
            _ => Verdict::Fresh,
        };
        *last = next;
        verdict
    }

    /// The last id seen on `stream` (`a`, `t`, depth `u`, bookTicker `u`), if any.
    pub fn last_seen(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).map(|last| last.id())
    }

    /// Forgets `stream`: its next event is fresh whatever its id (an unsubscribed stream, or a server
    /// that restarted its numbering).
    pub fn forget(&mut self, stream: &str) {
        self.streams.remove(stream);
    }

    /// Number of streams with a remembered position.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream has a remembered position.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn gap(stream: &str, first_missing: u64, last_missing: u64, kind: GapKind) -> Verdict {
        Verdict::FreshAfterGap(Gap { stream: stream.into(), first_missing, last_missing, kind })
    }

    fn agg(id: u64, first_trade: u64, last_trade: u64) -> Sequence {
        Sequence::AggTrade { id, first_trade, last_trade }
    }

    #[test]
    fn agg_trade_table() {
        let s = "btcusdt@aggTrade";
        let table = [
            (agg(10, 100, 105), Verdict::Fresh),
            (agg(11, 106, 106), Verdict::Fresh),
            (agg(11, 106, 106), Verdict::Duplicate),
            (agg(9, 90, 99), Verdict::Duplicate),
            (agg(15, 120, 121), gap(s, 12, 14, GapKind::AggTradeId)),
            (agg(16, 125, 125), gap(s, 122, 124, GapKind::TradeId)),
            (agg(17, 126, 130), Verdict::Fresh),
            (agg(12, 107, 107), Verdict::Duplicate), // late frame inside the reported gap: dropped
        ];
        let mut t = GapTracker::new();
        for (i, (seq, want)) in table.into_iter().enumerate() {
            assert_eq!(t.observe(s, seq), want, "row {i}");
        }
        assert_eq!(t.last_seen(s), Some(17));
    }

    #[test]
    fn trade_depth_and_book_ticker_tables() {
        let mut t = GapTracker::new();
        let rows: Vec<(&str, Sequence, Verdict)> = vec![
            ("x@trade", Sequence::Trade { id: 5 }, Verdict::Fresh),
            ("x@trade", Sequence::Trade { id: 6 }, Verdict::Fresh),
            ("x@trade", Sequence::Trade { id: 9 }, gap("x@trade", 7, 8, GapKind::TradeId)),
            ("x@trade", Sequence::Trade { id: 9 }, Verdict::Duplicate),
            ("x@depth", Sequence::Depth { first: 157, last: 160 }, Verdict::Fresh),
            ("x@depth", Sequence::Depth { first: 161, last: 161 }, Verdict::Fresh),
            ("x@depth", Sequence::Depth { first: 150, last: 161 }, Verdict::Duplicate),
            ("x@depth", Sequence::Depth { first: 158, last: 165 }, Verdict::Fresh), // overlap, as after a snapshot
            ("x@depth", Sequence::Depth { first: 170, last: 175 }, gap("x@depth", 166, 169, GapKind::UpdateId)),
            ("x@bookTicker", Sequence::BookTicker { id: 400 }, Verdict::Fresh),
            ("x@bookTicker", Sequence::BookTicker { id: 407 }, Verdict::Fresh), // skips by design: no gap
            ("x@bookTicker", Sequence::BookTicker { id: 407 }, Verdict::Duplicate),
            ("x@bookTicker", Sequence::BookTicker { id: 401 }, Verdict::Duplicate),
            ("x@depth5", Sequence::Snapshot { id: 160 }, Verdict::Fresh),
            ("x@depth5", Sequence::Snapshot { id: 160 }, Verdict::Duplicate),
            ("x@kline_1m", Sequence::Unsequenced, Verdict::Fresh),
            ("x@kline_1m", Sequence::Unsequenced, Verdict::Fresh),
        ];
        for (i, (stream, seq, want)) in rows.into_iter().enumerate() {
            assert_eq!(t.observe(stream, seq), want, "row {i}");
        }
        assert_eq!(t.last_seen("x@trade"), Some(9));
        assert_eq!(t.last_seen("x@depth"), Some(175));
        assert_eq!(t.last_seen("x@bookTicker"), Some(407));
        assert_eq!(t.last_seen("x@kline_1m"), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn streams_are_independent_and_forget_restarts_one() {
        let mut t = GapTracker::new();
        assert_eq!(t.observe("a@trade", Sequence::Trade { id: 100 }), Verdict::Fresh);
        assert_eq!(t.observe("b@trade", Sequence::Trade { id: 1 }), Verdict::Fresh);
        assert_eq!(t.observe("a@trade", Sequence::Trade { id: 1 }), Verdict::Duplicate);
        t.forget("a@trade");
        assert_eq!(t.last_seen("a@trade"), None);
        assert_eq!(t.observe("a@trade", Sequence::Trade { id: 1 }), Verdict::Fresh);
        assert_eq!(t.observe("b@trade", Sequence::Trade { id: 2 }), Verdict::Fresh);
    }

    #[test]
    fn gap_survives_a_reconnect_because_the_tracker_does() {
        // The connection keeps one tracker across transports: ids lost while down become one gap.
        let mut t = GapTracker::new();
        for id in 1..=50 {
            assert_eq!(t.observe("s", Sequence::Trade { id }), Verdict::Fresh);
        }
        // ... transport dropped, new transport, first event:
        let v = t.observe("s", Sequence::Trade { id: 73 });
        assert_eq!(v, gap("s", 51, 72, GapKind::TradeId));
        let Verdict::FreshAfterGap(g) = v else { unreachable!() };
        assert_eq!(g.missing(), 22);
    }

    #[test]
    fn extreme_ids_do_not_overflow() {
        let mut t = GapTracker::new();
        assert_eq!(t.observe("s", Sequence::Trade { id: u64::MAX }), Verdict::Fresh);
        assert_eq!(t.observe("s", Sequence::Trade { id: u64::MAX }), Verdict::Duplicate);
        assert_eq!(t.observe("a", agg(0, u64::MAX, u64::MAX)), Verdict::Fresh);
        assert_eq!(t.observe("a", agg(1, 0, 0)), Verdict::Fresh);
        assert_eq!(t.observe("d", Sequence::Depth { first: u64::MAX, last: u64::MAX }), Verdict::Fresh);
        assert_eq!(t.observe("d", Sequence::Depth { first: 0, last: u64::MAX }), Verdict::Duplicate);
    }

    /// Feeds `ids` to a tracker as `seq(id)` and checks the contract: accepted ids strictly increase,
    /// no id is accepted twice, and the gaps reported are exactly the holes between accepted ids.
    fn check_ids(ids: &[u64], seq: impl Fn(u64) -> Sequence, kind: GapKind) -> bool {
        let mut t = GapTracker::new();
        let mut accepted: Vec<u64> = Vec::new();
        let mut missing: Vec<(u64, u64)> = Vec::new();
        for &id in ids {
            match t.observe("s", seq(id)) {
                Verdict::Fresh => accepted.push(id),
                Verdict::FreshAfterGap(g) => {
                    if g.kind != kind || g.stream != "s" || g.first_missing > g.last_missing {
                        return false;
                    }
                    missing.push((g.first_missing, g.last_missing));
                    accepted.push(id);
                }
                Verdict::Duplicate => {
                    if accepted.last().is_some_and(|&last| id > last) {
                        return false; // a new id must never be dropped
                    }
                }
            }
        }
        if !accepted.windows(2).all(|w| w[0] < w[1]) {
            return false;
        }
        // Every hole between consecutive accepted ids is reported exactly, in order.
        let expected: Vec<(u64, u64)> =
            accepted.windows(2).filter(|w| w[1] > w[0] + 1).map(|w| (w[0] + 1, w[1] - 1)).collect();
        expected == missing && t.last_seen("s") == accepted.last().copied()
    }

    quickcheck! {
        fn trade_ids_report_exactly_the_missing_ranges(ids: Vec<u16>) -> bool {
            let ids: Vec<u64> = ids.into_iter().map(|i| u64::from(i % 64)).collect();
            check_ids(&ids, |id| Sequence::Trade { id }, GapKind::TradeId)
        }

        fn agg_ids_report_exactly_the_missing_ranges(ids: Vec<u16>) -> bool {
            // Trade ids move in lock step with `a` (one trade per aggregate), so only `a` gaps show.
            let ids: Vec<u64> = ids.into_iter().map(|i| u64::from(i % 64)).collect();
            check_ids(&ids, |id| agg(id, id * 3, id * 3 + 2), GapKind::AggTradeId)
        }

        fn depth_updates_report_exactly_the_missing_ranges(steps: Vec<(u8, u8)>) -> bool {
            // Build diffs from (start offset, length) pairs around a moving cursor, including overlaps
            // and repeats, then check accepted `u`s strictly increase and every hole is reported.
            let mut t = GapTracker::new();
            let mut prev: Option<u64> = None;
            let mut cursor = 1000u64;
            for (skip, len) in steps {
                let first = (cursor + u64::from(skip % 8)).saturating_sub(3);
                let last = first + u64::from(len % 5);
                cursor = last;
                match (t.observe("d", Sequence::Depth { first, last }), prev) {
                    (Verdict::Duplicate, Some(p)) if last <= p => {}
                    (Verdict::Fresh, None) => prev = Some(last),
                    (Verdict::Fresh, Some(p)) if last > p && first <= p + 1 => prev = Some(last),
                    (Verdict::FreshAfterGap(g), Some(p))
                        if last > p && first > p + 1 && g.first_missing == p + 1 && g.last_missing == first - 1 =>
                    {
                        prev = Some(last)
                    }
                    _ => return false,
                }
            }
            t.last_seen("d") == prev
        }

        fn book_ticker_never_reports_gaps(ids: Vec<u32>) -> bool {
            let mut t = GapTracker::new();
            let mut max: Option<u64> = None;
            ids.into_iter().all(|id| {
                let id = u64::from(id);
                let v = t.observe("b", Sequence::BookTicker { id });
                let ok = match max {
                    Some(m) if id <= m => v == Verdict::Duplicate,
                    _ => v == Verdict::Fresh,
                };
                max = max.max(Some(id));
                ok
            })
        }
    }
}
