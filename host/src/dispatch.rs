//! From listener events to tenants: parse each NOTIFY and hand it to its tenant's lane.
//!
//! A NOTIFY on an envelope channel names its tenant in the payload. A NOTIFY on a channel socket.io
//! clients subscribed to by name goes to every tenant with a subscriber there, once per tenant.
//! This loop never waits on a tenant: [`Workers::dispatch`] only queues (or delivers a guest-free
//! tenant's message at once). Events that arrived together (a transaction's NOTIFYs) are taken
//! together, so guest-free tenants' subscribers get them in one write. It does not run guests
//! (`workers`) or reach sockets (`hub`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::channels::{self, Channels};
use crate::deliver::{Batch, Notify};
use crate::envelope::Envelope;
use crate::hub::{Audience, Hub};
use crate::listener::ListenerEvent;
use crate::metrics as m;
use crate::workers::Workers;

/// Feeds listener events to the workers until `events` closes.
pub async fn run(
    mut events: mpsc::Receiver<Vec<ListenerEvent>>,
    workers: Workers,
    hub: Arc<Hub>,
    channels: Arc<Channels>,
) {
    let mut batch = Batch::default();
    while let Some(events) = events.recv().await {
        for event in events {
            match event {
                ListenerEvent::Notification { channel, payload } => {
                    notification(&workers, &channels, channel, &payload, &mut batch)
                }
                ListenerEvent::Gap => {
                    workers.publish(&mut batch);
                    hub.gap();
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
