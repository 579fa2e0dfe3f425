//! Client-side pacing of requests to the provider's limits.
//!
//! Every attempt, first try or retry, passes [`Limiter::acquire`], so a 429 storm cannot turn into a retry storm:
//! - token buckets for requests and tokens per minute (`--rpm`, `--tpm`), or learned from `x-ratelimit-*` headers;
//! - an adaptive concurrency window (AIMD): halved on a 429, grown by about one request per window of successes,
//!   never above `--concurrency`;
//! - a pause for everyone when a 429 says how long to wait.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::retry::parse_go_duration;

/// Buckets hold this many seconds of their per-minute rate. Providers enforce per-minute limits over shorter
/// periods too (OpenAI documents limits quantised to a second or two), so a burst of more than a second's worth is
/// refused there even when the minute has room; a second's burst is what both kinds of server let through.
const BURST_SECS: f64 = 1.0;
/// Concurrent 429s from one overload halve the window once, not once each.
const DECREASE_SPACING: Duration = Duration::from_secs(1);
/// A 429 without a hint pauses new requests this long.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    available: f64,
    per_sec: f64,
    updated: Instant,
}

impl Bucket {
    fn per_minute(rate: f64, now: Instant) -> Self {
        let capacity = (rate * BURST_SECS / 60.0).max(1.0);
        Self { capacity, available: capacity, per_sec: rate / 60.0, updated: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.available = (self.available + elapsed * self.per_sec).min(self.capacity);
        self.updated = now;
    }

    /// How long until `cost` may be taken. A cost above the capacity waits for a full bucket and then runs the
    /// bucket into debt, so one large request is slowed, never refused.
    fn wait_for(&self, cost: f64) -> Duration {
        let needed = cost.min(self.capacity) - self.available;
        if needed <= 0.0 || self.per_sec <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(needed / self.per_sec)
        }
    }
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Requests allowed in flight now (fractional, for additive increase).
    window: f64,
    max: usize,
    in_flight: usize,
    paused_until: Option<Instant>,
    last_decrease: Option<Instant>,
    /// Whether the token buckets were set by the user (then headers only tighten them).
    configured_tokens: bool,
    configured_requests: bool,
}

pub struct Limiter {
    state: Mutex<State>,
    changed: Notify,
}

/// A slot in the window; freed on drop.
pub struct Permit<'a> {
    limiter: &'a Limiter,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.limiter.state.lock() {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.limiter.changed.notify_waiters();
    }
}

impl Limiter {
    pub fn new(limits: RateLimits, max_concurrency: usize) -> Self {
        let now = Instant::now();
        let max = max_concurrency.max(1);
        Self {
            state: Mutex::new(State {
                requests: limits.requests_per_minute.map(|r| Bucket::per_minute(f64::from(r), now)),
                tokens: limits.tokens_per_minute.map(|t| Bucket::per_minute(t as f64, now)),
                window: max as f64,
                max,
                in_flight: 0,
                paused_until: None,
                last_decrease: None,
                configured_tokens: limits.tokens_per_minute.is_some(),
                configured_requests: limits.requests_per_minute.is_some(),
            }),
            changed: Notify::new(),
        }
    }

    /// Whether requests must be costed in tokens (a token budget is known).
    pub fn counts_tokens(&self) -> bool {
        self.state.lock().map(|s| s.tokens.is_some()).unwrap_or(false)
    }

    /// The current concurrency window.
    pub fn window(&self) -> usize {
        self.state.lock().map(|s| s.window.floor() as usize).unwrap_or(1)
    }

    /// Waits until a request of `tokens` tokens may be sent.
    pub async fn acquire(&self, tokens: u64) -> Permit<'_> {
        loop {
            let notified = self.changed.notified();
            let wait = {
                let Ok(mut guard) = self.state.lock() else { return Permit { limiter: self } };
                let s = &mut *guard;
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ => {
                        if s.in_flight >= (s.window.floor() as usize).max(1) {
                            None // until a request finishes
                        } else {
                            for bucket in [&mut s.requests, &mut s.tokens].into_iter().flatten() {
                                bucket.refill(now);
                            }
                            let wait = [(&s.requests, 1.0), (&s.tokens, tokens as f64)]
                                .iter()
                                .filter_map(|(b, cost)| b.as_ref().map(|b| b.wait_for(*cost)))
                                .max()
                                .unwrap_or(Duration::ZERO);
                            if wait.is_zero() {
                                if let Some(b) = &mut s.requests {
                                    b.available -= 1.0;
                                }
                                if let Some(b) = &mut s.tokens {
                                    b.available -= tokens as f64;
                                }
                                s.in_flight += 1;
                                return Permit { limiter: self };
                            }
                            Some(wait)
                        }
                    }
                }
            };
            match wait {
                Some(d) => {
                    let _ = tokio::time::timeout(d, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// A healthy response: the window grows by about one request per window of successes.
    pub fn success(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.window = (s.window + 1.0 / s.window.max(1.0)).min(s.max as f64);
        }
        self.changed.notify_waiters();
    }

    /// A 429: halve the window (once per burst) and hold every new request for the server's hint.
    pub fn rate_limited(&self, hint: Option<Duration>) {
        if let Ok(mut s) = self.state.lock() {
            let now = Instant::now();
            if s.last_decrease.is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_SPACING) {
                s.window = (s.window / 2.0).max(1.0);
                s.last_decrease = Some(now);
            }
            let until = now + hint.unwrap_or(DEFAULT_PAUSE);
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    /// Learns a limit from a 429's message when no header stated it, as OpenAI words it: "Rate limit reached for
    /// … on tokens per min (TPM): Limit 600000, Used …". The bucket starts empty: the server just said it is.
    pub fn learn_from_message(&self, message: &str) {
        let Ok(mut guard) = self.state.lock() else { return };
        let s = &mut *guard;
        let now = Instant::now();
        for (unit, configured) in [("(TPM): Limit ", s.configured_tokens), ("(RPM): Limit ", s.configured_requests)] {
            let Some(at) = message.find(unit) else { continue };
            let digits: String =
                message[at + unit.len()..].chars().take_while(|c| c.is_ascii_digit() || *c == ',').collect();
            let Some(limit) = digits.replace(',', "").parse::<f64>().ok().filter(|l| *l > 0.0) else { continue };
            let bucket = if unit.contains("TPM") { &mut s.tokens } else { &mut s.requests };
            if bucket.is_none() && !configured {
                let mut learned = Bucket::per_minute(limit, now);
                learned.available = 0.0;
                *bucket = Some(learned);
            }
        }
    }

    /// Learns the provider's limits from `x-ratelimit-*` headers: a bucket of the stated size, and what it says
    /// remains until the stated reset. Missing or odd headers change nothing.
    pub fn learn(&self, headers: &HeaderMap) {
        let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok().filter(|v| *v >= 0.0);
        let duration = |name: &str| parse_go_duration(headers.get(name)?.to_str().ok()?);
        let Ok(mut guard) = self.state.lock() else { return };
        let s = &mut *guard;
        let now = Instant::now();
        for (kind, configured) in [("tokens", s.configured_tokens), ("requests", s.configured_requests)] {
            let limit = number(&format!("x-ratelimit-limit-{kind}")).filter(|l| *l > 0.0);
            let remaining = number(&format!("x-ratelimit-remaining-{kind}"));
            let reset = duration(&format!("x-ratelimit-reset-{kind}"));
            let bucket = if kind == "tokens" { &mut s.tokens } else { &mut s.requests };
            if bucket.is_none()
                && !configured
                && let Some(limit) = limit
            {
                *bucket = Some(Bucket::per_minute(limit, now));
            }
            if let (Some(b), Some(remaining)) = (bucket.as_mut(), remaining) {
                b.refill(now);
                // What the server says is left, less what we have sent since (unknown): trust the lower figure.
                b.available = b.available.min(remaining);
                if remaining < 1.0
                    && let Some(reset) = reset
                {
                    let until = now + reset;
                    s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_are_paced_after_the_burst() {
        // 6 per minute: a burst of one, then one every 10 s.
        let limiter = Limiter::new(RateLimits { requests_per_minute: Some(6), tokens_per_minute: None }, 4);
        let start = Instant::now();
        for _ in 0..4 {
            drop(limiter.acquire(0).await);
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((29.9..30.5).contains(&elapsed), "4 requests at 6/min took {elapsed} s");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_are_paced_and_a_large_request_is_slowed_not_refused() {
        // 6000 tokens per minute = 100 per second, bucket of 100 (one second).
        let limiter = Limiter::new(RateLimits { requests_per_minute: None, tokens_per_minute: Some(6000) }, 4);
        assert!(limiter.counts_tokens());
        let start = Instant::now();
        drop(limiter.acquire(1000).await); // more than the bucket, which is full: sent at once, 900 in debt
        drop(limiter.acquire(500).await); // the debt and a full bucket: 10 s; then 400 in debt
        drop(limiter.acquire(5000).await); // 5 s; then 4900 in debt
        drop(limiter.acquire(100).await); // pays the debt back first: 50 s
        let elapsed = start.elapsed().as_secs_f64();
        assert!((64.9..65.5).contains(&elapsed), "took {elapsed} s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_halves_on_429s_once_per_burst_and_grows_back_to_the_maximum() {
        let limiter = Limiter::new(RateLimits::default(), 8);
        assert_eq!(limiter.window(), 8);
        limiter.rate_limited(Some(Duration::from_millis(10)));
        limiter.rate_limited(Some(Duration::from_millis(10))); // the same burst
        assert_eq!(limiter.window(), 4);
        tokio::time::advance(Duration::from_secs(2)).await;
        limiter.rate_limited(None);
        assert_eq!(limiter.window(), 2);
        for _ in 0..100 {
            limiter.success();
        }
        assert_eq!(limiter.window(), 8, "grows back, never past --concurrency");
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_never_exceed_the_window_and_a_429_pauses_everyone() {
        let limiter = Limiter::new(RateLimits::default(), 2);
        let a = limiter.acquire(0).await;
        let b = limiter.acquire(0).await;
        let third = tokio::time::timeout(Duration::from_secs(5), limiter.acquire(0)).await;
        assert!(third.is_err(), "a third request waited for a free slot");
        drop((a, b));
        let start = Instant::now();
        limiter.rate_limited(Some(Duration::from_secs(3)));
        drop(limiter.acquire(0).await);
        assert!(start.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn headers_teach_the_limits_and_an_exhausted_budget_waits_for_its_reset() {
        let limiter = Limiter::new(RateLimits::default(), 4);
        assert!(!limiter.counts_tokens());
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit-tokens", HeaderValue::from_static("60000"));
        headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6s"));
        limiter.learn(&headers);
        assert!(limiter.counts_tokens());
        let start = Instant::now();
        drop(limiter.acquire(100).await);
        assert!(start.elapsed() >= Duration::from_secs(6), "waited {:?}", start.elapsed());

        let mut odd = HeaderMap::new();
        odd.insert("x-ratelimit-limit-requests", HeaderValue::from_static("-1"));
        odd.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("lots"));
        limiter.learn(&odd); // Azure-style nonsense changes nothing
        let start = Instant::now();
        drop(limiter.acquire(0).await);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_message_teaches_the_limit_when_no_header_does() {
        let limiter = Limiter::new(RateLimits::default(), 4);
        limiter.learn_from_message("HTTP 429: Rate limit reached for text-embedding-3-small on requests per min.");
        assert!(!limiter.counts_tokens(), "no figure, nothing learned");
        limiter.learn_from_message(
            "HTTP 429: Rate limit reached for text-embedding-3-small in organization org-x on tokens per min (TPM): \
             Limit 6,000, Used 5,900, Requested 200. Please try again in 2s.",
        );
        assert!(limiter.counts_tokens());
        // 6000 per minute = 100 per second, from an empty bucket of 100: a full bucket (1 s), then into debt.
        let start = Instant::now();
        drop(limiter.acquire(300).await);
        let waited = start.elapsed().as_secs_f64();
        assert!((0.9..1.2).contains(&waited), "waited {waited} s");
        drop(limiter.acquire(100).await); // the debt of 200 and this request: 3 s more
        let waited = start.elapsed().as_secs_f64();
        assert!((3.9..4.2).contains(&waited), "waited {waited} s");

        let configured = Limiter::new(RateLimits { requests_per_minute: None, tokens_per_minute: Some(60_000) }, 4);
        configured.learn_from_message("on tokens per min (TPM): Limit 6000, Used 6000, Requested 1.");
        let start = Instant::now();
        drop(configured.acquire(300).await);
        assert!(start.elapsed() < Duration::from_millis(10), "--tpm wins over a message");
    }
}
