//! Instruction counts of the core costs of figure 1 (issue 8), which, unlike criterion's times, do not
//! depend on the machine's load. Run `n` iterations of one operation; `bench/run instr` runs this under
//! `valgrind --tool=callgrind` for n and 2n and divides the difference of the totals by n, which
//! removes setup (frame building, process start) from the count. perf's instruction counter is not
//! available on this VM (`perf stat -e instructions true` says "not supported").
//!
//! `cargo bench -p keel --bench core_instr -- <op> <n>`; ops:
//! - `clone`, `decode`, `handle_input`, `scaler_update`, `driver_step`: same inputs as core/benches/core.rs (a
//!   combined aggTrade frame, ids advancing by one, three streams);
//! - `depth_decode`, `depth_handle_input`: the same for a combined depth diff as the exchange's blast sends it
//!   (two bids and one ask near the top of the book, `U` continuing the previous `u`);
//! - `agg_pipeline`, `depth_pipeline`: what `keel stream` does per frame in the core: `handle_input` + drain, each
//!   market event through `Recovery::handle_event` (depth: a synced 60-level book, every diff applied), drain its
//!   outputs, both `poll_timeout`s. The adapter's share (transport, TLS, loop) is figure 4's;
//! - `book_deep`: `OrderBook::apply` of real-like diffs (see [`deep_diffs`]) to a 1 000-level-a-side book, per
//!   diff of 20 levels: how the order book does away from the blast's top-of-book changes.

use keel_core::config::Config;
use keel_core::connection::{Connection, Event, Input, Output, TransportId};
use keel_core::monitor::ScalerDriver;
use keel_core::protocol::decode;
use keel_core::recovery::Recovery;
use keel_core::rest::{RestRequest, RestResponse};
use keel_core::scaler::LossScaler;
use keel_core::time::Timestamp;
use std::hint::black_box;

const AGG: &str = "btcusdt@aggTrade";

fn agg(a: u64) -> String {
    format!(
        r#"{{"stream":"{AGG}","data":{{"e":"aggTrade","E":1672515782136,"s":"BTCUSDT","a":{a},"p":"27000.01000000","q":"0.00150000","f":{a},"l":{a},"T":1672515782136,"m":true,"M":true}}}}"#
    )
}

const DEPTH: &str = "btcusdt@depth";
/// Levels per side of the bench's book (the exchange keeps 60).
const LEVELS: u64 = 60;

fn price(ticks: u64) -> String {
    format!("{}.{:02}", ticks / 100, ticks % 100)
}

fn qty(units: u64) -> String {
    format!("{}.{:08}", units / 100_000_000, units % 100_000_000)
}

/// Diff `k` (from 1): new quantities for the two best bids and the best ask, ids `U..=u` continuing
/// diff `k - 1` from update id 1000 on.
fn depth(k: u64) -> String {
    let (first, last) = (1000 + 3 * k - 2, 1000 + 3 * k);
    let q = |i: u64| qty(1 + (k * 7 + i) % 500_000_000);
    format!(
        r#"{{"stream":"{DEPTH}","data":{{"e":"depthUpdate","E":1672515782136,"s":"BTCUSDT","U":{first},"u":{last},"b":[["{}","{}"],["{}","{}"]],"a":[["{}","{}"]]}}}}"#,
        price(2_700_000),
        q(0),
        price(2_699_999),
        q(1),
        price(2_700_001),
        q(2)
    )
}

/// The REST snapshot the bench's book syncs from: 60 levels a side around 27000.00 / 27000.01, at id 1000.
fn snapshot() -> RestResponse {
    let side = |ticks: &mut dyn Iterator<Item = u64>| {
        ticks.map(|t| format!(r#"["{}","{}"]"#, price(t), qty(100_000_000 + t % 1000))).collect::<Vec<_>>().join(",")
    };
    let bids = side(&mut (0..LEVELS).map(|i| 2_700_000 - i));
    let asks = side(&mut (0..LEVELS).map(|i| 2_700_001 + i));
    let body = format!(r#"{{"lastUpdateId":1000,"bids":[{bids}],"asks":[{asks}]}}"#);
    RestResponse::Http { status: 200, retry_after: None, body }
}

/// Three streams subscribed: `main` (the frames' stream), a kline and another symbol's trades.
fn config(main: &str) -> Config {
    let mut c = Config::default();
    c.reconnect.jitter = 0.0;
    c.stream.streams = vec![main.into(), "btcusdt@kline_1m".into(), "ethusdt@trade".into()];
    c
}

/// A recovery whose BTCUSDT book is synced at update id 1000 (diff 1 comes next).
fn synced_recovery(c: &Config) -> anyhow::Result<Recovery> {
    let mut rec = Recovery::new(c, Timestamp::from_millis(0));
    let Ok(keel_core::protocol::Frame::Market { stream, event }) = decode(&depth(0)) else {
        anyhow::bail!("the bench's depth frame does not decode")
    };
    rec.handle_event(stream, event, Timestamp::from_millis(0));
    let Some((id, RestRequest::Depth { .. })) = rec.poll_request(Timestamp::from_millis(0)) else {
        anyhow::bail!("no snapshot request")
    };
    rec.handle_response(id, snapshot(), Timestamp::from_millis(0));
    while rec.poll_output().is_some() {}
    anyhow::ensure!(rec.book("BTCUSDT").is_some(), "the bench's book did not sync");
    Ok(rec)
}

/// `handle_input` + drain + every market event through the recovery + drain + both deadlines, per frame.
fn pipeline(main: &str, texts: &[String], sink: &mut u64) -> anyhow::Result<Recovery> {
    let c = config(main);
    let mut conn = live_connection(&c);
    let mut rec = synced_recovery(&c)?;
    for (i, t) in texts.iter().enumerate() {
        let now = Timestamp::from_millis(i as u64 / 100);
        conn.handle_input(Input::Text { id: TransportId(1), text: t.clone() }, now);
        while let Some(o) = conn.poll_output() {
            if let Output::Event(Event::Market { stream, event, .. }) = o {
                rec.handle_event(stream, event, now);
            }
        }
        while let Some(o) = rec.poll_output() {
            *sink += u64::from(matches!(o, keel_core::recovery::RecoveryOutput::Deliver { .. }));
        }
        black_box(conn.poll_timeout());
        black_box(rec.poll_timeout());
    }
    Ok(rec)
}

/// Levels per side of `book_deep`'s snapshot (Binance's default `limit` for keel, rest.book_depth_limit).
const DEEP_LEVELS: u64 = 1000;

/// `count` diffs of 20 levels (10 a side) in the shape of a liquid symbol's `@depth` stream: half the
/// changes within 10 ticks of the top, 30 % within 100, 20 % within 2 000 (the snapshot's levels are 2 ticks
/// apart, so about half of the changes hit a level and half are new prices), a quarter of them removals
/// (quantity 0). A fixed xorshift sequence: the same diffs in every run.
fn deep_diffs(count: usize) -> Vec<keel_core::protocol::DepthUpdate> {
    use keel_core::protocol::{Decimal, DepthUpdate};
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let dec = |m: u64, scale: u8| Decimal::new(u128::from(m), scale, false).unwrap_or_default();
    (0..count)
        .map(|k| {
            let mut side = |bid: bool| -> Vec<(Decimal, Decimal)> {
                (0..10)
                    .map(|_| {
                        let r = next();
                        let depth = match r % 10 {
                            0..5 => (r >> 8) % 10,
                            5..8 => (r >> 8) % 100,
                            _ => (r >> 8) % 2000,
                        };
                        let ticks = if bid { 2_700_000 - depth } else { 2_700_001 + depth };
                        let units = if (r >> 40) % 4 == 0 { 0 } else { 1 + (r >> 20) % 500_000_000 };
                        (dec(ticks, 2), dec(units, 8))
                    })
                    .collect()
            };
            let (bids, asks) = (side(true), side(false));
            let u = 1000 + 20 * k as u64;
            DepthUpdate::new("BTCUSDT", 1672515782136, u + 1, u + 20, bids, asks)
        })
        .collect()
}

fn live_connection(c: &Config) -> Connection {
    let mut conn = Connection::new(c, 1, Timestamp::from_millis(0));
    while conn.poll_output().is_some() {}
    conn.handle_input(Input::Opened { id: TransportId(1) }, Timestamp::from_millis(0));
    while conn.poll_output().is_some() {}
    conn
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let what = args.first().map_or("decode", String::as_str);
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    // A fixed number of frames is built in every run, so building cancels out of the n / 2n difference.
    let main = if what.starts_with("depth") { DEPTH } else { AGG };
    let texts: Vec<String> =
        if what.starts_with("depth") { (1..=200_000).map(depth).collect() } else { (1..=200_000).map(agg).collect() };
    anyhow::ensure!(n as usize <= texts.len(), "n must be <= {}", texts.len());
    let mut sink = 0u64;
    match what {
        "clone" => {
            for t in &texts[..n as usize] {
                sink += black_box(t.clone()).len() as u64;
            }
        }
        "decode" | "depth_decode" => {
            for t in &texts[..n as usize] {
                sink += u64::from(black_box(decode(black_box(t))).is_ok());
            }
        }
        "handle_input" | "depth_handle_input" => {
            let mut conn = live_connection(&config(main));
            for (i, t) in texts[..n as usize].iter().enumerate() {
                let now = Timestamp::from_millis(i as u64 / 100);
                conn.handle_input(Input::Text { id: TransportId(1), text: t.clone() }, now);
                while let Some(o) = conn.poll_output() {
                    sink += u64::from(matches!(o, Output::Event(Event::Market { .. })));
                }
                black_box(conn.poll_timeout());
            }
            anyhow::ensure!(sink == n, "{sink} market events for {n} frames");
        }
        "agg_pipeline" | "depth_pipeline" => {
            let rec = pipeline(main, &texts[..n as usize], &mut sink)?;
            anyhow::ensure!(sink == n, "{sink} events delivered for {n} frames");
            if what == "depth_pipeline" {
                let book = rec.book("BTCUSDT").ok_or_else(|| anyhow::anyhow!("the book lost its sync"))?;
                anyhow::ensure!(book.last_update_id() == 1000 + 3 * n, "the book is at {}", book.last_update_id());
            }
        }
        "book_deep" => {
            use keel_core::protocol::{Decimal, rest::DepthSnapshot};
            let dec = |m: u64, scale: u8| Decimal::new(u128::from(m), scale, false).unwrap_or_default();
            let level = |t: u64| (dec(t, 2), dec(100_000_000 + t % 1000, 8));
            let snapshot = DepthSnapshot {
                last_update_id: 1000,
                bids: (0..DEEP_LEVELS).map(|i| level(2_700_000 - 2 * i)).collect(),
                asks: (0..DEEP_LEVELS).map(|i| level(2_700_001 + 2 * i)).collect(),
            };
            let mut book = keel_core::recovery::OrderBook::from_snapshot(&snapshot);
            let diffs = deep_diffs(40_000);
            anyhow::ensure!(n as usize <= diffs.len(), "n must be <= {}", diffs.len());
            for d in &diffs[..n as usize] {
                book.apply(black_box(d));
            }
            let (b, a) = book.depth();
            sink += (b + a) as u64;
        }
        "scaler_update" => {
            let mut s = LossScaler::new(&Config::default().scaler, 10_000_000);
            for i in 1..=n {
                let _ = black_box(s.update(black_box(i.is_multiple_of(1000))));
            }
        }
        "driver_step" => {
            let mut d = ScalerDriver::new(&Config::default().scaler, 10_000_000);
            for i in 1..=n {
                let _ = black_box(d.step(i, black_box(i.is_multiple_of(1000)), Some(1.0)));
            }
        }
        w => anyhow::bail!(
            "unknown operation {w:?}: clone, decode, handle_input, depth_decode, depth_handle_input, agg_pipeline, \
             depth_pipeline, book_deep, scaler_update or driver_step"
        ),
    }
    black_box(sink);
    Ok(())
}
