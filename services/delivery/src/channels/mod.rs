//! The carriers of messages, one per provider shape, behind one trait. A carrier answers
//! accepted (with the provider's id), a transient failure (retry later, maybe after a
//! `Retry-After`), or a permanent one (maybe suppressing the contact).

pub(crate) mod fcm;
pub(crate) mod file_sink;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod sms_ru;
pub(crate) mod smtp;
pub(crate) mod stamp;
pub(crate) mod twilio;
pub(crate) mod webhook;

use std::future::Future;
use std::time::Duration;

use winback_proto::delivery::ChannelSettings;
use winback_proto::delivery::channel_settings::Provider;

use crate::messages::MessageRow;

/// A message ready to go out.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) message: &'a MessageRow,
    /// The one-click unsubscribe URL (RFC 8058) for email headers.
    pub(crate) unsubscribe_url: String,
    /// Where the provider reports delivery (Twilio's `StatusCallback`).
    pub(crate) status_callback_url: String,
    /// Now, Unix seconds, by the service clock (webhook signatures).
    pub(crate) now_unix: i64,
}

/// What a provider said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// Try again later (SMTP 4xx, HTTP 429/5xx, timeouts).
    Transient {
        reason: String,
        retry_after_ms: Option<u64>,
    },
    /// Never try again; `suppress` when the contact itself is bad or opted out.
    Permanent { reason: String, suppress: bool },
}

/// One provider shape.
pub(crate) trait Carrier {
    /// Hands the message to the provider; Ok is the provider's message id.
    fn send(&self, m: &Outgoing<'_>) -> impl Future<Output = Result<String, Failure>> + Send;
}

/// A configured carrier of one tenant's channel.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per tenant channel, built once behind an Arc
pub(crate) enum Transport {
    Smtp(smtp::Smtp),
    Twilio(twilio::Twilio),
    SmsRu(sms_ru::SmsRu),
    Fcm(fcm::Fcm),
    Webhook(webhook::Webhook),
    FileSink(file_sink::FileSink),
}

/// A carrier with its provider's limits.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) transport: Transport,
    pub(crate) limits: limits::Limits,
}

/// Requests in flight per provider when the tenant set no concurrency.
const DEFAULT_HTTP_CONCURRENCY: usize = 64;
/// Pooled SMTP connections when the tenant set no pool size: lettre 0.11.23 waits ~45 ms
/// per message on one connection, so throughput comes from many connections.
pub(crate) const DEFAULT_SMTP_POOL: usize = 100;

impl Route {
    /// Builds the carrier for `settings`; `default_dir` for a file sink without a folder.
    pub(crate) fn build(
        settings: &ChannelSettings,
        tenant: &str,
        default_dir: &std::path::Path,
        timeout: Duration,
    ) -> Result<Self, String> {
        let (transport, default_concurrency) = match &settings.provider {
            Some(Provider::Smtp(s)) => {
                let pool = usize::try_from(s.pool_size)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(DEFAULT_SMTP_POOL);
                (Transport::Smtp(smtp::Smtp::new(s, pool, timeout)?), pool)
            }
            Some(Provider::Twilio(s)) => (
                Transport::Twilio(twilio::Twilio::new(s, timeout)?),
                DEFAULT_HTTP_CONCURRENCY,
            ),
            Some(Provider::SmsRu(s)) => (
                Transport::SmsRu(sms_ru::SmsRu::new(s, timeout)?),
                DEFAULT_HTTP_CONCURRENCY,
            ),
            Some(Provider::Fcm(s)) => (
                Transport::Fcm(fcm::Fcm::new(s, timeout)?),
                DEFAULT_HTTP_CONCURRENCY,
            ),
            Some(Provider::Webhook(s)) => (
                Transport::Webhook(webhook::Webhook::new(s, timeout)?),
                DEFAULT_HTTP_CONCURRENCY,
            ),
            Some(Provider::FileSink(f)) => {
                let dir = if f.directory.is_empty() {
                    default_dir.to_path_buf()
                } else {
                    f.directory.clone().into()
                };
                (
                    Transport::FileSink(file_sink::FileSink::new(dir.join(tenant))),
                    DEFAULT_HTTP_CONCURRENCY,
                )
            }
            None => (
                Transport::FileSink(file_sink::FileSink::new(default_dir.join(tenant))),
                DEFAULT_HTTP_CONCURRENCY,
            ),
        };
        let concurrency = usize::try_from(settings.concurrency)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(default_concurrency);
        let rate = u32::try_from(settings.rate_limit_per_second).unwrap_or(0);
        Ok(Self {
            transport,
            limits: limits::Limits::new(concurrency, rate),
        })
    }

    /// Hands the message to the provider. Hold a permit from `limits.admit()` meanwhile.
    pub(crate) async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        match &self.transport {
            Transport::Smtp(c) => c.send(m).await,
            Transport::Twilio(c) => c.send(m).await,
            Transport::SmsRu(c) => c.send(m).await,
            Transport::Fcm(c) => c.send(m).await,
            Transport::Webhook(c) => c.send(m).await,
            Transport::FileSink(c) => c.send(m).await,
        }
    }
}

fn provider_label(p: &Provider) -> &'static str {
    match p {
        Provider::Smtp(_) => "smtp",
        Provider::Twilio(_) => "twilio",
        Provider::SmsRu(_) => "sms_ru",
        Provider::Fcm(_) => "fcm",
        Provider::Webhook(_) => "webhook",
        Provider::FileSink(_) => "file_sink",
    }
}

/// The provider's name as messages record it.
pub(crate) fn provider_name(settings: &ChannelSettings) -> &'static str {
    settings
        .provider
        .as_ref()
        .map_or("file_sink", provider_label)
}
