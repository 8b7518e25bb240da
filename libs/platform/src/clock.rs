//! Time. Every service reads time from a [`Clock`]; nothing calls `now()` directly, so tests
//! and `winback demo` can drive a manual clock and run a 30-day chain in seconds.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;

/// Now on the wall clock, in Unix microseconds, whatever the service clock says. Leases of
/// work in flight run on it: a manual clock that jumps ahead (tests, the demo) must not
/// make a worker's lease look expired while the worker is still busy with it.
pub fn wall_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// A source of the current time.
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// For a clock moved by hand: a receiver that sees every move, so that workers waiting
    /// for due work wake when the clock jumps instead of polling for it. `None` for a
    /// clock that moves by itself.
    fn moves(&self) -> Option<watch::Receiver<()>> {
        None
    }
}

/// Waits for the next move of a clock ([`Clock::moves`]); forever when there is none (or
/// the clock is gone, after which `moves` is cleared).
pub async fn next_move(moves: &mut Option<watch::Receiver<()>>) {
    if let Some(receiver) = moves.as_mut() {
        if receiver.changed().await.is_ok() {
            return;
        }
        *moves = None;
    }
    std::future::pending::<()>().await;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    moved: Arc<watch::Sender<()>>,
}

impl ManualClock {
    /// A manual clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
            moved: Arc::new(watch::Sender::new(())),
        }
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: Duration) {
        {
            let mut now = self
                .now
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *now += by;
        }
        self.moved.send_replace(());
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        {
            let mut now = self
                .now
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *now = to;
        }
        self.moved.send_replace(());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn moves(&self) -> Option<watch::Receiver<()>> {
        Some(self.moved.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_time() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        let shared = clock.clone();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::days(30));
        assert_eq!(shared.now(), start + Duration::days(30));
        let moves = shared.moves().unwrap();
        assert!(!moves.has_changed().unwrap());
        clock.advance(Duration::hours(6));
        assert!(
            moves.has_changed().unwrap(),
            "a move is seen by every clone's receivers"
        );
        assert!(SystemClock.moves().is_none());
        shared.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn system_clock_is_close_to_utc_now() {
        let delta = (SystemClock.now() - Utc::now()).num_seconds().abs();
        assert!(delta < 5);
    }
}
