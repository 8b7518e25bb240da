//! Campaigns: a chain for an audience with variants and a holdout, and their lifecycle
//! draft → active ⇄ paused → completed.

use prost::Message;
use winback_platform::ServiceError;
use winback_platform::error::FieldViolation;
use winback_platform::time::to_timestamp;
use winback_proto::campaigns::{
    Audience, Campaign, CampaignState, EnrolmentState, ListCampaignsResponse, Trigger,
};
use winback_proto::common::{LifecycleState, PageRequest, PageResponse};
use winback_proto::events::EnrolmentEnded;
use winback_proto::events::event::Payload;
use winback_proto::segmentation::GetPolicyRequest;

use crate::context::{Campaigns, db_error, page_size};
use crate::peers::upstream;
use crate::store::{execute, query};

fn state_of(c: &Campaign) -> CampaignState {
    CampaignState::try_from(c.state).unwrap_or(CampaignState::Unspecified)
}

impl Campaigns {
    /// Checks and stores a new campaign in the draft state.
    pub(crate) async fn create_campaign(
        &self,
        tenant: &str,
        campaign: Option<Campaign>,
    ) -> Result<Campaign, ServiceError> {
        let mut c = campaign.ok_or_else(|| ServiceError::invalid("campaign", "required"))?;
        self.check_campaign(tenant, &c).await?;
        c.campaign_id = uuid::Uuid::now_v7().to_string();
        c.state = CampaignState::Draft as i32;
        c.created_at = Some(to_timestamp(self.now()));
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        execute(
            &txn,
            "INSERT INTO campaigns (tenant_id, campaign_id, state, campaign, created_at_us)
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                tenant.into(),
                c.campaign_id.clone().into(),
                i64::from(c.state).into(),
                c.encode_to_vec().into(),
                self.now().timestamp_micros().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        Ok(c)
    }

    /// Replaces the masked fields of a draft campaign, or the name and audience of a
    /// paused one.
    pub(crate) async fn update_campaign(
        &self,
        tenant: &str,
        change: Option<Campaign>,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<Campaign, ServiceError> {
        const DRAFT: &[&str] = &[
            "name",
            "chain_id",
            "audience",
            "variants",
            "holdout_percent",
            "winback",
            "assignment_seed",
        ];
        const PAUSED: &[&str] = &["name", "audience"];
        let change = change.ok_or_else(|| ServiceError::invalid("campaign", "required"))?;
        let mut c = self
            .campaign(tenant, &change.campaign_id, "campaign.campaign_id")
            .await?;
        let state = CampaignState::try_from(c.state).unwrap_or_default();
        let updatable = match state {
            CampaignState::Draft => DRAFT,
            CampaignState::Paused => PAUSED,
            _ => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "campaign {} is {}: only a draft or a paused campaign can be edited",
                    c.campaign_id,
                    state.as_str_name()
                )));
            }
        };
        for path in winback_platform::field_mask::paths(mask.as_ref(), updatable)? {
            match path {
                "name" => c.name = change.name.clone(),
                "chain_id" => c.chain_id = change.chain_id.clone(),
                "audience" => c.audience = change.audience.clone(),
                "variants" => c.variants = change.variants.clone(),
                "holdout_percent" => c.holdout_percent = change.holdout_percent,
                "winback" => c.winback = change.winback,
                _ => c.assignment_seed = change.assignment_seed.clone(),
            }
        }
        self.check_campaign(tenant, &c).await?;
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        let changed = execute(
            &txn,
            "UPDATE campaigns SET campaign = $3 WHERE tenant_id = $1 AND campaign_id = $2 AND state = $4",
            vec![
                tenant.into(),
                c.campaign_id.clone().into(),
                c.encode_to_vec().into(),
                i64::from(c.state).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        if changed == 0 {
            return Err(ServiceError::Aborted(
                "the campaign changed state meanwhile; read it and retry".into(),
            ));
        }
        Ok(c)
    }

    async fn check_campaign(&self, tenant: &str, c: &Campaign) -> Result<(), ServiceError> {
        let mut bad = Vec::new();
        if c.name.trim().is_empty() || c.name.len() > 200 {
            bad.push(FieldViolation::new(
                "campaign.name",
                "a name of 1–200 characters is required",
            ));
        }
        if c.assignment_seed.len() > 64 {
            bad.push(FieldViolation::new(
                "campaign.assignment_seed",
                "at most 64 characters",
            ));
        }
        if !(0..=50).contains(&c.holdout_percent) {
            bad.push(FieldViolation::new(
                "campaign.holdout_percent",
                "must be between 0 and 50",
            ));
        }
        let audience = c.audience.clone().unwrap_or_default();
        if audience.segments.is_empty()
            && audience.lifecycle_states.is_empty()
            && audience.triggers.is_empty()
        {
            bad.push(FieldViolation::new(
                "campaign.audience",
                "name at least one segment, lifecycle state or trigger",
            ));
        }
        for (i, s) in audience.lifecycle_states.iter().enumerate() {
            if !matches!(LifecycleState::try_from(*s), Ok(l) if l != LifecycleState::Unspecified) {
                bad.push(FieldViolation::new(
                    format!("campaign.audience.lifecycle_states[{i}]"),
                    "unknown lifecycle state",
                ));
            }
        }
        for (i, t) in audience.triggers.iter().enumerate() {
            if !matches!(Trigger::try_from(*t), Ok(t) if t != Trigger::Unspecified) {
                bad.push(FieldViolation::new(
                    format!("campaign.audience.triggers[{i}]"),
                    "unknown trigger",
                ));
            }
        }
        if !(0.0..=1.0).contains(&audience.min_p_alive) {
            bad.push(FieldViolation::new(
                "campaign.audience.min_p_alive",
                "must be between 0 and 1",
            ));
        }
        if audience.min_clv_minor < 0 {
            bad.push(FieldViolation::new(
                "campaign.audience.min_clv_minor",
                "must not be negative",
            ));
        }
        let mut names = Vec::new();
        for (i, v) in c.variants.iter().enumerate() {
            if v.name.trim().is_empty() || v.name.len() > 50 {
                bad.push(FieldViolation::new(
                    format!("campaign.variants[{i}].name"),
                    "a name of 1–50 characters is required",
                ));
            } else if names.contains(&&v.name) {
                bad.push(FieldViolation::new(
                    format!("campaign.variants[{i}].name"),
                    "listed twice",
                ));
            }
            names.push(&v.name);
            if v.weight <= 0 {
                bad.push(FieldViolation::new(
                    format!("campaign.variants[{i}].weight"),
                    "must be positive",
                ));
            }
        }
        if c.chain_id.is_empty() {
            bad.push(FieldViolation::new("campaign.chain_id", "required"));
        }
        if !bad.is_empty() {
            return Err(ServiceError::InvalidArgument(bad));
        }
        self.chain(tenant, &c.chain_id, "campaign.chain_id").await?;
        for (i, v) in c.variants.iter().enumerate() {
            if !v.chain_id.is_empty() {
                self.chain(
                    tenant,
                    &v.chain_id,
                    &format!("campaign.variants[{i}].chain_id"),
                )
                .await?;
            }
        }
        if !audience.segments.is_empty() {
            let policy = self
                .segmentation(tenant)?
                .get_policy(GetPolicyRequest {})
                .await
                .map_err(|s| upstream("segmentation.GetPolicy", &s))?
                .into_inner()
                .policy
                .unwrap_or_default();
            let table = policy.rule_table.unwrap_or_default();
            for (i, s) in audience.segments.iter().enumerate() {
                let known =
                    table.rules.iter().any(|r| &r.segment == s) || table.fallback_segment == *s;
                if !known {
                    return Err(ServiceError::not_found_at(
                        "segment",
                        s,
                        format!("campaign.audience.segments[{i}]"),
                    ));
                }
            }
        }
        self.check_no_conflict(tenant, c).await
    }

    /// A win-back campaign may not target what a running win-back campaign already targets:
    /// the same customer would be wanted by two chains at once.
    async fn check_no_conflict(&self, tenant: &str, c: &Campaign) -> Result<(), ServiceError> {
        if !c.winback {
            return Ok(());
        }
        let audience = c.audience.clone().unwrap_or_default();
        for other in self
            .campaigns_in(tenant, &[CampaignState::Active, CampaignState::Paused])
            .await?
        {
            if other.campaign_id == c.campaign_id || !other.winback {
                continue;
            }
            let theirs = other.audience.unwrap_or_default();
            let clash = audience
                .segments
                .iter()
                .position(|s| theirs.segments.contains(s))
                .map(|i| {
                    (
                        format!("campaign.audience.segments[{i}]"),
                        audience.segments[i].clone(),
                    )
                })
                .or_else(|| {
                    audience
                        .lifecycle_states
                        .iter()
                        .position(|s| theirs.lifecycle_states.contains(s))
                        .map(|i| {
                            (
                                format!("campaign.audience.lifecycle_states[{i}]"),
                                LifecycleState::try_from(audience.lifecycle_states[i])
                                    .map(|l| l.as_str_name().to_owned())
                                    .unwrap_or_default(),
                            )
                        })
                })
                .or_else(|| {
                    audience
                        .triggers
                        .iter()
                        .position(|t| theirs.triggers.contains(t))
                        .map(|i| {
                            (
                                format!("campaign.audience.triggers[{i}]"),
                                Trigger::try_from(audience.triggers[i])
                                    .map(|t| t.as_str_name().to_owned())
                                    .unwrap_or_default(),
                            )
                        })
                });
            if let Some((field, what)) = clash {
                return Err(ServiceError::FailedPrecondition(format!(
                    "{field}: {what} is already targeted by running win-back campaign {} ({:?})",
                    other.campaign_id, other.name
                )));
            }
        }
        Ok(())
    }

    /// Campaigns of `tenant` in any of `states`.
    pub(crate) async fn campaigns_in(
        &self,
        tenant: &str,
        states: &[CampaignState],
    ) -> Result<Vec<Campaign>, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT campaign FROM campaigns WHERE tenant_id = $1 ORDER BY campaign_id",
            vec![tenant.into()],
        )
        .await
        .map_err(db_error)?;
        let mut out = Vec::new();
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("", "campaign").map_err(db_error)?;
            let c = Campaign::decode(bytes.as_slice()).map_err(ServiceError::internal)?;
            if states.contains(&state_of(&c)) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// One campaign, or NOT_FOUND naming `field`.
    pub(crate) async fn campaign(
        &self,
        tenant: &str,
        campaign_id: &str,
        field: &str,
    ) -> Result<Campaign, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT campaign FROM campaigns WHERE tenant_id = $1 AND campaign_id = $2",
            vec![tenant.into(), campaign_id.into()],
        )
        .await
        .map_err(db_error)?;
        let row = rows
            .first()
            .ok_or_else(|| ServiceError::not_found_at("campaign", campaign_id, field))?;
        let bytes: Vec<u8> = row.try_get("", "campaign").map_err(db_error)?;
        Campaign::decode(bytes.as_slice()).map_err(ServiceError::internal)
    }

    /// A page of campaigns, optionally in one state.
    pub(crate) async fn list_campaigns(
        &self,
        tenant: &str,
        state: i32,
        page: PageRequest,
    ) -> Result<ListCampaignsResponse, ServiceError> {
        let size = page_size(&page)?;
        let rows = query(
            &self.db,
            "SELECT campaign FROM campaigns WHERE tenant_id = $1 AND campaign_id > $2
               AND ($3 = 0 OR state = $3)
             ORDER BY campaign_id LIMIT $4",
            vec![
                tenant.into(),
                page.page_token.clone().into(),
                i64::from(state).into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut campaigns = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("", "campaign").map_err(db_error)?;
            campaigns.push(Campaign::decode(bytes.as_slice()).map_err(ServiceError::internal)?);
        }
        let next_page_token = if campaigns.len() as i64 > size {
            campaigns.truncate(size as usize);
            campaigns
                .last()
                .map(|c| c.campaign_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListCampaignsResponse {
            campaigns,
            page: Some(PageResponse { next_page_token }),
        })
    }

    /// Moves a campaign to `to`; refuses moves the lifecycle does not have.
    pub(crate) async fn transition(
        &self,
        tenant: &str,
        campaign_id: &str,
        to: CampaignState,
    ) -> Result<Campaign, ServiceError> {
        let mut c = self.campaign(tenant, campaign_id, "campaign_id").await?;
        let from = state_of(&c);
        let allowed = match to {
            CampaignState::Active => matches!(from, CampaignState::Draft | CampaignState::Paused),
            CampaignState::Paused => from == CampaignState::Active,
            CampaignState::Completed => from != CampaignState::Completed,
            _ => false,
        };
        if from == to {
            return Ok(c);
        }
        if !allowed {
            return Err(ServiceError::FailedPrecondition(format!(
                "campaign {campaign_id} is {}; it cannot become {}",
                from.as_str_name(),
                to.as_str_name()
            )));
        }
        if to == CampaignState::Active {
            self.check_no_conflict(tenant, &c).await?;
        }
        c.state = to as i32;
        let now = self.now();
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        execute(
            &txn,
            "UPDATE campaigns SET state = $3, campaign = $4 WHERE tenant_id = $1 AND campaign_id = $2",
            vec![
                tenant.into(),
                campaign_id.into(),
                i64::from(c.state).into(),
                c.encode_to_vec().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        if to == CampaignState::Completed {
            // Running chains end here; their customers are free for other campaigns.
            let rows = query(
                &txn,
                "UPDATE enrolments SET state = $3, ended_at_us = $4, end_reason = 'campaign_completed',
                        due_at_us = 0, next_state = 'sleeping'
                 WHERE tenant_id = $1 AND campaign_id = $2 AND state = $5
                 RETURNING enrolment_id, customer_id",
                vec![
                    tenant.into(),
                    campaign_id.into(),
                    i64::from(EnrolmentState::Completed as i32).into(),
                    now.timestamp_micros().into(),
                    i64::from(EnrolmentState::Running as i32).into(),
                ],
            )
            .await
            .map_err(db_error)?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                events.push((
                    tenant.to_owned(),
                    now,
                    Payload::EnrolmentEnded(EnrolmentEnded {
                        enrolment_id: row.try_get("", "enrolment_id").map_err(db_error)?,
                        campaign_id: campaign_id.to_owned(),
                        customer_id: row.try_get("", "customer_id").map_err(db_error)?,
                        reason: crate::domain::outcomes::end_reason("campaign_completed"),
                        next_state: crate::domain::outcomes::after_chain_state("sleeping"),
                    }),
                ));
            }
            self.outbox
                .append_many(&txn, events)
                .await
                .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        if to == CampaignState::Active {
            self.wake.notify_waiters();
        }
        Ok(c)
    }
}

/// The audience of a campaign (empty when unset).
pub(crate) fn audience(c: &Campaign) -> Audience {
    c.audience.clone().unwrap_or_default()
}
