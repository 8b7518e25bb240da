//! Offer templates and escalation ladders: create, read, list, archive, and the next rung.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use winback_platform::ServiceError;
use winback_platform::db::placeholders;
use winback_platform::time::to_timestamp;
use winback_proto::common::PageResponse;
use winback_proto::offers::{
    Ladder, ListLaddersResponse, ListOfferTemplatesResponse, NextOfferResponse, OfferTemplate,
};

use crate::context::{Offers, db_error, page_size};
use crate::coupons::MAX_BATCH;
use crate::domain::template;
use crate::store::{execute, query};

/// Rungs a ladder may have.
const MAX_RUNGS: usize = 5;

impl Offers {
    /// Stores a new template.
    pub(crate) async fn create_template(
        &self,
        tenant: &str,
        t: Option<OfferTemplate>,
    ) -> Result<OfferTemplate, ServiceError> {
        let t = t.ok_or_else(|| ServiceError::invalid("template", "is required"))?;
        let now = self.clock.now();
        let mut t = template::validate(t, now.timestamp())?;
        t.template_id = format!("tpl_{}", uuid::Uuid::now_v7().simple());
        t.created_at = Some(to_timestamp(now));
        t.archived = false;
        execute(
            &self.db,
            "INSERT INTO templates (tenant_id, template_id, template, archived, created_at_us) VALUES ($1, $2, $3, 0, $4)",
            vec![tenant.into(), t.template_id.clone().into(), t.encode_to_vec().into(), now.timestamp_micros().into()],
        )
        .await
        .map_err(db_error)?;
        Ok(t)
    }

    /// A template by id; `field` names the request field for NOT_FOUND.
    pub(crate) async fn template(
        &self,
        tenant: &str,
        id: &str,
        field: &str,
    ) -> Result<OfferTemplate, ServiceError> {
        if id.trim().is_empty() {
            return Err(ServiceError::invalid(field, "is required"));
        }
        let rows = query(
            &self.db,
            "SELECT template FROM templates WHERE tenant_id = $1 AND template_id = $2",
            vec![tenant.into(), id.into()],
        )
        .await
        .map_err(db_error)?;
        let row = rows
            .first()
            .ok_or_else(|| ServiceError::not_found_at("offer template", id, field))?;
        let bytes: Vec<u8> = row.try_get("", "template").map_err(db_error)?;
        OfferTemplate::decode(bytes.as_slice()).map_err(ServiceError::internal)
    }

    /// A template's terms for redemption, from the cache or the database. Everything but
    /// `archived` is fixed at creation, and redemption does not look at `archived`.
    pub(crate) async fn terms(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Arc<OfferTemplate>, ServiceError> {
        if let Some(t) = self.terms.get(tenant, id) {
            return Ok(t);
        }
        let t = Arc::new(self.template(tenant, id, "code").await?);
        self.terms.put(tenant, id, t.clone());
        Ok(t)
    }

    /// Templates by id, a page at a time.
    pub(crate) async fn list_templates(
        &self,
        tenant: &str,
        include_archived: bool,
        page: winback_proto::common::PageRequest,
    ) -> Result<ListOfferTemplatesResponse, ServiceError> {
        let size = page_size(&page)?;
        let rows = query(
            &self.db,
            "SELECT template_id, template FROM templates
             WHERE tenant_id = $1 AND template_id > $2 AND ($3 = 1 OR archived = 0)
             ORDER BY template_id LIMIT $4",
            vec![
                tenant.into(),
                page.page_token.into(),
                i64::from(include_archived).into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut templates = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("", "template").map_err(db_error)?;
            templates
                .push(OfferTemplate::decode(bytes.as_slice()).map_err(ServiceError::internal)?);
        }
        let next_page_token = next_token(&mut templates, size, |t| t.template_id.clone());
        Ok(ListOfferTemplatesResponse {
            templates,
            page: Some(PageResponse { next_page_token }),
        })
    }

    /// Archives a template: no new coupons from it; issued coupons stay valid.
    pub(crate) async fn archive_template(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<OfferTemplate, ServiceError> {
        let mut t = self.template(tenant, id, "template_id").await?;
        t.archived = true;
        execute(
            &self.db,
            "UPDATE templates SET template = $3, archived = 1 WHERE tenant_id = $1 AND template_id = $2",
            vec![tenant.into(), id.into(), t.encode_to_vec().into()],
        )
        .await
        .map_err(db_error)?;
        Ok(t)
    }

    /// Stores a new ladder of 1–5 existing templates.
    pub(crate) async fn create_ladder(
        &self,
        tenant: &str,
        ladder: Option<Ladder>,
    ) -> Result<Ladder, ServiceError> {
        let mut ladder = ladder.ok_or_else(|| ServiceError::invalid("ladder", "is required"))?;
        self.check_ladder(tenant, &mut ladder).await?;
        ladder.ladder_id = format!("lad_{}", uuid::Uuid::now_v7().simple());
        execute(
            &self.db,
            "INSERT INTO ladders (tenant_id, ladder_id, ladder, created_at_us) VALUES ($1, $2, $3, $4)",
            vec![tenant.into(), ladder.ladder_id.clone().into(), ladder.encode_to_vec().into(), self.now_us().into()],
        )
        .await
        .map_err(db_error)?;
        Ok(ladder)
    }

    /// Replaces the masked fields of a ladder.
    pub(crate) async fn update_ladder(
        &self,
        tenant: &str,
        change: Option<Ladder>,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<Ladder, ServiceError> {
        let change = change.ok_or_else(|| ServiceError::invalid("ladder", "is required"))?;
        let paths = winback_platform::field_mask::paths(mask.as_ref(), &["name", "template_ids"])?;
        let mut ladder = self
            .ladder(tenant, &change.ladder_id, "ladder.ladder_id")
            .await?;
        for path in paths {
            match path {
                "name" => ladder.name = change.name.clone(),
                _ => ladder.template_ids = change.template_ids.clone(),
            }
        }
        self.check_ladder(tenant, &mut ladder).await?;
        execute(
            &self.db,
            "UPDATE ladders SET ladder = $3 WHERE tenant_id = $1 AND ladder_id = $2",
            vec![
                tenant.into(),
                ladder.ladder_id.clone().into(),
                ladder.encode_to_vec().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        Ok(ladder)
    }

    /// The rules of a ladder: a name, 1–5 distinct rungs of live templates.
    async fn check_ladder(&self, tenant: &str, ladder: &mut Ladder) -> Result<(), ServiceError> {
        ladder.name = ladder.name.trim().to_owned();
        if ladder.name.is_empty() {
            return Err(ServiceError::invalid("ladder.name", "is required"));
        }
        if ladder.template_ids.is_empty() || ladder.template_ids.len() > MAX_RUNGS {
            return Err(ServiceError::invalid(
                "ladder.template_ids",
                "a ladder has 1–5 rungs",
            ));
        }
        for (i, id) in ladder.template_ids.iter().enumerate() {
            if ladder.template_ids[..i].contains(id) {
                return Err(ServiceError::invalid(
                    format!("ladder.template_ids[{i}]"),
                    "a template appears twice",
                ));
            }
            let t = self
                .template(tenant, id, &format!("ladder.template_ids[{i}]"))
                .await?;
            if t.archived {
                return Err(ServiceError::invalid(
                    format!("ladder.template_ids[{i}]"),
                    "the template is archived",
                ));
            }
        }
        Ok(())
    }

    /// A ladder by id.
    pub(crate) async fn ladder(
        &self,
        tenant: &str,
        id: &str,
        field: &str,
    ) -> Result<Ladder, ServiceError> {
        if id.trim().is_empty() {
            return Err(ServiceError::invalid(field, "is required"));
        }
        let rows = query(
            &self.db,
            "SELECT ladder FROM ladders WHERE tenant_id = $1 AND ladder_id = $2",
            vec![tenant.into(), id.into()],
        )
        .await
        .map_err(db_error)?;
        let row = rows
            .first()
            .ok_or_else(|| ServiceError::not_found_at("ladder", id, field))?;
        let bytes: Vec<u8> = row.try_get("", "ladder").map_err(db_error)?;
        Ladder::decode(bytes.as_slice()).map_err(ServiceError::internal)
    }

    /// Ladders by id, a page at a time.
    pub(crate) async fn list_ladders(
        &self,
        tenant: &str,
        page: winback_proto::common::PageRequest,
    ) -> Result<ListLaddersResponse, ServiceError> {
        let size = page_size(&page)?;
        let rows = query(
            &self.db,
            "SELECT ladder FROM ladders WHERE tenant_id = $1 AND ladder_id > $2 ORDER BY ladder_id LIMIT $3",
            vec![tenant.into(), page.page_token.into(), (size + 1).into()],
        )
        .await
        .map_err(db_error)?;
        let mut ladders = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("", "ladder").map_err(db_error)?;
            ladders.push(Ladder::decode(bytes.as_slice()).map_err(ServiceError::internal)?);
        }
        let next_page_token = next_token(&mut ladders, size, |l| l.ladder_id.clone());
        Ok(ListLaddersResponse {
            ladders,
            page: Some(PageResponse { next_page_token }),
        })
    }

    /// The lowest rung the customer has not had yet: never a jump to the strongest.
    pub(crate) async fn next_offer(
        &self,
        tenant: &str,
        ladder_id: &str,
        customer_id: &str,
    ) -> Result<NextOfferResponse, ServiceError> {
        if customer_id.trim().is_empty() {
            return Err(ServiceError::invalid("customer_id", "is required"));
        }
        self.next_offers(tenant, ladder_id, &[customer_id.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal("no next offer"))
    }

    /// The next rung of each customer, in order (one lookup for the whole batch).
    pub(crate) async fn next_offers(
        &self,
        tenant: &str,
        ladder_id: &str,
        customer_ids: &[String],
    ) -> Result<Vec<NextOfferResponse>, ServiceError> {
        if customer_ids.is_empty() || customer_ids.len() > MAX_BATCH {
            return Err(ServiceError::invalid(
                "customer_ids",
                format!("must hold 1 to {MAX_BATCH} customers"),
            ));
        }
        if let Some(i) = customer_ids.iter().position(|c| c.trim().is_empty()) {
            return Err(ServiceError::invalid(
                format!("customer_ids[{i}]"),
                "is required",
            ));
        }
        let ladder = self.ladder(tenant, ladder_id, "ladder_id").await?;
        let mut had: HashMap<String, Vec<i64>> = HashMap::new();
        for chunk in customer_ids.chunks(500) {
            let mut values: Vec<sea_orm::Value> = vec![tenant.into(), ladder_id.into()];
            values.extend(chunk.iter().map(|c| sea_orm::Value::from(c.clone())));
            let rows = query(
                &self.db,
                &format!(
                    "SELECT DISTINCT customer_id, rung FROM coupons \
                     WHERE tenant_id = $1 AND ladder_id = $2 AND customer_id IN ({})",
                    placeholders(3, chunk.len())
                ),
                values,
            )
            .await
            .map_err(db_error)?;
            for r in &rows {
                let customer: String = r.try_get("", "customer_id").map_err(db_error)?;
                let rung: i64 = r.try_get("", "rung").map_err(db_error)?;
                had.entry(customer).or_default().push(rung);
            }
        }
        let mut templates: HashMap<usize, OfferTemplate> = HashMap::new();
        let mut out = Vec::with_capacity(customer_ids.len());
        for customer in customer_ids {
            let taken = had.get(customer).map(Vec::as_slice).unwrap_or_default();
            let next = (0..ladder.template_ids.len()).find(|rung| !taken.contains(&(*rung as i64)));
            out.push(match next {
                Some(rung) => {
                    let template = match templates.get(&rung) {
                        Some(t) => t.clone(),
                        None => {
                            let t = self
                                .template(tenant, &ladder.template_ids[rung], "ladder_id")
                                .await?;
                            templates.insert(rung, t.clone());
                            t
                        }
                    };
                    NextOfferResponse {
                        rung: rung as i32,
                        template: Some(template),
                        exhausted: false,
                    }
                }
                None => NextOfferResponse {
                    rung: ladder.template_ids.len() as i32,
                    template: None,
                    exhausted: true,
                },
            });
        }
        Ok(out)
    }
}

/// Trims a page fetched with one extra row and returns the token of the next page.
pub(crate) fn next_token<T>(items: &mut Vec<T>, size: i64, key: impl Fn(&T) -> String) -> String {
    if items.len() as i64 > size {
        items.truncate(size as usize);
        items.last().map(key).unwrap_or_default()
    } else {
        String::new()
    }
}
