//! Postgres channels that socket.io clients subscribe to by name: the name rule, the glob patterns a
//! token grants, and the reference counts that decide when the listener LISTENs and UNLISTENs.
//!
//! Owns which tenants want which channel. The first subscriber of a channel (any tenant) queues a
//! LISTEN and the last one leaving queues an UNLISTEN, both to the one listener connection; the
//! listener (which owns that connection) applies them in queue order and re-LISTENs every wanted
//! channel after a reconnect. It does not talk to clients (`socketio`) or run guests (`workers`).
//!
//! Name rule: 1–63 bytes (Postgres truncates identifiers longer than that), first an ASCII letter,
//! digit or `_`, then letters, digits, `_`, `-`, `.` or `:`. Names are sent as quoted identifiers, so
//! they are case-sensitive. The envelope channels (`--channel`) and the inbound channel are reserved:
//! they carry every tenant's traffic and are never handed to a socket.io client.

mod names;

pub use names::{payload_body, ChannelError, ChannelName, ChannelPattern, MAX_CHANNEL_LEN};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use crate::envelope::TenantId;

/// Work for the listener connection, applied in the order it was queued.
#[derive(Debug)]
pub enum ListenCommand {
    /// LISTEN unless already listening; answer once Postgres confirmed (or the connection is down,
    /// in which case the reconnect LISTENs it).
    Listen(Arc<str>, oneshot::Sender<()>),
    /// UNLISTEN, unless the channel became wanted again meanwhile.
    Unlisten(Arc<str>),
    /// What `pg_listening_channels()` says on the listener connection; `Err` while it is down.
    Report(oneshot::Sender<Result<Vec<String>, String>>),
}

/// The listener has stopped (the server is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the Postgres listener has stopped")]
pub struct ListenerGone;

/// Who subscribes to what, shared by the socket.io endpoint, the dispatcher and the listener.
pub struct Channels {
    /// Channels whose payloads are `<tenant>[/<topic>],<json>` envelopes.
    envelope: HashSet<String>,
    /// Envelope channels plus the inbound channel: never subscribable by name.
    reserved: HashSet<String>,
    /// channel → tenant → sockets of that tenant subscribed to it. A channel is present while it has
    /// at least one subscriber.
    wanted: Mutex<HashMap<Arc<str>, HashMap<TenantId, usize>>>,
    commands: mpsc::UnboundedSender<ListenCommand>,
    limits: ListenLimits,
}

/// Most channels the one LISTEN connection holds for socket.io clients: in all, and per tenant.
/// Each LISTENed channel costs Postgres and the listener a little on every NOTIFY; without a cap one
/// tenant's sockets could make the listener LISTEN on tens of thousands.
#[derive(Debug, Clone, Copy)]
pub struct ListenLimits {
    pub total: usize,
    pub per_tenant: usize,
}

impl From<&crate::config::LimitSettings> for ListenLimits {
    fn from(s: &crate::config::LimitSettings) -> Self {
        ListenLimits {
            total: s.max_listen_channels,
            per_tenant: s.max_listen_channels_per_tenant,
        }
    }
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits {
            total: usize::MAX,
            per_tenant: usize::MAX,
        }
    }
}

/// Why a subscription was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("the server is at its limit of {0} channels")]
    Total(usize),
    #[error("your tenant is at its limit of {0} channels")]
    Tenant(usize),
    #[error("server is shutting down")]
    ListenerGone,
}

impl Channels {
    /// The registry and the command queue the listener drains.
    pub fn new(
        envelope: &[String],
        inbound: &str,
        limits: ListenLimits,
    ) -> (Channels, mpsc::UnboundedReceiver<ListenCommand>) {
        // Unbounded because an UNLISTEN is queued from `Drop` (a departing socket cannot wait).
        // What bounds it: an UNLISTEN is queued only when a channel's count goes 1 → 0; a socket
        // handles one request at a time and waits for its LISTEN's answer, so each socket (capped
        // by --max-connections) has at most one LISTEN queued, as each `/admin/channels` request
        // has one report. While the listener is reconnecting nothing is drained: sockets that
        // leave meanwhile leave their LISTEN behind, so the queue grows with the sockets that
        // come and go during an outage, and empties once Postgres is back.
        let (commands, rx) = mpsc::unbounded_channel();
        let envelope: HashSet<String> = envelope.iter().cloned().collect();
        let mut reserved = envelope.clone();
        reserved.insert(inbound.to_owned());
        let channels = Channels {
            envelope,
            reserved,
            wanted: Mutex::default(),
            commands,
            limits,
        };
        (channels, rx)
    }

    /// Keeps clients off `channel` (one the server itself LISTENs on).
    pub fn reserve(&mut self, channel: &str) {
        self.reserved.insert(channel.to_owned());
    }

    /// Whether `channel` carries tenant envelopes (as opposed to a channel subscribed by name).
    pub fn is_envelope(&self, channel: &str) -> bool {
        self.envelope.contains(channel)
    }

    /// Whether clients are kept off `channel` because it carries every tenant's traffic.
    pub fn is_reserved(&self, channel: &ChannelName) -> bool {
        self.reserved.contains(channel.as_str())
    }

    fn wanted(&self) -> MutexGuard<'_, HashMap<Arc<str>, HashMap<TenantId, usize>>> {
        // A panic while holding this lock leaves counts that are still consistent (every update is a
        // single insert or remove), so a poisoned lock is used as is.
        self.wanted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more socket of `tenant` on `channel`, and returns once the listener LISTENs on it
    /// (so a NOTIFY sent after this returns is seen). Refused when the channel would be one too many
    /// for the tenant or for the server.
    pub async fn subscribe(
        &self,
        tenant: &TenantId,
        channel: &ChannelName,
    ) -> Result<(), SubscribeError> {
        let (ack, confirmed) = oneshot::channel();
        {
            let mut wanted = self.wanted();
            let known = wanted.get(channel.as_str());
            if known.is_none_or(|t| !t.contains_key(tenant)) {
                if known.is_none() && wanted.len() >= self.limits.total {
                    return Err(SubscribeError::Total(self.limits.total));
                }
                let of_tenant = wanted.values().filter(|t| t.contains_key(tenant)).count();
                if of_tenant >= self.limits.per_tenant {
                    return Err(SubscribeError::Tenant(self.limits.per_tenant));
                }
            }
            *wanted
                .entry(channel.shared())
                .or_default()
                .entry(tenant.clone())
                .or_default() += 1;
            // Queued under the lock, so commands reach the listener in the order counts changed.
            // Every subscribe waits for its own LISTEN: a second subscriber must not be told
            // "subscribed" while the first one's LISTEN is still on its way.
            self.commands
                .send(ListenCommand::Listen(channel.shared(), ack))
                .map_err(|_| SubscribeError::ListenerGone)?;
        }
        confirmed.await.map_err(|_| SubscribeError::ListenerGone)
    }

    /// Counts one socket of `tenant` fewer on `channel`; the last one out queues an UNLISTEN.
    pub fn unsubscribe(&self, tenant: &TenantId, channel: &ChannelName) {
        let mut wanted = self.wanted();
        let Some(tenants) = wanted.get_mut(channel.as_str()) else {
            return;
        };
        if let Some(n) = tenants.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                tenants.remove(tenant);
            }
        }
        if tenants.is_empty() {
            wanted.remove(channel.as_str());
            // The listener may already be gone at shutdown; then there is nothing to UNLISTEN.
            let _ = self
                .commands
                .send(ListenCommand::Unlisten(channel.shared()));
        }
    }

    /// Tenants with at least one socket on `channel`, for the dispatcher.
    pub fn tenants(&self, channel: &str) -> Vec<TenantId> {
        self.wanted()
            .get(channel)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether anyone subscribes to `channel` right now.
    pub fn is_wanted(&self, channel: &str) -> bool {
        self.wanted().contains_key(channel)
    }

    /// Every channel with a subscriber, for the listener to LISTEN on after it (re)connects.
    pub fn all_wanted(&self) -> Vec<Arc<str>> {
        self.wanted().keys().cloned().collect()
    }

    /// Channels with subscribers and, per channel, tenant → sockets; for the admin API.
    pub fn counts(&self) -> Vec<(String, Vec<(String, usize)>)> {
        let mut out: Vec<_> = self
            .wanted()
            .iter()
            .map(|(c, t)| {
                let mut tenants: Vec<_> = t.iter().map(|(k, n)| (k.to_string(), *n)).collect();
                tenants.sort();
                (c.to_string(), tenants)
            })
            .collect();
        out.sort();
        out
    }

    /// Asks the listener connection for `pg_listening_channels()`.
    pub async fn listening(&self) -> Result<Vec<String>, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(ListenCommand::Report(tx))
            .map_err(|_| ListenerGone.to_string())?;
        rx.await.map_err(|_| ListenerGone.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s).expect(s)
    }

    #[tokio::test]
    async fn counts_and_commands_follow_subscriptions() {
        let (channels, mut rx) =
            Channels::new(&["pgwebsocket".into()], "inbound", ListenLimits::default());
        let channels = Arc::new(channels);
        let (a, b) = (
            TenantId::parse("a").expect("a"),
            TenantId::parse("b").expect("b"),
        );
        let foo = name("foo");
        let listener = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    ListenCommand::Listen(c, ack) => {
                        seen.push(format!("LISTEN {c}"));
                        let _ = ack.send(());
                    }
                    ListenCommand::Unlisten(c) => seen.push(format!("UNLISTEN {c}")),
                    ListenCommand::Report(_) => break,
                }
            }
            seen
        });
        channels.subscribe(&a, &foo).await.expect("listen");
        channels.subscribe(&b, &foo).await.expect("listen");
        channels.subscribe(&a, &foo).await.expect("listen");
        let mut tenants = channels.tenants("foo");
        tenants.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(tenants, vec![a.clone(), b.clone()]);
        channels.unsubscribe(&b, &foo);
        assert_eq!(channels.tenants("foo"), vec![a.clone()]);
        channels.unsubscribe(&a, &foo);
        assert!(channels.is_wanted("foo"));
        channels.unsubscribe(&a, &foo);
        assert!(!channels.is_wanted("foo"));
        assert!(channels.is_reserved(&name("pgwebsocket")));
        assert!(channels.is_reserved(&name("inbound")));
        assert!(channels.is_envelope("pgwebsocket") && !channels.is_envelope("inbound"));
        let _ = channels.listening().await;
        let seen = listener.await.expect("listener");
        assert_eq!(
            seen,
            ["LISTEN foo", "LISTEN foo", "LISTEN foo", "UNLISTEN foo"]
        );
    }

    #[tokio::test]
    async fn listen_limits_cap_channels_per_tenant_and_in_all() {
        let limits = ListenLimits {
            total: 3,
            per_tenant: 2,
        };
        let (channels, mut rx) = Channels::new(&["pgwebsocket".into()], "inbound", limits);
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                if let ListenCommand::Listen(_, ack) = cmd {
                    let _ = ack.send(());
                }
            }
        });
        let (a, b) = (
            TenantId::parse("a").expect("a"),
            TenantId::parse("b").expect("b"),
        );
        channels.subscribe(&a, &name("x")).await.expect("1st");
        channels.subscribe(&a, &name("y")).await.expect("2nd");
        // Another socket of the same tenant on a channel it already has costs nothing.
        channels.subscribe(&a, &name("y")).await.expect("again");
        assert_eq!(
            channels.subscribe(&a, &name("z")).await,
            Err(SubscribeError::Tenant(2))
        );
        // Another tenant joining a channel already LISTENed is under the total.
        channels.subscribe(&b, &name("x")).await.expect("shared");
        channels
            .subscribe(&b, &name("w"))
            .await
            .expect("3rd channel");
        assert_eq!(
            channels.subscribe(&b, &name("v")).await,
            Err(SubscribeError::Total(3))
        );
        channels.unsubscribe(&a, &name("y"));
        channels.unsubscribe(&a, &name("y"));
        channels
            .subscribe(&a, &name("z"))
            .await
            .expect("room again");
    }

    #[test]
    fn payloads_become_json_like_socketio_pg() {
        assert_eq!(payload_body(r#"{"a":1}"#).as_str(), r#"{"a":1}"#);
        assert_eq!(payload_body("42").as_str(), "42");
        assert_eq!(payload_body("[1,2]").as_str(), "[1,2]");
        assert_eq!(payload_body("hello").as_str(), r#""hello""#);
        assert_eq!(payload_body("").as_str(), r#""""#);
        assert_eq!(payload_body("say \"hi\"").as_str(), r#""say \"hi\"""#);
    }
}
