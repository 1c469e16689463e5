//! The open WebSocket handed to handlers, before it is split.

use std::rc::Rc;

use crate::conn::{
    info::ConnectionInfo,
    receiver::{Receiver, RxState},
    sender::{Sender, Sending},
    shared::Conn,
};
use crate::error::Result;
use crate::proto::close::CloseCode;
use crate::proto::message::{Message, OwnedMessage};

/// An open WebSocket connection, as handed to the server's handler.
///
/// Use [`WebSocket::split`] to receive and send at the same time: a received message
/// borrows the receiver's buffer, and the sender can reply while holding it.
///
/// The handler runs as a task on the thread that accepted the connection, inside a tokio
/// runtime: tokio's timers, channels and `tokio::task::spawn_local` work there (the spawned
/// future need not be `Send`, so it can hold a [`Sender`] clone). A task that sends on its
/// own while the handler receives:
///
/// ```
/// use std::time::Duration;
/// use uringws::{client, Message, WebSocket};
///
/// let server = uringws::Server::bind("127.0.0.1:0")?
///     .threads(1)
///     .start(|ws: WebSocket| async move {
///         let (mut rx, tx) = ws.split();
///         let ticker = tx.clone();
///         let ticks = tokio::task::spawn_local(async move {
///             for i in 0..3 {
///                 ticker.send_text(&format!("tick {i}")).await?;
///                 tokio::time::sleep(Duration::from_millis(10)).await;
///             }
///             Ok::<(), uringws::Error>(())
///         });
///         while rx.recv().await?.is_some() {} // until the client closes
///         ticks.abort(); // a spawned task outlives the handler unless stopped
///         Ok(())
///     })?;
/// let url = format!("ws://{}/", server.local_addr());
/// client::block_on(async {
///     let mut ws = client::connect(&url).await?;
///     for i in 0..3 {
///         match ws.recv().await? {
///             Some(Message::Text(t)) => assert_eq!(t, format!("tick {i}")),
///             other => panic!("unexpected {other:?}"),
///         }
///     }
///     ws.close(uringws::CloseCode::NORMAL, "")?;
///     while ws.recv().await?.is_some() {}
///     Ok::<(), uringws::Error>(())
/// })??;
/// server.shutdown()?;
/// # Ok::<(), uringws::Error>(())
/// ```
pub struct WebSocket {
    pub(super) rx: Receiver,
    pub(super) tx: Sender,
}

impl WebSocket {
    pub(crate) fn new(conn: Rc<Conn>, state: RxState) -> Self {
        WebSocket {
            rx: Receiver {
                conn: conn.clone(),
                state: Box::new(state),
            },
            tx: Sender { conn },
        }
    }

    /// Splits into the receiving and the sending half.
    pub fn split(self) -> (Receiver, Sender) {
        (self.rx, self.tx)
    }

    /// Waits for the next message; see [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Message<'_>>> {
        self.rx.recv().await
    }

    /// Sends a message; see [`Sender::send`]. To reply with a received message, split first.
    pub fn send<'a>(&'a self, message: Message<'a>) -> Sending<'a> {
        self.tx.send(message)
    }

    /// Waits for the next message, owned; see [`Receiver::recv_owned`].
    pub async fn recv_owned(&mut self) -> Result<Option<OwnedMessage>> {
        self.rx.recv_owned().await
    }

    /// Sends an owned message; see [`Sender::send_owned`].
    pub fn send_owned(&self, message: OwnedMessage) -> Sending<'_> {
        self.tx.send_owned(message)
    }

    /// Starts the closing handshake; see [`Sender::close`].
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.tx.close(code, reason)
    }

    /// Facts about the connection (path, query, origin, subprotocol, headers).
    pub fn info(&self) -> &ConnectionInfo {
        self.tx.conn.info()
    }

    /// Attaches the application's data to this connection; see [`Sender::set_data`].
    pub fn set_data<T: 'static>(&self, data: T) {
        self.tx.set_data(data)
    }

    /// The data attached to this connection, if it is a `T`; see [`Sender::data`].
    pub fn data<T: 'static>(&self) -> Option<Rc<T>> {
        self.tx.data()
    }
}
