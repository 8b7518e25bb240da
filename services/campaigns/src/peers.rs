//! Clients of the services campaigns asks: profiles (reach, facts), segmentation (members,
//! scores), offers (coupons) and delivery (templates, sends, suppressions). Every call acts
//! for one tenant with the service credential and carries the trace context.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::ServiceError;
use winback_platform::config::Peer;
use winback_platform::grpc::CallCredentials;
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient;

use crate::context::Campaigns;

type Authed = InterceptedService<Channel, CallCredentials>;

impl Campaigns {
    fn channel(&self, peer: Peer, tenant: &str) -> Result<Authed, ServiceError> {
        let (channel, credentials) = self.host.peer(peer, tenant)?;
        Ok(InterceptedService::new(channel, credentials))
    }

    fn limit(&self) -> usize {
        self.host
            .config
            .server
            .max_message_bytes
            .max(16 * 1024 * 1024)
    }

    pub(crate) fn profiles(
        &self,
        tenant: &str,
    ) -> Result<ProfilesServiceClient<Authed>, ServiceError> {
        Ok(
            ProfilesServiceClient::new(self.channel(Peer::Profiles, tenant)?)
                .max_decoding_message_size(self.limit()),
        )
    }

    pub(crate) fn segmentation(
        &self,
        tenant: &str,
    ) -> Result<SegmentationServiceClient<Authed>, ServiceError> {
        Ok(
            SegmentationServiceClient::new(self.channel(Peer::Segmentation, tenant)?)
                .max_decoding_message_size(self.limit()),
        )
    }

    pub(crate) fn offers(&self, tenant: &str) -> Result<OffersServiceClient<Authed>, ServiceError> {
        Ok(
            OffersServiceClient::new(self.channel(Peer::Offers, tenant)?)
                .max_decoding_message_size(self.limit())
                .max_encoding_message_size(self.limit()),
        )
    }

    pub(crate) fn delivery(
        &self,
        tenant: &str,
    ) -> Result<DeliveryServiceClient<Authed>, ServiceError> {
        Ok(
            DeliveryServiceClient::new(self.channel(Peer::Delivery, tenant)?)
                .max_decoding_message_size(self.limit())
                .max_encoding_message_size(self.limit()),
        )
    }
}

/// A failed call to another service, as this service's error: the caller may retry an
/// unavailable peer; anything else is ours to explain.
pub(crate) fn upstream(call: &str, status: &tonic::Status) -> ServiceError {
    match status.code() {
        // A tenant's quota is a wait, not a fault: the work is retried later.
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::ResourceExhausted => {
            ServiceError::Unavailable(format!("{call}: {}", status.message()))
        }
        _ => ServiceError::Internal(format!(
            "{call} failed: {:?} {}",
            status.code(),
            status.message()
        )),
    }
}
