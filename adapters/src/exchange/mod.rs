//! `keel exchange`: the embedded Binance-like TLS WebSocket server with fault injection.
//! (Owned by the stream-adapter work; this placeholder only keeps the binary building.)

use clap::Args;
use std::process::ExitCode;

/// Flags of `keel exchange`.
#[derive(Debug, Clone, Args)]
pub struct ExchangeArgs {}

/// Runs `keel exchange`.
pub fn run(_args: ExchangeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keel exchange is not built yet")
}
