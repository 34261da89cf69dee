//! [`OrderBook`]: a local copy of one symbol's order book, built from a REST snapshot and kept up to
//! date with `<symbol>@depth` diffs (issue 9, item 3).
//!
//! Prices are exact [`Decimal`]s, ordered by value (`"4.0"` and `"4.00"` are one level); a diff's
//! quantity 0 removes the level (Binance: "Receiving an event that removes a price level that is not
//! in your local order book can happen and is normal").

use super::{RecoveryOutput, RecoveryStats};
use crate::protocol::rest::DepthSnapshot;
use crate::protocol::{Decimal, DepthUpdate, Level};
use crate::time::Timestamp;
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A price ordered by value, so that one level is one key whatever its trailing zeros.
#[derive(Debug, Clone, Copy)]
struct Price(Decimal);

impl PartialEq for Price {
    fn eq(&self, other: &Self) -> bool {
        self.0.cmp_value(other.0) == Ordering::Equal
    }
}
impl Eq for Price {}
impl PartialOrd for Price {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Price {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp_value(other.0)
    }
}

/// One side of a book, one level per price value: the best levels in a short sorted `Vec` (`top`,
/// best last), every other level in a `BTreeMap` (`rest`, all worse than the worst of `top`).
///
/// Why two parts: nearly every change of a diff is at or near the top of the book (Binance's depth
/// stream, keel's benchmark blast). In `top` such a change is found by comparing with the last few
/// levels ([`TOP_SCAN`]) and inserted or removed with a short move of the levels above it; the
/// `BTreeMap` alone searched from its root every time (~220 instructions per level on a 60-level book,
/// docs/BENCHMARKS.md figure 4). A sorted `Vec` alone lost on changes deep in a 1 000-level book, where
/// an insert or removal moves every level above it (3 times the instructions of the `BTreeMap` in
/// `core_instr book_deep`); those go to `rest`. `top` holds at most [`TOP_MAX`] levels: past it, its worst
/// half moves to `rest`; emptied, it takes the best [`TOP_REFILL`] of `rest`.
#[derive(Debug, Clone, Default)]
struct Side {
    /// Best last.
    top: Vec<Level>,
    rest: BTreeMap<Price, Level>,
}

/// How many levels from the top a change is looked for one by one before a binary search.
const TOP_SCAN: usize = 8;
/// Most levels `top` holds (small in tests, so that the properties cross the two parts).
const TOP_MAX: usize = if cfg!(test) { 6 } else { 64 };
/// Levels moved between `top` and `rest` at a time.
const TOP_REFILL: usize = TOP_MAX / 2;

impl Side {
    /// `a` against `b` in this side's storage order (best last: bids by rising price, asks by falling).
    #[inline(always)]
    fn order(bids: bool, a: Decimal, b: Decimal) -> Ordering {
        if bids { a.cmp_value(b) } else { b.cmp_value(a) }
    }

    /// Where `price` is in `top` (`Ok`) or would go (`Err`), like `binary_search`.
    #[inline]
    fn find(top: &[Level], bids: bool, price: Decimal) -> Result<usize, usize> {
        let floor = top.len().saturating_sub(TOP_SCAN);
        let mut i = top.len();
        while i > floor {
            match Self::order(bids, top[i - 1].0, price) {
                Ordering::Equal => return Ok(i - 1),
                Ordering::Less => return Err(i),
                Ordering::Greater => i -= 1,
            }
        }
        top[..floor].binary_search_by(|l| Self::order(bids, l.0, price))
    }

    /// Applies one level as sent: quantity 0 removes it, anything else sets it (keeping the price text
    /// as last sent and the new quantity).
    fn set(&mut self, bids: bool, (price, qty): Level) {
        let zero = is_zero(qty);
        // Below the worst level of `top`: `rest`'s (`top` is empty only when `rest` is).
        if let Some(worst) = self.top.first()
            && Self::order(bids, price, worst.0) == Ordering::Less
        {
            if zero {
                self.rest.remove(&Price(price));
            } else {
                self.rest.insert(Price(price), (price, qty));
            }
            return;
        }
        match (Self::find(&self.top, bids, price), zero) {
            (Ok(at), false) => self.top[at] = (price, qty),
            (Ok(at), true) => {
                self.top.remove(at);
                if self.top.is_empty() {
                    self.refill(bids);
                }
            }
            (Err(at), false) => {
                self.top.insert(at, (price, qty));
                if self.top.len() > TOP_MAX {
                    self.rest.extend(self.top.drain(..TOP_REFILL).map(|l| (Price(l.0), l)));
                }
            }
            (Err(_), true) => {}
        }
    }

    /// Moves the best [`TOP_REFILL`] levels of `rest` into the empty `top`.
    fn refill(&mut self, bids: bool) {
        for _ in 0..TOP_REFILL {
            let best = if bids { self.rest.pop_last() } else { self.rest.pop_first() };
            match best {
                Some((_, level)) => self.top.push(level),
                None => break,
            }
        }
        self.top.reverse();
    }

    /// The side of a snapshot's levels, as if each were [`Self::set`] in turn (the last level sent for
    /// a price wins).
    fn from_levels(bids: bool, sent: &[Level]) -> Side {
        let mut levels = sent.to_vec();
        // Stable: levels of one price value keep the order they were sent in.
        levels.sort_by(|a, b| Self::order(bids, a.0, b.0));
        let mut kept: Vec<Level> = Vec::with_capacity(levels.len());
        for level in levels {
            match kept.last_mut() {
                Some(last) if last.0.cmp_value(level.0) == Ordering::Equal => *last = level,
                _ => kept.push(level),
            }
        }
        kept.retain(|l| !is_zero(l.1));
        let top = kept.split_off(kept.len().saturating_sub(TOP_REFILL));
        Side { top, rest: kept.into_iter().map(|l| (Price(l.0), l)).collect() }
    }

    /// The levels, best first.
    fn levels(&self, bids: bool) -> impl Iterator<Item = Level> + '_ {
        let rest: Box<dyn Iterator<Item = &Level>> =
            if bids { Box::new(self.rest.values().rev()) } else { Box::new(self.rest.values()) };
        self.top.iter().rev().chain(rest).copied()
    }

    fn len(&self) -> usize {
        self.top.len() + self.rest.len()
    }

    /// Same levels by price value, with equal quantities (the spelling of a price does not count).
    fn same(&self, other: &Side, bids: bool) -> bool {
        self.len() == other.len()
            && self
                .levels(bids)
                .zip(other.levels(bids))
                .all(|(a, b)| a.0.cmp_value(b.0) == Ordering::Equal && a.1 == b.1)
    }
}

/// One symbol's book; see the module docs.
///
/// Each side holds the levels as last sent (price text and quantity), ordered by price value (see
/// `Side`): a diff that changes a level's quantity, nearly all of them, updates it in place, and the
/// price keeps the spelling of the latest diff.
#[derive(Debug, Clone)]
pub struct OrderBook {
    last_update_id: u64,
    bids: Side,
    asks: Side,
}

/// Books are equal when they hold the same levels by price value, with equal quantities (the
/// spelling of a price does not count, as it does not in the book's order).
impl PartialEq for OrderBook {
    fn eq(&self, other: &Self) -> bool {
        self.last_update_id == other.last_update_id
            && self.bids.same(&other.bids, true)
            && self.asks.same(&other.asks, false)
    }
}
impl Eq for OrderBook {}

fn is_zero(d: Decimal) -> bool {
    d.mantissa_wide() == 0
}

impl OrderBook {
    /// The book of a REST snapshot.
    pub fn from_snapshot(snapshot: &DepthSnapshot) -> OrderBook {
        OrderBook {
            last_update_id: snapshot.last_update_id,
            bids: Side::from_levels(true, &snapshot.bids),
            asks: Side::from_levels(false, &snapshot.asks),
        }
    }

    /// Applies a diff (the caller has checked its ids) and moves `last_update_id` to its `u`.
    pub fn apply(&mut self, diff: &DepthUpdate) {
        for &level in diff.bids() {
            self.bids.set(true, level);
        }
        for &level in diff.asks() {
            self.asks.set(false, level);
        }
        self.last_update_id = diff.final_update_id;
    }

    /// The update id the book is current to.
    pub fn last_update_id(&self) -> u64 {
        self.last_update_id
    }

    /// Highest bid `(price, qty)`.
    pub fn best_bid(&self) -> Option<(Decimal, Decimal)> {
        self.bids.top.last().copied()
    }

    /// Lowest ask `(price, qty)`.
    pub fn best_ask(&self) -> Option<(Decimal, Decimal)> {
        self.asks.top.last().copied()
    }

    /// Bids, best (highest) first.
    pub fn bids(&self) -> impl Iterator<Item = (Decimal, Decimal)> + '_ {
        self.bids.levels(true)
    }

    /// Asks, best (lowest) first.
    pub fn asks(&self) -> impl Iterator<Item = (Decimal, Decimal)> + '_ {
        self.asks.levels(false)
    }

    /// Number of bid and ask levels.
    pub fn depth(&self) -> (usize, usize) {
        (self.bids.len(), self.asks.len())
    }
}

/// Failed snapshot requests pause like failed backfill requests (1 s doubling to 30 s), but are
/// never given up: a book is always wanted.
const SNAPSHOT_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Where one symbol's book is in Binance's sync procedure.
#[derive(Debug, Clone)]
enum SyncState {
    /// Diffs are buffered while a snapshot is fetched (or queued to be).
    Waiting {
        /// Diffs since the stream (re)started, oldest first, at most `max_buffered`.
        buffer: VecDeque<DepthUpdate>,
        /// Tells this wait's snapshot from an earlier one's.
        serial: u64,
        /// A snapshot request is out.
        in_flight: bool,
        /// Not before this (after a failure).
        retry_at: Option<Timestamp>,
        /// Failures in a row.
        failures: u32,
    },
    /// The book is current to its `last_update_id`; each diff must continue it.
    Synced(OrderBook),
}

/// One symbol's book and its sync state (Binance's "How to manage a local order book correctly").
#[derive(Debug, Clone)]
pub(super) struct BookSync {
    symbol: String,
    state: SyncState,
}

/// What the sync machine needs from [`super::Recovery`] for one operation.
pub(super) struct BookCtx<'a> {
    pub out: &'a mut VecDeque<RecoveryOutput>,
    pub stats: &'a mut RecoveryStats,
    pub serial: &'a mut u64,
    pub max_buffered: usize,
}

fn next_serial(serial: &mut u64) -> u64 {
    *serial += 1;
    *serial
}

impl BookSync {
    /// A symbol whose first diff just arrived: buffer it and ask for a snapshot.
    pub(super) fn new(symbol: &str, serial: &mut u64) -> BookSync {
        BookSync {
            symbol: symbol.to_owned(),
            state: SyncState::Waiting {
                buffer: VecDeque::new(),
                serial: next_serial(serial),
                in_flight: false,
                retry_at: None,
                failures: 0,
            },
        }
    }

    /// The book, while synced.
    pub(super) fn book(&self) -> Option<&OrderBook> {
        match &self.state {
            SyncState::Synced(book) => Some(book),
            SyncState::Waiting { .. } => None,
        }
    }

    /// When this symbol's snapshot request may go out (`None`: synced, or one is out).
    pub(super) fn wants_at(&self) -> Option<Timestamp> {
        match &self.state {
            SyncState::Waiting { in_flight: false, retry_at, buffer, .. } if !buffer.is_empty() => {
                Some(retry_at.unwrap_or(Timestamp::ZERO))
            }
            _ => None,
        }
    }

    /// The serial of the snapshot request to send now, if one is wanted and due.
    pub(super) fn want(&self, now: Timestamp) -> Option<u64> {
        match &self.state {
            SyncState::Waiting { in_flight: false, retry_at, serial, buffer, .. }
                if !buffer.is_empty() && retry_at.is_none_or(|at| now >= at) =>
            {
                Some(*serial)
            }
            _ => None,
        }
    }

    /// The snapshot request for `serial` went out.
    pub(super) fn sent(&mut self, serial: u64) {
        if let SyncState::Waiting { in_flight, serial: s, .. } = &mut self.state
            && *s == serial
        {
            *in_flight = true;
        }
    }

    /// A diff from the stream.
    pub(super) fn on_diff(&mut self, diff: &DepthUpdate, cx: &mut BookCtx<'_>) {
        match &mut self.state {
            SyncState::Waiting { buffer, .. } => {
                buffer.push_back(diff.clone());
                while buffer.len() > cx.max_buffered {
                    buffer.pop_front(); // a snapshot older than what is left is refetched anyway
                }
            }
            SyncState::Synced(book) => {
                let id = book.last_update_id();
                if diff.final_update_id <= id {
                    // Older than the book (Binance: ignore).
                } else if diff.first_update_id > id + 1 {
                    let reason = format!(
                        "diff U={} u={} does not continue the book at {id}: updates {}..={} missing",
                        diff.first_update_id,
                        diff.final_update_id,
                        id + 1,
                        diff.first_update_id - 1
                    );
                    self.resync(reason, diff, cx);
                } else {
                    book.apply(diff);
                }
            }
        }
    }

    /// Discards the book (this symbol only) and starts over from `diff`.
    fn resync(&mut self, reason: String, diff: &DepthUpdate, cx: &mut BookCtx<'_>) {
        cx.stats.book_resyncs += 1;
        cx.out.push_back(RecoveryOutput::BookResync { symbol: self.symbol.clone(), reason });
        self.state = SyncState::Waiting {
            buffer: VecDeque::from([diff.clone()]),
            serial: next_serial(cx.serial),
            in_flight: false,
            retry_at: None,
            failures: 0,
        };
    }

    /// The snapshot request `serial` failed (`None`) or answered (`Some`).
    pub(super) fn on_snapshot(
        &mut self,
        serial: u64,
        snapshot: Option<&DepthSnapshot>,
        now: Timestamp,
        cx: &mut BookCtx<'_>,
    ) {
        let SyncState::Waiting { buffer, serial: s, in_flight, retry_at, failures } = &mut self.state else {
            return;
        };
        if *s != serial || !*in_flight {
            return;
        }
        *in_flight = false;
        let Some(snapshot) = snapshot else {
            *failures += 1;
            let pause = SNAPSHOT_RETRY.0.saturating_mul(1 << (*failures - 1).min(16)).min(SNAPSHOT_RETRY.1);
            *retry_at = Some(now + pause);
            return;
        };
        *failures = 0;
        *retry_at = None;
        let mut book = OrderBook::from_snapshot(snapshot);
        // Drop diffs the snapshot already includes (u <= lastUpdateId); the first applied one must
        // straddle lastUpdateId + 1, and each later one continue the previous. Otherwise fetch again:
        // the snapshot is older than the first buffered diff (Binance's rule), or there is a hole
        // among the buffered diffs that only a newer snapshot can cover.
        for d in buffer.iter().filter(|d| d.final_update_id > snapshot.last_update_id) {
            if d.first_update_id > book.last_update_id() + 1 {
                *s = next_serial(cx.serial);
                return;
            }
            book.apply(d);
        }
        cx.out.push_back(RecoveryOutput::BookSynced {
            symbol: self.symbol.clone(),
            last_update_id: snapshot.last_update_id,
        });
        self.state = SyncState::Synced(book);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn lv(p: &str, q: &str) -> Level {
        (d(p), d(q))
    }

    /// A level change for the property: price in ticks (spelled with 2 or 3 decimals), quantity (0 removes).
    #[derive(Debug, Clone)]
    struct Change {
        bid: bool,
        ticks: u8,
        long: bool,
        qty: u8,
    }

    impl quickcheck::Arbitrary for Change {
        fn arbitrary(g: &mut quickcheck::Gen) -> Self {
            let small = |g: &mut quickcheck::Gen| u8::arbitrary(g) % 24;
            Change { bid: bool::arbitrary(g), ticks: small(g), long: bool::arbitrary(g), qty: small(g) % 4 }
        }
    }

    quickcheck::quickcheck! {
        /// The book equals a plain model (a list of levels per side, looked up by value): same levels
        /// in the same order, with the quantity and the price spelling of the last change.
        fn apply_matches_a_list_model(changes: Vec<Change>) -> bool {
            let text = |c: &Change| {
                let (p, q) = (f64::from(c.ticks) / 100.0 + 1.0, c.qty.to_string());
                (if c.long { format!("{p:.3}") } else { format!("{p:.2}") }, q)
            };
            let mut book = OrderBook::from_snapshot(&DepthSnapshot { last_update_id: 0, bids: vec![], asks: vec![] });
            let (mut bids, mut asks): (Vec<Level>, Vec<Level>) = (vec![], vec![]);
            for (i, c) in changes.iter().enumerate() {
                let (p, q) = text(c);
                let level = lv(&p, &q);
                let side = if c.bid { &mut bids } else { &mut asks };
                let at = side.iter().position(|l| l.0.cmp_value(level.0) == Ordering::Equal);
                match (at, c.qty) {
                    (Some(at), 0) => { side.remove(at); }
                    (Some(at), _) => side[at] = level,
                    (None, 0) => {}
                    (None, _) => side.push(level),
                }
                let (b, a) = if c.bid { (vec![level], vec![]) } else { (vec![], vec![level]) };
                let u = i as u64 + 1;
                book.apply(&DepthUpdate::new("X", 0, u, u, b, a));
            }
            bids.sort_by(|x, y| y.0.cmp_value(x.0));
            asks.sort_by(|x, y| x.0.cmp_value(y.0));
            book.bids().collect::<Vec<_>>() == bids
                && book.asks().collect::<Vec<_>>() == asks
                && book.best_bid() == bids.first().copied()
                && book.best_ask() == asks.first().copied()
                && book.depth() == (bids.len(), asks.len())
                && book.last_update_id() == changes.len() as u64
        }

        /// A snapshot's book (sorted at once) is the book of its levels applied one by one as a diff:
        /// repeated prices (in other spellings too) keep the last level sent, quantity 0 removes.
        fn snapshot_is_its_levels_applied_in_turn(changes: Vec<Change>) -> bool {
            let level = |c: &Change| {
                let p = f64::from(c.ticks) / 100.0 + 1.0;
                lv(&if c.long { format!("{p:.3}") } else { format!("{p:.2}") }, &c.qty.to_string())
            };
            let side = |bid: bool| changes.iter().filter(|c| c.bid == bid).map(level).collect::<Vec<_>>();
            let snap = DepthSnapshot { last_update_id: 7, bids: side(true), asks: side(false) };
            let mut applied = OrderBook::from_snapshot(&DepthSnapshot { last_update_id: 0, bids: vec![], asks: vec![] });
            applied.apply(&DepthUpdate::new("X", 0, 1, 7, snap.bids.clone(), snap.asks.clone()));
            let spelled = |b: &OrderBook| (b.bids().collect::<Vec<_>>(), b.asks().collect::<Vec<_>>());
            let book = OrderBook::from_snapshot(&snap);
            book == applied && spelled(&book) == spelled(&applied)
        }
    }

    #[test]
    fn snapshot_then_diffs() {
        let snap = DepthSnapshot {
            last_update_id: 100,
            bids: vec![lv("4.00", "431"), lv("3.99", "10")],
            asks: vec![lv("4.01", "12"), lv("4.02", "1")],
        };
        let mut book = OrderBook::from_snapshot(&snap);
        assert_eq!(book.best_bid(), Some(lv("4.00", "431")));
        assert_eq!(book.best_ask(), Some(lv("4.01", "12")));
        // Bids: remove (another spelling), add, remove absent.
        let bids = vec![lv("4.0", "0"), lv("3.995", "2"), lv("3.50", "0")];
        book.apply(&DepthUpdate::new("X", 0, 101, 103, bids, vec![lv("4.01", "5")]));
        assert_eq!(book.last_update_id(), 103);
        assert_eq!(book.bids().collect::<Vec<_>>(), vec![lv("3.995", "2"), lv("3.99", "10")]);
        assert_eq!(book.asks().collect::<Vec<_>>(), vec![lv("4.01", "5"), lv("4.02", "1")]);
        assert_eq!(book.depth(), (2, 2));
    }
}
