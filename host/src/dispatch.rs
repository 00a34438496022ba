//! From listener events to tenants: parse each NOTIFY and hand it to its tenant's lane.
//!
//! A NOTIFY on an envelope channel names its tenant in the payload. A NOTIFY on a channel socket.io
//! clients subscribed to by name goes to every tenant with a subscriber there, once per tenant.
//! This loop never waits on a tenant: [`Workers::dispatch`] only queues (or delivers a guest-free
//! tenant's message at once). Events that arrived together (a transaction's NOTIFYs) are taken
//! together, so guest-free tenants' subscribers get them in one write. A doorbell of the durable
//! streams goes to `streams`, which reads the stored messages. It does not run guests (`workers`)
//! or reach sockets (`hub`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::channels::{self, Channels};
use crate::deliver::{Batch, Notify};
use crate::envelope::Envelope;
use crate::hub::{Audience, Hub};
use crate::listener::ListenerEvent;
use crate::metrics as m;
use crate::streams::{Streams, DOORBELL_CHANNEL};
use crate::workers::Workers;

/// Feeds listener events to the workers until `events` closes.
pub async fn run(
    mut events: mpsc::Receiver<Vec<ListenerEvent>>,
    workers: Workers,
    hub: Arc<Hub>,
    channels: Arc<Channels>,
    streams: Option<Streams>,
) {
    let mut batch = Batch::default();
    while let Some(events) = events.recv().await {
        for event in events {
            match event {
                ListenerEvent::Notification { channel, payload } => match &streams {
                    Some(streams) if &*channel == DOORBELL_CHANNEL => streams.doorbell(&payload),
                    _ => notification(&workers, &channels, channel, &payload, &mut batch),
                },
                ListenerEvent::Gap => {
                    workers.publish(&mut batch);
                    hub.gap();
                    // Stored messages are not lost, but their doorbells were: read them now.
                    if let Some(streams) = &streams {
                        streams.doorbells_lost();
                    }
                }
            }
        }
        workers.publish(&mut batch);
    }
}

fn notification(
    workers: &Workers,
    channels: &Channels,
    channel: Arc<str>,
    payload: &str,
    batch: &mut Batch,
) {
    if batch.is_full() {
        workers.publish(batch);
    }
    let received = Instant::now();
    if !channels.is_envelope(&channel) {
        // Empty when an UNLISTEN was on its way as this arrived.
        let tenants = channels.tenants(&channel);
        let body = channels::payload_body(payload);
        for tenant in tenants {
            let n = Notify {
                tenant,
                topic: None,
                body: body.clone(),
                channel: channel.clone(),
                received,
                audience: Audience::SocketIo,
                position: None,
            };
            workers.dispatch(n, batch);
        }
        return;
    }
    match Envelope::parse(payload) {
        Ok(Envelope {
            tenant,
            topic,
            body,
        }) => {
            let n = Notify {
                tenant,
                topic,
                body,
                channel,
                received,
                audience: Audience::Sessions,
                position: None,
            };
            workers.dispatch(n, batch);
        }
        Err(e) => {
            metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => e.reason()).increment(1);
            tracing::warn!(
                %channel,
                reason = e.reason(),
                error = %e,
                payload = %preview(payload),
                "payload rejected"
            );
        }
    }
}

/// The first bytes of a bad payload, for the log.
fn preview(payload: &str) -> &str {
    let mut end = payload.len().min(120);
    while !payload.is_char_boundary(end) {
        end -= 1;
    }
    &payload[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admission;
    use crate::config::Config;
    use crate::deliver::Deliverer;
    use crate::envelope::TenantId;
    use crate::frame::FrameFormat;
    use crate::guest::{GuestLimits, GuestRegistry, GuestRuntime};
    use crate::hub::{Durable, Hub, Registration, TopicFilter};
    use clap::Parser;

    /// Workers with no guest (every tenant delivered inline), a one-shard hub that fans out on the
    /// caller's thread, and the default channel set.
    fn pipeline() -> (Workers, Arc<Hub>, Channels) {
        let config = Config::try_parse_from(["pgws"]).expect("defaults");
        let runtime = GuestRuntime::new(GuestLimits::from(&config.guest), None).expect("runtime");
        let hub = Arc::new(Hub::new(1_000));
        let workers = Workers::start(
            Arc::new(GuestRegistry::new(runtime)),
            Deliverer { hub: hub.clone() },
            &config.workers,
        )
        .expect("workers");
        let (channels, _commands) =
            Channels::new(&["pgwebsocket".into()], "pgwebsocket", Default::default());
        (workers, hub, channels)
    }

    fn session(hub: &Arc<Hub>, tenant: &str, filter: TopicFilter) -> Registration {
        let tenant = TenantId::parse(tenant).expect("tenant");
        let ticket = Arc::new(Admission::default())
            .admit(&tenant)
            .expect("place");
        hub.register(
            ticket,
            &tenant,
            FrameFormat::Raw,
            filter,
            Durable::After(None),
            None,
        )
    }

    /// The bodies of the frames waiting in a (never attached) session's outbox.
    fn received(session: &Registration) -> Vec<String> {
        session
            .outbox
            .take_pending()
            .iter()
            .map(|f| String::from_utf8(f[2..].to_vec()).expect("text"))
            .collect()
    }

    #[test]
    fn each_payload_reaches_its_tenant_only_and_bad_ones_reach_no_one() {
        let (workers, hub, channels) = pipeline();
        let acme = session(&hub, "acme", TopicFilter::All);
        let other = session(&hub, "other", TopicFilter::All);
        let mut batch = Batch::default();
        for payload in [
            r#"acme,{"n":1}"#,
            r#"other,{"n":2}"#,
            "no comma at all",
            r#"acme,{"broken"#,
            r#"bad tenant!,{"n":9}"#,
            r#"acme/orders,{"n":3}"#,
        ] {
            notification(
                &workers,
                &channels,
                Arc::from("pgwebsocket"),
                payload,
                &mut batch,
            );
        }
        workers.publish(&mut batch);
        assert_eq!(received(&acme), [r#"{"n":1}"#, r#"{"n":3}"#]);
        assert_eq!(received(&other), [r#"{"n":2}"#]);
    }

    #[test]
    fn a_full_batch_leaves_before_the_next_notification_joins() {
        let (workers, hub, channels) = pipeline();
        let acme = session(&hub, "acme", TopicFilter::All);
        let mut batch = Batch::default();
        let mut sent = Vec::new();
        for n in 0..600 {
            let payload = format!(r#"acme,{{"n":{n}}}"#);
            notification(
                &workers,
                &channels,
                Arc::from("pgwebsocket"),
                &payload,
                &mut batch,
            );
            sent.push(format!(r#"{{"n":{n}}}"#));
        }
        assert!(!batch.is_full(), "batches are bounded");
        workers.publish(&mut batch);
        assert_eq!(received(&acme), sent, "all of them, in order");
    }

    /// A socket.io channel's payload is not an envelope: even one that looks like one reaches no
    /// `/ws` session, and with no socket subscribed it reaches no one at all.
    #[test]
    fn a_socketio_channel_is_not_read_as_an_envelope() {
        let (workers, hub, channels) = pipeline();
        let acme = session(&hub, "acme", TopicFilter::All);
        let mut batch = Batch::default();
        notification(
            &workers,
            &channels,
            Arc::from("orders"),
            r#"acme,{"n":1}"#,
            &mut batch,
        );
        notification(
            &workers,
            &channels,
            Arc::from("pgwebsocket"),
            r#"acme,{"n":2}"#,
            &mut batch,
        );
        workers.publish(&mut batch);
        assert_eq!(received(&acme), [r#"{"n":2}"#]);
    }
}
