//! The Informer forecaster (Zhou et al., AAAI 2021) on candle, written for mixed precision.
//!
//! Master weights are f32 [`Var`]s; every forward casts them to the compute dtype, so backward
//! through the cast lands the gradients on the f32 masters (what `torch.autocast` + `GradScaler`
//! do). Only differentiable ops are used: candle 0.11's `softmax_last_dim` and the fused
//! `layer_norm` (taken by `LayerNorm::forward` on contiguous input) record no backward op and
//! would silently drop gradients, so [`fused`] has both as custom ops with a backward pass (CPU;
//! composite ops elsewhere), and `max_pool2d`'s backward refuses kernel != stride; the
//! replacements are here. Softmax and normalization statistics run in f32 like autocast does.

pub mod attention;
pub mod fused;
pub mod informer;

use candle_core::{DType, Device, Result, Tensor, Var};
use keel_core::rng::Rng;
use std::cell::RefCell;

pub use informer::{Informer, ModelConfig};

/// Per-forward settings: compute dtype, train/eval mode, and the seeded generator for dropout
/// and ProbSparse key sampling (candle's CPU generator cannot be seeded, so it is not used).
pub struct Ctx {
    /// Compute dtype of the forward and backward pass.
    pub dtype: DType,
    /// Training mode: dropout on, batch statistics in BatchNorm.
    pub train: bool,
    rng: RefCell<Rng>,
}

impl Ctx {
    /// A context; in eval mode a fixed seed makes predictions reproducible.
    pub fn new(dtype: DType, train: bool, seed: u64) -> Self {
        Ctx { dtype, train, rng: RefCell::new(Rng::new(seed)) }
    }

    /// A uniform integer below `n`.
    pub fn below(&self, n: usize) -> usize {
        self.rng.borrow_mut().below(n as u64) as usize
    }

    /// `x + dropout(a)`, a residual connection, one node in training ([`fused::add_dropout`]).
    pub fn add_dropout(&self, x: &Tensor, a: &Tensor, p: f64) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return x + a;
        }
        let seed = self.rng.borrow_mut().next_u64();
        fused::add_dropout(x, a, fused::dropout_mask(a.elem_count(), 1.0 - p, seed))
    }

    /// GELU (erf form) followed by inverted dropout with probability `p`, one node in training
    /// ([`fused::gelu_erf_dropout`]); the generator is drawn as by `dropout` after the GELU.
    pub fn gelu_dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return fused::gelu_erf(x);
        }
        let seed = self.rng.borrow_mut().next_u64();
        fused::gelu_erf_dropout(x, fused::dropout_mask(x.elem_count(), 1.0 - p, seed))
    }

    /// Inverted dropout with probability `p` (identity in eval mode).
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(x.clone());
        }
        let seed = self.rng.borrow_mut().next_u64();
        fused::dropout(x, fused::dropout_mask(x.elem_count(), 1.0 - p, seed))
    }
}

/// The named f32 master weights, created deterministically from a seed.
pub struct Params {
    vars: Vec<(String, Var)>,
    rng: Rng,
    device: Device,
}

impl Params {
    /// An empty store on `device`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Params { vars: Vec::new(), rng: Rng::new(seed), device: device.clone() }
    }

    /// A new variable, uniform in `[-bound, bound]` (PyTorch's default for Linear and Conv).
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> Result<Var> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| ((self.rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        self.push(name, Tensor::from_vec(v, shape, &self.device)?)
    }

    /// A new variable filled with `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Var> {
        let t = (Tensor::ones(shape, DType::F32, &self.device)? * value as f64)?;
        self.push(name, t)
    }

    fn push(&mut self, name: &str, t: Tensor) -> Result<Var> {
        let var = Var::from_tensor(&t)?;
        self.vars.push((name.to_string(), var.clone()));
        Ok(var)
    }

    /// Every variable with its name, in creation order.
    pub fn named(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Total number of scalars.
    pub fn count(&self) -> u64 {
        self.vars.iter().map(|(_, v)| v.elem_count() as u64).sum()
    }
}

/// The weight cast to the compute dtype; the cast is recorded, so gradients reach the f32 master.
pub fn cast(v: &Var, ctx: &Ctx) -> Result<Tensor> {
    v.as_tensor().to_dtype(ctx.dtype)
}

/// `y = x W^T + b` over the last dimension.
pub struct Linear {
    w: Var,
    b: Var,
}

impl Linear {
    /// PyTorch's init: weight and bias uniform in `±1/sqrt(fan_in)`.
    pub fn new(p: &mut Params, name: &str, fan_in: usize, fan_out: usize) -> Result<Self> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        Ok(Linear {
            w: p.uniform(&format!("{name}.weight"), &[fan_out, fan_in], bound)?,
            b: p.uniform(&format!("{name}.bias"), &[fan_out], bound)?,
        })
    }

    /// Applies the map to `(.., fan_in)` ([`fused::linear`]: one graph node).
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        fused::linear(x, &cast(&self.w, ctx)?, &cast(&self.b, ctx)?)
    }
}

/// Layer normalization over the last dimension ([`fused::layer_norm`]: the fused candle kernel
/// has no backward), with statistics in f32.
pub struct LayerNorm {
    g: Var,
    b: Var,
}

impl LayerNorm {
    /// Gain 1, bias 0.
    pub fn new(p: &mut Params, name: &str, d: usize) -> Result<Self> {
        Ok(LayerNorm {
            g: p.constant(&format!("{name}.weight"), &[d], 1.0)?,
            b: p.constant(&format!("{name}.bias"), &[d], 0.0)?,
        })
    }

    /// Normalizes `(.., d)`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?;
        fused::layer_norm(&xf, self.g.as_tensor(), self.b.as_tensor(), 1e-5)?.to_dtype(ctx.dtype)
    }
}

/// Conv1d with kernel 3 and circular padding over time, as a Linear over the concatenation
/// `[x(t-1), x(t), x(t+1)]` (the same function; no conv kernel or conv backward needed in f16).
pub struct CircularConv3 {
    lin: Linear,
}

impl CircularConv3 {
    /// `c_in` channels to `c_out`.
    pub fn new(p: &mut Params, name: &str, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(CircularConv3 { lin: Linear::new(p, name, 3 * c_in, c_out)? })
    }

    /// `(B, L, c_in)` to `(B, L, c_out)`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let l = x.dim(1)?;
        let prev = Tensor::cat(&[x.narrow(1, l - 1, 1)?, x.narrow(1, 0, l - 1)?], 1)?;
        let next = Tensor::cat(&[x.narrow(1, 1, l - 1)?, x.narrow(1, 0, 1)?], 1)?;
        self.lin.forward(&Tensor::cat(&[prev, x.clone(), next], 2)?, ctx)
    }
}

/// BatchNorm1d over channels of `(B, L, C)`, statistics in f32; running statistics are buffers
/// (saved in checkpoints, not trained).
pub struct BatchNorm {
    g: Var,
    b: Var,
    /// Running mean and (unbiased) variance, updated in training mode with momentum 0.1.
    pub running: RefCell<(Tensor, Tensor)>,
}

impl BatchNorm {
    /// Gain 1, bias 0, running mean 0 and variance 1.
    pub fn new(p: &mut Params, name: &str, c: usize) -> Result<Self> {
        let dev = p.device.clone();
        Ok(BatchNorm {
            g: p.constant(&format!("{name}.weight"), &[c], 1.0)?,
            b: p.constant(&format!("{name}.bias"), &[c], 0.0)?,
            running: RefCell::new((Tensor::zeros(c, DType::F32, &dev)?, Tensor::ones(c, DType::F32, &dev)?)),
        })
    }

    /// Normalizes each channel: by the batch statistics in training mode ([`fused::batch_norm_train`],
    /// which also updates the running statistics), else by the running ones.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (bsz, l, c) = x.dims3()?;
        let xf = x.to_dtype(DType::F32)?.reshape((bsz * l, c))?;
        let y = if ctx.train {
            let (y, mean, var) = fused::batch_norm_train(&xf, self.g.as_tensor(), self.b.as_tensor(), 1e-5)?;
            let n = (bsz * l) as f64;
            let unbiased = if n > 1.0 { (var * (n / (n - 1.0)))? } else { var };
            let mut r = self.running.borrow_mut();
            let rm = ((&r.0 * 0.9)? + (mean * 0.1)?)?;
            let rv = ((&r.1 * 0.9)? + (unbiased * 0.1)?)?;
            *r = (rm, rv);
            y
        } else {
            let r = self.running.borrow();
            let (mean, var) = (r.0.unsqueeze(0)?, r.1.unsqueeze(0)?);
            let xn = xf.broadcast_sub(&mean)?.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
            xn.broadcast_mul(self.g.as_tensor())?.broadcast_add(self.b.as_tensor())?
        };
        y.reshape((bsz, l, c))?.to_dtype(ctx.dtype)
    }
}

/// ELU (alpha 1): [`fused::elu`] on the CPU in f32, else from relu and exp, whose backward is
/// defined for every dtype.
pub fn elu(x: &Tensor) -> Result<Tensor> {
    fused::elu(x)
}

/// MaxPool1d(kernel 3, stride 2, padding 1) over time of `(B, L, C)`. Built from strided
/// selections and `maximum` because candle's `max_pool2d` backward refuses kernel != stride.
/// Padding repeats the edge value, which gives the same maxima as PyTorch's -inf padding since
/// the edge value is always inside the same window.
pub fn max_pool3_s2(x: &Tensor) -> Result<Tensor> {
    let l = x.dim(1)?;
    let out = l.div_ceil(2);
    let xp = Tensor::cat(&[x.narrow(1, 0, 1)?, x.clone(), x.narrow(1, l - 1, 1)?], 1)?;
    let pick = |off: u32| -> Result<Tensor> {
        let idx: Vec<u32> = (0..out as u32).map(|i| 2 * i + off).collect();
        xp.index_select(&Tensor::new(idx, x.device())?, 1)
    };
    pick(0)?.maximum(&pick(1)?)?.maximum(&pick(2)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_matches_pytorch_windows() {
        let dev = Device::Cpu;
        // L = 5: windows [-inf,1,5] [5,2,4] [4,3,-inf] -> 5, 5, 4
        let x = Tensor::new(&[1f32, 5., 2., 4., 3.], &dev).unwrap().reshape((1, 5, 1)).unwrap();
        let y = max_pool3_s2(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![5., 5., 4.]);
        // L = 4: [-inf,1,5] [5,2,4] -> 5, 5
        let x = Tensor::new(&[1f32, 5., 2., 4.], &dev).unwrap().reshape((1, 4, 1)).unwrap();
        let y = max_pool3_s2(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![5., 5.]);
    }

    #[test]
    fn elu_matches_definition() {
        let x = Tensor::new(&[-2f32, -0.5, 0.0, 1.5], &Device::Cpu).unwrap();
        let y = elu(&x).unwrap().to_vec1::<f32>().unwrap();
        let want = [(-2f32).exp() - 1.0, (-0.5f32).exp() - 1.0, 0.0, 1.5];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn circular_conv_wraps_around() {
        let dev = Device::Cpu;
        let mut p = Params::new(1, &dev);
        let conv = CircularConv3::new(&mut p, "c", 1, 1).unwrap();
        // weight [1, 10, 100], bias 0: y(t) = x(t-1) + 10 x(t) + 100 x(t+1), indices mod L
        p.named()[0].1.set(&Tensor::new(&[[1f32, 10., 100.]], &dev).unwrap()).unwrap();
        p.named()[1].1.set(&Tensor::new(&[0f32], &dev).unwrap()).unwrap();
        let x = Tensor::new(&[1f32, 2., 3.], &dev).unwrap().reshape((1, 3, 1)).unwrap();
        let ctx = Ctx::new(DType::F32, false, 0);
        let y = conv.forward(&x, &ctx).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![3. + 10. + 200., 1. + 20. + 300., 2. + 30. + 100.]);
    }
}
