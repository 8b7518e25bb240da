//! What a message carries besides its content, for whoever reads it after it left: the
//! customer, the channel, the caller's metadata (campaigns put campaign, variant, step and
//! coupon there) and when it went out, in UTC and in the recipient's local time. Email
//! carries it as `X-Winback-*` headers, the JSON-lines outbox as fields.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use winback_proto::common::Channel;

use super::Outgoing;

/// The stamp of one message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamp {
    pub(crate) customer_id: String,
    pub(crate) channel: String,
    /// RFC 3339, UTC.
    pub(crate) sent_at: String,
    /// RFC 3339 with the offset of the recipient's zone; empty without a known zone.
    pub(crate) sent_at_local: String,
    pub(crate) metadata: BTreeMap<String, String>,
}

impl Stamp {
    pub(crate) fn of(m: &Outgoing<'_>) -> Self {
        let msg = m.message;
        let sent = DateTime::<Utc>::from_timestamp(m.now_unix, 0).unwrap_or_default();
        let sent_at_local = msg
            .metadata
            .get("time_zone")
            .and_then(|zone| zone.parse::<chrono_tz::Tz>().ok())
            .map(|zone| {
                sent.with_timezone(&zone)
                    .to_rfc3339_opts(SecondsFormat::Secs, false)
            })
            .unwrap_or_default();
        Self {
            customer_id: msg.customer_id.clone(),
            channel: channel_name(msg.channel),
            sent_at: sent.to_rfc3339_opts(SecondsFormat::Secs, true),
            sent_at_local,
            metadata: msg
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// `X-Winback-*` header names and values, in a stable order.
    pub(crate) fn headers(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("X-Winback-Customer-Id".to_owned(), self.customer_id.clone()),
            ("X-Winback-Channel".to_owned(), self.channel.clone()),
            ("X-Winback-Sent-At".to_owned(), self.sent_at.clone()),
        ];
        if !self.sent_at_local.is_empty() {
            out.push((
                "X-Winback-Sent-At-Local".to_owned(),
                self.sent_at_local.clone(),
            ));
        }
        for (key, value) in &self.metadata {
            if let Some(name) = header_name(key) {
                out.push((name, value.clone()));
            }
        }
        out
    }

    /// The fields of a JSON-lines record.
    pub(crate) fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for (key, value) in &self.metadata {
            out.insert(key.clone(), value.clone().into());
        }
        out.insert("customer_id".into(), self.customer_id.clone().into());
        out.insert("channel".into(), self.channel.clone().into());
        out.insert("sent_at".into(), self.sent_at.clone().into());
        out.insert("sent_at_local".into(), self.sent_at_local.clone().into());
        out
    }
}

/// `email`, `sms`, `push`, `messenger`, `manager_task`.
pub(crate) fn channel_name(channel: i32) -> String {
    Channel::try_from(channel)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("CHANNEL_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// `campaign_id` → `X-Winback-Campaign-Id`; a key that cannot be a header name is left out.
fn header_name(key: &str) -> Option<String> {
    let words: Vec<String> = key
        .split(['_', '-', '.'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase()
            })
        })
        .collect();
    let ok = !words.is_empty()
        && words
            .iter()
            .all(|w| w.chars().all(|c| c.is_ascii_alphanumeric()));
    ok.then(|| format!("X-Winback-{}", words.join("-")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::messages::MessageRow;

    fn outgoing(row: &MessageRow, now_unix: i64) -> Outgoing<'_> {
        Outgoing {
            message: row,
            unsubscribe_url: String::new(),
            status_callback_url: String::new(),
            now_unix,
        }
    }

    #[test]
    fn stamps_campaign_step_coupon_and_local_time() {
        let row = MessageRow {
            customer_id: "c-1".into(),
            channel: Channel::Email as i32,
            metadata: HashMap::from([
                ("campaign_id".to_owned(), "camp".to_owned()),
                ("step".to_owned(), "2".to_owned()),
                ("coupon_code".to_owned(), "ABC".to_owned()),
                ("time_zone".to_owned(), "Asia/Vladivostok".to_owned()),
                ("bad key!".to_owned(), "x".to_owned()),
            ]),
            ..MessageRow::default()
        };
        // 2026-06-01T08:00:00Z is 18:00 in Vladivostok (UTC+10).
        let stamp = Stamp::of(&outgoing(&row, 1_780_300_800));
        assert_eq!(stamp.sent_at, "2026-06-01T08:00:00Z");
        assert_eq!(stamp.sent_at_local, "2026-06-01T18:00:00+10:00");
        let headers: HashMap<String, String> = stamp.headers().into_iter().collect();
        assert_eq!(headers["X-Winback-Campaign-Id"], "camp");
        assert_eq!(headers["X-Winback-Step"], "2");
        assert_eq!(headers["X-Winback-Coupon-Code"], "ABC");
        assert_eq!(headers["X-Winback-Channel"], "email");
        assert_eq!(headers["X-Winback-Customer-Id"], "c-1");
        assert_eq!(
            headers["X-Winback-Sent-At-Local"],
            "2026-06-01T18:00:00+10:00"
        );
        assert!(!headers.keys().any(|k| k.contains("Bad")), "{headers:?}");
        let json = stamp.json();
        assert_eq!(json["coupon_code"], "ABC");
        assert_eq!(json["sent_at_local"], "2026-06-01T18:00:00+10:00");
    }

    #[test]
    fn without_a_zone_there_is_no_local_time() {
        let row = MessageRow {
            channel: Channel::Sms as i32,
            ..MessageRow::default()
        };
        let stamp = Stamp::of(&outgoing(&row, 0));
        assert_eq!(stamp.sent_at_local, "");
        assert_eq!(stamp.channel, "sms");
        assert!(
            !stamp
                .headers()
                .iter()
                .any(|(k, _)| k == "X-Winback-Sent-At-Local")
        );
    }
}
