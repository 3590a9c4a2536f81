//! Looking at Redis from a test.

/// A plain connection for inspecting Redis from a test.
pub async fn redis_connection(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

/// `free + held` of a lock, as LOCKS.md's conservation check reads it.
pub async fn slots_accounted(url: &str, prefix: &str, name: &str) -> (i64, i64) {
    let mut conn = redis_connection(url).await.expect("redis");
    let free: i64 = redis::cmd("LLEN")
        .arg(format!("{prefix}lock:{{{name}}}:free"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let held: i64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}lock:{{{name}}}:held"))
        .query_async(&mut conn)
        .await
        .unwrap();
    (free, held)
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
