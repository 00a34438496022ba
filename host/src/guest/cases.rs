//! Offline guest tests, as `pgws guest test` runs them: notifications through a guest's `on-notify`
//! in the server's own sandbox and limits, each verdict compared with what a case expects. The case
//! format is the project's conformance table (`guest/conformance.json`): `{"cases": [{"guest"?,
//! "tenant"?, "topic"?, "channel"?, "body", "expect"?}]}`, with `expect` one of `"forward"`, `"drop"`,
//! `{"reject": reason}`, `{"replace": json}`, `{"route": [{"topic", "body": json or null}]}`. Bodies
//! compare as JSON values, so key order and spacing do not matter.

use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::bindings::{NotificationRef, Verdict};
use super::instance::GuestInstance;
use super::runtime::GuestRuntime;

/// One notification for the guest and, maybe, what it should become.
#[derive(Debug, Clone)]
pub struct Case {
    pub tenant: String,
    pub topic: Option<String>,
    pub channel: String,
    /// The body as JSON text.
    pub body: String,
    pub expect: Option<Value>,
}

/// What became of one case.
#[derive(Debug)]
pub struct Outcome {
    /// The verdict as JSON (bodies parsed), or `{"failed": reason}` when the call failed.
    pub got: Value,
    pub time: Duration,
    /// Whether it met its expectation; `None` without one.
    pub passed: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected {{\"cases\": [...]}} or a list of cases")]
    Shape,
    #[error("case {index}: {message}")]
    Case { index: usize, message: String },
}

/// One case as written; the body kept as its text, so the guest sees it byte for byte.
#[derive(serde::Deserialize)]
struct Written {
    guest: Option<String>,
    tenant: Option<String>,
    topic: Option<String>,
    channel: Option<String>,
    body: Option<Box<RawValue>>,
    expect: Option<Value>,
}

/// `{"cases": [...]}` (what the conformance table is); a plain list works too.
#[derive(serde::Deserialize)]
struct Table {
    cases: Vec<Box<RawValue>>,
}

/// The cases of a cases file meant for `guest` (cases naming another guest are left out).
pub fn parse_cases(text: &str, guest: &str) -> Result<Vec<Case>, CasesError> {
    // Raw values do not survive serde's untagged enums, so each shape is tried in turn.
    let list = match serde_json::from_str::<Table>(text) {
        Ok(table) => table.cases,
        Err(_) => match serde_json::from_str::<Vec<Box<RawValue>>>(text) {
            Ok(list) => list,
            Err(_) => {
                serde_json::from_str::<Value>(text)?;
                return Err(CasesError::Shape);
            }
        },
    };
    let mut cases = Vec::new();
    for (index, raw) in list.iter().enumerate() {
        let bad = |message: String| CasesError::Case { index, message };
        let case: Written = serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
        if case.guest.as_deref().is_some_and(|g| g != guest) {
            continue;
        }
        let body = case.body.ok_or_else(|| bad("no `body`".into()))?;
        cases.push(Case {
            tenant: case.tenant.unwrap_or_else(|| "acme".into()),
            topic: case.topic,
            channel: case.channel.unwrap_or_else(|| "pgwebsocket".into()),
            body: body.get().to_owned(),
            expect: case.expect,
        });
    }
    Ok(cases)
}

/// Runs `case` on `instance` and compares.
pub async fn run_case(
    runtime: &GuestRuntime,
    instance: &mut GuestInstance,
    case: &Case,
) -> Outcome {
    let n = NotificationRef {
        tenant: &case.tenant,
        topic: case.topic.as_deref(),
        channel: &case.channel,
        body: &case.body,
    };
    let started = Instant::now();
    let result = instance.on_notify(runtime, &n).await;
    let time = started.elapsed();
    let got = match result {
        Ok(verdict) => verdict_json(&verdict),
        Err(e) => json!({ "failed": e.to_string() }),
    };
    let passed = case.expect.as_ref().map(|expect| *expect == got);
    Outcome { got, time, passed }
}

/// A verdict as the case format writes it; a body that is not JSON stays a string (and so meets no
/// expectation of a JSON body).
pub fn verdict_json(verdict: &Verdict) -> Value {
    let body = |b: &str| serde_json::from_str(b).unwrap_or_else(|_| Value::String(b.to_owned()));
    match verdict {
        Verdict::Forward => json!("forward"),
        Verdict::Drop => json!("drop"),
        Verdict::Reject(reason) => json!({ "reject": reason }),
        Verdict::Replace(b) => json!({ "replace": body(b) }),
        Verdict::Route(routes) => json!({ "route": routes.iter().map(|(topic, b)| json!({
            "topic": topic,
            "body": b.as_deref().map(body),
        })).collect::<Vec<_>>() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_for_one_guest_with_defaults() {
        let text = r#"{"cases": [
            {"guest": "validator", "body": {"id": 1}, "expect": "forward"},
            {"guest": "router", "body": 1},
            {"topic": "orders", "tenant": "t", "body": [1, 2]}
        ]}"#;
        let cases = parse_cases(text, "validator").expect("parses");
        assert_eq!(cases.len(), 2, "the router's case is left out");
        assert_eq!(
            (cases[0].tenant.as_str(), cases[0].body.as_str()),
            ("acme", r#"{"id": 1}"#),
            "the body as written"
        );
        assert_eq!(cases[0].expect, Some(json!("forward")));
        assert_eq!(
            (cases[1].topic.as_deref(), cases[1].expect.as_ref()),
            (Some("orders"), None)
        );
        assert!(matches!(
            parse_cases("[{}]", "x"),
            Err(CasesError::Case { index: 0, .. })
        ));
        assert!(matches!(parse_cases("{}", "x"), Err(CasesError::Shape)));
        assert!(parse_cases("nope", "x").is_err());
    }

    #[test]
    fn verdicts_compare_as_json() {
        let replaced = verdict_json(&Verdict::Replace(r#"{ "b": 2, "a": 1 }"#.into()));
        assert_eq!(replaced, json!({"replace": {"a": 1, "b": 2}}));
        let route = verdict_json(&Verdict::Route(vec![("eu".into(), None)]));
        assert_eq!(route, json!({"route": [{"topic": "eu", "body": null}]}));
        let broken = verdict_json(&Verdict::Replace("{".into()));
        assert_ne!(broken, json!({"replace": {}}));
    }
}
