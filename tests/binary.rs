//! The `chartgate` binary as an operator runs it: it prints the URL it really listens on, serves,
//! and on SIGTERM shuts down gracefully with exit code 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A plain HTTP/1.1 GET; the answer's status line.
fn get_status(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the service");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[test]
fn serve_prints_its_url_serves_and_exits_0_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chartgate"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chartgate serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the URL line");
    let addr = line
        .trim()
        .strip_prefix("chartgate: listening on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(
        !addr.ends_with(":0"),
        "prints the port really bound: {addr}"
    );
    assert!(get_status(&addr, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get_status(&addr, "/api/formulas").starts_with("HTTP/1.1 200"));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().expect("chartgate exits");
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(stderr.contains("shutdown: SIGTERM"), "{stderr}");
    assert!(stderr.contains("shutdown: closed"), "{stderr}");
}
