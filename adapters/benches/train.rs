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

/// CPU time of the whole process (all threads), in ms.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// CPU ns of each of the process's threads by name (`/proc/self/task/*/schedstat`: time on a core,
/// whatever the load), sorted by name.
fn thread_cpu_ns() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_string();
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.push((comm, ns));
    }
    out.sort();
    out
}

/// Wall and CPU ms of each phase of a training step, summed over the timed steps.
#[derive(Default)]
struct Phases(Vec<(&'static str, Vec<(f64, f64)>)>);

impl Phases {
    fn add(&mut self, i: usize, name: &'static str, t: &mut (Instant, f64)) {
        let (w, c) = (t.0.elapsed().as_secs_f64() * 1e3, cpu_ms() - t.1);
        if self.0.len() <= i {
            self.0.push((name, Vec::new()));
        }
        self.0[i].1.push((w, c));
        *t = (Instant::now(), cpu_ms());
    }
}

/// `phases <size> <dtype> <steps>`: the step of `Trainer::train_step` cut into phases, each timed
/// (median wall ms and median process-CPU ms). A profiling aid, not a figure of BENCHMARKS.md.
fn phases(tr: &mut trainer::Trainer, batches: &[trainer::Batch], dtype: candle_core::DType) -> anyhow::Result<()> {
    use candle_core::DType;
    let mut ph = Phases::default();
    let threads_before = thread_cpu_ns();
    for (s, batch) in batches.iter().enumerate() {
        let mut t = (Instant::now(), cpu_ms());
        let ctx = Ctx::new(dtype, true, s as u64);
        let out = tr.model.forward(&batch.x_enc, &batch.mark_enc, &batch.x_dec, &batch.mark_dec, &ctx)?;
        let out32 = out.to_dtype(DType::F32)?;
        let _ = out32.sum_all()?.to_scalar::<f32>()?;
        ph.add(0, "forward", &mut t);
        let loss = (&out32 - &batch.y)?.sqr()?.mean_all()?;
        let _ = loss.to_scalar::<f32>()?;
        ph.add(1, "loss", &mut t);
        let scale = tr.driver.scale();
        if s == 0 {
            // The graph backward walks: nodes that need a gradient, and their total size.
            let nodes = loss.sorted_nodes();
            let elems: usize = nodes.iter().map(|t| t.elem_count()).sum();
            println!("graph: {} nodes needing a gradient, {:.1} M elements in all", nodes.len(), elems as f64 / 1e6);
        }
        let grads = (&loss * scale)?.backward()?;
        ph.add(2, "backward", &mut t);
        let grads = amp::collect(&grads, &tr.params)?;
        ph.add(3, "collect grads", &mut t);
        let (found, norm) = amp::check_and_norm(&grads, scale)?;
        ph.add(4, "inf check + norm", &mut t);
        let mul = amp::clip_coef(norm, tr.cfg.clip_grad_norm) / scale;
        tr.adam.step_scaled(&tr.params, &grads, mul)?;
        ph.add(5, "unscale + clip + adam", &mut t);
        let _ = tr.driver.step(s as u64, found, Some(norm));
        ph.add(6, "scaler", &mut t);
    }
    let (mut tw, mut tc) = (0.0, 0.0);
    println!("| phase | wall ms (median) | process CPU ms (median) |");
    println!("| --- | --- | --- |");
    for (name, v) in &ph.0 {
        let (w, c) = (median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1).collect()));
        (tw, tc) = (tw + w, tc + c);
        println!("| {name} | {w:.1} | {c:.1} |");
    }
    println!("| sum | {tw:.1} | {tc:.1} |");
    // The busiest thread's CPU per step bounds the step's wall time on an idle machine from below
    // (each thread's own work, without the time it waits for the others or for a core).
    let per_thread: Vec<String> = thread_cpu_ns()
        .iter()
        .map(|(name, ns)| {
            let before = threads_before.iter().find(|(n, _)| n == name).map_or(0, |b| b.1);
            format!("{name} {:.1}", (ns - before) as f64 / 1e6 / batches.len() as f64)
        })
        .collect();
    println!("CPU ms per step by thread: {}", per_thread.join(", "));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in main, before any thread is spawned (as in the keel binary).
    unsafe { keel::train::trainer::elementwise_on_caller() };
    // cargo bench passes `--bench`; keep only our positional words.
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let phase_mode = args.first().is_some_and(|a| a == "phases");
    if phase_mode {
        args.remove(0);
    }
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
    // The reference Informer (bench/informer_torch.py) has no instance normalization: compare the
    // same model. Its cost is a few elementwise ops on the (32, 96, c_in) input.
    t.instance_norm = false;
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
    if phase_mode {
        return tr.in_pool(|tr| phases(tr, &batches[1..], amp::dtype_of(t.dtype)));
    }
    let mut train_ms = Vec::new();
    for (i, batch) in batches[1..].iter().enumerate() {
        let start = Instant::now();
        tr.train_step(batch, 0, i + 1)?;
        train_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut fwd_ms = Vec::new();
    for (i, batch) in batches[1..].iter().enumerate() {
        let dtype = amp::dtype_of(t.dtype);
        let start = Instant::now();
        // On the trainer's pool, as `Trainer::evaluate` runs it.
        tr.in_pool(|tr| -> candle_core::Result<()> {
            let ctx = Ctx::new(dtype, false, i as u64);
            let out = tr.model.forward(&batch.x_enc, &batch.mark_enc, &batch.x_dec, &batch.mark_dec, &ctx)?;
            // Force the result onto the host so nothing is left lazy.
            let _ = out.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            Ok(())
        })?;
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
