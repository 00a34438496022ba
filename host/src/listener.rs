//! The one Postgres connection that LISTENs, and its life: connect, LISTEN, drain, detect death,
//! reconnect with back-off.
//!
//! Owns the LISTEN connection and the readiness flag. It LISTENs on the configured envelope channels
//! and, at run time, on the channels socket.io clients subscribe to: `channels` keeps the reference
//! counts and queues [`ListenCommand`]s, which this module applies on the same connection in queue
//! order while notifications keep flowing (the connection is drained by its own task). After a
//! reconnect every wanted channel is LISTENed again. Notifications leave as batches of
//! [`ListenerEvent`]s (everything one read from Postgres brought, such as a transaction's NOTIFYs) on
//! a bounded channel, in the order Postgres delivered them; a reconnect emits [`ListenerEvent::Gap`],
//! because NOTIFYs sent while no one listened are gone by Postgres' design. It does not parse payloads
//! (that is `envelope`) and never waits on a WebSocket client: its only consumer is the dispatcher.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{poll_fn, StreamExt};
use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::channels::{Channels, ListenCommand};
use crate::metrics as m;

/// What the listener hands downstream, in delivery order.
#[derive(Debug)]
pub enum ListenerEvent {
    /// One NOTIFY, exactly as Postgres delivered it.
    Notification { channel: Arc<str>, payload: String },
    /// The connection was lost and is back; NOTIFYs sent in between were not seen.
    Gap,
}

/// Settings of the LISTEN connection.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub database_url: String,
    pub channels: Vec<String>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub health_check: Duration,
}

impl ListenerConfig {
    pub fn new(database_url: String, s: &crate::config::ListenerSettings) -> Self {
        let (backoff_min, backoff_max) = s.backoff();
        ListenerConfig {
            database_url,
            channels: s.channels.clone(),
            backoff_min,
            backoff_max,
            health_check: s.health_check(),
        }
    }
}

/// Whether the listener is connected and LISTENing on every channel. Read by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
        metrics::gauge!(m::LISTENER_CONNECTED).set(if ready { 1.0 } else { 0.0 });
    }
}

/// Why one connection ended. Only logged: every ending leads to a reconnect.
#[derive(Debug, thiserror::Error)]
enum ConnectionLost {
    #[error("connecting failed: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("LISTEN failed: {0}")]
    Listen(#[source] tokio_postgres::Error),
    #[error("connection closed: {0}")]
    Closed(#[source] tokio_postgres::Error),
    #[error("connection closed by the server")]
    Eof,
    #[error("liveness check failed: {0}")]
    HealthCheck(#[source] tokio_postgres::Error),
    #[error("liveness check got no answer within {0:?}")]
    HealthCheckTimeout(Duration),
    #[error("invalid connection string: {0}")]
    Config(#[source] tokio_postgres::Error),
}

/// Runs the listener until `shutdown` is cancelled. Never returns early: every failure is followed by
/// a reconnect after a back-off that doubles from `backoff_min` to `backoff_max`. The cap is short on
/// purpose (500 ms by default): however long Postgres was away, messages flow again within about that
/// long of its return, and an attempt against a server that is down costs next to nothing.
pub async fn run(
    config: ListenerConfig,
    events: mpsc::Sender<Vec<ListenerEvent>>,
    readiness: Readiness,
    channels: Arc<Channels>,
    mut commands: mpsc::UnboundedReceiver<ListenCommand>,
    shutdown: CancellationToken,
) {
    let mut backoff = config.backoff_min;
    let mut connected_before = false;
    // The current outage: when it began, attempts since, and when it was last logged. Logged once
    // as it begins and then at most every [`OUTAGE_LOG_EVERY`], however often the listener retries.
    let mut outage: Option<(Instant, u64, Instant)> = None;
    let mut names = ChannelNames::default();
    loop {
        let attempt = listen_once(
            &config,
            &events,
            &readiness,
            &channels,
            &mut commands,
            &mut names,
            connected_before,
        );
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            outcome = attempt => outcome,
        };
        readiness.set(false);
        match outcome {
            SessionEnd::Listened(lost) => {
                outage = None;
                connected_before = true;
                backoff = config.backoff_min;
                metrics::counter!(m::LISTENER_RECONNECTS).increment(1);
                tracing::warn!(error = %lost, "lost the LISTEN connection; reconnecting");
            }
            SessionEnd::Failed(e) => match &mut outage {
                None => {
                    let now = Instant::now();
                    outage = Some((now, 1, now));
                    tracing::warn!(error = %e, retry_every = ?config.backoff_max, "could not LISTEN; retrying until Postgres answers");
                }
                Some((began, attempts, logged)) => {
                    *attempts += 1;
                    if logged.elapsed() >= OUTAGE_LOG_EVERY {
                        *logged = Instant::now();
                        tracing::warn!(error = %e, down_for = ?began.elapsed(), attempts = *attempts, "still cannot LISTEN");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?backoff, "could not LISTEN");
                    }
                }
            },
            SessionEnd::DownstreamGone => break,
        }
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut pause => break,
                // While disconnected, subscriptions are only counted: the reconnect LISTENs on every
                // wanted channel, so a subscriber need not wait for Postgres to come back.
                Some(command) = commands.recv() => answer_offline(command),
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
    readiness.set(false);
    tracing::debug!("listener stopped");
}

/// How one connection to Postgres ended.
enum SessionEnd {
    /// Was LISTENing, then lost the connection.
    Listened(ConnectionLost),
    /// Never got as far as LISTENing.
    Failed(ConnectionLost),
    /// The dispatcher is gone: the server is shutting down.
    DownstreamGone,
}

fn answer_offline(command: ListenCommand) {
    match command {
        ListenCommand::Listen(_, ack) => {
            let _ = ack.send(());
        }
        ListenCommand::Unlisten(_) => {}
        ListenCommand::Report(reply) => {
            let _ = reply.send(Err("not connected to Postgres".into()));
        }
    }
}

async fn listen_once(
    config: &ListenerConfig,
    events: &mpsc::Sender<Vec<ListenerEvent>>,
    readiness: &Readiness,
    channels: &Channels,
    commands: &mut mpsc::UnboundedReceiver<ListenCommand>,
    names: &mut ChannelNames,
    connected_before: bool,
) -> SessionEnd {
    let mut pg: tokio_postgres::Config = match config.database_url.parse() {
        Ok(pg) => pg,
        Err(e) => return SessionEnd::Failed(ConnectionLost::Config(e)),
    };
    // Keepalives find a peer that vanished without a FIN; the liveness query below finds a server
    // that is up but no longer answering this backend.
    pg.keepalives(true)
        .keepalives_idle(config.health_check)
        .connect_timeout(config.health_check.max(Duration::from_secs(1)))
        .application_name("pgws-listener");
    let (client, mut connection) = match pg.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return SessionEnd::Failed(ConnectionLost::Connect(e)),
    };

    // The connection must be polled for LISTEN to complete and for notifications to arrive at all, so
    // it is drained by its own task from the first moment; it forwards in arrival order.
    let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<Option<ConnectionLost>>();
    let drain_events = events.clone();
    let mut drain_names = std::mem::take(names);
    let drain = tokio::spawn(async move {
        let mut messages = poll_fn(move |cx| connection.poll_message(cx));
        let ended = loop {
            // Everything already received leaves as one batch, so a transaction's NOTIFYs reach
            // each subscriber in one write.
            let mut batch = Vec::new();
            let mut next = messages.next().await;
            let lost = loop {
                match next {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        metrics::counter!(m::NOTIFICATIONS_RECEIVED).increment(1);
                        batch.push(ListenerEvent::Notification {
                            channel: drain_names.get(n.channel()),
                            payload: n.payload().to_owned(),
                        });
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        tracing::debug!(notice = %notice, "postgres notice on the LISTEN connection");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(ConnectionLost::Closed(e)),
                    None => break Some(ConnectionLost::Eof),
                }
                if batch.len() >= MAX_EVENT_BATCH {
                    break None;
                }
                match messages.next().now_or_never() {
                    Some(more) => next = more,
                    None => break None,
                }
            };
            if !batch.is_empty() && drain_events.send(batch).await.is_err() {
                break None;
            }
            if lost.is_some() {
                break lost;
            }
        };
        let _ = lost_tx.send(ended);
        drain_names
    });

    for channel in &config.channels {
        if let Err(e) = client.batch_execute(&listen_sql(channel)).await {
            drain.abort();
            return SessionEnd::Failed(ConnectionLost::Listen(e));
        }
    }
    // Channels subscribed by name. Commands queued meanwhile are applied after this, in order, so a
    // channel dropped since the snapshot is UNLISTENed again and one added is LISTENed.
    let mut listening: HashSet<Arc<str>> = HashSet::new();
    for channel in channels.all_wanted() {
        if let Err(e) = client.batch_execute(&listen_sql(&channel)).await {
            drain.abort();
            return SessionEnd::Failed(ConnectionLost::Listen(e));
        }
        listening.insert(channel);
    }
    readiness.set(true);
    tracing::info!(channels = ?config.channels, subscribed = listening.len(), "listening");
    if connected_before && events.send(vec![ListenerEvent::Gap]).await.is_err() {
        return SessionEnd::DownstreamGone;
    }

    let mut ticks = tokio::time::interval(config.health_check);
    ticks.tick().await;
    let lost = loop {
        tokio::select! {
            ended = &mut lost_rx => match ended {
                Ok(Some(lost)) => break lost,
                Ok(None) | Err(_) => return SessionEnd::DownstreamGone,
            },
            _ = ticks.tick() => {
                match tokio::time::timeout(config.health_check, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break ConnectionLost::HealthCheck(e),
                    Err(_) => break ConnectionLost::HealthCheckTimeout(config.health_check),
                }
            }
            Some(command) = commands.recv() => {
                if let Err(lost) = run_command(&client, channels, &mut listening, command).await {
                    break lost;
                }
            }
        }
    };
    drop(client);
    if let Ok(kept) = drain.await {
        *names = kept;
    }
    SessionEnd::Listened(lost)
}

/// Applies one subscription change on the live connection. A failed statement means the connection
/// is gone; the channel stays wanted, so the reconnect takes care of it and the subscriber is told it
/// is subscribed.
async fn run_command(
    client: &tokio_postgres::Client,
    channels: &Channels,
    listening: &mut HashSet<Arc<str>>,
    command: ListenCommand,
) -> Result<(), ConnectionLost> {
    match command {
        ListenCommand::Listen(channel, ack) => {
            let result = if listening.contains(&channel) {
                Ok(())
            } else {
                let r = client.batch_execute(&listen_sql(&channel)).await;
                if r.is_ok() {
                    tracing::debug!(%channel, "LISTEN");
                    listening.insert(channel);
                }
                r
            };
            let _ = ack.send(());
            result.map_err(ConnectionLost::Listen)
        }
        // Wanted again since the UNLISTEN was queued: a LISTEN follows in the queue, skip both.
        ListenCommand::Unlisten(channel) if channels.is_wanted(&channel) => Ok(()),
        ListenCommand::Unlisten(channel) => {
            if !listening.remove(&channel) {
                return Ok(());
            }
            tracing::debug!(%channel, "UNLISTEN");
            client
                .batch_execute(&unlisten_sql(&channel))
                .await
                .map_err(ConnectionLost::Listen)
        }
        ListenCommand::Report(reply) => {
            let rows = client
                .query("select pg_listening_channels()", &[])
                .await
                .map_err(ConnectionLost::Closed);
            match rows {
                Ok(rows) => {
                    let mut names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    names.sort();
                    let _ = reply.send(Ok(names));
                    Ok(())
                }
                Err(lost) => {
                    let _ = reply.send(Err(lost.to_string()));
                    Err(lost)
                }
            }
        }
    }
}

/// `LISTEN "<channel>"` with the name quoted as an identifier, so any channel name is safe.
pub fn listen_sql(channel: &str) -> String {
    format!("LISTEN {}", quote_ident(channel))
}

fn unlisten_sql(channel: &str) -> String {
    format!("UNLISTEN {}", quote_ident(channel))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Interns channel names so each notification carries a shared `Arc<str>`, not a new allocation.
#[derive(Default)]
struct ChannelNames(HashMap<String, Arc<str>>);

/// Past this many interned names (clients can subscribe to many channels over time) the table starts
/// over rather than growing without bound.
const MAX_INTERNED: usize = 4096;

/// Most events in one batch to the dispatcher.
pub const MAX_EVENT_BATCH: usize = 256;

/// How often a long outage is logged again while the listener keeps retrying.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(30);

impl ChannelNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        if self.0.len() >= MAX_INTERNED {
            self.0.clear();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(name.to_owned(), n.clone());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_channel_identifiers() {
        assert_eq!(listen_sql("pgwebsocket"), r#"LISTEN "pgwebsocket""#);
        assert_eq!(listen_sql(r#"we"ird"#), r#"LISTEN "we""ird""#);
    }
}
