//! Messenger messages and manager tasks as a JSON POST to the tenant's URL, signed so the
//! receiver can tell it came from us: `X-Winback-Signature: sha256=HEX(HMAC-SHA256(secret,
//! "{timestamp}.{body}"))` with `X-Winback-Timestamp`, and `Idempotency-Key` (the message
//! id) so a receiver drops a retry of something it already took.

use std::time::Duration;

use aws_lc_rs::hmac;
use serde_json::{Value, json};
use winback_proto::delivery::WebhookSettings;

use super::http::{client, excerpt, is_transient, transient, unanswered};
use super::{Carrier, Failure, Outgoing};

#[derive(Debug)]
pub(crate) struct Webhook {
    client: reqwest::Client,
    url: String,
    key: hmac::Key,
}

impl Webhook {
    pub(crate) fn new(s: &WebhookSettings, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            client: client(timeout)?,
            url: s.url.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, s.secret.as_bytes()),
        })
    }
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub(crate) fn signature(key: &hmac::Key, timestamp: i64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Carrier for Webhook {
    async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        let msg = m.message;
        let payload: Value = serde_json::from_str(&msg.body_json).unwrap_or(Value::Null);
        let body = json!({
            "message_id": msg.message_id,
            "tenant_id": msg.tenant_id,
            "customer_id": msg.customer_id,
            "channel": msg.channel,
            "contact": msg.contact,
            "subject": msg.subject,
            "text": msg.body_text,
            "payload": payload,
            "metadata": msg.metadata,
        })
        .to_string();
        let timestamp = m.now_unix;
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("idempotency-key", &msg.message_id)
            .header("x-winback-timestamp", timestamp.to_string())
            .header(
                "x-winback-signature",
                signature(&self.key, timestamp, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| unanswered("webhook", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(format!("webhook {}", status.as_u16()));
        }
        let reason = format!("webhook {}: {}", status.as_u16(), excerpt(&text));
        if is_transient(status) {
            return Err(transient(reason, &headers));
        }
        // 410 Gone: the receiver says this contact no longer exists.
        Err(Failure::Permanent {
            suppress: status == reqwest::StatusCode::GONE,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let sig = signature(&key, 1_700_000_000, b"{}");
        let expected = hmac::sign(&key, b"1700000000.{}");
        let hex: String = expected
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sig, format!("sha256={hex}"));
    }
}
