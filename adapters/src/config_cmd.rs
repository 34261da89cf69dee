//! `keel config`: print the commented default, check a file, or regenerate docs/CONFIG.md.

use clap::{Args, Subcommand};
use keel_core::config::{Config, ConfigError, reference};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `keel config`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Clone, Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration as RON, every key commented.
    Default,
    /// Validate a file and print every error with field, value and allowed range.
    Check {
        /// The RON file.
        file: PathBuf,
    },
    /// Print docs/CONFIG.md (the reference of every key).
    Docs,
}

/// Reads and validates a configuration file; the error names the file and what is wrong in it.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    Config::from_ron(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// Runs `keel config`.
pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Default => {
            print!("{}", reference::commented(&Config::default()));
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Docs => {
            print!("{}", reference::markdown());
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", file.display()))?;
            match Config::from_ron(&text) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(ConfigError::Invalid(errors)) => {
                    for e in &errors.0 {
                        println!("{}: {e}", file.display());
                    }
                    println!("{}: {} invalid value(s)", file.display(), errors.0.len());
                    Ok(ExitCode::from(1))
                }
                Err(e) => {
                    println!("{}: {e}", file.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
