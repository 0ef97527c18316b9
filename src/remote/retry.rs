//! When to try a request again, and how long to wait first.
//!
//! Only what is safe to repeat is retried: a request that opens and closes its own stream and
//! only reads (every `execute_many`, clone pages included), and a whole push transaction, which
//! re-reads every row it touches and skips the rows already there (see `push`). A single request
//! inside a stream is never retried: the server hands out a new baton with each answer, so after
//! a lost answer the stream cannot be continued.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use super::RemoteError;

/// How long a command keeps retrying one operation before giving up, unless `--retry-for`
/// says otherwise. Long enough to ride out a server restart or a short outage.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(60);
/// The first wait; each next one doubles, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);
/// A refused connection to a server that never answered this process is most likely a wrong
/// URL or port, so it is retried only this long: the user hears about it within seconds.
pub(super) const FIRST_CONTACT: Duration = Duration::from_secs(3);

/// Something that may carry a [`RemoteError`], so callers' own error types can be retried.
pub trait Transient: Sized {
    /// The remote failure inside, if any.
    fn remote(&self) -> Option<&RemoteError>;
    /// The error to return once retries ran out: the last one, saying so.
    fn gave_up(self, after: Duration, attempts: u32) -> Self;
}

impl Transient for RemoteError {
    fn remote(&self) -> Option<&RemoteError> {
        Some(self)
    }

    fn gave_up(self, after: Duration, attempts: u32) -> Self {
        RemoteError::GaveUp {
            after: after.as_secs(),
            attempts,
            last: Box::new(self),
        }
    }
}

/// Exponential backoff with jitter for one operation, bounded in total time.
pub(super) struct Backoff {
    started: Instant,
    attempts: u32,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            started: Instant::now(),
            attempts: 1,
        }
    }

    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long to wait before the next attempt after `err`, or `None` once `limit` (counted
    /// from the first attempt) has passed. The last wait is cut short so that one attempt
    /// comes right at the limit. A `Retry-After` from the server is honored: the wait is never
    /// shorter, and one that ends past the limit ends the retries now.
    pub(super) fn next(&mut self, err: &RemoteError, limit: Duration) -> Option<Duration> {
        let ceiling = doubling(FIRST_DELAY, self.attempts.saturating_sub(1), MAX_DELAY);
        // "Equal jitter": half fixed, half random, so clients that failed together spread out
        // but none retries at once.
        let delay = ceiling / 2 + ceiling.mul_f64(random_unit() / 2.0);
        let remaining = limit.saturating_sub(self.started.elapsed());
        let delay = match err.retry_after() {
            Some(after) if after > remaining => return None,
            Some(after) => delay.max(after),
            None => delay,
        };
        if remaining.is_zero() {
            return None;
        }
        self.attempts += 1;
        Some(delay.min(remaining))
    }
}

/// The one backoff policy of the crate: `first`, doubled `n` times, at most `max`. Requests
/// retried here wait about this (with jitter); `watch` waits exactly this between failed
/// rounds (1 s, 2 s, 4 s … 60 s).
pub(crate) fn doubling(first: Duration, n: u32, max: Duration) -> Duration {
    first.saturating_mul(1 << n.min(16)).min(max)
}

/// A number in `[0, 1)`, different on every call.
fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 64 bits, different on every call: std's randomly keyed hasher, fed the time. For spreading
/// retries and choosing samples, not for secrets.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Reads a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = humantime::parse_rfc3339_weak(&http_date_to_rfc3339(value)?).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → `1994-11-06 08:49:37`.
fn http_date_to_rfc3339(value: &str) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    Some(format!("{year}-{month:02}-{day:0>2} {time}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_honors_retry_after_and_stops_at_the_limit() {
        let busy = RemoteError::Unavailable {
            status: 503,
            retry_after: None,
        };
        let mut b = Backoff::new();
        let first = b.next(&busy, Duration::from_secs(60)).unwrap();
        assert!(
            first >= FIRST_DELAY / 2 && first <= FIRST_DELAY,
            "{first:?}"
        );
        for _ in 0..10 {
            let d = b.next(&busy, Duration::from_secs(3600)).unwrap();
            assert!(d <= MAX_DELAY, "{d:?}");
        }
        assert!(b.next(&busy, Duration::from_secs(3600)).unwrap() >= MAX_DELAY / 2);
        let limited = RemoteError::Unavailable {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        let mut b = Backoff::new();
        assert!(b.next(&limited, Duration::from_secs(60)).unwrap() >= Duration::from_secs(7));
        assert_eq!(b.next(&limited, Duration::from_secs(5)), None);
        // The last wait ends at the limit, and then it is over.
        let mut b = Backoff::new();
        assert!(b.next(&busy, Duration::from_millis(30)).unwrap() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.next(&busy, Duration::from_millis(30)), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
