//! The carriers of messages, one per provider shape, behind one trait. A carrier answers
//! accepted (with the provider's id), a transient failure (retry later, maybe after a
//! `Retry-After`), or a permanent one (maybe suppressing the contact).

pub(crate) mod file_sink;
pub(crate) mod smtp;

use std::future::Future;

use winback_proto::delivery::ChannelSettings;
use winback_proto::delivery::channel_settings::Provider;

use crate::messages::MessageRow;

/// A message ready to go out.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) message: &'a MessageRow,
    /// The one-click unsubscribe URL (RFC 8058) for email headers.
    pub(crate) unsubscribe_url: String,
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
pub(crate) enum Transport {
    Smtp(smtp::Smtp),
    FileSink(file_sink::FileSink),
}

impl Transport {
    /// Builds the carrier for `settings`; `default_dir` for a file sink without a folder.
    pub(crate) fn build(
        settings: &ChannelSettings,
        tenant: &str,
        default_dir: &std::path::Path,
    ) -> Result<Self, String> {
        match &settings.provider {
            Some(Provider::Smtp(s)) => smtp::Smtp::new(s).map(Self::Smtp),
            None => Ok(Self::FileSink(file_sink::FileSink::new(
                default_dir.join(tenant),
            ))),
            Some(Provider::FileSink(f)) => {
                let dir = if f.directory.is_empty() {
                    default_dir.to_path_buf()
                } else {
                    f.directory.clone().into()
                };
                Ok(Self::FileSink(file_sink::FileSink::new(dir.join(tenant))))
            }
            Some(other) => Err(format!(
                "the {} provider is not available in this build yet",
                provider_label(other)
            )),
        }
    }

    pub(crate) async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        match self {
            Self::Smtp(c) => c.send(m).await,
            Self::FileSink(c) => c.send(m).await,
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
