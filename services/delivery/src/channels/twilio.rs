//! SMS over Twilio's Messages API: a form POST with basic auth to
//! `/2010-04-01/Accounts/{sid}/Messages.json`, a JSON reply with `sid` and `status`, and a
//! status callback URL for delivery reports (checked by the tracking server).

use std::time::Duration;

use serde::Deserialize;
use winback_proto::delivery::TwilioSettings;

use super::http::{client, excerpt, is_transient, transient, unanswered};
use super::{Carrier, Failure, Outgoing};

#[derive(Debug)]
pub(crate) struct Twilio {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: String,
    from: String,
}

impl Twilio {
    pub(crate) fn new(s: &TwilioSettings, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            client: client(timeout)?,
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                s.base_url.trim_end_matches('/'),
                s.account_sid
            ),
            account_sid: s.account_sid.clone(),
            auth_token: s.auth_token.clone(),
            from: s.from.clone(),
        })
    }
}

/// The reply to a send.
#[derive(Debug, Deserialize)]
struct Accepted {
    sid: String,
}

/// Twilio's error body.
#[derive(Debug, Deserialize)]
struct Refused {
    code: Option<i64>,
    message: Option<String>,
}

/// 21610: the recipient replied STOP; 21211: not a valid number; 21614: not a mobile
/// number; 21612: unreachable from this sender's route (e.g. a landline). The contact is bad.
const SUPPRESSING_CODES: [i64; 4] = [21610, 21211, 21614, 21612];

impl Carrier for Twilio {
    async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        let msg = m.message;
        // A messaging service SID ("MG…") picks the sender itself.
        let sender = if self.from.starts_with("MG") {
            "MessagingServiceSid"
        } else {
            "From"
        };
        let form = [
            ("To", msg.contact.as_str()),
            (sender, self.from.as_str()),
            ("Body", msg.body_text.as_str()),
            ("StatusCallback", m.status_callback_url.as_str()),
        ];
        let response = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form)
            .send()
            .await
            .map_err(|e| unanswered("twilio", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| unanswered("twilio", &e))?;
        if status.is_success() {
            return serde_json::from_str::<Accepted>(&body)
                .map(|a| a.sid)
                .map_err(|_| Failure::Transient {
                    reason: format!("twilio: unreadable reply {}", excerpt(&body)),
                    retry_after_ms: None,
                });
        }
        let refused: Option<Refused> = serde_json::from_str(&body).ok();
        let code = refused.as_ref().and_then(|r| r.code).unwrap_or_default();
        let reason = format!(
            "twilio {} {code}: {}",
            status.as_u16(),
            refused
                .and_then(|r| r.message)
                .unwrap_or_else(|| excerpt(&body))
        );
        if is_transient(status) {
            return Err(transient(reason, &headers));
        }
        Err(Failure::Permanent {
            suppress: SUPPRESSING_CODES.contains(&code),
            reason,
        })
    }
}
