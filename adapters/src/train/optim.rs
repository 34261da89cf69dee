//! Adam over the f32 master weights (Informer's optimizer: lr 1e-4, no weight decay).
//!
//! Written here rather than using `candle_nn::AdamW` so that a skipped step provably leaves every
//! moment and the step counter untouched: a step that is not called changes nothing.

use super::model::Params;
use candle_core::{Result, Tensor};

/// Adam (Kingma & Ba) with bias correction, betas (0.9, 0.999), eps 1e-8.
pub struct Adam {
    /// Learning rate (Informer halves it each epoch).
    pub lr: f64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl Adam {
    /// Zero moments for every parameter.
    pub fn new(params: &Params, lr: f64) -> Result<Self> {
        let zeros = || params.named().iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<Result<Vec<_>>>();
        Ok(Adam { lr, m: zeros()?, v: zeros()?, t: 0 })
    }

    /// Steps taken (skipped steps do not count, as in PyTorch where `optimizer.step()` is not called).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update with `grads` (unscaled, clipped, in `params` order).
    pub fn step(&mut self, params: &Params, grads: &[Tensor]) -> Result<()> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        self.t += 1;
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (i, ((_, var), g)) in params.named().iter().zip(grads).enumerate() {
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mhat = (&self.m[i] / c1)?;
            let vhat = (&self.v[i] / c2)?;
            let upd = (mhat / (vhat.sqrt()? + eps)?)?;
            var.set(&(var.as_tensor() - (upd * self.lr)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        let mut p = Params::new(0, &Device::Cpu);
        p.constant("w", &[3], 1.0).unwrap();
        let mut adam = Adam::new(&p, 0.1).unwrap();
        let g = Tensor::new(&[2f32, -0.5, 0.0], &Device::Cpu).unwrap();
        adam.step(&p, &[g]).unwrap();
        let w = p.named()[0].1.as_tensor().to_vec1::<f32>().unwrap();
        // Bias-corrected first step: update = lr * g / (|g| + eps).
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6 && w[2] == 1.0, "{w:?}");
        assert_eq!(adam.steps(), 1);
    }
}
