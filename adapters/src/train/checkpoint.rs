//! Checkpoints: `model.safetensors` (f32 master weights and BatchNorm running statistics) plus
//! `meta.ron` (format version, model shape, normalization, scaler and monitor state).
//!
//! Versions: 1 stored only the loss scale as a number and no training config; 2 (current) stores
//! the whole `ScalerDriver` (scaler counters + monitor history) and the `TrainConfig`. A version-1
//! checkpoint loads (it predicts the same; resuming starts a fresh monitor at its scale); a newer
//! or unknown version is refused with a message saying which versions this keel reads.

use super::data::Normalization;
use super::model::{Informer, ModelConfig, Params};
use anyhow::Context;
use candle_core::{Device, Tensor};
use keel_core::config::{ScaleChoice, ScalerConfig, TrainConfig};
use keel_core::monitor::ScalerDriver;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The format this keel writes.
pub const FORMAT_VERSION: u32 = 2;
/// Weights file inside a checkpoint directory.
pub const WEIGHTS: &str = "model.safetensors";
/// Metadata file inside a checkpoint directory.
pub const META: &str = "meta.ron";

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

/// Writes `dir/model.safetensors` and `dir/meta.ron`.
pub fn save(dir: &Path, model: &Informer, params: &Params, meta: &Meta) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
    let mut tensors: HashMap<String, Tensor> =
        params.named().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    for (n, t) in model.buffers() {
        tensors.insert(format!("buffer.{n}"), t);
    }
    candle_core::safetensors::save(&tensors, dir.join(WEIGHTS))
        .with_context(|| format!("cannot write {}", dir.join(WEIGHTS).display()))?;
    let text = ron::ser::to_string_pretty(meta, ron::ser::PrettyConfig::new())?;
    std::fs::write(dir.join(META), text).with_context(|| format!("cannot write {}", dir.join(META).display()))?;
    Ok(())
}

/// Reads `dir/meta.ron`, upgrading older versions.
pub fn load_meta(dir: &Path) -> anyhow::Result<Meta> {
    let path = dir.join(META);
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
            })
        }
        FORMAT_VERSION => {
            ron::from_str(&text).with_context(|| format!("{}: bad version-{FORMAT_VERSION} metadata", path.display()))
        }
        0 => anyhow::bail!("{}: no format_version field; not a keel checkpoint", path.display()),
        other => anyhow::bail!(
            "{}: checkpoint format_version {other} is not supported; this keel reads versions 1 to {FORMAT_VERSION} \
             (a newer keel wrote it: upgrade keel)",
            path.display()
        ),
    }
}

/// Loads a checkpoint: the metadata and a model with the saved weights.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<(Meta, Informer, Params)> {
    let meta = load_meta(dir)?;
    let mut params = Params::new(0, device);
    let model = Informer::new(&meta.model, &mut params)?;
    let path = dir.join(WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("cannot read weights {}", path.display()))?;
    for (name, var) in params.named() {
        let t = tensors.remove(name).with_context(|| {
            format!("{}: weight {name} is missing (checkpoint and model shape disagree)", path.display())
        })?;
        if t.dims() != var.dims() {
            anyhow::bail!(
                "{}: weight {name} has shape {:?}, the model needs {:?}",
                path.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(candle_core::DType::F32)?)?;
    }
    for (name, t) in tensors {
        let known = name.strip_prefix("buffer.").is_some_and(|b| model.set_buffer(b, t));
        if !known {
            anyhow::bail!("{}: unexpected tensor {name} (checkpoint and model shape disagree)", path.display());
        }
    }
    Ok((meta, model, params))
}
