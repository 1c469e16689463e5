//! Hello-world WebSocket client: sends "Hello, World!", prints the reply, closes with 1000.
//!
//! ```sh
//! cargo run --release --example hello_client                        # ws://127.0.0.1:9001/
//! cargo run --release --example hello_client ws://127.0.0.1:8080/chat
//! cargo run --release --example hello_client wss://localhost:9443/ --ca ca.pem
//! ```
//!
//! `wss://` trusts webpki's roots, plus the CA of `--ca PEM` (a private or test CA).

use uringws::client::{self, Connector};
use uringws::{CloseCode, Message};

fn main() {
    let mut url = "ws://127.0.0.1:9001/".to_owned();
    let mut ca = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ca" => ca = args.next(),
            _ => url = arg,
        }
    }
    let result = client::block_on(async {
        let mut connector = Connector::new();
        if let Some(ca) = &ca {
            connector = connector.ca_file(ca)?;
        }
        let ws = connector.connect(&url).await?;
        let (mut rx, tx) = ws.split();
        tx.send_text("Hello, World!").await?;
        match rx.recv().await? {
            Some(Message::Text(reply)) => println!("received: {reply}"),
            Some(other) => println!("received: {other:?}"),
            None => println!("the server closed the connection"),
        }
        tx.close(CloseCode::NORMAL, "bye")?;
        while rx.recv().await?.is_some() {} // wait for the server's close frame
        Ok::<(), uringws::Error>(())
    });
    if let Err(e) = result.and_then(|r| r) {
        eprintln!("hello_client: {url}: {e}");
        std::process::exit(1);
    }
}
