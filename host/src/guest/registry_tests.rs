//! The registry's bookkeeping, with modules that cannot load (no component is built here).

use super::*;
use crate::guest::GuestLimits;
use std::time::Duration;

fn registry() -> GuestRegistry {
    let limits = GuestLimits {
        timeout: Duration::from_millis(100),
        memory_bytes: 16 << 20,
        max_output: 1 << 16,
        max_routes: 8,
    };
    GuestRegistry::new(GuestRuntime::new(limits, None).expect("runtime"))
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant")
}

#[test]
fn file_names_name_their_targets() {
    let target = |p: &str| GuestTarget::from_path(Path::new(p));
    assert_eq!(
        target("g/acme.wasm"),
        Some(GuestTarget::Tenant(tenant("acme")))
    );
    assert_eq!(target("g/_default.wasm"), Some(GuestTarget::Default));
    assert_eq!(target("g/acme.wat"), None);
    assert_eq!(target("g/bad name.wasm"), None);
    assert_eq!(target("g/acme.wasm.tmp"), None);
}

/// A temporary directory, removed when dropped (also when an assertion fails).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest that was asked for and could not be loaded serves nothing: its tenant fails closed
/// (`NotLoaded`, not "no guest").
#[test]
fn a_refused_file_fails_its_tenant_closed() {
    let temp =
        TempDir(std::env::temp_dir().join(format!("pgws-registry-test-{}", std::process::id())));
    let dir = &temp.0;
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("acme.wasm"), b"not a component").expect("write");
    std::fs::write(dir.join("notes.txt"), b"ignored").expect("write");
    let registry = registry();
    assert_eq!(registry.load_dir(dir).expect("readable dir"), 0);
    assert!(matches!(
        registry.lookup(&tenant("acme")),
        Lookup::NotLoaded
    ));
    assert!(matches!(registry.lookup(&tenant("other")), Lookup::None));
    assert_eq!(registry.not_loaded(), ["acme"]);

    // A refused upload changes nothing either, and there is nothing to roll back to.
    assert!(registry
        .load(GuestTarget::Tenant(tenant("other")), b"\0asm junk")
        .is_err());
    assert!(matches!(registry.lookup(&tenant("other")), Lookup::None));
    assert!(registry
        .rollback(&GuestTarget::Tenant(tenant("other")))
        .is_none());

    // The file gone: the tenant is back to no guest at all.
    std::fs::remove_file(dir.join("acme.wasm")).expect("remove");
    registry.reload_path(&dir.join("acme.wasm"));
    assert!(
        registry.not_loaded().is_empty(),
        "{:?}",
        registry.not_loaded()
    );
    assert!(matches!(registry.lookup(&tenant("acme")), Lookup::None));
}
