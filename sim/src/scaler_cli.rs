//! `keel-sim scaler`: replays a sequence of overflow flags through the real `LossScaler` and prints
//! the trajectory, one line per step: `step found_inf stepped scale` (0/1 flags; the scale after
//! the update printed with `{:?}` of f64, which round-trips exactly). Steps count from 0, the
//! position of the flag in `--flags`.
//!
//! With `--growth 2 --backoff 0.5 --hysteresis 1` and bounds that are never reached, the output
//! equals what `torch.amp.GradScaler` does with the same flags. `--monitor` also runs the
//! `ScaleMonitor` (resets after consecutive overflows, the minimum-scale error) and prints its
//! events to stderr, prefixed with `#`, so that stdout stays a clean table.

use clap::Args;
use keel_core::config::{Config, ScaleChoice, ScalerConfig};
use keel_core::monitor::ScalerDriver;
use keel_core::scaler::{LossScaler, StepDecision};
use std::io::Write;
use std::process::ExitCode;

/// Flags of `keel-sim scaler`.
#[derive(Debug, Clone, Args)]
pub struct ScalerArgs {
    /// Overflow flags, one character per step: 1 = the step's gradients held inf/NaN, 0 = clean.
    #[arg(long)]
    pub flags: String,
    /// Initial scale (default: sized from --params, 65536 for a small model).
    #[arg(long)]
    pub init: Option<f64>,
    /// Parameter count used to size the initial and reset scales when --init is not given.
    #[arg(long, default_value_t = 0)]
    pub params: u64,
    /// Growth factor (keel's default 1.2; PyTorch's 2).
    #[arg(long)]
    pub growth: Option<f64>,
    /// Backoff factor.
    #[arg(long)]
    pub backoff: Option<f64>,
    /// Clean steps between growths.
    #[arg(long)]
    pub interval: Option<u32>,
    /// Minimum scale.
    #[arg(long)]
    pub min: Option<f64>,
    /// Maximum scale.
    #[arg(long)]
    pub max: Option<f64>,
    /// Back off only after this many overflows (1 = every overflow).
    #[arg(long)]
    pub hysteresis: Option<u32>,
    /// Also run the scale monitor and apply its resets (changes the trajectory); its events go to
    /// stderr.
    #[arg(long)]
    pub monitor: bool,
}

/// One row of the output table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Step number, from 0.
    pub step: u64,
    /// The step's flag.
    pub found_inf: bool,
    /// Whether the optimizer stepped.
    pub stepped: bool,
    /// Scale after the update.
    pub scale: f64,
}

/// `step found_inf stepped scale`, with the scale as `{:?}` so that it round-trips.
pub fn format_row(r: &Row) -> String {
    format!("{} {} {} {:?}", r.step, u8::from(r.found_inf), u8::from(r.stepped), r.scale)
}

/// Parses `--flags`: only `0` and `1`.
pub fn parse_flags(s: &str) -> anyhow::Result<Vec<bool>> {
    s.chars()
        .enumerate()
        .map(|(i, c)| match c {
            '0' => Ok(false),
            '1' => Ok(true),
            _ => {
                anyhow::bail!("--flags: character {c:?} at position {i} is not 0 or 1 (write e.g. --flags 0001000110)")
            }
        })
        .collect()
}

/// The scaler section the flags describe, validated (errors name the config key and the flag).
pub fn config_from(args: &ScalerArgs) -> anyhow::Result<ScalerConfig> {
    let d = ScalerConfig::default();
    let cfg = ScalerConfig {
        init_scale: args.init.map_or(ScaleChoice::Auto, ScaleChoice::Fixed),
        growth_factor: args.growth.unwrap_or(d.growth_factor),
        backoff_factor: args.backoff.unwrap_or(d.backoff_factor),
        growth_interval: args.interval.unwrap_or(d.growth_interval),
        min_scale: args.min.unwrap_or(d.min_scale),
        max_scale: args.max.unwrap_or(d.max_scale),
        hysteresis: args.hysteresis.unwrap_or(d.hysteresis),
        ..d
    };
    let passed = [
        ("scaler.init_scale", "--init", args.init.is_some()),
        ("scaler.growth_factor", "--growth", args.growth.is_some()),
        ("scaler.backoff_factor", "--backoff", args.backoff.is_some()),
        ("scaler.growth_interval", "--interval", args.interval.is_some()),
        ("scaler.min_scale", "--min", args.min.is_some()),
        ("scaler.max_scale", "--max", args.max.is_some()),
        ("scaler.hysteresis", "--hysteresis", args.hysteresis.is_some()),
    ];
    Config { scaler: cfg.clone(), ..Config::default() }
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid scaler: {}", e.naming_flags(&passed)))?;
    Ok(cfg)
}

/// The trajectory of `flags` through the scaler alone.
pub fn trajectory(cfg: &ScalerConfig, params: u64, flags: &[bool]) -> Vec<Row> {
    let mut s = LossScaler::new(cfg, params);
    flags
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            let stepped = s.update(f) == StepDecision::Apply;
            Row { step: i as u64, found_inf: f, stepped, scale: s.scale() }
        })
        .collect()
}

/// Runs the subcommand.
pub fn main(args: ScalerArgs) -> anyhow::Result<ExitCode> {
    let flags = parse_flags(&args.flags)?;
    let cfg = config_from(&args)?;
    let mut out = std::io::stdout().lock();
    if !args.monitor {
        for r in trajectory(&cfg, args.params, &flags) {
            writeln!(out, "{}", format_row(&r))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut d = ScalerDriver::new(&cfg, args.params);
    let mut code = ExitCode::SUCCESS;
    for (i, &f) in flags.iter().enumerate() {
        let o = d.step(i as u64, f, None);
        let row = Row { step: i as u64, found_inf: f, stepped: o.decision == StepDecision::Apply, scale: o.scale };
        writeln!(out, "{}", format_row(&row))?;
        for e in &o.events {
            eprintln!("# {e}");
            if e.is_fatal() {
                code = ExitCode::from(1);
            }
        }
        if let Some(r) = o.reset {
            eprintln!("# reset applied: {:?} -> {:?}", r.before, r.after);
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_format_round_trips() {
        let r = Row { step: 7, found_inf: true, stepped: false, scale: 65_536.0 };
        assert_eq!(format_row(&r), "7 1 0 65536.0");
        let odd = Row { step: 0, found_inf: false, stepped: true, scale: 1.2f64.powi(7) * 3.0 };
        let printed = format_row(&odd);
        let back: f64 = printed.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(back, odd.scale);
        assert_eq!(format_row(&Row { scale: 1e-7, ..odd }), "0 0 1 1e-7");
    }

    #[test]
    fn bad_flags_name_the_position() {
        assert_eq!(parse_flags("0110").unwrap(), [false, true, true, false]);
        let e = parse_flags("01x0").unwrap_err().to_string();
        assert!(e.contains("'x' at position 2"), "{e}");
    }
}
