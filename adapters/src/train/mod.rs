//! `keel train` and `keel predict`: the candle Informer with mixed precision and the loss scaler.

pub mod amp;
pub mod data;
pub mod model;
pub mod optim;

use clap::Args;
use std::process::ExitCode;

/// Flags of `keel train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {}

/// Flags of `keel predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {}

/// Runs `keel train`.
pub fn run(_args: TrainArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keel train is not built yet")
}

/// Runs `keel predict`.
pub fn predict(_args: PredictArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keel predict is not built yet")
}
