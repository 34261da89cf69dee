//! `keel-sim run --trace` records the machine of a seeded run; `keel-sim replay` reproduces it,
//! and catches a trace that the machine does not reproduce.

use std::path::PathBuf;
use std::process::Command;

fn keel_sim(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel-sim")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("keel-sim-{}-{name}", std::process::id()))
}

#[test]
fn a_recorded_run_replays_and_a_tampered_one_does_not() {
    let path = temp("trace.ron");
    let p = path.to_str().unwrap();
    // Seed 3 has resets, a half-open stall, a handshake hang and malformed frames in 3 hours.
    let (code, out) = keel_sim(&["run", "--seed", "3", "--hours", "3", "--trace", p]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("trace records to"), "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("Start("), "{}", &text[..100]);
    assert!(text.lines().count() > 1_000);

    let (code, out) = keel_sim(&["replay", p]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reproduced:") && out.contains("outputs identical"), "{out}");

    // One recorded output changed: the replay names its line.
    let line = text.lines().position(|l| l.contains("Connected(id:(1),attempt:1)")).unwrap();
    std::fs::write(&path, text.replacen("Connected(id:(1),attempt:1)", "Connected(id:(1),attempt:7)", 1)).unwrap();
    let (code, out) = keel_sim(&["replay", p]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT reproduced") && out.contains(&format!("line {}", line + 1)), "{out}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_missing_trace_is_a_clear_error() {
    let (code, out) = keel_sim(&["replay", "/nonexistent/trace.ron"]);
    assert_eq!(code, 2);
    assert!(out.contains("cannot read the trace /nonexistent/trace.ron"), "{out}");
}
