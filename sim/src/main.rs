//! The `keel-sim` binary.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keel-sim", version, about = "Deterministic fault simulation of keel's core machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run seeded fault simulations.
    Run(keel_sim::run::RunArgs),
    /// Replay a trace recorded by `keel stream --trace`.
    Replay(keel_sim::replay::ReplayArgs),
    /// Print the scaler's trajectory over a sequence of overflow flags.
    Scaler(keel_sim::scaler_cli::ScalerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => keel_sim::run::main(a),
        Command::Replay(a) => keel_sim::replay::main(a),
        Command::Scaler(a) => keel_sim::scaler_cli::main(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel-sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
