//! A server's life as a library user sees it: one server per port, a restart on the same
//! port, a stop by SIGTERM, a shutdown while connections are opening, and refused settings.

mod common;

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{local, start, uring_available, Client};
use uringws::proto::frame::OpCode;
use uringws::{Config, Error, Server};

/// Answers the server's close frame and returns its code.
fn close_code_answered(c: &mut Client) -> Option<u16> {
    loop {
        let f = c.read_frame().expect("EOF before a close frame");
        if f.opcode == 8 {
            c.send(true, OpCode::Close, &f.payload[..f.payload.len().min(2)]);
            c.expect_eof();
            return (f.payload.len() >= 2)
                .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
        }
    }
}

#[test]
fn a_second_server_on_a_port_in_use_fails() {
    let Some(first) = start(local(2)) else { return };
    let addr = first.local_addr();
    let second = Server::bind(addr)
        .unwrap()
        .threads(2)
        .start(|_ws| async { Ok(()) });
    match second {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
            assert!(e.to_string().contains(&addr.to_string()), "{e}");
            assert!(e.to_string().contains("already in use"), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second server started on {addr}"),
    }
    // The first one is untouched, and both of its threads serve.
    for _ in 0..4 {
        common::assert_still_serves(addr);
    }
    first.shutdown().unwrap();
}

#[test]
fn two_servers_that_both_ask_for_reuse_port_share_the_port() {
    let Some(old) = start(local(1).reuse_port(true)) else {
        return;
    };
    let addr = old.local_addr();
    let new = start(Server::bind(addr).unwrap().threads(1).reuse_port(true)).unwrap();
    // The hand-over: the old server drains and goes; the new one keeps the port.
    old.shutdown().unwrap();
    for _ in 0..4 {
        common::assert_still_serves(addr);
    }
    new.shutdown().unwrap();
}

#[test]
fn after_shutdown_the_port_refuses_and_can_be_bound_again() {
    let Some(server) = start(local(2)) else {
        return;
    };
    let addr = server.local_addr();
    let mut c = Client::connect(addr);
    c.send(true, OpCode::Text, b"hi");
    assert_eq!(c.read_frame().unwrap().payload, b"hi");
    let stopper = std::thread::spawn(move || server.shutdown());
    assert_eq!(close_code_answered(&mut c), Some(1001));
    stopper.join().unwrap().unwrap();
    // Refused (no listener), not accepted and then reset.
    let e = TcpStream::connect(addr).expect_err("the port still accepts after join()");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // An in-process restart on the same port (connections of the first one may sit in
    // TIME_WAIT).
    for _ in 0..3 {
        let again = start(Server::bind(addr).unwrap().threads(2)).unwrap();
        common::assert_still_serves(addr);
        again.shutdown().unwrap();
    }
}

/// The child side of `sigterm_closes_with_1001_and_serve_returns_ok`: a server that stops on
/// SIGINT/SIGTERM. Run only by that test, in a process of its own.
#[test]
#[ignore = "run by sigterm_closes_with_1001_and_serve_returns_ok in a child process"]
fn signal_child() {
    if std::env::var_os("UWS_SIGNAL_CHILD").is_none() {
        return;
    }
    let server = local(2)
        .shutdown_grace(Duration::from_secs(5))
        .start(|ws: uringws::WebSocket| async move {
            let (mut rx, tx) = ws.split();
            while let Some(msg) = rx.recv().await? {
                tx.send(msg).await?;
            }
            Ok(())
        })
        .unwrap();
    println!("ADDR {}", server.local_addr());
    let result = server.shutdown_on(uringws::shutdown_signal());
    println!("RETURNED {result:?}");
}

#[test]
fn sigterm_closes_with_1001_and_serve_returns_ok() {
    if !uring_available() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "signal_child", "--nocapture"])
        .env("UWS_SIGNAL_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr: SocketAddr = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
        if let Some(a) = line.trim().strip_prefix("ADDR ") {
            break a.parse().unwrap();
        }
    };
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for c in &mut clients {
        c.send(true, OpCode::Text, b"before");
        assert_eq!(c.read_frame().unwrap().payload, b"before");
    }
    // SAFETY: kill(2) with a pid this test spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    for c in &mut clients {
        assert_eq!(close_code_answered(c), Some(1001));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}; output: {rest}");
    assert!(rest.contains("RETURNED Ok(())"), "{rest}");
}

#[test]
fn connections_opening_during_a_shutdown_get_1001_once_they_read_the_101() {
    if !uring_available() {
        return;
    }
    for round in 0..4u64 {
        let server = start(local(2).shutdown_grace(Duration::from_secs(10))).unwrap();
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        // Each thread opens connections as fast as it can (request sent, answer not awaited)
        // until the listener refuses, then sorts them out: every one that got the 101 must
        // get a close frame with 1001.
        let openers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut streams = Vec::new();
                    while streams.len() < 250 {
                        let Ok(mut stream) = TcpStream::connect(addr) else {
                            break; // the listener is gone
                        };
                        stream
                            .set_read_timeout(Some(Duration::from_secs(20)))
                            .unwrap();
                        let request = common::upgrade_request("/", "");
                        if std::io::Write::write_all(&mut stream, request.as_bytes()).is_ok() {
                            streams.push(stream);
                        }
                    }
                    let mut counts = (0usize, 0usize); // (opened, closed with 1001)
                    for stream in streams {
                        let Some(mut c) = Client::from_stream_after_101(stream) else {
                            continue; // shut down before the 101: never opened
                        };
                        counts.0 += 1;
                        if close_code_answered(&mut c) == Some(1001) {
                            counts.1 += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5 + 5 * round));
        handle.shutdown();
        let mut opened = 0;
        let mut closed = 0;
        for t in openers {
            let (o, c) = t.join().unwrap();
            opened += o;
            closed += c;
        }
        server.join().unwrap();
        eprintln!("round {round}: {opened} connections opened, {closed} closed with 1001");
        assert_eq!(closed, opened, "round {round}");
    }
}

/// The default configuration changed by `f`.
fn with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

#[test]
fn invalid_settings_are_refused_by_name() {
    let cases: Vec<(Config, &str)> = vec![
        (with(|c| c.threads = 0), "threads"),
        (with(|c| c.max_connections = 0), "max_connections"),
        (with(|c| c.read_buffer_size = 0), "read_buffer_size"),
        (with(|c| c.registered_buffers = 5000), "registered_buffers"),
        (with(|c| c.max_frame_size = 0), "max_frame_size"),
        (with(|c| c.max_message_size = 0), "max_message_size"),
        (with(|c| c.read_buffer_size = 4096), "max_handshake_size"),
        (
            with(|c| c.handshake_timeout = Duration::ZERO),
            "handshake_timeout",
        ),
        (with(|c| c.close_timeout = Duration::ZERO), "close_timeout"),
        (
            with(|c| c.idle_timeout = Some(Duration::ZERO)),
            "idle_timeout",
        ),
        (
            with(|c| c.ping_interval = Some(Duration::ZERO)),
            "ping_interval",
        ),
        (with(|c| c.send_queue_limit = 0), "send_queue_limit"),
        (
            with(|c| c.subprotocols = vec!["a b".into()]),
            "subprotocols",
        ),
        (
            with(|c| c.response_headers = vec![("X-A".into(), "1\r\nInjected: 1".into())]),
            "response_headers",
        ),
    ];
    for (config, field) in cases {
        let err = Server::bind("127.0.0.1:0")
            .unwrap()
            .config(config)
            .start(|_ws| async { Ok(()) })
            .err()
            .unwrap_or_else(|| panic!("{field}: an invalid value was accepted"));
        match &err {
            Error::InvalidConfig {
                field: f, allowed, ..
            } => {
                assert_eq!(f, &field);
                assert!(!allowed.is_empty());
            }
            e => panic!("{field}: wrong error {e}"),
        }
        let text = err.to_string();
        assert!(text.contains(field) && text.contains("must"), "{text}");
    }
    // The limits themselves are fine.
    let edge = with(|c| {
        c.read_buffer_size = 256;
        c.max_handshake_size = 256;
        c.registered_buffers = 1024;
        c.max_frame_size = 1;
    });
    edge.validate().unwrap();
}

#[test]
fn a_bad_listen_address_is_named() {
    for addr in ["127.0.0.1:99999", "no-such-host.invalid:80"] {
        let e = Server::bind(addr)
            .err()
            .expect("a bad address was accepted");
        assert!(matches!(e, Error::Address { .. }), "{e}");
        assert!(e.to_string().contains(addr), "{e}");
    }
}
