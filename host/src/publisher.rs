//! Client messages into Postgres: `pg_notify(<inbound channel>, '<tenant>[/<topic>],<json>')`.
//!
//! Owns a small connection pool, separate from the LISTEN connection so a slow publish never delays
//! notifications. The tenant is always the one the host verified; nothing a client sends can change
//! it. It does not check permissions or run guests (`session` and `pipeline` do, before calling it).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::envelope::{JsonBody, TenantId, Topic};

/// Postgres refuses NOTIFY payloads of this many bytes or more.
pub const MAX_PAYLOAD: usize = 8000;

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
        let pg: tokio_postgres::Config = database_url.parse()?;
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(pool_size.max(1)).build()?;
        Ok(Publisher {
            pool,
            channel: channel.to_owned(),
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
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
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let statement = client
            .prepare_cached("select pg_notify($1, $2)")
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        client
            .execute(&statement, &[&self.channel, &payload])
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        Ok(())
    }
}
