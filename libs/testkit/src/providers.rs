//! One local HTTP server speaking the request and reply shapes of Twilio's Messages API,
//! SMS.ru's `sms/send`, FCM HTTP v1 and a signed webhook receiver — including their error
//! replies — with injectable faults (5xx, 429 with `Retry-After`, answers slower than the
//! client's timeout) and a record of every request it accepted.
//!
//! Magic contacts trigger the providers' documented refusals: Twilio `+15005550001`
//! (21211 invalid number) and `+15005550004` (21610 replied STOP); SMS.ru `79990000207`
//! (207 no route); FCM tokens `unregistered`, `bad-token` (INVALID_ARGUMENT without field
//! violations) and `bad-payload` (with them).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};

pub const TWILIO_SID: &str = "AC0123456789";
pub const TWILIO_TOKEN: &str = "twilio-auth-token";
pub const SMS_RU_API_ID: &str = "sms-ru-api-id";
pub const FCM_TOKEN: &str = "fcm-access-token";
pub const HOOK_SECRET: &str = "hook-secret";

/// A request a provider accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub provider: &'static str,
    /// Number, device token, or the webhook's `Idempotency-Key`.
    pub to: String,
    pub text: String,
    /// The provider's id in its reply.
    pub id: String,
    pub body: Value,
}

#[derive(Debug, Default)]
pub struct ProviderState {
    pub accepted: Mutex<Vec<Accepted>>,
    /// Requests answered with a fault.
    pub faults: AtomicU64,
    requests: AtomicU64,
    fault_percent: AtomicU32,
    /// How long a "timeout" fault holds the answer back.
    stall_ms: AtomicU64,
    /// Latency of every answer.
    latency_ms: AtomicU64,
}

#[derive(Debug)]
pub struct Providers {
    pub url: String,
    pub state: Arc<ProviderState>,
}

impl Providers {
    pub async fn start() -> Self {
        let state = Arc::new(ProviderState::default());
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .route("/sms/send", post(sms_ru))
            .route("/v1/projects/{project}/messages:send", post(fcm))
            .route("/hook", post(webhook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    /// `percent` of requests fail: a third 503, a third 429 with `Retry-After: 1`, a third
    /// answered only after `stall` (longer than the client waits).
    pub fn inject_faults(&self, percent: u32, stall: Duration) {
        self.state.fault_percent.store(percent, Ordering::SeqCst);
        self.state
            .stall_ms
            .store(stall.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.accepted.lock().unwrap().clone()
    }
}

/// splitmix64: a fixed, well-spread sequence, so a run's faults are reproducible.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ProviderState {
    /// A fault reply for this request, if it draws one.
    async fn fault(&self, throttled: Value) -> Option<Response> {
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let draw = mix(n);
        if draw % 100 >= u64::from(self.fault_percent.load(Ordering::SeqCst)) {
            return None;
        }
        self.faults.fetch_add(1, Ordering::SeqCst);
        Some(match (draw / 100) % 3 {
            0 => (StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable").into_response(),
            1 => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                axum::Json(throttled),
            )
                .into_response(),
            _ => {
                let stall = self.stall_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(stall)).await;
                (StatusCode::GATEWAY_TIMEOUT, "too late").into_response()
            }
        })
    }

    fn accept(&self, a: Accepted) {
        self.accepted.lock().unwrap().push(a);
    }
}

fn param(form: &[(String, String)], name: &str) -> String {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

async fn twilio(
    State(s): State<Arc<ProviderState>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"))
    );
    if sid != TWILIO_SID
        || headers
            .get("authorization")
            .is_none_or(|v| v != expected.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 20003, "message": "Authenticate", "status": 401})),
        )
            .into_response();
    }
    if let Some(r) = s
        .fault(json!({"code": 20429, "message": "Too Many Requests", "status": 429}))
        .await
    {
        return r;
    }
    let to = param(&form, "To");
    let refusal = match to.as_str() {
        "+15005550001" => Some((21211, "The 'To' number is not a valid phone number.")),
        "+15005550004" => Some((21610, "Attempt to send to unsubscribed recipient")),
        _ => None,
    };
    if let Some((code, message)) = refusal {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "code": code, "message": message, "status": 400,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            })),
        )
            .into_response();
    }
    let id = format!("SM{:032x}", mix(s.requests.load(Ordering::SeqCst)));
    s.accept(Accepted {
        provider: "twilio",
        to: to.clone(),
        text: param(&form, "Body"),
        id: id.clone(),
        body: json!(form),
    });
    (
        StatusCode::CREATED,
        axum::Json(json!({"sid": id, "status": "queued", "to": to, "account_sid": TWILIO_SID})),
    )
        .into_response()
}

async fn sms_ru(
    State(s): State<Arc<ProviderState>>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if param(&form, "api_id") != SMS_RU_API_ID {
        return axum::Json(
            json!({"status": "ERROR", "status_code": 200, "status_text": "Неправильный api_id"}),
        )
        .into_response();
    }
    if let Some(r) = s
        .fault(json!({"status": "ERROR", "status_code": 220}))
        .await
    {
        return r;
    }
    let to = param(&form, "to");
    if to == "79990000207" {
        return axum::Json(json!({
            "status": "OK", "status_code": 100,
            "sms": { to: {"status": "ERROR", "status_code": 207, "status_text": "На этот номер нельзя отправлять сообщения"} },
            "balance": 100.0
        }))
        .into_response();
    }
    let id = format!(
        "{:06}-{:06}",
        s.requests.load(Ordering::SeqCst),
        mix(1) % 1_000_000
    );
    s.accept(Accepted {
        provider: "sms_ru",
        to: to.clone(),
        text: param(&form, "msg"),
        id: id.clone(),
        body: json!(form),
    });
    axum::Json(json!({
        "status": "OK", "status_code": 100,
        "sms": { to: {"status": "OK", "status_code": 100, "sms_id": id} },
        "balance": 99.5
    }))
    .into_response()
}

fn fcm_error(status: StatusCode, rpc: &str, details: Value) -> Response {
    (
        status,
        axum::Json(json!({"error": {
            "code": status.as_u16(), "message": format!("{rpc} from the fake"), "status": rpc, "details": details
        }})),
    )
        .into_response()
}

async fn fcm(
    State(s): State<Arc<ProviderState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if headers
        .get("authorization")
        .is_none_or(|v| v != format!("Bearer {FCM_TOKEN}").as_str())
    {
        return fcm_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", json!([]));
    }
    // FCM refuses a non-string value in `data`, naming the field.
    let data_ok = body["message"]["data"]
        .as_object()
        .is_none_or(|d| d.values().all(Value::is_string));
    let token = body["message"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !data_ok || token == "bad-payload" {
        return fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.data", "description": "Invalid value"}]}]),
        );
    }
    if let Some(r) = s
        .fault(json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}}))
        .await
    {
        return r;
    }
    match token.as_str() {
        "unregistered" => {
            return fcm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]),
            );
        }
        "bad-token" => {
            return fcm_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]),
            );
        }
        _ => {}
    }
    let id = format!(
        "projects/{project}/messages/{}",
        mix(s.requests.load(Ordering::SeqCst))
    );
    s.accept(Accepted {
        provider: "fcm",
        to: token,
        text: body["message"]["notification"]["body"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        id: id.clone(),
        body,
    });
    axum::Json(json!({"name": id})).into_response()
}

async fn webhook(State(s): State<Arc<ProviderState>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
    let signed = format!("{}.", header("x-winback-timestamp"));
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(signed.as_bytes());
    ctx.update(&body);
    let hex: String = ctx
        .sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if header("x-winback-signature") != format!("sha256={hex}") {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    if let Some(r) = s.fault(json!({"error": "slow down"})).await {
        return r;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.accept(Accepted {
        provider: "webhook",
        to: header("idempotency-key"),
        text: body["text"].as_str().unwrap_or_default().to_owned(),
        id: String::new(),
        body,
    });
    StatusCode::NO_CONTENT.into_response()
}
