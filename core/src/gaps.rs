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
//! - tickers (`@ticker`, `@ticker_1h/4h/1d`, `@miniTicker`): no sequence either, like klines: each is a
//!   snapshot of its window, so a lost one hides nothing the next one (a second later) does not carry.
//!   Not checked: `E` going backwards. On one transport Binance sends in order; across a rollover the
//!   connection delivers unsequenced streams only from the active transport, which is what keeps a
//!   replayed kline out too.
//!
//! The first event seen on a stream is fresh. Tracking deliberately survives reconnects (the tracker
//! lives outside any one transport): that is how ids lost during an outage show up as a gap, and how
//! events replayed by a new transport (make-before-break) are recognised as duplicates.
//!
//! An id at or below the last one seen is a duplicate, even when it fills a gap reported earlier: a late,
//! reordered frame is dropped, so the events handed on are strictly increasing and the gap report stays
//! the single record of what is missing.
//!
//! Numbering restarts. A server may legitimately restart its ids (an exchange process restarted, a
//! venue resetting ids after maintenance). Taken as duplicates, every event would be dropped until the
//! ids exceed the old ones: a silent feed. So an id more than [`RestartPolicy::distance`] below the
//! last one is a *candidate* ([`Verdict::Suspect`]): the caller holds it. The restart is confirmed
//! ([`Verdict::Restarted`]; the stream is forgotten and the caller observes the held events and the
//! current one again, in order) by
//! - the first event of the stream on a new connection ([`GapTracker::new_connection`]) being a
//!   candidate: a fresh Binance connection starts at the live ids, it never replays old ones; or
//! - [`RestartPolicy::confirm`] candidates in a row on one connection.
//!
//! Any other verdict refutes the candidates (the caller drops what it held as duplicates). What is
//! never taken for a restart: a late reordered frame (one candidate, and usually within the distance),
//! ids resent just below the last one after a reconnect (within the distance), and the replay of a
//! make-before-break hand-over, which goes through [`GapTracker::observe_replay`] (no detection: its
//! overlap can be minutes of ids on a busy stream). The connection compares each event the new transport
//! buffers with the last id when it *arrived*, and passes the ones far below it through
//! [`GapTracker::observe`] at the hand-over (a restart inside the overlap), after [`GapTracker::new_connection`].
//!
//! The restart's first id is the lowest of its run of candidates, not the first to arrive (a frame
//! reordered across the restart belongs to it); one far below the run is a second restart, not its start.

use crate::protocol::{Name, NameKey};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
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
    /// No sequence number (kline, tickers).
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
    /// Far below the last id: maybe the server restarted its numbering. The caller holds the event,
    /// in order, until a later verdict on the stream decides: [`Verdict::Restarted`] (observe the held
    /// events again), anything else (drop them as duplicates).
    Suspect,
    /// The server restarted its numbering: the stream was forgotten. The caller reports it, then
    /// observes the held events and this one again, in order (the first of them is fresh).
    Restarted(Restart),
}

impl Verdict {
    /// Whether the event should be passed on now (fresh, with or without a gap).
    pub fn is_fresh(&self) -> bool {
        matches!(self, Verdict::Fresh | Verdict::FreshAfterGap(_))
    }
}

/// A stream whose ids started over: the old numbering reached `last`, the new one starts at `first`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Restart {
    pub stream: String,
    /// The last id of the old numbering (aggTrade `a`, trade `t`, depth `u`, bookTicker `u`).
    pub last: u64,
    /// The first id seen of the new numbering (depth: its `U`).
    pub first: u64,
}

/// When an id far below the last one is a numbering restart rather than a duplicate (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// An id more than this below the last one is a candidate (`stream.restart_distance`).
    pub distance: u64,
    /// Candidates in a row on one connection that confirm (`stream.restart_confirm`, at least 1).
    pub confirm: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { distance: 1000, confirm: 3 }
    }
}

impl RestartPolicy {
    /// The policy of `stream.restart_distance` and `stream.restart_confirm`.
    pub fn from_config(stream: &crate::config::StreamConfig) -> Self {
        RestartPolicy { distance: stream.restart_distance, confirm: stream.restart_confirm.max(1) }
    }

    /// Whether `id` is a restart candidate after `last`.
    pub fn far_below(&self, last: u64, id: u64) -> bool {
        id < last && last - id > self.distance
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

/// The first id an event covers (depth: `U`), for [`Restart::first`].
fn start_id(seq: Sequence) -> u64 {
    match seq {
        Sequence::AggTrade { id, .. } | Sequence::Trade { id } => id,
        Sequence::Depth { first, .. } => first,
        Sequence::BookTicker { id } | Sequence::Snapshot { id } => id,
        Sequence::Unsequenced => 0,
    }
}

/// One stream's position and restart candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Track {
    last: Last,
    /// Candidates in a row (held by the caller), and the first one's id.
    candidates: u32,
    first_candidate: u64,
    /// No event seen on this stream since [`GapTracker::new_connection`].
    new_connection: bool,
    /// After a restart: the old numbering's last id, while the new one is far below it. An id within
    /// the restart distance of it is a late frame of the old numbering (a duplicate), not a jump.
    stale: Option<u64>,
}

/// Sequence state per stream name; see the module docs for the rules.
#[derive(Debug, Clone, Default)]
pub struct GapTracker {
    // Each stream's track, found through `index` or, for the stream of the previous event (`last`, nearly
    // every event of a connection with one busy stream), without hashing. Keyed by `Name`: the connection
    // looks its events' stream names up, which are the very keys (one allocation per name), so the
    // check compares pointers instead of texts.
    tracks: Vec<(Name, Track)>,
    index: HashMap<Name, usize, BuildHasherDefault<FxHasher>>,
    last: usize,
    /// Streams that restarted and were forgotten: the old numbering's last id, for their next track.
    restarted: HashMap<Name, u64, BuildHasherDefault<FxHasher>>,
    policy: RestartPolicy,
}

impl GapTracker {
    /// A tracker that has seen nothing yet, with the default [`RestartPolicy`].
    pub fn new() -> Self {
        GapTracker::default()
    }

    /// A tracker that has seen nothing yet, detecting numbering restarts by `policy`.
    pub fn with_policy(policy: RestartPolicy) -> Self {
        GapTracker { tracks: Vec::new(), index: HashMap::default(), last: 0, restarted: HashMap::default(), policy }
    }

    /// How this tracker tells a numbering restart from a duplicate.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// A new connection is live: the next event of each stream is its first on that connection, and
    /// one far below the last id is a numbering restart at once (module docs).
    pub fn new_connection(&mut self) {
        for (_, track) in &mut self.tracks {
            track.new_connection = true;
        }
    }

    /// Classifies the next event on `stream` (a `&str`, or the event's [`Name`], which is found
    /// without comparing texts) and remembers it if it is fresh.
    pub fn observe<S: NameKey + ?Sized>(&mut self, stream: &S, seq: Sequence) -> Verdict
    where
        Name: Borrow<S>,
    {
        self.classify(stream, seq, true)
    }

    /// [`Self::observe`] for events replayed by the new transport of a make-before-break hand-over:
    /// ids below the last one are duplicates however far below (the overlap is known, no restart).
    pub fn observe_replay<S: NameKey + ?Sized>(&mut self, stream: &S, seq: Sequence) -> Verdict
    where
        Name: Borrow<S>,
    {
        self.classify(stream, seq, false)
    }

    fn classify<S: NameKey + ?Sized>(&mut self, stream: &S, seq: Sequence, detect: bool) -> Verdict
    where
        Name: Borrow<S>,
    {
        let Some(next) = Last::of(seq) else {
            return Verdict::Fresh;
        };
        let Some(at) = self.slot(stream) else {
            let stale = if self.restarted.is_empty() { None } else { self.restarted.remove(stream) };
            let track = Track { last: next, candidates: 0, first_candidate: 0, new_connection: false, stale };
            let name = stream.to_name();
            self.index.insert(name.clone(), self.tracks.len());
            self.tracks.push((name, track));
            return Verdict::Fresh;
        };
        let track = &mut self.tracks[at].1;
        if let Some(old) = track.stale {
            let (distance, last, id) = (self.policy.distance, track.last.id(), next.id());
            if last.saturating_add(distance) >= old.saturating_sub(distance) {
                track.stale = None; // the new numbering caught up with the old one: no telling them apart
            } else if id.abs_diff(old) <= distance {
                // A late frame of the old numbering (a reordered one may even be its next id).
                return Verdict::Duplicate;
            }
        }
        let first_on_connection = std::mem::take(&mut track.new_connection);
        let same_kind = std::mem::discriminant(&track.last) == std::mem::discriminant(&next);
        if detect && same_kind && self.policy.far_below(track.last.id(), next.id()) {
            // The lowest id of the run, not the first to arrive: a frame reordered across the restart is
            // part of it. One far below the run is a second restart within the run, not its start.
            let start = start_id(seq);
            if track.candidates == 0
                || (start < track.first_candidate && !self.policy.far_below(track.first_candidate, start))
            {
                track.first_candidate = start;
            }
            track.candidates += 1;
            if first_on_connection || track.candidates >= self.policy.confirm {
                let restart =
                    Restart { stream: stream.text().to_owned(), last: track.last.id(), first: track.first_candidate };
                self.remove(stream);
                self.restarted.insert(stream.to_name(), restart.last);
                return Verdict::Restarted(restart);
            }
            return Verdict::Suspect;
        }
        track.candidates = 0;
        let last = &mut track.last;
        let gap = |first_missing: u64, last_missing: u64, kind: GapKind| {
            Verdict::FreshAfterGap(Gap { stream: stream.text().to_owned(), first_missing, last_missing, kind })
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

    /// Where `stream`'s track is in `tracks`: the previous event's stream is checked first (no hash).
    #[inline]
    fn slot<S: NameKey + ?Sized>(&mut self, stream: &S) -> Option<usize>
    where
        Name: Borrow<S>,
    {
        if let Some((name, _)) = self.tracks.get(self.last)
            && name.borrow() == stream
        {
            return Some(self.last);
        }
        let at = *self.index.get(stream)?;
        self.last = at;
        Some(at)
    }

    /// Drops `stream`'s track (the last one moves into its place).
    fn remove<S: NameKey + ?Sized>(&mut self, stream: &S)
    where
        Name: Borrow<S>,
    {
        let Some(at) = self.index.remove(stream) else { return };
        self.tracks.swap_remove(at);
        if let Some((moved, _)) = self.tracks.get(at) {
            self.index.insert(moved.clone(), at);
        }
    }

    /// The last id seen on `stream` (`a`, `t`, depth `u`, bookTicker `u`), if any.
    pub fn last_seen(&self, stream: &str) -> Option<u64> {
        let at = *self.index.get(stream)?;
        Some(self.tracks[at].1.last.id())
    }

    /// Forgets `stream`: its next event is fresh whatever its id (an unsubscribed stream, or a server
    /// that restarted its numbering).
    pub fn forget(&mut self, stream: &str) {
        self.remove(stream);
        self.restarted.remove(stream);
    }

    /// Number of streams with a remembered position.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Whether no stream has a remembered position.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
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
    fn forgetting_one_stream_keeps_the_others_tracked() {
        let mut t = GapTracker::new();
        let names = [Name::from("a@trade"), Name::from("b@trade"), Name::from("c@trade")];
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.observe(n, Sequence::Trade { id: 10 * (i as u64 + 1) }), Verdict::Fresh);
        }
        // `c` takes `a`'s place; the previous lookup (`c`, at its old place) must not find a stale slot.
        t.forget("a@trade");
        assert_eq!((t.len(), t.last_seen("a@trade"), t.last_seen("c@trade")), (2, None, Some(30)));
        assert_eq!(t.observe(&names[2], Sequence::Trade { id: 30 }), Verdict::Duplicate);
        assert_eq!(t.observe("b@trade", Sequence::Trade { id: 20 }), Verdict::Duplicate);
        assert_eq!(t.observe(&names[2], Sequence::Trade { id: 31 }), Verdict::Fresh);
        assert_eq!(t.observe(&names[0], Sequence::Trade { id: 1 }), Verdict::Fresh);
        t.forget("c@trade");
        assert_eq!(t.observe("b@trade", Sequence::Trade { id: 21 }), Verdict::Fresh);
        assert_eq!(t.observe("a@trade", Sequence::Trade { id: 1 }), Verdict::Duplicate);
        assert_eq!((t.len(), t.last_seen("c@trade"), t.last_seen("b@trade")), (2, None, Some(21)));
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
                // Ids below 64 are never more than the default distance (1000) apart.
                Verdict::Suspect | Verdict::Restarted(_) => return false,
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

    /// What a caller of the tracker does (the connection's rules): holds suspects, re-observes them on a
    /// confirmed restart, drops them when refuted. Returns the ids passed on and the restarts seen.
    struct Caller {
        t: GapTracker,
        held: Vec<u64>,
        passed: Vec<u64>,
        restarts: Vec<Restart>,
    }

    impl Caller {
        fn new(policy: RestartPolicy) -> Self {
            Caller { t: GapTracker::with_policy(policy), held: Vec::new(), passed: Vec::new(), restarts: Vec::new() }
        }

        fn feed(&mut self, id: u64) -> Verdict {
            let v = self.t.observe("s", Sequence::Trade { id });
            match &v {
                Verdict::Suspect => self.held.push(id),
                Verdict::Restarted(r) => {
                    self.restarts.push(r.clone());
                    for h in std::mem::take(&mut self.held) {
                        self.feed(h);
                    }
                    self.feed(id);
                }
                Verdict::Fresh | Verdict::FreshAfterGap(_) => {
                    self.held.clear();
                    self.passed.push(id);
                }
                Verdict::Duplicate => self.held.clear(),
            }
            v
        }
    }

    fn restarted(last: u64, first: u64) -> Verdict {
        Verdict::Restarted(Restart { stream: "s".into(), last, first })
    }

    #[test]
    fn restart_table_within_one_connection() {
        // distance 100, three candidates in a row confirm.
        let mut t = GapTracker::with_policy(RestartPolicy { distance: 100, confirm: 3 });
        let rows = [
            (5000, Verdict::Fresh),
            (5001, Verdict::Fresh),
            (4950, Verdict::Duplicate), // late frame within the distance
            (3, Verdict::Suspect),      // a stray far-below frame ...
            (5002, Verdict::Fresh),     // ... refuted by the next one
            (1, Verdict::Suspect),
            (2, Verdict::Suspect),
            (3, restarted(5002, 1)), // the third in a row: the stream was forgotten
            (1, Verdict::Fresh),     // the caller re-observes what it held ...
            (2, Verdict::Fresh),
            (3, Verdict::Fresh), // ... and the confirming event
            (4, Verdict::Fresh),
            (2, Verdict::Duplicate),
            (5004, Verdict::Duplicate), // a late frame of the old numbering (reordered), not a jump
            (4990, Verdict::Duplicate),
            (5, Verdict::Fresh),
            (4000, gap("s", 6, 3999, GapKind::TradeId)), // a real jump, below the old numbering's window
        ];
        for (i, (id, want)) in rows.into_iter().enumerate() {
            assert_eq!(t.observe("s", Sequence::Trade { id }), want, "row {i}: id {id}");
        }
        assert_eq!(t.last_seen("s"), Some(4000));
    }

    #[test]
    fn restart_table_on_a_new_connection_and_by_kind() {
        let mut t = GapTracker::with_policy(RestartPolicy { distance: 1000, confirm: 3 });
        let rows: Vec<(&str, Sequence, Verdict)> = vec![
            ("a", agg(900_000, 1, 1), Verdict::Fresh),
            ("d", Sequence::Depth { first: 9_000_000, last: 9_000_004 }, Verdict::Fresh),
            ("b", Sequence::BookTicker { id: 50_000 }, Verdict::Fresh),
            ("k", Sequence::Unsequenced, Verdict::Fresh),
        ];
        for (i, (stream, seq, want)) in rows.into_iter().enumerate() {
            assert_eq!(t.observe(stream, seq), want, "row {i}");
        }
        t.new_connection();
        let r = |stream: &str, last, first| Verdict::Restarted(Restart { stream: stream.into(), last, first });
        let rows: Vec<(&str, Sequence, Verdict)> = vec![
            // Resent just below the last id on the new connection: a duplicate, and the flag is spent.
            ("a", agg(899_999, 1, 1), Verdict::Duplicate),
            ("a", agg(1, 1, 1), Verdict::Suspect), // no longer the first on the connection
            ("a", agg(900_001, 2, 2), Verdict::Fresh),
            // First depth diff on the new connection far below: a restart at once, reported from `U`.
            ("d", Sequence::Depth { first: 1, last: 3 }, r("d", 9_000_004, 1)),
            ("d", Sequence::Depth { first: 1, last: 3 }, Verdict::Fresh),
            ("b", Sequence::BookTicker { id: 7 }, r("b", 50_000, 7)),
            ("k", Sequence::Unsequenced, Verdict::Fresh),
        ];
        for (i, (stream, seq, want)) in rows.into_iter().enumerate() {
            assert_eq!(t.observe(stream, seq), want, "row {i}");
        }
        // A hand-over replay is never a candidate, however far below.
        t.new_connection();
        assert_eq!(t.observe_replay("a", agg(5, 1, 1)), Verdict::Duplicate);
        assert_eq!(t.observe_replay("a", agg(900_002, 3, 3)), Verdict::Fresh);
    }

    #[test]
    fn confirm_one_restarts_on_the_first_far_below_id() {
        let mut c = Caller::new(RestartPolicy { distance: 10, confirm: 1 });
        for id in [100, 101, 95, 50, 51] {
            c.feed(id);
        }
        assert_eq!(c.passed, vec![100, 101, 50, 51]);
        assert_eq!(c.restarts, vec![Restart { stream: "s".into(), last: 101, first: 50 }]);
    }

    quickcheck! {
        fn replays_of_the_recent_window_are_never_restarts(
            n: u16, replay: Vec<(u16, bool)>, distance: u16, confirm: u8
        ) -> bool {
            // Any history, then ids from the last `distance` (late frames, resends after reconnects,
            // in any order, with reconnects between): only duplicates, never a candidate.
            let distance = u64::from(distance) + 1;
            let confirm = u32::from(confirm % 8) + 1;
            let mut t = GapTracker::with_policy(RestartPolicy { distance, confirm });
            let last = 1_000_000 + u64::from(n);
            for id in 1_000_000..=last {
                if !t.observe("s", Sequence::Trade { id }).is_fresh() {
                    return false;
                }
            }
            replay.into_iter().all(|(back, reconnect)| {
                if reconnect {
                    t.new_connection();
                }
                let id = last - u64::from(back) % (distance + 1);
                t.observe("s", Sequence::Trade { id }) == Verdict::Duplicate
            }) && t.last_seen("s") == Some(last)
        }

        fn a_restart_after_any_history_is_detected_and_nothing_after_it_is_dropped(
            history: Vec<u16>, m: u8, confirm: u8, reconnect: bool
        ) -> bool {
            // History: any ids (gaps, duplicates, late frames) within 1000 of 1e6; then the server starts
            // over at 1 and counts up: every new id is passed on, once, in order, after exactly one restart.
            let confirm = u32::from(confirm % 8) + 1;
            let mut c = Caller::new(RestartPolicy { distance: 1000, confirm });
            for id in &history {
                c.feed(1_000_000 + u64::from(*id % 1000));
            }
            let before = c.passed.len();
            let old_last = c.t.last_seen("s");
            if reconnect {
                c.t.new_connection();
            }
            let m = u64::from(m) + u64::from(confirm);
            for id in 1..=m {
                c.feed(id);
            }
            let after: Vec<u64> = c.passed[before..].to_vec();
            match old_last {
                None => after == (1..=m).collect::<Vec<_>>() && c.restarts.is_empty(),
                Some(last) => {
                    after == (1..=m).collect::<Vec<_>>()
                        && c.restarts == vec![Restart { stream: "s".into(), last, first: 1 }]
                        && c.held.is_empty()
                }
            }
        }

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
            // Restart detection off: this is about gaps and duplicates.
            let mut t = GapTracker::with_policy(RestartPolicy { distance: u64::MAX, confirm: 1 });
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
