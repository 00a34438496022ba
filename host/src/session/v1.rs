//! A `pgws.v1` session's side of the conversation: its subscriptions, its publish rate limit, and
//! the answer to each client frame. A publish is checked here and then runs beside the session loop
//! (the guest, then Postgres, each with its own time bound). It does not read or write the socket
//! (`session`).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::SessionContext;
use crate::auth::Identity;
use crate::envelope::{JsonBody, TenantId, Topic};
use crate::hub::{Registration, TopicFilter};
use crate::metrics as m;
use crate::protocol::{self, ClientFrame};
use crate::publisher::{PublishError, RateLimit};
use crate::streams::Recovery;
use crate::workers::ClientOutcome;

/// What a `pgws.v1` session keeps between client frames.
pub(super) struct V1State {
    subscriptions: HashSet<Topic>,
    limit: RateLimit,
}

/// The answer to a client frame: at once, or from a publish that runs beside the session loop.
pub(super) enum Answer {
    Now(String),
    /// More than one frame at once.
    Frames(Vec<String>),
    /// This frame, then start what follows it (a recovery, whose frames come after the answer).
    NowThen(String, Box<dyn FnOnce() + Send>),
    Later(Pin<Box<dyn Future<Output = String> + Send>>),
}

impl V1State {
    pub(super) fn new(ctx: &SessionContext) -> Self {
        V1State {
            subscriptions: HashSet::new(),
            limit: RateLimit::new(ctx.publish_rate, ctx.publish_burst),
        }
    }

    /// Acts on one client frame. A publish is checked here (permissions, rate) and then runs
    /// beside the session loop, owning what it needs.
    pub(super) fn handle(
        &mut self,
        text: &str,
        identity: &Identity,
        registration: &Registration,
        ctx: &Arc<SessionContext>,
    ) -> Answer {
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let r = protocol::peek_ref(text);
                return Answer::Now(protocol::error(e.code(), &e.to_string(), r.as_ref()));
            }
        };
        match frame {
            ClientFrame::Subscribe {
                topics,
                since,
                r#ref,
            } => {
                let refused: Vec<&str> = topics
                    .iter()
                    .filter(|t| !identity.allows(t))
                    .map(Topic::as_str)
                    .collect();
                if !refused.is_empty() {
                    let msg = format!("not allowed by your token: {}", refused.join(", "));
                    return Answer::Now(protocol::error("forbidden_topic", &msg, r#ref.as_ref()));
                }
                let new = topics
                    .iter()
                    .filter(|t| !self.subscriptions.contains(*t))
                    .count();
                if self.subscriptions.len() + new > ctx.max_topics {
                    metrics::counter!(m::LIMIT_REFUSALS, "limit" => "topics_per_session")
                        .increment(1);
                    let msg = format!("at most {} topics per connection", ctx.max_topics);
                    return Answer::Now(protocol::error("too_many_topics", &msg, r#ref.as_ref()));
                }
                if since.is_some() && ctx.streams.is_some() && !registration.begin_recovery() {
                    let msg = "`since` is taken only on a session's first subscribe";
                    return Answer::Now(protocol::error("bad_frame", msg, r#ref.as_ref()));
                }
                self.subscriptions.extend(topics.iter().cloned());
                registration.set_filter(TopicFilter::Only(Arc::new(self.subscriptions.clone())));
                let answer = protocol::subscribed(&topics, r#ref.as_ref());
                match (since, &ctx.streams) {
                    // The replay and its report follow this answer, in the tenant's order.
                    (Some(since), Some(streams)) => {
                        let recovery = Recovery {
                            tenant: identity.tenant.clone(),
                            session: registration.address(),
                            since,
                            reference: r#ref.clone(),
                        };
                        let streams = streams.clone();
                        return Answer::NowThen(
                            answer,
                            Box::new(move || streams.recover(recovery)),
                        );
                    }
                    (Some(_), None) => {
                        registration.take_durable();
                        return Answer::Frames(vec![
                            answer,
                            protocol::not_recovered(
                                "durable streams are off on this server (--streams)",
                                r#ref.as_ref(),
                            ),
                        ]);
                    }
                    (None, _) => registration.take_durable(),
                }
                Answer::Now(answer)
            }
            ClientFrame::Unsubscribe { topics, r#ref } => {
                for t in &topics {
                    self.subscriptions.remove(t);
                }
                registration.set_filter(TopicFilter::Only(Arc::new(self.subscriptions.clone())));
                Answer::Now(protocol::unsubscribed(&topics, r#ref.as_ref()))
            }
            ClientFrame::Publish { topic, data, r#ref } => {
                match self.may_publish(topic.as_ref(), identity, ctx) {
                    Ok(()) => {
                        let publish = publish(ctx.clone(), identity.tenant.clone(), topic, data);
                        Answer::Later(Box::pin(async move {
                            answer_publish(publish.await, r#ref.as_ref())
                        }))
                    }
                    Err(refusal) => Answer::Now(answer_publish(Err(refusal), r#ref.as_ref())),
                }
            }
        }
    }

    /// Whether this session may publish to `topic` now; takes a token of its rate limit.
    fn may_publish(
        &mut self,
        topic: Option<&Topic>,
        identity: &Identity,
        ctx: &SessionContext,
    ) -> Result<(), (&'static str, String)> {
        if !identity.can_publish {
            return Err((
                "read_only",
                "your token does not allow publishing (mode \"r\")".into(),
            ));
        }
        if !identity.may_publish_to(topic) {
            return Err(match topic {
                Some(t) => ("forbidden_topic", format!("not allowed by your token: {t}")),
                None => (
                    "forbidden_topic",
                    "your token is limited to topics: publish to one of them".into(),
                ),
            });
        }
        if !self.limit.take() {
            return Err((
                "rate_limited",
                format!("at most {} publishes per second", ctx.publish_rate),
            ));
        }
        Ok(())
    }
}

/// A permitted publish: through the tenant's guest (bounded by the workers' answer time), then to
/// Postgres (bounded by the publisher's timeouts).
async fn publish(
    ctx: Arc<SessionContext>,
    tenant: TenantId,
    topic: Option<Topic>,
    data: JsonBody,
) -> Result<(), (&'static str, String)> {
    let body = match ctx
        .workers
        .client_message(&tenant, topic.clone(), data)
        .await
    {
        ClientOutcome::Accept(body) => body,
        ClientOutcome::Reject(reason) => return Err(("rejected", reason)),
        ClientOutcome::Busy(reason) => return Err(("busy", reason)),
    };
    ctx.publisher
        .publish(&tenant, topic.as_ref(), &body)
        .await
        .map_err(|e| match e {
            PublishError::TooLarge(_) => ("too_large", e.to_string()),
            PublishError::Unavailable(_) => ("publish_failed", e.to_string()),
        })
}

/// The frame that answers a publish, counted by outcome.
fn answer_publish(outcome: Result<(), (&'static str, String)>, r#ref: Option<&Value>) -> String {
    let label: &'static str = match &outcome {
        Ok(()) => "published",
        Err((code, _)) => code,
    };
    metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => label).increment(1);
    match outcome {
        Ok(()) => protocol::published(r#ref),
        Err((code, message)) => protocol::error(code, &message, r#ref),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admission;
    use crate::config::Config;
    use crate::deliver::Deliverer;
    use crate::envelope::TopicPattern;
    use crate::frame::FrameFormat;
    use crate::guest::{GuestLimits, GuestRegistry, GuestRuntime};
    use crate::hub::{Durable, Hub};
    use crate::publisher::Publisher;
    use crate::workers::Workers;
    use clap::Parser;

    /// A session's context with no guests, a database that cannot be reached, at most two topics
    /// and one publish (then one every 1,000 s).
    fn context() -> (Arc<SessionContext>, Registration) {
        let config = Config::try_parse_from([
            "pgws",
            "--max-topics-per-session",
            "2",
            "--publish-burst",
            "1",
            "--publish-rate",
            "0.001",
        ])
        .expect("config");
        let runtime = GuestRuntime::new(GuestLimits::from(&config.guest), None).expect("runtime");
        let hub = Arc::new(Hub::new(8));
        let workers = Workers::start(
            Arc::new(GuestRegistry::new(runtime)),
            Deliverer { hub: hub.clone() },
            &config.workers,
        )
        .expect("workers");
        let publisher =
            Publisher::new("host=/nonexistent/pgws-test user=nobody", "inbound", 1).expect("pool");
        let ctx = SessionContext::new(
            workers,
            Arc::new(publisher),
            &config.sessions,
            &config.publish,
        );
        let tenant = TenantId::parse("acme").expect("tenant");
        let ticket = Arc::new(Admission::default())
            .admit(&tenant)
            .expect("place");
        let registration = hub.register(
            ticket,
            &tenant,
            FrameFormat::Envelope,
            TopicFilter::All,
            Durable::Held,
            None,
        );
        (Arc::new(ctx), registration)
    }

    fn identity(topics: &[&str], can_publish: bool) -> Identity {
        let mut identity = Identity::insecure(TenantId::parse("acme").expect("tenant"));
        identity.topics = topics
            .iter()
            .map(|t| TopicPattern::parse(t).expect("pattern"))
            .collect();
        identity.tenant_wide = false;
        identity.can_publish = can_publish;
        identity
    }

    async fn answer(
        v1: &mut V1State,
        frame: &str,
        who: &Identity,
        ctx: &(Arc<SessionContext>, Registration),
    ) -> Value {
        let text = match v1.handle(frame, who, &ctx.1, &ctx.0) {
            Answer::Now(text) => text,
            Answer::Frames(texts) => texts.join("\n"),
            Answer::NowThen(text, _) => text,
            Answer::Later(answer) => answer.await,
        };
        serde_json::from_str(&text).expect("an answer is JSON")
    }

    #[tokio::test]
    async fn subscriptions_are_granted_capped_and_answered() {
        let ctx = context();
        let mut v1 = V1State::new(&ctx.0);
        let who = identity(&["orders", "eu/*"], false);
        let reply = answer(
            &mut v1,
            r#"{"type":"subscribe","topics":["orders"],"ref":1}"#,
            &who,
            &ctx,
        )
        .await;
        assert_eq!(
            reply,
            serde_json::json!({"type": "subscribed", "topics": ["orders"], "ref": 1})
        );
        let reply = answer(
            &mut v1,
            r#"{"type":"subscribe","topics":["billing"],"ref":2}"#,
            &who,
            &ctx,
        )
        .await;
        assert_eq!(reply["code"], "forbidden_topic");
        assert_eq!(reply["ref"], 2);
        let reply = answer(
            &mut v1,
            r#"{"type":"subscribe","topics":["eu/fr","eu/de"]}"#,
            &who,
            &ctx,
        )
        .await;
        assert_eq!(reply["code"], "too_many_topics", "{reply}");
        let reply = answer(
            &mut v1,
            r#"{"type":"unsubscribe","topics":["orders"],"ref":"x"}"#,
            &who,
            &ctx,
        )
        .await;
        assert_eq!(
            reply,
            serde_json::json!({"type": "unsubscribed", "topics": ["orders"], "ref": "x"})
        );
        let reply = answer(
            &mut v1,
            r#"{"type":"subscribe","topics":["eu/fr","eu/de"]}"#,
            &who,
            &ctx,
        )
        .await;
        assert_eq!(
            reply["type"], "subscribed",
            "room again after the unsubscribe"
        );
        let reply = answer(&mut v1, r#"{"type":"dance","ref":7}"#, &who, &ctx).await;
        assert_eq!(
            (reply["code"].as_str(), reply["ref"].as_i64()),
            (Some("bad_frame"), Some(7))
        );
    }

    #[tokio::test]
    async fn publishes_are_checked_limited_and_failures_named() {
        let ctx = context();
        let reader = identity(&["orders"], false);
        let writer = identity(&["orders"], true);
        let mut v1 = V1State::new(&ctx.0);
        let publish = r#"{"type":"publish","topic":"orders","data":{"n":1},"ref":1}"#;
        assert_eq!(
            answer(&mut v1, publish, &reader, &ctx).await["code"],
            "read_only"
        );
        let elsewhere = r#"{"type":"publish","topic":"billing","data":{}}"#;
        assert_eq!(
            answer(&mut v1, elsewhere, &writer, &ctx).await["code"],
            "forbidden_topic"
        );
        let tenant_wide = r#"{"type":"publish","data":{}}"#;
        assert_eq!(
            answer(&mut v1, tenant_wide, &writer, &ctx).await["code"],
            "forbidden_topic"
        );
        // The one publish of the burst reaches for the database, which is not there.
        let reply = answer(&mut v1, publish, &writer, &ctx).await;
        assert_eq!(
            (reply["code"].as_str(), reply["ref"].as_i64()),
            (Some("publish_failed"), Some(1))
        );
        assert_eq!(
            answer(&mut v1, publish, &writer, &ctx).await["code"],
            "rate_limited"
        );
    }
}
