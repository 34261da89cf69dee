//! Watching the loss scale: warnings, resets, epoch anomalies, and the point where scaling is not
//! the problem.
//!
//! [`ScaleMonitor`] sees one number tuple per step (step, scale after the update, found_inf, grad
//! norm) and returns [`MonitorEvent`]s; [`ScaleMonitor::end_epoch`] judges the epoch. It never
//! touches the scaler.
//!
//! # Who applies a reset: [`ScalerDriver`]
//!
//! The monitor only *asks* for a reset ([`MonitorEvent::Reset`]); [`ScalerDriver`], which owns both
//! the [`LossScaler`] and the monitor, is the one place that calls [`LossScaler::reset`], right
//! after the event, and tells the monitor the new scale. Why this split: the monitor stays a pure
//! observer that can be tested with hand-written scale sequences (no scaler needed), the scaler
//! stays PyTorch-exact and knows nothing about epochs, and the trainer cannot forget to apply a
//! reset or apply it twice, because it never applies one. The trainer's loop is:
//!
//! ```
//! # use keel_core::{config::ScalerConfig, monitor::{ScalerDriver, MonitorEvent}, scaler::StepDecision};
//! let mut driver = ScalerDriver::new(&ScalerConfig::default(), 11_000_000);
//! for epoch in 0..2u32 {
//!     for step in 0..100u64 {
//!         let scale = driver.scale();              // 1. multiply the loss by this, backward
//!         let found_inf = step % 50 == 49;         // 2. check the gradients for inf/NaN
//!         let out = driver.step(step, found_inf, Some(0.5));
//!         match out.decision {                     // 3. unscale + clip + step, or skip
//!             StepDecision::Apply => { /* optimizer.step() with grads / scale */ }
//!             StepDecision::Skip => {}
//!         }
//!         for e in &out.events {                   // 4. log; a fatal event ends training
//!             assert!(!e.is_fatal());
//!         }
//!     }
//!     let report = driver.end_epoch(epoch);         // 5. epoch statistics
//!     assert_eq!(report.report.stats.steps, 100);
//! }
//! ```

use crate::config::ScalerConfig;
use crate::scaler::{InvariantViolation, LossScaler, ScaleReset, StepDecision};
use crate::stats::training::{EpochAnomaly, EpochSummary, TrainingStats};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Steps of scale history kept (enough to see a few growth intervals of a small run; bounded so
/// that a week-long run does not grow the monitor or its checkpoint).
pub const HISTORY_LEN: usize = 1024;

/// One recorded step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalePoint {
    /// Step number as given by the trainer.
    pub step: u64,
    /// Scale after that step's update.
    pub scale: f64,
    /// Whether the step's gradients held inf/NaN.
    pub found_inf: bool,
}

/// Why the monitor asks for a reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResetReason {
    /// `max_consecutive_overflows` steps in a row overflowed.
    ConsecutiveOverflows {
        /// The run length that triggered it.
        count: u32,
    },
    /// `anomalous_epochs_before_reset` epochs in a row were anomalous.
    AnomalousEpochs {
        /// Those epochs, oldest first.
        epochs: Vec<u32>,
    },
}

/// Everything known when a reset was asked for, for the log and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResetDiagnosis {
    /// What triggered it.
    pub reason: ResetReason,
    /// Epoch in progress (or just ended, for [`ResetReason::AnomalousEpochs`]).
    pub epoch: u32,
    /// Last recorded step.
    pub step: u64,
    /// Scale at the last recorded step, before the reset.
    pub scale_before: f64,
    /// Consecutive overflows ending at `step` (0 if `step` was clean).
    pub overflow_run: u32,
    /// Fraction of overflowing steps in the recorded history (up to [`HISTORY_LEN`] steps).
    pub recent_overflow_rate: f64,
    /// Last gradient norm reported (norms of overflowing steps are usually inf or NaN).
    pub last_grad_norm: Option<f64>,
}

/// What the monitor noticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MonitorEvent {
    /// The scale rose above `warn_threshold` (once per crossing; the original blow-up passed
    /// 100 000 on its way to NaN).
    ScaleAboveThreshold {
        /// The step that crossed.
        step: u64,
        /// Its scale.
        scale: f64,
        /// `warn_threshold`.
        threshold: f64,
    },
    /// The scale should go down to `reset_scale` ([`ScalerDriver`] applies it).
    Reset(ResetDiagnosis),
    /// `max_consecutive_overflows` overflows in a row while the scale was already at `min_scale`.
    /// Scaling is not the cause: the inputs, the weights or the model produce inf/NaN at any
    /// scale. Skipping steps forever would hide that, so the trainer must stop with this as the
    /// error (it is [`MonitorEvent::is_fatal`]).
    OverflowAtMinScale {
        /// The step that reached the count.
        step: u64,
        /// The floor the scale sits at.
        min_scale: f64,
        /// Overflows in a row at that floor.
        overflows: u32,
        /// Last gradient norm reported.
        last_grad_norm: Option<f64>,
    },
    /// An epoch was anomalous (see [`EpochAnomaly`]).
    AnomalousEpoch {
        /// The epoch.
        epoch: u32,
        /// Why.
        anomalies: Vec<EpochAnomaly>,
        /// Anomalous epochs in a row, this one included.
        in_a_row: u32,
    },
}

impl MonitorEvent {
    /// Whether training must stop (only [`MonitorEvent::OverflowAtMinScale`]).
    pub fn is_fatal(&self) -> bool {
        matches!(self, MonitorEvent::OverflowAtMinScale { .. })
    }
}

impl std::fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MonitorEvent::ScaleAboveThreshold { step, scale, threshold } => {
                write!(f, "step {step}: loss scale {scale} is above the warning threshold {threshold}")
            }
            MonitorEvent::Reset(d) => {
                let why = match &d.reason {
                    ResetReason::ConsecutiveOverflows { count } => format!("{count} overflows in a row"),
                    ResetReason::AnomalousEpochs { epochs } => {
                        format!("anomalous epochs {}", epochs.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
                    }
                };
                write!(
                    f,
                    "epoch {} step {}: loss scale reset from {} ({why}; recent overflow rate {:.3}, last grad norm {})",
                    d.epoch,
                    d.step,
                    d.scale_before,
                    d.recent_overflow_rate,
                    norm_text(d.last_grad_norm)
                )
            }
            MonitorEvent::OverflowAtMinScale { step, min_scale, overflows, last_grad_norm } => write!(
                f,
                "step {step}: {overflows} overflows in a row at the minimum loss scale {min_scale} (last grad norm \
                 {}): loss scaling is not the cause; look for NaN/inf in the input data, the weights (a corrupt \
                 checkpoint) or the model (log/div/sqrt of zero, too high a learning rate)",
                norm_text(*last_grad_norm)
            ),
            MonitorEvent::AnomalousEpoch { epoch, anomalies, in_a_row } => {
                // The anomalies' own sentences: the log is read by people, not by `{:?}`.
                let why: Vec<String> = anomalies.iter().map(ToString::to_string).collect();
                write!(f, "epoch {epoch} anomalous ({in_a_row} in a row): {}", why.join("; "))
            }
        }
    }
}

/// A grad norm for the log: the number, or `none measured` (no step applied yet, or every step
/// since overflowed), never `Some(..)`/`None`.
fn norm_text(norm: Option<f64>) -> String {
    norm.map_or_else(|| "none measured".to_string(), |n| n.to_string())
}

/// The end of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// The epoch's statistics.
    pub stats: EpochSummary,
    /// Events of the epoch's end ([`MonitorEvent::AnomalousEpoch`], [`MonitorEvent::Reset`]).
    pub events: Vec<MonitorEvent>,
}

/// Running sums over a span of steps (the run or the current epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
struct Tally {
    steps: u64,
    overflows: u64,
    warnings: u64,
    resets: u64,
    scale_sum: f64,
    scale_min: f64,
    scale_max: f64,
}

impl Tally {
    fn add(&mut self, scale: f64, found_inf: bool) {
        if self.steps == 0 {
            self.scale_min = scale;
            self.scale_max = scale;
        } else {
            self.scale_min = self.scale_min.min(scale);
            self.scale_max = self.scale_max.max(scale);
        }
        self.steps += 1;
        self.overflows += u64::from(found_inf);
        self.scale_sum += scale;
    }

    fn rate(&self) -> f64 {
        if self.steps == 0 { 0.0 } else { self.overflows as f64 / self.steps as f64 }
    }

    fn mean(&self) -> f64 {
        if self.steps == 0 { 0.0 } else { self.scale_sum / self.steps as f64 }
    }
}

/// Observes the scale step by step and epoch by epoch. Checkpointable (serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleMonitor {
    warn_threshold: f64,
    max_consecutive_overflows: u32,
    anomalous_epochs_before_reset: u32,
    anomalous_overflow_rate: f64,
    min_scale: f64,
    /// Last [`HISTORY_LEN`] steps, oldest first.
    history: VecDeque<ScalePoint>,
    /// Overflows in a row towards the next reset (zeroed by a clean step and by a reset request).
    run_toward_reset: u32,
    /// Overflows in a row, never zeroed by a reset (for the diagnosis and the longest run).
    overflow_run: u32,
    /// Overflows in a row that started with the scale already at `min_scale`.
    min_scale_run: u32,
    /// Whether the scale is above the threshold (warnings fire on the upward crossing only).
    above_threshold: bool,
    /// The current run of anomalous epochs.
    anomalous_run: Vec<u32>,
    last_grad_norm: Option<f64>,
    last_step: u64,
    /// Scale at the last step, or as set by the last applied reset.
    current_scale: Option<f64>,
    epoch: u32,
    longest_overflow_run: u64,
    anomalous_epochs: u64,
    run: Tally,
    this_epoch: Tally,
    epochs: Vec<EpochSummary>,
}

impl ScaleMonitor {
    /// A monitor with `cfg`'s thresholds (it reads `warn_threshold`, `max_consecutive_overflows`,
    /// `anomalous_epochs_before_reset`, `anomalous_overflow_rate` and `min_scale`).
    pub fn new(cfg: &ScalerConfig) -> Self {
        ScaleMonitor {
            warn_threshold: cfg.warn_threshold,
            max_consecutive_overflows: cfg.max_consecutive_overflows.max(1),
            anomalous_epochs_before_reset: cfg.anomalous_epochs_before_reset.max(1),
            anomalous_overflow_rate: cfg.anomalous_overflow_rate,
            min_scale: cfg.min_scale,
            history: VecDeque::with_capacity(HISTORY_LEN),
            run_toward_reset: 0,
            overflow_run: 0,
            min_scale_run: 0,
            above_threshold: false,
            anomalous_run: Vec::new(),
            last_grad_norm: None,
            last_step: 0,
            current_scale: None,
            epoch: 0,
            longest_overflow_run: 0,
            anomalous_epochs: 0,
            run: Tally::default(),
            this_epoch: Tally::default(),
            epochs: Vec::new(),
        }
    }

    /// Sets the number of the epoch in progress (used in diagnoses). Optional when epochs are
    /// numbered 0, 1, 2...: [`ScaleMonitor::end_epoch`]`(n)` moves to `n + 1` by itself.
    pub fn begin_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }

    /// Records one step: `scale` is the scale *after* `LossScaler::update` for this step,
    /// `found_inf` what the gradient check said, `grad_norm` the gradient norm if computed.
    /// Returns what the step revealed, in this order: a warning, an overflow at the minimum scale,
    /// a reset request.
    #[must_use = "a Reset must be applied and an OverflowAtMinScale must stop training"]
    pub fn record_step(&mut self, step: u64, scale: f64, found_inf: bool, grad_norm: Option<f64>) -> Vec<MonitorEvent> {
        let mut events = Vec::new();
        let scale_before_update = self.current_scale;
        self.last_step = step;
        self.current_scale = Some(scale);
        if grad_norm.is_some() {
            self.last_grad_norm = grad_norm;
        }
        self.run.add(scale, found_inf);
        self.this_epoch.add(scale, found_inf);
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(ScalePoint { step, scale, found_inf });

        if scale > self.warn_threshold {
            if !self.above_threshold {
                self.above_threshold = true;
                self.run.warnings += 1;
                self.this_epoch.warnings += 1;
                events.push(MonitorEvent::ScaleAboveThreshold { step, scale, threshold: self.warn_threshold });
            }
        } else {
            self.above_threshold = false;
        }

        if !found_inf {
            self.run_toward_reset = 0;
            self.overflow_run = 0;
            self.min_scale_run = 0;
            return events;
        }
        self.run_toward_reset += 1;
        self.overflow_run += 1;
        self.longest_overflow_run = self.longest_overflow_run.max(u64::from(self.overflow_run));

        // The scale the overflowing step ran with was the one before this update.
        if scale_before_update.is_some_and(|s| s <= self.min_scale) {
            self.min_scale_run += 1;
            if self.min_scale_run == self.max_consecutive_overflows {
                events.push(MonitorEvent::OverflowAtMinScale {
                    step,
                    min_scale: self.min_scale,
                    overflows: self.min_scale_run,
                    last_grad_norm: self.last_grad_norm,
                });
            }
        } else {
            self.min_scale_run = 0;
        }

        if self.run_toward_reset >= self.max_consecutive_overflows {
            let count = self.run_toward_reset;
            self.run_toward_reset = 0;
            events.push(self.reset_request(ResetReason::ConsecutiveOverflows { count }));
        }
        events
    }

    /// Tells the monitor that the owner applied a reset (so that its current scale and the next
    /// minimum-scale check start from the new scale). [`ScalerDriver`] calls this.
    pub fn record_reset(&mut self, reset: ScaleReset) {
        self.current_scale = Some(reset.after);
        if reset.after > self.warn_threshold {
            // Still above: do not warn again for the same excursion.
            self.above_threshold = true;
        } else {
            self.above_threshold = false;
        }
    }

    /// Ends epoch `epoch`: returns its statistics and judges it. An epoch is anomalous when its
    /// scale rose above `warn_threshold` or its overflow rate exceeded `anomalous_overflow_rate`;
    /// `anomalous_epochs_before_reset` anomalous epochs in a row ask for a reset. An epoch without
    /// steps says nothing and leaves the run of anomalous epochs as it was.
    #[must_use = "a Reset must be applied"]
    pub fn end_epoch(&mut self, epoch: u32) -> EpochReport {
        let mut events = Vec::new();
        self.epoch = epoch;
        let t = &self.this_epoch;
        let mut anomalies = Vec::new();
        if t.steps > 0 {
            if t.scale_max > self.warn_threshold {
                anomalies
                    .push(EpochAnomaly::ScaleAboveThreshold { max_scale: t.scale_max, threshold: self.warn_threshold });
            }
            if t.rate() > self.anomalous_overflow_rate {
                anomalies.push(EpochAnomaly::OverflowRate { rate: t.rate(), limit: self.anomalous_overflow_rate });
            }
            if anomalies.is_empty() {
                self.anomalous_run.clear();
            } else {
                self.anomalous_epochs += 1;
                self.anomalous_run.push(epoch);
                events.push(MonitorEvent::AnomalousEpoch {
                    epoch,
                    anomalies: anomalies.clone(),
                    in_a_row: self.anomalous_run.len() as u32,
                });
                if self.anomalous_run.len() as u32 >= self.anomalous_epochs_before_reset {
                    let epochs = std::mem::take(&mut self.anomalous_run);
                    events.push(self.reset_request(ResetReason::AnomalousEpochs { epochs }));
                }
            }
        }
        let t = std::mem::take(&mut self.this_epoch);
        let end_scale = self.current_scale.unwrap_or(0.0);
        let summary = EpochSummary {
            epoch,
            steps: t.steps,
            applied: t.steps - t.overflows,
            skipped: t.overflows,
            overflows: t.overflows,
            overflow_rate: t.rate(),
            end_scale,
            min_scale: if t.steps == 0 { end_scale } else { t.scale_min },
            max_scale: if t.steps == 0 { end_scale } else { t.scale_max },
            mean_scale: if t.steps == 0 { end_scale } else { t.mean() },
            warnings: t.warnings,
            resets: t.resets,
            anomalies,
        };
        self.epochs.push(summary.clone());
        self.epoch = epoch.saturating_add(1);
        EpochReport { stats: summary, events }
    }

    fn reset_request(&mut self, reason: ResetReason) -> MonitorEvent {
        self.run.resets += 1;
        // A reset at an epoch's end belongs to the epoch just ended, which end_epoch is closing.
        self.this_epoch.resets += 1;
        let overflows = self.history.iter().filter(|p| p.found_inf).count();
        MonitorEvent::Reset(ResetDiagnosis {
            reason,
            epoch: self.epoch,
            step: self.last_step,
            scale_before: self.current_scale.unwrap_or(0.0),
            overflow_run: self.overflow_run,
            recent_overflow_rate: if self.history.is_empty() {
                0.0
            } else {
                overflows as f64 / self.history.len() as f64
            },
            last_grad_norm: self.last_grad_norm,
        })
    }

    /// A snapshot of the run so far.
    pub fn stats(&self) -> TrainingStats {
        let r = &self.run;
        TrainingStats {
            steps: r.steps,
            applied: r.steps - r.overflows,
            skipped: r.overflows,
            overflows: r.overflows,
            overflow_rate: r.rate(),
            longest_overflow_run: self.longest_overflow_run,
            resets: r.resets,
            warnings: r.warnings,
            anomalous_epochs: self.anomalous_epochs,
            current_scale: self.current_scale.unwrap_or(0.0),
            min_scale: r.scale_min,
            max_scale: r.scale_max,
            mean_scale: r.mean(),
            epochs: self.epochs.clone(),
        }
    }

    /// The recorded scale history, oldest first (at most [`HISTORY_LEN`] steps).
    pub fn history(&self) -> impl Iterator<Item = &ScalePoint> {
        self.history.iter()
    }

    /// Overflows in a row ending at the last recorded step.
    pub fn overflow_run(&self) -> u32 {
        self.overflow_run
    }
}

/// What one [`ScalerDriver::step`] decided.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "the decision says whether the optimizer may step"]
pub struct StepOutcome {
    /// Apply or skip this step's gradients.
    pub decision: StepDecision,
    /// The scale for the next step (after the update and any reset).
    pub scale: f64,
    /// What the monitor noticed.
    pub events: Vec<MonitorEvent>,
    /// The reset the driver applied, if the monitor asked for one.
    pub reset: Option<ScaleReset>,
}

/// What one [`ScalerDriver::end_epoch`] found.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct EpochOutcome {
    /// The epoch's statistics and events.
    pub report: EpochReport,
    /// The reset the driver applied, if the epoch's end asked for one.
    pub reset: Option<ScaleReset>,
}

/// The scaler and its monitor under one owner: the only place where a reset is applied (see the
/// module doc). Checkpointable (serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalerDriver {
    scaler: LossScaler,
    monitor: ScaleMonitor,
}

impl ScalerDriver {
    /// A scaler sized for `param_count` parameters and its monitor.
    pub fn new(cfg: &ScalerConfig, param_count: u64) -> Self {
        ScalerDriver { scaler: LossScaler::new(cfg, param_count), monitor: ScaleMonitor::new(cfg) }
    }

    /// Reassembles a driver (e.g. from separately stored checkpoints).
    pub fn from_parts(scaler: LossScaler, monitor: ScaleMonitor) -> Self {
        ScalerDriver { scaler, monitor }
    }

    /// The loss scale for the next step.
    pub fn scale(&self) -> f64 {
        self.scaler.scale()
    }

    /// The scaler (read-only: resets go through the driver).
    pub fn scaler(&self) -> &LossScaler {
        &self.scaler
    }

    /// The monitor.
    pub fn monitor(&self) -> &ScaleMonitor {
        &self.monitor
    }

    /// One training step's outcome: updates the scaler, records the step, applies a requested
    /// reset. Call once per step after the gradient check.
    pub fn step(&mut self, step: u64, found_inf: bool, grad_norm: Option<f64>) -> StepOutcome {
        let decision = self.scaler.update(found_inf);
        let events = self.monitor.record_step(step, self.scaler.scale(), found_inf, grad_norm);
        let reset = self.apply_resets(&events);
        StepOutcome { decision, scale: self.scaler.scale(), events, reset }
    }

    /// Ends an epoch; applies a reset if the epoch's end asked for one.
    pub fn end_epoch(&mut self, epoch: u32) -> EpochOutcome {
        let report = self.monitor.end_epoch(epoch);
        let reset = self.apply_resets(&report.events);
        EpochOutcome { report, reset }
    }

    /// A snapshot of the run so far.
    pub fn stats(&self) -> TrainingStats {
        self.monitor.stats()
    }

    /// The scaler's invariants (for the simulator, after every step).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.scaler.check_invariants()
    }

    fn apply_resets(&mut self, events: &[MonitorEvent]) -> Option<ScaleReset> {
        let mut applied = None;
        for e in events {
            if let MonitorEvent::Reset(_) = e {
                let r = self.scaler.reset();
                self.monitor.record_reset(r);
                applied = Some(r);
            }
        }
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScaleChoice;
    use quickcheck::{QuickCheck, TestResult};

    fn cfg() -> ScalerConfig {
        ScalerConfig {
            init_scale: ScaleChoice::Fixed(65_536.0),
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 4,
            reset_scale: ScaleChoice::Fixed(1024.0),
            ..ScalerConfig::default()
        }
    }

    fn is_reset(e: &MonitorEvent) -> bool {
        matches!(e, MonitorEvent::Reset(_))
    }

    #[test]
    fn events_read_as_sentences_without_rust_types() {
        let e = MonitorEvent::AnomalousEpoch {
            epoch: 0,
            anomalies: vec![
                EpochAnomaly::OverflowRate { rate: 0.5, limit: 0.05 },
                EpochAnomaly::ScaleAboveThreshold { max_scale: 33_554_432.0, threshold: 16_777_216.0 },
            ],
            in_a_row: 1,
        };
        assert_eq!(
            e.to_string(),
            "epoch 0 anomalous (1 in a row): 50% of steps overflowed, limit 5%; scale 2^25 above the warning \
             threshold 2^24"
        );
        let d = ResetDiagnosis {
            reason: ResetReason::AnomalousEpochs { epochs: vec![3, 4, 5] },
            epoch: 5,
            step: 600,
            scale_before: 131_072.0,
            overflow_run: 0,
            recent_overflow_rate: 0.25,
            last_grad_norm: None,
        };
        assert_eq!(
            MonitorEvent::Reset(d).to_string(),
            "epoch 5 step 600: loss scale reset from 131072 (anomalous epochs 3, 4, 5; recent overflow rate 0.250, \
             last grad norm none measured)"
        );
        let e = MonitorEvent::OverflowAtMinScale { step: 9, min_scale: 1.0, overflows: 5, last_grad_norm: Some(0.5) };
        assert!(e.to_string().contains("(last grad norm 0.5)"), "{e}");
    }

    #[test]
    fn warning_fires_once_per_crossing() {
        let mut m = ScaleMonitor::new(&cfg());
        let table: [(f64, usize); 7] =
            [(65_536.0, 0), (131_072.0, 1), (262_144.0, 0), (100_000.0, 0), (131_072.0, 1), (50.0, 0), (1e6, 1)];
        for (i, (scale, want)) in table.into_iter().enumerate() {
            let ev = m.record_step(i as u64, scale, false, None);
            assert_eq!(ev.len(), want, "step {i}: {ev:?}");
            if want == 1 {
                assert_eq!(ev[0], MonitorEvent::ScaleAboveThreshold { step: i as u64, scale, threshold: 100_000.0 });
            }
        }
        assert_eq!(m.stats().warnings, 3);
    }

    #[test]
    fn five_overflows_in_a_row_ask_for_one_reset_with_diagnosis() {
        let mut m = ScaleMonitor::new(&cfg());
        let mut scale = 65_536.0;
        let mut resets = Vec::new();
        // A clean step with a norm, then an interrupted run of 4, then 6 in a row.
        let _ = m.record_step(0, scale, false, Some(3.5));
        for (i, f) in [true, true, true, true, false, true, true, true, true, true, true].into_iter().enumerate() {
            if f {
                scale /= 2.0;
            }
            let step = i as u64 + 1;
            for e in m.record_step(step, scale, f, if f { Some(f64::INFINITY) } else { Some(1.0) }) {
                if let MonitorEvent::Reset(d) = e {
                    resets.push(d);
                }
            }
        }
        assert_eq!(resets.len(), 1, "{resets:?}");
        let d = &resets[0];
        assert_eq!(d.reason, ResetReason::ConsecutiveOverflows { count: 5 });
        assert_eq!((d.step, d.epoch, d.overflow_run), (10, 0, 5));
        assert_eq!(d.scale_before, 65_536.0 / 512.0);
        assert_eq!(d.last_grad_norm, Some(f64::INFINITY));
        assert_eq!(d.recent_overflow_rate, 9.0 / 11.0);
        assert_eq!(m.overflow_run(), 6);
        assert_eq!(m.stats().longest_overflow_run, 6);
    }

    #[test]
    fn overflow_at_min_scale_is_fatal_and_named() {
        let mut c = cfg();
        c.min_scale = 4.0;
        let mut m = ScaleMonitor::new(&c);
        // 8 -> 4 (lands at the floor), then 5 overflows that ran at the floor.
        let scales = [8.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0];
        let mut fatal_at = Vec::new();
        for (i, s) in scales.into_iter().enumerate() {
            let f = i > 0;
            for e in m.record_step(i as u64, s, f, Some(f64::NAN)) {
                if e.is_fatal() {
                    assert!(e.to_string().contains("loss scaling is not the cause"), "{e}");
                    fatal_at.push(i);
                }
            }
        }
        assert_eq!(fatal_at, [6]);
    }

    #[test]
    fn three_anomalous_epochs_ask_for_a_reset() {
        let mut m = ScaleMonitor::new(&cfg());
        // Epoch kinds: a = overflow rate 1/10 (> 5%), h = scale above threshold, n = normal,
        // e = empty (neutral).
        let plan = "aanahhea";
        let mut resets = Vec::new();
        let mut step = 0;
        for (epoch, kind) in plan.chars().enumerate() {
            for i in 0..10 {
                let (scale, f) = match kind {
                    'a' => (1024.0, i == 3),
                    'h' => (if i == 5 { 200_000.0 } else { 1024.0 }, false),
                    'n' => (1024.0, false),
                    _ => break,
                };
                let _ = m.record_step(step, scale, f, None);
                step += 1;
            }
            let r = m.end_epoch(epoch as u32);
            assert_eq!(r.stats.is_anomalous(), kind == 'a' || kind == 'h', "epoch {epoch}");
            for e in r.events {
                if let MonitorEvent::Reset(d) = e {
                    resets.push(d.reason);
                }
            }
        }
        assert_eq!(resets, [ResetReason::AnomalousEpochs { epochs: vec![3, 4, 5] }]);
        let s = m.stats();
        assert_eq!((s.resets, s.anomalous_epochs, s.epochs.len()), (1, 6, 8));
        assert_eq!(s.epochs[0].overflow_rate, 0.1);
        assert_eq!(s.epochs[5].resets, 1);
        assert_eq!(s.epochs[6].steps, 0);
    }

    #[test]
    fn stats_add_up() {
        let mut m = ScaleMonitor::new(&cfg());
        for (i, (s, f)) in [(8.0, false), (4.0, true), (4.0, false), (12.0, false)].into_iter().enumerate() {
            let _ = m.record_step(i as u64, s, f, None);
        }
        let _ = m.end_epoch(0);
        let _ = m.record_step(4, 2.0, true, None);
        let s = m.stats();
        assert_eq!((s.steps, s.applied, s.skipped, s.overflows), (5, 3, 2, 2));
        assert_eq!(
            (s.overflow_rate, s.current_scale, s.min_scale, s.max_scale, s.mean_scale),
            (0.4, 2.0, 2.0, 12.0, 6.0)
        );
        assert_eq!(s.epochs[0].mean_scale, 7.0);
        assert_eq!(s.epochs[0].end_scale, 12.0);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TrainingStats>(&json).unwrap(), s);
    }

    #[test]
    fn history_is_bounded() {
        let mut m = ScaleMonitor::new(&cfg());
        for i in 0..(HISTORY_LEN as u64 + 10) {
            let _ = m.record_step(i, 1024.0, false, None);
        }
        assert_eq!(m.history().count(), HISTORY_LEN);
        assert_eq!(m.history().next().map(|p| p.step), Some(10));
    }

    #[test]
    fn driver_applies_the_reset_once_and_never_up() {
        let mut c = cfg();
        c.init_scale = ScaleChoice::Fixed(1e6);
        c.max_scale = 1e7;
        let mut d = ScalerDriver::new(&c, 0);
        let mut got = Vec::new();
        for step in 0..5 {
            let out = d.step(step, true, None);
            assert_eq!(out.decision, StepDecision::Skip);
            got.push((out.events.iter().filter(|e| is_reset(e)).count(), out.reset, out.scale));
        }
        assert_eq!(got[..4], [(0, None, 500_000.0), (0, None, 250_000.0), (0, None, 125_000.0), (0, None, 62_500.0)]);
        assert_eq!(got[4], (1, Some(ScaleReset { before: 31_250.0, after: 1024.0 }), 1024.0));
        assert_eq!(d.stats().current_scale, 1024.0);
        assert_eq!(d.scaler().growth_tracker(), 0);
    }

    #[test]
    fn driver_checkpoint_resumes_identically() {
        let mut a = ScalerDriver::new(&cfg(), 0);
        for step in 0..30 {
            let _ = a.step(step, step % 7 == 0, Some(1.0));
        }
        let _ = a.end_epoch(0);
        let text = ron::to_string(&a).unwrap();
        let mut b: ScalerDriver = ron::from_str(&text).unwrap();
        assert_eq!(a, b);
        for step in 30..60 {
            let f = step % 3 == 0;
            assert_eq!(a.step(step, f, None), b.step(step, f, None));
        }
        assert_eq!(a.stats(), b.stats());
    }

    /// Any run of exactly `max_consecutive_overflows` overflows (between clean steps) produces
    /// exactly one reset, and no reset ever raises the scale.
    #[test]
    fn prop_overflow_runs_and_resets() {
        fn prop(runs: Vec<(u8, u8)>, init_pow: u8) -> TestResult {
            let mut c = cfg();
            c.init_scale = ScaleChoice::Fixed(2f64.powi(i32::from(init_pow % 24)));
            let n = c.max_consecutive_overflows as usize;
            let mut d = ScalerDriver::new(&c, 0);
            let mut step = 0;
            for (clean, over) in runs.into_iter().take(20) {
                for _ in 0..(clean % 5 + 1) {
                    let out = d.step(step, false, None);
                    step += 1;
                    if out.reset.is_some() {
                        return TestResult::failed();
                    }
                }
                let over = usize::from(over % 12);
                let mut resets = 0;
                for _ in 0..over {
                    let out = d.step(step, true, None);
                    step += 1;
                    if let Some(r) = out.reset {
                        if r.after > r.before {
                            return TestResult::failed();
                        }
                        resets += 1;
                    }
                }
                if resets != over / n {
                    return TestResult::failed();
                }
            }
            TestResult::passed()
        }
        QuickCheck::new().tests(1000).quickcheck(prop as fn(Vec<(u8, u8)>, u8) -> TestResult);
    }

    /// With the monitor, an overflow run from an absurd scale reaches a usable scale (at most the
    /// reset scale) within `max_consecutive_overflows` steps.
    #[test]
    fn absurd_scale_is_reset_within_the_run_limit() {
        let mut c = cfg();
        c.init_scale = ScaleChoice::Fixed(1e38);
        c.max_scale = 1e38;
        c.reset_scale = ScaleChoice::Auto;
        let mut d = ScalerDriver::new(&c, 11_000_000);
        let steps = (0..100).position(|s| d.step(s, true, None).scale <= 65_504.0);
        assert_eq!(steps, Some(4));
        assert_eq!(d.scale(), 16_384.0);
    }
}
