//! `keel demo`: the embedded exchange, the stream client with faults, and training, offline.

use clap::Args;
use std::process::ExitCode;

/// Flags of `keel demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {}

/// Runs `keel demo`.
pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keel demo is not built yet")
}
