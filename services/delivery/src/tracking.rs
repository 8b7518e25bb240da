//! The HTTP server recipients and providers reach: the open pixel, the click redirect, the
//! unsubscribe page and its one-click `POST` (RFC 8058), and provider status callbacks
//! (Twilio, SMS.ru) with their signatures checked and replays refused.
//!
//! Every link carries an HMAC-signed token naming the message (and for a click, the
//! destination), so a forged link is a 404 and the redirect goes nowhere a forger chose.

use aws_lc_rs::{constant_time, digest, hmac};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use winback_proto::common::Channel;
use winback_proto::delivery::channel_settings::Provider;

use crate::context::Delivery;
use crate::domain::token::Tracked;
use crate::reactions::Reaction;

/// Callbacks and unsubscribe posts are small; anything bigger is refused unread.
const MAX_BODY: usize = 64 * 1024;

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The tracking and callback routes.
pub(crate) fn router(delivery: Delivery) -> Router {
    Router::new()
        .route("/o/{file}", get(open))
        .route("/c/{token}", get(click))
        .route(
            "/u/{token}",
            get(unsubscribe_page).post(unsubscribe_one_click),
        )
        .route("/callbacks/twilio/{tenant}", post(twilio_callback))
        .route("/callbacks/sms_ru/{tenant}", post(sms_ru_callback))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(delivery)
}

/// Serves the routes on `listener` until `shutdown`.
pub(crate) async fn serve(
    delivery: Delivery,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = router(delivery);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the tracking server stopped");
    }
}

fn problem(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

fn internal(e: &winback_platform::ServiceError) -> Response {
    tracing::warn!(error = %e, "tracking: could not record");
    problem(StatusCode::SERVICE_UNAVAILABLE, "try again later")
}

impl Delivery {
    /// The token's meaning when it is genuine and of `kind`.
    fn read_token(&self, token: &str, kind: &str) -> Option<Tracked> {
        self.signer.verify(token).filter(|t| t.kind == kind)
    }
}

async fn open(State(d): State<Delivery>, Path(file): Path<String>) -> Response {
    let token = file.strip_suffix(".gif").unwrap_or(&file);
    let Some(t) = d.read_token(token, "o") else {
        return problem(StatusCode::NOT_FOUND, "unknown link");
    };
    if let Err(e) = d
        .react(&t.tenant_id, &t.message_id, Reaction::Opened, "pixel")
        .await
    {
        return internal(&e);
    }
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
        ],
        PIXEL,
    )
        .into_response()
}

async fn click(State(d): State<Delivery>, Path(token): Path<String>) -> Response {
    let Some(t) = d.read_token(&token, "c") else {
        return problem(StatusCode::NOT_FOUND, "unknown link");
    };
    // Only where the message pointed: the signature covers the URL.
    if !(t.url.starts_with("https://") || t.url.starts_with("http://")) {
        return problem(StatusCode::NOT_FOUND, "unknown link");
    }
    if let Err(e) = d
        .react(&t.tenant_id, &t.message_id, Reaction::Clicked, &t.url)
        .await
    {
        return internal(&e);
    }
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, t.url.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response()
}

/// The page a person sees: one button, no login. Nothing changes on GET (mail scanners
/// follow links); the button posts to the same address.
async fn unsubscribe_page(State(d): State<Delivery>, Path(token): Path<String>) -> Response {
    if d.read_token(&token, "u").is_none() {
        return problem(StatusCode::NOT_FOUND, "unknown link");
    }
    Html(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head>\
         <body><h1>Unsubscribe</h1><p>Stop marketing messages to this address?</p>\
         <form method=\"post\"><button type=\"submit\">Unsubscribe</button></form></body></html>",
    )
    .into_response()
}

/// RFC 8058 one-click: the mail client posts `List-Unsubscribe=One-Click`, with no cookie
/// and no confirmation. The page's button posts here too.
async fn unsubscribe_one_click(
    State(d): State<Delivery>,
    Path(token): Path<String>,
    body: String,
) -> Response {
    let Some(t) = d.read_token(&token, "u") else {
        return problem(StatusCode::NOT_FOUND, "unknown link");
    };
    let method = if body.contains("List-Unsubscribe=One-Click") {
        "one_click"
    } else {
        "link"
    };
    match d.unsubscribe(&t.tenant_id, &t.message_id, method).await {
        Ok(Some(_)) => Html(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>\
             <body><h1>You are unsubscribed</h1><p>You will not get marketing messages at this address any more.</p></body></html>",
        )
        .into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "unknown message"),
        Err(e) => internal(&e),
    }
}

/// `X-Twilio-Signature`: base64 of HMAC-SHA1 over the full URL followed by every POST
/// parameter's name and value, sorted by name, keyed with the account's auth token.
pub(crate) fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(url.as_bytes());
    for (k, v) in sorted {
        ctx.update(k.as_bytes());
        ctx.update(v.as_bytes());
    }
    STANDARD.encode(ctx.sign().as_ref())
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Twilio error codes in a status callback that mean the number is bad: 30005 unknown
/// destination, 30006 landline or unreachable carrier, 21610 the recipient replied STOP.
const TWILIO_SUPPRESSING: [&str; 3] = ["30005", "30006", "21610"];

async fn twilio_callback(
    State(d): State<Delivery>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    let auth_token = match d.settings_for(&tenant, Channel::Sms).await {
        Ok(s) => match s.provider {
            Some(Provider::Twilio(t)) => t.auth_token,
            _ => return problem(StatusCode::NOT_FOUND, "no Twilio account here"),
        },
        Err(e) => return internal(&e),
    };
    let url = d.public_url(&format!("/callbacks/twilio/{tenant}"));
    let expected = twilio_signature(&auth_token, &url, &params);
    let given = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes()).is_err() {
        return problem(StatusCode::FORBIDDEN, "bad signature");
    }
    let sid = param(&params, "MessageSid");
    let status = param(&params, "MessageStatus");
    if sid.is_empty() || status.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "MessageSid and MessageStatus are required",
        );
    }
    let reaction = match status {
        "delivered" => Reaction::Delivered,
        "read" => Reaction::Opened,
        "undelivered" | "failed" => Reaction::Bounced {
            suppress: TWILIO_SUPPRESSING.contains(&param(&params, "ErrorCode")),
        },
        // queued, sending, sent, accepted: nothing we do not know yet.
        _ => return StatusCode::OK.into_response(),
    };
    apply_callback(
        &d,
        "twilio",
        &tenant,
        sid,
        status,
        reaction,
        param(&params, "ErrorCode"),
    )
    .await
}

/// Looks up the message, refuses a replay, applies the reaction.
async fn apply_callback(
    d: &Delivery,
    provider: &str,
    tenant: &str,
    provider_id: &str,
    status: &str,
    reaction: Reaction,
    detail: &str,
) -> Response {
    let message = match d.message_by_provider_id(tenant, provider_id).await {
        Ok(Some(m)) => m,
        Ok(None) => return problem(StatusCode::NOT_FOUND, "unknown message"),
        Err(e) => return internal(&e),
    };
    match d
        .first_sighting(provider, &format!("{tenant}:{provider_id}:{status}"))
        .await
    {
        Ok(true) => {}
        Ok(false) => return problem(StatusCode::CONFLICT, "this callback was applied before"),
        Err(e) => return internal(&e),
    }
    let detail = format!("{provider} {status} {detail}");
    match d
        .react(tenant, &message.message_id, reaction, detail.trim())
        .await
    {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => internal(&e),
    }
}

/// SMS.ru's callback hash: SHA-256 (hex) of the api_id followed by every `data[]` entry.
pub(crate) fn sms_ru_hash(api_id: &str, entries: &[&str]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(api_id.as_bytes());
    for e in entries {
        ctx.update(e.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SMS.ru status codes: 103 delivered; 104–108 and 150 not delivered (expired, deleted by
/// the operator, phone failure, unknown, rejected, no route). 106 and 150 mean the number
/// itself cannot take messages.
fn sms_ru_reaction(code: &str) -> Option<Reaction> {
    match code {
        "103" => Some(Reaction::Delivered),
        "106" | "150" => Some(Reaction::Bounced { suppress: true }),
        "104" | "105" | "107" | "108" => Some(Reaction::Bounced { suppress: false }),
        _ => None,
    }
}

/// `data[N]` entries, each `sms_status\n<sms_id>\n<code>\n<unix time>`, and `hash`. SMS.ru
/// wants the body `100` back, or it repeats the callback.
async fn sms_ru_callback(
    State(d): State<Delivery>,
    Path(tenant): Path<String>,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    let api_id = match d.settings_for(&tenant, Channel::Sms).await {
        Ok(s) => match s.provider {
            Some(Provider::SmsRu(t)) => t.api_id,
            _ => return problem(StatusCode::NOT_FOUND, "no SMS.ru account here"),
        },
        Err(e) => return internal(&e),
    };
    let mut entries: Vec<(usize, &str)> = params
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix("data[")?.strip_suffix(']')?.parse().ok()?;
            Some((n, v.as_str()))
        })
        .collect();
    entries.sort_by_key(|(n, _)| *n);
    let data: Vec<&str> = entries.iter().map(|(_, v)| *v).collect();
    let expected = sms_ru_hash(&api_id, &data);
    let given = param(&params, "hash");
    if data.is_empty()
        || constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes()).is_err()
    {
        return problem(StatusCode::FORBIDDEN, "bad hash");
    }
    let mut applied = 0;
    let mut replayed = 0;
    for entry in &data {
        let lines: Vec<&str> = entry.lines().collect();
        let (Some(&"sms_status"), Some(id), Some(code)) =
            (lines.first(), lines.get(1), lines.get(2))
        else {
            continue;
        };
        let Some(reaction) = sms_ru_reaction(code) else {
            continue;
        };
        let response = apply_callback(&d, "sms_ru", &tenant, id, code, reaction, "").await;
        match response.status() {
            StatusCode::OK => applied += 1,
            StatusCode::CONFLICT => replayed += 1,
            StatusCode::NOT_FOUND => {}
            _ => return response,
        }
    }
    if applied == 0 && replayed > 0 {
        return problem(StatusCode::CONFLICT, "this callback was applied before");
    }
    "100".into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from Twilio's security documentation.
    #[test]
    fn twilio_signature_matches_the_documented_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn sms_ru_hash_is_sha256_hex_of_api_id_and_entries() {
        let h = sms_ru_hash("key", &["a", "b"]);
        let direct = digest::digest(&digest::SHA256, b"keyab");
        let hex: String = direct.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h, hex);
        assert_eq!(h.len(), 64);
    }
}
