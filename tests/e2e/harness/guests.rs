//! Example guests built from their sources in `guest/<language>/`, once per test process.
//!
//! `guest/languages` lists the languages; each one's `build.sh <out-dir>` writes `<guest>.wasm` files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Root of the repository.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The languages listed in `guest/languages`.
pub fn languages() -> Vec<String> {
    std::fs::read_to_string(repo().join("guest/languages"))
        .expect("guest/languages")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Builds one language's example guests (once per process) and returns the directory holding them.
pub fn built(language: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .expect("build lock");
    if let Some(dir) = built.get(language) {
        return dir.clone();
    }
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let out = base.join("guests-out").join(language);
    let mut cmd = Command::new(repo().join("guest").join(language).join("build.sh"));
    cmd.arg(&out);
    if language == "rust" {
        cmd.env("CARGO_TARGET_DIR", base.join("guests"));
    }
    let status = cmd.status().expect("running build.sh");
    assert!(status.success(), "building the {language} guests failed");
    built.insert(language.to_owned(), out.clone());
    out
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
