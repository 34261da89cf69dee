//! The `keel-sim run` command line: what it prints first, how it fails, how to reproduce.

use std::process::Command;

fn keel_sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-sim")).args(args).env_remove("KEEL_SIM_SEED").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn first_line_is_the_seed_and_its_profile() {
    let (code, out, err) = keel_sim(&["run", "--seed", "7", "--hours", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    let first = lines.next().unwrap();
    assert!(first.starts_with("seed=7 latency="), "{first}");
    assert!(first.contains(" faults:"), "{first}");
    assert!(lines.next().unwrap().starts_with("seed=7 ok: connection 2.0 h"), "{out}");
    assert!(out.lines().last().unwrap().starts_with("1 seed(s), 1 passed, 0 failed"), "{out}");
}

#[test]
fn the_seed_can_come_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-sim"))
        .args(["run", "--hours", "1"])
        .env("KEEL_SIM_SEED", "11")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("seed=11 "));
}

#[test]
fn a_range_with_the_determinism_check_passes_in_order() {
    let (code, out, err) = keel_sim(&["run", "--seeds", "3..6", "--hours", "3", "--check-determinism", "--jobs", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let firsts: Vec<&str> =
        out.lines().filter(|l| l.contains(" latency=")).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(firsts, vec!["seed=3", "seed=4", "seed=5"]);
    assert!(out.contains("3 seed(s), 3 passed, 0 failed, each run twice"), "{out}");
}

#[test]
fn bad_arguments_say_what_to_do() {
    let (code, _, err) = keel_sim(&["run"]);
    assert_eq!(code, 2);
    assert!(err.contains("--seed N, --seeds A..B, or KEEL_SIM_SEED=N"), "{err}");
    let (code, _, err) = keel_sim(&["run", "--seeds", "9..3"]);
    assert_ne!(code, 0);
    assert!(err.contains("empty"), "{err}");
    let (code, _, err) = keel_sim(&["run", "--seed", "1", "--hours", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("positive"), "{err}");
    // Past the clock's range a run stopped after one step and claimed ~5e12 simulated hours.
    for (huge, shown) in [("1e15", "1000000000000000"), ("1000001", "1000001")] {
        let (code, out, err) = keel_sim(&["run", "--seed", "1", "--hours", huge]);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains(&format!("--hours {shown} is more than")), "{err}");
        assert!(err.contains("at most 1000000") && err.contains("run more seeds"), "{err}");
    }
}
