//! Reading enrolments back: one with its step outcomes, or a page of a campaign's.

use winback_platform::ServiceError;
use winback_proto::campaigns::{Enrolment, ListEnrolmentsResponse, StepOutcome};
use winback_proto::common::PageResponse;

use crate::context::{Campaigns, db_error, page_size, timestamp};
use crate::domain::outcomes;
use crate::store::query;

const COLUMNS: &str = "enrolment_id, campaign_id, customer_id, variant, state, skip_reason,
    enrolled_at_us, ended_at_us, segment, trigger_kind, end_reason, next_state";

fn enrolment_of(r: &sea_orm::QueryResult) -> Result<Enrolment, ServiceError> {
    let s = |c: &str| r.try_get::<String>("", c).map_err(db_error);
    let i = |c: &str| r.try_get::<i64>("", c).map_err(db_error);
    Ok(Enrolment {
        enrolment_id: s("enrolment_id")?,
        campaign_id: s("campaign_id")?,
        customer_id: s("customer_id")?,
        variant: s("variant")?,
        state: i32::try_from(i("state")?).unwrap_or_default(),
        skip_reason: i32::try_from(i("skip_reason")?).unwrap_or_default(),
        enrolled_at: timestamp(i("enrolled_at_us")?),
        ended_at: timestamp(i("ended_at_us")?),
        steps: Vec::new(),
        segment: s("segment")?,
        trigger: i32::try_from(i("trigger_kind")?).unwrap_or_default(),
        end_reason: outcomes::end_reason(&s("end_reason")?),
        next_state: outcomes::after_chain_state(&s("next_state")?),
    })
}

impl Campaigns {
    /// The step outcomes of these enrolments, by enrolment, in step order.
    async fn step_outcomes(
        &self,
        tenant: &str,
        enrolment_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<StepOutcome>>, ServiceError> {
        let rows = crate::store::query_in(
            &self.db,
            "SELECT enrolment_id, step, outcome, due_at_us, executed_at_us, channel, coupon_code,
                    message_id, failure_reason
             FROM step_outcomes WHERE tenant_id = $1 AND enrolment_id IN ({list})
             ORDER BY enrolment_id, step",
            vec![tenant.into()],
            enrolment_ids,
        )
        .await
        .map_err(db_error)?;
        let mut out: std::collections::HashMap<String, Vec<StepOutcome>> =
            std::collections::HashMap::new();
        for r in &rows {
            let i = |c: &str| r.try_get::<i64>("", c).map_err(db_error);
            let s = |c: &str| r.try_get::<String>("", c).map_err(db_error);
            out.entry(s("enrolment_id")?)
                .or_default()
                .push(StepOutcome {
                    step: i32::try_from(i("step")?).unwrap_or_default(),
                    outcome: outcomes::step_result(&s("outcome")?),
                    failure_reason: s("failure_reason")?,
                    due_at: timestamp(i("due_at_us")?),
                    executed_at: timestamp(i("executed_at_us")?),
                    channel: i32::try_from(i("channel")?).unwrap_or_default(),
                    coupon_code: s("coupon_code")?,
                    message_id: s("message_id")?,
                });
        }
        Ok(out)
    }

    /// One enrolment with its step outcomes, or NOT_FOUND.
    pub(crate) async fn enrolment(
        &self,
        tenant: &str,
        enrolment_id: &str,
    ) -> Result<Enrolment, ServiceError> {
        let rows = query(
            &self.db,
            &format!("SELECT {COLUMNS} FROM enrolments WHERE tenant_id = $1 AND enrolment_id = $2"),
            vec![tenant.into(), enrolment_id.into()],
        )
        .await
        .map_err(db_error)?;
        let mut e = enrolment_of(rows.first().ok_or_else(|| {
            ServiceError::not_found_at("enrolment", enrolment_id, "enrolment_id")
        })?)?;
        e.steps = self
            .step_outcomes(tenant, std::slice::from_ref(&e.enrolment_id))
            .await?
            .remove(&e.enrolment_id)
            .unwrap_or_default();
        Ok(e)
    }

    /// A page of a campaign's enrolments and non-enrolment decisions.
    pub(crate) async fn list_enrolments(
        &self,
        tenant: &str,
        r: winback_proto::campaigns::ListEnrolmentsRequest,
    ) -> Result<ListEnrolmentsResponse, ServiceError> {
        let page = r.page.unwrap_or_default();
        let size = page_size(&page)?;
        self.campaign(tenant, &r.campaign_id, "campaign_id").await?;
        let rows = query(
            &self.db,
            &format!(
                "SELECT {COLUMNS} FROM enrolments
                 WHERE tenant_id = $1 AND campaign_id = $2 AND enrolment_id > $3
                   AND ($4 = '' OR customer_id = $4) AND ($5 = 0 OR state = $5)
                 ORDER BY enrolment_id LIMIT $6"
            ),
            vec![
                tenant.into(),
                r.campaign_id.clone().into(),
                page.page_token.clone().into(),
                r.customer_id.clone().into(),
                i64::from(r.state).into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut enrolments = rows
            .iter()
            .map(enrolment_of)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = if enrolments.len() as i64 > size {
            enrolments.truncate(size as usize);
            enrolments
                .last()
                .map(|e| e.enrolment_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let ids: Vec<String> = enrolments.iter().map(|e| e.enrolment_id.clone()).collect();
        let mut steps = self.step_outcomes(tenant, &ids).await?;
        for e in &mut enrolments {
            e.steps = steps.remove(&e.enrolment_id).unwrap_or_default();
        }
        Ok(ListEnrolmentsResponse {
            enrolments,
            page: Some(PageResponse { next_page_token }),
        })
    }
}
