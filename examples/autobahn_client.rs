//! The Autobahn|Testsuite client testee: `autobahn_client ws://127.0.0.1:9001 AGENT [COMPRESSION]`
//! fetches the case count from a `wstest -m fuzzingserver`, runs every case as an echo client
//! offering permessage-deflate (`shared` by default; `off`, `dedicated[:BITS]`), and asks for
//! the report.

use uringws::client::{self, Connector};
use uringws::{Compression, Error, Message};

async fn echo_case(url: &str, compression: Compression) -> Result<(), Error> {
    let ws = Connector::new()
        .compression(compression)
        .connect(url)
        .await?;
    let (mut rx, tx) = ws.split();
    while let Some(msg) = rx.recv().await? {
        tx.send(msg).await?;
    }
    Ok(())
}

async fn run(base: &str, agent: &str, compression: Compression) -> Result<(), Error> {
    let ws = client::connect(&format!("{base}/getCaseCount")).await?;
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
        if let Err(e) = echo_case(&url, compression).await {
            // Many cases end in a protocol error on purpose; the report judges them.
            eprintln!("case {case}: {e}");
        }
    }
    let ws = client::connect(&format!("{base}/updateReports?agent={agent}")).await?;
    let (mut rx, _tx) = ws.split();
    while rx.recv().await?.is_some() {}
    Ok(())
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = std::env::args().nth(2).unwrap_or_else(|| "uringws".into());
    let compression = match std::env::args()
        .nth(3)
        .unwrap_or_else(|| "shared".into())
        .parse()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("autobahn_client: {e}");
            std::process::exit(2);
        }
    };
    let base = base.trim_end_matches('/').to_owned();
    match client::block_on(run(&base, &agent, compression)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => {
            eprintln!("autobahn_client: {e}");
            std::process::exit(1);
        }
    }
}
