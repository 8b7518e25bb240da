//! Handlers of `winback.profiles.v1.ProfilesService`: translate, check the tenant, call the
//! service, translate back.

use tonic::{Request, Response, Status, Streaming};
use winback_platform::ServiceError;
use winback_platform::auth::tenant_for;
use winback_platform::paging::paged;
use winback_proto::profiles::profiles_service_server::ProfilesService;
use winback_proto::profiles::*;

use crate::context::{Profiles, timestamp};
use crate::domain::validate::MAX_BATCH;
use crate::order_stream::GroupReader;
use crate::orders::OnInvalid;
use crate::written_states::WrittenStates;

const READ: &str = "profiles:read";
const WRITE: &str = "profiles:write";

/// The handlers.
#[derive(Debug, Clone)]
pub(crate) struct ProfilesGrpc {
    pub(crate) profiles: Profiles,
    pub(crate) requests: winback_platform::idempotency::RequestLog,
}

#[tonic::async_trait]
impl ProfilesService for ProfilesGrpc {
    async fn upsert_customers(
        &self,
        request: Request<UpsertCustomersRequest>,
    ) -> Result<Response<UpsertCustomersResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let (created, updated) = self
            .profiles
            .upsert_customers(&tenant, r.customers, r.update_mask)
            .await?;
        Ok(Response::new(UpsertCustomersResponse { created, updated }))
    }

    async fn get_customer(
        &self,
        request: Request<GetCustomerRequest>,
    ) -> Result<Response<GetCustomerResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        Ok(Response::new(
            self.profiles
                .get_customer(&tenant, &request.get_ref().customer_id)
                .await?,
        ))
    }

    async fn get_customers(
        &self,
        request: Request<GetCustomersRequest>,
    ) -> Result<Response<GetCustomersResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        Ok(Response::new(
            self.profiles
                .get_customers(&tenant, request.into_inner().customer_ids)
                .await?,
        ))
    }

    async fn list_customers(
        &self,
        request: Request<ListCustomersRequest>,
    ) -> Result<Response<ListCustomersResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.profiles.list_customers(&tenant, r)
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn erase_customer(
        &self,
        request: Request<EraseCustomerRequest>,
    ) -> Result<Response<EraseCustomerResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let erased_at_us = self
            .profiles
            .erase_customer(&tenant, &request.get_ref().customer_id)
            .await?;
        Ok(Response::new(EraseCustomerResponse {
            erased_at: timestamp(erased_at_us),
        }))
    }

    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<RecordConsentResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let request = request.into_inner();
        let reply = self
            .requests
            .once(
                &tenant,
                "RecordConsent",
                &request.request_id,
                &request,
                || async {
                    let consent = self
                        .profiles
                        .record_consent(&tenant, request.clone())
                        .await?;
                    Ok(RecordConsentResponse {
                        consent: Some(consent),
                    })
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn record_consents(
        &self,
        request: Request<RecordConsentsRequest>,
    ) -> Result<Response<RecordConsentsResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let consents = self
            .profiles
            .record_consents(&tenant, request.into_inner().consents)
            .await?;
        Ok(Response::new(RecordConsentsResponse { consents }))
    }

    async fn list_consent_history(
        &self,
        request: Request<ListConsentHistoryRequest>,
    ) -> Result<Response<ListConsentHistoryResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let tenant = tenant.as_str();
        let reply = paged(tenant, request.into_inner(), |r| async move {
            self.profiles
                .consent_history(tenant, &r.customer_id, r.page)
                .await
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn record_orders(
        &self,
        request: Request<RecordOrdersRequest>,
    ) -> Result<Response<RecordOrdersResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let orders = request.into_inner().orders;
        if orders.is_empty() {
            return Err(ServiceError::invalid(
                "orders",
                format!("must hold 1 to {MAX_BATCH} orders"),
            )
            .into());
        }
        let result = self
            .profiles
            .record_orders(&tenant, orders, OnInvalid::RefuseBatch)
            .await?;
        Ok(Response::new(RecordOrdersResponse {
            outcomes: result.outcomes.into_iter().map(|o| o as i32).collect(),
        }))
    }

    async fn stream_orders(
        &self,
        request: Request<Streaming<StreamOrdersRequest>>,
    ) -> Result<Response<StreamOrdersResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let mut reader = GroupReader::spawn(self.profiles.clone(), request.into_inner());
        let mut response = StreamOrdersResponse::default();
        let mut written = WrittenStates::default();
        loop {
            let read = reader.next().await?;
            if !read.group.is_empty() {
                let mode = read.on_invalid.unwrap_or(OnInvalid::RefuseBatch);
                let result = self
                    .profiles
                    .record_prepared_chunks(&tenant, read.group, mode, Some(&mut written))
                    .await?;
                for outcome in result.stored.iter().flat_map(|r| &r.outcomes) {
                    match outcome {
                        OrderOutcome::Recorded => response.recorded += 1,
                        OrderOutcome::Duplicate => response.duplicates += 1,
                        OrderOutcome::Unspecified => {}
                    }
                }
                response
                    .rejected
                    .extend(result.stored.into_iter().flat_map(|r| r.rejected));
                if let Some(err) = result.refused {
                    return Err(err.into());
                }
            }
            if let Some(status) = read.broken {
                return Err(status);
            }
            if read.ended {
                return Ok(Response::new(response));
            }
        }
    }

    async fn adjust_order(
        &self,
        request: Request<AdjustOrderRequest>,
    ) -> Result<Response<AdjustOrderResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let facts = self
            .profiles
            .adjust_order(&tenant, request.into_inner())
            .await?;
        Ok(Response::new(AdjustOrderResponse { facts: Some(facts) }))
    }

    async fn record_engagement(
        &self,
        request: Request<RecordEngagementRequest>,
    ) -> Result<Response<RecordEngagementResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let (recorded, duplicates) = self
            .profiles
            .record_engagement(&tenant, request.into_inner().events)
            .await?;
        Ok(Response::new(RecordEngagementResponse {
            recorded,
            duplicates,
        }))
    }

    async fn set_bonus_balance(
        &self,
        request: Request<SetBonusBalanceRequest>,
    ) -> Result<Response<SetBonusBalanceResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let req = request.into_inner();
        let balance = self
            .profiles
            .set_bonus(&tenant, &req.customer_id, &req.lots)
            .await?;
        Ok(Response::new(SetBonusBalanceResponse {
            balance: Some(balance),
        }))
    }

    async fn adjust_bonus_balance(
        &self,
        request: Request<AdjustBonusBalanceRequest>,
    ) -> Result<Response<AdjustBonusBalanceResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let req = request.into_inner();
        let balance = self
            .profiles
            .adjust_bonus(
                &tenant,
                &req.customer_id,
                &req.adjustment_id,
                req.points,
                req.expires_at.as_ref(),
            )
            .await?;
        Ok(Response::new(AdjustBonusBalanceResponse {
            balance: Some(balance),
        }))
    }

    async fn get_facts(
        &self,
        request: Request<GetFactsRequest>,
    ) -> Result<Response<GetFactsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let facts = self
            .profiles
            .facts(&tenant, &request.get_ref().customer_id)
            .await?;
        Ok(Response::new(GetFactsResponse { facts: Some(facts) }))
    }

    // StreamFacts is served by `facts_route`, straight from the stored encoded facts.
}
