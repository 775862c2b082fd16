//! Files that may change under a running gateway (the listener's certificate, a JWKS
//! file, the config itself): told apart from their neighbours, read once they settle.
//!
//! The watch is on each file's directory, not the file: editors and `mv` replace a
//! file (a new inode a watch on the old one would miss), and Kubernetes updates a
//! mounted Secret or ConfigMap by swapping a `..data` link in that directory. The
//! directory is the one the path names, symlinks left unresolved, for the same reason.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A change is acted on once no event came for this long: writers work in steps
/// (truncate, write; a certificate, then its key).
const SETTLE_QUIET: Duration = Duration::from_millis(300);
/// A file that never settles is read after this long anyway.
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// A watch on some files; it ends when dropped.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The directory a path is in and its name there, without resolving symlinks.
fn place(path: &Path) -> Option<(PathBuf, OsString)> {
    let absolute = std::path::absolute(path).ok()?;
    Some((
        absolute.parent()?.to_path_buf(),
        absolute.file_name()?.to_os_string(),
    ))
}

impl FileWatch {
    /// Calls `on_change` (on the current runtime) after any of `paths` changed and
    /// settled. `what` names the files in the warning when they cannot be watched.
    /// `None` when no watch could be set up (logged).
    pub fn start(
        paths: &[PathBuf],
        what: &'static str,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> Option<FileWatch> {
        use notify::Watcher;
        let places: Vec<(PathBuf, OsString)> = paths.iter().filter_map(|p| place(p)).collect();
        let (tx, mut events) = mpsc::channel::<()>(16);
        let names = places.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                let ours = event.paths.iter().any(|p| {
                    names.iter().any(|(dir, name)| {
                        p.parent() == Some(dir.as_path())
                            && p.file_name().is_some_and(|f| f == name || f == "..data")
                    })
                });
                if ours {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| tracing::warn!(error = %e, what, "cannot watch files for changes"))
            .ok()?;
        let mut dirs: Vec<&PathBuf> = places.iter().map(|(d, _)| d).collect();
        dirs.dedup();
        for dir in dirs {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(error = %e, what, dir = %dir.display(), "cannot watch a directory for changes");
                return None;
            }
        }
        // On the loop, in order with reloads (which replace the watch and its files):
        // a read that could block is refused by [`read_bounded`] instead.
        let task = tokio::spawn(async move {
            while events.recv().await.is_some() {
                settle(&mut events).await;
                on_change();
            }
        });
        Some(FileWatch {
            _watcher: watcher,
            task,
        })
    }
}

/// Waits until no event came for [`SETTLE_QUIET`] (at most [`SETTLE_MAX`]).
async fn settle(events: &mut mpsc::Receiver<()>) {
    let give_up = tokio::time::Instant::now() + SETTLE_MAX;
    loop {
        tokio::time::sleep(SETTLE_QUIET).await;
        let mut more = false;
        while events.try_recv().is_ok() {
            more = true;
        }
        if !more || tokio::time::Instant::now() >= give_up {
            return;
        }
    }
}

/// Reads a file the config names (the config itself, a certificate, a key, a JWKS,
/// CA certificates), at most `limit` bytes, and only a regular file: `/dev/zero` named
/// by mistake must give an error, not an out-of-memory, and a FIFO put where a watched
/// key was must give one, not block the event loop until a writer comes. (It is opened
/// without blocking, then checked: opening a FIFO for reading waits for a writer.)
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut out = Vec::new();
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(out)
}

/// The most of a certificate, key, JWKS or CA file read.
pub const MAX_FILE: u64 = 1 << 20;
/// The most of a config file read.
pub const MAX_CONFIG: u64 = 16 << 20;
