//! tracing setup shared by every subcommand.

use clap::{Args, ValueEnum};
use std::io::{IsTerminal, Write};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags common to all subcommands.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Filter in RUST_LOG syntax (e.g. `info,keel=debug`); RUST_LOG is used when absent.
    #[arg(long, global = true)]
    pub log: Option<String>,
}

/// Installs the global subscriber; logs go to stderr so stdout stays for reports.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    let filter = match &args.log {
        Some(f) => EnvFilter::try_new(f)?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colours only on a terminal: escape codes in a log file or a pipe are noise to every reader and
    // break grep for the level names.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// Stderr behind [`keel_core::redact::redact_text`]: every log line, keel's own and its libraries'
/// (tungstenite logs the handshake request line at trace level), loses the secrets a URL may carry.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingLine;
    fn make_writer(&'a self) -> RedactingLine {
        RedactingLine(Vec::new())
    }
}

/// One event's bytes, redacted and written out whole when the formatter drops it (so a URL split
/// across two writes is still seen whole).
struct RedactingLine(Vec<u8>);

impl Write for RedactingLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let text = keel_core::redact::redact_text(&String::from_utf8_lossy(&self.0));
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}
