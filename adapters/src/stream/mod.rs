//! `keel stream`: the smol WebSocket client driving `keel_core::connection::Connection`.
//! (Owned by the stream-adapter work; this placeholder only keeps the binary building.)

use clap::Args;
use std::process::ExitCode;

/// Flags of `keel stream`.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {}

/// Runs `keel stream`.
pub fn run(_args: StreamArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keel stream is not built yet")
}
