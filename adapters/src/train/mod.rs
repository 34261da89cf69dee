//! `keel train` and `keel predict`: the candle Informer with mixed precision and the loss scaler.
//!
//! `keel train` loads and validates the data before building any tensor, trains with the loss
//! scaler deciding every step, stops early on validation loss, writes a checkpoint (safetensors +
//! RON metadata), a PNG of the loss and scale curves, and reports test MSE/MAE next to a
//! persistence baseline. `keel predict` loads a checkpoint and forecasts after the last row.
//! `keel train --resume DIR` continues an interrupted run exactly (see [`checkpoint`]): the loop
//! saves after every `train.checkpoint_every` epochs and, on Ctrl-C, after the current step.
//!
//! Threads: the step's numeric work runs on the trainer's own rayon pool of `RAYON_NUM_THREADS`
//! threads (default: the physical cores; [`trainer::Trainer::in_pool`]), where gemm's splits, keel's
//! fused kernels ([`model::fused`]: rows in fixed parts, the same bits at any thread count) and
//! the attention's per-head products share the cores; rayon's idle workers yield and then sleep,
//! so a busy CPU costs no spinning. candle's own elementwise ops (mostly the backward pass's
//! gradient accumulation) run on the calling thread unless `CANDLE_NUM_THREADS` is set
//! ([`trainer::elementwise_on_caller`], first line of `main`): candle's pool spin-waits at every
//! barrier. On CPU, f16 is slower than f32 (candle converts element by element); it is for checking
//! the mixed-precision path, GPUs are for speed.

pub mod amp;
pub mod checkpoint;
pub mod data;
mod font;
pub mod model;
pub mod optim;
pub mod plot;
pub mod trainer;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use keel_core::config::{ComputeDtype, Config, Features};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Model size preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelSize {
    /// d_model 64, 4 heads, d_ff 256: for CPU work and tests.
    Small,
    /// The paper's d_model 512, 8 heads, d_ff 2048.
    Base,
}

/// Compute dtype flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// Full precision.
    F32,
    /// Half precision (loss scaling needed).
    F16,
    /// bfloat16 (GPU only).
    Bf16,
}

/// Features flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FeaturesArg {
    /// Many inputs, many outputs.
    #[value(name = "M")]
    M,
    /// Target only.
    #[value(name = "S")]
    S,
    /// Many inputs, target output.
    #[value(name = "MS")]
    Ms,
}

/// Device flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DeviceArg {
    /// The CPU (default).
    #[default]
    Cpu,
    /// The first CUDA GPU (needs the `cuda` feature).
    Cuda,
}

/// Flags of `keel train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9898).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// CSV in Informer's layout (date column, then numeric columns), a recorded kline file, or a
    /// directory of recorded kline files.
    #[arg(long)]
    pub data: PathBuf,
    /// Column to forecast (kline data: open, high, low, close, volume).
    #[arg(long)]
    pub target: Option<String>,
    /// Inputs/outputs: M (all->all), S (target->target), MS (all->target).
    #[arg(long, value_enum, ignore_case = true)]
    pub features: Option<FeaturesArg>,
    /// Forward/backward dtype; master weights stay f32.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Maximum epochs.
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<u32>,
    /// Windows per batch.
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<u32>,
    /// Model size preset (overrides the config's d_model, n_heads, d_ff).
    #[arg(long, value_enum)]
    pub model_size: Option<ModelSize>,
    /// Encoder input length.
    #[arg(long, allow_negative_numbers = true)]
    pub seq_len: Option<u32>,
    /// Known steps fed to the decoder.
    #[arg(long, allow_negative_numbers = true)]
    pub label_len: Option<u32>,
    /// Steps to forecast.
    #[arg(long, allow_negative_numbers = true)]
    pub pred_len: Option<u32>,
    /// Learning rate (halved after every epoch).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Early-stopping patience in epochs.
    #[arg(long, allow_negative_numbers = true)]
    pub patience: Option<u32>,
    /// Seed of weight init, dropout, sampling and shuffling.
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// keel.ron whose `scaler` and `train` sections apply (flags override them).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Checkpoint directory (weights, metadata, resume state, loss plot), replaced atomically after
    /// every `train.checkpoint_every` epochs [default: checkpoints, or the --resume DIR].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run whose checkpoint is DIR exactly where it stopped (weights, Adam, scaler,
    /// shuffling and early-stopping state). Its settings are the checkpoint's: flags may only
    /// change --epochs and --patience, and --data must be the run's data.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Write into --out even when it holds another run's checkpoint or other files (refused
    /// otherwise: a run replaces the directory at every save).
    #[arg(long)]
    pub force: bool,
    /// Write TrainingStats plus test/baseline errors as JSON here.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Device to train on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Pin the loss scale at 1 (f32 only; overflow checks and skips stay on).
    #[arg(long)]
    pub no_scaler: bool,
    /// Cap training batches per epoch and evaluation batches (quick runs; at least 1).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_batches: Option<usize>,
    /// Kline data: also use the still-open newest candle.
    #[arg(long)]
    pub include_open_candle: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags of `keel predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Checkpoint directory written by `keel train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data in the layout the model was trained on; the forecast follows its last row.
    #[arg(long)]
    pub data: PathBuf,
    /// Write the forecast CSV here (stdout when absent).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Kline data: also use the still-open newest candle.
    #[arg(long)]
    pub include_open_candle: bool,
}

/// The device for a flag; CUDA only when built with the `cuda` feature.
pub fn device(d: DeviceArg) -> anyhow::Result<Device> {
    match d {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda if cfg!(feature = "cuda") => {
            Device::new_cuda(0).context("cannot open CUDA device 0 (check the driver and nvidia-smi)")
        }
        DeviceArg::Cuda => anyhow::bail!(
            "this keel was built without CUDA: rebuild with `cargo build --release --features cuda` (needs nvcc), or use --device cpu"
        ),
    }
}

/// The config file's sections with the flags applied.
pub fn resolve_config(args: &TrainArgs) -> anyhow::Result<Config> {
    let cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
            Config::from_ron(&text).with_context(|| format!("config {}", p.display()))?
        }
        None => Config::default(),
    };
    apply_flags(cfg, args)
}

/// `cfg` with the flags applied, validated.
fn apply_flags(mut cfg: Config, args: &TrainArgs) -> anyhow::Result<Config> {
    let t = &mut cfg.train;
    if let Some(size) = args.model_size {
        (t.d_model, t.n_heads, t.d_ff) = match size {
            ModelSize::Small => (64, 4, 256),
            ModelSize::Base => (512, 8, 2048),
        };
    }
    // The config's own check names train.learning_rate; a flag's error names the flag.
    if let Some(lr) = args.lr
        && !(lr.is_finite() && lr > 0.0)
    {
        anyhow::bail!("--lr must be > 0, got {lr}");
    }
    macro_rules! set {
        ($($flag:ident => $field:ident),*) => { $(if let Some(v) = args.$flag.clone() { t.$field = v; })* };
    }
    set!(target => target, epochs => epochs, batch_size => batch_size, seq_len => seq_len, label_len => label_len,
         pred_len => pred_len, lr => learning_rate, patience => patience, seed => seed);
    if let Some(d) = args.dtype {
        t.dtype = match d {
            DtypeArg::F32 => ComputeDtype::F32,
            DtypeArg::F16 => ComputeDtype::F16,
            DtypeArg::Bf16 => ComputeDtype::Bf16,
        };
    }
    if let Some(f) = args.features {
        t.features = match f {
            FeaturesArg::M => Features::M,
            FeaturesArg::S => Features::S,
            FeaturesArg::Ms => Features::MS,
        };
    }
    // The user typed the flag, not the key: an error about a key a flag set names the flag.
    let passed = [
        ("train.target", "--target", args.target.is_some()),
        ("train.epochs", "--epochs", args.epochs.is_some()),
        ("train.batch_size", "--batch-size", args.batch_size.is_some()),
        ("train.seq_len", "--seq-len", args.seq_len.is_some()),
        ("train.label_len", "--label-len", args.label_len.is_some()),
        ("train.pred_len", "--pred-len", args.pred_len.is_some()),
        ("train.patience", "--patience", args.patience.is_some()),
        ("train.d_model", "--model-size", args.model_size.is_some()),
        ("train.n_heads", "--model-size", args.model_size.is_some()),
        ("train.d_ff", "--model-size", args.model_size.is_some()),
    ];
    cfg.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {}", e.naming_flags(&passed)))?;
    Ok(cfg)
}

/// The saved metadata and the settings of a `--resume` run, or why it cannot resume.
fn resume_point(dir: &Path, args: &TrainArgs) -> anyhow::Result<(checkpoint::Meta, Config)> {
    if args.config.is_some() {
        anyhow::bail!(
            "--config cannot be combined with --resume: the checkpoint {} holds the run's train and scaler settings \
             (flags may change --epochs and --patience)",
            dir.display()
        );
    }
    let meta = checkpoint::load_meta(dir)?;
    let Some(r) = &meta.resume else {
        anyhow::bail!(
            "{} is a version-{} checkpoint without optimizer and loop state (written once, at the end of a run, or by \
             an older keel), so it cannot be resumed exactly; train afresh (keel predict still reads it)",
            dir.display(),
            meta.format_version
        );
    };
    let cfg = apply_flags(Config { train: meta.train.clone(), ..Config::default() }, args)?;
    let mutable = |t: &keel_core::config::TrainConfig| keel_core::config::TrainConfig {
        epochs: 0,
        patience: 0,
        checkpoint_every: 0,
        ..t.clone()
    };
    if mutable(&cfg.train) != mutable(&meta.train) {
        let (now, then) = (serde_json::to_value(mutable(&cfg.train))?, serde_json::to_value(mutable(&meta.train))?);
        let key = now
            .as_object()
            .and_then(|o| o.iter().find(|(k, v)| then.get(k.as_str()) != Some(v)))
            .map_or("?".to_string(), |(k, _)| k.clone());
        anyhow::bail!(
            "--resume: train.{key} is {} here but {} in the checkpoint {}; a resumed run keeps the run's settings \
             (only --epochs and --patience may change): drop the flag, or train afresh without --resume",
            now[&key],
            then[&key],
            dir.display()
        );
    }
    for (flag, now, then) in [
        ("--no-scaler", format!("{}", args.no_scaler), format!("{}", r.disable_scaler)),
        ("--max-batches", format!("{:?}", args.max_batches), format!("{:?}", r.max_batches)),
    ] {
        if now != then {
            anyhow::bail!(
                "--resume: {flag} is {now} here but was {then} in the run of {}; pass it as the run did",
                dir.display()
            );
        }
    }
    let s = &r.state;
    if s.stopped_early {
        anyhow::bail!(
            "the run in {} stopped early after epoch {} (validation loss did not improve for {} epochs): there is \
             nothing to resume; keel predict uses it as it is",
            dir.display(),
            s.next_epoch,
            s.since_best
        );
    }
    if s.next_epoch >= cfg.train.epochs {
        anyhow::bail!(
            "the run in {} has finished all {} of its epochs; pass --epochs N with N > {} to train it further",
            dir.display(),
            s.next_epoch,
            s.next_epoch
        );
    }
    Ok((meta, cfg))
}

/// Rows and windows of a prepared dataset.
fn data_shape(rows: usize, ds: &data::Dataset) -> checkpoint::DataShape {
    checkpoint::DataShape { rows, train: ds.train.len(), val: ds.val.len(), test: ds.test.len() }
}

/// Checks that `--data` of a resumed run is the data the run trained on.
fn check_resume_data(
    path: &Path,
    meta: &checkpoint::Meta,
    shape: checkpoint::DataShape,
    ds: &data::Dataset,
) -> anyhow::Result<()> {
    let fix = "resume with the data the run trained on, or train afresh without --resume";
    let saved = meta.resume.as_ref().map(|r| r.data);
    if saved != Some(shape) {
        let s = saved.unwrap_or(shape);
        anyhow::bail!(
            "--data {}: {} rows ({} training windows) but the run trained on {} rows ({} training windows); {fix}",
            path.display(),
            shape.rows,
            shape.train,
            s.rows,
            s.train
        );
    }
    let (n, d) = (&meta.normalization, &ds.norm);
    if n.columns != d.columns {
        anyhow::bail!("--data {}: columns {:?}, the run's were {:?}; {fix}", path.display(), d.columns, n.columns);
    }
    for (k, c) in n.columns.iter().enumerate() {
        if n.mean[k] != d.mean[k] || n.std[k] != d.std[k] {
            anyhow::bail!(
                "--data {}: column \"{c}\" of the training part has mean {} and std {}, the run's had {} and {}: the \
                 data changed; {fix}",
                path.display(),
                d.mean[k],
                d.std[k],
                n.mean[k],
                n.std[k]
            );
        }
    }
    Ok(())
}

/// Set by Ctrl-C / SIGTERM while `keel train` runs.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `keel train`. Ctrl-C (or SIGTERM) stops after the current step, saves a resumable
/// checkpoint of the middle of the epoch and exits with code 130; a second Ctrl-C exits at once.
pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        let set = ctrlc::set_handler(|| {
            if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("keel train: stopping after this step to save a checkpoint (Ctrl-C again to quit at once)");
        });
        // Another command of this process (keel demo's stream) may own the handler already.
        if let Err(e) = set {
            tracing::debug!("no Ctrl-C handler for training: {e}");
        }
    });
    STOP.store(false, std::sync::atomic::Ordering::SeqCst);
    run_until(args, |_| STOP.load(std::sync::atomic::Ordering::SeqCst))
}

/// [`run`] with the stop request given by `stop` (asked after every step with the global step
/// count), for tests.
pub fn run_until(args: TrainArgs, stop: impl Fn(u64) -> bool) -> anyhow::Result<ExitCode> {
    let resume = args.resume.as_deref().map(|d| resume_point(d, &args)).transpose()?;
    let cfg = match &resume {
        Some((_, cfg)) => cfg.clone(),
        None => resolve_config(&args)?,
    };
    let out = args.out.clone().or_else(|| args.resume.clone()).unwrap_or_else(|| PathBuf::from("checkpoints"));
    checkpoint::check_out(&out, args.resume.as_deref(), args.force)?;
    let dev = device(args.device)?;
    let t = &cfg.train;
    model::informer::check_dtype(amp::dtype_of(t.dtype), &dev)?;
    let table = data::load(&args.data, args.include_open_candle)?;
    let w =
        data::Windows { seq_len: t.seq_len as usize, label_len: t.label_len as usize, pred_len: t.pred_len as usize };
    let ds =
        data::prepare(&table, &t.target, t.features, w).with_context(|| format!("--data {}", args.data.display()))?;
    let shape = data_shape(table.rows.len(), &ds);
    if let Some((meta, _)) = &resume {
        check_resume_data(&args.data, meta, shape, &ds)?;
    }
    // The data is good: now that training would start, find out whether its results can be written.
    checkpoint::probe_out(&out)?;
    if let Some(p) = &args.stats_json {
        probe_file(p, "--stats-json")?;
    }
    let mcfg = trainer::model_config(t, &ds.norm);
    let opts = trainer::RunOptions {
        device: dev,
        disable_scaler: args.no_scaler,
        max_batches: args.max_batches,
        progress: !args.quiet,
    };
    // The server lives until `run` returns; the trainer publishes after every step.
    let metrics = args.metrics_addr.map(crate::metrics::serve_new).transpose()?;
    let mut tr = trainer::Trainer::new(&mcfg, t, &cfg.scaler, opts)?;
    tr.metrics = metrics.as_ref().map(|(m, _)| m.clone());
    let start = match &resume {
        Some((meta, _)) => {
            let dir = args.resume.as_deref().unwrap_or(&out);
            let (state, best) = checkpoint::load_resumable(dir, meta, &mut tr)?;
            tracing::info!(
                dir = %dir.display(),
                next_epoch = state.next_epoch,
                batch = state.batch,
                step = state.step,
                "resuming"
            );
            Some((state, best))
        }
        None => None,
    };
    tracing::info!(
        rows = table.rows.len(),
        train_windows = ds.train.len(),
        val_windows = ds.val.len(),
        test_windows = ds.test.len(),
        params = tr.params.count(),
        scale = tr.driver.scale(),
        dtype = ?t.dtype,
        "training"
    );
    let (epoch, step) = start.as_ref().map_or((0, 0), |(s, _)| (s.next_epoch, s.step));
    tracing::info!(epoch, step, scale = tr.driver.scale(), grad_norm = f64::NAN, "{}", tr.driver.scaler());
    let template = checkpoint::Meta {
        format_version: checkpoint::FORMAT_VERSION,
        model: mcfg,
        normalization: ds.norm.clone(),
        train: t.clone(),
        scaler: tr.driver.clone(),
        resume: None,
    };
    let (every, epochs) = (t.checkpoint_every.max(1), t.epochs);
    let fitted = tr.fit_from(
        &ds,
        start,
        |tr, state, best| {
        if state.batch > 0 || state.next_epoch.is_multiple_of(every) || state.next_epoch >= epochs || state.stopped_early {
            let meta = checkpoint::Meta {
                scaler: tr.driver.clone(),
                resume: Some(checkpoint::ResumeMeta {
                    state: state.clone(),
                    adam_steps: tr.adam.steps(),
                    disable_scaler: args.no_scaler,
                    max_batches: args.max_batches,
                    data: shape,
                }),
                ..template.clone()
            };
            checkpoint::save_resumable(&out, tr, &meta, best)?;
            tracing::info!(next_epoch = state.next_epoch, batch = state.batch, step = state.step, dir = %out.display(), "checkpoint saved");
        }
        Ok(())
    },
        stop,
    );
    let report = match fitted {
        Err(e) => match e.downcast_ref::<trainer::Interrupted>() {
            Some(i) => {
                println!(
                    "{i}; checkpoint {} saved: continue with keel train --data {} --resume {}",
                    out.display(),
                    args.data.display(),
                    out.display()
                );
                return Ok(ExitCode::from(130));
            }
            None if e.downcast_ref::<trainer::Diverged>().is_some() => {
                // The checkpoints saved after each epoch hold the diverged weights: removed, so that
                // neither `keel predict` nor `--resume` takes them for a result. The plot stays: it
                // shows the step where the loss left the finite numbers.
                checkpoint::discard(&out)?;
                let plot_path = out.join("loss.png");
                plot::write(&plot_path, &tr.curve, &tr.state.val_curve)
                    .with_context(|| format!("cannot write {}", plot_path.display()))?;
                anyhow::bail!(
                    "{e}. Nothing was kept: the checkpoint saved during the run was removed from {}; the loss and \
                     scale per step are in {}",
                    out.display(),
                    plot_path.display()
                );
            }
            None => return Err(e),
        },
        Ok(r) => r,
    };
    let plot_path = out.join("loss.png");
    plot::write(&plot_path, &tr.curve, &tr.state.val_curve)
        .with_context(|| format!("cannot write {}", plot_path.display()))?;
    if let Some(p) = &args.stats_json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    let s = &report.stats;
    println!(
        "epochs run      {} (best {} with validation MSE {:.4})",
        report.epochs_run,
        report.best_epoch + 1,
        report.best_val_loss
    );
    println!("test MSE / MAE  {:.4} / {:.4}", report.test_mse, report.test_mae);
    println!(
        "persistence     {:.4} / {:.4} (repeat the last observed value)",
        report.baseline_mse, report.baseline_mae
    );
    println!("loss scaler     {s}; {} NaN losses", report.nan_losses);
    println!("step time       {:.1} ms", report.step_ms);
    println!("checkpoint      {}", out.display());
    println!("plot            {}", plot_path.display());
    Ok(ExitCode::SUCCESS)
}

/// Checks that the file `path` (given by `flag`) can be written, without changing it
/// ([`crate::probe::writable_file`]). Run before training, so that a bad path costs no training time.
fn probe_file(path: &Path, flag: &str) -> anyhow::Result<()> {
    let fix = "choose a writable path in an existing directory";
    if path.is_dir() {
        anyhow::bail!("{flag} {} is a directory; name a file", path.display());
    }
    crate::probe::writable_file(path).with_context(|| format!("{flag} {}: cannot write it; {fix}", path.display()))
}

/// Forecast `(pred_len, c_out)` standardized values after the last row of `values`/`times_ms`
/// (standardized rows in the model's column order). Future calendar features continue the
/// median spacing of the last timestamps.
pub fn forecast(
    model: &model::Informer,
    values: &[Vec<f32>],
    times_ms: &[i64],
    dev: &Device,
) -> anyhow::Result<(Vec<i64>, Vec<Vec<f32>>)> {
    let c = &model.cfg;
    if values.len() < c.seq_len {
        anyhow::bail!("{} rows are too few: the model needs the last {} (its seq_len)", values.len(), c.seq_len);
    }
    let n = values.len();
    let mut gaps: Vec<i64> = times_ms[n - c.seq_len..].windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let step = gaps.get(gaps.len() / 2).copied().unwrap_or(1).max(1);
    let future: Vec<i64> = (1..=c.pred_len as i64).map(|k| times_ms[n - 1] + k * step).collect();
    let enc_rows = &values[n - c.seq_len..];
    let xe: Vec<f32> = enc_rows.iter().flatten().copied().collect();
    let me: Vec<f32> = times_ms[n - c.seq_len..].iter().flat_map(|&t| data::time_features(t)).collect();
    let mut xd: Vec<f32> = values[n - c.label_len..].iter().flatten().copied().collect();
    xd.extend(std::iter::repeat_n(0f32, c.pred_len * c.c_in));
    let md: Vec<f32> =
        times_ms[n - c.label_len..].iter().chain(&future).flat_map(|&t| data::time_features(t)).collect();
    let ld = c.label_len + c.pred_len;
    let ctx = model::Ctx::new(DType::F32, false, 0);
    let y = model.forward(
        &Tensor::from_vec(xe, (1, c.seq_len, c.c_in), dev)?,
        &Tensor::from_vec(me, (1, c.seq_len, data::N_TIME_FEATURES), dev)?,
        &Tensor::from_vec(xd, (1, ld, c.c_in), dev)?,
        &Tensor::from_vec(md, (1, ld, data::N_TIME_FEATURES), dev)?,
        &ctx,
    )?;
    let y = y.to_dtype(DType::F32)?.squeeze(0)?.to_vec2::<f32>()?;
    Ok((future, y))
}

/// Standardized rows of `table` in the checkpoint's column order.
pub fn standardize(table: &data::Table, norm: &data::Normalization) -> anyhow::Result<Vec<Vec<f32>>> {
    let idx: Vec<usize> = norm
        .columns
        .iter()
        .map(|c| {
            data::column_index(&table.columns, c).with_context(|| {
                format!("column \"{c}\" the model was trained on is not in the data (columns: {:?})", table.columns)
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(table
        .rows
        .iter()
        .map(|r| idx.iter().enumerate().map(|(k, &i)| ((r[i] - norm.mean[k]) / norm.std[k]) as f32).collect())
        .collect())
}

/// Loads a checkpoint and forecasts after the last row of `data`, in data units.
pub fn predict_file(
    checkpoint_dir: &Path,
    data_path: &Path,
    dev: &Device,
    open_candle: bool,
) -> anyhow::Result<String> {
    let (meta, model, _) = checkpoint::load(checkpoint_dir, dev)?;
    let table = data::load(data_path, open_candle)?;
    let values = standardize(&table, &meta.normalization)?;
    let (times, y) =
        forecast(&model, &values, &table.times_ms, dev).with_context(|| format!("--data {}", data_path.display()))?;
    let norm = &meta.normalization;
    let out_cols = &norm.columns[norm.out_start()..];
    let mut text = format!("date,{}\n", out_cols.join(","));
    for (t, row) in times.iter().zip(&y) {
        let date = chrono::DateTime::from_timestamp_millis(*t)
            .map_or(t.to_string(), |d| d.format("%Y-%m-%d %H:%M:%S").to_string());
        let vals: Vec<f64> = row.iter().enumerate().map(|(k, v)| norm.denormalize(k, *v as f64)).collect();
        // The weights were checked when loaded; a non-finite value here comes from the input window.
        if let Some(k) = vals.iter().position(|v| !v.is_finite()) {
            anyhow::bail!(
                "the forecast of {} for {} at {date} is {} although the checkpoint's weights are finite: the last {} \
                 rows of --data {} drive the model out of range (values far outside the training data?); check them",
                checkpoint_dir.display(),
                out_cols[k],
                vals[k],
                model.cfg.seq_len,
                data_path.display()
            );
        }
        let vals: Vec<String> = vals.iter().map(|v| v.to_string()).collect();
        text.push_str(&format!("{date},{}\n", vals.join(",")));
    }
    Ok(text)
}

/// Runs `keel predict`.
pub fn predict(args: PredictArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = args.out.as_deref().filter(|p| p.is_dir()) {
        anyhow::bail!(
            "--out {} is a directory; give a file path, e.g. {}",
            p.display(),
            p.join("forecast.csv").display()
        );
    }
    let dev = device(args.device)?;
    let text = predict_file(&args.checkpoint, &args.data, &dev, args.include_open_candle)?;
    match &args.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn args(extra: &[&str]) -> TrainArgs {
        let mut argv = vec!["keel", "--data", "x.csv"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("keel-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keel.ron");
        std::fs::write(
            &path,
            "(train: (seq_len: 48, label_len: 24, d_model: 128, n_heads: 8), scaler: (growth_interval: 7))",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = resolve_config(&args(&["--config", p])).unwrap();
        assert_eq!((c.train.seq_len, c.train.d_model, c.scaler.growth_interval), (48, 128, 7));
        let c = resolve_config(&args(&["--config", p, "--seq-len", "64", "--model-size", "small", "--dtype", "f32"]))
            .unwrap();
        assert_eq!((c.train.seq_len, c.train.label_len, c.train.d_model, c.train.n_heads), (64, 24, 64, 4));
        assert_eq!(c.train.dtype, ComputeDtype::F32);
        let c = resolve_config(&args(&["--features", "S", "--target", "Open"])).unwrap();
        assert_eq!((c.train.features, c.train.target.as_str()), (Features::S, "Open"));
        let e = resolve_config(&args(&["--seq-len", "8", "--label-len", "16"])).unwrap_err().to_string();
        assert!(e.contains("--label-len (train.label_len) = 16 is invalid: must be <= train.seq_len (8)"), "{e}");
        // A key the flags did not set keeps its key alone.
        let e = resolve_config(&args(&["--seq-len", "8"])).unwrap_err().to_string();
        assert!(e.contains("invalid configuration: train.label_len = 48 is invalid"), "{e}");
        let e = resolve_config(&args(&["--batch-size", "0", "--patience", "0"])).unwrap_err().to_string();
        assert!(
            e.contains("--batch-size (train.batch_size) = 0 is invalid: must be > 0\n--patience (train.patience) = 0"),
            "{e}"
        );
    }

    #[test]
    fn features_take_informers_names_in_any_case() {
        for (flag, want) in [("M", Features::M), ("s", Features::S), ("MS", Features::MS), ("ms", Features::MS)] {
            let c = resolve_config(&args(&["--features", flag])).unwrap();
            assert_eq!(c.train.features, want, "--features {flag}");
        }
        // Help lists the names the config file and Informer use, not clap's lower-cased ones.
        let help = <Cli as clap::CommandFactory>::command().render_long_help().to_string();
        for line in ["- M:", "- S:", "- MS:"] {
            assert!(help.contains(line), "{line} missing from help:\n{help}");
        }
    }

    #[test]
    fn zero_batches_and_negative_numbers_get_the_flags_own_message() {
        let e = Cli::try_parse_from(["keel", "--data", "x.csv", "--max-batches", "0"]).err().unwrap().to_string();
        assert!(e.contains("--max-batches") && e.contains("0 is not in 1.."), "{e}");
        // A negative number is a value (clap took "-1" for a flag), and keel's range check names it.
        let e = resolve_config(&args(&["--lr", "-1"])).unwrap_err().to_string();
        assert_eq!(e, "--lr must be > 0, got -1");
        let e = resolve_config(&args(&["--lr", "0"])).unwrap_err().to_string();
        assert_eq!(e, "--lr must be > 0, got 0");
        let e = Cli::try_parse_from(["keel", "--data", "x.csv", "--epochs", "-2"]).err().unwrap().to_string();
        assert!(e.contains("invalid value '-2' for '--epochs"), "{e}");
    }

    #[test]
    fn scaler_can_only_be_disabled_in_f32() {
        let cfg = keel_core::config::TrainConfig { d_model: 8, n_heads: 2, d_ff: 8, ..Default::default() };
        let norm = data::Normalization {
            columns: vec!["a".into()],
            target: "a".into(),
            features: Features::S,
            mean: vec![0.0],
            std: vec![1.0],
        };
        let opts =
            trainer::RunOptions { device: Device::Cpu, disable_scaler: true, max_batches: None, progress: false };
        let m = trainer::model_config(&cfg, &norm);
        let e = trainer::Trainer::new(&m, &cfg, &Default::default(), opts.clone()).err().unwrap().to_string();
        assert!(e.contains("only be disabled with --dtype f32"), "{e}");
        let f32cfg = keel_core::config::TrainConfig { dtype: ComputeDtype::F32, ..cfg };
        let t = trainer::Trainer::new(&m, &f32cfg, &Default::default(), opts).unwrap();
        assert_eq!(t.driver.scale(), 1.0);
    }
}
