//! Push over FCM HTTP v1: `POST /v1/projects/{id}/messages:send` with a bearer token, a
//! notification (title, body) and string-only `data`. Errors come as `google.rpc.Status`
//! with an `FcmError` detail.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use winback_proto::delivery::FcmSettings;

use super::http::{client, excerpt, is_transient, transient, unanswered};
use super::{Carrier, Failure, Outgoing};

#[derive(Debug)]
pub(crate) struct Fcm {
    client: reqwest::Client,
    url: String,
    access_token: String,
}

impl Fcm {
    pub(crate) fn new(s: &FcmSettings, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            client: client(timeout)?,
            url: format!(
                "{}/v1/projects/{}/messages:send",
                s.base_url.trim_end_matches('/'),
                s.project_id
            ),
            access_token: s.access_token.clone(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Accepted {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ErrorReply {
    error: RpcStatus,
}

#[derive(Debug, Deserialize)]
struct RpcStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl RpcStatus {
    /// The `FcmError.errorCode` detail, if any.
    fn fcm_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|d| d.get("errorCode").and_then(Value::as_str))
    }

    /// Whether a `BadRequest` detail names the fields that were wrong (our payload's
    /// fault, not the token's).
    fn has_field_violations(&self) -> bool {
        self.details.iter().any(|d| {
            d.get("fieldViolations")
                .and_then(Value::as_array)
                .is_some_and(|v| !v.is_empty())
        })
    }
}

/// FCM's `data` holds strings only: our message id, the sender's metadata, and the
/// template's JSON with non-string values written as JSON.
fn data(m: &Outgoing<'_>) -> BTreeMap<String, String> {
    let msg = m.message;
    let mut data: BTreeMap<String, String> = msg
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&msg.body_json) {
        for (k, v) in fields {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            data.insert(k, text);
        }
    }
    data.insert("message_id".into(), msg.message_id.clone());
    data
}

impl Carrier for Fcm {
    async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        let msg = m.message;
        let body = json!({
            "message": {
                "token": msg.contact,
                "notification": { "title": msg.subject, "body": msg.body_text },
                "data": data(m),
            }
        });
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.access_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| unanswered("fcm", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| unanswered("fcm", &e))?;
        if status.is_success() {
            return serde_json::from_str::<Accepted>(&text)
                .map(|a| a.name)
                .map_err(|_| Failure::Transient {
                    reason: format!("fcm: unreadable reply {}", excerpt(&text)),
                    retry_after_ms: None,
                });
        }
        let Ok(ErrorReply { error }) = serde_json::from_str::<ErrorReply>(&text) else {
            let reason = format!("fcm http {}: {}", status.as_u16(), excerpt(&text));
            return Err(if is_transient(status) {
                transient(reason, &headers)
            } else {
                Failure::Permanent {
                    reason,
                    suppress: false,
                }
            });
        };
        let code = error.fcm_code().unwrap_or(error.status.as_str()).to_owned();
        let reason = format!("fcm {code}: {}", error.message);
        let suppress = match code.as_str() {
            // The app was uninstalled or the token expired; the token belongs to another sender.
            "UNREGISTERED" | "SENDER_ID_MISMATCH" => true,
            // Without field violations the only bad argument is the token itself.
            "INVALID_ARGUMENT" => !error.has_field_violations(),
            _ => false,
        };
        if !suppress
            && (is_transient(status)
                || matches!(code.as_str(), "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL"))
        {
            return Err(transient(reason, &headers));
        }
        Err(Failure::Permanent { reason, suppress })
    }
}
