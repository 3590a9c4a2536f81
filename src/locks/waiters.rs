//! Waiting for a slot: one BLPOP loop per lock name per replica, serving
//! the local FIFO queue (`queues`), on a dedicated connection, in a task
//! that outlives the HTTP requests it serves.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::domain::LockName;
use super::error::LockError;
use super::shared::Shared;
use super::store::LockKeys;

/// How long one BLPOP blocks before the loop looks at its queue again (to
/// notice that every waiter has left). Short blocks cost one round trip each.
const BLPOP_BLOCK: Duration = Duration::from_secs(1);
/// Reap at least this often while waiting. A lease granted by another
/// replica ends at a deadline this replica has not seen; polling this often
/// keeps "waiters get the slot within 100 ms of the deadline" true anyway.
const REAP_EVERY: Duration = Duration::from_millis(50);

fn redis_down() -> LockError {
    LockError::RedisUnavailable
}

/// Serves `name`'s queue until it is empty. Never returns early with a slot in hand.
pub(super) async fn run_wait_loop(shared: Arc<Shared>, name: LockName) {
    let keys = shared.store.keys(&name);
    let Ok(mut conn) = shared.blocking_connection().await else {
        shared.queues.fail_all(&name, redis_down);
        return;
    };
    shared.metrics.redis_blocking_connections.inc();
    let new_deadline = Arc::new(Notify::new());
    let reaper = shared.runtime.spawn(reap_at_deadlines(
        Arc::clone(&shared),
        name.clone(),
        Arc::clone(&new_deadline),
    ));
    loop {
        if shared.queues.retire_if_idle(&name) {
            break;
        }
        match blpop(&mut conn, keys.free()).await {
            Ok(None) => continue,
            Ok(Some(slot)) => {
                let handed = hand_over(&shared, &name, &keys, &slot).await;
                // A grant just made may end before the reaper's next planned run.
                new_deadline.notify_one();
                if let Err(error) = handed {
                    tracing::warn!(%error, lock = name.as_str(), "lock hand-off failed");
                    shared.queues.fail_all(&name, redis_down);
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, lock = name.as_str(), "BLPOP failed");
                shared.queues.fail_all(&name, redis_down);
                break;
            }
        }
    }
    reaper.abort();
    shared.metrics.redis_blocking_connections.dec();
}

/// BLPOP with a client-side bound: a Redis that stops answering must not
/// hang the loop. If that bound fires, the connection is dropped; a slot
/// Redis pops into it later is recovered by the hand-off grace period.
async fn blpop(conn: &mut MultiplexedConnection, free: &str) -> redis::RedisResult<Option<String>> {
    let command = redis::cmd("BLPOP")
        .arg(free)
        .arg(BLPOP_BLOCK.as_secs_f64())
        .to_owned();
    let reply = tokio::time::timeout(
        BLPOP_BLOCK + Duration::from_secs(2),
        command.query_async::<Option<(String, String)>>(conn),
    )
    .await
    .map_err(|_| {
        redis::RedisError::from((redis::ErrorKind::Io, "BLPOP did not return in time"))
    })??;
    Ok(reply.map(|(_, slot)| slot))
}

/// Gives `slot` to the first waiter still listening, or back to Redis.
async fn hand_over(
    shared: &Shared,
    name: &LockName,
    keys: &LockKeys,
    slot: &str,
) -> redis::RedisResult<()> {
    let mut conn = shared.pooled().await?;
    let Some(waiter) = shared.queues.next_live(name) else {
        return shared.store.give_back(&mut conn, keys, slot).await;
    };
    match shared
        .store
        .claim(&mut conn, keys, slot, waiter.lease)
        .await
    {
        Ok(Some(grant)) => {
            shared
                .metrics
                .lock_operations
                .with_label_values(&["acquire", "granted"])
                .inc();
            if let Err(Ok(unwanted)) = waiter.reply.send(Ok(grant)) {
                // The requester left between our check and the grant: hand it on at once.
                shared
                    .store
                    .release(&mut conn, keys, &unwanted.token)
                    .await?;
            }
            Ok(())
        }
        // The reaper recreated this slot under a new id; keep waiting for another.
        Ok(None) => {
            shared.queues.push_front(name, waiter);
            Ok(())
        }
        Err(error) => {
            let _ = waiter.reply.send(Err(redis_down()));
            Err(error)
        }
    }
}

/// Reaps at each earliest lease deadline (so an expired holder's slot reaches
/// the blocked BLPOP within milliseconds, whatever Redis' timer resolution),
/// after each local grant, and at least every `REAP_EVERY`.
async fn reap_at_deadlines(shared: Arc<Shared>, name: LockName, new_deadline: Arc<Notify>) {
    let keys = shared.store.keys(&name);
    loop {
        let pause = match shared.pooled().await {
            Ok(mut conn) => match shared.store.reap(&mut conn, &keys).await {
                Ok(outcome) => {
                    shared.metrics.lock_expiries.inc_by(outcome.expired);
                    outcome
                        .next_deadline_in
                        .map_or(REAP_EVERY, |d| d.min(REAP_EVERY))
                }
                Err(_) => REAP_EVERY,
            },
            Err(_) => REAP_EVERY,
        };
        // +1 ms: the script treats a deadline equal to now as expired, but
        // our sleep and Redis' clock need not agree to the millisecond.
        tokio::select! {
            () = tokio::time::sleep(pause + Duration::from_millis(1)) => {}
            () = new_deadline.notified() => {}
        }
    }
}
