//! What the HTTP carriers share: one client per carrier with the provider timeout, and the
//! reading of an HTTP answer as accepted, transient (429, 5xx, timeouts, with
//! `Retry-After`) or permanent.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::Failure;

/// A client for one provider: keeps connections alive, gives up after `timeout`.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// A request that got no answer: always worth another try.
pub(crate) fn unanswered(provider: &str, e: &reqwest::Error) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    Failure::Transient {
        reason: format!("{provider}: {what}: {e}"),
        retry_after_ms: None,
    }
}

/// 408, 429 and 5xx are worth another try (after `Retry-After` when the provider gave one).
pub(crate) fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// A transient failure carrying the provider's `Retry-After`.
pub(crate) fn transient(reason: String, headers: &HeaderMap) -> Failure {
    Failure::Transient {
        reason,
        retry_after_ms: retry_after_ms(headers),
    }
}

/// `Retry-After` in milliseconds: delta-seconds, or an HTTP date from now.
pub(crate) fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1_000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(ms.max(0) as u64)
}

/// A short, single-line excerpt of a provider's reply for the message's error.
pub(crate) fn excerpt(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_ms(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after_ms(&h), Some(7_000));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_ms(&h), Some(0), "a date in the past is now");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after_ms(&h), None);
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        assert!(is_transient(StatusCode::TOO_MANY_REQUESTS));
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_transient(StatusCode::REQUEST_TIMEOUT));
        assert!(!is_transient(StatusCode::BAD_REQUEST));
        assert!(!is_transient(StatusCode::UNAUTHORIZED));
    }
}
