//! Is the connection alive, and is each stream still flowing?
//!
//! - [`Heartbeat`]: the client's own ping every `ping_interval`, each with a unique payload. After
//!   a ping, the connection is dead when *no inbound frame at all* arrives within `pong_timeout`:
//!   a pong proves liveness, but so does a market event, a server ping, or a pong whose payload
//!   does not match (a late answer to an earlier ping, or an unsolicited pong, which RFC 6455
//!   allows as a one-way heartbeat). Such a mismatched pong counts as traffic but not as *the*
//!   answer: it gives no round-trip sample and is counted in [`Heartbeat::unmatched_pongs`].
//!   Bound: a connection that falls silent at `L` is declared dead at the latest at
//!   `L + ping_interval + pong_timeout`.
//! - [`ControlLimiter`]: outgoing control messages (pings, pongs, SUBSCRIBE...) stay under
//!   Binance's 5 per second per connection (it disconnects above that). Messages are queued, never
//!   dropped; pongs go first, since Binance closes a connection whose pong is more than 60 s late,
//!   and an unsent pong is replaced by a newer one (RFC 6455 5.5.3 allows answering only the most
//!   recent ping).
//! - [`StallDetector`]: per subscribed stream, no event for `stall_after` -> resubscribe that
//!   stream; still nothing `stall_after` later -> reconnect. A socket can stay healthy while one
//!   stream silently stops (a server-side subscription lost), which ping/pong cannot see.

use crate::backoff::AttemptBudget;
use crate::config::HeartbeatConfig;
use crate::protocol::{Name, NameKey};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A ping we sent and have not seen answered (nor any other frame since).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outstanding {
    payload: Vec<u8>,
    sent_at: Timestamp,
}

/// What the heartbeat wants done now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Send a WebSocket ping with this payload.
    SendPing(Vec<u8>),
    /// Nothing arrived for `pong_timeout` after our ping: the connection is dead.
    Dead {
        /// Time since the last inbound frame.
        silent_for: Duration,
    },
}

/// Whether a pong answered our outstanding ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongMatch {
    /// It carried the payload of the outstanding ping.
    Matched {
        /// Time from our ping to this pong.
        rtt: Duration,
    },
    /// Another payload, or no ping was outstanding; still counts as inbound traffic.
    Unmatched,
}

/// The client-side ping/pong liveness check of one transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    tag: u64,
    seq: u64,
    next_ping: Timestamp,
    outstanding: Option<Outstanding>,
    last_inbound: Timestamp,
    last_rtt: Option<Duration>,
    unmatched_pongs: u64,
    dead: bool,
}

impl Heartbeat {
    /// A heartbeat for a transport that opened at `now`; `tag` (the transport id) makes payloads
    /// unique across transports. The first ping goes out one interval after `now`.
    pub fn new(config: &HeartbeatConfig, tag: u64, now: Timestamp) -> Self {
        let interval = Duration::from_millis(config.ping_interval_ms.max(1));
        Heartbeat {
            interval,
            timeout: Duration::from_millis(config.pong_timeout_ms.max(1)),
            tag,
            seq: 0,
            next_ping: now + interval,
            outstanding: None,
            last_inbound: now,
            last_rtt: None,
            unmatched_pongs: 0,
            dead: false,
        }
    }

    /// Any inbound frame (text, ping, pong, close) arrived: the peer is alive.
    pub fn on_inbound(&mut self, now: Timestamp) {
        self.last_inbound = self.last_inbound.max(now);
        self.outstanding = None;
    }

    /// A pong arrived. It is inbound traffic whatever its payload; it answers our ping only when
    /// the payload matches.
    pub fn on_pong(&mut self, payload: &[u8], now: Timestamp) -> PongMatch {
        let result = match &self.outstanding {
            Some(o) if o.payload == payload => {
                let rtt = now.saturating_since(o.sent_at);
                self.last_rtt = Some(rtt);
                PongMatch::Matched { rtt }
            }
            _ => {
                self.unmatched_pongs += 1;
                PongMatch::Unmatched
            }
        };
        self.on_inbound(now);
        result
    }

    /// When [`Self::handle_timeout`] has something to do; `None` once dead.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.dead {
            return None;
        }
        Some(match &self.outstanding {
            Some(o) => (o.sent_at + self.timeout).min(self.next_ping),
            None => self.next_ping,
        })
    }

    /// Checks the deadlines at `now`: declares the connection dead, or sends the next ping.
    /// Returns at most one action; `None` when nothing is due (a spurious call is harmless).
    pub fn handle_timeout(&mut self, now: Timestamp) -> Option<HeartbeatAction> {
        if self.dead {
            return None;
        }
        if let Some(o) = &self.outstanding
            && now >= o.sent_at + self.timeout
        {
            self.dead = true;
            return Some(HeartbeatAction::Dead { silent_for: now.saturating_since(self.last_inbound) });
        }
        if now >= self.next_ping {
            self.seq += 1;
            let payload = format!("keel:{}:{}", self.tag, self.seq).into_bytes();
            // A late call does not cause a burst of catch-up pings.
            self.next_ping = now + self.interval;
            if self.outstanding.is_none() {
                self.outstanding = Some(Outstanding { payload: payload.clone(), sent_at: now });
            }
            return Some(HeartbeatAction::SendPing(payload));
        }
        None
    }

    /// The round-trip time of the last matched pong.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Pongs that did not answer the outstanding ping.
    pub fn unmatched_pongs(&self) -> u64 {
        self.unmatched_pongs
    }

    /// When the last inbound frame arrived.
    pub fn last_inbound(&self) -> Timestamp {
        self.last_inbound
    }
}

/// Outgoing control messages under a per-second limit: queued, pongs first, never dropped
/// (a queued pong is only ever replaced by a newer pong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlLimiter<T> {
    budget: AttemptBudget,
    pong: Option<T>,
    queue: VecDeque<T>,
    coalesced_pongs: u64,
}

impl<T> ControlLimiter<T> {
    /// At most `per_second` messages in any 1-second window (0 is treated as 1).
    pub fn new(per_second: u32) -> Self {
        ControlLimiter {
            budget: AttemptBudget::new(per_second, Duration::from_secs(1)),
            pong: None,
            queue: VecDeque::new(),
            coalesced_pongs: 0,
        }
    }

    /// Queues a pong; it replaces a pong still waiting (answering only the latest ping is allowed).
    pub fn push_pong(&mut self, pong: T) {
        if self.pong.replace(pong).is_some() {
            self.coalesced_pongs += 1;
        }
    }

    /// Queues any other control message (ping, SUBSCRIBE...), sent in order after pongs.
    pub fn push(&mut self, message: T) {
        self.queue.push_back(message);
    }

    /// The next message that may be sent at `now`, if any.
    #[must_use]
    pub fn poll(&mut self, now: Timestamp) -> Option<T> {
        if self.is_empty() || self.budget.next_allowed(now) > now {
            return None;
        }
        let next = self.pong.take().or_else(|| self.queue.pop_front());
        if next.is_some() {
            self.budget.record(now);
        }
        next
    }

    /// When a queued message may go out at `now` or later (`None` when nothing is queued). The
    /// result may be before `now`; callers clamp.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.is_empty() { None } else { Some(self.budget.next_allowed(Timestamp::ZERO)) }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pong.is_none() && self.queue.is_empty()
    }

    /// Messages waiting.
    pub fn queued(&self) -> usize {
        self.queue.len() + usize::from(self.pong.is_some())
    }

    /// Pongs replaced by a newer one before they could be sent.
    pub fn coalesced_pongs(&self) -> u64 {
        self.coalesced_pongs
    }
}

/// What to do about a stream that stopped delivering events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StallAction {
    /// First stall: unsubscribe and subscribe that stream again.
    Resubscribe,
    /// Still nothing after the resubscribe: reconnect the whole transport.
    Reconnect,
}

/// Where one stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Events are arriving; the last one at this time (or the watch started then).
    Flowing { last_event: Timestamp },
    /// Resubscribed at this time after a stall; waiting for an event.
    Resubscribed { at: Timestamp },
}

impl Watch {
    /// When the stall clock of this stream started.
    fn since(self) -> Timestamp {
        match self {
            Watch::Flowing { last_event } => last_event,
            Watch::Resubscribed { at } => at,
        }
    }

    fn deadline(self, stall_after: Duration) -> Timestamp {
        self.since() + stall_after
    }
}

/// Per-stream data-stall detection for one transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallDetector {
    stall_after: Duration,
    // Keyed by `Name`: given the connection's shared names, an event's stream is found by pointer.
    streams: BTreeMap<Name, Watch>,
}

impl StallDetector {
    /// Watches `streams`, all considered flowing as of `now` (the transport just opened).
    /// Pass the connection's [`Name`]s (`Names::get`) so that events find their stream by pointer.
    pub fn new<S: Clone + Into<Name>>(stall_after: Duration, streams: &[S], now: Timestamp) -> Self {
        let streams = streams.iter().map(|s| (s.clone().into(), Watch::Flowing { last_event: now })).collect();
        StallDetector { stall_after: stall_after.max(Duration::from_millis(1)), streams }
    }

    /// An event arrived on `stream` (ignored for streams not watched).
    pub fn on_event<S: NameKey + ?Sized>(&mut self, stream: &S, now: Timestamp)
    where
        Name: Borrow<S>,
    {
        if let Some(w) = self.streams.get_mut(stream) {
            *w = Watch::Flowing { last_event: now };
        }
    }

    /// Starts watching `stream` as of `now`.
    pub fn watch(&mut self, stream: &str, now: Timestamp) {
        self.streams.insert(Name::from(stream), Watch::Flowing { last_event: now });
    }

    /// Stops watching `stream`.
    pub fn unwatch(&mut self, stream: &str) {
        self.streams.remove(stream);
    }

    /// The earliest stall deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        // One addition for the earliest start rather than one per stream (adding is monotonic).
        self.streams.values().map(|w| w.since()).min().map(|t| t + self.stall_after)
    }

    /// The streams that stalled by `now` and what to do about each, in stream-name order.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Vec<(String, StallAction)> {
        let mut actions = Vec::new();
        for (stream, w) in self.streams.iter_mut() {
            if now < w.deadline(self.stall_after) {
                continue;
            }
            match *w {
                Watch::Flowing { .. } => {
                    *w = Watch::Resubscribed { at: now };
                    actions.push((stream.to_string(), StallAction::Resubscribe));
                }
                Watch::Resubscribed { .. } => {
                    // The caller reconnects; if it does not, the cycle starts over.
                    *w = Watch::Flowing { last_event: now };
                    actions.push((stream.to_string(), StallAction::Reconnect));
                }
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn hb(now: u64) -> Heartbeat {
        Heartbeat::new(&HeartbeatConfig { ping_interval_ms: 30_000, pong_timeout_ms: 10_000 }, 7, t(now))
    }

    #[test]
    fn pings_on_schedule_and_matches_pongs() {
        let mut h = hb(0);
        assert_eq!(h.poll_timeout(), Some(t(30_000)));
        assert_eq!(h.handle_timeout(t(29_999)), None);
        assert_eq!(h.handle_timeout(t(30_000)), Some(HeartbeatAction::SendPing(b"keel:7:1".to_vec())));
        assert_eq!(h.poll_timeout(), Some(t(40_000)));
        assert_eq!(h.on_pong(b"keel:7:1", t(30_120)), PongMatch::Matched { rtt: Duration::from_millis(120) });
        assert_eq!(h.last_rtt(), Some(Duration::from_millis(120)));
        assert_eq!(h.poll_timeout(), Some(t(60_000)));
        assert_eq!(h.handle_timeout(t(60_000)), Some(HeartbeatAction::SendPing(b"keel:7:2".to_vec())));
    }

    #[test]
    fn silence_after_a_ping_is_death() {
        let mut h = hb(0);
        // (now, expected action)
        let table: Vec<(u64, Option<HeartbeatAction>)> = vec![
            (10_000, None),
            (30_000, Some(HeartbeatAction::SendPing(b"keel:7:1".to_vec()))),
            (39_999, None),
            (40_000, Some(HeartbeatAction::Dead { silent_for: Duration::from_secs(40) })),
            (70_000, None),
        ];
        for (now, expected) in table {
            assert_eq!(h.handle_timeout(t(now)), expected, "at {now}");
        }
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn any_inbound_frame_or_a_wrong_pong_proves_liveness() {
        let mut h = hb(0);
        assert!(matches!(h.handle_timeout(t(30_000)), Some(HeartbeatAction::SendPing(_))));
        h.on_inbound(t(35_000));
        assert_eq!(h.handle_timeout(t(40_000)), None);
        assert!(matches!(h.handle_timeout(t(60_000)), Some(HeartbeatAction::SendPing(_))));
        assert_eq!(h.on_pong(b"keel:7:1", t(61_000)), PongMatch::Unmatched);
        assert_eq!(h.unmatched_pongs(), 1);
        assert_eq!(h.last_rtt(), None);
        assert_eq!(h.handle_timeout(t(70_000)), None);
        assert_eq!(h.last_inbound(), t(61_000));
    }

    #[test]
    fn a_late_call_does_not_burst_pings() {
        let mut h = hb(0);
        h.on_inbound(t(0));
        assert!(matches!(h.handle_timeout(t(95_000)), Some(HeartbeatAction::SendPing(_))));
        assert_eq!(h.poll_timeout(), Some(t(105_000)));
    }

    #[test]
    fn limiter_spaces_messages_and_puts_pongs_first() {
        let mut l = ControlLimiter::new(2);
        l.push("sub1");
        l.push("sub2");
        l.push("sub3");
        l.push_pong("pong-a");
        l.push_pong("pong-b");
        assert_eq!(l.coalesced_pongs(), 1);
        // (now, expected poll)
        let table = [
            (0, Some("pong-b")),
            (0, Some("sub1")),
            (0, None),
            (999, None),
            (1_000, Some("sub2")),
            (1_000, Some("sub3")),
            (1_000, None),
        ];
        for (now, expected) in table {
            assert_eq!(l.poll(t(now)), expected, "at {now}");
            if now == 0 && expected.is_none() {
                assert_eq!(l.poll_timeout(), Some(t(1_000)));
            }
        }
        assert!(l.is_empty());
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn stalls_resubscribe_then_reconnect() {
        let streams = vec!["a@trade".to_string(), "b@trade".to_string()];
        let mut s = StallDetector::new(Duration::from_secs(120), &streams, t(0));
        s.on_event("a@trade", t(100_000));
        s.on_event("unknown@trade", t(100_000));
        assert_eq!(s.poll_timeout(), Some(t(120_000)));
        let r = |s: &str, a| (s.to_string(), a);
        let table = vec![
            (119_999, vec![]),
            (120_000, vec![r("b@trade", StallAction::Resubscribe)]),
            (220_000, vec![r("a@trade", StallAction::Resubscribe)]),
            (240_000, vec![r("b@trade", StallAction::Reconnect)]),
        ];
        for (now, expected) in table {
            assert_eq!(s.handle_timeout(t(now)), expected, "at {now}");
        }
        // An event after the resubscribe clears the stall.
        s.on_event("a@trade", t(250_000));
        assert_eq!(s.handle_timeout(t(340_000)), vec![]);
        s.unwatch("b@trade");
        assert_eq!(s.poll_timeout(), Some(t(370_000)));
    }

    #[test]
    fn prop_silence_is_detected_within_interval_plus_timeout() {
        // Frames arrive at arbitrary gaps, then stop; the heartbeat is driven by its own deadlines.
        // Death must be declared no later than last frame + interval + timeout, and never while
        // frames keep arriving within the timeout of each ping.
        fn prop(gaps: Vec<u16>, interval_s: u8, timeout_s: u8) -> TestResult {
            let interval = u64::from(interval_s % 60) + 2;
            let timeout = u64::from(timeout_s) % (interval - 1) + 1;
            let cfg = HeartbeatConfig { ping_interval_ms: interval * 1_000, pong_timeout_ms: timeout * 1_000 };
            let mut h = Heartbeat::new(&cfg, 1, t(0));
            let mut frames: VecDeque<u64> = VecDeque::new();
            let mut at = 0;
            for g in gaps {
                at += u64::from(g % 5_000);
                frames.push_back(at);
            }
            let mut last_frame = 0;
            loop {
                let Some(deadline) = h.poll_timeout() else { return TestResult::failed() };
                match frames.front() {
                    Some(&f) if f < deadline.as_millis() => {
                        frames.pop_front();
                        h.on_inbound(t(f));
                        last_frame = f;
                    }
                    _ => {
                        if let Some(HeartbeatAction::Dead { .. }) = h.handle_timeout(deadline) {
                            let bound = last_frame + (interval + timeout) * 1_000;
                            return TestResult::from_bool(deadline.as_millis() <= bound);
                        }
                    }
                }
            }
        }
        QuickCheck::new().quickcheck(prop as fn(Vec<u16>, u8, u8) -> TestResult);
    }

    #[test]
    fn prop_limiter_never_exceeds_its_rate_and_never_drops() {
        fn prop(limit: u8, pushes: Vec<(u16, bool)>) -> bool {
            let limit = u32::from(limit % 5) + 1;
            let mut l = ControlLimiter::new(limit);
            let mut sent: Vec<(u64, u32)> = Vec::new();
            let mut pushed_others = 0u32;
            let mut now = 0;
            let drain = |l: &mut ControlLimiter<u32>, now: u64, sent: &mut Vec<(u64, u32)>| {
                while let Some(m) = l.poll(t(now)) {
                    sent.push((now, m));
                }
            };
            for (gap, is_pong) in pushes {
                now += u64::from(gap % 700);
                drain(&mut l, now, &mut sent);
                if is_pong {
                    l.push_pong(u32::MAX);
                } else {
                    pushed_others += 1;
                    l.push(pushed_others);
                }
                drain(&mut l, now, &mut sent);
            }
            while let Some(next) = l.poll_timeout() {
                now = now.max(next.as_millis());
                drain(&mut l, now, &mut sent);
            }
            let others: Vec<u32> = sent.iter().map(|&(_, m)| m).filter(|&m| m != u32::MAX).collect();
            let in_order = others == (1..=pushed_others).collect::<Vec<_>>();
            let rate_ok = sent.iter().enumerate().all(|(i, &(start, _))| {
                sent[i..].iter().take_while(|&&(at, _)| at < start + 1_000).count() <= limit as usize
            });
            in_order && rate_ok
        }
        QuickCheck::new().quickcheck(prop as fn(u8, Vec<(u16, bool)>) -> bool);
    }
}
