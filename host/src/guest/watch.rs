//! Follows the guest directory: a `<tenant>.wasm` added, replaced or removed is reloaded or unloaded
//! while the server runs.
//!
//! Owns the file watcher thread and its debounce. Editors and `cp` write a file in several steps, so
//! events are gathered until the directory has been quiet for [`QUIET`], and only then is each changed
//! file read; a file caught half-written fails to compile and is refused (the old version keeps
//! serving), and the write's last event loads it whole. Renaming a finished file into place is the
//! cleanest way to deploy. Only events that can change a file's content or readability count
//! (create, data, name or metadata changes, removal); opening or reading a file — the registry's own
//! read included — does not, or every load would schedule the next one. It does not compile or swap guests itself, nor decide
//! whether a file changed (`registry` compares content).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::registry::GuestRegistry;

/// How long the directory must be quiet before changed files are read.
const QUIET: Duration = Duration::from_millis(100);

/// Starts watching `dir` on a thread of its own until `shutdown` is cancelled.
pub fn watch_dir(
    registry: Arc<GuestRegistry>,
    dir: PathBuf,
    shutdown: CancellationToken,
) -> notify::Result<()> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("pgws-guest-watch".into())
        .spawn(move || {
            // The watcher lives as long as this thread.
            let _watcher = watcher;
            let mut changed = BTreeSet::new();
            loop {
                // Wait for the first event (checking now and then for shutdown), then gather more
                // until the directory is quiet.
                let wait = if changed.is_empty() {
                    Duration::from_millis(250)
                } else {
                    QUIET
                };
                match rx.recv_timeout(wait) {
                    Ok(Ok(event)) => {
                        if can_change_content(&event.kind) {
                            changed.extend(event.paths);
                        }
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, dir = %dir.display(), "guest directory watch error");
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if shutdown.is_cancelled() {
                    break;
                }
                for path in std::mem::take(&mut changed) {
                    registry.reload_path(&path);
                }
            }
            tracing::debug!("guest directory watch stopped");
        })
        .map_err(notify::Error::io)?;
    Ok(())
}

/// Whether an event may have changed what a path holds (or whether it can be read). Access (open,
/// read, close without write) cannot.
fn can_change_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        // Metadata changes count too: `chmod` can make an unreadable guest file readable (inotify
        // does not say which metadata changed). Content that did not change is skipped by the
        // registry's digest, so an access-time update costs one read at most.
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) => true,
        // A file closed after writing is complete: the best moment to read it.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Any => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, MetadataKind, ModifyKind};

    #[test]
    fn reads_do_not_count_as_changes() {
        assert!(!can_change_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!can_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(
            can_change_content(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))),
            "chmod can make an unreadable file readable"
        );
        assert!(can_change_content(&EventKind::Create(CreateKind::File)));
        assert!(can_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
    }
}
