//! A guest that misbehaves on request, for testing that the host contains it.
//!
//! The body's `do` field picks the behaviour: `trap` (panics), `loop` (never returns), `spin` (keeps
//! the CPU busy for the body's `ms`, default 80, then forwards: a legal but slow guest), `sleep` (waits
//! `ms` without running, through WASI's clock), `bomb` (grows
//! memory without end), `huge` (returns a 1 MiB body, over the default output cap), `escape` (tries to
//! read a file, an environment variable and the network, and reports what it got). Anything else is
//! forwarded unchanged.

wit_bindgen::generate!({ path: "../../../wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::types::{Notification, Verdict};
use serde_json::{json, Value};

struct Misbehave;

fn outcome<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => format!("error: {e}"),
    }
}

impl Guest for Misbehave {
    fn on_notify(n: Notification) -> Verdict {
        let value: Value = serde_json::from_str(&n.body).unwrap_or(Value::Null);
        match value.get("do").and_then(Value::as_str) {
            Some("trap") => panic!("asked to trap"),
            Some("loop") => loop {
                std::hint::black_box(());
            },
            Some("spin") => {
                let ms = value.get("ms").and_then(Value::as_u64).unwrap_or(80);
                let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                while std::time::Instant::now() < until {
                    std::hint::black_box(());
                }
                Verdict::Forward
            }
            Some("sleep") => {
                let ms = value.get("ms").and_then(Value::as_u64).unwrap_or(60_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Verdict::Forward
            }
            Some("bomb") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("huge") => Verdict::Replace(format!("\"{}\"", "x".repeat(1 << 20))),
            Some("escape") => {
                let report = json!({
                    "file": outcome(std::fs::read_to_string("/etc/passwd")),
                    "dir": outcome(std::fs::read_dir("/").map(|d| d.count())),
                    "env": outcome(std::env::var("HOME")),
                    "env_count": std::env::vars().count(),
                    "args_count": std::env::args().count(),
                    "net": outcome(std::net::TcpStream::connect("127.0.0.1:5432")),
                });
                Verdict::Replace(report.to_string())
            }
            _ => Verdict::Forward,
        }
    }
}

export!(Misbehave);
