//! Reloads the policies when a file in their directory is written, moved
//! in or out, or removed (inotify).

use std::{path::PathBuf, sync::Arc};

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

use super::api::Shared;

pub async fn policies(dir: PathBuf, shared: Arc<Shared>) {
    let watcher = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).and_then(|fd| {
        // Not IN_MODIFY: a file half written would be rejected first.
        let events = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::DELETE;
        inotify::add_watch(&fd, &dir, events)?;
        Ok(fd)
    });
    // SAFETY: the AsyncFd owns the inotify fd and keeps it open while registered.
    let fd = match watcher.map_err(std::io::Error::from).and_then(|fd| unsafe { Ok(AsyncFd::register(fd)?) }) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("cannot watch {} ({e}): policy changes apply only with `enforcer reload`", dir.display());
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable().await else { return };
        guard.clear_ready();
        // Editors make several events per save; each reload compares
        // hashes, so one that finds nothing new changes nothing.
        drain(fd.get_ref());
        let report = shared.core.lock().await.reload();
        super::announce_reload(&shared.notices, &report);
    }
}

/// Reads every pending event (which file changed does not matter: a reload
/// compares every file).
fn drain(fd: &std::os::fd::OwnedFd) {
    let mut buf = [0u8; 4096];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}
