//! A verified client and what it may do: its tenant and its grants (topics, socket.io channels,
//! publishing), least privilege by construction.
//!
//! It does not verify tokens (`token`) or decide which credentials win (`auth::identify`).

use std::sync::Arc;
use std::time::SystemTime;

use crate::channels::{ChannelName, ChannelPattern};
use crate::envelope::{TenantId, Topic, TopicPattern};

/// A verified client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub tenant: TenantId,
    /// Topics this client may read and publish to (besides messages without a topic).
    pub topics: Arc<[TopicPattern]>,
    /// Whether it may publish without a topic (to every session of the tenant): only a token
    /// without a `topics` claim, and development identities.
    pub tenant_wide: bool,
    /// Postgres channels a socket.io client may subscribe to by name.
    pub channels: Arc<[ChannelPattern]>,
    pub can_publish: bool,
    /// When the token expires; `None` for development identities.
    pub expires_at: Option<SystemTime>,
    /// The token's claims as JSON, for the guest's authorize hook.
    pub claims: String,
}

impl Identity {
    /// A development identity from `?tenant=` (only with `--insecure-tenant-param`): every topic and
    /// channel, may publish, never expires.
    pub fn insecure(tenant: TenantId) -> Identity {
        Identity {
            claims: serde_json::json!({ "tenant": tenant.as_str(), "insecure": true }).to_string(),
            tenant,
            topics: Arc::from([TopicPattern::any()]),
            tenant_wide: true,
            channels: Arc::from([ChannelPattern::any()]),
            can_publish: true,
            expires_at: None,
        }
    }

    /// socketio_pg's anonymous client (`--socketio-anonymous-tenant`): every unreserved channel,
    /// read only unless `can_publish` (`--socketio-test-pub`).
    pub fn anonymous(tenant: TenantId, can_publish: bool) -> Identity {
        Identity {
            claims: serde_json::json!({ "tenant": tenant.as_str(), "anonymous": true }).to_string(),
            tenant,
            topics: Arc::from([]),
            tenant_wide: false,
            channels: Arc::from([ChannelPattern::any()]),
            can_publish,
            expires_at: None,
        }
    }

    /// Whether this client may read `topic`.
    pub fn allows(&self, topic: &Topic) -> bool {
        self.topics.iter().any(|p| p.matches(topic))
    }

    /// Whether this client may publish to `topic` (`None`: tenant-wide).
    pub fn may_publish_to(&self, topic: Option<&Topic>) -> bool {
        self.can_publish && topic.map_or(self.tenant_wide, |t| self.allows(t))
    }

    /// Whether the token lets this socket.io client subscribe to `channel`.
    pub fn allows_channel(&self, channel: &ChannelName) -> bool {
        self.channels.iter().any(|p| p.matches(channel))
    }

    /// The channel patterns as strings.
    pub fn channel_list(&self) -> Vec<String> {
        self.channels.iter().map(ToString::to_string).collect()
    }

    /// The topic patterns as strings.
    pub fn topic_list(&self) -> Vec<String> {
        self.topics.iter().map(ToString::to_string).collect()
    }
}
