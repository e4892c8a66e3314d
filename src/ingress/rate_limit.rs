//! An account's optional `rate_limit` ("200/s"): a token bucket that holds at
//! most one second's worth of requests, so a burst can use the rate's full
//! second but no more. Beyond it the ingress answers 503 with `Retry-After`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: per_second,
                refilled: Instant::now(),
            }),
        }
    }

    /// Takes one request's token, or says how long until one is free.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another request panicked mid-update; the
        // bucket's two numbers are still usable.
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.per_second);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_rate_then_refuses_until_refilled() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(limiter.try_take(t0).is_ok());
        }
        let wait = limiter.try_take(t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(limiter.try_take(t0 + Duration::from_millis(100)).is_ok());
        assert!(limiter.try_take(t0 + Duration::from_millis(100)).is_err());
        // A long quiet spell refills one second's worth, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(limiter.try_take(later).is_ok());
        }
        assert!(limiter.try_take(later).is_err());
    }
}
