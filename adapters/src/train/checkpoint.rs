//! Checkpoints: a directory with `model.safetensors` (the f32 weights and BatchNorm running
//! statistics `keel predict` uses: the best epoch's so far), `meta.ron` (format version, model
//! shape, normalization, training config, scaler and monitor state, and the loop state of a
//! resumable run) and, for `keel train --resume`, `train_state.safetensors`.
//!
//! Versions: 1 stored only the loss scale as a number and no training config; 2 stores the whole
//! `ScalerDriver` and the `TrainConfig`; 3 (current) adds the resume state: the epoch loop's
//! [`LoopState`] (epoch, global step, early stopping, shuffling generator, learning rate) in
//! `meta.ron`, and the weights as they are at the end of the epoch (which differ from the best
//! ones once validation stops improving), Adam's two moments and the step curve in
//! `train_state.safetensors`. A second file rather than prefixed tensors in `model.safetensors`:
//! `keel predict` reads only what it needs (the state is three times the weights' size), and the
//! weights file keeps exactly the version-2 layout, whose loader refuses unknown tensors. Versions
//! 1 and 2 still load for prediction; they hold no optimizer or loop state (they were written
//! once, at the end of a run), so `--resume` refuses them. A newer or unknown version is refused
//! with a message saying which versions this keel reads.
//!
//! Writes are atomic: every file goes into a temporary directory beside the checkpoint
//! (`.NAME.keel-tmp`), is fsynced, and the directory then replaces the checkpoint in one
//! `renameat2(RENAME_EXCHANGE)` (Linux; elsewhere two renames, see `replace_dir`); a process
//! killed mid-write leaves the previous checkpoint as it was, and the next save discards the
//! partial directory. Other files in the checkpoint directory (the loss plot, a user's notes) are
//! carried over by hard link; a weights-only save drops an older resume state.

use super::data::Normalization;
use super::model::{Informer, ModelConfig, Params};
use super::trainer::{LoopState, StepPoint, Trainer};
use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use keel_core::config::{ScaleChoice, ScalerConfig, TrainConfig};
use keel_core::monitor::ScalerDriver;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The format this keel writes.
pub const FORMAT_VERSION: u32 = 3;
/// Weights file inside a checkpoint directory.
pub const WEIGHTS: &str = "model.safetensors";
/// Metadata file inside a checkpoint directory.
pub const META: &str = "meta.ron";
/// Resume state (current weights, Adam moments, step curve) inside a checkpoint directory.
pub const STATE: &str = "train_state.safetensors";

/// Metadata of the current format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// [`FORMAT_VERSION`] when written by this keel.
    pub format_version: u32,
    /// Shape of the model.
    pub model: ModelConfig,
    /// Column roles and standardization.
    pub normalization: Normalization,
    /// Training settings of the run.
    pub train: TrainConfig,
    /// Loss scaler and monitor state.
    pub scaler: ScalerDriver,
    /// What `keel train --resume` needs besides `train_state.safetensors` (`None`: not resumable,
    /// as versions 1 and 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeMeta>,
}

/// The resume part of [`Meta`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeMeta {
    /// Where the epoch loop stands.
    pub state: LoopState,
    /// Adam's step count (applied steps; skipped ones do not count).
    pub adam_steps: u64,
    /// `--no-scaler` of the run.
    pub disable_scaler: bool,
    /// `--max-batches` of the run.
    pub max_batches: Option<usize>,
    /// Size of the data the run trained on (a resume must use the same data).
    pub data: DataShape,
}

/// Rows and windows of a run's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataShape {
    /// Rows of the data file(s).
    pub rows: usize,
    /// Training windows.
    pub train: usize,
    /// Validation windows.
    pub val: usize,
    /// Test windows.
    pub test: usize,
}

/// Version 1 (kept so that old checkpoints still load).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaV1 {
    format_version: u32,
    model: ModelConfig,
    normalization: Normalization,
    /// The loss scale at save time.
    loss_scale: f64,
}

#[derive(Deserialize)]
struct VersionOnly {
    /// 0 when absent.
    #[serde(default)]
    format_version: u32,
}

/// Writes a weights-only checkpoint (`model.safetensors` and `meta.ron`, without resume state),
/// atomically.
pub fn save(dir: &Path, model: &Informer, params: &Params, meta: &Meta) -> anyhow::Result<()> {
    let meta = Meta { resume: None, ..meta.clone() };
    write_atomically(dir, |tmp| {
        write_tensors(&tmp.join(WEIGHTS), &weights_of(params, model, None)?)?;
        write_meta(&tmp.join(META), &meta)
    })
}

/// Writes a resumable checkpoint of `tr` atomically: `model.safetensors` holds `best` (the best
/// epoch's weights so far, in [`Trainer::snapshot`] order) or else the current weights;
/// `meta.resume` must be set.
pub fn save_resumable(dir: &Path, tr: &Trainer, meta: &Meta, best: Option<&[Tensor]>) -> anyhow::Result<()> {
    anyhow::ensure!(meta.resume.is_some(), "save_resumable needs the resume metadata");
    let mut state = weights_of(&tr.params, &tr.model, None)?
        .into_iter()
        .map(|(n, t)| if n.starts_with("buffer.") { (n, t) } else { (format!("param.{n}"), t) })
        .collect::<HashMap<_, _>>();
    let adam = tr.adam.export_state()?;
    let dev = Device::Cpu;
    for (((name, _), m), v) in tr.params.named().iter().zip(adam.m).zip(adam.v) {
        let n = m.len();
        state.insert(format!("adam.m.{name}"), Tensor::from_vec(m, n, &dev)?);
        state.insert(format!("adam.v.{name}"), Tensor::from_vec(v, n, &dev)?);
    }
    let n = tr.curve.len();
    let col = |f: fn(&StepPoint) -> f64| Tensor::from_vec(tr.curve.iter().map(f).collect::<Vec<f64>>(), n, &dev);
    state.insert("curve.loss".into(), col(|p| p.loss)?);
    state.insert("curve.scale".into(), col(|p| p.scale)?);
    let steps: Vec<i64> = tr.curve.iter().map(|p| p.step as i64).collect();
    state.insert("curve.step".into(), Tensor::from_vec(steps, n, &dev)?);
    let skipped: Vec<u8> = tr.curve.iter().map(|p| u8::from(p.skipped)).collect();
    state.insert("curve.skipped".into(), Tensor::from_vec(skipped, n, &dev)?);
    let weights = weights_of(&tr.params, &tr.model, best)?;
    write_atomically(dir, |tmp| {
        write_tensors(&tmp.join(STATE), &state)?;
        write_tensors(&tmp.join(WEIGHTS), &weights)?;
        write_meta(&tmp.join(META), meta)
    })
}

/// The weights-file tensors: `best` (params then buffers) when given, else the current ones.
fn weights_of(params: &Params, model: &Informer, best: Option<&[Tensor]>) -> anyhow::Result<HashMap<String, Tensor>> {
    let names: Vec<String> = params
        .named()
        .iter()
        .map(|(n, _)| n.clone())
        .chain(model.buffers().into_iter().map(|(n, _)| format!("buffer.{n}")))
        .collect();
    let tensors: Vec<Tensor> = match best {
        Some(b) => b.to_vec(),
        None => params
            .named()
            .iter()
            .map(|(_, v)| v.as_tensor().clone())
            .chain(model.buffers().into_iter().map(|(_, t)| t))
            .collect(),
    };
    anyhow::ensure!(
        names.len() == tensors.len(),
        "best weights have {} tensors, the model {}",
        tensors.len(),
        names.len()
    );
    Ok(names.into_iter().zip(tensors).collect())
}

fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
    candle_core::safetensors::save(tensors, path).with_context(|| format!("cannot write {}", path.display()))?;
    sync_file(path)
}

fn write_meta(path: &Path, meta: &Meta) -> anyhow::Result<()> {
    let text = ron::ser::to_string_pretty(meta, ron::ser::PrettyConfig::new())?;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

fn sync_file(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", path.display()))
}

/// Makes a directory's entries durable (a no-op where directories cannot be opened).
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The temporary directory a save of `dir` writes into, and where the fallback of [`replace_dir`]
/// parks the previous checkpoint.
fn sibling(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let name = dir.file_name().with_context(|| {
        format!("checkpoint path {} does not name a directory (use e.g. ./checkpoints)", dir.display())
    })?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{}.{suffix}", name.to_string_lossy())))
}

/// Checks that `dir` can be written as a checkpoint before any training: it is absent, or a
/// directory without subdirectories (a save replaces the directory as a whole; its files are
/// carried over, subdirectories could not be).
pub fn check_target(dir: &Path) -> anyhow::Result<()> {
    sibling(dir, "keel-tmp")?;
    if !dir.exists() {
        return Ok(());
    }
    anyhow::ensure!(dir.is_dir(), "--out {} exists and is not a directory; choose a directory", dir.display());
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            anyhow::bail!(
                "--out {} holds the subdirectory {}: a checkpoint save replaces the directory as a whole; \
                 choose a directory of its own",
                dir.display(),
                e.file_name().to_string_lossy()
            );
        }
    }
    Ok(())
}

/// Checks, before any training, that a run may write its checkpoint to `dir` (`--out`): the
/// structural rules of [`check_target`], and that nothing there would be lost. A run replaces its
/// checkpoint directory at every save (carrying other files over), so `dir` must not hold another
/// run's checkpoint or weights, unless it is the checkpoint `resume_from` continues. A checkpoint
/// of another run (the only copy of its resumable state) or bare weights are refused unless
/// `force`; unrelated files are kept.
pub fn check_out(dir: &Path, resume_from: Option<&Path>, force: bool) -> anyhow::Result<()> {
    check_target(dir)?;
    if force || !dir.is_dir() {
        return Ok(());
    }
    let same = |a: &Path| matches!((a.canonicalize(), dir.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if resume_from.is_some_and(same) {
        return Ok(());
    }
    if dir.join(META).exists() {
        let what = match load_meta(dir).ok().and_then(|m| m.resume.map(|r| (r.state.next_epoch, m.train.epochs))) {
            Some((done, of)) => format!("a run that finished {done} of its {of} epochs"),
            None => "a checkpoint".to_string(),
        };
        anyhow::bail!(
            "--out {} already holds {what} ({}): this run would replace it; pass --resume {} to continue that run, \
             --force to replace it, or choose another --out",
            dir.display(),
            dir.join(META).display(),
            dir.display()
        );
    }
    // Other files stay: a save carries them over (a config or notes kept beside the run are
    // fine). Weights without a meta.ron are someone's model, not a run to resume: replacing them
    // would lose them.
    let weights: Vec<&str> = [WEIGHTS, STATE].into_iter().filter(|n| dir.join(n).exists()).collect();
    if !weights.is_empty() {
        anyhow::bail!(
            "--out {} holds {} without a {META}: this run would replace them; move them away, choose another \
             --out, or pass --force to replace them",
            dir.display(),
            weights.join(" and ")
        );
    }
    Ok(())
}

/// Makes sure, before any training, that a save of `dir` can happen: creates its parent, creates
/// and removes the temporary directory a save writes into, and creates and removes a file in
/// `dir` if it exists (the previous checkpoint's files are removed after the swap). Without this,
/// an unwritable `--out` was found only at the first save, after an epoch of training.
pub fn probe_out(dir: &Path) -> anyhow::Result<()> {
    let fix = "choose a writable --out";
    let tmp = sibling(dir, "keel-tmp")?;
    let parent = tmp.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| {
        format!("--out {}: cannot create its parent directory {}; {fix}", dir.display(), parent.display())
    })?;
    if tmp.exists() {
        // A save that died part-way; the next save would discard it too.
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("--out {}: cannot remove the partial save {}", dir.display(), tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| {
        format!(
            "--out {}: cannot create a directory beside it ({}, where saves are written); {fix}",
            dir.display(),
            tmp.display()
        )
    })?;
    std::fs::remove_dir(&tmp).with_context(|| format!("--out {}: cannot remove {}", dir.display(), tmp.display()))?;
    if dir.is_dir() {
        let probe = dir.join(".keel-write-probe");
        std::fs::File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .with_context(|| format!("--out {}: cannot create and remove a file in it; {fix}", dir.display()))?;
    }
    Ok(())
}

/// Removes the checkpoint files of `dir` (the metadata first: without it nothing loads the rest),
/// keeping its other files; for a run whose weights must not be used. Absent files are no error.
pub fn discard(dir: &Path) -> anyhow::Result<()> {
    for name in [META, WEIGHTS, STATE] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", path.display()));
            }
            _ => {}
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Fills a fresh temporary directory beside `dir` with `fill`, carries `dir`'s other files over,
/// and puts it in `dir`'s place.
fn write_atomically(dir: &Path, fill: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    check_target(dir)?;
    let tmp = sibling(dir, "keel-tmp")?;
    let parent = tmp.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create directory {}", parent.display()))?;
    if tmp.exists() {
        // A save that died part-way; the checkpoint itself was never touched.
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove the partial checkpoint {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create checkpoint directory {}", tmp.display()))?;
    fill(&tmp)?;
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let e = e?;
            let to = tmp.join(e.file_name());
            let ours = [META, WEIGHTS, STATE].iter().any(|n| e.file_name() == *n);
            if e.file_type()?.is_file() && !ours && !to.exists() {
                std::fs::hard_link(e.path(), &to)
                    .or_else(|_| std::fs::copy(e.path(), &to).map(|_| ()))
                    .with_context(|| format!("cannot carry {} over to the new checkpoint", e.path().display()))?;
            }
        }
    }
    sync_dir(&tmp);
    replace_dir(&tmp, dir)?;
    sync_dir(&parent);
    Ok(())
}

/// Puts the directory `new` in `dir`'s place. Linux: one atomic exchange, then the old
/// checkpoint (now at `new`) is removed. Elsewhere, or where the file system has no exchange:
/// `dir` is renamed aside to `.NAME.keel-old`, `new` renamed in, the old one removed; a crash
/// between the two renames leaves no `dir`, and [`load_meta`] then names where the previous
/// checkpoint is.
fn replace_dir(new: &Path, dir: &Path) -> anyhow::Result<()> {
    let what = || format!("cannot move the new checkpoint {} to {}", new.display(), dir.display());
    if !dir.exists() {
        return std::fs::rename(new, dir).with_context(what);
    }
    if exchange(new, dir).is_ok() {
        return std::fs::remove_dir_all(new)
            .with_context(|| format!("cannot remove the previous checkpoint (now at {})", new.display()));
    }
    let old = sibling(dir, "keel-old")?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    std::fs::rename(dir, &old).with_context(what)?;
    std::fs::rename(new, dir).with_context(what)?;
    std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove the previous checkpoint {}", old.display()))
}

/// Swaps two paths atomically (`renameat2` with `RENAME_EXCHANGE`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Reads `dir/meta.ron`, upgrading older versions.
pub fn load_meta(dir: &Path) -> anyhow::Result<Meta> {
    let path = dir.join(META);
    if !dir.exists()
        && let Ok(old) = sibling(dir, "keel-old")
        && old.join(META).exists()
    {
        anyhow::bail!(
            "checkpoint {} is missing, but a save interrupted between its two renames left the previous one at {}: \
             rename that back to {}",
            dir.display(),
            old.display(),
            dir.display()
        );
    }
    if !dir.exists() {
        anyhow::bail!(
            "checkpoint directory {} does not exist: give the --out directory of a `keel train` run (it holds {META} \
             and {WEIGHTS})",
            dir.display()
        );
    }
    if !dir.is_dir() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        anyhow::bail!(
            "{} is a file, not a checkpoint directory: give the directory that holds {META} and {WEIGHTS} (here \
             perhaps {})",
            dir.display(),
            parent.display()
        );
    }
    if !path.exists() {
        anyhow::bail!(
            "{} holds no {META}, so it is not a checkpoint directory: give the --out directory of a `keel train` run \
             (it holds {META} and {WEIGHTS})",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read checkpoint metadata {}", path.display()))?;
    let v: VersionOnly =
        ron::from_str(&text).with_context(|| format!("{} is not a keel checkpoint metadata file", path.display()))?;
    match v.format_version {
        1 => {
            let m: MetaV1 =
                ron::from_str(&text).with_context(|| format!("{}: bad version-1 metadata", path.display()))?;
            let cfg = ScalerConfig { init_scale: ScaleChoice::Fixed(m.loss_scale), ..ScalerConfig::default() };
            Ok(Meta {
                format_version: 1,
                train: TrainConfig {
                    seq_len: m.model.seq_len as u32,
                    label_len: m.model.label_len as u32,
                    pred_len: m.model.pred_len as u32,
                    target: m.normalization.target.clone(),
                    features: m.normalization.features,
                    ..TrainConfig::default()
                },
                model: m.model,
                normalization: m.normalization,
                scaler: ScalerDriver::new(&cfg, 0),
                resume: None,
            })
        }
        // Version 2 is version 3 without `resume`.
        2 | FORMAT_VERSION => ron::from_str(&text)
            .with_context(|| format!("{}: bad version-{} metadata", path.display(), v.format_version)),
        0 => anyhow::bail!("{}: no format_version field; not a keel checkpoint", path.display()),
        other => anyhow::bail!(
            "{}: checkpoint format_version {other} is not supported; this keel reads versions 1 to {FORMAT_VERSION} \
             (a newer keel wrote it: upgrade keel)",
            path.display()
        ),
    }
}

fn read_tensors(path: &Path, device: &Device, what: &str) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).with_context(|| {
        format!("cannot read {what} {} (truncated or corrupt? restore it or train afresh)", path.display())
    })
}

/// Takes tensor `name` from `tensors` with `dims`, or says which file disagrees with the model.
fn take(tensors: &mut HashMap<String, Tensor>, name: &str, dims: &[usize], path: &Path) -> anyhow::Result<Tensor> {
    let t = tensors.remove(name).with_context(|| {
        format!("{}: tensor {name} is missing (checkpoint and model shape disagree)", path.display())
    })?;
    if t.dims() != dims {
        anyhow::bail!("{}: tensor {name} has shape {:?}, the model needs {:?}", path.display(), t.dims(), dims);
    }
    Ok(t)
}

/// Loads a checkpoint: the metadata and a model with the saved weights.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<(Meta, Informer, Params)> {
    let meta = load_meta(dir)?;
    let mut params = Params::new(0, device);
    let model = Informer::new(&meta.model, &mut params)?;
    let path = dir.join(WEIGHTS);
    let mut tensors = read_tensors(&path, device, "weights")?;
    for (name, var) in params.named() {
        let t = take(&mut tensors, name, var.dims(), &path)?;
        check_finite(&t, name, &path)?;
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    for (name, t) in tensors {
        check_finite(&t, &name, &path)?;
        let known = name.strip_prefix("buffer.").is_some_and(|b| model.set_buffer(b, t));
        if !known {
            anyhow::bail!("{}: unexpected tensor {name} (checkpoint and model shape disagree)", path.display());
        }
    }
    Ok((meta, model, params))
}

/// Refuses a weight with NaN or infinite values, naming it: one such value makes every forecast
/// NaN, and a forecast file of NaN rows with exit code 0 passes for a result.
fn check_finite(t: &Tensor, name: &str, path: &Path) -> anyhow::Result<()> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let bad = v.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        anyhow::bail!(
            "{}: tensor {name} holds {bad} NaN/inf value(s) of {}: the run that wrote it diverged or the file was \
             changed; train again (with a lower --lr if the loss went NaN) or restore the file",
            path.display(),
            v.len()
        );
    }
    Ok(())
}

/// Restores a resumable checkpoint into `tr` (built for `meta.model` and `meta.train`): the
/// weights and buffers as they were at the end of the saved epoch, Adam's moments and step count,
/// the scaler driver and the step curve. Returns the loop state and the best weights so far (in
/// [`Trainer::snapshot`] order) for [`Trainer::fit_from`].
pub fn load_resumable(dir: &Path, meta: &Meta, tr: &mut Trainer) -> anyhow::Result<(LoopState, Option<Vec<Tensor>>)> {
    let resume = meta.resume.as_ref().with_context(|| format!("{}: no resume state", dir.display()))?;
    let dev = tr.params.named().first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu);
    let path = dir.join(STATE);
    let mut st = read_tensors(&path, &dev, "training state")?;
    for (name, var) in tr.params.named() {
        let t = take(&mut st, &format!("param.{name}"), var.dims(), &path)?;
        var.set(&t)?;
    }
    for (name, cur) in tr.model.buffers() {
        let t = take(&mut st, &format!("buffer.{name}"), cur.dims(), &path)?;
        tr.model.set_buffer(&name, t);
    }
    let mut moments = (Vec::new(), Vec::new());
    for (name, var) in tr.params.named() {
        let n = [var.elem_count()];
        moments.0.push(take(&mut st, &format!("adam.m.{name}"), &n, &path)?.to_vec1::<f32>()?);
        moments.1.push(take(&mut st, &format!("adam.v.{name}"), &n, &path)?.to_vec1::<f32>()?);
    }
    tr.adam
        .import_state(super::optim::AdamState { steps: resume.adam_steps, m: moments.0, v: moments.1 })
        .with_context(|| format!("{}: Adam state", path.display()))?;
    let steps = resume.state.step as usize;
    let curve = |st: &mut HashMap<String, Tensor>, name: &str| take(st, name, &[steps], &path);
    let loss = curve(&mut st, "curve.loss")?.to_vec1::<f64>()?;
    let scale = curve(&mut st, "curve.scale")?.to_vec1::<f64>()?;
    let step = curve(&mut st, "curve.step")?.to_vec1::<i64>()?;
    let skipped = curve(&mut st, "curve.skipped")?.to_vec1::<u8>()?;
    tr.curve = (0..steps)
        .map(|i| StepPoint { step: step[i] as u64, loss: loss[i], scale: scale[i], skipped: skipped[i] != 0 })
        .collect();
    if let Some(name) = st.keys().next() {
        anyhow::bail!("{}: unexpected tensor {name} (checkpoint and model shape disagree)", path.display());
    }
    tr.driver = meta.scaler.clone();
    let best = match resume.state.best_val_loss {
        None => None,
        Some(_) => {
            let path = dir.join(WEIGHTS);
            let mut w = read_tensors(&path, &dev, "weights")?;
            let mut best = Vec::new();
            for (name, var) in tr.params.named() {
                best.push(take(&mut w, name, var.dims(), &path)?.to_dtype(DType::F32)?);
            }
            for (name, cur) in tr.model.buffers() {
                best.push(take(&mut w, &format!("buffer.{name}"), cur.dims(), &path)?);
            }
            Some(best)
        }
    };
    Ok((resume.state.clone(), best))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::rng::Rng;

    #[test]
    fn loop_state_survives_ron_with_nan_and_infinite_losses() {
        // A NaN storm puts NaN and infinite validation losses into the curve; the checkpoint of
        // that epoch must still read back (the run is resumed to see what happens next).
        let mut shuffle = Rng::new(7);
        shuffle.next_u64();
        let s = LoopState {
            next_epoch: 2,
            batch: 5,
            epoch_loss_sum: 0.1 + 0.2,
            step: 65,
            stopped_early: false,
            best_val_loss: None,
            best_epoch: 0,
            since_best: 2,
            shuffle,
            lr: 1e-4 * 0.25,
            nan_losses: 3,
            last_grad_norm: Some(1.0 / 3.0),
            val_curve: vec![(30, f64::NAN), (60, f64::INFINITY)],
            step_secs: 1.25,
        };
        let text = ron::ser::to_string_pretty(&s, ron::ser::PrettyConfig::new()).unwrap();
        let back: LoopState = ron::from_str(&text).unwrap();
        assert!(back.val_curve[0].1.is_nan() && back.val_curve[1].1 == f64::INFINITY, "{text}");
        let same = |x: &LoopState| LoopState { val_curve: vec![], ..x.clone() };
        assert_eq!(same(&back), same(&s), "{text}");
        // f64 values come back bit for bit (0.1 + 0.2 and 1/3 are not short decimals).
        assert_eq!(back.epoch_loss_sum.to_bits(), s.epoch_loss_sum.to_bits());
    }
}
