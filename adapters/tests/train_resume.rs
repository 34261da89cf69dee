//! `keel train --resume`: a run stopped after some epochs and resumed ends bit for bit where the
//! uninterrupted run ends; checkpoints are replaced atomically; old and damaged checkpoints and
//! mismatched settings or data get clear errors. The small preset with short windows and three
//! batches per epoch, on the last 400 rows of the real MSFT file.

mod common;

use clap::Parser;
use common::tmp;
use keel::train::TrainArgs;
use keel::train::checkpoint;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MSFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/msft-daily.csv");
const V1_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/checkpoint-v1");

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

/// The small preset, short windows, three batches of 8 per epoch, f16 under the loss scaler (so
/// the scaler's state must carry over too); a flag in `extra` replaces the default one.
fn train(data: &Path, extra: &[&str]) -> anyhow::Result<()> {
    train_until(data, extra, |_| false).map(|_| ())
}

/// [`train`] with a Ctrl-C after the step given by `stop`.
fn train_until(data: &Path, extra: &[&str], stop: impl Fn(u64) -> bool) -> anyhow::Result<std::process::ExitCode> {
    let defaults = [
        ("--model-size", "small"),
        ("--seq-len", "32"),
        ("--label-len", "16"),
        ("--pred-len", "8"),
        ("--batch-size", "8"),
        ("--max-batches", "3"),
        ("--dtype", "f16"),
        ("--lr", "0.001"),
    ];
    let mut argv = vec!["keel", "--quiet", "--data", data.to_str().unwrap()];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            argv.extend([flag, value]);
        }
    }
    argv.extend_from_slice(extra);
    keel::train::run_until(Cli::try_parse_from(argv).unwrap().args, stop)
}

/// The header and the last `n` rows of the MSFT CSV, with `edit` applied to each data line.
fn msft_tail(dir: &Path, name: &str, n: usize, edit: impl Fn(usize, &str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(MSFT).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut keep = vec![lines[0].to_string()];
    keep.extend(lines[lines.len() - n..].iter().enumerate().map(|(i, l)| edit(i, l)));
    let path = dir.join(name);
    std::fs::write(&path, keep.join("\n")).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every tensor of a safetensors file as its dtype and the bits of its values.
fn tensors(path: &Path) -> HashMap<String, (String, Vec<u64>)> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let dtype = format!("{:?}", t.dtype());
            let v = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
            (name, (dtype, v.into_iter().map(f64::to_bits).collect()))
        })
        .collect()
}

fn stats_without_timing(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("step_ms").expect("stats have step_ms");
    v
}

fn err(r: anyhow::Result<()>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn a_run_stopped_after_one_epoch_and_resumed_ends_bit_for_bit_like_the_uninterrupted_run() {
    let dir = tmp("exact");
    let csv = msft_tail(&dir, "msft.csv", 400, |_, l| l.to_string());
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    let (whole_json, parts_json) = (dir.join("whole.json"), dir.join("parts.json"));
    train(&csv, &["--epochs", "3", "--patience", "5", "--out", s(&whole), "--stats-json", s(&whole_json)]).unwrap();
    // The interrupted run: its last checkpoint is the one after epoch 1 (what a kill during
    // epoch 2 leaves); then resumed into the same directory for the rest.
    train(&csv, &["--epochs", "1", "--patience", "5", "--out", s(&parts)]).unwrap();
    let first = checkpoint::load_meta(&parts).unwrap();
    assert_eq!(first.format_version, checkpoint::FORMAT_VERSION);
    let r = first.resume.as_ref().unwrap();
    assert_eq!((r.state.next_epoch, r.state.step, r.state.stopped_early), (1, 3, false));
    // (The current weights differ after one and three epochs: the comparison below can fail.)
    assert!(tensors(&parts.join(checkpoint::STATE)) != tensors(&whole.join(checkpoint::STATE)));
    train(&csv, &["--resume", s(&parts), "--epochs", "3", "--patience", "5", "--stats-json", s(&parts_json)]).unwrap();

    // Weights predict uses, and the resume state (current weights, Adam moments, loss curve).
    for file in [checkpoint::WEIGHTS, checkpoint::STATE] {
        let (a, b) = (tensors(&whole.join(file)), tensors(&parts.join(file)));
        assert!(a.len() > 60, "{file}: {} tensors", a.len());
        let mut names: Vec<&String> = a.keys().collect();
        names.sort();
        assert_eq!(
            names,
            {
                let mut n: Vec<&String> = b.keys().collect();
                n.sort();
                n
            },
            "{file}"
        );
        for name in names {
            assert!(a[name] == b[name], "{file}: {name} differs between the whole and the resumed run");
        }
    }
    // Reported losses, scaler statistics, test errors.
    let (a, b) = (stats_without_timing(&whole_json), stats_without_timing(&parts_json));
    assert_eq!(a, b);
    assert_eq!((a["epochs_run"].as_u64(), a["steps"].as_u64()), (Some(3), Some(9)), "{a}");
    // Loop state and scaler, apart from the wall time.
    let (ma, mb) = (checkpoint::load_meta(&whole).unwrap(), checkpoint::load_meta(&parts).unwrap());
    let (mut ra, mut rb) = (ma.resume.unwrap(), mb.resume.unwrap());
    (ra.state.step_secs, rb.state.step_secs) = (0.0, 0.0);
    assert_eq!(ra, rb);
    assert_eq!(ra.state.val_curve.len(), 3);
    assert_eq!(ma.scaler, mb.scaler);
    assert_eq!(std::fs::read(parts.join("loss.png")).unwrap()[1..4], *b"PNG");
}

#[test]
fn a_run_stopped_by_ctrl_c_mid_epoch_and_resumed_ends_bit_for_bit_like_the_uninterrupted_run() {
    let dir = tmp("ctrlc");
    let csv = msft_tail(&dir, "msft.csv", 400, |_, l| l.to_string());
    let (whole, whole_json) = (dir.join("whole"), dir.join("whole.json"));
    train(&csv, &["--epochs", "2", "--patience", "5", "--out", s(&whole), "--stats-json", s(&whole_json)]).unwrap();
    // Ctrl-C in the middle of the second epoch (after the first of its three batches), then resumed.
    let (cut, cut_json) = (dir.join("cut"), dir.join("cut.json"));
    let code = train_until(&csv, &["--epochs", "2", "--patience", "5", "--out", s(&cut)], |step| step == 4).unwrap();
    assert_eq!(code, std::process::ExitCode::from(130));
    let r = checkpoint::load_meta(&cut).unwrap().resume.unwrap();
    assert_eq!((r.state.next_epoch, r.state.batch, r.state.step), (1, 1, 4));
    train(&csv, &["--resume", s(&cut), "--stats-json", s(&cut_json)]).unwrap();
    for file in [checkpoint::WEIGHTS, checkpoint::STATE] {
        assert!(tensors(&whole.join(file)) == tensors(&cut.join(file)), "{file} differs after a mid-epoch resume");
    }
    assert_eq!(stats_without_timing(&whole_json), stats_without_timing(&cut_json));
    let (mut ra, mut rc) = (checkpoint::load_meta(&whole).unwrap(), checkpoint::load_meta(&cut).unwrap());
    let (a, c) = (ra.resume.as_mut().unwrap(), rc.resume.as_mut().unwrap());
    (a.state.step_secs, c.state.step_secs) = (0.0, 0.0);
    assert_eq!((a, ra.scaler), (c, rc.scaler));
}

#[test]
fn an_interrupted_save_never_replaces_the_checkpoint_and_damage_is_named() {
    let dir = tmp("atomic");
    let csv = msft_tail(&dir, "msft.csv", 400, |_, l| l.to_string());
    let ck = dir.join("ck");
    train(&csv, &["--epochs", "1", "--out", s(&ck)]).unwrap();
    std::fs::write(ck.join("notes.txt"), "mine").unwrap();
    let dev = candle_core::Device::Cpu;
    let good = keel::train::predict_file(&ck, &csv, &dev, false).unwrap();
    let weights = std::fs::read(ck.join(checkpoint::WEIGHTS)).unwrap();

    // A save killed part-way: its temporary directory beside the checkpoint holds a truncated
    // weights file and no metadata. The checkpoint is untouched and still predicts the same.
    let partial = dir.join(".ck.keel-tmp");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join(checkpoint::WEIGHTS), &weights[..weights.len() / 2]).unwrap();
    assert_eq!(keel::train::predict_file(&ck, &csv, &dev, false).unwrap(), good);
    // The next save discards the partial directory, replaces the checkpoint, keeps other files.
    let (meta, model, params) = checkpoint::load(&ck, &dev).unwrap();
    checkpoint::save(&ck, &model, &params, &meta).unwrap();
    assert!(!partial.exists(), "the partial save is left at {}", partial.display());
    assert_eq!(std::fs::read_to_string(ck.join("notes.txt")).unwrap(), "mine");
    assert_eq!(keel::train::predict_file(&ck, &csv, &dev, false).unwrap(), good);
    assert!(!ck.join(checkpoint::STATE).exists(), "a weights-only save has no resume state");
    let e = err(train(&csv, &["--resume", s(&ck), "--epochs", "2"]));
    assert!(e.contains("without optimizer and loop state") && e.contains("train afresh"), "{e}");

    // Damaged files are named, with what to do.
    train(&csv, &["--epochs", "1", "--out", s(&ck), "--force"]).unwrap();
    let state = std::fs::read(ck.join(checkpoint::STATE)).unwrap();
    std::fs::write(ck.join(checkpoint::STATE), &state[..state.len() - 100]).unwrap();
    let e = err(train(&csv, &["--resume", s(&ck), "--epochs", "2"]));
    assert!(e.contains(s(&ck.join(checkpoint::STATE))) && e.contains("truncated or corrupt"), "{e}");
    std::fs::write(ck.join(checkpoint::WEIGHTS), &weights[..weights.len() - 100]).unwrap();
    let e = format!("{:#}", keel::train::predict_file(&ck, &csv, &dev, false).unwrap_err());
    assert!(e.contains(s(&ck.join(checkpoint::WEIGHTS))) && e.contains("truncated or corrupt"), "{e}");
    let meta_text = std::fs::read_to_string(ck.join(checkpoint::META)).unwrap();
    std::fs::write(ck.join(checkpoint::META), &meta_text[..meta_text.len() / 2]).unwrap();
    let e = format!("{:#}", checkpoint::load(&ck, &dev).err().unwrap());
    assert!(e.contains(s(&ck.join(checkpoint::META))), "{e}");
    // A subdirectory in --out is refused before any training (a save replaces the directory).
    std::fs::create_dir_all(dir.join("busy/sub")).unwrap();
    let e = err(train(&csv, &["--epochs", "1", "--out", s(&dir.join("busy"))]));
    assert!(e.contains("holds the subdirectory sub"), "{e}");
}

#[test]
fn version_1_and_2_checkpoints_predict_and_are_refused_for_resume() {
    let dir = tmp("old");
    let dev = candle_core::Device::Cpu;
    let msft = Path::new(MSFT);
    let v1 = Path::new(V1_FIXTURE);
    let y1 = keel::train::predict_file(v1, msft, &dev, false).unwrap();
    assert_eq!(y1.lines().count(), 5, "{y1}");
    let e = err(train(msft, &["--resume", V1_FIXTURE]));
    assert!(e.contains("version-1 checkpoint without optimizer and loop state"), "{e}");

    // Version 2: version 3 without the resume state and without train.checkpoint_every.
    let v2 = dir.join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(v1.join(checkpoint::WEIGHTS), v2.join(checkpoint::WEIGHTS)).unwrap();
    let (meta, _, _) = checkpoint::load(v1, &dev).unwrap();
    let meta = checkpoint::Meta { format_version: 2, ..meta };
    let text = ron::ser::to_string_pretty(&meta, ron::ser::PrettyConfig::new()).unwrap();
    assert!(text.contains("checkpoint_every: 1,\n"));
    std::fs::write(v2.join(checkpoint::META), text.replace("checkpoint_every: 1,\n", "")).unwrap();
    assert_eq!(keel::train::predict_file(&v2, msft, &dev, false).unwrap(), y1);
    let e = err(train(msft, &["--resume", s(&v2)]));
    assert!(e.contains("version-2 checkpoint without optimizer and loop state"), "{e}");
}

#[test]
fn resume_refuses_other_settings_and_other_data_naming_the_difference() {
    let dir = tmp("mismatch");
    let csv = msft_tail(&dir, "msft.csv", 400, |_, l| l.to_string());
    let ck = dir.join("ck");
    train(&csv, &["--epochs", "1", "--out", s(&ck)]).unwrap();
    let resume = |data: &Path, extra: &[&str]| {
        let mut a = vec!["--resume", s(&ck)];
        a.extend_from_slice(extra);
        err(train(data, &a))
    };
    let e = resume(&csv, &["--epochs", "3", "--seed", "7"]);
    assert!(e.contains("train.seed is 7 here but 2021 in the checkpoint") && e.contains("drop the flag"), "{e}");
    let e = resume(&csv, &["--epochs", "3", "--features", "S"]);
    assert!(e.contains("train.features is \"S\" here but \"MS\""), "{e}");
    let e = resume(&csv, &["--epochs", "3", "--dtype", "f32"]);
    assert!(e.contains("train.dtype is \"F32\" here but \"F16\""), "{e}");
    let e = resume(&csv, &["--epochs", "3", "--max-batches", "4"]);
    assert!(e.contains("--max-batches is Some(4) here but was Some(3)"), "{e}");
    let e = resume(&csv, &["--epochs", "3", "--config", s(&csv)]);
    assert!(e.contains("--config cannot be combined with --resume"), "{e}");
    let e = resume(&csv, &[]);
    assert!(e.contains("finished all 1 of its epochs; pass --epochs N with N > 1"), "{e}");
    // Fewer rows; then the same number of rows with other prices.
    let shorter = msft_tail(&dir, "shorter.csv", 390, |_, l| l.to_string());
    let e = resume(&shorter, &["--epochs", "3"]);
    assert!(e.contains("390 rows") && e.contains("the run trained on 400 rows"), "{e}");
    let other = msft_tail(&dir, "other.csv", 400, |i, l| if i == 0 { l.replacen(',', ",1", 2) } else { l.to_string() });
    let e = resume(&other, &["--epochs", "3"]);
    assert!(e.contains("of the training part has mean") && e.contains("the data changed"), "{e}");
    // Nothing was written over the checkpoint by the refused resumes.
    assert_eq!(checkpoint::load_meta(&ck).unwrap().resume.unwrap().state.next_epoch, 1);
}

#[test]
fn checkpoint_every_two_epochs_saves_after_the_second_and_the_last() {
    let dir = tmp("every");
    let csv = msft_tail(&dir, "msft.csv", 400, |_, l| l.to_string());
    let config = dir.join("keel.ron");
    std::fs::write(&config, "(train: (checkpoint_every: 2))").unwrap();
    let ck = dir.join("ck");
    let saved = |ck: &Path| checkpoint::load_meta(ck).ok().and_then(|m| m.resume).map(|r| r.state.next_epoch);
    // Three batches per epoch: the stop callback runs after every step and looks at the directory.
    let seen = std::cell::RefCell::new(Vec::new());
    let args = ["--epochs", "3", "--patience", "5", "--config", s(&config), "--out", s(&ck)];
    train_until(&csv, &args, |step| {
        seen.borrow_mut().push((step, saved(&ck)));
        false
    })
    .unwrap();
    let seen = seen.into_inner();
    // After epoch 1 (steps 4 to 6) nothing was saved; after epoch 2 (steps 7 to 9) its checkpoint.
    assert_eq!(
        seen.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [vec![None; 6], vec![Some(2u32); 3]].concat(),
        "{seen:?}"
    );
    assert_eq!(saved(&ck), Some(3), "the last epoch always saves");
    let bad = dir.join("bad.ron");
    std::fs::write(&bad, "(train: (checkpoint_every: 0))").unwrap();
    let e = err(train(&csv, &["--config", s(&bad), "--out", s(&dir.join("never"))]));
    assert!(e.contains("train.checkpoint_every = 0 is invalid"), "{e}");
}

#[test]
fn out_holding_another_run_or_other_files_is_refused_unless_resumed_or_forced() {
    let dir = tmp("refuse");
    let csv = msft_tail(&dir, "msft.csv", 400, |_, l| l.to_string());
    let ck = dir.join("ck");
    train(&csv, &["--epochs", "1", "--out", s(&ck)]).unwrap();
    let state = std::fs::read(ck.join(checkpoint::STATE)).unwrap();
    // A second run into the same --out would replace the first run's only resumable state.
    let e = err(train(&csv, &["--epochs", "1", "--seed", "5", "--out", s(&ck)]));
    assert!(e.contains(&format!("--out {} already holds a run that finished 1 of its 1 epochs", s(&ck))), "{e}");
    assert!(e.contains(&format!("pass --resume {}", s(&ck))) && e.contains("--force") && e.contains("another --out"));
    assert!(std::fs::read(ck.join(checkpoint::STATE)).unwrap() == state, "the refused run wrote over the checkpoint");
    // Continuing it in place is what --resume is for.
    train(&csv, &["--resume", s(&ck), "--epochs", "2"]).unwrap();
    assert_eq!(checkpoint::load_meta(&ck).unwrap().resume.unwrap().state.next_epoch, 2);
    // Into another run's checkpoint, a resume is refused too.
    let other = dir.join("other");
    train(&csv, &["--epochs", "1", "--out", s(&other)]).unwrap();
    let e = err(train(&csv, &["--resume", s(&ck), "--epochs", "3", "--out", s(&other)]));
    assert!(e.contains(&format!("--out {} already holds", s(&other))), "{e}");
    // --force replaces it: a fresh run of one epoch.
    train(&csv, &["--epochs", "1", "--seed", "5", "--out", s(&ck), "--force"]).unwrap();
    let m = checkpoint::load_meta(&ck).unwrap();
    assert_eq!((m.train.seed, m.resume.unwrap().state.next_epoch), (5, 1));
    // A directory of someone's files: they are kept beside the run. Bare weights are refused.
    let mine = dir.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    std::fs::write(mine.join(checkpoint::WEIGHTS), "someone's weights").unwrap();
    let e = err(train(&csv, &["--epochs", "1", "--out", s(&mine)]));
    assert!(e.contains(&format!("holds {} without a meta.ron", checkpoint::WEIGHTS)) && e.contains("--force"), "{e}");
    assert!(!mine.join(checkpoint::META).exists());
    std::fs::remove_file(mine.join(checkpoint::WEIGHTS)).unwrap();
    train(&csv, &["--epochs", "1", "--out", s(&mine)]).unwrap();
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "mine");
    assert!(mine.join(checkpoint::META).exists());
}

#[test]
fn an_unwritable_out_or_stats_json_is_found_before_training() {
    let dir = tmp("unwritable");
    let csv = msft_tail(&dir, "msft.csv", 400, |_, l| l.to_string());
    // Tests run as root, where permission bits stop nothing: a path under a regular file cannot
    // be created by anyone.
    let file = dir.join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let steps = std::cell::Cell::new(0u64);
    let run = |extra: &[&str]| {
        err(train_until(&csv, extra, |_| {
            steps.set(steps.get() + 1);
            false
        })
        .map(drop))
    };
    let out = file.join("ck");
    let e = run(&["--epochs", "1", "--out", s(&out)]);
    assert!(e.contains(&format!("--out {}", s(&out))) && e.contains("choose a writable --out"), "{e}");
    let json = file.join("s.json");
    let e = run(&["--epochs", "1", "--out", s(&dir.join("ck")), "--stats-json", s(&json)]);
    assert!(e.contains(&format!("--stats-json {}: cannot write it", s(&json))), "{e}");
    assert_eq!(steps.get(), 0, "training ran before the output paths were checked");
}
