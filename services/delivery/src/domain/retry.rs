//! When to try a transiently failed message again: exponential backoff with full jitter,
//! never sooner than the provider's `Retry-After`.

/// The delay before attempt `attempts + 1`, in milliseconds. `jitter` is uniform in [0, 1).
pub(crate) fn delay_ms(
    attempts: u32,
    base_ms: u64,
    max_ms: u64,
    retry_after_ms: Option<u64>,
    jitter: f64,
) -> u64 {
    let exponential = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
    let capped = exponential.min(max_ms);
    // Half fixed, half random: spreads a burst of retries without ever retrying at once.
    let delay = capped / 2 + ((capped / 2) as f64 * jitter) as u64;
    delay
        .max(retry_after_ms.unwrap_or(0))
        .min(max_ms.max(retry_after_ms.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_honours_retry_after() {
        assert_eq!(delay_ms(1, 1000, 60_000, None, 0.0), 500);
        assert_eq!(delay_ms(1, 1000, 60_000, None, 0.999), 999);
        assert_eq!(delay_ms(3, 1000, 60_000, None, 0.0), 2000);
        assert_eq!(delay_ms(20, 1000, 60_000, None, 0.0), 30_000);
        assert!(delay_ms(20, 1000, 60_000, None, 0.99) <= 60_000);
        assert_eq!(delay_ms(1, 1000, 60_000, Some(5_000), 0.0), 5_000);
    }
}
