//! What the tests need from the machine, checked once, before the first database is made: on a
//! machine that lacks something, every test fails with one message naming each missing piece and
//! how to install it, instead of a build script's error deep in one test. `.ci/run` installs all of
//! it on Debian.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Panics, listing what is missing and how to get it, unless everything is there.
pub fn check() {
    static CHECKED: OnceLock<Vec<String>> = OnceLock::new();
    let missing = CHECKED.get_or_init(missing);
    assert!(
        missing.is_empty(),
        "this machine lacks what the tests need (`.ci/run` installs all of it on Debian):\n  - {}",
        missing.join("\n  - ")
    );
}

fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    let mut need = |present: bool, what: &str| {
        if !present {
            missing.push(what.to_owned());
        }
    };
    need(
        Path::new("/usr/lib/postgresql/15/bin/initdb").exists()
            || std::env::var_os("DATABASE_URL").is_some(),
        "PostgreSQL 15 server binaries: apt-get install postgresql-15 (or set DATABASE_URL)",
    );
    need(
        runs("node", &["--version"]),
        "Node.js: apt-get install nodejs",
    );
    need(runs("npm", &["--version"]), "npm: apt-get install npm");
    need(
        runs("chromium", &["--version"]),
        "Chromium for the demo-page tests: apt-get install chromium",
    );
    need(
        runs("openssl", &["version"]),
        "openssl: apt-get install openssl",
    );
    need(
        runs(
            "python3",
            &["-c", "import socketio, aiohttp, socketIO_client"],
        ),
        "the Python socket.io clients: pip install python-socketio==5.18.1 aiohttp==3.14.5 \
         socketIO-client==0.7.2",
    );
    need(
        runs("componentize-py", &["--version"]),
        "componentize-py for the Python guests: pip install componentize-py==0.25.1",
    );
    need(
        runs("clang-14", &["--version"]) && Path::new("/usr/lib/wasm32-wasi/libc.a").exists(),
        "clang and wasi-libc for the C guests: apt-get install clang-14 lld-14 wasi-libc \
         libclang-rt-14-dev-wasm32",
    );
    need(
        tool("wit-bindgen") && tool("wasm-tools"),
        "wit-bindgen and wasm-tools for the C guests: cargo install --locked \
         wit-bindgen-cli@0.46.0 wasm-tools@1.245.1 (on PATH, in ~/.cargo/bin or \
         /var/cache/pgws/tools/bin)",
    );
    need(
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2")),
        "the Rust target for the Rust guests: rustup target add wasm32-wasip2",
    );
    missing
}

/// Whether `program args` runs and succeeds.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a cargo-installed tool is where the C guests' build script looks for it.
fn tool(name: &str) -> bool {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin").join(name));
    runs(name, &["--version"])
        || Path::new("/var/cache/pgws/tools/bin").join(name).exists()
        || home.is_some_and(|p| p.exists())
}
