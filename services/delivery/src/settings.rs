//! Which provider carries each channel of a tenant, with its limits and price.

use prost::Message;
use winback_platform::ServiceError;
use winback_proto::common::Channel;
use winback_proto::delivery::ChannelSettings;
use winback_proto::delivery::channel_settings::Provider;

use crate::context::{Delivery, channel, db_error};
use crate::store::{execute, query};

impl Delivery {
    pub(crate) async fn set_channel_settings(
        &self,
        tenant: &str,
        s: ChannelSettings,
    ) -> Result<ChannelSettings, ServiceError> {
        let ch = channel(s.channel, "settings.channel")?;
        let Some(provider) = &s.provider else {
            return Err(ServiceError::invalid(
                "settings.provider",
                "a provider is required",
            ));
        };
        let fits = matches!(
            (ch, provider),
            (Channel::Email, Provider::Smtp(_) | Provider::FileSink(_))
                | (
                    Channel::Sms,
                    Provider::Twilio(_) | Provider::SmsRu(_) | Provider::FileSink(_)
                )
                | (Channel::Push, Provider::Fcm(_) | Provider::FileSink(_))
                | (
                    Channel::Messenger | Channel::ManagerTask,
                    Provider::Webhook(_) | Provider::FileSink(_)
                )
        );
        if !fits {
            return Err(ServiceError::invalid(
                "settings.provider",
                "this provider does not carry this channel",
            ));
        }
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        match provider {
            Provider::Smtp(smtp) => {
                if smtp.host.is_empty() {
                    return Err(ServiceError::invalid("settings.smtp.host", "is required"));
                }
                if !(0..=65535).contains(&smtp.port) {
                    return Err(ServiceError::invalid("settings.smtp.port", "is not a port"));
                }
                if !["", "tls", "starttls", "plain"].contains(&smtp.security.as_str()) {
                    return Err(ServiceError::invalid(
                        "settings.smtp.security",
                        "one of tls, starttls, plain",
                    ));
                }
                if !smtp.from.contains('@') {
                    return Err(ServiceError::invalid(
                        "settings.smtp.from",
                        "an address is required",
                    ));
                }
            }
            Provider::Twilio(t) if !url_ok(&t.base_url) || t.account_sid.is_empty() => {
                return Err(ServiceError::invalid(
                    "settings.twilio",
                    "base_url and account_sid are required",
                ));
            }
            Provider::SmsRu(t) if !url_ok(&t.base_url) || t.api_id.is_empty() => {
                return Err(ServiceError::invalid(
                    "settings.sms_ru",
                    "base_url and api_id are required",
                ));
            }
            Provider::Fcm(f) if !url_ok(&f.base_url) || f.project_id.is_empty() => {
                return Err(ServiceError::invalid(
                    "settings.fcm",
                    "base_url and project_id are required",
                ));
            }
            Provider::Webhook(w) if !url_ok(&w.url) => {
                return Err(ServiceError::invalid(
                    "settings.webhook.url",
                    "an http(s) URL is required",
                ));
            }
            _ => {}
        }
        if s.rate_limit_per_second < 0 || s.concurrency < 0 {
            return Err(ServiceError::invalid(
                "settings.rate_limit_per_second",
                "limits cannot be negative",
            ));
        }
        let _writer = self.writer_lock().await;
        execute(
            &self.db,
            "INSERT INTO channel_settings (tenant_id, channel, settings) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id, channel) DO UPDATE SET settings = excluded.settings",
            vec![
                tenant.into(),
                i64::from(s.channel).into(),
                s.encode_to_vec().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        Ok(s)
    }

    /// Every configured channel of the tenant (secrets included: the caller holds delivery:read).
    pub(crate) async fn channel_settings(
        &self,
        tenant: &str,
    ) -> Result<Vec<ChannelSettings>, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT settings FROM channel_settings WHERE tenant_id = $1 ORDER BY channel",
            vec![tenant.into()],
        )
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("", "settings").map_err(db_error)?;
                ChannelSettings::decode(bytes.as_slice()).map_err(ServiceError::internal)
            })
            .collect()
    }

    /// The settings of one channel; the file sink when the tenant configured none.
    pub(crate) async fn settings_for(
        &self,
        tenant: &str,
        ch: Channel,
    ) -> Result<ChannelSettings, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT settings FROM channel_settings WHERE tenant_id = $1 AND channel = $2",
            vec![tenant.into(), (ch as i32 as i64).into()],
        )
        .await
        .map_err(db_error)?;
        match rows.first() {
            Some(r) => {
                let bytes: Vec<u8> = r.try_get("", "settings").map_err(db_error)?;
                ChannelSettings::decode(bytes.as_slice()).map_err(ServiceError::internal)
            }
            None => Ok(ChannelSettings {
                channel: ch as i32,
                provider: Some(Provider::FileSink(
                    winback_proto::delivery::FileSinkSettings {
                        directory: String::new(),
                    },
                )),
                ..Default::default()
            }),
        }
    }
}
