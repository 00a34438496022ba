//! The generated WIT bindings, and the one place that maps them to host types.
//!
//! `bindgen!` runs here and nowhere else; the rest of the host speaks [`Verdict`] and
//! [`NotificationRef`], never the generated paths. It does not call guests (see `instance`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "pgws:guest/filter",
});

pub use pgws::guest::log::{Host as LogHost, Level as LogLevel};
use pgws::guest::types as wit;

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
