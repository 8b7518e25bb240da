//! Per-provider limits: at most `concurrency` requests in flight and at most `rate`
//! requests started per second (evenly spaced, so a provider's per-second limit is never
//! hit in a burst). Real time, not the service clock: providers count in real seconds.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Limits {
    in_flight: std::sync::Arc<Semaphore>,
    /// Time between two starts; None for no rate limit.
    spacing: Option<Duration>,
    /// When the next request may start.
    next_start: Mutex<Instant>,
}

impl Limits {
    /// `rate_per_second` 0 means no rate limit.
    pub(crate) fn new(concurrency: usize, rate_per_second: u32) -> Self {
        Self {
            in_flight: std::sync::Arc::new(Semaphore::new(concurrency.max(1))),
            spacing: (rate_per_second > 0)
                .then(|| Duration::from_secs_f64(1.0 / f64::from(rate_per_second))),
            next_start: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a free slot and for the request's turn; hold the permit while sending.
    pub(crate) async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.in_flight.clone().acquire_owned().await.ok()?;
        if let Some(spacing) = self.spacing {
            let start = {
                let mut next = self
                    .next_start
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let start = (*next).max(Instant::now());
                *next = start + spacing;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        Some(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_spaces_starts_evenly() {
        let limits = Limits::new(100, 10);
        let begin = Instant::now();
        for _ in 0..21 {
            let _permit = limits.admit().await;
        }
        // 21 starts at 10/s: the last one 2 s after the first.
        assert_eq!(begin.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn concurrency_caps_requests_in_flight() {
        let limits = Limits::new(2, 0);
        let a = limits.admit().await;
        let b = limits.admit().await;
        assert!(a.is_some() && b.is_some());
        let third = tokio::time::timeout(Duration::from_millis(20), limits.admit()).await;
        assert!(
            third.is_err(),
            "a third request waits while two are in flight"
        );
        drop(a);
        assert!(limits.admit().await.is_some());
    }
}
