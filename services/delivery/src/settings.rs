//! Which provider carries each channel of a tenant, with its limits and price.
//!
//! Provider secrets are write only and sealed at rest: a row holds the encoded settings
//! sealed under the secrets key (`winback_platform::secrets`); the API returns every secret
//! empty with a fingerprint beside it, and a write that leaves a secret empty keeps the
//! stored one (`clear_secrets` removes it). Rows written before sealing (plain encoded
//! settings) are read as they are and sealed at start, as are rows sealed under a
//! rotated-out key.

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
        mut s: ChannelSettings,
    ) -> Result<ChannelSettings, ServiceError> {
        let ch = channel(s.channel, "settings.channel")?;
        // Secrets left empty keep what is stored for the same provider; named ones clear.
        let stored = self.stored_settings(tenant, ch).await?;
        for name in &s.clear_secrets {
            if !SECRET_FIELDS.contains(&name.as_str()) {
                return Err(ServiceError::invalid(
                    "settings.clear_secrets",
                    format!("{name} is not a secret field"),
                ));
            }
        }
        if let Some(stored) = &stored {
            keep_stored_secrets(&mut s, stored);
        }
        let clear = std::mem::take(&mut s.clear_secrets);
        for (name, value) in secret_fields(&mut s) {
            if clear.iter().any(|c| c == name) {
                value.clear();
            }
        }
        s.secret_fingerprints.clear();
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
        if let Some(cost) = &s.cost_per_message {
            if cost.amount_minor < 0 {
                return Err(ServiceError::invalid(
                    "settings.cost_per_message.amount_minor",
                    "cannot be negative",
                ));
            }
            winback_platform::money::check_currency("settings.cost_per_message", cost)
                .map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        }
        if s.rate_limit_per_second < 0 || s.concurrency < 0 {
            return Err(ServiceError::invalid(
                "settings.rate_limit_per_second",
                "limits cannot be negative",
            ));
        }
        let sealed = self
            .secrets
            .seal(&s.encode_to_vec())
            .map_err(ServiceError::internal)?;
        let _writer = self.writer_lock().await;
        execute(
            &self.db,
            "INSERT INTO channel_settings (tenant_id, channel, settings) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id, channel) DO UPDATE SET settings = excluded.settings",
            vec![tenant.into(), i64::from(s.channel).into(), sealed.into()],
        )
        .await
        .map_err(db_error)?;
        Ok(redacted(s))
    }

    /// A stored row's settings, opened (a row from before sealing is plain).
    fn open_row(&self, stored: &[u8]) -> Result<ChannelSettings, ServiceError> {
        let plain = if winback_platform::secrets::SecretBox::key_id_of(stored).is_some() {
            self.secrets.open(stored).map_err(ServiceError::internal)?
        } else {
            stored.to_vec()
        };
        ChannelSettings::decode(plain.as_slice()).map_err(ServiceError::internal)
    }

    /// The stored settings of one channel, secrets included, if the tenant set any.
    async fn stored_settings(
        &self,
        tenant: &str,
        ch: Channel,
    ) -> Result<Option<ChannelSettings>, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT settings FROM channel_settings WHERE tenant_id = $1 AND channel = $2",
            vec![tenant.into(), (ch as i32 as i64).into()],
        )
        .await
        .map_err(db_error)?;
        rows.first()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("", "settings").map_err(db_error)?;
                self.open_row(&bytes)
            })
            .transpose()
    }

    /// Seals every row that is plain or sealed under a rotated-out key under the current
    /// key (run at start; idempotent, so replicas may race).
    pub(crate) async fn reseal_settings(&self) -> Result<u64, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT tenant_id, channel, settings FROM channel_settings",
            vec![],
        )
        .await
        .map_err(db_error)?;
        let mut resealed = 0;
        for r in &rows {
            let bytes: Vec<u8> = r.try_get("", "settings").map_err(db_error)?;
            if !self.secrets.needs_reseal(&bytes) {
                continue;
            }
            let tenant: String = r.try_get("", "tenant_id").map_err(db_error)?;
            let channel: i64 = r.try_get("", "channel").map_err(db_error)?;
            let settings = self.open_row(&bytes)?;
            let sealed = self
                .secrets
                .seal(&settings.encode_to_vec())
                .map_err(ServiceError::internal)?;
            let _writer = self.writer_lock().await;
            // Only the row as read: a concurrent write or another replica's reseal wins.
            resealed += execute(
                &self.db,
                "UPDATE channel_settings SET settings = $4
                 WHERE tenant_id = $1 AND channel = $2 AND settings = $3",
                vec![tenant.into(), channel.into(), bytes.into(), sealed.into()],
            )
            .await
            .map_err(db_error)?;
        }
        Ok(resealed)
    }

    /// Every configured channel of the tenant, secrets redacted (fingerprints instead).
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
                self.open_row(&bytes).map(redacted)
            })
            .collect()
    }

    /// The settings of one channel with its secrets, for sending; the file sink when the
    /// tenant configured none. Never hand this to a caller.
    pub(crate) async fn settings_for(
        &self,
        tenant: &str,
        ch: Channel,
    ) -> Result<ChannelSettings, ServiceError> {
        match self.stored_settings(tenant, ch).await? {
            Some(settings) => Ok(settings),
            // The deployment's SMTP server (Mailpit in compose.yaml) for email.
            None if ch == Channel::Email && !self.config.default_smtp.is_empty() => {
                let (host, port) = self
                    .config
                    .default_smtp
                    .rsplit_once(':')
                    .unwrap_or((self.config.default_smtp.as_str(), "25"));
                Ok(ChannelSettings {
                    channel: ch as i32,
                    provider: Some(Provider::Smtp(winback_proto::delivery::SmtpSettings {
                        host: host.to_owned(),
                        port: port.parse().unwrap_or(25),
                        security: "plain".into(),
                        from: self.config.default_smtp_from.clone(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
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

/// The secret fields, by the names the API uses.
const SECRET_FIELDS: [&str; 6] = [
    "smtp.password",
    "smtp.dkim_private_key",
    "twilio.auth_token",
    "sms_ru.api_id",
    "fcm.access_token",
    "webhook.secret",
];

/// The secret fields of `s`'s provider, named.
fn secret_fields(s: &mut ChannelSettings) -> Vec<(&'static str, &mut String)> {
    match &mut s.provider {
        Some(Provider::Smtp(p)) => vec![
            (SECRET_FIELDS[0], &mut p.password),
            (SECRET_FIELDS[1], &mut p.dkim_private_key),
        ],
        Some(Provider::Twilio(p)) => vec![(SECRET_FIELDS[2], &mut p.auth_token)],
        Some(Provider::SmsRu(p)) => vec![(SECRET_FIELDS[3], &mut p.api_id)],
        Some(Provider::Fcm(p)) => vec![(SECRET_FIELDS[4], &mut p.access_token)],
        Some(Provider::Webhook(p)) => vec![(SECRET_FIELDS[5], &mut p.secret)],
        Some(Provider::FileSink(_)) | None => Vec::new(),
    }
}

/// Fills the secrets `s` leaves empty from `stored`, when both use the same provider.
fn keep_stored_secrets(s: &mut ChannelSettings, stored: &ChannelSettings) {
    let mut stored = stored.clone();
    let kept: std::collections::HashMap<&str, String> = secret_fields(&mut stored)
        .into_iter()
        .map(|(name, value)| (name, std::mem::take(value)))
        .collect();
    for (name, value) in secret_fields(s) {
        if value.is_empty()
            && let Some(old) = kept.get(name)
        {
            value.clone_from(old);
        }
    }
}

/// `s` as the API shows it: every secret empty, a fingerprint for each one set.
fn redacted(mut s: ChannelSettings) -> ChannelSettings {
    let mut fingerprints = std::collections::HashMap::new();
    for (name, value) in secret_fields(&mut s) {
        if !value.is_empty() {
            fingerprints.insert(name.to_owned(), fingerprint(value));
            value.clear();
        }
    }
    s.secret_fingerprints = fingerprints;
    s
}

/// The first 12 hex digits of the secret's SHA-256.
fn fingerprint(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use winback_proto::delivery::SmtpSettings;

    fn smtp(password: &str) -> ChannelSettings {
        ChannelSettings {
            channel: Channel::Email as i32,
            provider: Some(Provider::Smtp(SmtpSettings {
                host: "mail".into(),
                password: password.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_read_never_carries_a_secret_and_an_empty_write_keeps_the_stored_one() {
        let shown = redacted(smtp("hunter2"));
        let Some(Provider::Smtp(p)) = &shown.provider else {
            unreachable!()
        };
        assert!(p.password.is_empty());
        assert_eq!(shown.secret_fingerprints["smtp.password"].len(), 12);
        assert_eq!(
            shown.secret_fingerprints["smtp.password"],
            fingerprint("hunter2")
        );
        let mut update = smtp("");
        keep_stored_secrets(&mut update, &smtp("hunter2"));
        let Some(Provider::Smtp(p)) = &update.provider else {
            unreachable!()
        };
        assert_eq!(p.password, "hunter2");
    }
}
