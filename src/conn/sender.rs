//! The sending half: queueing data and control frames, the queue measure and flush, and the
//! per-connection data.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::sync::futures::Notified;

use crate::conn::{info::ConnectionInfo, shared::Conn};
use crate::error::{Error, Result};
use crate::proto::close::CloseCode;
use crate::proto::frame::{OpCode, MAX_CONTROL_PAYLOAD};
use crate::proto::message::{Message, OwnedMessage};

/// The sending half of a WebSocket. Cheap to clone; every clone feeds the same queue.
///
/// A `Sender` is not `Send`: it lives on the thread that runs the connection (each server
/// thread runs its own runtime, and the connection's state is not locked). Clones can go to
/// tasks on the same thread (`tokio::task::spawn_local`; see [`WebSocket`](crate::WebSocket)). To send from
/// another thread, give the connection a channel and let the handler forward what arrives;
/// `recv` is cancellation safe, so both can wait in one `select!`:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tokio::sync::mpsc;
/// use uringws::{client, Message, WebSocket};
///
/// // Each connection registers the sending end of its own channel here.
/// let inboxes: Arc<Mutex<Vec<mpsc::UnboundedSender<String>>>> = Arc::default();
/// let registry = inboxes.clone();
/// let server = uringws::Server::bind("127.0.0.1:0")?
///     .threads(1)
///     .start(move |ws: WebSocket| {
///         let registry = registry.clone();
///         async move {
///             let (to_me, mut inbox) = mpsc::unbounded_channel::<String>();
///             registry.lock().unwrap().push(to_me);
///             let (mut rx, tx) = ws.split();
///             loop {
///                 tokio::select! {
///                     // Cancellation safe: when the inbox wins, no received bytes are lost.
///                     msg = rx.recv() => match msg? {
///                         Some(msg) => tx.send(msg).await?, // echo
///                         None => return Ok(()),
///                     },
///                     Some(text) = inbox.recv() => tx.send_text(&text).await?,
///                 }
///             }
///         }
///     })?;
/// let url = format!("ws://{}/", server.local_addr());
/// client::block_on(async {
///     let mut ws = client::connect(&url).await?;
///     ws.send(Message::Text("hello")).await?;
///     assert!(matches!(ws.recv().await?, Some(Message::Text("hello")))); // registered now
///     // Another thread sends through the channel.
///     let inboxes = inboxes.clone();
///     std::thread::spawn(move || {
///         for inbox in inboxes.lock().unwrap().iter() {
///             let _ = inbox.send("from another thread".to_owned());
///         }
///     })
///     .join()
///     .unwrap();
///     assert!(matches!(ws.recv().await?, Some(Message::Text("from another thread"))));
///     ws.close(uringws::CloseCode::NORMAL, "")?;
///     while ws.recv().await?.is_some() {}
///     Ok::<(), uringws::Error>(())
/// })??;
/// server.shutdown()?;
/// # Ok::<(), uringws::Error>(())
/// ```
#[derive(Clone)]
pub struct Sender {
    pub(super) conn: Rc<Conn>,
}

impl Sender {
    /// Sends a message: text and binary are queued behind earlier messages (waiting while the
    /// queue is above its limit); ping and pong go ahead of queued data; a close starts the
    /// closing handshake (a missing status sends an empty close frame).
    ///
    /// The payload is copied once, into the send queue. Fails with [`Error::Closed`] once a
    /// close frame was queued or the connection failed. The future ([`Sending`]) does nothing
    /// until awaited.
    pub fn send<'a>(&'a self, message: Message<'a>) -> Sending<'a> {
        Sending::new(self, Outgoing::Borrowed(message))
    }

    /// Sends an owned message, as [`Sender::send`] does. A text or binary payload of 16 KiB or
    /// more is not copied: the queue keeps a reference and the kernel reads it from where it
    /// is (so one `Bytes` can go to many connections without a copy for each). A text
    /// payload must be valid UTF-8 (it is when it came from [`Receiver::recv_owned`](crate::Receiver::recv_owned)); one that
    /// is not is refused with [`Error::InvalidText`].
    pub fn send_owned(&self, message: OwnedMessage) -> Sending<'_> {
        Sending::new(self, Outgoing::Owned(message))
    }

    /// Sends a text message.
    pub fn send_text<'a>(&'a self, text: &'a str) -> Sending<'a> {
        self.send(Message::Text(text))
    }

    /// Sends a binary message.
    pub fn send_binary<'a>(&'a self, data: &'a [u8]) -> Sending<'a> {
        self.send(Message::Binary(data))
    }

    /// Queues `message` now (the queue had room, or it is a control frame).
    fn send_now(&self, message: Outgoing<'_>) -> Result<()> {
        match message {
            Outgoing::Borrowed(message) => match message {
                Message::Text(s) => self.conn.encode_data(OpCode::Text, s.as_bytes()),
                Message::Binary(b) => self.conn.encode_data(OpCode::Binary, b),
                Message::Ping(p) => return self.control(OpCode::Ping, p),
                Message::Pong(p) => return self.control(OpCode::Pong, p),
                Message::Close(None) => return self.conn.queue_close(None, ""),
                Message::Close(Some(f)) => return self.close(f.code, f.reason),
            },
            Outgoing::Owned(message) => match message {
                OwnedMessage::Text(b) => {
                    if simdutf8::basic::from_utf8(&b).is_err() {
                        return Err(Error::InvalidText);
                    }
                    self.conn.encode_shared(OpCode::Text, &b)
                }
                OwnedMessage::Binary(b) => self.conn.encode_shared(OpCode::Binary, &b),
                OwnedMessage::Ping(p) => return self.control(OpCode::Ping, &p),
                OwnedMessage::Pong(p) => return self.control(OpCode::Pong, &p),
                OwnedMessage::Close(None) => return self.conn.queue_close(None, ""),
                OwnedMessage::Close(Some((code, reason))) => return self.close(code, &reason),
            },
        }
        Ok(())
    }

    /// Sends a ping (at most 125 bytes), ahead of queued data.
    pub fn ping(&self, payload: &[u8]) -> Result<()> {
        self.control(OpCode::Ping, payload)
    }

    /// Starts the closing handshake with `code` and `reason` (at most 123 bytes). Codes that
    /// may not be sent (1005, 1006, 1015, reserved ranges) are refused. Receiving continues
    /// until the peer answers; data that arrives meanwhile is discarded.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        if self.conn.close_queued() {
            return Err(Error::Closed);
        }
        self.conn.queue_close(Some(code), reason)
    }

    /// Whether the connection is closing or closed (nothing more can be sent).
    pub fn is_closed(&self) -> bool {
        self.conn.close_queued() || self.conn.write_failed()
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        self.conn.info()
    }

    /// Bytes queued on this connection and not yet written to the socket: encoded frames
    /// (headers included) of every clone of this sender, and the write in flight. `send`
    /// waits while this is above the send-queue limit; a sender that must never wait (a
    /// broadcast to many connections) can check it first and skip or drop a slow peer.
    pub fn buffered(&self) -> usize {
        self.conn.buffered()
    }

    /// Waits until everything queued so far has been written to the socket (handed to the
    /// kernel: it says nothing about what the peer has read). Fails with
    /// [`Error::ConnectionLost`] when the write side failed first.
    pub async fn flush(&self) -> Result<()> {
        self.conn.flush().await
    }

    /// Attaches the application's data to this connection (a user id, a room name, ...),
    /// replacing any earlier data. Every clone of the sender and the receiver see it.
    pub fn set_data<T: 'static>(&self, data: T) {
        *self.conn.data.borrow_mut() = Some(Rc::new(data));
    }

    /// The data attached with [`Sender::set_data`], if it is a `T`. It is shared (`Rc`): keep
    /// mutable state in a `Cell` or `RefCell` inside it.
    pub fn data<T: 'static>(&self) -> Option<Rc<T>> {
        self.conn.data()
    }

    /// Subscribes this connection to `topic` (see [`crate::Publisher`]); `Ok(false)` when it
    /// already was. Closing the connection unsubscribes it. An error on a client's
    /// connection: topics are a server's.
    pub fn subscribe(&self, topic: &str) -> Result<bool> {
        crate::pubsub::topics::subscribe(&self.conn, topic)
    }

    /// Unsubscribes this connection from `topic`; `false` when it was not subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        crate::pubsub::topics::unsubscribe(&self.conn, topic)
    }

    /// Publishes `message` to every subscriber of `topic` on every thread of the server,
    /// except this connection (use [`Sender::publisher`] to include it). Returns at once; see
    /// [`crate::Publisher::publish`].
    pub fn publish(&self, topic: &str, message: OwnedMessage) -> Result<()> {
        crate::pubsub::topics::publish_from(&self.conn, topic, message)
    }

    /// The server's [`crate::Publisher`] (`None` on a client's connection).
    pub fn publisher(&self) -> Option<crate::Publisher> {
        crate::pubsub::topics::publisher()
    }

    pub(super) fn control(&self, opcode: OpCode, payload: &[u8]) -> Result<()> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(Error::ControlTooLong);
        }
        self.conn.queue_control(opcode, payload)
    }
}

/// A message on its way into the queue.
enum Outgoing<'a> {
    Borrowed(Message<'a>),
    Owned(OwnedMessage),
}

impl Outgoing<'_> {
    /// Text or binary: waits for room in the queue (control frames never do).
    fn is_data(&self) -> bool {
        matches!(
            self,
            Outgoing::Borrowed(Message::Text(_) | Message::Binary(_))
                | Outgoing::Owned(OwnedMessage::Text(_) | OwnedMessage::Binary(_))
        )
    }
}

/// The future of [`Sender::send`] and its kin: queues the message once the send queue has
/// room (at once, usually).
///
/// A named type rather than an `async fn`'s, because every connection's handler holds one
/// while it waits: this one is the message and two pointers, where the compiler's kept the
/// message twice and the queue's wait beside it. The wait, needed only when the queue is
/// full, is allocated then.
#[must_use = "futures do nothing unless awaited"]
pub struct Sending<'a> {
    sender: &'a Sender,
    message: Option<Outgoing<'a>>,
    wait: Option<Pin<Box<Notified<'a>>>>,
}

impl<'a> Sending<'a> {
    fn new(sender: &'a Sender, message: Outgoing<'a>) -> Self {
        Sending {
            sender,
            message: Some(message),
            wait: None,
        }
    }
}

impl Future for Sending<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if this.message.as_ref().is_some_and(Outgoing::is_data) {
            // Waits while the queue is above its limit: the writer wakes it as it drains.
            loop {
                if let Some(wait) = &mut this.wait {
                    std::task::ready!(wait.as_mut().poll(cx));
                    this.wait = None;
                }
                if this.sender.conn.has_room()? {
                    break;
                }
                this.wait = Some(Box::pin(this.sender.conn.writer_progress()));
            }
        }
        match this.message.take() {
            Some(message) => Poll::Ready(this.sender.send_now(message)),
            None => Poll::Ready(Err(Error::Closed)),
        }
    }
}
