//! Handlers of `winback.offers.v1.OffersService`: translate, check the tenant, call the
//! service, translate back.

use tonic::{Request, Response, Status};
use winback_platform::auth::tenant_for;
use winback_platform::paging::paged;
use winback_proto::offers::offers_service_server::OffersService;
use winback_proto::offers::*;

use crate::context::Offers;
use crate::coupons::IssueFrom;
use crate::fraud::Presenter;

const READ: &str = "offers:read";
const WRITE: &str = "offers:write";

/// The handlers.
#[derive(Debug, Clone)]
pub(crate) struct OffersGrpc {
    pub(crate) offers: Offers,
    pub(crate) requests: winback_platform::idempotency::RequestLog,
}

/// Where a presentation came from: the caller's `x-winback-source` (a shop's till, a site),
/// else the peer address.
fn source<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("x-winback-source")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(100).collect())
        .or_else(|| request.remote_addr().map(|a| a.ip().to_string()))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl OffersService for OffersGrpc {
    async fn create_offer_template(
        &self,
        request: Request<CreateOfferTemplateRequest>,
    ) -> Result<Response<CreateOfferTemplateResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let request = request.into_inner();
        let reply = self
            .requests
            .once(
                &tenant,
                "CreateOfferTemplate",
                &request.request_id,
                &request,
                || async {
                    let template = self
                        .offers
                        .create_template(&tenant, request.template.clone())
                        .await?;
                    Ok(CreateOfferTemplateResponse {
                        template: Some(template),
                    })
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_offer_template(
        &self,
        request: Request<GetOfferTemplateRequest>,
    ) -> Result<Response<GetOfferTemplateResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let template = self
            .offers
            .template(&tenant, &request.get_ref().template_id, "template_id")
            .await?;
        Ok(Response::new(GetOfferTemplateResponse {
            template: Some(template),
        }))
    }

    async fn list_offer_templates(
        &self,
        request: Request<ListOfferTemplatesRequest>,
    ) -> Result<Response<ListOfferTemplatesResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.offers
                .list_templates(&tenant, r.include_archived, r.page.unwrap_or_default())
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn archive_offer_template(
        &self,
        request: Request<ArchiveOfferTemplateRequest>,
    ) -> Result<Response<ArchiveOfferTemplateResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let template = self
            .offers
            .archive_template(&tenant, &request.get_ref().template_id)
            .await?;
        Ok(Response::new(ArchiveOfferTemplateResponse {
            template: Some(template),
        }))
    }

    async fn create_ladder(
        &self,
        request: Request<CreateLadderRequest>,
    ) -> Result<Response<CreateLadderResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let request = request.into_inner();
        let reply = self
            .requests
            .once(
                &tenant,
                "CreateLadder",
                &request.request_id,
                &request,
                || async {
                    let ladder = self
                        .offers
                        .create_ladder(&tenant, request.ladder.clone())
                        .await?;
                    Ok(CreateLadderResponse {
                        ladder: Some(ladder),
                    })
                },
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_ladder(
        &self,
        request: Request<GetLadderRequest>,
    ) -> Result<Response<GetLadderResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let ladder = self
            .offers
            .ladder(&tenant, &request.get_ref().ladder_id, "ladder_id")
            .await?;
        Ok(Response::new(GetLadderResponse {
            ladder: Some(ladder),
        }))
    }

    async fn update_ladder(
        &self,
        request: Request<UpdateLadderRequest>,
    ) -> Result<Response<UpdateLadderResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let ladder = self
            .offers
            .update_ladder(&tenant, r.ladder, r.update_mask)
            .await?;
        Ok(Response::new(UpdateLadderResponse {
            ladder: Some(ladder),
        }))
    }

    async fn list_ladders(
        &self,
        request: Request<ListLaddersRequest>,
    ) -> Result<Response<ListLaddersResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.offers
                .list_ladders(&tenant, r.page.unwrap_or_default())
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn next_offer(
        &self,
        request: Request<NextOfferRequest>,
    ) -> Result<Response<NextOfferResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let r = request.get_ref();
        Ok(Response::new(
            self.offers
                .next_offer(&tenant, &r.ladder_id, &r.customer_id)
                .await?,
        ))
    }

    async fn next_offers(
        &self,
        request: Request<NextOffersRequest>,
    ) -> Result<Response<NextOffersResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let r = request.get_ref();
        Ok(Response::new(NextOffersResponse {
            offers: self
                .offers
                .next_offers(&tenant, &r.ladder_id, &r.customer_ids)
                .await?,
        }))
    }

    async fn issue_coupon(
        &self,
        request: Request<IssueCouponRequest>,
    ) -> Result<Response<IssueCouponResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let from = IssueFrom {
            template_id: r.template_id,
            campaign_id: r.campaign_id,
            ladder_id: r.ladder_id,
        };
        let recipient = CouponRecipient {
            customer_id: r.customer_id,
            idempotency_key: r.idempotency_key,
        };
        let coupon = self
            .offers
            .issue(&tenant, from, vec![recipient], "customer_id")
            .await?
            .pop();
        Ok(Response::new(IssueCouponResponse { coupon }))
    }

    async fn issue_coupons(
        &self,
        request: Request<IssueCouponsRequest>,
    ) -> Result<Response<IssueCouponsResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let from = IssueFrom {
            template_id: r.template_id,
            campaign_id: r.campaign_id,
            ladder_id: r.ladder_id,
        };
        let coupons = self
            .offers
            .issue(&tenant, from, r.recipients, "recipients")
            .await?;
        Ok(Response::new(IssueCouponsResponse { coupons }))
    }

    async fn get_coupon(
        &self,
        request: Request<GetCouponRequest>,
    ) -> Result<Response<GetCouponResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let coupon = self.offers.coupon(&tenant, &request.get_ref().code).await?;
        Ok(Response::new(GetCouponResponse {
            coupon: Some(coupon),
        }))
    }

    async fn list_coupons(
        &self,
        request: Request<ListCouponsRequest>,
    ) -> Result<Response<ListCouponsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.offers.list_coupons(&tenant, r)
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn validate_coupon(
        &self,
        request: Request<ValidateCouponRequest>,
    ) -> Result<Response<ValidateCouponResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let source = source(&request);
        let r = request.into_inner();
        let who = Presenter {
            customer_id: r.customer_id,
            source,
        };
        let cart = r.cart.unwrap_or_default();
        Ok(Response::new(
            self.offers.validate(&tenant, &r.code, &who, &cart).await?,
        ))
    }

    async fn redeem_coupon(
        &self,
        request: Request<RedeemCouponRequest>,
    ) -> Result<Response<RedeemCouponResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let source = source(&request);
        let r = request.into_inner();
        let who = Presenter {
            customer_id: r.customer_id,
            source,
        };
        let order = r.order.unwrap_or_default();
        Ok(Response::new(
            self.offers
                .redeem(&tenant, &r.code, &who, &r.order_id, &order)
                .await?,
        ))
    }

    async fn release_coupon(
        &self,
        request: Request<ReleaseCouponRequest>,
    ) -> Result<Response<ReleaseCouponResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.get_ref();
        let coupon = self.offers.release(&tenant, &r.code, &r.order_id).await?;
        Ok(Response::new(ReleaseCouponResponse {
            coupon: Some(coupon),
        }))
    }

    async fn sweep_expired_coupons(
        &self,
        request: Request<SweepExpiredCouponsRequest>,
    ) -> Result<Response<SweepExpiredCouponsResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        Ok(Response::new(
            self.offers.sweep(&tenant, request.get_ref().limit).await?,
        ))
    }

    async fn get_budget_usage(
        &self,
        request: Request<GetBudgetUsageRequest>,
    ) -> Result<Response<GetBudgetUsageResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let r = request.get_ref();
        Ok(Response::new(
            self.offers
                .budget_usage(&tenant, &r.template_id, &r.campaign_id)
                .await?,
        ))
    }

    async fn list_fraud_signals(
        &self,
        request: Request<ListFraudSignalsRequest>,
    ) -> Result<Response<ListFraudSignalsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.offers.fraud_signals(&tenant, r)
        })
        .await?;
        Ok(Response::new(reply))
    }
}
