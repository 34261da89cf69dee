//! CI's seed runs: 500 seeds of 24 simulated hours each, and the regression list of seeds that once
//! failed. Each test prints the failing seed's report and the command that reproduces it.

use keel_sim::run::{SimOptions, check_seed, print_failure};
use std::time::Instant;

/// Seeds that once broke an invariant (the comment says what broke); they run in CI forever.
const REGRESSIONS: &[(u64, &str)] = &[
    (185, "live at the heal, no event before the liveness deadline: the checker must ask is_live() there"),
    (191, "same as 185, with a 60 s ping interval"),
    (198, "serverShutdown right after the server accepted: Connected arrives for a transport the server dropped"),
    (424, "close 1001 between the server's accept and the client's Opened"),
    (59, "a 1008 close just before the heal: its 60 s rate-limit wait delays liveness legitimately"),
    (19220, "an aggTrade lost before a serverShutdown rollover is revealed by the new transport: the fault's gap"),
    (
        32087,
        "a refuted restart candidate, then the id after it lost in an outage: the candidate is the new numbering's",
    ),
    (41999, "a rollover on a half-open transport of a restarted machine: the half-open check needs the model's id"),
    (79851, "a trade held by a reorder fault dies with the old transport at a serverShutdown: the fault's gap"),
    (118987, "the 10th failure in a row was a 418 ban: the machine gave up and its restart connected into the ban"),
    (239313, "a depth diff held by a reorder fault dies with the old transport at a serverShutdown: the fault's gap"),
    (300270, "8 weight a minute and a few trades lost at each of ~1100 reconnects: one request per gap never settled"),
    (416815, "a one-frame numbering reordered behind the next numbering's first frame: it went first, not as a gap"),
    (432418, "ids produced during a 1008 wait, revealed by a rollover's new transport: the earlier outage's gap"),
    (451557, "a reorder-held trade released on the old transport behind the id that handed over: the fault's gap"),
    (607188, "a restart just before the first frames, reordered: the new numbering's first id went out before it"),
    (636102, "restart candidates held when an outage cut the connection, the next one's first frame far above them"),
    (647703, "a 1008 close sent just before the heal arrives after it: its 60 s wait delays liveness legitimately"),
];

/// Runs `seeds` on every CPU; returns the failing seeds and the simulated hours.
fn run_seeds(seeds: &[u64], opts: &SimOptions) -> (Vec<u64>, f64) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let (report, result) = check_seed(seed, opts, false);
                    if let Err(f) = &result {
                        print_failure(&report, f, opts);
                    }
                    results.lock().unwrap().push((seed, result.is_ok(), report.simulated_ms));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let failed = results.iter().filter(|r| !r.1).map(|r| r.0).collect();
    let hours = results.iter().map(|r| r.2 as f64 / 3_600_000.0).sum();
    (failed, hours)
}

#[test]
fn five_hundred_seeds_of_a_simulated_day() {
    let seeds: Vec<u64> = (0..500).collect();
    let started = Instant::now();
    let (failed, hours) = run_seeds(&seeds, &SimOptions::default());
    let wall = started.elapsed().as_secs_f64();
    println!("500 seeds: {hours:.0} simulated hours in {wall:.2} s wall = {:.0} simulated h/s", hours / wall);
    assert!(failed.is_empty(), "failing seeds: {failed:?} (reproduce each with keel-sim run --seed N)");
    assert!(hours >= 500.0 * 24.0 - 1.0, "only {hours} simulated hours");
}

#[test]
fn regression_seeds() {
    let seeds: Vec<u64> = REGRESSIONS.iter().map(|r| r.0).collect();
    let (failed, _) = run_seeds(&seeds, &SimOptions::default());
    assert!(failed.is_empty(), "regressed seeds: {failed:?}");
}

/// Seed 14 gives up four times; each fresh process resumes its streams from what the last one
/// delivered (as `keel stream` resumes from its recording), and one resume meets a numbering the
/// exchange restarted meanwhile. Pins that the simulator exercises both paths.
#[test]
fn a_restarted_process_resumes_its_streams_and_discards_a_renumbered_one() {
    let (_, result) = check_seed(14, &SimOptions::default(), false);
    let line = result.unwrap_or_else(|f| panic!("seed 14 failed: {f:?}"));
    assert!(line.contains("4 gave up (8 streams resumed, 1 resumes discarded)"), "{line}");
}
