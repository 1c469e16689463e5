//! The Autobahn|Testsuite client testee:
//! `autobahn_client ws://127.0.0.1:9001 AGENT [COMPRESSION] [--ca PEM]` fetches the case count
//! from a `wstest -m fuzzingserver`, runs every case as an echo client offering
//! permessage-deflate (`shared` by default; `off`, `dedicated[:BITS]`), and asks for the
//! report. A `wss://` URL with `--ca` trusts that CA (a fuzzingserver with a test
//! certificate).

use uringws::client::{self, Connector};
use uringws::{Compression, Error, Message};

async fn echo_case(connector: &Connector, url: &str) -> Result<(), Error> {
    let ws = connector.connect(url).await?;
    let (mut rx, tx) = ws.split();
    while let Some(msg) = rx.recv().await? {
        tx.send(msg).await?;
    }
    Ok(())
}

async fn run(base: &str, agent: &str, connector: Connector) -> Result<(), Error> {
    let ws = connector.connect(&format!("{base}/getCaseCount")).await?;
    let (mut rx, _tx) = ws.split();
    let count: u32 = match rx.recv().await? {
        Some(Message::Text(t)) => t.trim().parse().map_err(|_| Error::Closed)?,
        _ => return Err(Error::Closed),
    };
    while rx.recv().await?.is_some() {}
    drop(rx);
    eprintln!("autobahn_client: {count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = echo_case(&connector, &url).await {
            // Many cases end in a protocol error on purpose; the report judges them.
            eprintln!("case {case}: {e}");
        }
    }
    let ws = connector
        .clone()
        .compression(Compression::OFF)
        .connect(&format!("{base}/updateReports?agent={agent}"))
        .await?;
    let (mut rx, _tx) = ws.split();
    while rx.recv().await?.is_some() {}
    Ok(())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ca = match args.iter().position(|a| a == "--ca") {
        Some(i) if i + 1 < args.len() => Some(args.drain(i..i + 2).nth(1).unwrap_or_default()),
        Some(_) => fail("--ca needs a PEM file", 2),
        None => None,
    };
    let mut args = args.into_iter();
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = args.next().unwrap_or_else(|| "uringws".into());
    let compression: Compression = args
        .next()
        .unwrap_or_else(|| "shared".into())
        .parse()
        .unwrap_or_else(|e| fail(e, 2));
    let mut connector = Connector::new().compression(compression);
    if let Some(ca) = ca {
        connector = connector.ca_file(ca).unwrap_or_else(|e| fail(e, 2));
    }
    let base = base.trim_end_matches('/').to_owned();
    match client::block_on(run(&base, &agent, connector)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => fail(e, 1),
    }
}

fn fail(e: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("autobahn_client: {e}");
    std::process::exit(code)
}
