//! The training loop: batches, the mixed-precision step under the loss scaler, validation with
//! early stopping, Informer's per-epoch learning-rate halving, and the test report next to a
//! persistence baseline.

use super::amp;
use super::data::{Dataset, N_TIME_FEATURES, Normalization, Split};
use super::model::{Ctx, Informer, ModelConfig, Params};
use super::optim::Adam;
use crate::metrics::TrainingSnapshot;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use keel_core::config::{ScaleChoice, ScalerConfig, TrainConfig};
use keel_core::monitor::ScalerDriver;
use keel_core::rng::Rng;
use keel_core::scaler::StepDecision;
use keel_core::stats::training::TrainingStats;
use serde::{Deserialize, Serialize};

/// One batch of windows, as f32 tensors on the device.
pub struct Batch {
    /// Encoder input `(B, seq_len, c_in)`.
    pub x_enc: Tensor,
    /// Its calendar features `(B, seq_len, 5)`.
    pub mark_enc: Tensor,
    /// Decoder input `(B, label_len + pred_len, c_in)`: known steps, then zeros.
    pub x_dec: Tensor,
    /// Its calendar features.
    pub mark_dec: Tensor,
    /// Targets `(B, pred_len, c_out)`.
    pub y: Tensor,
    /// Last observed value of each output column `(B, 1, c_out)`, for the persistence baseline.
    pub last: Tensor,
}

/// Builds the batch of windows starting at `starts` (Informer's `Dataset_Custom.__getitem__`).
pub fn make_batch(split: &Split, starts: &[usize], norm: &Normalization, dev: &Device) -> candle_core::Result<Batch> {
    let w = split.w;
    let (c_in, c_out, o) = (norm.c_in(), norm.c_out(), norm.out_start());
    let ld = w.label_len + w.pred_len;
    let b = starts.len();
    let (mut xe, mut me, mut xd, mut md, mut y, mut last) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for &s in starts {
        for t in s..s + w.seq_len {
            xe.extend_from_slice(&split.values[t]);
            me.extend_from_slice(&split.marks[t]);
        }
        last.extend_from_slice(&split.values[s + w.seq_len - 1][o..]);
        let r0 = s + w.seq_len - w.label_len;
        for (k, t) in (r0..r0 + ld).enumerate() {
            if k < w.label_len {
                xd.extend_from_slice(&split.values[t]);
            } else {
                xd.extend(std::iter::repeat_n(0f32, c_in));
                y.extend_from_slice(&split.values[t][o..]);
            }
            md.extend_from_slice(&split.marks[t]);
        }
    }
    Ok(Batch {
        x_enc: Tensor::from_vec(xe, (b, w.seq_len, c_in), dev)?,
        mark_enc: Tensor::from_vec(me, (b, w.seq_len, N_TIME_FEATURES), dev)?,
        x_dec: Tensor::from_vec(xd, (b, ld, c_in), dev)?,
        mark_dec: Tensor::from_vec(md, (b, ld, N_TIME_FEATURES), dev)?,
        y: Tensor::from_vec(y, (b, w.pred_len, c_out), dev)?,
        last: Tensor::from_vec(last, (b, 1, c_out), dev)?,
    })
}

/// One point of the loss curves (for the plot).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    /// Global step (0-based).
    pub step: u64,
    /// Training loss of the batch (unscaled MSE).
    pub loss: f64,
    /// Loss scale used for the step.
    pub scale: f64,
    /// Whether the step was skipped.
    pub skipped: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The scaler monitor's statistics.
    #[serde(flatten)]
    pub stats: TrainingStats,
    /// Test MSE (standardized units, as Informer reports it).
    pub test_mse: f64,
    /// Test MAE.
    pub test_mae: f64,
    /// MSE of repeating the last observed value on the same test windows.
    pub baseline_mse: f64,
    /// MAE of that baseline.
    pub baseline_mae: f64,
    /// Training batches whose loss was NaN or infinite.
    pub nan_losses: u64,
    /// Epochs run (early stopping may end before `epochs`).
    pub epochs_run: u32,
    /// Best validation loss and its epoch.
    pub best_val_loss: f64,
    /// Epoch (0-based) of the best validation loss, whose weights are kept.
    pub best_epoch: u32,
    /// Mean wall time of a training step, in milliseconds.
    pub step_ms: f64,
}

/// Settings of a run beyond `TrainConfig` and `ScalerConfig`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Device.
    pub device: Device,
    /// Pin the loss scale at 1 (allowed with f32 only): overflow checks and skips stay on.
    pub disable_scaler: bool,
    /// Cap on training batches per epoch and on validation/test batches (quick runs, tests).
    pub max_batches: Option<usize>,
    /// Draw a progress bar.
    pub progress: bool,
}

/// The model, its f32 master weights, the optimizer and the scaler.
pub struct Trainer {
    /// The network.
    pub model: Informer,
    /// Its master weights.
    pub params: Params,
    /// Adam over the masters.
    pub adam: Adam,
    /// LossScaler + ScaleMonitor.
    pub driver: ScalerDriver,
    /// Compute dtype.
    pub dtype: DType,
    /// Model and optimizer settings.
    pub cfg: TrainConfig,
    /// Step curves so far.
    pub curve: Vec<StepPoint>,
    /// Where the run stands, the only owner of the validation curve, the NaN-loss count and the
    /// last grad norm: `train_step` and the epoch loop keep it current, a resumable checkpoint
    /// saves a copy and a resume restores it.
    pub state: LoopState,
    /// Where to publish the scaler stats after every step (`--metrics-addr`).
    pub metrics: Option<crate::metrics::Metrics>,
    step: u64,
    opts: RunOptions,
    /// The threads the step's numeric work runs on (see [`Trainer::in_pool`]).
    pool: std::sync::Arc<rayon::ThreadPool>,
}

/// The `grad_norm` field of scaler log lines: NaN (`null` in JSON) when no norm was measured
/// (an overflowing step has none).
pub fn norm_field(norm: Option<f64>) -> f64 {
    norm.unwrap_or(f64::NAN)
}

/// The scaler config actually used: with the scaler disabled, a scale pinned at 1.
pub fn effective_scaler(cfg: &ScalerConfig, disabled: bool) -> ScalerConfig {
    if disabled {
        ScalerConfig {
            init_scale: ScaleChoice::Fixed(1.0),
            reset_scale: ScaleChoice::Fixed(1.0),
            min_scale: 1.0,
            max_scale: 1.0,
            ..cfg.clone()
        }
    } else {
        cfg.clone()
    }
}

/// The model shape for a dataset and a config.
pub fn model_config(cfg: &TrainConfig, norm: &Normalization) -> ModelConfig {
    ModelConfig {
        c_in: norm.c_in(),
        c_out: norm.c_out(),
        n_time: N_TIME_FEATURES,
        seq_len: cfg.seq_len as usize,
        label_len: cfg.label_len as usize,
        pred_len: cfg.pred_len as usize,
        d_model: cfg.d_model as usize,
        n_heads: cfg.n_heads as usize,
        e_layers: cfg.e_layers as usize,
        d_layers: cfg.d_layers as usize,
        d_ff: cfg.d_ff as usize,
        dropout: cfg.dropout,
        factor: cfg.factor as usize,
        distil: true,
        instance_norm: cfg.instance_norm,
    }
}

/// Keeps glibc's allocator from handing every large tensor back to the kernel.
///
/// A training step allocates and frees hundreds of tensors of 1 to 30 MB (base preset). glibc
/// serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh `mmap` and
/// returns them with `munmap`, and trims the heap top above 128 KiB, so each such tensor costs page
/// faults and kernel page zeroing on first touch: measured as a quarter of the CPU time of a base
/// step, half of its backward pass. Raising the mmap and trim thresholds lets freed blocks be
/// reused; the process keeps its peak heap mapped instead (peak RSS is unchanged). Process-wide and
/// set once; a no-op on other platforms.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; it is called before the
            // training allocations and takes effect for later ones.
            unsafe {
                if libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 0 {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                }
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
                // One arena: the step runs on whichever worker of the trainer's pool picks it up,
                // and with a glibc arena per thread each worker's arena kept a whole step's worth
                // of freed buffers (peak RSS of the small preset 163 -> 310 MiB with 2 workers).
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        });
    }
}

/// Runs candle's elementwise ops on the calling thread unless `CANDLE_NUM_THREADS` is set.
///
/// candle 0.11 splits every elementwise op above 64 Ki elements (in training, mostly the
/// backward pass's gradient accumulations) over a pool whose caller spin-waits for its partner
/// threads. When the machine has fewer free cores than threads, a partner is often descheduled
/// and the caller spins for the rest of its time slice: measured on the 2-core build machine at
/// load 4 to 5, the small preset's step took 920 to 940 ms with the pool at 2 threads against
/// 130 to 183 ms without it (matmuls still at 2 threads through `RAYON_NUM_THREADS`), and
/// 172 ms at one thread. These ops are memory-bound, so the pool gains little even on an idle
/// machine. candle reads the variable when it first builds the pool; setting
/// `CANDLE_NUM_THREADS` (e.g. to the core count) restores the pool.
///
/// candle has no API for this, only the environment, and changing the environment is only sound
/// while no other thread can read it (glibc's `getenv` is not synchronized with `setenv`): hence
/// a function for the first line of `main`, not a side effect of building a trainer (a process
/// that trains may already run the exchange, the metrics server or smol's reactor).
///
/// # Safety
/// No other thread may exist yet (call it first thing in `main`).
pub unsafe fn elementwise_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees the process is still single-threaded.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// The trainer's thread pool: candle's matmul thread count, with the main thread's 8 MiB stack
/// (the backward pass walks the graph recursively).
fn step_pool() -> anyhow::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(candle_core::utils::get_num_threads())
        .stack_size(8 << 20)
        .thread_name(|i| format!("keel-train-{i}"))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the training threads: {e}"))
}

impl Trainer {
    /// A fresh model for `mcfg`, seeded by `cfg.seed`.
    pub fn new(mcfg: &ModelConfig, cfg: &TrainConfig, scaler: &ScalerConfig, opts: RunOptions) -> anyhow::Result<Self> {
        tune_allocator();
        let dtype = amp::dtype_of(cfg.dtype);
        super::model::informer::check_dtype(dtype, &opts.device)?;
        if opts.disable_scaler && dtype != DType::F32 {
            anyhow::bail!("the loss scaler can only be disabled with --dtype f32 (f16 gradients underflow without it)");
        }
        let mut params = Params::new(cfg.seed, &opts.device);
        let model = Informer::new(mcfg, &mut params)?;
        let adam = Adam::new(&params, cfg.learning_rate)?;
        let driver = ScalerDriver::new(&effective_scaler(scaler, opts.disable_scaler), params.count());
        let pool = std::sync::Arc::new(step_pool()?);
        Ok(Trainer {
            model,
            params,
            adam,
            driver,
            dtype,
            cfg: cfg.clone(),
            curve: Vec::new(),
            state: LoopState::start(cfg.seed, cfg.learning_rate),
            metrics: None,
            step: 0,
            opts,
            pool,
        })
    }

    /// Runs `f` on a worker of the trainer's thread pool (as many threads as candle's matmuls use:
    /// `RAYON_NUM_THREADS`, else the physical cores), where gemm's and keel's fused kernels' row
    /// splits run as rayon joins: the calling worker takes a share itself and the other workers
    /// steal the rest. Called from a thread outside any pool, as before, every matmul handed
    /// all its work to rayon's global pool and slept until it was done, two thread wake-ups per
    /// product (a few hundred per step), which made the small preset's 2-thread step slower than
    /// its 1-thread one (119 to 129 against 95 to 100 ms on an idle machine).
    pub fn in_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        let pool = self.pool.clone();
        pool.install(|| f(self))
    }

    /// One mixed-precision step: forward in the compute dtype, f32 loss times the scale, backward
    /// onto the f32 masters, NaN/Inf check, then unscale + clip + Adam or skip, and the scaler.
    /// Returns the unscaled loss.
    pub fn train_step(&mut self, batch: &Batch, epoch: u32, batch_no: usize) -> anyhow::Result<f64> {
        let step = self.step;
        self.step += 1;
        let scale = self.driver.scale();
        // The numeric work on the pool; logging and the scaler stay on the caller's thread (its
        // tracing subscriber may be thread-local).
        let (out32, loss_value, grads, found_inf, norm) = self.in_pool(|tr| -> anyhow::Result<_> {
            let ctx = Ctx::new(tr.dtype, true, tr.cfg.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let out = tr.model.forward(&batch.x_enc, &batch.mark_enc, &batch.x_dec, &batch.mark_dec, &ctx)?;
            let out32 = out.to_dtype(DType::F32)?;
            let loss = (&out32 - &batch.y)?.sqr()?.mean_all()?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            let grads = (&loss * scale)?.backward()?;
            let grads = amp::collect(&grads, &tr.params)?;
            // One read of the gradients for the inf check and the norm; unscaling and clipping
            // are folded into Adam's update as one factor.
            let (found_inf, norm) = amp::check_and_norm(&grads, scale)?;
            Ok((out32, loss_value, grads, found_inf, norm))
        })?;
        if !loss_value.is_finite() {
            self.state.nan_losses += 1;
        }
        let grad_norm = (!found_inf).then_some(norm);
        if grad_norm.is_some() {
            self.state.last_grad_norm = grad_norm;
        }
        let outcome = self.driver.step(step, found_inf, grad_norm);
        let skipped = match (outcome.decision, grad_norm) {
            (StepDecision::Apply, Some(norm)) => {
                let mul = amp::clip_coef(norm, self.cfg.clip_grad_norm) / scale;
                self.in_pool(|tr| tr.adam.step_scaled(&tr.params, &grads, mul))?;
                false
            }
            _ => true,
        };
        self.curve.push(StepPoint { step, loss: loss_value, scale, skipped });
        if !outcome.events.is_empty() || outcome.reset.is_some() {
            let (mean, std, maxabs) = amp::output_stats(&out32)?;
            for e in &outcome.events {
                tracing::warn!(
                    epoch,
                    batch = batch_no,
                    step,
                    scale,
                    grad_norm = norm_field(grad_norm),
                    found_inf,
                    out_mean = mean,
                    out_std = std,
                    out_maxabs = maxabs,
                    "loss scaler: {e}"
                );
            }
            if let Some(r) = outcome.reset {
                tracing::warn!(
                    epoch,
                    batch = batch_no,
                    step,
                    scale = r.after,
                    grad_norm = norm_field(grad_norm),
                    "loss scale reset from {} to {}",
                    r.before,
                    r.after
                );
            }
            if let Some(fatal) = outcome.events.iter().find(|e| e.is_fatal()) {
                anyhow::bail!("training stopped at epoch {epoch}, batch {batch_no}: {fatal}");
            }
        }
        Ok(loss_value)
    }

    /// Mean MSE and MAE of the model, and of the persistence baseline, over a split (eval mode).
    pub fn evaluate(&mut self, split: &Split, norm: &Normalization) -> anyhow::Result<Errors> {
        self.in_pool(|tr| tr.evaluate_here(split, norm))
    }

    fn evaluate_here(&self, split: &Split, norm: &Normalization) -> anyhow::Result<Errors> {
        let bs = self.cfg.batch_size.max(1) as usize;
        let starts: Vec<usize> = (0..split.len()).collect();
        let mut e = Errors::default();
        let mut n = 0usize;
        for (bi, chunk) in starts.chunks(bs).enumerate() {
            if self.opts.max_batches.is_some_and(|m| bi >= m) {
                break;
            }
            let b = make_batch(split, chunk, norm, &self.opts.device)?;
            let ctx = Ctx::new(self.dtype, false, self.cfg.seed);
            let out = self.model.forward(&b.x_enc, &b.mark_enc, &b.x_dec, &b.mark_dec, &ctx)?.to_dtype(DType::F32)?;
            let d = (&out - &b.y)?;
            let base = b.last.broadcast_sub(&b.y)?;
            let k = d.elem_count();
            let sum = |t: Tensor| -> candle_core::Result<f64> { Ok(t.sum_all()?.to_scalar::<f32>()? as f64) };
            e.mse += sum(d.sqr()?)?;
            e.mae += sum(d.abs()?)?;
            e.baseline_mse += sum(base.sqr()?)?;
            e.baseline_mae += sum(base.abs()?)?;
            n += k;
        }
        if n == 0 {
            // Means over nothing: 0/1 reported a perfect model (test MSE 0.0000) for a run that
            // evaluated no window.
            anyhow::bail!(
                "no window was evaluated ({} windows, batch size {bs}, max_batches {:?}): every error would be \
                 made up; give --max-batches at least 1 and data with windows in each part",
                split.len(),
                self.opts.max_batches
            );
        }
        let n = n as f64;
        Ok(Errors {
            mse: e.mse / n,
            mae: e.mae / n,
            baseline_mse: e.baseline_mse / n,
            baseline_mae: e.baseline_mae / n,
        })
    }

    /// Trains with early stopping on validation loss; keeps the best epoch's weights.
    pub fn fit(&mut self, data: &Dataset) -> anyhow::Result<Report> {
        self.fit_from(data, None, |_, _, _| Ok(()), |_| false)
    }

    /// [`Trainer::fit`] from a saved point: `resume` is the loop state and best weights (params,
    /// then buffers, as [`Trainer::snapshot`]) a checkpoint kept, with the weights, Adam and the
    /// scaler already restored into `self`; `None` starts at epoch 0. `on_epoch` runs after every
    /// epoch with the state the next epoch starts from and the best weights so far (a resumable
    /// checkpoint), before an early stop ends the loop. `stop` is asked after every step with the
    /// global step count: `true` (Ctrl-C) hands `on_epoch` the state in the middle of the epoch
    /// (`batch > 0`) and ends with [`Interrupted`].
    pub fn fit_from(
        &mut self,
        data: &Dataset,
        resume: Option<(LoopState, Option<Vec<Tensor>>)>,
        mut on_epoch: impl FnMut(&mut Self, &LoopState, Option<&[Tensor]>) -> anyhow::Result<()>,
        stop: impl Fn(u64) -> bool,
    ) -> anyhow::Result<Report> {
        let bs = self.cfg.batch_size.max(1) as usize;
        let n_train = data.train.len();
        if n_train < bs {
            anyhow::bail!(
                "the training part has {n_train} windows, fewer than one batch of {bs}; use a smaller --batch-size or more data"
            );
        }
        let (mut first_batch, mut first_loss_sum, mut best_weights, mut step_time) = match resume {
            Some((s, weights)) => {
                self.step = s.step;
                self.adam.lr = s.lr;
                let secs = std::time::Duration::try_from_secs_f64(s.step_secs).unwrap_or_default();
                // (An early stop is decided again at the end of each epoch.)
                self.state = LoopState { stopped_early: false, ..s };
                (self.state.batch, self.state.epoch_loss_sum, weights, secs)
            }
            None => {
                // A fresh loop; the trainer's counters (NaN losses, grad norm, curve) carry on.
                self.state = LoopState {
                    nan_losses: self.state.nan_losses,
                    last_grad_norm: self.state.last_grad_norm,
                    val_curve: std::mem::take(&mut self.state.val_curve),
                    ..LoopState::start(self.cfg.seed, self.adam.lr)
                };
                (0, 0.0, None, std::time::Duration::ZERO)
            }
        };
        let first_epoch = self.state.next_epoch;
        let mut rng = self.state.shuffle.clone();
        let mut epochs_run = first_epoch;
        for epoch in first_epoch..self.cfg.epochs {
            epochs_run = epoch + 1;
            // Shuffled windows, whole batches only (Informer's drop_last for training).
            let mut order: Vec<usize> = (0..n_train).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let mut n_batches = n_train / bs;
            if let Some(m) = self.opts.max_batches {
                n_batches = n_batches.min(m);
            }
            let bar = if self.opts.progress { ProgressBar::new(n_batches as u64) } else { ProgressBar::hidden() };
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, self.cfg.epochs));
            // A resume in the middle of this epoch: the same order, the batches not yet run.
            let (start_batch, mut loss_sum) = (first_batch.min(n_batches), first_loss_sum);
            (first_batch, first_loss_sum) = (0, 0.0);
            bar.set_position(start_batch as u64);
            for bi in start_batch..n_batches {
                let batch = make_batch(&data.train, &order[bi * bs..(bi + 1) * bs], &data.norm, &self.opts.device)?;
                let t0 = std::time::Instant::now();
                let loss = self.train_step(&batch, epoch, bi)?;
                step_time += t0.elapsed();
                loss_sum += loss;
                let st = self.driver.stats();
                if let Some(m) = &self.metrics {
                    m.set_training(TrainingSnapshot { stats: st.clone(), epoch, step: self.step, loss: Some(loss) });
                }
                bar.set_message(format!("loss {loss:.4} scale {:.0} skipped {}", self.driver.scale(), st.skipped));
                bar.inc(1);
                if stop(self.step) {
                    bar.finish_and_clear();
                    // `state.shuffle` is still the generator this epoch's order was drawn from.
                    let state = self.loop_state(epoch, bi + 1, loss_sum, step_time);
                    on_epoch(self, &state, best_weights.as_deref())?;
                    return Err(Interrupted { epoch, batch: bi + 1 }.into());
                }
            }
            bar.finish_and_clear();
            let outcome = self.driver.end_epoch(epoch);
            let (step, scale, grad_norm) = (self.step, self.driver.scale(), norm_field(self.state.last_grad_norm));
            for e in &outcome.report.events {
                tracing::warn!(epoch, step, scale, grad_norm, "loss scaler: {e}");
            }
            if let Some(r) = outcome.reset {
                tracing::warn!(epoch, step, scale, grad_norm, "loss scale reset from {} to {}", r.before, r.after);
            }
            let val = self.evaluate(&data.val, &data.norm)?.mse;
            self.state.val_curve.push((self.step, val));
            tracing::info!(
                epoch,
                train_loss = loss_sum / n_batches.max(1) as f64,
                val_loss = val,
                step,
                scale,
                grad_norm,
                skipped = outcome.report.stats.skipped,
                lr = self.adam.lr,
                "epoch done"
            );
            let mut stop = false;
            if val < self.state.best_val_loss.unwrap_or(f64::INFINITY) {
                self.state.best_val_loss = Some(val);
                self.state.best_epoch = epoch;
                self.state.since_best = 0;
                best_weights = Some(self.snapshot()?);
            } else {
                self.state.since_best += 1;
                stop = self.state.since_best >= self.cfg.patience.max(1);
                if stop {
                    tracing::info!(
                        epoch,
                        patience = self.cfg.patience,
                        "early stopping: validation loss stopped improving"
                    );
                }
            }
            if !stop {
                // Informer's `adjust_learning_rate` type1: halve after every epoch.
                self.adam.lr *= 0.5;
            }
            self.state.stopped_early = stop;
            self.state.shuffle = rng.clone();
            let state = self.loop_state(epoch + 1, 0, 0.0, step_time);
            on_epoch(self, &state, best_weights.as_deref())?;
            if stop {
                break;
            }
        }
        if self.state.best_val_loss.is_none() && !self.state.val_curve.is_empty() {
            // Every epoch's validation loss was NaN or infinite: the weights (the last epoch's, as
            // none was best) forecast nothing, and a test MSE of NaN next to an exit code 0 would
            // pass for a result. The caller decides what becomes of the checkpoints saved so far.
            return Err(Diverged {
                val_losses: self.state.val_curve.iter().map(|&(_, v)| v).collect(),
                nan_losses: self.state.nan_losses,
                steps: self.step,
                lr: self.cfg.learning_rate,
            }
            .into());
        }
        if let Some(w) = best_weights {
            self.restore(&w)?;
        }
        let step_ms = step_time.as_secs_f64() * 1000.0 / self.step.max(1) as f64;
        let test = self.evaluate(&data.test, &data.norm)?;
        Ok(Report {
            stats: self.driver.stats(),
            test_mse: test.mse,
            test_mae: test.mae,
            baseline_mse: test.baseline_mse,
            baseline_mae: test.baseline_mae,
            nan_losses: self.state.nan_losses,
            epochs_run,
            best_val_loss: self.state.best_val_loss.unwrap_or(f64::INFINITY),
            best_epoch: self.state.best_epoch,
            step_ms,
        })
    }

    /// The loop state `on_epoch` gets: `self.state` with the loop's position, the step count, the
    /// learning rate and the step time filled in.
    fn loop_state(
        &mut self,
        next_epoch: u32,
        batch: usize,
        epoch_loss_sum: f64,
        step_time: std::time::Duration,
    ) -> LoopState {
        let s = &mut self.state;
        (s.next_epoch, s.batch, s.epoch_loss_sum) = (next_epoch, batch, epoch_loss_sum);
        (s.step, s.lr, s.step_secs) = (self.step, self.adam.lr, step_time.as_secs_f64());
        s.clone()
    }

    /// Copies of the weights and buffers (for keeping the best epoch): params in
    /// [`Params::named`] order, then [`Informer::buffers`].
    pub fn snapshot(&self) -> candle_core::Result<Vec<Tensor>> {
        let mut v: Vec<Tensor> =
            self.params.named().iter().map(|(_, var)| var.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        v.extend(self.model.buffers().into_iter().map(|(_, t)| t));
        Ok(v)
    }

    fn restore(&self, snap: &[Tensor]) -> candle_core::Result<()> {
        let n = self.params.named().len();
        for ((_, var), t) in self.params.named().iter().zip(snap) {
            var.set(t)?;
        }
        for ((name, _), t) in self.model.buffers().into_iter().zip(&snap[n..]) {
            self.model.set_buffer(&name, t.clone());
        }
        Ok(())
    }
}

/// Where the epoch loop stands after an epoch: what an exact resume needs besides the weights,
/// Adam and the scaler (a checkpoint keeps it in its metadata). Dropout needs no state of its own:
/// each step's mask is seeded by `seed ^ f(step)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// The epoch the run continues with (0-based; the number of epochs finished).
    pub next_epoch: u32,
    /// Batches of `next_epoch` already run (0: it has not started; more after a Ctrl-C).
    #[serde(default)]
    pub batch: usize,
    /// Sum of their losses (the epoch's mean training loss in the log).
    #[serde(default)]
    pub epoch_loss_sum: f64,
    /// Global steps taken, applied or skipped.
    pub step: u64,
    /// Early stopping ended the run after this epoch.
    pub stopped_early: bool,
    /// Best validation loss so far (`None` before a finite one).
    pub best_val_loss: Option<f64>,
    /// Its epoch (0-based).
    pub best_epoch: u32,
    /// Epochs since it, for the patience rule.
    pub since_best: u32,
    /// The shuffling generator, ready to draw `next_epoch`'s order (also when `batch > 0`: the
    /// order is drawn again).
    pub shuffle: Rng,
    /// Learning rate of the next epoch (halved after each).
    pub lr: f64,
    /// Training batches with a non-finite loss so far.
    pub nan_losses: u64,
    /// Grad norm of the last applied step (log lines).
    pub last_grad_norm: Option<f64>,
    /// Validation loss per finished epoch, with its step.
    pub val_curve: Vec<(u64, f64)>,
    /// Wall time of the training steps so far, in seconds (the report's mean step time).
    pub step_secs: f64,
}

impl LoopState {
    /// The state before the first epoch: shuffling seeded by `seed`, learning rate `lr`.
    pub fn start(seed: u64, lr: f64) -> Self {
        LoopState {
            next_epoch: 0,
            batch: 0,
            epoch_loss_sum: 0.0,
            step: 0,
            stopped_early: false,
            best_val_loss: None,
            best_epoch: 0,
            since_best: 0,
            shuffle: Rng::new(seed),
            lr,
            nan_losses: 0,
            last_grad_norm: None,
            val_curve: Vec::new(),
            step_secs: 0.0,
        }
    }
}

/// Training stopped on request (Ctrl-C) after a step, its state handed to `on_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("training interrupted in epoch {} after batch {batch}", epoch + 1)]
pub struct Interrupted {
    /// Epoch (0-based).
    pub epoch: u32,
    /// Batches of it that ran.
    pub batch: usize,
}

/// A run in which no epoch had a finite validation loss: there are no weights worth keeping.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "training diverged: no epoch had a finite validation loss ({}; {nan_losses} of {steps} training batches had a \
     NaN/inf loss), so there are no usable weights. Lower the learning rate (--lr, was {lr:e}), check the data for \
     outliers or a column whose scale changes over time, or train with --dtype f32 to rule out f16 overflow",
    epoch_losses(.val_losses)
)]
pub struct Diverged {
    /// Validation loss of every epoch run, in order (each NaN or infinite).
    pub val_losses: Vec<f64>,
    /// Training batches whose loss was NaN or infinite.
    pub nan_losses: u64,
    /// Training steps taken.
    pub steps: u64,
    /// The run's initial learning rate.
    pub lr: f64,
}

/// `epoch 1: NaN, epoch 2: inf`, shortened to the first and last three epochs of a long run.
fn epoch_losses(v: &[f64]) -> String {
    let item = |i: usize| format!("epoch {}: {}", i + 1, v[i]);
    if v.len() <= 6 {
        (0..v.len()).map(item).collect::<Vec<_>>().join(", ")
    } else {
        let n = v.len();
        format!(
            "{}, ..., {}",
            (0..3).map(item).collect::<Vec<_>>().join(", "),
            (n - 3..n).map(item).collect::<Vec<_>>().join(", ")
        )
    }
}

/// Error sums turned into means.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Errors {
    /// Model MSE.
    pub mse: f64,
    /// Model MAE.
    pub mae: f64,
    /// Persistence MSE.
    pub baseline_mse: f64,
    /// Persistence MAE.
    pub baseline_mae: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::{self, Windows};
    use keel_core::config::{ComputeDtype, Features};

    /// The step as it was before the fused ops and optimizer: the model's composite candle ops
    /// (no fused layer norm, softmax, Linear, dropout, ...), tensor-op inf check, unscale and clip,
    /// and tensor-op Adam (the reference the fused step must reproduce).
    fn reference_step(tr: &mut Trainer, adam: &mut Adam, batch: &Batch) -> f64 {
        crate::train::model::fused::with_composite(|| reference_step_inner(tr, adam, batch))
    }

    fn reference_step_inner(tr: &mut Trainer, adam: &mut Adam, batch: &Batch) -> f64 {
        let step = tr.step;
        tr.step += 1;
        let ctx = Ctx::new(tr.dtype, true, tr.cfg.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let out = tr.model.forward(&batch.x_enc, &batch.mark_enc, &batch.x_dec, &batch.mark_dec, &ctx).unwrap();
        let loss = (out.to_dtype(DType::F32).unwrap() - &batch.y).unwrap().sqr().unwrap().mean_all().unwrap();
        let scale = tr.driver.scale();
        let grads = (&loss * scale).unwrap().backward().unwrap();
        let grads = amp::collect(&grads, &tr.params).unwrap();
        let found_inf = amp::found_inf(&grads).unwrap();
        let clipped = (!found_inf).then(|| amp::unscale_and_clip(&grads, scale, tr.cfg.clip_grad_norm).unwrap());
        let outcome = tr.driver.step(step, found_inf, clipped.as_ref().map(|c| c.1));
        if let (StepDecision::Apply, Some((g, _))) = (outcome.decision, clipped) {
            adam.step(&tr.params, &g).unwrap();
        }
        loss.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn fused_step_reproduces_the_tensor_op_step_on_a_fixed_seed() {
        let mut cfg = TrainConfig {
            seq_len: 16,
            label_len: 8,
            pred_len: 4,
            d_model: 16,
            n_heads: 2,
            d_ff: 32,
            batch_size: 4,
            // A large rate and a tight clip so that the steps move the weights and clip.
            learning_rate: 1e-2,
            clip_grad_norm: 0.5,
            // Under test are keel's fused kernels against candle's composite ops; the instance
            // normalization is plain candle ops on both sides. With it on, the windows of this
            // short sine table are scaled up and f16 rounding moves some Adam steps of the key
            // weights past the f16 tolerance below (0.0017 against 0.001).
            instance_norm: false,
            ..TrainConfig::default()
        };
        for dtype in [ComputeDtype::F32, ComputeDtype::F16] {
            cfg.dtype = dtype;
            let rows: Vec<Vec<f64>> =
                (0..80).map(|i| (0..6).map(|c| ((i * (c + 1)) as f64 * 0.37).sin()).collect()).collect();
            let table = data::Table {
                columns: ["Open", "High", "Low", "Close", "Volume", "Adj Close"].map(String::from).to_vec(),
                times_ms: (0..80).map(|i| 1_600_000_000_000 + i * 86_400_000).collect(),
                rows,
            };
            let w = Windows { seq_len: 16, label_len: 8, pred_len: 4 };
            let ds = data::prepare(&table, "Close", Features::MS, w).unwrap();
            let mcfg = model_config(&cfg, &ds.norm);
            let opts = RunOptions { device: Device::Cpu, disable_scaler: false, max_batches: None, progress: false };
            let mut fused = Trainer::new(&mcfg, &cfg, &ScalerConfig::default(), opts.clone()).unwrap();
            let mut reference = Trainer::new(&mcfg, &cfg, &ScalerConfig::default(), opts).unwrap();
            let mut adam = Adam::with_tensor_ops(&reference.params, cfg.learning_rate).unwrap();
            for s in 0..4 {
                let starts: Vec<usize> = (0..4).map(|j| s * 4 + j).collect();
                let batch = make_batch(&ds.train, &starts, &ds.norm, &Device::Cpu).unwrap();
                let a = fused.train_step(&batch, 0, s).unwrap();
                let b = reference_step(&mut reference, &mut adam, &batch);
                let tol = if dtype == ComputeDtype::F32 { 1e-5 } else { 1e-3 };
                assert!((a - b).abs() <= tol * b.abs().max(1.0), "{dtype:?} step {s}: loss {a} vs {b}");
                assert_eq!(fused.driver.scale(), reference.driver.scale(), "{dtype:?} step {s}");
            }
            assert_eq!(fused.adam.steps(), adam.steps());
            assert!(fused.adam.steps() >= 2, "{dtype:?}: only {} steps applied", fused.adam.steps());
            // Two kinds of weight have a gradient that is exactly zero in exact arithmetic, so only
            // rounding noise reaches them, which Adam (dividing by sqrt(v)) turns into steps of up to
            // lr in either direction: key biases (softmax ignores a score shift shared by all keys),
            // and the distilling conv's bias and the norm bias before it (the BatchNorm that follows
            // removes per-channel shifts). Every other weight must match.
            let zero_grad =
                |n: &str| n.ends_with(".key.bias") || n == "encoder.0.norm2.bias" || n == "distil.0.conv.bias";
            for ((name, x), (_, y)) in fused.params.named().iter().zip(reference.params.named()) {
                let d = (x.as_tensor() - y.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
                let d = d.to_scalar::<f32>().unwrap();
                let tol = match (zero_grad(name), dtype) {
                    (true, _) => 4.0 * cfg.learning_rate as f32,
                    (false, ComputeDtype::F32) => 2e-5,
                    (false, _) => 0.1 * cfg.learning_rate as f32,
                };
                assert!(d < tol, "{dtype:?} {name}: weights differ by {d} after 4 steps");
            }
        }
    }
}
