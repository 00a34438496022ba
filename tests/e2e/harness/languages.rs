//! Every language's example guests, built from `guest/<language>/` with its `build.sh`.
//!
//! Shared by the integration tests and the benchmarks (`#[path]`-included), so both build guests the
//! same way. `guest/languages` lists the languages.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Root of the repository.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo builds: `CARGO_TARGET_DIR`, or `target/` in the repository.
pub fn build_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
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

/// Runs `guest/<language>/build.sh` into the target directory and returns the directory of
/// `<guest>.wasm` files. The scripts skip guests that are already up to date.
pub fn build(language: &str) -> PathBuf {
    let base = build_dir();
    let out = base.join("guests-out").join(language);
    let mut cmd = Command::new(repo().join("guest").join(language).join("build.sh"));
    cmd.arg(&out);
    if language == "rust" {
        cmd.env("CARGO_TARGET_DIR", base.join("guests"));
    }
    let status = cmd.status().expect("running build.sh");
    assert!(status.success(), "building the {language} guests failed");
    out
}
