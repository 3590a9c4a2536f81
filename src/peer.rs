//! Noticing that an HTTP client has hung up while its request waits.
//!
//! actix-web keeps polling a handler after the client disconnects
//! (actix/actix-web#1313, #3462), so a lock waiter would otherwise stay queued
//! and be granted a slot nobody will use until its lease runs out. We record
//! each connection's socket at accept time and, while a request waits, watch a
//! duplicate of it for the peer's close.

use std::any::Any;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;

/// When the socket holds pipelined bytes (so readiness says nothing about a
/// close), check this often instead.
const RECHECK_WITH_PENDING_BYTES: Duration = Duration::from_millis(250);

/// The accepted socket of a connection, in its connection data.
#[derive(Clone, Copy)]
struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook: remembers the socket of each plain TCP connection.
pub fn record_peer_socket(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(PeerSocket(stream.as_raw_fd()));
    }
}

/// Resolves when the client of `request` has closed or reset its connection;
/// never resolves when that cannot be known.
pub async fn client_gone(request: &HttpRequest) {
    let Some(watcher) = request
        .conn_data::<PeerSocket>()
        .and_then(|socket| duplicate(socket.0))
    else {
        return std::future::pending().await;
    };
    let mut probe = [0u8; 1];
    loop {
        match watcher.peek(&mut probe).await {
            Ok(0) => return,
            Ok(_) => tokio::time::sleep(RECHECK_WITH_PENDING_BYTES).await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// A second descriptor for the same socket, registered with this runtime.
/// Dropping it closes only the duplicate; the connection itself is untouched.
fn duplicate(fd: RawFd) -> Option<tokio::net::TcpStream> {
    // SAFETY: `fd` is the socket of the connection carrying the request being
    // served; actix keeps it open at least until that request's response is
    // written, which cannot happen while the request is still waiting here.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let std_stream = std::net::TcpStream::from(owned);
    // Already non-blocking (the flag lives on the shared socket), but tokio requires it said.
    std_stream.set_nonblocking(true).ok()?;
    tokio::net::TcpStream::from_std(std_stream).ok()
}
