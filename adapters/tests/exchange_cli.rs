//! The `keel exchange` binary's REST faults from the command line: what `--rest-fault` queues is what
//! the HTTPS server answers, in order, and a misspelled fault stops the exchange before it binds,
//! naming the spelling and the accepted forms. The client is a plain HTTP/1.1-over-TLS GET written
//! here, trusting only the CA the exchange wrote (no keel client code).

mod common;

use common::{https_get, tmp};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Kills the exchange when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(status, retry-after header)` of one `GET path` on a fresh TLS connection to `port`.
fn get(port: u16, ca: &Path, path: &str) -> (u16, Option<String>) {
    let reply = smol::block_on(https_get(([127, 0, 0, 1], port).into(), &std::fs::read(ca).unwrap(), path));
    (reply.status, reply.headers.get("retry-after").cloned())
}

#[test]
fn rest_faults_from_the_command_line_are_served_in_order() {
    let dir = tmp("faults");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["exchange", "--port", "0", "--rest-port", "0", "--duration", "60"])
        .args(["--rest-fault", "429:7", "--rest-fault", "500", "--rest-fault", "418"])
        .arg("--cert-out")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    // "REST on https://localhost:PORT (GET ...)"
    let port: u16 = BufReader::new(stdout)
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("REST on https://localhost:").map(|r| r.split(' ').next().unwrap().to_string()))
        .expect("the exchange prints its REST address")
        .parse()
        .unwrap();
    let ca = dir.join("ca.pem");
    let path = "/api/v3/aggTrades?symbol=BTCUSDT&limit=1";
    assert_eq!(get(port, &ca, path), (429, Some("7".to_string())));
    assert_eq!(get(port, &ca, path).0, 500);
    assert_eq!(get(port, &ca, path), (418, None));
    assert_eq!(get(port, &ca, path).0, 200, "the queue is used up: served normally");
}

/// A script that reads what it needs and closes the pipe (`| head -1`) must not stop the server.
/// The exchange used to panic in `println!` on the broken pipe: when this file's first test read
/// the REST line and dropped its reader before the exchange printed its next line (under load), the
/// exchange was gone and the GET failed in its TLS handshake with an EOF.
#[test]
fn a_closed_stdout_does_not_stop_the_exchange() {
    let dir = tmp("closed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["exchange", "--port", "0", "--rest-port", "0", "--duration", "60"])
        .arg("--cert-out")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let stderr = child.stderr.take().unwrap();
    let _running = Running(child);
    // Its log line on stderr: "exchange: listening on wss://localhost:P, REST on https://localhost:PORT".
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if let Some((_, rest)) = line.split_once("REST on https://localhost:") {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(port.parse::<u16>().unwrap());
            }
        }
    });
    let port = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the exchange logs its REST address");
    // The CA is written before the first line is printed, and that print is what used to panic.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(get(port, &dir.join("ca.pem"), "/api/v3/ping").0, 200);
}

#[test]
fn a_misspelled_rest_fault_stops_before_binding_and_names_the_forms() {
    let dir = tmp("bad");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["exchange", "--port", "0", "--duration", "30", "--rest-fault", "430"])
        .arg("--cert-out")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("430"), "names the bad spelling: {stderr}");
    assert!(stderr.contains("429[:RETRY_AFTER_SECS]") && stderr.contains("slow:MS"), "lists the forms: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "did not start");
}

#[test]
fn the_help_lists_every_fault_the_parser_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel")).args(["exchange", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    // Help text wraps lines: compare with the whitespace squeezed out.
    let squeezed: String = help.split_whitespace().collect();
    for spec in keel::exchange::FAULT_SPECS.split(", ").chain(keel::exchange::REST_FAULT_SPECS.split(", ")) {
        assert!(squeezed.contains(spec), "{spec} missing from keel exchange --help:\n{help}");
    }
}

#[test]
fn an_unwritable_cert_out_stops_before_listening() {
    let dir = tmp("certout");
    let afile = dir.join("afile");
    std::fs::write(&afile, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["exchange", "--port", "0", "--duration", "30", "--cert-out"])
        .arg(&afile)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--cert-out"), "{stderr}");
    assert!(!stdout.contains("listening") && !stderr.contains("listening"), "did not start: {stdout}{stderr}");
}

#[test]
fn a_port_in_use_names_the_flag_and_the_way_out() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (ports, name) in [([&*port, "0"], "--port"), (["0", &*port], "for REST (--rest-port")] {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["exchange", "--duration", "30", "--port", ports[0], "--rest-port", ports[1], "--cert-out"])
            .arg(tmp("portinuse"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")) && stderr.contains(name), "{stderr}");
        assert!(stderr.contains("0 for a free one"), "{stderr}");
    }
}

#[test]
fn a_cert_out_naming_a_pem_file_is_the_ca_file() {
    // `--cert-out certs/my-ca.pem` used to create a directory `my-ca.pem/` holding `ca.pem`, and the
    // printed `--ca-file certs/my-ca.pem/ca.pem` was not what the user had asked for.
    let dir = tmp("certfile");
    let ca = dir.join("certs").join("my-ca.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["exchange", "--port", "0", "--rest-port", "0", "--duration", "1", "--cert-out"])
        .arg(&ca)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(ca.is_file(), "{} is the certificate file", ca.display());
    assert!(std::fs::read_to_string(&ca).unwrap().contains("BEGIN CERTIFICATE"));
    assert!(stdout.contains(&format!("--ca-file {} ", ca.display())), "{stdout}");
    // A directory still gets ca.pem inside it (every other test here relies on that).
    assert!(!dir.join("certs").join("ca.pem").exists());
}

#[test]
fn a_clock_speed_of_zero_is_refused() {
    // It was raised to 1 without a word.
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["exchange", "--port", "0", "--duration", "1", "--clock-speed", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--clock-speed") && stderr.contains("0 is not in 1.."), "{stderr}");
}
