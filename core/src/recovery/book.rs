//! [`OrderBook`]: a local copy of one symbol's order book, built from a REST snapshot and kept up to
//! date with `<symbol>@depth` diffs (issue 9, item 3).
//!
//! Prices are exact [`Decimal`]s, ordered by value (`"4.0"` and `"4.00"` are one level); a diff's
//! quantity 0 removes the level (Binance: "Receiving an event that removes a price level that is not
//! in your local order book can happen and is normal").

use crate::protocol::rest::DepthSnapshot;
use crate::protocol::{Decimal, DepthUpdate, Level};
use std::cmp::Ordering;
use std::collections::BTreeMap;

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

/// One symbol's book; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBook {
    last_update_id: u64,
    bids: BTreeMap<Price, Decimal>,
    asks: BTreeMap<Price, Decimal>,
}

fn is_zero(d: Decimal) -> bool {
    d.mantissa_wide() == 0
}

fn set(side: &mut BTreeMap<Price, Decimal>, (price, qty): Level) {
    if is_zero(qty) {
        side.remove(&Price(price));
    } else {
        // Keep the price text as last sent, and the new quantity.
        side.remove(&Price(price));
        side.insert(Price(price), qty);
    }
}

impl OrderBook {
    /// The book of a REST snapshot.
    pub fn from_snapshot(snapshot: &DepthSnapshot) -> OrderBook {
        let mut book =
            OrderBook { last_update_id: snapshot.last_update_id, bids: BTreeMap::new(), asks: BTreeMap::new() };
        for &level in &snapshot.bids {
            set(&mut book.bids, level);
        }
        for &level in &snapshot.asks {
            set(&mut book.asks, level);
        }
        book
    }

    /// Applies a diff (the caller has checked its ids) and moves `last_update_id` to its `u`.
    pub fn apply(&mut self, diff: &DepthUpdate) {
        for &level in &diff.bids {
            set(&mut self.bids, level);
        }
        for &level in &diff.asks {
            set(&mut self.asks, level);
        }
        self.last_update_id = diff.final_update_id;
    }

    /// The update id the book is current to.
    pub fn last_update_id(&self) -> u64 {
        self.last_update_id
    }

    /// Highest bid `(price, qty)`.
    pub fn best_bid(&self) -> Option<(Decimal, Decimal)> {
        self.bids.iter().next_back().map(|(p, q)| (p.0, *q))
    }

    /// Lowest ask `(price, qty)`.
    pub fn best_ask(&self) -> Option<(Decimal, Decimal)> {
        self.asks.iter().next().map(|(p, q)| (p.0, *q))
    }

    /// Bids, best (highest) first.
    pub fn bids(&self) -> impl Iterator<Item = (Decimal, Decimal)> + '_ {
        self.bids.iter().rev().map(|(p, q)| (p.0, *q))
    }

    /// Asks, best (lowest) first.
    pub fn asks(&self) -> impl Iterator<Item = (Decimal, Decimal)> + '_ {
        self.asks.iter().map(|(p, q)| (p.0, *q))
    }

    /// Number of bid and ask levels.
    pub fn depth(&self) -> (usize, usize) {
        (self.bids.len(), self.asks.len())
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
        book.apply(&DepthUpdate {
            symbol: "X".into(),
            event_time: 0,
            first_update_id: 101,
            final_update_id: 103,
            bids: vec![lv("4.0", "0"), lv("3.995", "2"), lv("3.50", "0")], // remove (another spelling), add, remove absent
            asks: vec![lv("4.01", "5")],
        });
        assert_eq!(book.last_update_id(), 103);
        assert_eq!(book.bids().collect::<Vec<_>>(), vec![lv("3.995", "2"), lv("3.99", "10")]);
        assert_eq!(book.asks().collect::<Vec<_>>(), vec![lv("4.01", "5"), lv("4.02", "1")]);
        assert_eq!(book.depth(), (2, 2));
    }
}
