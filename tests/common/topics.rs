//! Topic helpers: a server whose connections take commands, and a client that sends them.

use std::time::Duration;

use super::start_with;
use uringws::{Error, OwnedMessage, Server};

/// A server whose connections take commands as text: `sub T`, `unsub T`, `pub T TEXT`
/// (to the others) and `all T TEXT` (through the publisher: to everyone, itself included).
/// Each command is answered with `ok` (the publish itself is not echoed).
pub fn command_server(server: Server) -> Option<uringws::RunningServer> {
    start_with(server, |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        while let Some(msg) = rx.recv_owned().await? {
            let OwnedMessage::Text(t) = msg else { continue };
            let line = std::str::from_utf8(&t).unwrap().to_owned();
            let mut parts = line.splitn(3, ' ');
            let (cmd, topic, rest) = (parts.next(), parts.next().unwrap_or(""), parts.next());
            match (cmd, rest) {
                (Some("sub"), _) => {
                    tx.subscribe(topic)?;
                }
                (Some("unsub"), _) => {
                    tx.unsubscribe(topic);
                }
                (Some("pub"), Some(text)) => {
                    tx.publish(topic, OwnedMessage::Text(text.to_owned().into()))?
                }
                (Some("all"), Some(text)) => tx
                    .publisher()
                    .unwrap()
                    .publish(topic, OwnedMessage::Text(text.to_owned().into()))?,
                _ => {}
            }
            tx.send_text(&format!("ok {thread}")).await?;
        }
        Ok(())
    })
}

pub type Conn = (uringws::Receiver, uringws::Sender);

pub async fn command(c: &mut Conn, line: &str) -> Result<String, Error> {
    c.1.send_text(line).await?;
    match c.0.recv_owned().await?.expect("an answer") {
        OwnedMessage::Text(t) if t.starts_with(b"ok") => {
            Ok(String::from_utf8(t[3..].to_vec()).unwrap())
        }
        other => panic!("unexpected {other:?} before the ok of {line:?}"),
    }
}

pub async fn next_text(c: &mut Conn) -> String {
    match tokio::time::timeout(Duration::from_secs(10), c.0.recv_owned()).await {
        Ok(Ok(Some(OwnedMessage::Text(t)))) => String::from_utf8(t.to_vec()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

pub async fn nothing_within(c: &mut Conn, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), c.0.recv_owned())
        .await
        .is_err()
}
