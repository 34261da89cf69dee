//! (placeholder: filled by the simulator / scaler work)

use clap::Args;
use std::process::ExitCode;

/// Flags.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {}

/// Runs the subcommand.
pub fn main(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
