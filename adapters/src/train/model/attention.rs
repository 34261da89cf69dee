//! Full attention and Informer's ProbSparse self-attention.
//!
//! ProbSparse (Zhou et al. 2021, section 3.1): for each query, `c * ceil(ln L_K)` sampled keys
//! estimate the sparsity measure M = max - mean of its scores; only the top `u = c * ceil(ln L_Q)`
//! queries get real attention, the rest get the mean of V (or its cumulative sum when masked,
//! which is what a causal "lazy" query would see). Selection is discrete and carries no gradient
//! (as in the reference code); gathering and scattering the selected queries are done with a
//! one-hot matrix product so that both stay differentiable and run in f16.

use super::{Ctx, Linear, Params};
use candle_core::{DType, Result, Tensor};

/// Which attention a layer uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Every query attends to every key.
    Full,
    /// ProbSparse with sampling factor `c`.
    Prob(usize),
}

/// Multi-head attention with input and output projections (the reference's `AttentionLayer`).
pub struct AttentionLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kind: Kind,
    masked: bool,
    /// The reference decoder's "mix": heads are flattened in (head, time) order before the output
    /// projection. Kept for fidelity with trained reference models.
    mix: bool,
    dropout: f64,
}

impl AttentionLayer {
    /// A layer of width `d_model` with `heads` heads.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &mut Params,
        name: &str,
        d_model: usize,
        heads: usize,
        kind: Kind,
        masked: bool,
        mix: bool,
        dropout: f64,
    ) -> Result<Self> {
        Ok(AttentionLayer {
            q: Linear::new(p, &format!("{name}.query"), d_model, d_model)?,
            k: Linear::new(p, &format!("{name}.key"), d_model, d_model)?,
            v: Linear::new(p, &format!("{name}.value"), d_model, d_model)?,
            o: Linear::new(p, &format!("{name}.out"), d_model, d_model)?,
            heads,
            kind,
            masked,
            mix,
            dropout,
        })
    }

    /// `queries (B, L, d)`, `keys`/`values (B, S, d)` to `(B, L, d)`.
    pub fn forward(&self, queries: &Tensor, keys: &Tensor, values: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (b, l, d) = queries.dims3()?;
        let s = keys.dim(1)?;
        let h = self.heads;
        let split = |x: Tensor, len: usize| super::fused::swap_middle(&x, b, len, h, d / h);
        let q = split(self.q.forward(queries, ctx)?, l)?;
        let k = split(self.k.forward(keys, ctx)?, s)?;
        let v = split(self.v.forward(values, ctx)?, s)?;
        let out = match self.kind {
            Kind::Full => full(&q, &k, &v, self.masked, self.dropout, ctx)?,
            Kind::Prob(c) => prob_sparse(&q, &k, &v, c, self.masked, ctx)?,
        }; // (B, H, L, D)
        let out = if self.mix {
            out.reshape((b, l, d))?
        } else {
            super::fused::swap_middle(&out, b, h, l, d / h)?.reshape((b, l, d))?
        };
        self.o.forward(&out, ctx)
    }
}

/// Attention weights in f32 (as autocast does), `softmax(scale * scores)` with an optional
/// causal mask: row `r` of the scores sees keys `0..=limits[r % limits.len()]`
/// ([`super::fused::attention_softmax`]).
fn softmax_f32(scores: &Tensor, scale: f64, limits: Option<Vec<usize>>, dtype: DType) -> Result<Tensor> {
    super::fused::attention_softmax(&scores.to_dtype(DType::F32)?, scale, limits)?.to_dtype(dtype)
}

/// Scaled dot-product attention over `(B, H, L, D)`.
pub fn full(q: &Tensor, k: &Tensor, v: &Tensor, masked: bool, dropout: f64, ctx: &Ctx) -> Result<Tensor> {
    let (_, _, l, dh) = q.dims4()?;
    let scores = super::fused::batch_matmul(q, &k.t()?)?;
    let limits = masked.then(|| (0..l).collect::<Vec<_>>());
    let a = ctx.dropout(&softmax_f32(&scores, 1.0 / (dh as f64).sqrt(), limits, q.dtype())?, dropout)?;
    super::fused::batch_matmul(&a, v)
}

/// `n = c * ceil(ln len)`, capped at `len` (the reference's `U_part` and `u`).
pub fn sample_count(c: usize, len: usize) -> usize {
    (c * (len as f64).ln().ceil().max(1.0) as usize).min(len)
}

/// ProbSparse attention over `(B, H, L, D)`.
pub fn prob_sparse(q: &Tensor, k: &Tensor, v: &Tensor, c: usize, masked: bool, ctx: &Ctx) -> Result<Tensor> {
    let (b, h, lq, dh) = q.dims4()?;
    let lk = k.dim(2)?;
    let dev = q.device();
    let n_sample = sample_count(c, lk);
    let u = sample_count(c, lq);

    // Sparsity measure on host f32 copies: it only chooses queries (no gradient). Computed in
    // plain Rust: as tensor ops it gathered a (B, H, Lq, n_sample, D) copy of the sampled keys
    // (160 MB on the base preset) and its product with the queries, two of the largest buffers
    // of the whole step.
    let idx: Vec<usize> = (0..lq * n_sample).map(|_| ctx.below(lk)).collect();
    let qd = q.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let kd = k.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    // One (batch, head) pair per task on the trainer's pool (super::fused::par_map).
    let m: Vec<Vec<f32>> = super::fused::par_map(b * h, |bh| {
        let (base, kbase) = (bh * lq * dh, bh * lk * dh);
        (0..lq)
            .map(|i| {
                let qi = &qd[base + i * dh..base + (i + 1) * dh];
                let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
                for &j in &idx[i * n_sample..(i + 1) * n_sample] {
                    let kj = &kd[kbase + j * dh..kbase + (j + 1) * dh];
                    let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    max = max.max(dot);
                    sum += dot;
                }
                max - sum / lk as f32
            })
            .collect()
    });

    // Top-u queries per (batch, head), as a one-hot (Lq, u) selection matrix.
    let mut onehot = vec![0f32; b * h * lq * u];
    let mut top_pos = Vec::with_capacity(b * h * u);
    for (bh, mh) in m.iter().enumerate() {
        let mut order: Vec<usize> = (0..lq).collect();
        // Stable, NaN-tolerant descending order (a NaN sorts last, never panics).
        order.sort_by(|&x, &y| mh[y].partial_cmp(&mh[x]).unwrap_or(std::cmp::Ordering::Equal));
        for (j, &qi) in order.iter().take(u).enumerate() {
            onehot[(bh * lq + qi) * u + j] = 1.0;
            top_pos.push(qi);
        }
    }
    let sel = Tensor::from_vec(onehot, (b, h, lq, u), dev)?.to_dtype(q.dtype())?;

    let mm = super::fused::batch_matmul;
    let q_top = mm(&sel.t()?, q)?; // (B, H, u, D)
    let scores = mm(&q_top, &k.t()?)?; // (B, H, u, Lk)
    // Row (b, h, j) of the scores is query top_pos[(b * H + h) * u + j].
    let limits = masked.then_some(top_pos);
    let attn = softmax_f32(&scores, 1.0 / (dh as f64).sqrt(), limits, q.dtype())?;
    let top_out = mm(&attn, v)?; // (B, H, u, D)

    let lazy = if masked { v.cumsum(2)? } else { v.mean_keepdim(2)?.broadcast_as((b, h, lq, dh))?.contiguous()? };
    let chosen = sel.sum_keepdim(3)?; // (B, H, Lq, 1): 1 on selected queries
    let keep = (chosen.ones_like()? - &chosen)?;
    lazy.broadcast_mul(&keep)? + mm(&sel, &top_out)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sample_counts_follow_the_paper() {
        assert_eq!(sample_count(5, 96), 25); // ceil(ln 96) = 5
        assert_eq!(sample_count(5, 32), 20); // ceil(ln 32) = 4
        assert_eq!(sample_count(5, 8), 8); // capped
    }

    #[test]
    fn prob_sparse_with_all_queries_equals_full_attention() {
        // With u = Lq every query is selected, so ProbSparse must equal full attention.
        let dev = Device::Cpu;
        let ctx = Ctx::new(DType::F32, false, 7);
        let mk = |seed: u64| {
            let mut r = keel_core::rng::Rng::new(seed);
            let v: Vec<f32> = (0..2 * 2 * 6 * 4).map(|_| r.next_f64() as f32 - 0.5).collect();
            Tensor::from_vec(v, (2, 2, 6, 4), &dev).unwrap()
        };
        let (q, k, v) = (mk(1), mk(2), mk(3));
        for masked in [false, true] {
            let a = prob_sparse(&q, &k, &v, 5, masked, &ctx).unwrap();
            let f = full(&q, &k, &v, masked, 0.0, &ctx).unwrap();
            let diff = (a - f).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "masked={masked}: {diff}");
        }
    }

    #[test]
    fn lazy_queries_get_mean_of_values() {
        // L = 20, c = 1: u = 3 selected queries; the other 17 rows equal mean(V).
        let dev = Device::Cpu;
        let ctx = Ctx::new(DType::F32, false, 7);
        let mut r = keel_core::rng::Rng::new(5);
        let mut mk = || {
            let v: Vec<f32> = (0..20 * 4).map(|_| r.next_f64() as f32).collect();
            Tensor::from_vec(v, (1, 1, 20, 4), &dev).unwrap()
        };
        let (q, k, v) = (mk(), mk(), mk());
        let out = prob_sparse(&q, &k, &v, 1, false, &ctx).unwrap();
        let mean = v.mean_keepdim(2).unwrap();
        let rows = out.broadcast_sub(&mean).unwrap().abs().unwrap().sum(3).unwrap().flatten_all().unwrap();
        let lazy = rows.to_vec1::<f32>().unwrap().iter().filter(|d| **d < 1e-6).count();
        assert_eq!(lazy, 20 - 3);
    }
}
