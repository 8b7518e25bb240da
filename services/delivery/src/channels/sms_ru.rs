//! SMS over SMS.ru: `POST /sms/send` with `api_id`, `to`, `msg`, `json=1`; the reply has a
//! status for the request and one per number. Delivery reports come back to the tracking
//! server's callback, signed with a SHA-256 hash.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use winback_proto::delivery::SmsRuSettings;

use super::http::{client, excerpt, is_transient, transient, unanswered};
use super::{Carrier, Failure, Outgoing};

#[derive(Debug)]
pub(crate) struct SmsRu {
    client: reqwest::Client,
    url: String,
    api_id: String,
    from: String,
}

impl SmsRu {
    pub(crate) fn new(s: &SmsRuSettings, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            client: client(timeout)?,
            url: format!("{}/sms/send", s.base_url.trim_end_matches('/')),
            api_id: s.api_id.clone(),
            from: s.from.clone(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Reply {
    status: String,
    status_code: i64,
    #[serde(default)]
    status_text: String,
    #[serde(default)]
    sms: HashMap<String, NumberReply>,
}

#[derive(Debug, Deserialize)]
struct NumberReply {
    status: String,
    status_code: i64,
    #[serde(default)]
    sms_id: String,
    #[serde(default)]
    status_text: String,
}

/// Per-number codes that mean the number itself is bad: 202 invalid number, 207 no route
/// to this number, 209 the number is in the stop list.
const SUPPRESSING_CODES: [i64; 3] = [202, 207, 209];
/// Request codes worth another try: 220 the service is temporarily unavailable, 230 the
/// daily message limit was reached, 231/232 too many messages to one number.
const TRANSIENT_CODES: [i64; 4] = [220, 230, 231, 232];

impl Carrier for SmsRu {
    async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        let msg = m.message;
        let to = msg.contact.trim_start_matches('+');
        let mut form = vec![
            ("api_id", self.api_id.as_str()),
            ("to", to),
            ("msg", msg.body_text.as_str()),
            ("json", "1"),
        ];
        if !self.from.is_empty() {
            form.push(("from", self.from.as_str()));
        }
        let response = self
            .client
            .post(&self.url)
            .form(&form)
            .send()
            .await
            .map_err(|e| unanswered("sms.ru", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| unanswered("sms.ru", &e))?;
        if !status.is_success() {
            let reason = format!("sms.ru http {}: {}", status.as_u16(), excerpt(&body));
            return Err(if is_transient(status) {
                transient(reason, &headers)
            } else {
                Failure::Permanent {
                    reason,
                    suppress: false,
                }
            });
        }
        let reply: Reply = serde_json::from_str(&body).map_err(|_| Failure::Transient {
            reason: format!("sms.ru: unreadable reply {}", excerpt(&body)),
            retry_after_ms: None,
        })?;
        if reply.status != "OK" {
            let reason = format!("sms.ru {}: {}", reply.status_code, reply.status_text);
            return Err(if TRANSIENT_CODES.contains(&reply.status_code) {
                transient(reason, &headers)
            } else {
                Failure::Permanent {
                    reason,
                    suppress: false,
                }
            });
        }
        let Some(number) = reply.sms.get(to).or_else(|| reply.sms.values().next()) else {
            return Err(Failure::Transient {
                reason: "sms.ru: no status for the number".into(),
                retry_after_ms: None,
            });
        };
        if number.status == "OK" {
            return Ok(number.sms_id.clone());
        }
        let reason = format!("sms.ru {}: {}", number.status_code, number.status_text);
        Err(if TRANSIENT_CODES.contains(&number.status_code) {
            transient(reason, &headers)
        } else {
            Failure::Permanent {
                suppress: SUPPRESSING_CODES.contains(&number.status_code),
                reason,
            }
        })
    }
}
