//! Noticing that an HTTP client has hung up while its request waits.
//!
//! actix-web keeps polling a handler after the client disconnects
//! (actix/actix-web#1313, #3462), so a lock waiter would otherwise stay queued
//! and be granted a slot nobody will use until its lease runs out. Each
//! connection's socket is recorded at accept time; while a request waits, its
//! socket is on a watch list that one sweeper checks with a single `poll(2)`
//! for `POLLRDHUP` (the peer closed or reset). One syscall per sweep for all
//! waiters: no extra descriptor and no reactor registration per waiter.

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
pub fn record_peer_socket(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(PeerSocket(stream.as_raw_fd()));
    }
}

/// Sockets of waiting requests, each with the signal to fire when its peer goes.
#[derive(Default)]
struct WatchList {
    entries: Mutex<HashMap<u64, (RawFd, oneshot::Sender<()>)>>,
    next_id: AtomicU64,
}

impl WatchList {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (RawFd, oneshot::Sender<()>)>> {
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
        let mut fds: Vec<libc::pollfd> = ids
            .iter()
            .map(|id| libc::pollfd {
                fd: entries[id].0,
                events: libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs; timeout 0 never blocks.
        // Every fd is open: an entry is removed (under this lock) before its request can finish.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if ready <= 0 {
            return;
        }
        for (id, pollfd) in ids.iter().zip(&fds) {
            if pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL)
                != 0
                && let Some((_, gone)) = entries.remove(id)
            {
                let _ = gone.send(());
            }
        }
    }
}

fn watch_list() -> &'static Arc<WatchList> {
    static LIST: OnceLock<Arc<WatchList>> = OnceLock::new();
    LIST.get_or_init(|| {
        let list = Arc::new(WatchList::default());
        let sweeper = Arc::clone(&list);
        // A plain thread: it must run whatever runtime the waiters live on.
        std::thread::Builder::new()
            .name("peer-sweeper".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(SWEEP_EVERY);
                    sweeper.sweep();
                }
            })
            .expect("spawn the peer sweeper thread");
        list
    })
}

/// Removes the socket from the watch list when the wait ends, however it ends.
struct Watched(u64);

impl Drop for Watched {
    fn drop(&mut self) {
        watch_list().lock().remove(&self.0);
    }
}

/// Resolves when the client of `request` has closed or reset its connection;
/// never resolves when that cannot be known.
pub async fn client_gone(request: &HttpRequest) {
    let Some(PeerSocket(fd)) = request.conn_data::<PeerSocket>().copied() else {
        return std::future::pending().await;
    };
    let list = watch_list();
    let (gone, signal) = oneshot::channel();
    let id = list.next_id.fetch_add(1, Ordering::Relaxed);
    list.lock().insert(id, (fd, gone));
    let _watched = Watched(id);
    if signal.await.is_err() {
        std::future::pending::<()>().await;
    }
}
