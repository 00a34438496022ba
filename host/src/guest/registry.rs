//! Which guest serves which tenant, and the history needed to roll a swap back.
//!
//! Owns the tenant → [`GuestModule`] map, the default guest, each entry's previous version, and the
//! guests that were meant to serve but were refused. Replacing an entry is one pointer swap under a
//! short write lock, so a message already handed to the old module finishes on it and the next one
//! sees the new module. Compiling happens before the lock is taken, so a slow or bad component never
//! blocks the message path, and a bad one never replaces a good one.
//!
//! Fail closed: a guest file that was refused when no earlier version of it serves leaves its target
//! [`Lookup::NotLoaded`] — the operator asked for a policy that is not running, so the tenant's
//! messages follow the failure policy instead of passing unfiltered (or through `_default`).
//!
//! Two sources change guests, the guest directory and the admin API, and the last change wins
//! whichever made it: a file is (re)loaded only when its content differs from the content last seen
//! at that path, so reading a file, touching it or re-saving the same bytes never undoes an admin
//! upload, and a refused file is refused (and logged) once per distinct content. It does not run
//! guests (`workers`) or watch files (`watch`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

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

/// A loaded guest, the one it replaced, or why the one meant to serve was refused.
#[derive(Default)]
struct Entry {
    current: Option<Arc<GuestModule>>,
    previous: Option<Arc<GuestModule>>,
    /// Set while no version serves because the last file given was refused.
    refused: Option<Refusal>,
}

/// A guest file that could not be loaded while nothing else served its target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub version: String,
    pub error: String,
}

/// Who serves a tenant's messages.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// This guest.
    Guest(Arc<GuestModule>),
    /// A guest was meant to, but its file was refused and no earlier version exists: fail closed.
    NotLoaded,
    /// No guest at all: messages pass unchanged.
    None,
}

/// One row of [`GuestRegistry::list`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuestInfo {
    pub guest: String,
    /// `serving`, or `not_loaded` (its file was refused; its messages follow the failure policy).
    pub state: &'static str,
    pub version: Option<String>,
    pub bytes: Option<usize>,
    /// Unix time, in seconds.
    pub loaded_at: Option<u64>,
    pub compile_ms: Option<u64>,
    /// Whether the compiled code came from `--guest-cache`.
    pub from_cache: Option<bool>,
    /// Failed calls (traps, timeouts, caps) of this version.
    pub failures: u64,
    pub previous_version: Option<String>,
    pub hooks: Vec<&'static str>,
    /// Why the guest file was refused, while nothing serves.
    pub refused: Option<Refusal>,
}

/// The live mapping from tenants to guests, shared by the workers.
pub struct GuestRegistry {
    runtime: GuestRuntime,
    /// Read once per message, written only on a swap: an uncontended read lock costs less than the
    /// guest call it precedes.
    guests: RwLock<HashMap<GuestTarget, Entry>>,
    /// Digest of the content last seen at each guest file, loaded or refused. Bounded by the guest
    /// files of one directory.
    seen_files: Mutex<HashMap<PathBuf, String>>,
    /// Changes begun per target. Compiles run concurrently and finish in any order; one that
    /// finishes after a later change to its target began is dropped, so the last change asked for
    /// is the one that stays. Bounded by the targets ever named.
    changes: Mutex<HashMap<GuestTarget, u64>>,
}

impl GuestRegistry {
    pub fn new(runtime: GuestRuntime) -> Self {
        GuestRegistry {
            runtime,
            guests: RwLock::default(),
            seen_files: Mutex::default(),
            changes: Mutex::default(),
        }
    }

    pub fn runtime(&self) -> &GuestRuntime {
        &self.runtime
    }

    /// Who serves `tenant`: its own guest, else the default, else none. A refused guest file of the
    /// tenant (or, for a tenant without its own, of the default) makes it [`Lookup::NotLoaded`].
    pub fn lookup(&self, tenant: &TenantId) -> Lookup {
        let guests = self.read();
        let own = guests.get(&GuestTarget::Tenant(tenant.clone()));
        let entry = match own {
            Some(e) if e.current.is_some() || e.refused.is_some() => Some(e),
            _ => guests.get(&GuestTarget::Default),
        };
        match entry {
            Some(Entry {
                current: Some(m), ..
            }) => Lookup::Guest(m.clone()),
            Some(Entry {
                refused: Some(_), ..
            }) => Lookup::NotLoaded,
            _ => Lookup::None,
        }
    }

    /// The version currently serving `target` itself (not through the default).
    pub fn current(&self, target: &GuestTarget) -> Option<Arc<GuestModule>> {
        self.read().get(target).and_then(|e| e.current.clone())
    }

    /// Targets whose guest file was refused and that nothing serves.
    pub fn not_loaded(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .read()
            .iter()
            .filter(|(_, e)| e.current.is_none() && e.refused.is_some())
            .map(|(t, _)| t.to_string())
            .collect();
        names.sort();
        names
    }

    /// Compiles `bytes` and, only if that succeeds, makes it serve `target`; the replaced version
    /// is kept for [`rollback`](Self::rollback).
    pub fn load(&self, target: GuestTarget, bytes: &[u8]) -> Result<Arc<GuestModule>, LoadError> {
        self.change(target, bytes, false)
    }

    /// [`load`](Self::load), and for a guest file (`from_file`) a refusal is also remembered, so
    /// its target fails closed while nothing serves it. Either only if no later change to the
    /// target began meanwhile.
    fn change(
        &self,
        target: GuestTarget,
        bytes: &[u8],
        from_file: bool,
    ) -> Result<Arc<GuestModule>, LoadError> {
        let change = self.begin(&target);
        let outcome = self.runtime.compile(bytes).and_then(|module| {
            super::instance::check(&self.runtime, &module).map_err(LoadError::Instantiate)?;
            Ok(module)
        });
        let label = if outcome.is_ok() { "ok" } else { "refused" };
        metrics::counter!(crate::metrics::GUEST_LOADS, "outcome" => label).increment(1);
        let mut guests = self.write();
        if !self.is_latest(&target, change) {
            return Err(LoadError::Superseded);
        }
        let entry = guests.entry(target).or_default();
        match outcome {
            Ok(module) => {
                let module = Arc::new(module);
                let replaced = entry.current.replace(module.clone());
                if replaced.is_some() {
                    entry.previous = replaced;
                }
                entry.refused = None;
                Ok(module)
            }
            Err(e) => {
                if from_file && entry.current.is_none() {
                    entry.refused = Some(Refusal {
                        version: super::runtime::short_digest(bytes),
                        error: e.to_string(),
                    });
                }
                Err(e)
            }
        }
    }

    /// Starts a change to `target`; returns its number.
    fn begin(&self, target: &GuestTarget) -> u64 {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let n = changes.entry(target.clone()).or_default();
        *n += 1;
        *n
    }

    /// Whether `change` is still the last change begun for `target`.
    fn is_latest(&self, target: &GuestTarget, change: u64) -> bool {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .is_some_and(|n| *n == change)
    }

    /// Records that the guest file for `target` cannot be read: a change like any other, so it
    /// fails closed while nothing serves the target.
    fn refuse_unreadable(&self, target: GuestTarget, error: String) {
        let change = self.begin(&target);
        let mut guests = self.write();
        if !self.is_latest(&target, change) {
            return;
        }
        let entry = guests.entry(target).or_default();
        if entry.current.is_none() {
            entry.refused = Some(Refusal {
                version: "unreadable".into(),
                error,
            });
        }
    }

    /// Stops using a guest for `target` (and forgets a refusal). Returns whether there was one.
    pub fn remove(&self, target: &GuestTarget) -> bool {
        self.begin(target);
        self.write()
            .remove(target)
            .is_some_and(|e| e.current.is_some() || e.refused.is_some())
    }

    /// Puts the previous version of `target` back. Returns the version now serving, or `None` if
    /// there is nothing to roll back to.
    pub fn rollback(&self, target: &GuestTarget) -> Option<Arc<GuestModule>> {
        self.begin(target);
        let mut guests = self.write();
        let entry = guests.get_mut(target)?;
        let previous = entry.previous.take()?;
        entry.previous = entry.current.replace(previous.clone());
        entry.refused = None;
        Some(previous)
    }

    /// Every guest that serves or was refused, sorted by name.
    pub fn list(&self) -> Vec<GuestInfo> {
        let guests = self.read();
        let mut rows: Vec<GuestInfo> = guests
            .iter()
            .filter(|(_, e)| e.current.is_some() || e.refused.is_some())
            .map(|(target, e)| {
                let m = e.current.as_ref();
                let mut hooks = Vec::new();
                if let Some(m) = m {
                    hooks.push("on-notify");
                    if m.has_client_handler() {
                        hooks.push("on-client-message");
                    }
                    if m.has_authorizer() {
                        hooks.push("authorize");
                    }
                }
                GuestInfo {
                    guest: target.to_string(),
                    state: if m.is_some() { "serving" } else { "not_loaded" },
                    version: m.map(|m| m.version.clone()),
                    bytes: m.map(|m| m.size),
                    loaded_at: m.map(|m| {
                        m.loaded_at
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                    }),
                    compile_ms: m.map(|m| m.compile_time.as_millis() as u64),
                    from_cache: m.map(|m| m.from_cache),
                    failures: m.map_or(0, |m| m.failures.load(Ordering::Relaxed)),
                    previous_version: e.previous.as_ref().map(|p| p.version.clone()),
                    hooks,
                    refused: e.refused.clone(),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.guest.cmp(&b.guest));
        rows
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

    /// Brings `target` in line with the file at `path` if its content changed since it was last
    /// seen: loads it if it exists, removes the guest if the file is gone. Logs the outcome; returns
    /// whether a new version now serves.
    pub fn reload_path(&self, path: &Path) -> bool {
        let Some(target) = GuestTarget::from_path(path) else {
            if path.extension().is_some_and(|e| e == "wasm") && path.exists() {
                tracing::warn!(
                    path = %path.display(),
                    "ignored: a guest file is named <tenant>.wasm (a valid tenant name) or _default.wasm"
                );
            }
            return false;
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let was_seen = self.seen().remove(path).is_some();
                if was_seen && self.remove(&target) {
                    tracing::info!(guest = %target, "guest file removed; guest unloaded");
                }
                return false;
            }
            Err(source) => {
                // A guest file that exists but cannot be read is a guest asked for and not
                // running: fail closed as for a refused one.
                let error = LoadError::Read {
                    path: path.to_owned(),
                    source,
                };
                tracing::error!(guest = %target, error = %error, "guest file unreadable");
                self.seen().remove(path);
                self.refuse_unreadable(target, error.to_string());
                return false;
            }
        };
        let version = super::runtime::short_digest(&bytes);
        if self
            .seen()
            .insert(path.to_owned(), version.clone())
            .as_ref()
            == Some(&version)
        {
            // Same content as last time (an open, a touch, a re-save): the file made no change, so
            // whatever the admin API did since stands.
            return false;
        }
        match self.change(target.clone(), &bytes, true) {
            Ok(module) => {
                tracing::info!(
                    guest = %target,
                    version = %module.version,
                    bytes = module.size,
                    compile_ms = module.compile_time.as_millis() as u64,
                    from_cache = module.from_cache,
                    "guest loaded"
                );
                true
            }
            Err(LoadError::Superseded) => {
                tracing::info!(guest = %target, "guest file dropped: a later change came first");
                false
            }
            Err(e) => {
                let serving = self.current(&target);
                tracing::error!(
                    guest = %target,
                    path = %path.display(),
                    version = %version,
                    error = %e,
                    serving = serving.as_ref().map_or("nothing (fails closed)", |m| m.version.as_str()),
                    "guest refused"
                );
                false
            }
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, String>> {
        self.seen_files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GuestTarget, Entry>> {
        self.guests.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The map for a change; the `pgws_guests_not_loaded` gauge is brought up to date when the
    /// change is done.
    fn write(&self) -> Written<'_> {
        Written(self.guests.write().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The guest map, write-locked; keeps the not-loaded gauge true when released.
struct Written<'a>(std::sync::RwLockWriteGuard<'a, HashMap<GuestTarget, Entry>>);

impl std::ops::Deref for Written<'_> {
    type Target = HashMap<GuestTarget, Entry>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Written<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        let not_loaded = self
            .0
            .values()
            .filter(|e| e.current.is_none() && e.refused.is_some())
            .count();
        metrics::gauge!(crate::metrics::GUESTS_NOT_LOADED).set(not_loaded as f64);
    }
}

/// Counts one failed call against the module's version (for the admin listing).
pub(crate) fn count_failure(module: &GuestModule) {
    module.failures.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
