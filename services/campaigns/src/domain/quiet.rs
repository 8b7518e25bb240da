//! Quiet hours in the customer's own time zone: a step that falls inside waits for the next
//! allowed local time.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Quiet hours: local `start` to local `end` (crossing midnight when start > end; none when
/// they are equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuietHours {
    pub(crate) start: NaiveTime,
    pub(crate) end: NaiveTime,
}

impl QuietHours {
    /// Whether local time `t` is inside the quiet hours (the start inclusive, the end not).
    fn contains(&self, t: NaiveTime) -> bool {
        if self.start == self.end {
            false
        } else if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// `None` when `at` is allowed in `tz`; otherwise the next allowed instant (the end of
    /// the quiet hours, local).
    pub(crate) fn next_allowed(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&tz);
        if !self.contains(local.time()) {
            return None;
        }
        let mut date = local.date_naive();
        if local.time() >= self.end {
            date = date.succ_opt().unwrap_or(date);
        }
        let mut wanted = date.and_time(self.end);
        // A daylight-saving gap swallows some local times: take the first that exists.
        for _ in 0..4 {
            if let Some(t) = tz.from_local_datetime(&wanted).earliest() {
                return Some(t.with_timezone(&Utc));
            }
            wanted += Duration::minutes(30);
        }
        Some(at + Duration::hours(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours() -> QuietHours {
        QuietHours {
            start: NaiveTime::from_hms_opt(21, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn the_boundaries_are_start_inclusive_end_exclusive() {
        let moscow: Tz = "Europe/Moscow".parse().unwrap(); // UTC+3
        // 20:59:59 local: allowed.
        assert_eq!(
            hours().next_allowed(utc("2026-03-10T17:59:59Z"), moscow),
            None
        );
        // 21:00 local: waits for 09:00 the next morning, local.
        assert_eq!(
            hours().next_allowed(utc("2026-03-10T18:00:00Z"), moscow),
            Some(utc("2026-03-11T06:00:00Z"))
        );
        // 08:59:59 local: waits one second.
        assert_eq!(
            hours().next_allowed(utc("2026-03-11T05:59:59Z"), moscow),
            Some(utc("2026-03-11T06:00:00Z"))
        );
        // 09:00 local: allowed.
        assert_eq!(
            hours().next_allowed(utc("2026-03-11T06:00:00Z"), moscow),
            None
        );
    }

    #[test]
    fn the_same_instant_is_night_in_one_zone_and_day_in_another() {
        let at = utc("2026-03-10T20:00:00Z");
        let vladivostok: Tz = "Asia/Vladivostok".parse().unwrap(); // 06:00 local
        let london: Tz = "Europe/London".parse().unwrap(); // 20:00 local
        assert_eq!(
            hours().next_allowed(at, vladivostok),
            Some(utc("2026-03-10T23:00:00Z"))
        );
        assert_eq!(hours().next_allowed(at, london), None);
    }

    #[test]
    fn a_daylight_saving_change_moves_the_morning_in_utc() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Night of 28–29 March 2026: clocks go forward; 09:00 CEST is 07:00 UTC.
        assert_eq!(
            hours().next_allowed(utc("2026-03-28T22:00:00Z"), berlin),
            Some(utc("2026-03-29T07:00:00Z"))
        );
    }

    #[test]
    fn equal_start_and_end_mean_no_quiet_hours() {
        let q = QuietHours {
            start: NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
        };
        assert_eq!(
            q.next_allowed(utc("2026-03-10T02:00:00Z"), chrono_tz::UTC),
            None
        );
    }
}
