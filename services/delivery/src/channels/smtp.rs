//! Email over SMTP with lettre: a pooled transport per tenant, implicit TLS, STARTTLS
//! required, or plain (local use); multipart text + HTML; RFC 8058 one-click unsubscribe
//! headers.

use std::time::Duration;

use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use winback_proto::delivery::SmtpSettings;

use super::{Carrier, Failure, Outgoing};

#[derive(Debug)]
pub(crate) struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: String,
    dkim: Option<DkimConfig>,
}

impl Smtp {
    pub(crate) fn new(s: &SmtpSettings, pool: usize, timeout: Duration) -> Result<Self, String> {
        let mut builder = match s.security.as_str() {
            "tls" => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host).map_err(|e| e.to_string())?
            }
            "plain" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
            // STARTTLS required unless plain or implicit TLS was asked for.
            _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                .map_err(|e| e.to_string())?,
        };
        if s.port > 0 {
            builder = builder.port(s.port as u16);
        }
        if !s.username.is_empty() {
            builder = builder.credentials(Credentials::new(s.username.clone(), s.password.clone()));
        }
        let transport = builder
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(u32::try_from(pool).unwrap_or(u32::MAX)))
            .build();
        Ok(Self {
            transport,
            from: s.from.clone(),
            dkim: dkim_config(s)?,
        })
    }
}

/// The DKIM signature's settings, when a selector is set. The key is an RSA key in PKCS#1
/// PEM or an Ed25519 key as base64 of its 32 bytes. The signature covers the unsubscribe
/// headers, so nobody on the way can swap the link (what Gmail and Yahoo ask of bulk mail).
fn dkim_config(s: &SmtpSettings) -> Result<Option<DkimConfig>, String> {
    if s.dkim_selector.is_empty() {
        return Ok(None);
    }
    if s.dkim_domain.is_empty() {
        return Err("smtp: dkim_domain is required with dkim_selector".into());
    }
    let algorithm = if s.dkim_private_key.contains("BEGIN RSA PRIVATE KEY") {
        DkimSigningAlgorithm::Rsa
    } else {
        DkimSigningAlgorithm::Ed25519
    };
    let key = DkimSigningKey::new(s.dkim_private_key.trim(), algorithm)
        .map_err(|e| format!("smtp: the DKIM key cannot be read: {e}"))?;
    let headers = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]
    .into_iter()
    .map(HeaderName::new_from_ascii_str)
    .collect();
    Ok(Some(DkimConfig::new(
        s.dkim_selector.clone(),
        s.dkim_domain.clone(),
        key,
        headers,
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    )))
}

impl Carrier for Smtp {
    async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        let mut email = build_email(&self.from, m).map_err(|reason| Failure::Permanent {
            reason,
            suppress: false,
        })?;
        if let Some(dkim) = &self.dkim {
            email.sign(dkim);
        }
        match self.transport.send(email).await {
            Ok(response) => Ok(response.message().collect::<Vec<_>>().join(" ")),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// 550/551/553 say the mailbox does not exist: the address is suppressed. Other 5xx fail
/// the message; 4xx and connection trouble are retried.
fn classify(e: &lettre::transport::smtp::Error) -> Failure {
    let code = e.status().map(|c| c.to_string()).unwrap_or_default();
    if e.is_permanent() {
        Failure::Permanent {
            reason: format!("smtp {code}: {e}"),
            suppress: matches!(code.as_str(), "550" | "551" | "553"),
        }
    } else {
        Failure::Transient {
            reason: format!("smtp {code}: {e}"),
            retry_after_ms: None,
        }
    }
}

/// `List-Unsubscribe: <https://…/u/TOKEN>`.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

/// The email of a message: our message id as `Message-ID`, the unsubscribe headers, the
/// message's stamp as `X-Winback-*` headers, and a text + HTML alternative body.
pub(crate) fn build_email(from: &str, m: &Outgoing<'_>) -> Result<Message, String> {
    let msg = m.message;
    let from: Mailbox = from.parse().map_err(|e| format!("from {from:?}: {e}"))?;
    let to: Mailbox = msg
        .contact
        .parse()
        .map_err(|e| format!("to {:?}: {e}", msg.contact))?;
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(msg.subject.clone())
        .message_id(Some(format!("<{}@winback>", msg.message_id)))
        .header(ListUnsubscribe(format!("<{}>", m.unsubscribe_url)))
        .header(ListUnsubscribePost);
    for (name, value) in super::stamp::Stamp::of(m).headers() {
        let name = HeaderName::new_from_ascii(name).map_err(|e| e.to_string())?;
        builder = builder.raw_header(HeaderValue::new(name, value));
    }
    let result = match (msg.body_text.is_empty(), msg.body_html.is_empty()) {
        (false, false) => builder.multipart(MultiPart::alternative_plain_html(
            msg.body_text.clone(),
            msg.body_html.clone(),
        )),
        (true, false) => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(msg.body_html.clone()),
        ),
        _ => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(msg.body_text.clone()),
        ),
    };
    result.map_err(|e| e.to_string())
}
