//! Adam over the f32 master weights (Informer's optimizer: lr 1e-4, no weight decay).
//!
//! Written here rather than using `candle_nn::AdamW` so that a skipped step provably leaves every
//! moment and the step counter untouched: a step that is not called changes nothing.
//!
//! On the CPU the update is one fused pass per parameter over plain slices (gradient times the
//! unscale-and-clip factor, both moments, the weight written in place): the tensor-op version
//! allocates about ten full-size temporaries per parameter and reads each of them back, which on
//! the base preset (11 M weights) costs more than the rest of the optimizer step put together. The
//! tensor-op version is kept for other devices (and as the reference in the tests).

use super::model::Params;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Storage, Tensor};

/// Adam (Kingma & Ba) with bias correction, betas (0.9, 0.999), eps 1e-8.
pub struct Adam {
    /// Learning rate (Informer halves it each epoch).
    pub lr: f64,
    moments: Moments,
    t: u64,
}

/// First and second moments, as device tensors or as host vectors (CPU fused path).
enum Moments {
    Tensors { m: Vec<Tensor>, v: Vec<Tensor> },
    Host { m: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
}

const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    /// Zero moments for every parameter; the fused update when every parameter is an f32 CPU tensor.
    pub fn new(params: &Params, lr: f64) -> Result<Self> {
        let host = params.named().iter().all(|(_, v)| v.device().is_cpu() && v.dtype() == DType::F32);
        if !host {
            return Self::with_tensor_ops(params, lr);
        }
        let zeros = || params.named().iter().map(|(_, v)| vec![0f32; v.elem_count()]).collect::<Vec<_>>();
        Ok(Adam { lr, moments: Moments::Host { m: zeros(), v: zeros() }, t: 0 })
    }

    /// Zero moments kept as tensors, updated with candle tensor ops (any device).
    pub fn with_tensor_ops(params: &Params, lr: f64) -> Result<Self> {
        let zeros = || params.named().iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<Result<Vec<_>>>();
        Ok(Adam { lr, moments: Moments::Tensors { m: zeros()?, v: zeros()? }, t: 0 })
    }

    /// Steps taken (skipped steps do not count, as in PyTorch where `optimizer.step()` is not called).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The step count and both moments, for a resumable checkpoint.
    pub fn export_state(&self) -> Result<AdamState> {
        let (m, v) = match &self.moments {
            Moments::Host { m, v } => (m.clone(), v.clone()),
            Moments::Tensors { m, v } => {
                let host =
                    |x: &Vec<Tensor>| x.iter().map(|t| t.flatten_all()?.to_vec1::<f32>()).collect::<Result<Vec<_>>>();
                (host(m)?, host(v)?)
            }
        };
        Ok(AdamState { steps: self.t, m, v })
    }

    /// Restores what [`Adam::export_state`] returned; each moment must have its parameter's size.
    pub fn import_state(&mut self, state: AdamState) -> Result<()> {
        let AdamState { steps: t, m: m_in, v: v_in } = state;
        let sizes: Vec<usize> = match &self.moments {
            Moments::Host { m, .. } => m.iter().map(Vec::len).collect(),
            Moments::Tensors { m, .. } => m.iter().map(Tensor::elem_count).collect(),
        };
        let fits = |x: &[Vec<f32>]| x.len() == sizes.len() && x.iter().zip(&sizes).all(|(a, &n)| a.len() == n);
        if !fits(&m_in) || !fits(&v_in) {
            candle_core::bail!("Adam state: the saved moments do not match the model's parameters");
        }
        match &mut self.moments {
            Moments::Host { m, v } => (*m, *v) = (m_in, v_in),
            Moments::Tensors { m, v } => {
                let back = |old: &[Tensor], new: Vec<Vec<f32>>| {
                    old.iter()
                        .zip(new)
                        .map(|(o, x)| Tensor::from_vec(x, o.shape(), o.device()))
                        .collect::<Result<Vec<_>>>()
                };
                (*m, *v) = (back(m, m_in)?, back(v, v_in)?);
            }
        }
        self.t = t;
        Ok(())
    }

    /// One update with `grads` (unscaled, clipped, in `params` order).
    pub fn step(&mut self, params: &Params, grads: &[Tensor]) -> Result<()> {
        self.step_scaled(params, grads, 1.0)
    }

    /// One update with the gradients `grads * mul` (`mul` = 1 / loss scale times the clip factor),
    /// without materializing the product.
    pub fn step_scaled(&mut self, params: &Params, grads: &[Tensor], mul: f64) -> Result<()> {
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t as i32);
        let c2 = 1.0 - B2.powi(self.t as i32);
        match &mut self.moments {
            Moments::Tensors { m, v } => {
                for (i, ((_, var), g)) in params.named().iter().zip(grads).enumerate() {
                    let g = if mul == 1.0 { g.clone() } else { (g * mul)? };
                    m[i] = ((&m[i] * B1)? + (&g * (1.0 - B1))?)?;
                    v[i] = ((&v[i] * B2)? + (g.sqr()? * (1.0 - B2))?)?;
                    let mhat = (&m[i] / c1)?;
                    let vhat = (&v[i] / c2)?;
                    let upd = (mhat / (vhat.sqrt()? + EPS)?)?;
                    var.set(&(var.as_tensor() - (upd * self.lr)?)?)?;
                }
            }
            Moments::Host { m, v } => {
                for (i, ((_, var), g)) in params.named().iter().zip(grads).enumerate() {
                    let g = g.to_dtype(DType::F32)?.contiguous()?;
                    let (gs, gl) = g.storage_and_layout();
                    let Storage::Cpu(CpuStorage::F32(gv)) = &*gs else {
                        candle_core::bail!("fused Adam: the gradient of parameter {i} is not on the CPU")
                    };
                    let g = &gv[gl.start_offset()..gl.start_offset() + gl.shape().elem_count()];
                    let op = HostAdam {
                        g,
                        state: std::cell::RefCell::new((&mut m[i], &mut v[i])),
                        mul: mul as f32,
                        lr: self.lr as f32,
                        c1: c1 as f32,
                        c2: c2 as f32,
                    };
                    var.as_tensor().inplace_op1(&op)?;
                }
            }
        }
        Ok(())
    }
}

/// Adam's state (what a resumed run needs to continue exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    /// Steps taken.
    pub steps: u64,
    /// First moment of every parameter, flattened, in `params` order.
    pub m: Vec<Vec<f32>>,
    /// Second moment, likewise.
    pub v: Vec<Vec<f32>>,
}

/// The fused Adam update of one parameter, in place on its CPU storage.
struct HostAdam<'a> {
    g: &'a [f32],
    state: std::cell::RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    mul: f32,
    lr: f32,
    c1: f32,
    c2: f32,
}

impl InplaceOp1 for HostAdam<'_> {
    fn name(&self) -> &'static str {
        "keel-adam"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(w) = storage else { candle_core::bail!("fused Adam: master weight is not f32") };
        if !layout.is_contiguous() || layout.shape().elem_count() != self.g.len() {
            candle_core::bail!("fused Adam: master weight is not contiguous or its gradient has another size");
        }
        let w = &mut w[layout.start_offset()..layout.start_offset() + self.g.len()];
        let mut st = self.state.borrow_mut();
        let (m, v) = &mut *st;
        let (b1, b2, eps) = (B1 as f32, B2 as f32, EPS as f32);
        let (a1, a2) = (1.0 - b1, 1.0 - b2);
        // Same order of operations as the tensor version (each line there is one f32 op).
        for (((w, &g), m), v) in w.iter_mut().zip(self.g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * self.mul;
            *m = *m * b1 + g * a1;
            *v = *v * b2 + (g * g) * a2;
            let upd = (*m / self.c1) / ((*v / self.c2).sqrt() + eps);
            *w -= upd * self.lr;
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
        for fused in [true, false] {
            let mut p = Params::new(0, &Device::Cpu);
            p.constant("w", &[3], 1.0).unwrap();
            let mut adam = if fused { Adam::new(&p, 0.1) } else { Adam::with_tensor_ops(&p, 0.1) }.unwrap();
            let g = Tensor::new(&[2f32, -0.5, 0.0], &Device::Cpu).unwrap();
            adam.step(&p, &[g]).unwrap();
            let w = p.named()[0].1.as_tensor().to_vec1::<f32>().unwrap();
            // Bias-corrected first step: update = lr * g / (|g| + eps).
            assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6 && w[2] == 1.0, "{w:?}");
            assert_eq!(adam.steps(), 1);
        }
    }

    #[test]
    fn fused_update_matches_the_tensor_op_update_over_several_steps() {
        let dev = Device::Cpu;
        let mk = || {
            let mut p = Params::new(4, &dev);
            p.uniform("a", &[5, 7], 1.0).unwrap();
            p.uniform("b", &[3], 1.0).unwrap();
            p
        };
        let (pf, pt) = (mk(), mk());
        let mut af = Adam::new(&pf, 0.01).unwrap();
        let mut at = Adam::with_tensor_ops(&pt, 0.01).unwrap();
        let mut r = keel_core::rng::Rng::new(9);
        for _ in 0..4 {
            let grads: Vec<Tensor> = pf
                .named()
                .iter()
                .map(|(_, v)| {
                    let g: Vec<f32> = (0..v.elem_count()).map(|_| (r.next_f64() as f32 - 0.5) * 512.0).collect();
                    Tensor::from_vec(g, v.shape(), &dev).unwrap()
                })
                .collect();
            // Scaled by 256 and clipped by 0.5: the fused step folds both into one factor.
            af.step_scaled(&pf, &grads, 0.5 / 256.0).unwrap();
            let unscaled: Vec<Tensor> = grads.iter().map(|g| (g * (0.5 / 256.0)).unwrap()).collect();
            at.step(&pt, &unscaled).unwrap();
        }
        for ((name, a), (_, b)) in pf.named().iter().zip(pt.named()) {
            let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "{name}: fused and tensor-op Adam differ by {d}");
        }
        assert_eq!(af.steps(), 4);
    }

    #[test]
    fn exported_state_continues_bit_for_bit_in_a_fresh_optimizer() {
        for fused in [true, false] {
            let dev = Device::Cpu;
            let mk = || {
                let mut p = Params::new(3, &dev);
                p.uniform("a", &[4, 3], 1.0).unwrap();
                p
            };
            let new = |p: &Params| if fused { Adam::new(p, 0.01) } else { Adam::with_tensor_ops(p, 0.01) }.unwrap();
            let (pa, pb) = (mk(), mk());
            let mut a = new(&pa);
            let g =
                |k: f32| vec![Tensor::from_vec((0..12).map(|i| (i as f32 - 5.0) * k).collect(), (4, 3), &dev).unwrap()];
            a.step(&pa, &g(1.0)).unwrap();
            pb.named()[0].1.set(pa.named()[0].1.as_tensor()).unwrap();
            let mut b = new(&pb);
            b.import_state(a.export_state().unwrap()).unwrap();
            assert_eq!(b.steps(), 1);
            a.step(&pa, &g(-0.3)).unwrap();
            b.step(&pb, &g(-0.3)).unwrap();
            let w = |p: &Params| p.named()[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(w(&pa), w(&pb), "fused {fused}");
            assert_eq!(a.export_state().unwrap(), b.export_state().unwrap());
            let mut bad = a.export_state().unwrap();
            bad.m[0].pop();
            assert!(b.import_state(bad).unwrap_err().to_string().contains("do not match"));
        }
    }
}
