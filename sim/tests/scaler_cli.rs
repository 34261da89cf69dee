//! Runs the `keel-sim scaler` binary and compares its output with tables computed by hand.

use std::process::Command;

fn keel_sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel-sim")).arg("scaler").args(args).output().expect("run keel-sim")
}

/// The example of issue 10, PyTorch's rule by hand: grow after 3 clean steps, halve on overflow.
#[test]
fn pytorch_config_table() {
    let out =
        keel_sim(&["--flags", "0001000110", "--init", "65536", "--growth", "2", "--backoff", "0.5", "--interval", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = "\
0 0 1 65536.0
1 0 1 65536.0
2 0 1 131072.0
3 1 0 65536.0
4 0 1 65536.0
5 0 1 65536.0
6 0 1 131072.0
7 1 0 65536.0
8 1 0 32768.0
9 0 1 32768.0
";
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

/// Clamp and hysteresis: bounds [2, 8], back off only at the second overflow since the last
/// growth.
#[test]
fn clamp_and_hysteresis_table() {
    let out = keel_sim(&[
        "--flags",
        "0011101100",
        "--init",
        "4",
        "--growth",
        "2",
        "--backoff",
        "0.5",
        "--interval",
        "1",
        "--min",
        "2",
        "--max",
        "8",
        "--hysteresis",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = "\
0 0 1 8.0
1 0 1 8.0
2 1 0 8.0
3 1 0 4.0
4 1 0 2.0
5 0 1 4.0
6 1 0 4.0
7 1 0 2.0
8 0 1 4.0
9 0 1 8.0
";
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = keel_sim(&["--flags", "01a", "--init", "8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'a' at position 2"));
    let out = keel_sim(&["--flags", "01", "--growth", "0.9"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--growth (scaler.growth_factor) = 0.9 is invalid: must be > 1.0"), "{err}");
    // Each bad flag is named, all at once; a key no flag set keeps its key alone.
    let out = keel_sim(&["--flags", "01", "--interval", "0", "--min", "10", "--max", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interval (scaler.growth_interval) = 0 is invalid"), "{err}");
    assert!(err.contains("--max (scaler.max_scale) = 5 is invalid: must be >= scaler.min_scale (10)"), "{err}");
}

/// With --monitor, 5 overflows in a row reset to the size-based scale (8192 for 200 M parameters),
/// and overflows that go on at the minimum scale exit with status 1 and say scaling is not the
/// cause.
#[test]
fn monitor_resets_and_stops_at_min_scale() {
    let flags = "1".repeat(25);
    let out =
        keel_sim(&["--flags", &flags, "--init", "1000000", "--max", "1000000", "--params", "200000000", "--monitor"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let scales: Vec<&str> = stdout.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    let want = [
        "500000.0", "250000.0", "125000.0", "62500.0", "8192.0", // 5th overflow: reset down to 8192
        "4096.0", "2048.0", "1024.0", "512.0", "256.0", // reset below 8192: unchanged
        "128.0", "64.0", "32.0", "16.0", "8.0", "4.0", "2.0", "1.0", "1.0", "1.0", "1.0", "1.0", "1.0", "1.0", "1.0",
    ];
    assert_eq!(scales, want);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("# reset applied: 31250.0 -> 8192.0"), "{err}");
    // Steps 18..=22 ran at the floor.
    assert!(err.contains("step 22: 5 overflows in a row at the minimum loss scale 1"), "{err}");
    assert!(err.contains("loss scaling is not the cause"), "{err}");
}
