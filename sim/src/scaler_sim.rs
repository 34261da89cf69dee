//! Seeded runs of the real [`ScalerDriver`] (`LossScaler` + `ScaleMonitor`) over adversarial
//! overflow sequences, checked step by step against the rules they promise.
//!
//! A seed draws a scaler configuration, a model size and a sequence of overflow patterns (random,
//! bursts, periodic, NaN storms, long clean runs, adversarial growth). After every step the checker
//! compares what the driver did with an oracle of the documented rules (PyTorch's growth/backoff with
//! keel's clamp and hysteresis, the monitor's reset and warning rules): the scale is finite and within
//! `[min, max]`, a step is skipped exactly when it overflowed, resets happen exactly when due and
//! never raise the scale, warnings fire once per upward crossing, and the statistics add up.

use keel_core::config::{Config, ScaleChoice, ScalerConfig};
use keel_core::monitor::{MonitorEvent, ResetReason, ScalerDriver};
use keel_core::rng::Rng;
use keel_core::scaler::{StepDecision, init_scale_for};
use std::fmt;

/// An overflow pattern for a stretch of steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Each step overflows with probability `num / den`.
    Random {
        /// Numerator.
        num: u64,
        /// Denominator.
        den: u64,
    },
    /// Clean runs with short bursts of overflows in between.
    Bursts,
    /// Every `every`-th step overflows.
    Periodic {
        /// Period.
        every: u64,
    },
    /// Every step overflows (NaN in the loss).
    NanStorm,
    /// No step overflows: the scale must grow to the clamp and stay there.
    LongClean,
    /// Overflows placed where they hurt: on the step that would grow the scale, or right after it.
    AdversarialGrowth,
}

impl Pattern {
    fn draw(rng: &mut Rng) -> (Pattern, u64) {
        match rng.below(6) {
            0 => (Pattern::Random { num: 1, den: 2 + rng.below(200) }, 200 + rng.below(5_000)),
            1 => (Pattern::Bursts, 500 + rng.below(5_000)),
            2 => (Pattern::Periodic { every: 2 + rng.below(3_000) }, 200 + rng.below(5_000)),
            3 => (Pattern::NanStorm, 1 + rng.below(300)),
            4 => (Pattern::LongClean, 1_000 + rng.below(8_000)),
            _ => (Pattern::AdversarialGrowth, 200 + rng.below(5_000)),
        }
    }
}

/// Everything a seed decides for its scaler run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerCase {
    /// The configuration.
    pub cfg: ScalerConfig,
    /// Model size (picks the `Auto` scales).
    pub param_count: u64,
    /// Steps per epoch.
    pub epoch_len: u64,
    /// Total steps.
    pub steps: u64,
}

impl ScalerCase {
    /// Draws a case from `seed`.
    pub fn draw(seed: u64, steps: u64) -> ScalerCase {
        let mut rng = Rng::new(seed ^ 0x5CA1_E400);
        let pick = |rng: &mut Rng, xs: &[f64]| xs[rng.below(xs.len() as u64) as usize];
        let mut cfg = ScalerConfig {
            growth_factor: pick(&mut rng, &[1.2, 2.0, 1.001, 4.0]),
            backoff_factor: pick(&mut rng, &[0.5, 0.25, 0.9]),
            growth_interval: [1, 3, 50, 2_000][rng.below(4) as usize],
            min_scale: pick(&mut rng, &[1.0, 0.5, 128.0]),
            max_scale: pick(&mut rng, &[16_777_216.0, 65_536.0, 1e30, 1e300]),
            hysteresis: 1 + rng.below(3) as u32,
            warn_threshold: pick(&mut rng, &[100_000.0, 1_000.0, 1e12]),
            max_consecutive_overflows: [1, 3, 5, 10][rng.below(4) as usize],
            anomalous_epochs_before_reset: 1 + rng.below(3) as u32,
            anomalous_overflow_rate: pick(&mut rng, &[0.05, 0.5, 1.0]),
            ..ScalerConfig::default()
        };
        if rng.chance(1, 3) {
            cfg.init_scale = ScaleChoice::Fixed(pick(&mut rng, &[1.0, 65_536.0, 1e9]));
        }
        if rng.chance(1, 3) {
            cfg.reset_scale = ScaleChoice::Fixed(pick(&mut rng, &[2.0, 1_024.0, 1e40]));
        }
        let param_count = [10_000, 11_000_000, 2_000_000_000][rng.below(3) as usize];
        let epoch_len = 50 + rng.below(5_000);
        ScalerCase { cfg, param_count, epoch_len, steps }
    }
}

impl fmt::Display for ScalerCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cfg;
        write!(
            f,
            "scaler: params={} init={:?} growth={}/{} backoff={} clamp=[{}, {}] hysteresis={} warn={} max_overflows={} \
             reset={:?} anomalous={}x>{} epoch={} steps={}",
            self.param_count,
            c.init_scale,
            c.growth_factor,
            c.growth_interval,
            c.backoff_factor,
            c.min_scale,
            c.max_scale,
            c.hysteresis,
            c.warn_threshold,
            c.max_consecutive_overflows,
            c.reset_scale,
            c.anomalous_epochs_before_reset,
            c.anomalous_overflow_rate,
            self.epoch_len,
            self.steps
        )
    }
}

/// How a scaler run ended without breaking a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerSummary {
    /// Steps run.
    pub steps: u64,
    /// Overflowing steps.
    pub overflows: u64,
    /// Resets applied.
    pub resets: u64,
    /// Warnings.
    pub warnings: u64,
    /// The run stopped early on `OverflowAtMinScale` (a correct, fatal verdict).
    pub stopped_at_min_scale: Option<u64>,
    /// Hash of every decision and scale, for the determinism check.
    pub hash: u64,
}

/// A broken rule, with the steps before it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerFailure {
    /// The rule and what was seen.
    pub invariant: String,
    /// Step at which it broke.
    pub step: u64,
    /// Last steps as `step found_inf decision scale events`.
    pub recent: Vec<String>,
}

/// The checker's own account of what the rules say should happen.
struct Oracle {
    scale: f64,
    growth_tracker: u32,
    hysteresis_left: u32,
    overflow_run: u32,
    min_scale_run: u32,
    above: bool,
    epoch_steps: u64,
    epoch_overflows: u64,
    epoch_max: f64,
    anomalous_run: u32,
    reset_scale: f64,
}

/// One step of the real driver, as a failure report shows it.
struct RecentStep {
    step: u64,
    found_inf: bool,
    decision: StepDecision,
    scale: f64,
    events: Vec<MonitorEvent>,
}

impl RecentStep {
    fn line(&self) -> String {
        let RecentStep { step, found_inf, decision, scale, events } = self;
        format!("step {step} found_inf={found_inf} {decision:?} scale {scale:?} events {events:?}")
    }
}

fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    x.max(lo).min(hi)
}

/// Runs one seed's scaler case. `log` receives one line per step when given (for failure reports).
pub fn run(case: &ScalerCase) -> Result<ScalerSummary, ScalerFailure> {
    let cfg = &case.cfg;
    let mut rng = Rng::new(case.param_count ^ case.epoch_len ^ 0xF10A7);
    if let Err(e) = (Config { scaler: cfg.clone(), ..Config::default() }).validate() {
        return Err(ScalerFailure { invariant: format!("drawn config invalid: {e}"), step: 0, recent: vec![] });
    }
    let mut driver = ScalerDriver::new(cfg, case.param_count);
    // The clamp, narrowed to positive normal f32 values (the trainer multiplies an f32 loss).
    let lo = cfg.min_scale.max(f64::from(f32::MIN_POSITIVE));
    let hi = cfg.max_scale.min(f64::from(f32::MAX));
    let resolve = |c: ScaleChoice| match c {
        ScaleChoice::Fixed(x) => x,
        ScaleChoice::Auto => init_scale_for(case.param_count),
    };
    let mut o = Oracle {
        scale: clamp(resolve(cfg.init_scale), lo, hi),
        growth_tracker: 0,
        hysteresis_left: cfg.hysteresis,
        overflow_run: 0,
        min_scale_run: 0,
        above: false,
        epoch_steps: 0,
        epoch_overflows: 0,
        epoch_max: f64::MIN,
        anomalous_run: 0,
        reset_scale: clamp(resolve(cfg.reset_scale), lo, hi),
    };
    // The last steps, kept as values and written out only for a failure report: formatting a line per
    // step (floats included) was 5 % of the whole simulator's instructions.
    let mut recent: std::collections::VecDeque<RecentStep> = std::collections::VecDeque::new();
    let mut summary = ScalerSummary {
        steps: 0,
        overflows: 0,
        resets: 0,
        warnings: 0,
        stopped_at_min_scale: None,
        hash: 0xcbf2_9ce4_8422_2325,
    };
    let (mut pattern, mut left) = Pattern::draw(&mut rng);
    let mut burst_left = 0u64;
    let mut epoch = 0u32;
    let fail = |invariant: String, step: u64, recent: &std::collections::VecDeque<RecentStep>| ScalerFailure {
        invariant,
        step,
        recent: recent.iter().map(RecentStep::line).collect(),
    };
    if driver.scale() != o.scale {
        return Err(fail(format!("initial scale {} != expected {}", driver.scale(), o.scale), 0, &recent));
    }

    for step in 0..case.steps {
        if left == 0 {
            (pattern, left) = Pattern::draw(&mut rng);
        }
        left -= 1;
        let found_inf = match pattern {
            Pattern::Random { num, den } => rng.chance(num, den),
            Pattern::Bursts => {
                if burst_left == 0 && rng.chance(1, 300) {
                    burst_left = 1 + rng.below(12);
                }
                if burst_left > 0 {
                    burst_left -= 1;
                    true
                } else {
                    false
                }
            }
            Pattern::Periodic { every } => step % every == 0,
            Pattern::NanStorm => true,
            Pattern::LongClean => false,
            Pattern::AdversarialGrowth => {
                let imminent = o.growth_tracker + 1 >= cfg.growth_interval;
                let just_grew = o.growth_tracker == 0 && o.overflow_run == 0;
                (imminent && rng.chance(1, 2)) || (just_grew && rng.chance(1, 2))
            }
        };

        // --- the oracle: what the documented rules say this step does ---
        let before = o.scale;
        let mut expected = before;
        if found_inf {
            o.growth_tracker = 0;
            o.hysteresis_left = o.hysteresis_left.saturating_sub(1);
            if o.hysteresis_left == 0 {
                expected = clamp(before * cfg.backoff_factor, lo, hi);
            }
        } else {
            o.growth_tracker += 1;
            if o.growth_tracker >= cfg.growth_interval {
                let grown = before * cfg.growth_factor;
                if grown.is_finite() {
                    expected = clamp(grown, lo, hi);
                }
                o.growth_tracker = 0;
                o.hysteresis_left = cfg.hysteresis;
            }
        }
        let mut expect_warning = false;
        if expected > cfg.warn_threshold {
            expect_warning = !o.above;
            o.above = true;
        } else {
            o.above = false;
        }
        let mut expect_reset = false;
        let mut expect_min_fatal = false;
        if found_inf {
            o.overflow_run += 1;
            // The monitor judges the scale the step ran with; it knows none before the first step.
            if step > 0 && before <= cfg.min_scale {
                o.min_scale_run += 1;
                expect_min_fatal = o.min_scale_run == cfg.max_consecutive_overflows;
            } else {
                o.min_scale_run = 0;
            }
            if o.overflow_run >= cfg.max_consecutive_overflows {
                o.overflow_run = 0;
                expect_reset = true;
            }
        } else {
            o.overflow_run = 0;
            o.min_scale_run = 0;
        }

        // --- the real driver ---
        let out = driver.step(step, found_inf, if found_inf { Some(f64::NAN) } else { Some(0.5) });
        summary.steps += 1;
        summary.overflows += u64::from(found_inf);
        mix(&mut summary.hash, out.scale.to_bits() ^ u64::from(found_inf));
        if recent.len() == 12 {
            recent.pop_front();
        }
        recent.push_back(RecentStep {
            step,
            found_inf,
            decision: out.decision,
            scale: out.scale,
            events: out.events.clone(),
        });

        let want = if found_inf { StepDecision::Skip } else { StepDecision::Apply };
        if out.decision != want {
            return Err(fail(
                format!("step decision {:?} but found_inf={found_inf} (skipped must equal overflows)", out.decision),
                step,
                &recent,
            ));
        }
        let warned = out.events.iter().filter(|e| matches!(e, MonitorEvent::ScaleAboveThreshold { .. })).count();
        if warned != usize::from(expect_warning) {
            return Err(fail(
                format!(
                    "{warned} threshold warnings, expected {} (scale {expected}, threshold {})",
                    u8::from(expect_warning),
                    cfg.warn_threshold
                ),
                step,
                &recent,
            ));
        }
        summary.warnings += warned as u64;
        let resets: Vec<&ResetReason> = out
            .events
            .iter()
            .filter_map(|e| if let MonitorEvent::Reset(d) = e { Some(&d.reason) } else { None })
            .collect();
        if resets.len() != usize::from(expect_reset) {
            return Err(fail(
                format!(
                    "{} resets at this step, expected {} ({} overflows in a row, max {})",
                    resets.len(),
                    u8::from(expect_reset),
                    o.overflow_run,
                    cfg.max_consecutive_overflows
                ),
                step,
                &recent,
            ));
        }
        if expect_reset {
            summary.resets += 1;
            let after = expected.min(o.reset_scale);
            if out.reset.map(|r| (r.before, r.after)) != Some((expected, after)) {
                return Err(fail(
                    format!("reset applied {:?}, expected {expected} -> {after} (never up)", out.reset),
                    step,
                    &recent,
                ));
            }
            expected = after;
            o.growth_tracker = 0;
            o.hysteresis_left = cfg.hysteresis;
            o.above = expected > cfg.warn_threshold;
        }
        if let Err(e) = driver.scaler().check_invariants() {
            return Err(fail(format!("the scaler's own invariant check failed: {e}"), step, &recent));
        }
        if !(out.scale.is_finite() && out.scale >= lo && out.scale <= hi) {
            return Err(fail(format!("scale {} not finite within [{lo}, {hi}]", out.scale), step, &recent));
        }
        if out.scale != expected {
            return Err(fail(
                format!(
                    "scale {:?} but the rules give {expected:?} (from {before:?}, found_inf={found_inf})",
                    out.scale
                ),
                step,
                &recent,
            ));
        }
        o.scale = expected;
        o.epoch_steps += 1;
        o.epoch_overflows += u64::from(found_inf);
        // The monitor judges the epoch on scales as recorded (after the update, before a reset).
        o.epoch_max = o.epoch_max.max(if expect_reset { out.reset.map_or(expected, |r| r.before) } else { expected });
        let fatal = out.events.iter().any(MonitorEvent::is_fatal);
        if fatal != expect_min_fatal {
            return Err(fail(
                format!(
                    "OverflowAtMinScale emitted={fatal}, expected {expect_min_fatal} ({} overflows in a row at min scale {})",
                    o.min_scale_run, cfg.min_scale
                ),
                step,
                &recent,
            ));
        }
        if fatal {
            // The trainer stops here with a clear error; so does the run.
            summary.stopped_at_min_scale = Some(step);
            break;
        }

        if (step + 1) % case.epoch_len == 0 {
            let rate = o.epoch_overflows as f64 / o.epoch_steps as f64;
            let anomalous = o.epoch_max > cfg.warn_threshold || rate > cfg.anomalous_overflow_rate;
            let mut expect_epoch_reset = false;
            if anomalous {
                o.anomalous_run += 1;
                if o.anomalous_run >= cfg.anomalous_epochs_before_reset {
                    o.anomalous_run = 0;
                    expect_epoch_reset = true;
                }
            } else {
                o.anomalous_run = 0;
            }
            let end = driver.end_epoch(epoch);
            let s = &end.report.stats;
            if s.steps != o.epoch_steps || s.skipped != o.epoch_overflows || s.applied + s.skipped != s.steps {
                return Err(fail(
                    format!(
                        "epoch {epoch} stats {s:?} disagree: {} steps, {} overflows",
                        o.epoch_steps, o.epoch_overflows
                    ),
                    step,
                    &recent,
                ));
            }
            let got = end.report.events.iter().any(|e| matches!(e, MonitorEvent::Reset(_)));
            if got != expect_epoch_reset {
                return Err(fail(
                    format!(
                        "epoch {epoch}: reset={got}, expected {expect_epoch_reset} (anomalous={anomalous}, {} in a row)",
                        o.anomalous_run
                    ),
                    step,
                    &recent,
                ));
            }
            if expect_epoch_reset {
                summary.resets += 1;
                let after = o.scale.min(o.reset_scale);
                if end.reset.map(|r| (r.before, r.after)) != Some((o.scale, after)) {
                    return Err(fail(
                        format!("epoch reset {:?}, expected {} -> {after}", end.reset, o.scale),
                        step,
                        &recent,
                    ));
                }
                o.scale = after;
                o.growth_tracker = 0;
                o.hysteresis_left = cfg.hysteresis;
                o.above = after > cfg.warn_threshold;
            }
            if driver.scale() != o.scale {
                return Err(fail(
                    format!("scale {} after epoch end, expected {}", driver.scale(), o.scale),
                    step,
                    &recent,
                ));
            }
            epoch += 1;
            o.epoch_steps = 0;
            o.epoch_overflows = 0;
            o.epoch_max = f64::MIN;
        }
    }

    let stats = driver.stats();
    if stats.steps != summary.steps
        || stats.skipped != summary.overflows
        || stats.overflows != summary.overflows
        || stats.applied != summary.steps - summary.overflows
        || stats.resets != summary.resets
        || stats.warnings != summary.warnings
    {
        return Err(fail(
            format!(
                "stats do not add up: {stats:?} vs steps={} overflows={} resets={} warnings={}",
                summary.steps, summary.overflows, summary.resets, summary.warnings
            ),
            summary.steps,
            &recent,
        ));
    }
    Ok(summary)
}

/// FNV-1a step over a 64-bit word.
pub fn mix(hash: &mut u64, word: u64) {
    for b in word.to_le_bytes() {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_seeds_keep_every_rule() {
        for seed in 0..200 {
            let case = ScalerCase::draw(seed, 5_000);
            if let Err(f) = run(&case) {
                panic!("seed {seed} {case}: {} at step {}\n{}", f.invariant, f.step, f.recent.join("\n"));
            }
        }
    }

    #[test]
    fn nan_storms_at_the_floor_stop_the_run() {
        // A storm long enough to back off to the floor must end in OverflowAtMinScale.
        let stopped = (0..200)
            .filter_map(|seed| run(&ScalerCase::draw(seed, 20_000)).ok())
            .filter(|s| s.stopped_at_min_scale.is_some())
            .count();
        assert!(stopped > 0, "no seed reached the minimum-scale verdict");
    }

    #[test]
    fn same_case_same_hash() {
        let case = ScalerCase::draw(9, 3_000);
        assert_eq!(run(&case).unwrap().hash, run(&case).unwrap().hash);
    }
}
