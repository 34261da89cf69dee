//! The `keel` binary: one command per job.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keel", version, about = "Keeps a Binance feed and an Informer training run steady")]
struct Cli {
    #[command(flatten)]
    log: keel::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream Binance market data to disk, reconnecting through faults.
    Stream(keel::stream::StreamArgs),
    /// Run the embedded exchange: a local TLS WebSocket server speaking Binance's format, with faults.
    Exchange(keel::exchange::ExchangeArgs),
    /// Train the Informer forecaster with mixed precision and the loss scaler.
    Train(keel::train::TrainArgs),
    /// Forecast with a trained checkpoint.
    Predict(keel::train::PredictArgs),
    /// Search Informer hyperparameters with TPE, the loss scaler in every trial.
    Tune(keel::tune::TuneArgs),
    /// Exchange + stream with faults + training, offline, with a report.
    Demo(keel::demo::DemoArgs),
    /// Print, check or document the configuration file.
    Config(keel::config_cmd::ConfigArgs),
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread is spawned.
    unsafe { keel::train::trainer::elementwise_on_caller() };
    let cli = Cli::parse();
    if let Err(e) = keel::logging::init(&cli.log) {
        eprintln!("keel: {e}");
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Stream(a) => keel::stream::run(a),
        Command::Exchange(a) => keel::exchange::run(a),
        Command::Train(a) => keel::train::run(a),
        Command::Predict(a) => keel::train::predict(a),
        Command::Tune(a) => keel::tune::run(a),
        Command::Demo(a) => keel::demo::run(a),
        Command::Config(a) => keel::config_cmd::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole source chain on one line: the thing that failed and why.
            eprintln!("keel: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
