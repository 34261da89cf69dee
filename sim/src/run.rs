//! `keel-sim run`: seeded fault simulations of the real core machines.
//!
//! A seed is the whole test case (TigerBeetle's VOPR): it draws the fault profile, the model
//! exchange, the virtual clock's start and the machines' own seeds. The first line printed for a
//! seed is its seed and profile; a failure prints the broken invariant, the last events before it and
//! the one command that reproduces it. `KEEL_SIM_SEED=N` works like `--seed N` (madsim's habit).

use crate::profile::FaultProfile;
use crate::scaler_sim::{self, ScalerCase};
use clap::Args;
use std::process::ExitCode;
use std::time::Instant;

/// Flags of `keel-sim run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Run this one seed (default: the KEEL_SIM_SEED environment variable).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run the seeds A..B (B excluded), e.g. 0..500.
    #[arg(long, value_parser = parse_range, value_name = "A..B")]
    pub seeds: Option<(u64, u64)>,
    /// Simulated hours per seed.
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Run every seed twice and compare a hash of all outputs.
    #[arg(long)]
    pub check_determinism: bool,
    /// Steps of the loss-scaler run per seed.
    #[arg(long, default_value_t = DEFAULT_SCALER_STEPS)]
    pub scaler_steps: u64,
    /// Print only failures and the final summary.
    #[arg(long)]
    pub quiet: bool,
    /// Write the connection machine's trace to this file (with --seed only; replay it with
    /// `keel-sim replay FILE`). Only the first machine is recorded if it gave up and was restarted.
    #[arg(long, value_name = "FILE", conflicts_with = "seeds")]
    pub trace: Option<std::path::PathBuf>,
    /// Seeds run in parallel (default: the number of CPUs). Output order and results do not
    /// depend on it.
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// The longest run of one seed. Far below where the millisecond clock (a u64 from an epoch start)
/// overflows: past that a run ended after one step and reported hours it never simulated.
pub const MAX_HOURS: f64 = 1_000_000.0;

/// Scaler steps per seed unless told otherwise.
pub const DEFAULT_SCALER_STEPS: u64 = 10_000;

/// Parses `A..B` (B excluded) into `(A, B)`.
pub fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text.split_once("..").ok_or_else(|| match text.trim().parse::<u64>() {
        Ok(n) => format!("seed range {text:?} must look like A..B (B excluded); for seed {n} alone use --seed {n}"),
        Err(_) => format!("seed range {text:?} must look like A..B, e.g. 0..500"),
    })?;
    let a: u64 = a.trim().parse().map_err(|_| format!("seed range {text:?}: {a:?} is not a number"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("seed range {text:?}: {b:?} is not a number"))?;
    if b <= a {
        return Err(format!("seed range {text:?} is empty: B must be greater than A"));
    }
    Ok((a, b))
}

/// What one seed runs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimOptions {
    /// Simulated hours of the connection run.
    pub hours: f64,
    /// Steps of the scaler run.
    pub scaler_steps: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { hours: 24.0, scaler_steps: DEFAULT_SCALER_STEPS }
    }
}

impl SimOptions {
    /// The command that reproduces `seed` with these options.
    pub fn reproduce(&self, seed: u64) -> String {
        let mut cmd = format!("keel-sim run --seed {seed}");
        if self.hours != 24.0 {
            cmd.push_str(&format!(" --hours {}", self.hours));
        }
        if self.scaler_steps != DEFAULT_SCALER_STEPS {
            cmd.push_str(&format!(" --scaler-steps {}", self.scaler_steps));
        }
        cmd
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Which machine: `connection` or `scaler`.
    pub machine: &'static str,
    /// The invariant and what was seen.
    pub invariant: String,
    /// When (simulated time or step).
    pub at: String,
    /// The last events before it, oldest first.
    pub recent: Vec<String>,
}

/// How a seed went.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// First line: seed and drawn profile.
    pub profile: String,
    /// Second line: the scaler case.
    pub scaler_case: String,
    /// One-line summary when every invariant held.
    pub result: Result<String, Failure>,
    /// Hash of every output of every machine (the determinism check compares these).
    pub hash: u64,
    /// Simulated milliseconds of the connection run.
    pub simulated_ms: u64,
}

/// Runs every machine of one seed.
pub fn simulate(seed: u64, opts: &SimOptions) -> SeedReport {
    let profile = FaultProfile::draw(seed);
    let case = ScalerCase::draw(seed, opts.scaler_steps);
    let mut report = SeedReport {
        seed,
        profile: profile.to_string(),
        scaler_case: case.to_string(),
        result: Ok(String::new()),
        hash: 0,
        simulated_ms: 0,
    };
    let scaler = match scaler_sim::run(&case) {
        Ok(s) => s,
        Err(f) => {
            report.result = Err(Failure {
                machine: "scaler",
                invariant: f.invariant,
                at: format!("step {}", f.step),
                recent: f.recent,
            });
            return report;
        }
    };
    let conn = match crate::conn_sim::run(&profile, opts.hours) {
        Ok(c) => c,
        Err(f) => {
            report.result =
                Err(Failure { machine: "connection", invariant: f.invariant, at: f.at.to_string(), recent: f.recent });
            return report;
        }
    };
    report.simulated_ms = conn.simulated_ms;
    report.hash = scaler.hash ^ conn.hash.rotate_left(1);
    let stop = match scaler.stopped_at_min_scale {
        Some(step) => format!(", stopped at step {step}: overflow at the minimum scale"),
        None => String::new(),
    };
    report.result = Ok(format!(
        "connection {:.1} h, {} steps, {} attempts, {} connects, {} market events, {} gaps, {} heartbeat timeouts, \
         {} stalls, {} rollovers, {} gave up ({} streams resumed, {} resumes discarded), {} id restarts seen; faults: {}; recovery {} backfilled, {} ids abandoned (@trade: {} backfilled, {} abandoned), {} book syncs, {} resyncs, rest: {}; \
         scaler {} steps, {} overflows, {} resets, {} warnings{stop}",
        conn.simulated_ms as f64 / 3_600_000.0,
        conn.steps,
        conn.attempts,
        conn.connects,
        conn.market_events,
        conn.gaps,
        conn.heartbeat_timeouts,
        conn.stalls,
        conn.rollovers,
        conn.gave_up,
        conn.resumes,
        conn.resumes_discarded,
        conn.id_restarts,
        if conn.faults.is_empty() { "none" } else { &conn.faults },
        conn.backfilled,
        conn.abandoned_ids,
        conn.trade_backfilled,
        conn.trade_abandoned,
        conn.book_syncs,
        conn.book_resyncs,
        if conn.rest.is_empty() { "none" } else { &conn.rest },
        scaler.steps,
        scaler.overflows,
        scaler.resets,
        scaler.warnings
    ));
    report
}

/// Runs `seed`, twice when checking determinism, and says whether it kept every invariant.
pub fn check_seed(seed: u64, opts: &SimOptions, check_determinism: bool) -> (SeedReport, Result<String, Failure>) {
    let report = simulate(seed, opts);
    let mut result = report.result.clone();
    if check_determinism && result.is_ok() {
        let again = simulate(seed, opts);
        if again.hash != report.hash || again.result != report.result {
            result = Err(Failure {
                machine: "all",
                invariant: format!(
                    "nondeterminism: the same seed gave output hash {:#018x}, then {:#018x}",
                    report.hash, again.hash
                ),
                at: "end of run".into(),
                recent: vec![format!("first: {:?}", report.result), format!("second: {:?}", again.result)],
            });
        }
    }
    (report, result)
}

/// A failure report: the invariant, the profile, the last events, and the reproducing command.
pub fn format_failure(report: &SeedReport, failure: &Failure, opts: &SimOptions) -> String {
    let mut text = format!(
        "FAILED seed={}: {} invariant broken at {}: {}\n  profile: {}\n  {}\n  last events before the failure:\n",
        report.seed, failure.machine, failure.at, failure.invariant, report.profile, report.scaler_case
    );
    for line in &failure.recent {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&format!("  reproduce with: {}", opts.reproduce(report.seed)));
    text
}

/// Prints [`format_failure`].
pub fn print_failure(report: &SeedReport, failure: &Failure, opts: &SimOptions) {
    println!("{}", format_failure(report, failure, opts));
}

/// Runs the subcommand.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (first, end) = match (args.seed, args.seeds) {
        (Some(s), _) => (s, s.saturating_add(1)),
        (None, Some(r)) => r,
        (None, None) => match std::env::var("KEEL_SIM_SEED") {
            Ok(v) => {
                let s: u64 = v.trim().parse().map_err(|_| anyhow::anyhow!("KEEL_SIM_SEED={v:?} is not a number"))?;
                (s, s.saturating_add(1))
            }
            Err(_) => anyhow::bail!("say which seeds to run: --seed N, --seeds A..B, or KEEL_SIM_SEED=N"),
        },
    };
    if !(args.hours.is_finite() && args.hours > 0.0) {
        anyhow::bail!("--hours {} is invalid: give a positive number of simulated hours", args.hours);
    }
    if args.hours > MAX_HOURS {
        anyhow::bail!(
            "--hours {} is more than the simulator runs per seed (at most {MAX_HOURS}, ~114 years; a seed \
             simulates ~1 000 h per CPU second): for more simulated time, run more seeds",
            args.hours
        );
    }
    let opts = SimOptions { hours: args.hours, scaler_steps: args.scaler_steps };
    if let Some(path) = &args.trace {
        let profile = FaultProfile::draw(first);
        let (result, records) = crate::conn_sim::run_traced(&profile, opts.hours);
        crate::replay::write_trace(path, &records)?;
        println!("{profile}");
        println!("wrote {} trace records to {}", records.len(), path.display());
        if let Err(f) = result {
            println!("the run broke an invariant at {}: {} (the trace still replays)", f.at, f.invariant);
        }
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut simulated_ms = 0u64;
    // Seeds run on `jobs` threads; reports print in seed order, so the output does not depend on
    // scheduling.
    let next = std::sync::atomic::AtomicU64::new(first);
    let (tx, rx) = std::sync::mpsc::channel::<(SeedReport, Result<String, Failure>)>();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min((end - first) as usize) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let checked = check_seed(seed, &opts, args.check_determinism);
                    if tx.send(checked).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = std::collections::BTreeMap::new();
        let mut expected = first;
        for (report, result) in rx {
            pending.insert(report.seed, (report, result));
            while let Some((report, result)) = pending.remove(&expected) {
                expected += 1;
                simulated_ms += report.simulated_ms;
                if !args.quiet {
                    println!("{}", report.profile);
                }
                match &result {
                    Ok(summary) => {
                        if !args.quiet {
                            println!("seed={} ok: {summary} (hash {:#018x})", report.seed, report.hash);
                        }
                    }
                    Err(f) => {
                        print_failure(&report, f, &opts);
                        failed.push(report.seed);
                    }
                }
            }
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let hours = simulated_ms as f64 / 3_600_000.0;
    let n = end - first;
    println!(
        "{n} seed(s), {} passed, {} failed{}; {hours:.1} simulated hours in {wall:.2} s wall ({:.0} simulated h/s)",
        n - failed.len() as u64,
        failed.len(),
        if args.check_determinism { ", each run twice" } else { "" },
        if wall > 0.0 { hours / wall } else { 0.0 }
    );
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("failing seeds: {failed:?}");
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_invariant_the_events_and_the_command() {
        let opts = SimOptions { hours: 3.0, ..SimOptions::default() };
        let mut report = simulate(2, &opts);
        let failure = Failure {
            machine: "connection",
            invariant: "2 transports open".into(),
            at: "t=+5.000s".into(),
            recent: vec!["t=+4.000s out Open".into(), "t=+5.000s out Open".into()],
        };
        report.result = Err(failure.clone());
        let text = format_failure(&report, &failure, &opts);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "FAILED seed=2: connection invariant broken at t=+5.000s: 2 transports open");
        assert!(lines[1].starts_with("  profile: seed=2 latency="));
        assert_eq!(lines[4..6], ["    t=+4.000s out Open", "    t=+5.000s out Open"]);
        assert_eq!(lines[6], "  reproduce with: keel-sim run --seed 2 --hours 3");
    }

    #[test]
    fn seed_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(parse_range("0..500"), Ok((0, 500)));
        assert!(parse_range("5").unwrap_err().contains("A..B (B excluded); for seed 5 alone use --seed 5"));
        assert!(parse_range("x").unwrap_err().contains("A..B, e.g. 0..500"));
        assert!(parse_range("x..5").unwrap_err().contains("not a number"));
        assert!(parse_range("5..5").unwrap_err().contains("empty"));
    }

    #[test]
    fn the_reproducing_command_names_every_non_default_flag() {
        assert_eq!(SimOptions::default().reproduce(7), "keel-sim run --seed 7");
        let o = SimOptions { hours: 2.5, scaler_steps: 100 };
        assert_eq!(o.reproduce(7), "keel-sim run --seed 7 --hours 2.5 --scaler-steps 100");
    }
}
