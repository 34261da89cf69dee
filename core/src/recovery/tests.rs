use super::*;
use crate::protocol::{AggTrade, Decimal, Kline};
use quickcheck::{Arbitrary, Gen, QuickCheck};
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
    let kline = MarketEvent::Kline(Kline {
        symbol: "BTCUSDT".into(),
        event_time: 0,
        open_time: 0,
        close_time: 0,
        interval: "1m".into(),
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
        is_closed: false,
    });
    rec.handle_event("btcusdt@kline_1m", kline.clone(), t(1));
    rec.handle_event(S, live(2), t(2));
    assert_eq!(drain(&mut rec), ["D1", "K", "D2"]);
    assert_eq!((rec.poll_request(t(3)), rec.poll_timeout()), (None, None));
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
fn ids_in_order_each_once(steps: Vec<Step>, max_held: u8, limit_pages: bool) -> Result<(), String> {
    let max_held = u32::from(max_held % 16) + 1;
    let mut rec = Recovery::new(&config(max_held, true, if limit_pages { 12 } else { 6000 }), t(0));
    let mut now = t(0);
    let mut produced = 100u64; // the exchange's last trade id
    let mut first_seen: Option<u64> = None;
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
    let want: Vec<u64> = match first_seen {
        Some(first) => (first..=produced).collect(),
        None => vec![],
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
    fn prop(steps: Vec<Step>, max_held: u8, limit_pages: bool) -> quickcheck::TestResult {
        match ids_in_order_each_once(steps, max_held, limit_pages) {
            Ok(()) => quickcheck::TestResult::passed(),
            Err(e) => quickcheck::TestResult::error(e),
        }
    }
    QuickCheck::new()
        .tests(300)
        .rng(Gen::new(60))
        .quickcheck(prop as fn(Vec<Step>, u8, bool) -> quickcheck::TestResult);
}
