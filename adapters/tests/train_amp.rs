//! End-to-end tests of `keel train` / `keel predict` on the small preset with short windows, so
//! the whole file stays within seconds-to-a-minute on a shared CPU.

mod common;

use common::tmp;

use clap::Parser;
use keel::train::checkpoint::{self, Meta};
use keel::train::data::{self, Table, Windows};
use keel::train::model::Params;
use keel::train::trainer::{RunOptions, Trainer, model_config};
use keel::train::{TrainArgs, forecast};
use keel_core::config::{ComputeDtype, Features, ScaleChoice, ScalerConfig, TrainConfig};
use std::path::Path;

const MSFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/msft-daily.csv");
const V1_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/checkpoint-v1");

/// The small preset with short windows.
fn small(dtype: ComputeDtype) -> TrainConfig {
    TrainConfig {
        seq_len: 32,
        label_len: 16,
        pred_len: 8,
        d_model: 64,
        n_heads: 4,
        d_ff: 256,
        batch_size: 8,
        epochs: 1,
        dtype,
        ..TrainConfig::default()
    }
}

fn windows(c: &TrainConfig) -> Windows {
    Windows { seq_len: c.seq_len as usize, label_len: c.label_len as usize, pred_len: c.pred_len as usize }
}

fn opts(max_batches: usize) -> RunOptions {
    RunOptions {
        device: candle_core::Device::Cpu,
        disable_scaler: false,
        max_batches: Some(max_batches),
        progress: false,
    }
}

/// The last `n` rows of the real CSV (recent prices; keeps evaluation short).
fn msft_tail(n: usize) -> Table {
    let t = data::load(Path::new(MSFT), false).unwrap();
    let k = t.rows.len() - n;
    Table { columns: t.columns, times_ms: t.times_ms[k..].to_vec(), rows: t.rows[k..].to_vec() }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn train_args(extra: &[&str]) -> TrainArgs {
    let mut argv = vec!["keel", "--model-size", "small", "--seq-len", "32", "--label-len", "16", "--pred-len", "8"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().args
}

#[test]
fn every_parameter_of_the_small_preset_gets_a_nonzero_gradient_in_f16() {
    let cfg = small(ComputeDtype::F16);
    let ds = data::prepare(&msft_tail(400), "Close", Features::MS, windows(&cfg)).unwrap();
    let tr = Trainer::new(&model_config(&cfg, &ds.norm), &cfg, &ScalerConfig::default(), opts(1)).unwrap();
    let b = keel::train::trainer::make_batch(&ds.train, &[0, 5, 10, 15], &ds.norm, &candle_core::Device::Cpu).unwrap();
    let ctx = keel::train::model::Ctx::new(candle_core::DType::F16, true, 1);
    let y = tr.model.forward(&b.x_enc, &b.mark_enc, &b.x_dec, &b.mark_dec, &ctx).unwrap();
    let loss = (y.to_dtype(candle_core::DType::F32).unwrap() - &b.y).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = (loss * 1024.0).unwrap().backward().unwrap();
    assert!(tr.params.named().len() > 60);
    for (name, var) in tr.params.named() {
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient reaches {name}"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "gradient of {name}: {s}");
    }
}

#[test]
fn loss_decreases_on_a_learnable_synthetic_series() {
    // A noiseless sum of two sines with a 16-step period: the next 8 steps are fully determined.
    let n = 600;
    let table = Table {
        columns: vec!["y".into()],
        times_ms: (0..n).map(|i| i as i64 * 3_600_000).collect(),
        rows: (0..n)
            .map(|i| {
                let t = i as f64 * std::f64::consts::TAU / 16.0;
                vec![t.sin() + 0.5 * (2.0 * t).cos()]
            })
            .collect(),
    };
    let mut cfg = small(ComputeDtype::F32);
    cfg.learning_rate = 1e-3;
    cfg.target = "y".into();
    cfg.features = Features::S;
    let ds = data::prepare(&table, "y", Features::S, windows(&cfg)).unwrap();
    let mut tr = Trainer::new(&model_config(&cfg, &ds.norm), &cfg, &ScalerConfig::default(), opts(4)).unwrap();
    let before = tr.evaluate(&ds.val, &ds.norm).unwrap().mse;
    let mut order: Vec<usize> = (0..ds.train.len()).collect();
    let mut rng = keel_core::rng::Rng::new(3);
    for step in 0..40 {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let b = keel::train::trainer::make_batch(&ds.train, &order[..8], &ds.norm, &candle_core::Device::Cpu).unwrap();
        let l = tr.train_step(&b, 0, step).unwrap();
        assert!(l.is_finite());
    }
    let after = tr.evaluate(&ds.val, &ds.norm).unwrap().mse;
    assert!(after < 0.5 * before, "validation MSE {before} -> {after}");
    assert!(tr.driver.stats().applied >= 38);
}

#[test]
fn f16_training_on_the_real_csv_stays_finite() {
    let cfg = small(ComputeDtype::F16);
    let ds = data::prepare(&msft_tail(1500), "Close", Features::MS, windows(&cfg)).unwrap();
    let mut tr = Trainer::new(&model_config(&cfg, &ds.norm), &cfg, &ScalerConfig::default(), opts(12)).unwrap();
    let r = tr.fit(&ds).unwrap();
    assert_eq!(r.nan_losses, 0);
    assert!(tr.curve.iter().all(|p| p.loss.is_finite()), "{:?}", tr.curve);
    assert!(r.test_mse.is_finite() && r.test_mae.is_finite() && r.baseline_mse.is_finite());
    assert_eq!(r.stats.steps, 12);
    assert!(r.stats.applied >= 10, "{:?}", r.stats);
    for (name, v) in tr.params.named() {
        let s = v.as_tensor().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s.is_finite(), "weight {name} went non-finite");
    }
}

#[test]
fn absurd_initial_scale_overflows_skips_backs_off_then_trains() {
    let cfg = small(ComputeDtype::F16);
    let scaler = ScalerConfig { init_scale: ScaleChoice::Fixed(1e30), max_scale: 1e31, ..ScalerConfig::default() };
    let ds = data::prepare(&msft_tail(1500), "Close", Features::MS, windows(&cfg)).unwrap();
    let mut tr = Trainer::new(&model_config(&cfg, &ds.norm), &cfg, &scaler, opts(14)).unwrap();
    assert_eq!(tr.driver.scale(), 1e30);
    let before: Vec<f32> = tr.params.named()[0].1.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let r = tr.fit(&ds).unwrap();
    let s = &r.stats;
    assert!(s.overflows >= 5, "{s:?}");
    assert_eq!(s.skipped, s.overflows);
    assert!(s.resets >= 1, "5 overflows in a row must reset the scale: {s:?}");
    assert!(s.current_scale <= 65536.0, "{s:?}");
    assert!(s.applied >= 5, "training resumes after the back-off: {s:?}");
    assert_eq!(r.nan_losses, 0);
    // The first steps were skipped: the optimizer did not move during them, then it did.
    assert!(tr.curve[0].skipped && tr.curve[0].scale == 1e30);
    assert!(!tr.curve.last().unwrap().skipped);
    assert_eq!(tr.adam.steps(), s.applied);
    let after: Vec<f32> = tr.params.named()[0].1.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    assert_ne!(before, after);
    assert!(r.test_mse.is_finite());
}

#[test]
fn nan_in_the_csv_is_rejected_before_training_with_row_and_column() {
    let text = std::fs::read_to_string(MSFT).unwrap();
    let mut lines: Vec<String> = text.lines().take(300).map(str::to_string).collect();
    // Line 51 is data row 50; Close is the fifth column.
    let mut cells: Vec<&str> = lines[50].split(',').collect();
    cells[4] = "NaN";
    lines[50] = cells.join(",");
    let dir = tmp("nan");
    let path = dir.join("bad.csv");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = dir.join("ck");
    let args = train_args(&["--data", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    let e = format!("{:#}", keel::train::run(args).unwrap_err());
    assert!(e.contains("row 50 (line 51), column \"Close\"") && e.contains("not finite"), "{e}");
    assert!(!out.exists(), "nothing may be written for rejected data");
}

#[test]
fn bf16_on_cpu_is_refused_with_a_clear_message() {
    let args = train_args(&["--data", MSFT, "--dtype", "bf16", "--quiet", "--out", "/nonexistent/x"]);
    let e = keel::train::run(args).unwrap_err().to_string();
    assert_eq!(e, "bf16 needs a GPU (--device cuda); use --dtype f16 or f32 on CPU");
    let args = train_args(&["--data", MSFT, "--device", "cuda", "--quiet"]);
    let e = keel::train::run(args).unwrap_err().to_string();
    assert!(e.contains("without CUDA") && e.contains("--device cpu"), "{e}");
}

#[test]
fn checkpoint_save_load_gives_identical_predictions_and_cli_writes_everything() {
    let dir = tmp("ck");
    let csv = dir.join("msft-tail.csv");
    let text = std::fs::read_to_string(MSFT).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let keep: Vec<&str> = std::iter::once(lines[0]).chain(lines[lines.len() - 400..].iter().copied()).collect();
    std::fs::write(&csv, keep.join("\n")).unwrap();
    let out = dir.join("ck");
    let stats = dir.join("stats.json");
    let args = train_args(&[
        "--data",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--stats-json",
        stats.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-batches",
        "3",
        "--dtype",
        "f16",
        "--quiet",
    ]);
    keel::train::run(args).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    for k in ["steps", "skipped", "current_scale", "test_mse", "test_mae", "baseline_mse", "baseline_mae", "nan_losses"]
    {
        assert!(json.get(k).is_some(), "stats json lacks {k}: {json}");
    }
    assert_eq!(json["steps"], 3);
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // Load twice; and compare against a model rebuilt from the same weights by hand.
    let dev = candle_core::Device::Cpu;
    let (meta, m1, _) = checkpoint::load(&out, &dev).unwrap();
    assert_eq!(meta.format_version, checkpoint::FORMAT_VERSION);
    let (_, m2, _) = checkpoint::load(&out, &dev).unwrap();
    let table = data::load(&csv, false).unwrap();
    let values = keel::train::standardize(&table, &meta.normalization).unwrap();
    let (t1, y1) = forecast(&m1, &values, &table.times_ms, &dev).unwrap();
    let (_, y2) = forecast(&m2, &values, &table.times_ms, &dev).unwrap();
    assert_eq!(y1, y2);
    assert_eq!(t1.len(), 8);
    assert_eq!(t1[1] - t1[0], 86_400_000); // daily data continues daily
    // Save the loaded model again and load it: still identical (weights and BatchNorm buffers).
    let mut p = Params::new(0, &dev);
    let m3 = keel::train::model::Informer::new(&meta.model, &mut p).unwrap();
    let again = dir.join("again");
    let (_, _, p1) = checkpoint::load(&out, &dev).unwrap();
    checkpoint::save(&again, &m1, &p1, &meta).unwrap();
    let (_, m4, _) = checkpoint::load(&again, &dev).unwrap();
    assert_eq!(forecast(&m4, &values, &table.times_ms, &dev).unwrap().1, y1);
    // A fresh, untrained model predicts differently (the comparison can fail).
    assert_ne!(forecast(&m3, &values, &table.times_ms, &dev).unwrap().1, y1);
    // The CLI path writes a CSV with 8 forecast rows.
    let csv_out = keel::train::predict_file(&out, &csv, &dev, false).unwrap();
    assert_eq!(csv_out.lines().count(), 9);
    assert!(csv_out.starts_with("date,Close\n"), "{csv_out}");
}

#[test]
fn version_1_checkpoint_fixture_loads_and_unknown_versions_are_refused() {
    let dev = candle_core::Device::Cpu;
    let (meta, model, _) = checkpoint::load(Path::new(V1_FIXTURE), &dev).unwrap();
    assert_eq!(meta.format_version, 1);
    assert_eq!(meta.scaler.scale(), 2048.0); // the v1 `loss_scale`
    let table = data::load(Path::new(MSFT), false).unwrap();
    let values = keel::train::standardize(&table, &meta.normalization).unwrap();
    let (_, y) = forecast(&model, &values, &table.times_ms, &dev).unwrap();
    assert!(y.iter().flatten().all(|v| v.is_finite()));

    let dir = tmp("v99");
    std::fs::copy(Path::new(V1_FIXTURE).join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let meta = std::fs::read_to_string(Path::new(V1_FIXTURE).join("meta.ron")).unwrap();
    std::fs::write(dir.join("meta.ron"), meta.replace("format_version: 1", "format_version: 99")).unwrap();
    let e = format!("{:#}", checkpoint::load(&dir, &dev).err().unwrap());
    assert!(
        e.contains("format_version 99 is not supported")
            && e.contains(&format!("versions 1 to {}", checkpoint::FORMAT_VERSION)),
        "{e}"
    );
}

/// Regenerates the version-1 fixture (run with `--ignored` after a deliberate model change).
#[test]
#[ignore]
fn write_version_1_fixture() {
    let cfg = TrainConfig {
        seq_len: 16,
        label_len: 8,
        pred_len: 4,
        d_model: 8,
        n_heads: 2,
        d_ff: 16,
        e_layers: 2,
        ..small(ComputeDtype::F32)
    };
    let ds = data::prepare(&msft_tail(400), "Close", Features::MS, windows(&cfg)).unwrap();
    let mut tr = Trainer::new(&model_config(&cfg, &ds.norm), &cfg, &ScalerConfig::default(), opts(2)).unwrap();
    tr.fit(&ds).unwrap();
    let dir = Path::new(V1_FIXTURE);
    let meta = Meta {
        format_version: 2,
        model: tr.model.cfg.clone(),
        normalization: ds.norm.clone(),
        train: cfg,
        scaler: tr.driver.clone(),
        resume: None,
    };
    checkpoint::save(dir, &tr.model, &tr.params, &meta).unwrap();
    // Version 1 stored the scale as a bare number and no training config or monitor.
    let v1 = format!(
        "(\n    format_version: 1,\n    model: {},\n    normalization: {},\n    loss_scale: 2048.0,\n)\n",
        ron::to_string(&meta.model).unwrap(),
        ron::to_string(&meta.normalization).unwrap()
    );
    std::fs::write(dir.join("meta.ron"), v1).unwrap();
}

#[test]
fn trains_and_predicts_on_recorded_klines() {
    // A `keel stream` recording: two day files, every candle updated twice before it closes, and a
    // still-open last candle.
    let dir = tmp("klines").join("btcusdt@kline_1m");
    std::fs::create_dir_all(&dir).unwrap();
    let header = data::KLINE_HEADER.join(",");
    let start = 1_795_996_800_000i64 - 200 * 60_000; // 200 minutes before 2026-11-30 00:00 UTC
    let (mut day1, mut day2) = (vec![header.clone()], vec![header]);
    for i in 0..401i64 {
        let open_time = start + i * 60_000;
        let p = 100.0 + (i as f64 / 7.0).sin() * 3.0 + i as f64 * 0.01;
        for (k, closed) in [(0, 0), (1, 0), (2, 1)] {
            if i == 400 && closed == 1 {
                continue; // the newest candle never closed
            }
            let row = format!(
                "{},{open_time},{},1m,{p:.2},{:.2},{:.2},{:.2},{},{},{closed}",
                open_time + 20_000 * k + 1,
                open_time + 59_999,
                p + 1.0,
                p - 1.0,
                p + 0.1 * k as f64,
                10.0 + k as f64,
                5 + k
            );
            if open_time < 1_795_996_800_000 { day1.push(row) } else { day2.push(row) }
        }
    }
    std::fs::write(dir.join("2026-11-29.csv"), day1.join("\n")).unwrap();
    std::fs::write(dir.join("2026-11-30.csv"), day2.join("\n") + "\n").unwrap();
    let table = data::load(&dir, false).unwrap();
    assert_eq!(table.rows.len(), 400);
    assert_eq!(table.rows[0][3], format!("{:.2}", 100.0 + 0.2).parse::<f64>().unwrap()); // closed row's close
    assert_eq!(data::load(&dir, true).unwrap().rows.len(), 401);

    let out = dir.parent().unwrap().join("ck");
    let args = train_args(&[
        "--data",
        dir.to_str().unwrap(),
        "--target",
        "Close",
        "--features",
        "S",
        "--dtype",
        "f16",
        "--batch-size",
        "8",
        "--max-batches",
        "2",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    keel::train::run(args).unwrap();
    let csv = keel::train::predict_file(&out, &dir, &candle_core::Device::Cpu, false).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "date,close");
    assert_eq!(lines.len(), 9);
    // The forecast starts one minute after the last closed candle (minute 399 after start).
    let first = chrono::DateTime::from_timestamp_millis(start + 400 * 60_000).unwrap();
    assert!(lines[1].starts_with(&first.format("%Y-%m-%d %H:%M:%S").to_string()), "{csv}");
}

/// The header and the last `n` rows of the real CSV, written to `dir/name`.
fn msft_tail_file(dir: &Path, name: &str, n: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(MSFT).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let keep: Vec<&str> = std::iter::once(lines[0]).chain(lines[lines.len() - n..].iter().copied()).collect();
    let path = dir.join(name);
    std::fs::write(&path, keep.join("\n")).unwrap();
    path
}

#[test]
fn a_diverged_run_fails_and_keeps_no_checkpoint() {
    let dir = tmp("diverged");
    let csv = msft_tail_file(&dir, "msft.csv", 400);
    let out = dir.join("ck");
    let args = train_args(&[
        "--data",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lr",
        "1e10",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-batches",
        "2",
        "--quiet",
    ]);
    let e = format!("{:#}", keel::train::run(args).unwrap_err());
    assert!(e.contains("training diverged: no epoch had a finite validation loss (epoch 1: NaN"), "{e}");
    assert!(e.contains("Lower the learning rate (--lr, was 1e10)"), "{e}");
    assert!(e.contains(&format!("removed from {}", out.display())) && e.contains("loss.png"), "{e}");
    // No checkpoint that predict or --resume could take for a result; the plot for the diagnosis.
    for f in [checkpoint::META, checkpoint::WEIGHTS, checkpoint::STATE] {
        assert!(!out.join(f).exists(), "{f} left behind");
    }
    assert_eq!(&std::fs::read(out.join("loss.png")).unwrap()[1..4], b"PNG");
}

#[test]
fn predict_refuses_non_finite_weights_and_a_non_finite_forecast_naming_them() {
    let dir = tmp("nanweights");
    let csv = msft_tail_file(&dir, "msft.csv", 400);
    let good = dir.join("good");
    let args = train_args(&[
        "--data",
        csv.to_str().unwrap(),
        "--out",
        good.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-batches",
        "2",
        "--quiet",
    ]);
    keel::train::run(args).unwrap();
    let dev = candle_core::Device::Cpu;
    keel::train::predict_file(&good, &csv, &dev, false).unwrap();
    // A directory that is not a checkpoint, and an --out that is a directory, say what to give instead.
    let e = format!("{:#}", keel::train::predict_file(&dir, &csv, &dev, false).unwrap_err());
    assert!(e.contains("holds no meta.ron, so it is not a checkpoint directory") && e.contains("`keel train`"), "{e}");
    // A path that does not exist, and a file of the checkpoint given for its directory.
    let e = format!("{:#}", keel::train::predict_file(&dir.join("nope"), &csv, &dev, false).unwrap_err());
    assert!(e.contains("nope does not exist: give the --out directory of a `keel train` run"), "{e}");
    let weights = good.join("model.safetensors");
    let e = format!("{:#}", keel::train::predict_file(&weights, &csv, &dev, false).unwrap_err());
    assert!(
        e.contains("model.safetensors is a file, not a checkpoint directory")
            && e.contains(&format!("(here perhaps {})", good.display())),
        "{e}"
    );
    let predict = |out: &std::path::Path| {
        keel::train::predict(keel::train::PredictArgs {
            checkpoint: good.clone(),
            data: csv.clone(),
            out: Some(out.to_path_buf()),
            device: keel::train::DeviceArg::Cpu,
            include_open_candle: false,
        })
    };
    let e = format!("{:#}", predict(&dir).unwrap_err());
    assert!(e.contains("is a directory; give a file path, e.g.") && e.contains("forecast.csv"), "{e}");
    predict(&dir.join("forecast.csv")).unwrap();
    assert!(std::fs::read_to_string(dir.join("forecast.csv")).unwrap().starts_with("date,Close\n"));
    // A copy of the checkpoint with one weight changed in model.safetensors.
    let edited = |name: &str, value: f32| {
        let ck = dir.join(name);
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::copy(good.join(checkpoint::META), ck.join(checkpoint::META)).unwrap();
        let mut w = candle_core::safetensors::load(good.join(checkpoint::WEIGHTS), &dev).unwrap();
        let t = &w["projection.weight"];
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if value.is_nan() {
            v[3] = value;
        } else {
            v.iter_mut().for_each(|x| *x = value);
        }
        let t = candle_core::Tensor::from_vec(v, t.dims(), &dev).unwrap();
        w.insert("projection.weight".into(), t);
        candle_core::safetensors::save(&w, ck.join(checkpoint::WEIGHTS)).unwrap();
        ck
    };
    let nan = edited("nan", f32::NAN);
    let e = format!("{:#}", keel::train::predict_file(&nan, &csv, &dev, false).unwrap_err());
    assert!(e.contains("tensor projection.weight holds 1 NaN/inf value(s)") && e.contains("train again"), "{e}");
    // Finite weights so large that the forecast overflows.
    let huge = edited("huge", 3e38);
    let e = format!("{:#}", keel::train::predict_file(&huge, &csv, &dev, false).unwrap_err());
    assert!(e.contains("the forecast of") && e.contains("for Close at") && e.contains("check them"), "{e}");
}

#[test]
fn evaluating_no_batch_is_an_error_not_a_perfect_score() {
    // `--max-batches 0` (refused by the flag now) evaluated nothing and reported MSE 0.0000.
    let cfg = small(ComputeDtype::F32);
    let ds = data::prepare(&msft_tail(400), "Close", Features::MS, windows(&cfg)).unwrap();
    let mut tr = Trainer::new(&model_config(&cfg, &ds.norm), &cfg, &ScalerConfig::default(), opts(0)).unwrap();
    let e = tr.evaluate(&ds.test, &ds.norm).unwrap_err().to_string();
    assert!(e.contains("no window was evaluated") && e.contains("max_batches Some(0)"), "{e}");
    let e = tr.fit(&ds).unwrap_err().to_string();
    assert!(e.contains("no window was evaluated"), "{e}");
}
