//! `keel tune` end to end on a tiny synthetic series and tiny models: trials are appended as they
//! finish, a resumed search continues the numbering, a NaN trial is failed and never best, and
//! best.ron is a loadable keel config.

mod common;

use common::tmp;

use clap::Parser;
use keel::tune::{TrialStatus, TuneArgs, read_trials, run};
use keel_core::config::Config;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TuneArgs,
}

/// 300 daily rows of two noisy sines.
fn csv(dir: &std::path::Path) -> std::path::PathBuf {
    let mut s = String::from("date,a,Close\n");
    let day0 = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    for i in 0..300 {
        let d = day0 + chrono::Duration::days(i);
        let x = i as f64;
        s.push_str(&format!(
            "{d},{:.4},{:.4}\n",
            (x / 7.0).sin() + 0.01 * (x * 1.7).cos(),
            (x / 11.0).cos() * 3.0 + 10.0
        ));
    }
    let p = dir.join("series.csv");
    std::fs::write(&p, s).unwrap();
    p
}

fn args(data: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> TuneArgs {
    let mut argv = vec![
        "keel".to_string(),
        "--data".into(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for a in [
        "--max-d-model",
        "16",
        "--max-seq-len",
        "24",
        "--pred-len",
        "4",
        "--epochs",
        "1",
        "--max-batches",
        "2",
        "--dtype",
        "f32",
    ]
    .iter()
    .chain(extra)
    {
        argv.push(a.to_string());
    }
    Cli::try_parse_from(argv).unwrap().args
}

#[test]
fn search_appends_resumes_fails_nan_trials_and_writes_a_loadable_best() {
    let dir = tmp("search");
    let data = csv(&dir);
    let out = dir.join("out");
    let trials = out.join("trials.jsonl");

    run(args(&data, &out, &["--trials", "3"])).unwrap();
    let recs = read_trials(&trials).unwrap();
    assert_eq!(std::fs::read_to_string(&trials).unwrap().lines().count(), 3);
    assert_eq!(recs.iter().map(|r| r.number).collect::<Vec<_>>(), vec![0, 1, 2]);
    for r in &recs {
        assert_eq!(r.status, TrialStatus::Ok, "{r:?}");
        assert!(r.param_count > 0 && r.val_loss.is_some_and(f64::is_finite), "{r:?}");
        assert_eq!(
            r.scaler.init_scale,
            keel_core::config::ScaleChoice::Fixed(keel_core::scaler::init_scale_for(r.param_count))
        );
        assert_eq!(r.stats["steps"].as_u64(), Some(r.epochs_run as u64 * 2), "{r:?}");
    }

    // A second run without --resume refuses to mix into the old search.
    let e = run(args(&data, &out, &["--trials", "3"])).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");

    // An interrupted write leaves half a line; resume drops it and continues the numbering.
    let mut text = std::fs::read_to_string(&trials).unwrap();
    text.push_str("{\"number\": 3, \"sta");
    std::fs::write(&trials, text).unwrap();
    run(args(&data, &out, &["--trials", "5", "--resume", "--inject-nan-trial", "3"])).unwrap();
    let recs = read_trials(&trials).unwrap();
    assert_eq!(recs.iter().map(|r| r.number).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    let nan = &recs[3];
    assert_eq!(nan.status, TrialStatus::Failed, "{nan:?}");
    assert!(nan.error.as_deref().is_some_and(|e| e.contains("NaN loss")), "{nan:?}");
    assert!(nan.nan_losses > 0, "{nan:?}");
    assert_eq!(nan.score(), f64::INFINITY, "a failed trial is told to TPE as the worst score");
    assert_eq!(recs[4].status, TrialStatus::Ok);

    // best.ron is a full config that loads, holding the best ok trial's parameters.
    let best = recs
        .iter()
        .filter(|r| r.status == TrialStatus::Ok)
        .min_by(|a, b| a.val_loss.unwrap().total_cmp(&b.val_loss.unwrap()))
        .unwrap();
    let cfg = Config::from_ron(&std::fs::read_to_string(out.join("best.ron")).unwrap()).unwrap();
    let t = &cfg.train;
    let p = &best.params;
    assert_eq!(
        (t.d_model, t.n_heads, t.e_layers, t.seq_len, t.batch_size),
        (p.d_model, p.n_heads, p.e_layers, p.seq_len, p.batch_size)
    );
    assert_eq!((t.learning_rate, t.dropout, t.pred_len, t.label_len), (p.learning_rate, p.dropout, 4, p.seq_len / 2));
    std::fs::remove_dir_all(&dir).ok();
}

/// What every trial shares with the data is checked before the first trial: each of these failed
/// every trial alike before, with the reason only in trials.jsonl.
#[test]
fn a_search_that_cannot_fit_the_data_stops_before_its_first_trial() {
    let dir = tmp("tune-unfit");
    let data = csv(&dir);
    let out = dir.join("search");
    let with = |flags: &[&str]| {
        let mut argv = vec!["keel", "--max-seq-len", "24", "--epochs", "1", "--max-batches", "1", "--data"];
        let (data, out) = (data.display().to_string(), out.display().to_string());
        argv.push(&data);
        argv.extend(["--out", &out]);
        argv.extend(flags);
        format!("{:#}", run(Cli::try_parse_from(argv).unwrap().args).unwrap_err())
    };
    let e = with(&["--target", "Nope"]);
    assert!(e.contains("series.csv") && e.contains("target column \"Nope\" is not in the data"), "{e}");
    let e = with(&["--pred-len", "100"]);
    assert!(e.contains("300 rows are too few for even the shortest input the search tries (seq_len 24)"), "{e}");
    assert!(e.contains("need at least 984"), "{e}");
    let e = with(&["--pred-len", "0"]);
    assert!(e.contains("--pred-len (train.pred_len) = 0 is invalid: must be > 0"), "{e}");
    assert!(!out.join("trials.jsonl").exists(), "no trial ran");
}
