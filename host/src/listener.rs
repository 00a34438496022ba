//! The one Postgres connection that LISTENs, and its life: connect, LISTEN, drain, detect death,
//! reconnect with back-off.
//!
//! Owns the LISTEN connection and the readiness flag. Notifications leave as [`ListenerEvent`]s on a
//! bounded channel in the order Postgres delivered them; a reconnect emits [`ListenerEvent::Gap`],
//! because NOTIFYs sent while no one listened are gone by Postgres' design. It does not parse payloads
//! (that is `envelope`) and never waits on a WebSocket client: its only consumer is the pipeline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{poll_fn, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

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
/// a reconnect after a back-off that doubles from `backoff_min` to `backoff_max`.
pub async fn run(
    config: ListenerConfig,
    events: mpsc::Sender<ListenerEvent>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut backoff = config.backoff_min;
    let mut connected_before = false;
    let mut names = ChannelNames::default();
    loop {
        let attempt = listen_once(&config, &events, &readiness, &mut names, connected_before);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            outcome = attempt => outcome,
        };
        readiness.set(false);
        match outcome {
            Outcome::Listened(lost) => {
                connected_before = true;
                backoff = config.backoff_min;
                metrics::counter!(m::LISTENER_RECONNECTS).increment(1);
                tracing::warn!(error = %lost, "lost the LISTEN connection; reconnecting");
            }
            Outcome::Failed(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "could not LISTEN");
            }
            Outcome::DownstreamGone => break,
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
    readiness.set(false);
    tracing::debug!("listener stopped");
}

enum Outcome {
    /// Was LISTENing, then lost the connection.
    Listened(ConnectionLost),
    /// Never got as far as LISTENing.
    Failed(ConnectionLost),
    /// The pipeline is gone: the server is shutting down.
    DownstreamGone,
}

async fn listen_once(
    config: &ListenerConfig,
    events: &mpsc::Sender<ListenerEvent>,
    readiness: &Readiness,
    names: &mut ChannelNames,
    connected_before: bool,
) -> Outcome {
    let mut pg: tokio_postgres::Config = match config.database_url.parse() {
        Ok(pg) => pg,
        Err(e) => return Outcome::Failed(ConnectionLost::Config(e)),
    };
    // Keepalives find a peer that vanished without a FIN; the liveness query below finds a server
    // that is up but no longer answering this backend.
    pg.keepalives(true)
        .keepalives_idle(config.health_check)
        .connect_timeout(config.health_check.max(Duration::from_secs(1)))
        .application_name("pgws-listener");
    let (client, mut connection) = match pg.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return Outcome::Failed(ConnectionLost::Connect(e)),
    };

    // The connection must be polled for LISTEN to complete and for notifications to arrive at all, so
    // it is drained by its own task from the first moment; it forwards in arrival order.
    let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<Option<ConnectionLost>>();
    let drain_events = events.clone();
    let mut drain_names = std::mem::take(names);
    let drain = tokio::spawn(async move {
        let mut messages = poll_fn(move |cx| connection.poll_message(cx));
        let ended = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    metrics::counter!(m::NOTIFICATIONS_RECEIVED).increment(1);
                    let event = ListenerEvent::Notification {
                        channel: drain_names.get(n.channel()),
                        payload: n.payload().to_owned(),
                    };
                    if drain_events.send(event).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(notice = %notice, "postgres notice on the LISTEN connection");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(ConnectionLost::Closed(e)),
                None => break Some(ConnectionLost::Eof),
            }
        };
        let _ = lost_tx.send(ended);
        drain_names
    });

    for channel in &config.channels {
        if let Err(e) = client.batch_execute(&listen_sql(channel)).await {
            drain.abort();
            return Outcome::Failed(ConnectionLost::Listen(e));
        }
    }
    readiness.set(true);
    tracing::info!(channels = ?config.channels, "listening");
    if connected_before && events.send(ListenerEvent::Gap).await.is_err() {
        return Outcome::DownstreamGone;
    }

    let mut ticks = tokio::time::interval(config.health_check);
    ticks.tick().await;
    let lost = loop {
        tokio::select! {
            ended = &mut lost_rx => match ended {
                Ok(Some(lost)) => break lost,
                Ok(None) | Err(_) => return Outcome::DownstreamGone,
            },
            _ = ticks.tick() => {
                match tokio::time::timeout(config.health_check, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break ConnectionLost::HealthCheck(e),
                    Err(_) => break ConnectionLost::HealthCheckTimeout(config.health_check),
                }
            }
        }
    };
    drop(client);
    if let Ok(kept) = drain.await {
        *names = kept;
    }
    Outcome::Listened(lost)
}

/// `LISTEN "<channel>"` with the name quoted as an identifier, so any channel name is safe.
pub fn listen_sql(channel: &str) -> String {
    format!("LISTEN \"{}\"", channel.replace('"', "\"\""))
}

/// Interns channel names so each notification carries a shared `Arc<str>`, not a new allocation.
#[derive(Default)]
struct ChannelNames(HashMap<String, Arc<str>>);

impl ChannelNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
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
