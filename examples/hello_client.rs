//! Hello-world WebSocket client: sends "Hello, World!", prints the reply, closes with 1000.
//!
//! ```sh
//! cargo run --release --example hello_client                        # ws://127.0.0.1:9001/
//! cargo run --release --example hello_client ws://127.0.0.1:8080/chat
//! ```

use uringws::{client, CloseCode, Message};

fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9001/".into());
    let result = client::block_on(async {
        let ws = client::connect(&url).await?;
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
