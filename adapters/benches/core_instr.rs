//! Instruction counts of the core costs of figure 1 (issue 8), which, unlike criterion's times, do not
//! depend on the machine's load. Run `n` iterations of one operation; `bench/run instr` runs this under
//! `valgrind --tool=callgrind` for n and 2n and divides the difference of the totals by n, which
//! removes setup (frame building, process start) from the count. perf's instruction counter is not
//! available on this VM (`perf stat -e instructions true` says "not supported").
//!
//! `cargo bench -p keel --bench core_instr -- <clone|decode|handle_input|scaler_update|driver_step> <n>`
//! Same inputs as core/benches/core.rs: a combined aggTrade frame, ids advancing by one, three streams.

use keel_core::config::Config;
use keel_core::connection::{Connection, Event, Input, Output, TransportId};
use keel_core::monitor::ScalerDriver;
use keel_core::protocol::decode;
use keel_core::scaler::LossScaler;
use keel_core::time::Timestamp;
use std::hint::black_box;

const AGG: &str = "btcusdt@aggTrade";

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let what = args.first().map_or("decode", String::as_str);
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    // A fixed number of frames is built in every run, so building cancels out of the n / 2n difference.
    let texts: Vec<String> = (1..=200_000).map(agg).collect();
    anyhow::ensure!(n as usize <= texts.len(), "n must be <= {}", texts.len());
    let mut sink = 0u64;
    match what {
        "clone" => {
            for t in &texts[..n as usize] {
                sink += black_box(t.clone()).len() as u64;
            }
        }
        "decode" => {
            for t in &texts[..n as usize] {
                sink += u64::from(black_box(decode(black_box(t))).is_ok());
            }
        }
        "handle_input" => {
            let mut conn = live_connection();
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
        w => anyhow::bail!("unknown operation {w:?}: clone, decode, handle_input, scaler_update or driver_step"),
    }
    black_box(sink);
    Ok(())
}
