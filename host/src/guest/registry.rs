//! Which guest serves which tenant, and the history needed to roll a swap back.
//!
//! Owns the tenant → [`GuestModule`] map, the default guest, and each entry's previous version.
//! Replacing an entry is one pointer swap under a short write lock, so a message already handed to the
//! old module finishes on it and the next one sees the new module. Compiling happens before the lock is
//! taken, so a slow or bad component never blocks the message path, and a bad one never replaces a good
//! one. It does not run guests (`pipeline`) or watch files (`watch`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use super::runtime::{GuestModule, GuestRuntime, LoadError};
use crate::envelope::TenantId;

/// File stem of the guest that serves every tenant without its own.
pub const DEFAULT_GUEST: &str = "_default";

/// Whom a guest serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GuestTarget {
    Tenant(TenantId),
    Default,
}

impl GuestTarget {
    /// `<tenant>` or `_default`.
    pub fn parse(name: &str) -> Option<GuestTarget> {
        if name == DEFAULT_GUEST {
            return Some(GuestTarget::Default);
        }
        TenantId::parse(name).ok().map(GuestTarget::Tenant)
    }

    /// `<tenant>.wasm` or `_default.wasm`; any other file name is not a guest.
    pub fn from_path(path: &Path) -> Option<GuestTarget> {
        if path.extension()? != "wasm" {
            return None;
        }
        GuestTarget::parse(path.file_stem()?.to_str()?)
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

/// A loaded guest and the one it replaced.
struct Entry {
    current: Arc<GuestModule>,
    previous: Option<Arc<GuestModule>>,
}

/// One row of [`GuestRegistry::list`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuestInfo {
    pub guest: String,
    pub version: String,
    pub bytes: usize,
    /// Unix time, in seconds.
    pub loaded_at: u64,
    pub compile_ms: u64,
    /// Failed calls (traps, timeouts, caps) of this version.
    pub failures: u64,
    pub previous_version: Option<String>,
    pub hooks: Vec<&'static str>,
}

/// The live mapping from tenants to guests, shared by the pipeline workers.
pub struct GuestRegistry {
    runtime: GuestRuntime,
    /// Read once per message, written only on a swap: an uncontended read lock costs less than the
    /// guest call it precedes.
    guests: RwLock<HashMap<GuestTarget, Entry>>,
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
            .get(&GuestTarget::Tenant(tenant.clone()))
            .or_else(|| guests.get(&GuestTarget::Default))
            .map(|e| e.current.clone())
    }

    /// The version currently serving `target` itself (not through the default).
    pub fn current(&self, target: &GuestTarget) -> Option<Arc<GuestModule>> {
        let guests = self.guests.read().unwrap_or_else(|e| e.into_inner());
        guests.get(target).map(|e| e.current.clone())
    }

    /// Compiles `bytes` and, only if that succeeds, makes it serve `target`; the replaced version
    /// is kept for [`rollback`](Self::rollback).
    pub fn load(&self, target: GuestTarget, bytes: &[u8]) -> Result<Arc<GuestModule>, LoadError> {
        let outcome = self.runtime.compile(bytes);
        let label = if outcome.is_ok() { "ok" } else { "refused" };
        metrics::counter!(crate::metrics::GUEST_LOADS, "outcome" => label).increment(1);
        let module = Arc::new(outcome?);
        let mut guests = self.guests.write().unwrap_or_else(|e| e.into_inner());
        let previous = guests.remove(&target).map(|e| e.current);
        guests.insert(
            target,
            Entry {
                current: module.clone(),
                previous,
            },
        );
        Ok(module)
    }

    /// Stops using a guest for `target`. Returns whether there was one.
    pub fn remove(&self, target: &GuestTarget) -> bool {
        let mut guests = self.guests.write().unwrap_or_else(|e| e.into_inner());
        guests.remove(target).is_some()
    }

    /// Puts the previous version of `target` back. Returns the version now serving, or `None` if
    /// there is nothing to roll back to.
    pub fn rollback(&self, target: &GuestTarget) -> Option<Arc<GuestModule>> {
        let mut guests = self.guests.write().unwrap_or_else(|e| e.into_inner());
        let entry = guests.get_mut(target)?;
        let previous = entry.previous.take()?;
        entry.previous = Some(std::mem::replace(&mut entry.current, previous));
        Some(entry.current.clone())
    }

    /// Every loaded guest, sorted by name.
    pub fn list(&self) -> Vec<GuestInfo> {
        let guests = self.guests.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<GuestInfo> = guests
            .iter()
            .map(|(target, e)| {
                let m = &e.current;
                let mut hooks = vec!["on-notify"];
                if m.has_client_handler() {
                    hooks.push("on-client-message");
                }
                if m.has_authorizer() {
                    hooks.push("authorize");
                }
                GuestInfo {
                    guest: target.to_string(),
                    version: m.version.clone(),
                    bytes: m.size,
                    loaded_at: m
                        .loaded_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    compile_ms: m.compile_time.as_millis() as u64,
                    failures: m.failures.load(Ordering::Relaxed),
                    previous_version: e.previous.as_ref().map(|p| p.version.clone()),
                    hooks,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.guest.cmp(&b.guest));
        rows
    }

    /// Reads and loads one `<tenant>.wasm` / `_default.wasm` file, unless that exact version already
    /// serves it. `Ok(None)` for files that are not guests or did not change.
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
        if self
            .current(&target)
            .is_some_and(|m| m.version == super::runtime::short_digest(&bytes))
        {
            return Ok(None);
        }
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
            if self.reload_path(&path) {
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Brings `target` in line with `path`: loads it if it exists (and changed), removes the guest if
    /// the file is gone. Logs the outcome; returns whether a new version now serves.
    pub fn reload_path(&self, path: &Path) -> bool {
        let Some(target) = GuestTarget::from_path(path) else {
            tracing::debug!(path = %path.display(), "not a guest file; ignored");
            return false;
        };
        if !path.exists() {
            if self.remove(&target) {
                tracing::info!(guest = %target, "guest file removed; guest unloaded");
            }
            return false;
        }
        match self.load_file(path) {
            Ok(Some((target, module))) => {
                tracing::info!(
                    guest = %target,
                    version = %module.version,
                    bytes = module.size,
                    compile_ms = module.compile_time.as_millis() as u64,
                    "guest loaded"
                );
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(
                    guest = %target,
                    path = %path.display(),
                    error = %e,
                    "guest refused; the previous version (if any) keeps serving"
                );
                false
            }
        }
    }
}

/// Counts one failed call against the module's version (for the admin listing).
pub(crate) fn count_failure(module: &GuestModule) {
    module.failures.fetch_add(1, Ordering::Relaxed);
}
