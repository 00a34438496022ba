//! Example guests built from their sources in `guest/<language>/`, once per test process, and
//! directories of guests for a server to serve.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub use super::languages::{languages, repo};

/// Builds one language's example guests (once per process) and returns the directory holding them.
/// Each language has its own lock: a test asking for built Rust guests never waits for another
/// test's Python build.
pub fn built(language: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let once = BUILT
        .get_or_init(Default::default)
        .lock()
        .expect("build lock")
        .entry(language.to_owned())
        .or_default()
        .clone();
    once.get_or_init(|| super::languages::build(language))
        .clone()
}

/// The path of one built Rust guest.
pub fn rust_guest(name: &str) -> PathBuf {
    let path = built("rust").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A temp directory of guests: each `(tenant, guest path)` copied in as `<tenant>.wasm`.
pub fn guest_dir(entries: &[(&str, &Path)]) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pgws-test-guests-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("guest dir");
    for (tenant, path) in entries {
        std::fs::copy(path, dir.join(format!("{tenant}.wasm"))).expect("copy guest");
    }
    dir
}
