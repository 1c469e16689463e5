//! JSON messages (the `json` feature, on by default): parse a received text or binary message
//! with serde, and send a value as a text message. A parse error is the caller's to handle; it
//! does not close the connection.

use serde::de::{Deserialize, DeserializeOwned, Error as _};
use serde::Serialize;

use crate::error::Result;
use crate::proto::message::{Message, OwnedMessage};
use crate::{Publisher, Sender};

impl<'a> Message<'a> {
    /// Parses a text or binary message as JSON into `T`, which may borrow from the message
    /// (`&'a str` fields are not copied). Any other message is an error.
    ///
    /// ```
    /// # use uringws::Message;
    /// #[derive(serde::Deserialize)]
    /// struct Chat<'a> {
    ///     #[serde(rename = "type")]
    ///     kind: &'a str,
    ///     text: &'a str,
    /// }
    /// let m = Message::Text(r#"{"type":"message","text":"hi"}"#);
    /// let chat: Chat = m.json().unwrap();
    /// assert_eq!((chat.kind, chat.text), ("message", "hi"));
    /// ```
    pub fn json<T: Deserialize<'a>>(&self) -> std::result::Result<T, serde_json::Error> {
        match *self {
            Message::Text(s) => serde_json::from_str(s),
            Message::Binary(b) => serde_json::from_slice(b),
            _ => Err(serde_json::Error::custom("not a text or binary message")),
        }
    }
}

impl OwnedMessage {
    /// Parses a text or binary message as JSON into `T`. Any other message is an error.
    pub fn json<T: DeserializeOwned>(&self) -> std::result::Result<T, serde_json::Error> {
        match self {
            OwnedMessage::Text(b) | OwnedMessage::Binary(b) => serde_json::from_slice(b),
            _ => Err(serde_json::Error::custom("not a text or binary message")),
        }
    }
}

impl Sender {
    /// Serializes `value` as JSON and sends it as a text message (as [`Sender::send_text`]).
    /// A value serde cannot serialize (a map with non-string keys, ...) is
    /// [`crate::Error::Json`], and nothing is sent.
    pub async fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)?;
        self.send_text(&text).await
    }

    /// Serializes `value` as JSON once and publishes it as a text message to every other
    /// subscriber of `topic` (as [`Sender::publish`]).
    pub fn publish_json<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        self.publish(topic, json_text(value)?)
    }
}

impl Publisher {
    /// Serializes `value` as JSON once and publishes it as a text message to every subscriber
    /// of `topic` (as [`Publisher::publish`]).
    pub fn publish_json<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        self.publish(topic, json_text(value)?)
    }
}

fn json_text<T: Serialize + ?Sized>(value: &T) -> Result<OwnedMessage> {
    Ok(OwnedMessage::Text(serde_json::to_vec(value)?.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize)]
    struct Join {
        #[serde(rename = "type")]
        kind: String,
        room: String,
    }

    #[test]
    fn messages_parse_and_errors_stay_errors() {
        let text = r#"{"type":"join","room":"r1"}"#;
        let want = Join {
            kind: "join".into(),
            room: "r1".into(),
        };
        assert_eq!(Message::Text(text).json::<Join>().unwrap(), want);
        assert_eq!(
            Message::Binary(text.as_bytes()).json::<Join>().unwrap(),
            want
        );
        assert_eq!(
            OwnedMessage::Text(text.into()).json::<Join>().unwrap(),
            want
        );
        assert!(Message::Text("{\"type\":").json::<Join>().is_err());
        assert!(Message::Text(r#"{"type":"join"}"#).json::<Join>().is_err());
        assert!(Message::Ping(b"{}").json::<serde_json::Value>().is_err());
        assert!(OwnedMessage::Close(None)
            .json::<serde_json::Value>()
            .is_err());
    }
}
