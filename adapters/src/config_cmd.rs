//! `keel config`: print the commented default, check a file, or regenerate docs/CONFIG.md.

use crate::stream::transport::{SettingsError, TransportSettings};
use clap::{Args, Subcommand};
use keel_core::config::{Config, reference};
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
    /// Validate a file and print every error with field, value and allowed range, then check the
    /// paths it names (the CA file must be readable and hold a certificate).
    Check {
        /// The RON file.
        file: PathBuf,
    },
    /// Print docs/CONFIG.md (the reference of every key).
    Docs,
}

/// A path the configuration names that `keel stream` would refuse on start. Validation
/// (`Config::validate`) is pure and cannot see the disk; this is the IO half of `keel config check`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FileError {
    /// The CA file (`tls.ca_file`) is missing, unreadable or holds no certificate, or the TLS client
    /// cannot be built from the `tls` settings: the same check, by the same code, as the stream's.
    #[error("{source}{relative}")]
    Tls {
        /// What the TLS setup said (names the path, the key and the flag).
        source: SettingsError,
        /// Where a relative `tls.ca_file` was looked for, or empty.
        relative: String,
    },
    /// `stream.out_dir` exists and is not a directory (`keel stream` records into a directory).
    #[error(
        "stream.out_dir = {path} is not a directory: keel stream records one directory per stream under it; point --out / stream.out_dir elsewhere"
    )]
    OutDirNotADirectory {
        /// The path as configured.
        path: String,
    },
}

/// Checks the paths `cfg` names against the disk, without creating or writing anything: the CA file
/// is read, parsed and loaded into a TLS client exactly as `keel stream` does on start, and an
/// existing `stream.out_dir` must be a directory (a missing one is fine: the stream creates it).
pub fn check_files(cfg: &Config) -> Vec<FileError> {
    let mut problems = Vec::new();
    if let Err(source) = TransportSettings::from_config(cfg) {
        let relative = match (&source, &cfg.tls.ca_file) {
            (SettingsError::CaUnreadable { .. }, Some(ca)) if Path::new(ca).is_relative() => {
                let here = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "?".into());
                format!(" (a relative path is read from the directory keel runs in, here {here})")
            }
            _ => String::new(),
        };
        problems.push(FileError::Tls { source, relative });
    }
    let out = Path::new(&cfg.stream.out_dir);
    if out.exists() && !out.is_dir() {
        problems.push(FileError::OutDirNotADirectory { path: cfg.stream.out_dir.clone() });
    }
    problems
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
            // Parsed but not validated, so that one run names every out-of-range value and every
            // unusable path: fixing the values first and only then learning the CA path is wrong
            // costs a second round trip for nothing (the path checks do not depend on the ranges).
            let cfg = match Config::parse_ron(&text) {
                Ok(cfg) => cfg,
                Err(e) => {
                    println!("{}: {e}", file.display());
                    return Ok(ExitCode::from(1));
                }
            };
            let invalid = match cfg.validate() {
                Ok(()) => Vec::new(),
                Err(errors) => errors.0,
            };
            let unusable = check_files(&cfg);
            // Legal values that keep a feed down for hours: printed, never a failure (see Caution).
            let cautions = cfg.cautions();
            for c in &cautions {
                println!("{}: caution: {c}", file.display());
            }
            if invalid.is_empty() && unusable.is_empty() {
                match cautions.len() {
                    0 => println!("{}: ok", file.display()),
                    n => println!("{}: ok, with {n} caution(s) above", file.display()),
                }
                return Ok(ExitCode::SUCCESS);
            }
            for e in &invalid {
                println!("{}: {e}", file.display());
            }
            for p in &unusable {
                println!("{}: {p}", file.display());
            }
            let mut counts = Vec::new();
            if !invalid.is_empty() {
                counts.push(format!("{} invalid value(s)", invalid.len()));
            }
            if !unusable.is_empty() {
                counts.push(format!("{} unusable path(s)", unusable.len()));
            }
            println!("{}: {}", file.display(), counts.join(", "));
            Ok(ExitCode::from(1))
        }
    }
}
