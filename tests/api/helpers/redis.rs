//! Looking at Redis from a test.

/// A plain connection for inspecting Redis from a test.
pub async fn redis_connection(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

/// A Redis `INFO` field of the server at `url` (`total_commands_processed`...).
pub async fn info_field(url: &str, field: &str) -> u64 {
    let mut conn = redis_connection(url).await.expect("redis");
    let info: String = redis::cmd("INFO").query_async(&mut conn).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO has no numeric {field}"))
}

/// Runs one Redis command on the server at `url` and returns its reply.
pub async fn redis_command<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> T {
    let mut conn = redis_connection(url).await.expect("redis");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// Every `CLIENT LIST` line of the server at `url`.
pub async fn client_list(url: &str) -> Vec<String> {
    let mut conn = redis_connection(url).await.expect("redis");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines().map(str::to_owned).collect()
}

/// Stalls the server at `url` for `seconds` (`DEBUG SLEEP`: nothing is
/// served meanwhile, as with a slow disk or a long command); returns when it
/// answers again.
pub async fn stall_redis(url: &str, seconds: f64) {
    let client = redis::Client::open(url).expect("redis url");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis");
    let _: String = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(seconds)
        .query_async(&mut conn)
        .await
        .expect("DEBUG SLEEP (the server runs with --enable-debug-command yes)");
}

/// Makes the Redis at `url` hold every command that may write (scripts
/// included) for `ms`, and returns at once. Unlike [`stall_redis`] it still
/// accepts connections and answers reads meanwhile.
pub async fn pause_redis_writes(url: &str, ms: u64) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
}

/// At least `at_least` of this process's connections go to `ports`, and
/// every one of them has `TCP_NODELAY` set.
pub fn assert_every_connection_sends_without_delay(ports: &[u16], at_least: usize) {
    let connections = own_connections_to(ports);
    assert!(
        connections.len() >= at_least,
        "at least {at_least} connections: {connections:?}"
    );
    assert!(
        connections.iter().all(|&(_, nodelay)| nodelay),
        "every connection has TCP_NODELAY: {connections:?}"
    );
}

/// This process's connections to loopback ports among `ports` (the
/// in-process service's, and the test's own if it holds any), each as its
/// peer port and whether it has `TCP_NODELAY` set.
pub fn own_connections_to(ports: &[u16]) -> Vec<(u16, bool)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("fd list")
        .flatten()
    {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: only getpeername and getsockopt run on the descriptor, and
        // only while this borrow lives. Were it closed meanwhile they fail
        // (skipped below); were its number reused, they read another socket.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        if peer.ip().is_loopback() && ports.contains(&peer.port()) {
            let Ok(nodelay) = socket.tcp_nodelay() else {
                continue;
            };
            found.push((peer.port(), nodelay));
        }
    }
    found
}
