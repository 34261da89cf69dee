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
