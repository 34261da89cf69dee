//! Core cost (issue 8, figure 1): what one market frame and one training step cost in keel-core.
//!
//! Run: `cargo bench -p keel-core --bench core -- --warm-up-time 1 --measurement-time 3`
//! (or `bench/run`). Results are written into docs/BENCHMARKS.md by hand with the machine and load.

use criterion::{Criterion, criterion_group, criterion_main};
use keel_core::config::Config;
use keel_core::connection::{Connection, Event, Input, Output, TransportId, WsMessage};
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

/// One simulated hour of a healthy connection, driven through the real machine with no simulator around it:
/// Binance's server ping every 20 s (answered), the machine's own pings (answered 5 ms later), its timers,
/// and `frames_per_hour` aggTrade frames on one stream. This is the floor of what a simulated hour costs
/// when every step runs the real core (issue 8's simulator target): a simulator can only add to it.
struct QuietHour {
    conn: Connection,
    now: u64,
    next_server_ping: u64,
    next_frame: u64,
    frame_every: u64,
    pong_due: Option<(u64, Vec<u8>)>,
    agg_id: u64,
    texts: Vec<String>,
    /// Machine calls made (inputs + timeouts) and market events seen, for the per-step figure.
    calls: u64,
    events: u64,
}

impl QuietHour {
    fn new(frames_per_hour: u64, texts: Vec<String>) -> QuietHour {
        let mut c = Config::default();
        c.reconnect.jitter = 0.0;
        c.stream.streams = vec![AGG.into()];
        let mut conn = Connection::new(&c, 1, Timestamp::from_millis(0));
        while conn.poll_output().is_some() {}
        conn.handle_input(Input::Opened { id: TransportId(1) }, Timestamp::from_millis(0));
        while conn.poll_output().is_some() {}
        QuietHour {
            conn,
            now: 0,
            next_server_ping: 20_000,
            next_frame: 3_600_000 / frames_per_hour,
            frame_every: 3_600_000 / frames_per_hour,
            pong_due: None,
            agg_id: 0,
            texts,
            calls: 0,
            events: 0,
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.conn.poll_output() {
            match o {
                Output::Send { message: WsMessage::Ping(payload), .. } => self.pong_due = Some((self.now + 5, payload)),
                Output::Send { .. } => {}
                Output::Event(Event::Market { .. }) => self.events += 1,
                Output::Event(_) => {}
                other => panic!("a healthy connection did something else: {other:?}"),
            }
        }
    }

    /// Runs until `now + 1 h`, one machine call per thing that happens.
    fn hour(&mut self) {
        let end = self.now + 3_600_000;
        let id = TransportId(1);
        loop {
            let timer = self.conn.poll_timeout().map_or(u64::MAX, Timestamp::as_millis);
            let pong = self.pong_due.as_ref().map_or(u64::MAX, |p| p.0);
            let next = timer.min(pong).min(self.next_server_ping).min(self.next_frame);
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            let now = Timestamp::from_millis(next);
            self.calls += 1;
            if next == pong {
                let (_, payload) = self.pong_due.take().expect("pong is due");
                self.conn.handle_input(Input::Pong { id, payload }, now);
            } else if next == self.next_server_ping {
                self.next_server_ping += 20_000;
                self.conn.handle_input(Input::Ping { id, payload: next.to_be_bytes().to_vec() }, now);
            } else if next == self.next_frame {
                self.next_frame += self.frame_every;
                let text = self.texts[self.agg_id as usize % self.texts.len()].clone();
                self.agg_id += 1;
                self.conn.handle_input(Input::Text { id, text }, now);
            } else {
                self.conn.handle_timeout(now);
            }
            self.drain();
        }
    }
}

fn quiet_hours(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulated hour");
    // 60 frames an hour is about the fewest a stream may carry (the stall watch acts after 120 s without an
    // event); 428 is the simulator's mean market density per hour (figure 2). A connection serves 20 hours
    // (the rollover is at 23.5 h), then a fresh one is built outside the timing.
    for frames_per_hour in [60u64, 428] {
        // Ids start at 1 and advance by one per frame: 20 h of frames, no gaps and no wrap.
        let texts: Vec<String> = (1..=frames_per_hour * 20).map(agg).collect();
        let mut h = QuietHour::new(frames_per_hour, texts.clone());
        let mut hours = 0u32;
        g.bench_function(format!("healthy, 1 aggTrade stream, {frames_per_hour} frames/h"), |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    if hours == 20 {
                        h = QuietHour::new(frames_per_hour, texts.clone());
                        hours = 0;
                    }
                    let t = std::time::Instant::now();
                    h.hour();
                    total += t.elapsed();
                    hours += 1;
                }
                total
            })
        });
        eprintln!(
            "simulated hour, {frames_per_hour} frames/h: {:.0} machine calls and {:.0} market events per hour",
            h.calls as f64 / f64::from(hours.max(1)),
            h.events as f64 / f64::from(hours.max(1))
        );
    }
    g.finish();
}

criterion_group!(benches, frames, steps, quiet_hours);
criterion_main!(benches);
