//! Example guests built from their sources in `guest/`, once per test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Root of the repository.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the Rust example guests (once) and returns the directory holding `<name>.wasm`.
pub fn rust_guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| PathBuf::from(d).join("guests"))
            .unwrap_or_else(|| repo().join("guest/rust/target"));
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(repo().join("guest/rust/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("running cargo for the guests");
        assert!(status.success(), "building the Rust guests failed");
        target.join("wasm32-wasip2/release")
    })
}

/// The path of one built Rust guest.
pub fn rust_guest(name: &str) -> PathBuf {
    let path = rust_guests().join(format!("{name}.wasm"));
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
