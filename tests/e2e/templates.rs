//! `pgws guest new` in every language: the project it makes builds with its one command, and
//! `pgws guest check` and `pgws guest test` pass on the result, as a guest author would run them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::languages::build_dir;
use crate::harness::server::{pgws_command, run_cache};

fn pgws(args: &[&str], cwd: &Path) -> Output {
    pgws_command()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("pgws runs")
}

fn assert_ok(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh directory for one language's project.
fn workspace(language: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("pgws-guest-new-{language}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("workspace");
    dir
}

/// new → build.sh → guest check → guest test, in `language`.
fn new_builds_checks_and_tests(language: &str) {
    crate::harness::prereqs::check();
    let dir = workspace(language);
    let made = assert_ok(
        "pgws guest new",
        &pgws(&["guest", "new", "my-filter", "--lang", language], &dir),
    );
    let project = dir.join("my-filter");
    for file in ["wit/pgws.wit", "build.sh", "cases.json", "README.md"] {
        assert!(project.join(file).exists(), "{language}: {file}\n{made}");
    }

    let mut build = Command::new(project.join("build.sh"));
    // Where `.ci/run` installs wit-bindgen and wasm-tools, as guest/c/build.sh looks for them too.
    let path = std::env::var("PATH").unwrap_or_default();
    let home = std::env::var("HOME").unwrap_or_default();
    build.env(
        "PATH",
        format!("{path}:/var/cache/pgws/tools/bin:{home}/.cargo/bin"),
    );
    // The Rust project builds where the example guests do, so wit-bindgen is compiled once.
    build.env("CARGO_TARGET_DIR", build_dir().join("guests"));
    let built = assert_ok("build.sh", &build.output().expect("build.sh runs"));
    assert!(built.contains("built my-filter.wasm"), "{built}");
    assert!(project.join("my-filter.wasm").exists());

    let cache = run_cache().to_str().expect("utf-8 path");
    let checked = assert_ok(
        "pgws guest check",
        &pgws(
            &["--guest-cache", cache, "guest", "check", "my-filter.wasm"],
            &project,
        ),
    );
    assert!(
        checked.contains("world:         pgws:guest/filter@0.1.0"),
        "{checked}"
    );
    assert!(checked.contains("hooks:         on-notify"), "{checked}");
    assert!(checked.contains("ok: pgws would load it"), "{checked}");

    let tested = assert_ok(
        "pgws guest test",
        &pgws(
            &[
                "--guest-cache",
                cache,
                "guest",
                "test",
                "my-filter.wasm",
                "cases.json",
            ],
            &project,
        ),
    );
    let passed = tested.lines().filter(|l| l.starts_with("pass ")).count();
    assert_eq!(passed, 3, "{tested}");
    assert!(tested.contains("3 cases, 0 failed"), "{tested}");

    // A second project in the same place is refused rather than written over.
    let again = pgws(&["guest", "new", "my-filter", "--lang", language], &dir);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn guest_new_rust() {
    new_builds_checks_and_tests("rust");
}

#[test]
fn guest_new_js() {
    new_builds_checks_and_tests("js");
}

#[test]
fn guest_new_python() {
    new_builds_checks_and_tests("python");
}

#[test]
fn guest_new_c() {
    new_builds_checks_and_tests("c");
}
