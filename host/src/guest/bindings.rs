//! The generated WIT bindings, and the one place that maps them to host types.
//!
//! `bindgen!` runs here and nowhere else, for the widest world (`gatekeeper`); the optional exports
//! are looked up one by one, so a guest may export any subset that includes `handler`. The rest of the
//! host speaks [`Verdict`], [`ClientVerdict`] and [`Authorization`], never the generated paths.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "pgws:guest/gatekeeper",
    // Exports are called async so a guest can yield its thread at every epoch tick; the one
    // import (`log`) is a plain host function.
    exports: { default: async },
});

pub use self::pgws::guest::log::{Host as LogHost, Level as LogLevel};
use self::pgws::guest::types as wit;
pub use exports::pgws::guest::authorizer::{
    Guest as AuthorizerExport, GuestIndices as AuthorizerIndices,
};
pub use exports::pgws::guest::client_handler::{
    Guest as ClientHandlerExport, GuestIndices as ClientHandlerIndices,
};
pub use exports::pgws::guest::handler::{Guest as HandlerExport, GuestIndices as HandlerIndices};

/// The notification handed to a guest, borrowed from the host's own copies.
pub struct NotificationRef<'a> {
    pub tenant: &'a str,
    pub topic: Option<&'a str>,
    pub channel: &'a str,
    pub body: &'a str,
}

impl NotificationRef<'_> {
    pub(super) fn to_wit(&self) -> wit::Notification {
        wit::Notification {
            tenant: self.tenant.to_owned(),
            topic: self.topic.map(str::to_owned),
            channel: self.channel.to_owned(),
            body: self.body.to_owned(),
        }
    }
}

/// A guest's decision about one notification, before the host checks its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
    Replace(String),
    Route(Vec<(String, Option<String>)>),
    Reject(String),
}

impl From<wit::Verdict> for Verdict {
    fn from(v: wit::Verdict) -> Self {
        match v {
            wit::Verdict::Forward => Verdict::Forward,
            wit::Verdict::Drop => Verdict::Drop,
            wit::Verdict::Replace(body) => Verdict::Replace(body),
            wit::Verdict::Route(routes) => {
                Verdict::Route(routes.into_iter().map(|r| (r.topic, r.body)).collect())
            }
            wit::Verdict::Reject(reason) => Verdict::Reject(reason),
        }
    }
}

/// A client's published message handed to a guest.
pub struct ClientMessageRef<'a> {
    pub tenant: &'a str,
    pub topic: Option<&'a str>,
    pub body: &'a str,
}

impl ClientMessageRef<'_> {
    pub(super) fn to_wit(&self) -> wit::ClientMessage {
        wit::ClientMessage {
            tenant: self.tenant.to_owned(),
            topic: self.topic.map(str::to_owned),
            body: self.body.to_owned(),
        }
    }
}

/// A guest's decision about a client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientVerdict {
    Accept,
    Replace(String),
    Reject(String),
}

impl From<wit::ClientVerdict> for ClientVerdict {
    fn from(v: wit::ClientVerdict) -> Self {
        match v {
            wit::ClientVerdict::Accept => ClientVerdict::Accept,
            wit::ClientVerdict::Replace(body) => ClientVerdict::Replace(body),
            wit::ClientVerdict::Reject(reason) => ClientVerdict::Reject(reason),
        }
    }
}

/// A connecting client, as the authorize hook sees it.
pub struct ConnectionRef<'a> {
    pub tenant: &'a str,
    pub topics: Vec<String>,
    pub can_publish: bool,
    pub claims: &'a str,
}

impl ConnectionRef<'_> {
    pub(super) fn to_wit(&self) -> wit::Connection {
        wit::Connection {
            tenant: self.tenant.to_owned(),
            topics: self.topics.clone(),
            can_publish: self.can_publish,
            claims: self.claims.to_owned(),
        }
    }
}

/// The authorize hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Allow,
    Deny(String),
}

impl From<wit::Authorization> for Authorization {
    fn from(a: wit::Authorization) -> Self {
        match a {
            wit::Authorization::Allow => Authorization::Allow,
            wit::Authorization::Deny(reason) => Authorization::Deny(reason),
        }
    }
}
