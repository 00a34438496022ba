//! Client messages into Postgres: `pg_notify(<inbound channel>, '<tenant>[/<topic>],<json>')`, or
//! for socket.io's `test_pub`, `pg_notify(<channel>, '<json>')`; and the per-client publish rate limit.
//!
//! Owns a small connection pool, separate from the LISTEN connection so a slow publish never delays
//! notifications. Every step — waiting for a pooled connection, connecting, the NOTIFY itself — is
//! bounded by [`PUBLISH_TIMEOUT`], so a database that hangs costs a client a `publish_failed`, not a
//! stuck request. The tenant is always the one the host verified; nothing a client sends can change
//! it. It does not check permissions or run guests (`session`, `socketio` and `workers` do, before calling it).

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use crate::envelope::{JsonBody, TenantId, Topic};

/// Postgres refuses NOTIFY payloads of this many bytes or more.
pub const MAX_PAYLOAD: usize = 8000;

/// Longest a publish may wait for each of its steps. A client waits for its answer, so a database
/// that does not answer must turn into an error it can act on (and a pooled connection that hangs
/// must not hold its place for ever).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("message is {0} bytes with its address; Postgres accepts at most {max}", max = MAX_PAYLOAD - 1)]
    TooLarge(usize),
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

pub struct Publisher {
    pool: Pool,
    channel: String,
}

impl Publisher {
    pub fn new(database_url: &str, channel: &str, pool_size: usize) -> anyhow::Result<Publisher> {
        let pool = crate::database::pool(database_url, pool_size, PUBLISH_TIMEOUT, None)?;
        Ok(Publisher {
            pool,
            channel: channel.to_owned(),
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Sends `body` as is on `channel` (socket.io `test_pub`); returns once Postgres committed it.
    pub async fn notify(&self, channel: &str, body: &JsonBody) -> Result<(), PublishError> {
        if body.as_str().len() >= MAX_PAYLOAD {
            return Err(PublishError::TooLarge(body.as_str().len()));
        }
        self.send(channel, body.as_str()).await
    }

    /// Sends one message; returns once Postgres committed the NOTIFY.
    pub async fn publish(
        &self,
        tenant: &TenantId,
        topic: Option<&Topic>,
        body: &JsonBody,
    ) -> Result<(), PublishError> {
        let payload = match topic {
            Some(t) => format!("{tenant}/{t},{}", body.as_str()),
            None => format!("{tenant},{}", body.as_str()),
        };
        if payload.len() >= MAX_PAYLOAD {
            return Err(PublishError::TooLarge(payload.len()));
        }
        self.send(&self.channel, &payload).await
    }

    async fn send(&self, channel: &str, payload: &str) -> Result<(), PublishError> {
        let client = self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                PublishError::Unavailable(format!(
                    "every publish connection stayed busy for {PUBLISH_TIMEOUT:?}"
                ))
            }
            e => PublishError::Unavailable(e.to_string()),
        })?;
        let query = InFlight(Some(client));
        let Some(client) = query.0.as_ref() else {
            return Err(PublishError::Unavailable("no connection".into()));
        };
        let notify = async {
            let statement = client.prepare_cached("select pg_notify($1, $2)").await?;
            client.execute(&statement, &[&channel, &payload]).await
        };
        let result = match tokio::time::timeout(PUBLISH_TIMEOUT, notify).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PublishError::Unavailable(e.to_string())),
            Err(_) => {
                return Err(PublishError::Unavailable(format!(
                    "no answer within {PUBLISH_TIMEOUT:?}; the message may still have been sent"
                )))
            }
        };
        query.finished();
        result
    }
}

/// A pooled connection with a statement on it. Unless the statement finished, the connection's
/// state is unknown — cut off by the timeout, or its publish abandoned by a closing session — so it
/// leaves the pool instead of going back to it.
struct InFlight(Option<deadpool_postgres::Object>);

impl InFlight {
    /// The statement finished: the connection goes back to the pool as usual.
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

/// A token bucket: `rate` per second, at most `burst` saved up.
pub struct RateLimit {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
        }
    }

    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantId {
        TenantId::parse("acme").expect("tenant")
    }

    #[test]
    fn the_rate_limit_spends_its_burst_then_refuses() {
        let mut limit = RateLimit::new(0.001, 3.0);
        let taken: Vec<bool> = (0..5).map(|_| limit.take()).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        // 1,000 a second: a token is back after a millisecond (slept for five).
        let mut limit = RateLimit::new(1000.0, 1.0);
        assert!(limit.take());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(limit.take(), "refilled at the sustained rate");
    }

    /// Size is checked before any connection is made; a database that cannot be reached is an
    /// error the client is given, not a hang.
    #[tokio::test]
    async fn too_large_and_unreachable_are_told_apart() {
        let publisher = Publisher::new("host=/nonexistent/pgws-test user=nobody", "inbound", 1)
            .expect("a pool is made without connecting");
        let big = JsonBody::string(&"x".repeat(MAX_PAYLOAD));
        let topic = Topic::parse("orders").expect("topic");
        assert!(matches!(
            publisher.publish(&acme(), Some(&topic), &big).await,
            Err(PublishError::TooLarge(n)) if n > MAX_PAYLOAD
        ));
        assert!(matches!(
            publisher.notify("orders", &big).await,
            Err(PublishError::TooLarge(_))
        ));
        let small = JsonBody::parse("{}").expect("json");
        let result = publisher.publish(&acme(), None, &small).await;
        assert!(
            matches!(result, Err(PublishError::Unavailable(_))),
            "{result:?}"
        );
    }
}
