//! Training cost (issue 8, figure 3): ms per training step, ms per forward-only step, samples/s and
//! peak RSS for the small and base presets at batch 32, f32 and f16, on the CPU.
//!
//! Run one configuration per process so that VmHWM (peak RSS) belongs to that configuration alone:
//! `cargo bench -p keel --bench train -- small f32` (`bench/run` runs all four). Prints one Markdown
//! table row. Not a criterion bench: one step takes from tens of ms to seconds, so a few timed
//! steps after one warm-up step are enough, and the median is reported.

use candle_core::Device;
use keel::train::model::Ctx;
use keel::train::{amp, data, trainer};
use keel_core::config::{ComputeDtype, Config};
use std::path::Path;
use std::time::Instant;

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // cargo bench passes `--bench`; keep only our positional words.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let size = args.first().map_or("small", String::as_str);
    let dtype = args.get(1).map_or("f32", String::as_str);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(if size == "base" { 3 } else { 10 });

    let mut cfg = Config::default();
    let t = &mut cfg.train;
    (t.d_model, t.n_heads, t.d_ff) = match size {
        "small" => (64, 4, 256),
        "base" => (512, 8, 2048),
        other => anyhow::bail!("unknown size {other:?}: use small or base"),
    };
    t.dtype = match dtype {
        "f32" => ComputeDtype::F32,
        "f16" => ComputeDtype::F16,
        other => anyhow::bail!("unknown dtype {other:?}: use f32 or f16"),
    };
    t.batch_size = 32;
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/msft-daily.csv");
    let table = data::load(&csv, false)?;
    let w =
        data::Windows { seq_len: t.seq_len as usize, label_len: t.label_len as usize, pred_len: t.pred_len as usize };
    let ds = data::prepare(&table, &t.target, t.features, w)?;
    let mcfg = trainer::model_config(t, &ds.norm);
    let dev = Device::Cpu;
    let opts = trainer::RunOptions { device: dev.clone(), disable_scaler: false, max_batches: None, progress: false };
    let mut tr = trainer::Trainer::new(&mcfg, t, &cfg.scaler, opts)?;
    let params = tr.params.count();
    let b = t.batch_size as usize;
    let batches: Vec<trainer::Batch> = (0..=steps)
        .map(|i| {
            let starts: Vec<usize> = (0..b).map(|j| (i * b + j) % ds.train.len()).collect();
            trainer::make_batch(&ds.train, &starts, &ds.norm, &dev)
        })
        .collect::<Result<_, _>>()?;

    // Warm-up step (allocations, first-touch), then timed steps.
    tr.train_step(&batches[0], 0, 0)?;
    let mut train_ms = Vec::new();
    for (i, batch) in batches[1..].iter().enumerate() {
        let start = Instant::now();
        tr.train_step(batch, 0, i + 1)?;
        train_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut fwd_ms = Vec::new();
    for (i, batch) in batches[1..].iter().enumerate() {
        let ctx = Ctx::new(amp::dtype_of(t.dtype), false, i as u64);
        let start = Instant::now();
        let out = tr.model.forward(&batch.x_enc, &batch.mark_enc, &batch.x_dec, &batch.mark_dec, &ctx)?;
        // Force the result onto the host so nothing is left lazy.
        let _ = out.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        fwd_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (tm, fm) = (median(train_ms), median(fwd_ms));
    println!(
        "| {size} | {dtype} | {params} | {b} | {steps} | {tm:.1} | {:.0} | {fm:.1} | {:.0} | {:.0} |",
        b as f64 / (tm / 1e3),
        b as f64 / (fm / 1e3),
        vm_hwm_mib()
    );
    Ok(())
}
