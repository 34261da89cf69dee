use super::*;
use crate::protocol::{AggTrade, Decimal, Kline};
use quickcheck::{Arbitrary, Gen, QuickCheck};
use std::collections::BTreeMap;
use std::time::Duration;

const S: &str = "btcusdt@aggTrade";

fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn config(max_held: u32, backfill: bool, weight_per_minute: u32) -> Config {
    let mut c = Config::default();
    c.stream.streams = vec![S.into(), "btcusdt@kline_1m".into()];
    c.rest.max_held_events = max_held;
    c.rest.backfill = backfill;
    c.rest.weight_per_minute = weight_per_minute;
    c
}

/// Every field of trade `id` is a function of the id (as in the simulator's exchange).
fn trade(id: u64) -> AggTrade {
    AggTrade {
        symbol: "BTCUSDT".into(),
        event_time: 1_000_000 + id,
        agg_id: id,
        price: Decimal::new(u128::from(10_000 + id % 100), 2, false).unwrap(),
        quantity: Decimal::new(u128::from(1 + id % 7), 3, false).unwrap(),
        first_trade_id: id * 2,
        last_trade_id: id * 2 + 1,
        trade_time: 1_000_000 + id,
        buyer_is_maker: id.is_multiple_of(3),
    }
}

fn live(id: u64) -> MarketEvent {
    MarketEvent::AggTrade(trade(id))
}

/// A 200 with trades `ids` as Binance writes them.
fn body(ids: impl IntoIterator<Item = u64>) -> RestResponse {
    let items: Vec<String> = ids
        .into_iter()
        .map(|id| {
            let tr = trade(id);
            format!(
                r#"{{"a":{},"p":"{}","q":"{}","f":{},"l":{},"T":{},"m":{},"M":true}}"#,
                tr.agg_id, tr.price, tr.quantity, tr.first_trade_id, tr.last_trade_id, tr.trade_time, tr.buyer_is_maker
            )
        })
        .collect();
    RestResponse::Http { status: 200, retry_after: None, body: format!("[{}]", items.join(",")) }
}

fn status(code: u16, retry_after_s: Option<u64>) -> RestResponse {
    RestResponse::Http { status: code, retry_after: retry_after_s.map(Duration::from_secs), body: String::new() }
}

fn gap(first: u64, last: u64) -> Gap {
    Gap { stream: S.into(), first_missing: first, last_missing: last, kind: GapKind::AggTradeId }
}

/// Outputs in short form: `D5` delivered live, `R5` delivered backfilled, `B3-9/7`, `A3-9`, `K` kline.
fn drain(rec: &mut Recovery) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(out) = rec.poll_output() {
        v.push(match out {
            RecoveryOutput::Deliver { event: MarketEvent::AggTrade(a), backfilled, .. } => {
                assert_eq!(a, trade(a.agg_id), "a delivered trade has exactly the exchange's fields");
                format!("{}{}", if backfilled { "R" } else { "D" }, a.agg_id)
            }
            RecoveryOutput::Deliver { .. } => "K".into(),
            RecoveryOutput::Backfilled { first, last, count, .. } => format!("B{first}-{last}/{count}"),
            RecoveryOutput::Abandoned { first, last, .. } => format!("A{first}-{last}"),
            other => format!("{other:?}"),
        });
    }
    v
}

fn agg_request(rec: &mut Recovery, now: Timestamp) -> Option<(RequestId, u64, u16)> {
    rec.poll_request(now).map(|(id, r)| match r {
        RestRequest::AggTrades { symbol, from_id, limit } => {
            assert_eq!(symbol, "BTCUSDT");
            (id, from_id, limit)
        }
        other => panic!("unexpected {other:?}"),
    })
}

#[test]
fn without_gaps_everything_passes_at_once() {
    let mut rec = Recovery::new(&config(10, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    let kline = kline("1m", 0, 0, false);
    rec.handle_event("btcusdt@kline_1m", kline.clone(), t(1));
    rec.handle_event(S, live(2), t(2));
    assert_eq!(drain(&mut rec), ["D1", "K", "D2"]);
    assert_eq!((rec.poll_request(t(3)), rec.poll_timeout()), (None, None));
}

#[test]
fn one_request_reaches_into_the_gaps_queued_behind_the_first() {
    // Seed 300270: with 8 weight a minute and a few trades lost at every reconnect, one request per
    // gap fell behind for good. Gaps 3-4 and 7-8 and 11, live 5-6 and 9-10 held between them.
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(2), t(0));
    for id in [5, 6, 9, 10, 12] {
        rec.handle_event(S, live(id), t(10));
    }
    assert_eq!(drain(&mut rec), ["D1", "D2"]);
    assert_eq!(rec.stats().held_events, 5);
    let (id, from, limit) = agg_request(&mut rec, t(20)).unwrap();
    assert_eq!((from, limit), (3, 9), "from the first missing key to the last one");
    // Binance's answer is every trade from 3 on: the held ones come back too and are not delivered twice.
    rec.handle_response(id, body(3..=11), t(30));
    assert_eq!(
        drain(&mut rec),
        ["R3", "R4", "B3-4/2", "D5", "D6", "R7", "R8", "B7-8/2", "D9", "D10", "R11", "B11-11/1", "D12"]
    );
    assert_eq!((rec.stats().held_events, rec.stats().backfill_requests), (0, 1));
    assert_eq!(rec.poll_request(t(40)), None);

    // An answer cut short by its limit inside a later gap: that gap goes on from where it stopped.
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    for id in [3, 6] {
        rec.handle_event(S, live(id), t(10));
    }
    assert_eq!(drain(&mut rec), ["D1"]);
    let (id, from, limit) = agg_request(&mut rec, t(20)).unwrap();
    assert_eq!((from, limit), (2, 4));
    rec.handle_response(id, body(2..=4), t(30));
    assert_eq!(drain(&mut rec), ["R2", "B2-2/1", "D3", "R4"]);
    let (id, from, limit) = agg_request(&mut rec, t(40)).unwrap();
    assert_eq!((from, limit), (5, 1), "the rest of the second gap, not the first again");
    rec.handle_response(id, body(5..=6), t(50));
    assert_eq!(drain(&mut rec), ["R5", "B4-5/2", "D6"]);
    assert_eq!(rec.stats().held_events, 0);
}

#[test]
fn a_gap_is_fetched_in_pages_and_held_trades_follow_in_order() {
    let mut rec = Recovery::new(&config(10, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(2), t(0));
    rec.handle_gap(&gap(3, 1502), t(10));
    rec.handle_event(S, live(1503), t(10));
    rec.handle_event(S, live(1504), t(20));
    assert_eq!(drain(&mut rec), ["D1", "D2"]);
    assert_eq!(rec.stats().held_events, 2);
    let (id, from, limit) = agg_request(&mut rec, t(20)).unwrap();
    assert_eq!((from, limit), (3, 1000));
    assert_eq!(rec.poll_request(t(20)), None, "one request per gap at a time");
    assert_eq!(rec.poll_timeout(), None, "waiting for the answer only");
    rec.handle_response(id, body(3..=1002), t(120));
    let out = drain(&mut rec);
    assert_eq!((out.len(), out[0].as_str(), out[999].as_str()), (1000, "R3", "R1002"));
    let (id, from, limit) = agg_request(&mut rec, t(120)).unwrap();
    assert_eq!((from, limit), (1003, 500));
    rec.handle_response(id, body(1003..=1502), t(200));
    let out = drain(&mut rec);
    assert_eq!(out[..2], ["R1003", "R1004"]);
    assert_eq!(out[500..], ["B3-1502/1500", "D1503", "D1504"]);
    rec.handle_event(S, live(1505), t(300));
    assert_eq!(drain(&mut rec), ["D1505"]);
    let s = rec.stats();
    assert_eq!(
        (s.backfilled_trades, s.backfill_requests, s.abandoned_ids, s.held_events, s.weight_used_last_minute),
        (1500, 2, 0, 0, 8)
    );
}

#[test]
fn shutdown_abandons_open_gaps_and_delivers_what_was_held() {
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(10), t(5)); // 2..=9 missing
    rec.handle_event(S, live(11), t(6));
    let (id, from, limit) = agg_request(&mut rec, t(10)).unwrap();
    assert_eq!((from, limit), (2, 8));
    rec.handle_response(id, body(2..=4), t(20)); // a partial page: 5..=9 still missing
    rec.handle_event(S, live(20), t(30)); // 12..=19 missing behind it
    rec.handle_event(S, live(21), t(31));
    assert_eq!(drain(&mut rec), ["D1", "R2", "R3", "R4"]);
    let (late, _, _) = agg_request(&mut rec, t(40)).unwrap();
    rec.handle_shutdown(t(50));
    assert_eq!(drain(&mut rec), ["B2-4/3", "A5-9", "D10", "D11", "A12-19", "D20", "D21"]);
    assert_eq!((rec.stats().held_events, rec.stats().abandoned_ids, rec.in_flight()), (0, 13, 0));
    rec.handle_response(late, body(5..=9), t(60));
    assert_eq!(drain(&mut rec), Vec::<String>::new(), "an answer after shutdown is ignored");
}

#[test]
fn an_unreported_jump_is_a_gap_too_and_reported_gaps_are_not_doubled() {
    let mut rec = Recovery::new(&config(10, true, 1200), t(0));
    rec.handle_event(S, live(10), t(0));
    rec.handle_event(S, live(13), t(0)); // no handle_gap: 11..=12 implied
    rec.handle_gap(&gap(11, 12), t(0)); // the same gap reported late: ignored
    rec.handle_event(S, live(12), t(0)); // an id inside the gap, live: never twice
    let (id, from, limit) = agg_request(&mut rec, t(0)).unwrap();
    assert_eq!((from, limit), (11, 2));
    assert_eq!(rec.poll_request(t(0)), None);
    rec.handle_response(id, body(11..=14), t(5)); // more than asked: 13 and 14 are not taken from REST
    assert_eq!(drain(&mut rec), ["D10", "R11", "R12", "B11-12/2", "D13"]);
}

#[test]
fn rate_limits_pause_every_request() {
    let mut rec = Recovery::new(&config(10, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(5), t(0));
    let (id, ..) = agg_request(&mut rec, t(0)).unwrap();
    rec.handle_response(id, status(429, Some(7)), t(100));
    assert_eq!((rec.poll_request(t(7_099)), rec.poll_timeout()), (None, Some(t(7_100))));
    let (id, from, _) = agg_request(&mut rec, t(7_100)).unwrap();
    assert_eq!(from, 2);
    rec.handle_response(id, status(418, None), t(7_200));
    assert_eq!(rec.poll_timeout(), Some(t(307_200)), "a ban waits at least 5 minutes");
    assert_eq!(rec.poll_request(t(307_199)), None);
    let (id, ..) = agg_request(&mut rec, t(307_200)).unwrap();
    rec.handle_response(id, body(2..=4), t(307_300));
    assert_eq!(drain(&mut rec), ["D1", "R2", "R3", "R4", "B2-4/3", "D5"]);
    assert_eq!((rec.stats().rest_rate_limited, rec.stats().rest_failures), (2, 0));
}

#[test]
fn failures_retry_with_doubling_pauses_then_give_up() {
    let mut rec = Recovery::new(&config(10, true, 6000), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(3), t(0));
    // Pause after each failure (s): 1, 2, 4, 8, 16, 30, 30, then abandoned at the 8th.
    let mut now = t(0);
    let mut waits = Vec::new();
    for attempt in 0..MAX_BACKFILL_FAILURES {
        let (id, ..) = agg_request(&mut rec, now).unwrap();
        let answer = match attempt % 3 {
            0 => RestResponse::Failed { error: "connection reset".into() },
            1 => status(502, None),
            _ => body([]), // empty: REST may lag; retried like a failure
        };
        rec.handle_response(id, answer, now);
        if let Some(next) = rec.poll_timeout() {
            assert_eq!(rec.poll_request(next - Duration::from_millis(1)), None);
            waits.push(next.saturating_since(now).as_secs());
            now = next;
        }
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    assert_eq!(drain(&mut rec), ["D1", "A2-2", "D3"]);
    assert_eq!((rec.stats().abandoned_ids, rec.stats().rest_failures), (1, 6));
}

#[test]
fn a_full_hold_back_buffer_abandons_the_gap_and_a_late_answer_is_ignored() {
    let mut rec = Recovery::new(&config(2, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(10), t(0));
    let (id, ..) = agg_request(&mut rec, t(0)).unwrap();
    rec.handle_event(S, live(11), t(1));
    assert_eq!(drain(&mut rec), ["D1"]);
    rec.handle_event(S, live(12), t(2)); // third held: over the limit of 2
    assert_eq!(drain(&mut rec), ["A2-9", "D10", "D11", "D12"]);
    rec.handle_response(id, body(2..=9), t(3));
    assert_eq!(drain(&mut rec), Vec::<String>::new());
    assert_eq!((rec.stats().abandoned_ids, rec.stats().held_events, rec.in_flight()), (8, 0, 0));
}

#[test]
fn ids_binance_no_longer_has_are_abandoned() {
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(20), t(0));
    let (id, ..) = agg_request(&mut rec, t(0)).unwrap();
    rec.handle_response(id, body([5, 6, 8]), t(1)); // starts late, and skips 7
    let (id, from, limit) = agg_request(&mut rec, t(1)).unwrap();
    assert_eq!((from, limit), (9, 11));
    rec.handle_response(id, body([25, 26]), t(2)); // only trades after the gap: the rest is gone
    assert_eq!(drain(&mut rec), ["D1", "A2-4", "R5", "R6", "A7-7", "R8", "B2-8/3", "A9-19", "D20"]);
    assert_eq!(rec.stats().abandoned_ids, 3 + 1 + 11);
}

#[test]
fn backfill_off_abandons_at_once() {
    let mut rec = Recovery::new(&config(100, false, 1200), t(0));
    rec.handle_event(S, live(1), t(0));
    rec.handle_gap(&gap(2, 4), t(0));
    rec.handle_event(S, live(5), t(0));
    assert_eq!(drain(&mut rec), ["D1", "A2-4", "D5"]);
    assert_eq!(rec.poll_request(t(0)), None);
}

#[test]
fn the_weight_budget_spaces_requests() {
    let mut rec = Recovery::new(&config(100_000, true, 8), t(0));
    rec.handle_event(S, live(0), t(0));
    rec.handle_event(S, live(5_001), t(0));
    let mut sent = Vec::new();
    let mut now = t(0);
    for _ in 0..100 {
        let Some(at) = rec.poll_timeout() else { break };
        now = now.max(at);
        rec.handle_timeout(now);
        while let Some((id, from, _)) = agg_request(&mut rec, now) {
            sent.push((now.as_millis(), from));
            now += Duration::from_millis(50);
            rec.handle_response(id, body(from..from + 1000), now);
        }
    }
    assert_eq!(sent, [(0, 1), (50, 1001), (60_000, 2001), (60_050, 3001), (120_000, 4001)]);
    assert_eq!(drain(&mut rec).last().map(String::as_str), Some("D5001"));
}

// ---- property: whatever the gaps and the REST answers, ids come out in order, each once ----

/// One step of the scenario.
#[derive(Debug, Clone)]
enum Step {
    /// The exchange trades `n` more times; the client sees only the last (the rest dropped), and the
    /// connection reports the gap (or not).
    Live { skip: u8, report: bool },
    /// The oldest open request gets this answer.
    Answer(Reply),
    /// Time passes.
    Wait(u16),
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    Full,
    Partial(u8),
    Empty,
    FromLater(u8),
    TooMany,
    Earlier(u8),
    Status429,
    Status418,
    ServerError,
    NetworkError,
    Garbage,
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 10 {
            0..=3 => Step::Live {
                skip: if bool::arbitrary(g) { 0 } else { u8::arbitrary(g) % 40 },
                report: bool::arbitrary(g),
            },
            4..=7 => {
                let n = u8::arbitrary(g);
                Step::Answer(match u8::arbitrary(g) % 12 {
                    0 | 1 => Reply::Full,
                    2 => Reply::Partial(n),
                    3 => Reply::Empty,
                    4 => Reply::FromLater(n % 8),
                    5 => Reply::TooMany,
                    6 => Reply::Status429,
                    7 => Reply::Status418,
                    8 => Reply::ServerError,
                    9 => Reply::NetworkError,
                    10 => Reply::Earlier(n % 8),
                    _ => Reply::Garbage,
                })
            }
            _ => Step::Wait(u16::arbitrary(g)),
        }
    }
}

/// Runs a scenario, then answers everything fully until quiet, and checks the contract.
/// `resume`: an earlier run recorded up to `100 - resume % 64` (the exchange traded on to 100 while
/// keel was not running); every id after it is then owed, not just those from the first seen.
fn ids_in_order_each_once(steps: Vec<Step>, max_held: u8, limit_pages: bool, resume: Option<u8>) -> Result<(), String> {
    let max_held = u32::from(max_held % 16) + 1;
    let mut rec = Recovery::new(&config(max_held, true, if limit_pages { 12 } else { 6000 }), t(0));
    let mut now = t(0);
    let mut produced = 100u64; // the exchange's last trade id
    let mut first_seen: Option<u64> = None;
    let recorded = resume.map(|k| 100 - u64::from(k % 64));
    if let Some(r) = recorded
        && !rec.resume(S, super::Recorded { key: r, complete: true, trade_time: trade(r).trade_time })
    {
        return Err("resume refused before any event".into());
    }
    let mut open: VecDeque<(RequestId, u64, u16)> = VecDeque::new();
    let mut delivered: Vec<u64> = Vec::new();
    let mut abandoned: Vec<(u64, u64)> = Vec::new();
    let collect = |rec: &mut Recovery, delivered: &mut Vec<u64>, abandoned: &mut Vec<(u64, u64)>| {
        while let Some(out) = rec.poll_output() {
            match out {
                RecoveryOutput::Deliver { event: MarketEvent::AggTrade(a), .. } => delivered.push(a.agg_id),
                RecoveryOutput::Abandoned { first, last, .. } => abandoned.push((first, last)),
                _ => {}
            }
        }
    };
    let answer = |reply: Reply, from: u64, limit: u16, produced: u64| -> RestResponse {
        let end = |n: u64| (from + n).min(produced + 1);
        match reply {
            Reply::Full => body(from..end(u64::from(limit))),
            Reply::Partial(n) => body(from..end(u64::from(n).min(u64::from(limit)))),
            Reply::Empty => body([]),
            Reply::FromLater(k) => body(from + u64::from(k)..end(u64::from(limit) + u64::from(k))),
            Reply::TooMany => body(from..end(u64::from(limit) + 50)),
            // Not what Binance does, but an answer repeating ids already delivered must not repeat them.
            Reply::Earlier(k) => body(from.saturating_sub(u64::from(k))..end(u64::from(limit))),
            Reply::Status429 => status(429, Some(3)),
            Reply::Status418 => status(418, None),
            Reply::ServerError => status(503, None),
            Reply::NetworkError => RestResponse::Failed { error: "reset".into() },
            Reply::Garbage => RestResponse::Http { status: 200, retry_after: None, body: "[{\"a\":".into() },
        }
    };
    let run_requests = |rec: &mut Recovery, open: &mut VecDeque<(RequestId, u64, u16)>, now: Timestamp| {
        while let Some((id, r)) = rec.poll_request(now) {
            let RestRequest::AggTrades { from_id, limit, .. } = r else { panic!("{r:?}") };
            open.push_back((id, from_id, limit));
        }
    };
    for step in steps {
        match step {
            Step::Live { skip, report } => {
                let prev = produced;
                produced += u64::from(skip) + 1;
                if report && skip > 0 && first_seen.is_some() {
                    rec.handle_gap(&gap(prev + 1, produced - 1), now);
                }
                first_seen.get_or_insert(produced);
                rec.handle_event(S, live(produced), now);
            }
            Step::Answer(reply) => {
                if let Some((id, from, limit)) = open.pop_front() {
                    rec.handle_response(id, answer(reply, from, limit, produced), now);
                }
            }
            Step::Wait(ms) => {
                now += Duration::from_millis(u64::from(ms) * 10);
                rec.handle_timeout(now);
            }
        }
        run_requests(&mut rec, &mut open, now);
        collect(&mut rec, &mut delivered, &mut abandoned);
        // Held trades never exceed the limit.
        if rec.stats().held_events > u64::from(max_held) {
            return Err(format!("{} held > {max_held}", rec.stats().held_events));
        }
    }
    // Heal: answer everything fully until nothing is left.
    for _ in 0..10_000 {
        if let Some((id, from, limit)) = open.pop_front() {
            rec.handle_response(id, answer(Reply::Full, from, limit, produced), now);
        } else if let Some(at) = rec.poll_timeout() {
            now = now.max(at);
            rec.handle_timeout(now);
        } else {
            break;
        }
        run_requests(&mut rec, &mut open, now);
        collect(&mut rec, &mut delivered, &mut abandoned);
    }
    if rec.stats().held_events != 0 || !open.is_empty() {
        return Err(format!("not quiet: {} held, {} open", rec.stats().held_events, open.len()));
    }
    if !delivered.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!("delivered out of order: {delivered:?}"));
    }
    let mut all: Vec<u64> = delivered.clone();
    for (a, b) in &abandoned {
        if a > b {
            return Err(format!("empty abandoned range {a}-{b}"));
        }
        all.extend(*a..=*b);
    }
    all.sort_unstable();
    let want: Vec<u64> = match (first_seen, recorded) {
        (Some(_), Some(r)) => (r + 1..=produced).collect(),
        (Some(first), None) => (first..=produced).collect(),
        (None, _) => vec![],
    };
    if all != want {
        return Err(format!("delivered ∪ abandoned != {first_seen:?}..={produced}: {delivered:?} / {abandoned:?}"));
    }
    let s = rec.stats();
    if s.abandoned_ids != abandoned.iter().map(|(a, b)| b - a + 1).sum::<u64>() {
        return Err(format!("stats.abandoned_ids {} disagrees", s.abandoned_ids));
    }
    Ok(())
}

#[test]
fn delivered_and_abandoned_ids_cover_everything_once_in_order() {
    fn prop(steps: Vec<Step>, max_held: u8, limit_pages: bool, resume: Option<u8>) -> quickcheck::TestResult {
        match ids_in_order_each_once(steps, max_held, limit_pages, resume) {
            Ok(()) => quickcheck::TestResult::passed(),
            Err(e) => quickcheck::TestResult::error(e),
        }
    }
    QuickCheck::new()
        .tests(300)
        .rng(Gen::new(60))
        .quickcheck(prop as fn(Vec<Step>, u8, bool, Option<u8>) -> quickcheck::TestResult);
}

// ---- order books ----

const D: &str = "btcusdt@depth@100ms";

fn price(p: u64) -> Decimal {
    Decimal::new(u128::from(p), 2, false).unwrap()
}

fn qty(q: u64) -> Decimal {
    Decimal::new(u128::from(q), 3, false).unwrap()
}

fn diff(symbol: &str, first: u64, last: u64, bids: &[(u64, u64)], asks: &[(u64, u64)]) -> MarketEvent {
    MarketEvent::Depth(crate::protocol::DepthUpdate::new(
        symbol,
        0,
        first,
        last,
        bids.iter().map(|&(p, q)| (price(p), qty(q))).collect(),
        asks.iter().map(|&(p, q)| (price(p), qty(q))).collect(),
    ))
}

fn snapshot_body(last: u64, bids: &[(u64, u64)], asks: &[(u64, u64)]) -> RestResponse {
    let side = |levels: &[(u64, u64)]| {
        levels.iter().map(|&(p, q)| format!(r#"["{}","{}"]"#, price(p), qty(q))).collect::<Vec<_>>().join(",")
    };
    RestResponse::Http {
        status: 200,
        retry_after: None,
        body: format!(r#"{{"lastUpdateId":{last},"bids":[{}],"asks":[{}]}}"#, side(bids), side(asks)),
    }
}

fn depth_request(rec: &mut Recovery, now: Timestamp) -> Option<(RequestId, String)> {
    rec.poll_request(now).map(|(id, r)| match r {
        RestRequest::Depth { symbol, limit } => {
            assert_eq!(limit, 1000);
            (id, symbol)
        }
        other => panic!("unexpected {other:?}"),
    })
}

/// Book outputs in short form: `S101` synced, `X` resync, `.` a delivered diff.
fn book_outs(rec: &mut Recovery) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(out) = rec.poll_output() {
        v.push(match out {
            RecoveryOutput::Deliver { event: MarketEvent::Depth(_), .. } => ".".into(),
            RecoveryOutput::BookSynced { symbol, last_update_id } => format!("S{symbol}:{last_update_id}"),
            RecoveryOutput::BookResync { symbol, .. } => format!("X{symbol}"),
            other => format!("{other:?}"),
        });
    }
    v
}

fn best(rec: &Recovery, symbol: &str) -> Option<(String, String, u64)> {
    let b = rec.book(symbol)?;
    Some((b.best_bid()?.0.to_string(), b.best_ask()?.0.to_string(), b.last_update_id()))
}

#[test]
fn a_book_syncs_from_a_snapshot_and_resyncs_on_a_diff_gap() {
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    assert_eq!(rec.poll_request(t(0)), None, "no snapshot before the first diff");
    rec.handle_event(D, diff("BTCUSDT", 100, 102, &[(5, 1)], &[]), t(0));
    let (id, symbol) = depth_request(&mut rec, t(0)).unwrap();
    assert_eq!(symbol, "BTCUSDT");
    assert_eq!(rec.poll_request(t(0)), None);
    rec.handle_event(D, diff("BTCUSDT", 103, 105, &[(6, 2)], &[(12, 0)]), t(10));
    assert_eq!(rec.book("BTCUSDT"), None);
    rec.handle_response(id, snapshot_body(101, &[(4, 1), (5, 9)], &[(12, 3), (13, 1)]), t(50));
    // 100-102 straddles 101+1 and is applied (its 5 -> qty 1), then 103-105.
    assert_eq!(book_outs(&mut rec), [".", ".", "SBTCUSDT:101"]);
    assert_eq!(best(&rec, "BTCUSDT"), Some(("0.06".into(), "0.13".into(), 105)));
    let table: &[(MarketEvent, &[&str], Option<u64>)] = &[
        (diff("BTCUSDT", 106, 107, &[(6, 0)], &[]), &["."], Some(107)),
        (diff("BTCUSDT", 104, 107, &[], &[]), &["."], Some(107)), // older than the book: ignored
        (diff("BTCUSDT", 110, 111, &[], &[]), &[".", "XBTCUSDT"], None), // 108..=109 missing
        (diff("BTCUSDT", 112, 113, &[], &[]), &["."], None),      // buffered
    ];
    for (i, (event, outs, id)) in table.iter().enumerate() {
        rec.handle_event(D, event.clone(), t(100));
        assert_eq!(book_outs(&mut rec), *outs, "row {i}");
        assert_eq!(rec.book("BTCUSDT").map(OrderBook::last_update_id), *id, "row {i}");
    }
    let (id, _) = depth_request(&mut rec, t(100)).unwrap();
    rec.handle_response(id, snapshot_body(111, &[(1, 1)], &[(20, 1)]), t(150));
    assert_eq!(book_outs(&mut rec), ["SBTCUSDT:111"]);
    assert_eq!(best(&rec, "BTCUSDT"), Some(("0.01".into(), "0.20".into(), 113)));
    let s = rec.stats();
    assert_eq!((s.book_snapshots, s.book_resyncs, s.weight_used_last_minute), (2, 1, 100));
}

#[test]
fn snapshots_that_cannot_be_continued_are_fetched_again() {
    let mut rec = Recovery::new(&config(100, true, 6000), t(0));
    rec.handle_event(D, diff("BTCUSDT", 200, 201, &[], &[]), t(0));
    // Too old: 150 + 1 < U = 200.
    let (id, _) = depth_request(&mut rec, t(0)).unwrap();
    rec.handle_response(id, snapshot_body(150, &[(1, 1)], &[(20, 1)]), t(1));
    assert_eq!(book_outs(&mut rec), ["."]);
    // Newer than everything buffered: synced at 210; the next diff must straddle 211.
    let (id, _) = depth_request(&mut rec, t(1)).unwrap();
    rec.handle_response(id, snapshot_body(210, &[(1, 1)], &[(20, 1)]), t(2));
    assert_eq!(book_outs(&mut rec), ["SBTCUSDT:210"]);
    rec.handle_event(D, diff("BTCUSDT", 202, 205, &[], &[]), t(3)); // u <= 210: ignored
    assert_eq!(best(&rec, "BTCUSDT").map(|b| b.2), Some(210));
    rec.handle_event(D, diff("BTCUSDT", 212, 214, &[], &[]), t(3)); // no straddle of 211
    assert_eq!(book_outs(&mut rec), [".", ".", "XBTCUSDT"]);
    // A hole among the buffered diffs: the snapshot before it cannot be continued past it.
    rec.handle_event(D, diff("BTCUSDT", 218, 219, &[], &[]), t(4));
    let (id, _) = depth_request(&mut rec, t(4)).unwrap();
    rec.handle_response(id, snapshot_body(213, &[(1, 1)], &[(20, 1)]), t(5));
    assert_eq!((book_outs(&mut rec), rec.book("BTCUSDT")), (vec![".".to_string()], None));
    let (id, _) = depth_request(&mut rec, t(5)).unwrap();
    rec.handle_response(id, snapshot_body(218, &[(1, 1)], &[(20, 1)]), t(6));
    assert_eq!(book_outs(&mut rec), ["SBTCUSDT:218"]);
    assert_eq!(best(&rec, "BTCUSDT").map(|b| b.2), Some(219));
    assert_eq!(rec.stats().book_snapshots, 4);
}

#[test]
fn a_resync_touches_one_symbol_and_snapshots_are_spread_over_the_budget() {
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    let symbols: Vec<String> = (0..30).map(|i| format!("S{i:02}USDT")).collect();
    for s in &symbols {
        rec.handle_event(format!("{}@depth", s.to_lowercase()), diff(s, 10, 11, &[], &[]), t(0));
    }
    // One at a time, 50 weight each: 24 in the first minute, the other 6 once the window slides.
    let mut sent = Vec::new();
    let mut now = t(0);
    for _ in 0..200 {
        let Some(at) = rec.poll_timeout() else { break };
        now = now.max(at);
        rec.handle_timeout(now);
        while let Some((id, symbol)) = depth_request(&mut rec, now) {
            sent.push(now.as_millis());
            now += Duration::from_millis(100);
            rec.handle_response(id, snapshot_body(10, &[(1, 1)], &[(20, 1)]), now);
            assert!(rec.book(&symbol).is_some());
        }
    }
    assert_eq!(sent.len(), 30);
    assert_eq!(sent[..3], [0, 100, 200]);
    assert_eq!(sent[23], 2_300);
    assert_eq!(sent[24..], [60_000, 60_100, 60_200, 60_300, 60_400, 60_500]);
    let _ = book_outs(&mut rec);
    rec.handle_event("s03usdt@depth", diff("S03USDT", 13, 14, &[], &[]), now);
    assert_eq!(book_outs(&mut rec), [".", "XS03USDT"]);
    assert_eq!(symbols.iter().filter(|s| rec.book(s).is_none()).collect::<Vec<_>>(), ["S03USDT"]);
}

#[test]
fn failed_snapshots_are_retried_after_a_pause() {
    let mut rec = Recovery::new(&config(100, true, 6000), t(0));
    rec.handle_event(D, diff("BTCUSDT", 1, 1, &[], &[]), t(0));
    let (id, _) = depth_request(&mut rec, t(0)).unwrap();
    rec.handle_response(id, RestResponse::Http { status: 200, retry_after: None, body: "{}".into() }, t(0));
    assert_eq!((rec.poll_request(t(999)), rec.poll_timeout()), (None, Some(t(1_000))));
    let (id, _) = depth_request(&mut rec, t(1_000)).unwrap();
    rec.handle_response(id, status(503, None), t(1_000));
    assert_eq!(rec.poll_timeout(), Some(t(3_000)));
    let (id, _) = depth_request(&mut rec, t(3_000)).unwrap();
    rec.handle_response(id, status(429, Some(10)), t(3_000));
    assert_eq!(rec.poll_timeout(), Some(t(13_000)));
    assert_eq!(rec.stats().rest_failures, 2);
}

/// A model exchange's book: levels 1..=10 bid, 11..=20 ask, each diff a few changes.
#[derive(Debug, Clone, Default)]
struct ModelBook {
    id: u64,
    bids: BTreeMap<u64, u64>,
    asks: BTreeMap<u64, u64>,
    at: BTreeMap<u64, OrderBook>,
    bodies: BTreeMap<u64, RestResponse>,
}

impl ModelBook {
    fn snapshot(&self) -> RestResponse {
        let bids: Vec<(u64, u64)> = self.bids.iter().rev().map(|(&p, &q)| (p, q)).collect();
        let asks: Vec<(u64, u64)> = self.asks.iter().map(|(&p, &q)| (p, q)).collect();
        snapshot_body(self.id, &bids, &asks)
    }

    fn step(&mut self, span: u8, changes: &[(u8, u8)]) -> MarketEvent {
        let first = self.id + 1;
        self.id += 1 + u64::from(span % 3);
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        for &(level, q) in changes.iter().take(4) {
            let level = u64::from(level % 20) + 1;
            let q = u64::from(q % 4); // 0 removes
            let (side, list) = if level <= 10 { (&mut self.bids, &mut bids) } else { (&mut self.asks, &mut asks) };
            if q == 0 {
                side.remove(&level);
            } else {
                side.insert(level, q);
            }
            list.push((level, q));
        }
        let event = diff("BTCUSDT", first, self.id, &bids, &asks);
        let response = self.snapshot();
        let RestResponse::Http { body, .. } = &response else { unreachable!() };
        let snap = crate::protocol::rest::decode_depth(body).unwrap();
        self.at.insert(self.id, OrderBook::from_snapshot(&snap));
        self.bodies.insert(self.id, response);
        event
    }

    /// The snapshot as it was `age` updates ago (REST may serve a slightly older state than the stream).
    fn stale_snapshot(&self, age: u8) -> RestResponse {
        let id = self.id.saturating_sub(u64::from(age % 12));
        self.bodies.range(..=id).next_back().map_or_else(|| self.snapshot(), |(_, r)| r.clone())
    }
}

#[derive(Debug, Clone)]
enum BookStep {
    Diff { drop: bool, span: u8, changes: Vec<(u8, u8)> },
    Answer { fail: bool, age: u8 },
    Wait(u16),
}

impl Arbitrary for BookStep {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 8 {
            0..=4 => {
                BookStep::Diff { drop: u8::arbitrary(g) % 8 == 0, span: u8::arbitrary(g), changes: Vec::arbitrary(g) }
            }
            5 | 6 => BookStep::Answer {
                fail: u8::arbitrary(g) % 4 == 0,
                age: if bool::arbitrary(g) { 0 } else { u8::arbitrary(g) },
            },
            _ => BookStep::Wait(u16::arbitrary(g)),
        }
    }
}

fn book_equals_model(steps: Vec<BookStep>) -> Result<(), String> {
    let mut rec = Recovery::new(&config(1000, true, 6000), t(0));
    let mut model = ModelBook::default();
    let mut now = t(0);
    let mut open: VecDeque<RequestId> = VecDeque::new();
    let mut synced = 0;
    let check = |rec: &mut Recovery, model: &ModelBook, synced: &mut u32| -> Result<(), String> {
        while let Some(out) = rec.poll_output() {
            if let RecoveryOutput::BookSynced { .. } = out {
                *synced += 1;
            }
        }
        if let Some(book) = rec.book("BTCUSDT") {
            match model.at.get(&book.last_update_id()) {
                Some(want) if want == book => {}
                want => return Err(format!("book at {} is {book:?}, model {want:?}", book.last_update_id())),
            }
        }
        Ok(())
    };
    for step in steps {
        match step {
            BookStep::Diff { drop, span, changes } => {
                let event = model.step(span, &changes);
                if !drop {
                    rec.handle_event(D, event, now);
                }
            }
            BookStep::Answer { fail, age } => {
                if let Some(id) = open.pop_front() {
                    let answer = if fail { status(500, None) } else { model.stale_snapshot(age) };
                    rec.handle_response(id, answer, now);
                }
            }
            BookStep::Wait(ms) => {
                now += Duration::from_millis(u64::from(ms));
                rec.handle_timeout(now);
            }
        }
        while let Some((id, _)) = rec.poll_request(now) {
            open.push_back(id);
        }
        check(&mut rec, &model, &mut synced)?;
    }
    // Heal: no drops, every snapshot answered; the book must sync and follow the model.
    for i in 0..200u8 {
        let event = model.step(i, &[(i, i / 3)]);
        rec.handle_event(D, event, now);
        if let Some(id) = open.pop_front() {
            rec.handle_response(id, model.snapshot(), now);
        }
        now += Duration::from_secs(1);
        rec.handle_timeout(now);
        while let Some((id, _)) = rec.poll_request(now) {
            open.push_back(id);
        }
        check(&mut rec, &model, &mut synced)?;
    }
    match rec.book("BTCUSDT") {
        Some(book) if book.last_update_id() == model.id && synced > 0 => Ok(()),
        other => Err(format!("not synced after healing: {other:?}")),
    }
}

#[test]
fn the_book_always_equals_the_models_book_at_its_update_id() {
    fn prop(steps: Vec<BookStep>) -> quickcheck::TestResult {
        match book_equals_model(steps) {
            Ok(()) => quickcheck::TestResult::passed(),
            Err(e) => quickcheck::TestResult::error(e),
        }
    }
    QuickCheck::new().tests(200).quickcheck(prop as fn(Vec<BookStep>) -> quickcheck::TestResult);
}

#[test]
fn a_numbering_restart_abandons_the_old_gaps_and_starts_the_stream_over() {
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(S, live(5_000), t(0));
    rec.handle_event(S, live(5_010), t(0)); // 5_001..=5_009 missing, 5_010 held
    let (late, from, _) = agg_request(&mut rec, t(0)).unwrap();
    assert_eq!(from, 5_001);
    rec.handle_restart(S, 5_010, 1, t(10));
    // The old gap cannot be fetched any more (fromId now means the new ids); what was held is delivered.
    assert_eq!(drain(&mut rec), ["D5000", "A5001-5009", "D5010"]);
    rec.handle_event(S, live(1), t(20));
    rec.handle_event(S, live(2), t(20));
    assert_eq!(drain(&mut rec), ["D1", "D2"]);
    rec.handle_response(late, body(5_001..=5_009), t(30));
    assert_eq!(drain(&mut rec), Vec::<String>::new(), "an answer for the old numbering is ignored");
    rec.handle_event(S, live(5), t(40)); // gaps of the new numbering are backfilled as usual
    let (_, from, limit) = agg_request(&mut rec, t(40)).unwrap();
    assert_eq!((from, limit), (3, 2));
    assert_eq!((rec.stats().abandoned_ids, rec.stats().held_events), (9, 1));
}

/// keel-sim seed 607188: the new numbering's first frame (100) arrived before the old numbering's
/// last (900_000), which read as a gap 101..=899_999; REST, already serving the new numbering, filled
/// its start with 101 and 102. The restart the connection then reports starts at 101: the live 101
/// and 102 it held are the trades already delivered as backfill, not new ones.
#[test]
fn a_restart_inside_a_gap_already_fetched_does_not_deliver_the_fetched_trades_twice() {
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(S, live(100), t(0));
    rec.handle_event(S, live(900_000), t(0));
    let (id, from, _) = agg_request(&mut rec, t(0)).unwrap();
    assert_eq!(from, 101);
    rec.handle_response(id, body([101, 102]), t(1));
    assert_eq!(drain(&mut rec), ["D100", "R101", "R102"]);
    rec.handle_restart(S, 900_000, 101, t(2));
    assert_eq!(drain(&mut rec), ["B101-102/2", "A103-899999", "D900000"]);
    for id in [101, 102, 103, 104] {
        rec.handle_event(S, live(id), t(3));
    }
    assert_eq!(drain(&mut rec), ["D103", "D104"], "101 and 102 were delivered once, as backfill");
    // Past the fetched keys, the stream goes on as after any restart.
    rec.handle_event(S, live(106), t(4));
    assert_eq!(drain(&mut rec), Vec::<String>::new(), "105 is missing: 106 is held behind it");

    // A real restart below a gap fetched past its first key: the new numbering's trades at those keys
    // are later than anything fetched, and all delivered.
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(S, live(5_000), t(0));
    rec.handle_event(S, live(20_000), t(0));
    let (id, _, _) = agg_request(&mut rec, t(0)).unwrap();
    rec.handle_response(id, body(5_001..=5_003), t(1));
    rec.handle_restart(S, 20_000, 5_002, t(2));
    drain(&mut rec);
    let later = |id: u64| {
        let mut tr = trade(id);
        tr.trade_time += 1_000_000;
        MarketEvent::AggTrade(tr)
    };
    rec.handle_event(S, later(5_002), t(3));
    rec.handle_event(S, later(5_003), t(3));
    let delivered: Vec<u64> = std::iter::from_fn(|| rec.poll_output())
        .filter_map(|o| match o {
            RecoveryOutput::Deliver { event: MarketEvent::AggTrade(a), .. } => Some(a.agg_id),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [5_002, 5_003]);
}

#[test]
fn a_numbering_restart_on_a_depth_stream_resyncs_the_book_from_a_fresh_snapshot() {
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    rec.handle_event(D, diff("BTCUSDT", 100, 102, &[(5, 1)], &[]), t(0));
    let (id, _) = depth_request(&mut rec, t(0)).unwrap();
    rec.handle_response(id, snapshot_body(101, &[(5, 9)], &[(12, 3)]), t(1));
    assert_eq!(book_outs(&mut rec), [".", "SBTCUSDT:101"]);
    rec.handle_restart(D, 102, 1, t(2));
    assert_eq!(book_outs(&mut rec), ["XBTCUSDT"]);
    assert_eq!(rec.book("BTCUSDT"), None);
    rec.handle_event(D, diff("BTCUSDT", 1, 2, &[(7, 1)], &[]), t(3));
    let (id, _) = depth_request(&mut rec, t(3)).unwrap();
    rec.handle_response(id, snapshot_body(1, &[(7, 4)], &[(12, 3)]), t(4));
    assert_eq!(book_outs(&mut rec), [".", "SBTCUSDT:1"]);
    assert_eq!(best(&rec, "BTCUSDT"), Some(("0.07".into(), "0.12".into(), 2)));
    // A restart of another stream of the symbol leaves the book alone.
    rec.handle_restart("btcusdt@trade", 9_000, 1, t(5));
    assert_eq!((book_outs(&mut rec), rec.stats().book_resyncs), (vec![], 1));
}

// ---- `@trade` and kline streams (the same machinery, generalised over the kind) ----

const TR: &str = "btcusdt@trade";

fn streams_config(streams: &[&str], backfill: bool) -> Config {
    let mut c = config(10, backfill, 1200);
    c.stream.streams = streams.iter().map(|s| s.to_string()).collect();
    c
}

fn trade_event(id: u64) -> MarketEvent {
    MarketEvent::Trade(crate::protocol::Trade {
        symbol: "BTCUSDT".into(),
        event_time: 5_000 + id,
        trade_id: id,
        price: Decimal::new(u128::from(20_000 + id % 50), 2, false).unwrap(),
        quantity: Decimal::new(u128::from(1 + id % 5), 5, false).unwrap(),
        trade_time: 5_000 + id,
        buyer_is_maker: id.is_multiple_of(2),
    })
}

fn trades_body(ids: impl IntoIterator<Item = u64>) -> RestResponse {
    let items: Vec<String> = ids
        .into_iter()
        .map(|id| {
            let MarketEvent::Trade(t) = trade_event(id) else { unreachable!() };
            format!(
                r#"{{"id":{id},"price":"{}","qty":"{}","quoteQty":"1","time":{},"isBuyerMaker":{},"isBestMatch":true}}"#,
                t.price, t.quantity, t.trade_time, t.buyer_is_maker
            )
        })
        .collect();
    RestResponse::Http { status: 200, retry_after: None, body: format!("[{}]", items.join(",")) }
}

/// Outputs in short form for trade and kline streams: `D5`/`R5` (delivered live / backfilled, trade
/// id or kline open time), `d60000` a running kline update, `B..`, `A..` as in [`drain`].
fn drain_keys(rec: &mut Recovery) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(out) = rec.poll_output() {
        v.push(match out {
            RecoveryOutput::Deliver { event: MarketEvent::Trade(tr), backfilled, .. } => {
                assert_eq!(MarketEvent::Trade(tr.clone()), trade_event(tr.trade_id), "fields as the exchange's");
                format!("{}{}", if backfilled { "R" } else { "D" }, tr.trade_id)
            }
            RecoveryOutput::Deliver { event: MarketEvent::Kline(k), backfilled, .. } => match (k.is_closed, backfilled)
            {
                (false, _) => format!("d{}", k.open_time),
                (true, b) => format!("{}{}", if b { "R" } else { "D" }, k.open_time),
            },
            RecoveryOutput::Backfilled { first, last, count, .. } => format!("B{first}-{last}/{count}"),
            RecoveryOutput::Abandoned { first, last, .. } => format!("A{first}-{last}"),
            other => format!("{other:?}"),
        });
    }
    v
}

#[test]
fn trade_gaps_are_fetched_with_historical_trades_in_order() {
    let mut rec = Recovery::new(&streams_config(&[TR, S], true), t(0));
    rec.handle_event(TR, trade_event(1), t(0));
    rec.handle_event(TR, trade_event(2), t(0));
    // What the connection reports for a @trade stream: a trade-id gap. On an aggTrade stream the same
    // kind (its f/l) is not fetchable and is ignored.
    rec.handle_gap(&Gap { stream: TR.into(), first_missing: 3, last_missing: 5, kind: GapKind::TradeId }, t(10));
    rec.handle_gap(&Gap { stream: S.into(), first_missing: 3, last_missing: 5, kind: GapKind::TradeId }, t(10));
    rec.handle_event(TR, trade_event(6), t(10));
    assert_eq!(drain_keys(&mut rec), ["D1", "D2"]);
    let (id, request) = rec.poll_request(t(10)).unwrap();
    assert_eq!(request, RestRequest::HistoricalTrades { symbol: "BTCUSDT".into(), from_id: 3, limit: 3 });
    assert_eq!(rec.poll_request(t(10)), None, "one request per gap, none for the aggTrade stream");
    assert_eq!(rec.stats().weight_used_last_minute, 25);
    // A 429 pauses; the answer to the retry closes the gap and releases the held trade.
    rec.handle_response(id, status(429, Some(2)), t(20));
    assert_eq!(rec.poll_timeout(), Some(t(2_020)));
    assert_eq!(rec.poll_request(t(2_019)), None);
    let (id, _) = rec.poll_request(t(2_020)).unwrap();
    rec.handle_response(id, trades_body(3..=5), t(2_100));
    assert_eq!(drain_keys(&mut rec), ["R3", "R4", "R5", "B3-5/3", "D6"]);
    let k = rec.stats().kind("trade");
    assert_eq!((k.backfilled, k.requests, k.abandoned), (3, 2, 0));
    assert_eq!(rec.stats().kind("aggTrade"), KindStats::default());
    // Binance answering from a later id: the ids before it are gone, reported once.
    rec.handle_event(TR, trade_event(10), t(3_000));
    let (id, request) = rec.poll_request(t(3_000)).unwrap();
    assert_eq!(request, RestRequest::HistoricalTrades { symbol: "BTCUSDT".into(), from_id: 7, limit: 3 });
    rec.handle_response(id, trades_body(9..=10), t(3_100));
    assert_eq!(drain_keys(&mut rec), ["A7-8", "R9", "B7-9/1", "D10"]);
    assert_eq!((rec.stats().kind("trade").abandoned, rec.stats().abandoned_ids), (2, 2));
    // Duplicates (a make-before-break replay) are dropped.
    rec.handle_event(TR, trade_event(9), t(3_200));
    assert_eq!(drain_keys(&mut rec), Vec::<String>::new());
}

/// A kline of BTCUSDT for `interval` opening at `open`, closing at `close`, with empty prices.
fn kline(interval: &str, open: u64, close: u64, closed: bool) -> MarketEvent {
    MarketEvent::Kline(Box::new(Kline {
        symbol: "BTCUSDT".into(),
        event_time: open,
        open_time: open,
        close_time: close,
        interval: interval.into(),
        first_trade_id: -1,
        last_trade_id: -1,
        open: Decimal::default(),
        high: Decimal::default(),
        low: Decimal::default(),
        close: Decimal::default(),
        volume: Decimal::default(),
        quote_volume: Decimal::default(),
        taker_buy_volume: Decimal::default(),
        taker_buy_quote_volume: Decimal::default(),
        trades: 0,
        is_closed: closed,
    }))
}

fn m1(open: u64, closed: bool) -> MarketEvent {
    kline("1m", open, open + 59_999, closed)
}

fn klines_body(opens: impl IntoIterator<Item = (u64, u64)>) -> RestResponse {
    let items: Vec<String> = opens
        .into_iter()
        .map(|(open, close)| format!(r#"[{open},"1.0","2.0","0.5","1.5","10",{close},"15",3,"4","6","0"]"#))
        .collect();
    RestResponse::Http { status: 200, retry_after: None, body: format!("[{}]", items.join(",")) }
}

const K1: &str = "btcusdt@kline_1m";

#[test]
fn missed_closed_klines_are_fetched_and_come_before_newer_live_ones() {
    let mut rec = Recovery::new(&streams_config(&[K1], true), t(0));
    rec.handle_event(K1, m1(60_000, false), t(0));
    rec.handle_event(K1, m1(60_000, false), t(1));
    rec.handle_event(K1, m1(60_000, true), t(2));
    rec.handle_event(K1, m1(120_000, false), t(3));
    assert_eq!(drain_keys(&mut rec), ["d60000", "d60000", "D60000", "d120000"]);
    // An outage: back at 300 000 (running), so 120 000, 180 000 and 240 000 closed unseen.
    rec.handle_event(K1, m1(300_000, false), t(10));
    rec.handle_event(K1, m1(300_000, false), t(11));
    assert_eq!(drain_keys(&mut rec), Vec::<String>::new(), "held behind the gap");
    let (id, request) = rec.poll_request(t(11)).unwrap();
    assert_eq!(
        request,
        RestRequest::Klines {
            symbol: "BTCUSDT".into(),
            interval: "1m".into(),
            start_time: 120_000,
            end_time: 240_000,
            limit: 3,
            time_zone: None,
        }
    );
    rec.handle_response(id, klines_body([(120_000, 179_999), (180_000, 239_999), (240_000, 299_999)]), t(50));
    assert_eq!(drain_keys(&mut rec), ["R120000", "R180000", "R240000", "B120000-240000/3", "d300000", "d300000"]);
    // A duplicate closed kline and a stale running update are dropped; the next ones pass.
    rec.handle_event(K1, m1(240_000, true), t(60));
    rec.handle_event(K1, m1(240_000, false), t(61));
    rec.handle_event(K1, m1(300_000, true), t(62));
    rec.handle_event(K1, m1(300_000, true), t(63));
    rec.handle_event(K1, m1(360_000, false), t(64));
    assert_eq!(drain_keys(&mut rec), ["D300000", "d360000"]);
    let k = rec.stats().kind("kline");
    assert_eq!((k.backfilled, k.requests, k.abandoned, rec.stats().weight_used_last_minute), (3, 1, 0, 2));
    // A reconnect whose first kline is of the same interval: no gap, nothing asked.
    rec.handle_event(K1, m1(360_000, false), t(70));
    assert_eq!((drain_keys(&mut rec), rec.poll_request(t(70))), (vec!["d360000".to_string()], None));
}

#[test]
fn kline_gaps_are_abandoned_like_trade_gaps() {
    // Backfill off: reported at once, counted in klines (not milliseconds).
    let mut rec = Recovery::new(&streams_config(&[K1], false), t(0));
    rec.handle_event(K1, m1(0, true), t(0));
    rec.handle_event(K1, m1(240_000, false), t(1));
    assert_eq!(drain_keys(&mut rec), ["D0", "A60000-180000", "d240000"]);
    assert_eq!((rec.stats().kind("kline").abandoned, rec.stats().abandoned_ids), (3, 3));
    // REST failing: retried with pauses, given up after MAX_BACKFILL_FAILURES, held updates released.
    let mut rec = Recovery::new(&streams_config(&[K1], true), t(0));
    rec.handle_event(K1, m1(0, true), t(0));
    rec.handle_event(K1, m1(120_000, true), t(1));
    let mut now = t(1);
    for _ in 0..MAX_BACKFILL_FAILURES {
        now = rec.poll_timeout().unwrap().max(now);
        let (id, _) = rec.poll_request(now).unwrap();
        rec.handle_response(id, status(503, None), now);
    }
    assert_eq!(drain_keys(&mut rec), ["D0", "A60000-60000", "D120000"]);
    assert_eq!((rec.stats().kind("kline").abandoned, rec.stats().held_events, rec.in_flight()), (1, 0, 0));
}

#[test]
fn monthly_klines_step_by_calendar_month() {
    const M: &str = "btcusdt@kline_1M";
    let jan = 1_704_067_200_000; // 2024-01-01
    let (feb, mar, apr) = (jan + 31 * 86_400_000, jan + 60 * 86_400_000, jan + 91 * 86_400_000);
    let mut rec = Recovery::new(&streams_config(&[M], true), t(0));
    rec.handle_event(M, kline("1M", jan, feb - 1, true), t(0));
    rec.handle_event(M, kline("1M", apr, apr + 30 * 86_400_000 - 1, false), t(1));
    let (id, request) = rec.poll_request(t(1)).unwrap();
    let RestRequest::Klines { start_time, end_time, limit, .. } = request else { panic!("{request:?}") };
    assert_eq!((start_time, end_time, limit), (feb, mar, 2));
    rec.handle_response(id, klines_body([(feb, mar - 1), (mar, apr - 1)]), t(2));
    assert_eq!(
        drain_keys(&mut rec),
        [format!("D{jan}"), format!("R{feb}"), format!("R{mar}"), format!("B{feb}-{mar}/2"), format!("d{apr}")]
    );
}

/// One live kline event of the property below: interval index (0..40) and whether it is the closed one.
#[derive(Debug, Clone)]
struct KlineFeed(Vec<(u8, bool)>, Vec<u8>);

impl Arbitrary for KlineFeed {
    fn arbitrary(g: &mut Gen) -> Self {
        // Mostly forward (running updates, then the closed one), with outages (skips) and replays.
        let n = usize::arbitrary(g) % 60;
        let mut at = 0u8;
        let events = (0..n)
            .map(|_| {
                match u8::arbitrary(g) % 6 {
                    0 => at = at.saturating_add(1 + u8::arbitrary(g) % 4).min(39),
                    1 => at = at.saturating_sub(u8::arbitrary(g) % 3),
                    _ => {}
                }
                (at, bool::arbitrary(g))
            })
            .collect();
        // Which REST answers fail (by request number).
        let failing = (0..u8::arbitrary(g) % 5).map(|_| u8::arbitrary(g) % 12).collect();
        KlineFeed(events, failing)
    }
}

#[test]
fn closed_klines_come_out_once_in_order_without_a_hole() {
    fn prop(feed: KlineFeed) -> bool {
        const M: &str = "btcusdt@kline_1M";
        let iv = KlineInterval::of_stream(M).unwrap();
        let open = |i: u8| (0..i).fold(1_704_067_200_000, |t, _| iv.next(t));
        let mut rec = Recovery::new(&streams_config(&[M], true), t(0));
        let mut now = 0;
        let mut sent = 0u8;
        let mut keys: Vec<(u64, bool)> = Vec::new(); // closed keys delivered or abandoned (key, was abandoned)
        let mut last_closed: Option<u64> = None;
        let run = |rec: &mut Recovery, now: u64, keys: &mut Vec<(u64, bool)>, sent: &mut u8| -> bool {
            loop {
                while let Some((id, r)) = rec.poll_request(t(now)) {
                    let RestRequest::Klines { start_time, end_time, limit, .. } = r else { return false };
                    *sent += 1;
                    let answer = if feed.1.contains(sent) {
                        status(503, None)
                    } else {
                        let mut opens = vec![];
                        let mut o = start_time;
                        while o <= end_time && opens.len() < usize::from(limit) {
                            opens.push((o, iv.next(o) - 1));
                            o = iv.next(o);
                        }
                        klines_body(opens)
                    };
                    rec.handle_response(id, answer, t(now));
                }
                let mut any = false;
                while let Some(out) = rec.poll_output() {
                    any = true;
                    match out {
                        RecoveryOutput::Deliver { event: MarketEvent::Kline(k), .. } if k.is_closed => {
                            keys.push((k.open_time, false))
                        }
                        // A running update is never of an interval already closed.
                        RecoveryOutput::Deliver { event: MarketEvent::Kline(k), .. }
                            if keys.last().is_some_and(|(key, _)| k.open_time <= *key) =>
                        {
                            return false;
                        }
                        RecoveryOutput::Abandoned { first, last, .. } => {
                            let mut o = first;
                            while o <= last {
                                keys.push((o, true));
                                o = iv.next(o);
                            }
                        }
                        _ => {}
                    }
                }
                if !any && rec.poll_request(t(now)).is_none() {
                    return true;
                }
            }
        };
        // Closed klines are promised from the stream's first event on: one of an earlier month that
        // comes after it (a running update of March, then February's close) is stale, as aggTrade ids
        // below the first one seen are (quickcheck found [(3, running), (2, closed), ..]).
        let start = feed.0.first().map_or(0, |&(i, _)| open(i));
        for (i, closed) in feed.0.iter().copied() {
            let o = open(i);
            rec.handle_event(M, kline("1M", o, iv.next(o) - 1, closed), t(now));
            if closed && o >= start {
                last_closed = Some(last_closed.map_or(o, |l: u64| l.max(o)));
            }
            if !run(&mut rec, now, &mut keys, &mut sent) {
                return false;
            }
            now += 1;
        }
        // Settle: retries after their pauses, then the run stops.
        for _ in 0..20 {
            now = rec.poll_timeout().map_or(now, |at| at.as_millis().max(now));
            if !run(&mut rec, now, &mut keys, &mut sent) {
                return false;
            }
        }
        rec.handle_shutdown(t(now));
        if !run(&mut rec, now, &mut keys, &mut sent) {
            return false;
        }
        // Once each, in order, one month apart, up to the last closed kline seen.
        let continuous = keys.windows(2).all(|w| w[1].0 == iv.next(w[0].0));
        let reaches = last_closed.is_none_or(|l| keys.last().is_some_and(|(k, _)| *k >= l));
        continuous && reaches && rec.stats().held_events == 0
    }
    // KlineFeed has no shrinker, and quickcheck then reports a failure as "No Arguments Provided":
    // print the feed itself.
    fn named(feed: KlineFeed) -> bool {
        let ok = prop(feed.clone());
        if !ok {
            eprintln!("failing feed: {feed:?}");
        }
        ok
    }
    QuickCheck::new().tests(2000).quickcheck(named as fn(KlineFeed) -> bool);
}

/// Where an earlier run's recording of `S` ended: trade `id`, complete.
fn recorded(id: u64) -> Recorded {
    Recorded { key: id, complete: true, trade_time: trade(id).trade_time }
}

#[test]
fn a_resumed_stream_fetches_what_was_missed_between_runs() {
    // The last run recorded up to 100; this one's first live trade is 151.
    let mut rec = Recovery::new(&config(1000, true, 1200), t(0));
    assert!(rec.resume(S, recorded(100)));
    rec.handle_event(S, live(151), t(0));
    rec.handle_event(S, live(152), t(1));
    assert_eq!(drain(&mut rec), Vec::<String>::new(), "held behind the gap since the recording");
    let (id, from, limit) = agg_request(&mut rec, t(1)).unwrap();
    assert_eq!((from, limit), (101, 50));
    rec.handle_response(id, body(101..=150), t(50));
    let out = drain(&mut rec);
    assert_eq!((out[0].as_str(), out[49].as_str()), ("R101", "R150"));
    assert_eq!(out[50..], ["B101-150/50", "D151", "D152"]);
}

#[test]
fn a_resumed_stream_drops_what_the_recording_holds_and_passes_what_follows() {
    let mut rec = Recovery::new(&config(1000, true, 1200), t(0));
    assert!(rec.resume(S, recorded(100)));
    for id in [99, 100, 101, 102] {
        rec.handle_event(S, live(id), t(id));
    }
    assert_eq!(drain(&mut rec), ["D101", "D102"]);
    assert_eq!(rec.poll_request(t(200)), None, "contiguous with the recording: nothing to fetch");
    // Once events flow, a resume is refused (it would move `expect` under delivered events); so is
    // one for a stream not sequenced here.
    assert!(!rec.resume(S, recorded(500)));
    assert!(!rec.resume("btcusdt@depth", recorded(5)));
}

#[test]
fn a_numbering_restarted_since_the_recording_starts_over_instead_of_going_silent() {
    // The recording ended at 5000 (its trade time); the server now numbers from 1, trading later.
    let mut rec = Recovery::new(&config(1000, true, 1200), t(0));
    let mut r = recorded(5000);
    r.trade_time = 500;
    assert!(rec.resume(S, r));
    rec.handle_event(S, live(1), t(0));
    rec.handle_event(S, live(2), t(1));
    assert_eq!(
        drain(&mut rec),
        [
            format!("{:?}", RecoveryOutput::ResumeDiscarded { stream: S.into(), recorded: 5000, first: 1 }),
            "D1".into(),
            "D2".into()
        ]
    );
    assert_eq!(rec.poll_request(t(2)), None, "nothing fetched across numberings");
}

#[test]
fn a_resumed_kline_stream_fetches_the_closes_it_missed() {
    // The last row was the running update of 120 000 (its close unrecorded); live resumes at 300 000.
    let mut rec = Recovery::new(&streams_config(&[K1], true), t(0));
    assert!(rec.resume(K1, Recorded { key: 120_000, complete: false, trade_time: 0 }));
    rec.handle_event(K1, m1(300_000, false), t(10));
    let (id, request) = rec.poll_request(t(10)).unwrap();
    assert!(
        matches!(request, RestRequest::Klines { start_time: 120_000, end_time: 240_000, limit: 3, .. }),
        "{request:?}"
    );
    rec.handle_response(id, klines_body([(120_000, 179_999), (180_000, 239_999), (240_000, 299_999)]), t(50));
    assert_eq!(drain_keys(&mut rec), ["R120000", "R180000", "R240000", "B120000-240000/3", "d300000"]);
    // A closed last row: the next interval is expected, and a stale close of the recorded one is dropped.
    let mut rec = Recovery::new(&streams_config(&[K1], true), t(0));
    assert!(rec.resume(K1, Recorded { key: 120_000, complete: true, trade_time: 0 }));
    rec.handle_event(K1, m1(120_000, true), t(0));
    rec.handle_event(K1, m1(180_000, false), t(1));
    assert_eq!((drain_keys(&mut rec), rec.poll_request(t(1))), (vec!["d180000".to_string()], None));
}

#[test]
fn a_recording_of_another_numbering_is_not_backfilled_from_this_one() {
    // The recording (of another server) ended at id 100 traded at a late time; this server's ids run
    // higher, but its trade 101 traded long before: fetching on would write its old trades.
    let mut rec = Recovery::new(&config(1000, true, 1200), t(0));
    let mut r = recorded(100);
    r.trade_time = trade(5_000).trade_time;
    assert!(rec.resume(S, r));
    rec.handle_event(S, live(6_000), t(0));
    let (id, from, _) = agg_request(&mut rec, t(0)).unwrap();
    assert_eq!(from, 101);
    rec.handle_response(id, body(101..=1100), t(10));
    assert_eq!(drain(&mut rec), ["A101-5999", "D6000"], "nothing of the other numbering delivered");
    assert_eq!(rec.stats().backfilled_trades, 0);
    assert_eq!(rec.poll_request(t(20)), None);
}

#[test]
fn a_restart_before_the_first_event_forgets_the_recording_too() {
    // The recording's end belonged to the old numbering; kept, it took the new numbering's replayed
    // 1 (traded after the recording) for another renumbering and delivered it twice.
    let mut rec = Recovery::new(&config(100, true, 1200), t(0));
    assert!(rec.resume(S, Recorded { key: 100, complete: true, trade_time: 1_000_000 }));
    rec.handle_restart(S, 100, 1, t(0));
    rec.handle_event(S, live(1), t(1));
    rec.handle_event(S, live(1), t(2));
    rec.handle_event(S, live(2), t(3));
    assert_eq!(drain(&mut rec), ["D1", "D2"]);
}
