//! Training statistics of the loss scaler and its monitor: what `keel train` prints, writes to its
//! stats JSON and stores in checkpoint metadata.

use serde::{Deserialize, Serialize};

/// A snapshot of the whole run so far ([`crate::monitor::ScaleMonitor::stats`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TrainingStats {
    /// Steps recorded (applied + skipped).
    pub steps: u64,
    /// Steps whose gradients were finite and reached the optimizer.
    pub applied: u64,
    /// Steps skipped because their gradients held inf/NaN (always equal to `overflows`: keel skips
    /// exactly the overflowing steps, also under hysteresis).
    pub skipped: u64,
    /// Steps whose gradients held inf/NaN.
    pub overflows: u64,
    /// `overflows / steps` (0 before the first step).
    pub overflow_rate: f64,
    /// Longest run of consecutive overflows seen.
    pub longest_overflow_run: u64,
    /// Resets the monitor asked for.
    pub resets: u64,
    /// Times the scale rose above the warning threshold.
    pub warnings: u64,
    /// Epochs judged anomalous.
    pub anomalous_epochs: u64,
    /// Scale after the last recorded step (0 before the first step).
    pub current_scale: f64,
    /// Lowest scale recorded (0 before the first step).
    pub min_scale: f64,
    /// Highest scale recorded (0 before the first step).
    pub max_scale: f64,
    /// Arithmetic mean of the recorded scales (0 before the first step).
    pub mean_scale: f64,
    /// One summary per ended epoch, oldest first.
    pub epochs: Vec<EpochSummary>,
}

/// One line for the end-of-run report.
impl std::fmt::Display for TrainingStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps: {} applied, {} skipped ({:.2}% overflow, longest run {}), {} resets, {} warnings; \
             loss scale {} (min {}, max {}, mean {:.1})",
            self.steps,
            self.applied,
            self.skipped,
            100.0 * self.overflow_rate,
            self.longest_overflow_run,
            self.resets,
            self.warnings,
            self.current_scale,
            self.min_scale,
            self.max_scale,
            self.mean_scale,
        )
    }
}

/// What happened to the scale during one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EpochSummary {
    /// Epoch number as given to `end_epoch`.
    pub epoch: u32,
    /// Steps recorded in this epoch.
    pub steps: u64,
    /// Steps applied.
    pub applied: u64,
    /// Steps skipped.
    pub skipped: u64,
    /// Overflowing steps.
    pub overflows: u64,
    /// `overflows / steps` (0 for an empty epoch).
    pub overflow_rate: f64,
    /// Scale at the end of the epoch.
    pub end_scale: f64,
    /// Lowest scale in the epoch.
    pub min_scale: f64,
    /// Highest scale in the epoch.
    pub max_scale: f64,
    /// Mean scale over the epoch's steps.
    pub mean_scale: f64,
    /// Warnings raised in the epoch.
    pub warnings: u64,
    /// Resets asked for in the epoch (including one this epoch's end caused).
    pub resets: u64,
    /// Why the epoch was anomalous; empty when it was not.
    pub anomalies: Vec<EpochAnomaly>,
}

impl EpochSummary {
    /// Whether the monitor counted this epoch as anomalous.
    pub fn is_anomalous(&self) -> bool {
        !self.anomalies.is_empty()
    }
}

/// Why an epoch counts as anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum EpochAnomaly {
    /// The scale rose above the warning threshold during the epoch.
    ScaleAboveThreshold {
        /// Highest scale of the epoch.
        max_scale: f64,
        /// `warn_threshold`.
        threshold: f64,
    },
    /// More steps overflowed than `anomalous_overflow_rate` allows.
    OverflowRate {
        /// The epoch's overflow rate.
        rate: f64,
        /// `anomalous_overflow_rate`.
        limit: f64,
    },
}

/// For the log: `50% of steps overflowed, limit 5%`, `scale 2^25 above the warning threshold 2^24`.
impl std::fmt::Display for EpochAnomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpochAnomaly::ScaleAboveThreshold { max_scale, threshold } => {
                write!(f, "scale {} above the warning threshold {}", scale_text(*max_scale), scale_text(*threshold))
            }
            EpochAnomaly::OverflowRate { rate, limit } => {
                write!(f, "{} of steps overflowed, limit {}", percent(*rate), percent(*limit))
            }
        }
    }
}

/// A loss scale as people read it: powers of two (what a scaler that doubles and halves reaches)
/// as `2^k`, anything else as the number.
pub fn scale_text(x: f64) -> String {
    let k = x.log2();
    if x.is_finite() && x >= 2.0 && k.fract() == 0.0 { format!("2^{k}") } else { format!("{x}") }
}

/// A fraction as a percentage: `50%`, `6.7%`, `0.02%` (whole percents without decimals).
fn percent(x: f64) -> String {
    let p = 100.0 * x;
    if p.fract() == 0.0 || !p.is_finite() {
        format!("{p}%")
    } else if p >= 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_json_without_newer_fields_loads() {
        let s: TrainingStats = serde_json::from_str(r#"{"steps": 3, "skipped": 1}"#).unwrap();
        assert_eq!((s.steps, s.skipped, s.resets), (3, 1, 0));
        assert!(s.epochs.is_empty());
    }

    #[test]
    fn display_line() {
        let s = TrainingStats {
            steps: 200,
            applied: 197,
            skipped: 3,
            overflows: 3,
            overflow_rate: 0.015,
            longest_overflow_run: 2,
            resets: 1,
            warnings: 0,
            current_scale: 16384.0,
            min_scale: 8192.0,
            max_scale: 32768.0,
            mean_scale: 17000.25,
            ..TrainingStats::default()
        };
        assert_eq!(
            s.to_string(),
            "200 steps: 197 applied, 3 skipped (1.50% overflow, longest run 2), 1 resets, 0 warnings; loss scale 16384 \
             (min 8192, max 32768, mean 17000.2)"
        );
    }

    #[test]
    fn anomalous_iff_reasons() {
        let mut e = EpochSummary::default();
        assert!(!e.is_anomalous());
        e.anomalies.push(EpochAnomaly::OverflowRate { rate: 0.5, limit: 0.05 });
        assert!(e.is_anomalous());
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<EpochSummary>(&json).unwrap(), e);
    }

    #[test]
    fn anomalies_read_as_sentences() {
        let a = EpochAnomaly::OverflowRate { rate: 0.5, limit: 0.05 };
        assert_eq!(a.to_string(), "50% of steps overflowed, limit 5%");
        let a = EpochAnomaly::OverflowRate { rate: 1.0 / 15.0, limit: 0.05 };
        assert_eq!(a.to_string(), "6.7% of steps overflowed, limit 5%");
        let a = EpochAnomaly::ScaleAboveThreshold { max_scale: 33_554_432.0, threshold: 16_777_216.0 };
        assert_eq!(a.to_string(), "scale 2^25 above the warning threshold 2^24");
        let a = EpochAnomaly::ScaleAboveThreshold { max_scale: 131_072.0, threshold: 100_000.0 };
        assert_eq!(a.to_string(), "scale 2^17 above the warning threshold 100000");
        assert_eq!(scale_text(1.0), "1");
        assert_eq!(scale_text(0.5), "0.5");
        assert_eq!(scale_text(f64::INFINITY), "inf");
    }
}
