//! Routes each message to the topic named by its `kind` field.
//!
//! `{"kind": "orders", ...}` goes to topic `orders` unchanged. A message with `"priority": "high"`
//! also goes to topic `alerts`, as a short summary body. A message without a usable `kind` is dropped.

wit_bindgen::generate!({ path: "../../../wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::log::{log, Level};
use pgws::guest::types::{Notification, Route, Verdict};
use serde_json::{json, Value};

struct Router;

impl Guest for Router {
    fn on_notify(n: Notification) -> Verdict {
        let Ok(value) = serde_json::from_str::<Value>(&n.body) else {
            return Verdict::Reject("body is not JSON".into());
        };
        let Some(kind) = value.get("kind").and_then(Value::as_str) else {
            log(Level::Debug, "no `kind` field; dropped");
            return Verdict::Drop;
        };
        let mut routes = vec![Route {
            topic: kind.to_owned(),
            body: None,
        }];
        if value.get("priority").and_then(Value::as_str) == Some("high") {
            let summary = json!({ "alert": kind, "id": value.get("id") });
            routes.push(Route {
                topic: "alerts".into(),
                body: Some(summary.to_string()),
            });
        }
        Verdict::Route(routes)
    }
}

export!(Router);
