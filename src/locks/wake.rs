//! How a replica waits and wakes: one connection, kept for the life of the
//! process, BLPOPs the replica's wake list, where lock scripts push offers
//! ("a slot is yours, claim it") and alarms ("this lock's next deadline is
//! then"). However many requests wait, on however many locks, this is the
//! replica's only blocking connection.
//!
//! On a Redis Cluster a script may touch only its own slot's keys, so it
//! cannot push to a list elsewhere: scripts PUBLISH to the replica's wake
//! channel instead (the cluster bus carries a message to every node), and
//! the one connection SUBSCRIBEs to it on any node, PINGing to notice a dead
//! socket. A message sent while nobody listened is not kept, as a list keeps
//! it; the re-check after every reconnect (below) finds those offers.
//!
//! When the connection drops, the loop reconnects and re-checks every lock
//! that has waiters here: their places are in Redis, not in the socket.
//! Only when Redis stays unreachable for [`OUTAGE_GRACE`] are the waiters
//! answered 503.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::watch;

use super::core::Core;
use super::domain::{LockName, LockToken};
use super::error::LockError;

/// How long one BLPOP blocks: an idle replica costs one command per period.
const BLOCK: Duration = Duration::from_secs(5);
/// Beyond the block, how long a BLPOP may take before the connection counts as dead.
const SLACK: Duration = Duration::from_secs(2);
/// Messages taken per round trip after a BLPOP returns one.
const DRAIN: usize = 128;
/// Redis unreachable this long: waiters are answered 503 rather than left hanging.
pub(crate) const OUTAGE_GRACE: Duration = Duration::from_secs(2);

/// A message on a wake list.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    /// `o|<name>|<ticket>|<token>|<fence>`: a slot of `name` is offered to `ticket`.
    Offer {
        name: LockName,
        ticket: String,
        token: LockToken,
        fence: u64,
    },
    /// `a|<name>|<deadline>|<now>`: `name` has a deadline in `deadline - now` ms.
    Alarm { name: LockName, after: Duration },
}

impl Message {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let kind = parts.next()?;
        let name = LockName::parse(parts.next()?).ok()?;
        match kind {
            "o" => Some(Self::Offer {
                name,
                ticket: parts.next()?.to_owned(),
                token: LockToken::minted(parts.next()?.to_owned()),
                fence: parts.next()?.parse().ok()?,
            }),
            "a" => {
                let deadline: u64 = parts.next()?.parse().ok()?;
                let now: u64 = parts.next()?.parse().ok()?;
                Some(Self::Alarm {
                    name,
                    after: Duration::from_millis(deadline.saturating_sub(now)),
                })
            }
            _ => None,
        }
    }
}

/// Where a replica's wake messages arrive: its wake list on a server
/// (BLPOPed), or on a cluster its wake channel, subscribed on one of the
/// seed nodes (the next one after a failure).
pub(crate) struct WakeSource {
    nodes: Vec<redis::Client>,
    channel: bool,
}

impl WakeSource {
    /// The wake list on `server`.
    pub(crate) fn list(server: redis::Client) -> Self {
        Self {
            nodes: vec![server],
            channel: false,
        }
    }

    /// The wake channel, on any of a cluster's `seeds`.
    pub(crate) fn channel(seeds: Vec<redis::Client>) -> Self {
        Self {
            nodes: seeds,
            channel: true,
        }
    }

    /// Connects (the `attempt`-th time), subscribed when it is a channel.
    async fn connect(&self, attempt: usize, core: &Core) -> redis::RedisResult<Listener> {
        let client = &self.nodes[attempt % self.nodes.len().max(1)];
        if self.channel {
            let subscribed = async {
                let (mut sink, stream) = client.get_async_pubsub().await?.split();
                sink.subscribe(core.replica.wake_channel()).await?;
                Ok(Listener::Channel(sink, stream))
            };
            return tokio::time::timeout(Duration::from_secs(1), subscribed)
                .await
                .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "subscribe timed out").into()));
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // BLPOP blocks by design; `listen` bounds each call itself.
            .set_response_timeout(None);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Listener::List(conn))
    }
}

/// A live wake connection.
enum Listener {
    List(MultiplexedConnection),
    Channel(PubSubSink, PubSubStream),
}

/// Serves the replica's wake list (or channel) until shutdown.
pub(crate) async fn run_wake_loop(
    core: Arc<Core>,
    source: WakeSource,
    mut draining: watch::Receiver<bool>,
) {
    let mut down_since: Option<Instant> = None;
    let mut pause = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        let connected = tokio::select! {
            connected = source.connect(attempt, &core) => connected,
            _ = draining.wait_for(|d| *d) => return,
        };
        attempt += 1;
        match connected {
            Ok(conn) => {
                pause = Duration::from_millis(50);
                core.outage.store(false, Ordering::Release);
                core.metrics.redis_blocking_connections.set(1);
                // Offers pushed while no BLPOP was there are still in the
                // list; an offer popped into a connection that then died is
                // not: re-checking every lock with waiters finds those.
                if down_since.take().is_some() {
                    for name in core.waiters.names() {
                        core.runtime.spawn(Arc::clone(&core).sync(name));
                    }
                }
                let listen = match conn {
                    Listener::List(conn) => futures_util::future::Either::Left(listen(&core, conn)),
                    Listener::Channel(sink, stream) => {
                        futures_util::future::Either::Right(listen_channel(&core, sink, stream))
                    }
                };
                tokio::select! {
                    error = listen => {
                        tracing::warn!(%error, "lock wake connection failed; reconnecting");
                    }
                    _ = draining.wait_for(|d| *d) => return,
                }
                core.metrics.redis_blocking_connections.set(0);
                down_since = Some(Instant::now());
            }
            Err(error) => {
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= OUTAGE_GRACE {
                    if !core.outage.swap(true, Ordering::AcqRel) {
                        tracing::warn!(%error, "Redis unreachable: answering lock waiters 503");
                    }
                    core.fail_all(LockError::RedisUnavailable);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// BLPOPs the wake list and dispatches what arrives, until the connection fails.
async fn listen(core: &Arc<Core>, mut conn: MultiplexedConnection) -> redis::RedisError {
    let key = core.replica.wake.as_str();
    loop {
        let mut blpop = redis::cmd("BLPOP");
        blpop.arg(key).arg(BLOCK.as_secs());
        let blpop = blpop.query_async::<Option<(String, String)>>(&mut conn);
        let first = match tokio::time::timeout(BLOCK + SLACK, blpop).await {
            Ok(Ok(Some((_, message)))) => message,
            Ok(Ok(None)) => continue,
            Ok(Err(error)) => return error,
            Err(_) => return (redis::ErrorKind::Io, "BLPOP did not return in time").into(),
        };
        dispatch(core, &first);
        let mut lpop = redis::cmd("LPOP");
        lpop.arg(key).arg(DRAIN);
        let rest = lpop.query_async::<Option<Vec<String>>>(&mut conn);
        match tokio::time::timeout(SLACK, rest).await {
            Ok(Ok(rest)) => rest.iter().flatten().for_each(|m| dispatch(core, m)),
            Ok(Err(error)) => return error,
            Err(_) => return (redis::ErrorKind::Io, "LPOP did not return in time").into(),
        }
    }
}

/// Dispatches what arrives on the wake channel and PINGs every [`BLOCK`]
/// (a subscribed connection is otherwise silent), until the connection fails.
async fn listen_channel(
    core: &Arc<Core>,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
) -> redis::RedisError {
    let mut ping = tokio::time::interval(BLOCK);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => match message.get_payload::<String>() {
                    Ok(text) => dispatch(core, &text),
                    Err(error) => tracing::warn!(%error, "unreadable lock wake message"),
                },
                None => return (redis::ErrorKind::Io, "wake subscription closed").into(),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(SLACK, sink.ping::<String>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return error,
                    Err(_) => return (redis::ErrorKind::Io, "PING did not return in time").into(),
                }
            }
        }
    }
}

fn dispatch(core: &Arc<Core>, text: &str) {
    match Message::parse(text) {
        Some(Message::Offer {
            name,
            ticket,
            token,
            fence,
        }) => {
            core.runtime
                .spawn(Arc::clone(core).take_offer(name, ticket, token, fence));
        }
        Some(Message::Alarm { name, after }) => core.arm(&name, Some(after)),
        None => tracing::warn!(message = text, "unreadable lock wake message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_messages_parse_and_junk_does_not() {
        assert_eq!(
            Message::parse("o|device-42|00ff|0123456789abcdef.17.fedcba9876543210|17"),
            Some(Message::Offer {
                name: LockName::parse("device-42").unwrap(),
                ticket: "00ff".into(),
                token: LockToken::minted("0123456789abcdef.17.fedcba9876543210".into()),
                fence: 17,
            })
        );
        assert_eq!(
            Message::parse("a|n|1500|1000"),
            Some(Message::Alarm {
                name: LockName::parse("n").unwrap(),
                after: Duration::from_millis(500),
            })
        );
        for junk in ["", "x|n|1", "o|n|t", "a|n|x|1", "o|bad name|t|k|1"] {
            assert_eq!(Message::parse(junk), None, "{junk}");
        }
    }
}
