//! Hello-world WebSocket server: echoes every message. Ctrl-C or SIGTERM closes every
//! connection with 1001 (going away) and exits 0.
//!
//! ```sh
//! cargo run --release --example hello_server            # listens on 127.0.0.1:9001
//! cargo run --release --example hello_server 0.0.0.0:8080
//! ```
//! Then, in a browser's console:
//! `ws = new WebSocket("ws://127.0.0.1:9001"); ws.onmessage = e => console.log(e.data); ws.onopen = () => ws.send("Hello, World!")`

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let server = uringws::Server::bind(addr.as_str()).and_then(|s| {
        // Browsers offer permessage-deflate on every socket; shared mode accepts it without
        // keeping compression state per connection.
        s.compression(uringws::Compression::shared())
            .start(|ws: uringws::WebSocket| async move {
                let (mut rx, tx) = ws.split();
                while let Some(msg) = rx.recv().await? {
                    tx.send(msg).await?; // echo, text stays text and binary stays binary
                }
                Ok(())
            })
    });
    let result = server.and_then(|server| {
        println!("hello_server listening on ws://{}", server.local_addr());
        server.shutdown_on(uringws::shutdown_signal()) // graceful stop on SIGINT/SIGTERM
    });
    if let Err(e) = result {
        eprintln!("hello_server: {e}");
        std::process::exit(1);
    }
}
