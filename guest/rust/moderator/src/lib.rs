//! A guest with every hook (world `gatekeeper`): it moderates what clients publish and decides who
//! may connect.
//!
//! - `on-notify`: forwards unchanged;
//! - `on-client-message`: rejects bodies that mention "spam", and stamps accepted objects with
//!   `"moderated": true`;
//! - `authorize`: denies tokens whose claims say `"banned": true`.

wit_bindgen::generate!({ path: "../../../wit", world: "pgws:guest/gatekeeper" });

use exports::pgws::guest::authorizer::Guest as Authorizer;
use exports::pgws::guest::client_handler::Guest as ClientHandler;
use exports::pgws::guest::handler::Guest as Handler;
use pgws::guest::types::{
    Authorization, ClientMessage, ClientVerdict, Connection, Notification, Verdict,
};
use serde_json::Value;

struct Moderator;

impl Handler for Moderator {
    fn on_notify(_n: Notification) -> Verdict {
        Verdict::Forward
    }
}

impl ClientHandler for Moderator {
    fn on_client_message(m: ClientMessage) -> ClientVerdict {
        if m.body.to_lowercase().contains("spam") {
            return ClientVerdict::Reject("spam is not welcome here".into());
        }
        match serde_json::from_str::<Value>(&m.body) {
            Ok(Value::Object(mut map)) => {
                map.insert("moderated".into(), Value::Bool(true));
                ClientVerdict::Replace(Value::Object(map).to_string())
            }
            _ => ClientVerdict::Accept,
        }
    }
}

impl Authorizer for Moderator {
    fn authorize(c: Connection) -> Authorization {
        let claims: Value = serde_json::from_str(&c.claims).unwrap_or(Value::Null);
        if claims.get("banned") == Some(&Value::Bool(true)) {
            Authorization::Deny(format!(
                "{} is banned",
                claims["sub"].as_str().unwrap_or("user")
            ))
        } else {
            Authorization::Allow
        }
    }
}

export!(Moderator);
