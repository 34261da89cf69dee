//! Stream throughput and reconnect recovery (issue 8, figures 4 and 5). A plain binary, one measurement
//! per process so that CPU time (getrusage) and peak RSS (VmHWM) belong to that consumer alone.
//!
//! Throughput: `cargo bench -p keel --bench stream -- <consumer> <aggTrade|depth> <frames> <url> <ca.pem> [exchange pid]
//! [rest url]` against a separately running `keel exchange --fault '*=blast:N'` (bench/run starts it and passes its
//! REST URL, so that keel's depth consumer syncs its order book from the exchange's snapshot and applies every
//! diff to it, as it would against Binance; without one the snapshot request cannot be answered and the book
//! never syncs, which the depth row then says). Consumers:
//! - `keel-rec`: `keel::stream::stream` with recording on (CSV files under a temp dir);
//! - `keel`: the same with recording off;
//! - `bare`: async-tungstenite + async-native-tls + `serde_json::Value` per frame, no keel code at all;
//! - `discard`: the same connection, frames counted and dropped unparsed (what the exchange alone can send).
//!
//! Every consumer opens `/stream?streams=btcusdt@<kind>` (the combined envelope keel uses) and stops at
//! `frames` market frames. The wall time runs from before the TCP connect to the last frame, so the
//! handshake (a few ms) is included for every consumer alike. Prints one Markdown table row; with an
//! exchange pid, the exchange's own CPU time during the run is in the last column.
//!
//! Reconnect: `cargo bench -p keel --bench stream -- reconnect <resets>`: an in-process exchange, keel's
//! default backoff except `stable_after_ms` (see the docs), resets injected with `ExchangeHandle::inject`.

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use keel::exchange::{Exchange, ExchangeConfig, Fault, Market};
use keel::stream::{StreamOptions, stream};
use keel_core::config::Config;
use keel_core::connection::{Input, Output, TransportId};
use keel_core::trace::TraceRecord;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// User + system CPU seconds of this process.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU seconds of another process, from /proc/PID/stat (clock ticks of 10 ms).
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Mean size of one combined-envelope frame of the blast, as the exchange encodes it (keel's report
/// counts events, not bytes).
fn mean_frame_bytes(kind: &str) -> f64 {
    let mut m = Market::new(1, &["btcusdt".to_string()]);
    let frames = if kind == "depth" {
        m.blast_depth("btcusdt", 1000, 1_700_000_000_000)
    } else {
        m.blast_agg_trades("btcusdt", 1000, 1_700_000_000_000)
    };
    let total: usize = frames.iter().map(|p| format!(r#"{{"stream":"{}","data":{}}}"#, p.stream, p.json).len()).sum();
    total as f64 / frames.len() as f64
}

/// Bare client: returns (frames, payload bytes). `parse`: `serde_json::Value` per frame and an id check.
async fn bare(url: &str, ca_pem: &[u8], frames: u64, parse: bool) -> anyhow::Result<(u64, u64)> {
    let port: u16 = url.rsplit(':').next().and_then(|p| p.split('/').next()?.parse().ok()).unwrap_or(9443);
    let tcp = smol::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let connector =
        async_native_tls::TlsConnector::new().add_root_certificate(native_tls::Certificate::from_pem(ca_pem)?);
    let tls = connector.connect("localhost", tcp).await?;
    let (mut ws, _) = async_tungstenite::client_async(url, tls).await?;
    let (mut n, mut bytes, mut last_id) = (0u64, 0u64, 0u64);
    let id_key = if url.contains("@depth") { "u" } else { "a" };
    while n < frames {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                bytes += t.len() as u64;
                if parse {
                    let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                    let data = &v["data"];
                    // aggTrade: `a`; depth: `u` (its `a` is the asks).
                    let id = data.get(id_key).and_then(serde_json::Value::as_u64);
                    let id = id.ok_or_else(|| anyhow::anyhow!("frame without a numeric {id_key:?}: {}", t.as_str()))?;
                    anyhow::ensure!(id > last_id, "ids went backwards: {last_id} then {id}");
                    last_id = id;
                }
                n += 1;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the exchange closed after {n} frames"),
        }
    }
    let _ = ws.close(None).await;
    Ok((n, bytes))
}

fn throughput(args: &[String]) -> anyhow::Result<()> {
    let [consumer, kind, frames, url, ca] = &args[..5] else { anyhow::bail!("missing arguments") };
    let frames: u64 = frames.parse()?;
    let exchange_pid: Option<u32> = args.get(5).and_then(|p| p.parse().ok());
    let rest_url: Option<&String> = args.get(6);
    let stream_name = match kind.as_str() {
        "aggTrade" => "btcusdt@aggTrade",
        "depth" => "btcusdt@depth",
        k => anyhow::bail!("unknown payload {k:?}: aggTrade or depth"),
    };
    let full_url = format!("{url}/stream?streams={stream_name}");
    let ca_pem = std::fs::read(ca)?;
    let dir = std::env::temp_dir().join(format!("keel-bench-stream-{}", std::process::id()));
    let ex_cpu0 = exchange_pid.and_then(proc_cpu_secs);
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let (n, bytes) = match consumer.as_str() {
        "keel" | "keel-rec" => {
            let mut cfg = Config::default();
            cfg.stream.url = url.clone();
            cfg.stream.streams = vec![stream_name.to_string()];
            cfg.stream.out_dir = dir.join("data").display().to_string();
            cfg.tls.ca_file = Some(ca.clone());
            if let Some(rest) = rest_url {
                cfg.rest.url = rest.clone();
            }
            let opts = StreamOptions {
                seed: 1,
                duration: Some(Duration::from_secs(300)),
                max_messages: Some(frames),
                record: consumer == "keel-rec",
                ..StreamOptions::default()
            };
            let report = smol::block_on(stream(cfg, opts))?;
            anyhow::ensure!(report.stats.gaps == 0, "keel saw {} gaps", report.stats.gaps);
            if kind == "depth" {
                // The figure is meant for a synced book (every diff applied); say so when it was not.
                let synced = report.books.get("BTCUSDT").map(|b| b.last_update_id);
                eprintln!(
                    "keel depth: book {} ({} snapshots, {} resyncs)",
                    synced.map_or("never synced (diffs buffered, not applied)".to_string(), |u| format!(
                        "synced, at u={u}"
                    )),
                    report.recovery.book_snapshots,
                    report.recovery.book_resyncs
                );
            }
            // Bytes are filled in after the clocks are read (building sample frames is not keel's work).
            (report.stats.market_events, 0)
        }
        "bare" => smol::block_on(bare(&full_url, &ca_pem, frames, true))?,
        "discard" => smol::block_on(bare(&full_url, &ca_pem, frames, false))?,
        c => anyhow::bail!("unknown consumer {c:?}: keel-rec, keel, bare or discard"),
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let bytes = if consumer.starts_with("keel") { (n as f64 * mean_frame_bytes(kind)) as u64 } else { bytes };
    let ex_cpu = match (ex_cpu0, exchange_pid.and_then(proc_cpu_secs)) {
        (Some(a), Some(b)) => format!("{:.2}", (b - a) * 1e6 / n as f64),
        _ => "-".to_string(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| {consumer} | {kind} | {n} | {:.0} | {:.0} | {:.1} | {:.2} | {:.0} | {:.0} | {ex_cpu} |",
        bytes as f64 / n as f64,
        n as f64 / wall,
        bytes as f64 / wall / 1e6,
        cpu * 1e6 / n as f64,
        100.0 * cpu / wall,
        vm_hwm_mib(),
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn reconnect(args: &[String]) -> anyhow::Result<()> {
    let resets: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10);
    let ex = Exchange::start(ExchangeConfig { tick: Duration::from_millis(10), ..ExchangeConfig::default() })?;
    let dir = std::env::temp_dir().join(format!("keel-bench-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("ca.pem");
    ex.write_ca(&ca)?;
    let trace: PathBuf = dir.join("trace.ron");
    let mut cfg = Config::default();
    cfg.stream.url = ex.url();
    cfg.rest.url = ex.rest_url();
    cfg.stream.streams = vec!["btcusdt@aggTrade".to_string()];
    cfg.tls.ca_file = Some(ca.display().to_string());
    // Default backoff (initial 1 s, jitter 0.5, multiplier 2), except that a connection counts as
    // stable after 1 s instead of 30 s: every reset then starts a fresh outage at the initial delay
    // instead of escalating, without waiting 30 s between resets.
    cfg.reconnect.stable_after_ms = 1_000;
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let opts = StreamOptions { seed: 42, stop: Some(stop_rx), trace: Some(trace.clone()), ..StreamOptions::default() };
    // The core's clock starts inside `stream`, after the settings are built (the TLS connector: tens
    // of ms); where it started on this clock comes from the report's `elapsed` at the end.
    let t_start = Instant::now();
    let client = std::thread::spawn(move || {
        let report = smol::block_on(stream(cfg, opts));
        (report, Instant::now())
    });
    let mut injected_ms = Vec::new();
    let wait_open = |k: u64| {
        let until = Instant::now() + Duration::from_secs(10);
        while ex.connections().len() as u64 <= k || ex.open_connections() == 0 {
            anyhow::ensure!(Instant::now() < until, "connection {k} did not open within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    wait_open(0)?;
    for k in 0..resets as u64 {
        std::thread::sleep(Duration::from_millis(1_300)); // > stable_after_ms, events flowing
        // The next connection sends one frame as soon as it is upgraded: the first event does not
        // wait for the next market tick.
        ex.fault_next(vec![Fault::Blast { frames: 1 }]);
        injected_ms.push(t_start.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(ex.inject(Fault::Reset { after: 0 }) == 1, "reset {k} reached no connection");
        wait_open(k + 1)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = stop_tx.try_send(());
    let (report, t_end) = client.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    let report = report?;
    // `elapsed` is set just before `stream` returns: the core's 0 is at most a return later here, so
    // injection times on the core's clock come out early by that much, if anything (never flattering).
    let core_zero_ms = (t_end - t_start).as_secs_f64() * 1e3 - report.elapsed.as_secs_f64() * 1e3;
    let injected_ms: Vec<f64> = injected_ms.iter().map(|t| t - core_zero_ms).collect();
    println!("core clock zero: {core_zero_ms:.1} ms after the bench's (settings, TLS connector build included)");
    ex.shutdown();

    // From the trace (the core's clock, ms): the Failed input of each reset, and the first Text input
    // on the transport opened after it.
    let text = std::fs::read_to_string(&trace)?;
    let records = keel_core::trace::parse(&text).map_err(|e| anyhow::anyhow!("trace: {e}"))?;
    let mut failed_at: Vec<(TransportId, u64)> = Vec::new();
    let mut first_text: BTreeMap<TransportId, u64> = Default::default();
    let (mut opened_out, mut opened_in): (BTreeMap<TransportId, u64>, BTreeMap<TransportId, u64>) = Default::default();
    let mut last_now = 0;
    for (_, r) in records {
        match r {
            TraceRecord::Input { now, input } => {
                last_now = now.as_millis();
                match input {
                    Input::Failed { id, .. } => failed_at.push((id, last_now)),
                    Input::Opened { id } => {
                        opened_in.insert(id, last_now);
                    }
                    Input::Text { id, .. } => {
                        first_text.entry(id).or_insert(last_now);
                    }
                    _ => {}
                }
            }
            TraceRecord::Timeout { now } => last_now = now.as_millis(),
            // Outputs carry no time: they are polled right after the input or timeout before them.
            TraceRecord::Output { output: Output::Open { id, .. } } => {
                opened_out.insert(id, last_now);
            }
            _ => {}
        }
    }
    anyhow::ensure!(report.disconnects.len() == resets, "{} disconnects for {resets} resets", report.disconnects.len());
    println!(
        "| reset | chosen delay ms | inject -> failure seen | failure -> Open (core timer) | Open -> Opened (TCP+TLS+upgrade) | Opened -> first event | inject -> first event ms | overhead ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut measured, mut overheads, mut chosen) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (((_, t_fail), d), t_inject)) in failed_at.iter().zip(&report.disconnects).zip(&injected_ms).enumerate() {
        let Some((new_id, t_first)) = first_text.iter().find(|(id, t)| **t >= *t_fail && id.0 > d.id.0) else {
            anyhow::bail!("no event after reset {i}");
        };
        let t_open = opened_out.get(new_id).copied().unwrap_or(0);
        let t_opened = opened_in.get(new_id).copied().unwrap_or(0);
        let delay = d.retry_in.as_secs_f64() * 1e3;
        let m = *t_first as f64 - t_inject;
        println!(
            "| {i} | {delay:.0} | {:.0} | {} | {} | {} | {m:.0} | {:.0} |",
            *t_fail as f64 - t_inject,
            t_open - t_fail,
            t_opened - t_open,
            t_first - t_opened,
            m - delay
        );
        measured.push(m);
        overheads.push(m - delay);
        chosen.push(delay);
    }
    println!(
        "median over {resets} resets: chosen delay {:.0} ms, inject -> first event {:.0} ms, overhead {:.0} ms (min {:.0}, max {:.0})",
        median(chosen),
        median(measured),
        median(overheads.clone()),
        overheads.iter().copied().fold(f64::INFINITY, f64::min),
        overheads.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    // Building the native_tls connector loads the system trust store: keel pays it once per run
    // (`TransportSettings::from_config`, keel::tls); async-native-tls 0.6 paid it on every connect.
    let mut build_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let _ = native_tls::TlsConnector::builder().build()?;
        build_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "native_tls::TlsConnector build (once per run in keel; on every connect with async-native-tls 0.6): median {:.1} ms",
        median(build_ms)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // cargo bench passes `--bench`; keep only our positional words.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    match args.first().map(String::as_str) {
        Some("reconnect") => reconnect(&args[1..]),
        Some(_) if args.len() >= 5 => throughput(&args),
        _ => anyhow::bail!(
            "usage: stream <keel-rec|keel|bare|discard> <aggTrade|depth> <frames> <url> <ca.pem> [exchange pid] | stream reconnect [resets]"
        ),
    }
}
