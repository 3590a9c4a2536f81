//! What each lock script answers, read from its reply in one place.

use std::time::Duration;

use redis::{RedisResult, Value};

use super::super::domain::{Grant, Holder, LockState, LockToken, NotHeldReason};

/// What the acquire script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// A free slot was granted at once.
    Granted(Grant),
    /// The lock exists with another permits value.
    PermitsMismatch(u32),
    /// No free slot, and waiting was not asked for.
    Busy,
    /// The ticket is queued.
    Queued(Queued),
    /// The request had already given up (this call reached Redis too late).
    GaveUp,
}

/// A ticket that joined the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// How long until the lock's earliest deadline, if any.
    pub next_in: Option<Duration>,
    /// Its place in line: when it arrived (Redis clock, µs). It keeps this
    /// place when it is queued again after Redis lost it.
    pub arrival_us: u64,
}

/// What a claim or a cancel at the deadline did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The slot is the waiter's.
    Granted(Grant),
    /// Nothing was offered to this ticket (any longer).
    Nothing,
}

/// What reaping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// Leases that ran out, and how long until the lock's earliest deadline.
    Reaped {
        expired: u64,
        next_in: Option<Duration>,
    },
    /// The lock is not there (Redis lost it): its waiters must queue again.
    Missing,
}

/// What `sync` says of one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TicketState {
    /// Still queued.
    Queued,
    /// Queued again (Redis had lost or skipped it), at its own place.
    Requeued,
    /// A slot waits for it: claim it.
    Offered(LockToken),
    /// The lock now has another permits value.
    Mismatch,
    /// The request had given up already.
    GaveUp,
}

/// What `sync` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Synced {
    /// How long until the lock's earliest deadline, if any.
    pub next_in: Option<Duration>,
    /// The lock's permits now.
    pub permits: u32,
    /// One per ticket asked about, in order.
    pub tickets: Vec<TicketState>,
}

/// A reply that does not have the shape its script returns.
pub(super) fn unexpected(what: &str, value: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected lock script reply",
        format!("{what}: {value:?}"),
    ))
}

/// The error of one call of `batch.lua` that failed in Redis (its reply is
/// `{'error', message}`), or `Ok` for any other reply.
pub(super) fn call_failure(value: &Value) -> RedisResult<()> {
    match value {
        Value::Array(items) if items.len() == 2 && is_word(&items[0], "error") => {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "lock script call failed",
                redis::from_redis_value_ref::<String>(&items[1]).unwrap_or_default(),
            )))
        }
        _ => Ok(()),
    }
}

fn is_word(value: &Value, word: &str) -> bool {
    matches!(value, Value::BulkString(bytes) if bytes == word.as_bytes())
}

/// A script's array reply, its first element a word saying what happened.
struct Reply<'a> {
    script: &'static str,
    whole: &'a Value,
    items: &'a [Value],
}

impl<'a> Reply<'a> {
    fn of(script: &'static str, whole: &'a Value) -> RedisResult<Self> {
        match whole {
            Value::Array(items) => Ok(Self {
                script,
                whole,
                items,
            }),
            other => Err(unexpected(script, other)),
        }
    }

    fn at<T: redis::FromRedisValue>(&self, i: usize) -> RedisResult<T> {
        let value = self
            .items
            .get(i)
            .ok_or_else(|| unexpected(self.script, self.whole))?;
        Ok(redis::from_redis_value_ref(value)?)
    }

    fn word(&self) -> RedisResult<String> {
        self.at(0)
    }

    fn refused(&self) -> redis::RedisError {
        unexpected(self.script, self.whole)
    }

    /// `{'not_held', reason}`.
    fn not_held(&self) -> RedisResult<NotHeldReason> {
        Ok(NotHeldReason::from_script(&self.at::<String>(1)?))
    }
}

/// `deadline - now` as a duration; `None` for "no deadline" (-1).
fn until(deadline_ms: i64, now_ms: i64) -> Option<Duration> {
    (deadline_ms >= 0)
        .then(|| Duration::from_millis(deadline_ms.saturating_sub(now_ms).max(0) as u64))
}

pub(super) fn acquire(value: &Value) -> RedisResult<AcquireOutcome> {
    let reply = Reply::of("acquire", value)?;
    Ok(match reply.word()?.as_str() {
        "granted" => AcquireOutcome::Granted(Grant {
            token: LockToken::minted(reply.at(1)?),
            fence: reply.at(2)?,
            deadline_ms: reply.at(3)?,
        }),
        "mismatch" => AcquireOutcome::PermitsMismatch(reply.at(1)?),
        "busy" => AcquireOutcome::Busy,
        "gone" => AcquireOutcome::GaveUp,
        "queued" => AcquireOutcome::Queued(Queued {
            next_in: until(reply.at(1)?, reply.at(2)?),
            arrival_us: reply.at(3)?,
        }),
        _ => return Err(reply.refused()),
    })
}

pub(super) fn claim(value: &Value, token: &LockToken) -> RedisResult<Claimed> {
    let reply = Reply::of("claim", value)?;
    Ok(match reply.word()?.as_str() {
        "granted" => Claimed::Granted(Grant {
            token: token.clone(),
            fence: token.fence().ok_or_else(|| reply.refused())?,
            deadline_ms: reply.at(1)?,
        }),
        "gone" => Claimed::Nothing,
        _ => return Err(reply.refused()),
    })
}

pub(super) fn cancel(value: &Value) -> RedisResult<Claimed> {
    let reply = Reply::of("cancel", value)?;
    Ok(match reply.word()?.as_str() {
        "granted" => Claimed::Granted(Grant {
            token: LockToken::minted(reply.at(1)?),
            fence: reply.at(2)?,
            deadline_ms: reply.at(3)?,
        }),
        "left" => Claimed::Nothing,
        _ => return Err(reply.refused()),
    })
}

pub(super) fn release(value: &Value) -> RedisResult<Result<(), NotHeldReason>> {
    let reply = Reply::of("release", value)?;
    Ok(match reply.word()?.as_str() {
        "released" => Ok(()),
        "not_held" => Err(reply.not_held()?),
        _ => return Err(reply.refused()),
    })
}

pub(super) fn extend(value: &Value) -> RedisResult<Result<u64, NotHeldReason>> {
    let reply = Reply::of("extend", value)?;
    Ok(match reply.word()?.as_str() {
        "extended" => Ok(reply.at(1)?),
        "not_held" => Err(reply.not_held()?),
        _ => return Err(reply.refused()),
    })
}

pub(super) fn reap(value: &Value) -> RedisResult<Reaped> {
    let reply = Reply::of("reap", value)?;
    let exists: i64 = reply.at(0)?;
    if exists == 0 {
        return Ok(Reaped::Missing);
    }
    Ok(Reaped::Reaped {
        expired: reply.at(1)?,
        next_in: until(reply.at(2)?, reply.at(3)?),
    })
}

pub(super) fn sync(value: &Value) -> RedisResult<Synced> {
    let reply = Reply::of("sync", value)?;
    let mut tickets = Vec::with_capacity(reply.items.len().saturating_sub(3));
    for i in 3..reply.items.len() {
        let word: String = reply.at(i)?;
        tickets.push(match word.as_str() {
            "q" => TicketState::Queued,
            "r" => TicketState::Requeued,
            "x" => TicketState::Mismatch,
            "g" => TicketState::GaveUp,
            offer => match offer.strip_prefix("o|") {
                Some(token) => TicketState::Offered(LockToken::minted(token.to_owned())),
                None => return Err(reply.refused()),
            },
        });
    }
    Ok(Synced {
        next_in: until(reply.at(0)?, reply.at(1)?),
        permits: reply.at(2)?,
        tickets,
    })
}

pub(super) fn inspect(value: &Value) -> RedisResult<LockState> {
    let reply = Reply::of("inspect", value)?;
    let permits: i64 = reply.at(0)?;
    let fence: i64 = reply.at(3)?;
    let pairs: Vec<u64> = reply.at(5)?;
    let token_state: String = reply.at(6)?;
    let token_deadline: i64 = reply.at(7)?;
    Ok(LockState {
        permits: u32::try_from(permits).ok(),
        held: reply.at(1)?,
        holders: pairs
            .chunks_exact(2)
            .map(|pair| Holder {
                fence: pair[0],
                deadline_ms: pair[1],
            })
            .collect(),
        waiting: reply.at(2)?,
        fence: (permits >= 0).then_some(fence as u64),
        token: match token_state.as_str() {
            "" => None,
            "held" => Some(Ok(token_deadline.max(0) as u64)),
            reason => Some(Err(NotHeldReason::from_script(reason))),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|w| Value::BulkString(w.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn replies_of_every_shape_are_read_and_junk_is_an_error() {
        assert_eq!(
            acquire(&words(&["queued", "1500", "1000", "1795000000000001"])).unwrap(),
            AcquireOutcome::Queued(Queued {
                next_in: Some(Duration::from_millis(500)),
                arrival_us: 1_795_000_000_000_001,
            })
        );
        assert_eq!(
            acquire(&words(&["queued", "-1", "1000", "7"])).unwrap(),
            AcquireOutcome::Queued(Queued {
                next_in: None,
                arrival_us: 7
            })
        );
        assert_eq!(
            release(&words(&["not_held", "expired"])).unwrap(),
            Err(NotHeldReason::Expired)
        );
        assert_eq!(
            sync(&words(&["-1", "5", "2", "q", "o|ab.1.2.cd", "r"]))
                .unwrap()
                .tickets,
            vec![
                TicketState::Queued,
                TicketState::Offered(LockToken::minted("ab.1.2.cd".into())),
                TicketState::Requeued
            ]
        );
        assert!(acquire(&words(&["granted"])).is_err());
        assert!(release(&words(&["maybe"])).is_err());
        assert!(sync(&words(&["-1", "5", "2", "what"])).is_err());
        assert!(reap(&Value::Nil).is_err());
    }
}
