//! Layer normalization, softmax, bias addition, GELU, ELU and the attention heads' split and merge
//! as single CPU ops with a backward pass.
//!
//! candle 0.11's fused `layer_norm` and `softmax_last_dim` record no backward op, so the model
//! used to build both from a dozen elementwise ops. Each of those is a full pass over the tensor
//! forward, and in the backward pass each costs its own gradient ops plus candle's accumulation
//! (a zero tensor and an add per op), which made the two functions a large share of a step on the
//! small preset. Here each is one forward pass and one backward pass over plain f32 slices, with
//! the same math (statistics in f32, `x - mean` divided by `sqrt(var + eps)`), so the results
//! equal the composite version up to float rounding (tested below). Other devices and dtypes keep
//! the composite version.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use keel_core::rng::Rng;
use rayon::prelude::*;
use std::sync::Arc;

/// Elements per part when a kernel splits its rows over threads (about 10 to 30 µs of work each,
/// against about a microsecond for a rayon task).
const PART: usize = 16 * 1024;

/// Calls `f(first_row, part)` on consecutive parts of `out`, each a whole number of rows of
/// `width` elements (about [`PART`] elements, at least one row), and returns the results in
/// order.
///
/// The parts run as rayon tasks when called on a worker of a pool with more than one thread (the
/// trainer's pool, `trainer::Trainer::in_pool`) and there are at least two, else one after the
/// other on the caller. The parts are the same either way, so reductions that add up per-part
/// results in order give the same bits at any thread count. Outside a pool nothing is spawned
/// (and rayon's global pool is never started).
fn row_parts<T: Send, R: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) -> R + Sync + Send) -> Vec<R> {
    let width = width.max(1);
    let part_rows = (PART / width).max(1);
    let chunk = part_rows * width;
    let threads = if rayon::current_thread_index().is_some() { rayon::current_num_threads() } else { 1 };
    if threads > 1 && out.len() > chunk {
        out.par_chunks_mut(chunk).enumerate().map(|(i, c)| f(i * part_rows, c)).collect()
    } else {
        out.chunks_mut(chunk).enumerate().map(|(i, c)| f(i * part_rows, c)).collect()
    }
}

/// `fn $name(args) body` whose body runs compiled for AVX2 and FMA when the CPU has them (else as
/// built: x86-64's baseline SSE2 unless `-C target-cpu` says more), so that its loops run 8 floats
/// wide instead of 4. The body and what it calls must be inlined for that (`#[inline(always)]` on
/// the helpers it calls).
///
/// The bits are the same either way: an elementwise loop does the same IEEE operations per
/// element at any vector width, and LLVM neither reorders float sums nor fuses a multiply and an
/// add unless the code asks (`mul_add`).
macro_rules! wide_fn {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// `f(i)` for `i` in `0..n`, in order; on the current pool's threads when called on a worker of a
/// pool with more than one thread (see [`row_parts`]), else on the caller.
pub(crate) fn par_map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    let threads = if rayon::current_thread_index().is_some() { rayon::current_num_threads() } else { 1 };
    if threads > 1 && n > 1 { (0..n).into_par_iter().map(f).collect() } else { (0..n).map(f).collect() }
}

/// An inverted-dropout mask of `n` elements: `1 / keep` where kept, else 0, each element kept with
/// probability `ceil(keep * 2^32) / 2^32` (within 2^-32 of `keep`; two decisions per 64-bit
/// draw: the mask is drawn for millions of elements per step).
///
/// Each part of `row_parts` draws from its own SplitMix64 stream, seeded by hashing `seed`
/// with the part's first index, so the parts can be drawn in parallel and the mask depends only
/// on `seed` and `n`, not on the thread count. (One sequential stream for the whole mask was 3
/// to 5 % of a small step, on one thread whatever the pool.)
pub fn dropout_mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    let scale = (1.0 / keep) as f32;
    let threshold = (keep * 4_294_967_296.0).ceil() as u64;
    let mut mask = vec![0f32; n];
    row_parts(&mut mask, 1, |first, part| {
        let start = Rng::new(seed ^ (first as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64();
        mask_part(part, start, threshold, scale);
    });
    mask
}

/// SplitMix64's increment (`keel_core::rng::Rng`).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: draw `k` (from 0) of `Rng::new(s)` is `splitmix(s + (k + 1) GAMMA)`.
#[inline(always)]
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

wide_fn! {
    /// One part of a dropout mask: the draws of `Rng::new(start)`, two elements each (low half
    /// first), computed from their index rather than in sequence so that the loop vectorizes.
    fn mask_part(part: &mut [f32], start: u64, threshold: u64, scale: f32) {
        let keep = |half: u64| if half < threshold { scale } else { 0.0 };
        let mut pairs = part.chunks_exact_mut(2);
        let mut k = 0u64;
        for pair in &mut pairs {
            k += 1;
            let r = splitmix(start.wrapping_add(k.wrapping_mul(GAMMA)));
            pair[0] = keep(r & 0xFFFF_FFFF);
            pair[1] = keep(r >> 32);
        }
        if let [last] = pairs.into_remainder() {
            *last = keep(splitmix(start.wrapping_add((k + 1).wrapping_mul(GAMMA))) & 0xFFFF_FFFF);
        }
    }
}

/// Adds `b` to every row of `y` (rows of `b.len()`).
fn add_rows(y: &mut [f32], b: &[f32]) {
    row_parts(y, b.len(), |_, part| {
        for row in part.chunks_exact_mut(b.len()) {
            for (o, &b) in row.iter_mut().zip(b) {
                *o += b;
            }
        }
    });
}

/// The contiguous f32 slice of a CPU storage (the callers make their inputs contiguous).
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected an f32 tensor") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set this to run the composite ops on this thread (the reference the fused ops replace).
    pub(crate) static COMPOSITE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the composite ops instead of the fused ones on this thread (tests only).
#[cfg(test)]
pub(crate) fn with_composite<R>(f: impl FnOnce() -> R) -> R {
    COMPOSITE.with(|c| c.set(true));
    let r = f();
    COMPOSITE.with(|c| c.set(false));
    r
}

fn fused_ok(ts: &[&Tensor]) -> bool {
    #[cfg(test)]
    if COMPOSITE.with(|c| c.get()) {
        return false;
    }
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `x W^T + b` over the last dimension of `x` (a Linear layer), `W` of shape `(n, k)`.
///
/// As tensor ops this is five graph nodes (reshape, transpose of `W`, matmul, bias add, reshape),
/// and candle's backward gives each its own gradient tensor plus a zero-fill and an add to
/// accumulate it, transposes `W`'s gradient back with a copy, and sums the bias gradient with
/// its strided reduction. Here it is one node: the forward is one gemm (with `W` read transposed
/// through its strides) plus the bias, the backward two gemms (`dx = dy W`, `dW = dy^T x`, the
/// transposes again only strides) and a column sum.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    if !fused_ok(&[x, w, b]) || b.dims() != [n] || x.dims().last() != Some(&k) || x.rank() < 2 {
        let dims = x.dims().to_vec();
        let rows = x.elem_count() / k.max(1);
        let y = add_bias(&x.reshape((rows, k))?.matmul(&w.t()?)?, b)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = n;
        return y.reshape(out);
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp)
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "keel-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = f32s(s3, l3, "linear bias")?;
        let (n, k) = l2.shape().dims2()?;
        let m = l1.shape().elem_count() / k.max(1);
        if l1.dims().last() != Some(&k) || b.len() != n || !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("linear: input {:?}, weight {:?}, bias {}", l1.dims(), l2.dims(), b.len());
        }
        let xl = Layout::contiguous_with_offset((m, k), l1.start_offset());
        let wl = Layout::contiguous_with_offset((n, k), l2.start_offset()).transpose(0, 1)?;
        let CpuStorage::F32(mut y) = s1.matmul(s2, (1, m, n, k), &xl, &wl)? else {
            candle_core::bail!("linear: expected an f32 product")
        };
        add_rows(&mut y, b);
        let mut dims = l1.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = n;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let m = x.elem_count() / k.max(1);
        // Detached so that these products record no graph of their own.
        let (x2, w) = (x.detach().reshape((m, k))?, w.detach());
        let dy = dy.contiguous()?.reshape((m, n))?;
        let dx = dy.matmul(&w)?.reshape(x.shape())?;
        let dw = dy.t()?.matmul(&x2)?;
        let db = dy.apply_op1_no_bwd(&ColumnSum(n))?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `a @ b` over the last two dimensions, for `a` `(.., m, k)` and `b` `(.., k, n)` with the same
/// leading (batch) dimensions: the attention's per-head products.
///
/// candle runs such a batch as one gemm call per matrix, one after the other: each product of
/// the small preset's heads (96 x 16 by 16 x 96) is far below gemm's threshold for splitting, so
/// all of them ran on one thread whatever the pool. Here the batch is cut into parts of about
/// `PART` output elements that run on the trainer's pool, each through candle's own CPU matmul
/// (the same gemm calls per matrix as before). The backward is two such products on transposed
/// views (`da = dc b^T`, `db = a^T dc`). Other devices and dtypes use `Tensor::matmul`.
pub fn batch_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let r = a.rank();
    if !fused_ok(&[a, b])
        || r < 3
        || b.rank() != r
        || a.dims()[..r - 2] != b.dims()[..r - 2]
        || a.dims()[r - 1] != b.dims()[r - 2]
    {
        return a.matmul(b);
    }
    let regular = |t: &Tensor| -> Result<Tensor> {
        if batch_stride(t.layout()).is_some() { Ok(t.clone()) } else { t.contiguous() }
    };
    regular(a)?.apply_op2(&regular(b)?, BatchMatmul)
}

/// The distance between consecutive matrices of a tensor `(.., rows, cols)` whose leading
/// dimensions read as one evenly strided batch dimension (a contiguous tensor or a transposed
/// view of one), or `None`.
fn batch_stride(l: &Layout) -> Option<usize> {
    let (dims, stride) = (l.dims(), l.stride());
    let nb = dims.len().checked_sub(2)?;
    let (mut s, mut inner) = (None, 1usize);
    for j in (0..nb).rev() {
        if dims[j] > 1 {
            match s {
                None => s = Some(stride[j]),
                Some(s) if stride[j] == s * inner => {}
                Some(_) => return None,
            }
            inner *= dims[j];
        }
    }
    Some(s.unwrap_or(0))
}

struct BatchMatmul;

impl candle_core::CustomOp2 for BatchMatmul {
    fn name(&self) -> &'static str {
        "keel-batch-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (da, db) = (l1.dims(), l2.dims());
        let r = da.len();
        if r < 3 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
            candle_core::bail!("batch matmul: {da:?} by {db:?}");
        }
        let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
        let (Some(sa), Some(sb)) = (batch_stride(l1), batch_stride(l2)) else {
            candle_core::bail!("batch matmul: unevenly strided batch {:?} / {:?}", l1.stride(), l2.stride())
        };
        let (ra, ca) = (l1.stride()[r - 2], l1.stride()[r - 1]);
        let (rb, cb) = (l2.stride()[r - 2], l2.stride()[r - 1]);
        let nb: usize = da[..r - 2].iter().product();
        let mut out = vec![0f32; nb * m * n];
        let done = row_parts(&mut out, m * n, |b0, part| -> Result<()> {
            let cnt = part.len().checked_div(m * n).unwrap_or(0);
            if cnt == 0 {
                return Ok(());
            }
            let la = Layout::new(Shape::from((cnt, m, k)), vec![sa, ra, ca], l1.start_offset() + b0 * sa);
            let lb = Layout::new(Shape::from((cnt, k, n)), vec![sb, rb, cb], l2.start_offset() + b0 * sb);
            let CpuStorage::F32(y) = s1.matmul(s2, (cnt, m, n, k), &la, &lb)? else {
                candle_core::bail!("batch matmul: expected an f32 product")
            };
            part.copy_from_slice(&y);
            Ok(())
        });
        done.into_iter().collect::<Result<()>>()?;
        let mut dims = da[..r - 2].to_vec();
        dims.extend([m, n]);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, dc: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dc = dc.contiguous()?;
        let da = dc.apply_op2_no_bwd(&b.t()?, &BatchMatmul)?;
        let db = a.t()?.apply_op2_no_bwd(&dc, &BatchMatmul)?;
        Ok((Some(da), Some(db)))
    }
}

/// `x * mask` for a dropout mask (`0` or `1 / keep` per element), as one node whose backward
/// is `dy * mask`. As a tensor `mul`, candle's backward also computes and accumulates a
/// gradient for the mask (two more full passes and a zero-fill), which nothing reads.
pub fn dropout(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    if !fused_ok(&[x]) || mask.len() != x.elem_count() {
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        return x.mul(&mask);
    }
    x.contiguous()?.apply_op1(MaskMul(Arc::new(mask)))
}

/// The mask is shared with the backward op (an `Arc<Vec>`: `Arc<[f32]>` would copy it).
struct MaskMul(Arc<Vec<f32>>);

impl CustomOp1 for MaskMul {
    fn name(&self) -> &'static str {
        "keel-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "dropout input")?;
        if x.len() != self.0.len() {
            candle_core::bail!("dropout: input {:?}, mask {}", l.dims(), self.0.len());
        }
        let mut y = vec![0f32; x.len()];
        row_parts(&mut y, 1, |i, part| {
            for ((y, &x), &m) in part.iter_mut().zip(&x[i..]).zip(&self.0[i..]) {
                *y = x * m;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&MaskMul(self.0.clone()))?))
    }
}

/// `dropout(gelu_erf(x), mask)`, the feed-forward's hidden activation, as one node: forward
/// `gelu(x) * mask`, backward `dy * mask * gelu'(x)`.
///
/// As two nodes, candle's backward zero-fills and accumulates a gradient for the GELU's output,
/// the largest tensor of the model (batch x time x `d_ff`), and both nodes make a pass each way
/// over it; here one pass each way and no intermediate gradient.
pub fn gelu_erf_dropout(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    if !fused_ok(&[x]) || mask.len() != x.elem_count() {
        return dropout(&gelu_erf(x)?, mask);
    }
    x.contiguous()?.apply_op1(GeluMask(Arc::new(mask)))
}

/// `x + dropout(a, mask)`, a residual connection around a dropped-out sublayer output, as one
/// node: forward `x + a * mask`, backward `dy` for `x` and `dy * mask` for `a`.
///
/// As two nodes, candle's backward zero-fills and accumulates a gradient for the dropout's
/// output, and its add runs on one thread; here the forward is one parallel pass.
pub fn add_dropout(x: &Tensor, a: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    if !fused_ok(&[x, a]) || x.shape() != a.shape() || mask.len() != x.elem_count() {
        return x + dropout(a, mask)?;
    }
    x.contiguous()?.apply_op2(&a.contiguous()?, AddMask(Arc::new(mask)))
}

/// Residual add of a dropped-out input (the mask shared with the backward op).
struct AddMask(Arc<Vec<f32>>);

impl candle_core::CustomOp2 for AddMask {
    fn name(&self) -> &'static str {
        "keel-add-dropout"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "residual input")?;
        let a = f32s(s2, l2, "residual branch")?;
        if x.len() != a.len() || x.len() != self.0.len() {
            candle_core::bail!("add + dropout: input {:?}, branch {:?}, mask {}", l1.dims(), l2.dims(), self.0.len());
        }
        let mut y = vec![0f32; x.len()];
        row_parts(&mut y, 1, |i, part| {
            for (((y, &x), &a), &m) in part.iter_mut().zip(&x[i..]).zip(&a[i..]).zip(&self.0[i..]) {
                *y = x + a * m;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _a: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let da = dy.contiguous()?.apply_op1_no_bwd(&MaskMul(self.0.clone()))?;
        Ok((Some(dy.clone()), Some(da)))
    }
}

/// GELU times a dropout mask (shared with the backward op).
struct GeluMask(Arc<Vec<f32>>);

impl CustomOp1 for GeluMask {
    fn name(&self) -> &'static str {
        "keel-gelu-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "GELU input")?;
        if x.len() != self.0.len() {
            candle_core::bail!("GELU + dropout: input {:?}, mask {}", l.dims(), self.0.len());
        }
        let mut y = vec![0f32; x.len()];
        wide_fn! {
            /// `y = gelu(x) * m`.
            fn gelu_mask(y: &mut [f32], x: &[f32], m: &[f32]) {
                for ((y, &x), &m) in y.iter_mut().zip(x).zip(m) {
                    *y = gelu(x) * m;
                }
            }
        }
        row_parts(&mut y, 1, |i, part| gelu_mask(part, &x[i..], &self.0[i..]));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluMaskGrad(self.0.clone()))?))
    }
}

wide_fn! {
    /// `dx = dy * m * gelu'(x)`.
    fn gelu_mask_grad(dx: &mut [f32], x: &[f32], dy: &[f32], m: &[f32]) {
        for (((dx, &x), &dy), &m) in dx.iter_mut().zip(x).zip(dy).zip(m) {
            *dx = dy * m * gelu_grad(x);
        }
    }
}

/// `dy * mask * gelu'(x)`, from the input and the output gradient.
struct GeluMaskGrad(Arc<Vec<f32>>);

impl candle_core::CustomOp2 for GeluMaskGrad {
    fn name(&self) -> &'static str {
        "keel-gelu-dropout-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "GELU input")?;
        let dy = f32s(s2, l2, "GELU + dropout output gradient")?;
        if x.len() != dy.len() || x.len() != self.0.len() {
            candle_core::bail!(
                "GELU + dropout backward: input {}, gradient {}, mask {}",
                x.len(),
                dy.len(),
                self.0.len()
            );
        }
        let mut dx = vec![0f32; x.len()];
        row_parts(&mut dx, 1, |i, dx| {
            gelu_mask_grad(dx, &x[i..], &dy[i..], &self.0[i..]);
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Attention weights: softmax over the last dimension of `scale * x`, where row `r` (counting
/// rows over all leading dimensions) only sees keys `0..=limits[r % limits.len()]` when
/// `limits` is given (a causal mask; the other weights are exactly 0).
///
/// The composite version is a scale (affine) node, an additive `-1e30` mask tensor broadcast
/// and added (whose backward also builds a full-size gradient for the mask) and the softmax:
/// three graph nodes with their own gradient passes and accumulations, over the largest
/// tensors of the attention. Here it is one pass each way.
pub fn attention_softmax(x: &Tensor, scale: f64, limits: Option<Vec<usize>>) -> Result<Tensor> {
    let d = *x.dims().last().unwrap_or(&0);
    if !fused_ok(&[x]) || limits.as_ref().is_some_and(|l| l.is_empty()) {
        let mut s = (x * scale)?;
        if let Some(lim) = limits {
            let rows = x.elem_count() / d.max(1);
            let m: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    let lim = lim[r % lim.len()];
                    (0..d).map(move |j| if j > lim { -1e30 } else { 0.0 })
                })
                .collect();
            s = (s + Tensor::from_vec(m, x.shape(), x.device())?)?;
        }
        return softmax_last_dim(&s);
    }
    x.contiguous()?.apply_op1(Softmax { scale: scale as f32, limits: limits.map(Arc::from) })
}

/// `(x - mean) / sqrt(var + eps) * g + b` over the last dimension of an f32 `x`, with `g` and
/// `b` of that dimension's size.
pub fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused_ok(&[x, g, b]) {
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        return xn.broadcast_mul(g)?.broadcast_add(b);
    }
    x.contiguous()?.apply_op3(g, b, LayerNorm { eps: eps as f32 })
}

/// Softmax over the last dimension of an f32 tensor.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[x]) {
        return candle_nn::ops::softmax(x, candle_core::D::Minus1);
    }
    x.contiguous()?.apply_op1(Softmax { scale: 1.0, limits: None })
}

/// `y + b` with `b` broadcast over the rows of `y` (a Linear's bias).
///
/// As `broadcast_add`, the backward pass sums the output gradient over the broadcast dimensions
/// with candle's generic strided reduction, one of the slowest kernels of the step; here the bias
/// gradient is a plain row-by-row column sum.
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[y, b]) || b.rank() != 1 || y.dims().last() != Some(&b.elem_count()) {
        return y.broadcast_add(b);
    }
    y.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
}

struct AddBias;

impl candle_core::CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "keel-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32s(s1, l1, "bias add input")?;
        let b = f32s(s2, l2, "bias")?;
        if b.is_empty() || y.len() % b.len() != 0 {
            candle_core::bail!("bias add: input {:?}, bias {}", l1.dims(), b.len());
        }
        let mut out = vec![0f32; y.len()];
        row_parts(&mut out, b.len(), |r, part| {
            let y = &y[r * b.len()..];
            for (row, yr) in part.chunks_exact_mut(b.len()).zip(y.chunks_exact(b.len())) {
                for ((o, &y), &b) in row.iter_mut().zip(yr).zip(b) {
                    *o = y + b;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _y: &Tensor, b: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = dy.contiguous()?.apply_op1_no_bwd(&ColumnSum(b.elem_count()))?;
        Ok((Some(dy.clone()), Some(db)))
    }
}

/// Sum of the rows of a contiguous tensor seen as `(n / width, width)`.
struct ColumnSum(usize);

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "keel-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "column sum input")?;
        let w = self.0.max(1);
        // Per-part sums, added in order (the same bits at any thread count).
        let out = column_sums(x.len() / w, w, |r, out| out.copy_from_slice(&x[r * w..(r + 1) * w]));
        Ok((CpuStorage::F32(out), Shape::from(self.0)))
    }
}

/// GELU with the exact erf, `x * (1 + erf(x / sqrt 2)) / 2` (candle's `gelu_erf`, same formula).
///
/// candle's backward for it is a dozen elementwise ops over the feed-forward's hidden activation,
/// the largest tensor of the model; this op's backward is one pass.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[x]) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Unary::GeluErf)
}

/// ELU with alpha 1: `x` for `x > 0`, else `exp(x) - 1`.
pub fn elu(x: &Tensor) -> Result<Tensor> {
    if !fused_ok(&[x]) {
        let neg = x.neg()?.relu()?.neg()?; // min(x, 0)
        return x.relu()? + (neg.exp()? - 1.0)?;
    }
    x.contiguous()?.apply_op1(Unary::Elu)
}

/// Elementwise activations whose backward needs only the input.
#[derive(Clone, Copy)]
enum Unary {
    GeluErf,
    Elu,
}

impl Unary {
    fn f(self, x: f32) -> f32 {
        match self {
            Unary::GeluErf => gelu(x),
            Unary::Elu if x > 0.0 => x,
            Unary::Elu => x.exp() - 1.0,
        }
    }

    /// The derivative at `x`, given the output `y = f(x)`.
    ///
    /// GELU's is candle's `0.5 + 0.398942 x exp(-x^2 / 2) + 0.5 erf(x / sqrt 2)`; since
    /// `y = x (1 + erf(x / sqrt 2)) / 2`, the first and last terms are `y / x`, so the backward
    /// pass needs no second `erf` (a branchy libm call; GELU's two passes over the feed-forward's
    /// hidden activation, the model's largest tensor, were 16 % of a small step). `y / x` is
    /// within an ulp or two of `0.5 + 0.5 erf` (also where `1 + erf` is tiny, for negative x).
    fn df(self, x: f32, y: f32) -> f32 {
        match self {
            Unary::GeluErf if x == 0.0 => 0.5,
            Unary::GeluErf => y / x + 0.398942 * exp(-(x * x) / 2.0) * x,
            Unary::Elu if x > 0.0 => 1.0,
            Unary::Elu => x.exp(),
        }
    }
}

/// GELU with the exact (erf) form, `x (1 + erf(x / sqrt 2)) / 2`, with [`erf`].
#[inline(always)]
fn gelu(x: f32) -> f32 {
    (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

/// GELU's derivative, `(1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) / sqrt(2 pi)` (candle's formula).
#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 + 0.398942 * exp(-(x * x) * 0.5) * x
}

/// `erf(x)` in f32: the rational approximation of Eigen and XLA (odd degree-13 numerator over an
/// even degree-8 denominator on `[-4, 4]`, where f32's erf reaches +-1), within 4.5e-7 of the
/// exact value (a few ulps of 1; libm's `erff` is within one); straight-line code that the compiler
/// vectorizes (libm's `erff` is a branchy call: GELU's forward over the feed-forward's hidden
/// activation spent 8 % of a small step in it).
#[allow(clippy::manual_clamp)] // `clamp`'s NaN handling keeps the callers' loops scalar (see `exp`)
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = if x < -4.0 {
        -4.0
    } else if x > 4.0 {
        4.0
    } else {
        x
    };
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_4e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    // Beyond 3.9, erf rounds to +-1 in f32, where the approximation gives an ulp less (a select,
    // so the loops still vectorize).
    if x.abs() > 3.9 { 1f32.copysign(x) } else { x * p / q }
}

/// `e^x` in f32 (Cephes' `expf`: range reduction by ln 2, degree-6 polynomial), within 1e-7
/// relative of the exact value (about an ulp), 0 below e^-87; straight-line code that the compiler can
/// vectorize, unlike a libm call.
#[allow(clippy::manual_clamp)] // `clamp` kept the callers' loops scalar (see below)
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Comparisons rather than `clamp`, whose NaN handling kept the loops below scalar.
    let under = x < -87.0;
    let x = if x < -87.0 {
        -87.0
    } else if x > 88.0 {
        88.0
    } else {
        x
    };
    // Round to nearest without a libm call: adding 1.5 * 2^23 leaves no fraction bits, and the
    // low bits of the sum are n itself (two's complement), which gives 2^n by integer ops only.
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    let y = (p * r * r + r + 1.0) * two_n;
    // 0 below e^-87 (1.6e-38), as a select: a softmax's weights far below its maximum are 0.
    if under { 0.0 } else { y }
}

impl CustomOp1 for Unary {
    fn name(&self) -> &'static str {
        match self {
            Unary::GeluErf => "keel-gelu-erf",
            Unary::Elu => "keel-elu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        row_parts(&mut y, 1, |i, part| {
            for (y, &x) in part.iter_mut().zip(&x[i..]) {
                *y = self.f(x);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(res, &dy.contiguous()?, &UnaryGrad(*self))?))
    }
}

/// `dy * f'(x)`, from the input, the output and the output gradient.
struct UnaryGrad(Unary);

impl CustomOp3 for UnaryGrad {
    fn name(&self) -> &'static str {
        "keel-unary-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "activation input")?;
        let y = f32s(s2, l2, "activation output")?;
        let dy = f32s(s3, l3, "activation output gradient")?;
        if x.len() != dy.len() || y.len() != x.len() {
            candle_core::bail!("activation backward: input {}, output {}, gradient {}", x.len(), y.len(), dy.len());
        }
        let mut dx = vec![0f32; x.len()];
        row_parts(&mut dx, 1, |i, dx| {
            let (x, y, dy) = (&x[i..i + dx.len()], &y[i..i + dx.len()], &dy[i..i + dx.len()]);
            match self.0 {
                // Branch-free so that it vectorizes (the feed-forward's hidden activation).
                Unary::GeluErf => {
                    // The division is done unconditionally and then replaced at 0 (a select, where
                    // a division inside the branch kept this loop scalar: 3x slower).
                    for (((dx, &x), &y), &dy) in dx.iter_mut().zip(x).zip(y).zip(dy) {
                        let q = y / x;
                        let half = if x == 0.0 { 0.5 } else { q };
                        *dx = dy * (half + 0.398942 * exp(-(x * x) * 0.5) * x);
                    }
                }
                Unary::Elu => {
                    for (((dx, &x), &y), &dy) in dx.iter_mut().zip(x).zip(y).zip(dy) {
                        *dx = dy * self.0.df(x, y);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `(B, N1, N2, D)` to `(B, N2, N1, D)`: the split of a projection into heads (`N1` = time,
/// `N2` = heads) and, the other way round, their merge. `x` may have any shape holding
/// `b * n1 * n2 * d` elements in that order.
///
/// One copy each way instead of candle's reshape, transpose and copy nodes, each of which costs
/// its own gradient pass plus an accumulation in the backward pass.
pub fn swap_middle(x: &Tensor, b: usize, n1: usize, n2: usize, d: usize) -> Result<Tensor> {
    if !fused_ok(&[x]) {
        return x.reshape((b, n1, n2, d))?.transpose(1, 2)?.contiguous();
    }
    x.contiguous()?.apply_op1(SwapMiddle { b, n1, n2, d })
}

struct SwapMiddle {
    b: usize,
    n1: usize,
    n2: usize,
    d: usize,
}

impl SwapMiddle {
    fn run(&self, x: &[f32]) -> Vec<f32> {
        let (n1, n2, d) = (self.n1, self.n2, self.d);
        let mut y = vec![0f32; x.len()];
        // A "row" is one batch entry's (N1, N2, D) block.
        row_parts(&mut y, n1 * n2 * d, |b0, part| {
            for (k, yb) in part.chunks_exact_mut(n1 * n2 * d).enumerate() {
                let xb = &x[(b0 + k) * n1 * n2 * d..];
                for i in 0..n1 {
                    for j in 0..n2 {
                        let (src, dst) = ((i * n2 + j) * d, (j * n1 + i) * d);
                        yb[dst..dst + d].copy_from_slice(&xb[src..src + d]);
                    }
                }
            }
        });
        y
    }
}

impl CustomOp1 for SwapMiddle {
    fn name(&self) -> &'static str {
        "keel-swap-middle"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "head split input")?;
        if x.len() != self.b * self.n1 * self.n2 * self.d {
            candle_core::bail!("head split: {:?} is not ({}, {}, {}, {})", l.dims(), self.b, self.n1, self.n2, self.d);
        }
        Ok((CpuStorage::F32(self.run(x)), Shape::from((self.b, self.n2, self.n1, self.d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let back = SwapMiddle { b: self.b, n1: self.n2, n2: self.n1, d: self.d };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&back)?.reshape(x.shape())?))
    }
}

struct LayerNorm {
    eps: f32,
}

/// Row statistics: mean and `sqrt(var + eps)`.
#[inline(always)]
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = row.iter().sum::<f32>() / d;
    let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / d;
    (mean, (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "keel-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "layer norm input")?;
        let (g, b) = (f32s(s2, l2, "layer norm gain")?, f32s(s3, l3, "layer norm bias")?);
        let d = g.len();
        if d == 0 || b.len() != d || l1.dims().last() != Some(&d) {
            candle_core::bail!("layer norm: input {:?}, gain {d}, bias {}", l1.dims(), b.len());
        }
        let mut y = vec![0f32; x.len()];
        wide_fn! {
            /// The rows of `part` from those of `x`.
            fn layer_norm_rows(part: &mut [f32], x: &[f32], g: &[f32], b: &[f32], eps: f32) {
                let d = g.len();
                for (xr, yr) in x.chunks_exact(d).zip(part.chunks_exact_mut(d)) {
                    let (mean, s) = stats(xr, eps);
                    for (((y, &x), &g), &b) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                        *y = (x - mean) / s * g + b;
                    }
                }
            }
        }
        row_parts(&mut y, d, |r, part| layer_norm_rows(part, &x[r * d..], g, b, self.eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = g.elem_count();
        let n = x.elem_count();
        // One op returns [dx | dg | db] flattened.
        let all = x.apply_op3_no_bwd(g, &dy.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dg = all.narrow(0, n, d)?.reshape(g.shape())?;
        let db = all.narrow(0, n + d, d)?.reshape(g.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "keel-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "layer norm input")?;
        let g = f32s(s2, l2, "layer norm gain")?;
        let dy = f32s(s3, l3, "layer norm output gradient")?;
        let (d, n) = (g.len(), x.len());
        if dy.len() != n || n % d != 0 {
            candle_core::bail!("layer norm backward: input {n}, gradient {}, gain {d}", dy.len());
        }
        let mut out = vec![0f32; n + 2 * d];
        let (dx, rest) = out.split_at_mut(n);
        // dx row by row; dg and db as per-part sums, added in order (the same bits at any thread
        // count).
        wide_fn! {
            /// The rows of `dx` and this part's sums for `dg` and `db`.
            fn layer_norm_grad_rows(dx: &mut [f32], x: &[f32], dy: &[f32], g: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
                let d = g.len();
                let (x, dy) = (&x[..dx.len()], &dy[..dx.len()]);
                let (mut dg, mut db, mut xhat) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
                for ((xr, dyr), dxr) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
                    let (mean, s) = stats(xr, eps);
                    let (mut a, mut c) = (0f32, 0f32);
                    for (((xh, &x), &dy), &g) in xhat.iter_mut().zip(xr).zip(dyr).zip(g) {
                        *xh = (x - mean) / s;
                        a += dy * g;
                        c += dy * g * *xh;
                    }
                    let (a, c) = (a / d as f32, c / d as f32);
                    for i in 0..d {
                        dxr[i] = (dyr[i] * g[i] - a - xhat[i] * c) / s;
                        dg[i] += dyr[i] * xhat[i];
                        db[i] += dyr[i];
                    }
                }
                (dg, db)
            }
        }
        let parts = row_parts(dx, d, |r, dx| layer_norm_grad_rows(dx, &x[r * d..], &dy[r * d..], g, self.eps));
        let (dg, db) = rest.split_at_mut(d);
        for (pg, pb) in parts {
            for i in 0..d {
                dg[i] += pg[i];
                db[i] += pb[i];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * d)))
    }
}

/// BatchNorm in training mode over the rows of `x` `(n, c)`: each column normalized by its batch
/// mean and biased variance, times `g` plus `b`. Returns `y` and the (detached) batch mean and
/// biased variance of each column, for the running statistics.
///
/// As tensor ops this was about ten graph nodes (two means, a subtraction, a square, a square
/// root, a division, the gain and the bias, each broadcast), whose backward passes include
/// candle's strided sums over the broadcast rows; here it is one node each way, whose column sums
/// add per-part results in order (the same bits at any thread count).
pub fn batch_norm_train(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    if !fused_ok(&[x, g, b]) || x.rank() != 2 || g.dims() != [c] || b.dims() != [c] {
        let mean = x.mean_keepdim(0)?;
        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
        let xn = x.broadcast_sub(&mean)?.broadcast_div(&(&var + eps)?.sqrt()?)?;
        let y = xn.broadcast_mul(g)?.broadcast_add(b)?;
        return Ok((y, mean.detach().squeeze(0)?, var.detach().squeeze(0)?));
    }
    let stats = Arc::new(std::sync::Mutex::new(Vec::new()));
    let op = BatchNormOp { eps: eps as f32, stats: stats.clone() };
    let y = x.contiguous()?.apply_op3(&g.contiguous()?, &b.contiguous()?, op)?;
    let st = stats.lock().map_err(|_| candle_core::Error::Msg("batch norm: statistics lock poisoned".into()))?.clone();
    if st.len() != 2 * c {
        candle_core::bail!("batch norm: expected {} statistics, got {}", 2 * c, st.len());
    }
    let mean = Tensor::from_slice(&st[..c], c, x.device())?;
    let var = Tensor::from_slice(&st[c..], c, x.device())?;
    Ok((y, mean, var))
}

/// Column sums of `(rows, c)` data computed per part of [`row_parts`] and added in order.
/// `f(row)` gives the row's contribution (written into the second argument).
fn column_sums(rows: usize, c: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    // The parts of the (rows, c) data, as row_parts cuts it (a zero-sized stand-in: no memory).
    let mut shape = vec![(); rows * c];
    let parts = row_parts(&mut shape, c, |first, part| {
        let (mut sum, mut row) = (vec![0f32; c], vec![0f32; c]);
        for r in first..first + part.len() / c.max(1) {
            f(r, &mut row);
            for (s, v) in sum.iter_mut().zip(&row) {
                *s += v;
            }
        }
        sum
    });
    let mut out = vec![0f32; c];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// `[mean | biased variance]` of the columns of `x` `(n, c)`.
fn column_stats(x: &[f32], c: usize) -> Vec<f32> {
    let n = x.len() / c.max(1);
    let mut mean = column_sums(n, c, |r, out| out.copy_from_slice(&x[r * c..(r + 1) * c]));
    mean.iter_mut().for_each(|m| *m /= n as f32);
    let mut var = column_sums(n, c, |r, out| {
        for ((o, &x), &m) in out.iter_mut().zip(&x[r * c..(r + 1) * c]).zip(&mean) {
            *o = (x - m) * (x - m);
        }
    });
    var.iter_mut().for_each(|v| *v /= n as f32);
    mean.extend(var);
    mean
}

struct BatchNormOp {
    eps: f32,
    /// `[mean | biased variance]` of the last forward, for the running statistics and the backward.
    stats: Arc<std::sync::Mutex<Vec<f32>>>,
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "keel-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "batch norm input")?;
        let (g, b) = (f32s(s2, l2, "batch norm gain")?, f32s(s3, l3, "batch norm bias")?);
        let c = g.len();
        if c == 0 || b.len() != c || l1.dims() != [x.len() / c, c] {
            candle_core::bail!("batch norm: input {:?}, gain {c}, bias {}", l1.dims(), b.len());
        }
        let st = column_stats(x, c);
        let (mean, var) = st.split_at(c);
        let s: Vec<f32> = var.iter().map(|v| (v + self.eps).sqrt()).collect();
        let mut y = vec![0f32; x.len()];
        row_parts(&mut y, c, |r, part| {
            for (yr, xr) in part.chunks_exact_mut(c).zip(x[r * c..].chunks_exact(c)) {
                for j in 0..c {
                    yr[j] = (xr[j] - mean[j]) / s[j] * g[j] + b[j];
                }
            }
        });
        *self.stats.lock().map_err(|_| candle_core::Error::Msg("batch norm: statistics lock poisoned".into()))? = st;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (c, n) = (g.elem_count(), x.elem_count());
        let stats = self.stats.lock().map_err(|_| candle_core::Error::Msg("batch norm: lock poisoned".into()))?.clone();
        let all = x.apply_op3_no_bwd(g, &dy.contiguous()?, &BatchNormGrad { eps: self.eps, stats })?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dg = all.narrow(0, n, c)?.reshape(g.shape())?;
        let db = all.narrow(0, n + c, c)?.reshape(g.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// `[dx | dg | db]` of [`BatchNormOp`], from the statistics of its forward.
struct BatchNormGrad {
    eps: f32,
    stats: Vec<f32>,
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "keel-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "batch norm input")?;
        let g = f32s(s2, l2, "batch norm gain")?;
        let dy = f32s(s3, l3, "batch norm output gradient")?;
        let (c, len) = (g.len(), x.len());
        if c == 0 || dy.len() != len || len % c != 0 || self.stats.len() != 2 * c {
            candle_core::bail!("batch norm backward: input {len}, gradient {}, gain {c}", dy.len());
        }
        let n = len / c;
        let (mean, var) = self.stats.split_at(c);
        let s: Vec<f32> = var.iter().map(|v| (v + self.eps).sqrt()).collect();
        // db = sum dy, dg = sum dy * xhat (per column), in one pass.
        let sums = column_sums(n, 2 * c, |r, out| {
            let (odb, odg) = out.split_at_mut(c);
            for j in 0..c {
                let d = dy[r * c + j];
                odb[j] = d;
                odg[j] = d * (x[r * c + j] - mean[j]) / s[j];
            }
        });
        let (db, dg) = sums.split_at(c);
        let mut out = vec![0f32; len + 2 * c];
        let (dx, rest) = out.split_at_mut(len);
        // dx = (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) / s, with dxhat = dy g.
        row_parts(dx, c, |r, part| {
            for (k, dxr) in part.chunks_exact_mut(c).enumerate() {
                let row = r + k;
                for j in 0..c {
                    let xhat = (x[row * c + j] - mean[j]) / s[j];
                    let a = g[j] * db[j] / n as f32;
                    let cc = g[j] * dg[j] / n as f32;
                    dxr[j] = (dy[row * c + j] * g[j] - a - xhat * cc) / s[j];
                }
            }
        });
        rest[..c].copy_from_slice(dg);
        rest[c..].copy_from_slice(db);
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }
}

/// Softmax of `scale * x` over the last dimension, row `r` limited to the keys
/// `0..=limits[r % limits.len()]` if given.
struct Softmax {
    scale: f32,
    limits: Option<Arc<[usize]>>,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "keel-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "softmax input")?;
        let d = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        if d == 0 {
            return Ok((CpuStorage::F32(y), l.shape().clone()));
        }
        wide_fn! {
            /// The rows of `part`, the first being row `r0`.
            fn softmax_rows(part: &mut [f32], x: &[f32], r0: usize, d: usize, scale: f32, limits: Option<&[usize]>) {
                for (k, (xr, yr)) in x[r0 * d..].chunks_exact(d).zip(part.chunks_exact_mut(d)).enumerate() {
                    let r = r0 + k;
                    let seen = match limits {
                        Some(lim) => (lim[r % lim.len()] + 1).min(d),
                        None => d,
                    };
                    let (xr, yr) = (&xr[..seen], &mut yr[..seen]);
                    let max = xr.iter().map(|&x| x * scale).fold(f32::NEG_INFINITY, f32::max);
                    for (y, &x) in yr.iter_mut().zip(xr) {
                        *y = exp(x * scale - max);
                    }
                    // In order, apart from the loop above so that it vectorizes.
                    let sum: f32 = yr.iter().sum();
                    for y in yr.iter_mut() {
                        *y /= sum;
                    }
                }
            }
        }
        row_parts(&mut y, d, |r0, part| softmax_rows(part, x, r0, d, self.scale, self.limits.as_deref()));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad(self.scale))?))
    }
}

/// `dx = scale * y * (dy - sum(dy * y))` per row (masked weights are 0, so their gradient is too).
struct SoftmaxGrad(f32);

impl candle_core::CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "keel-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32s(s1, l1, "softmax output")?;
        let dy = f32s(s2, l2, "softmax output gradient")?;
        let d = *l1.dims().last().unwrap_or(&1);
        if dy.len() != y.len() || d == 0 {
            candle_core::bail!("softmax backward: output {}, gradient {}", y.len(), dy.len());
        }
        let mut dx = vec![0f32; y.len()];
        wide_fn! {
            /// The rows of `dx`, from those of `y` and `dy`.
            fn softmax_grad_rows(dx: &mut [f32], y: &[f32], dy: &[f32], d: usize, scale: f32) {
                for ((yr, dyr), dxr) in y.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
                    let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
                    for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
                        *dx = scale * y * (dy - dot);
                    }
                }
            }
        }
        row_parts(&mut dx, d, |r, dx| softmax_grad_rows(dx, &y[r * d..], &dy[r * d..], d, self.0));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64, spread: f64) -> Tensor {
        let mut r = keel_core::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| ((r.next_f64() - 0.5) * spread) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Values and gradients of `f` (fused) and `slow` (the composite ops) on the same inputs,
    /// with a loss weighted by a fixed random tensor so that every gradient path is exercised.
    #[test]
    fn layer_norm_matches_the_composite_ops_in_value_and_gradient() {
        let x = Var::from_tensor(&random(&[3, 5, 16], 1, 6.0)).unwrap();
        let g = Var::from_tensor(&(random(&[16], 2, 1.0) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&random(&[16], 3, 1.0)).unwrap();
        let w = random(&[3, 5, 16], 4, 2.0);
        let run = |fused: bool| {
            let y = if fused {
                layer_norm(&x, &g, &b, 1e-5).unwrap()
            } else {
                let mean = x.mean_keepdim(candle_core::D::Minus1).unwrap();
                let xc = x.broadcast_sub(&mean).unwrap();
                let var = xc.sqr().unwrap().mean_keepdim(candle_core::D::Minus1).unwrap();
                let xn = xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
                xn.broadcast_mul(&g).unwrap().broadcast_add(&b).unwrap()
            };
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(&x).unwrap().clone();
            let gg = grads.get(&g).unwrap().clone();
            let gb = grads.get(&b).unwrap().clone();
            (y, gx, gg, gb)
        };
        let (a, b2) = (run(true), run(false));
        assert!(max_diff(&a.0, &b2.0) < 1e-5, "value {}", max_diff(&a.0, &b2.0));
        assert!(max_diff(&a.1, &b2.1) < 1e-4, "dx {}", max_diff(&a.1, &b2.1));
        assert!(max_diff(&a.2, &b2.2) < 1e-4, "dg {}", max_diff(&a.2, &b2.2));
        assert!(max_diff(&a.3, &b2.3) < 1e-4, "db {}", max_diff(&a.3, &b2.3));
        // The gradient is not trivially zero.
        assert!(a.1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 1.0);
    }

    #[test]
    fn add_bias_matches_broadcast_add_in_value_and_gradient() {
        let y = Var::from_tensor(&random(&[6, 5], 7, 4.0)).unwrap();
        let b = Var::from_tensor(&random(&[5], 8, 4.0)).unwrap();
        let w = random(&[6, 5], 9, 2.0);
        let run = |fused: bool| {
            let out = if fused { add_bias(&y, &b).unwrap() } else { y.broadcast_add(&b).unwrap() };
            let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (out, grads.get(&y).unwrap().clone(), grads.get(&b).unwrap().clone())
        };
        let (a, c) = (run(true), run(false));
        assert!(max_diff(&a.0, &c.0) < 1e-6 && max_diff(&a.1, &c.1) < 1e-6 && max_diff(&a.2, &c.2) < 1e-5);
        assert_eq!(a.2.dims(), &[5]);
        assert!(a.2.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
    }

    #[test]
    fn gelu_and_elu_match_candle_in_value_and_gradient() {
        // Values away from 0, where the composite ELU's gradient is 2 (both relu branches count).
        let x = Var::from_tensor(&(random(&[4, 33], 10, 8.0) + 0.01).unwrap()).unwrap();
        let w = random(&[4, 33], 11, 2.0);
        for (i, fused) in [&(|x: &Tensor| gelu_erf(x)) as &dyn Fn(&Tensor) -> Result<Tensor>, &|x: &Tensor| elu(x)]
            .into_iter()
            .enumerate()
        {
            let slow = |x: &Tensor| -> Result<Tensor> {
                if i == 0 {
                    x.gelu_erf()
                } else {
                    let neg = x.neg()?.relu()?.neg()?;
                    x.relu()? + (neg.exp()? - 1.0)?
                }
            };
            let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                let y = f(&x).unwrap();
                let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(&x).unwrap().clone())
            };
            let (a, b) = (run(fused), run(&slow));
            assert!(max_diff(&a.0, &b.0) < 1e-6, "{i}: value {}", max_diff(&a.0, &b.0));
            assert!(max_diff(&a.1, &b.1) < 1e-5, "{i}: gradient {}", max_diff(&a.1, &b.1));
        }
        // ELU's gradient at 0 is 1 (the composite gave 2 there).
        let z = Var::from_tensor(&Tensor::new(&[0f32], &Device::Cpu).unwrap()).unwrap();
        let g = elu(&z).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&z).unwrap().to_vec1::<f32>().unwrap(), vec![1.0]);
    }

    #[test]
    fn gelu_dropout_matches_candles_gelu_then_mul_by_the_mask_in_value_and_gradient() {
        let x = Var::from_tensor(&random(&[4, 37], 26, 8.0)).unwrap();
        let mask: Vec<f32> = (0..4 * 37).map(|i| if i % 3 == 0 { 0.0 } else { 1.25 }).collect();
        let wt = random(&[4, 37], 27, 2.0);
        let run = |fused: bool| {
            let y = if fused {
                gelu_erf_dropout(&x, mask.clone()).unwrap()
            } else {
                let m = Tensor::from_vec(mask.clone(), (4, 37), &Device::Cpu).unwrap();
                x.gelu_erf().unwrap().mul(&m).unwrap()
            };
            let g = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone())
        };
        let (a, c) = (run(true), run(false));
        assert!(max_diff(&a.0, &c.0) < 2e-6, "value {}", max_diff(&a.0, &c.0));
        assert!(max_diff(&a.1, &c.1) < 1e-5, "gradient {}", max_diff(&a.1, &c.1));
        // Dropped elements pass no gradient; the composite fallback gives the same node values.
        let gx = a.1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(gx.iter().step_by(3).all(|&g| g == 0.0) && gx.iter().any(|&g| g != 0.0));
        let slow = with_composite(|| gelu_erf_dropout(&x, mask.clone()).unwrap());
        assert!(max_diff(&a.0, &slow) < 2e-6);
    }

    #[test]
    fn add_dropout_matches_add_and_mul_by_the_mask_in_value_and_gradient() {
        let x = Var::from_tensor(&random(&[3, 11], 28, 4.0)).unwrap();
        let a = Var::from_tensor(&random(&[3, 11], 29, 4.0)).unwrap();
        let mask: Vec<f32> = (0..33).map(|i| if i % 4 == 1 { 0.0 } else { 1.5 }).collect();
        let wt = random(&[3, 11], 30, 2.0);
        let run = |fused: bool| {
            let f = || add_dropout(&x, &a, mask.clone()).unwrap();
            let y = if fused { f() } else { with_composite(f) };
            let g = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone(), g.get(&a).unwrap().clone())
        };
        let (f, c) = (run(true), run(false));
        assert_eq!(max_diff(&f.0, &c.0), 0.0);
        assert_eq!(max_diff(&f.1, &c.1), 0.0);
        assert_eq!(max_diff(&f.2, &c.2), 0.0);
        assert_eq!(max_diff(&f.1, &wt), 0.0, "the residual passes the gradient through");
        let ga = f.2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(ga.iter().skip(1).step_by(4).all(|&g| g == 0.0) && ga[0] != 0.0);
    }

    #[test]
    fn swap_middle_matches_reshape_transpose_in_value_and_gradient() {
        let x = Var::from_tensor(&random(&[2, 3, 20], 12, 4.0)).unwrap(); // (B, L, H * D), H 4, D 5
        let w = random(&[2, 4, 3, 5], 13, 2.0);
        let run = |fused: bool| {
            let y = if fused {
                swap_middle(&x, 2, 3, 4, 5).unwrap()
            } else {
                x.reshape((2, 3, 4, 5)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
            };
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone())
        };
        let (a, b) = (run(true), run(false));
        assert_eq!(a.0.dims(), &[2, 4, 3, 5]);
        assert_eq!(a.1.dims(), &[2, 3, 20]);
        assert_eq!(max_diff(&a.0, &b.0), 0.0);
        assert_eq!(max_diff(&a.1, &b.1), 0.0);
    }

    #[test]
    fn softmax_matches_the_composite_ops_in_value_and_gradient() {
        let x = Var::from_tensor(&random(&[2, 3, 4, 7], 5, 20.0)).unwrap();
        let w = random(&[2, 3, 4, 7], 6, 2.0);
        let run = |fused: bool| {
            let y = if fused {
                softmax_last_dim(&x).unwrap()
            } else {
                candle_nn::ops::softmax(&x, candle_core::D::Minus1).unwrap()
            };
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(&x).unwrap().clone())
        };
        let (a, b) = (run(true), run(false));
        assert!(max_diff(&a.0, &b.0) < 1e-6, "value {}", max_diff(&a.0, &b.0));
        assert!(max_diff(&a.1, &b.1) < 1e-6, "dx {}", max_diff(&a.1, &b.1));
        assert!(a.1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
        // Rows sum to one, also with a -1e30 mask entry.
        let m = Tensor::new(&[[0f32, -1e30, 1.0]], &Device::Cpu).unwrap();
        let y = softmax_last_dim(&m).unwrap().to_vec2::<f32>().unwrap();
        assert!((y[0].iter().sum::<f32>() - 1.0).abs() < 1e-6 && y[0][1] == 0.0, "{y:?}");
    }

    #[test]
    fn linear_matches_the_composite_ops_in_value_and_gradient() {
        let x = Var::from_tensor(&random(&[3, 5, 7], 20, 4.0)).unwrap();
        let w = Var::from_tensor(&random(&[6, 7], 21, 2.0)).unwrap();
        let b = Var::from_tensor(&random(&[6], 22, 2.0)).unwrap();
        let wt = random(&[3, 5, 6], 23, 2.0);
        let run = |fused: bool| {
            let y = if fused { linear(&x, &w, &b).unwrap() } else { with_composite(|| linear(&x, &w, &b).unwrap()) };
            let g = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            (y, [&x, &w, &b].map(|v| g.get(v).unwrap().clone()))
        };
        let (a, c) = (run(true), run(false));
        assert_eq!(a.0.dims(), &[3, 5, 6]);
        assert!(max_diff(&a.0, &c.0) < 1e-5, "value {}", max_diff(&a.0, &c.0));
        // By hand: y[0, 0, 0] = x[0, 0, :] . w[0, :] + b[0].
        let x0 = x.as_tensor().get(0).unwrap().get(0).unwrap();
        let by_hand = (x0 * w.as_tensor().get(0).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            + b.as_tensor().to_vec1::<f32>().unwrap()[0];
        let y0 = a.0.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((y0 - by_hand).abs() < 1e-5, "{y0} vs {by_hand}");
        for (i, (ga, gc)) in a.1.iter().zip(&c.1).enumerate() {
            assert_eq!(ga.dims(), gc.dims(), "gradient {i}");
            assert!(max_diff(ga, gc) < 1e-4, "gradient {i}: {}", max_diff(ga, gc));
            assert!(ga.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "gradient {i}");
        }
    }

    #[test]
    fn dropout_matches_mul_by_the_mask_in_value_and_gradient() {
        let x = Var::from_tensor(&random(&[4, 9], 24, 4.0)).unwrap();
        let mask: Vec<f32> = (0..36).map(|i| if i % 3 == 0 { 0.0 } else { 1.5 }).collect();
        let wt = random(&[4, 9], 25, 2.0);
        let run = |fused: bool| {
            let y = if fused {
                dropout(&x, mask.clone()).unwrap()
            } else {
                with_composite(|| dropout(&x, mask.clone()).unwrap())
            };
            let g = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&x).unwrap().clone())
        };
        let (a, c) = (run(true), run(false));
        assert_eq!(max_diff(&a.0, &c.0), 0.0);
        assert_eq!(max_diff(&a.1, &c.1), 0.0);
        let gx = a.1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx[0], 0.0);
        assert_eq!(gx[1], 1.5 * w[1]);
    }

    #[test]
    fn attention_softmax_matches_the_composite_ops_with_and_without_a_causal_mask() {
        let x = Var::from_tensor(&random(&[2, 3, 4, 6], 26, 20.0)).unwrap();
        let wt = random(&[2, 3, 4, 6], 27, 2.0);
        // Full causal (row r sees keys 0..=r % 4), then per-row limits as ProbSparse gives them.
        let per_row: Vec<usize> = (0..24).map(|r| (r * 7) % 6).collect();
        for limits in [None, Some(vec![0, 1, 2, 3]), Some(per_row)] {
            let run = |fused: bool| {
                let f = || attention_softmax(&x, 0.35, limits.clone()).unwrap();
                let y = if fused { f() } else { with_composite(f) };
                let g = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(&x).unwrap().clone())
            };
            let (a, c) = (run(true), run(false));
            assert!(max_diff(&a.0, &c.0) < 1e-6, "{limits:?}: value {}", max_diff(&a.0, &c.0));
            assert!(max_diff(&a.1, &c.1) < 1e-6, "{limits:?}: dx {}", max_diff(&a.1, &c.1));
            assert!(a.1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
            // Masked weights are exactly zero, and every row sums to one.
            let rows = a.0.flatten_to(2).unwrap().to_vec2::<f32>().unwrap();
            for (r, row) in rows.iter().enumerate() {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "row {r}: {row:?}");
                if let Some(l) = &limits {
                    assert!(row[l[r % l.len()] + 1..].iter().all(|&w| w == 0.0), "row {r}: {row:?}");
                }
            }
        }
    }

    /// Every kernel that splits its rows over threads, in value and gradient, on inputs of a few
    /// parts each: the bits must not depend on whether the parts ran on one thread or on a pool
    /// of two (the tests above check the one-thread results against the composite ops).
    #[test]
    fn row_split_kernels_give_the_same_bits_on_a_pool_of_two_as_on_the_caller() {
        let (rows, width) = (48, 700); // 33 600 elements: three parts of up to 16 384
        let x = Var::from_tensor(&random(&[2, rows / 2, width], 30, 6.0)).unwrap();
        let g = Var::from_tensor(&(random(&[width], 31, 1.0) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&random(&[width], 32, 1.0)).unwrap();
        let w = Var::from_tensor(&random(&[40, width], 33, 0.2)).unwrap();
        let mask: Vec<f32> = (0..rows * width).map(|i| if i % 7 == 0 { 0.0 } else { 1.25 }).collect();
        let limits: Vec<usize> = (0..rows).map(|r| (r * 37) % width).collect();
        let run = || {
            let mut out = Vec::new();
            let mut check = |y: Tensor, vars: &[&Var]| {
                let wt = random(y.dims(), 35, 2.0);
                let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                out.push(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                for v in vars {
                    out.push(grads.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
            };
            check(layer_norm(&x, &g, &b, 1e-5).unwrap(), &[&x, &g, &b]);
            check(attention_softmax(&x, 0.3, Some(limits.clone())).unwrap(), &[&x]);
            check(softmax_last_dim(&x).unwrap(), &[&x]);
            check(gelu_erf(&x).unwrap(), &[&x]);
            check(elu(&x).unwrap(), &[&x]);
            check(dropout(&x, mask.clone()).unwrap(), &[&x]);
            check(add_bias(&x, &b).unwrap(), &[&x, &b]);
            check(swap_middle(&x, 2, rows / 2, 7, 100).unwrap(), &[&x]);
            let x2 = x.reshape((rows, width)).unwrap();
            let (bn, mean, var) = batch_norm_train(&x2, &g, &b, 1e-5).unwrap();
            check(bn, &[&x, &g, &b]);
            check(mean, &[]);
            check(var, &[]);
            check(linear(&x, &w, &Var::from_tensor(&random(&[40], 36, 1.0)).unwrap()).unwrap(), &[&x]);
            // The linear's bias gradient (a column sum over the 48 rows of 40).
            let lb = Var::from_tensor(&random(&[40], 37, 1.0)).unwrap();
            check(linear(&x, &w, &lb).unwrap(), &[&w, &lb]);
            out
        };
        let here = run();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let split = pool.install(|| {
            assert_eq!(rayon::current_num_threads(), 2);
            run()
        });
        let n = 3 * PART + 5;
        assert_eq!(dropout_mask(n, 0.9, 42), pool.install(|| dropout_mask(n, 0.9, 42)), "dropout mask");
        assert_eq!(here.len(), split.len());
        for (i, (a, c)) in here.iter().zip(&split).enumerate() {
            assert_eq!(a.len(), c.len(), "output {i}");
            let same = a.iter().zip(c).all(|(a, c)| a.to_bits() == c.to_bits());
            assert!(same, "output {i} differs between one thread and a pool of two");
            assert!(a.iter().any(|&v| v != 0.0), "output {i} is all zero");
        }
    }

    #[test]
    fn batch_norm_matches_the_composite_ops_in_value_gradient_and_statistics() {
        // 600 rows of 40 channels: two parts of the column sums.
        let x = Var::from_tensor(&(random(&[600, 40], 40, 6.0) + 1.5).unwrap()).unwrap();
        let g = Var::from_tensor(&(random(&[40], 41, 1.0) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&random(&[40], 42, 1.0)).unwrap();
        let wt = random(&[600, 40], 43, 2.0);
        let run = |fused: bool| {
            let f = || batch_norm_train(&x, &g, &b, 1e-5).unwrap();
            let (y, mean, var) = if fused { f() } else { with_composite(f) };
            let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            (y, mean, var, [&x, &g, &b].map(|v| grads.get(v).unwrap().clone()))
        };
        let (a, c) = (run(true), run(false));
        assert!(max_diff(&a.0, &c.0) < 1e-5, "value {}", max_diff(&a.0, &c.0));
        assert!(max_diff(&a.1, &c.1) < 1e-5 && max_diff(&a.2, &c.2) < 1e-4, "statistics");
        assert_eq!(a.1.dims(), &[40]);
        // The statistics by hand for channel 0.
        let col: Vec<f32> = x.as_tensor().narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let m = col.iter().sum::<f32>() / 600.0;
        let v = col.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / 600.0;
        assert!((a.1.to_vec1::<f32>().unwrap()[0] - m).abs() < 1e-5);
        assert!((a.2.to_vec1::<f32>().unwrap()[0] - v).abs() < 1e-4);
        for (i, (ga, gc)) in a.3.iter().zip(&c.3).enumerate() {
            assert_eq!(ga.dims(), gc.dims(), "gradient {i}");
            assert!(max_diff(ga, gc) < 1e-4, "gradient {i}: {}", max_diff(ga, gc));
            assert!(ga.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "gradient {i}");
        }
    }

    #[test]
    fn batch_matmul_matches_candle_in_value_and_gradient_also_on_a_pool_and_transposed() {
        // (B, H, L, D) by its transposed view, as the attention scores: 2 * 3 * 40 * 40 outputs, a
        // few parts.
        let q = Var::from_tensor(&random(&[2, 3, 40, 8], 50, 2.0)).unwrap();
        let k = Var::from_tensor(&random(&[2, 3, 40, 8], 51, 2.0)).unwrap();
        let v = Var::from_tensor(&random(&[2, 3, 40, 8], 52, 2.0)).unwrap();
        let wt = random(&[2, 3, 40, 8], 53, 2.0);
        let run = |fused: bool| {
            let mm = |a: &Tensor, b: &Tensor| if fused { batch_matmul(a, b).unwrap() } else { a.matmul(b).unwrap() };
            let s = mm(&q, &k.t().unwrap());
            let y = mm(&s, &v);
            let g = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
            for t in [&q, &k, &v] {
                out.push(g.get(t).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            out
        };
        let (a, c) = (run(true), run(false));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let p = pool.install(|| run(true));
        for i in 0..4 {
            let diff = a[i].iter().zip(&c[i]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "output {i}: {diff}");
            assert!(a[i].iter().any(|&x| x != 0.0), "output {i} is all zero");
            assert_eq!(a[i], p[i], "output {i}: pool of two");
        }
        // A batch that is not evenly strided (a narrowed middle dimension, which candle's matmul
        // refuses) is made contiguous first.
        let n = q.as_tensor().narrow(1, 1, 2).unwrap();
        let m = k.as_tensor().narrow(1, 0, 2).unwrap().t().unwrap();
        assert!(n.matmul(&m).is_err());
        let want = n.contiguous().unwrap().matmul(&m.contiguous().unwrap()).unwrap();
        assert!(max_diff(&batch_matmul(&n, &m).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn dropout_masks_keep_the_right_share_and_follow_the_seed() {
        let n = 5 * PART + 3; // several parts, the last one odd
        let mask = dropout_mask(n, 0.8, 7);
        assert_eq!(mask.len(), n);
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.25), "values are 0 or 1 / keep");
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.8).abs() < 0.01, "kept {kept}");
        // Every part is random: no part all kept or all dropped, and parts differ from each other.
        let parts: Vec<&[f32]> = mask.chunks_exact(PART).collect();
        assert!(parts.iter().all(|p| p.contains(&0.0) && p.contains(&1.25)));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(mask, dropout_mask(n, 0.8, 7));
        assert_ne!(mask, dropout_mask(n, 0.8, 8));
        // Each part is its stream of `Rng` draws, two decisions each (low half first).
        let threshold = (0.8f64 * 4_294_967_296.0).ceil() as u64;
        for (p, part) in mask.chunks(PART).enumerate() {
            let mut rng = Rng::new(Rng::new(7 ^ ((p * PART) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64());
            let mut want = Vec::new();
            while want.len() < part.len() {
                let r = rng.next_u64();
                want.extend([r & 0xFFFF_FFFF, r >> 32].map(|h| if h < threshold { 1.25f32 } else { 0.0 }));
            }
            want.truncate(part.len());
            assert_eq!(part, want, "part {p}");
        }
    }

    #[test]
    fn exp_stays_within_an_ulp_or_two_of_libm() {
        let mut e_exp = 0f32;
        for i in -60_000..=60_000 {
            let y = -(i as f32 * 1e-4).powi(2) / 2.0;
            e_exp = e_exp.max(((exp(y) - y.exp()) / y.exp()).abs());
        }
        assert!(e_exp < 2.5e-7, "exp {e_exp}");
        for x in [-80f32, -10.0, 0.0, 1.0, 10.0, 80.0] {
            assert!(((exp(x) - x.exp()) / x.exp()).abs() < 2.5e-7, "exp({x})");
        }
        assert_eq!((exp(-88.0), exp(-1e4), exp(0.0)), (0.0, 0.0, 1.0));
    }

    #[test]
    fn erf_and_gelu_stay_within_a_few_ulps_of_the_exact_value_and_of_libm() {
        let (mut e_abs, mut e_rel, mut e_gelu) = (0f64, 0f64, 0f64);
        for i in -70_000..=70_000 {
            let x = i as f32 * 1e-4;
            let exact = candle_core::cpu::erf::erf_f64(x as f64);
            e_abs = e_abs.max((erf(x) as f64 - exact).abs());
            if x != 0.0 {
                e_rel = e_rel.max(((erf(x) as f64 - exact) / exact).abs());
            }
            let libm_gelu = (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * x;
            e_gelu = e_gelu.max(((gelu(x) - libm_gelu) as f64).abs() / (x.abs() as f64).max(1.0));
        }
        assert!(e_abs < 5e-7 && e_rel < 5e-7 && e_gelu < 4e-7, "erf abs {e_abs} rel {e_rel}, gelu {e_gelu}");
        assert_eq!((erf(0.0), erf(-9.0), erf(9.0), erf(f32::INFINITY)), (0.0, -1.0, 1.0, 1.0));
    }
}
