//! From listener events to tenants: parse each NOTIFY and hand it to its tenant's lane.
//!
//! A NOTIFY on an envelope channel names its tenant in the payload. A NOTIFY on a channel socket.io
//! clients subscribed to by name goes to every tenant with a subscriber there, once per tenant.
//! This loop never waits on a tenant: [`Workers::dispatch`] only queues (or delivers a guest-free
//! tenant's message at once). It does not run guests (`workers`) or reach sockets (`deliver`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::channels::{self, Channels};
use crate::deliver::{Notify, Target};
use crate::envelope::Envelope;
use crate::hub::Hub;
use crate::listener::ListenerEvent;
use crate::metrics as m;
use crate::workers::Workers;

/// Feeds listener events to the workers until `events` closes.
pub async fn run(
    mut events: mpsc::Receiver<ListenerEvent>,
    workers: Workers,
    hub: Arc<Hub>,
    channels: Arc<Channels>,
) {
    while let Some(event) = events.recv().await {
        match event {
            ListenerEvent::Notification { channel, payload } if !channels.is_envelope(&channel) => {
                let received = Instant::now();
                // Empty when an UNLISTEN was on its way as this arrived.
                let tenants = channels.tenants(&channel);
                let body = channels::payload_body(&payload);
                for tenant in tenants {
                    workers.dispatch(Notify {
                        tenant,
                        topic: None,
                        body: body.clone(),
                        channel: channel.clone(),
                        received,
                        target: Target::Rooms,
                    });
                }
            }
            ListenerEvent::Notification { channel, payload } => {
                let received = Instant::now();
                match Envelope::parse(&payload) {
                    Ok(Envelope {
                        tenant,
                        topic,
                        body,
                    }) => workers.dispatch(Notify {
                        tenant,
                        topic,
                        body,
                        channel,
                        received,
                        target: Target::Hub,
                    }),
                    Err(e) => {
                        metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => e.reason())
                            .increment(1);
                        tracing::warn!(
                            %channel,
                            reason = e.reason(),
                            error = %e,
                            payload = %preview(&payload),
                            "payload rejected"
                        );
                    }
                }
            }
            ListenerEvent::Gap => hub.gap(),
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
