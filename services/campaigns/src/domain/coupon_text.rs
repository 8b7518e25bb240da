//! How a coupon's expiry reads in a message: in the customer's time zone, with the zone
//! named, so "until 18:00" means the customer's 18:00.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// `expires` as `YYYY-MM-DD HH:MM (Zone)` in `zone` (an IANA name); UTC when the zone is
/// empty or unknown.
pub(crate) fn expiry(expires: DateTime<Utc>, zone: &str) -> String {
    let tz: Tz = zone.parse().unwrap_or(chrono_tz::UTC);
    format!(
        "{} ({})",
        expires.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
        tz.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_is_the_customers_local_time_with_its_zone() {
        let at = DateTime::parse_from_rfc3339("2026-12-10T15:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            expiry(at, "Europe/Moscow"),
            "2026-12-10 18:00 (Europe/Moscow)"
        );
        assert_eq!(
            expiry(at, "Asia/Vladivostok"),
            "2026-12-11 01:00 (Asia/Vladivostok)"
        );
        assert_eq!(expiry(at, ""), "2026-12-10 15:00 (UTC)");
        assert_eq!(expiry(at, "Mars/Olympus"), "2026-12-10 15:00 (UTC)");
    }
}
