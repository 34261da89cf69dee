//! `keel tune`: a TPE hyperparameter search over the Informer, with the loss scaler in every trial.
//!
//! Each trial builds the model, counts its parameters, sizes the scaler's initial scale from that
//! count ([`init_scale_for`]), trains a short run with the scaler and monitor deciding every step,
//! and scores the validation loss. A trial whose loss goes NaN, or whose scaler resets more often
//! than `--max-resets`, is recorded as failed and told to the sampler as the worst possible score,
//! never as a good one. Every trial is appended to `trials.jsonl` as soon as it finishes, so an
//! interrupted search loses at most the running trial, and `--resume` feeds the finished ones back
//! to the sampler and continues the numbering. The best trial becomes `best.ron`, a full keel
//! config that `keel config check` and `keel train --config` accept.
//!
//! The sampler is the `tpe` crate (one univariate TPE per parameter, as in Optuna's default):
//! log-uniform learning rate, uniform dropout, categorical sizes.

use crate::train::data::{self, Table, Windows};
use crate::train::model::{Informer, Params};
use crate::train::trainer::{self, RunOptions, Trainer};
use crate::train::{DtypeArg, FeaturesArg};
use anyhow::Context;
use candle_core::Device;
use clap::Args;
use keel_core::config::{ComputeDtype, Config, Features, ScaleChoice, ScalerConfig, TrainConfig};
use keel_core::scaler::init_scale_for;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Model widths the search picks from (capped by `--max-d-model`).
pub const D_MODELS: [u32; 4] = [16, 32, 64, 128];
/// Attention head counts (each divides every width above).
pub const N_HEADS: [u32; 4] = [1, 2, 4, 8];
/// Encoder depths.
pub const E_LAYERS: [u32; 3] = [1, 2, 3];
/// Encoder input lengths (capped by `--max-seq-len`); label_len is half of it.
pub const SEQ_LENS: [u32; 3] = [24, 48, 96];
/// Windows per batch.
pub const BATCH_SIZES: [u32; 3] = [8, 16, 32];
/// log10 of the learning-rate range.
pub const LOG10_LR: (f64, f64) = (-5.0, -2.0);
/// Dropout range.
pub const DROPOUT: (f64, f64) = (0.0, 0.3);

/// Flags of `keel tune`.
#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    /// Serve the running trial's training metrics at http://ADDR/metrics (e.g. 127.0.0.1:9898).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// CSV in Informer's layout, a recorded kline file, or a directory of them.
    #[arg(long)]
    pub data: PathBuf,
    /// Total trials of the search (with --resume, finished trials count toward it).
    #[arg(long, default_value_t = 20, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: u32,
    /// Start no new trial after this many seconds (a running trial finishes).
    // 0 ran no trial and then reported "every trial failed".
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Directory for trials.jsonl and best.ron.
    #[arg(long, default_value = "tune")]
    pub out: PathBuf,
    /// Continue the search recorded in OUT/trials.jsonl.
    #[arg(long)]
    pub resume: bool,
    /// keel.ron whose sections are the base of every trial and of best.ron.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Column to forecast.
    #[arg(long)]
    pub target: Option<String>,
    /// Inputs/outputs: M, S or MS.
    #[arg(long, value_enum, ignore_case = true)]
    pub features: Option<FeaturesArg>,
    /// Forward/backward dtype of the trials.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Steps to forecast.
    #[arg(long, allow_negative_numbers = true)]
    pub pred_len: Option<u32>,
    /// Epochs per trial (short: trials compare, they do not finish training).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    pub epochs: u32,
    /// Cap on training batches per epoch and evaluation batches per trial (at least 1).
    #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_batches: usize,
    /// A trial whose scaler resets more often than this is failed.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    pub max_resets: u64,
    /// Largest d_model to try.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub max_d_model: u32,
    /// Largest seq_len to try.
    #[arg(long, default_value_t = 96, allow_negative_numbers = true)]
    pub max_seq_len: u32,
    /// Seed of the sampler (trials share the config's model seed, so they compare fairly).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Kline data: also use the still-open newest candle.
    #[arg(long)]
    pub include_open_candle: bool,
    /// Testing aid: poison this trial's training data with NaN (checks the failure path).
    #[arg(long, hide = true)]
    pub inject_nan_trial: Option<u32>,
}

/// The hyperparameters of one trial.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrialParams {
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Model width.
    pub d_model: u32,
    /// Attention heads (divides d_model).
    pub n_heads: u32,
    /// Encoder layers.
    pub e_layers: u32,
    /// Dropout probability.
    pub dropout: f64,
    /// Encoder input length.
    pub seq_len: u32,
    /// Windows per batch.
    pub batch_size: u32,
}

impl TrialParams {
    /// `base` with these parameters applied (label_len = seq_len / 2, d_ff = 4 d_model).
    pub fn apply(&self, base: &TrainConfig) -> TrainConfig {
        TrainConfig {
            learning_rate: self.learning_rate,
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_ff: 4 * self.d_model,
            e_layers: self.e_layers,
            dropout: self.dropout,
            seq_len: self.seq_len,
            label_len: self.seq_len / 2,
            batch_size: self.batch_size,
            ..base.clone()
        }
    }
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Trained and scored.
    Ok,
    /// NaN loss, too many scaler resets, or an error: never a candidate for best.
    Failed,
}

/// One line of trials.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// 0-based trial number, continued across resumes.
    pub number: u32,
    /// Ok or failed.
    pub status: TrialStatus,
    /// Why the trial failed.
    pub error: Option<String>,
    /// Sampled hyperparameters.
    pub params: TrialParams,
    /// Trainable parameters of the model (0 when it could not be built).
    pub param_count: u64,
    /// The scaler config the trial trained with (init scale sized from `param_count`).
    pub scaler: ScalerConfig,
    /// Best validation MSE (absent when not finite).
    pub val_loss: Option<f64>,
    /// Test MSE of the kept weights.
    pub test_mse: Option<f64>,
    /// Epochs run.
    pub epochs_run: u32,
    /// Training batches whose loss was NaN or infinite.
    pub nan_losses: u64,
    /// Mean step time in milliseconds.
    pub step_ms: Option<f64>,
    /// The scaler monitor's TrainingStats (JSON; null when training never started).
    pub stats: serde_json::Value,
    /// Wall time of the trial in seconds.
    pub duration_s: f64,
}

impl TrialRecord {
    /// The score told to the sampler: the validation loss, or +inf for a failed trial.
    pub fn score(&self) -> f64 {
        match (self.status, self.val_loss) {
            (TrialStatus::Ok, Some(v)) => v,
            _ => f64::INFINITY,
        }
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The choices a search draws from.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    /// Widths.
    pub d_models: Vec<u32>,
    /// Input lengths.
    pub seq_lens: Vec<u32>,
}

impl Space {
    /// The default choices capped by the flags; an error names the flag when nothing is left.
    pub fn new(max_d_model: u32, max_seq_len: u32) -> anyhow::Result<Space> {
        let d_models: Vec<u32> = D_MODELS.iter().copied().filter(|&d| d <= max_d_model).collect();
        let seq_lens: Vec<u32> = SEQ_LENS.iter().copied().filter(|&s| s <= max_seq_len).collect();
        if d_models.is_empty() {
            anyhow::bail!("--max-d-model {max_d_model} excludes every width; use at least {}", D_MODELS[0]);
        }
        if seq_lens.is_empty() {
            anyhow::bail!("--max-seq-len {max_seq_len} excludes every input length; use at least {}", SEQ_LENS[0]);
        }
        Ok(Space { d_models, seq_lens })
    }
}

type Tpe = tpe::TpeOptimizer;

/// One univariate TPE per hyperparameter.
pub struct Sampler {
    lr: Tpe,
    dropout: Tpe,
    d_model: Tpe,
    n_heads: Tpe,
    e_layers: Tpe,
    seq_len: Tpe,
    batch_size: Tpe,
    space: Space,
    rng: StdRng,
}

fn categorical(n: usize) -> anyhow::Result<Tpe> {
    Ok(Tpe::new(tpe::histogram_estimator(), tpe::categorical_range(n).map_err(|e| anyhow::anyhow!("{e}"))?))
}

fn numeric(lo: f64, hi: f64) -> anyhow::Result<Tpe> {
    Ok(Tpe::new(tpe::parzen_estimator(), tpe::range(lo, hi).map_err(|e| anyhow::anyhow!("{e}"))?))
}

fn ask(t: &mut Tpe, rng: &mut StdRng) -> f64 {
    t.ask(rng).unwrap_or_else(|e| match e {})
}

fn pick<T: Copy>(choices: &[T], x: f64) -> T {
    choices[(x.max(0.0) as usize).min(choices.len() - 1)]
}

/// The index of `v` in `choices` as TPE's categorical value, NaN when the choice is no longer
/// offered (a resumed search with other caps): TPE then ignores it for that parameter.
fn index_of(choices: &[u32], v: u32) -> f64 {
    choices.iter().position(|&c| c == v).map_or(f64::NAN, |i| i as f64)
}

impl Sampler {
    /// A sampler with no history.
    pub fn new(space: Space, seed: u64) -> anyhow::Result<Sampler> {
        Ok(Sampler {
            lr: numeric(LOG10_LR.0, LOG10_LR.1)?,
            dropout: numeric(DROPOUT.0, DROPOUT.1)?,
            d_model: categorical(space.d_models.len())?,
            n_heads: categorical(N_HEADS.len())?,
            e_layers: categorical(E_LAYERS.len())?,
            seq_len: categorical(space.seq_lens.len())?,
            batch_size: categorical(BATCH_SIZES.len())?,
            space,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next parameters to try; n_heads always divides d_model.
    pub fn ask(&mut self) -> TrialParams {
        let r = &mut self.rng;
        let d_model = pick(&self.space.d_models, ask(&mut self.d_model, r));
        let heads = pick(&N_HEADS, ask(&mut self.n_heads, r));
        // Every offered width is a multiple of every head count, but keep the invariant local.
        let n_heads = N_HEADS.iter().copied().filter(|&h| h <= heads && d_model.is_multiple_of(h)).max().unwrap_or(1);
        TrialParams {
            learning_rate: 10f64.powf(ask(&mut self.lr, r)),
            d_model,
            n_heads,
            e_layers: pick(&E_LAYERS, ask(&mut self.e_layers, r)),
            dropout: ask(&mut self.dropout, r),
            seq_len: pick(&self.space.seq_lens, ask(&mut self.seq_len, r)),
            batch_size: pick(&BATCH_SIZES, ask(&mut self.batch_size, r)),
        }
    }

    /// Records a finished trial (failed trials score +inf).
    pub fn tell(&mut self, p: &TrialParams, score: f64) -> anyhow::Result<()> {
        let lr = p.learning_rate.log10();
        let lr = if (LOG10_LR.0..LOG10_LR.1).contains(&lr) { lr } else { f64::NAN };
        let dropout = if (DROPOUT.0..DROPOUT.1).contains(&p.dropout) { p.dropout } else { f64::NAN };
        let told = [
            (&mut self.lr, lr),
            (&mut self.dropout, dropout),
            (&mut self.d_model, index_of(&self.space.d_models, p.d_model)),
            (&mut self.n_heads, index_of(&N_HEADS, p.n_heads)),
            (&mut self.e_layers, index_of(&E_LAYERS, p.e_layers)),
            (&mut self.seq_len, index_of(&self.space.seq_lens, p.seq_len)),
            (&mut self.batch_size, index_of(&BATCH_SIZES, p.batch_size)),
        ];
        for (t, v) in told {
            t.tell(v, score).map_err(|e| anyhow::anyhow!("TPE rejected a finished trial: {e}"))?;
        }
        Ok(())
    }
}

/// What every trial shares.
#[derive(Debug, Clone)]
pub struct TrialSetup {
    /// Base config (flags applied).
    pub base: Config,
    /// Epochs per trial.
    pub epochs: u32,
    /// Batch cap.
    pub max_batches: usize,
    /// Reset limit.
    pub max_resets: u64,
    /// Poison the training data with NaN (tests of the failure path).
    pub inject_nan: bool,
    /// Where the running trial publishes its training metrics (`--metrics-addr`).
    pub metrics: Option<crate::metrics::Metrics>,
}

/// Trains one trial and judges it; errors become failed records, never a panic or an abort.
pub fn run_trial(table: &Table, setup: &TrialSetup, number: u32, p: &TrialParams) -> TrialRecord {
    let t0 = Instant::now();
    let mut rec = TrialRecord {
        number,
        status: TrialStatus::Failed,
        error: None,
        params: *p,
        param_count: 0,
        scaler: setup.base.scaler.clone(),
        val_loss: None,
        test_mse: None,
        epochs_run: 0,
        nan_losses: 0,
        step_ms: None,
        stats: serde_json::Value::Null,
        duration_s: 0.0,
    };
    if let Err(e) = train_trial(table, setup, p, &mut rec) {
        rec.status = TrialStatus::Failed;
        rec.error = Some(format!("{e:#}"));
    }
    rec.duration_s = t0.elapsed().as_secs_f64();
    rec
}

fn train_trial(table: &Table, setup: &TrialSetup, p: &TrialParams, rec: &mut TrialRecord) -> anyhow::Result<()> {
    let mut t = p.apply(&setup.base.train);
    t.epochs = setup.epochs;
    Config { train: t.clone(), ..setup.base.clone() }.validate().context("trial configuration")?;
    let w = Windows { seq_len: t.seq_len as usize, label_len: t.label_len as usize, pred_len: t.pred_len as usize };
    let mut ds = data::prepare(table, &t.target, t.features, w)?;
    if setup.inject_nan {
        ds.train.values.iter_mut().for_each(|r| r.iter_mut().for_each(|v| *v = f32::NAN));
    }
    let mcfg = trainer::model_config(&t, &ds.norm);
    let dev = Device::Cpu;
    let mut probe = Params::new(t.seed, &dev);
    Informer::new(&mcfg, &mut probe)?;
    rec.param_count = probe.count();
    rec.scaler =
        ScalerConfig { init_scale: ScaleChoice::Fixed(init_scale_for(rec.param_count)), ..setup.base.scaler.clone() };
    tracing::info!(trial = rec.number, params = rec.param_count, ?p, scaler = ?rec.scaler, "trial starts");
    let opts = RunOptions { device: dev, disable_scaler: false, max_batches: Some(setup.max_batches), progress: false };
    let mut tr = Trainer::new(&mcfg, &t, &rec.scaler, opts)?;
    tr.metrics = setup.metrics.clone();
    let fitted = tr.fit(&ds);
    rec.stats = serde_json::to_value(tr.driver.stats())?;
    rec.nan_losses = tr.state.nan_losses;
    // A run without a finite validation loss is a failed trial in the search's words (NaN loss).
    let report = fitted.map_err(|e| match e.downcast_ref::<trainer::Diverged>() {
        Some(d) => anyhow::anyhow!("NaN loss: {d}"),
        None => e,
    })?;
    rec.val_loss = finite(report.best_val_loss);
    rec.test_mse = finite(report.test_mse);
    rec.epochs_run = report.epochs_run;
    rec.step_ms = finite(report.step_ms);
    if let Some(why) = verdict(report.nan_losses, report.best_val_loss, report.stats.resets, setup.max_resets) {
        anyhow::bail!(why);
    }
    rec.status = TrialStatus::Ok;
    Ok(())
}

/// Why a finished run fails as a trial, if it does: a NaN loss, or more scaler resets than allowed.
pub fn verdict(nan_losses: u64, val_loss: f64, resets: u64, max_resets: u64) -> Option<String> {
    if nan_losses > 0 || !val_loss.is_finite() {
        return Some(format!(
            "NaN loss: {nan_losses} training batches had a non-finite loss, validation loss {val_loss}"
        ));
    }
    (resets > max_resets)
        .then(|| format!("the loss scale was reset {resets} times, more than --max-resets {max_resets}"))
}

/// Reads trials.jsonl. A last line cut off by an interruption is dropped (and cut from the file
/// so appends stay well-formed); any other unreadable line is an error naming it.
pub fn read_trials(path: &Path) -> anyhow::Result<Vec<TrialRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    if complete.len() < text.len() {
        tracing::warn!(file = %path.display(), "dropping an unfinished last line (interrupted write)");
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(complete.len() as u64)?;
    }
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{} line {} is not a trial record; fix or delete the line", path.display(), i + 1)
            })
        })
        .collect()
}

fn append(path: &Path, rec: &TrialRecord) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut line = serde_json::to_string(rec)?;
    line.push('\n');
    f.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_data()?;
    Ok(())
}

/// The base config: the file (if any) with the flags applied.
fn base_config(args: &TuneArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => crate::config_cmd::load(p)?,
        None => Config::default(),
    };
    let t = &mut cfg.train;
    if let Some(v) = &args.target {
        t.target = v.clone();
    }
    if let Some(v) = args.pred_len {
        t.pred_len = v;
    }
    if let Some(d) = args.dtype {
        t.dtype = match d {
            DtypeArg::F32 => ComputeDtype::F32,
            DtypeArg::F16 => ComputeDtype::F16,
            DtypeArg::Bf16 => anyhow::bail!("bf16 needs a GPU; keel tune trains on the CPU: use --dtype f16 or f32"),
        };
    }
    if let Some(f) = args.features {
        t.features = match f {
            FeaturesArg::M => Features::M,
            FeaturesArg::S => Features::S,
            FeaturesArg::Ms => Features::MS,
        };
    }
    // Checked once here: a bad base value failed every trial alike, each with the message only in
    // trials.jsonl.
    let passed = [
        ("train.target", "--target", args.target.is_some()),
        ("train.pred_len", "--pred-len", args.pred_len.is_some()),
    ];
    cfg.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {}", e.naming_flags(&passed)))?;
    Ok(cfg)
}

/// Checks what every trial shares with the data (the target column, and rows enough for the
/// shortest input the search tries), so that a search that cannot fit fails before its first trial
/// and says why, instead of failing each trial alike.
fn check_data_fits(table: &Table, t: &TrainConfig, space: &Space, data_path: &Path) -> anyhow::Result<()> {
    data::select_columns(table, &t.target, t.features).with_context(|| format!("--data {}", data_path.display()))?;
    let seq_len = space.seq_lens.iter().copied().min().unwrap_or(t.seq_len) as usize;
    let w = Windows { seq_len, label_len: seq_len / 2, pred_len: t.pred_len as usize };
    let needed = data::rows_needed(w);
    if table.rows.len() < needed {
        anyhow::bail!(
            "--data {}: {} rows are too few for even the shortest input the search tries (seq_len {seq_len}) + \
             pred_len {} with a 70/10/20 split: need at least {needed}; use more data or a shorter --pred-len",
            data_path.display(),
            table.rows.len(),
            t.pred_len
        );
    }
    Ok(())
}

/// The best finished trial (lowest validation loss among the ok ones).
pub fn best(records: &[TrialRecord]) -> Option<&TrialRecord> {
    records
        .iter()
        .filter(|r| r.status == TrialStatus::Ok && r.val_loss.is_some())
        .min_by(|a, b| a.score().total_cmp(&b.score()))
}

/// The best trials as a table, best first.
pub fn table(records: &[TrialRecord], rows: usize) -> String {
    let mut ok: Vec<&TrialRecord> = records.iter().filter(|r| r.status == TrialStatus::Ok).collect();
    ok.sort_by(|a, b| a.score().total_cmp(&b.score()));
    let mut s = format!(
        "{:>5} {:>10} {:>9} {:>7} {:>5} {:>8} {:>7} {:>7} {:>5} {:>8} {:>10} {:>7}\n",
        "trial",
        "val_loss",
        "lr",
        "d_model",
        "heads",
        "e_layers",
        "dropout",
        "seq_len",
        "batch",
        "params",
        "init_scale",
        "secs"
    );
    for r in ok.iter().take(rows) {
        let p = &r.params;
        let init = match r.scaler.init_scale {
            ScaleChoice::Fixed(v) => format!("{v}"),
            ScaleChoice::Auto => "auto".into(),
        };
        s.push_str(&format!(
            "{:>5} {:>10.5} {:>9.2e} {:>7} {:>5} {:>8} {:>7.3} {:>7} {:>5} {:>8} {:>10} {:>7.1}\n",
            r.number,
            r.score(),
            p.learning_rate,
            p.d_model,
            p.n_heads,
            p.e_layers,
            p.dropout,
            p.seq_len,
            p.batch_size,
            r.param_count,
            init,
            r.duration_s
        ));
    }
    s
}

/// Why a search has no best trial. One cause for all of them (a data or setup problem) is worth
/// printing; several are left to the file.
fn all_failed(records: &[TrialRecord], trials_path: &Path) -> String {
    let mut errors: Vec<&str> = records.iter().filter_map(|r| r.error.as_deref()).collect();
    errors.dedup();
    match errors[..] {
        [only] => format!("every trial failed ({} of them) with: {only}; see {}", records.len(), trials_path.display()),
        _ => format!("every trial failed; see the error fields in {}", trials_path.display()),
    }
}

/// Runs `keel tune`.
pub fn run(args: TuneArgs) -> anyhow::Result<ExitCode> {
    let base = base_config(&args)?;
    let space = Space::new(args.max_d_model, args.max_seq_len)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let trials_path = args.out.join("trials.jsonl");
    let mut records = if trials_path.exists() {
        if !args.resume {
            anyhow::bail!(
                "{} already holds a search: pass --resume to continue it, or choose another --out",
                trials_path.display()
            );
        }
        read_trials(&trials_path)?
    } else {
        Vec::new()
    };
    let table_data = data::load(&args.data, args.include_open_candle)?;
    check_data_fits(&table_data, &base.train, &space, &args.data)?;
    let mut sampler = Sampler::new(space, args.seed ^ records.len() as u64)?;
    for r in &records {
        sampler.tell(&r.params, r.score())?;
    }
    let mut next = records.iter().map(|r| r.number + 1).max().unwrap_or(0);
    if !records.is_empty() {
        tracing::info!(finished = records.len(), next, "resuming the search");
    }
    // The server lives until `run` returns; each trial's trainer publishes into the shared handle.
    let metrics = args.metrics_addr.map(crate::metrics::serve_new).transpose()?;
    let setup = TrialSetup {
        base: base.clone(),
        epochs: args.epochs,
        max_batches: args.max_batches,
        max_resets: args.max_resets,
        inject_nan: false,
        metrics: metrics.as_ref().map(|(m, _)| m.clone()),
    };
    let start = Instant::now();
    let deadline = args.timeout.map(Duration::from_secs);
    while (records.len() as u64) < args.trials as u64 {
        if deadline.is_some_and(|d| start.elapsed() >= d) {
            tracing::info!(timeout_s = args.timeout, "timeout: no new trials");
            break;
        }
        let p = sampler.ask();
        let setup = TrialSetup { inject_nan: args.inject_nan_trial == Some(next), ..setup.clone() };
        let rec = run_trial(&table_data, &setup, next, &p);
        match (&rec.status, &rec.error) {
            (TrialStatus::Ok, _) => {
                tracing::info!(trial = next, val_loss = rec.score(), secs = rec.duration_s, "trial done")
            }
            (TrialStatus::Failed, e) => tracing::warn!(trial = next, error = ?e, "trial failed"),
        }
        append(&trials_path, &rec)?;
        sampler.tell(&rec.params, rec.score())?;
        records.push(rec);
        next += 1;
    }
    let failed = records.iter().filter(|r| r.status == TrialStatus::Failed).count();
    println!("{} trials ({failed} failed) in {}", records.len(), trials_path.display());
    print!("{}", table(&records, 5));
    let Some(b) = best(&records) else {
        anyhow::bail!("{}", all_failed(&records, &trials_path));
    };
    let mut cfg = base;
    cfg.train = b.params.apply(&cfg.train);
    cfg.validate().context("best configuration")?;
    let best_path = args.out.join("best.ron");
    std::fs::write(&best_path, cfg.to_ron()).with_context(|| format!("cannot write {}", best_path.display()))?;
    println!("best trial {} (validation MSE {:.5}) written to {}", b.number, b.score(), best_path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TuneArgs,
    }

    #[test]
    fn zero_trials_and_zero_batches_are_refused_by_the_flags() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["keel", "--data", "x.csv"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.args).map_err(|e| e.to_string())
        };
        // Zero trials ran none and then said "every trial failed".
        let e = parse(&["--trials", "0"]).unwrap_err();
        assert!(e.contains("--trials") && e.contains("0 is not in 1.."), "{e}");
        let e = parse(&["--max-batches", "0"]).unwrap_err();
        assert!(e.contains("--max-batches") && e.contains("0 is not in 1.."), "{e}");
        let e = parse(&["--timeout", "0"]).unwrap_err();
        assert!(e.contains("--timeout") && e.contains("0 is not in 1.."), "{e}");
        let e = parse(&["--trials", "-3"]).unwrap_err();
        assert!(e.contains("invalid value '-3' for '--trials"), "{e}");
        assert_eq!(parse(&["--trials", "1", "--max-batches", "1"]).unwrap().trials, 1);
    }

    #[test]
    fn a_cause_shared_by_every_failed_trial_is_printed() {
        let failed = |e: &str| TrialRecord { error: Some(e.into()), ..rec(0, TrialStatus::Failed, None) };
        let path = Path::new("t/trials.jsonl");
        let same = [failed("out of memory"), failed("out of memory")];
        assert_eq!(all_failed(&same, path), "every trial failed (2 of them) with: out of memory; see t/trials.jsonl");
        let mixed = [failed("out of memory"), failed("diverged"), failed("out of memory")];
        assert_eq!(all_failed(&mixed, path), "every trial failed; see the error fields in t/trials.jsonl");
    }

    fn rec(number: u32, status: TrialStatus, val: Option<f64>) -> TrialRecord {
        TrialRecord {
            number,
            status,
            error: None,
            params: TrialParams {
                learning_rate: 1e-3,
                d_model: 32,
                n_heads: 4,
                e_layers: 1,
                dropout: 0.1,
                seq_len: 24,
                batch_size: 8,
            },
            param_count: 1000,
            scaler: ScalerConfig::default(),
            val_loss: val,
            test_mse: None,
            epochs_run: 1,
            nan_losses: 0,
            step_ms: None,
            stats: serde_json::Value::Null,
            duration_s: 1.0,
        }
    }

    #[test]
    fn sampled_params_stay_in_the_space() {
        let space = Space::new(32, 48).unwrap();
        let mut s = Sampler::new(space.clone(), 7).unwrap();
        for i in 0..40 {
            let p = s.ask();
            assert!(space.d_models.contains(&p.d_model) && p.d_model <= 32, "{p:?}");
            assert_eq!(p.d_model % p.n_heads, 0, "{p:?}");
            assert!(space.seq_lens.contains(&p.seq_len) && p.seq_len <= 48, "{p:?}");
            assert!((1e-5..1e-2).contains(&p.learning_rate), "{p:?}");
            assert!((0.0..0.3).contains(&p.dropout), "{p:?}");
            assert!(E_LAYERS.contains(&p.e_layers) && BATCH_SIZES.contains(&p.batch_size), "{p:?}");
            // A smooth objective: TPE must accept every told trial, failed ones included.
            let score = if i % 5 == 0 { f64::INFINITY } else { (p.learning_rate.log10() + 3.0).powi(2) };
            s.tell(&p, score).unwrap();
        }
    }

    #[test]
    fn tpe_concentrates_on_good_learning_rates() {
        let mut s = Sampler::new(Space::new(128, 96).unwrap(), 1).unwrap();
        let mut late = Vec::new();
        for i in 0..80 {
            let p = s.ask();
            let x = p.learning_rate.log10();
            if i >= 60 {
                late.push(x);
            }
            s.tell(&p, (x + 3.0).powi(2)).unwrap();
        }
        let mean_dist = late.iter().map(|x| (x + 3.0).abs()).sum::<f64>() / late.len() as f64;
        // Uniform sampling over [-5, -2] gives a mean distance of about 0.83 from -3.
        assert!(mean_dist < 0.5, "late samples average {mean_dist} decades from the optimum");
    }

    #[test]
    fn caps_that_exclude_everything_name_the_flag() {
        assert!(Space::new(8, 96).unwrap_err().to_string().contains("--max-d-model"));
        assert!(Space::new(64, 10).unwrap_err().to_string().contains("--max-seq-len"));
    }

    #[test]
    fn failed_trials_never_win() {
        let mut bad = rec(0, TrialStatus::Failed, Some(0.001));
        bad.error = Some("NaN".into());
        let rs = vec![bad, rec(1, TrialStatus::Ok, Some(0.5)), rec(2, TrialStatus::Ok, Some(0.2))];
        assert_eq!(best(&rs).map(|r| r.number), Some(2));
        assert_eq!(rs[0].score(), f64::INFINITY);
        let t = table(&rs, 5);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.lines().nth(1).unwrap().trim_start().starts_with('2'), "{t}");
    }

    #[test]
    fn nan_losses_and_too_many_resets_fail_the_trial() {
        assert_eq!(verdict(0, 0.3, 2, 2), None);
        assert!(verdict(1, 0.3, 0, 2).is_some_and(|e| e.contains("NaN loss")));
        assert!(verdict(0, f64::NAN, 0, 2).is_some_and(|e| e.contains("NaN loss")));
        assert!(verdict(0, f64::INFINITY, 0, 2).is_some_and(|e| e.contains("NaN loss")));
        assert!(verdict(0, 0.3, 3, 2).is_some_and(|e| e.contains("reset 3 times") && e.contains("--max-resets 2")));
    }

    #[test]
    fn params_apply_derives_label_len_and_d_ff() {
        let p = rec(0, TrialStatus::Ok, None).params;
        let t = p.apply(&TrainConfig::default());
        assert_eq!((t.seq_len, t.label_len, t.d_model, t.d_ff, t.n_heads), (24, 12, 32, 128, 4));
        assert_eq!((t.batch_size, t.e_layers, t.learning_rate), (8, 1, 1e-3));
    }
}
