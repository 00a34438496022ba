//! What a job does with its tenant's guest: a notification becomes an outcome to deliver, a
//! client's message an answer for its session, a connection a yes or no — each under the failure
//! policy when the guest fails or never loaded.
//!
//! It does not queue jobs or pick threads (`workers`, `lanes`) or account calls (`runner`).

use super::lanes::Lane;
use super::runner::Runner;
use super::{ClientOutcome, Inner, Job, NOT_LOADED};
use crate::config::FailurePolicy;
use crate::deliver::{self, Batch, Notify, Outcome};
use crate::envelope::{JsonBody, Topic};
use crate::guest::{Authorization, ClientMessageRef, ClientVerdict, ConnectionRef, Lookup};
use crate::hub::Replay;
use crate::metrics as m;

impl Inner {
    pub(super) fn not_loaded_authorization(&self) -> Authorization {
        match self.rules.policy {
            FailurePolicy::Closed => Authorization::Deny(NOT_LOADED.into()),
            FailurePolicy::Open => Authorization::Allow,
        }
    }

    /// Runs one job of `lane`'s tenant.
    pub(super) async fn run(&self, lane: &Lane, runner: &mut Runner, job: Job, batch: &mut Batch) {
        let tenant = &lane.tenant;
        let lookup = self.registry.lookup(tenant);
        match job {
            Job::Notify(n) => {
                let outcome = self.notify_outcome(runner, &lookup, &n).await;
                self.deliverer.finish(&lane.stream, &n, outcome, batch);
            }
            Job::Replay {
                notes,
                session,
                end,
            } => {
                let mut deliveries = Vec::new();
                for n in &notes {
                    let outcome = self.notify_outcome(runner, &lookup, n).await;
                    deliveries.extend(self.deliverer.replayed(n, outcome));
                }
                // What this lane delivered before goes out first: the replay takes its place
                // after it, and ahead of what follows.
                self.deliverer.publish(batch);
                self.deliverer.hub.replay(Replay {
                    tenant: tenant.clone(),
                    session,
                    deliveries,
                    end,
                });
            }
            Job::ClientMessage { topic, body, reply } => {
                let outcome = match lookup {
                    Lookup::Guest(module) if module.has_client_handler() => {
                        let message = ClientMessageRef {
                            tenant: tenant.as_str(),
                            topic: topic.as_ref().map(Topic::as_str),
                            body: body.as_str(),
                        };
                        match runner
                            .on_client_message(
                                self.registry.runtime(),
                                &self.rules,
                                tenant,
                                module,
                                &message,
                            )
                            .await
                        {
                            Ok(ClientVerdict::Accept) => ClientOutcome::Accept(body),
                            Ok(ClientVerdict::Replace(b)) => match JsonBody::from_string(b) {
                                Ok(b) => ClientOutcome::Accept(b),
                                Err(e) => ClientOutcome::Reject(format!(
                                    "guest produced invalid JSON: {e}"
                                )),
                            },
                            Ok(ClientVerdict::Reject(reason)) => ClientOutcome::Reject(reason),
                            Err(f) => ClientOutcome::Reject(format!("guest failed ({})", f.kind)),
                        }
                    }
                    Lookup::NotLoaded => ClientOutcome::Reject(NOT_LOADED.into()),
                    _ => ClientOutcome::Accept(body),
                };
                let _ = reply.send(outcome);
            }
            Job::Authorize {
                topics,
                can_publish,
                claims,
                reply,
            } => {
                let answer = match lookup {
                    Lookup::Guest(module) if module.has_authorizer() => {
                        let connection = ConnectionRef {
                            tenant: tenant.as_str(),
                            topics,
                            can_publish,
                            claims: &claims,
                        };
                        runner
                            .authorize(
                                self.registry.runtime(),
                                &self.rules,
                                tenant,
                                module,
                                &connection,
                            )
                            .await
                            .unwrap_or_else(|f| {
                                Authorization::Deny(format!("guest failed ({})", f.kind))
                            })
                    }
                    Lookup::NotLoaded => self.not_loaded_authorization(),
                    _ => Authorization::Allow,
                };
                let _ = reply.send(Ok(answer));
            }
        }
    }

    /// What a notification becomes through the tenant's guest (or without one).
    async fn notify_outcome(&self, runner: &mut Runner, lookup: &Lookup, n: &Notify) -> Outcome {
        match lookup {
            Lookup::None => Outcome::Deliver(vec![n.original()]),
            Lookup::NotLoaded => {
                metrics::counter!(m::GUEST_FAILURES, "tenant" => n.tenant.to_string(), "kind" => "not_loaded")
                    .increment(1);
                self.on_failure(n, "not_loaded", NOT_LOADED.into())
            }
            Lookup::Guest(module) => match runner
                .on_notify(self.registry.runtime(), &self.rules, module.clone(), n)
                .await
            {
                Ok(verdict) => {
                    let outcome = deliver::apply(verdict, n);
                    runner.count(&outcome);
                    outcome
                }
                Err(f) => self.on_failure(n, f.kind, f.detail),
            },
        }
    }

    /// What a notification whose guest produced nothing usable becomes.
    fn on_failure(&self, n: &Notify, kind: &'static str, detail: String) -> Outcome {
        match self.rules.policy {
            FailurePolicy::Closed => Outcome::Rejected(kind, detail),
            FailurePolicy::Open => Outcome::Deliver(vec![n.original()]),
        }
    }
}
