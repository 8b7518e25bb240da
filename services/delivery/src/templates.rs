//! Message templates per tenant, channel and locale, and previews.

use prost::Message;
use winback_platform::ServiceError;
use winback_proto::common::PageResponse;
use winback_proto::delivery::{
    ListTemplatesResponse, MessageTemplate, RenderPreviewRequest, RenderedMessage,
};

use crate::context::{Delivery, channel, db_error, page_size, struct_to_json, timestamp};
use crate::domain::{render, sms};
use crate::store::{execute, query};

impl Delivery {
    /// Checks and stores a template (replacing the one with the same id, channel, locale).
    pub(crate) async fn upsert_template(
        &self,
        tenant: &str,
        mut t: MessageTemplate,
    ) -> Result<MessageTemplate, ServiceError> {
        let id_ok = !t.template_id.is_empty()
            && t.template_id.len() <= 128
            && t.template_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !id_ok {
            return Err(ServiceError::invalid(
                "template.template_id",
                "1–128 characters of letters, digits, '-', '_', '.'",
            ));
        }
        channel(t.channel, "template.channel")?;
        if t.locale.len() > 35 {
            return Err(ServiceError::invalid("template.locale", "is too long"));
        }
        render::check(&t).map_err(|(field, why)| ServiceError::invalid(field, why))?;
        t.updated_at = timestamp(self.now_us());
        let _writer = self.writer_lock().await;
        execute(
            &self.db,
            "INSERT INTO templates (tenant_id, template_id, channel, locale, template) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, template_id, channel, locale) DO UPDATE SET template = excluded.template",
            vec![
                tenant.into(),
                t.template_id.clone().into(),
                i64::from(t.channel).into(),
                t.locale.clone().into(),
                t.encode_to_vec().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        Ok(t)
    }

    /// The template for a locale; falls back to the template without a locale.
    pub(crate) async fn template(
        &self,
        tenant: &str,
        template_id: &str,
        channel_value: i32,
        locale: &str,
    ) -> Result<MessageTemplate, ServiceError> {
        if template_id.is_empty() {
            return Err(ServiceError::invalid("template_id", "is required"));
        }
        channel(channel_value, "channel")?;
        let rows = query(
            &self.db,
            "SELECT locale, template FROM templates WHERE tenant_id = $1 AND template_id = $2 AND channel = $3 AND locale IN ($4, '')",
            vec![
                tenant.into(),
                template_id.into(),
                i64::from(channel_value).into(),
                locale.into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let best = rows
            .iter()
            .max_by_key(|r| r.try_get::<String>("", "locale").unwrap_or_default() == locale)
            .ok_or_else(|| ServiceError::not_found_at("template", template_id, "template_id"))?;
        let bytes: Vec<u8> = best.try_get("", "template").map_err(db_error)?;
        MessageTemplate::decode(bytes.as_slice()).map_err(ServiceError::internal)
    }

    pub(crate) async fn list_templates(
        &self,
        tenant: &str,
        channel_value: i32,
        page: winback_proto::common::PageRequest,
    ) -> Result<ListTemplatesResponse, ServiceError> {
        let size = page_size(&page)?;
        let rows = query(
            &self.db,
            "SELECT template_id, channel, locale, template FROM templates
             WHERE tenant_id = $1 AND ($2 = 0 OR channel = $2)
               AND (template_id || '/' || CAST(channel AS TEXT) || '/' || locale) > $3
             ORDER BY template_id, channel, locale LIMIT $4",
            vec![
                tenant.into(),
                i64::from(channel_value).into(),
                page.page_token.clone().into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut templates = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("", "template").map_err(db_error)?;
            templates
                .push(MessageTemplate::decode(bytes.as_slice()).map_err(ServiceError::internal)?);
        }
        let next_page_token = if templates.len() as i64 > size {
            templates.truncate(size as usize);
            templates
                .last()
                .map(|t| format!("{}/{}/{}", t.template_id, t.channel, t.locale))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListTemplatesResponse {
            templates,
            page: Some(PageResponse { next_page_token }),
        })
    }

    pub(crate) async fn delete_template(
        &self,
        tenant: &str,
        template_id: &str,
        channel_value: i32,
        locale: &str,
    ) -> Result<i32, ServiceError> {
        if template_id.is_empty() {
            return Err(ServiceError::invalid("template_id", "is required"));
        }
        let _writer = self.writer_lock().await;
        let n = execute(
            &self.db,
            "DELETE FROM templates WHERE tenant_id = $1 AND template_id = $2 AND ($3 = 0 OR channel = $3) AND ($4 = '' OR locale = $4)",
            vec![
                tenant.into(),
                template_id.into(),
                i64::from(channel_value).into(),
                locale.into(),
            ],
        )
        .await
        .map_err(db_error)?;
        if n == 0 {
            return Err(ServiceError::not_found_at(
                "template",
                template_id,
                "template_id",
            ));
        }
        Ok(n as i32)
    }

    /// Renders a stored template with the given variables (nothing is sent or stored).
    pub(crate) async fn preview(
        &self,
        tenant: &str,
        r: &RenderPreviewRequest,
    ) -> Result<RenderedMessage, ServiceError> {
        let t = self
            .template(tenant, &r.template_id, r.channel, &r.locale)
            .await?;
        let variables = r.variables.as_ref().map(struct_to_json).unwrap_or_default();
        let rendered = render::render(&t, &variables).map_err(|e| {
            ServiceError::invalid("variables", format!("template {}: {}", e.part, e.message))
        })?;
        Ok(rendered_message(&rendered))
    }
}

/// The API form of a rendered message, with the SMS size of its text.
pub(crate) fn rendered_message(r: &render::Rendered) -> RenderedMessage {
    let size = sms::size(&r.text);
    RenderedMessage {
        subject: r.subject.clone(),
        text: r.text.clone(),
        html: r.html.clone(),
        json: r.json.clone(),
        sms_segments: size.segments as i32,
        sms_unicode: size.unicode,
    }
}
