//! Topics: connections subscribe to named topics, and a publish reaches every subscriber on
//! every thread of the server.
//!
//! Each thread keeps its own subscribers. A publish, from a handler or from any thread through
//! a [`Publisher`], goes into one queue per thread (no lock per subscriber); the thread drains
//! its queue in its own loop and queues the message on each local subscriber: encoded once (a
//! shared payload, compressed once per thread where permessage-deflate allows), and the
//! messages a subscriber gets in one loop turn leave in one write, as replies do. A subscriber
//! whose send queue is over its limit gets the server's [`SlowSubscriber`] policy instead;
//! publishing never waits for it. Closing a connection unsubscribes it.
//!
//! With a [`Broker`], the hub also counts, per topic, the threads that have subscribers: the
//! broker hears of a topic's first subscriber in the process and of its last one, and of every
//! publish made here; what it brings from other processes is delivered with
//! [`Publisher::publish_local`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Broker;
use crate::conn::{Conn, Offered, Phase};
use crate::error::{Error, Result};
use crate::proto::close::CloseCode;
use crate::proto::frame::OpCode;
use crate::proto::message::OwnedMessage;

/// What a subscriber whose send queue is over [`crate::Config::send_queue_limit`] gets when a
/// publish reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowSubscriber {
    /// The message is dropped for that subscriber and counted
    /// ([`Publisher::dropped`]); the connection stays open. The default.
    Drop,
    /// The connection is closed with this code (1008 policy violation or 1013 try again
    /// later are the usual ones); the message is dropped.
    Close(CloseCode),
}

/// One publish, as it travels to each thread.
pub(crate) struct Delivery {
    topic: Arc<str>,
    opcode: OpCode,
    payload: Bytes,
    /// The publishing connection (thread index, connection key), which does not receive it.
    exclude: Option<(usize, usize)>,
}

/// What every thread of a server shares: the threads' queues and the drop counter.
pub(crate) struct Hub {
    queues: Vec<mpsc::UnboundedSender<Delivery>>,
    dropped: AtomicU64,
    policy: SlowSubscriber,
    broker: Option<Arc<dyn Broker>>,
    /// With a broker: per topic, the threads that have subscribers of it. Locked only when a
    /// thread gains its first subscriber of a topic or loses its last.
    interest: Mutex<HashMap<Arc<str>, usize>>,
}

impl Hub {
    /// A hub for `threads` threads; returns the receiving end of each thread's queue.
    pub(crate) fn new(
        threads: usize,
        policy: SlowSubscriber,
        broker: Option<Arc<dyn Broker>>,
    ) -> (Arc<Hub>, Vec<mpsc::UnboundedReceiver<Delivery>>) {
        let (queues, receivers) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let hub = Hub {
            queues,
            dropped: AtomicU64::new(0),
            policy,
            broker,
            interest: Mutex::default(),
        };
        (Arc::new(hub), receivers)
    }

    /// The broker, if the server has one.
    pub(crate) fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.broker.as_ref()
    }

    /// A thread gained its first subscriber of `topic` (`+1`) or lost its last (`-1`).
    fn interest(&self, topic: &Arc<str>, gained: bool) {
        let Some(broker) = &self.broker else { return };
        let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        // The broker is told under the lock, so that it hears the changes in their order.
        if gained {
            let n = interest.entry(topic.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                broker.subscribe(topic);
            }
        } else if let Some(n) = interest.get_mut(topic) {
            *n -= 1;
            if *n == 0 {
                interest.remove(topic);
                broker.unsubscribe(topic);
            }
        }
    }

    fn publish(
        &self,
        topic: &str,
        message: OwnedMessage,
        exclude: Option<(usize, usize)>,
    ) -> Result<()> {
        let to_broker = self.broker.as_ref().map(|b| (b, message.clone()));
        self.publish_local(topic, message, exclude)?;
        if let Some((broker, message)) = to_broker {
            broker.publish(topic, &message);
        }
        Ok(())
    }

    fn publish_local(
        &self,
        topic: &str,
        message: OwnedMessage,
        exclude: Option<(usize, usize)>,
    ) -> Result<()> {
        let (opcode, payload) = match message {
            OwnedMessage::Text(b) => {
                if simdutf8::basic::from_utf8(&b).is_err() {
                    return Err(Error::InvalidText);
                }
                (OpCode::Text, b)
            }
            OwnedMessage::Binary(b) => (OpCode::Binary, b),
            _ => {
                return Err(Error::Config(
                    "only text and binary messages can be published".into(),
                ))
            }
        };
        let topic: Arc<str> = topic.into();
        for queue in &self.queues {
            // A thread that has stopped has no subscribers left.
            let _ = queue.send(Delivery {
                topic: topic.clone(),
                opcode,
                payload: payload.clone(),
                exclude,
            });
        }
        Ok(())
    }
}

/// Publishes to a server's topics from anywhere: any thread, any task, any handler. `Send`,
/// `Sync` and cheap to clone. Get one from [`crate::RunningServer::publisher`] or, in a
/// handler, [`crate::Sender::publisher`].
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("threads", &self.hub.queues.len())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(hub: Arc<Hub>) -> Publisher {
        Publisher { hub }
    }

    /// Sends `message` (text or binary) to every subscriber of `topic`, on every thread. It
    /// returns at once: each thread delivers it in its own loop, in the order this publisher
    /// published. Errors: a ping, pong or close ([`Error::Config`]) or text that is not UTF-8
    /// ([`Error::InvalidText`]).
    pub fn publish(&self, topic: &str, message: OwnedMessage) -> Result<()> {
        self.hub.publish(topic, message, None)
    }

    /// Delivers `message` to the subscribers of `topic` in this process only, without
    /// passing it to the server's [`Broker`]: what a broker calls with a message from another
    /// process. Without a broker it is [`Publisher::publish`].
    pub fn publish_local(&self, topic: &str, message: OwnedMessage) -> Result<()> {
        self.hub.publish_local(topic, message, None)
    }

    /// Messages dropped so far for subscribers whose send queue was full
    /// ([`SlowSubscriber::Drop`]), or not sent to a subscriber closed for it.
    pub fn dropped(&self) -> u64 {
        self.hub.dropped.load(Ordering::Relaxed)
    }
}

/// A topic's subscribers on one thread, by connection key.
type Subscribers = HashMap<usize, Weak<Conn>>;

/// One thread's subscribers.
pub(crate) struct ThreadTopics {
    index: usize,
    hub: Arc<Hub>,
    /// Topic -> subscribers, by connection key (the address of its state).
    subs: RefCell<HashMap<Arc<str>, Subscribers>>,
    /// Connection key -> its topics, to unsubscribe it when it closes.
    by_conn: RefCell<HashMap<usize, Vec<Arc<str>>>>,
}

thread_local! {
    /// The topics of the server thread this is, if it is one.
    static CURRENT: RefCell<Option<Rc<ThreadTopics>>> = const { RefCell::new(None) };
}

/// The key of a connection in the maps: the address of its state, unique while it lives (and
/// it is unsubscribed before it goes).
fn key(conn: &Rc<Conn>) -> usize {
    Rc::as_ptr(conn) as usize
}

/// The topics of this thread; an error outside a server thread (a client's connection).
fn current() -> Result<Rc<ThreadTopics>> {
    CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| Error::Config("topics are only available on a server's connections".into()))
}

impl ThreadTopics {
    /// Makes the topics of thread `index` this thread's, and returns them.
    pub(crate) fn install(index: usize, hub: Arc<Hub>) -> Rc<ThreadTopics> {
        let topics = Rc::new(ThreadTopics {
            index,
            hub,
            subs: RefCell::default(),
            by_conn: RefCell::default(),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(topics.clone()));
        topics
    }

    /// Delivers what is published to this thread, until the server stops.
    pub(crate) async fn run(self: Rc<Self>, mut queue: mpsc::UnboundedReceiver<Delivery>) {
        let mut corked = Vec::new();
        while let Some(d) = queue.recv().await {
            self.deliver(d, &mut corked);
            // Everything already queued goes out in this loop turn, and what a subscriber got
            // in it leaves in one write, started here rather than by waking its writer.
            while let Ok(d) = queue.try_recv() {
                self.deliver(d, &mut corked);
            }
            for conn in corked.drain(..) {
                conn.uncork();
            }
        }
    }

    fn deliver(&self, d: Delivery, corked: &mut Vec<Rc<Conn>>) {
        // Iterated in place, without a copy of the subscriber list per publish: queueing a
        // frame or a close never touches the topics.
        let subs = self.subs.borrow();
        let Some(subs) = subs.get(&d.topic) else {
            return;
        };
        for (&k, weak) in subs {
            if d.exclude == Some((self.index, k)) {
                continue;
            }
            let Some(conn) = weak.upgrade() else { continue };
            if conn.cork() {
                corked.push(conn.clone());
            }
            match conn.offer_shared(d.opcode, &d.payload) {
                Offered::Queued | Offered::Closed => continue,
                Offered::Full => {}
            }
            self.hub.dropped.fetch_add(1, Ordering::Relaxed);
            if let SlowSubscriber::Close(code) = self.hub.policy {
                let _ = conn.queue_close(Some(code), "too slow for its subscriptions");
            }
        }
    }

    /// Removes every subscription of `conn` (when it closes).
    pub(crate) fn remove_conn(&self, conn: &Rc<Conn>) {
        let k = key(conn);
        let Some(topics) = self.by_conn.borrow_mut().remove(&k) else {
            return;
        };
        let mut subs = self.subs.borrow_mut();
        for t in topics {
            if let Some(m) = subs.get_mut(&t) {
                m.remove(&k);
                if m.is_empty() {
                    subs.remove(&t);
                    self.hub.interest(&t, false);
                }
            }
        }
    }
}

/// Subscribes `conn` to `topic` on this thread; `false` when it already was.
pub(crate) fn subscribe(conn: &Rc<Conn>, topic: &str) -> Result<bool> {
    let t = current()?;
    if conn.phase.get() == Phase::Done {
        // Its subscriptions were removed when it ended; a new one would stay behind.
        return Err(Error::Closed);
    }
    let k = key(conn);
    let mut subs = t.subs.borrow_mut();
    let topic: Arc<str> = match subs.get_key_value(topic) {
        Some((name, _)) => name.clone(),
        None => {
            let name: Arc<str> = topic.into();
            t.hub.interest(&name, true);
            name
        }
    };
    let added = subs
        .entry(topic.clone())
        .or_default()
        .insert(k, Rc::downgrade(conn))
        .is_none();
    if added {
        t.by_conn.borrow_mut().entry(k).or_default().push(topic);
    }
    Ok(added)
}

/// Unsubscribes `conn` from `topic`; `false` when it was not subscribed.
pub(crate) fn unsubscribe(conn: &Rc<Conn>, topic: &str) -> bool {
    let Ok(t) = current() else { return false };
    let k = key(conn);
    let mut subs = t.subs.borrow_mut();
    let Some(m) = subs.get_mut(topic) else {
        return false;
    };
    if m.remove(&k).is_none() {
        return false;
    }
    if m.is_empty() {
        if let Some((name, _)) = subs.remove_entry(topic) {
            t.hub.interest(&name, false);
        }
    }
    if let Some(list) = t.by_conn.borrow_mut().get_mut(&k) {
        list.retain(|x| &**x != topic);
    }
    true
}

/// Publishes from `conn` to every other subscriber of `topic`.
pub(crate) fn publish_from(conn: &Rc<Conn>, topic: &str, message: OwnedMessage) -> Result<()> {
    let t = current()?;
    t.hub.publish(topic, message, Some((t.index, key(conn))))
}

/// This thread's publisher, on a server thread.
pub(crate) fn publisher() -> Option<Publisher> {
    current().ok().map(|t| Publisher::new(t.hub.clone()))
}
