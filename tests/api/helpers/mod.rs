//! Test harness: a real service on port 0 against real MariaDB and Redis,
//! each test with its own database and Redis key prefix.
//!
//! - `app`: the in-process service (`spawn_app`), its HTTP helpers and rows.
//! - `servers`: processes a test owns (its own mariadbd, redis-server, or
//!   `middleway serve`), killed when dropped.
//! - `cluster`: a Redis Cluster of six nodes a test owns.
//! - `contract`: assertions on problem+json answers.
//! - `locks`: lock requests and arrangements the lock areas share.
//! - `mounted`: a folder laid out as Kubernetes mounts a Secret (symlink swaps).
//! - `proxy`: a TCP proxy whose server the test moves (a failover).
//! - `redis`: looking at Redis from a test.
//! - `storm`: many clients on several replicas, checked by a recorder.
//! - `tls`: certificates for a test's own TLS servers.

// Shared by every test area; not every area uses every helper.
#![allow(dead_code, unused_imports)]

mod app;
mod cluster;
mod contract;
mod issuer;
mod locks;
mod mounted;
mod proxy;
mod redis;
mod replication;
mod servers;
mod storm;
mod sts;
mod tls;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use app::*;
pub use cluster::*;
pub use contract::*;
pub use issuer::*;
pub use locks::*;
pub use mounted::*;
pub use proxy::*;
pub use redis::*;
pub use replication::*;
pub use servers::*;
pub use storm::*;
pub use sts::*;
pub use tls::*;

/// A short random lowercase suffix for database names and key prefixes.
pub fn random_suffix() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A free loopback port (bound then released) below the kernel's ephemeral
/// range. A port from `bind(0)` comes from that range, where every outgoing
/// connection and every `bind(0)` listener of every test picks its own port:
/// any of them could take it before the server it was picked for binds it
/// (an own mariadbd once exited so, failing its test). Below the range only
/// another pick can, and the servers' helpers start again on a new port
/// when that happens.
pub fn free_port() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let picked = 10_000..ephemeral_from.max(11_000);
    loop {
        let port = rand::random_range(picked.clone());
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A folder under target/ for test-owned server data.
pub fn scratch_dir(kind: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{kind}-{}", random_suffix()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Raises this process's descriptor limit to its hard limit (tests with
/// thousands of connections; spawned services inherit it).
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard);
}
