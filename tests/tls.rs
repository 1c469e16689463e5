#![cfg(feature = "tls")]
//! TLS over real sockets: the server and the client of this crate with a test CA (rcgen),
//! messages of every size both ways, the server name, and what a client that does not speak
//! TLS, or speaks it badly, gets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use uringws::client::{self, Connector};
use uringws::tls::{TlsConfig, TlsConnector};
use uringws::{Error, OwnedMessage, WebSocket};

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1: (CA PEM, chain PEM,
/// key PEM).
fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "uringws test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// A TLS echo server whose handler first sends the server name the client asked for.
fn tls_server(chain: &str, key: &str) -> Option<uringws::RunningServer> {
    let tls = TlsConfig::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    let server = local(2).tls(tls).handshake_timeout(Duration::from_secs(2));
    start_with(server, |ws: WebSocket| async move {
        let (mut rx, tx) = ws.split();
        let sni = rx.info().sni().unwrap_or_default().to_owned();
        tx.send_text(&format!("sni={sni}")).await?;
        while let Some(msg) = rx.recv_owned().await? {
            tx.send_owned(msg).await?;
        }
        Ok(())
    })
}

#[test]
fn the_client_and_server_talk_over_tls() {
    let (ca, chain, key) = test_pki();
    let Some(server) = tls_server(&chain, &key) else {
        return;
    };
    let port = server.local_addr().port();
    let connector = Connector::new().tls(TlsConnector::with_ca_pem(ca.as_bytes()).unwrap());
    client::block_on(async move {
        for host in ["localhost", "127.0.0.1"] {
            let ws = connector
                .connect(&format!("wss://{host}:{port}/echo"))
                .await?;
            let (mut rx, tx) = ws.split();
            let first = rx.recv_owned().await?.unwrap();
            let want = if host == "localhost" {
                "sni=localhost"
            } else {
                "sni="
            };
            assert_eq!(first, OwnedMessage::Text(want.into()), "{host}");
            let big: Vec<u8> = (0..(1 << 20) + 7).map(|i: u32| (i % 253) as u8).collect();
            for msg in [
                OwnedMessage::Text("hello over TLS".into()),
                OwnedMessage::Binary(big.into()),
                OwnedMessage::Text("".into()),
            ] {
                tx.send_owned(msg.clone()).await?;
                assert_eq!(rx.recv_owned().await?.unwrap(), msg);
            }
            // Many small ones in one go: they share records.
            for i in 0..200 {
                tx.send_text(&format!("m{i}")).await?;
            }
            for i in 0..200 {
                let got = rx.recv_owned().await?.unwrap();
                assert_eq!(got, OwnedMessage::Text(format!("m{i}").into()));
            }
            tx.close(uringws::CloseCode::NORMAL, "bye")?;
            assert!(rx.recv_owned().await?.is_none());
        }
        Ok::<_, Error>(())
    })
    .unwrap()
    .unwrap();
    server.shutdown().unwrap();
}

#[test]
fn an_untrusted_server_is_refused_by_name() {
    let (_, chain, key) = test_pki();
    let (other_ca, _, _) = test_pki();
    let Some(server) = tls_server(&chain, &key) else {
        return;
    };
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let err = client::block_on(async move {
        Connector::new()
            .tls(TlsConnector::with_ca_pem(other_ca.as_bytes()).unwrap())
            .connect(&url)
            .await
            .map(|_| ())
    })
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_still_serves_tls(server.local_addr());
    server.shutdown().unwrap();
}

/// A plain TCP client that does not speak TLS, or stops in the middle: the server closes it
/// at once (or at the handshake timeout) and goes on serving.
#[test]
fn clients_that_do_not_speak_tls_are_closed_and_others_served() {
    let (_, chain, key) = test_pki();
    let Some(server) = tls_server(&chain, &key) else {
        return;
    };
    let addr = server.local_addr();
    let closed_within = |send: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(send).unwrap();
        let started = Instant::now();
        let mut sink = [0u8; 4096];
        loop {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    // Plain HTTP and garbage: closed at once.
    assert!(closed_within(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") < Duration::from_secs(1));
    assert!(closed_within(&[0x16, 3, 1, 0xff, 0xff, 9, 9, 9, 9]) < Duration::from_secs(1));
    assert!(closed_within(b"\x00\x01\x02 not tls at all \xff") < Duration::from_secs(1));
    // Half a ClientHello, then silence: the handshake timeout (2 s) ends it.
    let t = closed_within(&[0x16, 3, 1, 0x02, 0x00, 1, 0, 1, 0xfc, 3, 3]);
    assert!(
        t > Duration::from_millis(1500) && t < Duration::from_secs(5),
        "{t:?}"
    );
    assert_still_serves_tls(addr);
    server.shutdown().unwrap();
}

/// The server still answers a TLS client: a ClientHello gets the server's first flight.
fn assert_still_serves_tls(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = client_hello();
    s.write_all(&hello).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x16, "a handshake record in answer");
}

/// A ClientHello from rustls itself (any valid one will do).
fn client_hello() -> Vec<u8> {
    let mut config = rustls_client_config();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn rustls_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}
