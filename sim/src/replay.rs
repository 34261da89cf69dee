//! `keel-sim replay TRACE`: feeds a recorded trace through a fresh `Connection` and checks that it
//! reproduces every recorded output.
//!
//! The trace comes from `keel stream --trace FILE` (the adapter) or `keel-sim run --seed N --trace
//! FILE` (the simulator); both write `keel_core::trace::TraceRecord` lines, and the comparison is
//! `keel_core::trace::replay`, the same code the adapter's tests use, so the simulator adds no
//! second notion of what "the same" means.

use clap::Args;
use keel_core::trace::{self, TraceRecord};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `keel-sim replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// A trace file written by `keel stream --trace` or `keel-sim run --trace`.
    pub trace: PathBuf,
}

/// Writes `records` as a trace file, one RON record per line.
pub fn write_trace(path: &Path, records: &[TraceRecord]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(records.len() * 80);
    for r in records {
        text.push_str(&r.to_line());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write the trace to {}: {e}", path.display()))
}

/// Runs the subcommand: exit 0 when the replay reproduces the trace, 1 when it does not.
pub fn main(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.trace).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the trace {}: {e} (record one with `keel stream --trace FILE`)",
            args.trace.display()
        )
    })?;
    match trace::replay_text(&text) {
        Ok(summary) => {
            let s = &summary.stats;
            println!(
                "{}: reproduced: {} inputs, {} timeouts, {} outputs identical; {} connects of {} attempts, {} market \
                 events, {} gaps",
                args.trace.display(),
                summary.inputs,
                summary.timeouts,
                summary.outputs,
                s.connects,
                s.connect_attempts,
                s.market_events,
                s.gaps
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}: NOT reproduced: {e}", args.trace.display());
            Ok(ExitCode::from(1))
        }
    }
}
