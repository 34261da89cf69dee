//! Dynamic loss scaling for mixed-precision training, as a pure machine over overflow flags.
//!
//! The adapter multiplies the loss by [`LossScaler::scale`], runs backward in the compute dtype,
//! checks the gradients for inf/NaN and reports the result to [`LossScaler::update`], which says
//! whether to apply the step (unscale, clip, step) or skip it, and adjusts the scale. The scaler's
//! clock is the step counter: it never sees wall time or tensors.
//!
//! # PyTorch semantics
//!
//! With `growth_factor: 2.0, backoff_factor: 0.5, hysteresis: 1` and a scale that stays strictly
//! inside `[min_scale, max_scale]`, the trajectory and the skip decisions equal
//! `torch.amp.GradScaler` (its `_amp_update_scale_` kernel): on inf/NaN the step is skipped, the
//! scale is multiplied by `backoff_factor` and the growth counter goes to 0; on a clean step the
//! counter increments and, on reaching `growth_interval`, the scale is multiplied by
//! `growth_factor` (only if the product is finite) and the counter goes to 0. A test compares
//! against a reference model of that kernel with quickcheck.
//!
//! # What keel adds
//!
//! - **Clamp.** The scale never leaves `[min_scale, max_scale]` and is never inf, 0 or NaN, even
//!   from a checkpoint or a config holding absurd values (a scale that grows to inf or backs off to
//!   0 is a known failure of other scalers: every later step is then NaN or zero).
//! - **Hysteresis** (`hysteresis: n`, Megatron-LM's `DynamicGradScaler` semantics): every overflow
//!   skips its step and zeroes the growth counter, but the scale backs off only once `n` overflows
//!   have been seen since the last growth (or reset); from then on every overflow backs off until
//!   the next growth restores the allowance. Overflows need not be consecutive: clean steps short
//!   of a growth do not restore it. `n = 1` backs off on every overflow, as PyTorch does.
//!   DeepSpeed's `delayed_shift` is the same idea (its `consecutive_hysteresis: false` mode).
//! - **Initial scale from model size** ([`init_scale_for`]), and [`LossScaler::reset`], which the
//!   [`crate::monitor`] asks for when the scale misbehaves.

use crate::config::{Config, ScaleChoice, ScalerConfig, ValidationErrors};
use serde::{Deserialize, Serialize};

/// The initial loss scale for a model with `param_count` parameters (`init_scale: Auto`).
///
/// | parameters      | scale          |
/// | ---             | ---            |
/// | < 1 M           | 65 536 (2^16)  |
/// | 1 M to < 10 M   | 32 768 (2^15)  |
/// | 10 M to < 100 M | 16 384 (2^14)  |
/// | 100 M to < 1 G  | 8 192 (2^13)   |
/// | >= 1 G          | 4 096 (2^12)   |
///
/// Why smaller for larger models: a gradient is a sum over the batch and, deeper in the network,
/// over wider layers; a larger model sums more terms, so the same scale reaches fp16's maximum
/// (65 504) sooner and the first steps are wasted on overflows (or, with a scaler that cannot back
/// off to a usable value, diverge). 2^16 is PyTorch's default and suits small models; each decade
/// of parameters halves it. Powers of two keep scaling and unscaling exact (only the exponent
/// changes), and every entry is below the default warning threshold (100 000) so that a fresh run
/// never starts in the zone the monitor warns about. The Informer's defaults (d_model 512, about
/// 11 M parameters) start at 16 384.
pub fn init_scale_for(param_count: u64) -> f64 {
    match param_count {
        0..1_000_000 => 65_536.0,
        1_000_000..10_000_000 => 32_768.0,
        10_000_000..100_000_000 => 16_384.0,
        100_000_000..1_000_000_000 => 8_192.0,
        _ => 4_096.0,
    }
}

/// What to do with the optimizer step whose gradients were just checked.
#[must_use = "a skipped step must not reach the optimizer"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepDecision {
    /// The gradients are finite: unscale (divide by the scale used for this step), clip, step.
    Apply,
    /// The gradients hold inf or NaN: drop them and do not step.
    Skip,
}

/// What a [`LossScaler::reset`] did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleReset {
    /// The scale before the reset.
    pub before: f64,
    /// The scale after it (`<= before`: a reset never raises the scale).
    pub after: f64,
}

/// A broken scaler invariant (found by [`LossScaler::check_invariants`]; a bug, never expected).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvariantViolation {
    /// A configuration number is out of its range.
    #[error("{name} = {value:?} is invalid: must be {allowed}")]
    Parameter {
        /// The field (as in the `scaler` config section).
        name: &'static str,
        /// Its value.
        value: f64,
        /// The rule.
        allowed: &'static str,
    },
    /// The scale left `[min_scale, max_scale]` or is not a positive finite number.
    #[error("loss scale {scale:?} is outside [{min:?}, {max:?}] or not finite and > 0")]
    ScaleOutOfBounds {
        /// The scale.
        scale: f64,
        /// `min_scale`.
        min: f64,
        /// `max_scale`.
        max: f64,
    },
    /// The scale is finite in f64 but inf or 0 as f32.
    #[error("loss scale {scale:?} is not a positive finite f32")]
    ScaleNotF32 {
        /// The scale.
        scale: f64,
    },
    /// The growth counter reached the interval without a growth.
    #[error("growth tracker {tracker} >= growth_interval {interval}")]
    GrowthTracker {
        /// The counter.
        tracker: u32,
        /// `growth_interval`.
        interval: u32,
    },
    /// More hysteresis allowance than configured.
    #[error("hysteresis allowance {left} > hysteresis {hysteresis}")]
    Hysteresis {
        /// The allowance.
        left: u32,
        /// `hysteresis`.
        hysteresis: u32,
    },
    /// The reset target is outside the bounds.
    #[error("reset scale {reset:?} is outside [min_scale, max_scale]")]
    ResetScale {
        /// The reset target.
        reset: f64,
    },
}

/// Dynamic loss scaler. Checkpointable: serialize it with the weights and a resumed run continues
/// with the same scale and counters. Deserializing checks the invariants
/// ([`LossScaler::check_invariants`]), so that a corrupt or hand-edited checkpoint (an inf scale,
/// a growth factor of 0.5) is an error naming the field instead of a run that diverges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LossScalerState")]
pub struct LossScaler {
    /// Current scale, always finite and within `[min_scale, max_scale]`.
    scale: f64,
    /// Clean steps since the last overflow, growth or reset (PyTorch's `_growth_tracker`).
    growth_tracker: u32,
    /// Overflows still tolerated before backing off (Megatron's `_hysteresis_tracker`).
    hysteresis_left: u32,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    min_scale: f64,
    max_scale: f64,
    hysteresis: u32,
    /// Where a reset jumps down to, already clamped into `[min_scale, max_scale]`.
    reset_scale: f64,
}

/// The serialized form of [`LossScaler`], checked on the way in.
#[derive(Deserialize)]
struct LossScalerState {
    scale: f64,
    /// Clean steps since the last overflow, growth or reset (PyTorch's `_growth_tracker`).
    growth_tracker: u32,
    /// Overflows still tolerated before backing off (Megatron's `_hysteresis_tracker`).
    hysteresis_left: u32,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    min_scale: f64,
    max_scale: f64,
    hysteresis: u32,
    /// Where a reset jumps down to, already clamped into `[min_scale, max_scale]`.
    reset_scale: f64,
}

impl TryFrom<LossScalerState> for LossScaler {
    type Error = String;

    fn try_from(s: LossScalerState) -> Result<Self, String> {
        let scaler = LossScaler {
            scale: s.scale,
            growth_tracker: s.growth_tracker,
            hysteresis_left: s.hysteresis_left,
            growth_factor: s.growth_factor,
            backoff_factor: s.backoff_factor,
            growth_interval: s.growth_interval,
            min_scale: s.min_scale,
            max_scale: s.max_scale,
            hysteresis: s.hysteresis,
            reset_scale: s.reset_scale,
        };
        scaler.check_invariants().map_err(|e| {
            format!(
                "invalid loss scaler state: {e} (a corrupt or hand-edited checkpoint; restore the file, or resume \
                 without its scaler state to restart from the configured scale)"
            )
        })?;
        Ok(scaler)
    }
}

impl LossScaler {
    /// A scaler configured by `cfg` (`Auto` scales come from [`init_scale_for`]`(param_count)`).
    ///
    /// `cfg` should have passed [`Config::validate`]; use [`LossScaler::try_new`] to get the
    /// errors. Given an invalid section anyway, each invalid number falls back to its default, so
    /// that the scale still can never become inf, 0 or NaN.
    pub fn new(cfg: &ScalerConfig, param_count: u64) -> Self {
        let d = ScalerConfig::default();
        let pick = |x: f64, ok: bool, default: f64| if ok { x } else { default };
        let min_scale = pick(cfg.min_scale, cfg.min_scale.is_finite() && cfg.min_scale > 0.0, d.min_scale);
        let max_ok = cfg.max_scale.is_finite() && cfg.max_scale >= min_scale;
        let max_scale = pick(cfg.max_scale, max_ok, d.max_scale.max(min_scale));
        let (min_scale, max_scale) = f32_range(min_scale, max_scale);
        let resolve = |c: ScaleChoice| match c {
            ScaleChoice::Fixed(x) if x.is_finite() && x > 0.0 => x,
            _ => init_scale_for(param_count),
        };
        let g = cfg.growth_factor;
        let b = cfg.backoff_factor;
        let hysteresis = cfg.hysteresis.max(1);
        LossScaler {
            scale: clamp(resolve(cfg.init_scale), min_scale, max_scale),
            growth_tracker: 0,
            hysteresis_left: hysteresis,
            growth_factor: pick(g, g.is_finite() && g > 1.0, d.growth_factor),
            backoff_factor: pick(b, b > 0.0 && b < 1.0, d.backoff_factor),
            growth_interval: if cfg.growth_interval > 0 { cfg.growth_interval } else { d.growth_interval },
            min_scale,
            max_scale,
            hysteresis,
            reset_scale: clamp(resolve(cfg.reset_scale), min_scale, max_scale),
        }
    }

    /// Like [`LossScaler::new`], but an invalid `cfg` is an error naming each bad field
    /// (`scaler.growth_factor = 1 is invalid: must be > 1.0`).
    pub fn try_new(cfg: &ScalerConfig, param_count: u64) -> Result<Self, ValidationErrors> {
        let whole = Config { scaler: cfg.clone(), ..Config::default() };
        match whole.validate() {
            Ok(()) => Ok(Self::new(cfg, param_count)),
            Err(ValidationErrors(all)) => {
                let mine: Vec<_> = all.into_iter().filter(|e| e.field.starts_with("scaler.")).collect();
                if mine.is_empty() { Ok(Self::new(cfg, param_count)) } else { Err(ValidationErrors(mine)) }
            }
        }
    }

    /// The loss scale for the next step: multiply the loss by this (as f32 for an f32 loss) before
    /// backward, and divide the gradients by it before clipping and stepping.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// [`LossScaler::scale`] as f32, for multiplying an f32 loss: always finite and > 0, because
    /// the bounds are kept inside f32's normal range.
    pub fn scale_f32(&self) -> f32 {
        self.scale as f32
    }

    /// Checks the invariants the simulator asserts after every step: the scale is finite, > 0
    /// and within `[min_scale, max_scale]`, the counters are within their configured ranges.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let param = |name: &'static str, value: f64, ok: bool, allowed: &'static str| {
            if ok { Ok(()) } else { Err(InvariantViolation::Parameter { name, value, allowed }) }
        };
        let (lo, hi) = (f64::from(f32::MIN_POSITIVE), f64::from(f32::MAX));
        let (g, b, min, max) = (self.growth_factor, self.backoff_factor, self.min_scale, self.max_scale);
        param("growth_factor", g, g.is_finite() && g > 1.0, "finite and > 1")?;
        param("backoff_factor", b, b > 0.0 && b < 1.0, "> 0 and < 1")?;
        param("growth_interval", f64::from(self.growth_interval), self.growth_interval > 0, "> 0")?;
        param("hysteresis", f64::from(self.hysteresis), self.hysteresis > 0, "> 0")?;
        param("min_scale", min, min >= lo && min <= hi, "a positive normal f32 (1.2e-38 to 3.4e38)")?;
        param("max_scale", max, max >= min && max <= hi, ">= min_scale and <= f32::MAX (3.4e38)")?;
        let s = self.scale;
        if !(s.is_finite() && s > 0.0 && s >= self.min_scale && s <= self.max_scale) {
            return Err(InvariantViolation::ScaleOutOfBounds { scale: s, min: self.min_scale, max: self.max_scale });
        }
        if !(self.scale_f32().is_finite() && self.scale_f32() > 0.0) {
            return Err(InvariantViolation::ScaleNotF32 { scale: s });
        }
        if self.growth_tracker >= self.growth_interval {
            return Err(InvariantViolation::GrowthTracker {
                tracker: self.growth_tracker,
                interval: self.growth_interval,
            });
        }
        if self.hysteresis_left > self.hysteresis {
            return Err(InvariantViolation::Hysteresis { left: self.hysteresis_left, hysteresis: self.hysteresis });
        }
        if self.reset_scale < self.min_scale || self.reset_scale > self.max_scale {
            return Err(InvariantViolation::ResetScale { reset: self.reset_scale });
        }
        Ok(())
    }

    /// Reports whether the gradients of the step just computed hold inf/NaN. Returns whether to
    /// apply or skip that step, and moves the scale for the next one.
    ///
    /// Call exactly once per step, after the gradient check and before the next forward.
    pub fn update(&mut self, found_inf: bool) -> StepDecision {
        if found_inf {
            self.growth_tracker = 0;
            self.hysteresis_left = self.hysteresis_left.saturating_sub(1);
            if self.hysteresis_left == 0 {
                self.scale = clamp(self.scale * self.backoff_factor, self.min_scale, self.max_scale);
            }
            StepDecision::Skip
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.growth_interval {
                let grown = self.scale * self.growth_factor;
                // PyTorch grows only if the result is finite; keel also clamps to max_scale.
                if grown.is_finite() {
                    self.scale = clamp(grown, self.min_scale, self.max_scale);
                }
                self.growth_tracker = 0;
                self.hysteresis_left = self.hysteresis;
            }
            StepDecision::Apply
        }
    }

    /// Jumps the scale down to the configured `reset_scale` if it is above it (never up), zeroes
    /// the growth counter and restores the hysteresis allowance. Called by the owner of the
    /// scaler when the [`crate::monitor::ScaleMonitor`] asks for a reset (see that module).
    pub fn reset(&mut self) -> ScaleReset {
        let before = self.scale;
        self.scale = before.min(self.reset_scale);
        self.growth_tracker = 0;
        self.hysteresis_left = self.hysteresis;
        ScaleReset { before, after: self.scale }
    }

    /// Clean steps since the last overflow, growth or reset.
    pub fn growth_tracker(&self) -> u32 {
        self.growth_tracker
    }

    /// Overflows still tolerated before the next backoff (1 with `hysteresis: 1`, 0 after it
    /// was used up).
    pub fn hysteresis_left(&self) -> u32 {
        self.hysteresis_left
    }

    /// Lowest scale the scaler will use.
    pub fn min_scale(&self) -> f64 {
        self.min_scale
    }

    /// Highest scale the scaler will use.
    pub fn max_scale(&self) -> f64 {
        self.max_scale
    }

    /// Where [`LossScaler::reset`] jumps down to.
    pub fn reset_scale(&self) -> f64 {
        self.reset_scale
    }

    /// Restores the invariants of a scaler read from a checkpoint written by another version or
    /// edited by hand: the scale and reset scale are clamped into `[min_scale, max_scale]`, an
    /// inf/NaN/non-positive scale becomes the reset scale. Call after deserializing.
    pub fn sanitized(mut self) -> Self {
        let defaults = LossScaler::new(&ScalerConfig::default(), 0);
        if !(self.min_scale.is_finite() && self.min_scale > 0.0) {
            self.min_scale = defaults.min_scale;
        }
        if !(self.max_scale.is_finite() && self.max_scale >= self.min_scale) {
            self.max_scale = defaults.max_scale.max(self.min_scale);
        }
        (self.min_scale, self.max_scale) = f32_range(self.min_scale, self.max_scale);
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            self.growth_factor = defaults.growth_factor;
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            self.backoff_factor = defaults.backoff_factor;
        }
        self.growth_interval = self.growth_interval.max(1);
        self.growth_tracker = self.growth_tracker.min(self.growth_interval - 1);
        self.hysteresis = self.hysteresis.max(1);
        self.hysteresis_left = self.hysteresis_left.min(self.hysteresis);
        self.reset_scale = clamp(self.reset_scale, self.min_scale, self.max_scale);
        self.scale = if self.scale.is_finite() && self.scale > 0.0 {
            clamp(self.scale, self.min_scale, self.max_scale)
        } else {
            self.reset_scale
        };
        self
    }
}

/// Narrows `[min, max]` to positive normal f32 values: the trainer multiplies an f32 loss by the
/// scale, and a scale of 1e300 would be inf there (and 1e-300 would be 0) although finite in f64.
fn f32_range(min: f64, max: f64) -> (f64, f64) {
    let lo = f64::from(f32::MIN_POSITIVE);
    let hi = f64::from(f32::MAX);
    let min = min.clamp(lo, hi);
    (min, max.clamp(min, hi))
}

/// One line for the training log: the chosen configuration and the current state.
impl std::fmt::Display for LossScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss scale {} (x{} after {} clean steps, x{} on overflow{}, within [{}, {}], reset to {}; growth counter {})",
            self.scale,
            self.growth_factor,
            self.growth_interval,
            self.backoff_factor,
            if self.hysteresis > 1 { format!(" after {} overflows", self.hysteresis) } else { String::new() },
            self.min_scale,
            self.max_scale,
            self.reset_scale,
            self.growth_tracker,
        )
    }
}

/// `x` clamped into `[min, max]`; NaN (which `f64::clamp` would pass through) becomes `min`.
fn clamp(x: f64, min: f64, max: f64) -> f64 {
    if x.is_nan() { min } else { x.clamp(min, max) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn cfg(init: f64, growth: f64, backoff: f64, interval: u32) -> ScalerConfig {
        ScalerConfig {
            init_scale: ScaleChoice::Fixed(init),
            growth_factor: growth,
            backoff_factor: backoff,
            growth_interval: interval,
            min_scale: 1.0,
            max_scale: 16_777_216.0,
            ..ScalerConfig::default()
        }
    }

    fn flags(s: &str) -> Vec<bool> {
        s.bytes().map(|b| b == b'1').collect()
    }

    /// Runs `flags` and returns (skipped, scale after update) per step.
    fn run(s: &mut LossScaler, flags: &[bool]) -> Vec<(bool, f64)> {
        flags.iter().map(|&f| (s.update(f) == StepDecision::Skip, s.scale())).collect()
    }

    #[test]
    fn init_scale_table() {
        let table = [
            (0, 65_536.0),
            (999_999, 65_536.0),
            (1_000_000, 32_768.0),
            (11_000_000, 16_384.0),
            (99_999_999, 16_384.0),
            (100_000_000, 8_192.0),
            (1_000_000_000, 4_096.0),
            (u64::MAX, 4_096.0),
        ];
        for (n, want) in table {
            assert_eq!(init_scale_for(n), want, "param_count {n}");
        }
        // Monotone: never larger for a larger model.
        let mut last = f64::INFINITY;
        for p in 0..20 {
            let s = init_scale_for(10u64.pow(p));
            assert!(s <= last);
            last = s;
        }
    }

    #[test]
    fn auto_uses_param_count_and_fixed_wins() {
        let auto = ScalerConfig::default();
        assert_eq!(LossScaler::new(&auto, 11_000_000).scale(), 16_384.0);
        assert_eq!(LossScaler::new(&auto, 11_000_000).reset_scale(), 16_384.0);
        let fixed = cfg(1024.0, 2.0, 0.5, 10);
        assert_eq!(LossScaler::new(&fixed, 11_000_000).scale(), 1024.0);
    }

    /// The sequence of the `keel-sim scaler` example, computed by hand.
    #[test]
    fn hand_table_pytorch_config() {
        let mut s = LossScaler::new(&cfg(65_536.0, 2.0, 0.5, 3), 0);
        let got = run(&mut s, &flags("0001000110"));
        let want = [
            (false, 65_536.0),
            (false, 65_536.0),
            (false, 131_072.0), // 3 clean steps: grow
            (true, 65_536.0),   // overflow: skip, halve, counter 0
            (false, 65_536.0),
            (false, 65_536.0),
            (false, 131_072.0),
            (true, 65_536.0),
            (true, 32_768.0),
            (false, 32_768.0),
        ];
        assert_eq!(got, want);
        assert_eq!(s.growth_tracker(), 1);
    }

    #[test]
    fn clamps_at_min_and_max() {
        let mut c = cfg(4.0, 2.0, 0.5, 1);
        c.min_scale = 2.0;
        c.max_scale = 8.0;
        let mut s = LossScaler::new(&c, 0);
        let got: Vec<f64> = run(&mut s, &flags("0000111100")).into_iter().map(|x| x.1).collect();
        assert_eq!(got, [8.0, 8.0, 8.0, 8.0, 4.0, 2.0, 2.0, 2.0, 4.0, 8.0]);
    }

    #[test]
    fn bounds_stay_inside_f32() {
        let c = ScalerConfig {
            init_scale: ScaleChoice::Fixed(1e300),
            min_scale: 1e-300,
            max_scale: 1e300,
            growth_interval: 1,
            ..ScalerConfig::default()
        };
        let mut s = LossScaler::new(&c, 0);
        assert_eq!(s.scale(), f64::from(f32::MAX));
        assert!(s.scale_f32().is_finite());
        let _ = s.update(false);
        assert_eq!(s.scale_f32(), f32::MAX);
        for _ in 0..2000 {
            let _ = s.update(true);
        }
        assert_eq!(s.scale_f32(), f32::MIN_POSITIVE);
        assert_eq!(s.check_invariants(), Ok(()));
    }

    #[test]
    fn invariant_violations_are_reported() {
        let mut s = LossScaler::new(&cfg(1024.0, 2.0, 0.5, 4), 0);
        assert_eq!(s.check_invariants(), Ok(()));
        s.scale = f64::NAN;
        assert!(matches!(s.check_invariants(), Err(InvariantViolation::ScaleOutOfBounds { .. })));
        s.scale = 1024.0;
        s.growth_tracker = 4;
        assert_eq!(s.check_invariants(), Err(InvariantViolation::GrowthTracker { tracker: 4, interval: 4 }));
        assert_eq!(s.clone().sanitized().check_invariants(), Ok(()));
    }

    #[test]
    fn display_names_the_config() {
        let mut c = cfg(1024.0, 2.0, 0.5, 4);
        c.hysteresis = 2;
        c.reset_scale = ScaleChoice::Fixed(512.0);
        let s = LossScaler::new(&c, 0);
        assert_eq!(
            s.to_string(),
            "loss scale 1024 (x2 after 4 clean steps, x0.5 on overflow after 2 overflows, within [1, 16777216], \
             reset to 512; growth counter 0)"
        );
    }

    #[test]
    fn init_outside_clamp_is_clamped() {
        let mut c = cfg(1e38, 2.0, 0.5, 1);
        c.max_scale = 65_536.0;
        assert_eq!(LossScaler::new(&c, 0).scale(), 65_536.0);
        c.init_scale = ScaleChoice::Fixed(0.5);
        assert_eq!(LossScaler::new(&c, 0).scale(), 1.0);
    }

    /// Hysteresis 3 (Megatron semantics): the first two overflows only skip; the third and every
    /// later one back off until a growth restores the allowance. Clean steps short of a growth do
    /// not restore it.
    #[test]
    fn hysteresis_table() {
        let mut c = cfg(1024.0, 2.0, 0.5, 3);
        c.hysteresis = 3;
        let mut s = LossScaler::new(&c, 0);
        let got = run(&mut s, &flags("1101100010001"));
        let want = [
            (true, 1024.0), // allowance 3 -> 2
            (true, 1024.0), // 2 -> 1
            (false, 1024.0),
            (true, 512.0),  // 1 -> 0: back off
            (true, 256.0),  // still 0: back off again
            (false, 256.0), // clean 1
            (false, 256.0), // clean 2
            (false, 512.0), // clean 3: grow, allowance back to 3
            (true, 512.0),  // 3 -> 2
            (false, 512.0),
            (false, 512.0),
            (false, 1024.0), // growth
            (true, 1024.0),  // 3 -> 2
        ];
        assert_eq!(got, want);
        assert_eq!(s.hysteresis_left(), 2);
    }

    #[test]
    fn reset_never_raises_and_restores_counters() {
        let mut c = cfg(1_000_000.0, 2.0, 0.5, 5);
        c.reset_scale = ScaleChoice::Fixed(4096.0);
        c.hysteresis = 2;
        let mut s = LossScaler::new(&c, 0);
        let _ = s.update(false);
        let _ = s.update(true);
        assert_eq!((s.growth_tracker(), s.hysteresis_left()), (0, 1));
        let _ = s.update(false);
        assert_eq!(s.reset(), ScaleReset { before: 1_000_000.0, after: 4096.0 });
        assert_eq!((s.scale(), s.growth_tracker(), s.hysteresis_left()), (4096.0, 0, 2));
        // Below the reset scale: a reset keeps the scale.
        for _ in 0..4 {
            let _ = s.update(true);
        }
        assert_eq!(s.scale(), 512.0);
        assert_eq!(s.reset(), ScaleReset { before: 512.0, after: 512.0 });
    }

    #[test]
    fn auto_reset_scale_is_size_based() {
        let mut c = cfg(1e7, 2.0, 0.5, 5);
        c.reset_scale = ScaleChoice::Auto;
        let mut s = LossScaler::new(&c, 200_000_000);
        assert_eq!(s.reset().after, 8192.0);
    }

    #[test]
    fn try_new_names_the_bad_fields() {
        let c = ScalerConfig { growth_factor: 1.0, min_scale: 0.0, ..ScalerConfig::default() };
        let err = LossScaler::try_new(&c, 0).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["scaler.growth_factor", "scaler.min_scale"]);
        assert!(err.to_string().contains("scaler.growth_factor = 1 is invalid: must be > 1.0"), "{err}");
        assert!(LossScaler::try_new(&ScalerConfig::default(), 0).is_ok());
    }

    #[test]
    fn invalid_config_still_keeps_the_scale_sane() {
        let c = ScalerConfig {
            init_scale: ScaleChoice::Fixed(f64::NAN),
            growth_factor: f64::INFINITY,
            backoff_factor: 0.0,
            growth_interval: 0,
            min_scale: f64::NAN,
            max_scale: -1.0,
            hysteresis: 0,
            ..ScalerConfig::default()
        };
        let mut s = LossScaler::new(&c, 0);
        assert_eq!(s.scale(), 65_536.0);
        for f in flags("0101111111111111111111111100000") {
            let _ = s.update(f);
            assert!(s.scale().is_finite() && s.scale() >= 1.0, "{s:?}");
        }
    }

    #[test]
    fn serde_round_trip_continues_identically() {
        let mut c = cfg(65_536.0, 2.0, 0.5, 4);
        c.hysteresis = 2;
        let mut a = LossScaler::new(&c, 0);
        let _ = run(&mut a, &flags("0010110"));
        let json = serde_json::to_string(&a).unwrap();
        let mut b: LossScaler = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b);
        // A corrupt checkpoint is refused with the field named.
        let bad = json.replace("\"growth_factor\":2.0", "\"growth_factor\":0.5");
        let err = serde_json::from_str::<LossScaler>(&bad).unwrap_err().to_string();
        assert!(
            err.contains("invalid loss scaler state: growth_factor = 0.5 is invalid: must be finite and > 1"),
            "{err}"
        );
        let bad = json.replace(&format!("\"scale\":{:?}", a.scale()), "\"scale\":1e300");
        let err = serde_json::from_str::<LossScaler>(&bad).unwrap_err().to_string();
        assert!(err.contains("loss scale 1e300 is outside [1.0, 16777216.0]"), "{err}");
        let ron_text = ron::to_string(&a).unwrap();
        let c2: LossScaler = ron::from_str(&ron_text).unwrap();
        assert_eq!(a, c2);
        let rest = flags("0001111000011");
        assert_eq!(run(&mut a, &rest), run(&mut b, &rest));
    }

    #[test]
    fn sanitized_repairs_a_corrupt_checkpoint() {
        let mut s = LossScaler::new(&cfg(1024.0, 2.0, 0.5, 4), 0);
        s.scale = f64::INFINITY;
        s.backoff_factor = 1.5;
        let s = s.sanitized();
        assert_eq!(s.scale(), s.reset_scale());
        assert_eq!(s.scale(), 65_536.0);
        assert_eq!(s.backoff_factor, 0.5);
        let mut t = LossScaler::new(&cfg(1024.0, 2.0, 0.5, 4), 0);
        t.scale = 1e300;
        assert_eq!(t.sanitized().scale(), 16_777_216.0);
    }

    // ----- properties -----

    /// PyTorch's `_amp_update_scale_` (aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp), on an
    /// f32 scale as GradScaler keeps it. Returns (skipped, scale) per step.
    fn pytorch_reference(init: f32, growth: f32, backoff: f32, interval: u32, flags: &[bool]) -> Vec<(bool, f32)> {
        let mut scale = init;
        let mut tracker: u32 = 0;
        let mut out = Vec::new();
        for &found_inf in flags {
            // GradScaler.step skips optimizer.step when found_inf is nonzero.
            let skipped = found_inf;
            if found_inf {
                scale *= backoff;
                tracker = 0;
            } else {
                let successful = tracker + 1;
                if successful == interval {
                    let new_scale = scale * growth;
                    if new_scale.is_finite() {
                        scale = new_scale;
                    }
                    tracker = 0;
                } else {
                    tracker = successful;
                }
            }
            out.push((skipped, scale));
        }
        out
    }

    #[test]
    fn prop_matches_pytorch_reference() {
        fn prop(init_pow: u8, interval: u8, flags: Vec<bool>) -> TestResult {
            let init = 2f64.powi(i32::from(init_pow % 31));
            let interval = u32::from(interval % 12) + 1;
            let flags: Vec<bool> = flags.into_iter().take(80).collect();
            // Bounds far outside what 80 steps from <= 2^30 can reach: no clamp.
            let c = ScalerConfig {
                init_scale: ScaleChoice::Fixed(init),
                growth_factor: 2.0,
                backoff_factor: 0.5,
                growth_interval: interval,
                min_scale: 2f64.powi(-100),
                max_scale: 2f64.powi(120),
                hysteresis: 1,
                ..ScalerConfig::default()
            };
            let mut s = LossScaler::new(&c, 0);
            let ours: Vec<(bool, f32)> =
                flags.iter().map(|&f| (s.update(f) == StepDecision::Skip, s.scale() as f32)).collect();
            let theirs = pytorch_reference(init as f32, 2.0, 0.5, interval, &flags);
            TestResult::from_bool(ours == theirs)
        }
        QuickCheck::new().tests(2000).quickcheck(prop as fn(u8, u8, Vec<bool>) -> TestResult);
    }

    /// A scaler from arbitrary (valid) numbers.
    fn arbitrary_scaler(init: f64, g: u16, b: u16, interval: u8, lo: u16, span: u16, hyst: u8) -> LossScaler {
        let min_scale = 1.0 + f64::from(lo);
        let c = ScalerConfig {
            init_scale: ScaleChoice::Fixed(if init.is_finite() && init > 0.0 { init } else { 1.0 }),
            growth_factor: 1.0 + (f64::from(g) + 1.0) / 1000.0,
            backoff_factor: (f64::from(b % 999) + 1.0) / 1000.0,
            growth_interval: u32::from(interval % 20) + 1,
            min_scale,
            max_scale: min_scale * (1.0 + f64::from(span)),
            hysteresis: u32::from(hyst % 4) + 1,
            ..ScalerConfig::default()
        };
        LossScaler::new(&c, 0)
    }

    #[test]
    fn prop_scale_stays_in_bounds_and_skips_equal_overflows() {
        #[allow(clippy::too_many_arguments)]
        fn prop(init: f64, g: u16, b: u16, interval: u8, lo: u16, span: u16, hyst: u8, flags: Vec<bool>) -> bool {
            let mut s = arbitrary_scaler(init, g, b, interval, lo, span, hyst);
            let (min, max) = (s.min_scale(), s.max_scale());
            let mut skipped = 0;
            for &f in &flags {
                if s.update(f) == StepDecision::Skip {
                    skipped += 1;
                }
                let x = s.scale();
                if !(x.is_finite() && x >= min && x <= max) || s.check_invariants().is_err() {
                    return false;
                }
            }
            skipped == flags.iter().filter(|&&f| f).count()
        }
        QuickCheck::new().tests(2000).quickcheck(prop as fn(f64, u16, u16, u8, u16, u16, u8, Vec<bool>) -> bool);
    }

    #[test]
    fn prop_no_growth_within_interval_after_backoff() {
        #[allow(clippy::too_many_arguments)]
        fn prop(init: f64, g: u16, b: u16, interval: u8, lo: u16, span: u16, hyst: u8, flags: Vec<bool>) -> bool {
            let mut s = arbitrary_scaler(init, g, b, interval, lo, span, hyst);
            let n = s.growth_interval as usize;
            let mut clean_since_overflow: Option<usize> = None;
            let mut prev = s.scale();
            for &f in &flags {
                let _ = s.update(f);
                if f {
                    clean_since_overflow = Some(0);
                } else if let Some(c) = clean_since_overflow.as_mut() {
                    *c += 1;
                    if *c < n && s.scale() > prev {
                        return false;
                    }
                }
                prev = s.scale();
            }
            true
        }
        QuickCheck::new().tests(2000).quickcheck(prop as fn(f64, u16, u16, u8, u16, u16, u8, Vec<bool>) -> bool);
    }

    /// An overflow run from an absurd scale (1e38, e.g. a corrupt checkpoint or a bad `Fixed`)
    /// reaches fp16's range within log_{1/backoff}(1e38 / 65504) steps of the scaler alone.
    #[test]
    fn prop_absurd_scale_recovers_in_bounded_steps() {
        fn prop(b: u16) -> bool {
            let backoff = (f64::from(b % 950) + 25.0) / 1000.0; // 0.025..0.975
            let c = ScalerConfig {
                init_scale: ScaleChoice::Fixed(1e38),
                backoff_factor: backoff,
                max_scale: 1e38,
                ..ScalerConfig::default()
            };
            let mut s = LossScaler::new(&c, 0);
            let bound = ((1e38f64 / 65_504.0).ln() / (1.0 / backoff).ln()).ceil() as usize + 1;
            (0..bound).any(|_| {
                let _ = s.update(true);
                s.scale() <= 65_504.0
            })
        }
        QuickCheck::new().tests(500).quickcheck(prop as fn(u16) -> bool);
    }
}
