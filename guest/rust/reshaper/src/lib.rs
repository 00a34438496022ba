//! Reshapes each body before clients see it: strips secrets, renames a field, stamps the tenant.
//!
//! - removes `password`, `secret`, `token` and every key starting with `_`, at any depth;
//! - renames the top-level `usr` to `user`;
//! - adds `"tenant": "<tenant>"` at the top level of objects.
//! Key order is kept. Non-object bodies pass through unchanged.

wit_bindgen::generate!({ path: "../../../wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::types::{Notification, Verdict};
use serde_json::{Map, Value};

struct Reshaper;

fn is_secret(key: &str) -> bool {
    matches!(key, "password" | "secret" | "token") || key.starts_with('_')
}

fn strip(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !is_secret(k));
            map.values_mut().for_each(strip);
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

impl Guest for Reshaper {
    fn on_notify(n: Notification) -> Verdict {
        let Ok(mut value) = serde_json::from_str::<Value>(&n.body) else {
            return Verdict::Reject("body is not JSON".into());
        };
        if !value.is_object() {
            return Verdict::Forward;
        }
        strip(&mut value);
        let Value::Object(map) = value else {
            return Verdict::Forward;
        };
        let mut out = Map::with_capacity(map.len() + 1);
        for (k, v) in map {
            let k = if k == "usr" { "user".to_owned() } else { k };
            out.insert(k, v);
        }
        out.insert("tenant".into(), Value::String(n.tenant));
        Verdict::Replace(Value::Object(out).to_string())
    }
}

export!(Reshaper);
