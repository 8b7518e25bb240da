//! Handlers of `winback.delivery.v1.DeliveryService`: translate, check the tenant, call the
//! service, translate back.

use tonic::{Request, Response, Status};
use winback_platform::auth::tenant_for;
use winback_platform::paging::paged;
use winback_proto::delivery::delivery_service_server::DeliveryService;
use winback_proto::delivery::*;

use crate::context::Delivery;

const READ: &str = "delivery:read";
const WRITE: &str = "delivery:write";

/// The handlers.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryGrpc {
    pub(crate) delivery: Delivery,
}

#[tonic::async_trait]
impl DeliveryService for DeliveryGrpc {
    async fn upsert_template(
        &self,
        request: Request<UpsertTemplateRequest>,
    ) -> Result<Response<UpsertTemplateResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let Some(t) = request.into_inner().template else {
            return Err(winback_platform::ServiceError::invalid("template", "is required").into());
        };
        let template = self.delivery.upsert_template(&tenant, t).await?;
        Ok(Response::new(UpsertTemplateResponse {
            template: Some(template),
        }))
    }

    async fn get_template(
        &self,
        request: Request<GetTemplateRequest>,
    ) -> Result<Response<GetTemplateResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let r = request.into_inner();
        let template = self
            .delivery
            .template(&tenant, &r.template_id, r.channel, &r.locale)
            .await?;
        Ok(Response::new(GetTemplateResponse {
            template: Some(template),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.delivery
                .list_templates(&tenant, r.channel, r.page.unwrap_or_default())
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn delete_template(
        &self,
        request: Request<DeleteTemplateRequest>,
    ) -> Result<Response<DeleteTemplateResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let deleted = self
            .delivery
            .delete_template(&tenant, &r.template_id, r.channel, &r.locale)
            .await?;
        Ok(Response::new(DeleteTemplateResponse { deleted }))
    }

    async fn render_preview(
        &self,
        request: Request<RenderPreviewRequest>,
    ) -> Result<Response<RenderPreviewResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let message = self.delivery.preview(&tenant, request.get_ref()).await?;
        Ok(Response::new(RenderPreviewResponse {
            message: Some(message),
        }))
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let message = self.delivery.send(&tenant, request.into_inner()).await?;
        Ok(Response::new(SendResponse {
            message: Some(message),
        }))
    }

    async fn send_batch(
        &self,
        request: Request<SendBatchRequest>,
    ) -> Result<Response<SendBatchResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let results = self
            .delivery
            .send_batch(&tenant, request.into_inner().sends)
            .await?;
        Ok(Response::new(SendBatchResponse { results }))
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<GetMessageResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let message = self
            .delivery
            .message(&tenant, &request.get_ref().message_id)
            .await?;
        Ok(Response::new(GetMessageResponse {
            message: Some(message),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.delivery.list_messages(&tenant, r)
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn add_suppressions(
        &self,
        request: Request<AddSuppressionsRequest>,
    ) -> Result<Response<AddSuppressionsResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let suppressions = self
            .delivery
            .add_suppressions(&tenant, request.into_inner().suppressions)
            .await?;
        Ok(Response::new(AddSuppressionsResponse { suppressions }))
    }

    async fn add_suppression(
        &self,
        request: Request<AddSuppressionRequest>,
    ) -> Result<Response<AddSuppressionResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let Some(s) = request.into_inner().suppression else {
            return Err(
                winback_platform::ServiceError::invalid("suppression", "is required").into(),
            );
        };
        let suppression = self.delivery.add_suppression(&tenant, s).await?;
        Ok(Response::new(AddSuppressionResponse {
            suppression: Some(suppression),
        }))
    }

    async fn remove_suppression(
        &self,
        request: Request<RemoveSuppressionRequest>,
    ) -> Result<Response<RemoveSuppressionResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let r = request.into_inner();
        let removed = self
            .delivery
            .remove_suppression(&tenant, r.channel, &r.contact)
            .await?;
        Ok(Response::new(RemoveSuppressionResponse { removed }))
    }

    async fn list_suppressions(
        &self,
        request: Request<ListSuppressionsRequest>,
    ) -> Result<Response<ListSuppressionsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let reply = paged(&tenant, request.into_inner(), |r| {
            self.delivery
                .list_suppressions(&tenant, r.channel, r.page.unwrap_or_default())
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn set_channel_settings(
        &self,
        request: Request<SetChannelSettingsRequest>,
    ) -> Result<Response<SetChannelSettingsResponse>, Status> {
        let tenant = tenant_for(&request, WRITE)?;
        let Some(s) = request.into_inner().settings else {
            return Err(winback_platform::ServiceError::invalid("settings", "is required").into());
        };
        let settings = self.delivery.set_channel_settings(&tenant, s).await?;
        Ok(Response::new(SetChannelSettingsResponse {
            settings: Some(settings),
        }))
    }

    async fn get_channel_settings(
        &self,
        request: Request<GetChannelSettingsRequest>,
    ) -> Result<Response<GetChannelSettingsResponse>, Status> {
        let tenant = tenant_for(&request, READ)?;
        let settings = self.delivery.channel_settings(&tenant).await?;
        Ok(Response::new(GetChannelSettingsResponse { settings }))
    }
}
