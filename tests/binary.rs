//! The `chartgate` binary as an operator runs it: it prints the URL it really listens on, serves,
//! and on SIGTERM shuts down gracefully with exit code 0.

mod common;

use common::serve::ServeProcess;

#[test]
fn serve_prints_its_url_serves_and_exits_0_on_sigterm() {
    // `--bind 127.0.0.1:0`: the helper reads the address from the first line printed.
    let serve = ServeProcess::start("chartgate", [("RUST_LOG", "info")]);
    assert!(
        !serve.addr.ends_with(":0"),
        "prints the port really bound: {}",
        serve.addr
    );
    assert!(serve.get("/healthz").0.starts_with("HTTP/1.1 200"));
    assert!(serve.get("/api/formulas").0.starts_with("HTTP/1.1 200"));
    // Exit code 0 is the helper's to check.
    let stderr = serve.stop();
    assert!(stderr.contains("shutdown: SIGTERM"), "{stderr}");
    assert!(stderr.contains("shutdown: closed"), "{stderr}");
}
