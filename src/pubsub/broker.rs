//! The broker trait: what the server tells a message bus shared by several processes.
//!
//! The server keeps the bus out of its hot path: it tells the broker when this process gains
//! its first subscriber of a topic and when it loses the last one (counted over all its
//! threads), hands it each publish made here after delivering it locally, and takes what the
//! bus delivers through [`Publisher::publish_local`], which does not go back to the bus. A
//! process therefore delivers its own publishes once, and subscribes on the bus to exactly the
//! topics its connections need.

use crate::proto::message::OwnedMessage;
use crate::Publisher;

/// A message bus shared by several server processes. Set one with
/// [`crate::Server::broker`].
///
/// Every method is called from a server thread and must return at once (queue the work for a
/// task or thread of the broker's own): a broker that blocks stalls every connection of that
/// thread. A broker delivers at most once: what the bus loses, for instance while it is
/// unreachable, is lost, and a broker should count it.
pub trait Broker: Send + Sync + 'static {
    /// Starts carrying messages; called once when the server starts. What the bus delivers
    /// for a subscribed topic goes to `local` with [`Publisher::publish_local`].
    fn start(&self, local: Publisher);

    /// This process has its first subscriber of `topic`: subscribe to it on the bus.
    fn subscribe(&self, topic: &str);

    /// This process has no subscriber of `topic` left: unsubscribe from it on the bus.
    fn unsubscribe(&self, topic: &str);

    /// Sends a publish made in this process (already delivered here) to the other processes.
    fn publish(&self, topic: &str, message: &OwnedMessage);

    /// The server has stopped: release the bus. Called once, after every server thread ended.
    fn stop(&self);
}
