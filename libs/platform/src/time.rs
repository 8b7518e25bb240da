//! Conversions between chrono times and protobuf timestamps and durations.

use chrono::{DateTime, TimeZone, Utc};

/// A protobuf timestamp of `t`.
pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The time of a protobuf timestamp, `None` when out of range.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    Utc.timestamp_opt(ts.seconds, ts.nanos as u32).single()
}

/// A protobuf duration of `d`.
pub fn to_duration(d: chrono::Duration) -> prost_types::Duration {
    let seconds = d.num_seconds();
    let nanos = (d - chrono::Duration::seconds(seconds))
        .num_nanoseconds()
        .unwrap_or(0) as i32;
    prost_types::Duration { seconds, nanos }
}

/// The chrono duration of a protobuf duration.
pub fn from_duration(d: &prost_types::Duration) -> chrono::Duration {
    chrono::Duration::seconds(d.seconds) + chrono::Duration::nanoseconds(i64::from(d.nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_durations_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 9, 30, 0).unwrap()
            + chrono::Duration::microseconds(123);
        assert_eq!(from_timestamp(&to_timestamp(t)), Some(t));
        let d = chrono::Duration::hours(72) + chrono::Duration::milliseconds(5);
        assert_eq!(from_duration(&to_duration(d)), d);
        assert_eq!(
            from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
