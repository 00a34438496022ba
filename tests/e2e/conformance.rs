//! Guests in any language: one table of inputs and expected verdicts (`guest/conformance.json`) that
//! every language's example guests must pass against the real host runtime, and one end-to-end run
//! per language. A new language is a folder under `guest/` and a line in `guest/languages`.

use std::collections::HashMap;

use pgws::guest::{GuestInstance, GuestLimits, GuestRuntime, NotificationRef, Verdict};
use serde_json::{json, Value};

use crate::harness::guests::{built, guest_dir, languages};
use crate::harness::{notify, spawn_with_guests, Client};

/// The verdict as JSON, bodies parsed, so languages that space or order keys differently compare
/// equal (as `pgws guest test` compares them).
fn as_json(v: &Verdict) -> Value {
    pgws::guest::cases::verdict_json(v)
}

/// Every language's passthrough, validator, reshaper and router give the table's verdicts.
#[tokio::test(flavor = "multi_thread")]
async fn every_language_passes_the_conformance_table() -> anyhow::Result<()> {
    let table: Value = serde_json::from_str(&std::fs::read_to_string(
        crate::harness::guests::repo().join("guest/conformance.json"),
    )?)?;
    let cases = table["cases"].as_array().expect("cases");
    let cache = std::env::temp_dir().join("pgws-test-wasm-cache");
    let runtime = GuestRuntime::new(GuestLimits::default(), Some(cache))?;
    let mut failures = Vec::new();
    for language in languages() {
        let dir = tokio::task::spawn_blocking({
            let language = language.clone();
            move || built(&language)
        })
        .await?;
        let mut instances: HashMap<String, GuestInstance> = HashMap::new();
        for case in cases {
            let guest = case["guest"].as_str().expect("guest").to_owned();
            if !instances.contains_key(&guest) {
                let bytes = std::fs::read(dir.join(format!("{guest}.wasm")))?;
                let module = runtime
                    .compile(&bytes)
                    .map_err(|e| anyhow::anyhow!("{language}/{guest}: {e}"))?;
                instances.insert(
                    guest.clone(),
                    GuestInstance::new(&runtime, &module, "t").await?,
                );
            }
            let instance = instances.get_mut(&guest).expect("instance");
            let body = case["body"].to_string();
            let n = NotificationRef {
                tenant: case["tenant"].as_str().unwrap_or("acme"),
                topic: case["topic"].as_str(),
                channel: "pgwebsocket",
                body: &body,
            };
            let got = instance
                .on_notify(&runtime, &n)
                .await
                .map(|v| as_json(&v))
                .unwrap_or_else(|e| json!({ "failed": e.to_string() }));
            if got != case["expect"] {
                failures.push(format!(
                    "{language}/{guest} on {body}: expected {}, got {got}",
                    case["expect"]
                ));
            }
        }
        eprintln!("conformance: {language} ran {} cases", cases.len());
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// End to end in every language at once: NOTIFY → that language's reshaper (one tenant per language)
/// → WebSocket client.
#[tokio::test(flavor = "multi_thread")]
async fn each_language_end_to_end() -> anyhow::Result<()> {
    let langs = languages();
    let mut entries = Vec::new();
    for language in &langs {
        let language = language.clone();
        let dir = tokio::task::spawn_blocking(move || built(&language)).await?;
        entries.push(dir.join("reshaper.wasm"));
    }
    let named: Vec<(&str, &std::path::Path)> = langs
        .iter()
        .map(String::as_str)
        .zip(entries.iter().map(|p| p.as_path()))
        .collect();
    let dir = guest_dir(&named);
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    for language in &langs {
        let mut c = Client::connect(&server.ws_url(&format!("?tenant={language}"))).await?;
        notify(
            &sql,
            &format!(r#"{language},{{"usr":"ann","password":"x","n":1}}"#),
        )
        .await?;
        assert_eq!(
            c.recv_json().await?,
            json!({"user": "ann", "n": 1, "tenant": language}),
            "{language} reshaper end to end"
        );
        // Exactly one frame per message: the next is this marker's.
        notify(&sql, &format!(r#"{language},{{"end":1}}"#)).await?;
        assert_eq!(
            c.recv_json().await?,
            json!({"end": 1, "tenant": language}),
            "{language}"
        );
    }
    Ok(())
}

/// Whether a verdict meets an expectation of `guest/snippets.json`: a verdict, `{"reject_prefix": …}`,
/// or a list of acceptable ones.
fn meets(expect: &Value, got: &Verdict) -> bool {
    match expect {
        Value::Array(any) => any.iter().any(|e| meets(e, got)),
        Value::Object(o) if o.contains_key("reject_prefix") => matches!(
            got,
            Verdict::Reject(r) if r.starts_with(o["reject_prefix"].as_str().unwrap_or_default())
        ),
        _ => {
            let got = match got {
                // A body that is not JSON meets no expectation (and must not panic here).
                Verdict::Replace(b) if serde_json::from_str::<Value>(b).is_err() => return false,
                other => as_json(other),
            };
            &got == expect
        }
    }
}

/// The guest README's JavaScript, Python and Rust snippets, built exactly as the page shows them,
/// read JSON of every odd shape without trapping, and refuse what they cannot read exactly.
#[tokio::test(flavor = "multi_thread")]
async fn readme_snippets_survive_any_json() -> anyhow::Result<()> {
    let repo = crate::harness::guests::repo();
    let readme = std::fs::read_to_string(repo.join("guest/README.md"))?;
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join("guest/snippets.json"))?)?;
    let cases = table["cases"].as_array().expect("cases");
    // The compiled-code cache the conformance table uses: a large component (Python's is 18 MB)
    // is compiled once, not on every run.
    let cache = std::env::temp_dir().join("pgws-test-wasm-cache");
    let runtime = GuestRuntime::new(GuestLimits::default(), Some(cache))?;
    let mut failures = Vec::new();
    for (language, source, kind) in [
        ("js", "guest/js/snippet.js", "stamper"),
        ("python", "guest/python/snippet.py", "stamper"),
        ("rust", "guest/rust/snippet/src/lib.rs", "filter"),
    ] {
        let text = std::fs::read_to_string(repo.join(source))?;
        assert!(
            readme.contains(&text),
            "guest/README.md shows {source} exactly as it is built"
        );
        let dir = tokio::task::spawn_blocking(move || built(language)).await?;
        let module = runtime
            .compile(&std::fs::read(dir.join("snippet.wasm"))?)
            .map_err(|e| anyhow::anyhow!("{language} snippet: {e}"))?;
        let mut instance = None;
        for case in cases {
            let body = case["body_text"].as_str().expect("body_text");
            // A fresh instance after every failure: a trap in one case must not hide the next.
            // Otherwise one instance serves case after case, as the server reuses a tenant's warm
            // instance. (Instantiating Python's component per case was most of this test's time.)
            if instance.is_none() {
                instance = Some(GuestInstance::new(&runtime, &module, "acme").await?);
            }
            let current = instance.as_mut().expect("an instance");
            let n = NotificationRef {
                tenant: "acme",
                topic: None,
                channel: "pgwebsocket",
                body,
            };
            let shown = body.chars().take(60).collect::<String>();
            match current.on_notify(&runtime, &n).await {
                Ok(v) if meets(&case[kind], &v) => {}
                Ok(v) => failures.push(format!(
                    "{language} on {shown}: expected {}, got {v:?}",
                    case[kind]
                )),
                Err(e) => {
                    failures.push(format!("{language} on {shown}: {e}"));
                    instance = None;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "snippet failures:\n{}",
        failures.join("\n")
    );
    Ok(())
}
