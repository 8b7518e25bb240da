//! Handlers of `winback.segmentation.v1.SegmentationService`: translate, check the tenant,
//! call the service, translate back.

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use winback_platform::ServiceError;
use winback_platform::auth::tenant_for;
use winback_platform::paging::paged;
use winback_proto::segmentation::segmentation_service_server::SegmentationService;
use winback_proto::segmentation::*;

use crate::context::Segmentation;
use crate::policy::{self, table_from_proto};
use crate::reads::MemberFilter;
use crate::store::queries;

/// The stream type the generated trait expects for server-streaming methods.
type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

const READ: &str = "segmentation:read";
const WRITE: &str = "segmentation:write";

/// The handlers.
#[derive(Debug, Clone)]
pub(crate) struct SegmentationGrpc {
    pub(crate) segmentation: Segmentation,
}

#[tonic::async_trait]
impl SegmentationService for SegmentationGrpc {
    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let policy = self.segmentation.policy(&tenant).await?;
        Ok(Response::new(GetPolicyResponse {
            policy: Some(policy),
        }))
    }

    async fn update_policy(
        &self,
        request: Request<UpdatePolicyRequest>,
    ) -> Result<Response<UpdatePolicyResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let policy = request
            .into_inner()
            .policy
            .ok_or_else(|| ServiceError::invalid("policy", "is required"))?;
        let policy = policy::normalize(policy)?;
        let now = self.segmentation.now().timestamp_micros();
        queries::put_policy(&self.segmentation.db, &tenant, policy.encode_to_vec(), now)
            .await
            .map_err(ServiceError::internal)?;
        Ok(Response::new(UpdatePolicyResponse {
            policy: Some(policy),
        }))
    }

    async fn validate_rule_table(
        &self,
        request: Request<ValidateRuleTableRequest>,
    ) -> Result<Response<ValidateRuleTableResponse>, Status> {
        tenant_for(&request, READ)?;
        let table = request
            .into_inner()
            .table
            .ok_or_else(|| ServiceError::invalid("table", "is required"))?;
        let table = table_from_proto(&table, "table").map_err(ServiceError::InvalidArgument)?;
        let report = table.validate();
        Ok(Response::new(ValidateRuleTableResponse {
            valid: report.is_valid(),
            unreachable_rules: report.unreachable_rules.iter().map(|&i| i as i32).collect(),
            uncovered_cells: report
                .uncovered_cells
                .iter()
                .map(|c| ScoreCell {
                    recency: i32::from(c.recency),
                    frequency: i32::from(c.frequency),
                    monetary: i32::from(c.monetary),
                })
                .collect(),
        }))
    }

    async fn recompute(
        &self,
        request: Request<RecomputeRequest>,
    ) -> Result<Response<RecomputeResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let as_of = self.segmentation.as_of(request.get_ref().as_of.as_ref())?;
        Ok(Response::new(
            self.segmentation
                .recompute(&tenant, as_of, request.get_ref().incremental)
                .await?,
        ))
    }

    async fn get_customer_score(
        &self,
        request: Request<GetCustomerScoreRequest>,
    ) -> Result<Response<GetCustomerScoreResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let r = request.get_ref();
        let locale = if r.locale.is_empty() {
            "en"
        } else {
            r.locale.as_str()
        };
        let score = self
            .segmentation
            .customer_score(&tenant, &r.customer_id, locale)
            .await?;
        Ok(Response::new(GetCustomerScoreResponse {
            score: Some(score),
        }))
    }

    async fn list_segment_members(
        &self,
        request: Request<ListSegmentMembersRequest>,
    ) -> Result<Response<BoxStream<ListSegmentMembersResponse>>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let filter = MemberFilter::new(request.into_inner())?;
        let (tx, rx) = mpsc::channel(4);
        let segmentation = self.segmentation.clone();
        tokio::spawn(async move {
            let errors = tx.clone();
            if let Err(e) = segmentation.stream_members(tenant, filter, tx).await {
                let _ = errors.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_segment_summary(
        &self,
        request: Request<GetSegmentSummaryRequest>,
    ) -> Result<Response<GetSegmentSummaryResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let r = request.get_ref();
        let locale = if r.locale.is_empty() {
            "en"
        } else {
            r.locale.as_str()
        };
        Ok(Response::new(
            self.segmentation
                .summary(&tenant, locale, r.history_limit)
                .await?,
        ))
    }

    async fn list_transitions(
        &self,
        request: Request<ListTransitionsRequest>,
    ) -> Result<Response<ListTransitionsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.segmentation.transitions(&tenant, r)
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn fit_models(
        &self,
        request: Request<FitModelsRequest>,
    ) -> Result<Response<FitModelsResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.get_ref();
        let as_of = self.segmentation.as_of(r.as_of.as_ref())?;
        let unit = optional_days(r.time_unit.as_ref(), "time_unit", 365.0)?;
        let horizon = optional_days(r.horizon.as_ref(), "horizon", 36_500.0)?;
        if r.probes.len() > 1_000 {
            return Err(ServiceError::invalid("probes", "at most 1000").into());
        }
        let mut probes = Vec::with_capacity(r.probes.len());
        for (i, p) in r.probes.iter().enumerate() {
            let ok = p.x >= 0
                && p.t.is_finite()
                && p.t_x.is_finite()
                && p.t_x >= 0.0
                && p.t_x <= p.t
                && (p.x > 0 || p.t_x == 0.0);
            if !ok {
                return Err(ServiceError::invalid(
                    format!("probes[{i}]"),
                    "needs x ≥ 0 and 0 ≤ t_x ≤ t (t_x = 0 when x = 0)",
                )
                .into());
            }
            probes.push(winback_scoring::nbd::Observation {
                x: p.x as u32,
                t_x: p.t_x,
                t: p.t,
            });
        }
        // The horizon is given as a duration; the models count in the fit's time unit.
        let unit_days = match unit {
            Some(u) => u,
            None => {
                self.segmentation
                    .effective_policy(&tenant)
                    .await?
                    .scoring
                    .time_unit_days
            }
        };
        Ok(Response::new(
            self.segmentation
                .fit_models(
                    &tenant,
                    as_of,
                    Some(unit_days),
                    horizon.map(|h| h / unit_days),
                    probes,
                )
                .await?,
        ))
    }
}

/// A duration field in days: `None` when unset or zero, else above 0 and at most `max_days`.
fn optional_days(
    d: Option<&prost_types::Duration>,
    field: &str,
    max_days: f64,
) -> Result<Option<f64>, ServiceError> {
    let Some(d) = d.filter(|d| d.seconds != 0 || d.nanos != 0) else {
        return Ok(None);
    };
    let days = (d.seconds as f64 + f64::from(d.nanos) * 1e-9) / 86_400.0;
    if days > 0.0 && days <= max_days {
        Ok(Some(days))
    } else {
        Err(ServiceError::invalid(
            field,
            format!("must be above 0 and at most {max_days} days"),
        ))
    }
}
