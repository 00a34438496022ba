//! Which guest serves which tenant.
//!
//! Owns the tenant → [`GuestModule`] map and the default guest. Replacing an entry is one pointer swap
//! under a short write lock, so a message already handed to the old module finishes on it and the next
//! one sees the new module. Loading (reading and compiling) happens before the lock is taken, so a slow
//! or bad component never blocks the message path. It does not run guests (`pipeline` does).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::runtime::{GuestModule, GuestRuntime, LoadError};
use crate::envelope::TenantId;

/// File stem of the guest that serves every tenant without its own.
pub const DEFAULT_GUEST: &str = "_default";

/// Whom a guest file serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuestTarget {
    Tenant(TenantId),
    Default,
}

impl GuestTarget {
    /// `<tenant>.wasm` or `_default.wasm`; any other file name is not a guest.
    pub fn from_path(path: &Path) -> Option<GuestTarget> {
        if path.extension()? != "wasm" {
            return None;
        }
        let stem = path.file_stem()?.to_str()?;
        if stem == DEFAULT_GUEST {
            return Some(GuestTarget::Default);
        }
        TenantId::parse(stem).ok().map(GuestTarget::Tenant)
    }
}

impl fmt::Display for GuestTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestTarget::Tenant(t) => write!(f, "{t}"),
            GuestTarget::Default => f.write_str(DEFAULT_GUEST),
        }
    }
}

#[derive(Default)]
struct Guests {
    by_tenant: HashMap<TenantId, Arc<GuestModule>>,
    default: Option<Arc<GuestModule>>,
}

/// The live mapping from tenants to guests, shared by the pipeline workers.
pub struct GuestRegistry {
    runtime: GuestRuntime,
    /// Read once per message, written only on a swap: an uncontended read lock costs less than the
    /// guest call it precedes.
    guests: RwLock<Guests>,
}

impl GuestRegistry {
    pub fn new(runtime: GuestRuntime) -> Self {
        GuestRegistry {
            runtime,
            guests: RwLock::default(),
        }
    }

    pub fn runtime(&self) -> &GuestRuntime {
        &self.runtime
    }

    /// The guest serving `tenant`: its own, else the default, else none (forward unchanged).
    pub fn lookup(&self, tenant: &TenantId) -> Option<Arc<GuestModule>> {
        let guests = self.guests.read().unwrap_or_else(|e| e.into_inner());
        guests
            .by_tenant
            .get(tenant)
            .or(guests.default.as_ref())
            .cloned()
    }

    /// Compiles `bytes` and, only if that succeeds, makes it serve `target`.
    pub fn load(&self, target: GuestTarget, bytes: &[u8]) -> Result<Arc<GuestModule>, LoadError> {
        let outcome = self.runtime.compile(bytes);
        let label = if outcome.is_ok() { "ok" } else { "refused" };
        metrics::counter!(crate::metrics::GUEST_LOADS, "outcome" => label).increment(1);
        let module = Arc::new(outcome?);
        let mut guests = self.guests.write().unwrap_or_else(|e| e.into_inner());
        match &target {
            GuestTarget::Tenant(t) => {
                guests.by_tenant.insert(t.clone(), module.clone());
            }
            GuestTarget::Default => guests.default = Some(module.clone()),
        }
        Ok(module)
    }

    /// Reads and loads one `<tenant>.wasm` / `_default.wasm` file.
    pub fn load_file(
        &self,
        path: &Path,
    ) -> Result<Option<(GuestTarget, Arc<GuestModule>)>, LoadError> {
        let Some(target) = GuestTarget::from_path(path) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let module = self.load(target.clone(), &bytes)?;
        Ok(Some((target, module)))
    }

    /// Loads every guest file in `dir`. A bad file is logged and skipped; the rest still load.
    /// Returns how many loaded.
    pub fn load_dir(&self, dir: &Path) -> std::io::Result<usize> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        let mut loaded = 0;
        for path in paths {
            match self.load_file(&path) {
                Ok(Some((target, module))) => {
                    loaded += 1;
                    tracing::info!(
                        guest = %target,
                        version = %module.version,
                        bytes = module.size,
                        compile_ms = module.compile_time.as_millis() as u64,
                        "guest loaded"
                    );
                }
                Ok(None) => tracing::debug!(path = %path.display(), "not a guest file; ignored"),
                Err(e) => tracing::error!(path = %path.display(), error = %e, "guest refused"),
            }
        }
        Ok(loaded)
    }
}
