//! What has become of an HTTP client while its request waits.
//!
//! actix-web keeps polling a handler after the client disconnects
//! (actix/actix-web#1313, #3462), so a lock waiter would otherwise keep its
//! place. Each connection's socket is recorded at accept time; while a
//! request waits, its socket is on a watch list that one sweeper thread
//! checks with a single `poll(2)`: one syscall per sweep for all waiters, no
//! extra descriptor and no reactor registration per waiter.
//!
//! A peer that closed only its sending side is not gone: half-close is legal
//! HTTP/1.1 and such a client still reads the answer. A peer that closed its
//! socket looks the same until something is written to it; then its reset
//! comes back. So when a waiting HTTP/1.1 peer closes its side, the sweeper
//! writes it an interim `102 Processing` (RFC 9110 §15.2: a 1.1 client must
//! accept and may ignore any 1xx): a half-closed client reads on, a closed
//! socket resets and the waiter is dropped at the next sweep. (HTTP/1.0 has
//! no 1xx, so a 1.0 peer that closes its side counts as gone.) A grant
//! answered to a half-closed peer is watched for the same reset
//! ([`PeerWatch::watch_delivery`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;
use tokio::sync::oneshot;

/// How often the watch list is checked: the longest a waiter whose client
/// reset its connection keeps its place.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// How long an answer to a half-closed peer is watched for a reset: well
/// over a round trip, and the promise "handed on within 100 ms".
const DELIVERY_WINDOW: Duration = Duration::from_millis(100);

/// The accepted socket of a connection, in its connection data, with the
/// kernel's unique cookie for it (a descriptor number can be reused).
#[derive(Clone, Copy)]
struct PeerSocket {
    fd: RawFd,
    cookie: Option<u64>,
    /// TLS runs over it: nothing may be written to it but through TLS.
    encrypted: bool,
}

/// The connection hook: remembers the TCP socket under each connection
/// (plain, or under TLS).
pub(crate) fn record_peer_socket(
    stream: &actix_web::rt::net::TcpStream,
    encrypted: bool,
    data: &mut Extensions,
) {
    data.insert(PeerSocket {
        fd: stream.as_raw_fd(),
        cookie: sys::cookie(stream),
        encrypted,
    });
}

/// What a peer has done with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Both directions open.
    Open,
    /// It closed its sending side: half-closed, or closed and not yet told.
    HalfClosed,
    /// Reset, hung up, or the socket is gone.
    Gone,
}

/// The sockets of waiting requests, each with the signal to fire when its peer goes.
#[derive(Clone, Default)]
pub(crate) struct PeerWatch {
    list: Arc<WatchList>,
}

/// A waiting request's socket: whether a 1xx may be written to it (HTTP/1.1)
/// and has been, and the signal to fire when its peer goes.
struct Watched {
    socket: PeerSocket,
    probe: Probe,
    gone: oneshot::Sender<()>,
}

/// Whether a waiting peer that closed its side gets a `102 Processing`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// HTTP/1.1, not yet probed.
    Allowed,
    /// Probed: no reset came back yet.
    Sent,
    /// HTTP/1.0 (no 1xx exists), h2 or TLS: a closed side means gone.
    Forbidden,
}

type Entries = HashMap<u64, Watched>;

#[derive(Default)]
struct WatchList {
    /// Watched sockets by watch id, with the signal to fire.
    entries: Mutex<Entries>,
    /// The next watch id.
    next_id: AtomicU64,
}

impl WatchList {
    fn lock(&self) -> MutexGuard<'_, Entries> {
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
        let sockets: Vec<PeerSocket> = ids.iter().map(|id| entries[id].socket).collect();
        let states = sys::states(&sockets);
        for (id, state) in ids.iter().zip(states) {
            let Some(entry) = entries.get_mut(id) else {
                continue;
            };
            let gone = match (state, entry.probe) {
                (PeerState::Gone, _) | (PeerState::HalfClosed, Probe::Forbidden) => true,
                // Written under the list lock: the request still waits (its
                // entry leaves the list before its answer can be written),
                // so the 1xx can never land inside the response.
                (PeerState::HalfClosed, Probe::Allowed) => {
                    entry.probe = Probe::Sent;
                    !sys::write_processing(&entry.socket)
                }
                _ => false,
            };
            if gone && let Some(entry) = entries.remove(id) {
                let _ = entry.gone.send(());
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

/// An answer written to a half-closed peer, watched for the reset that says
/// it was not read.
pub(crate) struct DeliveryWatch(sys::Duplicate);

impl DeliveryWatch {
    /// True when the peer reset the connection within [`DELIVERY_WINDOW`]:
    /// it had closed its socket, and the answer was never read.
    pub(crate) async fn refused(self) -> bool {
        self.0.reset_within(DELIVERY_WINDOW).await
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

    /// Resolves when the client of `request` has reset or hung up its
    /// connection; never resolves when that cannot be known.
    pub(crate) async fn client_gone(&self, request: &HttpRequest) {
        let Some(socket) = request.conn_data::<PeerSocket>().copied() else {
            return std::future::pending().await;
        };
        let (gone, signal) = oneshot::channel();
        // A raw 1xx fits only plain HTTP/1.1: not HTTP/1.0, not h2 framing,
        // not inside TLS records.
        let probe = if request.version() == actix_web::http::Version::HTTP_11 && !socket.encrypted {
            Probe::Allowed
        } else {
            Probe::Forbidden
        };
        let id = self.list.next_id.fetch_add(1, Ordering::Relaxed);
        self.list.lock().insert(
            id,
            Watched {
                socket,
                probe,
                gone,
            },
        );
        let _watched = Unwatch(&self.list, id);
        if signal.await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The peer's state now (`Open` when it cannot be known).
    pub(crate) fn state(&self, request: &HttpRequest) -> PeerState {
        match request.conn_data::<PeerSocket>() {
            Some(socket) => sys::states(std::slice::from_ref(socket))[0],
            None => PeerState::Open,
        }
    }

    /// Watches the answer about to be written to `request`'s peer, if the
    /// platform lets us.
    pub(crate) fn watch_delivery(&self, request: &HttpRequest) -> Option<DeliveryWatch> {
        let socket = request.conn_data::<PeerSocket>()?;
        sys::Duplicate::of(socket).map(DeliveryWatch)
    }
}

/// Removes the socket from the watch list when the wait ends, however it ends.
struct Unwatch<'a>(&'a WatchList, u64);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// The uses of raw descriptors, behind safe functions.
mod sys {
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::time::Duration;

    use rustix::event::{PollFd, PollFlags, Timespec, poll};

    use super::{PeerSocket, PeerState};

    /// The kernel's unique id of a socket (Linux), to tell a reused descriptor number.
    pub(super) fn cookie(fd: impl AsFd) -> Option<u64> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return rustix::net::sockopt::socket_cookie(fd).ok();
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = fd;
            None
        }
    }

    /// Borrows a recorded socket's descriptor.
    fn borrow(socket: &PeerSocket) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belonged to the connection when it was
        // recorded. If the connection has since closed and the number been
        // reused, the calls below only read the state of whatever it is now
        // (poll, getsockopt, dup), and the cookie check tells us it changed.
        unsafe { BorrowedFd::borrow_raw(socket.fd) }
    }

    /// The descriptor is still the recorded socket (always true where cookies do not exist).
    fn same_socket(socket: &PeerSocket) -> bool {
        socket.cookie.is_none() || cookie(borrow(socket)) == socket.cookie
    }

    /// What each peer has done; one `poll(2)`, never blocking.
    pub(super) fn states(sockets: &[PeerSocket]) -> Vec<PeerState> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        const CLOSED_ITS_SIDE: PollFlags = PollFlags::RDHUP;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        const CLOSED_ITS_SIDE: PollFlags = PollFlags::empty();
        let mut polled: Vec<PollFd<'_>> = sockets
            .iter()
            .map(|s| PollFd::from_borrowed_fd(borrow(s), CLOSED_ITS_SIDE))
            .collect();
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if poll(&mut polled, Some(&now)).unwrap_or(0) == 0 {
            return vec![PeerState::Open; sockets.len()];
        }
        let gone = PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
        polled
            .iter()
            .zip(sockets)
            .map(|(p, socket)| {
                let events = p.revents();
                if events.intersects(gone) || (!events.is_empty() && !same_socket(socket)) {
                    PeerState::Gone
                } else if events.intersects(CLOSED_ITS_SIDE) {
                    PeerState::HalfClosed
                } else {
                    PeerState::Open
                }
            })
            .collect()
    }

    /// Writes `HTTP/1.1 102 Processing` to the peer; false when the socket
    /// is gone. Where sockets have no cookie (not Linux) a reused descriptor
    /// could not be told apart, so nothing is written there.
    pub(super) fn write_processing(socket: &PeerSocket) -> bool {
        use rustix::net::{SendFlags, send};
        if socket.cookie.is_none() {
            return true;
        }
        let Some(Duplicate(fd)) = Duplicate::of(socket) else {
            return false;
        };
        const PROCESSING: &[u8] = b"HTTP/1.1 102 Processing\r\n\r\n";
        matches!(
            send(&fd, PROCESSING, SendFlags::DONTWAIT | SendFlags::NOSIGNAL),
            Ok(n) if n == PROCESSING.len()
        )
    }

    /// A duplicate of a connection's descriptor: the socket stays ours to
    /// watch even after actix closes its own descriptor.
    pub(super) struct Duplicate(OwnedFd);

    impl Duplicate {
        /// A duplicate checked to be the recorded socket (a descriptor
        /// number can be reused; the duplicate, once made, cannot).
        pub(super) fn of(socket: &PeerSocket) -> Option<Self> {
            let fd = rustix::io::fcntl_dupfd_cloexec(borrow(socket), 0).ok()?;
            (socket.cookie.is_none() || cookie(&fd) == socket.cookie).then_some(Self(fd))
        }

        /// Whether the peer resets the connection within `window`.
        pub(super) async fn reset_within(self, window: Duration) -> bool {
            use tokio::io::Interest;
            use tokio::io::unix::AsyncFd;
            // SAFETY: an OwnedFd stays open, on the same socket, for as long
            // as the AsyncFd that owns it.
            let Ok(watched) = (unsafe { AsyncFd::register_with_interest(self.0, Interest::ERROR) })
            else {
                return false;
            };
            matches!(
                tokio::time::timeout(window, watched.ready(Interest::ERROR)).await,
                Ok(Ok(_))
            )
        }
    }
}
