//! Echo server on tokio-tungstenite, written for throughput as its docs recommend: replies are
//! *fed* into the write buffer (`SinkExt::feed`, i.e. `poll_ready` + `start_send`, no flush),
//! every message that is already readable is drained with `now_or_never`, and the sink is
//! flushed once when nothing more is ready, rather than flushing per message.
//! Pings are answered and the closing handshake completed by tungstenite itself (its replies
//! are written by the same flush).

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error, Message};

async fn handle_client(stream: TcpStream) -> Result<(), Error> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(msg) = ws.next().await {
        let mut msg = msg?;
        loop {
            match msg {
                Message::Text(_) | Message::Binary(_) => ws.feed(msg).await?,
                Message::Close(_) => {
                    // tungstenite queued the close reply: send it and drop the connection.
                    ws.flush().await?;
                    return Ok(());
                }
                // Pongs to our nothing, and pings (answered by tungstenite on flush).
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            match ws.next().now_or_never() {
                Some(Some(next)) => msg = next?,
                Some(None) => {
                    ws.flush().await?;
                    return Ok(());
                }
                None => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

fn main() {
    let args = uringws_bench_peers::parse_args("tungstenite-echo", false, false);
    let std_listener = uringws_bench_peers::listen(args.addr).expect("cannot listen");
    std_listener.set_nonblocking(true).unwrap();
    let rt = uringws_bench_peers::tokio_runtime(args.threads);
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).expect("cannot register the listener");
        eprintln!("tungstenite-echo listening on {}", args.addr);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tungstenite-echo: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                match handle_client(stream).await {
                    // Peers that go away (resets, EOF without a closing handshake) are normal.
                    Ok(()) | Err(Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_)) => {}
                    Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {}
                    Err(e) => eprintln!("tungstenite-echo: {e}"),
                }
            });
        }
    });
}
