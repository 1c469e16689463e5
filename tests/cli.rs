//! The `uringws` binary as a user runs it: a second `uringws echo` on a port in use, and
//! flags that cannot work, each refused with one line naming the value and the cause.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_uringws");

/// Runs the binary to its end (it must end within 20 s).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("uringws {args:?} did not exit");
}

/// Checks that `uringws args` fails with exit status 1 and a stderr that contains `needles`.
fn refused(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in {err:?}");
    }
}

#[test]
fn a_second_echo_server_on_the_same_port_exits_with_address_in_use() {
    if !common::uring_available() {
        return;
    }
    let mut first = Command::new(BIN)
        .args(["echo", "--addr", "127.0.0.1:0", "--threads", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stderr = BufReader::new(first.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("uringws echo listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    refused(
        &["echo", "--addr", &addr],
        &[&addr, "already in use", "reuse_port"],
    );
    // The first one still serves.
    common::assert_still_serves(addr.parse().unwrap());
    // SAFETY: kill(2) with a pid this test spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(first.id() as i32, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(first.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}

#[test]
fn flags_that_cannot_work_are_refused_by_name() {
    let addr = "127.0.0.1:0";
    refused(
        &["echo", "--addr", addr, "--max-connections", "0"],
        &["--max-connections 0", "at least 1"],
    );
    refused(
        &["echo", "--addr", addr, "--read-buffer", "0"],
        &["--read-buffer 0", "256 to 1073741824"],
    );
    refused(
        &["echo", "--addr", addr, "--registered-buffers", "5000"],
        &["--registered-buffers 5000", "power of two"],
    );
    refused(
        &["echo", "--addr", addr, "--read-buffer", "1000"],
        &["--max-handshake 8192", "1000 bytes"],
    );
    refused(
        &["echo", "--addr", addr, "--threads", "0"],
        &["--threads 0", "1 to 1024"],
    );
    refused(
        &["echo", "--addr", "127.0.0.1:99999"],
        &["127.0.0.1:99999", "invalid port"],
    );
    refused(
        &[
            "load",
            "--url",
            "ws://no-such-host.invalid:9/",
            "--duration",
            "1",
        ],
        &["no-such-host.invalid", "cannot resolve"],
    );
    refused(
        &["load", "--url", "ws://127.0.0.1:9/", "--connections", "0"],
        &["--connections 0", "at least 1"],
    );
}

#[test]
fn a_negative_or_non_numeric_duration_is_a_usage_error() {
    for bad in [
        "--idle-timeout=-1",
        "--close-timeout=soon",
        "--handshake-timeout=inf",
    ] {
        let out = run(&["echo", "--addr", "127.0.0.1:0", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        // clap's usage errors exit with 2.
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("seconds"), "{bad}: {err}");
    }
}

#[test]
fn a_failed_load_run_says_how_many_connections_opened() {
    if !common::uring_available() {
        return;
    }
    // Nothing listens on a port that was just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let out = run(&[
        "load",
        "--url",
        &url,
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--connections",
        "3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("0 of 3 connection(s) opened"), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("I/O error"), "{err}");
}

/// `uringws echo --tls-cert --tls-key --health-addr`: echoes over wss:// (checked with this
/// crate's client trusting the certificate), answers the plain health check on the other
/// port, and refuses certificate files that cannot work with one line naming the file.
#[test]
fn echo_serves_tls_with_a_plain_health_check() {
    if !common::uring_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("uringws-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, id.cert.pem()).unwrap();
    std::fs::write(&key, id.signing_key.serialize_pem()).unwrap();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());

    refused(
        &[
            "echo",
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert_s,
            "--tls-key",
            cert_s,
        ],
        &[cert_s, "no private key"],
    );
    refused(
        &[
            "echo",
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            key_s,
        ],
        &["cannot read /nonexistent.pem"],
    );

    let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let health_addr = health.local_addr().unwrap().to_string();
    drop(health);
    let mut server = Command::new(BIN)
        .args(["echo", "--addr", "127.0.0.1:0", "--threads", "1"])
        .args([
            "--tls-cert",
            cert_s,
            "--tls-key",
            key_s,
            "--health-addr",
            &health_addr,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("{line}"));
    line.clear();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("health checks on"), "{line}");

    let ok = common::http_exchange(
        health_addr.parse().unwrap(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ok.status, 200);
    let connector = uringws::client::Connector::new()
        .tls(uringws::tls::TlsConnector::with_ca_file(&cert).unwrap());
    let echoed = uringws::client::block_on(async move {
        let (mut rx, tx) = connector
            .connect(&format!("wss://localhost:{port}/"))
            .await?
            .split();
        tx.send_text("over TLS").await?;
        let got = rx.recv_owned().await?;
        tx.close(uringws::CloseCode::NORMAL, "")?;
        while rx.recv_owned().await?.is_some() {}
        Ok::<_, uringws::Error>(got)
    })
    .unwrap()
    .unwrap();
    assert_eq!(echoed, Some(uringws::OwnedMessage::Text("over TLS".into())));

    // SAFETY: kill(2) with a pid this test spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(server.id() as i32, libc::SIGTERM) }, 0);
    assert!(server.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
