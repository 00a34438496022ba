//! What a durable-stream recovery hands the hub: which stored messages a session takes
//! ([`Durable`]), where the session lives ([`SessionAddress`]), and the missed messages sent to it
//! alone in the tenant's order ([`Replay`]). The shard thread carries them out (`shard`).

use bytes::Bytes;

use super::{Delivery, SessionId};
use crate::envelope::{Position, TenantId};

/// Which durable messages a session takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durable {
    /// None yet: a `pgws.v1` session before its first subscribe, which may ask to recover from a
    /// position first.
    Held,
    /// None yet: its recovery is under way; its replay's end says where live messages start.
    Recovering,
    /// Those after this position (`None`: every one).
    After(Option<Position>),
}

impl Durable {
    pub(super) fn accepts(&self, position: &Position) -> bool {
        match self {
            Durable::Held | Durable::Recovering => false,
            Durable::After(None) => true,
            Durable::After(Some(after)) => position.is_after(after),
        }
    }
}

/// Where a registered session lives, for a [`Replay`] to find it.
#[derive(Debug, Clone, Copy)]
pub struct SessionAddress {
    pub id: SessionId,
    pub(super) shard: usize,
}

/// Messages a session missed, sent to it alone and in its place in the tenant's order: after every
/// delivery published before it, before every one published after. A recovery is one or more of
/// these, the last with its [`ReplayEnd`].
pub struct Replay {
    pub tenant: TenantId,
    pub session: SessionAddress,
    pub deliveries: Vec<Delivery>,
    pub end: Option<ReplayEnd>,
}

/// How a recovery ends: a report frame (given the number of messages the session was sent), then
/// the session takes durable messages after `until` (`None`: every one from here on).
pub struct ReplayEnd {
    pub report: Box<dyn FnOnce(usize) -> Bytes + Send>,
    pub until: Option<Position>,
}
