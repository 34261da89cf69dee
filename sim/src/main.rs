//! The `keel-sim` binary.

fn main() -> std::process::ExitCode {
    eprintln!("keel-sim: no subcommands yet");
    std::process::ExitCode::from(2)
}
