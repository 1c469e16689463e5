//! Publish/subscribe: topics within one server ([`Publisher`], `Sender::subscribe`) and, with
//! a [`Broker`], across the processes that share a message bus (Redis pub/sub today,
//! [`RedisBroker`]), so that a publish on one process reaches the subscribers of every process.

mod broker;
#[cfg(feature = "redis")]
mod redis;
pub(crate) mod topics;

pub use broker::Broker;
#[cfg(feature = "redis")]
pub use redis::{BrokerStats, RedisBroker};
pub use topics::{Publisher, SlowSubscriber};
