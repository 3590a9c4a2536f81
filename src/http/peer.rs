//! Noticing that an HTTP client has hung up while its request waits.
//!
//! actix-web keeps polling a handler after the client disconnects
//! (actix/actix-web#1313, #3462), so a lock waiter would otherwise stay queued
//! and be granted a slot nobody will use until its lease runs out. Each
//! connection's socket is recorded at accept time; while a request waits, its
//! socket is on a watch list that one sweeper thread checks with a single
//! `poll(2)`: one syscall per sweep for all waiters, no extra descriptor and
//! no reactor registration per waiter.

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;
use tokio::sync::oneshot;

/// How often the watch list is checked: the longest a hung-up waiter keeps its place.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// The accepted socket of a connection, in its connection data.
#[derive(Clone, Copy)]
struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook: remembers the socket of each plain TCP connection.
pub(crate) fn record_peer_socket(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(PeerSocket(stream.as_raw_fd()));
    }
}

/// The sockets of waiting requests, each with the signal to fire when its peer goes.
#[derive(Clone, Default)]
pub(crate) struct PeerWatch {
    list: Arc<WatchList>,
}

#[derive(Default)]
struct WatchList {
    /// Watched sockets by watch id, with the signal to fire.
    entries: Mutex<HashMap<u64, (RawFd, oneshot::Sender<()>)>>,
    /// The next watch id.
    next_id: AtomicU64,
}

impl WatchList {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (RawFd, oneshot::Sender<()>)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks every watched socket once and fires the signals of those whose peer left.
    fn sweep(&self) {
        let mut entries = self.lock();
        if entries.is_empty() {
            return;
        }
        let ids: Vec<u64> = entries.keys().copied().collect();
        let fds: Vec<RawFd> = ids.iter().map(|id| entries[id].0).collect();
        // Every fd is open: an entry is removed (under this lock) before its request can finish.
        let gone = sys::peers_gone(&fds);
        for (id, gone) in ids.iter().zip(gone) {
            if gone && let Some((_, signal)) = entries.remove(id) {
                let _ = signal.send(());
            }
        }
    }
}

/// Stops the sweeper thread when dropped (at shutdown).
pub(crate) struct SweeperGuard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl PeerWatch {
    /// A watch list and its sweeper thread, which runs until the guard drops.
    /// A plain thread: it must run whatever runtime the waiters live on.
    pub(crate) fn start() -> std::io::Result<(Self, SweeperGuard)> {
        let watch = Self::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (list, stopping) = (Arc::clone(&watch.list), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("peer-sweeper".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    std::thread::park_timeout(SWEEP_EVERY);
                    list.sweep();
                }
            })?;
        Ok((
            watch,
            SweeperGuard {
                stop,
                thread: Some(thread),
            },
        ))
    }

    /// Resolves when the client of `request` has closed or reset its
    /// connection; never resolves when that cannot be known.
    pub(crate) async fn client_gone(&self, request: &HttpRequest) {
        let Some(PeerSocket(fd)) = request.conn_data::<PeerSocket>().copied() else {
            return std::future::pending().await;
        };
        let (gone, signal) = oneshot::channel();
        let id = self.list.next_id.fetch_add(1, Ordering::Relaxed);
        self.list.lock().insert(id, (fd, gone));
        let _watched = Watched(&self.list, id);
        if signal.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Removes the socket from the watch list when the wait ends, however it ends.
struct Watched<'a>(&'a WatchList, u64);

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// The one `unsafe` use of a raw descriptor, behind a safe function.
mod sys {
    use std::os::fd::{BorrowedFd, RawFd};

    use rustix::event::{PollFd, PollFlags, Timespec, poll};

    /// What a peer that went away raises: on Linux also `POLLRDHUP` (the
    /// peer closed its side); elsewhere only a reset or hang-up is seen.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const WATCHED: PollFlags = PollFlags::RDHUP;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const WATCHED: PollFlags = PollFlags::empty();

    /// For each socket, whether its peer has gone; one `poll(2)`, never blocking.
    pub(super) fn peers_gone(fds: &[RawFd]) -> Vec<bool> {
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|&fd| {
                // SAFETY: the callers hold the fds of live connections (see
                // `WatchList::sweep`); poll(2) only reads their state.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                PollFd::from_borrowed_fd(fd, WATCHED)
            })
            .collect();
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if poll(&mut polled, Some(&now)).unwrap_or(0) == 0 {
            return vec![false; fds.len()];
        }
        let gone = WATCHED | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
        polled
            .iter()
            .map(|p| p.revents().intersects(gone))
            .collect()
    }
}
