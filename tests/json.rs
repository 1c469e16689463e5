//! JSON messages over a real socket: `Message::json` in a handler, `Sender::send_json` back;
//! a malformed message is the handler's to answer, and the connection stays open.

mod common;

use common::*;
use serde::{Deserialize, Serialize};
use uringws::client::{self, Connector};
use uringws::{Error, OwnedMessage};

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum In<'a> {
    Join {
        room: &'a str,
        name: &'a str,
    },
    // Cow: borrowed when the JSON string has no escapes, owned when it has (`\u00e9`).
    Message {
        #[serde(borrow)]
        text: std::borrow::Cow<'a, str>,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Out {
    Join { room: String, name: String },
    Message { text: String },
    Error { reason: String },
}

#[test]
fn json_in_and_out_and_errors_keep_the_connection() {
    let Some(server) = start_with(local(1), |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        while let Some(msg) = rx.recv().await? {
            let reply = match msg.json::<In>() {
                Ok(In::Join { room, name }) => Out::Join {
                    room: room.into(),
                    name: name.into(),
                },
                Ok(In::Message { text }) => Out::Message {
                    text: text.into_owned(),
                },
                Err(e) => Out::Error {
                    reason: e.to_string(),
                },
            };
            tx.send_json(&reply).await?;
        }
        Ok(())
    }) else {
        return;
    };
    let url = format!("ws://{}/chat", server.local_addr());
    let replies = client::block_on(async move {
        let ws = Connector::new().connect(&url).await?;
        let (mut rx, tx) = ws.split();
        tx.send_text(r#"{"type":"join","room":"r1","name":"ann"}"#)
            .await?;
        tx.send_text("{not json").await?;
        tx.send_binary(br#"{"type":"message","text":"h\u00e9"}"#)
            .await?;
        let mut out = Vec::new();
        for _ in 0..3 {
            let m = rx.recv_owned().await?.expect("a reply");
            assert!(matches!(m, OwnedMessage::Text(_)), "{m:?}");
            out.push(m.json::<Out>().expect("valid JSON from send_json"));
        }
        Ok::<_, Error>(out)
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        replies[0],
        Out::Join {
            room: "r1".into(),
            name: "ann".into()
        }
    );
    assert!(
        matches!(&replies[1], Out::Error { reason } if reason.contains("key must be a string")),
        "{:?}",
        replies[1]
    );
    assert_eq!(replies[2], Out::Message { text: "hé".into() });
    server.shutdown().unwrap();
}
