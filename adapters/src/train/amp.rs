//! Mixed-precision plumbing between candle's gradients and the loss scaler: the NaN/Inf check,
//! unscaling and global-norm clipping. The decision itself (apply or skip, the next scale) is the
//! core's `LossScaler`; this file only turns tensors into the numbers it needs.

use super::model::Params;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use keel_core::config::ComputeDtype;

/// candle's dtype for a configured compute dtype.
pub fn dtype_of(d: ComputeDtype) -> DType {
    match d {
        ComputeDtype::F32 => DType::F32,
        ComputeDtype::F16 => DType::F16,
        ComputeDtype::Bf16 => DType::BF16,
    }
}

/// The gradient of every parameter in `params` order; a parameter the loss does not reach gets zeros.
pub fn collect(grads: &GradStore, params: &Params) -> Result<Vec<Tensor>> {
    params
        .named()
        .iter()
        .map(|(_, v)| match grads.get(v) {
            Some(g) => g.to_dtype(DType::F32),
            None => v.as_tensor().zeros_like(),
        })
        .collect()
}

/// `true` when any gradient holds a NaN or an infinity.
///
/// `Tensor::max` ignores NaN, so it cannot be used. Each gradient is multiplied by zero and
/// summed: `0 * finite = 0`, `0 * inf = NaN` and `0 * NaN = NaN`, so the sum is NaN exactly when
/// a non-finite value exists, and, unlike a plain sum, it cannot overflow on large finite values.
pub fn found_inf(grads: &[Tensor]) -> Result<bool> {
    // One device-to-host read for the whole model (matters on a GPU).
    let mut acc: Option<Tensor> = None;
    for g in grads {
        let s = (g * 0.0)?.to_dtype(DType::F32)?.sum_all()?;
        acc = Some(match acc {
            Some(a) => (a + s)?,
            None => s,
        });
    }
    Ok(match acc {
        Some(a) => !a.to_scalar::<f32>()?.is_finite(),
        None => false,
    })
}

/// Unscaled and clipped gradients plus the global norm of the unscaled gradients (before clipping,
/// as PyTorch's `clip_grad_norm_` reports it). `max_norm <= 0` disables clipping.
pub fn unscale_and_clip(grads: &[Tensor], scale: f64, max_norm: f64) -> Result<(Vec<Tensor>, f64)> {
    let inv = 1.0 / scale;
    let mut acc: Option<Tensor> = None;
    for g in grads {
        let s = (g * inv)?.sqr()?.sum_all()?;
        acc = Some(match acc {
            Some(a) => (a + s)?,
            None => s,
        });
    }
    let sq = match acc {
        Some(a) => a.to_scalar::<f32>()? as f64,
        None => 0.0,
    };
    let norm = sq.sqrt();
    let coef = clip_coef(norm, max_norm);
    let out = grads.iter().map(|g| g * (inv * coef)).collect::<Result<Vec<_>>>()?;
    Ok((out, norm))
}

/// The NaN/Inf check and the global norm of the unscaled gradients in one read of each gradient:
/// `(found_inf, norm)`, the norm being meaningless (NaN or infinite) when `found_inf`. On the CPU
/// this is one pass over the gradient slices in plain Rust, summing in f64; elsewhere it is
/// [`found_inf`] and the sums of [`unscale_and_clip`] as tensor ops.
pub fn check_and_norm(grads: &[Tensor], scale: f64) -> Result<(bool, f64)> {
    let inv = 1.0 / scale;
    let host = grads.iter().all(|g| g.device().is_cpu() && g.dtype() == DType::F32);
    if !host {
        if found_inf(grads)? {
            return Ok((true, f64::NAN));
        }
        let mut sq = 0.0;
        for g in grads {
            sq += (g * inv)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        return Ok((false, sq.sqrt()));
    }
    let mut sq = 0f64;
    let mut bad = false;
    for g in grads {
        let g = g.contiguous()?;
        let (s, l) = g.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(v)) = &*s else { candle_core::bail!("gradient is not an f32 CPU tensor") };
        let v = &v[l.start_offset()..l.start_offset() + l.shape().elem_count()];
        // f32 partial sums over short runs (vectorizes), accumulated in f64.
        for chunk in v.chunks(256) {
            let mut part = 0f32;
            for &x in chunk {
                part += x * x;
            }
            sq += part as f64;
            bad |= !part.is_finite();
        }
    }
    // A NaN or an infinity anywhere makes its chunk's partial sum non-finite; large finite values
    // can overflow an f32 partial sum too, so a non-finite partial sum is re-checked element-wise.
    if bad {
        for g in grads {
            if g.flatten_all()?.to_vec1::<f32>()?.iter().any(|x| !x.is_finite()) {
                return Ok((true, f64::NAN));
            }
        }
        // Finite but huge: recompute the sum in f64 element by element.
        sq = 0.0;
        for g in grads {
            sq += g.flatten_all()?.to_vec1::<f32>()?.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        }
    }
    Ok((false, sq.sqrt() * inv))
}

/// The clip factor of `clip_grad_norm_`: `max_norm / (norm + 1e-6)` when the norm exceeds
/// `max_norm`, else 1; `max_norm <= 0` disables clipping.
pub fn clip_coef(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 }
}

/// Mean, standard deviation and largest absolute value of a model output (logged with scaler
/// events: an output drifting toward f16's 65504 is the usual prelude to overflow).
pub fn output_stats(y: &Tensor) -> Result<(f64, f64, f64)> {
    let y = y.to_dtype(DType::F32)?.flatten_all()?;
    let mean = y.mean_all()?.to_scalar::<f32>()? as f64;
    let var = y.broadcast_sub(&y.mean_keepdim(0)?)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    let maxabs = y.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    Ok((mean, var.sqrt(), maxabs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nan_and_inf_are_found_where_max_would_miss_nan() {
        let dev = Device::Cpu;
        let ok = Tensor::new(&[1f32, 3e38, -3e38, 3e38], &dev).unwrap(); // sum would overflow
        let nan = Tensor::new(&[1f32, f32::NAN, 2.0], &dev).unwrap();
        let inf = Tensor::new(&[1f32, f32::NEG_INFINITY], &dev).unwrap();
        assert!(!found_inf(std::slice::from_ref(&ok)).unwrap());
        assert!(found_inf(&[ok.clone(), nan.clone()]).unwrap());
        assert!(found_inf(&[inf]).unwrap());
        // The trap this avoids: max ignores the NaN.
        assert_eq!(nan.max_all().unwrap().to_scalar::<f32>().unwrap(), 2.0);
    }

    #[test]
    fn check_and_norm_agrees_with_found_inf_and_the_unscaled_norm() {
        let dev = Device::Cpu;
        let ok = Tensor::new(&[1f32, 3e38, -3e38, 3e38], &dev).unwrap(); // f32 partial sums overflow
        let nan = Tensor::new(&[1f32, f32::NAN, 2.0], &dev).unwrap();
        let inf = Tensor::new(&[1f32, f32::NEG_INFINITY], &dev).unwrap();
        let (found, norm) = check_and_norm(std::slice::from_ref(&ok), 1.0).unwrap();
        assert!(!found && (norm / (3e38f64 * 3f64.sqrt()) - 1.0).abs() < 1e-6, "{norm}");
        assert!(check_and_norm(&[ok.clone(), nan], 1.0).unwrap().0);
        assert!(check_and_norm(&[inf], 1.0).unwrap().0);
        // Scaled by 8: unscaled grads are [3, 0] and [4] -> norm 5.
        let g = [Tensor::new(&[24f32, 0.0], &dev).unwrap(), Tensor::new(&[32f32], &dev).unwrap()];
        assert_eq!(check_and_norm(&g, 8.0).unwrap(), (false, 5.0));
        assert_eq!(clip_coef(5.0, 0.0), 1.0);
        assert!((clip_coef(5.0, 1.0) - 0.2).abs() < 1e-6);
    }

    #[test]
    fn unscale_then_clip_to_global_norm() {
        let dev = Device::Cpu;
        // Scaled by 8: unscaled grads are [3, 0] and [4] -> norm 5; clipped to norm 1.
        let g = [Tensor::new(&[24f32, 0.0], &dev).unwrap(), Tensor::new(&[32f32], &dev).unwrap()];
        let (out, norm) = unscale_and_clip(&g, 8.0, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a = out[0].to_vec1::<f32>().unwrap();
        let b = out[1].to_vec1::<f32>().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5 && (b[0] - 0.8).abs() < 1e-5, "{a:?} {b:?}");
        let (out, _) = unscale_and_clip(&g, 8.0, 0.0).unwrap();
        assert_eq!(out[1].to_vec1::<f32>().unwrap(), vec![4.0]);
    }
}
