//! How a replica hears about its locks: one connection, kept for the life of
//! the process, subscribed to the replica's wake channel (offers, alarms,
//! skipped tickets: what lock scripts publish for this replica) and to the
//! channel every replica hears (locks created again). However many requests
//! wait, on however many locks, this is the replica's only blocking connection.
//!
//! Scripts publish rather than push to lists because a script may publish
//! wherever its own keys live, also on a Redis Cluster (the cluster bus
//! carries a message to every node), and the connection may subscribe on any
//! node. A subscribed connection is silent, so it PINGs to notice a dead
//! socket. A message published while nobody listened is not kept: after
//! every reconnect the worker re-checks every lock with waiters here, which
//! finds those offers; an offer nobody claims moves on after its claim
//! deadline anyway.
//!
//! Only when Redis stays unreachable for [`OUTAGE_GRACE`] are the waiters
//! answered 503.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::watch;

use super::domain::{LockName, LockToken};
use super::error::LockError;
use super::events::{Event, Events};
use crate::metrics::Metrics;

/// How often the silent connection is PINGed: an idle replica costs one
/// command per period.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long connecting, subscribing or a PING may take before the connection counts as dead.
const SLACK: Duration = Duration::from_secs(2);
/// Redis unreachable this long: waiters are answered 503 rather than left hanging.
pub(crate) const OUTAGE_GRACE: Duration = Duration::from_secs(2);

/// A message on a wake channel.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    /// `o|<name>|<ticket>|<token>`: a slot of `name` is offered to `ticket`.
    Offer {
        name: LockName,
        ticket: String,
        token: LockToken,
    },
    /// `a|<name>|<deadline>|<now>`: `name` has a deadline in `deadline - now` ms.
    Alarm { name: LockName, after: Duration },
    /// `s|<name>|<ticket>`: the ticket was skipped (this replica counted as
    /// gone); `c|<name>`: the lock was created (again). Either way this
    /// replica's tickets of `name` are checked again.
    Recheck(LockName),
}

impl Message {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let kind = parts.next()?;
        let name = LockName::from_script(parts.next()?)?;
        let message = match kind {
            "o" => Self::Offer {
                name,
                ticket: parts.next()?.to_owned(),
                token: LockToken::minted(parts.next()?.to_owned()),
            },
            "a" => {
                let deadline: u64 = parts.next()?.parse().ok()?;
                let now: u64 = parts.next()?.parse().ok()?;
                Self::Alarm {
                    name,
                    after: Duration::from_millis(deadline.saturating_sub(now)),
                }
            }
            "s" => {
                parts.next()?;
                Self::Recheck(name)
            }
            "c" => Self::Recheck(name),
            _ => return None,
        };
        parts.next().is_none().then_some(message)
    }

    fn into_event(self) -> Event {
        match self {
            Self::Offer {
                name,
                ticket,
                token,
            } => Event::Offer {
                name,
                ticket,
                token,
            },
            Self::Alarm { name, after } => Event::Alarm { name, after },
            Self::Recheck(name) => Event::Resync(name),
        }
    }
}

/// Where a replica's wake connection subscribes: any of the nodes (the
/// next one after a failure).
pub(crate) struct WakeSource {
    nodes: Vec<redis::Client>,
}

impl WakeSource {
    /// Subscribes on one of `nodes` (one server, or a cluster's seeds).
    pub(crate) fn new(nodes: Vec<redis::Client>) -> Self {
        Self { nodes }
    }
}

/// The wake loop of one replica: what it listens to and whom it tells.
pub(crate) struct WakeLoop {
    pub source: WakeSource,
    /// This replica's wake channel.
    pub wake_channel: String,
    /// The channel every replica hears.
    pub events_channel: String,
    /// The background worker.
    pub events: Events,
    pub metrics: Metrics,
    pub draining: watch::Receiver<bool>,
}

impl WakeLoop {
    /// Subscribes (the `attempt`-th time), on the next node in turn.
    async fn subscribe(&self, attempt: usize) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
        let client = &self.source.nodes[attempt % self.source.nodes.len().max(1)];
        let subscribed = async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(&[&self.wake_channel, &self.events_channel])
                .await?;
            Ok((sink, stream))
        };
        tokio::time::timeout(SLACK, subscribed)
            .await
            .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "subscribe timed out").into()))
    }

    /// Listens until shutdown, reconnecting as often as it takes.
    pub(crate) async fn run(self) {
        let mut draining = self.draining.clone();
        let mut down_since: Option<Instant> = None;
        let mut pause = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            let subscribed = tokio::select! {
                subscribed = self.subscribe(attempt) => subscribed,
                _ = draining.wait_for(|d| *d) => return,
            };
            attempt += 1;
            match subscribed {
                Ok((sink, stream)) => {
                    pause = Duration::from_millis(50);
                    self.metrics.redis_blocking_connections.set(1);
                    // Offers published while nobody listened are lost: the
                    // worker re-checks every lock waited on here.
                    if down_since.take().is_some() {
                        self.events.send(Event::Reconnected);
                    }
                    tokio::select! {
                        error = self.listen(sink, stream) => {
                            tracing::warn!(%error, "lock wake connection failed; reconnecting");
                        }
                        _ = draining.wait_for(|d| *d) => return,
                    }
                    self.metrics.redis_blocking_connections.set(0);
                    down_since = Some(Instant::now());
                }
                Err(error) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= OUTAGE_GRACE {
                        tracing::warn!(%error, "Redis unreachable: answering lock waiters 503");
                        self.events
                            .send(Event::FailAll(LockError::RedisUnavailable));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Passes on what arrives and PINGs every [`PING_EVERY`], until the connection fails.
    async fn listen(&self, mut sink: PubSubSink, mut stream: PubSubStream) -> redis::RedisError {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => match message.get_payload::<String>() {
                        Ok(text) => match Message::parse(&text) {
                            Some(message) => self.events.send(message.into_event()),
                            None => tracing::warn!(message = text, "unreadable lock wake message"),
                        },
                        Err(error) => tracing::warn!(%error, "unreadable lock wake message"),
                    },
                    None => return (redis::ErrorKind::Io, "wake subscription closed").into(),
                },
                _ = ping.tick() => {
                    // Subscribed (RESP2), Redis answers PING with ["pong", ""],
                    // not +PONG: any answer will do, only its absence counts.
                    match tokio::time::timeout(SLACK, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return error,
                        Err(_) => return (redis::ErrorKind::Io, "PING did not return in time").into(),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_messages_parse_and_junk_does_not() {
        let token = "0123456789abcdef.9.17.fedcba9876543210";
        assert_eq!(
            Message::parse(&format!("o|device-42|00ff|{token}")),
            Some(Message::Offer {
                name: LockName::parse("device-42").unwrap(),
                ticket: "00ff".into(),
                token: LockToken::minted(token.into()),
            })
        );
        assert_eq!(
            Message::parse("a|n|1500|1000"),
            Some(Message::Alarm {
                name: LockName::parse("n").unwrap(),
                after: Duration::from_millis(500),
            })
        );
        assert_eq!(
            Message::parse("s|n|00ff"),
            Some(Message::Recheck(LockName::parse("n").unwrap()))
        );
        assert_eq!(
            Message::parse("c|n"),
            Some(Message::Recheck(LockName::parse("n").unwrap()))
        );
        for junk in [
            "",
            "x|n|1",
            "o|n|t",
            "a|n|x|1",
            "o|bad name|t|k",
            "c|n|extra",
            "s|n",
        ] {
            assert_eq!(Message::parse(junk), None, "{junk}");
        }
    }

    /// Issue 23, defect 2: the fleet budget's lock is `~mysql-fleet`, and its
    /// offers and alarms were dropped as unreadable.
    #[test]
    fn messages_about_the_service_s_own_locks_are_read() {
        assert_eq!(
            Message::parse("a|~mysql-fleet|1500|1000"),
            Some(Message::Alarm {
                name: LockName::internal("mysql-fleet"),
                after: Duration::from_millis(500),
            })
        );
        assert!(matches!(
            Message::parse("o|~mysql-fleet|00ff|0123456789abcdef.9.17.fedcba9876543210"),
            Some(Message::Offer { .. })
        ));
    }
}
