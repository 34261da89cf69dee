//! Core cost (issue 8, figure 1): what one market frame and one training step cost in keel-core.
//!
//! Run: `cargo bench -p keel-core --bench core -- --warm-up-time 1 --measurement-time 3`
//! (or `bench/run`). Results are written into docs/BENCHMARKS.md by hand with the machine and load.

use criterion::{Criterion, criterion_group, criterion_main};
use keel_core::config::Config;
use keel_core::connection::{Connection, Event, Input, Output, TransportId};
use keel_core::monitor::ScalerDriver;
use keel_core::protocol::decode;
use keel_core::scaler::LossScaler;
use keel_core::time::Timestamp;
use std::hint::black_box;

const AGG: &str = "btcusdt@aggTrade";

/// A combined-stream aggTrade frame as Binance sends it (ids advance by one: no gaps).
fn agg(a: u64) -> String {
    format!(
        r#"{{"stream":"{AGG}","data":{{"e":"aggTrade","E":1672515782136,"s":"BTCUSDT","a":{a},"p":"27000.01000000","q":"0.00150000","f":{a},"l":{a},"T":1672515782136,"m":true,"M":true}}}}"#
    )
}

fn live_connection() -> Connection {
    let mut c = Config::default();
    c.reconnect.jitter = 0.0;
    c.stream.streams = vec![AGG.into(), "btcusdt@kline_1m".into(), "ethusdt@trade".into()];
    let mut conn = Connection::new(&c, 1, Timestamp::from_millis(0));
    while conn.poll_output().is_some() {}
    conn.handle_input(Input::Opened { id: TransportId(1) }, Timestamp::from_millis(0));
    while conn.poll_output().is_some() {}
    conn
}

fn frames(c: &mut Criterion) {
    // Frames are pre-built (the adapter hands over an owned String), so the String build is outside the timing:
    // each iteration clones one pre-built frame, which is measured separately below as "clone only".
    let n = 1 << 16;
    let texts: Vec<String> = (1..=n).map(agg).collect();

    let mut g = c.benchmark_group("frame");
    g.bench_function("clone only (baseline to subtract)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let s = texts[i % texts.len()].clone();
            i += 1;
            black_box(s)
        })
    });
    g.bench_function("decode aggTrade", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let f = decode(black_box(&texts[i % texts.len()]));
            i += 1;
            black_box(f)
        })
    });
    g.bench_function("handle_input aggTrade + drain + poll_timeout", |b| {
        let mut conn = live_connection();
        let mut a = 0u64;
        let mut now = 0u64;
        b.iter(|| {
            a += 1;
            if a.is_multiple_of(100) {
                now += 1;
            }
            // Ids must keep increasing or the gap tracker drops the frame as a duplicate: when the pre-built
            // ring wraps, a fresh connection starts (once per 65 536 frames, negligible).
            let text = texts[(a as usize - 1) % texts.len()].clone();
            if (a as usize - 1).is_multiple_of(texts.len()) && a > 1 {
                conn = live_connection();
            }
            conn.handle_input(Input::Text { id: TransportId(1), text }, Timestamp::from_millis(now));
            let mut delivered = 0u32;
            while let Some(o) = conn.poll_output() {
                delivered += u32::from(matches!(o, Output::Event(Event::Market { .. })));
            }
            black_box(conn.poll_timeout());
            delivered
        })
    });
    g.finish();
}

fn steps(c: &mut Criterion) {
    let cfg = Config::default().scaler;
    let mut g = c.benchmark_group("step");
    g.bench_function("LossScaler::update", |b| {
        let mut s = LossScaler::new(&cfg, 10_000_000);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(s.update(black_box(i.is_multiple_of(1000))))
        })
    });
    g.bench_function("ScalerDriver::step (update + record_step)", |b| {
        let mut d = ScalerDriver::new(&cfg, 10_000_000);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(d.step(i, black_box(i.is_multiple_of(1000)), Some(1.0)))
        })
    });
    g.finish();
}

criterion_group!(benches, frames, steps);
criterion_main!(benches);
