//! When to retry a request and how long to wait first (see ../shared/docs/tars-api.md §7 and §10).
//!
//! Kept apart from the HTTP client so the policy can be read and tested on its own.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// Backoff settings for a long batch job: more attempts and a longer cap than the SDK's interactive defaults, so
/// backoff outlasts a tokens-per-minute window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Retries after 429 rate-limit answers, counted apart: in a bulk run they are back-pressure, not failure, and
    /// every one of them is paced by the limiter; they only stop a request that the server keeps refusing.
    pub max_rate_limit_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// A server's retry-after hint is honoured up to this long.
    pub max_hint: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 6,
            max_rate_limit_retries: 30,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_hint: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry): the server's hint when it gave one, else
    /// exponential backoff with jitter in (75%, 100%] of the step.
    pub fn delay(&self, retry: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max_hint);
        }
        let step = self.initial_delay.as_secs_f64() * 2f64.powi(retry.min(64) as i32);
        let capped = step.min(self.max_delay.as_secs_f64());
        let jitter = 1.0 - 0.25 * rand::random::<f64>();
        Duration::from_secs_f64(capped * jitter)
    }
}

/// Error `code`/`type` values that mean the account is out of money or quota, not briefly rate-limited.
const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "billing_hard_limit_reached",
];

/// What an HTTP error status (with its parsed error type and code) means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Wait and send the same request again.
    Retry,
    /// The account's quota or credit is exhausted: retrying cannot help.
    Quota,
    /// The request or configuration is wrong (bad key, unknown model, invalid parameter): stop.
    Reject,
}

pub fn classify(
    status: StatusCode,
    error_type: Option<&str>,
    error_code: Option<&str>,
    headers: &HeaderMap,
) -> Disposition {
    let is_quota = [error_type, error_code].into_iter().flatten().any(|v| QUOTA_CODES.contains(&v));
    if is_quota || status == StatusCode::PAYMENT_REQUIRED {
        return Disposition::Quota;
    }
    match headers.get("x-should-retry").and_then(|v| v.to_str().ok()) {
        Some("true") => return Disposition::Retry,
        Some("false") => return Disposition::Reject,
        _ => {}
    }
    match status.as_u16() {
        408 | 409 | 429 => Disposition::Retry,
        s if s >= 500 => Disposition::Retry,
        _ => Disposition::Reject,
    }
}

/// The server's own idea of when to retry: `retry-after-ms`, then `retry-after` (seconds or an HTTP date), then a
/// "Please try again in 2.812s" message. Anything unparsable or non-positive is ignored.
pub fn server_hint(headers: &HeaderMap, message: &str) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms > 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<f64>() {
            if secs.is_finite() && secs > 0.0 {
                return Some(Duration::from_secs_f64(secs));
            }
        } else if let Ok(when) = httpdate::parse_http_date(value) {
            return when.duration_since(SystemTime::now()).ok().filter(|d| !d.is_zero());
        }
    }
    let (_, rest) = message.split_once("try again in ")?;
    let token = rest.split(|c: char| c.is_whitespace() || c == ',').next()?;
    parse_go_duration(token.trim_end_matches('.')).filter(|d| !d.is_zero())
}

/// Parses Go-style durations as used in `x-ratelimit-reset-*` and 429 messages: `6m0s`, `20ms`, `1m30.5s`, `2.812s`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (scale, len) =
            [("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("h", 3600.0), ("m", 60.0), ("s", 1.0)]
                .iter()
                .find(|(unit, _)| rest.starts_with(unit))
                .map(|(unit, scale)| (*scale, unit.len()))?;
        total += value * scale;
        rest = &rest[len..];
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        map
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("2.812s"), Some(Duration::from_secs_f64(2.812)));
        assert_eq!(parse_go_duration("1m30.5s"), Some(Duration::from_secs_f64(90.5)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "s", "12", "5x", "1.2.3s", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hints_in_priority_order() {
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "7")]);
        assert_eq!(server_hint(&h, ""), Some(Duration::from_millis(250)));
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(server_hint(&h, ""), Some(Duration::from_secs(7)));
        let msg = "Rate limit reached for text-embedding-3-small on tokens per min (TPM): Limit 1000000, Used 976163, \
                   Requested 70716. Please try again in 2.812s. Visit https://platform.openai.com/account/rate-limits";
        assert_eq!(server_hint(&HeaderMap::new(), msg), Some(Duration::from_secs_f64(2.812)));
        assert_eq!(server_hint(&HeaderMap::new(), "Please try again in 240ms."), Some(Duration::from_millis(240)));
        let h = headers(&[("retry-after", "garbage"), ("retry-after-ms", "-5")]);
        assert_eq!(server_hint(&h, "no hint here"), None);
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let hint = server_hint(&headers(&[("retry-after", &future)]), "").expect("date hint");
        assert!(hint > Duration::from_secs(25) && hint <= Duration::from_secs(30));
    }

    #[test]
    fn classification() {
        let none = HeaderMap::new();
        let c = |s: u16, t: Option<&str>, code: Option<&str>| {
            classify(StatusCode::from_u16(s).expect("status"), t, code, &none)
        };
        assert_eq!(c(429, Some("tokens"), Some("rate_limit_exceeded")), Disposition::Retry);
        assert_eq!(c(429, Some("insufficient_quota"), Some("insufficient_quota")), Disposition::Quota);
        assert_eq!(c(429, Some("insufficient_quota"), Some("credit_balance_exhausted")), Disposition::Quota);
        assert_eq!(c(402, None, None), Disposition::Quota);
        for s in [408, 409, 500, 502, 503, 504] {
            assert_eq!(c(s, None, None), Disposition::Retry, "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert_eq!(c(s, None, None), Disposition::Reject, "{s}");
        }
        let h = headers(&[("x-should-retry", "false")]);
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, None, None, &h), Disposition::Reject);
        let h = headers(&[("x-should-retry", "true")]);
        assert_eq!(classify(StatusCode::BAD_REQUEST, None, None, &h), Disposition::Retry);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy::default();
        for retry in 0..10 {
            let step = (0.5 * 2f64.powi(retry as i32)).min(30.0);
            let d = p.delay(retry, None).as_secs_f64();
            assert!(d > step * 0.75 - 1e-9 && d <= step + 1e-9, "retry {retry}: {d} not in ({}, {step}]", step * 0.75);
        }
        assert_eq!(p.delay(3, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(p.delay(0, Some(Duration::from_secs(3600))), p.max_hint);
    }
}
