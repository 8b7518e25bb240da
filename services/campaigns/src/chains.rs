//! Chains: presets, checking a chain against the policy and against what exists in offers
//! and delivery, storing and reading them.

use std::collections::HashMap;

use chrono::Duration;
use prost::Message;
use winback_platform::ServiceError;
use winback_platform::error::FieldViolation;
use winback_platform::time::from_duration;
use winback_proto::campaigns::{Chain, ChainViolation, ListChainsResponse, Step};
use winback_proto::common::{PageRequest, PageResponse};
use winback_proto::delivery::GetTemplateRequest;
use winback_proto::offers::{GetLadderRequest, GetOfferTemplateRequest};

use crate::context::{Campaigns, db_error, page_size};
use crate::domain::{chain, presets};
use crate::peers::upstream;
use crate::store::{execute, query};

/// What a check of a chain found.
#[derive(Debug, Default)]
pub(crate) struct ChainCheck {
    /// Breaks of the policy or of the chain's own shape.
    pub(crate) violations: Vec<FieldViolation>,
    /// Templates, offers or ladders it names that do not exist: (kind, id, field).
    pub(crate) missing: Vec<(&'static str, String, String)>,
}

impl ChainCheck {
    /// Both lists as violations (ValidateChain shows them together).
    pub(crate) fn all(&self) -> Vec<ChainViolation> {
        self.violations
            .iter()
            .map(|v| ChainViolation {
                field: v.field.clone(),
                description: v.description.clone(),
            })
            .chain(self.missing.iter().map(|(kind, id, field)| ChainViolation {
                field: field.clone(),
                description: format!("{kind} {id:?} not found"),
            }))
            .collect()
    }

    /// The error a write answers with: invalid first, then the first missing reference.
    pub(crate) fn into_result(self) -> Result<(), ServiceError> {
        if !self.violations.is_empty() {
            return Err(ServiceError::InvalidArgument(self.violations));
        }
        match self.missing.into_iter().next() {
            Some((kind, id, field)) => Err(ServiceError::not_found_at(kind, id, field)),
            None => Ok(()),
        }
    }
}

impl Campaigns {
    /// Checks `chain` against `tenant`'s policy and the offers and templates it names.
    pub(crate) async fn check_chain(
        &self,
        tenant: &str,
        chain: &Chain,
    ) -> Result<ChainCheck, ServiceError> {
        let policy = self.policy(tenant).await?;
        let mut check = ChainCheck::default();
        let mut offers = self.offers(tenant)?;
        let mut validity: HashMap<usize, Duration> = HashMap::new();
        for (i, step) in chain.steps.iter().enumerate() {
            let mut templates = Vec::new();
            let mut field = String::new();
            if !step.offer_template_id.is_empty() {
                templates.push(step.offer_template_id.clone());
                field = format!("chain.steps[{i}].offer_template_id");
            } else if !step.offer_ladder_id.is_empty() {
                field = format!("chain.steps[{i}].offer_ladder_id");
                match offers
                    .get_ladder(GetLadderRequest {
                        ladder_id: step.offer_ladder_id.clone(),
                    })
                    .await
                {
                    Ok(r) => templates = r.into_inner().ladder.unwrap_or_default().template_ids,
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        check.missing.push((
                            "offer ladder",
                            step.offer_ladder_id.clone(),
                            field.clone(),
                        ));
                    }
                    Err(s) => return Err(upstream("offers.GetLadder", &s)),
                }
            }
            for template_id in templates {
                match offers
                    .get_offer_template(GetOfferTemplateRequest {
                        template_id: template_id.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        if let Some(d) = r.into_inner().template.and_then(|t| t.valid_for) {
                            let d = from_duration(&d);
                            let shortest = validity.entry(i).or_insert(d);
                            *shortest = (*shortest).min(d);
                        }
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        check
                            .missing
                            .push(("offer template", template_id, field.clone()));
                    }
                    Err(s) => return Err(upstream("offers.GetOfferTemplate", &s)),
                }
            }
        }
        let index_of = |s: &Step| chain.steps.iter().position(|x| std::ptr::eq(x, s));
        check.violations = chain::violations(chain, &policy, &|s| {
            index_of(s).and_then(|i| validity.get(&i).copied())
        });
        let mut delivery = self.delivery(tenant)?;
        for (i, step) in chain.steps.iter().enumerate() {
            for (j, c) in step.channels.iter().enumerate() {
                if c.template_id.is_empty() {
                    continue;
                }
                match delivery
                    .get_template(GetTemplateRequest {
                        template_id: c.template_id.clone(),
                        channel: c.channel,
                        locale: String::new(),
                    })
                    .await
                {
                    Ok(reply) => {
                        // A step fills the standard variables only (delivery.proto).
                        let extra = reply
                            .into_inner()
                            .template
                            .map(|t| t.extra_variables)
                            .unwrap_or_default();
                        if !extra.is_empty() {
                            check.violations.push(FieldViolation::new(
                                format!("chain.steps[{i}].channels[{j}].template_id"),
                                format!(
                                    "template {} uses variables a campaign step does not fill: {}",
                                    c.template_id,
                                    extra.join(", ")
                                ),
                            ));
                        }
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::NotFound | tonic::Code::InvalidArgument
                        ) =>
                    {
                        check.missing.push((
                            "template",
                            c.template_id.clone(),
                            format!("chain.steps[{i}].channels[{j}].template_id"),
                        ));
                    }
                    Err(s) => return Err(upstream("delivery.GetTemplate", &s)),
                }
            }
        }
        Ok(check)
    }

    /// Stores a new chain (a preset's steps when `preset` is set and `steps` empty).
    pub(crate) async fn create_chain(
        &self,
        tenant: &str,
        chain: Option<Chain>,
    ) -> Result<Chain, ServiceError> {
        let mut chain = chain.ok_or_else(|| ServiceError::invalid("chain", "required"))?;
        if !chain.preset.is_empty() {
            let preset = presets::find(&chain.preset)
                .and_then(|p| p.chain)
                .ok_or_else(|| {
                    ServiceError::not_found_at("chain preset", &chain.preset, "chain.preset")
                })?;
            if chain.steps.is_empty() {
                chain.steps = preset.steps;
            }
            if chain.name.is_empty() {
                chain.name = preset.name;
            }
        }
        self.check_chain(tenant, &chain).await?.into_result()?;
        chain.chain_id = uuid::Uuid::now_v7().to_string();
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        execute(
            &txn,
            "INSERT INTO chains (tenant_id, chain_id, chain, created_at_us) VALUES ($1, $2, $3, $4)",
            vec![
                tenant.into(),
                chain.chain_id.clone().into(),
                chain.encode_to_vec().into(),
                self.now().timestamp_micros().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        Ok(chain)
    }

    /// Replaces the masked fields of a chain no active or paused campaign runs.
    pub(crate) async fn update_chain(
        &self,
        tenant: &str,
        change: Option<Chain>,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<Chain, ServiceError> {
        let change = change.ok_or_else(|| ServiceError::invalid("chain", "required"))?;
        let paths = winback_platform::field_mask::paths(mask.as_ref(), &["name", "steps"])?;
        let mut chain = self
            .chain(tenant, &change.chain_id, "chain.chain_id")
            .await?;
        for path in paths {
            match path {
                "name" => chain.name = change.name.clone(),
                _ => chain.steps = change.steps.clone(),
            }
        }
        if let Some(running) = self.campaigns_running(tenant, &chain.chain_id).await? {
            return Err(ServiceError::FailedPrecondition(format!(
                "campaign {running} runs this chain; pause-and-edit is for campaigns, a running \
                 chain's steps cannot change under its enrolments (copy it instead)"
            )));
        }
        self.check_chain(tenant, &chain).await?.into_result()?;
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        execute(
            &txn,
            "UPDATE chains SET chain = $3 WHERE tenant_id = $1 AND chain_id = $2",
            vec![
                tenant.into(),
                chain.chain_id.clone().into(),
                chain.encode_to_vec().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        Ok(chain)
    }

    /// An active or paused campaign of the tenant that runs `chain_id`, if any.
    async fn campaigns_running(
        &self,
        tenant: &str,
        chain_id: &str,
    ) -> Result<Option<String>, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT campaign FROM campaigns WHERE tenant_id = $1 AND state IN ($2, $3)",
            vec![
                tenant.into(),
                i64::from(winback_proto::campaigns::CampaignState::Active as i32).into(),
                i64::from(winback_proto::campaigns::CampaignState::Paused as i32).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("", "campaign").map_err(db_error)?;
            let c = winback_proto::campaigns::Campaign::decode(bytes.as_slice())
                .map_err(ServiceError::internal)?;
            if c.chain_id == chain_id || c.variants.iter().any(|v| v.chain_id == chain_id) {
                return Ok(Some(c.campaign_id));
            }
        }
        Ok(None)
    }

    /// One chain, or NOT_FOUND naming `field`.
    pub(crate) async fn chain(
        &self,
        tenant: &str,
        chain_id: &str,
        field: &str,
    ) -> Result<Chain, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT chain FROM chains WHERE tenant_id = $1 AND chain_id = $2",
            vec![tenant.into(), chain_id.into()],
        )
        .await
        .map_err(db_error)?;
        let row = rows
            .first()
            .ok_or_else(|| ServiceError::not_found_at("chain", chain_id, field))?;
        let bytes: Vec<u8> = row.try_get("", "chain").map_err(db_error)?;
        Chain::decode(bytes.as_slice()).map_err(ServiceError::internal)
    }

    /// A page of chains, oldest first.
    pub(crate) async fn list_chains(
        &self,
        tenant: &str,
        page: PageRequest,
    ) -> Result<ListChainsResponse, ServiceError> {
        let size = page_size(&page)?;
        let rows = query(
            &self.db,
            "SELECT chain_id, chain FROM chains WHERE tenant_id = $1 AND chain_id > $2
             ORDER BY chain_id LIMIT $3",
            vec![
                tenant.into(),
                page.page_token.clone().into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut chains = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("", "chain").map_err(db_error)?;
            chains.push(Chain::decode(bytes.as_slice()).map_err(ServiceError::internal)?);
        }
        let next_page_token = if chains.len() as i64 > size {
            chains.truncate(size as usize);
            chains
                .last()
                .map(|c| c.chain_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListChainsResponse {
            chains,
            page: Some(PageResponse { next_page_token }),
        })
    }
}
