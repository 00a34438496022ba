wit_bindgen::generate!({ path: "wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::types::{Notification, Verdict};
use serde_json::Value;

struct MyGuest;

impl Guest for MyGuest {
    fn on_notify(n: Notification) -> Verdict {
        // Any JSON reads without a panic; what cannot be read is refused, never forwarded unread.
        match serde_json::from_str::<Value>(&n.body) {
            Ok(v) if v.get("internal") == Some(&Value::Bool(true)) => Verdict::Drop,
            Ok(_) => Verdict::Forward,
            Err(e) => Verdict::Reject(format!("cannot read the body: {e}")),
        }
    }
}

export!(MyGuest);
