//! Lets through only bodies of the expected shape, and says why it refuses the rest.
//!
//! Expected: a JSON object with `id` (an integer) and `kind` (a non-empty string); `data`, if
//! present, must be an object. Anything else is rejected with a reason the host logs and counts.

wit_bindgen::generate!({ path: "../../../wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::types::{Notification, Verdict};
use serde_json::Value;

struct Validator;

fn check(body: &str) -> Result<(), String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("body must be a JSON object")?;
    match object.get("id") {
        Some(v) if v.is_i64() || v.is_u64() => {}
        Some(_) => return Err("field `id` must be an integer".into()),
        None => return Err("missing required field `id`".into()),
    }
    match object.get("kind") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(_) => return Err("field `kind` must be a non-empty string".into()),
        None => return Err("missing required field `kind`".into()),
    }
    if let Some(data) = object.get("data") {
        if !data.is_object() {
            return Err("field `data` must be an object".into());
        }
    }
    Ok(())
}

impl Guest for Validator {
    fn on_notify(n: Notification) -> Verdict {
        match check(&n.body) {
            Ok(()) => Verdict::Forward,
            Err(reason) => Verdict::Reject(reason),
        }
    }
}

export!(Validator);
