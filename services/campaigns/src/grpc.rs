//! Handlers of `winback.campaigns.v1.CampaignsService`: check the caller, call the
//! service, translate back.

use tonic::{Request, Response, Status};
use winback_platform::auth::tenant_for;
use winback_platform::paging::paged;
use winback_proto::campaigns::campaigns_service_server::CampaignsService;
use winback_proto::campaigns::*;

use crate::context::Campaigns;
use crate::domain::presets;

const READ: &str = "campaigns:read";
const WRITE: &str = "campaigns:write";

/// The handlers.
#[derive(Debug, Clone)]
pub(crate) struct CampaignsGrpc {
    pub(crate) campaigns: Campaigns,
    pub(crate) requests: winback_platform::idempotency::RequestLog,
}

#[tonic::async_trait]
impl CampaignsService for CampaignsGrpc {
    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let policy = self.campaigns.policy(&tenant).await?;
        Ok(Response::new(GetPolicyResponse {
            policy: Some(policy.to_proto()),
        }))
    }

    async fn update_policy(
        &self,
        request: Request<UpdatePolicyRequest>,
    ) -> Result<Response<UpdatePolicyResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let policy = self
            .campaigns
            .update_policy(&tenant, request.into_inner().policy)
            .await?;
        Ok(Response::new(UpdatePolicyResponse {
            policy: Some(policy),
        }))
    }

    async fn list_chain_presets(
        &self,
        request: Request<ListChainPresetsRequest>,
    ) -> Result<Response<ListChainPresetsResponse>, Status> {
        tenant_for(&request, READ)?;
        Ok(Response::new(ListChainPresetsResponse {
            presets: presets::all(),
        }))
    }

    async fn validate_chain(
        &self,
        request: Request<ValidateChainRequest>,
    ) -> Result<Response<ValidateChainResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let chain = request.into_inner().chain.unwrap_or_default();
        let violations = self.campaigns.check_chain(&tenant, &chain).await?.all();
        Ok(Response::new(ValidateChainResponse {
            valid: violations.is_empty(),
            violations,
        }))
    }

    async fn create_chain(
        &self,
        request: Request<CreateChainRequest>,
    ) -> Result<Response<CreateChainResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let request = request.into_inner();
        let reply = self
            .requests
            .once(
                &tenant,
                "CreateChain",
                &request.request_id,
                &request,
                || async {
                    let chain = self
                        .campaigns
                        .create_chain(&tenant, request.chain.clone())
                        .await?;
                    Ok(CreateChainResponse { chain: Some(chain) })
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_chain(
        &self,
        request: Request<GetChainRequest>,
    ) -> Result<Response<GetChainResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let chain = self
            .campaigns
            .chain(&tenant, &request.get_ref().chain_id, "chain_id")
            .await?;
        Ok(Response::new(GetChainResponse { chain: Some(chain) }))
    }

    async fn list_chains(
        &self,
        request: Request<ListChainsRequest>,
    ) -> Result<Response<ListChainsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.campaigns
                .list_chains(&tenant, r.page.unwrap_or_default())
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn update_chain(
        &self,
        request: Request<UpdateChainRequest>,
    ) -> Result<Response<UpdateChainResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let chain = self
            .campaigns
            .update_chain(&tenant, r.chain, r.update_mask)
            .await?;
        Ok(Response::new(UpdateChainResponse { chain: Some(chain) }))
    }

    async fn update_campaign(
        &self,
        request: Request<UpdateCampaignRequest>,
    ) -> Result<Response<UpdateCampaignResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let campaign = self
            .campaigns
            .update_campaign(&tenant, r.campaign, r.update_mask)
            .await?;
        Ok(Response::new(UpdateCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn create_campaign(
        &self,
        request: Request<CreateCampaignRequest>,
    ) -> Result<Response<CreateCampaignResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let request = request.into_inner();
        let reply = self
            .requests
            .once(
                &tenant,
                "CreateCampaign",
                &request.request_id,
                &request,
                || async {
                    let campaign = self
                        .campaigns
                        .create_campaign(&tenant, request.campaign.clone())
                        .await?;
                    Ok(CreateCampaignResponse {
                        campaign: Some(campaign),
                    })
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_campaign(
        &self,
        request: Request<GetCampaignRequest>,
    ) -> Result<Response<GetCampaignResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let campaign = self
            .campaigns
            .campaign(&tenant, &request.get_ref().campaign_id, "campaign_id")
            .await?;
        Ok(Response::new(GetCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn list_campaigns(
        &self,
        request: Request<ListCampaignsRequest>,
    ) -> Result<Response<ListCampaignsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.campaigns
                .list_campaigns(&tenant, r.state, r.page.unwrap_or_default())
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn activate_campaign(
        &self,
        request: Request<ActivateCampaignRequest>,
    ) -> Result<Response<ActivateCampaignResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let campaign = self
            .campaigns
            .transition(
                &tenant,
                &request.get_ref().campaign_id,
                CampaignState::Active,
            )
            .await?;
        Ok(Response::new(ActivateCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn pause_campaign(
        &self,
        request: Request<PauseCampaignRequest>,
    ) -> Result<Response<PauseCampaignResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let campaign = self
            .campaigns
            .transition(
                &tenant,
                &request.get_ref().campaign_id,
                CampaignState::Paused,
            )
            .await?;
        Ok(Response::new(PauseCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn complete_campaign(
        &self,
        request: Request<CompleteCampaignRequest>,
    ) -> Result<Response<CompleteCampaignResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let campaign = self
            .campaigns
            .transition(
                &tenant,
                &request.get_ref().campaign_id,
                CampaignState::Completed,
            )
            .await?;
        Ok(Response::new(CompleteCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    async fn enrol_audience(
        &self,
        request: Request<EnrolAudienceRequest>,
    ) -> Result<Response<EnrolAudienceResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        Ok(Response::new(
            self.campaigns
                .enrol_audience(&tenant, &request.get_ref().campaign_id)
                .await?,
        ))
    }

    async fn enrol_customers(
        &self,
        request: Request<EnrolCustomersRequest>,
    ) -> Result<Response<EnrolCustomersResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let decisions = self
            .campaigns
            .enrol_customers(&tenant, &r.campaign_id, r.customer_ids, r.trigger)
            .await?;
        Ok(Response::new(EnrolCustomersResponse { decisions }))
    }

    async fn get_enrolment(
        &self,
        request: Request<GetEnrolmentRequest>,
    ) -> Result<Response<GetEnrolmentResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let enrolment = self
            .campaigns
            .enrolment(&tenant, &request.get_ref().enrolment_id)
            .await?;
        Ok(Response::new(GetEnrolmentResponse {
            enrolment: Some(enrolment),
        }))
    }

    async fn list_enrolments(
        &self,
        request: Request<ListEnrolmentsRequest>,
    ) -> Result<Response<ListEnrolmentsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.campaigns.list_enrolments(&tenant, r)
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn get_campaign_report(
        &self,
        request: Request<GetCampaignReportRequest>,
    ) -> Result<Response<GetCampaignReportResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        Ok(Response::new(
            self.campaigns
                .report(&tenant, &request.get_ref().campaign_id)
                .await?,
        ))
    }
}
