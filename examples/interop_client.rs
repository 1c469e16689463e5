//! Echo check against another implementation's server (scripts/interop.sh runs it against
//! Python `websockets` and Node `ws`, scripts/tls-interop.sh the same over TLS):
//! `interop_client URL COMPRESSION [--ca PEM]` connects (trusting the CA of PEM for wss://)
//! offering
//! permessage-deflate (`off`, `shared`, `dedicated[:BITS]`), prints the extensions the server
//! agreed, sends 1 MiB of JSON text, 1 MiB of random bytes and small messages, and checks
//! every echo. Exits 1 with one line on any difference.

use uringws::client::Connector;
use uringws::{client, CloseCode, Compression, Error, OwnedMessage};

fn messages() -> Vec<OwnedMessage> {
    let json = uringws::cli::load::json_like(1 << 20);
    let mut v = vec![
        OwnedMessage::Text(json.into()),
        OwnedMessage::Binary(uringws::cli::load::noise(1 << 20).into()),
        OwnedMessage::Text("".into()),
    ];
    v.extend(
        (0..50).map(|i| OwnedMessage::Text(format!("{{\"n\":{i},\"text\":\"hello\"}}").into())),
    );
    v
}

async fn check(url: &str, compression: Compression, ca: Option<String>) -> Result<String, String> {
    let mut connector = Connector::new().compression(compression);
    if let Some(ca) = ca {
        connector = connector.ca_file(ca).map_err(|e| e.to_string())?;
    }
    let ws = connector.connect(url).await.map_err(|e| e.to_string())?;
    let agreed = ws.info().extensions().unwrap_or("none").to_owned();
    let (mut rx, tx) = ws.split();
    let sent = messages();
    for m in &sent {
        tx.send_owned(m.clone()).await.map_err(|e| e.to_string())?;
    }
    for (i, m) in sent.iter().enumerate() {
        match rx.recv_owned().await {
            Ok(Some(got)) if got == *m => {}
            Ok(Some(_)) => return Err(format!("echo {i} differs")),
            Ok(None) => return Err(format!("closed before echo {i}")),
            Err(e) => return Err(format!("echo {i}: {e}")),
        }
    }
    tx.close(CloseCode::NORMAL, "done")
        .map_err(|e| e.to_string())?;
    while rx.recv().await.map_err(|e: Error| e.to_string())?.is_some() {}
    Ok(format!(
        "{} messages echoed, extensions: {agreed}",
        sent.len()
    ))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001/".into());
    let mode = args.next().unwrap_or_else(|| "shared".into());
    let ca = match (args.next().as_deref(), args.next()) {
        (Some("--ca"), Some(pem)) => Some(pem),
        _ => None,
    };
    let result = mode
        .parse()
        .map_err(|e: String| e)
        .and_then(|c| client::block_on(check(&url, c, ca)).map_err(|e| e.to_string())?);
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("interop_client: {url} ({mode}): {e}");
            std::process::exit(1);
        }
    }
}
